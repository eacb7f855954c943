//! Point-in-time views of one GPU: who holds it, who waits (in dequeue order), what was counted.

use super::state::{shown, Arbiter};
use super::stats::Percentiles;
use super::types::*;

#[derive(Debug, Clone, PartialEq)]
pub struct LeaseView {
    pub lease_id: LeaseId,
    pub task_type: String,
    pub priority: u64,
    pub trace: Trace,
    pub acquired_at: Micros,
    pub held: Micros,
    pub hold_max: Micros,
    pub watchdog_fired: bool,
    pub vram_mb: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WaiterView {
    /// The waiter's id, which becomes its lease id when it is granted.
    pub id: WaiterId,
    pub task_type: String,
    pub priority: u64,
    /// Priority plus aging so far.
    pub effective_priority: f64,
    pub waited: Micros,
    pub remaining: Option<Micros>,
    pub vram_mb: u64,
    pub trace: Trace,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskStatsView {
    pub task_type: String,
    pub acquired: u64,
    pub skipped: u64,
    pub fallback_cpu: u64,
    pub timeout: u64,
    pub cancelled: u64,
    pub queue_full: u64,
    pub watchdog_exceeded: u64,
    pub revoked: u64,
    pub wait: Option<Percentiles>,
    pub hold: Option<Percentiles>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionView {
    pub state: AdmissionState,
    pub reading: Option<GpuReading>,
    pub reading_age: Option<Micros>,
}

/// One GPU's counters in the old arbiter's snapshot shape.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GpuMetricsView {
    pub acquired: u64,
    pub skipped: u64,
    pub fallback_cpu: u64,
    pub timeouts: u64,
    pub queue_full: u64,
    pub watchdog_exceeded: u64,
    /// The latest grants' queue waits and releases' hold times, ms, oldest first (bounded).
    pub recent_waits_ms: Vec<f64>,
    pub recent_holds_ms: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GpuSnapshot {
    pub gpu_key: String,
    pub enabled: bool,
    pub capacity: u64,
    pub leases: Vec<LeaseView>,
    pub queue: Vec<WaiterView>,
    pub tasks: Vec<TaskStatsView>,
    pub metrics: GpuMetricsView,
    pub admission: AdmissionView,
}

impl Arbiter {
    /// `None` for an unknown GPU key.
    pub fn snapshot(&self, gpu_key: &str, now: Micros) -> Option<GpuSnapshot> {
        let g = self.gpus.iter().position(|gpu| gpu.key == gpu_key)?;
        Some(self.snapshot_at(g, now))
    }

    pub fn snapshot_all(&self, now: Micros) -> Vec<GpuSnapshot> {
        (0..self.gpus.len()).map(|g| self.snapshot_at(g, now)).collect()
    }

    fn snapshot_at(&self, g: usize, now: Micros) -> GpuSnapshot {
        let gpu = &self.gpus[g];
        let mut leases: Vec<LeaseView> = self
            .leases
            .iter()
            .filter(|(_, l)| l.gpu == g)
            .map(|(id, l)| LeaseView {
                lease_id: *id,
                task_type: l.task_type.to_string(),
                priority: l.priority,
                trace: shown(&l.trace),
                acquired_at: l.acquired_at,
                held: now.saturating_sub(l.acquired_at),
                hold_max: l.hold_max,
                watchdog_fired: l.watchdog_fired,
                vram_mb: l.vram_mb,
            })
            .collect();
        leases.sort_by_key(|l| l.lease_id);
        let aging_ms = self.config.aging_ms_per_priority.get();
        let queue = gpu
            .queue
            .values()
            .map(|id| {
                let w = &self.waiters[id];
                let waited = now.saturating_sub(w.enqueued_at);
                let aged = if aging_ms > 0 { waited as f64 / (aging_ms * MICROS_PER_MS) as f64 } else { 0.0 };
                WaiterView {
                    id: *id,
                    task_type: w.task_type.to_string(),
                    priority: w.priority,
                    effective_priority: w.priority as f64 + aged,
                    waited,
                    remaining: w.deadline.map(|d| d.saturating_sub(now)),
                    vram_mb: w.vram_mb,
                    trace: shown(&w.trace),
                }
            })
            .collect();
        let tasks = self
            .stats
            .of_gpu(&gpu.key)
            .map(|(task, s)| {
                let n = |st: Status| s.counted(st);
                TaskStatsView {
                    task_type: task.clone(),
                    acquired: n(Status::Acquired),
                    skipped: n(Status::Skipped),
                    fallback_cpu: n(Status::FallbackCpu),
                    timeout: n(Status::Timeout),
                    cancelled: n(Status::Cancelled),
                    queue_full: s.queue_full,
                    watchdog_exceeded: s.watchdog_exceeded,
                    revoked: s.revoked,
                    wait: s.wait.percentiles(),
                    hold: s.hold.percentiles(),
                }
            })
            .collect();
        let mut metrics = GpuMetricsView {
            recent_waits_ms: gpu.recent_waits.iter().copied().collect(),
            recent_holds_ms: gpu.recent_holds.iter().copied().collect(),
            ..GpuMetricsView::default()
        };
        for (_, s) in self.stats.of_gpu(&gpu.key) {
            let n = |st: Status| s.counted(st);
            metrics.acquired += n(Status::Acquired);
            metrics.skipped += n(Status::Skipped);
            metrics.fallback_cpu += n(Status::FallbackCpu);
            metrics.timeouts += s.timeouts;
            metrics.queue_full += s.queue_full;
            metrics.watchdog_exceeded += s.watchdog_exceeded;
        }
        GpuSnapshot {
            gpu_key: gpu.key.clone(),
            enabled: self.config.enabled,
            capacity: self.config.max_concurrent_leases.get(),
            leases,
            queue,
            tasks,
            metrics,
            admission: AdmissionView {
                state: self.admission_state(g, now),
                reading: gpu.reading,
                reading_age: gpu.reading.map(|r| now.saturating_sub(r.at)),
            },
        }
    }
}
