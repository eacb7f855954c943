//! The small argument objects of the arbiter's slow-path methods: their TS types, and how they
//! are read.

use napi_derive::napi;
use serde_json::Value;

use crate::arbiter::GpuReading;
use crate::error::{SidecarError, SidecarResult};

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
