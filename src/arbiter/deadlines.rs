//! The arbiter's deadlines: a binary heap whose entries are never removed early. A request that
//! is granted, or a lease that is released, leaves its deadline behind; the entry is recognised
//! as stale when it reaches the top and dropped then. On the hot path that makes a deadline one
//! push and no search. Stale entries are swept out once they outnumber the live ones.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::types::{LeaseId, Micros, WaiterId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Deadline {
    WaitTimeout(WaiterId),
    Watchdog(LeaseId),
    /// The GPU's last reading goes stale: admission falls back to logical leases.
    ReadingStale(usize),
    /// A long-audio raise of the water marks ends.
    MarksBoostEnds,
}

/// Entries beyond this many per live deadline are swept (and never fewer than `MIN_SWEEP`).
const STALE_PER_LIVE: usize = 3;
const MIN_SWEEP: usize = 256;

#[derive(Debug, Default)]
pub(super) struct Deadlines {
    heap: BinaryHeap<Reverse<(Micros, Deadline)>>,
}

impl Deadlines {
    /// Adds a deadline. `live` counts the deadlines that can still be live, and `is_live` tells
    /// them apart, for the occasional sweep.
    pub fn push(&mut self, at: Micros, deadline: Deadline, live: usize, is_live: impl Fn(Micros, Deadline) -> bool) {
        self.heap.push(Reverse((at, deadline)));
        if self.heap.len() > MIN_SWEEP.max(live * STALE_PER_LIVE) {
            self.heap.retain(|Reverse((at, d))| is_live(*at, *d));
        }
    }

    /// The earliest live deadline, dropping stale ones on the way.
    pub fn first(&mut self, is_live: impl Fn(Micros, Deadline) -> bool) -> Option<(Micros, Deadline)> {
        while let Some(&Reverse((at, d))) = self.heap.peek() {
            if is_live(at, d) {
                return Some((at, d));
            }
            self.heap.pop();
        }
        None
    }

    /// The earliest entry, live or stale, without looking: at or before the earliest live one.
    pub fn earliest_entry(&self) -> Option<Micros> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    pub fn pop(&mut self) {
        self.heap.pop();
    }

    pub fn clear(&mut self) {
        self.heap.clear();
    }

    /// Rewrites every entry (GPU indices change when the config's `gpuKeys` do).
    pub fn remap(&mut self, f: impl Fn(Deadline) -> Option<Deadline>) {
        let entries = std::mem::take(&mut self.heap).into_vec();
        self.heap = entries.into_iter().filter_map(|Reverse((at, d))| f(d).map(|d| Reverse((at, d)))).collect();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }
}
