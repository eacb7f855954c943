//! `gpuInventory()`: the driver and per-GPU modes for `gpu-sidecar doctor`.

use napi::bindgen_prelude::{Env, Result, Unknown};
use napi_derive::napi;

use super::Code;
use crate::telemetry::read_inventory;

/// Reads the NVIDIA driver, NVML and CUDA driver versions and each GPU's name, UUID, persistence,
/// compute, MIG mode and driver model, on this thread (a few ms with a driver). Never throws for a
/// missing driver: `nvml.available` is `false` with the reason.
#[napi(catch_unwind, ts_return_type = "GpuInventory")]
pub fn gpu_inventory(env: &Env) -> Result<Unknown<'_>, Code> {
    super::js::to_js(env, &read_inventory())
}
