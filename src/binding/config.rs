//! `loadConfig(path)`.

use napi::bindgen_prelude::{Env, Unknown};
use napi_derive::napi;

use super::{args, js, Code};
use crate::node_config;

/// Reads a whole node config file (like `electron-node-config.json`) and validates the sections
/// gpu-sidecar owns, expanding `services.manifests` (folders relative to the file). Throws `INVALID_CONFIG` with the JSON path of a bad field
/// (`gpuArbiter.policies.ASR.priority: expected an integer 0-100, got "high"`), and for a file
/// that is not a regular file (a device, FIFO or directory: refused at once, never blocking),
/// is over 16 MiB, or is not UTF-8. A `path` that is not a string is `INVALID_ARGUMENT`.
#[napi(catch_unwind, ts_args_type = "path: string", ts_return_type = "NodeConfig")]
pub fn load_config<'env>(env: &'env Env, path: Option<Unknown>) -> napi::Result<Unknown<'env>, Code> {
    let path = args::string(env, path, "path")?;
    js::to_js(env, &node_config::load_node_config(std::path::Path::new(&path))?)
}
