//! The arbiter's clock as a binding runs it: monotonic microseconds since creation (what the core
//! takes as `now`), and the wall-clock epoch for the times results show.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::types::{Micros, MICROS_PER_MS};

pub struct Clock {
    origin: Instant,
    origin_epoch_ms: f64,
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
        Self { origin, origin_epoch_ms }
    }

    pub fn now(&self) -> Micros {
        self.origin.elapsed().as_micros() as Micros
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
    }
}
