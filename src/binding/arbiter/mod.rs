//! `GpuArbiter`: the JS class over [`crate::arbiter::Arbiter`].
//!
//! The arbiter is split at the cheapest boundary Node-API allows. The Rust core makes every
//! decision. Its JS half (`src/js/arbiter.js`) owns what only JS can hold cheaply: the promises,
//! the result objects, AbortSignal listeners and the one deadline timer. The hot calls
//! (`hot_path.rs`) take and return numbers; what they cause is written to a shared mailbox
//! (`mailbox.rs`). Everything here runs on the JS thread; the core sits in an `Rc<RefCell>`.
//!
//! - `mod.rs`: the class and its slow-path methods;
//! - `hot_path.rs`: acquire, release, tick, cancel;
//! - `state.rs`: the binding state and how a change reaches JS (snapshots and events are the
//!   serde form of [`crate::link::arbiter_views`]; argument types are generated from
//!   [`crate::link::arbiter_requests`]);
//! - `config_file.rs`: config patches and the watched config file;
//! - `native_leases.rs`: leases other parts of the addon ask for from Rust (startup leases).

mod config_file;
mod hot_path;
mod mailbox;
pub(super) mod native_leases;
mod state;

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use napi::bindgen_prelude::*;
use napi_derive::napi;

use super::args;
use super::{Code, IntoJsResult};
use crate::arbiter::ArbiterConfig;
use crate::error::ErrorCode;
use crate::error::SidecarError;
use crate::link::arbiter_requests;
use crate::node_api as js;
use crate::node_config as config;

pub(super) use state::{after_call, ArbiterBinding, Caller};

#[napi(object)]
#[allow(dead_code)] // declares the argument's TS type; the value is read as JSON
pub struct FromFileOptions {
    /// Apply edits of the file while running (policies, limits; leases and queue are kept).
    pub watch: Option<bool>,
}

/// The GPU lease arbiter. All methods are synchronous except `acquire`, which resolves when the
/// request is granted or definitively answered; every request resolves exactly once.
#[napi]
pub struct GpuArbiter {
    state: Rc<RefCell<ArbiterBinding>>,
}

#[napi]
impl GpuArbiter {
    /// Validates `config` (the `gpuArbiter` object of the node config) and builds an arbiter.
    /// Throws `INVALID_CONFIG` naming the JSON path of a bad field.
    #[napi(constructor, catch_unwind, ts_args_type = "config?: GpuArbiterConfig")]
    pub fn new(env: &Env, this: This<Object>, config: Option<Unknown>) -> Result<Self, Code> {
        let config = args::optional_json(env, config, "gpuArbiter", ErrorCode::InvalidConfig)?
            .unwrap_or_else(|| serde_json::json!({}));
        let mut warnings = vec![];
        let config = ArbiterConfig::from_json(&config, &mut warnings)?;
        crate::error::log_warnings(&warnings);
        let arbiter = Self::with_config(config);
        hot_path::install(env, this.raw(), &arbiter.state).js()?;
        Ok(arbiter)
    }

    /// Loads the `gpuArbiter` section of a node config file. With `{ watch: true }` edits to the
    /// file are applied while running; a bad edit keeps the last good config and emits
    /// `config-rejected`; a removed file emits `config-file-missing` and is picked up again when
    /// it comes back.
    #[napi(catch_unwind, ts_args_type = "path: string, options?: FromFileOptions", ts_return_type = "GpuArbiter")]
    pub fn from_file<'env>(
        env: &'env Env,
        path: Option<Unknown<'env>>,
        options: Option<Unknown<'env>>,
    ) -> Result<ClassInstance<'env, GpuArbiter>, Code> {
        let path = args::string(env, path, "path")?;
        let options = args::optional_json(env, options, "options", ErrorCode::InvalidArgument)?;
        let watch = crate::config::watch::watch_option(options.as_ref())?;
        let node = config::load_node_config(std::path::Path::new(&path))?;
        crate::error::log_warnings(&node.warnings);
        let arbiter = Self::with_config(node.gpu_arbiter);
        if watch {
            config_file::watch(env, &arbiter.state, path.into())?;
        }
        let state = Rc::clone(&arbiter.state);
        let instance = arbiter.into_instance(env).js()?;
        hot_path::install(env, instance.as_object(env).raw(), &state).js()?;
        Ok(instance)
    }

    /// One GPU's state: active leases with holder trace and hold time, the queue in dequeue order,
    /// counters and wait/hold percentiles per task type, admission state, and the old arbiter's
    /// snapshot fields. `null` for an unknown key.
    #[napi(catch_unwind, ts_args_type = "gpuKey: string", ts_return_type = "GpuArbiterSnapshot | null")]
    pub fn snapshot<'env>(&self, env: &'env Env, gpu_key: Option<Unknown<'env>>) -> Result<Unknown<'env>, Code> {
        let gpu_key = args::string(env, gpu_key, "gpuKey")?;
        js::to_js(env, &self.state.borrow().host.snapshots(Some(&gpu_key)).pop())
    }

    /// Snapshots of every configured GPU.
    #[napi(catch_unwind, ts_return_type = "GpuArbiterSnapshot[]")]
    pub fn snapshot_all<'env>(&self, env: &'env Env) -> Result<Unknown<'env>, Code> {
        js::to_js(env, &self.state.borrow().host.snapshots(None))
    }

    /// Prometheus text exposition (serve it next to prom-client's output).
    #[napi(catch_unwind)]
    pub fn metrics(&self) -> String {
        self.state.borrow().host.core.metrics()
    }

    /// The effective config, defaults applied.
    #[napi(catch_unwind, ts_return_type = "GpuArbiterConfig")]
    pub fn config<'env>(&self, env: &'env Env) -> Result<Unknown<'env>, Code> {
        js::to_js(env, self.state.borrow().host.core.config())
    }

    /// The configured GPU keys, in order (records name a GPU by its index here).
    #[napi(catch_unwind)]
    pub fn gpu_keys(&self) -> Vec<String> {
        self.state.borrow().host.core.config().gpu_keys.clone()
    }

    /// Applies a JSON merge patch to the config (`{ policies: { ASR: { priority: 95 } } }`),
    /// keeping leases and queue. A bad patch throws `INVALID_CONFIG`, changes nothing and emits
    /// `config-rejected`.
    #[napi(catch_unwind, ts_args_type = "patch: GpuArbiterConfigPatch")]
    pub fn set_config(&self, env: &Env, patch: Option<Unknown>) -> Result<(), Code> {
        let patch = match args::required_json(env, patch, "gpuArbiter", ErrorCode::InvalidConfig) {
            Ok(patch) => patch,
            Err(e) => {
                self.state.borrow_mut().host.reject_config(&e);
                state::after_call(env, &self.state, Vec::new(), state::Caller::Native)?;
                return Err(e.into());
            }
        };
        config_file::apply(env, &self.state, config_file::ConfigChange::Patch(patch))
    }

    /// Feeds one GPU's current utilization and memory from any source (a `Telemetry` attached to
    /// the arbiter does this on every sample). Sets the GPU's admission state (HIGH_PRESSURE at
    /// `gpuUsage.highWater`, NORMAL again under `lowWater`), enables VRAM admission for requests
    /// with `vramMb`, and re-checks waiters. Readings for keys the arbiter does not have are ignored.
    #[napi(catch_unwind, ts_args_type = "gpuKey: string, reading: GpuReadingInput")]
    pub fn observe_gpu(&self, env: &Env, gpu_key: Option<Unknown>, reading: Option<Unknown>) -> Result<(), Code> {
        let gpu_key = args::string(env, gpu_key, "gpuKey")?;
        let reading = args::required_json(env, reading, "reading", ErrorCode::InvalidArgument)?;
        let reading = arbiter_requests::reading_input(&reading)?;
        let out = self.state.borrow_mut().host.observe_gpu(&gpu_key, reading);
        state::after_call(env, &self.state, out, state::Caller::Native)
    }

    /// The old arbiter's hint from the ASR stage: audio longer than
    /// `gpuUsage.dynamicAdjustment.longAudioThresholdMs` raises both water marks by their boosts
    /// for `adjustmentTtlMs`, so the long, busy hold that follows is not taken for pressure.
    /// Returns whether the marks were raised.
    #[napi(catch_unwind, ts_args_type = "hint: AsrTaskHint")]
    pub fn notify_asr_task_hint(&self, env: &Env, hint: Option<Unknown>) -> Result<bool, Code> {
        let hint = args::required_json(env, hint, "hint", ErrorCode::InvalidArgument)?;
        let (audio, hold) = arbiter_requests::asr_hint(&hint)?;
        let (raised, out) = self.state.borrow_mut().host.notify_asr_task_hint(audio, hold);
        state::after_call(env, &self.state, out, state::Caller::Native)?;
        Ok(raised)
    }

    /// Subscribes to events; returns a function that unsubscribes. A listener that throws is
    /// logged and does not disturb the arbiter.
    #[napi(catch_unwind, ts_args_type = "listener: (event: GpuArbiterEvent) => void", ts_return_type = "() => void")]
    pub fn on_event<'env>(
        &self,
        env: &'env Env,
        listener: Option<Unknown<'env>>,
    ) -> Result<Function<'env, (), ()>, Code> {
        let listener = listener.ok_or_else(|| SidecarError::invalid_argument("listener: expected a function"))?;
        js::subscribe(
            env,
            &self.state,
            listener.raw(),
            |s| &mut s.listeners,
            |s| {
                let listening = !s.listeners.is_empty();
                s.host.set_js_listening(listening);
            },
        )
    }

    /// Settles every waiter `CANCELLED` / `SHUTDOWN`, drops all leases (their `signal`s abort),
    /// stops the file watcher and the deadline timer. Later calls to `acquire` and `setConfig`
    /// fail with code `CLOSED`. Idempotent.
    #[napi(catch_unwind)]
    pub fn close(&self, env: &Env) -> Result<(), Code> {
        let out = {
            let mut s = self.state.borrow_mut();
            s.watch = None;
            s.host.close()
        };
        state::after_call(env, &self.state, out, state::Caller::Native)?;
        let mut s = self.state.borrow_mut();
        s.listeners.clear();
        s.host.stop_listening();
        Ok(())
    }

    /// Whether `close()` was called.
    #[napi(getter, catch_unwind)]
    pub fn closed(&self) -> bool {
        self.state.borrow().host.core.is_closed()
    }
}

impl GpuArbiter {
    /// For a `Telemetry` that feeds this arbiter without keeping it alive.
    pub(super) fn shared(&self) -> Weak<RefCell<ArbiterBinding>> {
        Rc::downgrade(&self.state)
    }

    fn with_config(config: ArbiterConfig) -> Self {
        Self { state: Rc::new(RefCell::new(ArbiterBinding::new(config))) }
    }
}
