use napi_derive::napi;

/// Version of the native addon.
#[napi]
pub fn native_version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
