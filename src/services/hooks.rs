//! What the supervisor needs from the rest of the addon: VRAM readings (from telemetry), an
//! optional startup lease and a place to send task-type routes (both from the arbiter). All are
//! traits so the core stays testable.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;

use crate::error::SidecarResult;

/// Free (and used) memory on one GPU as of one telemetry sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VramReading {
    /// Free memory (MB) on the GPU when the sample was taken.
    pub free_mb: u64,
    /// Memory (MB) in use on the GPU, all processes together, when the source reports it: a
    /// load's peak is learned from its rise where per-process figures do not exist.
    pub used_mb: Option<u64>,
    /// When the sample was taken, ms since the Unix epoch: memory allocated after it is not in
    /// `free_mb` yet.
    pub sampled_at_ms: u64,
}

/// Live GPU memory readings. `None` means no telemetry for that GPU or process.
pub trait VramSource: Send + Sync {
    /// The latest free-memory reading for the GPU named `gpu_key`.
    fn free_mb(&self, gpu_key: &str) -> Option<VramReading>;
    /// The keys of the GPUs the source knows now (not lost), in its order: where a service with
    /// `gpu.key: 'auto'` may be placed.
    fn gpu_keys(&self) -> Vec<String> {
        Vec::new()
    }
    /// GPU memory (MB) used by process `pid`.
    fn process_used_mb(&self, pid: u32) -> Option<u64>;
    /// The UUID of the GPU named `gpu_key` (`GPU-…`), when the source knows it.
    fn gpu_uuid(&self, _gpu_key: &str) -> Option<String> {
        None
    }
    /// Whether a reading is on its way: a Telemetry is attached and has not taken (or been pushed)
    /// its first sample yet. The gates wait for it instead of turning off: at boot, "no reading
    /// yet" is not "no GPU" (seed 000 happens at boot).
    fn first_reading_pending(&self) -> bool {
        false
    }
    /// Why there is no reading for `gpu_key`, for the `vram-gate-off` event and `NO_GPU`.
    fn no_reading_reason(&self, gpu_key: &str) -> String {
        if gpu_key == crate::services::AUTO_GPU_KEY {
            "the VRAM telemetry lists no GPU".into()
        } else {
            "no VRAM telemetry for this GPU".into()
        }
    }
}

/// Held while a GPU service loads; dropping it releases the lease.
pub type LeaseGuard = Box<dyn Any + Send>;

/// The future [`StartupLease::acquire`] returns.
pub type LeaseFuture<'a> = Pin<Box<dyn Future<Output = SidecarResult<LeaseGuard>> + Send + 'a>>;

/// Serializes model loads on a GPU (the binding backs it with the arbiter). The supervisor
/// acquires it before a GPU service is spawned and drops the guard once the service is ready or
/// has failed.
pub trait StartupLease: Send + Sync {
    /// Resolves once `service` may load onto `gpu_key`; an error fails that start.
    fn acquire<'a>(&'a self, service: &'a str, gpu_key: &'a str) -> LeaseFuture<'a>;
}

/// How the supervisor tells the attached arbiter where task types go, and whether their service
/// is loaded (the binding backs it with the attached arbiter). Calls may arrive with no arbiter
/// attached; they are then dropped. Each method does nothing by default.
pub trait TaskRoutes: Send + Sync {
    /// Where requests of each task type go (`(task type, GPU key)` pairs, as
    /// [`crate::services::Supervisor::task_type_gpus`] gives them). Told again whenever a service
    /// with `gpu.key: 'auto'` is placed.
    fn routes_changed(&self, _routes: Vec<(String, String)>) {}
    /// `task_types` are served by an on-demand service that is not loaded: their requests queue,
    /// may wait `load_allowance_ms` longer than their `maxWaitMs`, and the first one asks for it.
    fn standby(&self, _task_types: &[String], _load_allowance_ms: u64) {}
    /// Their service is being started (waiting for memory, evicting, loading): their requests
    /// wait for the start to end, however long it takes; the start bounds itself.
    fn starting(&self, _task_types: &[String]) {}
    /// Their service is ready: what waited for it may be granted.
    fn ready(&self, _task_types: &[String]) {}
    /// Their service could not be started: what waits settles with `SERVICE_UNAVAILABLE`.
    fn unavailable(&self, _task_types: &[String]) {}
}
