//! The arbiter core as a binding hosts it, with what the other parts hang on it: its clock, the
//! leases Rust code asks for (startup leases, answered on channels), the shared task type names,
//! the on-demand start hook, the lease-attribution sinks and the backlog board a Telemetry's
//! sampler thread reads. Everything here is decided without JS: the binding reads the clock once
//! per call, hands results to JS and tells the JS half to look.

use std::collections::VecDeque;
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::arbiter_calls::{ArbiterCall, NativeReply};
use super::arbiter_views::{snapshot_view, GpuArbiterSnapshot};
use super::gpu_reading::SampleReading;
use super::lease_attribution::{LeaseSink, LeaseSinks};
use crate::arbiter::clock::ms;
use crate::arbiter::{
    AcquireRequest, Admission, Arbiter, ArbiterConfig, ArbiterEvent, Clock, GpuReading, LeaseId, Micros, Outcome,
    Resolution, TaskType, WaiterId, MICROS_PER_MS,
};
use crate::config::watch::ConfigFileChange;
use crate::error::{SidecarError, SidecarResult};
use crate::node_config as config;
use crate::telemetry::{BacklogBoard, Sample};

/// Distinct task type names kept for sharing; a node has a handful.
pub const MAX_INTERNED_TASK_TYPES: usize = 256;

/// A change of the arbiter's config while it runs.
pub enum ConfigChange {
    /// A JSON merge patch (`setConfig`).
    Patch(serde_json::Value),
    /// What the watcher saw of the config file, and the file's path for messages.
    File(ConfigFileChange, String),
}

/// Something a call caused that the JS half must hear about.
#[derive(Debug)]
pub enum Outbound {
    Settled(Resolution),
    Revoked(LeaseId),
}

/// What the JS half reads first after each call (times in ms on the arbiter's clock).
pub struct Header {
    pub now_ms: f64,
    pub next_deadline_ms: Option<f64>,
    pub waiters: usize,
    pub enabled: bool,
    pub config_generation: u32,
}

/// The refusal's text for a Rust requester.
pub fn refusal(outcome: &Outcome) -> String {
    match outcome {
        Outcome::NotAcquired { status, reason } => format!("{} ({})", status.as_str(), reason.as_str()),
        Outcome::Acquired(_) => "granted".to_string(),
    }
}

pub struct ArbiterHost {
    pub core: Arbiter,
    pub clock: Clock,
    /// Resolutions and revocations for the JS half, oldest first.
    pub outbox: VecDeque<Outbound>,
    /// Whether a JS half listens (revocations matter only to one).
    pub js_half_bound: bool,
    /// The clock as the current call read it.
    call_now: Option<Micros>,
    /// An empty vector with capacity, lent to each call for its resolutions (no allocation per call).
    spare_resolutions: Vec<Resolution>,
    /// Requests made from Rust, answered on their channel, not in the mailbox.
    native_waiters: FxHashMap<WaiterId, NativeReply>,
    /// Task type names seen, shared by every request of the type (no allocation per request),
    /// by their number: JS sends a known type's number, not its text.
    task_types: FxHashMap<Box<str>, u32>,
    task_type_names: Vec<TaskType>,
    /// The number last asked for by [`ArbiterHost::task_type_named`], and a reference to its name
    /// handed back by a release, passed on to the next request of that type (see
    /// [`Arbiter::release_task`]).
    last_task_type: u32,
    spare_task_type: Option<TaskType>,
    /// Waiters and leases per GPU for attached Telemetries' sampler threads; kept only once one
    /// asked (see [`ArbiterHost::backlog_board`]).
    backlog_board: Option<Arc<BacklogBoard>>,
    /// Starts the on-demand service of a standby task type that was just requested (set by a
    /// supervisor attached to this arbiter).
    pub demand_sink: Option<Box<dyn Fn(String)>>,
    /// Attached supervisors attributing leases to their services.
    lease_sinks: LeaseSinks,
    /// Whether JS listens to this arbiter's events.
    js_listening: bool,
    /// Bumped on every config change, so the JS half knows when to re-read the GPU keys.
    pub config_generation: u32,
}

impl ArbiterHost {
    pub fn new(config: ArbiterConfig) -> Self {
        Self {
            core: Arbiter::new(config),
            clock: Clock::new(),
            outbox: VecDeque::new(),
            js_half_bound: false,
            call_now: None,
            spare_resolutions: Vec::new(),
            native_waiters: FxHashMap::default(),
            task_types: FxHashMap::default(),
            task_type_names: Vec::new(),
            last_task_type: 0,
            spare_task_type: None,
            backlog_board: None,
            demand_sink: None,
            lease_sinks: LeaseSinks::default(),
            js_listening: false,
            config_generation: 0,
        }
    }

    /// Applies a config change, or keeps the config and records `config-rejected`
    /// (`config-file-missing` for a file that went away, which is no error). Warnings (unknown
    /// keys) are logged. Returns what the change resolved and the error its caller gets: a bad
    /// patch's; a bad file edit is only logged.
    pub fn change_config(&mut self, change: &ConfigChange) -> (SidecarResult<()>, Vec<Resolution>) {
        let (result, warnings, out) = self.try_change_config(change);
        crate::error::log_warnings(&warnings);
        match (result, change) {
            (Err(e), ConfigChange::File(..)) => {
                tracing::warn!(error = %e.message, "config file edit rejected; keeping the last good config");
                (Ok(()), out)
            }
            (result, _) => (result, out),
        }
    }

    fn try_change_config(&mut self, change: &ConfigChange) -> (SidecarResult<()>, Vec<String>, Vec<Resolution>) {
        let mut warnings = vec![];
        let mut out = Vec::new();
        let now = self.now();
        let parsed = match change {
            ConfigChange::Patch(patch) => self.core.config().patched(patch, &mut warnings),
            ConfigChange::File(ConfigFileChange::Edited(text), source) => {
                config::parse_node_config(text, source).map(|node| {
                    warnings = node.warnings;
                    node.gpu_arbiter
                })
            }
            ConfigChange::File(ConfigFileChange::Unusable(e), _) => Err(e.clone()),
            ConfigChange::File(ConfigFileChange::Missing, source) => {
                tracing::warn!(path = %source, "the watched config file is gone; keeping the last good config");
                self.core.note_config_file_missing(now);
                return (Ok(()), warnings, out);
            }
        };
        let applied = parsed.and_then(|cfg| self.core.set_config(cfg, now, &mut out));
        match &applied {
            Ok(()) => self.config_generation += 1,
            Err(e) => self.core.note_config_rejected(e, now),
        }
        (applied, warnings, out)
    }

    /// Feeds one GPU's reading (`observeGpu`), taken now.
    pub fn observe_gpu(&mut self, gpu_key: &str, reading: GpuReading) -> Vec<Resolution> {
        let mut out = Vec::new();
        let now = self.now();
        self.core.observe_gpu(gpu_key, GpuReading { at: now, ..reading }, now, &mut out);
        out
    }

    /// The ASR stage's hint (`notifyAsrTaskHint`): whether the water marks were raised.
    pub fn notify_asr_task_hint(&mut self, audio_ms: Option<u64>, hold_ms: Option<u64>) -> (bool, Vec<Resolution>) {
        let mut out = Vec::new();
        let now = self.now();
        (self.core.notify_asr_task_hint(audio_ms, hold_ms, now, &mut out), out)
    }

    /// A patch that could not even be read: recorded as `config-rejected`.
    pub fn reject_config(&mut self, error: &SidecarError) {
        let now = self.now();
        self.core.note_config_rejected(error, now);
    }

    /// Closes the core: every waiter and lease is settled.
    pub fn close(&mut self) -> Vec<Resolution> {
        let mut out = Vec::new();
        let now = self.now();
        self.core.close(now, &mut out);
        out
    }

    /// Snapshots of one GPU (`Some` key) or of all, as JS gets them.
    pub fn snapshots(&self, gpu_key: Option<&str>) -> Vec<GpuArbiterSnapshot> {
        let now = self.clock.now();
        let snapshots = match gpu_key {
            Some(key) => self.core.snapshot(key, now).into_iter().collect(),
            None => self.core.snapshot_all(now),
        };
        snapshots.into_iter().map(|snap| snapshot_view(&self.clock, snap)).collect()
    }

    /// Feeds a telemetry sample's GPUs (those still on the bus) to the core, as of now.
    pub fn observe_sample(&mut self, sample: &Sample) -> Vec<Resolution> {
        let mut out = Vec::new();
        let now = self.now();
        for gpu in sample.gpus.iter().filter(|g| !g.lost) {
            self.core.observe_gpu(&gpu.key, gpu.reading(now), now, &mut out);
        }
        // A reading came (one without NVML too: it says there is nothing to wait for).
        self.core.await_first_reading(false, now, &mut out);
        out
    }

    /// A Telemetry was attached (`first_pending`: its first sample is still to come), or
    /// detached (`false`): requests that name their VRAM need wait for that first reading.
    pub fn telemetry_attached(&mut self, first_pending: bool) -> Vec<Resolution> {
        let mut out = Vec::new();
        let now = self.now();
        self.core.await_first_reading(first_pending, now, &mut out);
        out
    }

    /// The clock, read once per call: [`ArbiterHost::published_now`] reuses this reading.
    pub fn now(&mut self) -> Micros {
        let now = self.clock.now();
        self.call_now = Some(now);
        now
    }

    /// The clock as this call read it (or now), for what the call publishes.
    pub fn published_now(&mut self) -> Micros {
        self.call_now.take().unwrap_or_else(|| self.clock.now())
    }

    /// The shared name of a task type. Past `MAX_INTERNED_TASK_TYPES` distinct names (a caller
    /// inventing one per request) names are no longer kept, so the table cannot grow without bound.
    pub fn intern_task_type(&mut self, name: &str) -> TaskType {
        match self.task_type_number(name) {
            Some(n) => self.task_type_names[n as usize].clone(),
            None => name.into(),
        }
    }

    /// The number of a task type name, kept from now on; `None` once the table is full.
    pub fn task_type_number(&mut self, name: &str) -> Option<u32> {
        if let Some(&n) = self.task_types.get(name) {
            return Some(n);
        }
        if self.task_types.len() >= MAX_INTERNED_TASK_TYPES {
            return None;
        }
        let n = self.task_type_names.len() as u32;
        self.task_type_names.push(name.into());
        self.task_types.insert(name.into(), n);
        Some(n)
    }

    /// The name [`ArbiterHost::task_type_number`] gave this number.
    pub fn task_type_named(&mut self, number: u32) -> Option<TaskType> {
        if number != self.last_task_type {
            // The spare is only ever a reference to the last number's name.
            self.spare_task_type = None;
            self.last_task_type = number;
        } else if let Some(name) = self.spare_task_type.take() {
            return Some(name);
        }
        self.task_type_names.get(number as usize).cloned()
    }

    /// An empty vector for a call's resolutions; [`ArbiterHost::collect`] takes it back.
    pub fn lend_resolutions(&mut self) -> Vec<Resolution> {
        std::mem::take(&mut self.spare_resolutions)
    }

    /// Routes what a core call resolved: a Rust requester's answer to its channel (a lease granted
    /// to one that stopped waiting is released at once, which may grant more), everything else
    /// to the JS half's outbox, and the watchdog's revocations after them.
    pub fn collect(&mut self, mut resolutions: Vec<Resolution>) {
        while !resolutions.is_empty() {
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
                            let _ = reply.send(Err(refusal(&refused)));
                        }
                    },
                    None => self.outbox.push_back(Outbound::Settled(r)),
                }
            }
            if !orphaned.is_empty() {
                let now = self.clock.now();
                for id in orphaned {
                    self.core.release(id, now, &mut resolutions);
                }
            }
        }
        self.recycle(resolutions);
        if self.core.has_revoked() {
            let revoked = self.core.take_revoked();
            if self.js_half_bound {
                self.outbox.extend(revoked.into_iter().map(Outbound::Revoked));
            }
        }
    }

    /// Whether a call that resolved `out` left nothing to route ([`ArbiterHost::collect`],
    /// demands, events): then only the header changed.
    pub fn quiet(&self, out: &[Resolution]) -> bool {
        out.is_empty() && !self.core.has_news()
    }

    /// Keeps an emptied resolutions vector for the next call, if it is the roomier one.
    pub fn recycle(&mut self, resolutions: Vec<Resolution>) {
        if resolutions.capacity() > self.spare_resolutions.capacity() {
            self.spare_resolutions = resolutions;
        }
    }

    /// Hands the standby task types just requested to the on-demand hook.
    pub fn dispatch_demands(&mut self) {
        let demands = self.core.take_demands();
        if let Some(sink) = &self.demand_sink {
            demands.into_iter().for_each(sink);
        }
    }

    /// Whether JS listens to events; the core records them while JS listens or a supervisor
    /// attributes leases.
    pub fn set_js_listening(&mut self, listening: bool) {
        self.js_listening = listening;
        self.core.set_record_events(listening || !self.lease_sinks.is_empty());
    }

    /// Attributes this arbiter's leases to a supervisor's services; returns the sink's id.
    pub fn add_lease_sink(&mut self, sink: LeaseSink) -> u64 {
        let id = self.lease_sinks.add(sink);
        self.set_js_listening(self.js_listening);
        id
    }

    pub fn remove_lease_sink(&mut self, id: u64) {
        self.lease_sinks.remove(id);
        self.set_js_listening(self.js_listening);
    }

    /// Closed: no one listens any more.
    pub fn stop_listening(&mut self) {
        self.lease_sinks.clear();
        self.set_js_listening(false);
    }

    /// The events the last calls recorded, told to the lease sinks first; `None` when no JS
    /// listener wants them.
    pub fn take_events(&mut self) -> Option<Vec<ArbiterEvent>> {
        if !self.js_listening && self.lease_sinks.is_empty() {
            return None;
        }
        let events = self.core.take_events();
        for e in &events {
            self.lease_sinks.tell(e, self.clock.epoch_ms(e.at) as u64);
        }
        (self.js_listening && !events.is_empty()).then_some(events)
    }

    /// The board of waiters and leases per GPU, refreshed on every publish.
    pub fn backlog_board(&mut self) -> Arc<BacklogBoard> {
        let board = self.backlog_board.get_or_insert_with(Arc::default).clone();
        board.set(self.core.each_gpu_load());
        board
    }

    /// Ends a call: refreshes the backlog board and gives the header to publish with the
    /// outbox's records; `None` (the outbox dropped) when there is no JS half to hear them yet.
    pub fn end_call(&mut self, js_half: bool) -> Option<Header> {
        self.refresh_backlog();
        let now = self.published_now();
        if !js_half {
            self.outbox.clear();
            return None;
        }
        Some(Header {
            now_ms: ms(now),
            next_deadline_ms: self.core.next_deadline_hint().map(ms),
            waiters: self.core.waiter_count(),
            enabled: self.core.config().enabled,
            config_generation: self.config_generation,
        })
    }

    /// Refreshes the backlog board, if a Telemetry asked for one.
    pub fn refresh_backlog(&self) {
        if let Some(board) = &self.backlog_board {
            board.set(self.core.each_gpu_load());
        }
    }

    /// Asks for a lease on behalf of Rust code; `reply` hears the answer, now or when a later call
    /// settles the request. A request the arbiter refuses to take (closed, unknown GPU) is
    /// answered with its error. A lease granted after its requester dropped `reply` is released
    /// at once (the resolutions that release caused are returned).
    pub fn acquire_native(&mut self, request: AcquireRequest, reply: NativeReply) -> Vec<Resolution> {
        let now = self.now();
        let mut out = Vec::new();
        match self.core.acquire(request, now) {
            Err(e) => {
                let _ = reply.send(Err(e.message));
            }
            Ok(Admission::Settled(Outcome::Acquired(grant))) => {
                if reply.send(Ok(grant.lease_id)).is_err() {
                    // Nobody waits for it any more (the start was stopped).
                    self.core.release(grant.lease_id, now, &mut out);
                }
            }
            Ok(Admission::Settled(refused)) => {
                let _ = reply.send(Err(refusal(&refused)));
            }
            Ok(Admission::Queued(waiter)) => {
                self.native_waiters.insert(waiter, reply);
            }
        }
        out
    }

    /// Gives back a lease; whether it was still held, and what the release resolved.
    pub fn release(&mut self, lease_id: LeaseId) -> (bool, Vec<Resolution>) {
        let mut out = self.lend_resolutions();
        let now = self.now();
        let Some(name) = self.core.release_task(lease_id, now, &mut out) else { return (false, out) };
        // Kept for the next request of the type last asked for by number, if it is that one.
        let last = self.task_type_names.get(self.last_task_type as usize);
        if last.is_some_and(|last| Arc::ptr_eq(last, &name)) {
            self.spare_task_type = Some(name);
        }
        (true, out)
    }

    /// Applies one of a supervisor's asks ([`ArbiterCall`]); returns what it resolved.
    pub fn apply(&mut self, call: ArbiterCall) -> Vec<Resolution> {
        match call {
            ArbiterCall::Acquire { request, reply, .. } => self.acquire_native(*request, reply),
            ArbiterCall::Release { lease_id } => {
                let (held, out) = self.release(lease_id);
                if !held {
                    tracing::debug!(lease_id, "a service startup lease was already gone");
                }
                out
            }
            ArbiterCall::Standby { task_types, load_allowance_ms } => {
                let allowance = load_allowance_ms.map(|ms| ms.saturating_mul(MICROS_PER_MS));
                self.for_each_task_type(&task_types, |core, t, now, out| core.set_task_standby(t, allowance, now, out))
            }
            ArbiterCall::Starting { task_types } => {
                task_types.iter().for_each(|t| self.core.set_task_starting(t));
                Vec::new()
            }
            ArbiterCall::Unavailable { task_types } => {
                self.for_each_task_type(&task_types, |core, t, now, out| core.fail_task_type(t, now, out))
            }
            ArbiterCall::Routes(routes) => {
                self.core.set_task_gpus(routes);
                Vec::new()
            }
        }
    }

    /// Runs `f` on the core for each task type, as of one clock reading; returns what it resolved.
    fn for_each_task_type(
        &mut self,
        task_types: &[String],
        f: impl Fn(&mut Arbiter, &str, Micros, &mut Vec<Resolution>),
    ) -> Vec<Resolution> {
        let now = self.now();
        let mut out = self.lend_resolutions();
        for task_type in task_types {
            f(&mut self.core, task_type, now, &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arbiter::{Reason, Status};
    use std::cell::RefCell;
    use std::rc::Rc;
    use tokio::sync::oneshot;

    fn host(cfg: serde_json::Value) -> ArbiterHost {
        let mut w = vec![];
        ArbiterHost::new(ArbiterConfig::from_json(&cfg, &mut w).unwrap())
    }

    fn request(task: &str) -> AcquireRequest {
        AcquireRequest::new(task)
    }

    #[test]
    fn task_type_names_are_shared_and_the_table_is_bounded() {
        let mut h = host(serde_json::json!({}));
        let a = h.intern_task_type("ASR");
        assert!(Arc::ptr_eq(&a, &h.intern_task_type("ASR")));
        for i in 0..10_000 {
            h.intern_task_type(&format!("invented-{i}"));
        }
        assert_eq!(h.task_types.len(), MAX_INTERNED_TASK_TYPES);
        assert_eq!(&*h.intern_task_type("invented-9999"), "invented-9999");
        assert_eq!(h.task_type_number("invented-9999"), None);
        let asr = h.task_type_number("ASR").unwrap();
        assert!(Arc::ptr_eq(&a, &h.task_type_named(asr).unwrap()));
        assert_eq!(h.task_type_named(MAX_INTERNED_TASK_TYPES as u32), None);
    }

    #[test]
    fn a_released_name_goes_to_the_next_request_of_its_number_and_never_to_another() {
        let mut h = host(serde_json::json!({"maxConcurrentLeases": 4}));
        let (asr, nmt) = (h.task_type_number("ASR").unwrap(), h.task_type_number("NMT").unwrap());
        let lease = |h: &mut ArbiterHost, number| {
            let name = h.task_type_named(number).unwrap();
            let now = h.now();
            match h.core.acquire(AcquireRequest::of(name, Default::default()), now).unwrap() {
                Admission::Settled(Outcome::Acquired(g)) => g.lease_id,
                other => panic!("{other:?}"),
            }
        };
        let first = lease(&mut h, asr);
        assert!(h.release(first).0);
        // The released reference is kept: the next request takes it, adding none.
        let count = |h: &ArbiterHost| Arc::strong_count(&h.task_type_names[asr as usize]);
        let kept = count(&h);
        let second = lease(&mut h, asr);
        assert_eq!(count(&h), kept, "the spare went into the lease");
        assert!(h.release(second).0);
        assert_eq!(count(&h), kept, "and came back");
        // Another number drops the spare; each lease is of the type it asked for.
        let other = lease(&mut h, nmt);
        assert!(h.spare_task_type.is_none());
        let third = lease(&mut h, nmt);
        assert!(h.release(other).0 && h.release(third).0);
        let fourth = lease(&mut h, asr);
        let types: Vec<String> = h.snapshots(None)[0].active_leases.iter().map(|l| l.task_type.clone()).collect();
        assert_eq!(types, ["ASR"]);
        assert!(h.release(fourth).0);
        assert!(!h.release(fourth).0, "a second release hands nothing back");
        assert_eq!(h.task_type_named(MAX_INTERNED_TASK_TYPES as u32), None);
    }

    #[test]
    fn a_native_request_is_answered_on_its_channel_and_never_reaches_the_js_half() {
        let mut h = host(serde_json::json!({"maxConcurrentLeases": 1}));
        let (reply, mut granted) = oneshot::channel();
        assert!(h.acquire_native(request("SERVICE_STARTUP"), reply).is_empty());
        assert_eq!(granted.try_recv().unwrap(), Ok(1));
        // The next one queues behind it, and is granted on release.
        let (reply, mut second) = oneshot::channel();
        h.acquire_native(request("SERVICE_STARTUP"), reply);
        assert!(second.try_recv().is_err(), "queued");
        let (released, out) = h.release(1);
        assert!(released);
        h.collect(out);
        assert!(matches!(second.try_recv(), Ok(Ok(_))));
        assert!(h.outbox.is_empty(), "nothing for JS");
        // A request the arbiter will not take is answered with why.
        let (reply, mut refused) = oneshot::channel();
        let mut bad = request("X");
        bad.gpu_key = Some("gpu:9".into());
        h.acquire_native(bad, reply);
        assert!(refused.try_recv().unwrap().unwrap_err().contains("gpu:9"));
    }

    #[test]
    fn a_lease_granted_to_a_requester_that_stopped_waiting_is_released_and_goes_to_the_next() {
        let mut h = host(serde_json::json!({"maxConcurrentLeases": 1}));
        let (reply, _held) = oneshot::channel();
        h.acquire_native(request("A"), reply);
        let (reply, gone) = oneshot::channel();
        h.acquire_native(request("A"), reply);
        drop(gone); // that start was stopped while it waited
        let now = h.now();
        let js_waiter = match h.core.acquire(request("A"), now).unwrap() {
            Admission::Queued(id) => id,
            other => panic!("{other:?}"),
        };
        let (_, out) = h.release(1);
        h.collect(out);
        // The orphaned grant was given back at once, and the JS request behind it got the GPU.
        assert!(matches!(
            h.outbox.pop_front(),
            Some(Outbound::Settled(Resolution { waiter, outcome: Outcome::Acquired(_) })) if waiter == js_waiter
        ));
        assert_eq!(h.core.lease_count(), 1);
    }

    #[test]
    fn supervisor_asks_apply_to_the_core_and_a_failed_start_answers_its_waiters() {
        let mut h = host(serde_json::json!({"gpuKeys": ["gpu:0", "gpu:1"]}));
        h.apply(ArbiterCall::Routes(vec![("NMT".into(), "gpu:1".into())]));
        h.apply(ArbiterCall::Standby { task_types: vec!["NMT".into()], load_allowance_ms: Some(1000) });
        let now = h.now();
        let waiter = match h.core.acquire(request("NMT"), now).unwrap() {
            Admission::Queued(id) => id,
            other => panic!("{other:?}"),
        };
        let demanded = Rc::new(RefCell::new(Vec::new()));
        let d = demanded.clone();
        h.demand_sink = Some(Box::new(move |t| d.borrow_mut().push(t)));
        h.dispatch_demands();
        assert_eq!(*demanded.borrow(), ["NMT"]);
        h.apply(ArbiterCall::Starting { task_types: vec!["NMT".into()] });
        let out = h.apply(ArbiterCall::Unavailable { task_types: vec!["NMT".into()] });
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].waiter, waiter);
        assert_eq!(
            out[0].outcome,
            Outcome::NotAcquired { status: Status::Skipped, reason: Reason::ServiceUnavailable }
        );
    }

    #[test]
    fn lease_sinks_hear_grants_even_with_no_js_listener() {
        let mut h = host(serde_json::json!({}));
        let heard = Rc::new(RefCell::new(Vec::new()));
        let hd = heard.clone();
        let sink = h.add_lease_sink(Box::new(move |change, _at| hd.borrow_mut().push(change)));
        let now = h.now();
        h.core.acquire(request("ASR"), now).unwrap();
        assert!(h.take_events().is_none(), "no JS listener: nothing to convert");
        assert!(
            matches!(heard.borrow().as_slice(), [crate::services::LeaseChange::Acquired { task_type, .. }] if task_type == "ASR")
        );
        // Detached, and no JS listener: the core stops recording.
        h.remove_lease_sink(sink);
        h.core.acquire(request("ASR"), now).unwrap();
        assert!(h.core.take_events().is_empty());
    }

    #[test]
    fn a_bad_config_change_keeps_the_config_and_a_good_one_bumps_the_generation() {
        let mut h = host(serde_json::json!({}));
        let (applied, _) = h.change_config(&ConfigChange::Patch(serde_json::json!({"maxConcurrentLeases": 2})));
        assert!(applied.is_ok());
        assert_eq!((h.core.config().max_concurrent_leases.get(), h.config_generation), (2, 1));
        let (applied, _) = h.change_config(&ConfigChange::Patch(serde_json::json!({"maxConcurrentLeases": "x"})));
        assert!(applied.unwrap_err().message.starts_with("gpuArbiter.maxConcurrentLeases"));
        assert_eq!((h.core.config().max_concurrent_leases.get(), h.config_generation), (2, 1));
        let gone = ConfigChange::File(ConfigFileChange::Missing, "/x/config.json".into());
        assert!(h.change_config(&gone).0.is_ok(), "a missing file keeps the last good config");
        assert_eq!(h.config_generation, 1);
        let bad_edit = ConfigChange::File(ConfigFileChange::Edited("{ nope".into()), "/x/config.json".into());
        assert!(h.change_config(&bad_edit).0.is_ok(), "a bad file edit is logged, not thrown");
        assert_eq!(h.config_generation, 1);
    }

    #[test]
    fn a_call_ends_with_the_header_or_drops_its_records_without_a_js_half() {
        let mut h = host(serde_json::json!({"maxConcurrentLeases": 1}));
        let now = h.now();
        h.core.acquire(request("ASR"), now).unwrap();
        h.core.acquire(request("ASR"), now).unwrap();
        h.outbox.push_back(Outbound::Revoked(9));
        assert!(h.end_call(false).is_none());
        assert!(h.outbox.is_empty(), "no promise waits on them");
        let now = h.now();
        let header = h.end_call(true).unwrap();
        assert_eq!(header.now_ms, ms(now), "the call's own clock reading");
        assert_eq!((header.waiters, header.enabled, header.config_generation), (1, true, 0));
    }

    #[test]
    fn snapshots_of_one_gpu_of_an_unknown_key_and_of_all() {
        let mut h = host(serde_json::json!({"gpuKeys": ["gpu:0", "gpu:1"]}));
        let reading = GpuReading { at: 0, utilization_gpu: Some(99.0), free_mb: Some(100), total_mb: Some(8000) };
        assert!(h.observe_gpu("gpu:1", reading).is_empty());
        assert_eq!(h.snapshots(Some("gpu:1")).len(), 1);
        assert!(h.snapshots(Some("gpu:9")).is_empty(), "null for JS");
        assert_eq!(h.snapshots(None).len(), 2);
        let (raised, _) = h.notify_asr_task_hint(Some(1), None);
        assert!(!raised, "a short utterance raises nothing");
        assert!(h.close().is_empty());
        assert!(h.core.is_closed());
    }

    #[test]
    fn the_backlog_board_follows_each_refresh() {
        let mut h = host(serde_json::json!({"maxConcurrentLeases": 1}));
        let board = h.backlog_board();
        let now = h.now();
        h.core.acquire(request("ASR"), now).unwrap();
        h.core.acquire(request("ASR"), now).unwrap();
        h.refresh_backlog();
        let mut total = std::collections::BTreeMap::new();
        board.add_to(&mut total);
        assert_eq!((total["gpu:0"].leases, total["gpu:0"].waiters), (1, 1));
    }
}
