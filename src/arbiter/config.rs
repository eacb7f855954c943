//! The `gpuArbiter` section: accepted exactly as the old in-JS arbiter's config wrote it (its key
//! names included: `gpuUsageThreshold`, `gpuUsage.baseHighWater` / `baseLowWater` / `cacheTtlMs`),
//! plus our additions (`maxConcurrentLeases`, aging, the watchdog action, VRAM admission).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{merge_patch, parse_section, Int};
use crate::error::{SidecarError, SidecarResult};

/// 0-100, higher is served first.
pub type Priority = Int<0, 100>;
/// Milliseconds, up to one day.
pub type Millis = Int<0, 86_400_000>;
/// A count of at least one.
pub type Positive = Int<1, 65_536>;
/// A count that may be zero.
pub type Count = Int<0, 1_000_000>;
/// A percentage.
pub type Percent = Int<0, 100>;
/// Megabytes.
pub type Megabytes = Int<0, { u64::MAX }>;

/// What a request does when its GPU cannot take it at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum BusyPolicy {
    Wait,
    Skip,
    FallbackCpu,
}

/// What the hold watchdog does to a lease held past its `holdMaxMs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WatchdogAction {
    /// Emit a `watchdog` event and count it; the lease stays.
    Warn,
    /// Also take the lease back, so one stuck call cannot block every later job.
    Revoke,
}

/// Per task type settings; absent fields fall back to the arbiter's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct TaskPolicy {
    /// Higher is served first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// How long a `WAIT` request waits for a lease, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_wait_ms: Option<Millis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub busy_policy: Option<BusyPolicy>,
    /// Waiters of this type on one GPU before `QUEUE_FULL`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_limit: Option<Count>,
    /// Hold watchdog threshold, ms; 0 turns it off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_max_ms: Option<Millis>,
    /// Estimated GPU memory of one job of this type, MB (checked against telemetry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vram_mb: Option<Megabytes>,
}

/// Admission on live telemetry (used once a telemetry source is attached).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct GpuUsageConfig {
    /// Use telemetry for admission when a source is attached.
    pub enabled: bool,
    /// Utilization (%) at or above which a GPU enters HIGH_PRESSURE.
    pub high_water: Percent,
    /// Utilization (%) under which a GPU in HIGH_PRESSURE returns to NORMAL.
    pub low_water: Percent,
    /// Under HIGH_PRESSURE, requests with a priority below this are held back.
    pub priority_floor: Priority,
    /// Free VRAM (MB) that VRAM admission never hands out.
    pub vram_reserve_mb: Megabytes,
    /// A sample older than this is not used for admission (logical leases only). The old
    /// arbiter's `cacheTtlMs`.
    pub stale_after_ms: Millis,
    /// How often the arbiter that `getGpuArbiter()` creates samples its GPUs.
    pub sample_interval_ms: Millis,
    /// Long ASR audio raises both water marks for a while (`notifyAsrTaskHint`).
    pub dynamic_adjustment: DynamicAdjustment,
    /// The old arbiter's name for `highWater`.
    #[serde(skip_serializing)]
    pub base_high_water: Option<Percent>,
    /// The old arbiter's name for `lowWater`.
    #[serde(skip_serializing)]
    pub base_low_water: Option<Percent>,
    /// The old arbiter's name for `staleAfterMs`.
    #[serde(skip_serializing)]
    pub cache_ttl_ms: Option<Millis>,
}

/// The old arbiter's dynamic water marks: a long utterance is about to hold the GPU at high
/// utilization for a while, which is expected load, not pressure to shed work for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct DynamicAdjustment {
    /// Whether `notifyAsrTaskHint` raises the marks at all.
    pub enabled: bool,
    /// Audio longer than this (ms) raises the marks.
    pub long_audio_threshold_ms: Millis,
    /// Points added to `highWater` while raised.
    pub high_water_boost: Percent,
    /// Points added to `lowWater` while raised.
    pub low_water_boost: Percent,
    /// How long a raise lasts after the hint, ms.
    pub adjustment_ttl_ms: Millis,
}

impl Default for DynamicAdjustment {
    fn default() -> Self {
        Self {
            enabled: true,
            long_audio_threshold_ms: Int(8_000),
            high_water_boost: Int(7),
            low_water_boost: Int(7),
            adjustment_ttl_ms: Int(15_000),
        }
    }
}

impl Default for GpuUsageConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            high_water: Int(85),
            low_water: Int(78),
            priority_floor: Int(50),
            vram_reserve_mb: Int(512),
            stale_after_ms: Int(5_000),
            sample_interval_ms: Int(1_000),
            dynamic_adjustment: DynamicAdjustment::default(),
            base_high_water: None,
            base_low_water: None,
            cache_ttl_ms: None,
        }
    }
}

/// The validated `gpuArbiter` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ArbiterConfig {
    /// A disabled arbiter grants every request at once without counting it.
    pub enabled: bool,
    /// The GPUs, by the keys telemetry uses (`gpu:N`).
    pub gpu_keys: Vec<String>,
    /// Leases one GPU may hold at once.
    pub max_concurrent_leases: Positive,
    /// Waiters per GPU before `QUEUE_FULL`, for task types without a `queueLimit`.
    pub default_queue_limit: Count,
    /// Hold watchdog threshold, ms, for task types without a `holdMaxMs`; 0 turns it off.
    pub default_hold_max_ms: Millis,
    /// Absent: `defaultHoldMaxMs`, as the old arbiter waited for a task type without a policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_max_wait_ms: Option<Millis>,
    /// Priority of task types without one; higher is served first.
    pub default_priority: Priority,
    pub default_busy_policy: BusyPolicy,
    /// A waiter's effective priority rises by one point per this many ms of waiting; 0 turns
    /// aging off. Bounds how long low-priority work can be starved.
    pub aging_ms_per_priority: Millis,
    pub watchdog_action: WatchdogAction,
    /// Per task type. Built in (priority / maxWaitMs / busyPolicy), the old arbiter factory's:
    /// ASR 90/60000/WAIT, NMT 80/8000/WAIT, TTS 70/13000/WAIT, SEMANTIC_REPAIR 20/8000/WAIT,
    /// PHONETIC_CORRECTION 60/20000/WAIT, PUNCTUATION_RESTORE 55/20000/WAIT.
    pub policies: BTreeMap<String, TaskPolicy>,
    pub gpu_usage: GpuUsageConfig,
    /// The old arbiter's name for `gpuUsage.highWater`.
    #[serde(skip_serializing)]
    pub gpu_usage_threshold: Option<Percent>,
}

impl Default for ArbiterConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            gpu_keys: vec!["gpu:0".to_string()],
            max_concurrent_leases: Int(1),
            default_queue_limit: Int(8),
            default_hold_max_ms: Int(60_000),
            default_max_wait_ms: None,
            default_priority: Int(50),
            default_busy_policy: BusyPolicy::Wait,
            aging_ms_per_priority: Int(1_000),
            watchdog_action: WatchdogAction::Warn,
            policies: BTreeMap::new(),
            gpu_usage: GpuUsageConfig::default(),
            gpu_usage_threshold: None,
        }
    }
}

/// The old arbiter factory's policies for the node's task types (what the node runs today);
/// configured policies override them per field.
fn builtin_policies() -> [(&'static str, TaskPolicy); 6] {
    let policy = |priority, max_wait_ms, busy_policy| TaskPolicy {
        priority: Some(Int(priority)),
        max_wait_ms: Some(Int(max_wait_ms)),
        busy_policy: Some(busy_policy),
        ..TaskPolicy::default()
    };
    [
        ("ASR", policy(90, 60_000, BusyPolicy::Wait)),
        ("NMT", policy(80, 8_000, BusyPolicy::Wait)),
        ("TTS", policy(70, 13_000, BusyPolicy::Wait)),
        ("SEMANTIC_REPAIR", policy(20, 8_000, BusyPolicy::Wait)),
        ("PHONETIC_CORRECTION", policy(60, 20_000, BusyPolicy::Wait)),
        ("PUNCTUATION_RESTORE", policy(55, 20_000, BusyPolicy::Wait)),
    ]
}

impl ArbiterConfig {
    /// Validates a `gpuArbiter` object; paths in errors and warnings start with `gpuArbiter`.
    pub fn from_json(value: &Value, warnings: &mut Vec<String>) -> SidecarResult<Self> {
        let value = with_current_key_names(value)?;
        let mut config: ArbiterConfig = parse_section(&value, "gpuArbiter", warnings)?;
        config.validate()?;
        for (task, builtin) in builtin_policies() {
            let entry = config.policies.entry(task.to_string()).or_default();
            entry.priority = entry.priority.or(builtin.priority);
            entry.max_wait_ms = entry.max_wait_ms.or(builtin.max_wait_ms);
            entry.busy_policy = entry.busy_policy.or(builtin.busy_policy);
        }
        Ok(config)
    }

    /// Applies a JSON merge patch (RFC 7396) and validates the result as a whole.
    pub fn patched(&self, patch: &Value, warnings: &mut Vec<String>) -> SidecarResult<Self> {
        let mut value = serde_json::to_value(self).expect("config serializes");
        merge_patch(&mut value, &with_current_key_names(patch)?);
        Self::from_json(&value, warnings)
    }

    /// The wait of a request whose task type has no `maxWaitMs`.
    pub fn default_max_wait_ms(&self) -> u64 {
        self.default_max_wait_ms.unwrap_or(self.default_hold_max_ms).get()
    }

    fn validate(&self) -> SidecarResult<()> {
        if self.gpu_keys.is_empty() {
            return Err(SidecarError::invalid_config("gpuArbiter.gpuKeys: expected at least one GPU key"));
        }
        for (i, key) in self.gpu_keys.iter().enumerate() {
            if key.trim().is_empty() {
                return Err(SidecarError::invalid_config(format!(
                    "gpuArbiter.gpuKeys[{i}]: expected a non-empty string"
                )));
            }
            if self.gpu_keys[..i].contains(key) {
                return Err(SidecarError::invalid_config(format!(
                    "gpuArbiter.gpuKeys[{i}]: duplicate GPU key \"{key}\""
                )));
            }
        }
        if self.gpu_usage.low_water >= self.gpu_usage.high_water {
            return Err(SidecarError::invalid_config(format!(
                "gpuArbiter.gpuUsage.lowWater: expected less than highWater ({}), got {}",
                self.gpu_usage.high_water.get(),
                self.gpu_usage.low_water.get()
            )));
        }
        for task in self.policies.keys() {
            if task.trim().is_empty() {
                return Err(SidecarError::invalid_config("gpuArbiter.policies: task type names must be non-empty"));
            }
        }
        Ok(())
    }
}

/// The old arbiter's key names and ours for the same settings: `(object path, old, current)`.
const RENAMED_KEYS: [(&[&str], &str, &str); 4] = [
    (&[], "gpuUsageThreshold", "gpuUsage.highWater"),
    (&["gpuUsage"], "baseHighWater", "highWater"),
    (&["gpuUsage"], "baseLowWater", "lowWater"),
    (&["gpuUsage"], "cacheTtlMs", "staleAfterMs"),
];

/// Rewrites the old arbiter's key names to ours, so a config (or patch) written for it takes
/// effect. Both names with different values is an error naming both.
fn with_current_key_names(value: &Value) -> SidecarResult<Value> {
    let mut value = value.clone();
    for (parent, old, current) in RENAMED_KEYS {
        let Some(object) = parent.iter().try_fold(&mut value, |v, k| v.get_mut(*k)).and_then(Value::as_object_mut)
        else {
            continue;
        };
        let Some(old_value) = object.remove(old) else { continue };
        let (target_path, leaf) = match current.rsplit_once('.') {
            Some((section, leaf)) => (vec![section], leaf),
            None => (vec![], current),
        };
        let mut target = &mut *object;
        for key in target_path {
            let entry = target.entry(key.to_string()).or_insert_with(|| Value::Object(Default::default()));
            if !entry.is_object() {
                *entry = Value::Object(Default::default());
            }
            target = entry.as_object_mut().expect("made an object above");
        }
        match target.get(leaf) {
            Some(existing) if *existing != old_value && !existing.is_null() && !old_value.is_null() => {
                let at = |k: &str| {
                    std::iter::once("gpuArbiter").chain(parent.iter().copied()).chain([k]).collect::<Vec<_>>().join(".")
                };
                return Err(SidecarError::invalid_config(format!(
                    "{}: conflicts with {} (the old name of the same setting); give one",
                    at(old),
                    at(current)
                )));
            }
            Some(existing) if !existing.is_null() => {}
            _ => {
                target.insert(leaf.to_string(), old_value);
            }
        }
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_the_seed_config_as_written() {
        let seed = json!({
            "enabled": true, "gpuKeys": ["gpu:0"], "defaultQueueLimit": 8, "defaultHoldMaxMs": 8000,
            "policies": {
                "ASR": {"priority": 90, "maxWaitMs": 3000, "busyPolicy": "WAIT"},
                "NMT": {"priority": 80, "maxWaitMs": 3000, "busyPolicy": "WAIT"},
                "TTS": {"priority": 70, "maxWaitMs": 2000, "busyPolicy": "WAIT"},
                "SEMANTIC_REPAIR": {"priority": 20, "maxWaitMs": 400, "busyPolicy": "SKIP"}
            }
        });
        let mut warnings = vec![];
        let cfg = ArbiterConfig::from_json(&seed, &mut warnings).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(cfg.policies["SEMANTIC_REPAIR"].busy_policy, Some(BusyPolicy::Skip));
        assert_eq!(cfg.default_queue_limit.get(), 8);
    }

    #[test]
    fn builtin_policies_fill_missing_fields_only() {
        let mut w = vec![];
        let cfg = ArbiterConfig::from_json(&json!({"policies": {"ASR": {"maxWaitMs": 10}}}), &mut w).unwrap();
        assert_eq!(cfg.policies["ASR"].max_wait_ms, Some(Int(10)));
        assert_eq!(cfg.policies["ASR"].priority, Some(Int(90)));
        assert_eq!(cfg.policies["NMT"].priority, Some(Int(80)));
    }

    #[test]
    fn cross_field_rules_name_the_field() {
        let mut w = vec![];
        let e = ArbiterConfig::from_json(&json!({"gpuKeys": ["gpu:0", "gpu:0"]}), &mut w).unwrap_err();
        assert_eq!(e.message, "gpuArbiter.gpuKeys[1]: duplicate GPU key \"gpu:0\"");
        let e = ArbiterConfig::from_json(&json!({"gpuUsage": {"lowWater": 90}}), &mut w).unwrap_err();
        assert!(e.message.starts_with("gpuArbiter.gpuUsage.lowWater:"), "{}", e.message);
    }

    #[test]
    fn the_old_arbiters_key_names_take_effect() {
        let mut w = vec![];
        let cfg = ArbiterConfig::from_json(
            &json!({"gpuUsageThreshold": 90, "gpuUsage": {"baseLowWater": 60, "cacheTtlMs": 2000, "sampleIntervalMs": 500}}),
            &mut w,
        )
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(cfg.gpu_usage.high_water.get(), 90);
        assert_eq!(cfg.gpu_usage.low_water.get(), 60);
        assert_eq!(cfg.gpu_usage.stale_after_ms.get(), 2000);
        assert_eq!(cfg.gpu_usage.sample_interval_ms.get(), 500);
        let cfg = ArbiterConfig::from_json(&json!({"gpuUsage": {"baseHighWater": 95}}), &mut w).unwrap();
        assert_eq!(cfg.gpu_usage.high_water.get(), 95);
        let patched = cfg.patched(&json!({"gpuUsage": {"baseHighWater": 88}}), &mut w).unwrap();
        assert_eq!(patched.gpu_usage.high_water.get(), 88);
        let e =
            ArbiterConfig::from_json(&json!({"gpuUsage": {"baseHighWater": 95, "highWater": 90}}), &mut w).unwrap_err();
        assert!(
            e.message.starts_with("gpuArbiter.gpuUsage.baseHighWater: conflicts with gpuArbiter.gpuUsage.highWater"),
            "{}",
            e.message
        );
        let e = ArbiterConfig::from_json(&json!({"gpuUsage": {"baseHighWater": "x"}}), &mut w).unwrap_err();
        assert!(e.message.starts_with("gpuArbiter.gpuUsage.highWater: expected an integer"), "{}", e.message);
    }

    #[test]
    fn the_built_in_defaults_are_the_old_factorys() {
        let mut w = vec![];
        let cfg = ArbiterConfig::from_json(&json!({}), &mut w).unwrap();
        assert_eq!((cfg.default_hold_max_ms.get(), cfg.default_queue_limit.get()), (60_000, 8));
        assert_eq!(cfg.default_max_wait_ms(), 60_000, "a task type without a policy waits defaultHoldMaxMs");
        let p = |t: &str| {
            let p = &cfg.policies[t];
            (p.priority.unwrap().get(), p.max_wait_ms.unwrap().get(), p.busy_policy.unwrap())
        };
        assert_eq!(p("ASR"), (90, 60_000, BusyPolicy::Wait));
        assert_eq!(p("NMT"), (80, 8_000, BusyPolicy::Wait));
        assert_eq!(p("TTS"), (70, 13_000, BusyPolicy::Wait));
        assert_eq!(p("SEMANTIC_REPAIR"), (20, 8_000, BusyPolicy::Wait));
        assert_eq!(p("PHONETIC_CORRECTION"), (60, 20_000, BusyPolicy::Wait));
        assert_eq!(p("PUNCTUATION_RESTORE"), (55, 20_000, BusyPolicy::Wait));
    }

    #[test]
    fn merge_patch_changes_one_field_and_keeps_the_rest() {
        let mut w = vec![];
        let cfg = ArbiterConfig::from_json(&json!({"defaultQueueLimit": 3}), &mut w).unwrap();
        let patched = cfg.patched(&json!({"policies": {"ASR": {"priority": 99}}}), &mut w).unwrap();
        assert_eq!(patched.policies["ASR"].priority, Some(Int(99)));
        assert_eq!(patched.policies["ASR"].max_wait_ms, Some(Int(60_000)));
        assert_eq!(patched.default_queue_limit.get(), 3);
        let bad = cfg.patched(&json!({"policies": {"ASR": {"priority": 101}}}), &mut w).unwrap_err();
        assert!(
            bad.message.starts_with("gpuArbiter.policies.ASR.priority: expected an integer 0-100, got 101"),
            "{}",
            bad.message
        );
    }
}
