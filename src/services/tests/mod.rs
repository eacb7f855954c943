//! Supervisor tests against real processes: a small Python service (standard library only) that
//! plays a model load, then becomes ready in the way each test asks for, or crashes. One file per
//! phase; `support` holds the fake service and the helpers they share.

mod first_reading;
mod host_memory;
mod readiness;
mod restart;
mod routes;
mod start;
mod stop;
mod support;
mod update;
mod vram;
