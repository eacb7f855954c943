//! Is a TCP port free, and if not, which process holds it.

use std::net::{Ipv4Addr, TcpListener};

/// Who holds a port, as far as it can be found out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortHolder {
    pub pid: u32,
    /// The holder's command name (`/proc/<pid>/comm`).
    pub name: Option<String>,
}

/// Whether `127.0.0.1:port` can be bound now. The listener is dropped at once; the small window
/// before the service binds is accepted, since the service's own bind error would then show up.
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// The process listening on `port`, found through the socket's inode (Linux only).
pub fn port_holder(port: u16) -> Option<PortHolder> {
    #[cfg(target_os = "linux")]
    {
        linux::port_holder(port)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = port;
        None
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use super::PortHolder;
    use std::fs;

    const LISTEN: &str = "0A";

    pub(super) fn port_holder(port: u16) -> Option<PortHolder> {
        let inodes: Vec<u64> = ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|p| fs::read_to_string(p).ok())
            .flat_map(|table| listening_inodes(&table, port))
            .collect();
        if inodes.is_empty() {
            return None;
        }
        let targets: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
        for entry in fs::read_dir("/proc").ok()?.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            // Other users' fd tables are unreadable; those holders stay unknown.
            let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                if let Ok(link) = fs::read_link(fd.path()) {
                    if targets.iter().any(|t| link.as_os_str() == t.as_str()) {
                        let name = fs::read_to_string(entry.path().join("comm")).ok().map(|s| s.trim().to_string());
                        return Some(PortHolder { pid, name });
                    }
                }
            }
        }
        None
    }

    /// Inodes of sockets listening on `port` in one `/proc/net/tcp{,6}` table.
    pub(super) fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
        table
            .lines()
            .skip(1)
            .filter_map(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                let local = cols.get(1)?;
                let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
                (local_port == port && *cols.get(3)? == LISTEN).then(|| cols.get(9)?.parse().ok())?
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_port_is_taken_and_its_holder_is_this_process() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(!port_is_free(port));
        #[cfg(target_os = "linux")]
        assert_eq!(port_holder(port).map(|h| h.pid), Some(std::process::id()));
        drop(listener);
        assert!(port_is_free(port));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_listening_sockets_from_a_proc_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 12345 1\n   1: 0100007F:1F40 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000        0 999 1\n";
        assert_eq!(linux::listening_inodes(table, 8000), vec![12345]);
        assert!(linux::listening_inodes(table, 8001).is_empty());
    }
}
