//! The speech-translation node's own service manifests (`services/<folder>/service.json`), read
//! with the node's discovery rules and turned into service specs, so its services run under the
//! supervisor without rewriting a manifest.
//!
//! The node's rules, kept: `id`, `name`, `type`, `exec.command` and an array `exec.args` are
//! required; a relative `exec.cwd` is relative to the manifest's folder (none: that folder); on a
//! duplicate `id` the first found is kept; a bad file is skipped and the rest still load. Its
//! runner's conventions, kept: a `python` command runs the folder's `.venv` (then `venv`)
//! interpreter when there is one, and `PYTHONIOENCODING=utf-8` unless the manifest sets it.
//!
//! What we add: every skipped file gives a [`ManifestDiagnostic`] (and a warning in the log), a
//! GPU manifest is VRAM-gated on the GPU `'auto'` picks, its `type` names its arbiter task type,
//! and readiness is checked, never assumed (see [`manifest_readiness`]). A services section's
//! `manifests` folders are expanded by [`resolve_services_section`], where a `services[]` entry
//! named like a manifest's `id` overrides that service's fields.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::config::{ServiceSpec, ServicesConfig};
use crate::config::{merge_patch, parse_section, read_regular_file, MAX_CONFIG_BYTES};
use crate::error::{ErrorCode, SidecarError, SidecarResult};

/// The manifest file in each service folder.
pub const MANIFEST_FILE: &str = "service.json";
/// A manifest service's `readinessTimeoutMs`: the node gives its preloading services 3 minutes.
pub const MANIFEST_READINESS_TIMEOUT_MS: u64 = 180_000;
/// The line the node's services print once loaded.
pub const READY_LINE_PATTERN: &str = r"\[SERVICE_READY\]";
/// `/health` `status` values that mean "still loading".
pub const NOT_READY_STATUSES: [&str; 4] = ["not_ready", "loading", "starting", "initializing"];
/// The arbiter task type of a manifest `type` not in the mapping.
pub const OTHER_TASK_TYPE: &str = "OTHER";
/// Manifest `type` to arbiter task type, unless `manifestTaskTypes` says otherwise.
pub const DEFAULT_TASK_TYPES: [(&str, &str); 6] = [
    ("asr", "ASR"),
    ("nmt", "NMT"),
    ("tts", "TTS"),
    ("semantic", "SEMANTIC_REPAIR"),
    ("phonetic", "PHONETIC_CORRECTION"),
    ("punctuation", "PUNCTUATION_RESTORE"),
];

/// Why a manifest file was skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManifestDiagnostic {
    /// The manifest file.
    pub path: String,
    /// Where in it (`exec.args`, `env.CUDA_HOME`); empty for the file as a whole.
    pub json_path: String,
    pub message: String,
}

/// A manifest's `device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ManifestDevice {
    Gpu,
    Cpu,
    Auto,
}

/// A manifest's `exec`, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ManifestExec {
    pub command: String,
    pub args: Vec<String>,
    pub cwd: Option<String>,
}

/// One manifest as the node wrote it, checked: what its UI shows beside the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceManifest {
    /// The service's name in the supervisor (statuses, events, `start(id)`).
    pub id: String,
    /// The display name.
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub device: Option<ManifestDevice>,
    pub port: Option<u16>,
    pub exec: ManifestExec,
    pub env: BTreeMap<String, String>,
    pub version: Option<String>,
    pub description: Option<String>,
    pub tags: Vec<String>,
    /// The manifest file.
    pub path: String,
    /// The arbiter task type its `type` maps to (a GPU service's `gpu.taskTypes`).
    pub task_type: String,
}

/// Manifest folders expanded: a spec per manifest kept (the `services` section's entry form,
/// in discovery order), the manifests themselves, and a diagnostic per file skipped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, JsonSchema)]
pub struct ExpandedServices {
    pub services: Vec<Value>,
    pub manifests: Vec<ServiceManifest>,
    pub diagnostics: Vec<ManifestDiagnostic>,
}

/// What manifest folders held besides their specs: each manifest kept (in discovery order), and
/// a diagnostic per file skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct ManifestReport {
    pub manifests: Vec<ServiceManifest>,
    pub diagnostics: Vec<ManifestDiagnostic>,
}

/// The task type of manifest type `kind`: `overrides` first, then [`DEFAULT_TASK_TYPES`], else
/// [`OTHER_TASK_TYPE`].
pub fn task_type_of(kind: &str, overrides: &BTreeMap<String, String>) -> String {
    if let Some(t) = overrides.get(kind) {
        return t.clone();
    }
    let lower = kind.to_ascii_lowercase();
    DEFAULT_TASK_TYPES.iter().find(|(k, _)| *k == lower).map_or(OTHER_TASK_TYPE, |(_, t)| t).to_string()
}

/// The readiness of a manifest service: with a port, the first of the ready line and a 2xx
/// `GET /health` whose JSON `status` is not a not-ready value (a body without JSON or without
/// `status` counts on its status code); without a port, the ready line alone.
pub fn manifest_readiness(port: Option<u16>) -> Value {
    let line = json!({ "logLine": { "pattern": READY_LINE_PATTERN } });
    match port {
        None => line,
        Some(port) => json!({ "anyOf": [line, { "http": {
            "url": format!("http://127.0.0.1:{port}/health"),
            "expectStatus": "2xx",
            "jsonField": "status",
            "notReadyValues": NOT_READY_STATUSES,
            "jsonFieldOptional": true,
        } }] }),
    }
}

/// The interpreter a `python` command runs (one ending in `python`/`python.exe`): the manifest
/// folder's `.venv`, then `venv`, when it has one; `None` otherwise (the command runs from PATH).
pub fn venv_python(command: &str, folder: &Path) -> Option<PathBuf> {
    let lower = command.to_ascii_lowercase();
    if !(lower.ends_with("python") || lower.ends_with("python.exe")) {
        return None;
    }
    let inside: &[&str] = if cfg!(windows) { &["Scripts", "python.exe"] } else { &["bin", "python"] };
    [".venv", "venv"]
        .iter()
        .map(|venv| inside.iter().fold(folder.join(venv), |p, part| p.join(part)))
        .find(|p| p.is_file())
}

/// Reads one `service.json`; `Err` is the diagnostic that skips it.
pub fn read_manifest(
    path: &Path,
    task_types: &BTreeMap<String, String>,
) -> Result<ServiceManifest, ManifestDiagnostic> {
    let diagnostic = |json_path: String, message: String| ManifestDiagnostic {
        path: path.display().to_string(),
        json_path,
        message,
    };
    let bytes = read_regular_file(path, MAX_CONFIG_BYTES).map_err(|e| diagnostic(String::new(), e.message))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        diagnostic(String::new(), format!("not valid UTF-8 (at byte {})", e.utf8_error().valid_up_to()))
    })?;
    parse_manifest(&text, path, task_types).map_err(|(json_path, message)| diagnostic(json_path, message))
}

/// A problem at a JSON path in one manifest.
type Problem = (String, String);

/// Parses a manifest's text (`path` is the file, for its folder and the result's `path`).
pub fn parse_manifest(
    text: &str,
    path: &Path,
    task_types: &BTreeMap<String, String>,
) -> Result<ServiceManifest, Problem> {
    let mut de = serde_json::Deserializer::from_str(text);
    let root: Value = serde_path_to_error::deserialize(&mut de)
        .map_err(|e| (json_path_of(&e.path().to_string()), format!("not valid JSON: {}", e.inner())))?;
    de.end().map_err(|e| (String::new(), format!("not valid JSON: {e}")))?;
    let Value::Object(root) = root else {
        return Err((String::new(), format!("expected a JSON object, got {}", shown(&root))));
    };
    let exec = match root.get("exec") {
        Some(Value::Object(exec)) => exec,
        None | Some(Value::Null) => return Err(("exec".into(), "missing required field".into())),
        Some(other) => return Err(("exec".into(), format!("expected an object, got {}", shown(other)))),
    };
    let args = match exec.get("args") {
        Some(Value::Array(args)) => args
            .iter()
            .enumerate()
            .map(|(k, a)| match a {
                Value::String(s) => Ok(s.clone()),
                other => Err((format!("exec.args[{k}]"), format!("expected a string, got {}", shown(other)))),
            })
            .collect::<Result<Vec<_>, _>>()?,
        None | Some(Value::Null) => return Err(("exec.args".into(), "missing required field (an array)".into())),
        Some(other) => return Err(("exec.args".into(), format!("expected an array, got {}", shown(other)))),
    };
    let device = match root.get("device") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) if d == "gpu" => Some(ManifestDevice::Gpu),
        Some(Value::String(d)) if d == "cpu" => Some(ManifestDevice::Cpu),
        Some(Value::String(d)) if d == "auto" => Some(ManifestDevice::Auto),
        Some(other) => {
            return Err(("device".into(), format!("expected \"gpu\", \"cpu\" or \"auto\", got {}", shown(other))))
        }
    };
    let port = match root.get("port") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(p @ 1..=65_535) => Some(p as u16),
            _ => return Err(("port".into(), format!("expected an integer 1-65535, got {}", shown(v)))),
        },
    };
    let mut env = BTreeMap::new();
    match root.get("env") {
        None | Some(Value::Null) => {}
        Some(Value::Object(vars)) => {
            for (key, value) in vars {
                // Node's spawn turns numbers and booleans into strings; so do we.
                let text = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    other => {
                        return Err((format!("env.{key}"), format!("expected a string, got {}", shown(other))));
                    }
                };
                env.insert(key.clone(), text);
            }
        }
        Some(other) => return Err(("env".into(), format!("expected an object, got {}", shown(other)))),
    }
    let tags = match root.get("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(tags)) => tags
            .iter()
            .enumerate()
            .map(|(k, t)| {
                t.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| (format!("tags[{k}]"), format!("expected a string, got {}", shown(t))))
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(("tags".into(), format!("expected an array, got {}", shown(other)))),
    };
    let kind = required_string(&root, "type", "type")?;
    Ok(ServiceManifest {
        id: required_string(&root, "id", "id")?,
        name: required_string(&root, "name", "name")?,
        task_type: task_type_of(&kind, task_types),
        kind,
        device,
        port,
        exec: ManifestExec {
            command: required_string(exec, "command", "exec.command")?,
            args,
            cwd: optional_string(exec, "cwd", "exec.cwd")?,
        },
        env,
        version: optional_string(&root, "version", "version")?,
        description: optional_string(&root, "description", "description")?,
        tags,
        path: path.display().to_string(),
    })
}

fn required_string(obj: &Map<String, Value>, key: &str, json_path: &str) -> Result<String, Problem> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        None | Some(Value::Null) => Err((json_path.into(), "missing required field".into())),
        Some(other) => Err((json_path.into(), format!("expected a non-empty string, got {}", shown(other)))),
    }
}

fn optional_string(obj: &Map<String, Value>, key: &str, json_path: &str) -> Result<Option<String>, Problem> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err((json_path.into(), format!("expected a string, got {}", shown(other)))),
    }
}

/// A JSON value as a message shows it: compact, at most 60 characters.
fn shown(v: &Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(60) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

/// serde_path_to_error's path (`.` for the root) as our JSON paths write it (empty).
fn json_path_of(path: &str) -> String {
    if path == "." || path == "?" {
        String::new()
    } else {
        path.to_string()
    }
}

/// The service spec (a `services` section entry) a manifest in `folder` runs as.
pub fn spec_of(manifest: &ServiceManifest, folder: &Path) -> Value {
    let cwd = manifest.exec.cwd.as_ref().map_or_else(|| folder.to_path_buf(), |c| folder.join(c));
    let command = venv_python(&manifest.exec.command, folder)
        .map_or_else(|| manifest.exec.command.clone(), |p| p.display().to_string());
    let mut env = manifest.env.clone();
    env.entry("PYTHONIOENCODING".into()).or_insert_with(|| "utf-8".into());
    let mut spec = json!({
        "name": manifest.id,
        "command": command,
        "args": manifest.exec.args,
        "cwd": cwd.display().to_string(),
        "env": env,
        "readiness": manifest_readiness(manifest.port),
        "readinessTimeoutMs": MANIFEST_READINESS_TIMEOUT_MS,
    });
    if let Some(port) = manifest.port {
        spec["port"] = port.into();
    }
    if manifest.device == Some(ManifestDevice::Gpu) {
        spec["gpu"] = json!({ "key": super::AUTO_GPU_KEY, "taskTypes": [manifest.task_type] });
    }
    spec
}

/// Reads every `<dir>/<folder>/service.json` (folders in name order, `dirs` in order) into
/// specs, with the node's rules. A folder without a `service.json` is not a service and is
/// passed over; a file that cannot be used is skipped with a diagnostic (logged as a warning).
/// A `dirs` entry that is missing or not a folder is `MANIFESTS_NOT_FOUND`, its message starting
/// with `label(index)` (the entry's JSON path or argument name); relative entries are taken from
/// the process's working directory.
pub fn expand_manifests(
    dirs: &[PathBuf],
    label: &dyn Fn(usize) -> String,
    task_types: &BTreeMap<String, String>,
) -> SidecarResult<ExpandedServices> {
    let mut out = ExpandedServices::default();
    let mut first_of: HashMap<String, String> = HashMap::new();
    for (k, dir) in dirs.iter().enumerate() {
        let at = label(k);
        let dir = std::path::absolute(dir)
            .map_err(|e| SidecarError::new(ErrorCode::Io, format!("{at}: {}: {e}", dir.display())))?;
        let not_found =
            |what: &str| SidecarError::new(ErrorCode::ManifestsNotFound, format!("{at}: {what}: {}", dir.display()));
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found("no such folder")),
            Err(_) if dir.exists() && !dir.is_dir() => return Err(not_found("not a folder")),
            Err(e) => {
                return Err(SidecarError::new(ErrorCode::Io, format!("{at}: cannot read {}: {e}", dir.display())))
            }
        };
        let mut folders: Vec<PathBuf> =
            entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect();
        folders.sort();
        for folder in folders {
            let file = folder.join(MANIFEST_FILE);
            if std::fs::symlink_metadata(&file).is_err() {
                continue;
            }
            let outcome = read_manifest(&file, task_types).and_then(|m| match first_of.get(&m.id) {
                Some(first) => Err(ManifestDiagnostic {
                    path: m.path.clone(),
                    json_path: "id".into(),
                    message: format!("duplicate id {:?}: {first} has it and is kept; this file is skipped", m.id),
                }),
                None => Ok(m),
            });
            match outcome {
                Ok(manifest) => {
                    first_of.insert(manifest.id.clone(), manifest.path.clone());
                    out.services.push(spec_of(&manifest, &folder));
                    out.manifests.push(manifest);
                }
                Err(d) => {
                    tracing::warn!(path = %d.path, json_path = %d.json_path, "service manifest skipped: {}", d.message);
                    out.diagnostics.push(d);
                }
            }
        }
    }
    Ok(out)
}

/// `loadServiceManifests(dir, options?)`'s arguments as JSON: `dir` one folder or a non-empty
/// array of them (errors name `dir` or `dir[k]`), `options.taskTypes` manifest `type`s to task
/// types over the defaults. A bad argument is `INVALID_ARGUMENT` with its JSON path.
pub fn expand_manifests_argument(dir: &Value, options: Option<&Value>) -> SidecarResult<ExpandedServices> {
    #[derive(Deserialize, Default)]
    #[serde(rename_all = "camelCase", deny_unknown_fields, default)]
    struct LoadOptions {
        task_types: BTreeMap<String, String>,
    }
    let (dirs, single) = match dir {
        Value::String(d) if !d.is_empty() => (vec![PathBuf::from(d)], true),
        Value::Array(all) if !all.is_empty() && all.iter().all(|d| d.as_str().is_some_and(|d| !d.is_empty())) => {
            (all.iter().filter_map(Value::as_str).map(PathBuf::from).collect(), false)
        }
        other => {
            return Err(SidecarError::invalid_argument(format!(
                "dir: expected a folder path or a non-empty array of them, got {other}"
            )))
        }
    };
    let options: LoadOptions = match options {
        None | Some(Value::Null) => LoadOptions::default(),
        Some(options) => serde_path_to_error::deserialize(options)
            .map_err(|e| SidecarError::invalid_argument(format!("options.{}: {}", e.path(), e.inner())))?,
    };
    let label = |k: usize| if single { "dir".to_string() } else { format!("dir[{k}]") };
    expand_manifests(&dirs, &label, &options.task_types)
}

/// The `services` section's manifest keys.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ManifestKeys {
    manifests: Option<Vec<PathBuf>>,
    manifest_task_types: BTreeMap<String, String>,
}

/// A `services` section with its manifests expanded, validated.
#[derive(Debug, Clone)]
pub struct ResolvedServices {
    /// The section with `services` holding every service (manifest ones first, in discovery
    /// order, with their overrides; then the section's own), and no `manifests` or
    /// `manifestTaskTypes`: what `new ServiceSupervisor` takes.
    pub section: Value,
    pub config: ServicesConfig,
    /// What the manifests gave; `None` for a section without `manifests`.
    pub expanded: Option<ExpandedServices>,
}

/// Validates a `services` section, expanding its `manifests` folders (relative to `base_dir`)
/// first. A `services[]` entry whose `name` is a manifest's `id` is merged onto that service's
/// spec (a JSON merge patch: `null` removes a field; `readiness` and `liveness` are replaced
/// whole), so `gpu.vramMb`, `onDemand`, `readinessTimeoutMs`, `restart`, `gpu.key` ... apply to
/// it; it is checked as that service and its errors name its own path (`services.services[2]`).
/// Errors: `INVALID_CONFIG` with the JSON path, `MANIFESTS_NOT_FOUND` for a missing folder.
pub fn resolve_services_section(
    section: &Value,
    base_dir: &Path,
    warnings: &mut Vec<String>,
) -> SidecarResult<ResolvedServices> {
    resolve_services_section_allowing(section, base_dir, &[], warnings)
}

/// [`resolve_services_section`] for a run-time update: a dependency may name a service in
/// `removed` (one the supervisor has known), which blocks its dependent instead of failing.
pub fn resolve_services_section_allowing(
    section: &Value,
    base_dir: &Path,
    removed: &[&str],
    warnings: &mut Vec<String>,
) -> SidecarResult<ResolvedServices> {
    let keys = match section {
        Value::Object(map) => {
            let only: Map<String, Value> = map
                .iter()
                .filter(|(k, _)| *k == "manifests" || *k == "manifestTaskTypes")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            parse_section::<ManifestKeys>(&Value::Object(only), "services", &mut Vec::new())?
        }
        _ => ManifestKeys::default(),
    };
    let Some(dirs) = keys.manifests else {
        let config = ServicesConfig::from_json_allowing(section, removed, warnings)?;
        return Ok(ResolvedServices { section: section.clone(), config, expanded: None });
    };
    let dirs: Vec<PathBuf> = dirs.iter().map(|d| base_dir.join(d)).collect();
    let expanded = expand_manifests(&dirs, &|k| format!("services.manifests[{k}]"), &keys.manifest_task_types)?;

    let mut merged = expanded.services.clone();
    // Where each merged entry came from, for the paths in cross-service errors.
    let mut origins: Vec<String> =
        expanded.manifests.iter().map(|m| format!("{} (the manifest of {:?})", m.path, m.id)).collect();
    let own: &[Value] = section.get("services").and_then(Value::as_array).map_or(&[], Vec::as_slice);
    for (j, entry) in own.iter().enumerate() {
        let at = format!("services.services[{j}]");
        let target = entry.get("name").and_then(Value::as_str).and_then(|n| merged.iter().position(|s| s["name"] == n));
        match target {
            Some(t) if t < expanded.services.len() => {
                let mut spec = merged[t].clone();
                override_spec(&mut spec, entry);
                parse_section::<ServiceSpec>(&spec, &at, &mut Vec::new())?;
                merged[t] = spec;
                origins[t] = at;
            }
            _ => {
                merged.push(entry.clone());
                origins.push(at);
            }
        }
    }
    let mut out = section.clone();
    if let Value::Object(map) = &mut out {
        map.remove("manifests");
        map.remove("manifestTaskTypes");
        map.insert("services".into(), Value::Array(merged));
    }
    let config = ServicesConfig::from_json_allowing(&out, removed, warnings).map_err(|e| with_origin(e, &origins))?;
    Ok(ResolvedServices { section: out, config, expanded: Some(expanded) })
}

/// Merges a `services[]` entry onto a manifest's spec.
fn override_spec(spec: &mut Value, entry: &Value) {
    let (Value::Object(spec_map), Value::Object(entry_map)) = (&mut *spec, entry) else {
        return;
    };
    for key in ["readiness", "liveness"] {
        if let Some(whole) = entry_map.get(key) {
            spec_map.insert(key.into(), whole.clone());
        }
    }
    let rest: Map<String, Value> = entry_map
        .iter()
        .filter(|(k, _)| *k != "readiness" && *k != "liveness")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    merge_patch(spec, &Value::Object(rest));
}

/// Renames `services.services[k]` at the start of an error to where entry `k` came from.
fn with_origin(mut e: SidecarError, origins: &[String]) -> SidecarError {
    if let Some(rest) = e.message.strip_prefix("services.services[") {
        if let Some((index, tail)) = rest.split_once(']') {
            if let Some(origin) = index.parse::<usize>().ok().and_then(|k| origins.get(k)) {
                e.message = format!("{origin}{tail}");
            }
        }
    }
    e
}

#[cfg(test)]
mod tests;
