//! An attached Telemetry as the supervisor sees it: the VRAM gate's and placement's readings
//! ([`VramSource`]), the host-memory gate's ([`HostMemorySource`]), and the running service pids,
//! labelled in that Telemetry's process registry so samples name their service.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::services::{
    HostMemReading, HostMemorySource, LoadSeen, ServiceEvent, ServiceEventKind, VramReading, VramSource,
};
use crate::telemetry::{LatestSample, ProcessRegistry, Sample};

/// Where the latest sample comes from: a Telemetry's sampler ([`LatestSample`]), or a fake.
pub trait SampleSource: Send + Sync {
    /// The latest sample, if any (none before the first, or once the Telemetry is closed).
    fn latest(&self) -> Option<Arc<Sample>>;
    /// Asks for fresh per-process lists in the next sample.
    fn want_processes(&self) {}
    /// Whether the SWAP_ACTIVE alert is raised as of the latest sample.
    fn swap_active(&self) -> bool {
        false
    }
    /// Whether the first sample is still to come (the source runs and has produced none).
    fn first_pending(&self) -> bool {
        false
    }
}

impl SampleSource for LatestSample {
    fn latest(&self) -> Option<Arc<Sample>> {
        self.get()
    }
    fn first_pending(&self) -> bool {
        LatestSample::first_pending(self)
    }
    fn want_processes(&self) {
        LatestSample::want_processes(self)
    }
    fn swap_active(&self) -> bool {
        LatestSample::swap_active(self)
    }
}

/// The Telemetry a supervisor is attached to, with the id its detach function holds.
struct Attached {
    id: u64,
    samples: Box<dyn SampleSource>,
    registry: Arc<ProcessRegistry>,
}

/// The supervisor's view of whatever Telemetry is attached (none: no readings, so the gates are
/// off and say so), and the running service pids to label in it.
#[derive(Default)]
pub struct SupervisorTelemetry {
    attached: Mutex<Option<Attached>>,
    next_id: AtomicU64,
    /// Running service processes: pid to service name.
    pids: Mutex<BTreeMap<u32, String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SupervisorTelemetry {
    /// Attaches a Telemetry (replacing one attached before, whose labels are taken back) and
    /// labels the running services' pids in it; returns the id that [`Self::detach`] takes.
    pub fn attach(&self, samples: Box<dyn SampleSource>, registry: Arc<ProcessRegistry>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Locks in one order everywhere: pids, then attached.
        let pids = lock(&self.pids);
        for (pid, service) in pids.iter() {
            registry.register(*pid, service.clone());
        }
        let old = lock(&self.attached).replace(Attached { id, samples, registry });
        if let Some(old) = old {
            for pid in pids.keys() {
                old.registry.unregister(*pid);
            }
        }
        id
    }

    /// Detaches the Telemetry attached as `id` (a later one stays), taking its labels back.
    pub fn detach(&self, id: u64) {
        let pids = lock(&self.pids);
        let mut attached = lock(&self.attached);
        if attached.as_ref().is_some_and(|a| a.id == id) {
            let old = attached.take().expect("checked above");
            for pid in pids.keys() {
                old.registry.unregister(*pid);
            }
        }
    }

    /// Keeps the pid table (and the attached registry) in step with the event stream.
    pub fn observe(&self, event: &ServiceEvent) {
        let mut pids = lock(&self.pids);
        let attached = lock(&self.attached);
        match &event.kind {
            ServiceEventKind::Spawned { pid } => {
                pids.insert(*pid, event.service.clone());
                if let Some(a) = attached.as_ref() {
                    a.registry.register(*pid, event.service.clone());
                }
            }
            ServiceEventKind::Exited { .. } | ServiceEventKind::Failed { .. } | ServiceEventKind::Stopped => {
                pids.retain(|pid, service| {
                    let keep = *service != event.service;
                    if !keep {
                        if let Some(a) = attached.as_ref() {
                            a.registry.unregister(*pid);
                        }
                    }
                    keep
                });
            }
            _ => {}
        }
    }

    /// Whether a Telemetry is attached and its first sample is still to come.
    fn first_pending(&self) -> bool {
        lock(&self.attached).as_ref().is_some_and(|a| a.samples.first_pending())
    }

    /// The latest sample with NVML figures, and the registry that labels its processes.
    fn gpu_sample(&self) -> Option<(Arc<Sample>, Arc<ProcessRegistry>)> {
        let attached = lock(&self.attached);
        let a = attached.as_ref()?;
        let sample = a.samples.latest()?;
        sample.nvml.available.then(|| (sample, a.registry.clone()))
    }
}

impl VramSource for SupervisorTelemetry {
    /// A GPU that fell off the bus has no reading.
    fn free_mb(&self, gpu_key: &str) -> Option<VramReading> {
        let (sample, _) = self.gpu_sample()?;
        let gpu = sample.gpu(gpu_key).filter(|g| !g.lost)?;
        Some(VramReading { free_mb: gpu.free_mb?, used_mb: gpu.used_mb, sampled_at_ms: sample.at as u64 })
    }

    fn gpu_keys(&self) -> Vec<String> {
        let Some((sample, _)) = self.gpu_sample() else { return Vec::new() };
        sample.gpus.iter().filter(|g| !g.lost).map(|g| g.key.clone()).collect()
    }

    /// From the latest sample's process lists for the GPU: when they were read at or after the
    /// spawn, the pid's memory and its labelled workers'; asks for fresh lists when they are older.
    fn load_seen(&self, gpu_key: &str, pid: u32, spawned_at_ms: u64) -> LoadSeen {
        let Some((sample, registry)) = self.gpu_sample() else { return LoadSeen::Unknown };
        let Some(gpu) = sample.gpu(gpu_key) else { return LoadSeen::Unknown };
        let Some(read_at) = gpu.processes_at else { return LoadSeen::Unknown };
        if (read_at as u64) < spawned_at_ms {
            if let Some(a) = lock(&self.attached).as_ref() {
                a.samples.want_processes();
            }
            return LoadSeen::NotYet;
        }
        let label = registry.service_of(pid);
        let mut shown = 0u64;
        for p in gpu.processes.iter().filter(|p| p.pid == pid || (label.is_some() && p.service == label)) {
            match p.used_mb {
                Some(mb) => shown += mb,
                None => return LoadSeen::Unknown,
            }
        }
        LoadSeen::Shown(shown)
    }

    fn gpu_uuid(&self, gpu_key: &str) -> Option<String> {
        let (sample, _) = self.gpu_sample()?;
        sample.gpu(gpu_key)?.uuid.clone().filter(|uuid| !uuid.is_empty())
    }

    fn first_reading_pending(&self) -> bool {
        self.first_pending()
    }

    /// Only a reading says there is no GPU: no Telemetry, NVML unavailable (with its reason), or a
    /// GPU that the reading does not list (or lists as lost).
    fn no_reading_reason(&self, gpu_key: &str) -> String {
        let attached = lock(&self.attached);
        // "no VRAM telemetry" / "no attached telemetry lists a GPU" open the reasons JS matched on
        // before the first-reading wait; the detail follows.
        let none = if gpu_key == crate::services::AUTO_GPU_KEY {
            "no attached telemetry lists a GPU"
        } else {
            "no VRAM telemetry"
        };
        let Some(a) = attached.as_ref() else { return format!("{none}: no Telemetry is attached") };
        let Some(sample) = a.samples.latest() else { return format!("{none}: the attached Telemetry has no sample") };
        if !sample.nvml.available {
            let why = sample.nvml.reason.map(|r| format!(" ({})", r.as_str())).unwrap_or_default();
            return format!("{none}: NVML is unavailable{why} in the attached Telemetry's reading");
        }
        let listed: Vec<&str> = sample.gpus.iter().filter(|g| !g.lost).map(|g| g.key.as_str()).collect();
        match sample.gpu(gpu_key) {
            Some(gpu) if gpu.lost => {
                format!("{none}: {gpu_key} is lost (fell off the bus) in the attached Telemetry's reading")
            }
            Some(_) => format!("{none}: the attached Telemetry's reading has no free-memory figure for {gpu_key}"),
            None if gpu_key == crate::services::AUTO_GPU_KEY || listed.is_empty() => {
                format!("{none}: the attached Telemetry's reading lists no GPU")
            }
            None => format!(
                "{none}: the attached Telemetry's reading does not list {gpu_key} (it lists {})",
                listed.join(", ")
            ),
        }
    }

    /// The pid's own GPU memory plus that of processes labelled with its service (its workers).
    /// Asks for fresh process lists in the next sample: with `processIntervalMs` the lists in
    /// the latest one may be up to that old, and a load's peak is what is being learned.
    fn process_used_mb(&self, pid: u32) -> Option<u64> {
        if let Some(a) = lock(&self.attached).as_ref() {
            a.samples.want_processes();
        }
        let (sample, registry) = self.gpu_sample()?;
        let label = registry.service_of(pid);
        let mut total = None;
        for p in sample.gpus.iter().flat_map(|g| &g.processes) {
            if p.pid == pid || (label.is_some() && p.service == label) {
                if let Some(mb) = p.used_mb {
                    total = Some(total.unwrap_or(0) + mb);
                }
            }
        }
        total
    }
}

/// The host-memory gate's readings: the latest host figures (NVML or not) and whether the
/// SWAP_ACTIVE alert is raised.
impl HostMemorySource for SupervisorTelemetry {
    fn host_memory(&self) -> Option<HostMemReading> {
        let attached = lock(&self.attached);
        let a = attached.as_ref()?;
        let sample = a.samples.latest()?;
        Some(HostMemReading {
            available_mb: sample.host.available_mb,
            total_mb: sample.host.total_mb,
            swap_active: a.samples.swap_active(),
            sampled_at_ms: sample.at as u64,
        })
    }

    fn first_reading_pending(&self) -> bool {
        self.first_pending()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// A hand-fed sample source.
    #[derive(Default)]
    struct Fed {
        sample: Mutex<Option<Arc<Sample>>>,
        asked_for_processes: AtomicBool,
    }

    impl SampleSource for Arc<Fed> {
        fn latest(&self) -> Option<Arc<Sample>> {
            lock(&self.sample).clone()
        }
        fn want_processes(&self) {
            self.asked_for_processes.store(true, Ordering::SeqCst);
        }
        fn swap_active(&self) -> bool {
            true
        }
    }

    fn sample(json: serde_json::Value) -> Arc<Sample> {
        Arc::new(crate::telemetry::parse_sample(json, "sample").unwrap())
    }

    fn two_gpus() -> Arc<Sample> {
        sample(serde_json::json!({
            "at": 5000, "nvml": {"available": true},
            "gpus": [
                {"index": 0, "key": "gpu:0", "uuid": "GPU-a", "freeMb": 3000, "usedMb": 5000, "totalMb": 8000,
                 "processes": [{"pid": 10, "usedMb": 700}, {"pid": 11, "usedMb": 300, "service": "asr"}, {"pid": 12, "usedMb": 50}]},
                {"index": 1, "key": "gpu:1", "uuid": "", "lost": true, "freeMb": 9000}
            ],
            "host": {"availableMb": 12000, "totalMb": 32000, "swapTotalMb": 0, "swapUsedMb": 0, "cpuPercent": 5}
        }))
    }

    fn spawned(service: &str, pid: u32) -> ServiceEvent {
        ServiceEvent { service: service.into(), timestamp_ms: 1, kind: ServiceEventKind::Spawned { pid } }
    }

    #[test]
    fn readings_come_from_the_latest_sample_and_a_lost_gpu_has_none() {
        let link = SupervisorTelemetry::default();
        assert_eq!(link.free_mb("gpu:0"), None, "nothing attached: the gates are off");
        let fed = Arc::new(Fed::default());
        *lock(&fed.sample) = Some(two_gpus());
        link.attach(Box::new(fed.clone()), ProcessRegistry::new());
        assert_eq!(
            link.free_mb("gpu:0"),
            Some(VramReading { free_mb: 3000, used_mb: Some(5000), sampled_at_ms: 5000 })
        );
        assert_eq!(link.free_mb("gpu:1"), None);
        assert_eq!(link.gpu_keys(), ["gpu:0"]);
        assert_eq!(link.gpu_uuid("gpu:0").as_deref(), Some("GPU-a"));
        assert_eq!(link.gpu_uuid("gpu:1"), None, "an empty uuid is none");
        let host = link.host_memory().unwrap();
        assert_eq!((host.available_mb, host.total_mb, host.swap_active), (12000, 32000, true));
    }

    #[test]
    fn a_services_gpu_memory_is_its_pid_plus_the_processes_labelled_with_it() {
        let link = SupervisorTelemetry::default();
        let fed = Arc::new(Fed::default());
        *lock(&fed.sample) = Some(two_gpus());
        let registry = ProcessRegistry::new();
        link.attach(Box::new(fed.clone()), registry.clone());
        link.observe(&spawned("asr", 10));
        assert_eq!(registry.service_of(10).as_deref(), Some("asr"), "the spawned pid is labelled");
        assert_eq!(link.process_used_mb(10), Some(1000), "700 of its own + 300 of a worker labelled asr");
        assert!(fed.asked_for_processes.load(Ordering::SeqCst), "a peak is learned from fresh lists");
        assert_eq!(link.process_used_mb(99), None);
    }

    #[test]
    fn how_much_of_a_load_the_process_lists_show_depends_on_when_they_were_read() {
        let link = SupervisorTelemetry::default();
        let fed = Arc::new(Fed::default());
        let with_lists_at = |at: Option<f64>| {
            let mut sample = (*two_gpus()).clone();
            sample.gpus[0].processes_at = at;
            Arc::new(sample)
        };
        *lock(&fed.sample) = Some(with_lists_at(Some(4000.0)));
        let registry = ProcessRegistry::new();
        link.attach(Box::new(fed.clone()), registry.clone());
        link.observe(&spawned("asr", 10));
        // Lists read after the spawn: what they show (its workers' included); 0 for a pid not listed.
        assert_eq!(link.load_seen("gpu:0", 10, 3000), LoadSeen::Shown(1000));
        assert_eq!(link.load_seen("gpu:0", 77, 3000), LoadSeen::Shown(0));
        // Lists older than the spawn cannot show it; fresh ones are asked for.
        fed.asked_for_processes.store(false, Ordering::SeqCst);
        assert_eq!(link.load_seen("gpu:0", 10, 4500), LoadSeen::NotYet);
        assert!(fed.asked_for_processes.load(Ordering::SeqCst));
        // No lists (a pushed sample): unknown.
        *lock(&fed.sample) = Some(with_lists_at(None));
        assert_eq!(link.load_seen("gpu:0", 10, 3000), LoadSeen::Unknown);
    }

    #[test]
    fn labels_follow_the_services_and_move_with_the_attached_telemetry() {
        let link = SupervisorTelemetry::default();
        link.observe(&spawned("asr", 10));
        let first = ProcessRegistry::new();
        let id = link.attach(Box::new(Arc::new(Fed::default())), first.clone());
        assert_eq!(first.service_of(10).as_deref(), Some("asr"), "running before the attach: labelled on attach");
        let second = ProcessRegistry::new();
        let id2 = link.attach(Box::new(Arc::new(Fed::default())), second.clone());
        assert_eq!(first.service_of(10), None, "a replaced Telemetry's labels are taken back");
        assert_eq!(second.service_of(10).as_deref(), Some("asr"));
        link.detach(id); // stale: the second stays
        assert_eq!(second.service_of(10).as_deref(), Some("asr"));
        link.observe(&ServiceEvent { service: "asr".into(), timestamp_ms: 2, kind: ServiceEventKind::Stopped });
        assert_eq!(second.service_of(10), None, "a stopped service's pids are taken back");
        link.detach(id2);
        assert!(link.host_memory().is_none());
    }
}
