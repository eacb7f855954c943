//! Converting JS arguments ourselves, so a wrong one is an error with one of our codes and the
//! argument's name or JSON path, never napi's own `StringExpected`, "Failed to convert js number
//! to serde_json::Number" or "Exceeded maximum JSON nesting depth". Exported functions take
//! `Unknown` and call these.

use std::ptr;

use napi::bindgen_prelude::*;
use napi::sys;
use serde_json::{Map, Number, Value};

use super::js;
use crate::error::{ErrorCode, SidecarError};

/// Deeper than any config or options object gpu-sidecar reads.
const MAX_DEPTH: usize = 64;

/// Converts a JS value to JSON, as `JSON.stringify` would see it (`undefined` properties are
/// left out), but refusing what JSON cannot say: `NaN`/`Infinity`, cycles, functions, symbols,
/// BigInts, and nesting deeper than 64. Errors carry `code` and start with the JSON path from
/// `root` (`telemetry.intervalMs: expected a finite number, got NaN`).
pub fn to_json(env: &Env, value: Unknown, root: &str, code: ErrorCode) -> std::result::Result<Value, SidecarError> {
    let mut converter = Converter { env, code, stack: Vec::new() };
    converter.convert(value.raw(), root)
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
    match value {
        Some(v) if v.get_type().ok() == Some(ValueType::String) => {
            js::string_value(env, v.raw()).map_err(|e| SidecarError::invalid_argument(format!("{name}: {}", e.reason)))
        }
        other => {
            Err(SidecarError::invalid_argument(format!("{name}: expected a string, got {}", describe(env, other))))
        }
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

/// What a JS value is, for error messages: `undefined`, `null`, `a number (NaN)`, `an object`...
pub fn describe(env: &Env, value: Option<Unknown>) -> String {
    let Some(value) = value else { return "nothing".to_string() };
    match value.get_type() {
        Ok(ValueType::Undefined) => "undefined".into(),
        Ok(ValueType::Null) => "null".into(),
        Ok(ValueType::Boolean) => "a boolean".into(),
        Ok(ValueType::Number) => {
            let mut n = 0.0;
            unsafe { sys::napi_get_value_double(env.raw(), value.raw(), &mut n) };
            format!("the number {}", js_number(n))
        }
        Ok(ValueType::String) => "a string".into(),
        Ok(ValueType::Symbol) => "a symbol".into(),
        Ok(ValueType::Function) => "a function".into(),
        Ok(ValueType::BigInt) => "a BigInt".into(),
        Ok(ValueType::Object) if is_array(env, value.raw()) => "an array".into(),
        Ok(ValueType::Object) => "an object".into(),
        _ => "an unknown value".into(),
    }
}

fn js_number(n: f64) -> String {
    if n.is_nan() {
        "NaN".into()
    } else if n.is_infinite() {
        if n > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        }
    } else {
        n.to_string()
    }
}

fn is_array(env: &Env, value: sys::napi_value) -> bool {
    let mut result = false;
    unsafe { sys::napi_is_array(env.raw(), value, &mut result) };
    result
}

struct Converter<'a> {
    env: &'a Env,
    code: ErrorCode,
    /// The objects being converted, outermost first, to find cycles.
    stack: Vec<sys::napi_value>,
}

impl Converter<'_> {
    fn error(&self, path: &str, what: impl std::fmt::Display) -> SidecarError {
        SidecarError::new(self.code, format!("{path}: {what}"))
    }

    /// A failed napi call (a getter or Proxy trap that threw): its exception is cleared and
    /// reported at `path`.
    fn failed(&self, path: &str, status: sys::napi_status) -> SidecarError {
        let mut pending = false;
        unsafe { sys::napi_is_exception_pending(self.env.raw(), &mut pending) };
        let mut detail = format!("cannot be read (napi status {status})");
        if pending {
            let mut exception = ptr::null_mut();
            unsafe { sys::napi_get_and_clear_last_exception(self.env.raw(), &mut exception) };
            let mut text = ptr::null_mut();
            if unsafe { sys::napi_coerce_to_string(self.env.raw(), exception, &mut text) } == sys::Status::napi_ok {
                if let Ok(message) = js::string_value(self.env, text) {
                    detail = format!("cannot be read: {message}");
                }
            } else {
                unsafe { sys::napi_get_and_clear_last_exception(self.env.raw(), &mut exception) };
            }
        }
        self.error(path, detail)
    }

    fn check(&self, path: &str, status: sys::napi_status) -> std::result::Result<(), SidecarError> {
        if status == sys::Status::napi_ok {
            Ok(())
        } else {
            Err(self.failed(path, status))
        }
    }

    fn convert(&mut self, value: sys::napi_value, path: &str) -> std::result::Result<Value, SidecarError> {
        let env = self.env.raw();
        let mut kind = 0;
        self.check(path, unsafe { sys::napi_typeof(env, value, &mut kind) })?;
        match ValueType::from(kind) {
            ValueType::Undefined | ValueType::Null => Ok(Value::Null),
            ValueType::Boolean => {
                let mut b = false;
                self.check(path, unsafe { sys::napi_get_value_bool(env, value, &mut b) })?;
                Ok(Value::Bool(b))
            }
            ValueType::Number => {
                let mut n = 0.0;
                self.check(path, unsafe { sys::napi_get_value_double(env, value, &mut n) })?;
                number(n).ok_or_else(|| self.error(path, format!("expected a finite number, got {}", js_number(n))))
            }
            ValueType::String => {
                js::string_value(self.env, value).map(Value::String).map_err(|e| self.error(path, e.reason))
            }
            ValueType::Object => self.object(value, path),
            ValueType::Function => Err(self.error(path, "expected a JSON value, got a function")),
            ValueType::Symbol => Err(self.error(path, "expected a JSON value, got a symbol")),
            ValueType::BigInt => Err(self.error(path, "expected a JSON value, got a BigInt (use a number)")),
            _ => Err(self.error(path, "expected a JSON value")),
        }
    }

    fn object(&mut self, value: sys::napi_value, path: &str) -> std::result::Result<Value, SidecarError> {
        let env = self.env.raw();
        for seen in &self.stack {
            let mut same = false;
            self.check(path, unsafe { sys::napi_strict_equals(env, *seen, value, &mut same) })?;
            if same {
                return Err(self.error(path, "a cyclic reference (the object contains itself)"));
            }
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.error(path, format!("nested deeper than {MAX_DEPTH} levels")));
        }
        self.stack.push(value);
        let result = if is_array(self.env, value) { self.array(value, path) } else { self.map(value, path) };
        self.stack.pop();
        result
    }

    fn array(&mut self, value: sys::napi_value, path: &str) -> std::result::Result<Value, SidecarError> {
        let env = self.env.raw();
        let mut length = 0;
        self.check(path, unsafe { sys::napi_get_array_length(env, value, &mut length) })?;
        let mut items = Vec::with_capacity(length.min(1024) as usize);
        for i in 0..length {
            let item_path = format!("{path}[{i}]");
            let mut item = ptr::null_mut();
            self.check(&item_path, unsafe { sys::napi_get_element(env, value, i, &mut item) })?;
            items.push(self.convert(item, &item_path)?);
        }
        Ok(Value::Array(items))
    }

    fn map(&mut self, value: sys::napi_value, path: &str) -> std::result::Result<Value, SidecarError> {
        let env = self.env.raw();
        let mut keys = ptr::null_mut();
        self.check(path, unsafe {
            sys::napi_get_all_property_names(
                env,
                value,
                sys::KeyCollectionMode::own_only,
                sys::KeyFilter::enumerable | sys::KeyFilter::skip_symbols,
                sys::KeyConversion::numbers_to_strings,
                &mut keys,
            )
        })?;
        let mut count = 0;
        self.check(path, unsafe { sys::napi_get_array_length(env, keys, &mut count) })?;
        let mut map = Map::new();
        for i in 0..count {
            let mut key = ptr::null_mut();
            self.check(path, unsafe { sys::napi_get_element(env, keys, i, &mut key) })?;
            let name = js::string_value(self.env, key).map_err(|e| self.error(path, e.reason))?;
            let field_path = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
            let mut field = ptr::null_mut();
            self.check(&field_path, unsafe { sys::napi_get_property(env, value, key, &mut field) })?;
            let mut kind = 0;
            self.check(&field_path, unsafe { sys::napi_typeof(env, field, &mut kind) })?;
            if ValueType::from(kind) == ValueType::Undefined {
                continue; // as JSON.stringify does
            }
            let converted = self.convert(field, &field_path)?;
            map.insert(name, converted);
        }
        Ok(Value::Object(map))
    }
}

/// A JSON number: integers stay integers (so messages say `10`, not `10.0`); `None` for NaN and
/// the infinities.
fn number(n: f64) -> Option<Value> {
    if !n.is_finite() {
        return None;
    }
    if n.fract() == 0.0 && n.abs() < 9.007_199_254_740_992e15 {
        return Some(Value::Number(Number::from(n as i64)));
    }
    Number::from_f64(n).map(Value::Number)
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
