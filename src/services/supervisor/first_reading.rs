//! The wait for an attached Telemetry's first reading. Until it comes, a gate cannot tell "no
//! GPU" or "no room" from "not measured yet", and the boot (`new Telemetry(...)`, then
//! `attachTelemetry`, then `startAll()` in one turn) is when seed 000 happens: so a gate waits for
//! the reading instead of turning off, bounded by its own timeout.

use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::Serialize;

use super::{ms, Shared, WaitReason};
use crate::error::{ErrorCode, SidecarError, SidecarResult};
use crate::services::events::ServiceEventKind;

/// How often a waiting start looks for the first reading. It comes within one sampling interval
/// of the Telemetry's start, and a boot should lose little more than that to the look.
const FIRST_READING_POLL: Duration = Duration::from_millis(20);

/// The decision that waits for a reading (`telemetry-wait`'s `gate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
#[schemars(rename = "ServiceReadingGate")]
pub enum ReadingGate {
    /// The host-memory gate (`hostMemTimeoutMs` bounds the wait).
    HostMemory,
    /// Placing a `gpu.key: 'auto'` service (`vramTimeoutMs` bounds the wait).
    Placement,
    /// The VRAM gate (`vramTimeoutMs` bounds the wait).
    Vram,
}

impl ReadingGate {
    fn describe(self) -> &'static str {
        match self {
            ReadingGate::HostMemory => "the host-memory gate",
            ReadingGate::Placement => "its 'auto' placement",
            ReadingGate::Vram => "the VRAM gate",
        }
    }

    /// The code the gate itself fails with when its time runs out.
    fn timeout_code(self) -> ErrorCode {
        match self {
            ReadingGate::HostMemory => ErrorCode::HostMemoryLow,
            ReadingGate::Placement => ErrorCode::NoGpu,
            ReadingGate::Vram => ErrorCode::VramTimeout,
        }
    }

    fn timeout_field(self) -> &'static str {
        match self {
            ReadingGate::HostMemory => "hostMemTimeoutMs",
            ReadingGate::Placement | ReadingGate::Vram => "vramTimeoutMs",
        }
    }
}

/// Shows the start as waiting (in its status) until dropped.
pub(super) struct Waiting<'a> {
    shared: &'a Shared,
    i: usize,
}

impl<'a> Waiting<'a> {
    pub(super) fn new(shared: &'a Shared, i: usize, why: WaitReason) -> Self {
        shared.cell(i).waiting = Some(why);
        Self { shared, i }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.shared.cell(self.i).waiting = None;
    }
}

impl Shared {
    /// Waits while `pending()` says the attached Telemetry's first reading is still to come, at
    /// most `limit_ms` (the gate's own timeout), then fails with the gate's own code. The wait is
    /// announced once: a `telemetry-wait` event, and `waiting: 'waiting-telemetry'` in the status.
    pub(super) async fn await_first_reading(
        &self,
        i: usize,
        gate: ReadingGate,
        limit_ms: u64,
        pending: impl Fn() -> bool,
    ) -> SidecarResult<()> {
        if !pending() {
            return Ok(());
        }
        let deadline = Instant::now() + ms(limit_ms);
        let _waiting = Waiting::new(self, i, WaitReason::Telemetry);
        self.emit(i, ServiceEventKind::TelemetryWait { gate, timeout_ms: limit_ms });
        while pending() {
            if Instant::now() >= deadline {
                return Err(SidecarError::new(
                    gate.timeout_code(),
                    format!(
                        "{}: the attached Telemetry took no sample within {limit_ms} ms ({}), so {} could not decide \
                         (is its sampling stuck, or does a manual Telemetry get no push?)",
                        self.spec(i).name,
                        gate.timeout_field(),
                        gate.describe(),
                    ),
                ));
            }
            tokio::time::sleep(FIRST_READING_POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
        Ok(())
    }
}
