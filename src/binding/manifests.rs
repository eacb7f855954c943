//! `loadServiceManifests(dir, options?)`: the node's `service.json` manifests as service specs
//! ([`crate::services::manifest`]).

use napi::bindgen_prelude::{Env, Unknown};
use napi_derive::napi;

use super::{args, js, Code};
use crate::error::ErrorCode;
use crate::services::manifest::expand_manifests_argument;

/// Reads every `<dir>/<folder>/service.json` (one folder or several, relative to the working
/// directory) with the node's rules, and returns `{ services, manifests, diagnostics }`:
/// `services` fits `new ServiceSupervisor({ services })`, `manifests` are the manifests kept, and
/// `diagnostics` say why each other file was skipped (also logged as warnings). `options.taskTypes`
/// maps manifest `type`s to arbiter task types over the defaults. A missing folder throws
/// `MANIFESTS_NOT_FOUND`; a bad argument `INVALID_ARGUMENT`.
#[napi(
    catch_unwind,
    ts_args_type = "dir: string | string[], options?: { taskTypes?: Record<string, string> }",
    ts_return_type = "{ services: ServiceConfig[] } & ManifestReport"
)]
pub fn load_service_manifests<'env>(
    env: &'env Env,
    dir: Option<Unknown>,
    options: Option<Unknown>,
) -> napi::Result<Unknown<'env>, Code> {
    let dir = args::required_json(env, dir, "dir", ErrorCode::InvalidArgument)?;
    let options = args::optional_json(env, options, "options", ErrorCode::InvalidArgument)?;
    js::to_js(env, &expand_manifests_argument(&dir, options.as_ref())?)
}
