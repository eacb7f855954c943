//! The glue between the three parts, in plain Rust under `cargo test`: what the binding used to
//! decide on its own. The binding (`src/binding/`) converts values and errors and wakes JS; each
//! piece here is driven by it and takes time as an argument where time matters.
//!
//! - [`service_events`]: the supervisor's events on their way to JS, log lines bounded, delivered
//!   a slice per event-loop turn;
//! - [`supervisor_arbiter`]: a supervisor tied to an arbiter host (routes, attribution, on demand);
//! - [`supervisor_telemetry`]: an attached Telemetry as the supervisor's VRAM and host-memory
//!   source, and the service pids it labels;
//! - [`arbiter_calls`]: what a supervisor asks of an attached arbiter from its own threads
//!   (startup leases, task-type routes, on-demand standby), queued for the arbiter's thread;
//! - [`lease_attribution`]: an arbiter's grants and releases, typed, for the supervisor;
//! - [`arbiter_views`]: the arbiter's snapshots and events in the serde form JS gets;
//! - [`arbiter_mailbox`]: the numbers the arbiter's hot calls leave for its JS half;
//! - [`arbiter_requests`]: a lease request object from JS, checked field by field;
//! - [`arbiter_host`]: the arbiter core with its clock, native requesters and the hooks other
//!   parts set (on-demand starts, lease attribution, the backlog board);
//! - [`attachments`]: listeners, arbiters and sinks by the id their detach function holds;
//! - [`gpu_reading`]: a telemetry GPU sample as an arbiter reading;
//! - [`js_json`]: a JS argument as JSON, refusing what JSON cannot say, errors at their JSON path;
//! - [`log_routing`]: the addon's `tracing` events to a JS logger's sink or to stderr;
//! - [`runtime`]: the addon's named tokio runtime;
//! - [`services_file`]: a node config file's `services` section as a supervisor's source, and
//!   its edits applied while the node runs;
//! - [`sampler_events`]: telemetry's sampler events queued for JS, oldest dropped first, and the
//!   attached arbiters: their backlog summed for the sampler thread, and whether one attached
//!   waits for a first reading.

pub mod arbiter_calls;
pub mod arbiter_host;
pub mod arbiter_mailbox;
pub mod arbiter_requests;
pub mod arbiter_views;
pub mod attachments;
pub mod gpu_reading;
pub mod js_json;
pub mod lease_attribution;
pub mod log_routing;
pub mod runtime;
pub mod sampler_events;
pub mod service_events;
pub mod services_file;
pub mod supervisor_arbiter;
pub mod supervisor_telemetry;
