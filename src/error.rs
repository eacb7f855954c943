//! Errors shared by the core modules. Each carries a stable code that the binding puts on the JS
//! error's `code` property, so callers can branch on it without parsing messages.

use std::fmt;

use schemars::JsonSchema;
use serde::Serialize;

/// Stable error codes. The strings are part of the public contract.
// index.d.ts's `SidecarErrorCode` is generated from the serde names, which equal `as_str`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[schemars(rename = "SidecarErrorCode")]
pub enum ErrorCode {
    InvalidConfig,
    InvalidGpuKey,
    InvalidArgument,
    Closed,
    #[serde(rename = "IO_ERROR")]
    Io,
    Internal,
    /// A service's port is already bound by another process.
    PortInUse,
    /// A service did not become ready within its `readinessTimeoutMs`.
    ReadinessTimeout,
    /// A GPU service's GPU never had enough free memory within `vramTimeoutMs`.
    VramTimeout,
    /// A service's process could not be spawned.
    SpawnFailed,
    /// A service's process exited (during startup, or for good after its restarts).
    ServiceExited,
    /// No service of that name is configured.
    UnknownService,
    /// A GPU service's startup lease (`gpuStartupLease`) was not granted by the arbiter.
    GpuLeaseNotGranted,
    /// A ready service failed its liveness check `failureThreshold` times in a row and was not
    /// restarted (policy `no`, or its restarts were used up).
    LivenessFailed,
    /// A service's load made no progress (no output line, no notify message) for
    /// `readinessStallTimeoutMs`.
    ReadinessStalled,
    /// The arbiter's watchdog revoked `hangAfterRevokes` of a service's leases within
    /// `hangWindowMs`, and the service was not restarted.
    ServiceHung,
    /// A GPU service ran out of GPU memory during its load twice: once, then again after every
    /// evictable service on its GPU was stopped (its output matched `oomPattern`).
    VramOom,
    /// A GPU service with `gpu.key: 'auto'` had no GPU to be placed on: no telemetry is
    /// attached, or its samples list no GPU.
    NoGpu,
    /// A service's start found too little host memory available (or the host swapping) for
    /// `hostMemTimeoutMs`.
    HostMemoryLow,
    /// A folder of service manifests (`services.manifests`, `loadServiceManifests`) does not
    /// exist or is not a folder.
    ManifestsNotFound,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 20] = [
        ErrorCode::InvalidConfig,
        ErrorCode::InvalidGpuKey,
        ErrorCode::InvalidArgument,
        ErrorCode::Closed,
        ErrorCode::Io,
        ErrorCode::Internal,
        ErrorCode::PortInUse,
        ErrorCode::ReadinessTimeout,
        ErrorCode::VramTimeout,
        ErrorCode::SpawnFailed,
        ErrorCode::ServiceExited,
        ErrorCode::UnknownService,
        ErrorCode::GpuLeaseNotGranted,
        ErrorCode::LivenessFailed,
        ErrorCode::ReadinessStalled,
        ErrorCode::ServiceHung,
        ErrorCode::VramOom,
        ErrorCode::NoGpu,
        ErrorCode::HostMemoryLow,
        ErrorCode::ManifestsNotFound,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidConfig => "INVALID_CONFIG",
            ErrorCode::InvalidGpuKey => "INVALID_GPU_KEY",
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::Closed => "CLOSED",
            ErrorCode::Io => "IO_ERROR",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::PortInUse => "PORT_IN_USE",
            ErrorCode::ReadinessTimeout => "READINESS_TIMEOUT",
            ErrorCode::VramTimeout => "VRAM_TIMEOUT",
            ErrorCode::SpawnFailed => "SPAWN_FAILED",
            ErrorCode::ServiceExited => "SERVICE_EXITED",
            ErrorCode::UnknownService => "UNKNOWN_SERVICE",
            ErrorCode::GpuLeaseNotGranted => "GPU_LEASE_NOT_GRANTED",
            ErrorCode::LivenessFailed => "LIVENESS_FAILED",
            ErrorCode::ReadinessStalled => "READINESS_STALLED",
            ErrorCode::ServiceHung => "SERVICE_HUNG",
            ErrorCode::VramOom => "VRAM_OOM",
            ErrorCode::NoGpu => "NO_GPU",
            ErrorCode::HostMemoryLow => "HOST_MEMORY_LOW",
            ErrorCode::ManifestsNotFound => "MANIFESTS_NOT_FOUND",
        }
    }
}

/// An error with a stable code and a message that says what was wrong and where. As data (in
/// service events, start outcomes and statuses) JS sees it as `{ code, message }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(rename = "ServiceError")]
pub struct SidecarError {
    pub code: ErrorCode,
    pub message: String,
}

impl SidecarError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
    pub fn invalid_config(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidConfig, message)
    }
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    /// The error a panic caught in `what` becomes (code `INTERNAL`); the panic is logged.
    pub fn from_panic(what: &str, payload: &(dyn std::any::Any + Send)) -> Self {
        let detail = panic_message(payload);
        tracing::error!(%detail, "panic in {what}");
        Self::new(ErrorCode::Internal, format!("internal error in {what}: {detail}"))
    }
}

impl fmt::Display for SidecarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for SidecarError {}

pub type SidecarResult<T> = Result<T, SidecarError>;

/// Logs what a config or options reader warned about (unknown keys and the like).
pub fn log_warnings(warnings: &[String]) {
    for w in warnings {
        tracing::warn!("{w}");
    }
}

/// The text a panic was raised with.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_panic_becomes_an_internal_error_naming_where_and_why() {
        let payload = std::panic::catch_unwind(|| panic!("boom at {}", 42)).unwrap_err();
        let e = SidecarError::from_panic("hot path", &*payload);
        assert_eq!((e.code, e.message.as_str()), (ErrorCode::Internal, "internal error in hot path: boom at 42"));
        let e = SidecarError::from_panic("x", &"static message");
        assert_eq!(e.message, "internal error in x: static message");
    }

    /// Thrown errors carry `as_str`; the `code` of an error as data is the serde name, and the
    /// generated `SidecarErrorCode` lists the serde names.
    #[test]
    fn every_code_is_in_all_once_and_its_serde_name_is_as_str() {
        for code in ErrorCode::ALL {
            // Stops compiling when a code is added: add it to ALL too, then here.
            match code {
                ErrorCode::InvalidConfig
                | ErrorCode::InvalidGpuKey
                | ErrorCode::InvalidArgument
                | ErrorCode::Closed
                | ErrorCode::Io
                | ErrorCode::Internal
                | ErrorCode::PortInUse
                | ErrorCode::ReadinessTimeout
                | ErrorCode::VramTimeout
                | ErrorCode::SpawnFailed
                | ErrorCode::ServiceExited
                | ErrorCode::UnknownService
                | ErrorCode::GpuLeaseNotGranted
                | ErrorCode::LivenessFailed
                | ErrorCode::ReadinessStalled
                | ErrorCode::ServiceHung
                | ErrorCode::VramOom
                | ErrorCode::NoGpu
                | ErrorCode::HostMemoryLow
                | ErrorCode::ManifestsNotFound => {}
            }
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
        let names: std::collections::BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ErrorCode::ALL.len(), "each code once");
        let error = SidecarError::new(ErrorCode::Io, "disk gone");
        assert_eq!(
            serde_json::to_value(error).unwrap(),
            serde_json::json!({ "code": "IO_ERROR", "message": "disk gone" })
        );
    }
}
