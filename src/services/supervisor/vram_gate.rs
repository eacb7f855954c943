//! The VRAM gate before a GPU load, and the VRAM a running service uses.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::{ms, Shared};
use crate::error::{ErrorCode, SidecarError, SidecarResult};
use crate::services::config::GpuNeed;
use crate::services::events::ServiceEventKind;
use crate::services::hooks::VramReading;
use crate::services::profile::LearnedProfile;

/// How often a running GPU service's VRAM use is sampled after it is ready.
const RUNNING_VRAM_SAMPLE: Duration = Duration::from_secs(1);

/// Samples a process's VRAM use in the background; dropping it stops sampling.
pub(super) struct VramSampler {
    peak_mb: Arc<AtomicU64>,
    /// Sampling slows down once the service is ready (and the model is loaded).
    pub loaded: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl VramSampler {
    pub fn peak(&self) -> Option<u64> {
        Some(self.peak_mb.load(Ordering::Relaxed)).filter(|&mb| mb > 0)
    }
}

impl Drop for VramSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Shared {
    /// Waits until `gpu` has room for the service plus headroom. A reading taken before another
    /// service on that GPU was spawned does not show that service's memory yet, so its expected
    /// need is taken off the reading (as the arbiter does for leases granted after a sample). Off
    /// (with an event saying why) when there is no telemetry or no estimate of the service's need.
    pub(super) async fn vram_gate(&self, i: usize, gpu: &GpuNeed, learned: LearnedProfile) -> SidecarResult<()> {
        let gate_off = |reason: &str| {
            self.emit(i, ServiceEventKind::VramGateOff { gpu_key: gpu.key.clone(), reason: reason.to_string() });
            Ok(())
        };
        let Some(source) = &self.hooks.vram else {
            return gate_off("no VRAM telemetry source");
        };
        let Some(need) = gpu.vram_mb.map(|mb| mb.get()).or(learned.peak_vram_mb) else {
            return gate_off("no vramMb configured and none learned from an earlier run");
        };
        let needed_mb = need.saturating_add(self.config.vram_headroom_mb.get());
        let limit_ms = self.config.vram_timeout_ms.get();
        let deadline = Instant::now() + ms(limit_ms);
        let poll = ms(self.spec(i).probe_interval_ms.get());
        let mut announced = false;
        let mut tried_eviction = false;
        loop {
            let Some(reading) = source.free_mb(&gpu.key) else {
                return gate_off("no VRAM telemetry for this GPU");
            };
            let unseen_mb = self.unseen_vram_mb(i, &gpu.key, reading);
            let free_mb = reading.free_mb.saturating_sub(unseen_mb);
            if free_mb >= needed_mb {
                return Ok(());
            }
            if !tried_eviction {
                tried_eviction = true;
                if self.make_room(i, &gpu.key, needed_mb - free_mb).await {
                    continue;
                }
            }
            if !announced {
                self.emit(i, ServiceEventKind::VramWait { gpu_key: gpu.key.clone(), needed_mb, free_mb });
                announced = true;
            }
            if Instant::now() >= deadline {
                return Err(SidecarError::new(
                    ErrorCode::VramTimeout,
                    format!(
                        "{}: {} had {free_mb} MB free after {limit_ms} ms{}, needs {needed_mb} MB ({need} MB + {} MB headroom)",
                        self.spec(i).name,
                        gpu.key,
                        if unseen_mb > 0 {
                            format!(" (the reading less {unseen_mb} MB expected for services spawned after it)")
                        } else {
                            String::new()
                        },
                        self.config.vram_headroom_mb.get()
                    ),
                ));
            }
            tokio::time::sleep(poll.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// The expected VRAM (MB: `vramMb`, else the learned peak, else 0) of the other services on
    /// `gpu_key` whose running process was spawned at or after `reading` was taken. Ties count,
    /// because both times are whole ms.
    fn unseen_vram_mb(&self, i: usize, gpu_key: &str, reading: VramReading) -> u64 {
        let mut unseen_mb = 0u64;
        for (j, spec) in self.config.services.iter().enumerate() {
            let Some(gpu) = spec.gpu.as_ref().filter(|g| j != i && g.key == gpu_key) else { continue };
            let spawned_at_ms = self.cell(j).spawned_at_ms;
            if spawned_at_ms.is_none_or(|at| at < reading.sampled_at_ms) {
                continue;
            }
            let expected = gpu
                .vram_mb
                .map(|mb| mb.get())
                .or_else(|| self.profiles.lock().expect("profiles lock").get(&spec.name).peak_vram_mb);
            unseen_mb = unseen_mb.saturating_add(expected.unwrap_or(0));
        }
        unseen_mb
    }

    /// Starts sampling the VRAM a GPU service's process uses, when telemetry is there.
    pub(super) fn sample_vram(&self, i: usize, pid: u32) -> Option<VramSampler> {
        let source = self.hooks.vram.clone()?;
        self.spec(i).gpu.as_ref()?;
        let peak_mb = Arc::new(AtomicU64::new(0));
        let loaded = Arc::new(AtomicBool::new(false));
        let loading_interval = ms(self.spec(i).probe_interval_ms.get());
        let task = tokio::spawn({
            let (peak_mb, loaded) = (peak_mb.clone(), loaded.clone());
            async move {
                loop {
                    if let Some(mb) = source.process_used_mb(pid) {
                        peak_mb.fetch_max(mb, Ordering::Relaxed);
                    }
                    let pause = if loaded.load(Ordering::Relaxed) { RUNNING_VRAM_SAMPLE } else { loading_interval };
                    tokio::time::sleep(pause).await;
                }
            }
        });
        Some(VramSampler { peak_mb, loaded, task })
    }
}
