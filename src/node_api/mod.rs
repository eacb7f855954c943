//! The Node-API layer the binding is built from: safe wrappers over raw Node-API calls, with
//! nothing in them that knows an arbiter, a service or a sample (as oxc keeps its shared napi
//! helpers apart from its bindings). `src/binding/` uses these to convert arguments and results,
//! hold JS references and schedule JS calls for each JS-facing class.
//!
//! - [`values`]: making and reading JS values, a serde value as JS;
//! - [`refs`]: references to JS values, and native memory told to V8;
//! - [`calls`]: calls into JS with their exceptions caught, listener lists, wakes from other
//!   threads, functions for a later turn, panics turned into errors;
//! - [`promises`]: promises of work on the tokio runtime, rejected with our `code`;
//! - [`bound`]: native functions bound to a state, for hot calls napi's class methods make slow;
//! - [`reader`]: JS values read through Node-API for [`crate::link::js_json`];
//! - [`shared`]: numbers shared with JS in place (a `Float64Array` Rust writes into).

pub mod bound;
pub mod calls;
pub mod promises;
pub mod reader;
pub mod refs;
pub mod shared;
pub mod values;

pub use calls::*;
pub use refs::*;
pub use values::*;

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
