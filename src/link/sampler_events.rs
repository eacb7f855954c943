//! Telemetry's two roads across threads. Samples, alerts and ends go from the sampler thread to
//! JS through a queue that drops the oldest when JS falls behind (a slow listener never blocks
//! sampling). The attached arbiters' waiters and leases go the other way without the JS thread:
//! each arbiter keeps a board, and the sampler thread sums the boards for GPU_IDLE_WITH_BACKLOG.
//! [`FedArbiters`] keeps the attached arbiters, for the JS thread to give each sample to.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::attachments::Attachments;
use super::supervisor_telemetry::SampleSource;
use crate::error::SidecarError;
use crate::telemetry::{Alert, Backlog, BacklogBoard, Sample, SamplerEvent};

/// Events kept while the JS thread is busy; older ones are dropped first.
pub const MAX_QUEUED_EVENTS: usize = 256;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sampler events on their way to JS.
#[derive(Default)]
pub struct SamplerEventQueue {
    events: Mutex<VecDeque<SamplerEvent>>,
    /// The JS thread was asked to look and has not looked yet.
    wake_pending: AtomicBool,
}

impl SamplerEventQueue {
    /// Queues `event` (dropping the oldest past [`MAX_QUEUED_EVENTS`]); returns whether the JS
    /// thread must be woken (it was not asked already).
    pub fn push(&self, event: SamplerEvent) -> bool {
        let mut events = lock(&self.events);
        if events.len() == MAX_QUEUED_EVENTS {
            events.pop_front();
        }
        events.push_back(event);
        drop(events);
        !self.wake_pending.swap(true, Ordering::AcqRel)
    }

    /// Everything queued, oldest first; the next push wakes the JS thread again.
    pub fn take(&self) -> Vec<SamplerEvent> {
        self.wake_pending.store(false, Ordering::Release);
        lock(&self.events).drain(..).collect()
    }

    pub fn clear(&self) {
        lock(&self.events).clear();
    }
}

/// Where the JS thread hands sampler events: the attached arbiters and the listeners.
pub trait SamplerDelivery {
    /// Whether the Telemetry is still open (a listener may close it).
    fn open(&self) -> bool;
    fn feed_arbiters(&self, sample: &Sample);
    fn on_sample(&self, sample: &Sample);
    fn on_alert(&self, alert: &Alert);
    /// `None`: a replay played its last sample.
    fn on_end(&self, error: Option<SidecarError>);
}

impl SamplerEventQueue {
    /// Delivers everything queued, oldest first: a sample to the arbiters, then to `onSample`,
    /// then the alerts it raised or cleared. Nothing once the Telemetry is closed, even by a
    /// listener in the middle.
    pub fn deliver(&self, to: &impl SamplerDelivery) {
        if !to.open() {
            return;
        }
        for event in self.take() {
            if !to.open() {
                return;
            }
            match event {
                SamplerEvent::Sample(output) => {
                    to.feed_arbiters(&output.sample);
                    to.on_sample(&output.sample);
                    output.alerts.iter().for_each(|alert| to.on_alert(alert));
                }
                SamplerEvent::RecordingStopped(error) | SamplerEvent::Ended(Some(error)) => to.on_end(Some(error)),
                SamplerEvent::Ended(None) => to.on_end(None),
            }
        }
    }
}

/// The boards of the arbiters attached to one Telemetry, by the id their detach function holds.
/// A board outlives its arbiter only until the arbiter is collected.
#[derive(Default)]
pub struct BacklogBoards(Mutex<Vec<(u64, Weak<BacklogBoard>)>>);

impl BacklogBoards {
    pub fn attach(&self, id: u64, board: &Arc<BacklogBoard>) {
        lock(&self.0).push((id, Arc::downgrade(board)));
    }

    pub fn detach(&self, id: u64) {
        lock(&self.0).retain(|(a, _)| *a != id);
    }

    pub fn clear(&self) {
        lock(&self.0).clear();
    }

    /// Waiters and leases per GPU key, over every live attached arbiter (several may share a GPU).
    pub fn total(&self) -> BTreeMap<String, Backlog> {
        let mut total = BTreeMap::new();
        for (_, board) in lock(&self.0).iter() {
            if let Some(board) = board.upgrade() {
                board.add_to(&mut total);
            }
        }
        total
    }
}

/// The arbiters a Telemetry feeds, by the id each one's detach function holds, with their backlog
/// boards, and whether a sample has reached them yet.
pub struct FedArbiters<A> {
    arbiters: Attachments<A>,
    boards: Arc<BacklogBoards>,
    fed_any: bool,
}

impl<A> Default for FedArbiters<A> {
    fn default() -> Self {
        Self { arbiters: Attachments::default(), boards: Arc::default(), fed_any: false }
    }
}

impl<A: Clone> FedArbiters<A> {
    /// The boards, for the sampler thread to sum.
    pub fn boards(&self) -> Arc<BacklogBoards> {
        self.boards.clone()
    }

    /// Whether an arbiter attached now must wait for its first reading rather than admit blind:
    /// none has reached the arbiters yet, and one is on the way (taken, or still to come) from
    /// `latest` (`None`: the Telemetry is closed).
    pub fn first_reading_due(&self, latest: Option<&impl SampleSource>) -> bool {
        !self.fed_any && latest.is_some_and(|l| l.first_pending() || l.latest().is_some())
    }

    /// Returns the id its detach function holds.
    pub fn attach(&mut self, arbiter: A, board: Option<&Arc<BacklogBoard>>) -> u64 {
        let id = self.arbiters.add(arbiter);
        if let Some(board) = board {
            self.boards.attach(id, board);
        }
        id
    }

    pub fn detach(&mut self, id: u64) -> Option<A> {
        self.boards.detach(id);
        self.arbiters.remove(id)
    }

    /// The arbiters to give a sample to; from now on none attached waits for a first reading.
    pub fn feed(&mut self) -> Vec<A> {
        self.fed_any = true;
        self.arbiters.iter().cloned().collect()
    }

    pub fn clear(&mut self) {
        self.arbiters.clear();
        self.boards.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::Sample;

    fn end() -> SamplerEvent {
        SamplerEvent::Ended(None)
    }

    #[test]
    fn the_queue_wakes_once_per_look_and_drops_the_oldest_when_js_falls_behind() {
        let q = SamplerEventQueue::default();
        assert!(q.push(end()), "the first event wakes JS");
        assert!(!q.push(end()), "JS was asked already");
        assert_eq!(q.take().len(), 2);
        assert!(q.push(end()), "after a look, the next event wakes it again");
        for _ in 0..MAX_QUEUED_EVENTS + 10 {
            q.push(end());
        }
        assert_eq!(q.take().len(), MAX_QUEUED_EVENTS);
    }

    #[test]
    fn the_backlog_sums_live_boards_and_forgets_detached_and_collected_ones() {
        let boards = BacklogBoards::default();
        let (a, b) = (Arc::new(BacklogBoard::default()), Arc::new(BacklogBoard::default()));
        a.set([("gpu:0", 2, 1)]);
        b.set([("gpu:0", 1, 0), ("gpu:1", 0, 3)]);
        boards.attach(0, &a);
        boards.attach(1, &b);
        let total = boards.total();
        assert_eq!((total["gpu:0"].waiters, total["gpu:0"].leases, total["gpu:1"].leases), (3, 1, 3));
        boards.detach(0);
        assert_eq!(boards.total()["gpu:0"].waiters, 1);
        drop(b); // its arbiter was collected
        assert!(boards.total().is_empty());
    }

    /// A sampler that has produced `sample`, or none yet; `running` unless it stopped.
    struct Source {
        sample: Option<Arc<Sample>>,
        running: bool,
    }

    impl SampleSource for Source {
        fn latest(&self) -> Option<Arc<Sample>> {
            self.sample.clone()
        }
        fn first_pending(&self) -> bool {
            self.running && self.sample.is_none()
        }
    }

    #[test]
    fn an_arbiter_waits_for_a_first_reading_only_while_one_is_on_the_way_and_none_was_fed() {
        let mut fed = FedArbiters::<&str>::default();
        let to_come = Source { sample: None, running: true };
        let stopped = Source { sample: None, running: false };
        assert!(fed.first_reading_due(Some(&to_come)), "the first sample is still to come");
        assert!(!fed.first_reading_due(Some(&stopped)), "none will come");
        assert!(!fed.first_reading_due(None::<&Source>), "the Telemetry is closed");
        let a = fed.attach("a", None);
        assert_eq!(fed.feed(), ["a"]);
        assert!(!fed.first_reading_due(Some(&to_come)), "fed already: the next sample reaches it at once");
        let b = fed.attach("b", None);
        assert_eq!(fed.detach(a), Some("a"));
        assert_eq!((fed.detach(a), fed.feed()), (None, vec!["b"]));
        fed.clear();
        assert!(fed.feed().is_empty() && fed.detach(b).is_none());
    }

    #[test]
    fn an_arbiters_board_counts_from_attach_to_detach() {
        let mut fed = FedArbiters::<&str>::default();
        let board = Arc::new(BacklogBoard::default());
        board.set([("gpu:0", 2, 1)]);
        let id = fed.attach("a", Some(&board));
        assert_eq!(fed.boards().total()["gpu:0"].waiters, 2);
        fed.detach(id);
        assert!(fed.boards().total().is_empty());
    }

    /// Records what reaches JS; closes itself after `close_after` deliveries, as a listener may.
    struct Recorder {
        seen: std::cell::RefCell<Vec<String>>,
        close_after: usize,
    }

    impl SamplerDelivery for Recorder {
        fn open(&self) -> bool {
            self.seen.borrow().len() < self.close_after
        }
        fn feed_arbiters(&self, sample: &Sample) {
            self.seen.borrow_mut().push(format!("arbiters {}", sample.at));
        }
        fn on_sample(&self, sample: &Sample) {
            self.seen.borrow_mut().push(format!("sample {}", sample.at));
        }
        fn on_alert(&self, alert: &Alert) {
            self.seen.borrow_mut().push(format!("alert {}", alert.message));
        }
        fn on_end(&self, error: Option<SidecarError>) {
            self.seen.borrow_mut().push(format!("end {:?}", error.map(|e| e.code.as_str())));
        }
    }

    fn sample_with_alert(at: f64) -> SamplerEvent {
        let alert = Alert {
            at,
            level: crate::telemetry::AlertLevel::Warning,
            code: crate::telemetry::AlertCode::VramPressure,
            active: true,
            gpu_key: None,
            message: format!("raised at {at}"),
            figures: Default::default(),
        };
        let sample = Arc::new(crate::telemetry::sample::fixtures::sample(at));
        SamplerEvent::Sample(crate::telemetry::SamplerOutput { sample, alerts: vec![alert] })
    }

    #[test]
    fn a_sample_reaches_the_arbiters_then_its_listeners_then_its_alerts_and_nothing_after_close() {
        let queue = SamplerEventQueue::default();
        queue.push(sample_with_alert(1.0));
        queue.push(SamplerEvent::RecordingStopped(SidecarError::new(crate::error::ErrorCode::Io, "disk full")));
        queue.push(end());
        let open = Recorder { seen: Default::default(), close_after: usize::MAX };
        queue.deliver(&open);
        assert_eq!(
            *open.seen.borrow(),
            ["arbiters 1", "sample 1", "alert raised at 1", "end Some(\"IO_ERROR\")", "end None"]
        );
        // A listener closes the Telemetry after the first sample's deliveries: the rest is dropped.
        queue.push(sample_with_alert(2.0));
        queue.push(sample_with_alert(3.0));
        let closing = Recorder { seen: Default::default(), close_after: 3 };
        queue.deliver(&closing);
        assert_eq!(*closing.seen.borrow(), ["arbiters 2", "sample 2", "alert raised at 2"]);
        assert!(queue.take().is_empty(), "what was queued was taken, not left for a later wake");
    }
}
