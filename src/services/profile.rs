//! What each service took on earlier runs (time to ready, peak VRAM, peak host RSS), kept in a small JSON file
//! so that a GPU service with no configured `vramMb` can still be gated.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How a learned peak VRAM figure was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PeakVramMethod {
    /// The service's processes' own GPU memory (NVML per-process figures).
    Process,
    /// The rise in its GPU's used memory while it loaded alone there (no per-process figures,
    /// as on Windows in WDDM mode).
    GpuDelta,
}

/// A run's peak VRAM and how it was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeakVram {
    pub mb: u64,
    pub method: PeakVramMethod,
}

/// One service's learned numbers.
/// What a service took on earlier runs (kept in `stateFile`); `null` where nothing was learned.
/// The state file and JS get the same form; a file written before a field was kept lacks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "ServiceLearned")]
pub struct LearnedProfile {
    #[serde(default)]
    pub time_to_ready_ms: Option<u64>,
    #[serde(default)]
    pub peak_vram_mb: Option<u64>,
    /// How `peakVramMb` was measured: `process`, the service's processes' own GPU memory;
    /// `gpu-delta`, the rise in its GPU's used memory while it loaded alone there (where NVML
    /// has no per-process figures, as on Windows in WDDM mode).
    #[serde(default)]
    pub peak_vram_method: Option<PeakVramMethod>,
    /// The highest resident memory (MB) of its whole process tree (the service and everything it
    /// forked) on its last run; the host-memory gate's need without `hostMemMb`.
    #[serde(default)]
    pub peak_rss_mb: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    services: BTreeMap<String, LearnedProfile>,
}

/// The learned profiles, optionally backed by a file.
#[derive(Debug, Default)]
pub struct ProfileStore {
    path: Option<PathBuf>,
    services: BTreeMap<String, LearnedProfile>,
}

impl ProfileStore {
    /// Loads `path`; a missing or unreadable file starts empty (it is only a hint).
    pub fn load(path: Option<&Path>) -> Self {
        let services = path
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|bytes| match serde_json::from_slice::<StateFile>(&bytes) {
                Ok(state) => Some(state.services),
                Err(e) => {
                    tracing::warn!("ignoring unreadable services state file: {e}");
                    None
                }
            })
            .unwrap_or_default();
        Self { path: path.map(Path::to_path_buf), services }
    }

    /// What `service` took last time.
    pub fn get(&self, service: &str) -> LearnedProfile {
        self.services.get(service).copied().unwrap_or_default()
    }

    /// Records a run's numbers and saves the file when they changed.
    pub fn record(&mut self, service: &str, time_to_ready_ms: Option<u64>, peak_vram: Option<PeakVram>) {
        let entry = self.services.entry(service.to_string()).or_default();
        let before = *entry;
        entry.time_to_ready_ms = time_to_ready_ms.or(entry.time_to_ready_ms);
        if let Some(peak) = peak_vram {
            entry.peak_vram_mb = Some(peak.mb);
            entry.peak_vram_method = Some(peak.method);
        }
        if *entry != before {
            self.save();
        }
    }

    /// Records a run's peak resident memory (its process tree's) and saves the file when it
    /// changed.
    pub fn record_rss(&mut self, service: &str, peak_rss_mb: u64) {
        let entry = self.services.entry(service.to_string()).or_default();
        if entry.peak_rss_mb != Some(peak_rss_mb) {
            entry.peak_rss_mb = Some(peak_rss_mb);
            self.save();
        }
    }

    fn save(&self) {
        let Some(path) = &self.path else { return };
        let state = StateFile { services: self.services.clone() };
        let text = serde_json::to_vec_pretty(&state).expect("profiles serialize");
        // Write then rename, so a crash mid-write never leaves a truncated file.
        let tmp = path.with_extension("tmp");
        let result = std::fs::write(&tmp, text).and_then(|_| std::fs::rename(&tmp, path));
        if let Err(e) = result {
            tracing::warn!("cannot save services state file {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_file_and_keeps_old_numbers() {
        let dir = std::env::temp_dir().join(format!("gpu-sidecar-profile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        let mut store = ProfileStore::load(Some(&path));
        assert_eq!(store.get("asr"), LearnedProfile::default());
        store.record("asr", Some(1200), Some(PeakVram { mb: 900, method: PeakVramMethod::GpuDelta }));
        store.record("asr", Some(1000), None);
        let again = ProfileStore::load(Some(&path));
        assert_eq!(
            again.get("asr"),
            LearnedProfile {
                time_to_ready_ms: Some(1000),
                peak_vram_mb: Some(900),
                peak_vram_method: Some(PeakVramMethod::GpuDelta),
                peak_rss_mb: None,
            }
        );
        store.record_rss("asr", 310);
        assert_eq!(ProfileStore::load(Some(&path)).get("asr").peak_rss_mb, Some(310));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""peakVramMethod": "gpu-delta""#), "{text}");
        // A state file written before the method was kept still loads.
        std::fs::write(&path, r#"{"services":{"asr":{"timeToReadyMs":5,"peakVramMb":7}}}"#).unwrap();
        assert_eq!(
            ProfileStore::load(Some(&path)).get("asr"),
            LearnedProfile {
                time_to_ready_ms: Some(5),
                peak_vram_mb: Some(7),
                peak_vram_method: None,
                peak_rss_mb: None
            }
        );
        std::fs::write(&path, "not json").unwrap();
        assert_eq!(ProfileStore::load(Some(&path)).get("asr"), LearnedProfile::default());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
