//! What the arbiter shows JS: its snapshots and events in their serde form, from which the
//! binding makes the JS values and `npm run schema` the TypeScript types (no hand-written twin in
//! `index.d.ts`). Times are on the wall clock (epoch ms) and durations in ms, both through the
//! arbiter's [`Clock`], here and nowhere else.
//!
//! One conversion per core type, each taking the core's struct apart without `..`: a field added,
//! removed or renamed there stops this file from compiling until the view follows.

use schemars::JsonSchema;
use serde::Serialize;

use crate::arbiter::clock::{ms, Clock};
use crate::arbiter::{
    lease_id_text, AdmissionState, AdmissionView, ArbiterEvent, EventKind, GpuMetricsView, GpuReading, GpuSnapshot,
    LeaseView, Percentiles, Reason, Status, TaskStatsView, Trace, WaiterView,
};

/// Who asked for a lease; shown in snapshots and events.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuLeaseTrace {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")] // absent, never `null`
    pub job_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")] // absent, never `null`
    pub session_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "i64")] // absent, never `null`
    pub utterance_index: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")] // absent, never `null`
    pub stage: Option<String>,
}

/// Something that happened in the arbiter.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuArbiterEvent {
    pub r#type: EventKind,
    /// Epoch ms.
    pub at: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")] // absent, never `null`
    pub gpu_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")] // absent, never `null`
    pub task_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")] // absent, never `null`
    pub lease_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Status")] // absent, never `null`
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Reason")] // absent, never `null`
    pub reason: Option<Reason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "f64")] // absent, never `null`
    pub waited_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "f64")] // absent, never `null`
    pub held_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "GpuLeaseTrace")] // absent, never `null`
    pub trace: Option<GpuLeaseTrace>,
    /// The watchdog action (`warn`/`revoke`), the new admission state, a rejected config's error.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")] // absent, never `null`
    pub detail: Option<String>,
}

/// A lease being held.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuLeaseInfo {
    pub lease_id: String,
    pub task_type: String,
    pub priority: u32,
    pub trace: GpuLeaseTrace,
    /// Epoch ms.
    pub acquired_at: f64,
    pub held_ms: f64,
    pub hold_max_ms: f64,
    pub watchdog_fired: bool,
    pub vram_mb: f64,
}

/// A request waiting in the queue.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuWaiterInfo {
    /// The id its lease will have when granted.
    pub lease_id: String,
    pub task_type: String,
    pub priority: u32,
    /// Priority plus aging so far; the queue is listed in dequeue order.
    pub effective_priority: f64,
    pub waited_ms: f64,
    /// The old arbiter's name for `waitedMs`.
    pub wait_time_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "f64")] // absent, never `null`
    pub remaining_ms: Option<f64>,
    pub vram_mb: f64,
    pub trace: GpuLeaseTrace,
}

/// Nearest-rank percentiles, ms.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct LatencyPercentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// What was counted for one task type on this GPU.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuTaskStats {
    pub task_type: String,
    pub acquired: f64,
    pub skipped: f64,
    pub fallback_cpu: f64,
    pub timeout: f64,
    pub cancelled: f64,
    pub queue_full: f64,
    pub watchdog_exceeded: f64,
    pub revoked: f64,
    /// Queue wait, ms, over the most recent requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "LatencyPercentiles")] // absent, never `null`
    pub wait_ms: Option<LatencyPercentiles>,
    /// Hold time, ms, over the most recent leases.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "LatencyPercentiles")] // absent, never `null`
    pub hold_ms: Option<LatencyPercentiles>,
}

/// The telemetry sample admission decisions are based on.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuAdmissionSample {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "f64")] // absent, never `null`
    pub utilization_gpu: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "f64")] // absent, never `null`
    pub free_mb: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "f64")] // absent, never `null`
    pub total_mb: Option<f64>,
    pub age_ms: f64,
}

/// The GPU's admission state and the sample it comes from.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct GpuAdmission {
    pub state: AdmissionState,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "GpuAdmissionSample")] // absent, never `null`
    pub sample: Option<GpuAdmissionSample>,
}

/// The oldest active lease, as the old arbiter's snapshot showed it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuCurrentLease {
    pub lease_id: String,
    pub task_type: String,
    /// Epoch ms.
    pub acquired_at: f64,
    pub hold_time_ms: f64,
}

/// Requests by status, in the old arbiter's shape.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub struct GpuAcquireTotals {
    pub acquired: f64,
    pub skipped: f64,
    pub fallback_cpu: f64,
}

/// One GPU's counters in the old arbiter's shape.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuArbiterMetrics {
    pub acquire_total: GpuAcquireTotals,
    /// The latest grants' queue waits, ms, oldest first (at most 100).
    pub queue_wait_ms: Vec<f64>,
    /// The latest leases' hold times, ms, oldest first (at most 100).
    pub hold_ms: Vec<f64>,
    /// Waits that ran out, whatever their status.
    pub timeouts_total: f64,
    pub queue_full_total: f64,
    pub watchdog_exceeded_total: f64,
}

/// One GPU's state: active leases with holder trace and hold time, the queue in dequeue order,
/// counters and wait/hold percentiles per task type, admission state, and the old arbiter's
/// snapshot fields.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuArbiterSnapshot {
    pub gpu_key: String,
    pub enabled: bool,
    pub capacity: u32,
    pub active_leases: Vec<GpuLeaseInfo>,
    pub queue: Vec<GpuWaiterInfo>,
    pub queue_length: u32,
    pub tasks: Vec<GpuTaskStats>,
    pub admission: GpuAdmission,
    // From here on, the old arbiter's fields, kept for its callers (the orchestrator's heartbeat
    // reads `queueLength`, `gpuUsage` and `gpuAdmissionState`).
    /// The oldest active lease, or `null`.
    pub current_lease: Option<GpuCurrentLease>,
    pub metrics: GpuArbiterMetrics,
    pub gpu_admission_state: AdmissionState,
    /// The last sampled utilization, %, or `null` without a sample.
    pub gpu_usage: Option<f64>,
    /// The age of that sample, ms, or `null`.
    pub gpu_usage_cache_age_ms: Option<f64>,
}

fn trace_view(trace: &Trace) -> GpuLeaseTrace {
    let Trace { job_id, session_id, utterance_index, stage } = trace.clone();
    GpuLeaseTrace { job_id, session_id, utterance_index, stage }
}

fn percentiles_view(p: Option<Percentiles>) -> Option<LatencyPercentiles> {
    p.map(|Percentiles { p50, p95, p99 }| LatencyPercentiles { p50, p95, p99 })
}

fn lease_view(clock: &Clock, lease: &LeaseView) -> GpuLeaseInfo {
    let LeaseView { lease_id, task_type, priority, trace, acquired_at, held, hold_max, watchdog_fired, vram_mb } =
        lease;
    GpuLeaseInfo {
        lease_id: lease_id_text(*lease_id),
        task_type: task_type.clone(),
        priority: *priority as u32,
        trace: trace_view(trace),
        acquired_at: clock.epoch_ms(*acquired_at),
        held_ms: ms(*held),
        hold_max_ms: ms(*hold_max),
        watchdog_fired: *watchdog_fired,
        vram_mb: *vram_mb as f64,
    }
}

fn waiter_view(waiter: WaiterView) -> GpuWaiterInfo {
    let WaiterView { id, task_type, priority, effective_priority, waited, remaining, vram_mb, trace } = waiter;
    GpuWaiterInfo {
        lease_id: lease_id_text(id),
        task_type,
        priority: priority as u32,
        effective_priority,
        waited_ms: ms(waited),
        wait_time_ms: ms(waited),
        remaining_ms: remaining.map(ms),
        vram_mb: vram_mb as f64,
        trace: trace_view(&trace),
    }
}

fn task_view(stats: TaskStatsView) -> GpuTaskStats {
    let TaskStatsView {
        task_type,
        acquired,
        skipped,
        fallback_cpu,
        timeout,
        cancelled,
        queue_full,
        watchdog_exceeded,
        revoked,
        wait,
        hold,
    } = stats;
    GpuTaskStats {
        task_type,
        acquired: acquired as f64,
        skipped: skipped as f64,
        fallback_cpu: fallback_cpu as f64,
        timeout: timeout as f64,
        cancelled: cancelled as f64,
        queue_full: queue_full as f64,
        watchdog_exceeded: watchdog_exceeded as f64,
        revoked: revoked as f64,
        wait_ms: percentiles_view(wait),
        hold_ms: percentiles_view(hold),
    }
}

fn metrics_view(metrics: GpuMetricsView) -> GpuArbiterMetrics {
    let GpuMetricsView {
        acquired,
        skipped,
        fallback_cpu,
        timeouts,
        queue_full,
        watchdog_exceeded,
        recent_waits_ms,
        recent_holds_ms,
    } = metrics;
    GpuArbiterMetrics {
        acquire_total: GpuAcquireTotals {
            acquired: acquired as f64,
            skipped: skipped as f64,
            fallback_cpu: fallback_cpu as f64,
        },
        queue_wait_ms: recent_waits_ms,
        hold_ms: recent_holds_ms,
        timeouts_total: timeouts as f64,
        queue_full_total: queue_full as f64,
        watchdog_exceeded_total: watchdog_exceeded as f64,
    }
}

fn admission_view(admission: &AdmissionView) -> GpuAdmission {
    let AdmissionView { state, reading, reading_age } = admission;
    GpuAdmission {
        state: *state,
        sample: reading.map(|r| {
            let GpuReading { at: _, utilization_gpu, free_mb, total_mb } = r;
            GpuAdmissionSample {
                utilization_gpu,
                free_mb: free_mb.map(|v| v as f64),
                total_mb: total_mb.map(|v| v as f64),
                age_ms: ms(reading_age.unwrap_or(0)),
            }
        }),
    }
}

/// A core snapshot as JS sees it.
pub fn snapshot_view(clock: &Clock, snapshot: GpuSnapshot) -> GpuArbiterSnapshot {
    let GpuSnapshot { gpu_key, enabled, capacity, leases, queue, tasks, metrics, admission } = snapshot;
    let current_lease = leases.iter().min_by_key(|l| (l.acquired_at, l.lease_id)).map(|l| GpuCurrentLease {
        lease_id: lease_id_text(l.lease_id),
        task_type: l.task_type.clone(),
        acquired_at: clock.epoch_ms(l.acquired_at),
        hold_time_ms: ms(l.held),
    });
    GpuArbiterSnapshot {
        gpu_key,
        enabled,
        capacity: capacity as u32,
        active_leases: leases.iter().map(|l| lease_view(clock, l)).collect(),
        queue_length: queue.len() as u32,
        queue: queue.into_iter().map(waiter_view).collect(),
        tasks: tasks.into_iter().map(task_view).collect(),
        admission: admission_view(&admission),
        current_lease,
        metrics: metrics_view(metrics),
        gpu_admission_state: admission.state,
        gpu_usage: admission.reading.and_then(|r| r.utilization_gpu),
        gpu_usage_cache_age_ms: admission.reading_age.map(ms),
    }
}

/// A core event as JS sees it.
pub fn event_view(clock: &Clock, event: ArbiterEvent) -> GpuArbiterEvent {
    let ArbiterEvent { kind, at, gpu_key, task_type, lease_id, status, reason, waited, held, trace, detail } = event;
    GpuArbiterEvent {
        r#type: kind,
        at: clock.epoch_ms(at),
        gpu_key,
        task_type,
        lease_id: lease_id.map(lease_id_text),
        status,
        reason,
        waited_ms: waited.map(ms),
        held_ms: held.map(ms),
        trace: trace.as_ref().map(trace_view),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names events carry are EventKind's serde names, which must be its `as_str` names
    /// (logs and lease attribution use those).
    #[test]
    fn event_type_names_are_the_kind_names() {
        for kind in EventKind::ALL {
            assert_eq!(serde_json::to_value(kind).unwrap(), serde_json::json!(kind.as_str()));
        }
    }

    #[test]
    fn snapshots_show_epoch_ms_and_lease_ids() {
        let mut w = vec![];
        let mut core = crate::arbiter::Arbiter::new(
            crate::arbiter::ArbiterConfig::from_json(&serde_json::json!({}), &mut w).unwrap(),
        );
        let clock = Clock::new();
        let crate::arbiter::Admission::Settled(crate::arbiter::Outcome::Acquired(grant)) =
            core.acquire(crate::arbiter::AcquireRequest::new("ASR"), 1_000).unwrap()
        else {
            panic!("granted at once")
        };
        let view = snapshot_view(&clock, core.snapshot("gpu:0", 3_500).unwrap());
        let value = serde_json::to_value(&view).unwrap();
        assert_eq!(value["activeLeases"][0]["leaseId"], lease_id_text(grant.lease_id));
        assert_eq!(value["activeLeases"][0]["heldMs"], 2.5);
        assert_eq!(value["currentLease"]["acquiredAt"], clock.epoch_ms(1_000));
        assert_eq!(value["gpuUsage"], serde_json::Value::Null);
        assert!(value["admission"].get("sample").is_none());
    }
}
