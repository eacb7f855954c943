//! The napi layer: converts JS values to core types and back, and core errors to JS errors with a
//! stable `code`. No arbiter, telemetry or service logic lives here.

// napi's macros register exported functions only outside `cfg(test)`, so in a test build the
// exports look unused.
#![cfg_attr(test, allow(dead_code))]

mod arbiter;
mod args;
mod config;
mod fit;
mod inventory;
mod js;
mod logging;
mod manifests;
mod recording;
mod services;
mod spawn_env;
mod telemetry;

use napi::Status;

use crate::error::SidecarError;

/// The `code` of a JS error we throw: one of [`crate::error::ErrorCode`]'s strings, or a napi status.
pub struct Code(String);

impl AsRef<str> for Code {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<Status> for Code {
    fn from(status: Status) -> Self {
        Code(status.as_ref().to_string())
    }
}

pub type JsResult<T> = napi::Result<T, Code>;

impl From<SidecarError> for napi::Error<Code> {
    fn from(e: SidecarError) -> Self {
        napi::Error::new(Code(e.code.as_str().to_string()), e.message)
    }
}

/// Lets `?` carry napi's own errors through functions that return [`JsResult`].
pub trait IntoJsResult<T> {
    fn js(self) -> JsResult<T>;
}

impl<T> IntoJsResult<T> for napi::Result<T> {
    fn js(self) -> JsResult<T> {
        self.map_err(|e| napi::Error::new(Code::from(e.status), e.reason))
    }
}
