//! `gpuInventory()`: the driver and per-GPU modes for `gpu-sidecar doctor`.

use napi_derive::napi;

use crate::telemetry::{read_inventory, GpuInfo, Inventory};

/// What NVML says about the driver and every GPU (`gpu-sidecar doctor` prints it). A figure NVML
/// cannot give on this system or GPU is absent.
#[napi(object)]
pub struct GpuInventory {
    #[napi(ts_type = "TelemetrySample['nvml']")]
    pub nvml: serde_json::Value,
    pub driver_version: Option<String>,
    pub nvml_version: Option<String>,
    /// `major.minor` of the CUDA version the driver supports (`'12.4'`).
    pub cuda_driver_version: Option<String>,
    pub gpus: Vec<GpuInventoryEntry>,
}

/// One GPU's identity and administrative modes.
#[napi(object)]
pub struct GpuInventoryEntry {
    pub index: u32,
    /// `gpu:<index>`, the arbiter's key.
    pub key: String,
    pub name: Option<String>,
    pub uuid: Option<String>,
    /// Linux only: the driver stays loaded with no client.
    pub persistence_mode: Option<bool>,
    #[napi(ts_type = "'DEFAULT' | 'EXCLUSIVE_PROCESS' | 'EXCLUSIVE_THREAD' | 'PROHIBITED'")]
    pub compute_mode: Option<String>,
    /// MIG on now (`current`) and after the next GPU reset (`pending`).
    pub mig_mode: Option<GpuMigMode>,
    /// Windows only: the driver model NVML reports.
    #[napi(ts_type = "'WDDM' | 'TCC'")]
    pub driver_model: Option<String>,
}

#[napi(object)]
pub struct GpuMigMode {
    pub current: bool,
    pub pending: bool,
}

/// Reads the NVIDIA driver, NVML and CUDA driver versions and each GPU's name, UUID, persistence,
/// compute, MIG mode and driver model, on this thread (a few ms with a driver). Never throws for a
/// missing driver: `nvml.available` is `false` with the reason.
#[napi(catch_unwind)]
pub fn gpu_inventory() -> GpuInventory {
    let Inventory { nvml, driver_version, nvml_version, cuda_driver_version, gpus } = read_inventory();
    GpuInventory {
        nvml: serde_json::to_value(nvml).unwrap_or(serde_json::Value::Null),
        driver_version,
        nvml_version,
        cuda_driver_version,
        gpus: gpus.into_iter().map(entry).collect(),
    }
}

fn entry(gpu: GpuInfo) -> GpuInventoryEntry {
    GpuInventoryEntry {
        index: gpu.index,
        key: gpu.key,
        name: gpu.name,
        uuid: gpu.uuid,
        persistence_mode: gpu.persistence_mode,
        compute_mode: gpu.compute_mode.map(str::to_string),
        mig_mode: gpu.mig_mode.map(|m| GpuMigMode { current: m.current, pending: m.pending }),
        driver_model: gpu.driver_model.map(str::to_string),
    }
}
