//! The napi layer: the JS-facing classes and functions, one file per concept. Each converts JS
//! arguments to core types and results back, core errors to JS errors with a stable `code`, holds
//! JS references and schedules JS calls, through the wrappers in [`crate::node_api`]. No
//! arbiter, telemetry or service logic lives here: decisions are in [`crate::link`].

// napi's macros register exported functions only outside `cfg(test)`, so in a test build the
// exports look unused.
#![cfg_attr(test, allow(dead_code))]

mod arbiter;
mod args;
mod config;
mod fit;
mod inventory;
mod logging;
mod manifests;
mod recording;
mod services;
mod spawn_env;
mod telemetry;

use crate::node_api as js;
pub(crate) use crate::node_api::{Code, IntoJsResult, JsResult};
