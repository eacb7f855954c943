//! GPU figures from NVML. NVML is initialised once per process, on first use, and kept: loading
//! the library and starting the driver session per sample would cost milliseconds each time.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::{nvml_sym, nvml_try, NvmlError};
use nvml_wrapper::struct_wrappers::device::{MemoryInfo, ProcessInfo};
use nvml_wrapper::{Device, Nvml};

use super::host::ProcessRegistry;
use super::sample::{mb, GpuProcess, GpuSample, NvmlStatus, NvmlUnavailable, XidEvent};

static NVML: OnceLock<Result<Nvml, NvmlUnavailable>> = OnceLock::new();

/// The process-wide NVML session, started on the first call; later calls return the same result.
pub fn nvml() -> Result<&'static Nvml, NvmlUnavailable> {
    NVML.get_or_init(|| {
        Nvml::init().map_err(|e| {
            let reason = unavailable_reason(&e);
            tracing::info!(reason = reason.as_str(), error = %e, "NVML unavailable; GPU telemetry off");
            reason
        })
    })
    .as_ref()
    .map_err(|reason| *reason)
}

/// Why an NVML error leaves GPU telemetry unavailable.
/// NVML and how many GPUs it sees, or why it cannot be used.
pub fn nvml_with_devices() -> Result<(&'static Nvml, u32), NvmlUnavailable> {
    let nvml = nvml()?;
    let count = nvml.device_count().map_err(|e| unavailable_reason(&e))?;
    Ok((nvml, count))
}

pub fn unavailable_reason(error: &NvmlError) -> NvmlUnavailable {
    match error {
        NvmlError::LibloadingError(_) | NvmlError::FailedToLoadSymbol(_) | NvmlError::LibraryNotFound => {
            NvmlUnavailable::LibraryNotFound
        }
        NvmlError::DriverNotLoaded => NvmlUnavailable::DriverNotLoaded,
        NvmlError::NoPermission => NvmlUnavailable::NoPermission,
        NvmlError::GpuLost => NvmlUnavailable::GpuLost,
        _ => NvmlUnavailable::InitFailed,
    }
}

/// What one read of NVML gives.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuRead {
    pub status: NvmlStatus,
    pub gpus: Vec<GpuSample>,
    pub xid_errors: Vec<XidEvent>,
}

/// Where a live sample's GPU figures come from: NVML ([`GpuReader`]), or a fake in tests.
pub trait GpuSource: Send {
    /// Reads the GPUs; `with_processes` says whether to query the per-process lists too (slow on
    /// some drivers, and it contends with inference there).
    fn read(&mut self, registry: &ProcessRegistry, with_processes: bool) -> GpuRead;
}

/// Reads every GPU, or a subset by index, on the sampler thread.
pub struct GpuReader {
    indices: Option<Vec<u32>>,
    xid: XidWatch,
}

impl GpuReader {
    /// `indices`: the NVML indices to read; `None` for all GPUs.
    pub fn new(indices: Option<Vec<u32>>) -> Self {
        Self { indices, xid: XidWatch::NotStarted }
    }

    /// Reads the GPUs, with their process lists or without; never fails: an unavailable NVML or a
    /// lost GPU shows in the result.
    pub fn read(&mut self, registry: &ProcessRegistry, with_processes: bool) -> GpuRead {
        let unavailable = |reason| GpuRead {
            status: NvmlStatus { available: false, reason: Some(reason) },
            gpus: vec![],
            xid_errors: vec![],
        };
        let (nvml, count) = match nvml_with_devices() {
            Ok(found) => found,
            Err(reason) => return unavailable(reason),
        };
        let indices: Vec<u32> = match &self.indices {
            Some(wanted) => wanted.iter().copied().filter(|&i| i < count).collect(),
            None => (0..count).collect(),
        };
        let xid_errors = self.xid.drain(nvml, &indices);
        let gpus = indices.into_iter().map(|index| read_gpu(nvml, index, registry, with_processes)).collect();
        GpuRead { status: NvmlStatus { available: true, reason: None }, gpus, xid_errors }
    }
}

impl GpuSource for GpuReader {
    fn read(&mut self, registry: &ProcessRegistry, with_processes: bool) -> GpuRead {
        GpuReader::read(self, registry, with_processes)
    }
}

fn read_gpu(nvml: &Nvml, index: u32, registry: &ProcessRegistry, with_processes: bool) -> GpuSample {
    let mut gpu = GpuSample { index, key: GpuSample::key_for(index), ..GpuSample::default() };
    let device = match nvml.device_by_index(index) {
        Ok(device) => device,
        Err(e) => {
            gpu.lost = matches!(e, NvmlError::GpuLost);
            tracing::debug!(index, error = %e, "cannot open GPU");
            return gpu;
        }
    };
    // Each figure is read on its own: a GPU that lacks one (power on some boards) still reports
    // the rest. GpuLost on any of them marks the GPU lost.
    let mut lost = false;
    gpu.uuid = take(device.uuid(), &mut lost);
    gpu.name = take(device.name(), &mut lost);
    if let Some(memory) = take(or_older_driver(device.memory_info(), || memory_info_v1(nvml, &device)), &mut lost) {
        gpu.total_mb = Some(mb(memory.total));
        gpu.used_mb = Some(mb(memory.used));
        gpu.free_mb = Some(mb(memory.free));
    }
    if let Some(rates) = take(device.utilization_rates(), &mut lost) {
        gpu.utilization_gpu = Some(f64::from(rates.gpu));
        gpu.utilization_memory = Some(f64::from(rates.memory));
    }
    gpu.temperature_c = take(device.temperature(TemperatureSensor::Gpu), &mut lost).map(f64::from);
    gpu.power_w = take(device.power_usage(), &mut lost).map(|milliwatts| f64::from(milliwatts) / 1_000.0);
    if with_processes {
        let compute = process_list(|| {
            or_older_driver(device.running_compute_processes(), || device.running_compute_processes_v2())
        });
        let graphics = process_list(|| {
            or_older_driver(device.running_graphics_processes(), || device.running_graphics_processes_v2())
        });
        let compute = take(compute, &mut lost).unwrap_or_default();
        let graphics = take(graphics, &mut lost).unwrap_or_default();
        gpu.processes = merge_processes(compute.into_iter().chain(graphics), registry);
    }
    gpu.lost = lost;
    gpu
}

/// `current`, or on a driver that lacks its entry point (NVML versions its calls: R470 has no
/// `nvmlDeviceGetMemoryInfo_v2` nor `*RunningProcesses_v3`) what the older entry point says.
fn or_older_driver<T>(
    current: Result<T, NvmlError>,
    older: impl FnOnce() -> Result<T, NvmlError>,
) -> Result<T, NvmlError> {
    match current {
        Err(NvmlError::FailedToLoadSymbol(_)) => older(),
        other => other,
    }
}

/// Memory through `nvmlDeviceGetMemoryInfo`, the call drivers before R510 have (nvml-wrapper
/// only makes the `_v2` one). `reserved` is unknown there (0).
fn memory_info_v1(nvml: &Nvml, device: &Device) -> Result<MemoryInfo, NvmlError> {
    let sym = nvml_sym(nvml.lib().nvmlDeviceGetMemoryInfo.as_ref())?;
    // SAFETY: the signature is nvml.h's; `memory` is a valid, writable nvmlMemory_t and `device`
    // a live handle from this NVML session.
    let memory = unsafe {
        let mut memory: nvml_wrapper_sys::bindings::nvmlMemory_t = std::mem::zeroed();
        nvml_try(sym(device.handle(), &mut memory))?;
        memory
    };
    Ok(MemoryInfo { free: memory.free, reserved: 0, total: memory.total, used: memory.used, version: 1 })
}

/// How many times a process list is read when processes keep appearing between NVML's count call
/// and its fetch (nvml-wrapper leaves 5 spare entries; more new ones fail INSUFFICIENT_SIZE).
const PROCESS_LIST_TRIES: usize = 3;

/// A process list, read again when it outgrew its buffer: a list that failed is not "no processes".
fn process_list(mut read: impl FnMut() -> Result<Vec<ProcessInfo>, NvmlError>) -> Result<Vec<ProcessInfo>, NvmlError> {
    let mut result = read();
    for _ in 1..PROCESS_LIST_TRIES {
        if !matches!(result, Err(NvmlError::InsufficientSize(_))) {
            break;
        }
        result = read();
    }
    result
}

/// The figure, or `None` when the GPU cannot give it; notes a lost GPU.
fn take<T>(result: Result<T, NvmlError>, lost: &mut bool) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            *lost |= matches!(e, NvmlError::GpuLost);
            None
        }
    }
}

/// One entry per pid: a process with both a compute and a graphics context is listed once, with
/// the larger figure (NVML reports the process's whole usage in each list).
fn merge_processes(infos: impl Iterator<Item = ProcessInfo>, registry: &ProcessRegistry) -> Vec<GpuProcess> {
    let mut by_pid: BTreeMap<u32, Option<u64>> = BTreeMap::new();
    for info in infos {
        let used = match info.used_gpu_memory {
            UsedGpuMemory::Used(bytes) => Some(mb(bytes)),
            UsedGpuMemory::Unavailable => None,
        };
        let entry = by_pid.entry(info.pid).or_insert(used);
        *entry = (*entry).max(used);
    }
    by_pid.into_iter().map(|(pid, used_mb)| GpuProcess { pid, used_mb, service: registry.service_of(pid) }).collect()
}

/// Critical XID events, where the platform and GPUs support them. Best effort: a GPU whose events
/// cannot be watched is logged once and skipped. One event set per GPU, kept with the GPU's index:
/// registering a device consumes the set and drops it on failure, which would lose the GPUs
/// registered before; and an event names its GPU by this index, because asking the driver
/// (`nvmlDeviceGetIndex`) fails GPU_IS_LOST once the GPU has fallen off the bus, which is just
/// when its last XID (79) arrives.
enum XidWatch {
    NotStarted,
    #[cfg(target_os = "linux")]
    Watching(Vec<(u32, nvml_wrapper::EventSet<'static>)>),
    #[cfg(not(target_os = "linux"))]
    Off,
}

/// Events taken per GPU and sample at most, so a storm cannot stall the sampler.
#[cfg(target_os = "linux")]
const MAX_XID_PER_SAMPLE: usize = 64;

impl XidWatch {
    /// The XID errors queued since the last call, for the GPUs at `indices` (watched from the first
    /// call on).
    #[cfg(target_os = "linux")]
    fn drain(&mut self, nvml: &'static Nvml, indices: &[u32]) -> Vec<XidEvent> {
        use nvml_wrapper::bitmasks::event::EventTypes;
        use nvml_wrapper::enums::event::XidError;
        if matches!(self, XidWatch::NotStarted) {
            *self = XidWatch::Watching(
                indices.iter().filter_map(|&index| watch(nvml, index).map(|set| (index, set))).collect(),
            );
        }
        let XidWatch::Watching(sets) = self else { return Vec::new() };
        let mut events = Vec::new();
        for (index, set) in sets.iter() {
            // `wait(0)` returns at once; Timeout means the queue is empty.
            for _ in 0..MAX_XID_PER_SAMPLE {
                let Ok(data) = set.wait(0) else { break };
                if data.event_type.contains(EventTypes::CRITICAL_XID_ERROR) {
                    let gpu_key = GpuSample::key_for(*index);
                    let xid = match data.event_data {
                        Some(XidError::Value(v)) => Some(v),
                        _ => None,
                    };
                    events.push(XidEvent { gpu_key, xid });
                }
            }
        }
        events
    }

    #[cfg(not(target_os = "linux"))]
    fn drain(&mut self, _nvml: &'static Nvml, _indices: &[u32]) -> Vec<XidEvent> {
        *self = XidWatch::Off;
        Vec::new()
    }
}

/// An event set watching one GPU for critical XID errors, if the GPU supports it.
#[cfg(target_os = "linux")]
fn watch(nvml: &'static Nvml, index: u32) -> Option<nvml_wrapper::EventSet<'static>> {
    use nvml_wrapper::bitmasks::event::EventTypes;
    let device = nvml.device_by_index(index).ok()?;
    if !device.supported_event_types().is_ok_and(|types| types.contains(EventTypes::CRITICAL_XID_ERROR)) {
        tracing::info!(index, "this GPU does not report XID events");
        return None;
    }
    let set = nvml.create_event_set().map_err(|e| tracing::info!(index, error = %e, "XID events unavailable")).ok()?;
    device
        .register_events(EventTypes::CRITICAL_XID_ERROR, set)
        .map_err(|e| tracing::info!(index, error = %e, "cannot watch XID events on this GPU"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_nvml_errors_to_reasons() {
        assert_eq!(unavailable_reason(&NvmlError::FailedToLoadSymbol("x".into())), NvmlUnavailable::LibraryNotFound);
        assert_eq!(unavailable_reason(&NvmlError::LibraryNotFound), NvmlUnavailable::LibraryNotFound);
        assert_eq!(unavailable_reason(&NvmlError::DriverNotLoaded), NvmlUnavailable::DriverNotLoaded);
        assert_eq!(unavailable_reason(&NvmlError::NoPermission), NvmlUnavailable::NoPermission);
        assert_eq!(unavailable_reason(&NvmlError::GpuLost), NvmlUnavailable::GpuLost);
        assert_eq!(unavailable_reason(&NvmlError::Unknown), NvmlUnavailable::InitFailed);
    }

    /// This machine has no NVIDIA library; where one is installed the test checks the other path.
    #[test]
    fn reports_why_nvml_is_unavailable_without_panicking() {
        let mut reader = GpuReader::new(None);
        let registry = ProcessRegistry::new();
        let first = reader.read(&registry, true);
        let second = reader.read(&registry, false);
        assert_eq!(first.status, second.status);
        if std::env::var_os("GPU_SIDECAR_EXPECT_NVML").is_some() {
            assert!(first.status.available, "{first:?}");
            assert!(first.gpus.iter().all(|g| g.key == GpuSample::key_for(g.index)));
        } else {
            assert_eq!(first.status, NvmlStatus { available: false, reason: Some(NvmlUnavailable::LibraryNotFound) });
            assert!(first.gpus.is_empty() && first.xid_errors.is_empty());
        }
    }

    #[test]
    fn a_figure_that_fails_with_gpu_lost_marks_the_gpu_lost() {
        let mut lost = false;
        assert_eq!(take(Ok(3), &mut lost), Some(3));
        assert_eq!(take::<u32>(Err(NvmlError::NotSupported), &mut lost), None);
        assert!(!lost);
        assert_eq!(take::<u32>(Err(NvmlError::GpuLost), &mut lost), None);
        assert_eq!(take(Ok(4), &mut lost), Some(4));
        assert!(lost);
    }

    #[test]
    fn a_process_list_that_outgrew_its_buffer_is_read_again_a_few_times() {
        let one = vec![ProcessInfo {
            pid: 7,
            used_gpu_memory: UsedGpuMemory::Used(1),
            gpu_instance_id: None,
            compute_instance_id: None,
        }];
        let mut calls = 0;
        let grew_once = process_list(|| {
            calls += 1;
            if calls == 1 {
                Err(NvmlError::InsufficientSize(Some(12)))
            } else {
                Ok(one.clone())
            }
        });
        assert_eq!((grew_once.unwrap(), calls), (one.clone(), 2));
        let mut calls = 0;
        let always = process_list(|| {
            calls += 1;
            Err(NvmlError::InsufficientSize(None))
        });
        assert!(matches!(always, Err(NvmlError::InsufficientSize(None))));
        assert_eq!(calls, PROCESS_LIST_TRIES);
        let mut calls = 0;
        let unsupported = process_list(|| {
            calls += 1;
            Err(NvmlError::NotSupported)
        });
        assert!(matches!(unsupported, Err(NvmlError::NotSupported)));
        assert_eq!(calls, 1, "only a list that outgrew its buffer is read again");
    }

    #[test]
    fn an_entry_point_the_driver_lacks_falls_back_to_the_older_one() {
        let older = || Ok(2);
        assert_eq!(or_older_driver(Err(NvmlError::FailedToLoadSymbol("x_v3".into())), older).unwrap(), 2);
        assert_eq!(or_older_driver(Ok(1), older).unwrap(), 1);
        assert!(matches!(or_older_driver(Err(NvmlError::GpuLost), older), Err(NvmlError::GpuLost)));
    }

    #[test]
    fn merges_a_pid_listed_as_compute_and_graphics() {
        let info =
            |pid, used| ProcessInfo { pid, used_gpu_memory: used, gpu_instance_id: None, compute_instance_id: None };
        let registry = ProcessRegistry::new();
        registry.register(7, "TTS");
        let merged = merge_processes(
            [
                info(7, UsedGpuMemory::Used(100 * 1024 * 1024)),
                info(9, UsedGpuMemory::Unavailable),
                info(7, UsedGpuMemory::Used(300 * 1024 * 1024)),
            ]
            .into_iter(),
            &registry,
        );
        assert_eq!(
            merged,
            vec![
                GpuProcess { pid: 7, used_mb: Some(300), service: Some("TTS".into()) },
                GpuProcess { pid: 9, used_mb: None, service: None },
            ]
        );
    }
}
