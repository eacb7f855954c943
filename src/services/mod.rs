//! The service startup controller: starts the node's model services one load at a time (or up to
//! `maxConcurrentStarts`), in dependency order, each only once its GPU has room, and reports each
//! as ready only after a real readiness check; a service that is not ready in time fails, it is
//! never assumed ready. Processes run in their own process groups, die with the host (what they
//! forked too: on Unix a small watchdog process kills their groups), and are always reaped.
//!
//! No Node types here: the binding wraps [`Supervisor`], forwards its event receiver, and plugs
//! telemetry ([`VramSource`]) and the arbiter ([`StartupLease`]) in through [`SupervisorHooks`].

mod config;
mod descendants;
mod events;
mod hooks;
mod host_death;
mod host_memory;
mod lease_ledger;
mod log_file;
pub mod manifest;
pub mod needs;
mod notify;
mod port;
mod probe;
mod process;
mod profile;
mod restart_budget;
mod supervisor;
#[cfg(test)]
mod tests;

pub use config::{
    ExpectStatus, GpuNeed, HttpProbe, HttpUrl, LivenessCheck, LivenessConfig, LogLineProbe, Megabytes, Millis, NoProbe,
    Pattern, Port, Readiness, RestartConfig, RestartPolicy, ServiceSpec, ServicesConfig, StopSignal, TcpProbe,
    AUTO_GPU_KEY,
};
pub(crate) use descendants::{ProcEntry, ProcSource, Procfs};
pub(crate) use events::epoch_ms;
pub use events::{ExitInfo, ListenerNote, OutputStream, ServiceEvent, ServiceEventKind};
pub use hooks::{
    spawn_env_from_json, LeaseFuture, LeaseGuard, LoadSeen, SpawnEnv, SpawnEnvFuture, StartupLease, TaskRoutes,
    VramReading, VramSource,
};
pub use host_memory::{tree_rss_mb, Admission, HostBudget, HostBudgetAnswer, HostMemReading, HostMemorySource};
pub use lease_ledger::{AttributedLease, ServiceLeases};
pub use notify::NOTIFY_FD_ENV;
pub use port::{port_holder, port_is_free, PortHolder};
pub use profile::{LearnedProfile, PeakVram, PeakVramMethod};
pub use supervisor::{
    FailureRecord, LastExit, LeaseChange, ReadingGate, ServiceOutcome, ServiceState, ServiceStatus, ServicesRefresh,
    ServicesSource, ServicesUpdate, StartAllOptions, StartOutcome, Supervisor, SupervisorHooks, WaitReason,
};
