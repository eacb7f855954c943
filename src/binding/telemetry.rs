//! `Telemetry`: the JS class over [`crate::telemetry::Sampler`].
//!
//! The sampler thread never calls into JS directly: it queues each event
//! ([`crate::link::sampler_events`]) and wakes the JS thread through a weak threadsafe function,
//! so a running Telemetry never keeps Node alive. On the JS thread the queued events feed attached
//! arbiters, then the listeners. The arbiters' backlog goes the other way, on the sampler thread.

use std::cell::RefCell;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi::sys;
use napi::threadsafe_function::ThreadsafeFunctionCallMode;
use napi_derive::napi;

use super::arbiter::{self, ArbiterBinding, GpuArbiter};
use super::{args, Code, IntoJsResult};
use crate::error::{ErrorCode, SidecarError};
use crate::link::sampler_events::{FedArbiters, SamplerDelivery, SamplerEventQueue};
use crate::node_api::{self as js, Listeners};
use crate::telemetry::advice::ConcurrencyRequest;
use crate::telemetry::{
    sample_once, Alert, LatestSample, ProcessRegistry, Sample, Sampler, SamplerHandle, TelemetryOptions,
};

type AttachedArbiter = Weak<RefCell<ArbiterBinding>>;

/// The callbacks of `onSample`, `onAlert` and `onEnd`.
#[derive(Default)]
struct Subscribers {
    on_sample: Listeners,
    on_alert: Listeners,
    on_end: Listeners,
}

struct TelemetryBinding {
    sampler: Option<SamplerHandle>,
    events: Arc<SamplerEventQueue>,
    listeners: Subscribers,
    arbiters: FedArbiters<AttachedArbiter>,
    registry: Arc<ProcessRegistry>,
}

/// GPU (NVML) and host telemetry sampled on a background thread and pushed to JS as events.
/// Without an NVIDIA driver or library, samples say why (`nvml.available: false`) and host
/// figures still flow. Callbacks never keep Node alive.
#[napi]
pub struct Telemetry {
    state: Rc<RefCell<TelemetryBinding>>,
}

#[napi]
impl Telemetry {
    /// Starts sampling, from the end of this turn of the event loop: listeners, arbiters and
    /// supervisors attached in the same turn are in place for the first sample. Throws
    /// `INVALID_CONFIG` (JSON path under `telemetry`) for bad options, and `INVALID_ARGUMENT` /
    /// `IO_ERROR` for a bad replay or record file (a replay must be a regular file of at most
    /// 1 GiB, with lines of at most 1 MiB).
    #[napi(constructor, catch_unwind, ts_args_type = "options?: TelemetryOptions")]
    pub fn new(env: &Env, options: Option<Unknown>) -> Result<Self, Code> {
        let mut warnings = vec![];
        let options = args::optional_json(env, options, "telemetry", ErrorCode::InvalidConfig)?;
        let options = TelemetryOptions::from_json(&options.unwrap_or(serde_json::Value::Null), &mut warnings)?;
        crate::error::log_warnings(&warnings);
        let state = Rc::new(RefCell::new(TelemetryBinding {
            sampler: None,
            events: Arc::default(),
            listeners: Subscribers::default(),
            arbiters: FedArbiters::default(),
            registry: ProcessRegistry::new(),
        }));
        let wake = js::wake_function(env, &state, "telemetryWake", dispatch).js()?;
        let (events, boards, registry) = {
            let s = state.borrow();
            (s.events.clone(), s.arbiters.boards(), s.registry.clone())
        };
        let sampler = Sampler::new(options).registry(registry).backlog(Box::new(move || boards.total())).held().start(
            Box::new(move |event| {
                if events.push(event) {
                    wake.call((), ThreadsafeFunctionCallMode::NonBlocking);
                }
            }),
        )?;
        state.borrow_mut().sampler = Some(sampler);
        release_after_this_turn(env, &state);
        Ok(Self { state })
    }

    /// Calls `listener(sample)` for every sample; returns a function that unsubscribes.
    #[napi(catch_unwind, ts_args_type = "listener: (sample: TelemetrySample) => void", ts_return_type = "() => void")]
    pub fn on_sample<'env>(&self, env: &'env Env, listener: Unknown<'env>) -> Result<Function<'env, (), ()>, Code> {
        js::subscribe(env, &self.state, listener.raw(), |s| &mut s.listeners.on_sample, |_| ())
    }

    /// Calls `listener(alert)` when an alert is raised (`active: true`) or cleared (`active: false`).
    #[napi(catch_unwind, ts_args_type = "listener: (alert: TelemetryAlert) => void", ts_return_type = "() => void")]
    pub fn on_alert<'env>(&self, env: &'env Env, listener: Unknown<'env>) -> Result<Function<'env, (), ()>, Code> {
        js::subscribe(env, &self.state, listener.raw(), |s| &mut s.listeners.on_alert, |_| ())
    }

    /// Calls `listener(error | null)` when a replay has played its last sample (`null`), hit a bad
    /// line, or reached a cut-off last line (`INVALID_ARGUMENT` naming it, after every whole
    /// line played); when recording fails (sampling goes on); and when sampling stopped on an
    /// internal error (`INTERNAL`).
    #[napi(catch_unwind, ts_args_type = "listener: (error: Error | null) => void", ts_return_type = "() => void")]
    pub fn on_end<'env>(&self, env: &'env Env, listener: Unknown<'env>) -> Result<Function<'env, (), ()>, Code> {
        js::subscribe(env, &self.state, listener.raw(), |s| &mut s.listeners.on_end, |_| ())
    }

    /// The last sample (`null` before the first), read from memory: no NVML call on this thread.
    #[napi(catch_unwind, ts_return_type = "TelemetrySample | null")]
    pub fn latest<'env>(&self, env: &'env Env) -> Result<Option<Unknown<'env>>, Code> {
        let latest = self.state.borrow().sampler.as_ref().and_then(|h| h.latest());
        latest.map(|sample| js::to_js(env, &*sample)).transpose()
    }

    /// Prometheus text for the last sample: per-GPU memory, utilization, temperature, power,
    /// per-process memory, host memory and swap.
    #[napi(catch_unwind)]
    pub fn metrics(&self) -> String {
        self.state.borrow().sampler.as_ref().map(|h| h.metrics()).unwrap_or_default()
    }

    /// Feeds every sample to `arbiter` (per-GPU admission state and VRAM admission) and reports
    /// its leases and waiters to the GPU_IDLE_WITH_BACKLOG alert (read by the sampler thread as
    /// each sample is taken). Returns a function that detaches.
    #[napi(catch_unwind, ts_args_type = "arbiter: GpuArbiter", ts_return_type = "() => void")]
    pub fn attach_arbiter<'env>(
        &self,
        env: &'env Env,
        arbiter: Option<Unknown>,
    ) -> Result<Function<'env, (), ()>, Code> {
        let arbiter = args::class_ref::<GpuArbiter>(env, arbiter, "arbiter", "a GpuArbiter")?;
        let shared = arbiter.shared();
        let board = shared.upgrade().map(|a| a.borrow_mut().host.backlog_board());
        // Its first reading on the way (taken, or still to come): the arbiter's VRAM admission
        // waits for it rather than admitting blind.
        let pending = {
            let s = self.state.borrow();
            s.arbiters.first_reading_due(s.sampler.as_ref().map(SamplerHandle::latest_source).as_ref())
        };
        if let Some(a) = shared.upgrade() {
            let out = a.borrow_mut().host.telemetry_attached(pending);
            arbiter::after_call(env, &a, out, arbiter::Caller::Native)?;
        }
        let id = self.state.borrow_mut().arbiters.attach(shared, board.as_ref());
        js::detach_function(env, "detachArbiter", &self.state, move |env, state| {
            let detached = state.borrow_mut().arbiters.detach(id).and_then(|a| a.upgrade());
            // Not waited for any more: its requests are admitted on what the arbiter has.
            if let Some(a) = detached {
                let out = a.borrow_mut().host.telemetry_attached(false);
                let _ = arbiter::after_call(env, &a, out, arbiter::Caller::Native);
            }
        })
    }

    /// Hands in a sample read elsewhere (another tool such as rocm-smi, another host) on a
    /// Telemetry made with `source: 'manual'`. It is checked as a replayed recording line is
    /// (`INVALID_ARGUMENT` naming the field: `sample.gpus[0].freeMb: ...`), then handled as a
    /// sampled one: recorded, alerts, attached arbiters and supervisors, then `onSample`
    /// listeners, asynchronously and in push order. Throws `INVALID_ARGUMENT` on a live or
    /// replaying Telemetry and `CLOSED` after `close()`.
    #[napi(catch_unwind, ts_args_type = "sample: TelemetrySample")]
    pub fn push(&self, env: &Env, sample: Option<Unknown>) -> Result<(), Code> {
        let closed = || SidecarError::new(ErrorCode::Closed, "push: the Telemetry is closed");
        self.state.borrow().sampler.as_ref().ok_or_else(closed)?.check_push()?;
        // Converted with no borrow held: a getter on the sample may call back into this Telemetry.
        let value = args::required_json(env, sample, "sample", ErrorCode::InvalidArgument)?;
        self.state.borrow().sampler.as_ref().ok_or_else(closed)?.push_json(&value)?;
        Ok(())
    }

    /// Labels `pid` as one of ours: its RSS appears in `host.processes`, and GPU memory of it and
    /// its children appears under `service: label`.
    #[napi(catch_unwind, ts_args_type = "pid: number, label: string")]
    pub fn register_process(&self, env: &Env, pid: Option<Unknown>, label: Option<Unknown>) -> Result<(), Code> {
        let pid = pid_argument(env, pid)?;
        let label = args::string(env, label, "label")?;
        self.state.borrow().registry.register(pid, label);
        Ok(())
    }

    #[napi(catch_unwind, ts_args_type = "pid: number")]
    pub fn unregister_process(&self, env: &Env, pid: Option<Unknown>) -> Result<bool, Code> {
        Ok(self.state.borrow().registry.unregister(pid_argument(env, pid)?))
    }

    /// How many workers of `perWorkerMb` fit now on the host or a GPU, from the last sample.
    #[napi(
        catch_unwind,
        ts_args_type = "options: RecommendConcurrencyOptions",
        ts_return_type = "ConcurrencyRecommendation"
    )]
    pub fn recommend_concurrency<'env>(&self, env: &'env Env, options: Option<Unknown>) -> Result<Unknown<'env>, Code> {
        let request = concurrency_request(env, options)?;
        let latest = self.state.borrow().sampler.as_ref().and_then(|h| h.latest());
        let sample = latest.ok_or_else(|| {
            SidecarError::new(ErrorCode::InvalidArgument, "no sample yet: wait for the first onSample")
        })?;
        js::to_js(env, &request.answer(&sample)?)
    }

    /// Stops sampling and waits for the thread; no callback fires afterwards. Idempotent.
    #[napi(catch_unwind)]
    pub fn close(&self) {
        let sampler = {
            let mut s = self.state.borrow_mut();
            s.listeners = Subscribers::default();
            s.arbiters.clear();
            s.sampler.take()
        };
        drop(sampler); // joins the thread
        self.state.borrow().events.clear();
    }
}

/// Lets the sampler take its first sample once this JS turn is over (`setImmediate`): an arbiter
/// attached, or a supervisor or listener added, right after `new Telemetry(...)` is in place for
/// it, even for a replay played as fast as possible (its thread would otherwise race the turn).
fn release_after_this_turn(env: &Env, state: &Rc<RefCell<TelemetryBinding>>) {
    let weak = Rc::downgrade(state);
    let scheduled = js::set_immediate(env, "telemetryRelease", move |_env| {
        if let Some(state) = weak.upgrade() {
            if let Some(sampler) = state.borrow().sampler.as_ref() {
                sampler.release();
            }
        }
    });
    if let Err(e) = scheduled {
        tracing::warn!(error = %e.reason, "could not defer the telemetry's first sample; it starts now");
        if let Some(sampler) = state.borrow().sampler.as_ref() {
            sampler.release();
        }
    }
}

impl Telemetry {
    /// A reader of the last sample for other threads; `None` once closed.
    pub(super) fn latest_source(&self) -> Option<LatestSample> {
        self.state.borrow().sampler.as_ref().map(SamplerHandle::latest_source)
    }

    /// The registry whose processes this Telemetry reports and labels.
    pub(super) fn registry(&self) -> Arc<ProcessRegistry> {
        self.state.borrow().registry.clone()
    }
}

/// How many workers of `perWorkerMb` fit now, from a one-off sample taken on this thread (for a
/// test harness sizing `--max-workers`; use `Telemetry#recommendConcurrency` inside an app).
#[napi(
    catch_unwind,
    ts_args_type = "options: RecommendConcurrencyOptions",
    ts_return_type = "ConcurrencyRecommendation"
)]
pub fn recommend_concurrency<'env>(env: &'env Env, options: Option<Unknown>) -> napi::Result<Unknown<'env>, Code> {
    let request = concurrency_request(env, options)?;
    let sample = sample_once(ProcessRegistry::new())?;
    js::to_js(env, &request.answer(&sample)?)
}

/// A pid argument ([`ProcessRegistry::pid_arg`]).
fn pid_argument(env: &Env, pid: Option<Unknown>) -> Result<u32, Code> {
    let value = args::optional_json(env, pid, "pid", ErrorCode::InvalidArgument)?;
    Ok(ProcessRegistry::pid_arg(value.as_ref())?)
}

/// `{ perWorkerMb, reserveFraction?, on? }`.
fn concurrency_request(env: &Env, options: Option<Unknown>) -> Result<ConcurrencyRequest, Code> {
    let options = args::optional_json(env, options, "options", ErrorCode::InvalidArgument)?;
    Ok(ConcurrencyRequest::from_json(options.as_ref())?)
}

/// A wake from the sampler thread: what it queued, to the arbiters and listeners.
fn dispatch(env: &Env, state: &Rc<RefCell<TelemetryBinding>>) {
    let events = state.borrow().events.clone();
    events.deliver(&Delivery { env, state });
}

/// The Telemetry's arbiters and listeners, as [`SamplerEventQueue::deliver`] hands to them.
struct Delivery<'a> {
    env: &'a Env,
    state: &'a Rc<RefCell<TelemetryBinding>>,
}

impl Delivery<'_> {
    fn call(&self, list: fn(&Subscribers) -> &Listeners, arg: sys::napi_value) {
        let listeners = list(&self.state.borrow().listeners).current();
        js::call_listeners(self.env, &listeners, arg, "Telemetry");
    }
}

impl SamplerDelivery for Delivery<'_> {
    fn open(&self) -> bool {
        self.state.borrow().sampler.is_some()
    }

    fn feed_arbiters(&self, sample: &Sample) {
        let arbiters: Vec<_> = self.state.borrow_mut().arbiters.feed().iter().filter_map(Weak::upgrade).collect();
        for a in &arbiters {
            let out = a.borrow_mut().host.observe_sample(sample);
            if let Err(e) = arbiter::after_call(self.env, a, out, arbiter::Caller::Native) {
                tracing::warn!(error = %e.reason, "could not feed a telemetry sample to an arbiter");
            }
        }
    }

    fn on_sample(&self, sample: &Sample) {
        if let Ok(value) = js::to_js(self.env, sample) {
            self.call(|l| &l.on_sample, value.raw());
        }
    }

    fn on_alert(&self, alert: &Alert) {
        if let Ok(value) = js::to_js(self.env, alert) {
            self.call(|l| &l.on_alert, value.raw());
        }
    }

    fn on_end(&self, error: Option<SidecarError>) {
        let value = match error {
            Some(error) => unsafe { ToNapiValue::to_napi_value(self.env.raw(), napi::Error::<Code>::from(error)) },
            None => unsafe { ToNapiValue::to_napi_value(self.env.raw(), Null) },
        };
        if let Ok(value) = value {
            self.call(|l| &l.on_end, value);
        }
    }
}
