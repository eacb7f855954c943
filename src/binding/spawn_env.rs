//! `ServiceSupervisor#beforeSpawn`: the JS hook that gives one spawn its extra environment. The
//! core asks from its tokio threads ([`crate::services::SpawnEnv`]); the call goes to JS through
//! a weak threadsafe function (a hook never keeps Node alive), a returned promise is awaited, and
//! the core reads the answer ([`crate::services::spawn_env_from_json`]).

use std::sync::{Arc, Mutex};

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use serde_json::Value;

use super::{args, Code, IntoJsResult};
use crate::error::ErrorCode;
use crate::services::{SpawnEnv, SpawnEnvFuture};

type HookFn = ThreadsafeFunction<FnArgs<(String, u32)>, Unknown<'static>, FnArgs<(String, u32)>, Status, false, true>;

/// What the hook's call gave, read on the JS thread.
enum Answer {
    Now(std::result::Result<Value, String>),
    Later(Promise<Json>),
}

/// A promise's value, read on the JS thread as every argument is ([`answer_json`]).
struct Json(std::result::Result<Value, String>);

impl FromNapiValue for Json {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        let env = Env::from_raw(env);
        Ok(Json(answer_json(&env, Unknown::from_raw_unchecked(env.raw(), value))))
    }
}

/// The hook set with `beforeSpawn`, if any.
#[derive(Default)]
pub struct JsSpawnEnv {
    hook: Mutex<Option<Arc<HookFn>>>,
}

impl JsSpawnEnv {
    /// Sets (a function) or clears (`null`/`undefined`) the hook; anything else is
    /// `INVALID_ARGUMENT`.
    pub fn set(&self, env: &Env, hook: Option<Unknown>) -> Result<(), Code> {
        let hook: Option<Function<FnArgs<(String, u32)>, Unknown<'static>>> =
            args::optional_function(env, hook, "hook")?;
        let hook = match hook {
            Some(f) => {
                let f = f.build_threadsafe_function::<FnArgs<(String, u32)>>().weak::<true>().callee_handled::<false>();
                Some(Arc::new(f.build().js()?))
            }
            None => None,
        };
        *self.hook.lock().unwrap_or_else(|e| e.into_inner()) = hook;
        Ok(())
    }
}

impl SpawnEnv for JsSpawnEnv {
    fn env_for(&self, service: &str, attempt: u32) -> Option<SpawnEnvFuture<'_>> {
        let hook = self.hook.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        let (answer, answered) = tokio::sync::oneshot::channel();
        let status = hook.call_with_return_value(
            FnArgs::from((service.to_string(), attempt)),
            ThreadsafeFunctionCallMode::NonBlocking,
            move |returned, env| {
                let _ = answer.send(read_answer(&env, returned));
                Ok(())
            },
        );
        Some(Box::pin(async move {
            if status != Status::Ok {
                return Err(format!("could not be called ({status})"));
            }
            match answered.await {
                Err(_) => Err("was dropped before it answered (Node is exiting)".to_string()),
                Ok(Answer::Now(answer)) => answer,
                Ok(Answer::Later(promise)) => promise.await.map_err(|e| format!("rejected: {}", e.reason))?.0,
            }
        }))
    }
}

/// A thrown error, a promise to await, or the value as JSON (with our own conversion errors).
fn read_answer(env: &Env, returned: napi::Result<Unknown<'static>>) -> Answer {
    let value = match returned {
        Ok(value) => value,
        Err(e) => return Answer::Now(Err(format!("threw: {}", e.reason))),
    };
    // `napi_is_promise`, not `Promise::validate`: that one leaves a pending JS exception behind.
    let mut is_promise = false;
    unsafe { napi::sys::napi_is_promise(env.raw(), value.raw(), &mut is_promise) };
    if is_promise {
        if let Ok(promise) = unsafe { Promise::<Json>::from_napi_value(env.raw(), value.raw()) } {
            return Answer::Later(promise);
        }
    }
    Answer::Now(answer_json(env, value))
}

/// The hook's answer (or its promise's value) as JSON, `undefined` as `null`, with our own
/// conversion's errors at the path the core names too
/// (`answered env.MODEL_DIR: expected a finite number, got NaN`).
fn answer_json(env: &Env, value: Unknown) -> std::result::Result<Value, String> {
    let answer = args::optional_json(env, Some(value), "env", ErrorCode::InvalidArgument);
    answer.map(Option::unwrap_or_default).map_err(|e| format!("answered {}", e.message))
}
