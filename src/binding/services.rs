//! `ServiceSupervisor`: the JS class over [`crate::services::Supervisor`].
//!
//! The core runs on the addon's tokio runtime; its methods return promises that napi resolves
//! from there (a pending promise keeps Node alive). Events take the telemetry binding's road: a
//! forwarding task queues them into an inbox and wakes the JS thread through a weak threadsafe
//! function, so events alone never keep Node alive, and nothing fires after `close()`.
//! An attached `Telemetry` is the core's [`VramSource`] and labels every spawned service pid.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use napi::bindgen_prelude::*;
use napi::sys;
use napi::threadsafe_function::ThreadsafeFunctionCallMode;
use napi_derive::napi;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::arbiter::native_leases::{self, NativeReply};
use super::arbiter::{GpuArbiter, State as ArbiterState};
use super::js::{self, JsRef, Listeners, WakeFn};
use super::service_views::{host_budget_view, status_view, HostBudgetView, ServiceStatusView};
use super::telemetry::Telemetry;
use super::{args, Code, IntoJsResult};
use crate::arbiter::{AcquireRequest, BusyPolicy, LeaseId, Trace};
use crate::error::{ErrorCode, SidecarError, SidecarResult};
use crate::services::{HostMemReading, HostMemorySource};
use crate::services::{
    LeaseChange, LeaseFuture, LeaseGuard, ListenerNote, OutputStream, ServiceEvent, ServiceEventKind, ServiceOutcome,
    ServicesConfig, StartOutcome, StartupLease, Supervisor, SupervisorHooks, TaskRoutes, VramReading, VramSource,
};
use crate::telemetry::{LatestSample, ProcessRegistry};

/// Log lines queued for JS at most, by count and by bytes. While the listener is that far
/// behind, new lines are dropped and counted, and a `log-dropped` event says how many before the
/// next line of that service is delivered; lifecycle events are never dropped. The `logFile`
/// gets every line regardless: it is written before this queue.
const MAX_QUEUED_LOG_LINES: usize = 10_000;
const MAX_QUEUED_LOG_BYTES: usize = 4 << 20;

/// One turn of the event loop delivers at most this many events, or for at most this long,
/// then yields (`setImmediate`) so timers and I/O run between slices of a log flood.
const SLICE_EVENTS: usize = 1_000;
const SLICE_TIME: std::time::Duration = std::time::Duration::from_millis(4);

/// The addon's tokio runtime threads, as they show in debuggers and `top -H`.
const RUNTIME_THREAD_NAME: &str = "gpu-sidecar-rt";

/// Gives napi a named runtime (it is built once per process, before the first async call).
#[napi_derive::module_init]
fn init_runtime() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
        match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name(RUNTIME_THREAD_NAME)
            .worker_threads(workers)
            .build()
        {
            Ok(runtime) => napi::bindgen_prelude::create_custom_tokio_runtime(runtime),
            Err(e) => tracing::warn!("cannot build the named tokio runtime, napi's default is used: {e}"),
        }
    });
}

/// Queued on the forwarding task, drained on the JS thread.
#[derive(Default)]
struct Inbox {
    queue: Mutex<Queue>,
    wake_pending: AtomicBool,
}

impl Inbox {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the JS listeners get: the core's events, and notes of log lines dropped for them.
enum Queued {
    Event(ServiceEvent),
    LogDropped { service: String, count: u64, at: u64 },
}

/// The events waiting for the JS thread, with the log lines in it bounded (see
/// [`MAX_QUEUED_LOG_BYTES`]).
#[derive(Default)]
struct Queue {
    events: VecDeque<Queued>,
    log_lines: usize,
    log_bytes: usize,
    /// Lines dropped per service and not yet reported.
    dropped: BTreeMap<String, u64>,
}

impl Queue {
    fn push(&mut self, event: ServiceEvent) {
        if let ServiceEventKind::Log { line, .. } = &event.kind {
            if self.log_lines >= MAX_QUEUED_LOG_LINES || self.log_bytes + line.len() > MAX_QUEUED_LOG_BYTES {
                *self.dropped.entry(event.service).or_default() += 1;
                return;
            }
            self.log_lines += 1;
            self.log_bytes += line.len();
        }
        self.report_dropped(&event.service);
        self.events.push_back(Queued::Event(event));
    }

    fn pop(&mut self) -> Option<Queued> {
        let queued = self.events.pop_front()?;
        if let Queued::Event(ServiceEvent { kind: ServiceEventKind::Log { line, .. }, .. }) = &queued {
            self.log_lines -= 1;
            self.log_bytes -= line.len();
        }
        Some(queued)
    }

    /// Queues a `log-dropped` event for `service` if lines of it were dropped.
    fn report_dropped(&mut self, service: &str) {
        if let Some(count) = self.dropped.remove(service) {
            let at = crate::services::epoch_ms();
            self.events.push_back(Queued::LogDropped { service: service.to_string(), count, at });
        }
    }

    /// Once the queue has drained, the drops of services that went quiet are reported too.
    fn report_all_dropped(&mut self) {
        let services: Vec<String> = self.dropped.keys().cloned().collect();
        for service in services {
            self.report_dropped(&service);
        }
    }

    /// Drops every queued log line (counted, reported in place), keeping lifecycle events.
    fn shed_logs(&mut self) {
        let events = std::mem::take(&mut self.events);
        self.log_lines = 0;
        self.log_bytes = 0;
        for queued in events {
            match queued {
                Queued::Event(ServiceEvent { service, kind: ServiceEventKind::Log { .. }, .. }) => {
                    *self.dropped.entry(service).or_default() += 1;
                }
                Queued::Event(event) => {
                    self.report_dropped(&event.service);
                    self.events.push_back(Queued::Event(event));
                }
                other => self.events.push_back(other),
            }
        }
        self.report_all_dropped();
    }

    fn clear(&mut self) {
        *self = Queue::default();
    }
}

/// The Telemetry a supervisor is attached to: its last sample and its process registry.
struct Attached {
    id: u64,
    latest: LatestSample,
    registry: Arc<ProcessRegistry>,
}

/// The core's [`VramSource`], backed by whatever Telemetry is attached (none: no readings, so
/// the gate is off and says so), plus the running service pids to label in that Telemetry.
#[derive(Default)]
struct TelemetryLink {
    attached: Mutex<Option<Attached>>,
    next_id: AtomicU64,
    /// Running service processes: pid to service name.
    pids: Mutex<BTreeMap<u32, String>>,
}

impl TelemetryLink {
    fn attach(&self, latest: LatestSample, registry: Arc<ProcessRegistry>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let pids = self.pids.lock().unwrap_or_else(|e| e.into_inner());
        for (pid, service) in pids.iter() {
            registry.register(*pid, service.clone());
        }
        let old = self.attached.lock().unwrap_or_else(|e| e.into_inner()).replace(Attached { id, latest, registry });
        if let Some(old) = old {
            for pid in pids.keys() {
                old.registry.unregister(*pid);
            }
        }
        id
    }

    fn detach(&self, id: u64) {
        // Locks in the same order as `attach` and `observe`: pids, then attached.
        let pids = self.pids.lock().unwrap_or_else(|e| e.into_inner());
        let mut attached = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        if attached.as_ref().is_some_and(|a| a.id == id) {
            let old = attached.take().expect("checked above");
            for pid in pids.keys() {
                old.registry.unregister(*pid);
            }
        }
    }

    /// Keeps the pid table (and the attached registry) in step with the event stream.
    fn observe(&self, event: &ServiceEvent) {
        let mut pids = self.pids.lock().unwrap_or_else(|e| e.into_inner());
        let attached = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        match &event.kind {
            ServiceEventKind::Spawned { pid } => {
                pids.insert(*pid, event.service.clone());
                if let Some(a) = attached.as_ref() {
                    a.registry.register(*pid, event.service.clone());
                }
            }
            ServiceEventKind::Exited { .. } | ServiceEventKind::Failed { .. } | ServiceEventKind::Stopped => {
                pids.retain(|pid, service| {
                    let keep = *service != event.service;
                    if !keep {
                        if let Some(a) = attached.as_ref() {
                            a.registry.unregister(*pid);
                        }
                    }
                    keep
                });
            }
            _ => {}
        }
    }

    fn sample(&self) -> Option<(Arc<crate::telemetry::Sample>, Arc<ProcessRegistry>)> {
        let attached = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        let a = attached.as_ref()?;
        let sample = a.latest.get()?;
        sample.nvml.available.then(|| (sample, a.registry.clone()))
    }
}

impl VramSource for TelemetryLink {
    fn free_mb(&self, gpu_key: &str) -> Option<VramReading> {
        let (sample, _) = self.sample()?;
        let gpu = sample.gpu(gpu_key).filter(|g| !g.lost)?;
        Some(VramReading { free_mb: gpu.free_mb?, used_mb: gpu.used_mb, sampled_at_ms: sample.at as u64 })
    }

    fn gpu_keys(&self) -> Vec<String> {
        let Some((sample, _)) = self.sample() else { return Vec::new() };
        sample.gpus.iter().filter(|g| !g.lost).map(|g| g.key.clone()).collect()
    }

    fn gpu_uuid(&self, gpu_key: &str) -> Option<String> {
        let (sample, _) = self.sample()?;
        sample.gpu(gpu_key)?.uuid.clone().filter(|uuid| !uuid.is_empty())
    }

    /// The pid's own GPU memory plus that of processes labelled with its service (its workers).
    /// Asks for fresh process lists in the next sample: with `processIntervalMs` the lists in
    /// the latest one may be up to that old, and a load's peak is what is being learned.
    fn process_used_mb(&self, pid: u32) -> Option<u64> {
        if let Some(a) = self.attached.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            a.latest.want_processes();
        }
        let (sample, registry) = self.sample()?;
        let label = registry.service_of(pid);
        let mut total = None;
        for p in sample.gpus.iter().flat_map(|g| &g.processes) {
            if p.pid == pid || (label.is_some() && p.service == label) {
                if let Some(mb) = p.used_mb {
                    total = Some(total.unwrap_or(0) + mb);
                }
            }
        }
        total
    }
}

/// The host-memory gate's readings: the attached Telemetry's latest host figures (NVML or not)
/// and whether its SWAP_ACTIVE alert is raised.
impl HostMemorySource for TelemetryLink {
    fn host_memory(&self) -> Option<HostMemReading> {
        let attached = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        let a = attached.as_ref()?;
        let sample = a.latest.get()?;
        Some(HostMemReading {
            available_mb: sample.host.available_mb,
            total_mb: sample.host.total_mb,
            swap_active: a.latest.swap_active(),
            sampled_at_ms: sample.at as u64,
        })
    }
}

/// The task type a startup lease is requested under (its policy, if the arbiter config has one).
const STARTUP_TASK_TYPE: &str = "SERVICE_STARTUP";

/// A request from a tokio thread to the JS thread, where the arbiter lives.
enum LeaseCall {
    Acquire {
        service: String,
        gpu_key: String,
        reply: NativeReply,
    },
    Release {
        lease_id: LeaseId,
    },
    /// On-demand task types lost (`Some(load allowance ms)`) or regained (`None`) their service.
    Standby {
        task_types: Vec<String>,
        load_allowance_ms: Option<u64>,
    },
    /// Their service is being started: what waits for them waits for the start to end.
    Starting {
        task_types: Vec<String>,
    },
    Unavailable {
        task_types: Vec<String>,
    },
    /// The task-type routes changed (an `auto` service was placed).
    Routes(Vec<(String, String)>),
}

/// Startup leases from an attached `GpuArbiter`: requests queue here and the JS thread is woken
/// to queue them in the Rust arbiter directly (no JS promise on the way); dropping a held lease
/// queues its release the same way.
struct LeaseBridge {
    calls: Mutex<VecDeque<LeaseCall>>,
    wake: Mutex<Option<WakeFn>>,
}

impl LeaseBridge {
    /// Queues `call` and wakes the JS thread; `false` (the call dropped) when no arbiter is attached.
    fn send(&self, call: LeaseCall) -> bool {
        let wake = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        let Some(wake) = wake.as_ref() else { return false };
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).push_back(call);
        wake.call((), ThreadsafeFunctionCallMode::NonBlocking);
        true
    }
}

/// The core's [`StartupLease`]: a lease from the attached arbiter, or at once without one.
struct ArbiterLease(Arc<LeaseBridge>);

/// A granted startup lease; released (on the JS thread) when dropped.
struct HeldLease {
    bridge: Arc<LeaseBridge>,
    lease_id: LeaseId,
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        // Detached meanwhile: the arbiter is no longer ours to release into.
        let _ = self.bridge.send(LeaseCall::Release { lease_id: self.lease_id });
    }
}

impl TaskRoutes for ArbiterLease {
    fn routes_changed(&self, routes: Vec<(String, String)>) {
        let _ = self.0.send(LeaseCall::Routes(routes));
    }

    fn standby(&self, task_types: &[String], load_allowance_ms: u64) {
        let _ = self
            .0
            .send(LeaseCall::Standby { task_types: task_types.to_vec(), load_allowance_ms: Some(load_allowance_ms) });
    }

    fn starting(&self, task_types: &[String]) {
        let _ = self.0.send(LeaseCall::Starting { task_types: task_types.to_vec() });
    }

    fn ready(&self, task_types: &[String]) {
        let _ = self.0.send(LeaseCall::Standby { task_types: task_types.to_vec(), load_allowance_ms: None });
    }

    fn unavailable(&self, task_types: &[String]) {
        let _ = self.0.send(LeaseCall::Unavailable { task_types: task_types.to_vec() });
    }
}

impl StartupLease for ArbiterLease {
    fn acquire<'a>(&'a self, service: &'a str, gpu_key: &'a str) -> LeaseFuture<'a> {
        Box::pin(async move {
            let (reply, granted) = oneshot::channel();
            let call = LeaseCall::Acquire { service: service.to_string(), gpu_key: gpu_key.to_string(), reply };
            if !self.0.send(call) {
                tracing::warn!(
                    service,
                    "gpuStartupLease is set but no GpuArbiter is attached: loading without a lease"
                );
                return Ok(Box::new(()) as LeaseGuard);
            }
            let answer = granted.await.map_err(|_| {
                SidecarError::new(
                    ErrorCode::GpuLeaseNotGranted,
                    format!("{service}: the GpuArbiter was detached before it granted a startup lease"),
                )
            })?;
            match answer {
                Ok(lease_id) => Ok(Box::new(HeldLease { bridge: self.0.clone(), lease_id }) as LeaseGuard),
                Err(why) => Err(not_granted(service, &why)),
            }
        })
    }
}

struct State {
    closed: bool,
    /// A `setImmediate` for the next slice of events is pending.
    slice_scheduled: bool,
    inbox: Arc<Inbox>,
    pump: Arc<Pump>,
    listeners: Listeners,
    /// The attached arbiter and an id for its detach function.
    arbiter: Option<(u64, Weak<RefCell<ArbiterState>>)>,
    next_arbiter: u64,
    /// Per service: the lease request's `maxWaitMs` and `holdMaxMs`.
    lease_limits: BTreeMap<String, (u64, u64)>,
    leases: Arc<LeaseBridge>,
    /// Unsubscribes from the attached arbiter's events (lease attribution to `gpu.taskTypes`).
    lease_events: Option<JsRef>,
}

impl State {
    /// Stops attributing the attached arbiter's leases.
    fn unsubscribe_lease_events(&mut self, env: &Env) {
        let Some(unsubscribe) = self.lease_events.take() else { return };
        let called = unsubscribe.get().and_then(|f| {
            let undefined = unsafe { <()>::to_napi_value(env.raw(), ()) }?;
            js::call(env, undefined, f, &[])
        });
        if let Err(e) = called {
            tracing::warn!(error = %e.reason, "could not unsubscribe from the arbiter's events");
        }
    }
}

/// The lease change an arbiter event stands for, if any: grants, releases and watchdog revokes.
fn lease_change(event: &Value) -> Option<LeaseChange> {
    let text = |key: &str| event.get(key).and_then(Value::as_str).map(String::from);
    let lease_id = text("leaseId")?;
    let gpu_key = text("gpuKey").unwrap_or_default();
    match (event.get("type").and_then(Value::as_str)?, event.get("detail").and_then(Value::as_str)) {
        ("acquired", _) => Some(LeaseChange::Acquired { lease_id, task_type: text("taskType")?, gpu_key }),
        ("released", _) => Some(LeaseChange::Released { lease_id }),
        ("watchdog", Some("revoke")) => Some(LeaseChange::Revoked { lease_id, task_type: text("taskType")?, gpu_key }),
        _ => None,
    }
}

/// Starts the node's services in dependency order, at most `maxConcurrentStarts` loading at
/// once, each GPU service only once its GPU has room (with an attached `Telemetry`), and reports
/// each ready only after its readiness check passed. Every process runs in its own process group
/// and dies with this process, even on SIGKILL; a supervisor that is garbage-collected kills
/// what it still runs. Events never keep Node alive; pending promises do.
#[napi]
pub struct ServiceSupervisor {
    core: Arc<Supervisor>,
    link: Arc<TelemetryLink>,
    state: Rc<RefCell<State>>,
}

#[napi]
impl ServiceSupervisor {
    /// Validates `config` (the `services` section; `loadConfig(path).services` fits) and starts
    /// nothing yet. Throws `INVALID_CONFIG` with the JSON path of a bad field, or naming a
    /// dependency cycle (`services: dependency cycle: a -> b -> a`).
    #[napi(constructor, catch_unwind, ts_args_type = "config: ServicesConfig")]
    pub fn new(env: &Env, config: Option<Unknown>) -> Result<Self, Code> {
        let config = args::optional_json(env, config, "services", ErrorCode::InvalidConfig)?.unwrap_or(Value::Null);
        let mut warnings = vec![];
        let config = ServicesConfig::from_json(&config, &mut warnings)?;
        for w in &warnings {
            tracing::warn!("{w}");
        }
        let link = Arc::new(TelemetryLink::default());
        let leases = Arc::new(LeaseBridge { calls: Mutex::new(VecDeque::new()), wake: Mutex::new(None) });
        // A lease may wait as long as the VRAM gate, and is held at most until readiness times out.
        let lease_limits = config
            .services
            .iter()
            .map(|s| (s.name.clone(), (config.vram_timeout_ms.get(), s.readiness_timeout_ms.get())))
            .collect();
        let hooks = SupervisorHooks {
            vram: Some(link.clone() as Arc<dyn VramSource>),
            startup_lease: Some(Arc::new(ArbiterLease(leases.clone())) as Arc<dyn StartupLease>),
            task_routes: Some(Arc::new(ArbiterLease(leases.clone())) as Arc<dyn TaskRoutes>),
            host_memory: Some(link.clone() as Arc<dyn HostMemorySource>),
        };
        let (core, events) = Supervisor::new(config, hooks);
        let inbox = Arc::new(Inbox::default());
        let pump = Arc::new(Pump { events: Mutex::new(events), inbox: inbox.clone(), link: link.clone() });
        let state = Rc::new(RefCell::new(State {
            closed: false,
            slice_scheduled: false,
            inbox,
            pump: pump.clone(),
            listeners: Listeners::default(),
            arbiter: None,
            next_arbiter: 0,
            lease_limits,
            leases,
            lease_events: None,
        }));
        let wake = js::wake_function(env, &state, "servicesWake", dispatch).js()?;
        napi::bindgen_prelude::spawn(forward(pump, wake));
        Ok(Self { core: Arc::new(core), link, state })
    }

    /// Starts every service (dependencies first, then config order) and resolves when each one is
    /// ready or has definitively failed (after its restarts), one outcome per service in start
    /// order. Rejects only with `CLOSED`.
    #[napi(catch_unwind, ts_return_type = "Promise<ServiceOutcome[]>")]
    pub fn start_all<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, Value>, Code> {
        let core = self.core.clone();
        promise(env, &self.state, async move {
            Ok(Value::Array(core.start_all().await?.iter().map(outcome_to_json).collect()))
        })
    }

    /// Starts one service and what it depends on; resolves with its outcome. Rejects with
    /// `UNKNOWN_SERVICE` or `CLOSED`.
    #[napi(catch_unwind, ts_return_type = "Promise<ServiceOutcome>", ts_args_type = "name: string")]
    pub fn start<'env>(&self, env: &'env Env, name: Option<Unknown>) -> Result<PromiseRaw<'env, Value>, Code> {
        let name = args::string(env, name, "name")?;
        let core = self.core.clone();
        promise(env, &self.state, async move {
            let outcome = core.start(&name).await?;
            Ok(outcome_to_json(&ServiceOutcome { service: name, outcome }))
        })
    }

    /// Starts a service (on-demand or not) and what it depends on if it is not running, and
    /// resolves with its status once it is ready. Counts as use for `keepAliveMs`. Rejects with
    /// the start's error (`VRAM_TIMEOUT`, `VRAM_OOM`, `SERVICE_EXITED`, ...), `UNKNOWN_SERVICE`
    /// or `CLOSED`.
    #[napi(catch_unwind, ts_return_type = "Promise<ServiceStatus>", ts_args_type = "name: string")]
    pub fn ensure<'env>(
        &self,
        env: &'env Env,
        name: Option<Unknown>,
    ) -> Result<PromiseRaw<'env, ServiceStatusView>, Code> {
        let name = args::string(env, name, "name")?;
        let core = self.core.clone();
        promise(env, &self.state, async move { Ok(status_view(&core.ensure(&name).await?)) })
    }

    /// Stops one service: `stopSignal` to its process group, SIGKILL after `stopTimeoutMs`;
    /// resolves once the group is gone and reaped. Dependents are left running.
    #[napi(catch_unwind, ts_return_type = "Promise<void>", ts_args_type = "name: string")]
    pub fn stop<'env>(&self, env: &'env Env, name: Option<Unknown>) -> Result<PromiseRaw<'env, ()>, Code> {
        let name = args::string(env, name, "name")?;
        let core = self.core.clone();
        promise(env, &self.state, async move { core.stop(&name).await })
    }

    /// Stops then starts one service; resolves with the new start's outcome.
    #[napi(catch_unwind, ts_return_type = "Promise<ServiceOutcome>", ts_args_type = "name: string")]
    pub fn restart<'env>(&self, env: &'env Env, name: Option<Unknown>) -> Result<PromiseRaw<'env, Value>, Code> {
        let name = args::string(env, name, "name")?;
        let core = self.core.clone();
        promise(env, &self.state, async move {
            let outcome = core.restart(&name).await?;
            Ok(outcome_to_json(&ServiceOutcome { service: name, outcome }))
        })
    }

    /// Stops every service, dependents before what they depend on.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn stop_all<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, ()>, Code> {
        let core = self.core.clone();
        promise(env, &self.state, async move {
            core.stop_all().await;
            Ok(())
        })
    }

    /// Stops everything this supervisor started and refuses later starts with `CLOSED`. No event
    /// listener is called after this call. Idempotent.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn close<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, ()>, Code> {
        {
            let mut s = self.state.borrow_mut();
            s.closed = true;
            s.unsubscribe_lease_events(env);
            s.listeners.clear();
            s.inbox.queue().clear();
        }
        let core = self.core.clone();
        promise(env, &self.state, async move {
            core.close().await;
            Ok(())
        })
    }

    /// One service's status. Throws `UNKNOWN_SERVICE`.
    #[napi(catch_unwind, ts_args_type = "name: string")]
    pub fn status(&self, env: &Env, name: Option<Unknown>) -> Result<ServiceStatusView, Code> {
        let name = args::string(env, name, "name")?;
        Ok(status_view(&self.core.status(&name)?))
    }

    /// Every service's status, in config order.
    #[napi(catch_unwind)]
    pub fn statuses(&self) -> Vec<ServiceStatusView> {
        self.core.statuses().iter().map(status_view).collect()
    }

    /// What the host can take on now, for the orchestrator's own worker pools: the attached
    /// Telemetry's available memory less `hostMemHeadroomMb` and less what the services loading
    /// are still expected to take; with `perWorkerMb`, how many more workers of that size fit
    /// (0 while SWAP_ACTIVE is raised). Read live at each call. `null` without an attached
    /// Telemetry with a sample. Throws `INVALID_ARGUMENT` for a `perWorkerMb` that is not a
    /// number above 0.
    #[napi(catch_unwind, ts_args_type = "perWorkerMb?: number")]
    pub fn host_budget(&self, env: &Env, per_worker_mb: Option<Unknown>) -> Result<Option<HostBudgetView>, Code> {
        let per_worker_mb = match args::optional_json(env, per_worker_mb, "perWorkerMb", ErrorCode::InvalidArgument)? {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => n.as_f64(),
            Some(other) => {
                return Err(
                    SidecarError::invalid_argument(format!("perWorkerMb: expected a number, got {other}")).into()
                )
            }
        };
        let Some(budget) = self.core.host_budget() else { return Ok(None) };
        let workers = per_worker_mb.map(|mb| budget.workers_checked(mb)).transpose()?;
        Ok(Some(host_budget_view(&budget, per_worker_mb, workers)))
    }

    /// Calls `listener(event)` for every service event; returns a function that unsubscribes.
    #[napi(catch_unwind, ts_args_type = "listener: (event: ServiceEvent) => void", ts_return_type = "() => void")]
    pub fn on_event<'env>(&self, env: &'env Env, listener: Unknown<'env>) -> Result<Function<'env, (), ()>, Code> {
        let mut s = self.state.borrow_mut();
        if s.closed {
            return Err(SidecarError::new(ErrorCode::Closed, "the service supervisor is closed").into());
        }
        let id = s.listeners.add(env, listener.raw())?;
        let weak = Rc::downgrade(&self.state);
        env.create_function_from_closure::<(), (), _>("unsubscribe", move |_ctx| {
            if let Some(state) = weak.upgrade() {
                state.borrow_mut().listeners.remove(id);
            }
            Ok(())
        })
        .js()
    }

    /// Reads free VRAM for the VRAM gate and `gpu.key: 'auto'` placement (and per-process VRAM,
    /// else the GPU's used memory, for the learned profile) from `telemetry`'s latest sample, live
    /// or replayed, and registers every service pid in it (`processes[].service` is the service
    /// name). Replaces an earlier one; returns a function
    /// that detaches. Without a sample with NVML figures for a service's GPU, that service starts
    /// ungated with a `vram-gate-off` event. Throws `CLOSED` for a closed Telemetry.
    #[napi(catch_unwind, ts_args_type = "telemetry: Telemetry", ts_return_type = "() => void")]
    pub fn attach_telemetry<'env>(
        &self,
        env: &'env Env,
        telemetry: Option<Unknown>,
    ) -> Result<Function<'env, (), ()>, Code> {
        let telemetry = args::class_ref::<Telemetry>(env, telemetry, "telemetry", "a Telemetry")?;
        let latest = telemetry
            .latest_source()
            .ok_or_else(|| SidecarError::new(ErrorCode::Closed, "attachTelemetry: the Telemetry is closed"))?;
        let id = self.link.attach(latest, telemetry.registry());
        let link = Arc::downgrade(&self.link);
        env.create_function_from_closure::<(), (), _>("detachTelemetry", move |_ctx| {
            if let Some(link) = link.upgrade() {
                link.detach(id);
            }
            Ok(())
        })
        .js()
    }

    /// With `gpuStartupLease: true`, each GPU service holds a lease from `arbiter` on its GPU
    /// (task type `SERVICE_STARTUP`, `busyPolicy: 'WAIT'`, `maxWaitMs`: `vramTimeoutMs`,
    /// `holdMaxMs`: its `readinessTimeoutMs`) from before its VRAM gate until it is ready or has
    /// failed. A lease not granted fails that start with `GPU_LEASE_NOT_GRANTED`. Without an
    /// attached arbiter GPU services load without a lease. Replaces an earlier one; returns a
    /// function that detaches.
    #[napi(catch_unwind, ts_args_type = "arbiter: GpuArbiter", ts_return_type = "() => void")]
    pub fn attach_arbiter<'env>(
        &self,
        env: &'env Env,
        arbiter: Option<Unknown<'env>>,
    ) -> Result<Function<'env, (), ()>, Code> {
        let shared = args::class_ref::<GpuArbiter>(env, arbiter, "arbiter", "a GpuArbiter")?.shared();

        let arbiter = args::object(env, arbiter, "arbiter", "a GpuArbiter")?;
        let wake = js::wake_function(env, &self.state, "servicesLeaseWake", serve_leases).js()?;
        let lease_events = if self.core.attributes_leases() {
            let core = Arc::downgrade(&self.core);
            let listener = env
                .create_function_from_closure::<(), (), _>("attributeLease", move |ctx| {
                    js::no_panic("attributeLease", || {
                        let event: Value = ctx.get(0)?;
                        if let (Some(core), Some(change)) = (core.upgrade(), lease_change(&event)) {
                            let at = event.get("at").and_then(Value::as_f64).unwrap_or(0.0);
                            let now_ms = if at > 0.0 { at as u64 } else { crate::services::epoch_ms() };
                            core.observe_lease(change, now_ms);
                        }
                        Ok(())
                    })
                })
                .js()?;
            let unsubscribe = js::call_method(env, arbiter.raw(), "onEvent", &[listener.raw()]).js()?;
            Some(JsRef::new(env, unsubscribe).js()?)
        } else {
            None
        };
        let id = {
            let mut s = self.state.borrow_mut();
            if s.lease_events.is_some() {
                self.core.forget_active_leases();
            }
            s.unsubscribe_lease_events(env);
            s.lease_events = lease_events;
            let id = s.next_arbiter;
            s.next_arbiter += 1;
            // Requests for the task types the services claim go to the services' GPUs (and no
            // longer to them in an arbiter this one replaces).
            if let Some(old) = s.arbiter.take().and_then(|(_, a)| a.upgrade()) {
                old.borrow_mut().core.set_task_gpus([]);
            }
            if let Some(new) = shared.upgrade() {
                new.borrow_mut().core.set_task_gpus(self.core.task_type_gpus());
                self.core.set_task_priorities(new.borrow().core.task_priorities());
            }
            s.arbiter = Some((id, shared.clone()));
            *s.leases.wake.lock().unwrap_or_else(|e| e.into_inner()) = Some(wake);
            id
        };
        // On-demand services: their task types wait for a load while not ready, and the first
        // request starts them (in Rust: the arbiter calls the supervisor directly).
        let routes = self.core.on_demand_routes();
        if !routes.is_empty() {
            if let Some(arbiter_state) = shared.upgrade() {
                let core = Arc::downgrade(&self.core);
                arbiter_state.borrow_mut().demand_sink = Some(Box::new(move |task_type: String| {
                    if let Some(core) = core.upgrade() {
                        napi::bindgen_prelude::spawn(async move { core.demand(&task_type).await });
                    }
                }));
                for (task_type, allowance) in routes {
                    native_leases::set_standby(env, &arbiter_state, &[task_type], allowance)?;
                }
            }
        }
        let weak = Rc::downgrade(&self.state);
        let core = Arc::downgrade(&self.core);
        env.create_function_from_closure::<(), (), _>("detachArbiter", move |ctx| {
            let Some(state) = weak.upgrade() else { return Ok(()) };
            let mut s = state.borrow_mut();
            if s.arbiter.as_ref().is_none_or(|(a, _)| *a != id) {
                return Ok(());
            }
            s.unsubscribe_lease_events(ctx.env);
            if let Some(core) = core.upgrade() {
                core.forget_active_leases();
            }
            let detached = s.arbiter.take().and_then(|(_, a)| a.upgrade());
            *s.leases.wake.lock().unwrap_or_else(|e| e.into_inner()) = None;
            // Waiting acquires see their reply dropped and fail.
            s.leases.calls.lock().unwrap_or_else(|e| e.into_inner()).clear();
            drop(s); // the arbiter's listeners may call this supervisor
            if let Some(arbiter_state) = detached {
                arbiter_state.borrow_mut().core.set_task_gpus([]);
                arbiter_state.borrow_mut().demand_sink = None;
                // What waited for an on-demand service is granted as usual from now on.
                if let Some(core) = core.upgrade() {
                    let task_types: Vec<String> = core.on_demand_routes().into_iter().map(|(t, _)| t).collect();
                    if let Err(e) = native_leases::set_standby(ctx.env, &arbiter_state, &task_types, None) {
                        tracing::warn!(error = %e.reason, "could not take on-demand task types off standby");
                    }
                }
            }
            Ok(())
        })
        .js()
    }
}

fn serve_leases(env: &Env, state: &Rc<RefCell<State>>) {
    let calls: Vec<LeaseCall> = {
        let s = state.borrow();
        let mut calls = s.leases.calls.lock().unwrap_or_else(|e| e.into_inner());
        calls.drain(..).collect()
    };
    for call in calls {
        let (arbiter, limits) = {
            let s = state.borrow();
            // Detached: dropping the call drops its reply, which fails the waiting start.
            let Some(arbiter) = s.arbiter.as_ref().and_then(|(_, a)| a.upgrade()) else { return };
            let limits = match &call {
                LeaseCall::Acquire { service, .. } => s.lease_limits.get(service).copied(),
                _ => None,
            };
            (arbiter, limits)
        };
        match call {
            LeaseCall::Standby { task_types, load_allowance_ms } => {
                if let Err(e) = native_leases::set_standby(env, &arbiter, &task_types, load_allowance_ms) {
                    tracing::warn!(error = %e.reason, "could not update on-demand task types in the arbiter");
                }
            }
            LeaseCall::Starting { task_types } => {
                let mut arbiter = arbiter.borrow_mut();
                task_types.iter().for_each(|t| arbiter.core.set_task_starting(t));
            }
            LeaseCall::Unavailable { task_types } => {
                if let Err(e) = native_leases::fail_task_types(env, &arbiter, &task_types) {
                    tracing::warn!(error = %e.reason, "could not settle requests for an unavailable service");
                }
            }
            LeaseCall::Routes(routes) => arbiter.borrow_mut().core.set_task_gpus(routes),
            LeaseCall::Release { lease_id } => {
                if let Err(e) = native_leases::release(env, &arbiter, lease_id) {
                    tracing::warn!(lease_id, error = %e.reason, "could not release a service startup lease");
                }
            }
            LeaseCall::Acquire { service, gpu_key, reply } => {
                let (max_wait_ms, hold_max_ms) = limits.unwrap_or((120_000, 60_000));
                let request = AcquireRequest {
                    task_type: STARTUP_TASK_TYPE.into(),
                    gpu_key: Some(gpu_key),
                    busy_policy: Some(BusyPolicy::Wait),
                    max_wait_ms: Some(max_wait_ms),
                    hold_max_ms: Some(hold_max_ms),
                    trace: Trace {
                        job_id: Some(service.clone()),
                        stage: Some("service-startup".into()),
                        ..Trace::default()
                    },
                    ..AcquireRequest::default()
                };
                // A request the arbiter will not take (closed, unknown GPU) is answered with
                // its error, which fails this start with GPU_LEASE_NOT_GRANTED.
                if let Err(e) = native_leases::acquire(env, &arbiter, request, reply) {
                    tracing::warn!(service, error = %e.reason, "the arbiter refused a service startup lease");
                }
            }
        }
    }
}

fn not_granted(service: &str, why: &str) -> SidecarError {
    SidecarError::new(ErrorCode::GpuLeaseNotGranted, format!("{service}: startup lease not granted: {why}"))
}

/// A promise settled from `fut` on the tokio runtime; a core error rejects it with a JS error
/// that carries the error's `code`.
/// Listeners get every event the core sent before the promise settles (so a `ready` event is
/// seen before `startAll` resolves).
fn promise<'env, T, F>(env: &'env Env, state: &Rc<RefCell<State>>, fut: F) -> Result<PromiseRaw<'env, T>, Code>
where
    T: ToNapiValue + Send + 'static,
    F: Future<Output = SidecarResult<T>> + Send + 'static,
{
    let state = Rc::downgrade(state);
    env.spawn_future_with_callback(async move { Ok(fut.await) }, move |env, result| {
        if let Some(state) = state.upgrade() {
            let pump = state.borrow().pump.clone();
            pump.pull_now();
            deliver_before_settling(env, &state);
        }
        match result {
            Ok(value) => Ok(value),
            Err(error) => Err(js_error(env, error)),
        }
    })
    .js()
}

/// napi rejects with a plain `Status` error; wrapping the JS error we build keeps our `code`.
fn js_error(env: &Env, error: SidecarError) -> napi::Error {
    match unsafe { ToNapiValue::to_napi_value(env.raw(), napi::Error::<Code>::from(error)) } {
        Ok(value) => napi::Error::from(unsafe { Unknown::from_raw_unchecked(env.raw(), value) }),
        Err(e) => e,
    }
}

/// Moves core events into the inbox, labelling pids in the attached Telemetry on the way. Both
/// the forwarding task and the JS thread (before it settles a promise) pull from the receiver;
/// an event is taken and queued under one lock, so the inbox keeps the core's order.
struct Pump {
    events: Mutex<mpsc::UnboundedReceiver<ServiceEvent>>,
    inbox: Arc<Inbox>,
    link: Arc<TelemetryLink>,
}

impl Pump {
    fn accept(&self, event: ServiceEvent) {
        self.link.observe(&event);
        self.inbox.queue().push(event);
    }

    /// Queues what the core has sent so far.
    fn pull_now(&self) {
        let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        while let Ok(event) = events.try_recv() {
            self.accept(event);
        }
    }

    /// Waits for events and queues them; `false` once the core supervisor is gone.
    async fn pull(&self) -> bool {
        std::future::poll_fn(|cx| {
            let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
            match events.poll_recv(cx) {
                std::task::Poll::Ready(Some(event)) => {
                    self.accept(event);
                    while let Ok(event) = events.try_recv() {
                        self.accept(event);
                    }
                    std::task::Poll::Ready(true)
                }
                std::task::Poll::Ready(None) => std::task::Poll::Ready(false),
                std::task::Poll::Pending => std::task::Poll::Pending,
            }
        })
        .await
    }
}

/// The forwarding task: queues events and wakes the JS thread; ends when the core is gone.
async fn forward(pump: Arc<Pump>, wake: WakeFn) {
    while pump.pull().await {
        if !pump.inbox.wake_pending.swap(true, Ordering::SeqCst) {
            wake.call((), ThreadsafeFunctionCallMode::NonBlocking);
        }
    }
}

/// Delivers one slice of the queued events (see [`SLICE_EVENTS`]); what is left is delivered on
/// the next turn of the event loop, so a log flood never stalls timers and I/O.
fn dispatch(env: &Env, state: &Rc<RefCell<State>>) {
    let inbox = {
        let mut s = state.borrow_mut();
        s.slice_scheduled = false;
        s.inbox.clone()
    };
    // `wake_pending` stays set while this runs: a producer that woke the JS thread again now
    // would queue another threadsafe call, and Node runs queued calls back to back, slice after
    // slice, without yielding.
    let started = std::time::Instant::now();
    for delivered in 0.. {
        if delivered == SLICE_EVENTS || started.elapsed() >= SLICE_TIME {
            schedule_next_slice(env, state, &inbox);
            return;
        }
        if !deliver_one(env, state, &inbox) {
            break;
        }
    }
    // Drained: producers wake us again. One may have queued an event after the last look and
    // before this store, and seen the flag still set; look once more.
    inbox.wake_pending.store(false, Ordering::SeqCst);
    let more = {
        let queue = inbox.queue();
        !queue.events.is_empty() || !queue.dropped.is_empty()
    };
    if more && !state.borrow().closed {
        schedule_next_slice(env, state, &inbox);
    }
}

/// Before a promise settles its listeners must have seen every event sent before it: queued
/// lifecycle events are all delivered now, and log lines past one slice are dropped (and
/// reported with `log-dropped`) rather than delivered in one long stall.
fn deliver_before_settling(env: &Env, state: &Rc<RefCell<State>>) {
    let inbox = state.borrow().inbox.clone();
    let started = std::time::Instant::now();
    for delivered in 0.. {
        if delivered == SLICE_EVENTS || started.elapsed() >= SLICE_TIME {
            inbox.queue().shed_logs();
            while deliver_one(env, state, &inbox) {}
            return;
        }
        if !deliver_one(env, state, &inbox) {
            return;
        }
    }
}

/// Takes one queued event and calls the listeners with it; `false` when there was none (or the
/// supervisor is closed: nothing fires after close()).
fn deliver_one(env: &Env, state: &Rc<RefCell<State>>, inbox: &Inbox) -> bool {
    let queued = {
        let mut queue = inbox.queue();
        match queue.pop() {
            Some(queued) => queued,
            None if !queue.dropped.is_empty() => {
                queue.report_all_dropped();
                return true;
            }
            None => return false,
        }
    };
    let listeners = {
        let s = state.borrow();
        if s.closed {
            return false;
        }
        s.listeners.current()
    };
    if listeners.is_empty() {
        return true;
    }
    let value = match &queued {
        // The flood case: built directly, skipping JSON (about 1.5x the lines a second in
        // benchmarks/flood.mjs).
        Queued::Event(ServiceEvent { service, timestamp_ms, kind: ServiceEventKind::Log { stream, line } }) => {
            log_event_object(env, service, *timestamp_ms, *stream, line)
        }
        // Not `env.to_js_value`: its serializer turns epoch-ms `at` into a BigInt.
        Queued::Event(event) => unsafe { Value::to_napi_value(env.raw(), event_to_json(event)) },
        Queued::LogDropped { service, count, at } => unsafe {
            let note = ListenerNote::LogDropped { service: service.clone(), at: *at, count: *count };
            Value::to_napi_value(env.raw(), serde_json::to_value(note).unwrap_or(Value::Null))
        },
    };
    if let Ok(value) = value {
        js::call_listeners(env, &listeners, value, "ServiceSupervisor");
    }
    true
}

/// `{ type: 'log', service, at, stream, line }`, as [`event_to_json`] would give it.
fn log_event_object(
    env: &Env,
    service: &str,
    at: u64,
    stream: OutputStream,
    line: &str,
) -> napi::Result<sys::napi_value> {
    let stream = match stream {
        OutputStream::Stdout => "stdout",
        OutputStream::Stderr => "stderr",
    };
    let fields: [(&'static [u8], sys::napi_value); 5] = [
        (b"type\0", js::string(env, "log")?),
        (b"service\0", js::string(env, service)?),
        (b"at\0", js::number(env, at as f64)?),
        (b"stream\0", js::string(env, stream)?),
        (b"line\0", js::string(env, line)?),
    ];
    let descriptors: Vec<sys::napi_property_descriptor> = fields
        .iter()
        .map(|(name, value)| sys::napi_property_descriptor {
            utf8name: name.as_ptr().cast(),
            name: std::ptr::null_mut(),
            method: None,
            getter: None,
            setter: None,
            value: *value,
            attributes: sys::PropertyAttributes::writable
                | sys::PropertyAttributes::enumerable
                | sys::PropertyAttributes::configurable,
            data: std::ptr::null_mut(),
        })
        .collect();
    let mut object = std::ptr::null_mut();
    napi::check_status!(unsafe { sys::napi_create_object(env.raw(), &mut object) })?;
    napi::check_status!(unsafe {
        sys::napi_define_properties(env.raw(), object, descriptors.len(), descriptors.as_ptr())
    })?;
    Ok(object)
}

/// Delivers the rest on the next turn of the event loop (`setImmediate`: after pending I/O, and
/// a threadsafe-function call would not yield, Node runs queued calls back to back).
fn schedule_next_slice(env: &Env, state: &Rc<RefCell<State>>, inbox: &Inbox) {
    // Producers need not wake the JS thread while a slice is due anyway.
    inbox.wake_pending.store(true, Ordering::SeqCst);
    if state.borrow().slice_scheduled {
        return;
    }
    let weak = Rc::downgrade(state);
    let scheduled = env
        .create_function_from_closure::<(), (), _>("servicesNextSlice", move |ctx| {
            js::no_panic("servicesNextSlice", || {
                if let Some(state) = weak.upgrade() {
                    dispatch(ctx.env, &state);
                }
                Ok(())
            })
        })
        .and_then(|next| {
            let global = js::global(env)?;
            js::call_method(env, global, "setImmediate", &[next.raw()])
        });
    match scheduled {
        Ok(_) => state.borrow_mut().slice_scheduled = true,
        Err(e) => {
            // Never strand the queue: the next event's wake delivers it.
            inbox.wake_pending.store(false, Ordering::Release);
            tracing::warn!(error = %e.reason, "could not schedule the next slice of service events");
        }
    }
}

fn error_to_json(error: &SidecarError) -> Value {
    json!({ "code": error.code.as_str(), "message": error.message })
}

/// The event as listeners get it: its serde form (see [`crate::services::ServiceEvent`]), which
/// the generated `ServiceEvent` type is derived from.
fn event_to_json(event: &ServiceEvent) -> Value {
    event.to_json()
}

fn outcome_to_json(outcome: &ServiceOutcome) -> Value {
    let service = &outcome.service;
    match &outcome.outcome {
        StartOutcome::Ready { time_to_ready_ms } => {
            json!({ "service": service, "status": "ready", "timeToReadyMs": time_to_ready_ms })
        }
        StartOutcome::Failed { error, last_lines } => {
            json!({ "service": service, "status": "failed", "error": error_to_json(error), "lastLines": last_lines })
        }
        StartOutcome::Blocked { dependency } => {
            json!({ "service": service, "status": "blocked", "dependency": dependency })
        }
        StartOutcome::Stopped => json!({ "service": service, "status": "stopped" }),
    }
}
