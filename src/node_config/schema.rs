//! JSON Schemas derived from the Rust types, and the TypeScript types generated from them.
//!
//! - The node config file's, derived from the types that validate it, so an editor flags what
//!   `loadConfig` would reject. It ships as `src/config/node-config.schema.json`.
//! - What listeners receive (service events, telemetry samples and alerts), derived from the
//!   types whose serde form JS gets: `src/binding/events.schema.json`, for the generated types
//!   in `src/binding/events.d.ts`.
//!
//! Tests keep both files in step with the types (`npm run schema` rewrites them).

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::{json, Value};

use crate::arbiter::{AdmissionState, ArbiterConfig, Reason, Status};
use crate::link::arbiter_requests::{AsrTaskHint, GpuLeaseRequest, GpuReadingInput};
use crate::link::arbiter_views::{GpuArbiterEvent, GpuArbiterSnapshot};
use crate::services::manifest::ManifestReport;
use crate::services::{
    HostBudgetAnswer, ListenerNote, PeakVramMethod, ServiceEvent, ServiceOutcome, ServiceState, ServiceStatus,
    ServicesConfig, ServicesRefresh, ServicesUpdate, StartAllOptions, WaitReason,
};
use crate::telemetry::advice::ConcurrencyRequest;
use crate::telemetry::{Alert, Inventory, Recommendation, RecordedEvent, Sample, TelemetryOptions};

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

/// What `ServiceSupervisor#onEvent` listeners receive: the supervisor's events, and the binding's
/// note of log lines it dropped for them.
#[derive(JsonSchema)]
#[serde(untagged)]
#[schemars(rename = "ServiceEvent")]
#[allow(dead_code)] // only its schema is used
enum ListenerServiceEvent {
    Event(ServiceEvent),
    Note(ListenerNote),
}

/// The schema of the values JS receives from listeners and methods, one `$defs` entry per public
/// type (named as `index.d.ts` exports it), as they serialize (a field skipped when empty is
/// optional). The names of core enums that snapshot views carry as strings are here too, so no
/// string union in `index.d.ts` is written by hand.
#[cfg_attr(not(test), allow(dead_code))] // the tests write and check the shipped file with it
pub fn events_schema() -> Value {
    let mut generator = SchemaSettings::draft2020_12().for_serialize().into_generator();
    let roots = [
        ("ServiceEvent", generator.subschema_for::<ListenerServiceEvent>()),
        ("TelemetrySample", generator.subschema_for::<Sample>()),
        ("TelemetryAlert", generator.subschema_for::<Alert>()),
        ("RecordedEvent", generator.subschema_for::<RecordedEvent>()),
        ("ServiceOutcome", generator.subschema_for::<ServiceOutcome>()),
        ("ServiceStatus", generator.subschema_for::<ServiceStatus>()),
        ("HostBudget", generator.subschema_for::<HostBudgetAnswer>()),
        ("ConcurrencyRecommendation", generator.subschema_for::<Recommendation>()),
        ("GpuInventory", generator.subschema_for::<Inventory>()),
        ("ServiceStateName", generator.subschema_for::<ServiceState>()),
        ("ServiceWaitReason", generator.subschema_for::<WaitReason>()),
        ("PeakVramMethod", generator.subschema_for::<PeakVramMethod>()),
        ("GpuAdmissionState", generator.subschema_for::<AdmissionState>()),
        ("GpuLeaseStatus", generator.subschema_for::<Status>()),
        ("GpuLeaseReason", generator.subschema_for::<Reason>()),
        ("ManifestReport", generator.subschema_for::<ManifestReport>()),
        ("NodeConfig", generator.subschema_for::<super::NodeConfig>()),
        ("StartAllOptions", generator.subschema_for::<StartAllOptions>()),
        ("ServicesUpdate", generator.subschema_for::<ServicesUpdate>()),
        ("ServicesRefresh", generator.subschema_for::<ServicesRefresh>()),
        ("GpuArbiterSnapshot", generator.subschema_for::<GpuArbiterSnapshot>()),
        ("GpuArbiterEvent", generator.subschema_for::<GpuArbiterEvent>()),
    ];
    // What JS passes in, described as it is read (a field with a default is optional).
    let mut arguments = SchemaSettings::draft2020_12().for_deserialize().into_generator();
    let argument_roots = [
        ("RecommendConcurrencyOptions", arguments.subschema_for::<ConcurrencyRequest>()),
        ("GpuReadingInput", arguments.subschema_for::<GpuReadingInput>()),
        ("GpuLeaseRequest", arguments.subschema_for::<GpuLeaseRequest>()),
        ("AsrTaskHint", arguments.subschema_for::<AsrTaskHint>()),
    ];
    let mut defs = generator.take_definitions(true);
    defs.extend(arguments.take_definitions(true));
    for (name, schema) in roots.into_iter().chain(argument_roots) {
        if !defs.contains_key(name) {
            defs.insert(name.to_string(), schema.to_value());
        }
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "gpu-sidecar listener and result values",
        "description": "What onEvent, onSample and onAlert listeners receive, what some methods return, and the names snapshots carry.",
        "$defs": defs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `path` must hold `schema`. `GPU_SIDECAR_UPDATE_SCHEMA=1` (`npm run schema`) rewrites it
    /// after a type changes.
    fn check_shipped(path: &str, schema: Value) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        let generated = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        if std::env::var_os("GPU_SIDECAR_UPDATE_SCHEMA").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let shipped = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(shipped == generated, "{} is out of date: run `npm run schema`", path.display());
    }

    #[test]
    fn the_shipped_schema_matches_the_config_types() {
        check_shipped("src/config/node-config.schema.json", node_config_schema());
    }

    #[test]
    fn the_events_schema_matches_the_types_js_receives() {
        check_shipped("src/binding/events.schema.json", events_schema());
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
