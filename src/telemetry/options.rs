//! `new Telemetry(options)`: validated like the config sections, with JSON paths under
//! `telemetry` in errors and unknown keys collected as warnings.

use std::fmt;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::config::{parse_section, Int};
use crate::error::{SidecarError, SidecarResult};

/// Sampling period in ms: 50 ms up to one hour.
pub type IntervalMs = Int<50, 3_600_000>;
/// Milliseconds, up to one day.
pub type Millis = Int<0, 86_400_000>;
/// A percentage.
pub type Percent = Int<0, 100>;
/// Megabytes (MiB).
pub type Megabytes = Int<0, { u64::MAX }>;
/// An NVML device index.
pub type GpuIndex = Int<0, 1_023>;

/// Options of one telemetry source. Every field is optional; the defaults are shown:
///
/// ```json
/// {
///   "source": "live",
///   "intervalMs": 1000,
///   "processIntervalMs": 1000,
///   "gpus": [0, 1],
///   "record": "telemetry.jsonl",
///   "replay": "recorded.jsonl",
///   "replaySpeed": 1,
///   "thresholds": {
///     "minDurationMs": 3000, "clearDurationMs": 5000,
///     "gpuUsage": { "highWater": 85, "lowWater": 78 },
///     "vram": { "lowFreeMb": 512, "clearFreeMb": 1024, "lowFreePercent": 5, "clearFreePercent": 10 },
///     "gpuIdle": { "maxUtilization": 5, "clearUtilization": 15, "idleForMs": 30000 },
///     "hostMemory": { "lowAvailableMb": 1024, "clearAvailableMb": 2048 },
///     "swap": { "highUsedMb": 512, "clearUsedMb": 256 }
///   }
/// }
/// ```
///
/// (`gpus`, `record` and `replay` have no default: all GPUs, no recording, live sampling.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct TelemetryOptions {
    /// Where samples come from: `"live"` (NVML and the host, or the `replay` file) or `"manual"`
    /// (only what `push(sample)` hands in, for readings from another tool or host).
    pub source: TelemetrySource,
    /// Time between samples (default 1000, at least 50).
    pub interval_ms: IntervalMs,
    /// How often a live sample includes NVML's per-process lists, which are slow on some drivers
    /// and contend with inference (default 1000; 0 reads them every sample). Samples in between
    /// carry the last lists, with `processesAt` saying when they were read.
    pub process_interval_ms: Millis,
    /// NVML indices of the GPUs to read; all GPUs when absent.
    pub gpus: Option<Vec<GpuIndex>>,
    pub thresholds: AlertThresholds,
    /// Append every sample to this JSONL file.
    pub record: Option<PathBuf>,
    /// Play samples from this JSONL file instead of reading NVML and the host.
    pub replay: Option<PathBuf>,
    /// How fast a replay plays: a factor of real time, or `"asFastAsPossible"`.
    pub replay_speed: ReplaySpeed,
}

impl Default for TelemetryOptions {
    fn default() -> Self {
        Self {
            source: TelemetrySource::Live,
            interval_ms: Int(1_000),
            process_interval_ms: Int(1_000),
            gpus: None,
            thresholds: AlertThresholds::default(),
            record: None,
            replay: None,
            replay_speed: ReplaySpeed::Factor(1.0),
        }
    }
}

/// Where a telemetry's samples come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TelemetrySource {
    /// Sampled from NVML and the host every `intervalMs`, or played from `replay`.
    #[default]
    Live,
    /// Pushed by the application with `push(sample)`: readings from another tool (an AMD card
    /// through rocm-smi) or another host.
    Manual,
}

/// Replay pacing. In JSON: a number from [`MIN_REPLAY_SPEED`] to [`MAX_REPLAY_SPEED`] (`1` keeps
/// the recorded gaps, `2` halves them) or the string `"asFastAsPossible"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReplaySpeed {
    Factor(f64),
    AsFastAsPossible,
}

const AS_FAST_AS_POSSIBLE: &str = "asFastAsPossible";

/// The slowest replay: a thousand times slower than recorded. Slower factors only turn recorded
/// gaps into waits no one will sit through (`1e-20` made them overflow).
pub const MIN_REPLAY_SPEED: f64 = 0.001;
/// The fastest factor; beyond it, use `"asFastAsPossible"`.
pub const MAX_REPLAY_SPEED: f64 = 1_000_000.0;

impl Serialize for ReplaySpeed {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ReplaySpeed::Factor(f) => s.serialize_f64(*f),
            ReplaySpeed::AsFastAsPossible => s.serialize_str(AS_FAST_AS_POSSIBLE),
        }
    }
}

struct ReplaySpeedVisitor;

impl de::Visitor<'_> for ReplaySpeedVisitor {
    type Value = ReplaySpeed;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a speed factor from {MIN_REPLAY_SPEED} to {MAX_REPLAY_SPEED} or \"{AS_FAST_AS_POSSIBLE}\"")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<ReplaySpeed, E> {
        if (MIN_REPLAY_SPEED..=MAX_REPLAY_SPEED).contains(&v) {
            Ok(ReplaySpeed::Factor(v))
        } else {
            Err(E::invalid_value(de::Unexpected::Float(v), &self))
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ReplaySpeed, E> {
        if v == 0 || v as f64 > MAX_REPLAY_SPEED {
            return Err(E::invalid_value(de::Unexpected::Unsigned(v), &self));
        }
        Ok(ReplaySpeed::Factor(v as f64))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ReplaySpeed, E> {
        match u64::try_from(v) {
            Ok(u) => self.visit_u64(u),
            Err(_) => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ReplaySpeed, E> {
        if v == AS_FAST_AS_POSSIBLE {
            Ok(ReplaySpeed::AsFastAsPossible)
        } else {
            Err(E::invalid_value(de::Unexpected::Str(v), &self))
        }
    }
}

impl JsonSchema for ReplaySpeed {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ReplaySpeed".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "anyOf": [{ "type": "number", "exclusiveMinimum": 0 }, { "const": AS_FAST_AS_POSSIBLE }]
        })
    }
}

impl<'de> Deserialize<'de> for ReplaySpeed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ReplaySpeedVisitor)
    }
}

/// Alert thresholds. Every alert has a raise level and a separate clear level (hysteresis), and a
/// condition must hold for a while before the alert is raised or cleared, so alerts do not flap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct AlertThresholds {
    /// How long a raise condition must hold before the alert is raised (GPU idle has its own).
    pub min_duration_ms: Millis,
    /// How long a clear condition must hold before the alert is cleared.
    pub clear_duration_ms: Millis,
    pub gpu_usage: GpuUsageThresholds,
    pub vram: VramThresholds,
    pub gpu_idle: GpuIdleThresholds,
    pub host_memory: HostMemoryThresholds,
    pub swap: SwapThresholds,
}

impl Default for AlertThresholds {
    fn default() -> Self {
        Self {
            min_duration_ms: Int(3_000),
            clear_duration_ms: Int(5_000),
            gpu_usage: GpuUsageThresholds::default(),
            vram: VramThresholds::default(),
            gpu_idle: GpuIdleThresholds::default(),
            host_memory: HostMemoryThresholds::default(),
            swap: SwapThresholds::default(),
        }
    }
}

/// GPU_USAGE_HIGH: utilization at or above `highWater`, cleared under `lowWater`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct GpuUsageThresholds {
    pub high_water: Percent,
    pub low_water: Percent,
}

impl Default for GpuUsageThresholds {
    fn default() -> Self {
        Self { high_water: Int(85), low_water: Int(78) }
    }
}

/// VRAM_PRESSURE: free VRAM under `lowFreeMb` or under `lowFreePercent` of the total; cleared when
/// free VRAM is at least `clearFreeMb` and `clearFreePercent`. A 0 turns that test off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct VramThresholds {
    pub low_free_mb: Megabytes,
    pub clear_free_mb: Megabytes,
    pub low_free_percent: Percent,
    pub clear_free_percent: Percent,
}

impl Default for VramThresholds {
    fn default() -> Self {
        Self { low_free_mb: Int(512), clear_free_mb: Int(1_024), low_free_percent: Int(5), clear_free_percent: Int(10) }
    }
}

/// GPU_IDLE_WITH_BACKLOG: utilization at or under `maxUtilization` for `idleForMs` while the
/// arbiter holds leases or waiters on that GPU; cleared once utilization reaches
/// `clearUtilization` or the backlog is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct GpuIdleThresholds {
    pub max_utilization: Percent,
    pub clear_utilization: Percent,
    pub idle_for_ms: Millis,
}

impl Default for GpuIdleThresholds {
    fn default() -> Self {
        Self { max_utilization: Int(5), clear_utilization: Int(15), idle_for_ms: Int(30_000) }
    }
}

/// HOST_MEMORY_PRESSURE: available memory under `lowAvailableMb`, cleared at `clearAvailableMb`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct HostMemoryThresholds {
    pub low_available_mb: Megabytes,
    pub clear_available_mb: Megabytes,
}

impl Default for HostMemoryThresholds {
    fn default() -> Self {
        Self { low_available_mb: Int(1_024), clear_available_mb: Int(2_048) }
    }
}

/// SWAP_ACTIVE: swap in use above `highUsedMb`, cleared at or under `clearUsedMb`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct SwapThresholds {
    pub high_used_mb: Megabytes,
    pub clear_used_mb: Megabytes,
}

impl Default for SwapThresholds {
    fn default() -> Self {
        Self { high_used_mb: Int(512), clear_used_mb: Int(256) }
    }
}

impl TelemetryOptions {
    /// Validates an options object (`null` means all defaults); paths in errors and warnings
    /// start with `telemetry`.
    pub fn from_json(value: &Value, warnings: &mut Vec<String>) -> SidecarResult<Self> {
        if value.is_null() {
            return Ok(Self::default());
        }
        let options: TelemetryOptions = parse_section(value, "telemetry", warnings)?;
        options.validate()?;
        Ok(options)
    }

    /// The GPU subset as plain indices.
    pub fn gpu_indices(&self) -> Option<Vec<u32>> {
        self.gpus.as_ref().map(|gpus| gpus.iter().map(|i| i.get() as u32).collect())
    }

    fn validate(&self) -> SidecarResult<()> {
        if let Some(gpus) = &self.gpus {
            if gpus.is_empty() {
                return Err(invalid("telemetry.gpus: expected at least one GPU index (leave it out for all GPUs)"));
            }
            for (i, index) in gpus.iter().enumerate() {
                if gpus[..i].contains(index) {
                    return Err(invalid(format!("telemetry.gpus[{i}]: duplicate GPU index {}", index.get())));
                }
            }
        }
        for (field, path) in [("record", &self.record), ("replay", &self.replay)] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(invalid(format!("telemetry.{field}: expected a non-empty file path")));
            }
        }
        if self.source == TelemetrySource::Manual && self.replay.is_some() {
            return Err(invalid(
                "telemetry.replay: a manual source plays no file (leave out replay, or source: \"manual\")",
            ));
        }
        if self.record.is_some() && self.record == self.replay {
            return Err(invalid("telemetry.record: expected a different file from telemetry.replay"));
        }
        let t = &self.thresholds;
        let pairs = [
            (
                "gpuUsage.lowWater",
                t.gpu_usage.low_water.get(),
                Relation::LessThan,
                "highWater",
                t.gpu_usage.high_water.get(),
            ),
            ("vram.clearFreeMb", t.vram.clear_free_mb.get(), Relation::AtLeast, "lowFreeMb", t.vram.low_free_mb.get()),
            (
                "vram.clearFreePercent",
                t.vram.clear_free_percent.get(),
                Relation::AtLeast,
                "lowFreePercent",
                t.vram.low_free_percent.get(),
            ),
            (
                "gpuIdle.clearUtilization",
                t.gpu_idle.clear_utilization.get(),
                Relation::GreaterThan,
                "maxUtilization",
                t.gpu_idle.max_utilization.get(),
            ),
            (
                "hostMemory.clearAvailableMb",
                t.host_memory.clear_available_mb.get(),
                Relation::AtLeast,
                "lowAvailableMb",
                t.host_memory.low_available_mb.get(),
            ),
            ("swap.clearUsedMb", t.swap.clear_used_mb.get(), Relation::AtMost, "highUsedMb", t.swap.high_used_mb.get()),
        ];
        for (field, value, relation, other_name, other) in pairs {
            if !relation.holds(value, other) {
                return Err(invalid(format!(
                    "telemetry.thresholds.{field}: expected {} {other_name} ({other}), got {value}",
                    relation.as_str()
                )));
            }
        }
        Ok(())
    }
}

/// How a clear level must stand to its raise level, so the pair has hysteresis.
#[derive(Clone, Copy)]
enum Relation {
    LessThan,
    GreaterThan,
    AtLeast,
    AtMost,
}

impl Relation {
    fn holds(self, value: u64, other: u64) -> bool {
        match self {
            Relation::LessThan => value < other,
            Relation::GreaterThan => value > other,
            Relation::AtLeast => value >= other,
            Relation::AtMost => value <= other,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Relation::LessThan => "less than",
            Relation::GreaterThan => "greater than",
            Relation::AtLeast => "at least",
            Relation::AtMost => "at most",
        }
    }
}

fn invalid(message: impl Into<String>) -> SidecarError {
    SidecarError::invalid_config(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use serde_json::json;

    fn parse(v: Value) -> SidecarResult<TelemetryOptions> {
        TelemetryOptions::from_json(&v, &mut vec![])
    }

    fn message(v: Value) -> String {
        let e = parse(v).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidConfig);
        e.message
    }

    #[test]
    fn defaults_apply_to_an_empty_object_and_to_null() {
        let o = parse(json!({})).unwrap();
        assert_eq!(o, TelemetryOptions::default());
        assert_eq!(o.interval_ms.get(), 1_000);
        assert_eq!(o.thresholds.gpu_usage, GpuUsageThresholds { high_water: Int(85), low_water: Int(78) });
        assert_eq!(parse(Value::Null).unwrap(), o);
    }

    #[test]
    fn accepts_a_full_object() {
        let o = parse(json!({
            "intervalMs": 50, "gpus": [0, 2], "record": "/tmp/a.jsonl", "replay": "/tmp/b.jsonl",
            "replaySpeed": "asFastAsPossible",
            "thresholds": {"minDurationMs": 0, "gpuUsage": {"highWater": 90, "lowWater": 80}, "swap": {"highUsedMb": 1024}}
        }))
        .unwrap();
        assert_eq!(o.gpu_indices(), Some(vec![0, 2]));
        assert_eq!(o.replay_speed, ReplaySpeed::AsFastAsPossible);
        assert_eq!(o.thresholds.swap, SwapThresholds { high_used_mb: Int(1_024), clear_used_mb: Int(256) });
        assert_eq!(parse(json!({"replaySpeed": 2.5})).unwrap().replay_speed, ReplaySpeed::Factor(2.5));
        let manual = parse(json!({"source": "manual", "processIntervalMs": 0, "record": "/tmp/m.jsonl"})).unwrap();
        assert_eq!((manual.source, manual.process_interval_ms), (TelemetrySource::Manual, Int(0)));
    }

    #[test]
    fn bad_values_name_their_json_path() {
        assert_eq!(message(json!({"intervalMs": 10})), "telemetry.intervalMs: expected an integer 50-3600000, got 10");
        assert_eq!(message(json!({"source": "amd"})), "telemetry.source: expected \"live\" or \"manual\", got \"amd\"");
        assert_eq!(
            message(json!({"processIntervalMs": -1})),
            "telemetry.processIntervalMs: expected an integer 0-86400000, got -1"
        );
        assert_eq!(message(json!({"gpus": [0, "one"]})), "telemetry.gpus[1]: expected an integer 0-1023, got \"one\"");
        assert_eq!(message(json!({"gpus": [1, 1]})), "telemetry.gpus[1]: duplicate GPU index 1");
        assert_eq!(
            message(json!({"replaySpeed": "fast"})),
            "telemetry.replaySpeed: expected a speed factor from 0.001 to 1000000 or \"asFastAsPossible\", got \"fast\""
        );
        assert_eq!(
            message(json!({"replaySpeed": 0})),
            "telemetry.replaySpeed: expected a speed factor from 0.001 to 1000000 or \"asFastAsPossible\", got 0"
        );
        assert_eq!(
            message(json!({"replaySpeed": 1e-20})),
            "telemetry.replaySpeed: expected a speed factor from 0.001 to 1000000 or \"asFastAsPossible\", got 1e-20"
        );
        assert_eq!(
            message(json!({"thresholds": {"gpuUsage": {"highWater": 101}}})),
            "telemetry.thresholds.gpuUsage.highWater: expected an integer 0-100, got 101"
        );
        assert_eq!(
            message(json!({"thresholds": {"vram": {"lowFreeMb": -5}}})),
            "telemetry.thresholds.vram.lowFreeMb: expected an integer >= 0, got -5"
        );
    }

    #[test]
    fn cross_field_rules_name_the_field_to_change() {
        assert_eq!(
            message(json!({"thresholds": {"gpuUsage": {"lowWater": 85}}})),
            "telemetry.thresholds.gpuUsage.lowWater: expected less than highWater (85), got 85"
        );
        assert_eq!(
            message(json!({"thresholds": {"vram": {"lowFreeMb": 2000}}})),
            "telemetry.thresholds.vram.clearFreeMb: expected at least lowFreeMb (2000), got 1024"
        );
        assert_eq!(
            message(json!({"thresholds": {"gpuIdle": {"clearUtilization": 5}}})),
            "telemetry.thresholds.gpuIdle.clearUtilization: expected greater than maxUtilization (5), got 5"
        );
        assert_eq!(
            message(json!({"thresholds": {"swap": {"highUsedMb": 100}}})),
            "telemetry.thresholds.swap.clearUsedMb: expected at most highUsedMb (100), got 256"
        );
        assert_eq!(
            message(json!({"record": "same.jsonl", "replay": "same.jsonl"})),
            "telemetry.record: expected a different file from telemetry.replay"
        );
        assert_eq!(message(json!({"record": ""})), "telemetry.record: expected a non-empty file path");
        assert_eq!(
            message(json!({"source": "manual", "replay": "r.jsonl"})),
            "telemetry.replay: a manual source plays no file (leave out replay, or source: \"manual\")"
        );
    }

    #[test]
    fn unknown_keys_are_warnings() {
        let mut warnings = vec![];
        TelemetryOptions::from_json(&json!({"intervalMS": 5, "thresholds": {"gpuUsage": {"hi": 1}}}), &mut warnings)
            .unwrap();
        assert_eq!(
            warnings,
            vec![
                "telemetry.intervalMS: unknown key, ignored".to_string(),
                "telemetry.thresholds.gpuUsage.hi: unknown key, ignored".to_string()
            ]
        );
    }
}
