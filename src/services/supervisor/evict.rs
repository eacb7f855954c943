//! Eviction: making room on a GPU for a load by stopping idle services that may go (on-demand
//! or `evictable`, not `pinned`, no lease held), lowest priority first, then least recently
//! used; and the one retry after a load ran out of GPU memory.

use std::time::{Duration, Instant};

use super::{ms, ServiceState, Shared};
use crate::services::events::ServiceEventKind;

/// The eviction priority of a service with none configured and no task type priority known.
const DEFAULT_PRIORITY: u64 = 50;
/// How often free memory is read while waiting for an evicted service's memory to show.
const RECOVERY_POLL: Duration = Duration::from_millis(50);

/// A service that may be evicted, with what stopping it should free.
struct Candidate {
    index: usize,
    priority: u64,
    last_used_ms: u64,
    expected_mb: u64,
}

impl Shared {
    /// Stops as few evictable services on `gpu_key` as cover `shortfall_mb` (by their expected
    /// memory), in eviction order, each followed by a wait (at most `vramRecoveryMs`) for its
    /// memory to show as free. Stops nothing when all of them together would not be enough.
    /// Returns whether it stopped any.
    pub(super) async fn make_room(&self, for_service: usize, gpu_key: &str, shortfall_mb: u64) -> bool {
        let mut chosen = Vec::new();
        let mut covered = 0u64;
        for candidate in self.eviction_candidates(for_service, gpu_key) {
            if covered >= shortfall_mb {
                break;
            }
            covered = covered.saturating_add(candidate.expected_mb);
            chosen.push(candidate);
        }
        if covered < shortfall_mb || chosen.is_empty() {
            return false;
        }
        for candidate in chosen {
            self.evict(for_service, gpu_key, &candidate).await;
        }
        true
    }

    /// Stops every evictable service on `gpu_key` (after an out-of-memory load); returns their names.
    pub(super) async fn evict_all(&self, for_service: usize, gpu_key: &str) -> Vec<String> {
        let mut names = Vec::new();
        for candidate in self.eviction_candidates(for_service, gpu_key) {
            self.evict(for_service, gpu_key, &candidate).await;
            names.push(self.spec(candidate.index).name.clone());
        }
        names
    }

    /// The services on `gpu_key` that may be evicted now, in eviction order.
    fn eviction_candidates(&self, for_service: usize, gpu_key: &str) -> Vec<Candidate> {
        let priorities = self.task_priorities.lock().expect("priorities lock").clone();
        let mut found: Vec<Candidate> = Vec::new();
        for j in self.listed() {
            let spec = self.spec(j);
            let Some(gpu) = spec.gpu.as_ref().filter(|g| j != for_service && g.key == gpu_key) else { continue };
            if !spec.is_evictable() {
                continue;
            }
            let (pid, last_used_ms) = {
                let cell = self.cell(j);
                if cell.state != ServiceState::Ready || !cell.leases.active.is_empty() {
                    continue;
                }
                (cell.pid, cell.last_used_ms)
            };
            let priority = spec.priority.map(|p| p.get()).unwrap_or_else(|| {
                gpu.task_types.iter().filter_map(|t| priorities.get(t).copied()).max().unwrap_or(DEFAULT_PRIORITY)
            });
            let learned = self.profiles.lock().expect("profiles lock").get(&spec.name).peak_vram_mb;
            let used_now = pid.and_then(|pid| self.hooks.vram.as_ref()?.process_used_mb(pid));
            let expected_mb = gpu.vram_mb.map(|mb| mb.get()).or(used_now).or(learned).unwrap_or(0);
            found.push(Candidate { index: j, priority, last_used_ms, expected_mb });
        }
        found.sort_by_key(|c| (c.priority, c.last_used_ms, c.index));
        found
    }

    /// Stops one service for `for_service`'s load, waits for its memory to show as free, and
    /// says so in an `evicted` event (on the evicted service).
    async fn evict(&self, for_service: usize, gpu_key: &str, candidate: &Candidate) {
        let free_before = self.free_now(gpu_key);
        let stopped_at = crate::services::events::epoch_ms();
        self.stop(candidate.index).await;
        let deadline = Instant::now() + ms(self.config.vram_recovery_ms.get());
        let mut free_after = free_before;
        if let Some(before) = free_before {
            // A reading taken after the stop that shows the memory back (90%: drivers keep some).
            let target = before.saturating_add(candidate.expected_mb * 9 / 10);
            loop {
                let reading = self.hooks.vram.as_ref().and_then(|v| v.free_mb(gpu_key));
                if let Some(r) = reading.filter(|r| r.sampled_at_ms >= stopped_at) {
                    free_after = Some(r.free_mb);
                    if r.free_mb >= target {
                        break;
                    }
                }
                if Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(RECOVERY_POLL).await;
            }
        }
        let freed_mb = free_before.zip(free_after).map(|(before, after)| after.saturating_sub(before));
        self.emit(
            candidate.index,
            ServiceEventKind::Evicted {
                gpu_key: gpu_key.to_string(),
                for_service: self.spec(for_service).name.clone(),
                expected_mb: candidate.expected_mb,
                freed_mb,
            },
        );
    }

    fn free_now(&self, gpu_key: &str) -> Option<u64> {
        self.hooks.vram.as_ref()?.free_mb(gpu_key).map(|r| r.free_mb)
    }
}
