//! What JS hands the arbiter, checked field by field with a message naming the field: a lease
//! request object (`acquire({ taskType, priority, ... })` with more than a task type; the binding
//! reads each field's JS value into a [`Field`]), `observeGpu`'s reading and
//! `notifyAsrTaskHint`'s hint (as JSON).

use serde_json::Value;

use crate::arbiter::{AcquireRequest, BusyPolicy, GpuReading, LeaseId, Trace, LEASE_PREFIX};
use crate::error::{SidecarError, SidecarResult};

/// One field of a request object, as read from JS.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    /// `undefined` or `null`.
    Absent,
    Number(f64),
    Text(String),
    /// Anything else (an object, a boolean, ...).
    Other,
}

/// The request whose fields `field` reads (by their JS name), with its `trace`. Fields are read
/// and checked in a fixed order, so the first bad one is the one named.
pub fn read_request<E: From<SidecarError>>(
    field: impl Fn(&str) -> Result<Field, E>,
    trace: Trace,
) -> Result<AcquireRequest, E> {
    let bad = |name: &str, what: String| E::from(SidecarError::invalid_argument(format!("request.{name}: {what}")));
    let task_type = match field("taskType")? {
        Field::Text(text) => text,
        _ => return Err(bad("taskType", "expected a string".into())),
    };
    let opt_string = |name: &str| match field(name)? {
        Field::Absent => Ok(None),
        Field::Text(text) => Ok(Some(text)),
        _ => Err(bad(name, "expected a string".into())),
    };
    let opt_number = |name: &str| match field(name)? {
        Field::Absent => Ok(None),
        Field::Number(n) if n.is_nan() => Err(bad(name, "expected a number, got NaN".into())),
        Field::Number(n) => Ok(Some(n)),
        _ => Err(bad(name, "expected a number".into())),
    };
    // Durations and sizes: >= 0; larger than the arbiter allows (Infinity included) is capped there.
    let opt_whole = |name: &str| match opt_number(name)? {
        Some(x) if x < 0.0 => Err(bad(name, format!("expected a number >= 0, got {x}"))),
        other => Ok(other.map(|x| if x >= u64::MAX as f64 { u64::MAX } else { x.round() as u64 })),
    };
    let priority = match opt_number("priority")? {
        Some(p) if p.fract() != 0.0 || !(0.0..=100.0).contains(&p) => {
            return Err(bad("priority", format!("expected an integer 0-100, got {p}")))
        }
        p => p.map(|p| p as u64),
    };
    let busy_policy = match opt_string("busyPolicy")? {
        None => None,
        Some(text) => {
            Some(serde_json::from_value::<BusyPolicy>(serde_json::Value::String(text.clone())).map_err(|_| {
                bad("busyPolicy", format!("expected one of \"WAIT\", \"SKIP\", \"FALLBACK_CPU\", got \"{text}\""))
            })?)
        }
    };
    Ok(AcquireRequest {
        task_type: task_type.into(),
        gpu_key: opt_string("gpuKey")?,
        priority,
        max_wait_ms: opt_whole("maxWaitMs")?,
        hold_max_ms: opt_whole("holdMaxMs")?,
        queue_limit: opt_whole("queueLimit")?,
        busy_policy,
        vram_mb: opt_whole("vramMb")?,
        trace,
    })
}

/// A lease or waiter id from the JS half: a whole number >= 0; anything else is no id this
/// arbiter issued.
pub fn id(field: &Field) -> Option<u64> {
    match field {
        // An integer >= 0, told without `fract` (a libm call on the release path).
        Field::Number(n) if *n >= 0.0 && (*n as u64) as f64 == *n => Some(*n as u64),
        _ => None,
    }
}

/// The lease a release names: its id, or its `lease-N` text. Anything else is an id this arbiter
/// never issued: ignored, as the old arbiter did.
pub fn released_lease(field: &Field) -> Option<LeaseId> {
    match field {
        Field::Text(text) => {
            let id = text.strip_prefix(LEASE_PREFIX).and_then(|n| n.parse().ok());
            if id.is_none() {
                tracing::debug!(lease_id = %text, "release of a lease id this arbiter never issued: ignored");
            }
            id
        }
        other => id(other),
    }
}

/// A trace's `utteranceIndex`: a finite number (or numeric text), truncated; anything else is
/// left out (a trace is diagnostics, never a reason to refuse the request).
pub fn utterance_index(field: &Field) -> Option<i64> {
    match field {
        Field::Number(n) => Some(*n),
        Field::Text(text) => text.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|n| n.is_finite())
    .map(|n| n.trunc() as i64)
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

/// A lease request. Only `taskType` is required; the rest comes from the task type's policy,
/// then the arbiter's defaults.
// Read by `read_request` (the binding reads `trace`, the JS half `signal`); only the schema is
// used, for the TypeScript type generated from it.
#[derive(schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "GpuLeaseRequest")]
#[allow(dead_code)]
pub struct GpuLeaseRequest {
    /// `ASR`, `NMT`, `TTS`, `SEMANTIC_REPAIR`, `OTHER` or any custom name.
    pub task_type: String,
    /// A configured GPU key; absent: the least-loaded GPU that can take it.
    #[serde(default)]
    #[schemars(with = "String")]
    pub gpu_key: Option<String>,
    /// 0-100, higher is served first.
    #[serde(default)]
    #[schemars(with = "f64")]
    pub priority: Option<f64>,
    #[serde(default)]
    #[schemars(with = "f64")]
    pub max_wait_ms: Option<f64>,
    #[serde(default)]
    #[schemars(with = "f64")]
    pub hold_max_ms: Option<f64>,
    #[serde(default)]
    #[schemars(with = "f64")]
    pub queue_limit: Option<f64>,
    #[serde(default)]
    #[schemars(with = "String", extend("tsType" = "BusyPolicy"))]
    pub busy_policy: Option<String>,
    /// Estimated GPU memory the work needs, in MB (checked against telemetry when attached).
    #[serde(default)]
    #[schemars(with = "f64")]
    pub vram_mb: Option<f64>,
    #[serde(default)]
    #[schemars(with = "GpuLeaseTraceInput")]
    pub trace: Option<GpuLeaseTraceInput>,
    /// Aborting it withdraws a queued request: it resolves `CANCELLED` / `ABORTED`. An
    /// AbortSignal, or an object with `aborted`, `addEventListener` and `removeEventListener`.
    #[serde(default)]
    #[schemars(with = "Value", extend("tsType" = "AbortSignal"))]
    pub signal: Option<Value>,
}

/// Who asks, for snapshots and events. Diagnostics only: a field of another type is converted
/// (`jobId: 7` becomes `'7'`, `utteranceIndex: '3'` becomes 3) or left out, never refused.
// Read by the binding's `read_trace` into `Trace`; only the schema is used.
#[derive(schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "GpuLeaseTraceInput", extend("additionalProperties" = true))]
#[allow(dead_code)]
pub struct GpuLeaseTraceInput {
    #[serde(default)]
    #[schemars(with = "Value", extend("tsType" = "string | number"))]
    pub job_id: Option<Value>,
    #[serde(default)]
    #[schemars(with = "Value", extend("tsType" = "string | number"))]
    pub session_id: Option<Value>,
    #[serde(default)]
    #[schemars(with = "Value", extend("tsType" = "number | string"))]
    pub utterance_index: Option<Value>,
    #[serde(default)]
    #[schemars(with = "String")]
    pub stage: Option<String>,
}

/// One GPU's telemetry as admission uses it (`observeGpu`'s `reading`).
// Read by `reading_input`; only the schema is used, for the TypeScript type generated from it.
#[derive(schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "GpuReadingInput")]
#[allow(dead_code)] // declares the argument's TS type; the value is read by `reading_input`
pub struct GpuReadingInput {
    /// GPU utilization, 0-100 %.
    #[serde(default)]
    #[schemars(with = "f64")]
    pub utilization_gpu: Option<f64>,
    /// Free GPU memory, MB.
    #[serde(default)]
    #[schemars(with = "f64")]
    pub free_mb: Option<f64>,
    /// Total GPU memory, MB.
    #[serde(default)]
    #[schemars(with = "f64")]
    pub total_mb: Option<f64>,
}

/// The ASR stage's hint about the utterance it is about to run (`notifyAsrTaskHint`).
// Read by `asr_hint`; only the schema is used, for the TypeScript type generated from it.
#[derive(schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "AsrTaskHint")]
#[allow(dead_code)] // declares the argument's TS type; the value is read by `asr_hint`
pub struct AsrTaskHint {
    /// The audio's length, ms.
    #[serde(default)]
    #[schemars(with = "f64")]
    pub estimated_audio_ms: Option<f64>,
    /// How long the GPU work is expected to hold the GPU, ms.
    #[serde(default)]
    #[schemars(with = "f64")]
    pub estimated_gpu_hold_ms: Option<f64>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(fields: &[(&str, Field)]) -> Result<AcquireRequest, SidecarError> {
        let fields: HashMap<&str, Field> = fields.iter().cloned().collect();
        read_request(|name| Ok(fields.get(name).cloned().unwrap_or(Field::Absent)), Trace::default())
    }

    fn message(fields: &[(&str, Field)]) -> String {
        read(fields).unwrap_err().message
    }

    #[test]
    fn every_field_is_read_and_sizes_are_rounded_and_capped() {
        let r = read(&[
            ("taskType", Field::Text("ASR".into())),
            ("gpuKey", Field::Text("gpu:1".into())),
            ("priority", Field::Number(90.0)),
            ("maxWaitMs", Field::Number(1.6)),
            ("holdMaxMs", Field::Number(f64::INFINITY)),
            ("busyPolicy", Field::Text("SKIP".into())),
            ("vramMb", Field::Number(512.0)),
        ])
        .unwrap();
        assert_eq!((&*r.task_type, r.gpu_key.as_deref(), r.priority), ("ASR", Some("gpu:1"), Some(90)));
        assert_eq!(
            (r.max_wait_ms, r.hold_max_ms, r.queue_limit, r.vram_mb),
            (Some(2), Some(u64::MAX), None, Some(512))
        );
        assert_eq!(r.busy_policy, Some(BusyPolicy::Skip));
    }

    #[test]
    fn a_bad_field_is_named_with_what_it_should_be() {
        let asr = ("taskType", Field::Text("ASR".into()));
        assert_eq!(message(&[]), "request.taskType: expected a string");
        assert_eq!(message(&[asr.clone(), ("gpuKey", Field::Number(1.0))]), "request.gpuKey: expected a string");
        // The first bad field in reading order is the one named.
        let two_bad = [asr.clone(), ("gpuKey", Field::Number(1.0)), ("priority", Field::Number(500.0))];
        assert_eq!(message(&two_bad), "request.priority: expected an integer 0-100, got 500");
        assert_eq!(
            message(&[asr.clone(), ("priority", Field::Number(100.5))]),
            "request.priority: expected an integer 0-100, got 100.5"
        );
        assert_eq!(
            message(&[asr.clone(), ("maxWaitMs", Field::Number(f64::NAN))]),
            "request.maxWaitMs: expected a number, got NaN"
        );
        assert_eq!(
            message(&[asr.clone(), ("vramMb", Field::Number(-1.0))]),
            "request.vramMb: expected a number >= 0, got -1"
        );
        assert_eq!(message(&[asr.clone(), ("queueLimit", Field::Other)]), "request.queueLimit: expected a number");
        assert_eq!(
            message(&[asr, ("busyPolicy", Field::Text("NOW".into()))]),
            "request.busyPolicy: expected one of \"WAIT\", \"SKIP\", \"FALLBACK_CPU\", got \"NOW\""
        );
    }

    #[test]
    fn a_reading_and_a_hint_take_amounts_and_name_a_bad_one() {
        use serde_json::json;
        let r = reading_input(&json!({"utilizationGpu": 50, "freeMb": 1000.7, "totalMb": 8000})).unwrap();
        assert_eq!((r.utilization_gpu, r.free_mb, r.total_mb), (Some(50.0), Some(1000), Some(8000)));
        assert_eq!(reading_input(&json!({})).unwrap().free_mb, None);
        let err = |v| reading_input(&v).unwrap_err().message;
        assert_eq!(err(json!({"utilizationGpu": 101})), "reading.utilizationGpu: expected 0-100, got 101");
        assert_eq!(err(json!({"freeMb": -1})), "reading.freeMb: expected a number >= 0, got -1");
        assert_eq!(err(json!({"totalMb": "x"})), "reading.totalMb: expected a number, got \"x\"");
        assert_eq!(err(json!(3)), "reading: expected an object, got 3");
        assert_eq!(asr_hint(&json!({"estimatedAudioMs": 12000.4})).unwrap(), (Some(12000), None));
        assert_eq!(asr_hint(&json!(null)).unwrap_err().message, "hint: expected an object, got null");
    }

    #[test]
    fn a_released_lease_is_named_by_its_id_or_its_text_and_anything_else_names_none() {
        assert_eq!(released_lease(&Field::Number(42.0)), Some(42));
        assert_eq!(released_lease(&Field::Text("lease-42".into())), Some(42));
        assert_eq!(released_lease(&Field::Text("lease-x".into())), None);
        assert_eq!(released_lease(&Field::Text("42".into())), None);
        assert_eq!(released_lease(&Field::Number(1.5)), None);
        assert_eq!(released_lease(&Field::Number(-1.0)), None);
        assert_eq!(released_lease(&Field::Absent), None);
        assert_eq!(id(&Field::Text("1".into())), None, "waiter ids are numbers only");
    }

    #[test]
    fn an_utterance_index_is_a_finite_number_or_numeric_text_truncated() {
        assert_eq!(utterance_index(&Field::Number(3.9)), Some(3));
        assert_eq!(utterance_index(&Field::Text(" 12 ".into())), Some(12));
        assert_eq!(utterance_index(&Field::Number(f64::INFINITY)), None);
        assert_eq!(utterance_index(&Field::Text("x".into())), None);
        assert_eq!(utterance_index(&Field::Other), None);
    }

    /// The property names of a generated argument type, each optional.
    fn optional_fields(schema: schemars::Schema) -> Vec<String> {
        let schema = schema.to_value();
        assert!(schema.get("required").is_none(), "every field is optional: {schema}");
        schema["properties"].as_object().unwrap().keys().cloned().collect()
    }

    #[test]
    fn the_generated_argument_types_name_the_fields_the_readers_read() {
        let fields = optional_fields(schemars::schema_for!(GpuReadingInput));
        assert_eq!(fields, ["freeMb", "totalMb", "utilizationGpu"]);
        let all: serde_json::Map<_, _> = fields.iter().map(|f| (f.clone(), serde_json::json!(7))).collect();
        let read = reading_input(&Value::Object(all)).unwrap();
        assert_eq!((read.utilization_gpu, read.free_mb, read.total_mb), (Some(7.0), Some(7), Some(7)));
        let fields = optional_fields(schemars::schema_for!(AsrTaskHint));
        assert_eq!(fields, ["estimatedAudioMs", "estimatedGpuHoldMs"]);
        let all: serde_json::Map<_, _> = fields.iter().map(|f| (f.clone(), serde_json::json!(7))).collect();
        assert_eq!(asr_hint(&Value::Object(all)).unwrap(), (Some(7), Some(7)));
    }

    #[test]
    fn the_generated_request_type_names_the_fields_the_reader_reads() {
        let schema = schemars::schema_for!(GpuLeaseRequest).to_value();
        assert_eq!(schema["required"], serde_json::json!(["taskType"]));
        let mut declared: Vec<&str> = schema["properties"].as_object().unwrap().keys().map(String::as_str).collect();
        // Read elsewhere: the trace by the binding (into `Trace`), the signal by the JS half.
        declared.retain(|name| !["trace", "signal"].contains(name));
        let read = std::cell::RefCell::new(Vec::new());
        let request = read_request::<SidecarError>(
            |name| {
                read.borrow_mut().push(name.to_string());
                Ok(if name == "taskType" { Field::Text("ASR".into()) } else { Field::Absent })
            },
            Trace::default(),
        );
        assert!(request.is_ok());
        let mut read = read.into_inner();
        read.sort();
        assert_eq!(declared, read, "the type and the reader name the same fields");
    }

    #[test]
    fn the_generated_trace_input_type_names_the_fields_a_lease_trace_shows() {
        let input = schemars::schema_for!(GpuLeaseTraceInput).to_value();
        assert_eq!(input["additionalProperties"], true, "other fields are allowed and ignored");
        let shown = schemars::schema_for!(crate::link::arbiter_views::GpuLeaseTrace).to_value();
        let names = |schema: &Value| schema["properties"].as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(&input), names(&shown));
    }
}
