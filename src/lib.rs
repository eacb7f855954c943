//! gpu-sidecar: a GPU lease arbiter, a service startup controller and GPU/host telemetry for Node.
//!
//! The core modules (`arbiter`, `config`, `services`, `telemetry`) are plain Rust and know nothing
//! of Node, so they are tested with `cargo test` (the arbiter on a hand-driven clock); `binding` is
//! the thin napi layer that only converts values and errors.
#![deny(clippy::all)]

pub mod arbiter;
pub mod config;
pub mod error;
pub mod link;
pub mod services;
pub mod telemetry;

mod binding;
