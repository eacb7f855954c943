//! The arbiter's clock as a binding runs it: monotonic microseconds since creation (what the core
//! takes as `now`), and the wall-clock epoch for the times results show.
//!
//! Read twice per lease (grant and release), where the OS's monotonic clock costs about as much as
//! the rest of the native call's lease logic (36 ns here, through the vDSO). Where the CPU has an
//! invariant time stamp counter, a read is that counter (an instruction) scaled to the OS clock's
//! microseconds ([`TickScale`]): the scale is measured against the OS clock between the last two
//! anchors, and the counter re-anchored to it at the end of every span of at most 10 ms, so a read is off the
//! OS clock by at most what the counter's rate drifts in one span (checked at each re-anchor:
//! past a microsecond the scale is measured afresh, reading the OS clock meanwhile). Elsewhere
//! the OS clock is read directly. Calibrating once (the `quanta` crate's way) was measured 10 ppm
//! off here, 20 µs over 2 s, too far for hold times kept to the microsecond.

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::types::{Micros, MICROS_PER_MS};

pub struct Clock {
    origin: Instant,
    origin_epoch_ms: f64,
    /// The time stamp counter's scale, where the CPU has an invariant one.
    counter: Option<TickScale>,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// The wall clock is read between two monotonic reads, and the closest of a few tries kept: a
    /// thread preempted between the two clocks would otherwise shift every epoch time it shows by
    /// the preemption (milliseconds on a loaded machine).
    pub fn new() -> Self {
        let mut best: Option<(Duration, Instant, f64)> = None;
        for _ in 0..4 {
            let before = Instant::now();
            let wall_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64() * 1000.0;
            let gap = before.elapsed();
            if best.is_none_or(|(closest, ..)| gap < closest) {
                best = Some((gap, before, wall_ms - gap.as_secs_f64() * 500.0));
            }
            if gap < Duration::from_micros(20) {
                break;
            }
        }
        let (_, origin, origin_epoch_ms) = best.expect("read at least once");
        Self { origin, origin_epoch_ms, counter: counter::invariant().then(TickScale::default) }
    }

    /// The OS clock only, as where there is no invariant time stamp counter.
    #[cfg(test)]
    pub fn without_counter() -> Self {
        Self { counter: None, ..Self::new() }
    }

    #[inline]
    pub fn now(&self) -> Micros {
        match &self.counter {
            Some(scale) => scale.micros(counter::read(), || self.paired_read()),
            None => self.origin.elapsed().as_micros() as Micros,
        }
    }

    /// The OS clock's nanoseconds since `origin`, with the counter read on either side of it.
    fn paired_read(&self) -> PairedRead {
        let mut best: Option<PairedRead> = None;
        for _ in 0..3 {
            let before = counter::read();
            let nanos = self.origin.elapsed().as_nanos() as u64;
            let after = counter::read();
            let read = PairedRead { tick: before / 2 + after / 2, nanos, spread: after.wrapping_sub(before) };
            if read.spread <= MAX_PAIR_SPREAD_TICKS {
                return read;
            }
            if best.as_ref().is_none_or(|b| read.spread < b.spread) {
                best = Some(read);
            }
        }
        best.expect("read at least once")
    }

    /// Epoch ms of a time on this clock.
    pub fn epoch_ms(&self, at: Micros) -> f64 {
        self.origin_epoch_ms + ms(at)
    }
}

/// Microseconds as fractional milliseconds.
pub fn ms(micros: Micros) -> f64 {
    micros as f64 / MICROS_PER_MS as f64
}

#[cfg(target_arch = "x86_64")]
mod counter {
    use std::arch::x86_64::{__cpuid, _rdtsc};

    /// Whether the time stamp counter ticks at one rate in every power state and on every core
    /// (CPUID 8000_0007h, EDX bit 8): only then can it stand in for the OS clock.
    pub fn invariant() -> bool {
        #[allow(unused_unsafe)]
        // SAFETY: CPUID exists on every x86_64 CPU.
        unsafe {
            __cpuid(0x8000_0000).eax >= 0x8000_0007 && __cpuid(0x8000_0007).edx & (1 << 8) != 0
        }
    }

    #[inline]
    pub fn read() -> u64 {
        #[allow(unused_unsafe)]
        // SAFETY: RDTSC exists on every x86_64 CPU.
        unsafe {
            _rdtsc()
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod counter {
    pub fn invariant() -> bool {
        false
    }

    pub fn read() -> u64 {
        0
    }
}

/// A paired read is used to anchor the counter only when the counter moved this little across it
/// (about 0.7 µs at 3 GHz): a thread preempted inside it cannot say when the OS clock was read.
const MAX_PAIR_SPREAD_TICKS: u64 = 2_000;
/// The longest span a read is interpolated over before the counter is re-anchored.
const SPAN_NS: u64 = 10_000_000;
/// The shortest interval the counter's rate is measured over.
const MIN_INTERVAL_NS: u64 = 1_000_000;
/// How far the measured rate may take a read off the OS clock over one span.
const TOLERANCE_NS: u64 = 1_000;

/// The OS clock read between two counter reads.
#[derive(Debug, Clone, Copy)]
struct PairedRead {
    /// The counter at the middle of the read.
    tick: u64,
    nanos: u64,
    /// Ticks between the counter reads on either side.
    spread: u64,
}

/// Counter ticks as the OS clock's microseconds: the last anchor (a paired read) plus the ticks
/// since, at the rate measured between the last two anchors. One thread's (cells, no locks).
#[derive(Default)]
struct TickScale {
    anchor_tick: Cell<u64>,
    anchor_nanos: Cell<u64>,
    /// The anchor in whole microseconds, and the rest as a fraction of one (64.64 fixed point),
    /// so a read is one multiply and an add, with no division.
    anchor_micros: Cell<u64>,
    anchor_fraction: Cell<u64>,
    /// Whether an anchor was taken.
    anchored: Cell<bool>,
    /// Microseconds per tick, 0.64 fixed point.
    scale: Cell<u64>,
    /// Ticks after the anchor that reads are interpolated; 0 while the rate is unknown.
    span: Cell<u64>,
    /// The last read, which no later read goes below.
    last: Cell<Micros>,
}

impl TickScale {
    /// Microseconds on the OS clock at counter `tick`; `paired` reads the OS clock (at a span's
    /// end, and while the rate is unknown).
    #[inline]
    fn micros(&self, tick: u64, paired: impl FnOnce() -> PairedRead) -> Micros {
        let since = tick.wrapping_sub(self.anchor_tick.get());
        // A tick before the anchor wraps to a huge `since` and re-anchors too.
        let micros = if since < self.span.get() {
            let fixed = since as u128 * self.scale.get() as u128 + self.anchor_fraction.get() as u128;
            self.anchor_micros.get() + (fixed >> 64) as u64
        } else {
            self.reanchor(paired()) / 1_000
        };
        let micros = micros.max(self.last.get());
        self.last.set(micros);
        micros
    }

    /// Re-anchors the counter at a paired read and measures its rate since the last anchor; the
    /// read's nanoseconds.
    #[cold]
    #[inline(never)]
    fn reanchor(&self, read: PairedRead) -> u64 {
        if read.spread > MAX_PAIR_SPREAD_TICKS {
            return read.nanos;
        }
        let (ticks, nanos) =
            (read.tick.wrapping_sub(self.anchor_tick.get()), read.nanos.wrapping_sub(self.anchor_nanos.get()));
        let usable = self.anchored.get() && read.nanos > self.anchor_nanos.get() && read.tick > self.anchor_tick.get();
        if !usable {
            self.anchor(read, 0, 0);
            return read.nanos;
        }
        if nanos < MIN_INTERVAL_NS {
            // Too short to measure the rate over: keep the anchor, read the OS clock meanwhile.
            return read.nanos;
        }
        let span_nanos = nanos.min(SPAN_NS);
        if self.span.get() != 0 {
            // Off by `drift` after `nanos`: the last span's reads were off by up to their share.
            let predicted = ((ticks as u128 * self.scale.get() as u128 * 1_000) >> 64) as u64;
            let drift = predicted.abs_diff(nanos);
            if (drift as u128 * span_nanos as u128 / nanos as u128) as u64 > TOLERANCE_NS {
                tracing::debug!(
                    drift_ns = drift,
                    over_ns = nanos,
                    "the time stamp counter left the OS clock's rate: measuring it afresh"
                );
                self.anchor(read, 0, 0);
                return read.nanos;
            }
        }
        // Under one microsecond per tick (a counter at 1 MHz or more), so it fits 0.64. Rounded
        // up, as the anchor's fraction is: a read on a whole microsecond is not one below it.
        let scale = (((nanos as u128) << 64).div_ceil(ticks as u128 * 1_000)).min(u64::MAX as u128) as u64;
        // The ticks one span takes: span_nanos / (nanos / ticks).
        let span = (span_nanos as u128 * ticks as u128 / nanos as u128).min(u64::MAX as u128) as u64;
        self.anchor(read, scale, span);
        read.nanos
    }

    fn anchor(&self, read: PairedRead, scale: u64, span: u64) {
        self.anchor_tick.set(read.tick);
        self.anchor_nanos.set(read.nanos);
        self.anchor_micros.set(read.nanos / 1_000);
        self.anchor_fraction.set((((read.nanos % 1_000) as u128) << 64).div_ceil(1_000).min(u64::MAX as u128) as u64);
        self.anchored.set(true);
        self.scale.set(scale);
        self.span.set(span);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_times_follow_the_monotonic_clock() {
        let clock = Clock::new();
        assert_eq!(ms(1_500), 1.5);
        assert_eq!(clock.epoch_ms(2_000) - clock.epoch_ms(0), 2.0);
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1000.0;
        assert!((clock.epoch_ms(clock.now()) - wall).abs() < 1000.0);
        let os_only = Clock::without_counter();
        assert!((os_only.epoch_ms(os_only.now()) - wall).abs() < 1000.0);
    }

    #[test]
    fn the_counter_clock_never_goes_back_and_keeps_to_the_os_clock() {
        let clock = Clock::new();
        let mut last = clock.now();
        for _ in 0..200_000 {
            let now = clock.now();
            assert!(now >= last);
            last = now;
        }
        // Both read from the same origin: the counter's reading sits between two of the OS's.
        let before = clock.origin.elapsed().as_micros() as Micros;
        let now = clock.now();
        let after = clock.origin.elapsed().as_micros() as Micros;
        assert!(now + 2 >= before && now <= after + 2, "{before} <= {now} <= {after}");
    }

    /// A hand-driven counter: `ticks_per_ns` ticks per OS nanosecond from `nanos`.
    struct Hand {
        scale: TickScale,
        reads: Cell<u32>,
    }

    impl Hand {
        fn new() -> Self {
            Self { scale: TickScale::default(), reads: Cell::new(0) }
        }

        /// The clock at OS time `nanos`, with the counter at `tick`; counts the OS reads.
        fn at(&self, tick: u64, nanos: u64) -> Micros {
            self.scale.micros(tick, || {
                self.reads.set(self.reads.get() + 1);
                PairedRead { tick, nanos, spread: 100 }
            })
        }

        fn os_reads(&self) -> u32 {
            self.reads.replace(0)
        }
    }

    #[test]
    fn reads_the_os_clock_until_the_rate_is_measured_then_interpolates_exactly() {
        let h = Hand::new();
        // 3 ticks per ns, the counter at 1e9 when the OS clock is at 5 ms.
        let tick = |nanos: u64| 1_000_000_000 + (nanos - 5_000_000) * 3;
        assert_eq!(h.at(tick(5_000_000), 5_000_000), 5_000);
        assert_eq!(h.at(tick(5_500_000), 5_500_000), 5_500, "under a millisecond: the OS clock");
        assert_eq!(h.os_reads(), 2);
        assert_eq!(h.at(tick(6_000_000), 6_000_000), 6_000, "the rate is measured over 1 ms");
        assert_eq!(h.os_reads(), 1);
        // The next span is as long as the interval measured: interpolated within it.
        for nanos in [6_000_001, 6_123_456, 6_999_999] {
            assert_eq!(h.at(tick(nanos), nanos), nanos / 1_000);
        }
        assert_eq!(h.os_reads(), 0);
        assert_eq!(h.at(tick(7_000_000), 7_000_000), 7_000, "the span's end re-anchors");
        assert_eq!(h.os_reads(), 1);
        // Long quiet: re-anchored at the first read, the span grows to its most (10 ms).
        assert_eq!(h.at(tick(3_600_000_000), 3_600_000_000), 3_600_000);
        assert_eq!(h.at(tick(3_609_999_999), 3_609_999_999), 3_609_999);
        assert_eq!(h.os_reads(), 1);
    }

    #[test]
    fn interpolated_reads_are_the_os_clocks_microsecond_at_an_uneven_rate_and_anchor() {
        let h = Hand::new();
        // 2.5 ticks per ns, from an anchor 1_000_501 ns in: every read on an even nanosecond.
        let tick = |nanos: u64| 7 + nanos / 2 * 5;
        let mut interpolated = 0;
        for nanos in (1_000_502..60_000_000).step_by(7_778) {
            assert_eq!(h.at(tick(nanos), nanos), nanos / 1_000, "at {nanos} ns");
            interpolated += u32::from(h.os_reads() == 0);
        }
        assert!(interpolated > 7_000, "{interpolated}");
    }

    #[test]
    fn a_rate_change_is_measured_afresh_and_time_never_goes_back() {
        let h = Hand::new();
        h.at(0, 0);
        h.at(20_000_000, 10_000_000); // 2 ticks per ns, a 10 ms span
        assert_eq!(h.os_reads(), 2);
        // The counter slows to 1 tick per ns: within the span (20M ticks) reads run 2x slow.
        assert_eq!(h.at(25_000_000, 15_000_000), 12_500);
        assert_eq!(h.os_reads(), 0);
        // At the span's end, drift past the tolerance: the OS clock is read until a new rate is
        // measured (over 1 ms).
        assert_eq!(h.at(40_000_000, 30_000_000), 30_000);
        assert_eq!(h.at(40_500_000, 30_500_000), 30_500);
        assert_eq!(h.at(41_000_000, 31_000_000), 31_000);
        assert_eq!(h.os_reads(), 3);
        assert_eq!(h.at(41_999_000, 31_999_000), 31_999, "interpolated at the new rate");
        assert_eq!(h.os_reads(), 0);
        // An interpolated read above the OS clock is not undone by the next one.
        let h = Hand::new();
        h.at(0, 0);
        h.at(10_000_000, 10_000_000);
        assert_eq!(h.at(19_999_999, 10_100_000), 19_999);
        assert_eq!(h.at(20_000_000, 10_200_000), 19_999, "the OS clock is behind the last read");
    }

    #[test]
    fn a_preempted_paired_read_or_a_counter_going_back_is_not_an_anchor() {
        let scale = TickScale::default();
        let wide = |tick, nanos| PairedRead { tick, nanos, spread: MAX_PAIR_SPREAD_TICKS + 1 };
        assert_eq!(scale.micros(0, || wide(0, 1_000)), 1);
        assert!(!scale.anchored.get());
        let tight = |tick, nanos| PairedRead { tick, nanos, spread: 10 };
        scale.micros(1_000_000, || tight(1_000_000, 2_000_000));
        scale.micros(2_000_000, || tight(2_000_000, 3_000_000));
        assert_ne!(scale.span.get(), 0);
        // A counter behind its anchor (another core's, say) reads the OS clock and re-anchors.
        assert_eq!(scale.micros(5, || tight(5, 3_500_000)), 3_500);
        assert_eq!((scale.anchor_tick.get(), scale.span.get()), (5, 0));
    }
}
