//! The node config file: the `gpuArbiter`, `services` and `telemetry` sections assembled from the
//! config types each component owns, and the JSON Schema derived from them ([`node_config_schema`]).
//! It sits above the components (the binding and, through it, the CLI use it); no component imports
//! it. The shared rules (JSON paths in errors, unknown keys as warnings) live in `crate::config`.

mod schema;

use std::path::Path;

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

pub use schema::node_config_schema;

use crate::arbiter::ArbiterConfig;
use crate::config::read_config_text;
use crate::error::{SidecarError, SidecarResult};
use crate::services::manifest::{resolve_services_section, ManifestReport};

/// The sections of a node config file that gpu-sidecar owns, validated, with defaults applied.
// `loadConfig(path)` gives JS its serde form, and its TypeScript type is generated from it.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeConfig {
    #[schemars(with = "Value", extend("tsType" = "Required<GpuArbiterConfig>"))]
    pub gpu_arbiter: ArbiterConfig,
    /// The `services` section, validated (pass it to `new ServiceSupervisor`); absent if the file has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("tsType" = "Omit<ServicesConfig, 'manifests' | 'manifestTaskTypes' | 'services'> & { services?: ServiceConfig[] }"))]
    // The supervisor takes it as is, its `manifests` expanded (see [`resolve_services_section`]).
    pub services: Option<Value>,
    /// What `services.manifests` held: the manifests kept and why each other file was skipped
    /// (their services are in `services.services`); absent without `manifests`.
    #[serde(skip_serializing_if = "Option::is_none")]
    // As a `tsType`: a `$ref` beside a doc makes json-schema-to-typescript declare a copy of the type.
    #[schemars(with = "Value", extend("tsType" = "ManifestReport"))]
    pub manifests: Option<ManifestReport>,
    /// Unknown keys in our sections, as JSON paths (they are ignored).
    pub warnings: Vec<String>,
}

/// Reads a whole node config file (other apps' sections are left alone) and validates our sections.
/// Anything but a regular file of at most [`MAX_CONFIG_BYTES`](crate::config::MAX_CONFIG_BYTES) in
/// UTF-8 is `INVALID_CONFIG`.
pub fn load_node_config(path: &Path) -> SidecarResult<NodeConfig> {
    let text = read_config_text(path)?;
    parse_node_config(&text, &path.display().to_string())
}

/// The text of a node config file as its top-level JSON object; `source` names it in errors.
pub fn parse_root(text: &str, source: &str) -> SidecarResult<Value> {
    let root: Value = serde_json::from_str(text)
        .map_err(|e| SidecarError::invalid_config(format!("{source}: not valid JSON: {e}")))?;
    if !root.is_object() {
        return Err(SidecarError::invalid_config(format!("{source}: expected a JSON object at the top level")));
    }
    Ok(root)
}

/// Parses the text of a node config file; `source` is its path: it names the file in error
/// messages, and `services.manifests` folders are relative to its folder.
pub fn parse_node_config(text: &str, source: &str) -> SidecarResult<NodeConfig> {
    let root = parse_root(text, source)?;
    let mut warnings = Vec::new();
    let gpu_arbiter = match root.get("gpuArbiter") {
        Some(section) => ArbiterConfig::from_json(section, &mut warnings)?,
        None => ArbiterConfig::default(),
    };
    let (services, manifests) = match root.get("services") {
        Some(section) => {
            let base_dir = Path::new(source).parent().unwrap_or(Path::new(""));
            let resolved = resolve_services_section(section, base_dir, &mut warnings)?;
            let manifests =
                resolved.expanded.map(|e| ManifestReport { manifests: e.manifests, diagnostics: e.diagnostics });
            (Some(resolved.section), manifests)
        }
        None => (None, None),
    };
    Ok(NodeConfig { gpu_arbiter, services, manifests, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MAX_CONFIG_BYTES;

    #[test]
    fn reports_the_json_path_and_the_bad_value() {
        let err =
            parse_node_config(r#"{"gpuArbiter":{"policies":{"ASR":{"priority":"high"}}}}"#, "test.json").unwrap_err();
        assert_eq!(err.code, crate::error::ErrorCode::InvalidConfig);
        assert_eq!(err.message, r#"gpuArbiter.policies.ASR.priority: expected an integer 0-100, got "high""#);
    }

    #[test]
    fn js_gets_the_sections_in_camel_case_and_no_key_for_an_absent_one() {
        let cfg = parse_node_config(r#"{"gpuArbiter":{"colour":"red"}}"#, "t").unwrap();
        let js = serde_json::to_value(&cfg).unwrap();
        let keys: Vec<&str> = js.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["gpuArbiter", "warnings"]);
        assert_eq!(js["gpuArbiter"], serde_json::to_value(&cfg.gpu_arbiter).unwrap());
        assert_eq!(js["warnings"], serde_json::json!(["gpuArbiter.colour: unknown key, ignored"]));
    }

    #[test]
    fn out_of_range_and_bad_enum_values_name_the_field() {
        let err = parse_node_config(r#"{"gpuArbiter":{"defaultQueueLimit":-1}}"#, "t").unwrap_err();
        assert!(err.message.starts_with("gpuArbiter.defaultQueueLimit: expected an integer"), "{}", err.message);
        let err = parse_node_config(r#"{"gpuArbiter":{"policies":{"TTS":{"busyPolicy":"MAYBE"}}}}"#, "t").unwrap_err();
        assert!(err.message.starts_with("gpuArbiter.policies.TTS.busyPolicy: expected one of"), "{}", err.message);
        assert!(err.message.contains("\"MAYBE\""), "{}", err.message);
    }

    #[test]
    fn unknown_keys_are_warnings_and_other_sections_are_ignored() {
        let cfg = parse_node_config(
            r#"{"servicePreferences":{"x":1},"gpuArbiter":{"enabled":true,"colour":"red","policies":{"ASR":{"priorty":3}}}}"#,
            "t",
        )
        .unwrap();
        assert_eq!(
            cfg.warnings,
            vec![
                "gpuArbiter.colour: unknown key, ignored".to_string(),
                "gpuArbiter.policies.ASR.priorty: unknown key, ignored".to_string()
            ]
        );
    }

    #[test]
    fn devices_oversized_and_non_utf8_files_are_invalid_config() {
        let e = load_node_config(Path::new("/dev/zero")).unwrap_err();
        assert_eq!(e.code, crate::error::ErrorCode::InvalidConfig);
        assert_eq!(e.message, "cannot read config file: /dev/zero: not a regular file (a character device)");
        let big = crate::config::file::temp_path("big-config.json");
        let file = std::fs::File::create(&big).unwrap();
        file.set_len(MAX_CONFIG_BYTES + 1).unwrap();
        let e = load_node_config(&big).unwrap_err();
        assert_eq!(e.code, crate::error::ErrorCode::InvalidConfig);
        assert!(e.message.ends_with("too large: 16777217 bytes, the limit is 16 MiB"), "{}", e.message);
        std::fs::write(&big, b"{\"gpuArbiter\": \"\xff\"}").unwrap();
        let e = load_node_config(&big).unwrap_err();
        assert_eq!(e.message, format!("{}: not valid UTF-8 (at byte 16)", big.display()));
        std::fs::remove_file(&big).unwrap();
    }

    #[test]
    fn manifest_folders_are_relative_to_the_config_file_and_are_expanded_with_their_overrides() {
        let dir = crate::config::file::temp_path("node-config-manifests");
        let manifest = r#"{"id":"asr","name":"ASR","type":"asr","device":"gpu","exec":{"command":"python","args":[]}}"#;
        std::fs::create_dir_all(dir.join("services/asr")).unwrap();
        std::fs::create_dir_all(dir.join("services/bad")).unwrap();
        std::fs::write(dir.join("services/asr/service.json"), manifest).unwrap();
        std::fs::write(dir.join("services/bad/service.json"), "{").unwrap();
        let path = dir.join("electron-node-config.json");
        std::fs::write(
            &path,
            r#"{"services":{"manifests":["services"],"services":[{"name":"asr","gpu":{"vramMb":2500}}]},"servicePreferences":{"asr":true}}"#,
        )
        .unwrap();
        let cfg = load_node_config(&path).unwrap();
        let services = cfg.services.unwrap();
        assert!(services.get("manifests").is_none());
        assert_eq!(
            services["services"][0]["gpu"],
            serde_json::json!({"key": "auto", "taskTypes": ["ASR"], "vramMb": 2500})
        );
        assert_eq!(services["services"][0]["cwd"], dir.join("services/asr").display().to_string());
        let report = cfg.manifests.unwrap();
        assert_eq!(report.manifests.len(), 1);
        assert_eq!(report.diagnostics[0].path, dir.join("services/bad/service.json").display().to_string());
        assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
        std::fs::remove_dir_all(&dir).unwrap();
        let e = load_node_config(&path).unwrap_err();
        assert_eq!(e.code, crate::error::ErrorCode::InvalidConfig, "the file itself is gone");
    }

    #[test]
    fn invalid_json_is_an_invalid_config_error() {
        let err = parse_node_config("{ not json", "node.json").unwrap_err();
        assert_eq!(err.code, crate::error::ErrorCode::InvalidConfig);
        assert!(err.message.starts_with("node.json: not valid JSON"), "{}", err.message);
    }
}
