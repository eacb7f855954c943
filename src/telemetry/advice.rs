//! Capacity advice: how many workers of a given size fit in the memory that is free now. Seed
//! 004: 100 workers of ~250 MB each drove a machine into swap for 40 hours; the count should have
//! come from the available memory, with a reserve left over.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::sample::Sample;
use crate::error::{SidecarError, SidecarResult};

/// How many workers fit, and the figures behind the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "ConcurrencyRecommendation")]
pub struct Recommendation {
    /// `floor((availableMb - reserveMb) / perWorkerMb)`, never negative.
    pub workers: u64,
    /// Host available memory, or the GPU's free memory.
    pub available_mb: u64,
    /// `reserveFraction` of the total, kept free.
    pub reserve_mb: u64,
    pub per_worker_mb: f64,
    /// `host` or a GPU key.
    pub on: String,
    /// The calculation in words, for logs.
    pub basis: String,
}

/// `recommendConcurrency`'s options, `{ perWorkerMb, reserveFraction?, on? }`, as JS passed them.
// Read by `from_json` (its messages name each field); the schema, and the TypeScript type generated
// from it, describe the argument as read (the `serde` defaults are the ones `from_json` applies).
#[derive(Debug, Clone, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "RecommendConcurrencyOptions")]
pub struct ConcurrencyRequest {
    /// Memory one worker takes, MB.
    pub per_worker_mb: f64,
    /// Fraction of the total kept free (default 0.1).
    #[serde(default = "default_reserve_fraction")]
    pub reserve_fraction: f64,
    /// `'host'` (default) or a GPU key such as `'gpu:0'`.
    #[serde(default = "default_on")]
    pub on: String,
}

fn default_reserve_fraction() -> f64 {
    0.1
}

fn default_on() -> String {
    "host".to_string()
}

impl ConcurrencyRequest {
    /// Reads the options object, naming a bad field (`options.perWorkerMb: ...`).
    pub fn from_json(value: Option<&Value>) -> SidecarResult<Self> {
        let Some(Value::Object(map)) = value else {
            return Err(SidecarError::invalid_argument(format!(
                "options: expected an object such as {{ perWorkerMb: 250 }}, got {}",
                value.map_or("nothing".to_string(), |v| v.to_string())
            )));
        };
        let number = |key: &str| match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(other) => {
                Err(SidecarError::invalid_argument(format!("options.{key}: expected a number, got {other}")))
            }
        };
        let per_worker_mb = number("perWorkerMb")?
            .ok_or_else(|| SidecarError::invalid_argument("options.perWorkerMb: expected a number > 0, got nothing"))?;
        let reserve_fraction = number("reserveFraction")?.unwrap_or_else(default_reserve_fraction);
        let on = match map.get("on") {
            None | Some(Value::Null) => default_on(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(SidecarError::invalid_argument(format!(
                    "options.on: expected \"host\" or a GPU key, got {other}"
                )))
            }
        };
        Ok(Self { per_worker_mb, reserve_fraction, on })
    }

    /// The advice for this request from `sample`.
    pub fn answer(&self, sample: &Sample) -> SidecarResult<Recommendation> {
        recommend_concurrency(sample, self.per_worker_mb, self.reserve_fraction, &self.on)
    }
}

/// Recommends a worker count for `on` (`"host"` or a GPU key such as `"gpu:0"`) from a sample:
/// available memory minus `reserve_fraction` of the total, divided by `per_worker_mb`.
pub fn recommend_concurrency(
    sample: &Sample,
    per_worker_mb: f64,
    reserve_fraction: f64,
    on: &str,
) -> SidecarResult<Recommendation> {
    if !(per_worker_mb.is_finite() && per_worker_mb > 0.0) {
        return Err(SidecarError::invalid_argument(format!("perWorkerMb: expected a number > 0, got {per_worker_mb}")));
    }
    if !(0.0..1.0).contains(&reserve_fraction) {
        return Err(SidecarError::invalid_argument(format!(
            "reserveFraction: expected a number from 0 up to (not including) 1, got {reserve_fraction}"
        )));
    }
    let (available_mb, total_mb, what) = if on == "host" {
        (sample.host.available_mb, sample.host.total_mb, "host available memory")
    } else {
        let gpu = sample.gpu(on).ok_or_else(|| {
            let known: Vec<&str> = sample.gpus.iter().map(|g| g.key.as_str()).collect();
            let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
            SidecarError::invalid_argument(format!(
                "on: expected \"host\" or a sampled GPU key ({known}), got \"{on}\""
            ))
        })?;
        match (gpu.free_mb, gpu.total_mb) {
            (Some(free), Some(total)) => (free, total, "free VRAM"),
            _ => {
                return Err(SidecarError::invalid_argument(format!(
                    "on: {on} has no memory reading{}",
                    if gpu.lost { " (the GPU is lost)" } else { "" }
                )))
            }
        }
    };
    let reserve_mb = (total_mb as f64 * reserve_fraction).ceil() as u64;
    let usable_mb = available_mb.saturating_sub(reserve_mb);
    let workers = (usable_mb as f64 / per_worker_mb).floor() as u64;
    Ok(Recommendation {
        workers,
        available_mb,
        reserve_mb,
        per_worker_mb,
        on: on.to_string(),
        basis: format!(
            "floor(({what} {available_mb} MB - reserve {reserve_mb} MB) / {per_worker_mb} MB per worker) = {workers}"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::telemetry::sample::fixtures::sample;
    use crate::telemetry::sample::GpuSample;

    #[test]
    fn options_read_from_json_default_and_name_a_bad_field() {
        let read = |v: serde_json::Value| ConcurrencyRequest::from_json(Some(&v));
        let r = read(serde_json::json!({ "perWorkerMb": 250 })).unwrap();
        assert_eq!(r, ConcurrencyRequest { per_worker_mb: 250.0, reserve_fraction: 0.1, on: "host".into() });
        assert_eq!(read(serde_json::json!({ "perWorkerMb": 1, "on": "gpu:0" })).unwrap().on, "gpu:0");
        for (bad, message) in [
            (serde_json::json!({}), "options.perWorkerMb: expected a number > 0, got nothing"),
            (serde_json::json!({ "perWorkerMb": "x" }), "options.perWorkerMb: expected a number, got \"x\""),
            (serde_json::json!({ "perWorkerMb": 1, "on": 3 }), "options.on: expected \"host\" or a GPU key, got 3"),
            (serde_json::json!(7), "options: expected an object such as { perWorkerMb: 250 }, got 7"),
        ] {
            assert_eq!(read(bad).unwrap_err().message, message);
        }
        assert!(ConcurrencyRequest::from_json(None).unwrap_err().message.ends_with("got nothing"));
    }

    #[test]
    fn the_generated_type_names_the_fields_from_json_reads_and_makes_the_defaulted_ones_optional() {
        let schema = schemars::schema_for!(ConcurrencyRequest).to_value();
        let names: Vec<&str> = schema["properties"].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(names, ["on", "perWorkerMb", "reserveFraction"]);
        assert_eq!(schema["required"], serde_json::json!(["perWorkerMb"]));
        let all = serde_json::json!({ "perWorkerMb": 3, "reserveFraction": 0.5, "on": "gpu:1" });
        let read = ConcurrencyRequest::from_json(Some(&all)).unwrap();
        assert_eq!(read, ConcurrencyRequest { per_worker_mb: 3.0, reserve_fraction: 0.5, on: "gpu:1".into() });
        let defaults = ConcurrencyRequest::from_json(Some(&serde_json::json!({ "perWorkerMb": 3 }))).unwrap();
        assert_eq!(
            (schema["properties"]["reserveFraction"]["default"].as_f64(), defaults.reserve_fraction),
            (Some(0.1), 0.1)
        );
        assert_eq!((schema["properties"]["on"]["default"].as_str(), defaults.on.as_str()), (Some("host"), "host"));
    }

    #[test]
    fn seed_004_host_with_16_gb_available_fits_64_workers_of_250_mb() {
        let mut s = sample(0.0);
        s.host.available_mb = 16_000;
        let r = recommend_concurrency(&s, 250.0, 0.0, "host").unwrap();
        assert_eq!((r.workers, r.available_mb, r.reserve_mb), (64, 16_000, 0));
        assert_eq!(r.basis, "floor((host available memory 16000 MB - reserve 0 MB) / 250 MB per worker) = 64");
        // Keeping a fifth of the 32 000 MB total back leaves (16 000 - 6 400) / 250 = 38.4.
        let r = recommend_concurrency(&s, 250.0, 0.2, "host").unwrap();
        assert_eq!((r.workers, r.reserve_mb), (38, 6_400));
    }

    #[test]
    fn a_gpu_uses_its_free_memory_and_never_goes_negative() {
        let s = sample(0.0); // gpu:0 has 8 000 MB free of 16 000
        let r = recommend_concurrency(&s, 1_500.0, 0.1, "gpu:0").unwrap();
        assert_eq!((r.workers, r.available_mb, r.reserve_mb, r.on.as_str()), (4, 8_000, 1_600, "gpu:0"));
        let r = recommend_concurrency(&s, 100.0, 0.6, "gpu:0").unwrap();
        assert_eq!(r.workers, 0);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["perWorkerMb"], 100.0);
        assert_eq!(v["availableMb"], 8_000);
    }

    #[test]
    fn bad_input_is_an_invalid_argument() {
        let mut s = sample(0.0);
        let code = |r: SidecarResult<Recommendation>| r.unwrap_err().code;
        assert_eq!(code(recommend_concurrency(&s, 0.0, 0.1, "host")), ErrorCode::InvalidArgument);
        assert_eq!(code(recommend_concurrency(&s, f64::NAN, 0.1, "host")), ErrorCode::InvalidArgument);
        assert_eq!(code(recommend_concurrency(&s, 10.0, 1.0, "host")), ErrorCode::InvalidArgument);
        assert_eq!(code(recommend_concurrency(&s, 10.0, -0.1, "host")), ErrorCode::InvalidArgument);
        let e = recommend_concurrency(&s, 10.0, 0.1, "gpu:3").unwrap_err();
        assert_eq!(e.message, "on: expected \"host\" or a sampled GPU key (gpu:0), got \"gpu:3\"");
        s.gpus = vec![GpuSample { index: 0, key: "gpu:0".into(), lost: true, ..GpuSample::default() }];
        let e = recommend_concurrency(&s, 10.0, 0.1, "gpu:0").unwrap_err();
        assert_eq!(e.message, "on: gpu:0 has no memory reading (the GPU is lost)");
    }
}
