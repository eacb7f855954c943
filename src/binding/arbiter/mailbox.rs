//! The memory the arbiter shares with its JS half (`src/js/arbiter.js`).
//!
//! A Node-API call costs about 1k instructions and building a result object natively about 7k, as
//! much as the arbitration itself. So the hot calls take and return plain numbers, and everything
//! else a call produces (its own outcome, grants to waiters it caused, revoked leases, the next
//! deadline) is written here, into a `Float64Array` that JS reads for the price of an array load.
//! The layout is defined once, by the enums below, which JS reads from the native module.

use std::collections::VecDeque;
use std::ptr;

use napi::{check_status, sys, Env, Result};
use napi_derive::napi;

use super::super::js::JsRef;
use crate::arbiter::{Outcome, Reason, Status, WaiterId, LEASE_PREFIX};
use crate::link::arbiter_host::{Header, Outbound};

/// Header slots of the arbiter mailbox.
#[napi]
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
#[napi]
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
#[napi]
#[derive(Clone, Copy)]
pub enum ArbiterRecordKind {
    /// The request waits; a later record settles it.
    Queued = 0,
    Acquired = 1,
    NotAcquired = 2,
    /// The hold watchdog took the lease back: its holder should stop.
    Revoked = 3,
}

/// Records per batch; a call that causes more leaves `MoreRecords` set.
const RECORD_CAPACITY: usize = 32;
const SLOTS: usize = ArbiterMailboxSlot::Records as usize + RECORD_CAPACITY * ArbiterRecordField::Size as usize;

/// The names behind the numbers in records: status and reason codes, and the prefix of the
/// lease ids JS shows (`lease-42` for record id 42).
#[napi(object)]
pub struct ArbiterCodeNames {
    pub statuses: Vec<String>,
    pub reasons: Vec<String>,
    pub lease_id_prefix: String,
}

/// The names of the status and reason codes that arbiter records carry, by code, and the lease
/// id prefix.
#[napi]
pub fn arbiter_code_names() -> ArbiterCodeNames {
    ArbiterCodeNames {
        statuses: Status::ALL.iter().map(|s| s.as_str().to_string()).collect(),
        reasons: Reason::ALL.iter().map(|r| r.as_str().to_string()).collect(),
        lease_id_prefix: LEASE_PREFIX.to_string(),
    }
}

/// An outcome with the figures JS needs to build its result.
pub struct OutcomeRecord<'a> {
    pub id: WaiterId,
    pub outcome: &'a Outcome,
    pub acquired_at_epoch_ms: f64,
}

/// The shared `Float64Array`.
pub struct Mailbox {
    data: *mut f64,
    /// Keeps the buffer alive while the arbiter lives.
    array: JsRef,
}

impl Mailbox {
    pub fn new(env: &Env) -> Result<Self> {
        let mut data: *mut std::ffi::c_void = ptr::null_mut();
        let mut buffer = ptr::null_mut();
        check_status!(unsafe {
            sys::napi_create_arraybuffer(env.raw(), SLOTS * std::mem::size_of::<f64>(), &mut data, &mut buffer)
        })?;
        let mut array = ptr::null_mut();
        check_status!(unsafe {
            sys::napi_create_typedarray(env.raw(), sys::TypedarrayType::float64_array, SLOTS, buffer, 0, &mut array)
        })?;
        Ok(Self { data: data.cast(), array: JsRef::new(env, array)? })
    }

    pub fn array(&self) -> Result<sys::napi_value> {
        self.array.get()
    }

    fn set(&self, slot: usize, value: f64) {
        assert!(slot < SLOTS, "mailbox slot {slot} out of range");
        // SAFETY: the buffer holds SLOTS f64s, lives as long as `array`, is never detached (JS
        // never sees it outside the arbiter module), and is only touched on the JS thread.
        unsafe { self.data.add(slot).write(value) }
    }

    pub fn write_header(&self, h: &Header) {
        self.set(ArbiterMailboxSlot::Now as usize, h.now_ms);
        self.set(ArbiterMailboxSlot::NextDeadline as usize, h.next_deadline_ms.unwrap_or(-1.0));
        self.set(ArbiterMailboxSlot::Waiters as usize, h.waiters as f64);
        self.set(ArbiterMailboxSlot::Enabled as usize, if h.enabled { 1.0 } else { 0.0 });
        self.set(ArbiterMailboxSlot::ConfigGeneration as usize, h.config_generation as f64);
    }

    /// Writes the call's own outcome; returns its kind, which the call returns to JS.
    pub fn write_outcome(&self, o: OutcomeRecord<'_>, ms: impl Fn(u64) -> f64) -> ArbiterRecordKind {
        self.write_record(ArbiterMailboxSlot::Outcome as usize, o.id, Some(o.outcome), o.acquired_at_epoch_ms, &ms)
    }

    pub fn write_queued(&self, id: WaiterId) -> ArbiterRecordKind {
        let at = ArbiterMailboxSlot::Outcome as usize;
        self.set(at + ArbiterRecordField::Kind as usize, ArbiterRecordKind::Queued as i32 as f64);
        self.set(at + ArbiterRecordField::Id as usize, id as f64);
        ArbiterRecordKind::Queued
    }

    /// Moves up to one batch of records out of `outbox`; `epoch_ms` converts the arbiter clock.
    pub fn write_records(
        &self,
        outbox: &mut VecDeque<Outbound>,
        epoch_ms: impl Fn(u64) -> f64,
        ms: impl Fn(u64) -> f64,
    ) {
        let count = outbox.len().min(RECORD_CAPACITY);
        for i in 0..count {
            let at = ArbiterMailboxSlot::Records as usize + i * ArbiterRecordField::Size as usize;
            match outbox.pop_front().expect("counted above") {
                Outbound::Settled(r) => {
                    let acquired_at = match &r.outcome {
                        Outcome::Acquired(g) => epoch_ms(g.acquired_at),
                        Outcome::NotAcquired { .. } => 0.0,
                    };
                    self.write_record(at, r.waiter, Some(&r.outcome), acquired_at, &ms);
                }
                Outbound::Revoked(id) => {
                    self.write_record(at, id, None, 0.0, &ms);
                }
            }
        }
        self.set(ArbiterMailboxSlot::RecordCount as usize, count as f64);
        self.set(ArbiterMailboxSlot::MoreRecords as usize, if outbox.is_empty() { 0.0 } else { 1.0 });
    }

    fn write_record(
        &self,
        at: usize,
        id: u64,
        outcome: Option<&Outcome>,
        acquired_at_epoch_ms: f64,
        ms: &impl Fn(u64) -> f64,
    ) -> ArbiterRecordKind {
        let field = |f: ArbiterRecordField, v: f64| self.set(at + f as usize, v);
        field(ArbiterRecordField::Id, id as f64);
        let kind = match outcome {
            Some(Outcome::Acquired(g)) => {
                field(ArbiterRecordField::Gpu, g.gpu as f64);
                field(ArbiterRecordField::AcquiredAt, acquired_at_epoch_ms);
                field(ArbiterRecordField::QueueWaitMs, ms(g.queue_wait));
                field(ArbiterRecordField::HoldMaxMs, ms(g.hold_max));
                ArbiterRecordKind::Acquired
            }
            Some(Outcome::NotAcquired { status, reason }) => {
                field(ArbiterRecordField::Status, *status as u8 as f64);
                field(ArbiterRecordField::Reason, *reason as u8 as f64);
                ArbiterRecordKind::NotAcquired
            }
            None => ArbiterRecordKind::Revoked,
        };
        field(ArbiterRecordField::Kind, kind as i32 as f64);
        kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_follow_the_numeric_codes() {
        let names = arbiter_code_names();
        for s in Status::ALL {
            assert_eq!(names.statuses[s as u8 as usize], s.as_str());
        }
        for r in Reason::ALL {
            assert_eq!(names.reasons[r as u8 as usize], r.as_str());
        }
    }
}
