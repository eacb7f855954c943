//! Counters, histograms and percentiles per GPU and task type, and their Prometheus text.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::types::{Micros, Status, MICROS_PER_MS};

/// Histogram bucket bounds in ms, for queue wait and hold time.
const BUCKETS_MS: [f64; 14] =
    [1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0];

/// The bucket bounds in microseconds, as observations are counted.
const BUCKETS_US: [Micros; BUCKETS_MS.len()] = {
    let mut bounds = [0; BUCKETS_MS.len()];
    let mut i = 0;
    while i < bounds.len() {
        bounds[i] = BUCKETS_MS[i] as Micros * MICROS_PER_MS;
        i += 1;
    }
    bounds
};

/// Percentiles come from the most recent observations, so they follow the current load.
const RECENT_WINDOW: usize = 2048;

#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// Observations per bucket, not cumulative (summed when rendered): one increment per observation.
    buckets: [u64; BUCKETS_MS.len()],
    count: u64,
    sum_ms: f64,
    /// The latest observations, a ring of `RECENT_WINDOW` once full (`count` says where it wraps).
    recent: Vec<f64>,
}

impl Histogram {
    pub fn observe(&mut self, micros: Micros) {
        let ms = micros as f64 / MICROS_PER_MS as f64;
        // The first bound at or above it, in whole microseconds (most holds and waits fall in the
        // first bucket): the bucket `ms` falls in, without a chain of float compares.
        let bucket = BUCKETS_US.iter().position(|&bound| micros <= bound).unwrap_or(BUCKETS_US.len());
        if let Some(n) = self.buckets.get_mut(bucket) {
            *n += 1;
        }
        self.count += 1;
        self.sum_ms += ms;
        if self.recent.len() < RECENT_WINDOW {
            self.recent.push(ms);
        } else {
            self.recent[(self.count as usize - 1) % RECENT_WINDOW] = ms;
        }
    }

    /// p50, p95, p99 in ms over the recent window (nearest rank); `None` with no observations.
    pub fn percentiles(&self) -> Option<Percentiles> {
        if self.recent.is_empty() {
            return None;
        }
        let mut sorted: Vec<f64> = self.recent.to_vec();
        sorted.sort_by(f64::total_cmp);
        let rank = |q: f64| sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
        Some(Percentiles { p50: rank(0.50), p95: rank(0.95), p99: rank(0.99) })
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, n) in BUCKETS_MS.iter().zip(self.buckets.iter()) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum_ms);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// Everything counted for one task type on one GPU.
#[derive(Debug, Clone, Default)]
pub struct TaskStats {
    /// Requests by how they ended, indexed by `status as u8` (see [`Status::ALL`]).
    by_status: [u64; Status::ALL.len()],
    pub timeouts: u64,
    pub queue_full: u64,
    pub watchdog_exceeded: u64,
    pub revoked: u64,
    pub wait: Histogram,
    pub hold: Histogram,
}

impl TaskStats {
    pub fn count(&mut self, status: Status) {
        self.by_status[status as usize] += 1;
    }

    /// How many requests ended with `status`.
    pub fn counted(&self, status: Status) -> u64 {
        self.by_status[status as usize]
    }
}

/// Stats of every GPU and task type, each pair's in a slot of its own that never moves: views
/// find them by key (in key order), the hot path by slot number (a waiter and a lease keep
/// theirs), with no string compared.
#[derive(Debug, Default)]
pub struct StatsTable {
    slots: Vec<TaskStats>,
    by_key: BTreeMap<String, BTreeMap<String, usize>>,
}

impl StatsTable {
    /// The slot of one GPU's and task type's stats, made on first use.
    pub fn slot(&mut self, gpu: &str, task_type: &str) -> usize {
        if !self.by_key.contains_key(gpu) {
            self.by_key.insert(gpu.to_string(), BTreeMap::new());
        }
        let tasks = self.by_key.get_mut(gpu).expect("inserted above");
        if let Some(&slot) = tasks.get(task_type) {
            return slot;
        }
        self.slots.push(TaskStats::default());
        tasks.insert(task_type.to_string(), self.slots.len() - 1);
        self.slots.len() - 1
    }

    pub fn at(&mut self, slot: usize) -> &mut TaskStats {
        &mut self.slots[slot]
    }

    /// One GPU's stats by task type, in task type order.
    pub fn of_gpu<'a>(&'a self, gpu: &str) -> impl Iterator<Item = (&'a String, &'a TaskStats)> + 'a {
        self.by_key.get(gpu).into_iter().flatten().map(|(task, &slot)| (task, &self.slots[slot]))
    }

    /// Every GPU's stats by task type, in key order.
    fn each(&self) -> impl Iterator<Item = (&String, &String, &TaskStats)> {
        self.by_key
            .iter()
            .flat_map(move |(gpu, tasks)| tasks.iter().map(move |(task, &slot)| (gpu, task, &self.slots[slot])))
    }
}

/// Renders the arbiter's metrics in the Prometheus text exposition format (version 0.0.4).
pub fn render_prometheus(stats: &StatsTable, queue_lengths: &[(String, usize, usize)]) -> String {
    let mut out = String::with_capacity(4096);
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");

    out.push_str("# HELP gpu_arbiter_acquire_total Lease requests by outcome.\n");
    out.push_str("# TYPE gpu_arbiter_acquire_total counter\n");
    for (gpu, task, s) in stats.each() {
        // Only the outcomes that happened.
        for (status, n) in Status::ALL.iter().map(|&st| (st, s.counted(st))).filter(|&(_, n)| n > 0) {
            let _ = writeln!(
                out,
                "gpu_arbiter_acquire_total{{gpu=\"{}\",task_type=\"{}\",status=\"{}\"}} {n}",
                esc(gpu),
                esc(task),
                status.as_str()
            );
        }
    }
    for (name, help, pick) in [
        ("gpu_arbiter_queue_wait_ms", "Time from request to grant, ms.", 0),
        ("gpu_arbiter_hold_ms", "Time a lease was held, ms.", 1),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (gpu, task, s) in stats.each() {
            let labels = format!("gpu=\"{}\",task_type=\"{}\"", esc(gpu), esc(task));
            let h = if pick == 0 { &s.wait } else { &s.hold };
            h.render(&mut out, name, &labels);
        }
    }
    out.push_str("# HELP gpu_arbiter_queue_length Requests waiting for a lease now.\n");
    out.push_str("# TYPE gpu_arbiter_queue_length gauge\n");
    for (gpu, queued, _) in queue_lengths {
        let _ = writeln!(out, "gpu_arbiter_queue_length{{gpu=\"{}\"}} {queued}", esc(gpu));
    }
    out.push_str("# HELP gpu_arbiter_active_leases Leases held now.\n");
    out.push_str("# TYPE gpu_arbiter_active_leases gauge\n");
    for (gpu, _, active) in queue_lengths {
        let _ = writeln!(out, "gpu_arbiter_active_leases{{gpu=\"{}\"}} {active}", esc(gpu));
    }
    type Counter = (&'static str, &'static str, fn(&TaskStats) -> u64);
    let counters: [Counter; 3] = [
        ("gpu_arbiter_timeouts_total", "Requests that waited maxWaitMs without a lease.", |s| s.timeouts),
        ("gpu_arbiter_queue_full_total", "Requests turned away by a full queue.", |s| s.queue_full),
        ("gpu_arbiter_watchdog_exceeded_total", "Leases held past holdMaxMs.", |s| s.watchdog_exceeded),
    ];
    for (name, help, get) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (gpu, task, s) in stats.each() {
            let _ = writeln!(out, "{name}{{gpu=\"{}\",task_type=\"{}\"}} {}", esc(gpu), esc(task), get(s));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut h = Histogram::default();
        for ms in 1..=100u64 {
            h.observe(ms * MICROS_PER_MS);
        }
        let p = h.percentiles().unwrap();
        assert_eq!((p.p50, p.p95, p.p99), (50.0, 95.0, 99.0));
        assert!(Histogram::default().percentiles().is_none());
    }

    #[test]
    fn percentiles_follow_the_latest_window_only() {
        let mut h = Histogram::default();
        for _ in 0..RECENT_WINDOW {
            h.observe(1_000 * MICROS_PER_MS);
        }
        for _ in 0..RECENT_WINDOW {
            h.observe(MICROS_PER_MS);
        }
        let p = h.percentiles().unwrap();
        assert_eq!((p.p50, p.p99), (1.0, 1.0), "the older, slower window has rolled out");
        h.observe(5 * MICROS_PER_MS);
        assert_eq!(h.percentiles().unwrap().p99, 1.0);
        assert_eq!(h.recent.len(), RECENT_WINDOW);
    }

    #[test]
    fn buckets_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(3 * MICROS_PER_MS);
        h.observe(700 * MICROS_PER_MS);
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"5\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"1000\"} 2\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 2\n"), "{out}");
    }
}
