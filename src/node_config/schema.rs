//! The JSON Schema of a node config file, derived from the types that validate it, so an editor
//! flags what `loadConfig` would reject. It ships as `src/config/node-config.schema.json`; a test
//! keeps that file in step with the types (`npm run schema` rewrites it).

use schemars::JsonSchema;
use serde_json::Value;

use crate::arbiter::ArbiterConfig;
use crate::services::ServicesConfig;
use crate::telemetry::TelemetryOptions;

/// The file's sections gpu-sidecar reads; other apps' sections are allowed and left alone.
#[derive(Default, JsonSchema)]
#[schemars(
    rename_all = "camelCase",
    default,
    title = "gpu-sidecar node config",
    description = "The sections of a node config file (electron-node-config.json) that gpu-sidecar reads. Unknown keys are warnings, not errors."
)]
#[allow(dead_code)] // only its schema is used
struct NodeConfigFile {
    /// The GPU lease arbiter (`GpuArbiter.fromFile`, `loadConfig(path).gpuArbiter`).
    gpu_arbiter: ArbiterConfig,
    /// The managed services (`new ServiceSupervisor(loadConfig(path).services)`).
    services: ServicesConfig,
    /// Telemetry options as `gpu-sidecar run` passes them to `new Telemetry(...)`.
    telemetry: TelemetryOptions,
}

/// The schema as a JSON value (draft 2020-12).
pub fn node_config_schema() -> Value {
    schemars::schema_for!(NodeConfigFile).to_value()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped file must be what the types say. `GPU_SIDECAR_UPDATE_SCHEMA=1` (`npm run
    /// schema`) rewrites it after a config type changes.
    #[test]
    fn the_shipped_schema_matches_the_config_types() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config/node-config.schema.json");
        let generated = serde_json::to_string_pretty(&node_config_schema()).unwrap() + "\n";
        if std::env::var_os("GPU_SIDECAR_UPDATE_SCHEMA").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let shipped = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(shipped == generated, "{} is out of date: run `npm run schema`", path.display());
    }

    #[test]
    fn the_schema_carries_bounds_and_enums_from_the_types() {
        let schema = node_config_schema();
        let priority = &schema["$defs"]["TaskPolicy"]["properties"]["priority"];
        assert_eq!((&priority["minimum"], &priority["maximum"]), (&Value::from(0), &Value::from(100)));
        let text = schema.to_string();
        assert!(text.contains("FALLBACK_CPU") && text.contains("on-failure") && text.contains("SIGTERM"));
        let required = schema["$defs"]["ServiceSpec"]["required"].as_array().unwrap();
        assert_eq!(required, &["name", "command", "readiness"].map(Value::from));
        assert!(schema.get("required").is_none(), "every section is optional");
    }
}
