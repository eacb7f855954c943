//! A service's port: free before a start (or reclaimed from a leftover of this same service),
//! and free again before a stop resolves.

use std::time::{Duration, Instant};

use super::{ms, Shared};
use crate::error::{ErrorCode, SidecarError, SidecarResult};
use crate::services::config::ServiceSpec;
use crate::services::events::ServiceEventKind;
use crate::services::port::{port_holder, port_is_free};

/// How often a port is checked while waiting for it to be free.
const PORT_POLL: Duration = Duration::from_millis(25);

impl Shared {
    /// Ok when `port` is free, or was held by a leftover of this service (same command line: a
    /// crashed host's orphan) that was stopped with the service's stop signal, then SIGKILL.
    pub(super) async fn claim_port(&self, i: usize, port: u16) -> SidecarResult<()> {
        if port_is_free(port) {
            return Ok(());
        }
        let spec = self.spec(i);
        let holder = port_holder(port);
        let leftover = holder.as_ref().filter(|h| spec.reclaim_stale_port && is_leftover_of(&spec, h.pid));
        let Some(holder) = leftover else {
            return Err(port_in_use(&spec.name, port, holder.map(|h| (h.pid, h.name))));
        };
        let pid = holder.pid;
        let grace = ms(spec.stop_timeout_ms.get());
        send_signal(pid, spec.stop_signal);
        if !wait_port_free(port, grace).await {
            send_signal(pid, crate::services::StopSignal::Kill);
            if !wait_port_free(port, grace.max(Duration::from_secs(1))).await {
                return Err(port_in_use(&spec.name, port, Some((pid, holder.name.clone()))));
            }
        }
        self.emit(i, ServiceEventKind::PortReclaimed { port, pid });
        Ok(())
    }

    /// After a stop: waits until the service's port is free, at most `portReleaseTimeoutMs`, and
    /// says so with a `port-still-held` event when it is not.
    pub(super) async fn wait_port_released(&self, i: usize) {
        let spec = self.spec(i);
        let Some(port) = spec.port.map(|p| p.get() as u16) else { return };
        let limit = spec.port_release_timeout_ms.get();
        let started = Instant::now();
        if !wait_port_free(port, ms(limit)).await {
            let pid = port_holder(port).map(|h| h.pid);
            let waited_ms = started.elapsed().as_millis() as u64;
            self.emit(i, ServiceEventKind::PortStillHeld { port, waited_ms, pid });
        }
    }
}

async fn wait_port_free(port: u16, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if port_is_free(port) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(PORT_POLL).await;
    }
}

fn port_in_use(service: &str, port: u16, holder: Option<(u32, Option<String>)>) -> SidecarError {
    let holder = match holder {
        Some((pid, name)) => format!(" by pid {pid}{}", name.map(|n| format!(" ({n})")).unwrap_or_default()),
        None => String::new(),
    };
    SidecarError::new(ErrorCode::PortInUse, format!("{service}: port {port} is already in use{holder}"))
}

/// Whether process `pid` runs this service's own command line (program by file name, then the
/// same arguments).
fn is_leftover_of(spec: &ServiceSpec, pid: u32) -> bool {
    let Some(argv) = command_line(pid) else { return false };
    let Some((program, args)) = argv.split_first() else { return false };
    let file_name = |p: &str| std::path::Path::new(p).file_name().map(|n| n.to_os_string());
    file_name(program) == file_name(&spec.command) && args == spec.args.as_slice()
}

/// A process's arguments (Linux: `/proc/<pid>/cmdline`).
fn command_line(pid: u32) -> Option<Vec<String>> {
    #[cfg(target_os = "linux")]
    {
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let text = String::from_utf8_lossy(&raw);
        Some(text.trim_end_matches('\0').split('\0').map(String::from).collect())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        None
    }
}

fn send_signal(pid: u32, signal: crate::services::StopSignal) {
    #[cfg(unix)]
    {
        use crate::services::StopSignal;
        let number = match signal {
            StopSignal::Term => libc::SIGTERM,
            StopSignal::Int => libc::SIGINT,
            StopSignal::Hup => libc::SIGHUP,
            StopSignal::Quit => libc::SIGQUIT,
            StopSignal::Kill => libc::SIGKILL,
        };
        // SAFETY: kill only sends a signal; a process already gone (ESRCH) is fine.
        unsafe { libc::kill(pid as libc::pid_t, number) };
    }
    #[cfg(not(unix))]
    let _ = (pid, signal);
}
