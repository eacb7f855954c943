//! What the supervisor reports while it works: one event per step of each service's life.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::SidecarError;

/// Which output stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// The exit code, when it exited by itself.
    pub code: Option<i32>,
    /// The signal that ended it, on Unix.
    pub signal: Option<i32>,
}

impl ExitInfo {
    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    pub(crate) fn from_status(status: std::process::ExitStatus) -> Self {
        #[cfg(unix)]
        let signal = std::os::unix::process::ExitStatusExt::signal(&status);
        #[cfg(not(unix))]
        let signal = None;
        Self { code: status.code(), signal }
    }
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit code {code}"),
            (None, Some(sig)) => write!(f, "signal {sig}"),
            (None, None) => write!(f, "unknown exit status"),
        }
    }
}

/// One step in a service's life.
#[derive(Debug, Clone, PartialEq)]
pub enum ServiceEventKind {
    /// A start attempt begins (`attempt` 0 is the first, later ones are restarts).
    Starting { attempt: u32, expected_ready_ms: Option<u64> },
    /// The process is running with this pid.
    Spawned { pid: u32 },
    /// One line of output.
    Log { stream: OutputStream, line: String },
    /// A readiness probe did not pass yet.
    ProbeFailed { reason: String },
    /// Readiness passed, `time_to_ready_ms` after spawn.
    Ready { time_to_ready_ms: u64 },
    /// The service was stopped because it was not ready in time.
    ReadinessTimeout { timeout_ms: u64 },
    /// The process exited on its own.
    Exited { exit: ExitInfo },
    /// The service will be started again after `delay_ms`.
    Restarting { attempt: u32, delay_ms: u64 },
    /// The service gave up; `last_lines` is the end of its output.
    Failed { error: SidecarError, last_lines: Vec<String> },
    /// Not started because a dependency is not ready.
    Blocked { dependency: String },
    /// Waiting for `needed_mb` (the service's need plus headroom) free on `gpu_key`.
    VramWait { gpu_key: String, needed_mb: u64, free_mb: u64 },
    /// A service with `gpu.key: 'auto'` was placed on `gpu_key`, which had `free_mb` free less the
    /// loads on their way there (`None`: no GPU had a free-memory reading, the first was taken).
    Placed { gpu_key: String, free_mb: Option<u64> },
    /// Started without the VRAM gate, for the reason given (no telemetry, no estimate).
    VramGateOff { gpu_key: String, reason: String },
    /// Stopped on request, or exited cleanly with no restart due.
    Stopped,
    /// A liveness check of a ready service failed (`consecutive` in a row so far).
    LivenessFailed { reason: String, consecutive: u32 },
    /// `failureThreshold` liveness checks failed in a row: the service is stopped, then restarted
    /// by its policy. `failures` are their reasons, oldest first.
    Unhealthy { failures: Vec<String> },
    /// The arbiter's watchdog revoked `revokes` of the service's leases within `window_ms`: the
    /// service is stopped, then restarted by its policy.
    Hung { revokes: u32, window_ms: u64, lease_ids: Vec<String> },
    /// A notify `STATUS=` message.
    Status { text: String },
    /// A notify `STOPPING=1` message: the service says it is shutting down.
    NotifyStopping,
    /// `EXTEND_TIMEOUT_MS` moved the readiness deadline to `timeout_ms` after spawn.
    ReadinessExtended { timeout_ms: u64 },
    /// No output line or notify message for `stall_timeout_ms` during the load.
    ReadinessStalled { stall_timeout_ms: u64 },
    /// The port was held by a leftover of this service (pid `pid`), which was stopped.
    PortReclaimed { port: u16, pid: u32 },
    /// `stop()` waited `waited_ms` and the port is still held (by `pid`, when known).
    PortStillHeld { port: u16, waited_ms: u64, pid: Option<u32> },
    /// An on-demand service is started for a lease request of `task_type`.
    Demanded { task_type: String },
    /// Stopped to make room on `gpu_key` for `for_service`'s load: it was expected to free
    /// `expected_mb`; telemetry showed `freed_mb` more free memory after its stop.
    Evicted { gpu_key: String, for_service: String, expected_mb: u64, freed_mb: Option<u64> },
    /// The load ran out of GPU memory (its output matched `oomPattern`): `evicted` were stopped
    /// and the start is retried once.
    OomRetry { gpu_key: String, evicted: Vec<String> },
    /// An on-demand service held no lease for `idle_ms` (its `keepAliveMs`) and was stopped.
    IdleStopped { idle_ms: u64 },
    /// The start waits for host memory: `needed_mb` (its `hostMemMb` or learned peak RSS;
    /// `None` without either) did not fit in `budget_mb` (available, less headroom, less
    /// `in_flight_mb` for the loads on their way), or the host is swapping (`swap_active`).
    HostMemoryWait {
        needed_mb: Option<u64>,
        available_mb: u64,
        headroom_mb: u64,
        in_flight_mb: u64,
        budget_mb: u64,
        swap_active: bool,
    },
}

/// An event about one service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceEvent {
    /// The service's name.
    pub service: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    pub kind: ServiceEventKind,
}

impl ServiceEvent {
    pub(crate) fn now(service: &str, kind: ServiceEventKind) -> Self {
        Self { service: service.to_string(), timestamp_ms: epoch_ms(), kind }
    }
}

/// Now, in ms since the Unix epoch (0 if the clock is before it).
pub(crate) fn epoch_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
