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

/// The whole road from the core's channel to the JS thread: the receiver, the queue, and whether
/// the JS thread has been asked to look. Service pids are labelled in the attached Telemetry on
/// the way (before JS hears of them).
pub struct ServiceEventFeed {
    receiver: Mutex<mpsc::UnboundedReceiver<ServiceEvent>>,
    queue: Mutex<ServiceEventQueue>,
    /// The JS thread was asked to look and has not yet found the queue empty.
    wake_pending: AtomicBool,
    telemetry: Arc<SupervisorTelemetry>,
}

impl ServiceEventFeed {
    pub fn new(receiver: mpsc::UnboundedReceiver<ServiceEvent>, telemetry: Arc<SupervisorTelemetry>) -> Self {
        Self {
            receiver: Mutex::new(receiver),
            queue: Mutex::default(),
            wake_pending: AtomicBool::new(false),
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
