//! The binding's state around the core, and how a change reaches JS: resolutions and revocations
//! go to the mailbox, events to the listeners, and, when the change did not come from a hot call
//! (which reads the mailbox on return), the JS half is told to look.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use napi::bindgen_prelude::ToNapiValue;
use napi::{sys, Env};

use super::super::js::{self, JsRef, Listeners};
use super::super::{IntoJsResult, JsResult};
use super::mailbox::{Header, Mailbox, Record};
use super::views::{event_value, GpuArbiterEvent};
use rustc_hash::FxHashMap;

use super::super::gpu_reading::SampleReading;
use super::native_leases::NativeReply;
use crate::arbiter::{Arbiter, ArbiterConfig, Micros, Outcome, Resolution, TaskType, WaiterId, MICROS_PER_MS};

/// Distinct task type names kept for sharing; a node has a handful.
const MAX_INTERNED_TASK_TYPES: usize = 256;
use crate::config::watch::{ConfigFileChange, ConfigFileWatch};
use crate::telemetry::{BacklogBoard, Sample};

/// The arbiter's monotonic clock (microseconds since creation), and its epoch for results.
pub struct Clock {
    origin: Instant,
    origin_epoch_ms: f64,
}

impl Clock {
    fn new() -> Self {
        let origin_epoch_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64() * 1000.0;
        Self { origin: Instant::now(), origin_epoch_ms }
    }

    pub fn now(&self) -> Micros {
        self.origin.elapsed().as_micros() as Micros
    }

    pub fn epoch_ms(&self, at: Micros) -> f64 {
        self.origin_epoch_ms + ms(at)
    }
}

pub fn ms(micros: Micros) -> f64 {
    micros as f64 / MICROS_PER_MS as f64
}

pub struct State {
    pub core: Arbiter,
    pub clock: Clock,
    /// Shared with the JS half; made with the first hot call's env (see `hot_path::install`).
    pub mailbox: Option<Mailbox>,
    /// This arbiter's native footprint, as V8 is told it (see `ExternalMemory`).
    pub footprint: Option<js::ExternalMemory>,
    /// The JS half's "look at the mailbox" function, once it has bound itself. Weak: the JS half
    /// holds it (a strong reference would keep the arbiter from ever being collected).
    pub notify: Option<JsRef>,
    outbox: VecDeque<Record>,
    pub listeners: Listeners,
    pub watch: Option<ConfigFileWatch>,
    /// Changes of the watched config file, queued by the watcher thread for the JS thread.
    pub file_changes: Arc<Mutex<VecDeque<(ConfigFileChange, String)>>>,
    pub config_generation: u32,
    /// The clock as the current call read it.
    call_now: Option<Micros>,
    /// An empty vector with capacity, lent to each call for its resolutions (no allocation per call).
    spare_resolutions: Vec<Resolution>,
    /// Requests made from Rust (`native_leases`), answered on their channel, not in the mailbox.
    pub native_waiters: FxHashMap<WaiterId, NativeReply>,
    /// Task type names seen, shared by every request of the type (no allocation per request).
    task_types: FxHashMap<Box<str>, TaskType>,
    /// Waiters and leases per GPU for attached Telemetries' sampler threads; kept only once one
    /// asked (see `backlog_board`).
    backlog_board: Option<Arc<BacklogBoard>>,
    /// Starts the on-demand service of a standby task type that was just requested (set by a
    /// `ServiceSupervisor` attached to this arbiter).
    pub demand_sink: Option<Box<dyn Fn(String)>>,
}

/// Who made the change: a hot call's JS caller reads the mailbox itself; anything else (a
/// slow-path method, a telemetry sample, a config file edit) must tell the JS half.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Js,
    Native,
}

impl State {
    pub fn new(config: ArbiterConfig) -> Self {
        Self {
            core: Arbiter::new(config),
            clock: Clock::new(),
            mailbox: None,
            footprint: None,
            notify: None,
            outbox: VecDeque::new(),
            listeners: Listeners::held_by_js(),
            watch: None,
            file_changes: Arc::default(),
            config_generation: 0,
            call_now: None,
            spare_resolutions: Vec::new(),
            native_waiters: FxHashMap::default(),
            task_types: FxHashMap::default(),
            backlog_board: None,
            demand_sink: None,
        }
    }

    /// Queues what a core call caused for JS. Revocations matter only to a bound JS half.
    /// The shared name of a task type. Past `MAX_INTERNED_TASK_TYPES` distinct names (a caller
    /// inventing one per request) names are no longer kept, so the table cannot grow without bound.
    pub fn intern_task_type(&mut self, name: &str) -> TaskType {
        if let Some(shared) = self.task_types.get(name) {
            return shared.clone();
        }
        let shared: TaskType = name.into();
        if self.task_types.len() < MAX_INTERNED_TASK_TYPES {
            self.task_types.insert(name.into(), shared.clone());
        }
        shared
    }

    /// An empty vector for a call's resolutions; `after_call` takes it back.
    pub fn lend_resolutions(&mut self) -> Vec<Resolution> {
        std::mem::take(&mut self.spare_resolutions)
    }

    fn collect(&mut self, mut resolutions: Vec<Resolution>) {
        while !resolutions.is_empty() {
            // Leases granted to native requesters that stopped waiting: released here, which may
            // grant more.
            let mut orphaned = Vec::new();
            for r in resolutions.drain(..) {
                match self.native_waiters.remove(&r.waiter) {
                    Some(reply) => match r.outcome {
                        Outcome::Acquired(grant) => {
                            if reply.send(Ok(grant.lease_id)).is_err() {
                                orphaned.push(grant.lease_id);
                            }
                        }
                        refused => {
                            let _ = reply.send(Err(super::native_leases::refusal(&refused)));
                        }
                    },
                    None => self.outbox.push_back(Record::Settled(r)),
                }
            }
            if !orphaned.is_empty() {
                let now = self.clock.now();
                for id in orphaned {
                    self.core.release(id, now, &mut resolutions);
                }
            }
        }
        if resolutions.capacity() > self.spare_resolutions.capacity() {
            self.spare_resolutions = resolutions;
        }
        if self.core.has_revoked() {
            let revoked = self.core.take_revoked();
            if self.notify.is_some() {
                self.outbox.extend(revoked.into_iter().map(Record::Revoked));
            }
        }
    }

    /// The clock, read once per call: `publish` reuses this reading.
    pub fn now(&mut self) -> Micros {
        let now = self.clock.now();
        self.call_now = Some(now);
        now
    }

    /// Writes the header and the next batch of records to the mailbox.
    pub fn publish(&mut self) {
        if let Some(board) = &self.backlog_board {
            board.set(self.core.each_gpu_load());
        }
        let now = self.call_now.take().unwrap_or_else(|| self.clock.now());
        let Some(mailbox) = &self.mailbox else {
            // No JS half yet, so no promise waits on these.
            self.outbox.clear();
            return;
        };
        mailbox.write_header(&Header {
            now_ms: ms(now),
            next_deadline_ms: self.core.next_deadline_hint().map(ms),
            waiters: self.core.waiter_count(),
            enabled: self.core.config().enabled,
            config_generation: self.config_generation,
        });
        let clock = &self.clock;
        mailbox.write_records(&mut self.outbox, |at| clock.epoch_ms(at), ms);
    }
}

/// Ends every call that changed the core: queues its resolutions, delivers events (after every
/// borrow is released, so a listener may call back into the arbiter), publishes to the mailbox,
/// and tells the JS half when the change did not come from it.
pub fn after_call(env: &Env, state: &Rc<RefCell<State>>, out: Vec<Resolution>, caller: Caller) -> JsResult<()> {
    state.borrow_mut().collect(out);
    let demands = state.borrow_mut().core.take_demands();
    if !demands.is_empty() {
        let s = state.borrow();
        if let Some(sink) = &s.demand_sink {
            demands.into_iter().for_each(sink);
        }
    }
    dispatch_events(env, state);
    let notify = {
        let mut s = state.borrow_mut();
        s.publish();
        match (&s.notify, caller) {
            (Some(f), Caller::Native) => f.get_live().js()?,
            _ => None,
        }
    };
    if let Some(f) = notify {
        let undefined = unsafe { <()>::to_napi_value(env.raw(), ()) }.js()?;
        if let Err(e) = js::call(env, undefined, f, &[]) {
            tracing::warn!(error = %e.reason, "the arbiter's JS half failed to take its records");
        }
    }
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
        let values: Vec<GpuArbiterEvent> = events.into_iter().map(|e| event_value(&s.clock, e)).collect();
        (values, s.listeners.current())
    };
    for event in events {
        if let Ok(value) = unsafe { ToNapiValue::to_napi_value(env.raw(), event) } {
            js::call_listeners(env, &listeners, value, "GpuArbiter");
        }
    }
}

/// Feeds a telemetry sample's GPUs (those still on the bus) to the arbiter, as of now.
pub fn observe_sample(env: &Env, state: &Rc<RefCell<State>>, sample: &Sample) -> JsResult<()> {
    let mut out = Vec::new();
    {
        let mut s = state.borrow_mut();
        let now = s.clock.now();
        for gpu in sample.gpus.iter().filter(|g| !g.lost) {
            s.core.observe_gpu(&gpu.key, gpu.reading(now), now, &mut out);
        }
    }
    after_call(env, state, out, Caller::Native)
}

/// The arbiter's waiters and leases per GPU as a board that every change updates (every change
/// publishes), for telemetry's GPU_IDLE_WITH_BACKLOG alert on the sampler thread.
pub fn backlog_board(state: &Rc<RefCell<State>>) -> Arc<BacklogBoard> {
    let mut s = state.borrow_mut();
    let board = s.backlog_board.get_or_insert_with(Arc::default).clone();
    board.set(s.core.each_gpu_load());
    board
}

/// The `undefined` value, for calls whose result JS ignores.
pub fn undefined(env: &Env) -> JsResult<sys::napi_value> {
    unsafe { <()>::to_napi_value(env.raw(), ()) }.js()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_type_names_are_shared_and_the_table_is_bounded() {
        let mut s = State::new(ArbiterConfig::default());
        let a = s.intern_task_type("ASR");
        assert!(std::sync::Arc::ptr_eq(&a, &s.intern_task_type("ASR")));
        for i in 0..10_000 {
            s.intern_task_type(&format!("invented-{i}"));
        }
        assert_eq!(s.task_types.len(), MAX_INTERNED_TASK_TYPES);
        assert_eq!(&*s.intern_task_type("invented-9999"), "invented-9999");
    }
}
