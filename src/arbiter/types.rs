//! Values that go in and out of the arbiter.

pub use super::config::BusyPolicy;

/// Microseconds on the arbiter's clock. The core never reads a clock itself: every call takes
/// `now`, so tests drive time by hand and the binding feeds a monotonic clock.
pub type Micros = u64;

pub const MICROS_PER_MS: u64 = 1_000;

pub type LeaseId = u64;

/// A task type's name, shared rather than copied: every request, waiter and lease of a type
/// holds the same one (the binding interns them).
pub type TaskType = std::sync::Arc<str>;
pub type WaiterId = u64;

/// Who asked, carried through to events and snapshots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    pub job_id: Option<String>,
    pub session_id: Option<String>,
    pub utterance_index: Option<i64>,
    pub stage: Option<String>,
}

/// A lease request. Only `task_type` is required; the rest comes from the task type's policy,
/// then the arbiter's defaults.
#[derive(Debug, Clone, Default)]
pub struct AcquireRequest {
    pub task_type: TaskType,
    pub gpu_key: Option<String>,
    pub priority: Option<u64>,
    pub max_wait_ms: Option<u64>,
    pub hold_max_ms: Option<u64>,
    pub queue_limit: Option<u64>,
    pub busy_policy: Option<BusyPolicy>,
    pub vram_mb: Option<u64>,
    pub trace: Trace,
}

impl AcquireRequest {
    pub fn new(task_type: &str) -> Self {
        Self::of(task_type.into(), Trace::default())
    }

    /// A request with only its task type and trace. Spelled out rather than `..default()`, which
    /// would make and drop a default `Arc<str>` (two atomic operations on the lease hot path).
    pub fn of(task_type: TaskType, trace: Trace) -> Self {
        Self {
            task_type,
            gpu_key: None,
            priority: None,
            max_wait_ms: None,
            hold_max_ms: None,
            queue_limit: None,
            busy_policy: None,
            vram_mb: None,
            trace,
        }
    }
}

/// How a lease request ended.
// index.d.ts's `GpuLeaseStatus` is generated from the serde names, which equal `as_str`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[schemars(rename = "GpuLeaseStatus")]
pub enum Status {
    Acquired,
    Skipped,
    FallbackCpu,
    Timeout,
    Cancelled,
}

impl Status {
    /// In the order of their numeric codes (`status as u8`), which the binding passes to JS.
    pub const ALL: [Status; 5] =
        [Status::Acquired, Status::Skipped, Status::FallbackCpu, Status::Timeout, Status::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Acquired => "ACQUIRED",
            Status::Skipped => "SKIPPED",
            Status::FallbackCpu => "FALLBACK_CPU",
            Status::Timeout => "TIMEOUT",
            Status::Cancelled => "CANCELLED",
        }
    }
}

/// Why a request got no lease.
// index.d.ts's `GpuLeaseReason` is generated from the serde names, which equal `as_str`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[schemars(rename = "GpuLeaseReason")]
pub enum Reason {
    /// Every lease slot of the GPU is taken.
    GpuBusy,
    /// The GPU's wait queue is at its limit.
    QueueFull,
    /// Waited `maxWaitMs` for a lease slot.
    Timeout,
    /// The GPU is under HIGH_PRESSURE and the request is below the priority floor.
    GpuUsageHigh,
    /// The GPU's free memory does not cover the request's `vramMb`.
    VramLow,
    Aborted,
    Shutdown,
    /// The on-demand service that serves the task type could not be started (or its load took
    /// longer than the wait allowed).
    ServiceUnavailable,
}

impl Reason {
    /// In the order of their numeric codes (`reason as u8`), which the binding passes to JS.
    pub const ALL: [Reason; 8] = [
        Reason::GpuBusy,
        Reason::QueueFull,
        Reason::Timeout,
        Reason::GpuUsageHigh,
        Reason::VramLow,
        Reason::Aborted,
        Reason::Shutdown,
        Reason::ServiceUnavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::GpuBusy => "GPU_BUSY",
            Reason::QueueFull => "QUEUE_FULL",
            Reason::Timeout => "TIMEOUT",
            Reason::GpuUsageHigh => "GPU_USAGE_HIGH",
            Reason::VramLow => "VRAM_LOW",
            Reason::Aborted => "ABORTED",
            Reason::Shutdown => "SHUTDOWN",
            Reason::ServiceUnavailable => "SERVICE_UNAVAILABLE",
        }
    }
}

/// A granted lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub lease_id: LeaseId,
    /// The GPU's index in the config's `gpuKeys`.
    pub gpu: usize,
    pub acquired_at: Micros,
    pub queue_wait: Micros,
    /// The hold watchdog's limit for this lease; 0: none.
    pub hold_max: Micros,
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Acquired(Grant),
    NotAcquired { status: Status, reason: Reason },
}

/// The answer to `acquire`: settled now, or queued until a later call resolves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Settled(Outcome),
    Queued(WaiterId),
}

/// A queued request that a later call settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub waiter: WaiterId,
    pub outcome: Outcome,
}

/// Telemetry for one GPU, as the arbiter uses it for admission.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuReading {
    /// When it was sampled, on the arbiter's clock.
    pub at: Micros,
    pub utilization_gpu: Option<f64>,
    pub free_mb: Option<u64>,
    pub total_mb: Option<u64>,
}

/// A GPU's admission state, from its own utilization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[schemars(rename = "GpuAdmissionState")]
pub enum AdmissionState {
    /// No usable telemetry: logical leases only.
    Unknown,
    Normal,
    HighPressure,
}

impl AdmissionState {
    /// Its name in snapshots and events: its serde name, which `GpuAdmissionState` lists.
    pub fn as_str(self) -> &'static str {
        match self {
            AdmissionState::Unknown => "UNKNOWN",
            AdmissionState::Normal => "NORMAL",
            AdmissionState::HighPressure => "HIGH_PRESSURE",
        }
    }
}

/// What an arbiter event reports; its serde names are the `as_str` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
#[schemars(rename = "GpuArbiterEventType")]
pub enum EventKind {
    Acquired,
    Released,
    Queued,
    Timeout,
    /// SKIPPED or FALLBACK_CPU at once (see the event's status).
    Skipped,
    Cancelled,
    Watchdog,
    AdmissionState,
    ConfigReloaded,
    ConfigRejected,
    /// The watched config file (or its folder) disappeared; the last good config stays.
    ConfigFileMissing,
}

impl EventKind {
    /// Every kind (a test in this file fails to compile when one is added and not listed here).
    pub const ALL: [EventKind; 11] = [
        EventKind::Acquired,
        EventKind::Released,
        EventKind::Queued,
        EventKind::Timeout,
        EventKind::Skipped,
        EventKind::Cancelled,
        EventKind::Watchdog,
        EventKind::AdmissionState,
        EventKind::ConfigReloaded,
        EventKind::ConfigRejected,
        EventKind::ConfigFileMissing,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Acquired => "acquired",
            EventKind::Released => "released",
            EventKind::Queued => "queued",
            EventKind::Timeout => "timeout",
            EventKind::Skipped => "skipped",
            EventKind::Cancelled => "cancelled",
            EventKind::Watchdog => "watchdog",
            EventKind::AdmissionState => "admission-state",
            EventKind::ConfigReloaded => "config-reloaded",
            EventKind::ConfigRejected => "config-rejected",
            EventKind::ConfigFileMissing => "config-file-missing",
        }
    }
}

/// Something that happened in the arbiter. Fields that do not apply to a kind are `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct ArbiterEvent {
    pub kind: EventKind,
    pub at: Micros,
    pub gpu_key: Option<String>,
    pub task_type: Option<String>,
    pub lease_id: Option<LeaseId>,
    pub status: Option<Status>,
    pub reason: Option<Reason>,
    pub waited: Option<Micros>,
    pub held: Option<Micros>,
    pub trace: Option<Trace>,
    /// Free text: the watchdog action, the new admission state, a rejected config's error.
    pub detail: Option<String>,
}

impl ArbiterEvent {
    pub fn new(kind: EventKind, at: Micros) -> Self {
        Self {
            kind,
            at,
            gpu_key: None,
            task_type: None,
            lease_id: None,
            status: None,
            reason: None,
            waited: None,
            held: None,
            trace: None,
            detail: None,
        }
    }
}

/// The prefix of the lease ids JS sees (`lease-42`).
pub const LEASE_PREFIX: &str = "lease-";

/// The id JS sees for lease `id`.
pub fn lease_id_text(id: LeaseId) -> String {
    format!("{LEASE_PREFIX}{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_kind_is_in_all() {
        for kind in EventKind::ALL {
            // Stops compiling when a kind is added: add it to ALL too, then here.
            match kind {
                EventKind::Acquired
                | EventKind::Released
                | EventKind::Queued
                | EventKind::Timeout
                | EventKind::Skipped
                | EventKind::Cancelled
                | EventKind::Watchdog
                | EventKind::AdmissionState
                | EventKind::ConfigReloaded
                | EventKind::ConfigRejected
                | EventKind::ConfigFileMissing => {}
            }
        }
        let names: std::collections::BTreeSet<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), EventKind::ALL.len(), "each kind once");
    }

    /// JS gets `as_str` (through `arbiterCodeNames()`); the TS unions are generated from the
    /// serde names.
    #[test]
    fn status_and_reason_names_are_their_serde_names() {
        for status in Status::ALL {
            // Stops compiling when a status is added: add it to ALL too, then here.
            match status {
                Status::Acquired | Status::Skipped | Status::FallbackCpu | Status::Timeout | Status::Cancelled => {}
            }
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        for reason in Reason::ALL {
            match reason {
                Reason::GpuBusy
                | Reason::QueueFull
                | Reason::Timeout
                | Reason::GpuUsageHigh
                | Reason::VramLow
                | Reason::Aborted
                | Reason::Shutdown
                | Reason::ServiceUnavailable => {}
            }
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
        }
    }

    /// Snapshots and `admission-state` events carry `as_str`; `GpuAdmissionState` in index.d.ts is
    /// generated from the serde names.
    #[test]
    fn admission_state_names_are_their_serde_names() {
        for state in [AdmissionState::Unknown, AdmissionState::Normal, AdmissionState::HighPressure] {
            // Stops compiling when a state is added: add it to the list above too.
            match state {
                AdmissionState::Unknown | AdmissionState::Normal | AdmissionState::HighPressure => {}
            }
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
        }
    }
}
