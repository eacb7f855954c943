//! `loadConfig(path)`.

use napi::bindgen_prelude::{Env, Unknown};
use napi_derive::napi;

use super::{args, Code};
use crate::error::{ErrorCode, SidecarError};
use crate::node_config;

/// The sections of a node config file that gpu-sidecar owns, validated, with defaults applied.
#[napi(object)]
pub struct NodeConfig {
    #[napi(ts_type = "Required<GpuArbiterConfig>")]
    pub gpu_arbiter: serde_json::Value,
    /// The `services` section, validated (pass it to `new ServiceSupervisor`); absent if the file has none.
    #[napi(ts_type = "ExpandedServicesConfig")]
    pub services: Option<serde_json::Value>,
    /// What `services.manifests` held: the manifests kept and why each other file was skipped
    /// (their services are in `services.services`); absent without `manifests`.
    #[napi(ts_type = "ManifestReport")]
    pub manifests: Option<serde_json::Value>,
    /// Unknown keys in our sections, as JSON paths (they are ignored).
    pub warnings: Vec<String>,
}

/// Reads a whole node config file (like `electron-node-config.json`) and validates the sections
/// gpu-sidecar owns, expanding `services.manifests` (folders relative to the file). Throws `INVALID_CONFIG` with the JSON path of a bad field
/// (`gpuArbiter.policies.ASR.priority: expected an integer 0-100, got "high"`), and for a file
/// that is not a regular file (a device, FIFO or directory: refused at once, never blocking),
/// is over 16 MiB, or is not UTF-8. A `path` that is not a string is `INVALID_ARGUMENT`.
#[napi(catch_unwind, ts_args_type = "path: string")]
pub fn load_config(env: &Env, path: Option<Unknown>) -> napi::Result<NodeConfig, Code> {
    let path = args::string(env, path, "path")?;
    let node = node_config::load_node_config(std::path::Path::new(&path))?;
    let gpu_arbiter =
        serde_json::to_value(&node.gpu_arbiter).map_err(|e| SidecarError::new(ErrorCode::Internal, e.to_string()))?;
    let manifests = node
        .manifests
        .map(|m| serde_json::to_value(&m))
        .transpose()
        .map_err(|e| SidecarError::new(ErrorCode::Internal, e.to_string()))?;
    Ok(NodeConfig { gpu_arbiter, services: node.services, manifests, warnings: node.warnings })
}
