//! Host figures: memory, swap, CPU, the resident memory of registered processes, and zombie
//! children of this process.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use sysinfo::System;
#[cfg(not(target_os = "linux"))]
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate};

use super::sample::{mb, HostProcess, HostSample};
use crate::error::{ErrorCode, SidecarError, SidecarResult};

/// How far up the parent chain a GPU process is traced to a registered service.
const MAX_ANCESTRY: usize = 32;

/// Processes whose memory telemetry reports, labelled by the service they run. Shared between the
/// caller (the startup controller registers the services it spawns) and the sampler thread.
#[derive(Debug, Default)]
pub struct ProcessRegistry {
    labels: RwLock<BTreeMap<u32, String>>,
}

impl ProcessRegistry {
    /// An empty registry, ready to share.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A pid argument as JSON: an integer from 1 to 2^32-1, else `INVALID_ARGUMENT`.
    pub fn pid_arg(value: Option<&serde_json::Value>) -> crate::error::SidecarResult<u32> {
        match value.and_then(serde_json::Value::as_u64) {
            Some(pid) if (1..=u64::from(u32::MAX)).contains(&pid) => Ok(pid as u32),
            _ => Err(crate::error::SidecarError::invalid_argument(format!(
                "pid: expected a process id (an integer > 0), got {}",
                value.map_or("nothing".to_string(), |v| v.to_string())
            ))),
        }
    }

    /// Reports `pid` under `label` from the next sample on; registering again relabels it.
    pub fn register(&self, pid: u32, label: impl Into<String>) {
        self.write().insert(pid, label.into());
    }

    /// Stops reporting `pid`; `false` if it was not registered.
    pub fn unregister(&self, pid: u32) -> bool {
        self.write().remove(&pid).is_some()
    }

    /// The registered processes, by pid.
    pub fn entries(&self) -> Vec<(u32, String)> {
        self.read().iter().map(|(pid, label)| (*pid, label.clone())).collect()
    }

    /// The label of `pid`, or of its nearest registered ancestor (services fork workers that
    /// hold the GPU memory).
    pub fn service_of(&self, pid: u32) -> Option<String> {
        let labels = self.read();
        let mut current = pid;
        for _ in 0..MAX_ANCESTRY {
            if let Some(label) = labels.get(&current) {
                return Some(label.clone());
            }
            current = parent_pid(current).filter(|&parent| parent > 1)?;
        }
        None
    }

    // A panicking writer cannot leave the map half-updated, so a poisoned lock is still usable.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u32, String>> {
        self.labels.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u32, String>> {
        self.labels.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads host figures. Keeps one `System` between samples because CPU use is the difference
/// between two refreshes.
pub struct HostReader {
    system: System,
    registry: Arc<ProcessRegistry>,
    own_pid: u32,
}

impl HostReader {
    /// Takes the first CPU reading now so that the first sample's CPU figure covers one interval.
    pub fn new(registry: Arc<ProcessRegistry>) -> SidecarResult<Self> {
        let mut system = System::new().map_err(|e| {
            SidecarError::new(ErrorCode::Internal, format!("cannot read host figures on this platform: {e}"))
        })?;
        system.refresh_cpu_usage();
        Ok(Self { system, registry, own_pid: std::process::id() })
    }

    /// Refreshes and returns the host figures.
    pub fn read(&mut self) -> HostSample {
        self.system.refresh_memory();
        self.system.refresh_cpu_usage();
        let processes = self.registered_processes();
        HostSample {
            total_mb: mb(self.system.total_memory()),
            available_mb: mb(self.system.available_memory()),
            swap_total_mb: mb(self.system.total_swap()),
            swap_used_mb: mb(self.system.used_swap()),
            cpu_percent: f64::from(self.system.global_cpu_usage()),
            processes,
            zombie_children: if may_have_zombie_children() { zombie_children(self.own_pid).len() as u32 } else { 0 },
        }
    }

    /// The registered processes with their resident memory. On Linux one read of
    /// `/proc/<pid>/stat` each: sysinfo's process refresh opens five files a process (status,
    /// task list, stat, statm, uptime), most of the idle host's cost at one sample a second.
    #[cfg(target_os = "linux")]
    fn registered_processes(&mut self) -> Vec<HostProcess> {
        use crate::services::{ProcSource, Procfs};
        let registered = self.registry.entries();
        registered
            .into_iter()
            .map(|(pid, label)| HostProcess { pid, label, rss_mb: Procfs.entry(pid).map(|p| mb(p.rss_kb * 1024)) })
            .collect()
    }

    #[cfg(not(target_os = "linux"))]
    fn registered_processes(&mut self) -> Vec<HostProcess> {
        let registered = self.registry.entries();
        let pids: Vec<Pid> = registered.iter().map(|(pid, _)| Pid::from_u32(*pid)).collect();
        if !pids.is_empty() {
            self.system.refresh_processes_specifics(
                ProcessesToUpdate::Some(&pids),
                true,
                ProcessRefreshKind::nothing().with_memory(),
            );
        }
        registered
            .into_iter()
            .map(|(pid, label)| HostProcess {
                pid,
                label,
                rss_mb: self.system.process(Pid::from_u32(pid)).map(|p| mb(p.memory())),
            })
            .collect()
    }
}

/// Whether this process may have an exited, unreaped child: one `waitid` that peeks
/// (`WNOWAIT`: the child stays waitable by whoever owns it) instead of reading every thread's
/// children list and every child's stat each sample. `false` only when the kernel says no child
/// of any thread has exited.
#[cfg(target_os = "linux")]
fn may_have_zombie_children() -> bool {
    // SAFETY: an all-zero siginfo_t is valid; waitid with WNOHANG only writes into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WNOHANG | libc::WNOWAIT | libc::__WALL;
    match unsafe { libc::waitid(libc::P_ALL, 0, &mut info, flags) } {
        // SAFETY: si_pid is set by waitid (0 when no child has changed state).
        0 => (unsafe { info.si_pid() }) != 0,
        _ => std::io::Error::last_os_error().raw_os_error() != Some(libc::ECHILD),
    }
}

#[cfg(not(target_os = "linux"))]
fn may_have_zombie_children() -> bool {
    false
}

/// Pids of children of `parent` that have exited and were never reaped (state `Z`): the
/// children every thread of `parent` lists, or where the kernel lists none, the whole table.
#[cfg(target_os = "linux")]
pub fn zombie_children(parent: u32) -> Vec<u32> {
    use crate::services::{ProcSource, Procfs};
    let is_zombie_child = |p: &crate::services::ProcEntry| p.zombie && p.ppid == parent;
    let listed = Procfs.entry(parent).and_then(|entry| Procfs.children(&entry, true));
    match listed {
        Some(children) => {
            children.into_iter().filter(|&pid| Procfs.entry(pid).is_some_and(|p| is_zombie_child(&p))).collect()
        }
        None => Procfs.table().into_iter().filter(is_zombie_child).map(|p| p.pid).collect(),
    }
}

/// Zombie detection reads `/proc`; other platforms report none.
#[cfg(not(target_os = "linux"))]
pub fn zombie_children(_parent: u32) -> Vec<u32> {
    Vec::new()
}

#[cfg(target_os = "linux")]
fn parent_pid(pid: u32) -> Option<u32> {
    use crate::services::{ProcSource, Procfs};
    Procfs.entry(pid).map(|p| p.ppid)
}

#[cfg(not(target_os = "linux"))]
fn parent_pid(_pid: u32) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_argument_is_an_integer_from_1_to_u32_max() {
        use serde_json::json;
        assert_eq!(ProcessRegistry::pid_arg(Some(&json!(4242))).unwrap(), 4242);
        for bad in [json!(0), json!(-1), json!(1.5), json!(4_294_967_296u64), json!("1")] {
            let e = ProcessRegistry::pid_arg(Some(&bad)).unwrap_err();
            assert_eq!(e.message, format!("pid: expected a process id (an integer > 0), got {bad}"));
        }
        assert!(ProcessRegistry::pid_arg(None).unwrap_err().message.ends_with("got nothing"));
    }
    use std::time::{Duration, Instant};

    #[test]
    fn reads_sane_host_figures_and_registered_processes() {
        let registry = ProcessRegistry::new();
        let me = std::process::id();
        registry.register(me, "tests");
        registry.register(u32::MAX - 1, "gone");
        let mut reader = HostReader::new(registry.clone()).unwrap();
        let host = reader.read();
        assert!(host.total_mb > 0, "{host:?}");
        assert!(host.available_mb > 0 && host.available_mb <= host.total_mb, "{host:?}");
        assert!(host.swap_used_mb <= host.swap_total_mb, "{host:?}");
        assert!((0.0..=100.0).contains(&host.cpu_percent), "{host:?}");
        let mine = host.processes.iter().find(|p| p.pid == me).unwrap();
        assert_eq!(mine.label, "tests");
        assert!(mine.rss_mb.is_some_and(|rss| rss > 0), "{mine:?}");
        let gone = host.processes.iter().find(|p| p.label == "gone").unwrap();
        assert_eq!(gone.rss_mb, None);
        assert!(registry.unregister(me));
        assert!(!registry.unregister(me));
        assert_eq!(reader.read().processes.len(), 1);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn labels_a_descendant_with_its_registered_ancestor() {
        let registry = ProcessRegistry::new();
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        assert_eq!(registry.service_of(child.id()), None);
        registry.register(std::process::id(), "node");
        assert_eq!(registry.service_of(child.id()).as_deref(), Some("node"));
        registry.register(child.id(), "worker");
        assert_eq!(registry.service_of(child.id()).as_deref(), Some("worker"));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn counts_an_unreaped_child_as_a_zombie_until_it_is_reaped() {
        let mut child = std::process::Command::new("sleep").arg("0").spawn().unwrap();
        let pid = child.id();
        let me = std::process::id();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !zombie_children(me).contains(&pid) {
            assert!(Instant::now() < deadline, "child {pid} never showed up as a zombie");
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut reader = HostReader::new(ProcessRegistry::new()).unwrap();
        assert!(reader.read().zombie_children >= 1);
        assert!(may_have_zombie_children(), "the kernel's peek sees it");
        child.wait().unwrap();
        assert!(!zombie_children(me).contains(&pid));
    }
}
