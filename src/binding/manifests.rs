//! `loadServiceManifests(dir, options?)`: the node's `service.json` manifests as service specs
//! ([`crate::services::manifest`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use napi::bindgen_prelude::{Env, Unknown};
use napi_derive::napi;
use serde::Deserialize;
use serde_json::Value;

use super::{args, Code};
use crate::error::{ErrorCode, SidecarError};
use crate::services::manifest::expand_manifests;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
struct LoadOptions {
    task_types: BTreeMap<String, String>,
}

/// Reads every `<dir>/<folder>/service.json` (one folder or several, relative to the working
/// directory) with the node's rules, and returns `{ services, manifests, diagnostics }`:
/// `services` fits `new ServiceSupervisor({ services })`, `manifests` are the manifests kept, and
/// `diagnostics` say why each other file was skipped (also logged as warnings). `options.taskTypes`
/// maps manifest `type`s to arbiter task types over the defaults. A missing folder throws
/// `MANIFESTS_NOT_FOUND`; a bad argument `INVALID_ARGUMENT`.
#[napi(
    catch_unwind,
    ts_args_type = "dir: string | string[], options?: { taskTypes?: Record<string, string> }",
    ts_return_type = "{ services: ServiceConfig[] } & ManifestReport"
)]
pub fn load_service_manifests(env: &Env, dir: Option<Unknown>, options: Option<Unknown>) -> napi::Result<Value, Code> {
    let dir = args::required_json(env, dir, "dir", ErrorCode::InvalidArgument)?;
    let (dirs, single) = match dir {
        Value::String(d) if !d.is_empty() => (vec![PathBuf::from(d)], true),
        Value::Array(all) if !all.is_empty() && all.iter().all(|d| d.as_str().is_some_and(|d| !d.is_empty())) => {
            (all.iter().filter_map(Value::as_str).map(PathBuf::from).collect(), false)
        }
        other => {
            return Err(SidecarError::invalid_argument(format!(
                "dir: expected a folder path or a non-empty array of them, got {other}"
            ))
            .into())
        }
    };
    let options = args::optional_json(env, options, "options", ErrorCode::InvalidArgument)?.unwrap_or_default();
    let options: LoadOptions = if options.is_null() {
        LoadOptions::default()
    } else {
        serde_path_to_error::deserialize(&options)
            .map_err(|e| SidecarError::invalid_argument(format!("options.{}: {}", e.path(), e.inner())))?
    };
    let label = |k: usize| if single { "dir".to_string() } else { format!("dir[{k}]") };
    let expanded = expand_manifests(&dirs, &label, &options.task_types)?;
    Ok(serde_json::to_value(&expanded).map_err(|e| SidecarError::new(ErrorCode::Internal, e.to_string()))?)
}
