//! Alerts from a stream of samples. Each alert has a raise level and a clear level (hysteresis),
//! and its condition must hold for a minimum duration before it is raised or cleared, so a figure
//! hovering at a threshold does not flap. Time is the samples' `at`, so tests drive it by hand.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::options::AlertThresholds;
use super::sample::{GpuSample, HostSample, Sample};

/// How serious an alert is. Clearing is always `info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(inline)]
#[serde(rename_all = "lowercase")]
pub enum AlertLevel {
    Info,
    Warning,
    Critical,
}

/// What an alert is about. The strings are part of the public contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[schemars(inline)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AlertCode {
    /// A GPU's utilization is at or above `highWater`.
    GpuUsageHigh,
    /// A GPU's free memory is low.
    VramPressure,
    /// A GPU sits idle although the arbiter holds leases or waiters on it.
    GpuIdleWithBacklog,
    /// The host's available memory is low.
    HostMemoryPressure,
    /// The host is using swap.
    SwapActive,
    /// Children of this process exited and were never reaped.
    ZombieProcesses,
    /// The driver reported a critical XID error (raised only, never cleared).
    XidError,
    /// The GPU fell off the bus (NVML answers GPU_IS_LOST): raised at once, cleared if it reads
    /// again. Its other alerts clear as it is raised, saying so.
    GpuLost,
}

impl AlertCode {
    /// The code as JS sees it.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertCode::GpuUsageHigh => "GPU_USAGE_HIGH",
            AlertCode::VramPressure => "VRAM_PRESSURE",
            AlertCode::GpuIdleWithBacklog => "GPU_IDLE_WITH_BACKLOG",
            AlertCode::HostMemoryPressure => "HOST_MEMORY_PRESSURE",
            AlertCode::SwapActive => "SWAP_ACTIVE",
            AlertCode::ZombieProcesses => "ZOMBIE_PROCESSES",
            AlertCode::XidError => "XID_ERROR",
            AlertCode::GpuLost => "GPU_LOST",
        }
    }
}

/// An alert raised (`active: true`) or cleared (`active: false`). Its serde form is what
/// `onAlert` listeners get, and the generated `TelemetryAlert` type comes from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "TelemetryAlert")]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// The `at` of the sample that raised or cleared it.
    pub at: f64,
    pub level: AlertLevel,
    pub code: AlertCode,
    /// Raised (`true`) or cleared (`false`).
    pub active: bool,
    /// The GPU it is about; `null` for host alerts.
    pub gpu_key: Option<String>,
    pub message: String,
    /// The figures behind it, and the thresholds they were compared with.
    pub figures: Map<String, Value>,
}

/// The arbiter's load on one GPU, which GPU_IDLE_WITH_BACKLOG compares with the GPU's utilization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    /// Leases held now.
    pub leases: u32,
    /// Requests queued for a lease.
    pub waiters: u32,
}

/// One arbiter's waiters and leases per GPU, written by the arbiter whenever they change and read
/// by the sampler thread, so GPU_IDLE_WITH_BACKLOG judges each sample against the backlog as it is
/// then, without a round trip through the JS thread.
#[derive(Debug, Default)]
pub struct BacklogBoard(std::sync::Mutex<Vec<(String, usize, usize)>>);

impl BacklogBoard {
    /// Replaces the figures with `(gpu key, waiters, leases)` per GPU; in place while the GPUs
    /// stay the same, so the arbiter's hot path allocates nothing here.
    pub fn set<'a>(&self, loads: impl IntoIterator<Item = (&'a str, usize, usize)>) {
        let mut board = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut count = 0;
        for (key, waiters, leases) in loads {
            match board.get_mut(count) {
                Some(entry) if entry.0 == key => (entry.1, entry.2) = (waiters, leases),
                Some(entry) => *entry = (key.to_string(), waiters, leases),
                None => board.push((key.to_string(), waiters, leases)),
            }
            count += 1;
        }
        board.truncate(count);
    }

    /// Adds this arbiter's figures to `total` (several arbiters may share a GPU).
    pub fn add_to(&self, total: &mut BTreeMap<String, Backlog>) {
        for (key, waiters, leases) in self.0.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let entry = total.entry(key.clone()).or_default();
            entry.waiters = entry.waiters.saturating_add(*waiters as u32);
            entry.leases = entry.leases.saturating_add(*leases as u32);
        }
    }
}

/// Where a figure stands against an alert's two levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// Past the raise level.
    Raise,
    /// Past the clear level.
    Clear,
    /// Between the levels, or not measured: pending changes are abandoned.
    Hold,
}

/// One alert's state: whether it is active, and since when the opposite condition has held.
#[derive(Debug, Default)]
struct Tracker {
    active: bool,
    pending_since: Option<f64>,
}

impl Tracker {
    /// Returns the new state when the alert is raised or cleared by this sample.
    fn step(&mut self, at: f64, signal: Signal, raise_after_ms: f64, clear_after_ms: f64) -> Option<bool> {
        let (wanted, after) =
            if self.active { (Signal::Clear, clear_after_ms) } else { (Signal::Raise, raise_after_ms) };
        if signal != wanted {
            self.pending_since = None;
            return None;
        }
        let since = *self.pending_since.get_or_insert(at);
        if at - since < after {
            return None;
        }
        self.active = !self.active;
        self.pending_since = None;
        Some(self.active)
    }
}

/// Turns samples, fed in time order, into alerts.
pub struct AlertEngine {
    thresholds: AlertThresholds,
    trackers: BTreeMap<(AlertCode, Option<String>), Tracker>,
    /// Each GPU's UUID as last read: a lost GPU no longer gives it, and GPU_LOST names it.
    uuids: BTreeMap<String, String>,
}

impl AlertEngine {
    /// An engine with no alert active.
    pub fn new(thresholds: AlertThresholds) -> Self {
        Self { thresholds, trackers: BTreeMap::new(), uuids: BTreeMap::new() }
    }

    /// Feeds one sample; `backlog` is the arbiter's load per GPU key (missing keys have none).
    /// Returns the alerts this sample raised or cleared, host alerts first.
    pub fn observe(&mut self, sample: &Sample, backlog: &BTreeMap<String, Backlog>) -> Vec<Alert> {
        let mut alerts = Vec::new();
        for check in host_checks(&self.thresholds, &sample.host) {
            self.apply(sample.at, None, check, &mut alerts);
        }
        for gpu in &sample.gpus {
            if gpu.lost {
                self.clear_lost(sample.at, &gpu.key, &mut alerts);
            } else {
                let load = backlog.get(&gpu.key).copied().unwrap_or_default();
                for check in gpu_checks(&self.thresholds, gpu, load) {
                    self.apply(sample.at, Some(&gpu.key), check, &mut alerts);
                }
            }
            if let Some(uuid) = &gpu.uuid {
                self.uuids.insert(gpu.key.clone(), uuid.clone());
            }
            let uuid = self.uuids.get(&gpu.key).cloned();
            self.apply(sample.at, Some(&gpu.key), lost_check(gpu, uuid), &mut alerts);
        }
        for xid in &sample.xid_errors {
            alerts.push(Alert {
                at: sample.at,
                level: AlertLevel::Critical,
                code: AlertCode::XidError,
                active: true,
                gpu_key: Some(xid.gpu_key.clone()),
                message: match xid.xid {
                    Some(n) => format!("{}: critical XID error {n}", xid.gpu_key),
                    None => format!("{}: critical XID error", xid.gpu_key),
                },
                figures: figures(json!({ "xid": xid.xid })),
            });
        }
        alerts
    }

    /// Clears every other alert active on a GPU that is lost: its figures are gone, so the alert
    /// could neither clear on its own nor stay true; the message says why it cleared.
    fn clear_lost(&mut self, at: f64, gpu_key: &str, alerts: &mut Vec<Alert>) {
        for ((code, key), tracker) in self.trackers.iter_mut() {
            if key.as_deref() != Some(gpu_key) || *code == AlertCode::GpuLost {
                continue;
            }
            tracker.pending_since = None;
            if !tracker.active {
                continue;
            }
            tracker.active = false;
            alerts.push(Alert {
                at,
                level: AlertLevel::Info,
                code: *code,
                active: false,
                gpu_key: Some(gpu_key.to_string()),
                message: format!("{gpu_key}: cleared because the GPU was lost; its figures can no longer be read"),
                figures: figures(json!({ "gpuLost": true })),
            });
        }
    }

    fn apply(&mut self, at: f64, gpu_key: Option<&String>, check: Check, alerts: &mut Vec<Alert>) {
        let min = self.thresholds.min_duration_ms.get() as f64;
        let raise_after = check.raise_after_ms.unwrap_or(min);
        let clear_after = check.clear_after_ms.unwrap_or(self.thresholds.clear_duration_ms.get() as f64);
        let tracker = self.trackers.entry((check.code, gpu_key.cloned())).or_default();
        let Some(active) = tracker.step(at, check.signal, raise_after, clear_after) else { return };
        let subject = gpu_key.map_or("host".to_string(), |k| k.clone());
        alerts.push(Alert {
            at,
            level: if active { check.level } else { AlertLevel::Info },
            code: check.code,
            active,
            gpu_key: gpu_key.cloned(),
            message: format!("{subject}: {}", if active { check.raised } else { check.cleared }),
            figures: check.figures,
        });
    }
}

/// One alert condition evaluated on one sample.
struct Check {
    code: AlertCode,
    level: AlertLevel,
    signal: Signal,
    /// Overrides `minDurationMs` (GPU idle uses `idleForMs`).
    raise_after_ms: Option<f64>,
    /// Overrides `clearDurationMs`.
    clear_after_ms: Option<f64>,
    raised: String,
    cleared: String,
    figures: Map<String, Value>,
}

fn signal(raise: bool, clear: bool) -> Signal {
    match (raise, clear) {
        (true, _) => Signal::Raise,
        (false, true) => Signal::Clear,
        (false, false) => Signal::Hold,
    }
}

fn figures(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn host_checks(t: &AlertThresholds, host: &HostSample) -> [Check; 3] {
    let (low, clear) = (t.host_memory.low_available_mb.get(), t.host_memory.clear_available_mb.get());
    let (high_swap, clear_swap) = (t.swap.high_used_mb.get(), t.swap.clear_used_mb.get());
    [
        Check {
            code: AlertCode::HostMemoryPressure,
            level: AlertLevel::Critical,
            signal: signal(host.available_mb < low, host.available_mb >= clear),
            raise_after_ms: None,
            clear_after_ms: None,
            raised: format!("available memory {} MB is under {low} MB", host.available_mb),
            cleared: format!("available memory {} MB is back to at least {clear} MB", host.available_mb),
            figures: figures(json!({
                "availableMb": host.available_mb, "totalMb": host.total_mb,
                "lowAvailableMb": low, "clearAvailableMb": clear
            })),
        },
        Check {
            code: AlertCode::SwapActive,
            level: AlertLevel::Warning,
            signal: signal(host.swap_used_mb > high_swap, host.swap_used_mb <= clear_swap),
            raise_after_ms: None,
            clear_after_ms: None,
            raised: format!("{} MB of swap in use, above {high_swap} MB", host.swap_used_mb),
            cleared: format!("swap use {} MB is back to at most {clear_swap} MB", host.swap_used_mb),
            figures: figures(json!({
                "swapUsedMb": host.swap_used_mb, "swapTotalMb": host.swap_total_mb,
                "highUsedMb": high_swap, "clearUsedMb": clear_swap
            })),
        },
        Check {
            code: AlertCode::ZombieProcesses,
            level: AlertLevel::Warning,
            signal: signal(host.zombie_children > 0, host.zombie_children == 0),
            raise_after_ms: None,
            clear_after_ms: None,
            raised: format!("{} exited child process(es) never reaped", host.zombie_children),
            cleared: "no unreaped child processes".to_string(),
            figures: figures(json!({ "zombieChildren": host.zombie_children })),
        },
    ]
}

fn gpu_checks(t: &AlertThresholds, gpu: &GpuSample, load: Backlog) -> [Check; 3] {
    let util = gpu.utilization_gpu;
    let (high, low) = (t.gpu_usage.high_water.get() as f64, t.gpu_usage.low_water.get() as f64);
    let idle = &t.gpu_idle;
    let (idle_max, idle_clear) = (idle.max_utilization.get() as f64, idle.clear_utilization.get() as f64);
    let busy = load.leases + load.waiters > 0;
    let util_text = util.map_or("unknown".to_string(), |u| format!("{u}%"));
    [
        Check {
            code: AlertCode::GpuUsageHigh,
            level: AlertLevel::Warning,
            signal: util.map_or(Signal::Hold, |u| signal(u >= high, u < low)),
            raise_after_ms: None,
            clear_after_ms: None,
            raised: format!("utilization {util_text} at or above {high}%"),
            cleared: format!("utilization {util_text} back under {low}%"),
            figures: figures(json!({ "utilizationGpu": util, "highWater": high, "lowWater": low })),
        },
        vram_check(t, gpu),
        Check {
            code: AlertCode::GpuIdleWithBacklog,
            level: AlertLevel::Warning,
            signal: match util {
                Some(u) => signal(u <= idle_max && busy, u >= idle_clear || !busy),
                None if !busy => Signal::Clear,
                None => Signal::Hold,
            },
            raise_after_ms: Some(idle.idle_for_ms.get() as f64),
            clear_after_ms: None,
            raised: format!(
                "utilization {util_text} for {} ms while the arbiter holds {} lease(s) and {} waiter(s)",
                idle.idle_for_ms.get(),
                load.leases,
                load.waiters
            ),
            cleared: if busy {
                format!("utilization {util_text} reached {idle_clear}%")
            } else {
                "no leases or waiters left".to_string()
            },
            figures: figures(json!({
                "utilizationGpu": util, "leases": load.leases, "waiters": load.waiters,
                "maxUtilization": idle_max, "clearUtilization": idle_clear, "idleForMs": idle.idle_for_ms.get()
            })),
        },
    ]
}

/// GPU_LOST: raised on the first sample that reads the GPU lost, with no minimum duration (the
/// driver's answer is final), and cleared by the first one that reads it again.
/// `uuid`: the GPU's UUID as last read.
fn lost_check(gpu: &GpuSample, uuid: Option<String>) -> Check {
    Check {
        code: AlertCode::GpuLost,
        level: AlertLevel::Critical,
        signal: signal(gpu.lost, !gpu.lost),
        raise_after_ms: Some(0.0),
        clear_after_ms: Some(0.0),
        raised: "the GPU is lost (fell off the bus); its services and leases cannot use it".to_string(),
        cleared: "the GPU reads again".to_string(),
        figures: figures(json!({ "index": gpu.index, "uuid": uuid })),
    }
}

fn vram_check(t: &AlertThresholds, gpu: &GpuSample) -> Check {
    let v = &t.vram;
    let (low_mb, clear_mb) = (v.low_free_mb.get(), v.clear_free_mb.get());
    let (low_pct, clear_pct) = (v.low_free_percent.get() as f64, v.clear_free_percent.get() as f64);
    let free_percent = match (gpu.free_mb, gpu.total_mb) {
        (Some(free), Some(total)) if total > 0 => Some(free as f64 * 100.0 / total as f64),
        _ => None,
    };
    // A zero raise level turns that test off, for raising and for clearing.
    let signal = match (gpu.free_mb, free_percent) {
        (Some(free), Some(pct)) => signal(
            (low_mb > 0 && free < low_mb) || (low_pct > 0.0 && pct < low_pct),
            (low_mb == 0 || free >= clear_mb) && (low_pct == 0.0 || pct >= clear_pct),
        ),
        _ => Signal::Hold,
    };
    let free = gpu.free_mb.map_or("unknown".to_string(), |f| format!("{f} MB"));
    let pct = free_percent.map_or(String::new(), |p| format!(" ({p:.1}%)"));
    Check {
        code: AlertCode::VramPressure,
        level: AlertLevel::Warning,
        signal,
        raise_after_ms: None,
        clear_after_ms: None,
        raised: format!("free VRAM {free}{pct} under {low_mb} MB or {low_pct}%"),
        cleared: format!("free VRAM {free}{pct} back to at least {clear_mb} MB and {clear_pct}%"),
        figures: figures(json!({
            "freeMb": gpu.free_mb, "totalMb": gpu.total_mb, "freePercent": free_percent,
            "lowFreeMb": low_mb, "clearFreeMb": clear_mb, "lowFreePercent": low_pct, "clearFreePercent": clear_pct
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Int;
    use crate::telemetry::sample::fixtures::{gpu, sample};
    use crate::telemetry::sample::XidEvent;

    /// Raise after 3 s, clear after 5 s (the defaults), GPU idle after 30 s.
    fn engine() -> AlertEngine {
        AlertEngine::new(AlertThresholds::default())
    }

    fn with_util(at: f64, util: f64) -> Sample {
        let mut s = sample(at);
        s.gpus = vec![gpu(0, util, 8_000)];
        s
    }

    fn none() -> BTreeMap<String, Backlog> {
        BTreeMap::new()
    }

    /// Feeds samples 1 s apart from `start` and returns (at, active) for alerts with `code`.
    fn run(
        engine: &mut AlertEngine,
        start: f64,
        samples: impl IntoIterator<Item = Sample>,
        backlog: &BTreeMap<String, Backlog>,
        code: AlertCode,
    ) -> Vec<(f64, bool)> {
        let mut out = vec![];
        for (i, mut s) in samples.into_iter().enumerate() {
            s.at = start + i as f64 * 1_000.0;
            out.extend(engine.observe(&s, backlog).into_iter().filter(|a| a.code == code).map(|a| (a.at, a.active)));
        }
        out
    }

    #[test]
    fn gpu_usage_high_needs_the_minimum_duration_and_clears_under_low_water() {
        let mut e = engine();
        let utils = [90.0, 90.0, 90.0, 90.0, 80.0, 77.0, 77.0, 77.0, 77.0, 77.0, 77.0];
        let seen = run(&mut e, 0.0, utils.map(|u| with_util(0.0, u)), &none(), AlertCode::GpuUsageHigh);
        // 90% from t=0 holds 3 s at t=3000; 80% is inside the hysteresis band and does not clear;
        // under 78% from t=5000 holds 5 s at t=10000.
        assert_eq!(seen, vec![(3_000.0, true), (10_000.0, false)]);
    }

    #[test]
    fn gpu_usage_high_does_not_flap_on_short_spikes_or_dips() {
        let mut e = engine();
        // Spikes shorter than 3 s never raise.
        let utils = [90.0, 90.0, 50.0, 90.0, 90.0, 86.0, 50.0];
        assert!(run(&mut e, 0.0, utils.map(|u| with_util(0.0, u)), &none(), AlertCode::GpuUsageHigh).is_empty());
        // Once raised, dips shorter than 5 s never clear, and the figures say why it was raised.
        let mut e = engine();
        let raised: Vec<Alert> =
            (0..4).flat_map(|i| e.observe(&with_util(i as f64 * 1_000.0, 95.0), &none())).collect();
        assert_eq!(raised.len(), 1);
        assert_eq!(raised[0].level, AlertLevel::Warning);
        assert_eq!(raised[0].gpu_key.as_deref(), Some("gpu:0"));
        assert_eq!(raised[0].figures["utilizationGpu"], 95.0);
        assert_eq!(raised[0].figures["highWater"], 85.0);
        let utils = [10.0, 10.0, 10.0, 10.0, 90.0, 10.0, 10.0];
        assert!(run(&mut e, 4_000.0, utils.map(|u| with_util(0.0, u)), &none(), AlertCode::GpuUsageHigh).is_empty());
    }

    #[test]
    fn a_lost_gpu_clears_its_alerts_saying_why_and_raises_gpu_lost_once() {
        let mut e = engine();
        let two = |util1: f64, free1: u64, lost: bool| {
            let mut s = with_util(0.0, 95.0);
            let mut g1 = gpu(1, util1, free1);
            if lost {
                g1 = GpuSample { index: 1, key: "gpu:1".into(), lost: true, ..GpuSample::default() };
            }
            s.gpus.push(g1);
            s
        };
        // gpu:0 and gpu:1 busy, gpu:1 also short of memory: raised at 3 s.
        let mut seen = vec![];
        for i in 0..4 {
            let mut s = two(99.0, 100, false);
            s.at = i as f64 * 1_000.0;
            seen.extend(e.observe(&s, &none()));
        }
        let key = |a: &Alert| (a.code, a.gpu_key.clone().unwrap_or_default(), a.active);
        assert_eq!(
            seen.iter().map(key).collect::<Vec<_>>(),
            vec![
                (AlertCode::GpuUsageHigh, "gpu:0".into(), true),
                (AlertCode::GpuUsageHigh, "gpu:1".into(), true),
                (AlertCode::VramPressure, "gpu:1".into(), true),
            ]
        );
        // gpu:1 lost at 4 s: its two alerts clear at once, saying why, and GPU_LOST is raised;
        // gpu:0's alert stays.
        let mut lost = two(0.0, 0, true);
        lost.at = 4_000.0;
        let at_loss = e.observe(&lost, &none());
        assert_eq!(
            at_loss.iter().map(key).collect::<Vec<_>>(),
            vec![
                (AlertCode::GpuUsageHigh, "gpu:1".into(), false),
                (AlertCode::VramPressure, "gpu:1".into(), false),
                (AlertCode::GpuLost, "gpu:1".into(), true),
            ]
        );
        for cleared in &at_loss[..2] {
            assert_eq!(cleared.level, AlertLevel::Info);
            assert_eq!(cleared.message, "gpu:1: cleared because the GPU was lost; its figures can no longer be read");
            assert_eq!(cleared.figures["gpuLost"], true);
        }
        assert_eq!(at_loss[2].level, AlertLevel::Critical);
        assert_eq!(at_loss[2].figures["index"], 1);
        assert_eq!(at_loss[2].figures["uuid"], "GPU-1", "the UUID as last read: a lost GPU gives none");
        // Still lost: nothing more, however long.
        for i in 5..30 {
            let mut s = two(0.0, 0, true);
            s.at = i as f64 * 1_000.0;
            assert!(e.observe(&s, &none()).is_empty(), "at {i} s");
        }
        // It reads again: GPU_LOST clears at once; its figures raise alerts afresh as usual.
        let mut back = two(99.0, 100, false);
        back.at = 30_000.0;
        assert_eq!(
            e.observe(&back, &none()).iter().map(key).collect::<Vec<_>>(),
            vec![(AlertCode::GpuLost, "gpu:1".into(), false)]
        );
        let mut again = vec![];
        for i in 31..34 {
            let mut s = two(99.0, 100, false);
            s.at = i as f64 * 1_000.0;
            again.extend(e.observe(&s, &none()).iter().map(key));
        }
        assert_eq!(
            again,
            vec![(AlertCode::GpuUsageHigh, "gpu:1".into(), true), (AlertCode::VramPressure, "gpu:1".into(), true)]
        );
    }

    #[test]
    fn vram_pressure_raises_on_megabytes_or_percent_and_clears_on_both() {
        let mut e = engine();
        let free = |mb| {
            let mut s = sample(0.0);
            s.gpus = vec![gpu(0, 50.0, mb)];
            s
        };
        // 16 000 MB total: 700 MB free is over 512 MB but under 5% (800 MB), so it raises.
        let seq = [700, 700, 700, 700, 900, 900, 900, 900, 900, 900, 2_000, 2_000, 2_000, 2_000, 2_000, 2_000];
        let seen = run(&mut e, 0.0, seq.map(free), &none(), AlertCode::VramPressure);
        // 900 MB is over 5% but under 10%, so it holds; 2 000 MB is over 1 024 MB and 10% from
        // t=10000 and clears at t=15000.
        assert_eq!(seen, vec![(3_000.0, true), (15_000.0, false)]);
    }

    #[test]
    fn gpu_idle_with_backlog_needs_backlog_and_idle_for_ms() {
        let mut t = AlertThresholds::default();
        t.gpu_idle.idle_for_ms = Int(4_000);
        let mut e = AlertEngine::new(t);
        let loaded: BTreeMap<String, Backlog> = [("gpu:0".to_string(), Backlog { leases: 1, waiters: 3 })].into();
        // Idle but no backlog: nothing.
        assert!(
            run(&mut e, 0.0, (0..8).map(|_| with_util(0.0, 0.0)), &none(), AlertCode::GpuIdleWithBacklog).is_empty()
        );
        // Idle with backlog: raised after 4 s (t=8000 -> 12000).
        let seen = run(&mut e, 8_000.0, (0..6).map(|_| with_util(0.0, 3.0)), &loaded, AlertCode::GpuIdleWithBacklog);
        assert_eq!(seen, vec![(12_000.0, true)]);
        // 10% is in the band: no clear. Backlog gone: cleared after the 5 s clear duration.
        assert!(run(&mut e, 14_000.0, (0..7).map(|_| with_util(0.0, 10.0)), &loaded, AlertCode::GpuIdleWithBacklog)
            .is_empty());
        let seen = run(&mut e, 21_000.0, (0..6).map(|_| with_util(0.0, 0.0)), &none(), AlertCode::GpuIdleWithBacklog);
        assert_eq!(seen, vec![(26_000.0, false)]);
        // Raised again, then busy again at 15% clears it.
        let seen = run(
            &mut e,
            30_000.0,
            (0..5).map(|_| with_util(0.0, 0.0)).chain((0..6).map(|_| with_util(0.0, 15.0))),
            &loaded,
            AlertCode::GpuIdleWithBacklog,
        );
        assert_eq!(seen, vec![(34_000.0, true), (40_000.0, false)]);
    }

    #[test]
    fn host_memory_swap_and_zombie_alerts_raise_and_clear() {
        let mut e = AlertEngine::new(AlertThresholds {
            min_duration_ms: Int(0),
            clear_duration_ms: Int(1_000),
            ..Default::default()
        });
        let host = |available: u64, swap: u64, zombies: u32| {
            let mut s = sample(0.0);
            s.host.available_mb = available;
            s.host.swap_used_mb = swap;
            s.host.zombie_children = zombies;
            s
        };
        let seq = [
            host(500, 1_000, 2), // t=0: all three raised at once (no minimum duration)
            host(1_500, 300, 0), // in both bands; zombies gone, clear pending
            host(1_500, 300, 0), // t=2000: zombies cleared
            host(3_000, 100, 0), // past both clear levels
            host(3_000, 100, 0), // t=4000: both cleared
        ];
        let mut seen = vec![];
        for (i, mut s) in seq.into_iter().enumerate() {
            s.at = i as f64 * 1_000.0;
            for a in e.observe(&s, &none()) {
                seen.push((a.at, a.code, a.active, a.level));
            }
        }
        use AlertCode::*;
        use AlertLevel::*;
        assert_eq!(
            seen,
            vec![
                (0.0, HostMemoryPressure, true, Critical),
                (0.0, SwapActive, true, Warning),
                (0.0, ZombieProcesses, true, Warning),
                (2_000.0, ZombieProcesses, false, Info),
                (4_000.0, HostMemoryPressure, false, Info),
                (4_000.0, SwapActive, false, Info),
            ]
        );
    }

    #[test]
    fn host_alert_messages_and_figures_say_what_was_measured() {
        let mut e = AlertEngine::new(AlertThresholds { min_duration_ms: Int(0), ..Default::default() });
        let mut s = sample(5.0);
        s.host.available_mb = 100;
        let alerts = e.observe(&s, &none());
        assert_eq!(alerts[0].message, "host: available memory 100 MB is under 1024 MB");
        assert_eq!(alerts[0].gpu_key, None);
        assert_eq!(alerts[0].figures["availableMb"], 100);
        assert_eq!(alerts[0].figures["lowAvailableMb"], 1_024);
        let v = serde_json::to_value(&alerts[0]).unwrap();
        assert_eq!(v["code"], "HOST_MEMORY_PRESSURE");
        assert_eq!(v["level"], "critical");
        assert_eq!(v["gpuKey"], Value::Null);
    }

    #[test]
    fn xid_errors_raise_every_time_and_never_clear() {
        let mut e = engine();
        let mut s = sample(1.0);
        s.xid_errors = vec![XidEvent { gpu_key: "gpu:0".into(), xid: Some(79) }];
        for _ in 0..2 {
            let alerts = e.observe(&s, &none());
            assert_eq!(alerts.len(), 1);
            assert_eq!(
                (alerts[0].code, alerts[0].level, alerts[0].active),
                (AlertCode::XidError, AlertLevel::Critical, true)
            );
            assert_eq!(alerts[0].message, "gpu:0: critical XID error 79");
            assert_eq!(alerts[0].figures["xid"], 79);
        }
        assert!(e.observe(&sample(2.0), &none()).is_empty());
    }

    #[test]
    fn backlog_boards_of_several_arbiters_add_up_per_gpu() {
        let (a, b) = (BacklogBoard::default(), BacklogBoard::default());
        a.set([("gpu:0", 2, 1), ("gpu:1", 0, 0)]);
        b.set([("gpu:0", 1, 0)]);
        let mut total = BTreeMap::new();
        a.add_to(&mut total);
        b.add_to(&mut total);
        assert_eq!(total["gpu:0"], Backlog { leases: 1, waiters: 3 });
        assert_eq!(total["gpu:1"], Backlog::default());
        a.set([("gpu:1", 0, 4)]);
        let mut after = BTreeMap::new();
        a.add_to(&mut after);
        assert_eq!(
            after,
            [("gpu:1".to_string(), Backlog { leases: 4, waiters: 0 })].into(),
            "set replaces the figures"
        );
        a.set([]);
        let mut none = BTreeMap::new();
        a.add_to(&mut none);
        assert!(none.is_empty());
    }
}
