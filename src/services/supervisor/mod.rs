//! The supervisor: starts services in dependency order with a bound on concurrent loads, gates
//! GPU services on free VRAM, waits for real readiness, watches them once ready (liveness, and
//! their leases' watchdog revokes), restarts by policy, and stops them.
//!
//! Each started service is driven by one runner task that owns its process from the first start
//! attempt to its final state (ready-and-running, failed or stopped); `stop` asks the runner to
//! end and waits for it, so a stop never races with a start. By phase:
//! - `schedule`: which service starts when (dependencies, start slots), and stops;
//! - `restart`: the runner: attempts, what ends a run, and the restart decision;
//! - `attempt`: one start (lease, VRAM gate, port, spawn) up to readiness or its deadline;
//! - `readiness`: one method per readiness kind;
//! - `liveness`: checks after ready, and the hang seen through the service's leases;
//! - `ports`: a stale port reclaimed, a port waited free after a stop;
//! - `placement`: which GPU a service runs on (`gpu.key: 'auto'` is placed at each start);
//! - `vram_gate`: free VRAM before a GPU load;
//! - `vram_peak`: the VRAM a service uses (per process, or its GPU's rise over a lone load);
//! - `host_gate`: available host memory (and no swapping) before any start, and the peak RSS of
//!   each service's process tree, learned.

mod attempt;
mod evict;
mod first_reading;
mod host_gate;
mod liveness;
mod on_demand;
mod placement;
mod ports;
mod readiness;
mod restart;
mod schedule;
mod vram_gate;
mod vram_peak;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

pub use first_reading::ReadingGate;

use super::config::{ServiceSpec, ServicesConfig};
use super::events::{epoch_ms, ExitInfo, ServiceEvent, ServiceEventKind};
use super::hooks::{LeaseGuard, SpawnEnv, StartupLease, TaskRoutes, VramSource};
use super::host_death::HostDeathWatchdog;
use super::host_memory::{HostBudget, HostMemorySource};
use super::lease_ledger::{AttributedLease, ServiceLeases};
use super::notify::NotifySeen;
use super::process::{OutputSink, ServiceProcess};
use super::profile::{LearnedProfile, ProfileStore};
use super::restart_budget::RestartBudget;
use crate::error::{ErrorCode, SidecarError, SidecarResult};

use host_gate::{HostLoad, RssSampler};
use vram_peak::{GpuLoads, VramSampler};

/// How long to wait for the rest of a dead process's output before reporting its last lines.
const OUTPUT_DRAIN: Duration = Duration::from_millis(500);

/// Where a service is in its life (`ServiceStatus.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "ServiceStateName")]
pub enum ServiceState {
    /// Never started.
    Idle,
    /// Waiting for a lease or VRAM, spawned and not ready yet.
    Starting,
    Ready,
    /// Exited (or was stopped as unhealthy or hung) and waiting for its restart backoff.
    Restarting,
    Stopping,
    Stopped,
    Failed,
    /// Not started because a dependency is not ready.
    Blocked,
}

impl ServiceState {
    /// Whether a start has come to an end (for good or bad).
    fn is_settled(self) -> bool {
        !matches!(self, ServiceState::Starting | ServiceState::Restarting | ServiceState::Stopping)
    }
}

/// What a start is waiting for, shown in its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(rename = "ServiceWaitReason")]
pub enum WaitReason {
    /// The host-memory gate: too little available, or the host is swapping.
    #[serde(rename = "waiting-host-memory")]
    HostMemory,
    /// A gate waits for the attached Telemetry's first reading (see the `telemetry-wait` event).
    #[serde(rename = "waiting-telemetry")]
    Telemetry,
}

/// A failure a service had, restarted from or not.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[schemars(rename = "ServiceFailure")]
pub struct FailureRecord {
    /// Epoch ms.
    #[serde(rename = "at")]
    pub at_ms: u64,
    pub error: SidecarError,
}

/// A snapshot of one service (`ServiceSupervisor#status`); `null` where a field does not apply.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    pub name: String,
    pub state: ServiceState,
    /// The process (and process group) id while it runs.
    pub pid: Option<u32>,
    /// Restarts since the last explicit start.
    pub restarts: u32,
    /// The backoff step: restarts since the start or the last stable run (`resetAfterMs`).
    pub attempt: u32,
    /// When the pending restart is due (epoch ms), while restarting.
    #[serde(rename = "nextRestartAt")]
    pub next_restart_at_ms: Option<u64>,
    /// The latest failure (an exit, failed liveness, a hang, a failed start).
    pub last_failure: Option<FailureRecord>,
    /// Spawn to ready, for the current run.
    pub time_to_ready_ms: Option<u64>,
    /// Why it failed, while `failed`.
    pub error: Option<SidecarError>,
    /// The dependency that was not ready, while `blocked`.
    pub blocked_by: Option<String>,
    /// The latest notify `STATUS=` text of this run.
    pub notify_status: Option<String>,
    /// The last 50 output lines of this (or the last) run, oldest first.
    pub last_lines: Vec<String>,
    /// The GPU of this (or the last) run: its `gpu.key`, or where `'auto'` placed it; `null`
    /// for a CPU service and an `'auto'` one not placed yet.
    pub gpu_key: Option<String>,
    // Leases of its `gpu.taskTypes` in the attached arbiter (no doc here: json-schema-to-typescript
    // would make a second `ServiceLeases` type for a documented reference).
    pub leases: ServiceLeases,
    pub learned: LearnedProfile,
    /// Why its start waits, while it waits: `'waiting-host-memory'` (too little host memory
    /// available for it, or the host swapping), `'waiting-telemetry'` (a gate waits for the
    /// attached Telemetry's first reading).
    pub waiting: Option<WaitReason>,
    /// When its running process was spawned (epoch ms), while it has one.
    #[serde(rename = "startedAt")]
    pub started_at_ms: Option<u64>,
    /// How its last process ended (by itself, or stopped), and when; `null` until one has.
    pub last_exit: Option<LastExit>,
}

/// How a service's last process ended (`ServiceStatus.lastExit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
pub struct LastExit {
    /// Its exit code, when it exited by itself.
    pub code: Option<i32>,
    /// The signal that ended it, on Unix (`'SIGTERM'`, `'SIGKILL'`, ...).
    #[serde(serialize_with = "super::events::serialize_signal")]
    #[schemars(with = "Option<String>")]
    pub signal: Option<i32>,
    /// When it was seen to end (epoch ms).
    #[serde(rename = "at")]
    pub at_ms: u64,
}

/// How one service's start ended. JS sees `status` (the variant's name in lowercase) and the
/// fields in camelCase, next to the outcome's `service`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(tag = "status", rename_all = "lowercase", rename_all_fields = "camelCase")]
pub enum StartOutcome {
    /// Ready, `timeToReadyMs` after its (last) spawn.
    Ready { time_to_ready_ms: u64 },
    /// Failed for good; `lastLines` is the end of its output, when it ran.
    Failed { error: SidecarError, last_lines: Vec<String> },
    /// Not started: `dependency` did not become ready.
    Blocked { dependency: String },
    /// Stopped before it became ready (or the supervisor was closed).
    Stopped,
}

/// What `startAll` starts (`supervisor.startAll({ only: [...] })`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "StartAllOptions")]
pub struct StartAllOptions {
    /// Only these services (by name) and the services they depend on, for a node that starts
    /// what its user switched on: `{ only: Object.keys(prefs).filter((id) => prefs[id]) }`.
    /// Order, `maxConcurrentStarts` and every gate hold as for a plain `startAll()`; on-demand
    /// services stay on demand. Absent: every service that is not on demand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<String>")]
    pub only: Option<Vec<String>>,
}

impl StartAllOptions {
    /// Parses `startAll`'s argument; errors are `INVALID_ARGUMENT` with the JSON path
    /// (`options.only[1]: expected a string, got 3`).
    pub fn from_json(value: &serde_json::Value) -> SidecarResult<Self> {
        crate::config::parse_section(value, "options", &mut Vec::new())
            .map_err(|e| SidecarError::invalid_argument(e.message))
    }
}

/// What a run-time update of the services did (`setServices`, `refresh`), by service name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(rename = "ServicesUpdate")]
pub struct ServicesUpdate {
    /// New services (not started).
    pub added: Vec<String>,
    /// Services whose config changed (in effect at their next start).
    pub changed: Vec<String>,
    /// Services stopped and dropped.
    pub removed: Vec<String>,
}

/// Where `refresh` reads the services from: a `services` section as written (its `manifests`
/// folders and `services[]` overrides, or a plain list) and the folder its relative paths start
/// from (the config file's, or the working directory at construction).
#[derive(Debug, Clone, PartialEq)]
pub struct ServicesSource {
    pub section: serde_json::Value,
    pub base_dir: std::path::PathBuf,
}

/// What `refresh` did: the update, and why each manifest file was skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(rename = "ServicesRefresh")]
pub struct ServicesRefresh {
    #[serde(flatten)]
    pub update: ServicesUpdate,
    /// One per manifest file skipped (bad JSON, a missing field, a duplicate id, ...).
    pub diagnostics: Vec<crate::services::manifest::ManifestDiagnostic>,
}

/// How one service's start ended: what `startAll`, `start` and `restart` resolve with.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct ServiceOutcome {
    pub service: String,
    #[serde(flatten)]
    pub outcome: StartOutcome,
}

/// A lease change in the attached arbiter, as the supervisor attributes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseChange {
    Acquired {
        lease_id: String,
        task_type: String,
        gpu_key: String,
    },
    /// Released, or dropped for a reason other than the watchdog (the arbiter closed).
    Released {
        lease_id: String,
    },
    /// Taken back by the arbiter's hold watchdog.
    Revoked {
        lease_id: String,
        task_type: String,
        gpu_key: String,
    },
}

/// What the supervisor uses from the rest of the addon; all are optional.
#[derive(Clone, Default)]
pub struct SupervisorHooks {
    /// Free VRAM readings; without it the VRAM gate is off (and says so in events), and
    /// `gpu.key: 'auto'` services cannot be placed.
    pub vram: Option<Arc<dyn VramSource>>,
    /// Taken around each GPU service's load when `gpuStartupLease` is set.
    pub startup_lease: Option<Arc<dyn StartupLease>>,
    /// Told where task types go when an `auto` service is placed, and when on-demand services'
    /// task types lose or regain their loaded service.
    pub task_routes: Option<Arc<dyn TaskRoutes>>,
    /// Host memory readings; without it the host-memory gate is off.
    pub host_memory: Option<Arc<dyn HostMemorySource>>,
    /// Asked for extra environment just before each spawn.
    pub spawn_env: Option<Arc<dyn SpawnEnv>>,
}

/// Starts, watches and stops the configured services. Dropping it kills every service it runs;
/// [`Supervisor::close`] stops them gracefully instead.
pub struct Supervisor {
    shared: Arc<Shared>,
}

/// One service, from the update that added it on: its spec (replaced by an update that changes
/// it; a runner keeps the one it started with), its runtime state, and whether it was removed.
/// Slots are never dropped while the supervisor lives, so an index stays valid for its runners.
struct Slot {
    spec: Mutex<Arc<ServiceSpec>>,
    /// The JSON the spec was read from: an update changes a service when this differs.
    source: Mutex<serde_json::Value>,
    cell: Mutex<Cell>,
    removed: AtomicBool,
}

struct Shared {
    /// The supervisor-wide settings; its `services` are moved into `slots`.
    config: ServicesConfig,
    slots: boxcar::Vec<Slot>,
    /// The live services in config order, and in start order (dependencies first).
    listed: Mutex<Vec<usize>>,
    order: Mutex<Vec<usize>>,
    /// Held while `set_services` applies an update, so updates apply one at a time.
    updating: tokio::sync::Mutex<()>,
    /// What `refresh` re-reads.
    source: Mutex<Option<ServicesSource>>,
    hooks: SupervisorHooks,
    events: mpsc::UnboundedSender<ServiceEvent>,
    /// One permit per service allowed to be loading at once.
    start_slots: Arc<tokio::sync::Semaphore>,
    profiles: Mutex<ProfileStore>,
    /// Bumped on every state change, so schedulers can wait for "something changed".
    changes: watch::Sender<u64>,
    closed: AtomicBool,
    /// Loads under way on each GPU (for learning peak VRAM from a lone load).
    gpu_loads: Arc<GpuLoads>,
    /// Held while an `auto` service is placed, so placements see each other.
    placing: Mutex<()>,
    /// Kills the services' process groups if the host dies; started with the first service and
    /// let go by `close` (each running service holds it too, until its group is killed).
    host_death_watchdog: Mutex<Option<Arc<HostDeathWatchdog>>>,
    /// The arbiter's policy priority per task type (as of `attachArbiter`), for eviction order.
    task_priorities: Mutex<std::collections::HashMap<String, u64>>,
    /// Held while a start is checked against the host-memory budget and counted in it, so two
    /// starts never both take the same memory.
    host_gating: Mutex<()>,
    /// Held while a GPU start is checked against a VRAM reading and, if it fits, marked as on
    /// its way, so two starts never both take the same free memory.
    vram_gating: Mutex<()>,
}

/// Why a ready service was declared hung.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HungReport {
    lease_ids: Vec<String>,
}

struct Cell {
    state: ServiceState,
    pid: Option<u32>,
    /// When the running process was spawned (ms since the Unix epoch), so the VRAM gate can tell
    /// whether a reading already shows its memory; `u64::MAX` while the spawn is under way.
    spawned_at_ms: Option<u64>,
    /// Where `gpu.key: 'auto'` placed the service for its current (or last) run.
    gpu_key: Option<String>,
    restarts: u32,
    budget: RestartBudget,
    next_restart_at_ms: Option<u64>,
    last_failure: Option<FailureRecord>,
    time_to_ready_ms: Option<u64>,
    error: Option<SidecarError>,
    last_lines: Vec<String>,
    blocked_by: Option<String>,
    notify_status: Option<String>,
    /// The current run's output, for `lastLines`.
    sink: Option<Arc<OutputSink>>,
    leases: ServiceLeases,
    /// Set with `alarm` when the service is found hung while ready.
    hung: Option<HungReport>,
    alarm: Arc<Notify>,
    runner: Option<Runner>,
    /// When it last became ready, held or gave back a lease, or was ensured (epoch ms): its
    /// idle time for `keepAliveMs`, and its recency for eviction.
    last_used_ms: u64,
    /// The host memory its start was admitted with, counted against later starts until a reading
    /// taken after it was ready shows it.
    host_load: Option<HostLoad>,
    /// Why its start is waiting, while it waits.
    waiting: Option<WaitReason>,
    last_exit: Option<LastExit>,
}

impl Cell {
    fn new() -> Self {
        Self {
            state: ServiceState::Idle,
            pid: None,
            spawned_at_ms: None,
            gpu_key: None,
            restarts: 0,
            budget: RestartBudget::default(),
            next_restart_at_ms: None,
            last_failure: None,
            time_to_ready_ms: None,
            error: None,
            last_lines: Vec::new(),
            blocked_by: None,
            notify_status: None,
            sink: None,
            leases: ServiceLeases::default(),
            hung: None,
            alarm: Arc::new(Notify::new()),
            runner: None,
            last_used_ms: 0,
            host_load: None,
            waiting: None,
            last_exit: None,
        }
    }

    /// Forgets the process once it is gone.
    fn clear_process(&mut self) {
        self.pid = None;
        self.spawned_at_ms = None;
    }
}

struct Runner {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// A stop found this run running (or stopping): its port is waited for once it ends.
    stopped_running: bool,
}

/// Aborts a task when dropped (a helper task must not outlive what it serves).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How one start attempt ended.
enum Attempt {
    Ready(Box<Launched>),
    Exited { exit: ExitInfo, last_lines: Vec<String>, ran: Duration },
    Failed { error: SidecarError, last_lines: Vec<String> },
    Stopped,
}

/// A spawned, ready process with what watches it.
struct Launched {
    process: ServiceProcess,
    sink: Arc<OutputSink>,
    vram_peak: Option<VramSampler>,
    /// Its process tree's resident memory, sampled.
    rss_peak: Option<RssSampler>,
    /// What the service said on its notify pipe, when it has one.
    notify: Option<watch::Receiver<NotifySeen>>,
    _notify_reader: Option<AbortOnDrop>,
    spawned: Instant,
    /// The startup lease its load held: given back once `ready` is announced, so the lease's
    /// release is never stamped before the ready it covers.
    startup_lease: Option<LeaseGuard>,
}

impl Supervisor {
    /// A supervisor for `config` (validated by [`ServicesConfig::from_json`]) and the receiver
    /// of its events; events queue up unread until the receiver is read or dropped. Nothing
    /// starts until `start_all` or `start` is called; those need a tokio runtime.
    pub fn new(mut config: ServicesConfig, hooks: SupervisorHooks) -> (Self, mpsc::UnboundedReceiver<ServiceEvent>) {
        let (events, receiver) = mpsc::unbounded_channel();
        let order = config.start_order();
        let services = std::mem::take(&mut config.services);
        let sources = std::mem::take(&mut config.sources);
        let slots = boxcar::Vec::new();
        for (n, spec) in services.into_iter().enumerate() {
            slots.push(Slot::new(spec, sources.get(n).cloned().unwrap_or_default()));
        }
        let shared = Shared {
            listed: Mutex::new((0..slots.count()).collect()),
            order: Mutex::new(order),
            slots,
            updating: tokio::sync::Mutex::new(()),
            source: Mutex::new(None),
            start_slots: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_starts.get() as usize)),
            profiles: Mutex::new(ProfileStore::load(config.state_file.as_deref())),
            config,
            hooks,
            events,
            changes: watch::channel(0).0,
            closed: AtomicBool::new(false),
            gpu_loads: Arc::default(),
            placing: Mutex::new(()),
            host_death_watchdog: Mutex::new(None),
            task_priorities: Mutex::new(Default::default()),
            host_gating: Mutex::new(()),
            vram_gating: Mutex::new(()),
        };
        (Self { shared: Arc::new(shared) }, receiver)
    }

    /// Starts every service but the on-demand ones, dependencies first, and resolves when each
    /// is ready or has definitively failed (after its restarts), with one outcome per service in
    /// start order.
    pub async fn start_all(&self) -> SidecarResult<Vec<ServiceOutcome>> {
        self.start_chosen(&StartAllOptions::default()).await
    }

    /// [`Supervisor::start_all`] narrowed by `options.only`: the named services and what they
    /// depend on, in the same start order, under the same start slots and gates. On-demand
    /// services stay on demand even when named. An unknown name fails the whole call with
    /// `UNKNOWN_SERVICE` before anything starts.
    pub async fn start_chosen(&self, options: &StartAllOptions) -> SidecarResult<Vec<ServiceOutcome>> {
        self.shared.check_open()?;
        let chosen = match &options.only {
            None => None,
            Some(names) => {
                let mut chosen = std::collections::HashSet::new();
                for (n, name) in names.iter().enumerate() {
                    let i = self
                        .shared
                        .index(name)
                        .map_err(|e| SidecarError::new(e.code, format!("options.only[{n}]: {}", e.message)))?;
                    chosen.extend(self.shared.with_dependencies(i));
                }
                Some(chosen)
            }
        };
        let targets: Vec<usize> = self
            .shared
            .order()
            .into_iter()
            .filter(|&i| !self.shared.spec(i).on_demand && chosen.as_ref().is_none_or(|c| c.contains(&i)))
            .collect();
        Ok(self.shared.schedule(&targets).await)
    }

    /// Starts one service and the services it depends on; a service already running or starting
    /// is not started twice. Resolves with the named service's outcome.
    pub async fn start(&self, name: &str) -> SidecarResult<StartOutcome> {
        self.shared.check_open()?;
        let i = self.shared.index(name)?;
        let targets = self.shared.with_dependencies(i);
        let outcomes = self.shared.schedule(&targets).await;
        Ok(outcomes.into_iter().find(|o| o.service == name).expect("target has an outcome").outcome)
    }

    /// The part of [`Supervisor::stop`] that takes effect at once: a running (or starting, or
    /// restarting) service reads `stopping` from this call on, a `stopping` event is sent, and
    /// its runner is told to stop. A host calls it in the same turn as the stop it was asked
    /// for, so its UI never shows a slow-to-exit service as ready; `stop` then waits for the end.
    pub fn begin_stop(&self, name: &str) -> SidecarResult<()> {
        let i = self.shared.index(name)?;
        self.shared.begin_stop(i);
        Ok(())
    }

    /// Stops one service (its stop signal, then SIGKILL after `stopTimeoutMs`) and waits until its
    /// process group is gone and its port free (at most `portReleaseTimeoutMs`). Services that
    /// depend on it are left alone.
    pub async fn stop(&self, name: &str) -> SidecarResult<()> {
        let i = self.shared.index(name)?;
        self.shared.stop(i).await;
        Ok(())
    }

    /// Replaces the service list at run time, keeping the runtime state of every service that
    /// stays: a new service is added (not started), a removed one is stopped then dropped, a
    /// changed one takes effect at its next start (a running one keeps running). Its dependents
    /// that stay are blocked at their next start, naming it. `services` is the `services` array
    /// of a config; an invalid one changes nothing and fails with `INVALID_CONFIG` and its JSON
    /// path (`services[2].command: ...`). The supervisor-wide settings are not changed here.
    pub async fn set_services(&self, services: &serde_json::Value) -> SidecarResult<ServicesUpdate> {
        self.shared.check_open()?;
        let _updating = self.shared.updating.lock().await;
        // Any name this supervisor has known may be a dangling dependency: it blocks, not fails.
        let known = self.known_names();
        let known: Vec<&str> = known.iter().map(String::as_str).collect();
        let mut warnings = Vec::new();
        let config = ServicesConfig::update_from_json(services, &known, &mut warnings)?;
        crate::error::log_warnings(&warnings);
        Ok(self.apply_update(config).await)
    }

    /// Applies a validated service list (with the `updating` lock held): stops the services that
    /// leave, changes and adds the rest, then drops the ones that left.
    async fn apply_update(&self, config: ServicesConfig) -> ServicesUpdate {
        let shared = &self.shared;
        let mut update = ServicesUpdate::default();
        let leaving: Vec<usize> =
            shared.listed().into_iter().filter(|&i| config.index_of(&shared.spec(i).name).is_none()).collect();
        for &i in &leaving {
            shared.stop(i).await;
        }
        let mut listed = Vec::with_capacity(config.services.len());
        for (n, spec) in config.services.iter().enumerate() {
            let source = config.sources.get(n).cloned().unwrap_or_default();
            match shared.find(&spec.name) {
                Some(i) => {
                    let slot = &shared.slots[i];
                    let mut was = slot.source.lock().expect("source lock");
                    if *was != source {
                        *was = source;
                        *slot.spec.lock().expect("spec lock") = Arc::new(spec.clone());
                        drop(was);
                        update.changed.push(spec.name.clone());
                        shared.emit(i, ServiceEventKind::Changed);
                    }
                    listed.push(i);
                }
                None => {
                    let i = shared.slots.push(Slot::new(spec.clone(), source));
                    update.added.push(spec.name.clone());
                    shared.emit(i, ServiceEventKind::Added);
                    listed.push(i);
                }
            }
        }
        for &i in &leaving {
            shared.slots[i].removed.store(true, Ordering::SeqCst);
            update.removed.push(shared.spec(i).name.clone());
            shared.emit(i, ServiceEventKind::Removed);
        }
        let order = config.start_order().into_iter().map(|n| listed[n]).collect();
        *shared.listed.lock().expect("listed lock") = listed;
        *shared.order.lock().expect("order lock") = order;
        shared.changes.send_modify(|n| *n += 1);
        if let Some(routes) = &shared.hooks.task_routes {
            routes.routes_changed(shared.task_type_gpus());
        }
        update
    }

    /// Every service name this supervisor has had, removed ones included.
    fn known_names(&self) -> Vec<String> {
        self.shared.slots.iter().map(|(i, _)| self.shared.spec(i).name.clone()).collect()
    }

    /// Sets what [`Supervisor::refresh`] re-reads.
    pub fn set_source(&self, source: ServicesSource) {
        *self.shared.source.lock().expect("source lock") = Some(source);
    }

    /// Re-reads the services: the source's `manifests` folders again (a service package
    /// installed or removed), with its overrides, then applies the result as
    /// [`Supervisor::set_services`] does. Without a source (or one with no `manifests`) the list
    /// is read again as it was given: nothing changes. Errors as `set_services`, and
    /// `MANIFESTS_NOT_FOUND` for a folder that is gone; nothing changes then.
    pub async fn refresh(&self) -> SidecarResult<ServicesRefresh> {
        let source = self.shared.source.lock().expect("source lock").clone();
        let Some(source) = source else {
            return Ok(ServicesRefresh::default());
        };
        self.apply_source(&source).await
    }

    /// A new `services` section for the same source (a watched config file was edited): applied
    /// as `refresh` applies one, and kept as the source only when it applied.
    pub async fn apply_section(&self, section: serde_json::Value) -> SidecarResult<ServicesRefresh> {
        let base_dir = self.shared.source.lock().expect("source lock").as_ref().map(|s| s.base_dir.clone());
        let source = ServicesSource { section, base_dir: base_dir.unwrap_or_default() };
        let refreshed = self.apply_source(&source).await?;
        self.set_source(source);
        Ok(refreshed)
    }

    async fn apply_source(&self, source: &ServicesSource) -> SidecarResult<ServicesRefresh> {
        self.shared.check_open()?;
        let _updating = self.shared.updating.lock().await;
        let mut warnings = Vec::new();
        let known = self.known_names();
        let known: Vec<&str> = known.iter().map(String::as_str).collect();
        let resolved = crate::services::manifest::resolve_services_section_allowing(
            &source.section,
            &source.base_dir,
            &known,
            &mut warnings,
        )?;
        crate::error::log_warnings(&warnings);
        // Validated as a whole by the resolution: applied as it is, not read again.
        let update = self.apply_update(resolved.config).await;
        let diagnostics = resolved.expanded.map(|e| e.diagnostics).unwrap_or_default();
        Ok(ServicesRefresh { update, diagnostics })
    }

    /// Stops then starts one service.
    pub async fn restart(&self, name: &str) -> SidecarResult<StartOutcome> {
        self.stop(name).await?;
        self.start(name).await
    }

    /// Stops every service in reverse dependency order: each one only once everything that
    /// depends on it has stopped.
    pub async fn stop_all(&self) {
        for &i in self.shared.order().iter().rev() {
            self.shared.stop(i).await;
        }
    }

    /// Stops everything (as `stop_all`) and refuses later starts with `CLOSED`.
    pub async fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.stop_all().await;
        // Nothing runs any more: let the watchdog exit (and be reaped) now, not at drop.
        self.shared.host_death_watchdog.lock().expect("watchdog lock").take();
    }

    /// The pid of the host-death watchdog process, once one runs.
    pub fn host_death_watchdog_pid(&self) -> Option<u32> {
        self.shared.host_death_watchdog.lock().expect("watchdog lock").as_ref().map(|w| w.pid())
    }

    /// One service's status.
    pub fn status(&self, name: &str) -> SidecarResult<ServiceStatus> {
        Ok(self.shared.status(self.shared.index(name)?))
    }

    /// Every service's status, in config order.
    pub fn statuses(&self) -> Vec<ServiceStatus> {
        self.shared.listed().into_iter().map(|i| self.shared.status(i)).collect()
    }

    /// What the host can take on now: available memory (the attached telemetry's latest
    /// reading) less `hostMemHeadroomMb` and less what the loads on their way are still expected
    /// to take. `None` without a host memory reading.
    pub fn host_budget(&self) -> Option<HostBudget> {
        self.shared.host_budget()
    }

    /// `(task type, GPU key)` for each task type a GPU service claims: where requests of that
    /// type belong, since the model that serves them is loaded there. A service with
    /// `gpu.key: 'auto'` has no routes until it is first placed.
    pub fn task_type_gpus(&self) -> Vec<(String, String)> {
        self.shared.task_type_gpus()
    }

    /// Whether any service claims task types (so lease changes are worth reporting).
    pub fn attributes_leases(&self) -> bool {
        // Over every slot, removed ones too: whether to attribute is decided once, at attach.
        self.shared
            .slots
            .iter()
            .any(|(i, _)| self.shared.spec(i).gpu.as_ref().is_some_and(|g| !g.task_types.is_empty()))
    }

    /// Attributes a lease change at `now_ms` (epoch) to the service that serves its task type.
    /// Watchdog revokes of a ready service's leases, `hangAfterRevokes` of them within
    /// `hangWindowMs`, declare it hung: its runner stops it and restarts it by its policy.
    pub fn observe_lease(&self, change: LeaseChange, now_ms: u64) {
        self.shared.observe_lease(change, now_ms);
    }

    /// The arbiter was detached (or replaced): the leases attributed from it are no longer
    /// followed, so none is shown as active. Counts and the last grant stay.
    pub fn forget_active_leases(&self) {
        for (i, _) in self.shared.slots.iter() {
            self.shared.cell(i).leases.active.clear();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Aborting a runner drops its process, which kills the process group.
        let mut killed = Vec::new();
        for (i, slot) in self.shared.slots.iter() {
            let cell = slot.cell.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(runner) = &cell.runner {
                if cell.pid.is_some() && !runner.task.is_finished() {
                    killed.push(self.shared.spec(i).name.clone());
                }
                runner.task.abort();
            }
        }
        if !killed.is_empty() && !self.shared.closed.load(Ordering::SeqCst) {
            // Said out loud: a host that lost its last reference (a CommonJS local no closure
            // holds, say) sees its services vanish, and this line says why.
            tracing::warn!(
                services = %killed.join(", "),
                "a ServiceSupervisor was dropped without close() (garbage-collected, or its worker ended); its running services were killed"
            );
        }
    }
}

async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    // A dropped sender also ends the wait: nobody is left to keep the service.
    let _ = stop.wait_for(|requested| *requested).await;
}

impl Shared {
    /// The running watchdog, started on first use. Without one (no `/bin/sh`, or Windows, whose
    /// job objects do this job) services still die with the host, only their children may not.
    fn host_death_watchdog(&self) -> Option<Arc<HostDeathWatchdog>> {
        let mut watchdog = self.host_death_watchdog.lock().expect("watchdog lock");
        if watchdog.is_none() {
            *watchdog = HostDeathWatchdog::start().ok();
        }
        watchdog.clone()
    }

    fn check_open(&self) -> SidecarResult<()> {
        if self.closed.load(Ordering::SeqCst) {
            Err(SidecarError::new(ErrorCode::Closed, "the service supervisor is closed"))
        } else {
            Ok(())
        }
    }

    /// The live service called `name`.
    fn find(&self, name: &str) -> Option<usize> {
        self.listed().into_iter().find(|&i| self.spec(i).name == name)
    }

    fn index(&self, name: &str) -> SidecarResult<usize> {
        self.find(name)
            .ok_or_else(|| SidecarError::new(ErrorCode::UnknownService, format!("no service named {name:?}")))
    }

    fn spec(&self, i: usize) -> Arc<ServiceSpec> {
        self.slots[i].spec.lock().expect("spec lock").clone()
    }

    fn cell(&self, i: usize) -> std::sync::MutexGuard<'_, Cell> {
        self.slots[i].cell.lock().expect("cell lock")
    }

    /// The live services, in config order.
    fn listed(&self) -> Vec<usize> {
        self.listed.lock().expect("listed lock").clone()
    }

    /// The live services, dependencies first, then config order.
    fn order(&self) -> Vec<usize> {
        self.order.lock().expect("order lock").clone()
    }

    /// The live services that service `i` depends on (a removed dependency has none).
    fn dependency_indices(&self, i: usize) -> Vec<usize> {
        self.spec(i).depends_on.iter().filter_map(|d| self.find(d)).collect()
    }

    /// The dependencies of service `i` that are no longer configured (removed by an update).
    fn missing_dependency(&self, i: usize) -> Option<String> {
        self.spec(i).depends_on.iter().find(|d| self.find(d).is_none()).cloned()
    }

    fn emit(&self, i: usize, kind: ServiceEventKind) {
        if let ServiceEventKind::Exited { exit } = kind {
            self.record_exit(i, exit);
        }
        // Nobody listening is not an error: the supervisor works the same without a reader.
        let _ = self.events.send(ServiceEvent::now(&self.spec(i).name, kind));
    }

    fn set_state(&self, i: usize, state: ServiceState) {
        let was = std::mem::replace(&mut self.cell(i).state, state);
        self.changes.send_modify(|n| *n += 1);
        if was != state {
            self.announce_route(i, state);
        }
    }

    fn state(&self, i: usize) -> ServiceState {
        self.cell(i).state
    }

    fn status(&self, i: usize) -> ServiceStatus {
        let learned = self.profiles.lock().expect("profiles lock").get(&self.spec(i).name);
        let gpu_key = self.gpu_key(i);
        let cell = self.cell(i);
        let last_lines = cell.sink.as_ref().map_or_else(|| cell.last_lines.clone(), |sink| sink.tail());
        ServiceStatus {
            name: self.spec(i).name.clone(),
            state: cell.state,
            pid: cell.pid,
            restarts: cell.restarts,
            attempt: cell.budget.attempt(),
            next_restart_at_ms: cell.next_restart_at_ms,
            last_failure: cell.last_failure.clone(),
            time_to_ready_ms: cell.time_to_ready_ms,
            error: cell.error.clone(),
            blocked_by: cell.blocked_by.clone(),
            notify_status: cell.notify_status.clone(),
            last_lines,
            gpu_key,
            leases: cell.leases.clone(),
            learned,
            waiting: cell.waiting,
            started_at_ms: cell.spawned_at_ms.filter(|&at| at != u64::MAX),
            last_exit: cell.last_exit,
        }
    }

    /// Keeps how a process of service `i` ended, for `status().lastExit`.
    fn record_exit(&self, i: usize, exit: ExitInfo) {
        self.cell(i).last_exit = Some(LastExit { code: exit.code, signal: exit.signal, at_ms: epoch_ms() });
    }

    fn observe_lease(&self, change: LeaseChange, now_ms: u64) {
        // The service of that task type on the lease's GPU; else the first of that task type
        // (a lease placed on another GPU than its service's is still that service's work).
        let serves = |task_type: &str, gpu_key: &str| {
            let serving = |on_gpu: bool| {
                self.listed().into_iter().find(|&j| {
                    self.spec(j).gpu.as_ref().is_some_and(|g| {
                        g.task_types.iter().any(|t| t == task_type)
                            && (!on_gpu || self.gpu_key(j).as_deref() == Some(gpu_key))
                    })
                })
            };
            serving(true).or_else(|| serving(false))
        };
        match change {
            LeaseChange::Acquired { lease_id, task_type, gpu_key } => {
                if let Some(i) = serves(&task_type, &gpu_key) {
                    let mut cell = self.cell(i);
                    cell.leases.acquired(AttributedLease { lease_id, task_type, acquired_at_ms: now_ms });
                    cell.last_used_ms = cell.last_used_ms.max(now_ms);
                }
            }
            LeaseChange::Released { lease_id } => {
                for (i, _) in self.slots.iter() {
                    let mut cell = self.cell(i);
                    if cell.leases.released(&lease_id) {
                        cell.last_used_ms = cell.last_used_ms.max(now_ms);
                        break;
                    }
                }
            }
            LeaseChange::Revoked { lease_id, task_type, gpu_key } => {
                let Some(i) = serves(&task_type, &gpu_key) else { return };
                let spec = self.spec(i);
                let mut cell = self.cell(i);
                let threshold = spec.hang_after_revokes.get() as u32;
                let hung = cell.leases.revoked(&lease_id, now_ms, threshold, spec.hang_window_ms.get());
                if let Some(lease_ids) = hung {
                    // Only a ready service's runner watches for this; revokes while it loads or
                    // restarts are about a process that is already being replaced.
                    if cell.state == ServiceState::Ready {
                        cell.hung = Some(HungReport { lease_ids });
                        cell.alarm.notify_one();
                    }
                }
            }
        }
    }

    fn record_failure(&self, i: usize, error: &SidecarError) {
        self.cell(i).last_failure = Some(FailureRecord { at_ms: epoch_ms(), error: error.clone() });
    }
}

impl Slot {
    fn new(spec: ServiceSpec, source: serde_json::Value) -> Self {
        Self {
            spec: Mutex::new(Arc::new(spec)),
            source: Mutex::new(source),
            cell: Mutex::new(Cell::new()),
            removed: AtomicBool::new(false),
        }
    }
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}
