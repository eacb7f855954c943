//! The numbers the arbiter's hot calls leave for its JS half (`src/js/arbiter.js`) in the array
//! they share: a header, the call's own outcome, and a batch of the resolutions and revocations it
//! caused. A Node-API call costs about 1k instructions and building a result object natively about
//! 7k, as much as the arbitration itself; JS reads a slot for the price of an array load. The
//! binding exports this layout to JS as enums (`ArbiterMailboxSlot`, ...) from the same definition.

use std::collections::VecDeque;

use super::arbiter_host::{Header, Outbound};
use crate::arbiter::clock::ms;
use crate::arbiter::{Micros, Outcome, WaiterId};

/// The layout, defined once: the writer below uses these enums, and the binding exports the same
/// definition to JS (`#[napi]`, see `binding/arbiter/mailbox.rs`), so what JS reads is where it is
/// written. Header slots, then the call's own outcome record, then the batch of records.
#[macro_export]
macro_rules! arbiter_mailbox_layout {
    ($(#[$attr:meta])*) => {
        /// Header slots of the arbiter mailbox.
        $(#[$attr])*
        pub enum ArbiterMailboxSlot {
            /// The arbiter's monotonic clock at the end of the last call, ms.
            Now = 0,
            /// At or before when the arbiter next needs `tick()` (on that clock, ms; -1: never). It may
            /// be early: the tick then finds nothing due and the next value is later.
            NextDeadline = 1,
            /// Requests waiting now (the deadline timer keeps Node alive only while there are some).
            Waiters = 2,
            /// 1 while the arbiter is enabled.
            Enabled = 3,
            /// Bumped on every config change, so JS knows when to re-read the GPU keys.
            ConfigGeneration = 4,
            /// How many records the last call wrote, from `Records` on.
            RecordCount = 5,
            /// 1 when more records wait: call `takeRecords()` for them.
            MoreRecords = 6,
            /// The record of the last `acquire` call's own outcome.
            Outcome = 8,
            /// The first record of resolutions and revocations the last call caused.
            Records = 16,
        }

        /// Fields of one record, as offsets from the record's start.
        $(#[$attr])*
        pub enum ArbiterRecordField {
            Kind = 0,
            /// Waiter id of a queued or settled request, lease id of a grant or a revocation (a waiter
            /// keeps its id as its lease id).
            Id = 1,
            /// Index into the config's `gpuKeys`.
            Gpu = 2,
            /// Index into `arbiterCodeNames().statuses`.
            Status = 3,
            /// Index into `arbiterCodeNames().reasons`.
            Reason = 4,
            /// Epoch ms.
            AcquiredAt = 5,
            QueueWaitMs = 6,
            HoldMaxMs = 7,
            /// Slots per record.
            Size = 8,
        }

        /// What a record says.
        $(#[$attr])*
        pub enum ArbiterRecordKind {
            /// The request waits; a later record settles it.
            Queued = 0,
            Acquired = 1,
            NotAcquired = 2,
            /// The hold watchdog took the lease back: its holder should stop.
            Revoked = 3,
        }
    };
}

arbiter_mailbox_layout!(#[derive(Clone, Copy, Debug, PartialEq, Eq)]);
pub use ArbiterMailboxSlot as Slot;
pub use ArbiterRecordField as Field;
pub use ArbiterRecordKind as RecordKind;

/// Records per batch; a call that causes more sets `MoreRecords`.
pub const RECORD_CAPACITY: usize = 32;
pub const SLOTS: usize = Slot::Records as usize + RECORD_CAPACITY * Field::Size as usize;

/// The shared array's numbers.
pub type Slots = [f64; SLOTS];

pub fn write_header(slots: &mut Slots, h: &Header) {
    slots[Slot::Now as usize] = h.now_ms;
    slots[Slot::NextDeadline as usize] = h.next_deadline_ms.unwrap_or(-1.0);
    slots[Slot::Waiters as usize] = h.waiters as f64;
    slots[Slot::Enabled as usize] = if h.enabled { 1.0 } else { 0.0 };
    slots[Slot::ConfigGeneration as usize] = h.config_generation as f64;
}

/// Writes a call's own outcome; returns its kind, which the call returns to JS.
pub fn write_outcome(
    slots: &mut Slots,
    id: WaiterId,
    outcome: &Outcome,
    epoch_ms: impl Fn(Micros) -> f64,
) -> RecordKind {
    write_record(slots, Slot::Outcome as usize, id, Some(outcome), &epoch_ms)
}

pub fn write_queued(slots: &mut Slots, id: WaiterId) -> RecordKind {
    let at = Slot::Outcome as usize;
    slots[at + Field::Kind as usize] = RecordKind::Queued as i32 as f64;
    slots[at + Field::Id as usize] = id as f64;
    RecordKind::Queued
}

/// Moves up to one batch of records out of `outbox`; `epoch_ms` converts the arbiter's clock.
pub fn write_records(slots: &mut Slots, outbox: &mut VecDeque<Outbound>, epoch_ms: impl Fn(Micros) -> f64) {
    let count = outbox.len().min(RECORD_CAPACITY);
    for i in 0..count {
        let at = Slot::Records as usize + i * Field::Size as usize;
        match outbox.pop_front().expect("counted above") {
            Outbound::Settled(r) => write_record(slots, at, r.waiter, Some(&r.outcome), &epoch_ms),
            Outbound::Revoked(id) => write_record(slots, at, id, None, &epoch_ms),
        };
    }
    slots[Slot::RecordCount as usize] = count as f64;
    slots[Slot::MoreRecords as usize] = if outbox.is_empty() { 0.0 } else { 1.0 };
}

fn write_record(
    slots: &mut Slots,
    at: usize,
    id: u64,
    outcome: Option<&Outcome>,
    epoch_ms: &impl Fn(Micros) -> f64,
) -> RecordKind {
    let mut field = |f: Field, v: f64| slots[at + f as usize] = v;
    field(Field::Id, id as f64);
    let kind = match outcome {
        Some(Outcome::Acquired(g)) => {
            field(Field::Gpu, g.gpu as f64);
            field(Field::AcquiredAt, epoch_ms(g.acquired_at));
            field(Field::QueueWaitMs, ms(g.queue_wait));
            field(Field::HoldMaxMs, ms(g.hold_max));
            RecordKind::Acquired
        }
        Some(Outcome::NotAcquired { status, reason }) => {
            field(Field::Status, *status as u8 as f64);
            field(Field::Reason, *reason as u8 as f64);
            RecordKind::NotAcquired
        }
        None => RecordKind::Revoked,
    };
    field(Field::Kind, kind as i32 as f64);
    kind
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arbiter::{AcquireRequest, Admission, Arbiter, ArbiterConfig, Reason, Resolution, Status};

    fn granted() -> Outcome {
        let mut a = Arbiter::new(ArbiterConfig::from_json(&serde_json::json!({}), &mut vec![]).unwrap());
        match a.acquire(AcquireRequest::new("ASR"), 5_000).unwrap() {
            Admission::Settled(outcome) => outcome,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_outcome_a_refusal_and_a_queued_request_are_written_where_js_reads_them() {
        let mut slots = [0.0; SLOTS];
        let at = Slot::Outcome as usize;
        let outcome = granted();
        assert_eq!(write_outcome(&mut slots, 1, &outcome, |us| us as f64 + 0.5), RecordKind::Acquired);
        let Outcome::Acquired(g) = &outcome else { unreachable!() };
        assert_eq!(slots[at + Field::Kind as usize], 1.0);
        assert_eq!(slots[at + Field::AcquiredAt as usize], g.acquired_at as f64 + 0.5, "epoch ms from the clock");
        assert_eq!(slots[at + Field::HoldMaxMs as usize], ms(g.hold_max));
        let refused = Outcome::NotAcquired { status: Status::Skipped, reason: Reason::QueueFull };
        assert_eq!(write_outcome(&mut slots, 2, &refused, |_| 0.0), RecordKind::NotAcquired);
        assert_eq!(slots[at + Field::Status as usize], Status::Skipped as u8 as f64);
        assert_eq!(slots[at + Field::Reason as usize], Reason::QueueFull as u8 as f64);
        assert_eq!(write_queued(&mut slots, 3), RecordKind::Queued);
        assert_eq!((slots[at + Field::Kind as usize], slots[at + Field::Id as usize]), (0.0, 3.0));
    }

    #[test]
    fn records_go_out_one_batch_at_a_time_and_say_when_more_wait() {
        let mut slots = [0.0; SLOTS];
        let mut outbox: VecDeque<Outbound> = (0..RECORD_CAPACITY as u64 + 2).map(Outbound::Revoked).collect();
        outbox.push_front(Outbound::Settled(Resolution { waiter: 99, outcome: granted() }));
        write_records(&mut slots, &mut outbox, |_| 0.0);
        assert_eq!(slots[Slot::RecordCount as usize], RECORD_CAPACITY as f64);
        assert_eq!(slots[Slot::MoreRecords as usize], 1.0);
        let first = Slot::Records as usize;
        assert_eq!((slots[first + Field::Kind as usize], slots[first + Field::Id as usize]), (1.0, 99.0));
        let second = first + Field::Size as usize;
        assert_eq!(slots[second + Field::Kind as usize], RecordKind::Revoked as i32 as f64);
        write_records(&mut slots, &mut outbox, |_| 0.0);
        assert_eq!((slots[Slot::RecordCount as usize], slots[Slot::MoreRecords as usize]), (3.0, 0.0));
        assert!(outbox.is_empty());
    }

    #[test]
    fn the_header_says_never_as_minus_one() {
        let mut slots = [0.0; SLOTS];
        let h = Header { now_ms: 7.5, next_deadline_ms: None, waiters: 2, enabled: false, config_generation: 3 };
        write_header(&mut slots, &h);
        assert_eq!(&slots[..5], &[7.5, -1.0, 2.0, 0.0, 3.0]);
    }
}
