//! Making and reading JS values with one Node-API call each, and a serde value as JS.

use std::ffi::{CStr, CString};
use std::ptr;

use napi::bindgen_prelude::ToNapiValue;
use napi::{check_status, sys, Env, Result, ValueType};

use super::calls::call;
use super::refs::EnvSlot;
use super::{IntoJsResult, JsResult};
use crate::error::{ErrorCode, SidecarError};

pub fn named_property(env: &Env, object: sys::napi_value, name: &str) -> Result<sys::napi_value> {
    let key = CString::new(name).expect("property names have no NUL");
    let mut value = ptr::null_mut();
    check_status!(unsafe { sys::napi_get_named_property(env.raw(), object, key.as_ptr(), &mut value) })?;
    Ok(value)
}

pub fn global(env: &Env) -> Result<sys::napi_value> {
    let mut value = ptr::null_mut();
    check_status!(unsafe { sys::napi_get_global(env.raw(), &mut value) })?;
    Ok(value)
}

pub fn string(env: &Env, s: &str) -> Result<sys::napi_value> {
    let mut value = ptr::null_mut();
    check_status!(unsafe { sys::napi_create_string_utf8(env.raw(), s.as_ptr().cast(), s.len() as isize, &mut value) })?;
    Ok(value)
}

pub fn number(env: &Env, n: f64) -> Result<sys::napi_value> {
    let mut value = ptr::null_mut();
    check_status!(unsafe { sys::napi_create_double(env.raw(), n, &mut value) })?;
    Ok(value)
}

/// `String(value)`.
pub fn display(env: &Env, value: sys::napi_value) -> Result<String> {
    let mut text = ptr::null_mut();
    check_status!(unsafe { sys::napi_coerce_to_string(env.raw(), value, &mut text) })?;
    string_value(env, text)
}

/// The `undefined` value.
pub fn undefined(env: &Env) -> Result<sys::napi_value> {
    unsafe { <()>::to_napi_value(env.raw(), ()) }
}

/// Defines non-enumerable, writable, configurable methods on an object.
pub fn define_methods(env: &Env, object: sys::napi_value, methods: &[(&str, sys::napi_value)]) -> Result<()> {
    let attributes = sys::PropertyAttributes::writable | sys::PropertyAttributes::configurable;
    let mut descriptors = Vec::with_capacity(methods.len());
    for (name, function) in methods {
        descriptors.push(property(ptr::null(), string(env, name)?, *function, attributes));
    }
    check_status!(unsafe { sys::napi_define_properties(env.raw(), object, descriptors.len(), descriptors.as_ptr()) })
}

/// A plain object with these fields (enumerable, as an object literal's), made in two Node-API
/// calls: for values built per event, where setting each field costs a call of its own.
pub fn object(env: &Env, fields: &[(&CStr, sys::napi_value)]) -> Result<sys::napi_value> {
    let attributes =
        sys::PropertyAttributes::writable | sys::PropertyAttributes::enumerable | sys::PropertyAttributes::configurable;
    let descriptors: Vec<_> =
        fields.iter().map(|(name, value)| property(name.as_ptr(), ptr::null_mut(), *value, attributes)).collect();
    let mut object = ptr::null_mut();
    check_status!(unsafe { sys::napi_create_object(env.raw(), &mut object) })?;
    check_status!(unsafe { sys::napi_define_properties(env.raw(), object, descriptors.len(), descriptors.as_ptr()) })?;
    Ok(object)
}

/// A data property named by `utf8name` or, if that is null, by `name`.
fn property(
    utf8name: *const std::ffi::c_char,
    name: sys::napi_value,
    value: sys::napi_value,
    attributes: sys::napi_property_attributes,
) -> sys::napi_property_descriptor {
    sys::napi_property_descriptor {
        utf8name,
        name,
        method: None,
        getter: None,
        setter: None,
        value,
        attributes,
        data: ptr::null_mut(),
    }
}

/// Runs `f` on a JS string's text, copied through a small stack buffer when it is short (task
/// types, GPU keys, trace ids), so reading it allocates nothing.
pub fn with_str<R>(env: &Env, value: sys::napi_value, f: impl FnOnce(&str) -> R) -> Result<R> {
    let mut buf = [0u8; 64];
    let mut len = 0;
    check_status!(unsafe {
        sys::napi_get_value_string_utf8(env.raw(), value, buf.as_mut_ptr().cast(), buf.len(), &mut len)
    })?;
    if len < buf.len() - 1 {
        // Node-API writes UTF-8, and stops short of splitting a character.
        return Ok(f(&String::from_utf8_lossy(&buf[..len])));
    }
    check_status!(unsafe { sys::napi_get_value_string_utf8(env.raw(), value, ptr::null_mut(), 0, &mut len) })?;
    let mut long = vec![0u8; len + 1];
    check_status!(unsafe {
        sys::napi_get_value_string_utf8(env.raw(), value, long.as_mut_ptr().cast(), long.len(), &mut len)
    })?;
    long.truncate(len);
    Ok(f(&String::from_utf8_lossy(&long)))
}

/// A JS string's text.
pub fn string_value(env: &Env, value: sys::napi_value) -> Result<String> {
    with_str(env, value, str::to_string)
}

pub fn value_type(env: &Env, value: sys::napi_value) -> Result<ValueType> {
    let mut t = 0;
    check_status!(unsafe { sys::napi_typeof(env.raw(), value, &mut t) })?;
    Ok(ValueType::from(t))
}

pub fn number_value(env: &Env, value: sys::napi_value) -> Result<f64> {
    let mut n = 0.0;
    check_status!(unsafe { sys::napi_get_value_double(env.raw(), value, &mut n) })?;
    Ok(n)
}

pub fn boolean(env: &Env, b: bool) -> Result<sys::napi_value> {
    let mut value = ptr::null_mut();
    check_status!(unsafe { sys::napi_get_boolean(env.raw(), b, &mut value) })?;
    Ok(value)
}

thread_local! {
    /// This thread's `JSON.parse`, looked up once.
    static JSON_PARSE: EnvSlot = const { EnvSlot::new() };
}

fn json_parse(env: &Env) -> Result<sys::napi_value> {
    if let Some(parse) = JSON_PARSE.with(EnvSlot::get)? {
        return Ok(parse);
    }
    let parse = named_property(env, named_property(env, global(env)?, "JSON")?, "parse")?;
    JSON_PARSE.with(|slot| slot.set(env, parse))?;
    Ok(parse)
}

/// A value's serde form as a JS value: the one way the binding hands a serde value to JS. Through
/// JSON text and `JSON.parse`, so fields keep their declaration order and every integer arrives
/// as a number (napi's serializer makes a BigInt of one above `u32::MAX`), as the generated types
/// say; a non-finite float is `null`, as in JSON.
pub fn to_js<'env, T: serde::Serialize>(env: &'env Env, value: &T) -> JsResult<napi::Unknown<'env>> {
    let text = serde_json::to_string(value).map_err(|e| SidecarError::new(ErrorCode::Internal, e.to_string()))?;
    let parsed = call(env, undefined(env).js()?, json_parse(env).js()?, &[string(env, &text).js()?]).js()?;
    Ok(unsafe { napi::Unknown::from_raw_unchecked(env.raw(), parsed) })
}
