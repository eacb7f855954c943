//! What the supervisor needs from the rest of the addon: VRAM readings (from telemetry), an
//! optional startup lease and a place to send task-type routes (both from the arbiter). All are
//! traits so the core stays testable.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;

use crate::error::SidecarResult;

/// Free (and used) memory on one GPU as of one telemetry sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VramReading {
    /// Free memory (MB) on the GPU when the sample was taken.
    pub free_mb: u64,
    /// Memory (MB) in use on the GPU, all processes together, when the source reports it: a
    /// load's peak is learned from its rise where per-process figures do not exist.
    pub used_mb: Option<u64>,
    /// When the sample was taken, ms since the Unix epoch: memory allocated after it is not in
    /// `free_mb` yet.
    pub sampled_at_ms: u64,
}

/// How much of a load spawned before the latest reading that reading's process lists show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadSeen {
    /// A process list read since the spawn: the process's MB (its workers' included), 0 when it
    /// is not listed (nothing allocated yet).
    Shown(u64),
    /// The source reads process lists, but none since the spawn: none can show the load yet.
    NotYet,
    /// The source has no process lists (pushed samples) or no per-process figures (WDDM): the
    /// reading may show all of the load or none of it.
    Unknown,
}

/// Live GPU memory readings. `None` means no telemetry for that GPU or process.
pub trait VramSource: Send + Sync {
    /// The latest free-memory reading for the GPU named `gpu_key`.
    fn free_mb(&self, gpu_key: &str) -> Option<VramReading>;
    /// The keys of the GPUs the source knows now (not lost), in its order: where a service with
    /// `gpu.key: 'auto'` may be placed.
    fn gpu_keys(&self) -> Vec<String> {
        Vec::new()
    }
    /// GPU memory (MB) used by process `pid`.
    fn process_used_mb(&self, pid: u32) -> Option<u64>;
    /// What the latest process lists of `gpu_key` show of process `pid`, spawned at `spawned_at_ms`.
    fn load_seen(&self, _gpu_key: &str, _pid: u32, _spawned_at_ms: u64) -> LoadSeen {
        LoadSeen::Unknown
    }
    /// The UUID of the GPU named `gpu_key` (`GPU-…`), when the source knows it.
    fn gpu_uuid(&self, _gpu_key: &str) -> Option<String> {
        None
    }
    /// Whether a reading is on its way: a Telemetry is attached and has not taken (or been pushed)
    /// its first sample yet. The gates wait for it instead of turning off: at boot, "no reading
    /// yet" is not "no GPU" (seed 000 happens at boot).
    fn first_reading_pending(&self) -> bool {
        false
    }
    /// Why there is no reading for `gpu_key`, for the `vram-gate-off` event and `NO_GPU`.
    fn no_reading_reason(&self, gpu_key: &str) -> String {
        if gpu_key == crate::services::AUTO_GPU_KEY {
            "the VRAM telemetry lists no GPU".into()
        } else {
            "no VRAM telemetry for this GPU".into()
        }
    }
}

/// Held while a GPU service loads; dropping it releases the lease.
pub type LeaseGuard = Box<dyn Any + Send>;

/// The future [`StartupLease::acquire`] returns.
pub type LeaseFuture<'a> = Pin<Box<dyn Future<Output = SidecarResult<LeaseGuard>> + Send + 'a>>;

/// Serializes model loads on a GPU (the binding backs it with the arbiter). The supervisor
/// acquires it before a GPU service is spawned and drops the guard once the service is ready or
/// has failed.
pub trait StartupLease: Send + Sync {
    /// Resolves once `service` may load onto `gpu_key`, for at most `hold_max_ms` (its readiness
    /// timeout); an error fails that start.
    fn acquire<'a>(&'a self, service: &'a str, gpu_key: &'a str, hold_max_ms: u64) -> LeaseFuture<'a>;
}

/// How the supervisor tells the attached arbiter where task types go, and whether their service
/// is loaded (the binding backs it with the attached arbiter). Calls may arrive with no arbiter
/// attached; they are then dropped. Each method does nothing by default.
pub trait TaskRoutes: Send + Sync {
    /// Where requests of each task type go (`(task type, GPU key)` pairs, as
    /// [`crate::services::Supervisor::task_type_gpus`] gives them). Told again whenever a service
    /// with `gpu.key: 'auto'` is placed.
    fn routes_changed(&self, _routes: Vec<(String, String)>) {}
    /// `task_types` are served by an on-demand service that is not loaded: their requests queue,
    /// may wait `load_allowance_ms` longer than their `maxWaitMs`, and the first one asks for it.
    fn standby(&self, _task_types: &[String], _load_allowance_ms: u64) {}
    /// Their service is being started (waiting for memory, evicting, loading): their requests
    /// wait for the start to end, however long it takes; the start bounds itself.
    fn starting(&self, _task_types: &[String]) {}
    /// Their service is ready: what waited for it may be granted.
    fn ready(&self, _task_types: &[String]) {}
    /// Their service could not be started: what waits settles with `SERVICE_UNAVAILABLE`.
    fn unavailable(&self, _task_types: &[String]) {}
}

/// What a spawn-env hook answered: a JSON object of extra variables, or `null`; `Err` is the
/// hook's own failure (it threw, or its promise rejected), in words.
pub type SpawnEnvFuture<'a> = Pin<Box<dyn Future<Output = Result<serde_json::Value, String>> + Send + 'a>>;

/// Extra environment for one spawn of a service, asked for just before each spawn (restarts
/// included): values only known at that moment, such as a model folder resolved per start.
pub trait SpawnEnv: Send + Sync {
    /// `attempt` is the start attempt (0 for the first, then one more per restart). `None`:
    /// no hook is set, nothing to ask.
    fn env_for(&self, service: &str, attempt: u32) -> Option<SpawnEnvFuture<'_>>;
}

/// Reads a spawn-env hook's answer: `null` (JS `undefined`/`null`) adds nothing; an object's
/// string, number and boolean values are added as text; anything else is an error that names
/// the key (`env.MODEL_DIR: expected a string, got an object`).
pub fn spawn_env_from_json(answer: &serde_json::Value) -> Result<Vec<(String, String)>, String> {
    use serde_json::Value;
    let map = match answer {
        Value::Null => return Ok(Vec::new()),
        Value::Object(map) => map,
        other => return Err(format!("expected an object of environment variables, got {}", json_kind(other))),
    };
    let mut env = Vec::with_capacity(map.len());
    for (key, value) in map {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(format!("env[{key:?}]: not a valid environment variable name"));
        }
        let text = match value {
            Value::String(s) if s.contains('\0') => return Err(format!("env.{key}: contains a NUL byte")),
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => return Err(format!("env.{key}: expected a string, got {}", json_kind(other))),
        };
        env.push((key.clone(), text));
    }
    Ok(env)
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod spawn_env_tests {
    use super::spawn_env_from_json;
    use serde_json::json;

    #[test]
    fn an_answer_becomes_variables_or_an_error_naming_the_key() {
        assert_eq!(spawn_env_from_json(&json!(null)).unwrap(), Vec::<(String, String)>::new());
        assert_eq!(
            spawn_env_from_json(&json!({"MODEL_DIR": "/m/asr", "THREADS": 4, "FP16": true})).unwrap(),
            vec![("FP16".into(), "true".into()), ("MODEL_DIR".into(), "/m/asr".into()), ("THREADS".into(), "4".into())]
        );
        assert_eq!(
            spawn_env_from_json(&json!({"A": {"b": 1}})).unwrap_err(),
            "env.A: expected a string, got an object"
        );
        assert_eq!(
            spawn_env_from_json(&json!("x")).unwrap_err(),
            "expected an object of environment variables, got a string"
        );
        assert!(spawn_env_from_json(&json!({"A=B": "1"}))
            .unwrap_err()
            .contains("not a valid environment variable name"));
    }
}
