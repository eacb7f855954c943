//! How many restarts a service has left and how long the next one waits: exponential backoff
//! with jitter, reset after a stable run (`resetAfterMs`, as PM2 does), and counted within a
//! sliding window when `windowMs` is set (systemd's `StartLimitBurst` / `StartLimitIntervalSec`).
//! Pure: times are passed in, so it is tested on a hand-driven clock.

use std::collections::VecDeque;

use super::config::RestartConfig;

/// What to do after a run ended in a way the policy restarts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RestartDecision {
    /// Restart number `attempt` (1-based since the last reset), after `delay_ms`.
    Restart { attempt: u32, delay_ms: u64 },
    /// No restarts left: `restarts` were made (since the last reset, or within the window).
    GiveUp { restarts: u32 },
}

/// One service's restart history since its last explicit start.
#[derive(Debug, Clone, Default)]
pub struct RestartBudget {
    /// The backoff step; 0 after a reset.
    attempt: u32,
    /// When each restart was decided (ms), for `windowMs`.
    restarts_at: VecDeque<u64>,
}

impl RestartBudget {
    /// The current attempt (0: no restart since the start or the last reset).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Decides the restart after a run of `ran_ms` that ended at `now_ms`. `spread` in [-1, 1]
    /// picks where in the jitter range the delay falls (the caller draws it at random).
    pub fn decide(&mut self, config: &RestartConfig, ran_ms: u64, now_ms: u64, spread: f64) -> RestartDecision {
        if ran_ms >= config.reset_after_ms.get() {
            self.attempt = 0;
            if config.window_ms.is_none() {
                self.restarts_at.clear();
            }
        }
        let used = match config.window_ms {
            Some(window) => {
                let since = now_ms.saturating_sub(window.get());
                while self.restarts_at.front().is_some_and(|&at| at < since) {
                    self.restarts_at.pop_front();
                }
                self.restarts_at.len() as u32
            }
            None => self.attempt,
        };
        if used >= config.max_restarts.get() as u32 {
            return RestartDecision::GiveUp { restarts: used };
        }
        self.attempt += 1;
        self.restarts_at.push_back(now_ms);
        let delay_ms = jittered(config.delay_ms(self.attempt), config.jitter, spread);
        RestartDecision::Restart { attempt: self.attempt, delay_ms }
    }
}

/// `delay_ms` moved by `jitter * spread` of itself (`spread` in [-1, 1]), never below 0.
pub fn jittered(delay_ms: u64, jitter: f64, spread: f64) -> u64 {
    let factor = 1.0 + jitter.clamp(0.0, 1.0) * spread.clamp(-1.0, 1.0);
    (delay_ms as f64 * factor).round().max(0.0) as u64
}

/// A uniform draw in [-1, 1], from the standard library's randomly keyed hasher: jitter only
/// needs services that failed together to spread out, not cryptographic randomness.
pub fn random_spread() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher
        .write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    let bits = hasher.finish() >> 11; // 53 bits: exact in an f64
    (bits as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Int;
    use crate::services::RestartPolicy;

    fn config(max: u64, window: Option<u64>, jitter: f64) -> RestartConfig {
        RestartConfig {
            policy: RestartPolicy::OnFailure,
            max_restarts: Int(max),
            backoff_ms: Int(100),
            max_backoff_ms: Int(1_000),
            reset_after_ms: Int(5_000),
            window_ms: window.map(Int),
            jitter,
        }
    }

    #[test]
    fn backoff_doubles_and_runs_out_after_max_restarts() {
        let c = config(3, None, 0.0);
        let mut b = RestartBudget::default();
        let mut now = 0;
        let mut decisions = vec![];
        for _ in 0..4 {
            now += 1_000;
            decisions.push(b.decide(&c, 1_000, now, 0.0));
        }
        assert_eq!(
            decisions,
            [
                RestartDecision::Restart { attempt: 1, delay_ms: 100 },
                RestartDecision::Restart { attempt: 2, delay_ms: 200 },
                RestartDecision::Restart { attempt: 3, delay_ms: 400 },
                RestartDecision::GiveUp { restarts: 3 },
            ]
        );
    }

    #[test]
    fn a_stable_run_resets_the_attempt_and_the_backoff() {
        let c = config(2, None, 0.0);
        let mut b = RestartBudget::default();
        assert_eq!(b.decide(&c, 10, 1_000, 0.0), RestartDecision::Restart { attempt: 1, delay_ms: 100 });
        assert_eq!(b.decide(&c, 10, 2_000, 0.0), RestartDecision::Restart { attempt: 2, delay_ms: 200 });
        // Ran 5 s (resetAfterMs) this time: a crash a day never runs out of restarts.
        for day in 1..=10 {
            assert_eq!(
                b.decide(&c, 5_000, day * 86_400_000, 0.0),
                RestartDecision::Restart { attempt: 1, delay_ms: 100 }
            );
        }
        assert_eq!(b.attempt(), 1);
    }

    #[test]
    fn with_a_window_only_recent_restarts_count() {
        let c = config(2, Some(10_000), 0.0);
        let mut b = RestartBudget::default();
        assert!(matches!(b.decide(&c, 10, 1_000, 0.0), RestartDecision::Restart { .. }));
        assert!(matches!(b.decide(&c, 10, 2_000, 0.0), RestartDecision::Restart { .. }));
        assert_eq!(b.decide(&c, 10, 3_000, 0.0), RestartDecision::GiveUp { restarts: 2 });
        // 11.5 s: the restart at 1 s left the window, the one at 2 s has not.
        assert_eq!(b.decide(&c, 10, 11_500, 0.0), RestartDecision::Restart { attempt: 3, delay_ms: 400 });
        assert_eq!(b.decide(&c, 10, 11_600, 0.0), RestartDecision::GiveUp { restarts: 2 });
        // A stable run resets the backoff, but the window still counts.
        assert_eq!(b.decide(&c, 6_000, 30_000, 0.0), RestartDecision::Restart { attempt: 1, delay_ms: 100 });
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        assert_eq!(jittered(1_000, 0.1, -1.0), 900);
        assert_eq!(jittered(1_000, 0.1, 1.0), 1_100);
        assert_eq!(jittered(1_000, 0.0, 1.0), 1_000);
        let c = config(1_000, None, 0.25);
        let mut b = RestartBudget::default();
        let mut seen = vec![];
        for _ in 0..200 {
            let spread = random_spread();
            assert!((-1.0..=1.0).contains(&spread));
            if let RestartDecision::Restart { delay_ms, .. } = b.decide(&c, 5_000, 0, spread) {
                assert!((75..=125).contains(&delay_ms), "{delay_ms}");
                seen.push(delay_ms);
            }
        }
        seen.sort();
        seen.dedup();
        assert!(seen.len() > 10, "the delays spread out: {seen:?}");
    }
}
