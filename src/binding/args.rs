//! Converting JS arguments ourselves, so a wrong one is an error with one of our codes and the
//! argument's name or JSON path, never napi's own `StringExpected`. (napi's serde conversion,
//! `Env::from_js_value`, names no path, reads `NaN` and `undefined` fields as `null` and recurses
//! into a cycle.) Exported functions take `Unknown` and call these.

use napi::bindgen_prelude::*;
use serde_json::Value;

use crate::error::{ErrorCode, SidecarError};
use crate::link::js_json::{self, JsKind, JsValues};
use crate::node_api::reader::NapiValues;

/// A JS value as JSON ([`crate::link::js_json`]); errors carry `code` and start with the JSON
/// path from `root` (`telemetry.intervalMs: expected a finite number, got NaN`).
pub fn to_json(env: &Env, value: Unknown, root: &str, code: ErrorCode) -> std::result::Result<Value, SidecarError> {
    js_json::to_json(&NapiValues(env), value.raw(), root, code)
}

/// `undefined` and `null` are `None`.
pub fn optional_json(
    env: &Env,
    value: Option<Unknown>,
    root: &str,
    code: ErrorCode,
) -> std::result::Result<Option<Value>, SidecarError> {
    match value {
        None => Ok(None),
        Some(v) if matches!(v.get_type(), Ok(ValueType::Undefined | ValueType::Null)) => Ok(None),
        Some(v) => to_json(env, v, root, code).map(Some),
    }
}

/// A required argument as JSON; a missing one reads as `null`, which the caller's shape check names.
pub fn required_json(
    env: &Env,
    value: Option<Unknown>,
    root: &str,
    code: ErrorCode,
) -> std::result::Result<Value, SidecarError> {
    match value {
        None => Ok(Value::Null),
        Some(v) => to_json(env, v, root, code),
    }
}

/// A string argument named `name`, else `INVALID_ARGUMENT`.
pub fn string(env: &Env, value: Option<Unknown>, name: &str) -> std::result::Result<String, SidecarError> {
    match value.map(|v| NapiValues(env).kind(v.raw())) {
        Some(Ok(JsKind::String(text))) => Ok(text),
        Some(Err(why)) => Err(SidecarError::invalid_argument(format!("{name}: {why}"))),
        _ => Err(SidecarError::invalid_argument(format!("{name}: expected a string, got {}", describe(env, value)))),
    }
}

/// A function argument as napi's `Function` (typed by its arguments `A` and return `R`), or `None`
/// for `null`, `undefined` or nothing; anything else is `INVALID_ARGUMENT` naming `name`.
pub fn optional_function<'env, A: JsValuesTupleIntoVec, R: FromNapiValue>(
    env: &Env,
    value: Option<Unknown<'env>>,
    name: &str,
) -> std::result::Result<Option<Function<'env, A, R>>, SidecarError> {
    match value.as_ref().map(|v| v.get_type()) {
        None | Some(Ok(ValueType::Undefined | ValueType::Null)) => Ok(None),
        Some(Ok(ValueType::Function)) => {
            // SAFETY: a live function value of this env.
            let f = unsafe { Function::from_napi_value(env.raw(), value.expect("matched").raw()) };
            f.map(Some).map_err(|e| SidecarError::invalid_argument(format!("{name}: {}", e.reason)))
        }
        _ => Err(SidecarError::invalid_argument(format!(
            "{name}: expected a function or null, got {}",
            describe(env, value)
        ))),
    }
}

/// What a JS value is, for error messages ([`JsKind::describe`]); `nothing` for no argument.
pub fn describe(env: &Env, value: Option<Unknown>) -> String {
    match value.map(|v| NapiValues(env).kind(v.raw())) {
        None => "nothing".to_string(),
        Some(Ok(kind)) => kind.describe(),
        Some(Err(_)) => JsKind::Other.describe(),
    }
}

/// The native object behind a class instance argument (`a Telemetry`), else `INVALID_ARGUMENT`.
/// (`ClassInstance`, not `&T`: napi only hands out `&T` from its own argument conversion.)
pub fn class_ref<'env, T: 'env + MaybeTypeTag>(
    env: &Env,
    value: Option<Unknown<'env>>,
    name: &str,
    expected: &str,
) -> std::result::Result<ClassInstance<'env, T>, SidecarError> {
    let wrong = |value: Option<Unknown>| {
        SidecarError::invalid_argument(format!("{name}: expected {expected}, got {}", describe(env, value)))
    };
    match value {
        Some(v) if v.get_type().ok() == Some(ValueType::Object) => {
            // SAFETY: `v` is a live value of this env; napi checks the wrapped pointer's type tag.
            unsafe { ClassInstance::<T>::from_napi_value(env.raw(), v.raw()) }.map_err(|_| wrong(Some(v)))
        }
        other => Err(wrong(other)),
    }
}
