//! The supervisor's events on their way to JS: one queue between the core's event channel and the
//! JS listeners. A forwarding task (or the JS thread, before it settles a promise) moves events
//! from the channel into the queue in the core's order; the JS thread takes them out a slice at a
//! time. Log lines in the queue are bounded: past the bound new ones are dropped and counted, and
//! a `log-dropped` note says how many before that service's next line. Lifecycle events are
//! never dropped.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::supervisor_telemetry::SupervisorTelemetry;
use crate::services::{epoch_ms, ServiceEvent, ServiceEventKind};

/// Log lines queued for JS at most, by count and by bytes. The `logFile` gets every line
/// regardless: it is written before this queue.
pub const MAX_QUEUED_LOG_LINES: usize = 10_000;
pub const MAX_QUEUED_LOG_BYTES: usize = 4 << 20;

/// One turn of the event loop delivers at most this many events, or for at most this long,
/// then yields (`setImmediate`) so timers and I/O run between slices of a log flood.
pub const SLICE_EVENTS: usize = 1_000;
pub const SLICE_TIME: Duration = Duration::from_millis(4);

/// How a slice of deliveries ended.
#[derive(Debug, PartialEq, Eq)]
pub enum SliceEnd {
    /// Nothing more to deliver.
    Drained,
    /// The slice's budget ([`SLICE_EVENTS`], [`SLICE_TIME`] from `started`) is spent; more may wait.
    Spent,
}

/// Calls `deliver_one` (which says whether it delivered something) until nothing is left or the
/// slice's budget is spent; `now` reads the clock.
pub fn deliver_slice(started: Instant, now: impl Fn() -> Instant, mut deliver_one: impl FnMut() -> bool) -> SliceEnd {
    for delivered in 0.. {
        if delivered == SLICE_EVENTS || now().duration_since(started) >= SLICE_TIME {
            return SliceEnd::Spent;
        }
        if !deliver_one() {
            break;
        }
    }
    SliceEnd::Drained
}

/// What the JS listeners get: the core's events, and notes of log lines dropped for them.
#[derive(Debug, PartialEq)]
pub enum QueuedEvent {
    Event(ServiceEvent),
    LogDropped { service: String, count: u64, at: u64 },
}

/// The events waiting for the JS thread, their log lines bounded.
#[derive(Default)]
pub struct ServiceEventQueue {
    events: VecDeque<QueuedEvent>,
    log_lines: usize,
    log_bytes: usize,
    /// Lines dropped per service and not yet reported.
    dropped: BTreeMap<String, u64>,
}

impl ServiceEventQueue {
    pub fn push(&mut self, event: ServiceEvent) {
        if let ServiceEventKind::Log { line, .. } = &event.kind {
            if self.log_lines >= MAX_QUEUED_LOG_LINES || self.log_bytes + line.len() > MAX_QUEUED_LOG_BYTES {
                *self.dropped.entry(event.service).or_default() += 1;
                return;
            }
            self.log_lines += 1;
            self.log_bytes += line.len();
        }
        self.report_dropped(&event.service);
        self.events.push_back(QueuedEvent::Event(event));
    }

    /// The next event; once the queue is empty, the drops not yet reported (of services that went
    /// quiet), one note each.
    pub fn pop(&mut self) -> Option<QueuedEvent> {
        if self.events.is_empty() {
            self.report_all_dropped();
        }
        let queued = self.events.pop_front()?;
        if let QueuedEvent::Event(ServiceEvent { kind: ServiceEventKind::Log { line, .. }, .. }) = &queued {
            self.log_lines -= 1;
            self.log_bytes -= line.len();
        }
        Some(queued)
    }

    /// Whether anything waits: events, or drops not yet reported.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.dropped.is_empty()
    }

    /// Drops every queued log line (counted, reported in place), keeping lifecycle events: what a
    /// promise about to settle needs delivered now, without a long stall.
    pub fn shed_logs(&mut self) {
        let events = std::mem::take(&mut self.events);
        self.log_lines = 0;
        self.log_bytes = 0;
        for queued in events {
            match queued {
                QueuedEvent::Event(ServiceEvent { service, kind: ServiceEventKind::Log { .. }, .. }) => {
                    *self.dropped.entry(service).or_default() += 1;
                }
                QueuedEvent::Event(event) => {
                    self.report_dropped(&event.service);
                    self.events.push_back(QueuedEvent::Event(event));
                }
                other => self.events.push_back(other),
            }
        }
        self.report_all_dropped();
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Queues a `log-dropped` note for `service` if lines of it were dropped.
    fn report_dropped(&mut self, service: &str) {
        if let Some(count) = self.dropped.remove(service) {
            self.events.push_back(QueuedEvent::LogDropped { service: service.to_string(), count, at: epoch_ms() });
        }
    }

    fn report_all_dropped(&mut self) {
        let services: Vec<String> = self.dropped.keys().cloned().collect();
        for service in services {
            self.report_dropped(&service);
        }
    }
}

/// The JS side of delivery, as the binding provides it (called on the JS thread).
pub trait JsListeners {
    /// Whether listeners may still be called: nothing fires after `close()`.
    fn open(&self) -> bool;
    /// Calls the listeners with one event.
    fn deliver(&self, event: QueuedEvent);
    /// Has [`ServiceEventFeed::deliver_turn`] run on a later turn of the event loop (after
    /// pending I/O); `false` when that could not be arranged.
    fn schedule_next_turn(&self) -> bool;
}

/// The whole road from the core's channel to the JS thread: the receiver, the queue, and whether
/// the JS thread has been asked to look. Service pids are labelled in the attached Telemetry on
/// the way (before JS hears of them).
pub struct ServiceEventFeed {
    receiver: Mutex<mpsc::UnboundedReceiver<ServiceEvent>>,
    queue: Mutex<ServiceEventQueue>,
    /// The JS thread was asked to look and has not yet found the queue empty.
    wake_pending: AtomicBool,
    /// A later turn that delivers the next slice is scheduled.
    turn_scheduled: AtomicBool,
    telemetry: Arc<SupervisorTelemetry>,
}

impl ServiceEventFeed {
    pub fn new(receiver: mpsc::UnboundedReceiver<ServiceEvent>, telemetry: Arc<SupervisorTelemetry>) -> Self {
        Self {
            receiver: Mutex::new(receiver),
            queue: Mutex::default(),
            wake_pending: AtomicBool::new(false),
            turn_scheduled: AtomicBool::new(false),
            telemetry,
        }
    }

    pub fn queue(&self) -> MutexGuard<'_, ServiceEventQueue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn accept(&self, event: ServiceEvent) {
        self.telemetry.observe(&event);
        self.queue().push(event);
    }

    /// Queues what the core has sent so far (taken and queued under one lock: the core's order).
    pub fn pull_now(&self) {
        let mut receiver = self.receiver.lock().unwrap_or_else(|e| e.into_inner());
        while let Ok(event) = receiver.try_recv() {
            self.accept(event);
        }
    }

    /// Waits for events and queues them; `false` once the core supervisor is gone. Returns
    /// whether the JS thread must be woken (it was not asked already).
    pub async fn pull(&self) -> Option<bool> {
        let open = std::future::poll_fn(|cx| {
            let mut receiver = self.receiver.lock().unwrap_or_else(|e| e.into_inner());
            match receiver.poll_recv(cx) {
                std::task::Poll::Ready(Some(event)) => {
                    self.accept(event);
                    while let Ok(event) = receiver.try_recv() {
                        self.accept(event);
                    }
                    std::task::Poll::Ready(true)
                }
                std::task::Poll::Ready(None) => std::task::Poll::Ready(false),
                std::task::Poll::Pending => std::task::Poll::Pending,
            }
        })
        .await;
        open.then(|| !self.wake_pending.swap(true, Ordering::SeqCst))
    }

    /// The JS thread will look again anyway (a slice is scheduled): producers need not wake it.
    pub fn hold_wakes(&self) {
        self.wake_pending.store(true, Ordering::SeqCst);
    }

    /// The JS thread found the queue empty: the next event wakes it. Returns whether something
    /// arrived meanwhile (a producer saw the flag still set and did not wake it), so look again.
    pub fn drained(&self) -> bool {
        self.wake_pending.store(false, Ordering::SeqCst);
        !self.queue().is_empty()
    }

    /// Scheduling the next look failed: let the next event wake the JS thread.
    pub fn release_wakes(&self) {
        self.wake_pending.store(false, Ordering::Release);
    }

    /// One turn of the JS thread (woken, or scheduled): delivers a slice of the queued events
    /// ([`deliver_slice`]) and leaves the rest to the next turn, so a log flood never stalls timers
    /// and I/O. `now` reads the clock.
    pub fn deliver_turn(&self, js: &impl JsListeners, now: impl Fn() -> Instant) {
        self.turn_scheduled.store(false, Ordering::SeqCst);
        // `wake_pending` stays set while this runs: a producer that woke the JS thread again now
        // would queue another threadsafe call, and Node runs queued calls back to back, slice after
        // slice, without yielding.
        match deliver_slice(now(), &now, || self.deliver_one(js)) {
            SliceEnd::Spent => self.schedule_next_turn(js),
            // Drained: producers wake us again. One may have queued an event after the last look and
            // before that, and seen the flag still set; look once more.
            SliceEnd::Drained if self.drained() && js.open() => self.schedule_next_turn(js),
            SliceEnd::Drained => {}
        }
    }

    /// Before a promise settles its listeners must have seen every event the core sent before it:
    /// queued lifecycle events are all delivered now, and log lines past one slice are dropped (and
    /// reported with `log-dropped`) rather than delivered in one long stall.
    pub fn deliver_before_settling(&self, js: &impl JsListeners, now: impl Fn() -> Instant) {
        self.pull_now();
        if deliver_slice(now(), &now, || self.deliver_one(js)) == SliceEnd::Spent {
            self.queue().shed_logs();
            while self.deliver_one(js) {}
        }
    }

    /// Takes one queued event to the listeners; `false` when there was none (or they are closed).
    fn deliver_one(&self, js: &impl JsListeners) -> bool {
        let Some(queued) = self.queue().pop() else { return false };
        if !js.open() {
            return false;
        }
        js.deliver(queued);
        true
    }

    fn schedule_next_turn(&self, js: &impl JsListeners) {
        // Producers need not wake the JS thread while a turn is due anyway.
        self.hold_wakes();
        if self.turn_scheduled.swap(true, Ordering::SeqCst) {
            return;
        }
        if !js.schedule_next_turn() {
            // Never strand the queue: the next event's wake delivers it.
            self.turn_scheduled.store(false, Ordering::SeqCst);
            self.release_wakes();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::OutputStream;

    fn log(service: &str, line: &str) -> ServiceEvent {
        ServiceEvent {
            service: service.into(),
            timestamp_ms: 1,
            kind: ServiceEventKind::Log { stream: OutputStream::Stdout, line: line.into() },
        }
    }

    fn event(service: &str, kind: ServiceEventKind) -> ServiceEvent {
        ServiceEvent { service: service.into(), timestamp_ms: 1, kind }
    }

    fn drain(q: &mut ServiceEventQueue) -> Vec<String> {
        std::iter::from_fn(|| q.pop())
            .map(|e| match e {
                QueuedEvent::Event(ServiceEvent { service, kind: ServiceEventKind::Log { line, .. }, .. }) => {
                    format!("{service}: {line}")
                }
                QueuedEvent::Event(e) => format!("{}: {:?}", e.service, e.kind),
                QueuedEvent::LogDropped { service, count, .. } => format!("{service}: dropped {count}"),
            })
            .collect()
    }

    #[test]
    fn log_lines_past_the_count_bound_are_dropped_and_reported_before_that_services_next_line() {
        let mut q = ServiceEventQueue::default();
        for i in 0..MAX_QUEUED_LOG_LINES + 5 {
            q.push(log("asr", &format!("line {i}")));
        }
        q.push(event("asr", ServiceEventKind::Stopped));
        let all = drain(&mut q);
        assert_eq!(all.len(), MAX_QUEUED_LOG_LINES + 2);
        assert_eq!(all[MAX_QUEUED_LOG_LINES], "asr: dropped 5", "reported before the next event of asr");
        assert_eq!(all[MAX_QUEUED_LOG_LINES + 1], "asr: Stopped", "lifecycle events are never dropped");
        // Drained: the bound is free again.
        q.push(log("asr", "after"));
        assert_eq!(drain(&mut q), ["asr: after"]);
    }

    #[test]
    fn the_byte_bound_holds_and_a_quiet_services_drops_are_reported_once_the_queue_is_empty() {
        let mut q = ServiceEventQueue::default();
        let piece = "x".repeat(64 * 1024);
        for _ in 0..MAX_QUEUED_LOG_BYTES / piece.len() + 3 {
            q.push(log("flood", &piece));
        }
        assert!(q.log_bytes <= MAX_QUEUED_LOG_BYTES);
        let all = drain(&mut q);
        assert_eq!(all.last().unwrap(), "flood: dropped 3");
        assert!(q.is_empty());
    }

    #[test]
    fn shedding_drops_queued_lines_in_place_and_keeps_every_lifecycle_event_in_order() {
        let mut q = ServiceEventQueue::default();
        q.push(log("a", "1"));
        q.push(event("a", ServiceEventKind::Ready { time_to_ready_ms: 5 }));
        q.push(log("b", "2"));
        q.push(log("a", "3"));
        q.push(event("b", ServiceEventKind::Stopped));
        q.shed_logs();
        assert_eq!(
            drain(&mut q),
            ["a: dropped 1", "a: Ready { time_to_ready_ms: 5 }", "b: dropped 1", "b: Stopped", "a: dropped 1",]
        );
    }

    #[test]
    fn a_slice_ends_after_its_event_count_or_its_time_whichever_comes_first() {
        let start = Instant::now();
        let mut left = SLICE_EVENTS + 5;
        let mut deliver = || {
            left -= 1;
            true
        };
        assert_eq!(deliver_slice(start, || start, &mut deliver), SliceEnd::Spent);
        assert_eq!(left, 5, "stopped at the count");
        let mut calls = 0;
        let late = || start + SLICE_TIME;
        assert_eq!(
            deliver_slice(start, late, || {
                calls += 1;
                true
            }),
            SliceEnd::Spent
        );
        assert_eq!(calls, 0, "out of time before the first");
        let mut three = 3;
        let one = || {
            three -= 1;
            three > 0
        };
        assert_eq!(deliver_slice(start, || start, one), SliceEnd::Drained);
    }

    /// Listeners that note what they get, and the turns asked for.
    #[derive(Default)]
    struct FakeJs {
        closed: std::cell::Cell<bool>,
        refuse_turns: std::cell::Cell<bool>,
        turns_asked: std::cell::Cell<u32>,
        got: std::cell::RefCell<Vec<QueuedEvent>>,
    }

    impl JsListeners for FakeJs {
        fn open(&self) -> bool {
            !self.closed.get()
        }
        fn deliver(&self, event: QueuedEvent) {
            self.got.borrow_mut().push(event);
        }
        fn schedule_next_turn(&self) -> bool {
            self.turns_asked.set(self.turns_asked.get() + 1);
            !self.refuse_turns.get()
        }
    }

    fn feed_with(events: impl IntoIterator<Item = ServiceEvent>) -> ServiceEventFeed {
        let (tx, rx) = mpsc::unbounded_channel();
        events.into_iter().for_each(|e| tx.send(e).unwrap());
        let feed = ServiceEventFeed::new(rx, Arc::new(SupervisorTelemetry::default()));
        feed.pull_now();
        feed
    }

    #[test]
    fn a_turn_delivers_one_slice_and_asks_once_for_a_turn_for_the_rest() {
        let feed = feed_with((0..SLICE_EVENTS + 10).map(|i| log("a", &i.to_string())));
        let js = FakeJs::default();
        let start = Instant::now();
        feed.deliver_turn(&js, || start);
        assert_eq!((js.got.borrow().len(), js.turns_asked.get()), (SLICE_EVENTS, 1));
        assert!(feed.wake_pending.load(Ordering::SeqCst), "producers need not wake JS while a turn is due");
        feed.deliver_turn(&js, || start);
        assert_eq!((js.got.borrow().len(), js.turns_asked.get()), (SLICE_EVENTS + 10, 1), "drained: no turn");
        assert!(!feed.wake_pending.load(Ordering::SeqCst), "the next event wakes JS");
        // Out of time before the first: nothing delivered, the next turn asked for.
        let ticks = std::cell::Cell::new(0);
        let feed = feed_with([log("a", "1")]);
        feed.deliver_turn(&js, || {
            ticks.set(ticks.get() + 1);
            start + SLICE_TIME * ticks.get()
        });
        assert_eq!((js.got.borrow().len(), js.turns_asked.get()), (SLICE_EVENTS + 10, 2));
    }

    #[test]
    fn a_turn_that_cannot_be_scheduled_lets_the_next_event_wake_js() {
        let feed = feed_with((0..SLICE_EVENTS + 1).map(|i| log("a", &i.to_string())));
        let js = FakeJs { refuse_turns: true.into(), ..FakeJs::default() };
        feed.deliver_turn(&js, Instant::now);
        assert!(!feed.wake_pending.load(Ordering::SeqCst) && !feed.turn_scheduled.load(Ordering::SeqCst));
    }

    #[test]
    fn nothing_reaches_closed_listeners() {
        let feed = feed_with([log("a", "1"), event("a", ServiceEventKind::Stopped)]);
        let js = FakeJs { closed: true.into(), ..FakeJs::default() };
        feed.deliver_turn(&js, Instant::now);
        feed.deliver_before_settling(&js, Instant::now);
        assert!(js.got.borrow().is_empty());
    }

    #[test]
    fn before_a_promise_settles_every_lifecycle_event_is_delivered_and_a_flood_past_a_slice_dropped() {
        let flood = (0..SLICE_EVENTS + 5).map(|i| log("a", &i.to_string()));
        let feed = feed_with(flood.chain([event("a", ServiceEventKind::Stopped)]));
        let js = FakeJs::default();
        let start = Instant::now();
        feed.deliver_before_settling(&js, || start);
        let got = js.got.borrow();
        assert_eq!(got.len(), SLICE_EVENTS + 2);
        assert!(matches!(&got[SLICE_EVENTS], QueuedEvent::LogDropped { count: 5, .. }));
        assert!(matches!(
            &got[SLICE_EVENTS + 1],
            QueuedEvent::Event(ServiceEvent { kind: ServiceEventKind::Stopped, .. })
        ));
        assert_eq!(js.turns_asked.get(), 0);
    }

    #[tokio::test]
    async fn the_feed_wakes_js_once_until_it_has_drained_and_keeps_the_cores_order() {
        let (tx, rx) = mpsc::unbounded_channel();
        let feed = ServiceEventFeed::new(rx, Arc::new(SupervisorTelemetry::default()));
        tx.send(log("a", "1")).unwrap();
        tx.send(log("a", "2")).unwrap();
        assert_eq!(feed.pull().await, Some(true), "the first event wakes JS");
        tx.send(log("a", "3")).unwrap();
        assert_eq!(feed.pull().await, Some(false), "JS is already looking");
        assert_eq!(drain(&mut feed.queue()), ["a: 1", "a: 2", "a: 3"]);
        assert!(!feed.drained());
        tx.send(log("a", "4")).unwrap();
        feed.pull_now();
        assert!(feed.drained() || feed.queue().pop().is_some());
        drop(tx);
        assert_eq!(feed.pull().await, None, "the core is gone");
    }
}
