//! The NVIDIA stack as `gpu-sidecar doctor` reports it: driver, NVML and CUDA driver versions and
//! each GPU's identity and modes. Read once on demand, not per sample: these figures change only
//! when an administrator changes them.

use nvml_wrapper::enum_wrappers::device::ComputeMode;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{cuda_driver_version_major, cuda_driver_version_minor, Device, Nvml};
use schemars::JsonSchema;
use serde::Serialize;

use super::nvml::nvml_with_devices;
use super::sample::{GpuSample, NvmlStatus};

/// What NVML says about the driver and every GPU (`gpu-sidecar doctor` prints it). A figure NVML
/// cannot give on this system or GPU is absent (never `null`).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "GpuInventory")]
pub struct Inventory {
    pub nvml: NvmlStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub driver_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub nvml_version: Option<String>,
    /// `major.minor` of the CUDA version the driver supports (`12.4`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub cuda_driver_version: Option<String>,
    pub gpus: Vec<GpuInfo>,
}

/// One GPU's identity and administrative modes; a figure NVML cannot give is absent.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "GpuInventoryEntry")]
pub struct GpuInfo {
    pub index: u32,
    /// `gpu:<index>`, the arbiter's key.
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub uuid: Option<String>,
    /// Linux only: the driver stays loaded with no client (faster first CUDA call).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "bool")]
    pub persistence_mode: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "GpuComputeMode")]
    pub compute_mode: Option<GpuComputeMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "MigState")]
    pub mig_mode: Option<MigState>,
    /// Windows only: the driver model NVML reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "GpuDriverModel")]
    pub driver_model: Option<GpuDriverModel>,
}

/// Who may use the GPU, named as `nvidia-smi` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum GpuComputeMode {
    Default,
    ExclusiveProcess,
    ExclusiveThread,
    Prohibited,
}

/// A Windows driver model: `WDDM` (display driver) or `TCC` (compute driver).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum GpuDriverModel {
    Wddm,
    Tcc,
}

/// Whether MIG is on now (`current`), and after the next GPU reset (`pending`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(rename = "GpuMigMode")]
pub struct MigState {
    pub current: bool,
    pub pending: bool,
}

/// Reads the inventory; never fails: an unavailable NVML is reported in `nvml`.
pub fn read_inventory() -> Inventory {
    let unavailable = |reason| Inventory {
        nvml: NvmlStatus { available: false, reason: Some(reason) },
        driver_version: None,
        nvml_version: None,
        cuda_driver_version: None,
        gpus: Vec::new(),
    };
    let (nvml, count) = match nvml_with_devices() {
        Ok(found) => found,
        Err(reason) => return unavailable(reason),
    };
    Inventory {
        nvml: NvmlStatus { available: true, reason: None },
        driver_version: nvml.sys_driver_version().ok(),
        nvml_version: nvml.sys_nvml_version().ok(),
        cuda_driver_version: nvml.sys_cuda_driver_version().ok().map(cuda_version),
        gpus: (0..count).map(|index| read_gpu(nvml, index)).collect(),
    }
}

/// NVML's `12040` as `12.4`.
fn cuda_version(encoded: i32) -> String {
    format!("{}.{}", cuda_driver_version_major(encoded), cuda_driver_version_minor(encoded))
}

fn read_gpu(nvml: &Nvml, index: u32) -> GpuInfo {
    let mut info = GpuInfo {
        index,
        key: GpuSample::key_for(index),
        name: None,
        uuid: None,
        persistence_mode: None,
        compute_mode: None,
        mig_mode: None,
        driver_model: None,
    };
    let Ok(device) = nvml.device_by_index(index) else { return info };
    info.name = device.name().ok();
    info.uuid = device.uuid().ok();
    info.persistence_mode = persistence_mode(&device).ok();
    info.compute_mode = device.compute_mode().ok().map(compute_mode_name);
    info.mig_mode = device.mig_mode().ok().map(|m| MigState { current: m.current != 0, pending: m.pending != 0 });
    info.driver_model = driver_model(&device);
    info
}

#[cfg(target_os = "linux")]
fn persistence_mode(device: &Device) -> Result<bool, NvmlError> {
    device.is_in_persistent_mode()
}

#[cfg(not(target_os = "linux"))]
fn persistence_mode(_device: &Device) -> Result<bool, NvmlError> {
    Err(NvmlError::NotSupported)
}

fn compute_mode_name(mode: ComputeMode) -> GpuComputeMode {
    match mode {
        ComputeMode::Default => GpuComputeMode::Default,
        ComputeMode::ExclusiveThread => GpuComputeMode::ExclusiveThread,
        ComputeMode::Prohibited => GpuComputeMode::Prohibited,
        ComputeMode::ExclusiveProcess => GpuComputeMode::ExclusiveProcess,
    }
}

/// NVML calls the TCC model `WDM`; NVIDIA's tools and documentation say TCC.
#[cfg(target_os = "windows")]
fn driver_model(device: &Device) -> Option<GpuDriverModel> {
    use nvml_wrapper::enum_wrappers::device::DriverModel;
    device.driver_model().ok().map(|m| match m.current {
        DriverModel::WDDM => GpuDriverModel::Wddm,
        DriverModel::WDM => GpuDriverModel::Tcc,
    })
}

/// Driver models exist on Windows only.
#[cfg(not(target_os = "windows"))]
fn driver_model(_device: &Device) -> Option<GpuDriverModel> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_cuda_driver_version() {
        assert_eq!(cuda_version(12040), "12.4");
        assert_eq!(cuda_version(11080), "11.8");
    }

    #[test]
    fn names_modes_as_nvidia_smi_does() {
        let name = |mode| serde_json::to_value(compute_mode_name(mode)).unwrap();
        assert_eq!(name(ComputeMode::ExclusiveProcess), "EXCLUSIVE_PROCESS");
        assert_eq!(name(ComputeMode::Default), "DEFAULT");
        assert_eq!(serde_json::to_value(GpuDriverModel::Tcc).unwrap(), "TCC");
        assert_eq!(serde_json::to_value(GpuDriverModel::Wddm).unwrap(), "WDDM");
    }

    /// This machine has no NVIDIA library; where one is installed the other path is checked.
    #[test]
    fn an_unavailable_nvml_is_reported_not_fatal() {
        let inventory = read_inventory();
        if std::env::var_os("GPU_SIDECAR_EXPECT_NVML").is_some() {
            assert!(inventory.nvml.available && inventory.driver_version.is_some(), "{inventory:?}");
        } else {
            assert!(!inventory.nvml.available && inventory.gpus.is_empty() && inventory.driver_version.is_none());
        }
    }
}
