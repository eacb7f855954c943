//! GPU and host telemetry: samples on a dedicated thread, alerts with hysteresis, Prometheus
//! metrics, capacity advice, and JSONL record/replay.
//!
//! Plain Rust, no napi types: the binding wraps [`Sampler`] / [`SamplerHandle`] and forwards
//! [`SamplerEvent`]s to JS. NVML is initialised once per process ([`nvml::nvml`]); without an
//! NVIDIA library or driver, samples say why (`nvml.available: false`) and host figures still flow.

pub mod advice;
pub mod alerts;
pub mod analysis;
pub mod host;
pub mod inventory;
pub mod metrics;
pub mod nvml;
pub mod options;
pub mod record;
pub mod sample;
pub mod sampler;

pub use advice::{recommend_concurrency, Recommendation};
pub use alerts::{Alert, AlertCode, AlertEngine, AlertLevel, Backlog, BacklogBoard};
pub use analysis::{analyze_recording, RecordingAnalysis};
pub use host::{zombie_children, HostReader, ProcessRegistry};
pub use inventory::{read_inventory, GpuInfo, Inventory};
pub use nvml::{GpuRead, GpuReader, GpuSource};
pub use options::{AlertThresholds, ReplaySpeed, TelemetryOptions, TelemetrySource};
pub use record::{RecordedEvent, RecordedEventKind, RecordedEventMark, Recorder, Replay};
pub use sample::{
    parse_sample, parse_sample_line, GpuProcess, GpuSample, HostProcess, HostSample, NvmlStatus, NvmlUnavailable,
    Sample, XidEvent,
};
pub use sampler::{sample_once, BacklogFn, LatestSample, Sampler, SamplerEvent, SamplerHandle, SamplerOutput, Sink};
