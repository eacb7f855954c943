//! What the start gates wait for, as plain functions of the config and the learned profile. The
//! VRAM gate and the host-memory gate use them, and so does `gpu-sidecar doctor`'s fit plan
//! (through the `fitNeeds` export), so the rules and the defaults are stated once, here.

use serde::Serialize;

use super::config::{GpuNeed, ServiceSpec, ServicesConfig};
use super::profile::LearnedProfile;

/// What the VRAM gate waits for before a GPU load (headroom aside): the configured `gpu.vramMb`,
/// else the peak learned on an earlier run; `None` turns the gate off for the service.
pub fn vram_need_mb(gpu: &GpuNeed, learned: &LearnedProfile) -> Option<u64> {
    gpu.vram_mb.map(|mb| mb.get()).or(learned.peak_vram_mb)
}

/// What the host-memory gate counts for a start (headroom aside): `hostMemMb`, else the peak RSS
/// learned on an earlier run; `None` when neither is known.
pub fn host_need_mb(spec: &ServiceSpec, learned: &LearnedProfile) -> Option<u64> {
    spec.host_mem_mb.map(|mb| mb.get()).or(learned.peak_rss_mb)
}

/// The gates' inputs for a whole `services` section, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FitNeeds {
    pub vram_headroom_mb: u64,
    pub host_mem_headroom_mb: u64,
    /// In config order.
    pub services: Vec<ServiceNeeds>,
}

/// One service's needs as the gates see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceNeeds {
    pub name: String,
    /// The configured `gpu.key` (`auto` as written); `None` for a service with no GPU.
    pub gpu_key: Option<String>,
    /// [`vram_need_mb`]; `None` for a service with no GPU or no estimate.
    pub vram_need_mb: Option<u64>,
    /// [`host_need_mb`].
    pub host_need_mb: Option<u64>,
}

/// Each service's needs, with `learned(name)` its profile from the state file.
pub fn fit_needs(config: &ServicesConfig, learned: impl Fn(&str) -> LearnedProfile) -> FitNeeds {
    let services = config
        .services
        .iter()
        .map(|spec| {
            let profile = learned(&spec.name);
            ServiceNeeds {
                name: spec.name.clone(),
                gpu_key: spec.gpu.as_ref().map(|gpu| gpu.key.clone()),
                vram_need_mb: spec.gpu.as_ref().and_then(|gpu| vram_need_mb(gpu, &profile)),
                host_need_mb: host_need_mb(spec, &profile),
            }
        })
        .collect();
    FitNeeds {
        vram_headroom_mb: config.vram_headroom_mb.get(),
        host_mem_headroom_mb: config.host_mem_headroom_mb.get(),
        services,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn configured_needs_win_over_learned_ones_and_defaults_apply() {
        let config = ServicesConfig::from_json(
            &json!({"services": [
                {"name": "asr", "command": "x", "readiness": {"none": {}}, "gpu": {"key": "gpu:0", "vramMb": 900}},
                {"name": "tts", "command": "x", "readiness": {"none": {}}, "gpu": {"key": "auto"}, "hostMemMb": 300},
                {"name": "web", "command": "x", "readiness": {"none": {}}}
            ]}),
            &mut vec![],
        )
        .unwrap();
        let learned = |name: &str| match name {
            "asr" | "tts" => LearnedProfile { peak_vram_mb: Some(1_200), peak_rss_mb: Some(700), ..Default::default() },
            _ => LearnedProfile::default(),
        };
        let needs = fit_needs(&config, learned);
        assert_eq!((needs.vram_headroom_mb, needs.host_mem_headroom_mb), (512, 1_024));
        let got: Vec<_> = needs
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.gpu_key.as_deref(), s.vram_need_mb, s.host_need_mb))
            .collect();
        assert_eq!(
            got,
            [
                ("asr", Some("gpu:0"), Some(900), Some(700)),
                ("tts", Some("auto"), Some(1_200), Some(300)),
                ("web", None, None, None)
            ]
        );
    }
}
