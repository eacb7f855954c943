//! gpu-sidecar: a GPU lease arbiter, a service startup controller and GPU/host telemetry for Node.
//!
//! The core modules (`arbiter`, `config`, `services`, `telemetry`, `node_config`, `link`) are plain Rust
//! and know nothing of Node, so they are tested with `cargo test` (the arbiter on a hand-driven
//! clock); `binding` is the thin napi layer that only converts values and errors, built from the
//! generic Node-API wrappers in `node_api`.
//!
//! Imports run one way: `error` and `config` (shared config helpers) are leaves; the components
//! (`arbiter`, `services`, `telemetry`) each own their config type and import neither each other's
//! config nor `node_config`; `node_config` assembles the node config file from the components'
//! types; `link` is the glue between the components (napi-free, under `cargo test`); `node_api`
//! wraps raw Node-API calls and knows none of the components; `binding` sits on top and only
//! converts values and errors and wakes JS.
#![deny(clippy::all)]

pub mod arbiter;
pub mod config;
pub mod error;
pub mod link;
pub mod node_config;
pub mod services;
pub mod telemetry;

mod binding;
mod node_api;
