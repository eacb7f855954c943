//! The GPU lease arbiter: a pure state machine on a caller-supplied clock.
//!
//! Requests are granted per GPU up to its capacity, queued by priority with aging (FIFO among
//! equals), answered by their busy policy when they cannot wait, timed out after `maxWaitMs`, and
//! watched while held. Telemetry readings, when fed in, add per-GPU pressure and VRAM admission.
//! The caller drives time: it calls [`Arbiter::tick`] at [`Arbiter::next_deadline`].

pub mod clock;
pub mod config;
mod deadlines;
mod snapshot;
mod state;
mod stats;
pub mod types;

pub use clock::Clock;
pub use config::ArbiterConfig;
pub use snapshot::{AdmissionView, GpuMetricsView, GpuSnapshot, LeaseView, TaskStatsView, WaiterView};
pub use state::{Arbiter, WaterMarks};
pub use stats::Percentiles;
pub use types::*;

#[cfg(test)]
mod tests;
