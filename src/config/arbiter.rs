//! The `gpuArbiter` section: accepted exactly as the old in-JS arbiter's config wrote it, plus our
//! additions (`maxConcurrentLeases`, aging, the watchdog action, `gpuUsage` admission settings).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{parse_section, Int};
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_wait_ms: Option<Millis>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub busy_policy: Option<BusyPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_limit: Option<Count>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hold_max_ms: Option<Millis>,
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
    /// A sample older than this is not used for admission (logical leases only).
    pub stale_after_ms: Millis,
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
        }
    }
}

/// The validated `gpuArbiter` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ArbiterConfig {
    /// A disabled arbiter grants every request at once without counting it.
    pub enabled: bool,
    pub gpu_keys: Vec<String>,
    /// Leases one GPU may hold at once.
    pub max_concurrent_leases: Positive,
    pub default_queue_limit: Count,
    pub default_hold_max_ms: Millis,
    pub default_max_wait_ms: Millis,
    pub default_priority: Priority,
    pub default_busy_policy: BusyPolicy,
    /// A waiter's effective priority rises by one point per this many ms of waiting; 0 turns
    /// aging off. Bounds how long low-priority work can be starved.
    pub aging_ms_per_priority: Millis,
    pub watchdog_action: WatchdogAction,
    pub policies: BTreeMap<String, TaskPolicy>,
    pub gpu_usage: GpuUsageConfig,
}

impl Default for ArbiterConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            gpu_keys: vec!["gpu:0".to_string()],
            max_concurrent_leases: Int(1),
            default_queue_limit: Int(8),
            default_hold_max_ms: Int(8_000),
            default_max_wait_ms: Int(3_000),
            default_priority: Int(50),
            default_busy_policy: BusyPolicy::Wait,
            aging_ms_per_priority: Int(1_000),
            watchdog_action: WatchdogAction::Warn,
            policies: BTreeMap::new(),
            gpu_usage: GpuUsageConfig::default(),
        }
    }
}

/// The seed's policies for the node's task types; configured policies override them per field.
fn builtin_policies() -> [(&'static str, TaskPolicy); 4] {
    let policy = |priority, max_wait_ms, busy_policy| TaskPolicy {
        priority: Some(Int(priority)),
        max_wait_ms: Some(Int(max_wait_ms)),
        busy_policy: Some(busy_policy),
        ..TaskPolicy::default()
    };
    [
        ("ASR", policy(90, 3_000, BusyPolicy::Wait)),
        ("NMT", policy(80, 3_000, BusyPolicy::Wait)),
        ("TTS", policy(70, 2_000, BusyPolicy::Wait)),
        ("SEMANTIC_REPAIR", policy(20, 400, BusyPolicy::Skip)),
    ]
}

impl ArbiterConfig {
    /// Validates a `gpuArbiter` object; paths in errors and warnings start with `gpuArbiter`.
    pub fn from_json(value: &Value, warnings: &mut Vec<String>) -> SidecarResult<Self> {
        let mut config: ArbiterConfig = parse_section(value, "gpuArbiter", warnings)?;
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
        merge_patch(&mut value, patch);
        Self::from_json(&value, warnings)
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

fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
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
    fn merge_patch_changes_one_field_and_keeps_the_rest() {
        let mut w = vec![];
        let cfg = ArbiterConfig::from_json(&json!({"defaultQueueLimit": 3}), &mut w).unwrap();
        let patched = cfg.patched(&json!({"policies": {"ASR": {"priority": 99}}}), &mut w).unwrap();
        assert_eq!(patched.policies["ASR"].priority, Some(Int(99)));
        assert_eq!(patched.policies["ASR"].max_wait_ms, Some(Int(3000)));
        assert_eq!(patched.default_queue_limit.get(), 3);
        let bad = cfg.patched(&json!({"policies": {"ASR": {"priority": 101}}}), &mut w).unwrap_err();
        assert!(
            bad.message.starts_with("gpuArbiter.policies.ASR.priority: expected an integer 0-100, got 101"),
            "{}",
            bad.message
        );
    }
}
