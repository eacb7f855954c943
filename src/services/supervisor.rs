//! The supervisor: starts services in dependency order with a bound on concurrent loads, gates
//! GPU services on free VRAM, waits for real readiness, restarts by policy, and stops them.
//!
//! Each started service is driven by one runner task that owns its process from the first start
//! attempt to its final state (ready-and-running, failed or stopped); `stop` asks the runner to
//! end and waits for it, so a stop never races with a start.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::config::{GpuNeed, Readiness, RestartPolicy, ServiceSpec, ServicesConfig};
use super::events::{epoch_ms, ExitInfo, ServiceEvent, ServiceEventKind};
use super::hooks::{StartupLease, VramReading, VramSource};
use super::host_death::HostDeathWatchdog;
use super::port::{port_holder, port_is_free};
use super::probe::{probe_http, probe_tcp};
use super::process::{OutputSink, ServiceProcess};
use super::profile::{LearnedProfile, ProfileStore};
use crate::error::{ErrorCode, SidecarError, SidecarResult};

/// How long to wait for the rest of a dead process's output before reporting its last lines.
const OUTPUT_DRAIN: Duration = Duration::from_millis(500);
/// The longest one HTTP or TCP probe may take, however short the probe interval.
const MIN_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a running GPU service's VRAM use is sampled after it is ready.
const RUNNING_VRAM_SAMPLE: Duration = Duration::from_secs(1);

/// Where a service is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    /// Never started.
    Idle,
    /// Waiting for a lease or VRAM, spawned and not ready yet.
    Starting,
    Ready,
    /// Exited and waiting for its restart backoff.
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

/// A snapshot of one service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    pub state: ServiceState,
    /// The service process's pid (also its process group id) while it runs.
    pub pid: Option<u32>,
    /// Restarts since the last explicit start.
    pub restarts: u32,
    /// Spawn to ready, for the current run once it was ready.
    pub time_to_ready_ms: Option<u64>,
    /// Why it failed, when `state` is `Failed`.
    pub error: Option<SidecarError>,
    /// The dependency that was not ready, when `state` is `Blocked`.
    pub blocked_by: Option<String>,
    /// What it took on earlier runs.
    pub learned: LearnedProfile,
}

/// How one service's start ended.
#[derive(Debug, Clone, PartialEq)]
pub enum StartOutcome {
    /// Ready, `time_to_ready_ms` after its (last) spawn.
    Ready { time_to_ready_ms: u64 },
    /// Failed for good; `last_lines` is the end of its output, when it ran.
    Failed { error: SidecarError, last_lines: Vec<String> },
    /// Not started: `dependency` did not become ready.
    Blocked { dependency: String },
    /// Stopped before it became ready (or the supervisor was closed).
    Stopped,
}

/// A service's name and how its start ended.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceOutcome {
    pub service: String,
    pub outcome: StartOutcome,
}

/// What the supervisor uses from the rest of the addon; both are optional.
#[derive(Clone, Default)]
pub struct SupervisorHooks {
    /// Free VRAM readings; without it the VRAM gate is off (and says so in events).
    pub vram: Option<Arc<dyn VramSource>>,
    /// Taken around each GPU service's load when `gpuStartupLease` is set.
    pub startup_lease: Option<Arc<dyn StartupLease>>,
}

/// Starts, watches and stops the configured services. Dropping it kills every service it runs;
/// [`Supervisor::close`] stops them gracefully instead.
pub struct Supervisor {
    shared: Arc<Shared>,
}

struct Shared {
    config: ServicesConfig,
    order: Vec<usize>,
    hooks: SupervisorHooks,
    events: mpsc::UnboundedSender<ServiceEvent>,
    /// One permit per service allowed to be loading at once.
    start_slots: Arc<Semaphore>,
    profiles: Mutex<ProfileStore>,
    cells: Vec<Mutex<Cell>>,
    /// Bumped on every state change, so schedulers can wait for "something changed".
    changes: watch::Sender<u64>,
    closed: AtomicBool,
    /// Kills the services' process groups if the host dies; started with the first service and
    /// let go by `close` (each running service holds it too, until its group is killed).
    host_death_watchdog: Mutex<Option<Arc<HostDeathWatchdog>>>,
}

struct Cell {
    state: ServiceState,
    pid: Option<u32>,
    /// When the running process was spawned (ms since the Unix epoch), so the VRAM gate can tell
    /// whether a reading already shows its memory; `u64::MAX` while the spawn is under way.
    spawned_at_ms: Option<u64>,
    restarts: u32,
    time_to_ready_ms: Option<u64>,
    error: Option<SidecarError>,
    last_lines: Vec<String>,
    blocked_by: Option<String>,
    runner: Option<Runner>,
}

impl Cell {
    /// Forgets the process once it is gone.
    fn clear_process(&mut self) {
        self.pid = None;
        self.spawned_at_ms = None;
    }
}

struct Runner {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// How one start attempt ended.
enum Attempt {
    Ready(Box<Launched>),
    Exited { exit: ExitInfo, last_lines: Vec<String> },
    Failed { error: SidecarError, last_lines: Vec<String> },
    Stopped,
}

/// A spawned process with its output sink and VRAM sampler.
struct Launched {
    process: ServiceProcess,
    sink: Arc<OutputSink>,
    vram_peak: Option<VramSampler>,
}

/// Samples a process's VRAM use in the background; dropping it stops sampling.
struct VramSampler {
    peak_mb: Arc<AtomicU64>,
    /// Sampling slows down once the service is ready (and the model is loaded).
    loaded: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl VramSampler {
    fn peak(&self) -> Option<u64> {
        Some(self.peak_mb.load(Ordering::Relaxed)).filter(|&mb| mb > 0)
    }
}

impl Drop for VramSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a dependency set looks to a scheduler.
enum Dependencies {
    Ready,
    Pending,
    NotReady(String),
}

impl Supervisor {
    /// A supervisor for `config` (validated by [`ServicesConfig::from_json`]) and the receiver
    /// of its events; events queue up unread until the receiver is read or dropped. Nothing
    /// starts until `start_all` or `start` is called; those need a tokio runtime.
    pub fn new(config: ServicesConfig, hooks: SupervisorHooks) -> (Self, mpsc::UnboundedReceiver<ServiceEvent>) {
        let (events, receiver) = mpsc::unbounded_channel();
        let cell = || {
            Mutex::new(Cell {
                state: ServiceState::Idle,
                pid: None,
                spawned_at_ms: None,
                restarts: 0,
                time_to_ready_ms: None,
                error: None,
                last_lines: Vec::new(),
                blocked_by: None,
                runner: None,
            })
        };
        let shared = Shared {
            order: config.start_order(),
            start_slots: Arc::new(Semaphore::new(config.max_concurrent_starts.get() as usize)),
            profiles: Mutex::new(ProfileStore::load(config.state_file.as_deref())),
            cells: config.services.iter().map(|_| cell()).collect(),
            config,
            hooks,
            events,
            changes: watch::channel(0).0,
            closed: AtomicBool::new(false),
            host_death_watchdog: Mutex::new(None),
        };
        (Self { shared: Arc::new(shared) }, receiver)
    }

    /// Starts every service, dependencies first, and resolves when each is ready or has
    /// definitively failed (after its restarts), with one outcome per service in start order.
    pub async fn start_all(&self) -> SidecarResult<Vec<ServiceOutcome>> {
        self.shared.check_open()?;
        let targets = self.shared.order.clone();
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

    /// Stops one service (its stop signal, then SIGKILL after `stopTimeoutMs`) and waits until its
    /// process group is gone. Services that depend on it are left alone.
    pub async fn stop(&self, name: &str) -> SidecarResult<()> {
        let i = self.shared.index(name)?;
        self.shared.stop(i).await;
        Ok(())
    }

    /// Stops then starts one service.
    pub async fn restart(&self, name: &str) -> SidecarResult<StartOutcome> {
        self.stop(name).await?;
        self.start(name).await
    }

    /// Stops every service, dependents before what they depend on.
    pub async fn stop_all(&self) {
        for &i in self.shared.order.iter().rev() {
            self.shared.stop(i).await;
        }
    }

    /// Stops everything and refuses later starts with `CLOSED`.
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
        (0..self.shared.cells.len()).map(|i| self.shared.status(i)).collect()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Aborting a runner drops its process, which kills the process group.
        for cell in &self.shared.cells {
            if let Some(runner) = &cell.lock().expect("cell lock").runner {
                runner.task.abort();
            }
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

    fn index(&self, name: &str) -> SidecarResult<usize> {
        self.config
            .index_of(name)
            .ok_or_else(|| SidecarError::new(ErrorCode::UnknownService, format!("no service named {name:?}")))
    }

    fn spec(&self, i: usize) -> &ServiceSpec {
        &self.config.services[i]
    }

    fn cell(&self, i: usize) -> std::sync::MutexGuard<'_, Cell> {
        self.cells[i].lock().expect("cell lock")
    }

    fn emit(&self, i: usize, kind: ServiceEventKind) {
        // Nobody listening is not an error: the supervisor works the same without a reader.
        let _ = self.events.send(ServiceEvent::now(&self.spec(i).name, kind));
    }

    fn set_state(&self, i: usize, state: ServiceState) {
        self.cell(i).state = state;
        self.changes.send_modify(|n| *n += 1);
    }

    fn state(&self, i: usize) -> ServiceState {
        self.cell(i).state
    }

    fn status(&self, i: usize) -> ServiceStatus {
        let learned = self.profiles.lock().expect("profiles lock").get(&self.spec(i).name);
        let cell = self.cell(i);
        ServiceStatus {
            name: self.spec(i).name.clone(),
            state: cell.state,
            pid: cell.pid,
            restarts: cell.restarts,
            time_to_ready_ms: cell.time_to_ready_ms,
            error: cell.error.clone(),
            blocked_by: cell.blocked_by.clone(),
            learned,
        }
    }

    /// `i` and everything it depends on, directly or not.
    fn with_dependencies(&self, i: usize) -> Vec<usize> {
        let mut found = vec![i];
        let mut next = 0;
        while next < found.len() {
            for d in self.config.dependency_indices(found[next]) {
                if !found.contains(&d) {
                    found.push(d);
                }
            }
            next += 1;
        }
        self.order.iter().copied().filter(|j| found.contains(j)).collect()
    }

    fn dependencies(&self, i: usize, pending: &[usize]) -> Dependencies {
        for d in self.config.dependency_indices(i) {
            if pending.contains(&d) {
                return Dependencies::Pending;
            }
            match self.state(d) {
                ServiceState::Ready => {}
                ServiceState::Starting | ServiceState::Restarting | ServiceState::Stopping => {
                    return Dependencies::Pending
                }
                _ => return Dependencies::NotReady(self.spec(d).name.clone()),
            }
        }
        Dependencies::Ready
    }

    /// Starts `targets` (given in start order), then waits until all of them are settled. Each
    /// one starts once its dependencies are ready (or is blocked once one of them is not), taking
    /// a start slot. The first pending service in start order waits for a slot; a later one may
    /// go ahead of it (while the first waits for its dependencies) only into a slot free now, so
    /// with one slot services load strictly in start order.
    async fn schedule(self: &Arc<Self>, targets: &[usize]) -> Vec<ServiceOutcome> {
        let mut pending = targets.to_vec();
        let mut changes = self.changes.subscribe();
        while !pending.is_empty() {
            changes.borrow_and_update();
            let next = pending.iter().enumerate().find_map(|(pos, &i)| match self.dependencies(i, &pending) {
                Dependencies::Ready => Some((pos, None)),
                Dependencies::NotReady(dep) => Some((pos, Some(dep))),
                Dependencies::Pending => None,
            });
            match next {
                Some((pos, Some(dependency))) => {
                    let i = pending.remove(pos);
                    self.block(i, dependency);
                }
                Some((0, None)) => {
                    let i = pending.remove(0);
                    if !self.is_active(i) {
                        let permit = self.start_slots.clone().acquire_owned().await;
                        self.launch(i, permit.expect("start slots are never closed"));
                    }
                }
                Some((pos, None)) if self.is_active(pending[pos]) => {
                    pending.remove(pos);
                }
                Some((pos, None)) => match self.start_slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let i = pending.remove(pos);
                        self.launch(i, permit);
                    }
                    Err(_) => {
                        let _ = changes.changed().await;
                    }
                },
                None => {
                    // The sender lives in `self`, so this only returns on a change.
                    let _ = changes.changed().await;
                }
            }
        }
        for &i in targets {
            let _ = changes.wait_for(|_| self.state(i).is_settled()).await;
        }
        targets
            .iter()
            .map(|&i| ServiceOutcome { service: self.spec(i).name.clone(), outcome: self.outcome(i) })
            .collect()
    }

    fn outcome(&self, i: usize) -> StartOutcome {
        let cell = self.cell(i);
        match cell.state {
            ServiceState::Ready => StartOutcome::Ready { time_to_ready_ms: cell.time_to_ready_ms.unwrap_or(0) },
            ServiceState::Failed => StartOutcome::Failed {
                error: cell.error.clone().expect("a failed service has an error"),
                last_lines: cell.last_lines.clone(),
            },
            ServiceState::Blocked => StartOutcome::Blocked {
                dependency: cell.blocked_by.clone().expect("a blocked service names its dependency"),
            },
            _ => StartOutcome::Stopped,
        }
    }

    fn block(&self, i: usize, dependency: String) {
        {
            let mut cell = self.cell(i);
            if cell.runner.as_ref().is_some_and(|r| !r.task.is_finished()) {
                return;
            }
            cell.blocked_by = Some(dependency.clone());
            cell.error = None;
        }
        self.emit(i, ServiceEventKind::Blocked { dependency });
        self.set_state(i, ServiceState::Blocked);
    }

    fn is_active(&self, i: usize) -> bool {
        self.cell(i).runner.as_ref().is_some_and(|r| !r.task.is_finished())
    }

    /// Hands service `i` to a new runner holding `permit`, unless one already runs it.
    fn launch(self: &Arc<Self>, i: usize, permit: OwnedSemaphorePermit) {
        let mut cell = self.cell(i);
        if cell.runner.as_ref().is_some_and(|r| !r.task.is_finished()) {
            return;
        }
        if self.closed.load(Ordering::SeqCst) {
            drop(cell);
            self.set_state(i, ServiceState::Stopped);
            return;
        }
        cell.restarts = 0;
        cell.error = None;
        cell.last_lines.clear();
        cell.blocked_by = None;
        cell.time_to_ready_ms = None;
        cell.state = ServiceState::Starting;
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(self.clone().run_guarded(i, permit, stop_rx));
        cell.runner = Some(Runner { stop, task });
        drop(cell);
        self.changes.send_modify(|n| *n += 1);
    }

    async fn stop(&self, i: usize) {
        let runner = self.cell(i).runner.take();
        let Some(runner) = runner else { return };
        let running = {
            let mut cell = self.cell(i);
            let running = matches!(cell.state, ServiceState::Starting | ServiceState::Ready | ServiceState::Restarting);
            if running {
                cell.state = ServiceState::Stopping;
            }
            running
        };
        if running {
            self.changes.send_modify(|n| *n += 1);
        }
        runner.stop.send_replace(true);
        let _ = runner.task.await;
        // The runner may have ended on its own just before the stop request reached it.
        if self.state(i) == ServiceState::Stopping {
            self.set_state(i, ServiceState::Stopped);
        }
    }

    /// Runs [`Self::run`] as its own task, so that a panic in it (a bug, or a hook that panics)
    /// fails the service with `INTERNAL` instead of leaving it starting forever, unseen. The
    /// unwinding drops the runner's process, which kills and reaps it.
    async fn run_guarded(self: Arc<Self>, i: usize, permit: OwnedSemaphorePermit, stop: watch::Receiver<bool>) {
        /// Aborting the outer task (a dropped supervisor) must end the inner one too.
        struct AbortOnDrop(JoinHandle<()>);
        impl Drop for AbortOnDrop {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let mut runner = AbortOnDrop(tokio::spawn(self.clone().run(i, permit, stop)));
        let Err(error) = (&mut runner.0).await else { return };
        let Ok(payload) = error.try_into_panic() else { return };
        let detail = crate::telemetry::sampler::panic_message(payload.as_ref());
        tracing::error!(service = %self.spec(i).name, %detail, "the service runner panicked");
        let error = SidecarError::new(
            ErrorCode::Internal,
            format!("{}: internal error in the service runner: {detail}", self.spec(i).name),
        );
        {
            let mut cell = self.cell(i);
            cell.clear_process();
            cell.error = Some(error.clone());
            cell.last_lines.clear();
        }
        self.emit(i, ServiceEventKind::Failed { error, last_lines: Vec::new() });
        self.set_state(i, ServiceState::Failed);
    }

    /// Drives service `i` from its first start attempt to its final state.
    async fn run(self: Arc<Self>, i: usize, permit: OwnedSemaphorePermit, mut stop: watch::Receiver<bool>) {
        let spec = self.spec(i);
        let mut permit = Some(permit);
        let mut attempt = 0u32;
        let end = loop {
            if permit.is_none() {
                tokio::select! {
                    p = self.start_slots.clone().acquire_owned() => {
                        permit = Some(p.expect("start slots are never closed"));
                    }
                    _ = stop_requested(&mut stop) => break None,
                }
            }
            self.set_state(i, ServiceState::Starting);
            let (exit, last_lines, was_ready) = match self.attempt(i, attempt, &mut stop).await {
                Attempt::Ready(launched) => {
                    // The slot is for loading; a ready service lets the next one load.
                    permit = None;
                    self.changes.send_modify(|n| *n += 1);
                    let Launched { mut process, sink, vram_peak } = *launched;
                    let exit = tokio::select! {
                        exit = process.wait() => Some(exit),
                        _ = stop_requested(&mut stop) => {
                            self.set_state(i, ServiceState::Stopping);
                            process.stop(spec.stop_signal, ms(spec.stop_timeout_ms.get())).await;
                            None
                        }
                    };
                    let peak = vram_peak.as_ref().and_then(VramSampler::peak);
                    self.profiles.lock().expect("profiles lock").record(&spec.name, None, peak);
                    let Some(exit) = exit else { break None };
                    process.drain_output(OUTPUT_DRAIN).await;
                    (exit, sink.tail(), true)
                }
                Attempt::Exited { exit, last_lines } => (exit, last_lines, false),
                Attempt::Failed { error, last_lines } => break Some((error, last_lines)),
                Attempt::Stopped => break None,
            };
            self.cell(i).clear_process();
            self.emit(i, ServiceEventKind::Exited { exit });
            let restart = &spec.restart;
            let wanted = match restart.policy {
                RestartPolicy::No => false,
                RestartPolicy::OnFailure => !exit.success(),
                RestartPolicy::Always => true,
            };
            if wanted && attempt < restart.max_restarts.get() as u32 {
                attempt += 1;
                let delay_ms = restart.delay_ms(attempt);
                self.cell(i).restarts = attempt;
                self.set_state(i, ServiceState::Restarting);
                self.emit(i, ServiceEventKind::Restarting { attempt, delay_ms });
                tokio::select! {
                    _ = tokio::time::sleep(ms(delay_ms)) => continue,
                    _ = stop_requested(&mut stop) => break None,
                }
            }
            if exit.success() && was_ready && !wanted {
                break None;
            }
            let after = if attempt > 0 { format!(" after {attempt} restarts") } else { String::new() };
            let during = if was_ready { "" } else { " during startup" };
            let error = SidecarError::new(
                ErrorCode::ServiceExited,
                format!("{}: exited with {exit}{during}{after}", spec.name),
            );
            break Some((error, last_lines));
        };
        drop(permit);
        let mut cell = self.cell(i);
        cell.clear_process();
        match end {
            Some((error, last_lines)) => {
                cell.error = Some(error.clone());
                cell.last_lines = last_lines.clone();
                drop(cell);
                self.emit(i, ServiceEventKind::Failed { error, last_lines });
                self.set_state(i, ServiceState::Failed);
            }
            None => {
                drop(cell);
                self.emit(i, ServiceEventKind::Stopped);
                self.set_state(i, ServiceState::Stopped);
            }
        }
    }

    /// One start attempt: lease, VRAM gate, port check, spawn, then readiness against its deadline,
    /// an early exit, or a stop request.
    async fn attempt(&self, i: usize, attempt: u32, stop: &mut watch::Receiver<bool>) -> Attempt {
        let spec = self.spec(i);
        let learned = self.profiles.lock().expect("profiles lock").get(&spec.name);
        self.emit(i, ServiceEventKind::Starting { attempt, expected_ready_ms: learned.time_to_ready_ms });
        let failed = |error| Attempt::Failed { error, last_lines: Vec::new() };

        // Dropped when this attempt ends: the lease covers the load, not the service's life.
        let _lease = match (&spec.gpu, &self.hooks.startup_lease) {
            (Some(gpu), Some(lease)) if self.config.gpu_startup_lease => tokio::select! {
                guard = lease.acquire(&spec.name, &gpu.key) => match guard {
                    Ok(guard) => Some(guard),
                    Err(error) => return failed(error),
                },
                _ = stop_requested(stop) => return Attempt::Stopped,
            },
            _ => None,
        };
        if let Some(gpu) = &spec.gpu {
            tokio::select! {
                gate = self.vram_gate(i, gpu, learned) => if let Err(error) = gate { return failed(error) },
                _ = stop_requested(stop) => return Attempt::Stopped,
            }
        }
        if let Some(port) = spec.port {
            let port = port.get() as u16;
            if !port_is_free(port) {
                return failed(port_in_use(&spec.name, port));
            }
        }

        let pattern = match &spec.readiness {
            Readiness::LogLine(p) => Some(p.pattern.0.clone()),
            _ => None,
        };
        let spawn_failed = |e: std::io::Error| {
            SidecarError::new(ErrorCode::SpawnFailed, format!("{}: cannot start {:?}: {e}", spec.name, spec.command))
        };
        let sink = match OutputSink::new(spec, self.events.clone(), pattern) {
            Ok(sink) => Arc::new(sink),
            Err(e) => return failed(spawn_failed(e)),
        };
        if spec.gpu.is_some() {
            // Until the spawn returns, other gates count this load against any reading.
            self.cell(i).spawned_at_ms = Some(u64::MAX);
        }
        let started = Instant::now();
        let watchdog = self.host_death_watchdog();
        let mut process = match ServiceProcess::spawn(spec, sink.clone(), watchdog.as_ref()).await {
            Ok(process) => process,
            Err(e) => return failed(spawn_failed(e)),
        };
        let pid = process.pid();
        {
            let mut cell = self.cell(i);
            cell.pid = Some(pid);
            cell.spawned_at_ms = Some(epoch_ms());
        }
        self.emit(i, ServiceEventKind::Spawned { pid });
        let vram_peak = self.sample_vram(i, pid);

        let timeout_ms = spec.readiness_timeout_ms.get();
        let last_probe_failure = Mutex::new(None::<String>);
        tokio::select! {
            ready = tokio::time::timeout(ms(timeout_ms), self.wait_ready(i, &sink, &last_probe_failure)) => match ready {
                Ok(()) => {
                    let time_to_ready_ms = started.elapsed().as_millis() as u64;
                    if let Some(sampler) = &vram_peak {
                        sampler.loaded.store(true, Ordering::Relaxed);
                    }
                    let peak = vram_peak.as_ref().and_then(VramSampler::peak);
                    self.profiles.lock().expect("profiles lock").record(&spec.name, Some(time_to_ready_ms), peak);
                    self.cell(i).time_to_ready_ms = Some(time_to_ready_ms);
                    // Event first: whoever sees the state settle must find its event sent.
                    self.emit(i, ServiceEventKind::Ready { time_to_ready_ms });
                    self.set_state(i, ServiceState::Ready);
                    Attempt::Ready(Box::new(Launched { process, sink, vram_peak }))
                }
                Err(_) => {
                    self.emit(i, ServiceEventKind::ReadinessTimeout { timeout_ms });
                    process.stop(spec.stop_signal, ms(spec.stop_timeout_ms.get())).await;
                    process.drain_output(OUTPUT_DRAIN).await;
                    let last = last_probe_failure.lock().expect("probe lock").take();
                    let detail = last.map(|r| format!("; last probe: {r}")).unwrap_or_default();
                    let error = SidecarError::new(
                        ErrorCode::ReadinessTimeout,
                        format!("{}: not ready after {timeout_ms} ms{detail}", spec.name),
                    );
                    Attempt::Failed { error, last_lines: sink.tail() }
                }
            },
            exit = process.wait() => {
                process.drain_output(OUTPUT_DRAIN).await;
                Attempt::Exited { exit, last_lines: sink.tail() }
            }
            _ = stop_requested(stop) => {
                process.stop(spec.stop_signal, ms(spec.stop_timeout_ms.get())).await;
                Attempt::Stopped
            }
        }
    }

    /// Resolves once service `i` passes its readiness check; never on its own otherwise.
    async fn wait_ready(&self, i: usize, sink: &OutputSink, last_failure: &Mutex<Option<String>>) {
        let spec = self.spec(i);
        let interval = ms(spec.probe_interval_ms.get());
        let probe_timeout = interval.max(MIN_PROBE_TIMEOUT);
        match &spec.readiness {
            Readiness::Immediate(_) => {}
            Readiness::LogLine(_) => {
                let _ = sink.pattern_seen().wait_for(|seen| *seen).await;
            }
            Readiness::Http(_) | Readiness::Tcp(_) => {
                tokio::time::sleep(ms(spec.start_period_ms.get())).await;
                loop {
                    let result = match &spec.readiness {
                        Readiness::Http(probe) => probe_http(probe, probe_timeout).await,
                        Readiness::Tcp(probe) => {
                            let default_port = spec.port.map_or(0, |p| p.get() as u16);
                            probe_tcp(probe, default_port, probe_timeout).await
                        }
                        _ => unreachable!("only probes loop"),
                    };
                    match result {
                        Ok(()) => return,
                        Err(reason) => {
                            *last_failure.lock().expect("probe lock") = Some(reason.clone());
                            self.emit(i, ServiceEventKind::ProbeFailed { reason });
                        }
                    }
                    tokio::time::sleep(interval).await;
                }
            }
        }
    }

    /// Waits until `gpu` has room for the service plus headroom. A reading taken before another
    /// service on that GPU was spawned does not show that service's memory yet, so its expected
    /// need is taken off the reading (as the arbiter does for leases granted after a sample). Off
    /// (with an event saying why) when there is no telemetry or no estimate of the service's need.
    async fn vram_gate(&self, i: usize, gpu: &GpuNeed, learned: LearnedProfile) -> SidecarResult<()> {
        let gate_off = |reason: &str| {
            self.emit(i, ServiceEventKind::VramGateOff { gpu_key: gpu.key.clone(), reason: reason.to_string() });
            Ok(())
        };
        let Some(source) = &self.hooks.vram else {
            return gate_off("no VRAM telemetry source");
        };
        let Some(need) = gpu.vram_mb.map(|mb| mb.get()).or(learned.peak_vram_mb) else {
            return gate_off("no vramMb configured and none learned from an earlier run");
        };
        let needed_mb = need.saturating_add(self.config.vram_headroom_mb.get());
        let limit_ms = self.config.vram_timeout_ms.get();
        let deadline = Instant::now() + ms(limit_ms);
        let poll = ms(self.spec(i).probe_interval_ms.get());
        let mut announced = false;
        loop {
            let Some(reading) = source.free_mb(&gpu.key) else {
                return gate_off("no VRAM telemetry for this GPU");
            };
            let unseen_mb = self.unseen_vram_mb(i, &gpu.key, reading);
            let free_mb = reading.free_mb.saturating_sub(unseen_mb);
            if free_mb >= needed_mb {
                return Ok(());
            }
            if !announced {
                self.emit(i, ServiceEventKind::VramWait { gpu_key: gpu.key.clone(), needed_mb, free_mb });
                announced = true;
            }
            if Instant::now() >= deadline {
                return Err(SidecarError::new(
                    ErrorCode::VramTimeout,
                    format!(
                        "{}: {} had {free_mb} MB free after {limit_ms} ms{}, needs {needed_mb} MB ({need} MB + {} MB headroom)",
                        self.spec(i).name,
                        gpu.key,
                        if unseen_mb > 0 {
                            format!(" (the reading less {unseen_mb} MB expected for services spawned after it)")
                        } else {
                            String::new()
                        },
                        self.config.vram_headroom_mb.get()
                    ),
                ));
            }
            tokio::time::sleep(poll.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// The expected VRAM (MB: `vramMb`, else the learned peak, else 0) of the other services on
    /// `gpu_key` whose running process was spawned at or after `reading` was taken. Ties count,
    /// because both times are whole ms.
    fn unseen_vram_mb(&self, i: usize, gpu_key: &str, reading: VramReading) -> u64 {
        let mut unseen_mb = 0u64;
        for (j, spec) in self.config.services.iter().enumerate() {
            let Some(gpu) = spec.gpu.as_ref().filter(|g| j != i && g.key == gpu_key) else { continue };
            let spawned_at_ms = self.cell(j).spawned_at_ms;
            if spawned_at_ms.is_none_or(|at| at < reading.sampled_at_ms) {
                continue;
            }
            let expected = gpu
                .vram_mb
                .map(|mb| mb.get())
                .or_else(|| self.profiles.lock().expect("profiles lock").get(&spec.name).peak_vram_mb);
            unseen_mb = unseen_mb.saturating_add(expected.unwrap_or(0));
        }
        unseen_mb
    }

    /// Starts sampling the VRAM a GPU service's process uses, when telemetry is there.
    fn sample_vram(&self, i: usize, pid: u32) -> Option<VramSampler> {
        let source = self.hooks.vram.clone()?;
        self.spec(i).gpu.as_ref()?;
        let peak_mb = Arc::new(AtomicU64::new(0));
        let loaded = Arc::new(AtomicBool::new(false));
        let loading_interval = ms(self.spec(i).probe_interval_ms.get());
        let task = tokio::spawn({
            let (peak_mb, loaded) = (peak_mb.clone(), loaded.clone());
            async move {
                loop {
                    if let Some(mb) = source.process_used_mb(pid) {
                        peak_mb.fetch_max(mb, Ordering::Relaxed);
                    }
                    let pause = if loaded.load(Ordering::Relaxed) { RUNNING_VRAM_SAMPLE } else { loading_interval };
                    tokio::time::sleep(pause).await;
                }
            }
        });
        Some(VramSampler { peak_mb, loaded, task })
    }
}

fn port_in_use(service: &str, port: u16) -> SidecarError {
    let holder = match port_holder(port) {
        Some(h) => format!(" by pid {}{}", h.pid, h.name.map(|n| format!(" ({n})")).unwrap_or_default()),
        None => String::new(),
    };
    SidecarError::new(ErrorCode::PortInUse, format!("{service}: port {port} is already in use{holder}"))
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}
