use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::config::{ArbiterConfig, WatchdogAction};
use super::deadlines::{Deadline, Deadlines};
use super::stats::{render_prometheus, StatsTable};
use super::types::*;
use crate::error::{ErrorCode, SidecarError, SidecarResult};

/// Queue order: higher score first, then arrival order. With aging on, the score is
/// `priority * agingMicros - enqueuedAt`, which ranks waiters exactly as "priority plus one point
/// per agingMs waited" would at any instant, without re-sorting as time passes.
type QueueKey = (Reverse<i128>, u64);

/// Under HIGH_PRESSURE, a wait that runs out at this priority or above is a `TIMEOUT`
/// (`GPU lease timeout: GPU_USAGE_HIGH`); below it the request is skipped (the old arbiter's rule).
const PRESSURE_TIMEOUT_MIN_PRIORITY: u64 = 70;

/// The longest wait or hold a request may ask for, as in config (`Millis`): a larger value
/// (`Infinity`, `1e300`) is capped, so no deadline lies beyond what a timer can represent.
const MAX_REQUEST_MS: u64 = 86_400_000;

/// How many recent queue waits and hold times a GPU keeps for its snapshot.
const RECENT_PER_GPU: usize = 100;
/// How long a request that names its VRAM need waits for an attached Telemetry's first reading
/// at the least (a live Telemetry takes its first sample at the end of the turn it was made in).
const FIRST_READING_WAIT: Micros = 5_000 * MICROS_PER_MS;

/// Why a request cannot be granted right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Capacity,
    Pressure,
    Vram,
    /// The task type's on-demand service is not loaded.
    Standby,
    /// It names its VRAM need, and the attached Telemetry's first reading is still to come.
    Reading,
}

impl Block {
    fn reason_now(self) -> Reason {
        match self {
            Block::Capacity => Reason::GpuBusy,
            Block::Pressure => Reason::GpuUsageHigh,
            Block::Vram => Reason::VramLow,
            Block::Standby => Reason::ServiceUnavailable,
            Block::Reading => Reason::Timeout,
        }
    }
}

/// Where an on-demand task type's service stands while it is not loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standby {
    /// No start on its way: a request may wait this much longer than its `maxWaitMs` for one.
    Unloaded { load_allowance: Micros },
    /// A start is on its way (waiting for memory, evicting, loading): requests wait for it to
    /// end, however long it takes; the supervisor bounds it (VRAM wait, readiness timeout).
    Starting,
}

pub(super) struct Gpu {
    pub key: String,
    pub active: usize,
    pub queue: BTreeMap<QueueKey, WaiterId>,
    pub reading: Option<GpuReading>,
    pub state: AdmissionState,
    /// Queue waits of the latest grants, ms, oldest first (snapshot `metrics.queueWaitMs`).
    pub recent_waits: VecDeque<f64>,
    /// Hold times of the latest releases, ms, oldest first (snapshot `metrics.holdMs`).
    pub recent_holds: VecDeque<f64>,
    /// This GPU's stats slot of each task type seen ([`StatsTable::slot`] without its key compares).
    stats_slots: FxHashMap<Box<str>, usize>,
    /// The last task type looked up there and its slot: task types come interned (one shared
    /// name per type), so the next lookup is most often the same name, told by its address.
    last_stats: Option<(TaskType, usize)>,
}

pub(super) struct Lease {
    pub gpu: usize,
    pub task_type: TaskType,
    pub priority: u64,
    pub trace: KeptTrace,
    pub acquired_at: Micros,
    /// 0: no watchdog.
    pub hold_max: Micros,
    pub watchdog_fired: bool,
    pub vram_mb: u64,
    /// Its GPU's and task type's slot in [`StatsTable`].
    pub stats: usize,
}

pub(super) struct Waiter {
    pub gpu: usize,
    pub key: QueueKey,
    pub task_type: TaskType,
    pub priority: u64,
    pub deadline: Option<Micros>,
    /// The request's own wait (its policy's `maxWaitMs`), without any load allowance: what it
    /// may wait again while its service's start is on its way.
    pub max_wait: Micros,
    pub enqueued_at: Micros,
    pub hold_max: Micros,
    pub vram_mb: u64,
    pub busy: BusyPolicy,
    pub trace: KeptTrace,
    /// Queued for the first reading: once it comes, answered by its own policy.
    pub awaits_reading: bool,
    /// Its GPU's and task type's slot in [`StatsTable`].
    pub stats: usize,
}

/// A trace as a lease or a waiter keeps it: most requests have none, and the tables move their
/// entries by value, so a trace is boxed, and only when it says something.
pub(super) type KeptTrace = Option<Box<Trace>>;

fn keep(trace: Trace) -> KeptTrace {
    (trace != Trace::default()).then(|| Box::new(trace))
}

/// A kept trace as views and events show it.
pub(super) fn shown(trace: &KeptTrace) -> Trace {
    trace.as_deref().cloned().unwrap_or_default()
}

/// A request with its policy applied.
struct Resolved {
    priority: u64,
    max_wait: Micros,
    busy: BusyPolicy,
    queue_limit: usize,
    hold_max: Micros,
    vram_mb: u64,
}

pub struct Arbiter {
    pub(super) config: ArbiterConfig,
    pub(super) gpus: Vec<Gpu>,
    pub(super) leases: FxHashMap<LeaseId, Lease>,
    pub(super) waiters: FxHashMap<WaiterId, Waiter>,
    pub(super) deadlines: Deadlines,
    next_id: u64,
    closed: bool,
    record_events: bool,
    events: Vec<ArbiterEvent>,
    /// Leases the watchdog took back since the caller last asked (their holders are told).
    revoked: Vec<LeaseId>,
    /// Until when long ASR audio raises the water marks.
    marks_boost_until: Option<Micros>,
    /// GPU keys where task types' services run: a request without a `gpuKey` goes there.
    task_gpus: HashMap<String, String>,
    /// Task types whose on-demand service is not loaded: their requests queue, are not granted,
    /// and ask for the service.
    standby: HashMap<String, Standby>,
    /// Standby task types requested since the caller last asked (`take_demands`), once each
    /// until the service is loaded or its start failed.
    demands: Vec<String>,
    demanded: std::collections::HashSet<String>,
    pub(super) stats: StatsTable,
    /// An attached Telemetry's first reading is on its way ([`Arbiter::await_first_reading`]).
    awaiting_reading: bool,
}

impl Arbiter {
    pub fn new(config: ArbiterConfig) -> Self {
        let gpus = config.gpu_keys.iter().map(|k| Gpu::new(k.clone())).collect();
        Self {
            config,
            gpus,
            leases: FxHashMap::default(),
            waiters: FxHashMap::default(),
            deadlines: Deadlines::default(),
            next_id: 1,
            closed: false,
            record_events: false,
            events: Vec::new(),
            revoked: Vec::new(),
            marks_boost_until: None,
            task_gpus: HashMap::new(),
            standby: HashMap::new(),
            demands: Vec::new(),
            demanded: std::collections::HashSet::new(),
            stats: StatsTable::default(),
            awaiting_reading: false,
        }
    }

    /// A Telemetry was attached whose first reading is still to come (`true`), or that reading
    /// came, or the Telemetry went (`false`). Meanwhile a request that names its VRAM need is
    /// not admitted blind: it waits for the reading (at least 5 s, or its own `maxWaitMs`), and
    /// is then answered by its own policy, as if it had come with the reading. "No reading yet"
    /// never turns VRAM admission off (seed 000 happens at boot).
    pub fn await_first_reading(&mut self, awaiting: bool, now: Micros, out: &mut Vec<Resolution>) {
        let was = std::mem::replace(&mut self.awaiting_reading, awaiting);
        if !was || awaiting {
            return;
        }
        for g in 0..self.gpus.len() {
            self.pump(g, now, out);
        }
        let held: Vec<WaiterId> = self.waiters.iter().filter(|(_, w)| w.awaits_reading).map(|(&id, _)| id).collect();
        for id in held {
            let Some(w) = self.waiters.get_mut(&id) else { continue };
            w.awaits_reading = false;
            // Its own wait, from when it came; a SKIP or FALLBACK_CPU request has none.
            let due = if w.busy == BusyPolicy::Wait { w.enqueued_at.saturating_add(w.max_wait) } else { now };
            if due <= now {
                self.time_out(id, now, out);
            } else {
                w.deadline = Some(due);
                self.add_deadline(due, Deadline::WaitTimeout(id));
            }
        }
    }

    pub fn config(&self) -> &ArbiterConfig {
        &self.config
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Events are only kept while someone listens, so an arbiter nobody watches does no event work.
    pub fn set_record_events(&mut self, on: bool) {
        self.record_events = on;
        if !on {
            self.events.clear();
        }
    }

    pub fn take_events(&mut self) -> Vec<ArbiterEvent> {
        std::mem::take(&mut self.events)
    }

    /// Leases revoked by the watchdog since the last call, so their holders can be told to stop.
    pub fn take_revoked(&mut self) -> Vec<LeaseId> {
        std::mem::take(&mut self.revoked)
    }

    /// Whether any lease was revoked since `take_revoked` was last called.
    pub fn has_revoked(&self) -> bool {
        !self.revoked.is_empty()
    }

    /// Whether revocations, demands or events wait to be taken.
    pub fn has_news(&self) -> bool {
        !self.revoked.is_empty() || !self.demands.is_empty() || !self.events.is_empty()
    }

    /// When the caller must next call [`Arbiter::tick`].
    pub fn next_deadline(&mut self) -> Option<Micros> {
        self.next_live_deadline().map(|(at, _)| at)
    }

    /// A time at or before the next deadline, in O(1): a timer armed for it may fire early and
    /// find nothing due (then `tick` drops what was stale and the next hint is later). Cheaper
    /// than [`Arbiter::next_deadline`] for a caller asking after every call.
    pub fn next_deadline_hint(&self) -> Option<Micros> {
        self.deadlines.earliest_entry()
    }

    fn next_live_deadline(&mut self) -> Option<(Micros, Deadline)> {
        let mut deadlines = std::mem::take(&mut self.deadlines);
        let first = deadlines.first(|at, d| self.deadline_is_live(at, d));
        self.deadlines = deadlines;
        first
    }

    /// Whether a deadline still stands: its waiter still waits, its lease is still held and
    /// unwatched, its reading or boost is still the current one.
    fn deadline_is_live(&self, at: Micros, deadline: Deadline) -> bool {
        match deadline {
            Deadline::WaitTimeout(id) => self.waiters.get(&id).is_some_and(|w| w.deadline == Some(at)),
            Deadline::Watchdog(id) => self
                .leases
                .get(&id)
                .is_some_and(|l| !l.watchdog_fired && l.hold_max > 0 && l.acquired_at + l.hold_max == at),
            Deadline::ReadingStale(g) => self
                .gpus
                .get(g)
                .and_then(|gpu| gpu.reading)
                .is_some_and(|r| r.at + self.config.gpu_usage.stale_after_ms.get() * MICROS_PER_MS == at),
            Deadline::MarksBoostEnds => self.marks_boost_until == Some(at),
        }
    }

    /// Schedules a deadline (see [`Deadlines`]: nothing is removed early).
    fn add_deadline(&mut self, at: Micros, deadline: Deadline) {
        let live = self.waiters.len() + self.leases.len() + self.gpus.len() + 1;
        let mut deadlines = std::mem::take(&mut self.deadlines);
        deadlines.push(at, deadline, live, |at, d| self.deadline_is_live(at, d));
        self.deadlines = deadlines;
    }

    pub fn waiter_count(&self) -> usize {
        self.waiters.len()
    }

    /// Routes requests without a `gpuKey` for these task types to these GPUs (where the services
    /// that serve them run), replacing earlier routes. Other task types, and routes to a GPU the
    /// arbiter does not have, keep least-loaded placement.
    pub fn set_task_gpus(&mut self, routes: impl IntoIterator<Item = (String, String)>) {
        self.task_gpus = routes.into_iter().collect();
    }

    /// Puts `task_type` on standby (its on-demand service is not loaded; its requests wait up to
    /// `load_allowance` longer, and the first asks for the service: `take_demands`), or, with
    /// `None`, takes it off (the service is ready) and grants what waited for it.
    pub fn set_task_standby(
        &mut self,
        task_type: &str,
        load_allowance: Option<Micros>,
        now: Micros,
        out: &mut Vec<Resolution>,
    ) {
        match load_allowance {
            Some(load_allowance) => {
                self.standby.insert(task_type.to_string(), Standby::Unloaded { load_allowance });
            }
            None => {
                self.demanded.remove(task_type);
                if self.standby.remove(task_type).is_some() {
                    for g in 0..self.gpus.len() {
                        self.pump(g, now, out);
                    }
                    // What the load left waiting (the GPU is busy) waits its own `maxWaitMs` on.
                    let mut rearm = Vec::new();
                    for (id, w) in self.waiters.iter_mut().filter(|(_, w)| &*w.task_type == task_type) {
                        let at = now.saturating_add(w.max_wait);
                        if w.deadline != Some(at) {
                            w.deadline = Some(at);
                            rearm.push((at, *id));
                        }
                    }
                    for (at, id) in rearm {
                        self.add_deadline(at, Deadline::WaitTimeout(id));
                    }
                }
            }
        }
    }

    /// `task_type`'s on-demand service is being started: its requests wait for the start to end
    /// (ready: granted in queue order; failed: [`Arbiter::fail_task_type`]), never timing out
    /// while it is on its way.
    pub fn set_task_starting(&mut self, task_type: &str) {
        self.standby.insert(task_type.to_string(), Standby::Starting);
    }

    /// The service for standby `task_type` could not be started: its waiting requests settle
    /// `SKIPPED` (`FALLBACK_CPU` under that policy) with `SERVICE_UNAVAILABLE`, and the next
    /// request asks again.
    pub fn fail_task_type(&mut self, task_type: &str, now: Micros, out: &mut Vec<Resolution>) {
        self.demanded.remove(task_type);
        let mut ids: Vec<WaiterId> =
            self.waiters.iter().filter(|(_, w)| &*w.task_type == task_type).map(|(id, _)| *id).collect();
        ids.sort_unstable();
        for id in ids {
            let w = self.dequeue(id).expect("waiter exists");
            let status = if w.busy == BusyPolicy::FallbackCpu { Status::FallbackCpu } else { Status::Skipped };
            let reason = Reason::ServiceUnavailable;
            self.settle_unqueued(w.gpu, &w.task_type, status, reason, false, now);
            out.push(Resolution { waiter: id, outcome: Outcome::NotAcquired { status, reason } });
        }
    }

    /// Each task type's policy priority, where its policy sets one.
    pub fn task_priorities(&self) -> Vec<(String, u64)> {
        self.config.policies.iter().filter_map(|(t, p)| Some((t.clone(), p.priority?.get()))).collect()
    }

    /// Standby task types requested since the last call, each once per standby period.
    pub fn take_demands(&mut self) -> Vec<String> {
        std::mem::take(&mut self.demands)
    }

    /// Whether lease `id` is held now (not released, revoked or never issued).
    pub fn holds_lease(&self, id: LeaseId) -> bool {
        self.leases.contains_key(&id)
    }

    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }

    /// Asks for a lease. Settles at once (granted, skipped, fallback, queue full) or queues the
    /// request; a queued request is settled later by `release`, `tick`, `cancel`, `observe_gpu`,
    /// `set_config` or `close`, each of which returns the resolutions it made.
    pub fn acquire(&mut self, req: AcquireRequest, now: Micros) -> SidecarResult<Admission> {
        self.ensure_open()?;
        // A name that starts with a printable ASCII character is not blank: no trim for it.
        let printable_start = req.task_type.as_bytes().first().is_some_and(u8::is_ascii_graphic);
        if !printable_start && req.task_type.trim().is_empty() {
            return Err(SidecarError::invalid_argument("request.taskType: expected a non-empty string"));
        }
        if let Some(p) = req.priority {
            if p > 100 {
                return Err(SidecarError::invalid_argument(format!(
                    "request.priority: expected an integer 0-100, got {p}"
                )));
            }
        }
        let mut r = self.resolve(&req);
        let standby = if self.standby.is_empty() { None } else { self.standby.get(&*req.task_type).copied() };
        let policy_wait = r.max_wait;
        if standby.is_some() && self.demanded.insert(req.task_type.to_string()) {
            self.demands.push(req.task_type.to_string());
        }
        let routed = match &req.gpu_key {
            None => self.task_gpus.get(&*req.task_type).and_then(|key| self.gpus.iter().position(|g| g.key == *key)),
            Some(_) => None,
        };
        let g = match (&req.gpu_key, routed) {
            (Some(key), _) => self.gpu_index(key)?,
            (None, Some(g)) => g,
            (None, None) => self.pick_gpu(r.priority, r.vram_mb, now),
        };
        if !self.config.enabled {
            // Pass-through: granted at once, not counted, nothing to release.
            let lease_id = self.fresh_id();
            return Ok(Admission::Settled(Outcome::Acquired(Grant {
                lease_id,
                gpu: g,
                acquired_at: now,
                queue_wait: 0,
                hold_max: 0,
            })));
        }
        let blocked = match self.check(g, r.priority, r.vram_mb, now) {
            // Its model is not loaded: nothing to grant until the service is ready. A waiting
            // request may wait through the load too.
            _ if standby.is_some() => {
                r.max_wait = match standby {
                    Some(Standby::Unloaded { load_allowance }) => {
                        r.max_wait.saturating_add(load_allowance).min(MAX_REQUEST_MS * MICROS_PER_MS * 2)
                    }
                    // Waits for the start however long it takes; a request with no wait of its
                    // own still queues for it.
                    _ => r.max_wait.max(1),
                };
                Block::Standby
            }
            Ok(()) => {
                let lease_id = self.fresh_id();
                let stats = self.stats_slot(g, &req.task_type);
                let lease = Lease {
                    gpu: g,
                    task_type: req.task_type,
                    priority: r.priority,
                    trace: keep(req.trace),
                    acquired_at: now,
                    hold_max: r.hold_max,
                    watchdog_fired: false,
                    vram_mb: r.vram_mb,
                    stats,
                };
                return Ok(Admission::Settled(Outcome::Acquired(self.grant(lease_id, lease, 0))));
            }
            Err(block) => block,
        };
        let queue_full = self.gpus[g].queue.len() >= r.queue_limit;
        if blocked == Block::Reading && !queue_full {
            let mut waiting = r;
            waiting.max_wait = waiting.max_wait.max(FIRST_READING_WAIT);
            let id = self.enqueue(g, req, waiting, policy_wait, now);
            self.waiters.get_mut(&id).expect("just queued").awaits_reading = true;
            // Its `queued` event says what it waits for.
            if let Some(ev) = self.events.last_mut().filter(|_| self.record_events) {
                let detail = ev.detail.get_or_insert_with(String::new);
                detail.push_str("; waiting for the attached Telemetry's first reading");
            }
            return Ok(Admission::Queued(id));
        }
        let (status, reason) = match (r.busy, queue_full) {
            (BusyPolicy::Skip, true) | (BusyPolicy::Wait, true) => (Status::Skipped, Reason::QueueFull),
            (BusyPolicy::Skip, false) => (Status::Skipped, blocked.reason_now()),
            (BusyPolicy::FallbackCpu, true) => (Status::FallbackCpu, Reason::QueueFull),
            (BusyPolicy::FallbackCpu, false) => (Status::FallbackCpu, blocked.reason_now()),
            (BusyPolicy::Wait, false) if r.max_wait == 0 => self.wait_ran_out(g, r.priority, r.busy, blocked, now),
            (BusyPolicy::Wait, false) => {
                return Ok(Admission::Queued(self.enqueue(g, req, r, policy_wait, now)));
            }
        };
        // Only a WAIT request with no wait left gets here without a full queue: its wait ran out.
        let waited_out = r.busy == BusyPolicy::Wait && !queue_full;
        self.settle_unqueued(g, &req.task_type, status, reason, waited_out, now);
        Ok(Admission::Settled(Outcome::NotAcquired { status, reason }))
    }

    /// Gives a lease back. Unknown, already released or revoked ids return `false` and change nothing.
    pub fn release(&mut self, lease_id: LeaseId, now: Micros, out: &mut Vec<Resolution>) -> bool {
        self.release_task(lease_id, now, out).is_some()
    }

    /// [`Arbiter::release`], handing back the released lease's task type name: a caller that
    /// shares names passes it to its next request rather than dropping this reference and taking
    /// another (two atomic operations per lease).
    pub fn release_task(&mut self, lease_id: LeaseId, now: Micros, out: &mut Vec<Resolution>) -> Option<TaskType> {
        let lease = self.leases.remove(&lease_id)?;
        let g = lease.gpu;
        self.gpus[g].active -= 1;
        let held = now.saturating_sub(lease.acquired_at);
        push_recent(&mut self.gpus[g].recent_holds, held);
        self.stats.at(lease.stats).hold.observe(held);
        if self.record_events {
            let mut ev = ArbiterEvent::new(EventKind::Released, now);
            ev.gpu_key = Some(self.gpus[g].key.clone());
            ev.task_type = Some(lease.task_type.to_string());
            ev.lease_id = Some(lease_id);
            ev.held = Some(held);
            ev.trace = Some(lease.trace.map_or_else(Trace::default, |t| *t));
            self.events.push(ev);
        }
        self.pump(g, now, out);
        Some(lease.task_type)
    }

    /// Withdraws a queued request (its AbortSignal fired). `None` if it is no longer queued.
    pub fn cancel(&mut self, waiter: WaiterId, now: Micros) -> Option<Resolution> {
        let w = self.dequeue(waiter)?;
        self.stats.at(w.stats).count(Status::Cancelled);
        self.emit_settled(EventKind::Cancelled, w.gpu, &w.task_type, Status::Cancelled, Reason::Aborted, now);
        Some(Resolution {
            waiter,
            outcome: Outcome::NotAcquired { status: Status::Cancelled, reason: Reason::Aborted },
        })
    }

    /// Handles every deadline at or before `now`: wait timeouts, the hold watchdog, stale readings.
    pub fn tick(&mut self, now: Micros, out: &mut Vec<Resolution>) {
        while let Some((at, deadline)) = self.next_live_deadline() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            match deadline {
                Deadline::WaitTimeout(id) => self.time_out(id, now, out),
                Deadline::Watchdog(id) => self.watchdog(id, now, out),
                Deadline::ReadingStale(g) => {
                    self.emit_admission_state(g, now);
                    self.pump(g, now, out);
                }
                Deadline::MarksBoostEnds => {
                    if self.marks_boost_until.is_some_and(|until| until <= now) {
                        self.marks_boost_until = None;
                        self.reassess_pressure(now, out);
                    }
                }
            }
        }
    }

    /// Feeds one GPU's telemetry. Pressure follows that GPU's own utilization with hysteresis
    /// (HIGH at `highWater`, back to NORMAL under `lowWater`); waiters are re-checked.
    pub fn observe_gpu(&mut self, gpu_key: &str, reading: GpuReading, now: Micros, out: &mut Vec<Resolution>) {
        let Some(g) = self.gpus.iter().position(|gpu| gpu.key == gpu_key) else {
            return;
        };
        let usage = &self.config.gpu_usage;
        let marks = self.water_marks();
        let gpu = &mut self.gpus[g];
        let before = gpu.state;
        gpu.state = next_pressure_state(gpu.state, reading.utilization_gpu, marks);
        gpu.reading = Some(reading);
        let stale_at = reading.at + usage.stale_after_ms.get() * MICROS_PER_MS;
        self.add_deadline(stale_at, Deadline::ReadingStale(g));
        if before != self.gpus[g].state {
            self.emit_admission_state(g, now);
        }
        self.pump(g, now, out);
    }

    /// A hint from the ASR stage about the utterance it is about to run. Audio longer than
    /// `dynamicAdjustment.longAudioThresholdMs` raises both water marks for `adjustmentTtlMs`:
    /// the long, busy hold that follows is expected, and should not shed other work as pressure.
    /// Returns whether the marks were raised.
    pub fn notify_asr_task_hint(
        &mut self,
        estimated_audio_ms: Option<u64>,
        estimated_gpu_hold_ms: Option<u64>,
        now: Micros,
        out: &mut Vec<Resolution>,
    ) -> bool {
        let adjust = &self.config.gpu_usage.dynamic_adjustment;
        let long =
            estimated_audio_ms.or(estimated_gpu_hold_ms).is_some_and(|ms| ms > adjust.long_audio_threshold_ms.get());
        if !adjust.enabled || !long || self.closed {
            return false;
        }
        let until = now + adjust.adjustment_ttl_ms.get() * MICROS_PER_MS;
        self.marks_boost_until = Some(until);
        self.add_deadline(until, Deadline::MarksBoostEnds);
        self.reassess_pressure(now, out);
        true
    }

    /// The water marks in force: the configured ones, raised while a long-audio boost lasts.
    pub fn water_marks(&self) -> WaterMarks {
        let usage = &self.config.gpu_usage;
        let (mut high, mut low) = (usage.high_water.get() as f64, usage.low_water.get() as f64);
        if self.marks_boost_until.is_some() {
            high += usage.dynamic_adjustment.high_water_boost.get() as f64;
            low += usage.dynamic_adjustment.low_water_boost.get() as f64;
        }
        WaterMarks { high, low }
    }

    /// Re-applies the (changed) water marks to every GPU's last reading.
    fn reassess_pressure(&mut self, now: Micros, out: &mut Vec<Resolution>) {
        let marks = self.water_marks();
        for g in 0..self.gpus.len() {
            let gpu = &mut self.gpus[g];
            let Some(reading) = gpu.reading else { continue };
            let before = gpu.state;
            gpu.state = next_pressure_state(gpu.state, reading.utilization_gpu, marks);
            if before != gpu.state {
                self.emit_admission_state(g, now);
            }
            self.pump(g, now, out);
        }
    }

    /// Replaces the config, keeping leases and queue. GPU keys may be added; a key can only be
    /// removed while it holds no lease and no waiter.
    pub fn set_config(&mut self, config: ArbiterConfig, now: Micros, out: &mut Vec<Resolution>) -> SidecarResult<()> {
        self.ensure_open()?;
        for gpu in &self.gpus {
            let busy = gpu.active > 0 || !gpu.queue.is_empty();
            if busy && !config.gpu_keys.contains(&gpu.key) {
                return Err(SidecarError::invalid_config(format!(
                    "gpuArbiter.gpuKeys: cannot remove \"{}\" while it holds leases or waiters",
                    gpu.key
                )));
            }
        }
        let mut old: HashMap<String, (usize, Gpu)> =
            std::mem::take(&mut self.gpus).into_iter().enumerate().map(|(i, g)| (g.key.clone(), (i, g))).collect();
        let mut remap = HashMap::new();
        for (new_index, key) in config.gpu_keys.iter().enumerate() {
            let gpu = match old.remove(key) {
                Some((old_index, gpu)) => {
                    remap.insert(old_index, new_index);
                    gpu
                }
                None => Gpu::new(key.clone()),
            };
            self.gpus.push(gpu);
        }
        for lease in self.leases.values_mut() {
            lease.gpu = remap[&lease.gpu];
        }
        for waiter in self.waiters.values_mut() {
            waiter.gpu = remap[&waiter.gpu];
        }
        self.deadlines.remap(|d| match d {
            Deadline::ReadingStale(g) => remap.get(&g).map(|n| Deadline::ReadingStale(*n)),
            other => Some(other),
        });
        self.config = config;
        // A changed staleAfterMs moves each reading's stale deadline.
        for g in 0..self.gpus.len() {
            if let Some(r) = self.gpus[g].reading {
                let stale_at = r.at + self.config.gpu_usage.stale_after_ms.get() * MICROS_PER_MS;
                self.add_deadline(stale_at, Deadline::ReadingStale(g));
            }
        }
        self.requeue_all();
        if self.record_events {
            self.events.push(ArbiterEvent::new(EventKind::ConfigReloaded, now));
        }
        for g in 0..self.gpus.len() {
            self.pump(g, now, out);
        }
        Ok(())
    }

    /// Records that the watched config file disappeared (the last good config stays).
    pub fn note_config_file_missing(&mut self, now: Micros) {
        if self.record_events {
            self.events.push(ArbiterEvent::new(EventKind::ConfigFileMissing, now));
        }
    }

    /// Records that a config edit was refused (the last good config stays).
    pub fn note_config_rejected(&mut self, error: &SidecarError, now: Micros) {
        if self.record_events {
            let mut ev = ArbiterEvent::new(EventKind::ConfigRejected, now);
            ev.detail = Some(error.message.clone());
            self.events.push(ev);
        }
    }

    /// Settles every waiter CANCELLED/SHUTDOWN, drops every lease and deadline. Later calls fail `CLOSED`.
    pub fn close(&mut self, now: Micros, out: &mut Vec<Resolution>) {
        if self.closed {
            return;
        }
        self.closed = true;
        let mut ids: Vec<(Micros, WaiterId)> = self.waiters.iter().map(|(id, w)| (w.enqueued_at, *id)).collect();
        ids.sort_unstable();
        for (_, id) in ids {
            if let Some(w) = self.dequeue(id) {
                self.stats.at(w.stats).count(Status::Cancelled);
                self.emit_settled(EventKind::Cancelled, w.gpu, &w.task_type, Status::Cancelled, Reason::Shutdown, now);
                out.push(Resolution {
                    waiter: id,
                    outcome: Outcome::NotAcquired { status: Status::Cancelled, reason: Reason::Shutdown },
                });
            }
        }
        self.revoked.clear();
        if self.record_events {
            // Listeners that track leases (a supervisor attributing them to services) see each
            // one end.
            let mut ids: Vec<LeaseId> = self.leases.keys().copied().collect();
            ids.sort_unstable();
            for id in ids {
                let lease = &self.leases[&id];
                let mut ev = ArbiterEvent::new(EventKind::Released, now);
                ev.gpu_key = Some(self.gpus[lease.gpu].key.clone());
                ev.task_type = Some(lease.task_type.to_string());
                ev.lease_id = Some(id);
                ev.held = Some(now.saturating_sub(lease.acquired_at));
                ev.trace = Some(shown(&lease.trace));
                ev.detail = Some("shutdown".to_string());
                self.events.push(ev);
            }
        }
        self.leases.clear();
        for gpu in &mut self.gpus {
            gpu.active = 0;
        }
        self.deadlines.clear();
    }

    /// Prometheus text exposition of the arbiter's counters, histograms and gauges.
    pub fn metrics(&self) -> String {
        render_prometheus(&self.stats, &self.gpu_loads())
    }

    /// `(gpu key, waiters, active leases)` for every GPU.
    pub fn gpu_loads(&self) -> Vec<(String, usize, usize)> {
        self.gpus.iter().map(|g| (g.key.clone(), g.queue.len(), g.active)).collect()
    }

    /// [`gpu_loads`](Self::gpu_loads) without allocating: read after every change while a
    /// Telemetry watches the backlog.
    pub fn each_gpu_load(&self) -> impl Iterator<Item = (&str, usize, usize)> + '_ {
        self.gpus.iter().map(|g| (g.key.as_str(), g.queue.len(), g.active))
    }

    // ---- internals ----

    fn ensure_open(&self) -> SidecarResult<()> {
        if self.closed {
            Err(SidecarError::new(ErrorCode::Closed, "the arbiter is closed"))
        } else {
            Ok(())
        }
    }

    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn gpu_index(&self, key: &str) -> SidecarResult<usize> {
        self.gpus.iter().position(|g| g.key == key).ok_or_else(|| {
            SidecarError::new(
                ErrorCode::InvalidGpuKey,
                format!("unknown GPU key \"{key}\"; configured keys: {}", self.config.gpu_keys.join(", ")),
            )
        })
    }

    fn resolve(&self, req: &AcquireRequest) -> Resolved {
        let c = &self.config;
        let p = c.policies.get(&*req.task_type);
        let pick = |f: fn(&super::config::TaskPolicy) -> Option<u64>| p.and_then(f);
        Resolved {
            priority: req.priority.or(pick(|p| p.priority.map(|v| v.get()))).unwrap_or(c.default_priority.get()),
            max_wait: req
                .max_wait_ms
                .or(pick(|p| p.max_wait_ms.map(|v| v.get())))
                .unwrap_or(c.default_max_wait_ms())
                .min(MAX_REQUEST_MS)
                * MICROS_PER_MS,
            busy: req.busy_policy.or(p.and_then(|p| p.busy_policy)).unwrap_or(c.default_busy_policy),
            queue_limit: req
                .queue_limit
                .or(pick(|p| p.queue_limit.map(|v| v.get())))
                .unwrap_or(c.default_queue_limit.get()) as usize,
            hold_max: req
                .hold_max_ms
                .or(pick(|p| p.hold_max_ms.map(|v| v.get())))
                .unwrap_or(c.default_hold_max_ms.get())
                .min(MAX_REQUEST_MS)
                * MICROS_PER_MS,
            vram_mb: req.vram_mb.or(pick(|p| p.vram_mb.map(|v| v.get()))).unwrap_or(0),
        }
    }

    /// A reading that admission may use: telemetry on, and not stale.
    fn usable_reading(&self, g: usize, now: Micros) -> Option<GpuReading> {
        let usage = &self.config.gpu_usage;
        let reading = self.gpus[g].reading?;
        let fresh = now.saturating_sub(reading.at) < usage.stale_after_ms.get() * MICROS_PER_MS;
        (usage.enabled && fresh).then_some(reading)
    }

    fn check(&self, g: usize, priority: u64, vram_mb: u64, now: Micros) -> Result<(), Block> {
        let gpu = &self.gpus[g];
        if gpu.active >= self.config.max_concurrent_leases.get() as usize {
            return Err(Block::Capacity);
        }
        let Some(reading) = self.usable_reading(g, now) else {
            let waits = self.awaiting_reading && vram_mb > 0 && self.config.gpu_usage.enabled;
            return if waits { Err(Block::Reading) } else { Ok(()) };
        };
        let usage = &self.config.gpu_usage;
        if gpu.state == AdmissionState::HighPressure && priority < usage.priority_floor.get() {
            return Err(Block::Pressure);
        }
        if let (true, Some(free)) = (vram_mb > 0, reading.free_mb) {
            // Leases granted after the sample are not in its figures yet: count their estimates.
            let unseen: u64 =
                self.leases.values().filter(|l| l.gpu == g && l.acquired_at > reading.at).map(|l| l.vram_mb).sum();
            let available = free.saturating_sub(usage.vram_reserve_mb.get()).saturating_sub(unseen);
            if available < vram_mb {
                return Err(Block::Vram);
            }
        }
        Ok(())
    }

    /// Least-loaded GPU that can take the request now; if none can, the one with the least work.
    fn pick_gpu(&self, priority: u64, vram_mb: u64, now: Micros) -> usize {
        if self.gpus.len() == 1 {
            return 0;
        }
        (0..self.gpus.len())
            .min_by_key(|&g| {
                let gpu = &self.gpus[g];
                let util = self.usable_reading(g, now).and_then(|r| r.utilization_gpu).unwrap_or(0.0);
                (self.check(g, priority, vram_mb, now).is_err(), gpu.active + gpu.queue.len(), (util * 100.0) as u64, g)
            })
            .unwrap_or(0)
    }

    /// Grants lease `lease_id` (a queued request keeps its waiter id as its lease id, so the id a
    /// snapshot shows for a queued request is the one its lease gets), acquired now
    /// (`lease.acquired_at`) after `waited`.
    // Inlined: the grant is then written where the caller returns it (a copy of it through the
    // stack stalled store forwarding on the acquire hot path).
    #[inline(always)]
    fn grant(&mut self, lease_id: LeaseId, lease: Lease, waited: Micros) -> Grant {
        let (g, now, hold_max) = (lease.gpu, lease.acquired_at, lease.hold_max);
        self.gpus[g].active += 1;
        push_recent(&mut self.gpus[g].recent_waits, waited);
        if hold_max > 0 {
            self.add_deadline(now + hold_max, Deadline::Watchdog(lease_id));
        }
        let stats = self.stats.at(lease.stats);
        stats.count(Status::Acquired);
        stats.wait.observe(waited);
        if self.record_events {
            let mut ev = ArbiterEvent::new(EventKind::Acquired, now);
            ev.gpu_key = Some(self.gpus[g].key.clone());
            ev.task_type = Some(lease.task_type.to_string());
            ev.lease_id = Some(lease_id);
            ev.waited = Some(waited);
            ev.trace = Some(shown(&lease.trace));
            self.events.push(ev);
        }
        self.leases.insert(lease_id, lease);
        Grant { lease_id, gpu: g, acquired_at: now, queue_wait: waited, hold_max }
    }

    /// The stats slot of GPU `g` and `task_type`, made on first use.
    fn stats_slot(&mut self, g: usize, task_type: &TaskType) -> usize {
        let gpu = &mut self.gpus[g];
        match &gpu.last_stats {
            // The same shared name (held here, so its address cannot have been reused).
            Some((last, slot)) if Arc::ptr_eq(last, task_type) => return *slot,
            _ => {}
        }
        let slot = match gpu.stats_slots.get(&**task_type) {
            Some(&slot) => slot,
            None => {
                let slot = self.stats.slot(&gpu.key, task_type);
                gpu.stats_slots.insert((**task_type).into(), slot);
                slot
            }
        };
        gpu.last_stats = Some((task_type.clone(), slot));
        slot
    }

    fn queue_key(&self, priority: u64, enqueued_at: Micros, seq: u64) -> QueueKey {
        let aging = self.config.aging_ms_per_priority.get() as i128 * MICROS_PER_MS as i128;
        let score = if aging > 0 { priority as i128 * aging - enqueued_at as i128 } else { priority as i128 };
        (Reverse(score), seq)
    }

    /// Queues a request; `policy_wait` is its own wait (`r.max_wait` may include a load allowance).
    fn enqueue(&mut self, g: usize, req: AcquireRequest, r: Resolved, policy_wait: Micros, now: Micros) -> WaiterId {
        let id = self.fresh_id();
        let key = self.queue_key(r.priority, now, id);
        let deadline = now + r.max_wait;
        let stats = self.stats_slot(g, &req.task_type);
        self.gpus[g].queue.insert(key, id);
        if self.record_events {
            let mut ev = ArbiterEvent::new(EventKind::Queued, now);
            ev.gpu_key = Some(self.gpus[g].key.clone());
            ev.task_type = Some(req.task_type.to_string());
            ev.trace = Some(req.trace.clone());
            ev.detail = Some(format!("queue length {}", self.gpus[g].queue.len()));
            self.events.push(ev);
        }
        self.waiters.insert(
            id,
            Waiter {
                gpu: g,
                key,
                task_type: req.task_type,
                priority: r.priority,
                deadline: Some(deadline),
                max_wait: policy_wait,
                enqueued_at: now,
                hold_max: r.hold_max,
                vram_mb: r.vram_mb,
                busy: r.busy,
                trace: keep(req.trace),
                awaits_reading: false,
                stats,
            },
        );
        self.add_deadline(deadline, Deadline::WaitTimeout(id));
        id
    }

    fn requeue_all(&mut self) {
        for gpu in &mut self.gpus {
            gpu.queue.clear();
        }
        let mut keyed: Vec<(WaiterId, QueueKey)> = Vec::with_capacity(self.waiters.len());
        for (id, w) in &self.waiters {
            keyed.push((*id, self.queue_key(w.priority, w.enqueued_at, w.key.1)));
        }
        for (id, key) in keyed {
            let w = self.waiters.get_mut(&id).expect("waiter exists");
            w.key = key;
            self.gpus[w.gpu].queue.insert(key, id);
        }
    }

    fn dequeue(&mut self, id: WaiterId) -> Option<Waiter> {
        let w = self.waiters.remove(&id)?;
        self.gpus[w.gpu].queue.remove(&w.key);
        Some(w)
    }

    /// Grants queued requests, in queue order, while the GPU has room. A waiter held back by
    /// pressure or VRAM does not block smaller or higher-priority ones behind it.
    fn pump(&mut self, g: usize, now: Micros, out: &mut Vec<Resolution>) {
        loop {
            if self.gpus[g].active >= self.config.max_concurrent_leases.get() as usize {
                return;
            }
            let next = self.gpus[g].queue.values().copied().find(|id| {
                let w = &self.waiters[id];
                (self.standby.is_empty() || !self.standby.contains_key(&*w.task_type))
                    && self.check(g, w.priority, w.vram_mb, now).is_ok()
            });
            let Some(id) = next else { return };
            let w = self.dequeue(id).expect("queued waiter exists");
            let waited = now.saturating_sub(w.enqueued_at);
            let lease = Lease {
                gpu: g,
                task_type: w.task_type,
                priority: w.priority,
                trace: w.trace,
                acquired_at: now,
                hold_max: w.hold_max,
                watchdog_fired: false,
                vram_mb: w.vram_mb,
                stats: w.stats,
            };
            let grant = self.grant(id, lease, waited);
            out.push(Resolution { waiter: id, outcome: Outcome::Acquired(grant) });
        }
    }

    fn time_out(&mut self, id: WaiterId, now: Micros, out: &mut Vec<Resolution>) {
        let Some(w) = self.waiters.get(&id) else {
            return;
        };
        let (g, priority, vram, busy) = (w.gpu, w.priority, w.vram_mb, w.busy);
        // It may have become grantable without a trigger (e.g. its GPU's reading went stale).
        self.pump(g, now, out);
        if !self.waiters.contains_key(&id) {
            return;
        }
        let standby = if self.standby.is_empty() { None } else { self.standby.get(&*self.waiters[&id].task_type) };
        if standby == Some(&Standby::Starting) {
            // Its service's start is on its way: the request waits for it to end.
            let w = self.waiters.get_mut(&id).expect("waiter exists");
            // Looked at again after its own wait (at least a second: the timer need not spin).
            let at = now.saturating_add(w.max_wait.max(1_000 * MICROS_PER_MS));
            w.deadline = Some(at);
            self.add_deadline(at, Deadline::WaitTimeout(id));
            return;
        }
        let on_standby = standby.is_some();
        let (status, reason) = if on_standby {
            // Its service was still loading when even the load allowance ran out.
            (
                if busy == BusyPolicy::FallbackCpu { Status::FallbackCpu } else { Status::Skipped },
                Reason::ServiceUnavailable,
            )
        } else {
            let block = self.check(g, priority, vram, now).err().unwrap_or(Block::Capacity);
            self.wait_ran_out(g, priority, busy, block, now)
        };
        let w = self.dequeue(id).expect("waiter exists");
        let stats = self.stats.at(w.stats);
        stats.count(status);
        stats.timeouts += 1;
        self.emit_settled(EventKind::Timeout, g, &w.task_type, status, reason, now);
        out.push(Resolution { waiter: id, outcome: Outcome::NotAcquired { status, reason } });
    }

    /// How a wait that ran out is answered, by the old arbiter's rule (its callers classify by
    /// these strings): under HIGH_PRESSURE at priority >= 70 a `TIMEOUT` with `GPU_USAGE_HIGH`;
    /// otherwise `FALLBACK_CPU` under that policy, else `SKIPPED`, with `GPU_USAGE_HIGH` under
    /// pressure, our own `VRAM_LOW` when memory held it back, else `TIMEOUT`.
    fn wait_ran_out(&self, g: usize, priority: u64, busy: BusyPolicy, block: Block, now: Micros) -> (Status, Reason) {
        let pressure = self.admission_state(g, now) == AdmissionState::HighPressure;
        if pressure && priority >= PRESSURE_TIMEOUT_MIN_PRIORITY {
            return (Status::Timeout, Reason::GpuUsageHigh);
        }
        let reason = match block {
            _ if pressure => Reason::GpuUsageHigh,
            Block::Vram => Reason::VramLow,
            Block::Standby => Reason::ServiceUnavailable,
            _ => Reason::Timeout,
        };
        let status = if busy == BusyPolicy::FallbackCpu { Status::FallbackCpu } else { Status::Skipped };
        (status, reason)
    }

    fn watchdog(&mut self, id: LeaseId, now: Micros, out: &mut Vec<Resolution>) {
        let revoke = self.config.watchdog_action == WatchdogAction::Revoke;
        let Some(lease) = self.leases.get_mut(&id) else {
            return;
        };
        lease.watchdog_fired = true;
        let (g, task_type, held) = (lease.gpu, lease.task_type.clone(), now.saturating_sub(lease.acquired_at));
        let trace = shown(&lease.trace);
        let key = self.gpus[g].key.clone();
        let stats = self.stats.at(lease.stats);
        stats.watchdog_exceeded += 1;
        if revoke {
            stats.revoked += 1;
            stats.hold.observe(held);
        }
        tracing::warn!(lease_id = id, gpu = %key, task_type = %task_type, held_ms = held / MICROS_PER_MS,
            action = if revoke { "revoke" } else { "warn" }, "GPU lease held past holdMaxMs");
        if self.record_events {
            let mut ev = ArbiterEvent::new(EventKind::Watchdog, now);
            ev.gpu_key = Some(key);
            ev.task_type = Some(task_type.to_string());
            ev.lease_id = Some(id);
            ev.held = Some(held);
            ev.trace = Some(trace);
            ev.detail = Some(if revoke { "revoke" } else { "warn" }.to_string());
            self.events.push(ev);
        }
        if revoke {
            self.leases.remove(&id);
            self.gpus[g].active -= 1;
            push_recent(&mut self.gpus[g].recent_holds, held);
            self.revoked.push(id);
            self.pump(g, now, out);
        }
    }

    fn settle_unqueued(
        &mut self,
        g: usize,
        task_type: &TaskType,
        status: Status,
        reason: Reason,
        waited_out: bool,
        now: Micros,
    ) {
        let slot = self.stats_slot(g, task_type);
        let stats = self.stats.at(slot);
        stats.count(status);
        match reason {
            _ if waited_out => stats.timeouts += 1,
            Reason::QueueFull => stats.queue_full += 1,
            _ => {}
        }
        let kind = if waited_out { EventKind::Timeout } else { EventKind::Skipped };
        self.emit_settled(kind, g, task_type, status, reason, now);
    }

    fn emit_settled(
        &mut self,
        kind: EventKind,
        g: usize,
        task_type: &str,
        status: Status,
        reason: Reason,
        now: Micros,
    ) {
        if self.record_events {
            let mut ev = ArbiterEvent::new(kind, now);
            ev.gpu_key = Some(self.gpus[g].key.clone());
            ev.task_type = Some(task_type.to_string());
            ev.status = Some(status);
            ev.reason = Some(reason);
            self.events.push(ev);
        }
    }

    fn emit_admission_state(&mut self, g: usize, now: Micros) {
        if self.record_events {
            let state = match self.usable_reading(g, now) {
                Some(_) => self.gpus[g].state,
                None => AdmissionState::Unknown,
            };
            let mut ev = ArbiterEvent::new(EventKind::AdmissionState, now);
            ev.gpu_key = Some(self.gpus[g].key.clone());
            ev.detail = Some(state.as_str().to_string());
            self.events.push(ev);
        }
    }

    pub(super) fn admission_state(&self, g: usize, now: Micros) -> AdmissionState {
        match self.usable_reading(g, now) {
            Some(_) => self.gpus[g].state,
            None => AdmissionState::Unknown,
        }
    }
}

/// The utilization marks between NORMAL and HIGH_PRESSURE.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WaterMarks {
    pub high: f64,
    pub low: f64,
}

/// Pressure follows utilization with hysteresis: HIGH at `high`, NORMAL again under `low`.
fn next_pressure_state(state: AdmissionState, utilization: Option<f64>, marks: WaterMarks) -> AdmissionState {
    match (utilization, state) {
        (Some(u), _) if u >= marks.high => AdmissionState::HighPressure,
        (Some(u), _) if u < marks.low => AdmissionState::Normal,
        (Some(_), AdmissionState::Unknown) => AdmissionState::Normal,
        (_, state) => state,
    }
}

fn push_recent(recent: &mut VecDeque<f64>, micros: Micros) {
    if recent.len() == RECENT_PER_GPU {
        recent.pop_front();
    }
    recent.push_back(micros as f64 / MICROS_PER_MS as f64);
}

impl Gpu {
    fn new(key: String) -> Self {
        Self {
            key,
            active: 0,
            queue: BTreeMap::new(),
            reading: None,
            state: AdmissionState::Unknown,
            recent_waits: VecDeque::new(),
            recent_holds: VecDeque::new(),
            stats_slots: FxHashMap::default(),
            last_stats: None,
        }
    }
}
