//! `GpuArbiter`: the JS class over [`crate::arbiter::Arbiter`].
//!
//! Everything runs on the JS thread: the core sits in an `Rc<RefCell>`, queued requests are raw
//! promises resolved from here, and deadlines are served by one Node timer that is re-armed only
//! when an earlier deadline appears (so the uncontended acquire/release path makes no timer call).
//! Config file edits arrive from a watcher thread through a weak threadsafe function.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::ptr;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use napi::bindgen_prelude::*;
use napi::sys;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use notify::Watcher;

use super::js::{self, Deferred, JsRef, Listeners};
use super::lease_codec::LeaseCodec;
use super::{Code, IntoJsResult, JsResult};
use crate::arbiter::{
    Admission, Arbiter, ArbiterEvent, GpuReading, GpuSnapshot, Micros, Outcome, Percentiles, Reason, Resolution,
    Status, Trace, WaiterId, MICROS_PER_MS,
};
use crate::config::{self, ArbiterConfig};
use crate::error::SidecarError;
use crate::telemetry::Sample;

const LEASE_PREFIX: &str = "lease-";

/// Who asked for a lease; shown in snapshots and events.
#[napi(object)]
#[derive(Clone, Default)]
pub struct GpuLeaseTrace {
    pub job_id: Option<String>,
    pub session_id: Option<String>,
    pub utterance_index: Option<i64>,
    pub stage: Option<String>,
}

/// Something that happened in the arbiter.
#[napi(object)]
pub struct GpuArbiterEvent {
    #[napi(
        ts_type = "'acquired' | 'released' | 'queued' | 'timeout' | 'skipped' | 'cancelled' | 'watchdog' | 'admission-state' | 'config-reloaded' | 'config-rejected'"
    )]
    pub r#type: String,
    /// Epoch ms.
    pub at: f64,
    pub gpu_key: Option<String>,
    pub task_type: Option<String>,
    pub lease_id: Option<String>,
    pub status: Option<String>,
    pub reason: Option<String>,
    pub waited_ms: Option<f64>,
    pub held_ms: Option<f64>,
    pub trace: Option<GpuLeaseTrace>,
    /// The watchdog action (`warn`/`revoke`), the new admission state, a rejected config's error.
    pub detail: Option<String>,
}

#[napi(object)]
pub struct GpuLeaseInfo {
    pub lease_id: String,
    pub task_type: String,
    pub priority: u32,
    pub trace: GpuLeaseTrace,
    pub acquired_at: f64,
    pub held_ms: f64,
    pub hold_max_ms: f64,
    pub watchdog_fired: bool,
    pub vram_mb: f64,
}

#[napi(object)]
pub struct GpuWaiterInfo {
    pub task_type: String,
    pub priority: u32,
    /// Priority plus aging so far; the queue is listed in dequeue order.
    pub effective_priority: f64,
    pub waited_ms: f64,
    pub remaining_ms: Option<f64>,
    pub vram_mb: f64,
    pub trace: GpuLeaseTrace,
}

#[napi(object)]
pub struct LatencyPercentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

#[napi(object)]
pub struct GpuTaskStats {
    pub task_type: String,
    pub acquired: i64,
    pub skipped: i64,
    pub fallback_cpu: i64,
    pub timeout: i64,
    pub cancelled: i64,
    pub queue_full: i64,
    pub watchdog_exceeded: i64,
    pub revoked: i64,
    /// Queue wait, ms, over the most recent requests.
    pub wait_ms: Option<LatencyPercentiles>,
    /// Hold time, ms, over the most recent leases.
    pub hold_ms: Option<LatencyPercentiles>,
}

/// The telemetry sample admission decisions are based on.
#[napi(object)]
pub struct GpuAdmissionSample {
    pub utilization_gpu: Option<f64>,
    pub free_mb: Option<f64>,
    pub total_mb: Option<f64>,
    pub age_ms: f64,
}

#[napi(object)]
pub struct GpuAdmission {
    #[napi(ts_type = "'UNKNOWN' | 'NORMAL' | 'HIGH_PRESSURE'")]
    pub state: String,
    pub sample: Option<GpuAdmissionSample>,
}

#[napi(object)]
pub struct GpuArbiterSnapshot {
    pub gpu_key: String,
    pub enabled: bool,
    pub capacity: u32,
    pub active_leases: Vec<GpuLeaseInfo>,
    pub queue: Vec<GpuWaiterInfo>,
    pub queue_length: u32,
    pub tasks: Vec<GpuTaskStats>,
    pub admission: GpuAdmission,
}

/// One GPU's telemetry as admission uses it (see `observeGpu`).
#[napi(object)]
pub struct GpuReadingInput {
    pub utilization_gpu: Option<f64>,
    pub free_mb: Option<f64>,
    pub total_mb: Option<f64>,
}

#[napi(object)]
pub struct FromFileOptions {
    /// Apply edits of the file while running (policies, limits; leases and queue are kept).
    pub watch: Option<bool>,
}

/// A queued request's promise and, if it came with one, its AbortSignal listener.
struct Pending {
    deferred: Deferred,
    abort: Option<(JsRef, JsRef)>,
}

struct Timer {
    at: Micros,
    keeps_alive: bool,
    handle: JsRef,
}

pub(super) struct State {
    core: Arbiter,
    codec: LeaseCodec,
    origin: Instant,
    origin_epoch_ms: f64,
    pending: HashMap<WaiterId, Pending>,
    timer: Option<Timer>,
    listeners: Listeners,
    watcher: Option<notify::RecommendedWatcher>,
}

impl State {
    fn now(&self) -> Micros {
        self.origin.elapsed().as_micros() as Micros
    }

    fn epoch_ms(&self, at: Micros) -> f64 {
        self.origin_epoch_ms + at as f64 / MICROS_PER_MS as f64
    }
}

/// The GPU lease arbiter. All methods are synchronous except `acquire`, which resolves when the
/// request is granted or definitively answered; every request resolves exactly once.
#[napi]
pub struct GpuArbiter {
    state: Rc<RefCell<State>>,
}

#[napi]
impl GpuArbiter {
    /// Validates `config` (the `gpuArbiter` object of the node config) and builds an arbiter.
    /// Throws `INVALID_CONFIG` naming the JSON path of a bad field.
    #[napi(constructor, catch_unwind, ts_args_type = "config?: GpuArbiterConfig")]
    pub fn new(env: &Env, this: This<Object>, config: Option<serde_json::Value>) -> Result<Self, Code> {
        let mut warnings = vec![];
        let config = ArbiterConfig::from_json(&config.unwrap_or_else(|| serde_json::json!({})), &mut warnings)?;
        for w in &warnings {
            tracing::warn!("{w}");
        }
        let arbiter = Self::with_config(env, config)?;
        install_hot_methods(env, this.raw(), &arbiter.state).js()?;
        Ok(arbiter)
    }

    /// Loads the `gpuArbiter` section of a node config file. With `{ watch: true }` edits to the
    /// file are applied while running; a bad edit keeps the last good config and emits
    /// `config-rejected`.
    #[napi(catch_unwind, ts_return_type = "GpuArbiter")]
    pub fn from_file<'env>(
        env: &'env Env,
        path: String,
        options: Option<FromFileOptions>,
    ) -> Result<ClassInstance<'env, GpuArbiter>, Code> {
        let node = config::load_node_config(std::path::Path::new(&path))?;
        for w in &node.warnings {
            tracing::warn!("{w}");
        }
        let arbiter = Self::with_config(env, node.gpu_arbiter)?;
        if options.and_then(|o| o.watch).unwrap_or(false) {
            let watcher = watch_file(env, &arbiter.state, PathBuf::from(path))?;
            arbiter.state.borrow_mut().watcher = Some(watcher);
        }
        let state = Rc::clone(&arbiter.state);
        let instance = arbiter.into_instance(env).js()?;
        install_hot_methods(env, instance.as_object(env).raw(), &state).js()?;
        Ok(instance)
    }

    /// Gives a lease back and hands the GPU to the next waiter. Idempotent: an unknown, already
    /// released or revoked id is ignored (logged at debug level). Returns whether a lease was released.
    #[napi(catch_unwind, ts_args_type = "leaseId: string")]
    pub fn release(&self, env: &Env, lease_id: Unknown) -> Result<bool, Code> {
        release(env, &self.state, lease_id.raw())
    }

    /// One GPU's state: active leases with holder trace and hold time, the queue in dequeue order,
    /// counters and wait/hold percentiles per task type, admission state. `null` for an unknown key.
    #[napi(catch_unwind)]
    pub fn snapshot(&self, gpu_key: String) -> Option<GpuArbiterSnapshot> {
        let s = self.state.borrow();
        s.core.snapshot(&gpu_key, s.now()).map(|snap| snapshot_value(&s, snap))
    }

    /// Snapshots of every configured GPU.
    #[napi(catch_unwind)]
    pub fn snapshot_all(&self) -> Vec<GpuArbiterSnapshot> {
        let s = self.state.borrow();
        s.core.snapshot_all(s.now()).into_iter().map(|snap| snapshot_value(&s, snap)).collect()
    }

    /// Prometheus text exposition (serve it next to prom-client's output).
    #[napi(catch_unwind)]
    pub fn metrics(&self) -> String {
        self.state.borrow().core.metrics()
    }

    /// The effective config, defaults applied.
    #[napi(catch_unwind, ts_return_type = "GpuArbiterConfig")]
    pub fn config(&self) -> Result<serde_json::Value, Code> {
        Ok(serde_json::to_value(self.state.borrow().core.config())
            .map_err(|e| SidecarError::new(crate::error::ErrorCode::Internal, e.to_string()))?)
    }

    /// Applies a JSON merge patch to the config (`{ policies: { ASR: { priority: 95 } } }`),
    /// keeping leases and queue. A bad patch throws `INVALID_CONFIG` and changes nothing.
    #[napi(catch_unwind, ts_args_type = "patch: GpuArbiterConfigPatch")]
    pub fn set_config(&self, env: &Env, patch: serde_json::Value) -> Result<(), Code> {
        apply_config(env, &self.state, ConfigChange::Patch(patch))
    }

    /// Feeds one GPU's current utilization and memory from any source (a `Telemetry` attached to
    /// the arbiter does this on every sample). Sets the GPU's admission state (HIGH_PRESSURE at
    /// `gpuUsage.highWater`, NORMAL again under `lowWater`), enables VRAM admission for requests
    /// with `vramMb`, and re-checks waiters. Readings for keys the arbiter does not have are ignored.
    #[napi(catch_unwind)]
    pub fn observe_gpu(&self, env: &Env, gpu_key: String, reading: GpuReadingInput) -> Result<(), Code> {
        let mb = |name: &str, v: Option<f64>| -> JsResult<Option<u64>> {
            match v {
                Some(x) if !(x.is_finite() && x >= 0.0) => {
                    Err(SidecarError::invalid_argument(format!("reading.{name}: expected a number >= 0, got {x}"))
                        .into())
                }
                other => Ok(other.map(|x| x as u64)),
            }
        };
        let (free_mb, total_mb) = (mb("freeMb", reading.free_mb)?, mb("totalMb", reading.total_mb)?);
        let mut out = Vec::new();
        {
            let mut s = self.state.borrow_mut();
            let now = s.now();
            let reading = GpuReading { at: now, utilization_gpu: reading.utilization_gpu, free_mb, total_mb };
            s.core.observe_gpu(&gpu_key, reading, now, &mut out);
        }
        after_change(env, &self.state, out)
    }

    /// Subscribes to events; returns a function that unsubscribes. A listener that throws is
    /// logged and does not disturb the arbiter.
    #[napi(catch_unwind, ts_args_type = "listener: (event: GpuArbiterEvent) => void", ts_return_type = "() => void")]
    pub fn on_event<'env>(
        &self,
        env: &'env Env,
        listener: Function<'env, GpuArbiterEvent, ()>,
    ) -> Result<Function<'env, (), ()>, Code> {
        let mut s = self.state.borrow_mut();
        let id = s.listeners.add(env, listener.raw())?;
        s.core.set_record_events(true);
        let weak = Rc::downgrade(&self.state);
        env.create_function_from_closure::<(), (), _>("unsubscribe", move |_ctx| {
            if let Some(state) = weak.upgrade() {
                let mut s = state.borrow_mut();
                s.listeners.remove(id);
                let listening = !s.listeners.is_empty();
                s.core.set_record_events(listening);
            }
            Ok(())
        })
        .js()
    }

    /// Settles every waiter `CANCELLED` / `SHUTDOWN`, drops all leases, stops the file watcher.
    /// Later calls to `acquire` and `setConfig` fail with code `CLOSED`. Idempotent.
    #[napi(catch_unwind)]
    pub fn close(&self, env: &Env) -> Result<(), Code> {
        let mut out = Vec::new();
        {
            let mut s = self.state.borrow_mut();
            let now = s.now();
            s.core.close(now, &mut out);
            s.watcher = None;
        }
        after_change(env, &self.state, out)?;
        let mut s = self.state.borrow_mut();
        s.timer = None;
        s.listeners.clear();
        s.core.set_record_events(false);
        Ok(())
    }

    /// Whether `close()` was called.
    #[napi(getter, catch_unwind)]
    pub fn closed(&self) -> bool {
        self.state.borrow().core.is_closed()
    }
}

impl GpuArbiter {
    /// For a `Telemetry` that feeds this arbiter without keeping it alive.
    pub(super) fn shared(&self) -> Weak<RefCell<State>> {
        Rc::downgrade(&self.state)
    }

    fn with_config(env: &Env, config: ArbiterConfig) -> JsResult<Self> {
        let origin_epoch_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64() * 1000.0;
        let state = State {
            core: Arbiter::new(config),
            codec: LeaseCodec::new(env).js()?,
            origin: Instant::now(),
            origin_epoch_ms,
            pending: HashMap::new(),
            timer: None,
            listeners: Listeners::default(),
            watcher: None,
        };
        Ok(Self { state: Rc::new(RefCell::new(state)) })
    }
}

/// Puts the hot path on the instance itself as plain native functions bound to its state:
/// `acquireFields` (which the package entry's `acquire(request)` calls with the request's fields)
/// and `release`. napi's generated class methods pay for borrow tracking and `this` unwrapping on
/// every call, several times the cost of the lease logic; the prototype `release` stays for
/// `call`/`apply`.
fn install_hot_methods(env: &Env, this: sys::napi_value, state: &Rc<RefCell<State>>) -> Result<()> {
    let for_acquire = Rc::downgrade(state);
    let acquire_fn = env.create_function_from_closure::<(), Unknown<'static>, _>("acquireFields", move |ctx| {
        let args: Vec<sys::napi_value> =
            (0..ctx.length()).map(|i| ctx.get::<Unknown>(i).map(|u| u.raw())).collect::<Result<_>>()?;
        hot_call(ctx.env, &for_acquire, |env, state| acquire(env, state, &args))
    })?;
    let for_release = Rc::downgrade(state);
    let release_fn = env.create_function_from_closure::<(), Unknown<'static>, _>("release", move |ctx| {
        let lease_id = ctx.get::<Unknown>(0)?.raw();
        hot_call(ctx.env, &for_release, |env, state| {
            let released = release(env, state, lease_id)?;
            unsafe { ToNapiValue::to_napi_value(env.raw(), released) }.js()
        })
    })?;
    js::define_methods(env, this, &[("acquireFields", acquire_fn.raw()), ("release", release_fn.raw())])
}

/// Runs a hot method: a panic becomes a JS error, and our errors are thrown with their `code`.
fn hot_call(
    env: &Env,
    state: &Weak<RefCell<State>>,
    f: impl FnOnce(&Env, &Rc<RefCell<State>>) -> JsResult<sys::napi_value>,
) -> Result<Unknown<'static>> {
    let state = state.upgrade().ok_or_else(|| napi::Error::from_reason("the GpuArbiter was collected"))?;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(env, &state)))
        .unwrap_or_else(|panic| Err(js::panic_error("GpuArbiter", panic).into()));
    match outcome {
        Ok(value) => Ok(unsafe { Unknown::from_raw_unchecked(env.raw(), value) }),
        Err(e) => {
            unsafe { JsError::from(e).throw_into(env.raw()) };
            Ok(unsafe { Unknown::from_raw_unchecked(env.raw(), ptr::null_mut()) })
        }
    }
}

fn acquire(env: &Env, state: &Rc<RefCell<State>>, fields: &[sys::napi_value]) -> JsResult<sys::napi_value> {
    let (req, signal) = state.borrow().codec.read_request(env, fields)?;
    let (deferred, promise) = Deferred::new(env).js()?;
    if let Some(signal) = signal {
        if state.borrow().codec.is_aborted(env, signal)? {
            let value = state.borrow().codec.not_acquired(env, Status::Cancelled, Reason::Aborted).js()?;
            deferred.resolve(env, value).js()?;
            return Ok(promise);
        }
    }
    let admission = {
        let mut s = state.borrow_mut();
        let now = s.now();
        s.core.acquire(req, now)?
    };
    match admission {
        Admission::Settled(outcome) => {
            let value = outcome_to_js(env, &state.borrow(), outcome)?;
            deferred.resolve(env, value).js()?;
        }
        Admission::Queued(waiter) => {
            let abort = match signal {
                Some(signal) => Some(listen_for_abort(env, state, signal, waiter).js()?),
                None => None,
            };
            state.borrow_mut().pending.insert(waiter, Pending { deferred, abort });
        }
    }
    after_change(env, state, Vec::new())?;
    Ok(promise)
}

fn release(env: &Env, state: &Rc<RefCell<State>>, lease_id: sys::napi_value) -> JsResult<bool> {
    let text = js::string_value(env, lease_id).unwrap_or_default();
    let Some(id) = text.strip_prefix(LEASE_PREFIX).and_then(|n| n.parse().ok()) else {
        tracing::debug!(lease_id = %text, "release of a lease id this arbiter never issued: ignored");
        return Ok(false);
    };
    let mut out = Vec::new();
    let released = {
        let mut s = state.borrow_mut();
        let now = s.now();
        s.core.release(id, now, &mut out)
    };
    if !released {
        tracing::debug!(lease_id = %text, "release of an unknown, released or revoked lease: ignored");
    }
    after_change(env, state, out)?;
    Ok(released)
}

/// Feeds a telemetry sample's GPUs (those still on the bus) to the arbiter, as of now.
pub(super) fn observe_sample(env: &Env, state: &Rc<RefCell<State>>, sample: &Sample) -> JsResult<()> {
    let mut out = Vec::new();
    {
        let mut s = state.borrow_mut();
        let now = s.now();
        for gpu in sample.gpus.iter().filter(|g| !g.lost) {
            s.core.observe_gpu(&gpu.key, gpu.reading(now), now, &mut out);
        }
    }
    after_change(env, state, out)
}

/// `(gpu key, waiters, active leases)` per GPU, for telemetry's GPU_IDLE_WITH_BACKLOG alert.
pub(super) fn gpu_loads(state: &Rc<RefCell<State>>) -> Vec<(String, usize, usize)> {
    state.borrow().core.gpu_loads()
}

fn outcome_to_js(env: &Env, s: &State, outcome: Outcome) -> JsResult<sys::napi_value> {
    match outcome {
        Outcome::Acquired(g) => s.codec.acquired(
            env,
            &format!("{LEASE_PREFIX}{}", g.lease_id),
            &g.gpu_key,
            s.epoch_ms(g.acquired_at),
            ms(g.queue_wait),
        ),
        Outcome::NotAcquired { status, reason } => s.codec.not_acquired(env, status, reason),
    }
    .js()
}

fn ms(micros: Micros) -> f64 {
    micros as f64 / MICROS_PER_MS as f64
}

fn trace_value(t: &Trace) -> GpuLeaseTrace {
    GpuLeaseTrace {
        job_id: t.job_id.clone(),
        session_id: t.session_id.clone(),
        utterance_index: t.utterance_index,
        stage: t.stage.clone(),
    }
}

fn percentiles_value(p: Option<Percentiles>) -> Option<LatencyPercentiles> {
    p.map(|p| LatencyPercentiles { p50: p.p50, p95: p.p95, p99: p.p99 })
}

fn snapshot_value(s: &State, snap: GpuSnapshot) -> GpuArbiterSnapshot {
    let queue_length = snap.queue.len() as u32;
    GpuArbiterSnapshot {
        gpu_key: snap.gpu_key,
        enabled: snap.enabled,
        capacity: snap.capacity as u32,
        active_leases: snap
            .leases
            .iter()
            .map(|l| GpuLeaseInfo {
                lease_id: format!("{LEASE_PREFIX}{}", l.lease_id),
                task_type: l.task_type.clone(),
                priority: l.priority as u32,
                trace: trace_value(&l.trace),
                acquired_at: s.epoch_ms(l.acquired_at),
                held_ms: ms(l.held),
                hold_max_ms: ms(l.hold_max),
                watchdog_fired: l.watchdog_fired,
                vram_mb: l.vram_mb as f64,
            })
            .collect(),
        queue: snap
            .queue
            .iter()
            .map(|w| GpuWaiterInfo {
                task_type: w.task_type.clone(),
                priority: w.priority as u32,
                effective_priority: w.effective_priority,
                waited_ms: ms(w.waited),
                remaining_ms: w.remaining.map(ms),
                vram_mb: w.vram_mb as f64,
                trace: trace_value(&w.trace),
            })
            .collect(),
        queue_length,
        tasks: snap
            .tasks
            .iter()
            .map(|t| GpuTaskStats {
                task_type: t.task_type.clone(),
                acquired: t.acquired as i64,
                skipped: t.skipped as i64,
                fallback_cpu: t.fallback_cpu as i64,
                timeout: t.timeout as i64,
                cancelled: t.cancelled as i64,
                queue_full: t.queue_full as i64,
                watchdog_exceeded: t.watchdog_exceeded as i64,
                revoked: t.revoked as i64,
                wait_ms: percentiles_value(t.wait),
                hold_ms: percentiles_value(t.hold),
            })
            .collect(),
        admission: GpuAdmission {
            state: snap.admission.state.as_str().to_string(),
            sample: snap.admission.reading.map(|r| GpuAdmissionSample {
                utilization_gpu: r.utilization_gpu,
                free_mb: r.free_mb.map(|v| v as f64),
                total_mb: r.total_mb.map(|v| v as f64),
                age_ms: ms(snap.admission.reading_age.unwrap_or(0)),
            }),
        },
    }
}

fn event_value(s: &State, e: ArbiterEvent) -> GpuArbiterEvent {
    GpuArbiterEvent {
        r#type: e.kind.as_str().to_string(),
        at: s.epoch_ms(e.at),
        gpu_key: e.gpu_key,
        task_type: e.task_type,
        lease_id: e.lease_id.map(|id| format!("{LEASE_PREFIX}{id}")),
        status: e.status.map(|st| st.as_str().to_string()),
        reason: e.reason.map(|r| r.as_str().to_string()),
        waited_ms: e.waited.map(ms),
        held_ms: e.held.map(ms),
        trace: e.trace.as_ref().map(trace_value),
        detail: e.detail,
    }
}

/// Settles queued promises, re-arms the timer if needed, and delivers events to listeners
/// (after every borrow is released, so a listener may call back into the arbiter).
fn after_change(env: &Env, state: &Rc<RefCell<State>>, resolutions: Vec<Resolution>) -> JsResult<()> {
    settle(env, state, resolutions)?;
    sync_timer(env, state).js()?;
    dispatch_events(env, state);
    Ok(())
}

fn settle(env: &Env, state: &Rc<RefCell<State>>, resolutions: Vec<Resolution>) -> JsResult<()> {
    for r in resolutions {
        let (pending, value) = {
            let mut s = state.borrow_mut();
            let Some(p) = s.pending.remove(&r.waiter) else {
                continue;
            };
            let value = outcome_to_js(env, &s, r.outcome)?;
            (p, value)
        };
        if let Some((signal, handler)) = pending.abort {
            let args = [js::string(env, "abort").js()?, handler.get().js()?];
            if let Err(e) = js::call_method(env, signal.get().js()?, "removeEventListener", &args) {
                tracing::warn!(error = %e.reason, "could not remove an AbortSignal listener");
            }
        }
        pending.deferred.resolve(env, value).js()?;
    }
    Ok(())
}

fn listen_for_abort(
    env: &Env,
    state: &Rc<RefCell<State>>,
    signal: sys::napi_value,
    waiter: WaiterId,
) -> Result<(JsRef, JsRef)> {
    let weak: Weak<RefCell<State>> = Rc::downgrade(state);
    let handler = env.create_function_from_closure::<(), (), _>("onAbort", move |ctx| {
        js::no_panic("AbortSignal handler", || {
            let Some(state) = weak.upgrade() else {
                return Ok(());
            };
            let resolution = {
                let mut s = state.borrow_mut();
                let now = s.now();
                s.core.cancel(waiter, now)
            };
            after_change(ctx.env, &state, resolution.into_iter().collect())
                .map_err(|e| napi::Error::new(napi::Status::GenericFailure, e.reason))
        })
    })?;
    let args = [js::string(env, "abort")?, handler.raw()];
    js::call_method(env, signal, "addEventListener", &args)?;
    Ok((JsRef::new(env, signal)?, JsRef::new(env, handler.raw())?))
}

/// Keeps one Node timer armed at the earliest deadline. It only keeps the process alive while
/// requests are waiting; a lease watchdog alone does not hold Node open.
fn sync_timer(env: &Env, state: &Rc<RefCell<State>>) -> Result<()> {
    let (next, keep_alive, armed) = {
        let s = state.borrow();
        (s.core.next_deadline(), s.core.waiter_count() > 0, s.timer.as_ref().map(|t| (t.at, t.keeps_alive)))
    };
    match (next, armed) {
        (Some(at), None) => arm_timer(env, state, at, keep_alive),
        (Some(at), Some((armed_at, _))) if at < armed_at => {
            let old = state.borrow_mut().timer.take().expect("armed");
            js::call_method(env, js::global(env)?, "clearTimeout", &[old.handle.get()?])?;
            arm_timer(env, state, at, keep_alive)
        }
        (_, Some((_, armed_keep_alive))) if armed_keep_alive != keep_alive => {
            let handle = state.borrow().timer.as_ref().expect("armed").handle.get()?;
            js::call_method(env, handle, if keep_alive { "ref" } else { "unref" }, &[])?;
            state.borrow_mut().timer.as_mut().expect("armed").keeps_alive = keep_alive;
            Ok(())
        }
        // A later deadline than the armed one: the timer fires early, finds nothing due, re-arms.
        _ => Ok(()),
    }
}

fn arm_timer(env: &Env, state: &Rc<RefCell<State>>, at: Micros, keep_alive: bool) -> Result<()> {
    let delay_ms = {
        let s = state.borrow();
        ms(at.saturating_sub(s.now())).ceil()
    };
    // The callback owns the state while the timer is pending, so a request that is still waiting
    // resolves even if the GpuArbiter object itself became unreachable.
    let owner = Rc::clone(state);
    let callback = env.create_function_from_closure::<(), (), _>("gpuArbiterTick", move |ctx| {
        js::no_panic("arbiter timer", || {
            let mut out = Vec::new();
            {
                let mut s = owner.borrow_mut();
                s.timer = None;
                let now = s.now();
                s.core.tick(now, &mut out);
            }
            after_change(ctx.env, &owner, out).map_err(|e| napi::Error::new(napi::Status::GenericFailure, e.reason))
        })
    })?;
    let global = js::global(env)?;
    let handle = js::call_method(env, global, "setTimeout", &[callback.raw(), js::number(env, delay_ms)?])?;
    if !keep_alive {
        js::call_method(env, handle, "unref", &[])?;
    }
    state.borrow_mut().timer = Some(Timer { at, keeps_alive: keep_alive, handle: JsRef::new(env, handle)? });
    Ok(())
}

fn dispatch_events(env: &Env, state: &Rc<RefCell<State>>) {
    let (events, listeners) = {
        let mut s = state.borrow_mut();
        if s.listeners.is_empty() {
            return;
        }
        let events = s.core.take_events();
        if events.is_empty() {
            return;
        }
        let values: Vec<GpuArbiterEvent> = events.into_iter().map(|e| event_value(&s, e)).collect();
        (values, s.listeners.current())
    };
    for event in events {
        if let Ok(value) = unsafe { ToNapiValue::to_napi_value(env.raw(), event) } {
            js::call_listeners(env, &listeners, value, "GpuArbiter");
        }
    }
}

enum ConfigChange {
    Patch(serde_json::Value),
    FileText(String, String),
}

fn apply_config(env: &Env, state: &Rc<RefCell<State>>, change: ConfigChange) -> JsResult<()> {
    let mut warnings = vec![];
    let mut out = Vec::new();
    let result = {
        let mut s = state.borrow_mut();
        let now = s.now();
        let parsed = match &change {
            ConfigChange::Patch(patch) => s.core.config().patched(patch, &mut warnings),
            ConfigChange::FileText(text, source) => config::parse_node_config(text, source).map(|node| {
                warnings = node.warnings;
                node.gpu_arbiter
            }),
        };
        let applied = parsed.and_then(|cfg| s.core.set_config(cfg, now, &mut out));
        if let Err(e) = &applied {
            s.core.note_config_rejected(e, now);
        }
        applied
    };
    for w in &warnings {
        tracing::warn!("{w}");
    }
    after_change(env, state, out)?;
    match (result, change) {
        (Ok(()), _) => Ok(()),
        (Err(e), ConfigChange::Patch(_)) => Err(e.into()),
        (Err(e), ConfigChange::FileText(..)) => {
            tracing::warn!(error = %e.message, "config file edit rejected; keeping the last good config");
            Ok(())
        }
    }
}

/// Watches the config file's folder (editors often replace the file) on notify's thread and hands
/// the new text to the JS thread through a weak threadsafe function, so watching never keeps
/// Node alive. Bursts of events from one save are coalesced.
fn watch_file(env: &Env, state: &Rc<RefCell<State>>, path: PathBuf) -> JsResult<notify::RecommendedWatcher> {
    let weak = Rc::downgrade(state);
    let source = path.display().to_string();
    let on_edit = env
        .create_function_from_closure::<String, (), _>("onConfigFileEdit", move |ctx| {
            js::no_panic("config reload", || {
                let text: String = ctx.get(0)?;
                let Some(state) = weak.upgrade() else {
                    return Ok(());
                };
                apply_config(ctx.env, &state, ConfigChange::FileText(text, source.clone()))
                    .map_err(|e| napi::Error::new(napi::Status::GenericFailure, e.reason))
            })
        })
        .js()?;
    let tsfn: ThreadsafeFunction<String, (), String, napi::Status, false, true> =
        on_edit.build_threadsafe_function().weak::<true>().callee_handled::<false>().build().js()?;
    let file_name = path.file_name().map(|n| n.to_os_string());
    let folder = path.parent().map(|p| if p.as_os_str().is_empty() { PathBuf::from(".") } else { p.to_path_buf() });
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if event.paths.iter().any(|p| p.file_name().map(|n| n.to_os_string()) == file_name) {
                let _ = tx.send(());
            }
        }
    })
    .map_err(|e| SidecarError::new(crate::error::ErrorCode::Io, format!("cannot watch {}: {e}", path.display())))?;
    let folder = folder.unwrap_or_else(|| PathBuf::from("."));
    watcher.watch(&folder, notify::RecursiveMode::NonRecursive).map_err(|e| {
        SidecarError::new(crate::error::ErrorCode::Io, format!("cannot watch {}: {e}", folder.display()))
    })?;
    std::thread::Builder::new()
        .name("gpu-sidecar-config-watch".into())
        .spawn(move || {
            // Ends when the watcher (and with it the sender) is dropped.
            while rx.recv().is_ok() {
                std::thread::sleep(Duration::from_millis(50));
                while rx.try_recv().is_ok() {}
                match std::fs::read_to_string(&path) {
                    Ok(text) => {
                        tsfn.call(text, ThreadsafeFunctionCallMode::NonBlocking);
                    }
                    Err(e) => tracing::warn!(error = %e, path = %path.display(), "cannot read the edited config file"),
                }
            }
        })
        .map_err(|e| SidecarError::new(crate::error::ErrorCode::Io, format!("cannot start the config watcher: {e}")))?;
    Ok(watcher)
}
