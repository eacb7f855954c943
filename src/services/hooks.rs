//! What the supervisor needs from the rest of the addon: free VRAM readings (from telemetry) and
//! an optional startup lease (from the arbiter). Both are traits so the core stays testable.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;

use crate::error::SidecarResult;

/// Free memory on one GPU as of one telemetry sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VramReading {
    /// Free memory (MB) on the GPU when the sample was taken.
    pub free_mb: u64,
    /// When the sample was taken, ms since the Unix epoch: memory allocated after it is not in
    /// `free_mb` yet.
    pub sampled_at_ms: u64,
}

/// Live GPU memory readings. `None` means no telemetry for that GPU or process.
pub trait VramSource: Send + Sync {
    /// The latest free-memory reading for the GPU named `gpu_key`.
    fn free_mb(&self, gpu_key: &str) -> Option<VramReading>;
    /// GPU memory (MB) used by process `pid`.
    fn process_used_mb(&self, pid: u32) -> Option<u64>;
    /// The UUID of the GPU named `gpu_key` (`GPU-…`), when the source knows it.
    fn gpu_uuid(&self, _gpu_key: &str) -> Option<String> {
        None
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

/// Tells the arbiter which task types have no loaded service, so their requests wait for it
/// (the binding backs it with the attached arbiter). Calls may arrive with no arbiter attached;
/// they are then dropped.
pub trait TaskRoutes: Send + Sync {
    /// `task_types` are served by an on-demand service that is not loaded: their requests queue,
    /// may wait `load_allowance_ms` longer than their `maxWaitMs`, and the first one asks for it.
    fn standby(&self, task_types: &[String], load_allowance_ms: u64);
    /// Their service is ready: what waited for it may be granted.
    fn ready(&self, task_types: &[String]);
    /// Their service could not be started: what waits settles with `SERVICE_UNAVAILABLE`.
    fn unavailable(&self, task_types: &[String]);
}
