//! The memory the arbiter shares with its JS half (`src/js/arbiter.js`): a `Float64Array` the hot
//! calls write their outcomes into ([`crate::link::arbiter_mailbox`] defines the layout and writes
//! it), and the layout's enums as JS reads them from the native module.

use std::ptr;

use napi::{check_status, sys, Env, Result};
use napi_derive::napi;

use super::super::js::JsRef;
use crate::arbiter::{Reason, Status, LEASE_PREFIX};
use crate::link::arbiter_mailbox::{Slots, SLOTS};

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
pub enum ArbiterRecordKind {
    /// The request waits; a later record settles it.
    Queued = 0,
    Acquired = 1,
    NotAcquired = 2,
    /// The hold watchdog took the lease back: its holder should stop.
    Revoked = 3,
}

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

/// The shared `Float64Array`.
pub struct Mailbox {
    data: *mut Slots,
    /// Keeps the buffer alive while the arbiter lives.
    array: JsRef,
}

impl Mailbox {
    pub fn new(env: &Env) -> Result<Self> {
        let mut data: *mut std::ffi::c_void = ptr::null_mut();
        let mut buffer = ptr::null_mut();
        check_status!(unsafe {
            sys::napi_create_arraybuffer(env.raw(), std::mem::size_of::<Slots>(), &mut data, &mut buffer)
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

    /// Writes into the shared numbers ([`crate::link::arbiter_mailbox`] says where).
    pub fn write<R>(&self, f: impl FnOnce(&mut Slots) -> R) -> R {
        // SAFETY: the buffer holds `Slots`, lives as long as `array`, is never detached (JS never
        // sees it outside the arbiter module), and is only touched on the JS thread, by one
        // `write` at a time.
        f(unsafe { &mut *self.data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exported enums are the layout JS reads; they must say what the writer writes.
    #[test]
    fn the_exported_layout_is_the_one_written() {
        use crate::link::arbiter_mailbox::{Field as F, RecordKind as K, Slot as S};
        let slots = [
            (ArbiterMailboxSlot::Now as usize, S::Now as usize),
            (ArbiterMailboxSlot::NextDeadline as usize, S::NextDeadline as usize),
            (ArbiterMailboxSlot::Waiters as usize, S::Waiters as usize),
            (ArbiterMailboxSlot::Enabled as usize, S::Enabled as usize),
            (ArbiterMailboxSlot::ConfigGeneration as usize, S::ConfigGeneration as usize),
            (ArbiterMailboxSlot::RecordCount as usize, S::RecordCount as usize),
            (ArbiterMailboxSlot::MoreRecords as usize, S::MoreRecords as usize),
            (ArbiterMailboxSlot::Outcome as usize, S::Outcome as usize),
            (ArbiterMailboxSlot::Records as usize, S::Records as usize),
            (ArbiterRecordField::Kind as usize, F::Kind as usize),
            (ArbiterRecordField::Id as usize, F::Id as usize),
            (ArbiterRecordField::Gpu as usize, F::Gpu as usize),
            (ArbiterRecordField::Status as usize, F::Status as usize),
            (ArbiterRecordField::Reason as usize, F::Reason as usize),
            (ArbiterRecordField::AcquiredAt as usize, F::AcquiredAt as usize),
            (ArbiterRecordField::QueueWaitMs as usize, F::QueueWaitMs as usize),
            (ArbiterRecordField::HoldMaxMs as usize, F::HoldMaxMs as usize),
            (ArbiterRecordField::Size as usize, F::Size as usize),
            (ArbiterRecordKind::Queued as usize, K::Queued as usize),
            (ArbiterRecordKind::Acquired as usize, K::Acquired as usize),
            (ArbiterRecordKind::NotAcquired as usize, K::NotAcquired as usize),
            (ArbiterRecordKind::Revoked as usize, K::Revoked as usize),
        ];
        for (i, (exported, written)) in slots.into_iter().enumerate() {
            assert_eq!(exported, written, "entry {i}");
        }
    }

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
