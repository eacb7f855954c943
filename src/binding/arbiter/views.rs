//! The TS types of the small argument objects of the arbiter's slow-path methods; they are read
//! by [`crate::link::arbiter_requests`].

use napi_derive::napi;

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
