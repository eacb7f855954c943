//! Node config file loading and validation.
//!
//! Every section is checked with the same rules: a wrong type or value is an `INVALID_CONFIG` error
//! that names the JSON path of the field (`gpuArbiter.policies.ASR.priority: expected an integer
//! 0-100, got "high"`); unknown keys are collected as warnings, never fatal.

mod arbiter;
pub mod file;
mod number;
mod schema;
pub mod watch;

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::Value;

pub use arbiter::{ArbiterConfig, BusyPolicy, DynamicAdjustment, GpuUsageConfig, TaskPolicy, WatchdogAction};
pub use file::{open_regular_file, read_regular_file};
pub use number::Int;
pub use schema::node_config_schema;

use crate::error::{SidecarError, SidecarResult};
use crate::services::ServicesConfig;

/// The sections of a node config file that gpu-sidecar owns, validated, with defaults applied.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    pub gpu_arbiter: ArbiterConfig,
    /// The `services` section as written, once it has passed validation (the supervisor takes it
    /// as is); `None` when the file has none.
    pub services: Option<Value>,
    /// Unknown keys inside our sections, as JSON paths.
    pub warnings: Vec<String>,
}

/// The largest node config file read. Real ones are a few KB; the cap keeps `/dev/zero`-like
/// mistakes and runaway generated files from taking the host's memory.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// Reads a whole node config file (other apps' sections are left alone) and validates our sections.
/// Anything but a regular file of at most [`MAX_CONFIG_BYTES`] in UTF-8 is `INVALID_CONFIG`.
pub fn load_node_config(path: &Path) -> SidecarResult<NodeConfig> {
    let text = read_config_text(path)?;
    parse_node_config(&text, &path.display().to_string())
}

/// The text of a config file, read with [`read_regular_file`]; every failure is `INVALID_CONFIG`.
pub fn read_config_text(path: &Path) -> SidecarResult<String> {
    let bytes = read_regular_file(path, MAX_CONFIG_BYTES)
        .map_err(|e| SidecarError::invalid_config(format!("cannot read config file: {}", e.message)))?;
    String::from_utf8(bytes).map_err(|e| {
        SidecarError::invalid_config(format!(
            "{}: not valid UTF-8 (at byte {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ))
    })
}

/// Parses the text of a node config file; `source` names it in error messages.
pub fn parse_node_config(text: &str, source: &str) -> SidecarResult<NodeConfig> {
    let root: Value = serde_json::from_str(text)
        .map_err(|e| SidecarError::invalid_config(format!("{source}: not valid JSON: {e}")))?;
    if !root.is_object() {
        return Err(SidecarError::invalid_config(format!("{source}: expected a JSON object at the top level")));
    }
    let mut warnings = Vec::new();
    let gpu_arbiter = match root.get("gpuArbiter") {
        Some(section) => ArbiterConfig::from_json(section, &mut warnings)?,
        None => ArbiterConfig::default(),
    };
    let services = match root.get("services") {
        Some(section) => {
            ServicesConfig::from_json(section, &mut warnings)?;
            Some(section.clone())
        }
        None => None,
    };
    Ok(NodeConfig { gpu_arbiter, services, warnings })
}

/// Deserializes one section, naming the JSON path (under `prefix`) of the first bad field and
/// collecting unknown keys into `warnings`.
pub(crate) fn parse_section<T: DeserializeOwned>(
    value: &Value,
    prefix: &str,
    warnings: &mut Vec<String>,
) -> SidecarResult<T> {
    let mut unknown = Vec::new();
    let mut on_unknown = |path: serde_ignored::Path| unknown.push(path.to_string());
    let tracked = serde_ignored::Deserializer::new(value, &mut on_unknown);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(tracked);
    match parsed {
        Ok(v) => {
            warnings.extend(
                unknown.into_iter().map(|p: String| format!("{}: unknown key, ignored", join_path(prefix, &p))),
            );
            Ok(v)
        }
        Err(e) => {
            let path = join_path(prefix, &e.path().to_string());
            Err(SidecarError::invalid_config(format!(
                "{path}: {}",
                readable_serde_message(&e.into_inner().to_string())
            )))
        }
    }
}

pub(crate) fn join_path(prefix: &str, path: &str) -> String {
    match path {
        "" | "." | "?" => prefix.to_string(),
        p => format!("{prefix}.{p}"),
    }
}

/// Turns serde's "invalid type: string \"high\", expected an integer 0-100" into the form we
/// document: "expected an integer 0-100, got \"high\"".
pub(crate) fn readable_serde_message(message: &str) -> String {
    let body = message.strip_prefix("invalid type: ").or_else(|| message.strip_prefix("invalid value: "));
    if let Some((got, expected)) = body.and_then(|b| b.split_once(", expected ")) {
        return format!("expected {expected}, got {}", describe_unexpected(got));
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        if let Some((got, expected)) = rest.split_once(", expected ") {
            return format!("expected {}, got {}", expected.replace('`', "\""), got.replace('`', "\""));
        }
    }
    message.replace('`', "\"")
}

fn describe_unexpected(got: &str) -> String {
    for kind in ["string ", "integer ", "floating point ", "boolean "] {
        if let Some(v) = got.strip_prefix(kind) {
            return v.trim_matches('`').to_string();
        }
    }
    got.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_json_path_and_the_bad_value() {
        let err =
            parse_node_config(r#"{"gpuArbiter":{"policies":{"ASR":{"priority":"high"}}}}"#, "test.json").unwrap_err();
        assert_eq!(err.code, crate::error::ErrorCode::InvalidConfig);
        assert_eq!(err.message, r#"gpuArbiter.policies.ASR.priority: expected an integer 0-100, got "high""#);
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
        let big = crate::telemetry::record::temp_path("big-config.json");
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
    fn invalid_json_is_an_invalid_config_error() {
        let err = parse_node_config("{ not json", "node.json").unwrap_err();
        assert_eq!(err.code, crate::error::ErrorCode::InvalidConfig);
        assert!(err.message.starts_with("node.json: not valid JSON"), "{}", err.message);
    }
}
