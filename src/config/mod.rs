//! Shared config helpers, imported by every component's own config type and by nothing else of
//! ours: bounded integers ([`Int`]), section parsing with JSON paths in errors ([`parse_section`]),
//! serde's messages in the documented form, bounded reading of files a caller names ([`file`]) and
//! watching the node config file ([`watch`]). This module imports no component; the node config
//! itself is assembled above the components, in `crate::node_config`.
//!
//! Every section is checked with the same rules: a wrong type or value is an `INVALID_CONFIG` error
//! that names the JSON path of the field (`gpuArbiter.policies.ASR.priority: expected an integer
//! 0-100, got "high"`); unknown keys are collected as warnings, never fatal.

pub mod file;
mod number;
pub mod watch;

use std::path::Path;

use serde::de::DeserializeOwned;
use serde_json::Value;

pub use file::{open_regular_file, read_regular_file};
pub use number::Int;

use crate::error::{SidecarError, SidecarResult};

/// The largest node config file read. Real ones are a few KB; the cap keeps `/dev/zero`-like
/// mistakes and runaway generated files from taking the host's memory.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

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

/// Applies a JSON merge patch (RFC 7386): objects merge key by key, `null` removes a key, any
/// other value replaces what was there.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
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
