//! JS values read through Node-API, for [`crate::link::js_json`]'s walk.

use std::ptr;

use napi::{sys, Env, ValueType};

use super::calls::take_exception;
use super::values::string_value;
use crate::link::js_json::{JsKind, JsValues};

/// The current env's values, as [`crate::link::js_json`] walks them.
pub struct NapiValues<'a>(pub &'a Env);

impl NapiValues<'_> {
    /// A failed napi call (a getter or Proxy trap that threw): its exception is cleared and
    /// becomes the reason.
    fn check(&self, status: sys::napi_status) -> std::result::Result<(), String> {
        if status == sys::Status::napi_ok {
            return Ok(());
        }
        match take_exception(self.0) {
            Some(message) => Err(format!("cannot be read: {message}")),
            None => Err(format!("cannot be read (napi status {status})")),
        }
    }
}

impl JsValues for NapiValues<'_> {
    type Value = sys::napi_value;

    fn kind(&self, value: sys::napi_value) -> std::result::Result<JsKind, String> {
        let env = self.0.raw();
        let mut kind = 0;
        self.check(unsafe { sys::napi_typeof(env, value, &mut kind) })?;
        Ok(match ValueType::from(kind) {
            ValueType::Undefined => JsKind::Undefined,
            ValueType::Null => JsKind::Null,
            ValueType::Boolean => {
                let mut b = false;
                self.check(unsafe { sys::napi_get_value_bool(env, value, &mut b) })?;
                JsKind::Boolean(b)
            }
            ValueType::Number => {
                let mut n = 0.0;
                self.check(unsafe { sys::napi_get_value_double(env, value, &mut n) })?;
                JsKind::Number(n)
            }
            ValueType::String => JsKind::String(string_value(self.0, value).map_err(|e| e.reason)?),
            ValueType::Object => {
                let mut is_array = false;
                self.check(unsafe { sys::napi_is_array(env, value, &mut is_array) })?;
                if !is_array {
                    return Ok(JsKind::Object);
                }
                let mut length = 0;
                self.check(unsafe { sys::napi_get_array_length(env, value, &mut length) })?;
                JsKind::Array(length)
            }
            ValueType::Function => JsKind::Function,
            ValueType::Symbol => JsKind::Symbol,
            ValueType::BigInt => JsKind::BigInt,
            _ => JsKind::Other,
        })
    }

    fn element(&self, array: sys::napi_value, index: u32) -> std::result::Result<sys::napi_value, String> {
        let mut item = ptr::null_mut();
        self.check(unsafe { sys::napi_get_element(self.0.raw(), array, index, &mut item) })?;
        Ok(item)
    }

    fn keys(&self, object: sys::napi_value) -> std::result::Result<Vec<(String, sys::napi_value)>, String> {
        let env = self.0.raw();
        let mut keys = ptr::null_mut();
        self.check(unsafe {
            sys::napi_get_all_property_names(
                env,
                object,
                sys::KeyCollectionMode::own_only,
                sys::KeyFilter::enumerable | sys::KeyFilter::skip_symbols,
                sys::KeyConversion::numbers_to_strings,
                &mut keys,
            )
        })?;
        let mut count = 0;
        self.check(unsafe { sys::napi_get_array_length(env, keys, &mut count) })?;
        (0..count)
            .map(|i| {
                let key = self.element(keys, i)?;
                Ok((string_value(self.0, key).map_err(|e| e.reason)?, key))
            })
            .collect()
    }

    fn property(&self, object: sys::napi_value, key: sys::napi_value) -> std::result::Result<sys::napi_value, String> {
        let mut field = ptr::null_mut();
        self.check(unsafe { sys::napi_get_property(self.0.raw(), object, key, &mut field) })?;
        Ok(field)
    }

    fn same(&self, a: sys::napi_value, b: sys::napi_value) -> std::result::Result<bool, String> {
        let mut same = false;
        self.check(unsafe { sys::napi_strict_equals(self.0.raw(), a, b, &mut same) })?;
        Ok(same)
    }
}
