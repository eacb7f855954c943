//! What the supervisor reports while it works: one event per step of each service's life.
//!
//! The serde attributes here are the JS shape of an event (`onEvent` listeners get it as
//! serialized), and the generated `ServiceEvent` type comes from them through their JSON Schema
//! (`npm run schema`), so the values and their TypeScript type cannot drift apart.

use std::time::{SystemTime, UNIX_EPOCH};

use schemars::JsonSchema;
use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::error::SidecarError;

/// Which output stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(inline)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

impl OutputStream {
    /// Its serde form.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ExitInfo {
    /// The exit code, when it exited by itself.
    #[serde(rename = "exitCode")]
    pub code: Option<i32>,
    /// The signal that ended it, on Unix (JS sees its name, e.g. `'SIGKILL'`).
    #[serde(serialize_with = "serialize_signal")]
    #[schemars(with = "Option<String>")]
    pub signal: Option<i32>,
}

/// A signal's name as JS sees it: `SIGKILL`, or `SIG<n>` for one without a well-known name. The
/// numbers are the platform's own (`SIGBUS` is 7 on Linux and 10 on macOS).
#[cfg(unix)]
fn signal_name(signal: i32) -> String {
    const NAMES: [(i32, &str); 16] = [
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGINT, "SIGINT"),
        (libc::SIGQUIT, "SIGQUIT"),
        (libc::SIGILL, "SIGILL"),
        (libc::SIGTRAP, "SIGTRAP"),
        (libc::SIGABRT, "SIGABRT"),
        (libc::SIGBUS, "SIGBUS"),
        (libc::SIGFPE, "SIGFPE"),
        (libc::SIGKILL, "SIGKILL"),
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGSEGV, "SIGSEGV"),
        (libc::SIGUSR2, "SIGUSR2"),
        (libc::SIGPIPE, "SIGPIPE"),
        (libc::SIGALRM, "SIGALRM"),
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGXCPU, "SIGXCPU"),
    ];
    NAMES.iter().find(|(n, _)| *n == signal).map_or_else(|| format!("SIG{signal}"), |(_, name)| name.to_string())
}

/// No process ends on a signal there.
#[cfg(not(unix))]
fn signal_name(signal: i32) -> String {
    format!("SIG{signal}")
}

pub(crate) fn serialize_signal<S: Serializer>(signal: &Option<i32>, serializer: S) -> Result<S::Ok, S::Error> {
    signal.map(signal_name).serialize(serializer)
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

/// One step in a service's life. JS sees `type` (the variant's name in kebab-case) and the
/// fields in camelCase, next to the event's `service` and `at`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "kebab-case", rename_all_fields = "camelCase")]
pub enum ServiceEventKind {
    /// A start attempt begins: `attempt` 0 is the first start, later ones are restarts;
    /// `expectedReadyMs` was learned on an earlier run.
    Starting { attempt: u32, expected_ready_ms: Option<u64> },
    /// The process is running with this pid.
    Spawned { pid: u32 },
    /// One line of output. `\n`, `\r\n` and a lone `\r` end a line; a line over 64 KiB is split
    /// into pieces, each but the last ending in `' [line split: over 64 KiB]'`.
    Log { stream: OutputStream, line: String },
    /// A readiness probe did not pass yet.
    ProbeFailed { reason: String },
    /// Readiness passed, `timeToReadyMs` after spawn.
    Ready { time_to_ready_ms: u64 },
    /// The service was stopped because it was not ready in time.
    ReadinessTimeout { timeout_ms: u64 },
    /// The process exited on its own: `exitCode`, or `signal` (e.g. `'SIGKILL'`).
    Exited {
        #[serde(flatten)]
        exit: ExitInfo,
    },
    /// The service will be started again after `delayMs`.
    Restarting { attempt: u32, delay_ms: u64 },
    /// The service gave up; `lastLines` is the end of its output.
    Failed { error: SidecarError, last_lines: Vec<String> },
    /// Not started: `dependency` did not become ready, or was removed by an update; `reason`
    /// says which (`"db" failed`, `"db" was removed from the services`).
    Blocked { dependency: String, reason: String },
    /// Waiting until `gpuKey` has `neededMb` (the service's need plus headroom) free.
    VramWait { gpu_key: String, needed_mb: u64, free_mb: u64 },
    /// A service with `gpu.key: 'auto'` was placed on `gpuKey`, which had `freeMb` free less the
    /// loads on their way there (`null`: no GPU had a free-memory reading, the first was taken).
    Placed { gpu_key: String, free_mb: Option<u64> },
    /// A gate waits for the attached Telemetry's first reading (at most `timeoutMs`, the gate's own
    /// timeout): before it, "no reading" would wrongly turn the gate off or fail `'auto'`.
    TelemetryWait { gate: crate::services::ReadingGate, timeout_ms: u64 },
    /// Started without the VRAM gate, for the reason given (no telemetry with NVML figures, or no
    /// estimate).
    VramGateOff { gpu_key: String, reason: String },
    /// Added by a run-time update (`setServices`, `refresh`, a watched config's edit); not
    /// started unless asked.
    Added,
    /// Its config was changed by a run-time update: the change takes effect at its next start
    /// (a running service keeps running as it is).
    Changed,
    /// Dropped by a run-time update, after it was stopped.
    Removed,
    /// A stop began (`stop`, `stopAll`, `close`, an eviction or an idle stop): the service reads
    /// `stopping` until its process group is gone, then `stopped`.
    Stopping,
    /// Stopped on request, or exited cleanly with no restart due.
    Stopped,
    /// A liveness check of a ready service failed (`consecutive` in a row so far).
    LivenessFailed { reason: String, consecutive: u32 },
    /// `failureThreshold` liveness checks failed in a row: the service is stopped, then restarted
    /// by its policy. `failures` are their reasons, oldest first.
    Unhealthy { failures: Vec<String> },
    /// The arbiter's watchdog revoked `revokes` of the service's leases within `windowMs`: the
    /// service is stopped, then restarted by its policy.
    Hung { revokes: u32, window_ms: u64, lease_ids: Vec<String> },
    /// A notify `STATUS=` message.
    Status { text: String },
    /// A notify `STOPPING=1` message: the service says it is shutting down.
    NotifyStopping,
    /// `EXTEND_TIMEOUT_MS` moved the readiness deadline to `timeoutMs` after spawn.
    ReadinessExtended { timeout_ms: u64 },
    /// No output line or notify message for `stallTimeoutMs` during the load.
    ReadinessStalled { stall_timeout_ms: u64 },
    /// The port was held by a leftover of this service (`pid`), which was stopped.
    PortReclaimed { port: u16, pid: u32 },
    /// `stop()` waited `waitedMs` and the port is still held (by `pid`, when known).
    PortStillHeld { port: u16, waited_ms: u64, pid: Option<u32> },
    /// An on-demand service is started for a lease request of `taskType`.
    Demanded { task_type: String },
    /// Stopped to make room on `gpuKey` for service `for`'s load: it was expected to free
    /// `expectedMb`; telemetry showed `freedMb` more free memory after its stop.
    Evicted {
        gpu_key: String,
        #[serde(rename = "for")]
        for_service: String,
        expected_mb: u64,
        freed_mb: Option<u64>,
    },
    /// The load ran out of GPU memory (its output matched `oomPattern`): `evicted` were stopped
    /// and the start is retried once.
    OomRetry { gpu_key: String, evicted: Vec<String> },
    /// An on-demand service held no lease for `idleMs` (its `keepAliveMs`) and was stopped.
    IdleStopped { idle_ms: u64 },
    /// The start waits for host memory (the status shows `waiting: 'waiting-host-memory'`); sent
    /// again when the reason changes between low memory and swapping.
    HostMemoryWait {
        /// `hostMemMb`, else the learned peak RSS; `null` with neither (only the swap stop applies).
        needed_mb: Option<u64>,
        available_mb: u64,
        headroom_mb: u64,
        /// What the loads on their way are still expected to take.
        in_flight_mb: u64,
        /// `availableMb - headroomMb - inFlightMb`, never negative.
        budget_mb: u64,
        /// The attached Telemetry's SWAP_ACTIVE alert is raised: no start begins.
        swap_active: bool,
    },
}

/// An event about one service.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[schemars(inline)]
pub struct ServiceEvent {
    /// The service's name.
    pub service: String,
    /// Milliseconds since the Unix epoch.
    #[serde(rename = "at")]
    pub timestamp_ms: u64,
    #[serde(flatten)]
    pub kind: ServiceEventKind,
}

/// What the binding tells `onEvent` listeners itself, in the same stream as the
/// [`ServiceEvent`]s.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[schemars(inline)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ListenerNote {
    /// `count` log lines of this service were not delivered because the listeners fell behind
    /// (more than 10,000 lines or 4 MiB queued). Its `logFile` still has every line.
    LogDropped {
        service: String,
        /// Milliseconds since the Unix epoch.
        at: u64,
        count: u64,
    },
}

impl ServiceEvent {
    /// The event as JS listeners get it.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null) // cannot fail: no map keys but strings
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_stream_name_is_its_serde_form() {
        for stream in [super::OutputStream::Stdout, super::OutputStream::Stderr] {
            assert_eq!(serde_json::to_value(stream).unwrap(), stream.as_str());
        }
    }

    #[cfg(unix)]
    #[test]
    fn signal_names_follow_the_platforms_own_numbers() {
        assert_eq!(super::signal_name(libc::SIGBUS), "SIGBUS");
        assert_eq!(super::signal_name(libc::SIGUSR1), "SIGUSR1");
        // 10 is SIGUSR1 on Linux and SIGBUS on macOS: read from the platform, not assumed.
        #[cfg(target_os = "linux")]
        assert_eq!(super::signal_name(10), "SIGUSR1");
        #[cfg(target_os = "macos")]
        assert_eq!(super::signal_name(10), "SIGBUS");
        assert_eq!(super::signal_name(64), "SIG64");
    }

    use super::*;
    use crate::error::ErrorCode;
    use serde_json::json;

    fn event(kind: ServiceEventKind) -> Value {
        ServiceEvent { service: "asr".into(), timestamp_ms: 1_700_000_000_123, kind }.to_json()
    }

    /// Each variant serializes to the object the binding built by hand before (`type`, `service`,
    /// `at` and the variant's fields in camelCase, `null` for a missing figure).
    #[test]
    fn events_serialize_as_js_has_always_seen_them() {
        use ServiceEventKind::*;
        let error = SidecarError::new(ErrorCode::ReadinessTimeout, "not ready in 5000 ms");
        let lines = || vec!["a".to_string(), "b".to_string()];
        let cases = [
            (
                Starting { attempt: 2, expected_ready_ms: None },
                json!({"type": "starting", "attempt": 2, "expectedReadyMs": null}),
            ),
            (
                Starting { attempt: 0, expected_ready_ms: Some(900) },
                json!({"type": "starting", "attempt": 0, "expectedReadyMs": 900}),
            ),
            (Spawned { pid: 42 }, json!({"type": "spawned", "pid": 42})),
            (
                Log { stream: OutputStream::Stderr, line: "x".into() },
                json!({"type": "log", "stream": "stderr", "line": "x"}),
            ),
            (ProbeFailed { reason: "r".into() }, json!({"type": "probe-failed", "reason": "r"})),
            (Ready { time_to_ready_ms: 12 }, json!({"type": "ready", "timeToReadyMs": 12})),
            (ReadinessTimeout { timeout_ms: 5 }, json!({"type": "readiness-timeout", "timeoutMs": 5})),
            (
                Exited { exit: ExitInfo { code: Some(3), signal: None } },
                json!({"type": "exited", "exitCode": 3, "signal": null}),
            ),
            (
                Exited { exit: ExitInfo { code: None, signal: Some(9) } },
                json!({"type": "exited", "exitCode": null, "signal": "SIGKILL"}),
            ),
            (
                Exited { exit: ExitInfo { code: None, signal: Some(40) } },
                json!({"type": "exited", "exitCode": null, "signal": "SIG40"}),
            ),
            (Restarting { attempt: 1, delay_ms: 250 }, json!({"type": "restarting", "attempt": 1, "delayMs": 250})),
            (
                Failed { error, last_lines: lines() },
                json!({"type": "failed", "error": {"code": "READINESS_TIMEOUT", "message": "not ready in 5000 ms"}, "lastLines": ["a", "b"]}),
            ),
            (
                Blocked { dependency: "db".into(), reason: "\"db\" failed".into() },
                json!({"type": "blocked", "dependency": "db", "reason": "\"db\" failed"}),
            ),
            (
                VramWait { gpu_key: "gpu:0".into(), needed_mb: 9, free_mb: 3 },
                json!({"type": "vram-wait", "gpuKey": "gpu:0", "neededMb": 9, "freeMb": 3}),
            ),
            (
                Placed { gpu_key: "gpu:1".into(), free_mb: None },
                json!({"type": "placed", "gpuKey": "gpu:1", "freeMb": null}),
            ),
            (
                VramGateOff { gpu_key: "gpu:0".into(), reason: "no telemetry".into() },
                json!({"type": "vram-gate-off", "gpuKey": "gpu:0", "reason": "no telemetry"}),
            ),
            (
                TelemetryWait { gate: crate::services::ReadingGate::Vram, timeout_ms: 9 },
                json!({"type": "telemetry-wait", "gate": "vram", "timeoutMs": 9}),
            ),
            (Stopped, json!({"type": "stopped"})),
            (
                LivenessFailed { reason: "r".into(), consecutive: 2 },
                json!({"type": "liveness-failed", "reason": "r", "consecutive": 2}),
            ),
            (Unhealthy { failures: lines() }, json!({"type": "unhealthy", "failures": ["a", "b"]})),
            (
                Hung { revokes: 3, window_ms: 60_000, lease_ids: lines() },
                json!({"type": "hung", "revokes": 3, "windowMs": 60000, "leaseIds": ["a", "b"]}),
            ),
            (Status { text: "t".into() }, json!({"type": "status", "text": "t"})),
            (NotifyStopping, json!({"type": "notify-stopping"})),
            (ReadinessExtended { timeout_ms: 7 }, json!({"type": "readiness-extended", "timeoutMs": 7})),
            (ReadinessStalled { stall_timeout_ms: 8 }, json!({"type": "readiness-stalled", "stallTimeoutMs": 8})),
            (PortReclaimed { port: 8080, pid: 5 }, json!({"type": "port-reclaimed", "port": 8080, "pid": 5})),
            (
                PortStillHeld { port: 8080, waited_ms: 100, pid: None },
                json!({"type": "port-still-held", "port": 8080, "waitedMs": 100, "pid": null}),
            ),
            (Demanded { task_type: "ASR".into() }, json!({"type": "demanded", "taskType": "ASR"})),
            (
                Evicted { gpu_key: "gpu:0".into(), for_service: "tts".into(), expected_mb: 4, freed_mb: Some(3) },
                json!({"type": "evicted", "gpuKey": "gpu:0", "for": "tts", "expectedMb": 4, "freedMb": 3}),
            ),
            (
                OomRetry { gpu_key: "gpu:0".into(), evicted: lines() },
                json!({"type": "oom-retry", "gpuKey": "gpu:0", "evicted": ["a", "b"]}),
            ),
            (IdleStopped { idle_ms: 30_000 }, json!({"type": "idle-stopped", "idleMs": 30000})),
            (
                HostMemoryWait {
                    needed_mb: None,
                    available_mb: 1,
                    headroom_mb: 2,
                    in_flight_mb: 3,
                    budget_mb: 0,
                    swap_active: true,
                },
                json!({"type": "host-memory-wait", "neededMb": null, "availableMb": 1, "headroomMb": 2,
                       "inFlightMb": 3, "budgetMb": 0, "swapActive": true}),
            ),
        ];
        for (kind, mut expected) in cases {
            expected["service"] = json!("asr");
            expected["at"] = json!(1_700_000_000_123u64);
            assert_eq!(event(kind), expected);
        }
        let note = serde_json::to_value(ListenerNote::LogDropped { service: "asr".into(), at: 5, count: 7 }).unwrap();
        assert_eq!(note, json!({"type": "log-dropped", "service": "asr", "at": 5, "count": 7}));
    }
}
