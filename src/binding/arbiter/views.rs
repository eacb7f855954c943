//! What the arbiter shows JS: snapshots and events as generated types (`#[napi(object)]`), and
//! the small argument objects of its slow-path methods.

use napi::bindgen_prelude::{Either, Null};
use napi_derive::napi;
use serde_json::Value;

use crate::arbiter::clock::{ms, Clock};
use crate::arbiter::{ArbiterEvent, GpuReading, GpuSnapshot, Percentiles, Trace};
use crate::error::{SidecarError, SidecarResult};

/// Who asked for a lease; shown in snapshots and events.
#[napi(object)]
#[derive(Clone, Default)]
pub struct GpuLeaseTrace {
    pub job_id: Option<String>,
    pub session_id: Option<String>,
    pub utterance_index: Option<i64>,
    pub stage: Option<String>,
}

/// Something that happened in the arbiter.
#[napi(object)]
pub struct GpuArbiterEvent {
    #[napi(
        ts_type = "'acquired' | 'released' | 'queued' | 'timeout' | 'skipped' | 'cancelled' | 'watchdog' | 'admission-state' | 'config-reloaded' | 'config-rejected' | 'config-file-missing'"
    )]
    pub r#type: String,
    /// Epoch ms.
    pub at: f64,
    pub gpu_key: Option<String>,
    pub task_type: Option<String>,
    pub lease_id: Option<String>,
    pub status: Option<String>,
    pub reason: Option<String>,
    pub waited_ms: Option<f64>,
    pub held_ms: Option<f64>,
    pub trace: Option<GpuLeaseTrace>,
    /// The watchdog action (`warn`/`revoke`), the new admission state, a rejected config's error.
    pub detail: Option<String>,
}

#[napi(object)]
pub struct GpuLeaseInfo {
    pub lease_id: String,
    pub task_type: String,
    pub priority: u32,
    pub trace: GpuLeaseTrace,
    pub acquired_at: f64,
    pub held_ms: f64,
    pub hold_max_ms: f64,
    pub watchdog_fired: bool,
    pub vram_mb: f64,
}

#[napi(object)]
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
    pub remaining_ms: Option<f64>,
    pub vram_mb: f64,
    pub trace: GpuLeaseTrace,
}

#[napi(object)]
pub struct LatencyPercentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

#[napi(object)]
pub struct GpuTaskStats {
    pub task_type: String,
    pub acquired: i64,
    pub skipped: i64,
    pub fallback_cpu: i64,
    pub timeout: i64,
    pub cancelled: i64,
    pub queue_full: i64,
    pub watchdog_exceeded: i64,
    pub revoked: i64,
    /// Queue wait, ms, over the most recent requests.
    pub wait_ms: Option<LatencyPercentiles>,
    /// Hold time, ms, over the most recent leases.
    pub hold_ms: Option<LatencyPercentiles>,
}

/// The telemetry sample admission decisions are based on.
#[napi(object)]
pub struct GpuAdmissionSample {
    pub utilization_gpu: Option<f64>,
    pub free_mb: Option<f64>,
    pub total_mb: Option<f64>,
    pub age_ms: f64,
}

#[napi(object)]
pub struct GpuAdmission {
    #[napi(ts_type = "GpuAdmissionState")]
    pub state: String,
    pub sample: Option<GpuAdmissionSample>,
}

/// The oldest active lease, as the old arbiter's snapshot showed it.
#[napi(object)]
pub struct GpuCurrentLease {
    pub lease_id: String,
    pub task_type: String,
    /// Epoch ms.
    pub acquired_at: f64,
    pub hold_time_ms: f64,
}

/// Requests by status, in the old arbiter's shape.
#[napi(object)]
pub struct GpuAcquireTotals {
    #[napi(js_name = "ACQUIRED")]
    pub acquired: f64,
    #[napi(js_name = "SKIPPED")]
    pub skipped: f64,
    #[napi(js_name = "FALLBACK_CPU")]
    pub fallback_cpu: f64,
}

/// One GPU's counters in the old arbiter's shape.
#[napi(object)]
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

#[napi(object)]
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
    #[napi(ts_type = "GpuCurrentLease | null")]
    pub current_lease: Either<GpuCurrentLease, Null>,
    pub metrics: GpuArbiterMetrics,
    #[napi(ts_type = "GpuAdmissionState")]
    pub gpu_admission_state: String,
    /// The last sampled utilization, %, or `null` without a sample.
    #[napi(ts_type = "number | null")]
    pub gpu_usage: Either<f64, Null>,
    /// The age of that sample, ms, or `null`.
    #[napi(ts_type = "number | null")]
    pub gpu_usage_cache_age_ms: Either<f64, Null>,
}

/// The ASR stage's hint about the utterance it is about to run (`notifyAsrTaskHint`).
#[napi(object)]
#[allow(dead_code)] // declares the argument's TS type; the value is read as JSON
pub struct AsrTaskHint {
    pub estimated_audio_ms: Option<f64>,
    pub estimated_gpu_hold_ms: Option<f64>,
}

/// One GPU's telemetry as admission uses it (see `observeGpu`).
#[napi(object)]
#[allow(dead_code)] // declares the argument's TS type; the value is read as JSON
pub struct GpuReadingInput {
    pub utilization_gpu: Option<f64>,
    pub free_mb: Option<f64>,
    pub total_mb: Option<f64>,
}

fn trace_value(t: &Trace) -> GpuLeaseTrace {
    GpuLeaseTrace {
        job_id: t.job_id.clone(),
        session_id: t.session_id.clone(),
        utterance_index: t.utterance_index,
        stage: t.stage.clone(),
    }
}

fn percentiles_value(p: Option<Percentiles>) -> Option<LatencyPercentiles> {
    p.map(|p| LatencyPercentiles { p50: p.p50, p95: p.p95, p99: p.p99 })
}

pub fn lease_id(id: u64) -> String {
    crate::arbiter::lease_id_text(id)
}

/// The old arbiter's snapshot has `null`, not a missing field, where there is nothing.
fn or_null<T>(value: Option<T>) -> Either<T, Null> {
    match value {
        Some(v) => Either::A(v),
        None => Either::B(Null),
    }
}

pub fn snapshot_value(clock: &Clock, snap: GpuSnapshot) -> GpuArbiterSnapshot {
    let queue_length = snap.queue.len() as u32;
    let current_lease = snap.leases.iter().min_by_key(|l| (l.acquired_at, l.lease_id)).map(|l| GpuCurrentLease {
        lease_id: lease_id(l.lease_id),
        task_type: l.task_type.clone(),
        acquired_at: clock.epoch_ms(l.acquired_at),
        hold_time_ms: ms(l.held),
    });
    let m = &snap.metrics;
    let metrics = GpuArbiterMetrics {
        acquire_total: GpuAcquireTotals {
            acquired: m.acquired as f64,
            skipped: m.skipped as f64,
            fallback_cpu: m.fallback_cpu as f64,
        },
        queue_wait_ms: m.recent_waits_ms.clone(),
        hold_ms: m.recent_holds_ms.clone(),
        timeouts_total: m.timeouts as f64,
        queue_full_total: m.queue_full as f64,
        watchdog_exceeded_total: m.watchdog_exceeded as f64,
    };
    let admission_state = snap.admission.state.as_str().to_string();
    GpuArbiterSnapshot {
        gpu_key: snap.gpu_key,
        enabled: snap.enabled,
        capacity: snap.capacity as u32,
        active_leases: snap
            .leases
            .iter()
            .map(|l| GpuLeaseInfo {
                lease_id: lease_id(l.lease_id),
                task_type: l.task_type.clone(),
                priority: l.priority as u32,
                trace: trace_value(&l.trace),
                acquired_at: clock.epoch_ms(l.acquired_at),
                held_ms: ms(l.held),
                hold_max_ms: ms(l.hold_max),
                watchdog_fired: l.watchdog_fired,
                vram_mb: l.vram_mb as f64,
            })
            .collect(),
        queue: snap
            .queue
            .iter()
            .map(|w| GpuWaiterInfo {
                lease_id: lease_id(w.id),
                task_type: w.task_type.clone(),
                priority: w.priority as u32,
                effective_priority: w.effective_priority,
                waited_ms: ms(w.waited),
                wait_time_ms: ms(w.waited),
                remaining_ms: w.remaining.map(ms),
                vram_mb: w.vram_mb as f64,
                trace: trace_value(&w.trace),
            })
            .collect(),
        queue_length,
        tasks: snap
            .tasks
            .iter()
            .map(|t| GpuTaskStats {
                task_type: t.task_type.clone(),
                acquired: t.acquired as i64,
                skipped: t.skipped as i64,
                fallback_cpu: t.fallback_cpu as i64,
                timeout: t.timeout as i64,
                cancelled: t.cancelled as i64,
                queue_full: t.queue_full as i64,
                watchdog_exceeded: t.watchdog_exceeded as i64,
                revoked: t.revoked as i64,
                wait_ms: percentiles_value(t.wait),
                hold_ms: percentiles_value(t.hold),
            })
            .collect(),
        admission: GpuAdmission {
            state: admission_state.clone(),
            sample: snap.admission.reading.map(|r| GpuAdmissionSample {
                utilization_gpu: r.utilization_gpu,
                free_mb: r.free_mb.map(|v| v as f64),
                total_mb: r.total_mb.map(|v| v as f64),
                age_ms: ms(snap.admission.reading_age.unwrap_or(0)),
            }),
        },
        current_lease: or_null(current_lease),
        metrics,
        gpu_admission_state: admission_state,
        gpu_usage: or_null(snap.admission.reading.and_then(|r| r.utilization_gpu)),
        gpu_usage_cache_age_ms: or_null(snap.admission.reading_age.map(ms)),
    }
}

pub fn event_value(clock: &Clock, e: ArbiterEvent) -> GpuArbiterEvent {
    GpuArbiterEvent {
        r#type: e.kind.as_str().to_string(),
        at: clock.epoch_ms(e.at),
        gpu_key: e.gpu_key,
        task_type: e.task_type,
        lease_id: e.lease_id.map(lease_id),
        status: e.status.map(|st| st.as_str().to_string()),
        reason: e.reason.map(|r| r.as_str().to_string()),
        waited_ms: e.waited.map(ms),
        held_ms: e.held.map(ms),
        trace: e.trace.as_ref().map(trace_value),
        detail: e.detail,
    }
}

/// An optional field of an argument object: a finite number >= 0, or absent.
fn amount(object: &Value, arg: &str, name: &str) -> SidecarResult<Option<f64>> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(x) if x >= 0.0 => Ok(Some(x)),
            _ => Err(SidecarError::invalid_argument(format!("{arg}.{name}: expected a number >= 0, got {n}"))),
        },
        Some(other) => Err(SidecarError::invalid_argument(format!("{arg}.{name}: expected a number, got {other}"))),
    }
}

fn expect_object(value: &Value, arg: &str) -> SidecarResult<()> {
    if value.is_object() {
        Ok(())
    } else {
        Err(SidecarError::invalid_argument(format!("{arg}: expected an object, got {value}")))
    }
}

/// `observeGpu`'s reading, its time left for the caller to set.
pub fn reading_input(value: &Value) -> SidecarResult<GpuReading> {
    expect_object(value, "reading")?;
    let utilization_gpu = match amount(value, "reading", "utilizationGpu")? {
        Some(u) if u > 100.0 => {
            return Err(SidecarError::invalid_argument(format!("reading.utilizationGpu: expected 0-100, got {u}")))
        }
        u => u,
    };
    Ok(GpuReading {
        at: 0,
        utilization_gpu,
        free_mb: amount(value, "reading", "freeMb")?.map(|x| x as u64),
        total_mb: amount(value, "reading", "totalMb")?.map(|x| x as u64),
    })
}

/// `notifyAsrTaskHint`'s `(estimatedAudioMs, estimatedGpuHoldMs)`.
pub fn asr_hint(value: &Value) -> SidecarResult<(Option<u64>, Option<u64>)> {
    expect_object(value, "hint")?;
    let ms = |name| amount(value, "hint", name).map(|v| v.map(|x| x.min(u64::MAX as f64) as u64));
    Ok((ms("estimatedAudioMs")?, ms("estimatedGpuHoldMs")?))
}

#[cfg(test)]
mod tests {
    use crate::arbiter::EventKind;

    /// `GpuArbiterEvent.type`'s `ts_type` is written by hand (napi types the field as a string):
    /// the union in index.d.ts must list exactly the names the events carry.
    #[test]
    fn the_event_type_union_lists_every_event_kind() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("index.d.ts");
        let index = std::fs::read_to_string(path).unwrap();
        let interface = &index[index.find("export interface GpuArbiterEvent {").unwrap()..];
        let line = interface.lines().find_map(|l| l.trim().strip_prefix("type: ")).unwrap();
        let mut listed: Vec<&str> = line.split(" | ").map(|name| name.trim_matches('\'')).collect();
        let mut kinds: Vec<&str> = EventKind::ALL.into_iter().map(EventKind::as_str).collect();
        listed.sort_unstable();
        kinds.sort_unstable();
        assert_eq!(listed, kinds, "GpuArbiterEvent.type in views.rs (then `npx napi build --platform`)");
    }
}
