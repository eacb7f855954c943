//! The NVIDIA stack as `gpu-sidecar doctor` reports it: driver, NVML and CUDA driver versions and
//! each GPU's identity and modes. Read once on demand, not per sample: these figures change only
//! when an administrator changes them.

use nvml_wrapper::enum_wrappers::device::ComputeMode;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{cuda_driver_version_major, cuda_driver_version_minor, Device, Nvml};
use serde::Serialize;

use super::nvml::nvml_with_devices;
use super::sample::{GpuSample, NvmlStatus};

/// What NVML says about the driver and every GPU. Any single figure NVML cannot give is `None`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    pub nvml: NvmlStatus,
    pub driver_version: Option<String>,
    pub nvml_version: Option<String>,
    /// `major.minor` of the CUDA version the driver supports (`12.4`).
    pub cuda_driver_version: Option<String>,
    pub gpus: Vec<GpuInfo>,
}

/// One GPU's identity and administrative modes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuInfo {
    pub index: u32,
    /// `gpu:<index>`, the arbiter's key.
    pub key: String,
    pub name: Option<String>,
    pub uuid: Option<String>,
    /// Linux only: the driver stays loaded with no client (faster first CUDA call).
    pub persistence_mode: Option<bool>,
    /// `DEFAULT`, `EXCLUSIVE_PROCESS`, `EXCLUSIVE_THREAD` or `PROHIBITED`.
    pub compute_mode: Option<&'static str>,
    /// Whether MIG is on now, and after the next reset.
    pub mig_mode: Option<MigState>,
    /// Windows only: `WDDM` (display driver) or `TCC` (compute driver).
    pub driver_model: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

fn compute_mode_name(mode: ComputeMode) -> &'static str {
    match mode {
        ComputeMode::Default => "DEFAULT",
        ComputeMode::ExclusiveThread => "EXCLUSIVE_THREAD",
        ComputeMode::Prohibited => "PROHIBITED",
        ComputeMode::ExclusiveProcess => "EXCLUSIVE_PROCESS",
    }
}

/// NVML calls the TCC model `WDM`; NVIDIA's tools and documentation say TCC.
#[cfg(target_os = "windows")]
fn driver_model(device: &Device) -> Option<&'static str> {
    use nvml_wrapper::enum_wrappers::device::DriverModel;
    device.driver_model().ok().map(|m| match m.current {
        DriverModel::WDDM => "WDDM",
        DriverModel::WDM => "TCC",
    })
}

/// Driver models exist on Windows only.
#[cfg(not(target_os = "windows"))]
fn driver_model(_device: &Device) -> Option<&'static str> {
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
        assert_eq!(compute_mode_name(ComputeMode::ExclusiveProcess), "EXCLUSIVE_PROCESS");
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
