//! A whole recording at once, for an incident report: every sample, and the alerts the alert
//! engine raises and clears along it, without the live sampler's bounded queue (which drops the
//! oldest events when a replay runs faster than JS reads them).

use std::collections::BTreeMap;
use std::path::Path;

use super::alerts::{Alert, AlertEngine};
use super::options::AlertThresholds;
use super::record::{RecordedEvent, Replay};
use super::sample::Sample;
use crate::error::SidecarResult;

/// A recording's samples in file order and its alerts in the order they were raised or cleared;
/// `readRecording`'s value in its serde form.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RecordingAnalysis {
    pub samples: Vec<Sample>,
    pub alerts: Vec<Alert>,
    /// The recording's event lines, in file order.
    pub events: Vec<RecordedEvent>,
}

/// Reads `path` (checked line by line first, like a replay) and runs the alert engine over it
/// with `thresholds`. No arbiter backlog is known, so GPU_IDLE_WITH_BACKLOG never fires here.
pub fn analyze_recording(path: &Path, thresholds: AlertThresholds) -> SidecarResult<RecordingAnalysis> {
    let mut engine = AlertEngine::new(thresholds);
    let no_backlog = BTreeMap::new();
    let mut analysis = RecordingAnalysis { samples: Vec::new(), alerts: Vec::new(), events: Vec::new() };
    let mut replay = Replay::open(path)?;
    for sample in &mut replay {
        let sample = sample?;
        analysis.alerts.extend(engine.observe(&sample, &no_backlog));
        analysis.samples.push(sample);
    }
    analysis.events = replay.take_events();
    Ok(analysis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::record::{temp_path, Recorder};
    use crate::telemetry::sample::{HostSample, NvmlStatus};
    use crate::telemetry::AlertCode;

    fn sample(at: f64, swap_used_mb: u64) -> Sample {
        Sample {
            at,
            nvml: NvmlStatus { available: false, reason: None },
            gpus: vec![],
            host: HostSample {
                total_mb: 16_000,
                available_mb: 8_000,
                swap_total_mb: 4_000,
                swap_used_mb,
                ..Default::default()
            },
            xid_errors: vec![],
        }
    }

    #[test]
    fn keeps_every_sample_and_raises_then_clears_alerts_on_the_recorded_clock() {
        let path = temp_path("analysis.jsonl");
        let mut recorder = Recorder::open(&path).unwrap();
        // 1 s apart: swap in use from 2 s to 11 s, then back to nothing.
        for i in 0..20u64 {
            recorder.append(&sample(i as f64 * 1_000.0, if (2..12).contains(&i) { 2_000 } else { 0 })).unwrap();
        }
        let analysis = analyze_recording(&path, AlertThresholds::default()).unwrap();
        std::fs::remove_file(&path).ok();
        assert_eq!(analysis.samples.len(), 20);
        let swap: Vec<(f64, bool)> =
            analysis.alerts.iter().filter(|a| a.code == AlertCode::SwapActive).map(|a| (a.at, a.active)).collect();
        assert_eq!(swap.len(), 2, "{:?}", analysis.alerts);
        assert!(swap[0].1 && !swap[1].1);
        assert!(swap[0].0 >= 5_000.0 && swap[1].0 >= 12_000.0, "{swap:?}");
    }

    #[test]
    fn a_bad_line_is_an_error_naming_it() {
        let path = temp_path("bad.jsonl");
        std::fs::write(&path, "{\"at\":1}\n").unwrap();
        let err = analyze_recording(&path, AlertThresholds::default()).unwrap_err();
        std::fs::remove_file(&path).ok();
        assert!(err.message.contains(":1: not a telemetry sample"), "{}", err.message);
    }
}
