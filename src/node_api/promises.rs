//! Promises of work done on the addon's tokio runtime (its named one, given to napi at load),
//! rejected with our errors' `code`.

use std::future::Future;
use std::sync::OnceLock;

use napi::bindgen_prelude::{PromiseRaw, ToNapiValue, Unknown};
use napi::{sys, Env, JsValue};

use super::values::{to_js, undefined};
use super::{Code, IntoJsResult, JsResult};
use crate::error::SidecarResult;

/// Gives napi the addon's named runtime (built once per process, before the first async call).
#[napi_derive::module_init]
fn init_runtime() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| match crate::link::runtime::addon_runtime() {
        Ok(runtime) => napi::bindgen_prelude::create_custom_tokio_runtime(runtime),
        Err(e) => tracing::warn!("cannot build the named tokio runtime, napi's default is used: {e}"),
    });
}

/// A promise of a value whose TS type is generated from its serde form (or of nothing).
pub type JsPromise<'env> = PromiseRaw<'env, Unknown<'env>>;

/// Turns what a future gave into the JS value its promise resolves with.
pub type Settle<T> = fn(&Env, T) -> JsResult<sys::napi_value>;

/// A promise settled from `fut`, run on the tokio runtime: `before_settling` runs first on the JS
/// thread, then the value is `settle(value)`; a core error rejects it with a JS error that
/// carries the error's `code`.
pub fn spawn_promise<'env, T, F>(
    env: &'env Env,
    fut: F,
    before_settling: impl FnOnce(&Env) + 'static,
    settle: Settle<T>,
) -> JsResult<JsPromise<'env>>
where
    T: Send + 'static,
    F: Future<Output = SidecarResult<T>> + Send + 'static,
{
    env.spawn_future_with_callback(async move { Ok(fut.await) }, move |env, result| {
        before_settling(env);
        match result.map_err(napi::Error::<Code>::from).and_then(|value| settle(env, value)) {
            Ok(value) => Ok(unsafe { Unknown::from_raw_unchecked(env.raw(), value) }),
            Err(error) => Err(js_error(env, error)),
        }
    })
    .js()
}

/// napi rejects with a plain `Status` error; wrapping the JS error we build keeps our `code`.
fn js_error(env: &Env, error: napi::Error<Code>) -> napi::Error {
    match unsafe { ToNapiValue::to_napi_value(env.raw(), error) } {
        Ok(value) => napi::Error::from(unsafe { Unknown::from_raw_unchecked(env.raw(), value) }),
        Err(e) => e,
    }
}

/// [`Settle`] with the value's serde form.
pub fn serde_form<T: serde::Serialize>(env: &Env, value: T) -> JsResult<sys::napi_value> {
    to_js(env, &value).map(|v| v.raw())
}

/// [`Settle`] with `undefined`, for a promise of nothing.
pub fn nothing(env: &Env, (): ()) -> JsResult<sys::napi_value> {
    undefined(env).js()
}

/// `fut`'s completion as a core outcome (it cannot fail).
pub async fn done(fut: impl Future<Output = ()>) -> SidecarResult<()> {
    fut.await;
    Ok(())
}
