//! `readRecording(path, options?)`: a whole telemetry recording with its alerts, for reports.

use napi::bindgen_prelude::*;
use napi_derive::napi;

use super::{args, Code};
use crate::error::ErrorCode;
use crate::telemetry::{analyze_recording, TelemetryOptions};

/// Reads a JSONL recording (as `new Telemetry({ record })` writes it) and runs the alert engine
/// over it with `options.thresholds` (the other options are ignored); `events` are its event
/// lines (service and lease events written beside the samples). Throws `INVALID_ARGUMENT`
/// naming the file and line of a bad sample, `IO_ERROR` for an unreadable file, `INVALID_CONFIG`
/// for bad thresholds.
#[napi(
    catch_unwind,
    ts_args_type = "path: string, options?: TelemetryOptions",
    ts_return_type = "{ samples: TelemetrySample[]; alerts: TelemetryAlert[]; events: RecordedEvent[] }"
)]
pub fn read_recording<'env>(
    env: &'env Env,
    path: Option<Unknown<'env>>,
    options: Option<Unknown<'env>>,
) -> Result<Unknown<'env>, Code> {
    let path = args::string(env, path, "path")?;
    let options = args::optional_json(env, options, "telemetry", ErrorCode::InvalidConfig)?;
    let mut warnings = Vec::new();
    let options = TelemetryOptions::from_json(&options.unwrap_or(serde_json::Value::Null), &mut warnings)?;
    super::js::to_js(env, &analyze_recording(std::path::Path::new(&path), options.thresholds)?)
}
