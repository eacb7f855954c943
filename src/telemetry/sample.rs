//! One telemetry sample: what the sampler hands to JS and what a recording holds, one per line.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use crate::config::readable_serde_message;
use crate::error::{SidecarError, SidecarResult};

/// Bytes in one MB as telemetry reports it (MiB, as `nvidia-smi` does).
pub const BYTES_PER_MB: u64 = 1024 * 1024;

/// GPU and host figures at one instant. Serialized in camelCase; this is also the JSONL record
/// format, so fields added later must default when absent. Its serde form is what `onSample`
/// listeners get, and the generated `TelemetrySample` type comes from it (`npm run schema`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "TelemetrySample")]
#[serde(rename_all = "camelCase", expecting = "a telemetry sample (an object with at, nvml, gpus, host)")]
pub struct Sample {
    /// Wall-clock time of the sample, ms since the Unix epoch.
    pub at: f64,
    pub nvml: NvmlStatus,
    /// One entry per GPU read (all GPUs, or the configured subset); empty without NVML.
    #[serde(default)]
    pub gpus: Vec<GpuSample>,
    pub host: HostSample,
    /// Critical XID errors NVML reported since the previous sample.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xid_errors: Vec<XidEvent>,
}

/// Whether GPU figures could be read at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(inline)]
#[serde(rename_all = "camelCase")]
pub struct NvmlStatus {
    pub available: bool,
    /// Why NVML is unavailable; absent when it is available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "NvmlUnavailable")] // absent, never `null`
    pub reason: Option<NvmlUnavailable>,
}

/// Why NVML gave no GPU figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[schemars(inline)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NvmlUnavailable {
    /// The NVML shared library (libnvidia-ml.so / nvml.dll) is not installed or lacks a symbol.
    LibraryNotFound,
    /// The library is there but the NVIDIA kernel driver is not running.
    DriverNotLoaded,
    /// This process may not talk to the driver.
    NoPermission,
    /// A GPU fell off the bus while NVML was starting or counting devices.
    GpuLost,
    /// Any other NVML failure at start-up (logged with its detail).
    InitFailed,
}

impl NvmlUnavailable {
    /// The reason as it appears in samples and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            NvmlUnavailable::LibraryNotFound => "LIBRARY_NOT_FOUND",
            NvmlUnavailable::DriverNotLoaded => "DRIVER_NOT_LOADED",
            NvmlUnavailable::NoPermission => "NO_PERMISSION",
            NvmlUnavailable::GpuLost => "GPU_LOST",
            NvmlUnavailable::InitFailed => "INIT_FAILED",
        }
    }
}

/// One GPU's figures. A reading the GPU does not support (or that failed) is `null`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "TelemetryGpu")]
#[serde(rename_all = "camelCase", expecting = "one GPU's figures (an object with index, key, ...)")]
pub struct GpuSample {
    /// NVML device index.
    pub index: u32,
    /// `gpu:<index>`, the arbiter's GPU key.
    pub key: String,
    pub uuid: Option<String>,
    pub name: Option<String>,
    pub total_mb: Option<u64>,
    pub used_mb: Option<u64>,
    pub free_mb: Option<u64>,
    /// Percent of time a kernel was running over NVML's last sample period.
    pub utilization_gpu: Option<f64>,
    /// Percent of time device memory was read or written over NVML's last sample period.
    pub utilization_memory: Option<f64>,
    pub temperature_c: Option<f64>,
    pub power_w: Option<f64>,
    /// Processes holding memory on this GPU (compute and graphics contexts, one entry per pid).
    #[serde(default)]
    pub processes: Vec<GpuProcess>,
    /// When `processes` was read (epoch ms). A live sample reads the process lists only every
    /// `processIntervalMs` and carries the last ones in between, so this is `at` or earlier.
    /// Absent where no list was read (a pushed or older recorded sample).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "f64")] // absent, never `null`
    pub processes_at: Option<f64>,
    /// The GPU fell off the bus or became inaccessible; its figures are `null`.
    #[serde(default)]
    pub lost: bool,
}

impl GpuSample {
    /// The arbiter's GPU key for an NVML index.
    pub fn key_for(index: u32) -> String {
        format!("gpu:{index}")
    }
}

/// A process with memory on a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "TelemetryGpuProcess")]
#[serde(rename_all = "camelCase")]
pub struct GpuProcess {
    pub pid: u32,
    /// `null` where the driver does not report per-process memory (Windows WDDM).
    pub used_mb: Option<u64>,
    /// The label of the registered process this pid is, or descends from.
    pub service: Option<String>,
}

/// A critical XID error reported by the driver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(inline)]
#[serde(rename_all = "camelCase")]
pub struct XidEvent {
    pub gpu_key: String,
    /// The XID number; `null` when the driver did not say.
    pub xid: Option<u64>,
}

/// Host memory, CPU and process figures.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[schemars(inline)]
#[serde(rename_all = "camelCase", expecting = "host figures (an object with totalMb, availableMb, ...)")]
pub struct HostSample {
    pub total_mb: u64,
    pub available_mb: u64,
    pub swap_total_mb: u64,
    pub swap_used_mb: u64,
    /// Whole-machine CPU use over the last sampling interval, 0-100.
    pub cpu_percent: f64,
    /// Registered processes (services this node runs) and their resident memory.
    #[serde(default)]
    pub processes: Vec<HostProcess>,
    /// Children of this process that exited and were never reaped.
    #[serde(default)]
    pub zombie_children: u32,
}

/// A registered process's resident memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(inline)]
#[serde(rename_all = "camelCase")]
pub struct HostProcess {
    pub pid: u32,
    pub label: String,
    /// `null` once the process is gone.
    pub rss_mb: Option<u64>,
}

impl Sample {
    /// The GPU with this key, if the sample has it.
    pub fn gpu(&self, key: &str) -> Option<&GpuSample> {
        self.gpus.iter().find(|gpu| gpu.key == key)
    }
}

/// Reads one sample, checking it field by field: replayed lines and pushed samples both come
/// through here, so both are refused alike. A bad field is `INVALID_ARGUMENT` naming its JSON path
/// under `root` (`sample.gpus[0].freeMb: expected u64, got "lots"`; no prefix when `root` is "").
pub fn parse_sample<'de, D: Deserializer<'de>>(json: D, root: &str) -> SidecarResult<Sample> {
    serde_path_to_error::deserialize(json).map_err(|e| {
        let path = match (root, e.path().to_string().as_str()) {
            (root, "" | "." | "?") => root.to_string(),
            ("", path) => path.to_string(),
            (root, path) => format!("{root}.{path}"),
        };
        // serde_json puts the position in text last ("... at line 1 column 12"); keep it, after the rest.
        let raw = e.into_inner().to_string();
        let (body, position) = match raw.rfind(" at line ") {
            Some(i) => (&raw[..i], format!(" ({})", &raw[i + 1..])),
            None => (raw.as_str(), String::new()),
        };
        let detail = format!("{}{position}", readable_serde_message(body));
        SidecarError::invalid_argument(if path.is_empty() { detail } else { format!("{path}: {detail}") })
    })
}

/// One JSONL line as a sample (see [`parse_sample`]); text after the object is an error too.
pub fn parse_sample_line(line: &str) -> SidecarResult<Sample> {
    let mut de = serde_json::Deserializer::from_str(line);
    let sample = parse_sample(&mut de, "")?;
    de.end().map_err(|e| SidecarError::invalid_argument(e.to_string()))?;
    Ok(sample)
}

/// Bytes to whole MB, rounding down.
pub(crate) fn mb(bytes: u64) -> u64 {
    bytes / BYTES_PER_MB
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// A sample with one healthy GPU and a roomy host, for tests to adjust.
    pub fn sample(at: f64) -> Sample {
        Sample {
            at,
            nvml: NvmlStatus { available: true, reason: None },
            gpus: vec![gpu(0, 50.0, 8_000)],
            host: HostSample {
                total_mb: 32_000,
                available_mb: 16_000,
                swap_total_mb: 4_000,
                swap_used_mb: 0,
                cpu_percent: 10.0,
                processes: vec![],
                zombie_children: 0,
            },
            xid_errors: vec![],
        }
    }

    /// A 16 000 MB GPU at `utilization` percent with `free_mb` free.
    pub fn gpu(index: u32, utilization: f64, free_mb: u64) -> GpuSample {
        GpuSample {
            index,
            key: GpuSample::key_for(index),
            uuid: Some(format!("GPU-{index}")),
            name: Some("Test GPU".into()),
            total_mb: Some(16_000),
            used_mb: Some(16_000 - free_mb),
            free_mb: Some(free_mb),
            utilization_gpu: Some(utilization),
            utilization_memory: Some(utilization / 2.0),
            temperature_c: Some(60.0),
            power_w: Some(120.5),
            processes: vec![GpuProcess { pid: 42, used_mb: Some(1_000), service: Some("ASR".into()) }],
            processes_at: None,
            lost: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn serializes_in_camel_case_with_reason_codes() {
        let mut s = fixtures::sample(1.5);
        s.nvml = NvmlStatus { available: false, reason: Some(NvmlUnavailable::LibraryNotFound) };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["nvml"], json!({"available": false, "reason": "LIBRARY_NOT_FOUND"}));
        assert_eq!(v["gpus"][0]["key"], "gpu:0");
        assert_eq!(v["gpus"][0]["freeMb"], 8_000);
        assert_eq!(v["gpus"][0]["utilizationGpu"], 50.0);
        assert_eq!(v["gpus"][0]["processes"][0], json!({"pid": 42, "usedMb": 1000, "service": "ASR"}));
        assert_eq!(v["host"]["swapUsedMb"], 0);
        assert_eq!(v["host"]["zombieChildren"], 0);
        assert!(v.get("xidErrors").is_none());
        let back: Sample = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn lines_and_values_are_refused_alike_naming_the_field() {
        let mut v = serde_json::to_value(fixtures::sample(1.0)).unwrap();
        v["gpus"][0]["freeMb"] = json!("lots");
        let from_value = parse_sample(&v, "sample").unwrap_err();
        assert_eq!(from_value.code, crate::error::ErrorCode::InvalidArgument);
        assert_eq!(from_value.message, "sample.gpus[0].freeMb: expected u64, got \"lots\"");
        let from_line = parse_sample_line(&v.to_string()).unwrap_err();
        assert_eq!(from_line.message, "gpus[0].freeMb: expected u64, got \"lots\" (at line 1 column 34)");
        let e = parse_sample(json!({"at": 1}), "sample").unwrap_err();
        assert_eq!(e.message, "sample: missing field \"nvml\"");
        assert_eq!(
            parse_sample(json!(null), "sample").unwrap_err().message,
            "sample: expected a telemetry sample (an object with at, nvml, gpus, host), got null"
        );
        assert_eq!(
            parse_sample(json!({"at": 1, "nvml": {"available": false}, "gpus": [7], "host": {}}), "sample")
                .unwrap_err()
                .message,
            "sample.gpus[0]: expected one GPU's figures (an object with index, key, ...), got 7"
        );
        let line = serde_json::to_string(&fixtures::sample(2.0)).unwrap();
        assert_eq!(parse_sample_line(&line).unwrap(), fixtures::sample(2.0));
        assert!(parse_sample_line(&format!("{line} x")).is_err());
    }
}
