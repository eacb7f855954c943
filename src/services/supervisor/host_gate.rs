//! The host-memory gate before each start, and the peak resident memory of each service's process
//! tree, learned. The arithmetic is in `services::host_memory`; this is where it meets the
//! supervisor's state.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::first_reading::{ReadingGate, Waiting};
use super::{ms, Shared, WaitReason};
use crate::error::{ErrorCode, SidecarError, SidecarResult};
use crate::services::events::{epoch_ms, ServiceEventKind};
use crate::services::host_memory::{still_to_come_mb, tree_rss_mb, Admission, HostBudget, HostMemReading};
use crate::services::needs::host_need_mb;
use crate::services::profile::LearnedProfile;

/// How often a ready service's process tree is measured (while it loads: `probeIntervalMs`).
const RUNNING_RSS_SAMPLE: Duration = Duration::from_secs(1);

/// The host memory a start was admitted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HostLoad {
    expected_mb: u64,
    /// When it was ready (epoch ms): a reading taken after then shows all of it.
    ready_at_ms: Option<u64>,
}

/// A start admitted by the gate. Dropped before ready (the start failed or was stopped), it no
/// longer counts against later starts; [`HostAdmission::ready`] keeps it counted until a reading
/// taken after ready shows its memory.
pub(super) struct HostAdmission {
    shared: Arc<Shared>,
    i: usize,
}

impl HostAdmission {
    pub(super) fn ready(self) {
        if let Some(load) = self.shared.cell(self.i).host_load.as_mut() {
            load.ready_at_ms = Some(epoch_ms());
        }
        std::mem::forget(self);
    }
}

impl Drop for HostAdmission {
    fn drop(&mut self) {
        self.shared.cell(self.i).host_load = None;
    }
}

impl Shared {
    /// What the admitted loads other than `except` are still expected to take that `reading` does
    /// not show: all of a load spawned at or after it (or not spawned yet); for one spawned
    /// before it, what its process tree has not allocated yet; nothing once a reading taken after
    /// it was ready.
    fn host_in_flight_mb(&self, except: Option<usize>, reading: HostMemReading) -> u64 {
        let mut in_flight_mb = 0u64;
        for j in self.listed().into_iter().filter(|&j| Some(j) != except) {
            let (load, spawned_at_ms, pid) = {
                let cell = self.cell(j);
                (cell.host_load, cell.spawned_at_ms.filter(|&at| at != u64::MAX), cell.pid)
            };
            let Some(load) = load else { continue };
            if load.ready_at_ms.is_some_and(|at| reading.sampled_at_ms > at) {
                continue;
            }
            let seen_before = spawned_at_ms.is_some_and(|at| at < reading.sampled_at_ms);
            let rss_now_mb = if seen_before { pid.and_then(tree_rss_mb).unwrap_or(0) } else { 0 };
            in_flight_mb = in_flight_mb.saturating_add(still_to_come_mb(
                load.expected_mb,
                spawned_at_ms,
                reading.sampled_at_ms,
                rss_now_mb,
            ));
        }
        in_flight_mb
    }

    /// See [`super::Supervisor::host_budget`].
    pub(super) fn host_budget(&self) -> Option<HostBudget> {
        let reading = self.hooks.host_memory.as_ref()?.host_memory()?;
        let _gating = self.host_gating.lock().expect("host gating lock");
        Some(HostBudget::new(reading, self.config.host_mem_headroom_mb.get(), self.host_in_flight_mb(None, reading)))
    }

    /// Waits until the host can take service `i`'s start: no swapping, and its `hostMemMb` (else
    /// its learned peak RSS) within the available memory less `hostMemHeadroomMb` less the loads
    /// on their way; then counts it among those loads. Fails with `HOST_MEMORY_LOW` after
    /// `hostMemTimeoutMs`. Waits (within that time) for an attached Telemetry's first reading; off
    /// (`None`) without a Telemetry.
    pub(super) async fn host_memory_gate(
        self: &Arc<Self>,
        i: usize,
        learned: LearnedProfile,
    ) -> SidecarResult<Option<HostAdmission>> {
        let Some(source) = self.hooks.host_memory.clone() else { return Ok(None) };
        let spec = self.spec(i);
        let need = host_need_mb(&spec, &learned);
        let headroom_mb = self.config.host_mem_headroom_mb.get();
        let limit_ms = self.config.host_mem_timeout_ms.get();
        let deadline = Instant::now() + ms(limit_ms);
        let poll = ms(spec.probe_interval_ms.get());
        let mut announced = None;
        let mut waiting = None;
        self.await_first_reading(i, ReadingGate::HostMemory, limit_ms, || source.first_reading_pending()).await?;
        loop {
            let Some(reading) = source.host_memory() else { return Ok(None) };
            let budget = {
                let _gating = self.host_gating.lock().expect("host gating lock");
                let budget = HostBudget::new(reading, headroom_mb, self.host_in_flight_mb(Some(i), reading));
                if budget.admits(need) == Admission::Go {
                    self.cell(i).host_load = need.map(|expected_mb| HostLoad { expected_mb, ready_at_ms: None });
                    return Ok(Some(HostAdmission { shared: self.clone(), i }));
                }
                budget
            };
            let why = budget.admits(need);
            if waiting.is_none() {
                waiting = Some(Waiting::new(self, i, WaitReason::HostMemory));
            }
            if announced != Some(why) {
                announced = Some(why);
                self.emit(
                    i,
                    ServiceEventKind::HostMemoryWait {
                        needed_mb: need,
                        available_mb: budget.available_mb,
                        headroom_mb,
                        in_flight_mb: budget.in_flight_mb,
                        budget_mb: budget.budget_mb,
                        swap_active: budget.swap_active,
                    },
                );
            }
            if Instant::now() >= deadline {
                let detail = if why == Admission::WaitSwap {
                    format!("the host was still swapping (SWAP_ACTIVE) after {limit_ms} ms")
                } else {
                    format!(
                        "needs {} MB of host memory but after {limit_ms} ms only {} MB was available, less {headroom_mb} MB headroom and {} MB for loads on their way ({} MB left)",
                        need.unwrap_or(0),
                        budget.available_mb,
                        budget.in_flight_mb,
                        budget.budget_mb
                    )
                };
                return Err(SidecarError::new(ErrorCode::HostMemoryLow, format!("{}: {detail}", spec.name)));
            }
            tokio::time::sleep(poll.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// Starts measuring the resident memory of service `i`'s process tree (root `pid`).
    pub(super) fn sample_rss(&self, i: usize, pid: u32) -> RssSampler {
        let peak_mb = Arc::new(AtomicU64::new(0));
        let loaded = Arc::new(AtomicBool::new(false));
        let loading_interval = ms(self.spec(i).probe_interval_ms.get());
        let task = tokio::spawn({
            let (peak_mb, loaded) = (peak_mb.clone(), loaded.clone());
            async move {
                loop {
                    if let Some(mb) = tree_rss_mb(pid) {
                        peak_mb.fetch_max(mb, Ordering::Relaxed);
                    }
                    let interval = if loaded.load(Ordering::Relaxed) { RUNNING_RSS_SAMPLE } else { loading_interval };
                    tokio::time::sleep(interval).await;
                }
            }
        });
        RssSampler { pid, peak_mb, loaded, task }
    }
}

/// Measures a service's process tree in the background; dropping it stops.
pub(super) struct RssSampler {
    pid: u32,
    peak_mb: Arc<AtomicU64>,
    loaded: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl RssSampler {
    /// The highest figure so far (one more look first, while the process may still be there).
    pub(super) fn peak(&self) -> Option<u64> {
        if let Some(mb) = tree_rss_mb(self.pid) {
            self.peak_mb.fetch_max(mb, Ordering::Relaxed);
        }
        Some(self.peak_mb.load(Ordering::Relaxed)).filter(|&mb| mb > 0)
    }

    /// The service is ready: measure it less often from now on.
    pub(super) fn loaded(&self) {
        self.loaded.store(true, Ordering::Relaxed);
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}
