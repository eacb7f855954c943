//! `ServiceSupervisor`: the JS class over [`crate::services::Supervisor`].
//!
//! The core runs on the addon's tokio runtime; its methods return promises that napi resolves
//! from there (a pending promise keeps Node alive). Its events reach JS through
//! [`crate::link::service_events`]: a forwarding task queues them and wakes the JS thread through
//! a weak threadsafe function, so events alone never keep Node alive, and nothing fires after
//! `close()`. An attached `Telemetry` is the core's VRAM and host-memory source
//! ([`crate::link::supervisor_telemetry`]); an attached `GpuArbiter` gets the core's asks
//! ([`crate::link::arbiter_calls`]) and tells it of leases ([`crate::link::lease_attribution`]).

use std::cell::RefCell;
use std::future::Future;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi::threadsafe_function::ThreadsafeFunctionCallMode;
use napi_derive::napi;
use serde_json::Value;
use std::time::Instant;

use super::arbiter::native_leases;
use super::arbiter::{ArbiterBinding, GpuArbiter};
use super::spawn_env::JsSpawnEnv;
use super::telemetry::Telemetry;
use super::{args, Code, IntoJsResult};
use crate::config::watch::ConfigFileWatch;
use crate::error::{ErrorCode, SidecarError, SidecarResult};
use crate::link::arbiter_calls::{ArbiterCalls, ArbiterLease, StartupLeasePolicy};
use crate::link::arbiter_host::ArbiterHost;
use crate::link::service_events::{JsListeners, QueuedEvent, ServiceEventFeed};
use crate::link::services_file;
use crate::link::supervisor_arbiter::{ArbiterSlot, Attached, HostHandle, Spawn};
use crate::link::supervisor_telemetry::SupervisorTelemetry;
use crate::node_api::promises::{done, nothing, serde_form, spawn_promise, JsPromise, Settle};
use crate::node_api::{self as js, Listeners, WakeFn};
use crate::services::manifest::resolve_services_section;
use crate::services::ServicesSource;
use crate::services::{
    HostBudget, HostMemorySource, ListenerNote, OutputStream, ServiceEvent, ServiceEventKind, ServiceOutcome, SpawnEnv,
    StartAllOptions, StartupLease, Supervisor, SupervisorHooks, TaskRoutes, VramSource,
};

/// An attached arbiter, as the supervisor holds it: weakly (its JS object owns it).
type ArbiterHandle = Weak<RefCell<ArbiterBinding>>;

struct SupervisorBinding {
    closed: bool,
    events: Arc<ServiceEventFeed>,
    listeners: Listeners,
    arbiter: ArbiterSlot<ArbiterHandle>,
    /// The watch of `fromFile(path, { watch: true })`; dropped at close.
    file_watch: Option<ConfigFileWatch>,
}

/// Starts the node's services in dependency order, at most `maxConcurrentStarts` loading at
/// once, each GPU service only once its GPU has room (with an attached `Telemetry`), and reports
/// each ready only after its readiness check passed. Every process runs in its own process group
/// and dies with this process, even on SIGKILL; a supervisor that is garbage-collected kills
/// what it still runs. Events never keep Node alive; pending promises do.
#[napi]
pub struct ServiceSupervisor {
    core: Arc<Supervisor>,
    telemetry: Arc<SupervisorTelemetry>,
    spawn_env: Arc<JsSpawnEnv>,
    state: Rc<RefCell<SupervisorBinding>>,
}

#[napi]
impl ServiceSupervisor {
    /// Validates `config` (the `services` section; `loadConfig(path).services` fits; `manifests`
    /// folders in it, relative to the working directory, are read as `loadServiceManifests`
    /// reads them, with `services[]` entries of the same name as overrides) and starts nothing
    /// yet. Throws `INVALID_CONFIG` with the JSON path of a bad field, or naming a dependency
    /// cycle (`services: dependency cycle: a -> b -> a`); `MANIFESTS_NOT_FOUND` for a missing
    /// manifests folder.
    #[napi(constructor, catch_unwind, ts_args_type = "config: ServicesConfig")]
    pub fn new(env: &Env, config: Option<Unknown>) -> Result<Self, Code> {
        let section = args::optional_json(env, config, "services", ErrorCode::InvalidConfig)?.unwrap_or(Value::Null);
        let base_dir = std::env::current_dir().unwrap_or_default();
        Self::with_source(env, ServicesSource { section, base_dir })
    }

    /// A supervisor for the `services` section of the node config file at `path` (its
    /// `manifests` folders relative to the file's folder), as `new ServiceSupervisor` takes it.
    /// With `{ watch: true }` every later edit of that section is applied as `setServices` applies
    /// a list (services added, removed, changed; what runs keeps running); an edit that cannot be
    /// used changes nothing and is logged with its JSON path. Throws `INVALID_CONFIG` (including a
    /// file without a `services` section), `MANIFESTS_NOT_FOUND`, `IO_ERROR` (cannot watch).
    #[napi(factory, catch_unwind, ts_args_type = "path: string, options?: { watch?: boolean }")]
    pub fn from_file(env: &Env, path: Option<Unknown>, options: Option<Unknown>) -> Result<Self, Code> {
        let path = std::path::PathBuf::from(args::string(env, path, "path")?);
        let options = args::optional_json(env, options, "options", ErrorCode::InvalidArgument)?;
        let watch = crate::config::watch::watch_option(options.as_ref())?;
        let supervisor = Self::with_source(env, services_file::load_services_source(&path)?)?;
        if watch {
            let spawn: services_file::Spawn = Arc::new(|task| {
                napi::bindgen_prelude::spawn(task);
            });
            let watching = services_file::watch_services_file(path, Arc::downgrade(&supervisor.core), spawn)?;
            supervisor.state.borrow_mut().file_watch = Some(watching);
        }
        Ok(supervisor)
    }

    /// Re-reads the services from where this supervisor got them: its `manifests` folders again
    /// (a service package installed or removed) with the config's overrides, and applies the
    /// result as `setServices` does. Resolves with `{ added, changed, removed, diagnostics }`
    /// (a diagnostic per manifest file skipped, also logged). Rejects with `INVALID_CONFIG`,
    /// `MANIFESTS_NOT_FOUND` (nothing changes then) or `CLOSED`.
    #[napi(catch_unwind, ts_return_type = "Promise<ServicesRefresh>")]
    pub fn refresh<'env>(&self, env: &'env Env) -> Result<JsPromise<'env>, Code> {
        let core = self.core.clone();
        promise(env, &self.state, async move { core.refresh().await }, serde_form)
    }
}

impl ServiceSupervisor {
    fn with_source(env: &Env, source: ServicesSource) -> Result<Self, Code> {
        let mut warnings = vec![];
        let config = resolve_services_section(&source.section, &source.base_dir, &mut warnings)?.config;
        crate::error::log_warnings(&warnings);
        let telemetry = Arc::new(SupervisorTelemetry::default());
        let spawn_env = Arc::new(JsSpawnEnv::default());
        let arbiter_calls = Arc::new(ArbiterCalls::default());
        let asks = Arc::new(ArbiterLease::new(arbiter_calls.clone(), StartupLeasePolicy::new(&config)));
        let hooks = SupervisorHooks {
            vram: Some(telemetry.clone() as Arc<dyn VramSource>),
            startup_lease: Some(asks.clone() as Arc<dyn StartupLease>),
            task_routes: Some(asks as Arc<dyn TaskRoutes>),
            host_memory: Some(telemetry.clone() as Arc<dyn HostMemorySource>),
            spawn_env: Some(spawn_env.clone() as Arc<dyn SpawnEnv>),
        };
        let (core, receiver) = Supervisor::new(config, hooks);
        let events = Arc::new(ServiceEventFeed::new(receiver, telemetry.clone()));
        let state = Rc::new(RefCell::new(SupervisorBinding {
            closed: false,
            events: events.clone(),
            listeners: Listeners::default(),
            arbiter: ArbiterSlot::new(arbiter_calls),
            file_watch: None,
        }));
        let wake = js::wake_function(env, &state, "servicesWake", dispatch).js()?;
        napi::bindgen_prelude::spawn(forward(events, wake));
        core.set_source(source);
        Ok(Self { core: Arc::new(core), telemetry, spawn_env, state })
    }
}

#[napi]
impl ServiceSupervisor {
    /// Starts every service that is not on demand (dependencies first, then config order) and
    /// resolves when each one is ready or has definitively failed (after its restarts), one
    /// outcome per service in start order. `{ only }` narrows it to the named services and what
    /// they depend on, with the same order, start slots and gates. Rejects with `CLOSED`,
    /// `UNKNOWN_SERVICE` (an `only` name; nothing starts) or `INVALID_ARGUMENT`.
    #[napi(catch_unwind, ts_return_type = "Promise<ServiceOutcome[]>", ts_args_type = "options?: StartAllOptions")]
    pub fn start_all<'env>(&self, env: &'env Env, options: Option<Unknown>) -> Result<JsPromise<'env>, Code> {
        let options = match args::optional_json(env, options, "options", ErrorCode::InvalidArgument)? {
            Some(value) => StartAllOptions::from_json(&value)?,
            None => StartAllOptions::default(),
        };
        let core = self.core.clone();
        promise(env, &self.state, async move { core.start_chosen(&options).await }, serde_form)
    }

    /// Starts one service and what it depends on; resolves with its outcome. Rejects with
    /// `UNKNOWN_SERVICE` or `CLOSED`.
    #[napi(catch_unwind, ts_return_type = "Promise<ServiceOutcome>", ts_args_type = "name: string")]
    pub fn start<'env>(&self, env: &'env Env, name: Option<Unknown>) -> Result<JsPromise<'env>, Code> {
        let name = args::string(env, name, "name")?;
        let core = self.core.clone();
        let start = async move { Ok(ServiceOutcome { outcome: core.start(&name).await?, service: name }) };
        promise(env, &self.state, start, serde_form)
    }

    /// Starts a service (on-demand or not) and what it depends on if it is not running, and
    /// resolves with its status once it is ready. Counts as use for `keepAliveMs`. Rejects with
    /// the start's error (`VRAM_TIMEOUT`, `VRAM_OOM`, `SERVICE_EXITED`, ...), `UNKNOWN_SERVICE`
    /// or `CLOSED`.
    #[napi(catch_unwind, ts_return_type = "Promise<ServiceStatus>", ts_args_type = "name: string")]
    pub fn ensure<'env>(&self, env: &'env Env, name: Option<Unknown>) -> Result<JsPromise<'env>, Code> {
        let name = args::string(env, name, "name")?;
        let core = self.core.clone();
        promise(env, &self.state, async move { core.ensure(&name).await }, serde_form)
    }

    /// Stops one service: `stopSignal` to its process group, SIGKILL after `stopTimeoutMs`;
    /// resolves once the group is gone and reaped. Dependents are left running.
    #[napi(catch_unwind, ts_return_type = "Promise<void>", ts_args_type = "name: string")]
    pub fn stop<'env>(&self, env: &'env Env, name: Option<Unknown>) -> Result<JsPromise<'env>, Code> {
        let name = args::string(env, name, "name")?;
        let core = self.core.clone();
        // In this turn: `status(name).state` reads 'stopping' as soon as stop() returns. An
        // unknown name rejects (as it always did) rather than throws.
        let begun = core.begin_stop(&name);
        let stop = async move {
            begun?;
            core.stop(&name).await
        };
        promise(env, &self.state, stop, nothing)
    }

    /// Sets the hook asked for extra environment just before each spawn of any service,
    /// restarts included: `(service, attempt) => ({ MODEL_DIR: ... })`, or a promise of that
    /// (`undefined` adds nothing). Its variables win over the service's `env`. A hook that
    /// throws, rejects, answers something other than an object of strings, or takes over 30 s
    /// fails that start with `SPAWN_FAILED`. `null` removes it.
    #[napi(
        catch_unwind,
        ts_args_type = "hook: ((service: string, attempt: number) => Record<string, string> | undefined | Promise<Record<string, string> | undefined>) | null"
    )]
    pub fn before_spawn(&self, env: &Env, hook: Option<Unknown>) -> Result<(), Code> {
        self.spawn_env.set(env, hook)
    }

    /// Replaces the service list while the node runs, keeping the runtime state of the services
    /// that stay: new ones are added (not started), removed ones stopped then dropped, changed
    /// ones take effect at their next start (a running one keeps running). Resolves with what
    /// changed; events `added`, `changed` and `removed` say it too. An invalid list changes
    /// nothing and rejects with `INVALID_CONFIG` and its JSON path (`services[2].command: ...`);
    /// `CLOSED` after close().
    #[napi(catch_unwind, ts_return_type = "Promise<ServicesUpdate>", ts_args_type = "services: ServiceConfig[]")]
    pub fn set_services<'env>(&self, env: &'env Env, services: Option<Unknown>) -> Result<JsPromise<'env>, Code> {
        let services = args::required_json(env, services, "services", ErrorCode::InvalidConfig)?;
        let core = self.core.clone();
        promise(env, &self.state, async move { core.set_services(&services).await }, serde_form)
    }

    /// Stops then starts one service; resolves with the new start's outcome.
    #[napi(catch_unwind, ts_return_type = "Promise<ServiceOutcome>", ts_args_type = "name: string")]
    pub fn restart<'env>(&self, env: &'env Env, name: Option<Unknown>) -> Result<JsPromise<'env>, Code> {
        let name = args::string(env, name, "name")?;
        let core = self.core.clone();
        let restart = async move { Ok(ServiceOutcome { outcome: core.restart(&name).await?, service: name }) };
        promise(env, &self.state, restart, serde_form)
    }

    /// Stops every service, dependents before what they depend on.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn stop_all<'env>(&self, env: &'env Env) -> Result<JsPromise<'env>, Code> {
        let core = self.core.clone();
        promise(env, &self.state, done(async move { core.stop_all().await }), nothing)
    }

    /// Stops everything this supervisor started and refuses later starts with `CLOSED`. No event
    /// listener is called after this call. Idempotent.
    #[napi(catch_unwind, ts_return_type = "Promise<void>")]
    pub fn close<'env>(&self, env: &'env Env) -> Result<JsPromise<'env>, Code> {
        {
            let mut s = self.state.borrow_mut();
            s.closed = true;
            s.file_watch = None;
            s.arbiter.stop_attributing();
            s.listeners.clear();
            s.events.queue().clear();
        }
        let core = self.core.clone();
        promise(env, &self.state, done(async move { core.close().await }), nothing)
    }

    /// One service's status. Throws `UNKNOWN_SERVICE`.
    #[napi(catch_unwind, ts_args_type = "name: string", ts_return_type = "ServiceStatus")]
    pub fn status<'env>(&self, env: &'env Env, name: Option<Unknown>) -> Result<Unknown<'env>, Code> {
        let name = args::string(env, name, "name")?;
        js::to_js(env, &self.core.status(&name)?)
    }

    /// Every service's status, in config order.
    #[napi(catch_unwind, ts_return_type = "ServiceStatus[]")]
    pub fn statuses<'env>(&self, env: &'env Env) -> Result<Unknown<'env>, Code> {
        js::to_js(env, &self.core.statuses())
    }

    /// What the host can take on now, for the orchestrator's own worker pools: the attached
    /// Telemetry's available memory less `hostMemHeadroomMb` and less what the services loading
    /// are still expected to take; with `perWorkerMb`, how many more workers of that size fit
    /// (0 while SWAP_ACTIVE is raised). Read live at each call. `null` without an attached
    /// Telemetry with a sample. Throws `INVALID_ARGUMENT` for a `perWorkerMb` that is not a
    /// number above 0.
    #[napi(catch_unwind, ts_args_type = "perWorkerMb?: number", ts_return_type = "HostBudget | null")]
    pub fn host_budget<'env>(&self, env: &'env Env, per_worker_mb: Option<Unknown>) -> Result<Unknown<'env>, Code> {
        let per_worker_mb = args::optional_json(env, per_worker_mb, "perWorkerMb", ErrorCode::InvalidArgument)?;
        let per_worker_mb = HostBudget::per_worker_arg(per_worker_mb.as_ref())?;
        js::to_js(env, &self.core.host_budget().map(|budget| budget.answer(per_worker_mb)).transpose()?)
    }

    /// Calls `listener(event)` for every service event; returns a function that unsubscribes.
    #[napi(catch_unwind, ts_args_type = "listener: (event: ServiceEvent) => void", ts_return_type = "() => void")]
    pub fn on_event<'env>(&self, env: &'env Env, listener: Unknown<'env>) -> Result<Function<'env, (), ()>, Code> {
        if self.state.borrow().closed {
            return Err(SidecarError::new(ErrorCode::Closed, "the service supervisor is closed").into());
        }
        js::subscribe(env, &self.state, listener.raw(), |s| &mut s.listeners, |_| ())
    }

    /// Reads free VRAM for the VRAM gate and `gpu.key: 'auto'` placement (and per-process VRAM,
    /// else the GPU's used memory, for the learned profile) from `telemetry`'s latest sample, live
    /// or replayed, and registers every service pid in it (`processes[].service` is the service
    /// name). Replaces an earlier one; returns a function
    /// that detaches. Until the Telemetry's first sample, the gates wait for it (`telemetry-wait`,
    /// within each gate's timeout); when a sample has no NVML figures for a service's GPU, that
    /// service starts ungated with a `vram-gate-off` event. Throws `CLOSED` for a closed Telemetry.
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
        let id = self.telemetry.attach(Box::new(latest), telemetry.registry());
        let link = Arc::downgrade(&self.telemetry);
        js::function(env, "detachTelemetry", move |_| link.upgrade().into_iter().for_each(|link| link.detach(id))).js()
    }

    /// With `gpuStartupLease: true`, each GPU service holds a lease from `arbiter` on its GPU
    /// (task type `SERVICE_STARTUP`, `busyPolicy: 'WAIT'`, `maxWaitMs`: `vramTimeoutMs`,
    /// `holdMaxMs`: its `readinessTimeoutMs`) from before its VRAM gate until it is ready or has
    /// failed. A lease not granted fails that start with `GPU_LEASE_NOT_GRANTED`. Without an
    /// attached arbiter GPU services load without a lease. Replaces an earlier one, left as
    /// detaching leaves it (its requests no longer start on-demand services); returns a function
    /// that detaches.
    #[napi(catch_unwind, ts_args_type = "arbiter: GpuArbiter", ts_return_type = "() => void")]
    pub fn attach_arbiter<'env>(
        &self,
        env: &'env Env,
        arbiter: Option<Unknown<'env>>,
    ) -> Result<Function<'env, (), ()>, Code> {
        let shared = args::class_ref::<GpuArbiter>(env, arbiter, "arbiter", "a GpuArbiter")?.shared();
        let wake = js::wake_function(env, &self.state, "servicesLeaseWake", serve_arbiter_calls).js()?;
        let waker = move || {
            wake.call((), ThreadsafeFunctionCallMode::NonBlocking);
        };
        let spawn: Spawn = |f| drop(napi::bindgen_prelude::spawn(f));
        let Attached { id, calls } = self.state.borrow_mut().arbiter.attach(shared, &self.core, spawn, Box::new(waker));
        for (arbiter, call) in calls {
            if let Some(arbiter) = arbiter.upgrade() {
                native_leases::apply(env, &arbiter, call)?;
            }
        }
        let core = Arc::downgrade(&self.core);
        js::detach_function(env, "detachArbiter", &self.state, move |env, state| {
            // Taken out first: the arbiter's listeners may call this supervisor.
            let Some((arbiter, tie)) = state.borrow_mut().arbiter.take(id) else { return };
            let standby_off = arbiter.with_host(|host| tie.detached(host, core.upgrade().as_deref()));
            // What waited for an on-demand service is granted as usual from now on.
            if let (Some(arbiter), Some(call)) = (arbiter.upgrade(), standby_off) {
                if let Err(e) = native_leases::apply(env, &arbiter, call) {
                    tracing::warn!(error = %e.reason, "could not take on-demand task types off standby");
                }
            }
        })
    }
}

impl HostHandle for ArbiterHandle {
    fn with_host<R>(&self, f: impl FnOnce(Option<&mut ArbiterHost>) -> R) -> R {
        match self.upgrade() {
            Some(a) => f(Some(&mut a.borrow_mut().host)),
            None => f(None),
        }
    }
}

/// Applies the asks the core queued for the attached arbiter, on the JS thread where it lives.
/// Detached meanwhile: the asks were dropped with their replies, which fails waiting starts.
fn serve_arbiter_calls(env: &Env, state: &Rc<RefCell<SupervisorBinding>>) {
    let (calls, arbiter) = {
        let s = state.borrow();
        let Some(arbiter) = s.arbiter.current().and_then(Weak::upgrade) else { return };
        (s.arbiter.take_calls(), arbiter)
    };
    for call in calls {
        let service = call.service().map(str::to_owned);
        if let Err(e) = native_leases::apply(env, &arbiter, call) {
            tracing::warn!(service, error = %e.reason, "could not apply a service supervisor's call to the arbiter");
        }
    }
}

/// A promise settled from `fut` ([`js::promises::spawn_promise`]). Listeners get every event the
/// core sent before the promise settles (so a `ready` event is seen before `startAll` resolves).
fn promise<'env, T, F>(
    env: &'env Env,
    state: &Rc<RefCell<SupervisorBinding>>,
    fut: F,
    settle: Settle<T>,
) -> Result<JsPromise<'env>, Code>
where
    T: Send + 'static,
    F: Future<Output = SidecarResult<T>> + Send + 'static,
{
    let state = Rc::downgrade(state);
    let deliver = move |env: &Env| {
        if let Some(state) = state.upgrade() {
            let events = state.borrow().events.clone();
            events.deliver_before_settling(&Delivery { env, state: &state }, Instant::now);
        }
    };
    spawn_promise(env, fut, deliver, settle)
}

/// The forwarding task: queues events and wakes the JS thread; ends when the core is gone.
async fn forward(events: Arc<ServiceEventFeed>, wake: WakeFn) {
    while let Some(wake_js) = events.pull().await {
        if wake_js {
            wake.call((), ThreadsafeFunctionCallMode::NonBlocking);
        }
    }
}

/// A wake from the forwarding task: one turn's slice of the queued events.
fn dispatch(env: &Env, state: &Rc<RefCell<SupervisorBinding>>) {
    let events = state.borrow().events.clone();
    events.deliver_turn(&Delivery { env, state }, Instant::now);
}

/// The supervisor's listeners, as [`ServiceEventFeed`] delivers to them.
struct Delivery<'a> {
    env: &'a Env,
    state: &'a Rc<RefCell<SupervisorBinding>>,
}

impl JsListeners for Delivery<'_> {
    fn open(&self) -> bool {
        !self.state.borrow().closed
    }

    fn deliver(&self, queued: QueuedEvent) {
        let env = self.env;
        let listeners = self.state.borrow().listeners.current();
        if listeners.is_empty() {
            return;
        }
        let value = match &queued {
            // The flood case: built directly, skipping JSON (about 1.5x the lines a second in
            // benchmarks/flood.mjs).
            QueuedEvent::Event(ServiceEvent {
                service,
                timestamp_ms,
                kind: ServiceEventKind::Log { stream, line },
            }) => log_event_object(env, service, *timestamp_ms, *stream, line).ok(),
            QueuedEvent::Event(event) => js::to_js(env, &event.to_json()).ok().map(|v| v.raw()),
            QueuedEvent::LogDropped { service, count, at } => {
                let note = ListenerNote::LogDropped { service: service.clone(), at: *at, count: *count };
                js::to_js(env, &note).ok().map(|v| v.raw())
            }
        };
        if let Some(value) = value {
            js::call_listeners(env, &listeners, value, "ServiceSupervisor");
        }
    }

    /// `setImmediate`: after pending I/O (a threadsafe-function call would not yield, Node runs
    /// queued calls back to back).
    fn schedule_next_turn(&self) -> bool {
        let weak = Rc::downgrade(self.state);
        let scheduled = js::set_immediate(self.env, "servicesNextSlice", move |env| {
            if let Some(state) = weak.upgrade() {
                dispatch(env, &state);
            }
        });
        if let Err(e) = &scheduled {
            tracing::warn!(error = %e.reason, "could not schedule the next slice of service events");
        }
        scheduled.is_ok()
    }
}

/// `{ type: 'log', service, at, stream, line }`, as `ServiceEvent::to_json` would give it.
fn log_event_object(
    env: &Env,
    service: &str,
    at: u64,
    stream: OutputStream,
    line: &str,
) -> napi::Result<sys::napi_value> {
    js::object(
        env,
        &[
            (c"type", js::string(env, "log")?),
            (c"service", js::string(env, service)?),
            (c"at", js::number(env, at as f64)?),
            (c"stream", js::string(env, stream.as_str())?),
            (c"line", js::string(env, line)?),
        ],
    )
}
