//! The VRAM a GPU service takes: its processes' own figures where the source has them, else the
//! rise in its GPU's used memory over a load that had the GPU to itself.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{ms, Shared};
use crate::services::hooks::{VramReading, VramSource};
use crate::services::profile::{PeakVram, PeakVramMethod};

/// How often a running GPU service's VRAM use is sampled after it is ready.
const RUNNING_VRAM_SAMPLE: Duration = Duration::from_secs(1);

/// The loads (spawned, not ready yet) on each GPU, so a load can tell whether it had the GPU to
/// itself: only then is the rise in the GPU's used memory its own.
#[derive(Debug, Default)]
pub(super) struct GpuLoads {
    gpus: Mutex<BTreeMap<String, LoadCounts>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct LoadCounts {
    /// Loads under way now.
    loading: u32,
    /// Loads begun so far.
    begun: u64,
    /// When the latest load ended (epoch ms): a reading taken before then may miss its memory.
    last_end_ms: u64,
}

impl GpuLoads {
    fn counts(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, LoadCounts>> {
        self.gpus.lock().expect("gpu loads lock")
    }
}

/// One load on one GPU, from just before its spawn until it is ready (or has failed: dropped).
pub(super) struct LoadWindow {
    loads: Arc<GpuLoads>,
    gpu_key: String,
    /// The GPU's reading just before the spawn.
    baseline: Option<VramReading>,
    /// Other loads under way on the GPU as this one began.
    others_at_start: u32,
    /// `begun` on the GPU once this load began: more at its end means another began meanwhile.
    begun_with_this: u64,
    /// When the load before this one ended.
    last_end_ms: u64,
}

impl LoadWindow {
    /// Why this load did not have its GPU to itself, if it did not.
    fn shared_with(&self) -> Option<&'static str> {
        let counts = self.loads.counts().get(&self.gpu_key).copied().unwrap_or_default();
        if self.others_at_start > 0 {
            Some("another service was loading on the GPU when it was spawned")
        } else if counts.begun != self.begun_with_this {
            Some("another service began loading on the GPU before it was ready")
        } else if self.baseline.is_some_and(|b| b.sampled_at_ms <= self.last_end_ms) {
            Some("the reading before its spawn predates the end of another load on the GPU")
        } else {
            None
        }
    }
}

impl Drop for LoadWindow {
    /// The load ended (ready, failed or stopped).
    fn drop(&mut self) {
        let mut gpus = self.loads.counts();
        let counts = gpus.entry(self.gpu_key.clone()).or_default();
        counts.loading = counts.loading.saturating_sub(1);
        counts.last_end_ms = crate::services::events::epoch_ms();
    }
}

/// Samples a service's VRAM use in the background: its processes' figures, and while it loads,
/// its GPU's used memory. Dropping it stops sampling (and ends its load window).
pub(super) struct VramSampler {
    source: Arc<dyn VramSource>,
    pid: u32,
    process_peak_mb: Arc<AtomicU64>,
    gpu_used_peak_mb: Arc<AtomicU64>,
    window: Option<LoadWindow>,
    /// Sampling slows down once the service is ready (and the model is loaded).
    loaded: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl VramSampler {
    /// The highest per-process figure seen so far.
    pub fn process_peak(&self) -> Option<PeakVram> {
        Some(self.process_peak_mb.load(Ordering::Relaxed))
            .filter(|&mb| mb > 0)
            .map(|mb| PeakVram { mb, method: PeakVramMethod::Process })
    }

    /// The service is ready: ends its load and says what it took. Its processes' peak when the
    /// source had per-process figures; else the rise in its GPU's used memory over the
    /// baseline, if it loaded alone there; else nothing.
    pub fn loaded(&mut self, service: &str) -> Option<PeakVram> {
        self.loaded.store(true, Ordering::Relaxed);
        // One more look: the last sample before ready may have come after the last poll.
        sample_once(&*self.source, self.pid, self.gpu_key(), &self.process_peak_mb, &self.gpu_used_peak_mb);
        let window = self.window.take();
        // Dropping `window` on return ends the load.
        self.process_peak().or_else(|| {
            let window = window.as_ref()?;
            let baseline = window.baseline?.used_mb?;
            let peak = Some(self.gpu_used_peak_mb.load(Ordering::Relaxed)).filter(|&mb| mb > 0)?;
            if let Some(why) = window.shared_with() {
                tracing::debug!(
                    service,
                    gpu_key = %window.gpu_key,
                    "not learning peak VRAM from the GPU's used memory: {why}"
                );
                return None;
            }
            Some(PeakVram { mb: peak.checked_sub(baseline).filter(|&mb| mb > 0)?, method: PeakVramMethod::GpuDelta })
        })
    }

    fn gpu_key(&self) -> Option<&str> {
        self.window.as_ref().map(|w| w.gpu_key.as_str())
    }
}

impl Drop for VramSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Takes one reading of the process's figures and (while it loads) its GPU's used memory.
fn sample_once(source: &dyn VramSource, pid: u32, gpu_key: Option<&str>, process: &AtomicU64, gpu_used: &AtomicU64) {
    if let Some(mb) = source.process_used_mb(pid) {
        process.fetch_max(mb, Ordering::Relaxed);
    }
    if let Some(used) = gpu_key.and_then(|key| source.free_mb(key)).and_then(|r| r.used_mb) {
        gpu_used.fetch_max(used, Ordering::Relaxed);
    }
}

impl Shared {
    /// Begins a load of service `i` on `gpu_key`, just before its spawn: reads the GPU's
    /// baseline and counts the load. `None` without telemetry.
    pub(super) fn begin_load(&self, gpu_key: &str) -> Option<LoadWindow> {
        let source = self.hooks.vram.as_ref()?;
        let baseline = source.free_mb(gpu_key);
        let mut gpus = self.gpu_loads.counts();
        let counts = gpus.entry(gpu_key.to_string()).or_default();
        let window = LoadWindow {
            loads: self.gpu_loads.clone(),
            gpu_key: gpu_key.to_string(),
            baseline,
            others_at_start: counts.loading,
            begun_with_this: counts.begun + 1,
            last_end_ms: counts.last_end_ms,
        };
        counts.loading += 1;
        counts.begun += 1;
        Some(window)
    }

    /// Starts sampling the VRAM service `i` (process `pid`, loading in `window`) uses, when
    /// telemetry is there.
    pub(super) fn sample_vram(&self, i: usize, pid: u32, window: Option<LoadWindow>) -> Option<VramSampler> {
        let source = self.hooks.vram.clone()?;
        self.spec(i).gpu.as_ref()?;
        let process_peak_mb = Arc::new(AtomicU64::new(0));
        let gpu_used_peak_mb = Arc::new(AtomicU64::new(0));
        let loaded = Arc::new(AtomicBool::new(false));
        let loading_interval = ms(self.spec(i).probe_interval_ms.get());
        let gpu_key = window.as_ref().map(|w| w.gpu_key.clone());
        let task = tokio::spawn({
            let (source, process, gpu_used, loaded) =
                (source.clone(), process_peak_mb.clone(), gpu_used_peak_mb.clone(), loaded.clone());
            async move {
                loop {
                    let loading = !loaded.load(Ordering::Relaxed);
                    let key = gpu_key.as_deref().filter(|_| loading);
                    sample_once(&*source, pid, key, &process, &gpu_used);
                    tokio::time::sleep(if loading { loading_interval } else { RUNNING_VRAM_SAMPLE }).await;
                }
            }
        });
        Some(VramSampler { source, pid, process_peak_mb, gpu_used_peak_mb, window, loaded, task })
    }
}
