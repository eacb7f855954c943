//! What `ServiceSupervisor#status` returns, as generated JS types (`#[napi(object)]`): the
//! declarations in `index.d.ts` come from these structs, so they cannot drift from the values.
//! Events are not here: listeners get their serde form, and their `ServiceEvent` type is
//! generated from the same Rust types through a JSON Schema (`src/binding/events.d.ts`, from
//! `src/config/schema.rs`).

use napi::bindgen_prelude::{Either, Null};
use napi_derive::napi;

use crate::error::SidecarError;
use crate::services::{AttributedLease, HostBudget, LearnedProfile, ServiceLeases, ServiceStatus};

/// A core error as data: a stable `code` and a message saying what was wrong and where.
#[napi(object, js_name = "ServiceError")]
pub struct ServiceErrorView {
    #[napi(
        ts_type = "'PORT_IN_USE' | 'READINESS_TIMEOUT' | 'READINESS_STALLED' | 'VRAM_TIMEOUT' | 'SPAWN_FAILED' | 'SERVICE_EXITED' | 'LIVENESS_FAILED' | 'SERVICE_HUNG' | 'VRAM_OOM' | 'GPU_LEASE_NOT_GRANTED' | 'NO_GPU' | 'HOST_MEMORY_LOW' | 'UNKNOWN_SERVICE' | 'CLOSED' | 'INTERNAL' | (string & {})"
    )]
    pub code: String,
    pub message: String,
}

/// A failure a service had, restarted from or not.
#[napi(object, js_name = "ServiceFailure")]
pub struct ServiceFailureView {
    /// Epoch ms.
    pub at: f64,
    pub error: ServiceErrorView,
}

/// A lease of one of the service's `gpu.taskTypes`.
#[napi(object, js_name = "ServiceLease")]
pub struct ServiceLeaseView {
    pub lease_id: String,
    pub task_type: String,
    /// Epoch ms.
    pub acquired_at: f64,
}

/// The service's leases in the attached arbiter.
#[napi(object, js_name = "ServiceLeases")]
pub struct ServiceLeasesView {
    pub active: Vec<ServiceLeaseView>,
    /// Revoked by the arbiter's hold watchdog, since the supervisor was made.
    pub watchdog_revokes: f64,
    pub last_grant: Either<ServiceLeaseView, Null>,
}

/// What it took on earlier runs (kept in `stateFile`).
#[napi(object, js_name = "ServiceLearned")]
pub struct LearnedView {
    pub time_to_ready_ms: Either<f64, Null>,
    pub peak_vram_mb: Either<f64, Null>,
    /// How `peakVramMb` was measured: `process`, the service's processes' own GPU memory;
    /// `gpu-delta`, the rise in its GPU's used memory while it loaded alone there (where NVML
    /// has no per-process figures, as on Windows in WDDM mode). `null` in state files from
    /// before it was kept.
    #[napi(ts_type = "PeakVramMethod | null")]
    pub peak_vram_method: Either<String, Null>,
    /// The highest resident memory (MB) of its whole process tree (the service and everything it
    /// forked) on its last run; the host-memory gate's need without `hostMemMb`.
    pub peak_rss_mb: Either<f64, Null>,
}

/// A snapshot of one service.
#[napi(object, js_name = "ServiceStatus")]
pub struct ServiceStatusView {
    pub name: String,
    #[napi(ts_type = "ServiceStateName")]
    pub state: String,
    /// The process (and process group) id while it runs.
    pub pid: Either<u32, Null>,
    /// Restarts since the last explicit start.
    pub restarts: u32,
    /// The backoff step: restarts since the start or the last stable run (`resetAfterMs`).
    pub attempt: u32,
    /// When the pending restart is due (epoch ms), while restarting.
    pub next_restart_at: Either<f64, Null>,
    /// The latest failure (an exit, failed liveness, a hang, a failed start).
    pub last_failure: Either<ServiceFailureView, Null>,
    /// Spawn to ready, for the current run.
    pub time_to_ready_ms: Either<f64, Null>,
    /// Why it failed, while `failed`.
    pub error: Either<ServiceErrorView, Null>,
    /// The dependency that was not ready, while `blocked`.
    pub blocked_by: Either<String, Null>,
    /// The latest notify `STATUS=` text of this run.
    pub notify_status: Either<String, Null>,
    /// The last 50 output lines of this (or the last) run.
    pub last_lines: Vec<String>,
    /// The GPU of this (or the last) run: its `gpu.key`, or where `'auto'` placed it; `null`
    /// for a CPU service and an `'auto'` one not placed yet.
    pub gpu_key: Either<String, Null>,
    /// Leases of its `gpu.taskTypes` in the attached arbiter.
    pub leases: ServiceLeasesView,
    pub learned: LearnedView,
    /// Why its start waits, while it waits: `'waiting-host-memory'` (too little host memory
    /// available for it, or the host swapping).
    #[napi(ts_type = "ServiceWaitReason | null")]
    pub waiting: Either<String, Null>,
}

/// What the host can take on now (`ServiceSupervisor#hostBudget`).
#[napi(object, js_name = "HostBudget")]
pub struct HostBudgetView {
    /// The attached Telemetry's latest `host.availableMb`.
    pub available_mb: f64,
    /// `hostMemHeadroomMb`.
    pub headroom_mb: f64,
    /// What the services loading are still expected to take, not in the reading yet.
    pub in_flight_mb: f64,
    /// `availableMb - headroomMb - inFlightMb`, never negative.
    pub budget_mb: f64,
    /// The Telemetry's SWAP_ACTIVE alert is raised: no service start begins, and `workers` is 0.
    pub swap_active: bool,
    /// When the reading was taken (epoch ms).
    pub sampled_at: f64,
    /// The size asked about, or `null`.
    pub per_worker_mb: Either<f64, Null>,
    /// How many more workers of `perWorkerMb` fit now: `floor(budgetMb / perWorkerMb)`, 0 while
    /// swapping; `null` without `perWorkerMb`.
    pub workers: Either<f64, Null>,
}

pub fn host_budget_view(budget: &HostBudget, per_worker_mb: Option<f64>, workers: Option<u64>) -> HostBudgetView {
    HostBudgetView {
        available_mb: budget.available_mb as f64,
        headroom_mb: budget.headroom_mb as f64,
        in_flight_mb: budget.in_flight_mb as f64,
        budget_mb: budget.budget_mb as f64,
        swap_active: budget.swap_active,
        sampled_at: budget.sampled_at_ms as f64,
        per_worker_mb: or_null(per_worker_mb),
        workers: or_null(workers.map(|w| w as f64)),
    }
}

/// A unit variant's serde name: the name the generated TS union lists (`ServiceStateName`,
/// `ServiceWaitReason`, `PeakVramMethod`), so the two cannot differ.
fn serde_name<T: serde::Serialize>(value: T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        other => unreachable!("a unit variant serializes as its name, not {other:?}"),
    }
}

fn or_null<T>(value: Option<T>) -> Either<T, Null> {
    value.map_or(Either::B(Null), Either::A)
}

pub fn error_view(error: &SidecarError) -> ServiceErrorView {
    ServiceErrorView { code: error.code.as_str().to_string(), message: error.message.clone() }
}

fn lease_view(lease: &AttributedLease) -> ServiceLeaseView {
    ServiceLeaseView {
        lease_id: lease.lease_id.clone(),
        task_type: lease.task_type.clone(),
        acquired_at: lease.acquired_at_ms as f64,
    }
}

fn leases_view(leases: &ServiceLeases) -> ServiceLeasesView {
    ServiceLeasesView {
        active: leases.active.values().map(lease_view).collect(),
        watchdog_revokes: leases.watchdog_revokes as f64,
        last_grant: or_null(leases.last_grant.as_ref().map(lease_view)),
    }
}

pub fn learned_view(learned: &LearnedProfile) -> LearnedView {
    LearnedView {
        time_to_ready_ms: or_null(learned.time_to_ready_ms.map(|ms| ms as f64)),
        peak_vram_mb: or_null(learned.peak_vram_mb.map(|mb| mb as f64)),
        peak_vram_method: or_null(learned.peak_vram_method.map(serde_name)),
        peak_rss_mb: or_null(learned.peak_rss_mb.map(|mb| mb as f64)),
    }
}

pub fn status_view(status: &ServiceStatus) -> ServiceStatusView {
    ServiceStatusView {
        name: status.name.clone(),
        state: serde_name(status.state),
        pid: or_null(status.pid),
        restarts: status.restarts,
        attempt: status.attempt,
        next_restart_at: or_null(status.next_restart_at_ms.map(|ms| ms as f64)),
        last_failure: or_null(
            status
                .last_failure
                .as_ref()
                .map(|f| ServiceFailureView { at: f.at_ms as f64, error: error_view(&f.error) }),
        ),
        time_to_ready_ms: or_null(status.time_to_ready_ms.map(|ms| ms as f64)),
        error: or_null(status.error.as_ref().map(error_view)),
        blocked_by: or_null(status.blocked_by.clone()),
        notify_status: or_null(status.notify_status.clone()),
        last_lines: status.last_lines.clone(),
        gpu_key: or_null(status.gpu_key.clone()),
        leases: leases_view(&status.leases),
        learned: learned_view(&status.learned),
        waiting: or_null(status.waiting.map(serde_name)),
    }
}
