//! Finding what a service forked, however it forked, so a stop leaves nothing behind.
//!
//! Killing the service's process group misses a descendant that left it: a daemon-style double
//! fork with `setsid()` puts the grandchild in a new session and group, and once its parent exits
//! the kernel hands it to init, out of the service's tree. On Linux each service process is made
//! a *child subreaper* (`PR_SET_CHILD_SUBREAPER`, set before `exec` and kept across it), so such
//! an orphan is handed to the service instead and stays visible under it in `/proc`.
//!
//! Why a subreaper and not a cgroup: a cgroup needs a writable cgroup tree (root, or a delegated
//! systemd scope), which a desktop Electron app, and most containers, do not have; a subreaper
//! works unprivileged on every Linux since 3.4. Why the service and not the host: a subreaper
//! host would adopt the orphans itself, and neither Node (libuv) nor tokio waits for processes
//! they did not spawn, so they would pile up as zombies in the host. The cost: a service that
//! never waits for adopted children keeps their zombies until it exits (its own descendants only).
//!
//! [`EscapedGroups`] walks the service's subtree (every [`SCAN_INTERVAL`] while it runs, and at
//! each stop) and remembers each process group a descendant leads outside the service's group,
//! registering it with the host-death watchdog too. A stop signals those groups with the
//! service's, and kills them once the service is gone (by then they are init's children).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::host_death::{HostDeathWatchdog, WatchedGroup};

/// How often a running service's subtree is walked for escaped process groups.
pub const SCAN_INTERVAL: Duration = Duration::from_millis(250);

/// A process as `/proc/<pid>/stat` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcEntry {
    pub pid: u32,
    pub ppid: u32,
    pub pgid: u32,
    pub zombie: bool,
}

/// Every process now running below `root` (not `root` itself), through parent links.
pub fn descendants(root: u32) -> Vec<ProcEntry> {
    subtree(&process_table(), root)
}

fn subtree(table: &[ProcEntry], root: u32) -> Vec<ProcEntry> {
    let mut children: BTreeMap<u32, Vec<ProcEntry>> = BTreeMap::new();
    for entry in table {
        children.entry(entry.ppid).or_default().push(*entry);
    }
    let mut found = Vec::new();
    let mut next = vec![root];
    while let Some(pid) = next.pop() {
        for child in children.get(&pid).into_iter().flatten() {
            // A cycle is impossible in a real table; the guard keeps a torn read from looping.
            if child.pid != root && !found.iter().any(|f: &ProcEntry| f.pid == child.pid) {
                found.push(*child);
                next.push(child.pid);
            }
        }
    }
    found
}

#[cfg(target_os = "linux")]
fn process_table() -> Vec<ProcEntry> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok()).filter_map(read_stat).collect()
}

#[cfg(not(target_os = "linux"))]
fn process_table() -> Vec<ProcEntry> {
    Vec::new()
}

/// `/proc/<pid>/stat`: the fields after the command name (which may hold spaces and parens).
#[cfg(target_os = "linux")]
fn read_stat(pid: u32) -> Option<ProcEntry> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = text[text.rfind(')')? + 2..].split(' ');
    let state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    Some(ProcEntry { pid, ppid, pgid, zombie: state == "Z" })
}

/// The process groups a service's descendants lead outside the service's own group, each
/// watched by the host-death watchdog until it is killed.
pub struct EscapedGroups {
    service_pid: u32,
    /// Weak: the supervisor decides when the watchdog ends (its `close` reaps it).
    watchdog: Weak<HostDeathWatchdog>,
    groups: Mutex<BTreeMap<u32, Option<WatchedGroup>>>,
}

impl EscapedGroups {
    pub fn new(service_pid: u32, watchdog: Option<&Arc<HostDeathWatchdog>>) -> Arc<Self> {
        let watchdog = watchdog.map_or_else(Weak::new, Arc::downgrade);
        Arc::new(Self { service_pid, watchdog, groups: Mutex::new(BTreeMap::new()) })
    }

    /// Walks the service's subtree and remembers new escaped groups; returns the live
    /// descendants that are in neither the service's group nor a group of their own (they can
    /// only be signalled one by one).
    pub fn scan(&self) -> Vec<u32> {
        let table = process_table();
        let found = subtree(&table, self.service_pid);
        let ours: BTreeSet<u32> = found.iter().map(|p| p.pid).chain([self.service_pid]).collect();
        // A group any other process is in (the host's, say: a descendant that never left the
        // host's session may join it) is not ours to kill as a whole.
        let shared: BTreeSet<u32> = table.iter().filter(|p| !ours.contains(&p.pid)).map(|p| p.pgid).collect();
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        let mut strays = Vec::new();
        for p in found.iter().filter(|p| !p.zombie && p.pgid != self.service_pid) {
            if shared.contains(&p.pgid) {
                strays.push(p.pid);
            } else {
                groups.entry(p.pgid).or_insert_with(|| self.watchdog.upgrade().map(|w| w.watch(p.pgid)));
            }
        }
        strays
    }

    /// Sends `signal` to every escaped group, and to `strays`.
    #[cfg(unix)]
    pub fn signal(&self, signal: libc::c_int, strays: &[u32]) {
        let groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        for pgid in groups.keys() {
            // SAFETY: only sends a signal; ESRCH (group gone) is fine.
            unsafe { libc::killpg(*pgid as libc::pid_t, signal) };
        }
        for pid in strays {
            unsafe { libc::kill(*pid as libc::pid_t, signal) };
        }
    }

    /// SIGKILLs every escaped group and every other process left in the service's subtree
    /// outside its own group, rounds after round until none is left (a fork racing the kill is
    /// caught by the next round). Call it only while the service is not reaped: its pid must
    /// still be its own.
    #[cfg(unix)]
    pub fn kill_tree(&self) {
        for _ in 0..20 {
            let strays = self.scan();
            self.signal(libc::SIGKILL, &strays);
            let left = descendants(self.service_pid).iter().any(|p| !p.zombie && p.pgid != self.service_pid);
            if !left {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGKILLs the escaped groups found so far (the service may be gone: nothing is scanned),
    /// and lets the watchdog forget them.
    #[cfg(unix)]
    pub fn kill_known(&self) {
        self.signal(libc::SIGKILL, &[]);
        self.groups.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    #[cfg(not(unix))]
    pub fn kill_tree(&self) {}

    #[cfg(not(unix))]
    pub fn kill_known(&self) {}
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn finds_the_subtree_of_this_process() {
        let mut child = std::process::Command::new("sh").args(["-c", "sleep 30 & wait"]).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let below = descendants(std::process::id());
        let sh = below.iter().find(|p| p.pid == child.id()).expect("the child is a descendant");
        assert!(below.iter().any(|p| p.ppid == sh.pid), "the grandchild too: {below:?}");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
