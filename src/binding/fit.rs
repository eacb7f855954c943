//! `fitNeeds(services, learned)`: the start gates' needs and headroom for a `services` section, so
//! `gpu-sidecar doctor`'s fit plan judges with the supervisor's own rules and defaults.

use std::collections::BTreeMap;

use napi::bindgen_prelude::{Env, Unknown};
use napi_derive::napi;

use super::{args, Code};
use crate::error::ErrorCode;
use crate::services::needs::fit_needs as needs_of;
use crate::services::{LearnedProfile, ServicesConfig};

/// What the VRAM and host-memory gates would wait for, per service of `services` (validated like
/// `new ServiceSupervisor`, so a bad section is `INVALID_CONFIG`), with `learned` the state file's
/// `services` entries (`{ asr: { peakVramMb, peakRssMb } }`; one the supervisor could not read
/// counts as nothing learned, as it does there). Used by `gpu-sidecar doctor`.
#[napi(
    catch_unwind,
    ts_args_type = "services: ServicesConfig, learned?: Record<string, { peakVramMb?: number, peakRssMb?: number }> | null",
    ts_return_type = "{ vramHeadroomMb: number, hostMemHeadroomMb: number, services: Array<{ name: string, gpuKey: string | null, vramNeedMb: number | null, hostNeedMb: number | null }> }"
)]
pub fn fit_needs<'env>(
    env: &'env Env,
    services: Option<Unknown<'env>>,
    learned: Option<Unknown<'env>>,
) -> napi::Result<Unknown<'env>, Code> {
    let section = args::required_json(env, services, "services", ErrorCode::InvalidConfig)?;
    let config = ServicesConfig::from_json(&section, &mut Vec::new())?;
    let learned = args::optional_json(env, learned, "learned", ErrorCode::InvalidArgument)?;
    let profiles: BTreeMap<String, LearnedProfile> =
        learned.and_then(|value| serde_json::from_value(value).ok()).unwrap_or_default();
    let needs = needs_of(&config, |name| profiles.get(name).copied().unwrap_or_default());
    super::js::to_js(env, &needs)
}
