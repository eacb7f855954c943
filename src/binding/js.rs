//! Small safe wrappers over raw Node-API calls the arbiter needs on its hot path: promises
//! resolved from Rust without a threadsafe function, persistent references, and calls into JS
//! whose exceptions are caught and logged instead of left pending.

use std::ffi::{CStr, CString};
use std::ptr;
use std::rc::{Rc, Weak};

use napi::bindgen_prelude::ToNapiValue;
use napi::threadsafe_function::ThreadsafeFunction;
use napi::{check_status, sys, Env, Result, ValueType};

use super::{IntoJsResult, JsResult};
use crate::error::{ErrorCode, SidecarError};
use crate::link::attachments::Attachments;

/// A reference to a JS value: strong (`new`: keeps it alive until dropped) or weak (`weak`).
///
/// A strong reference is a GC root. Held by a native object whose JS wrapper the value can reach
/// (a callback closing over its owner), it makes a cycle V8 cannot see through, and neither is
/// ever collected. Such values are held weakly here and strongly by the owner's JS side.
pub struct JsRef {
    env: sys::napi_env,
    raw: sys::napi_ref,
}

impl JsRef {
    pub fn new(env: &Env, value: sys::napi_value) -> Result<Self> {
        Self::with_count(env, value, 1)
    }

    /// A reference that does not keep `value` alive: `get_live` gives `None` once it is collected.
    pub fn weak(env: &Env, value: sys::napi_value) -> Result<Self> {
        Self::with_count(env, value, 0)
    }

    fn with_count(env: &Env, value: sys::napi_value, count: u32) -> Result<Self> {
        let mut raw = ptr::null_mut();
        check_status!(unsafe { sys::napi_create_reference(env.raw(), value, count, &mut raw) })?;
        Ok(Self { env: env.raw(), raw })
    }

    /// The value of a strong reference.
    pub fn get(&self) -> Result<sys::napi_value> {
        let mut value = ptr::null_mut();
        check_status!(unsafe { sys::napi_get_reference_value(self.env, self.raw, &mut value) })?;
        Ok(value)
    }

    /// The value, unless it was collected (only a weak reference's can be).
    pub fn get_live(&self) -> Result<Option<sys::napi_value>> {
        self.get().map(|value| (!value.is_null()).then_some(value))
    }
}

impl Drop for JsRef {
    fn drop(&mut self) {
        // Only ever dropped on the JS thread of the env that made it (the owner is !Send).
        unsafe { sys::napi_delete_reference(self.env, self.raw) };
    }
}

/// Native memory a JS object owns, told to V8 so that it counts toward when the GC runs: V8 only
/// sees the small wrapper, and without this lets thousands of dead arbiters (and the native state
/// their finalizers would free) pile up between collections.
pub struct ExternalMemory {
    env: sys::napi_env,
    bytes: i64,
}

impl ExternalMemory {
    pub fn new(env: &Env, bytes: i64) -> Result<Self> {
        let mut total = 0;
        check_status!(unsafe { sys::napi_adjust_external_memory(env.raw(), bytes, &mut total) })?;
        Ok(Self { env: env.raw(), bytes })
    }
}

impl Drop for ExternalMemory {
    fn drop(&mut self) {
        let mut total = 0;
        // Dropped on the JS thread of the env that made it (the owner is !Send).
        unsafe { sys::napi_adjust_external_memory(self.env, -self.bytes, &mut total) };
    }
}

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

/// Calls a JS function. A JS exception is cleared and returned as an error, so the caller decides
/// what to do with it (we log listener errors rather than let them break the arbiter).
pub fn call(env: &Env, recv: sys::napi_value, f: sys::napi_value, args: &[sys::napi_value]) -> Result<sys::napi_value> {
    let mut result = ptr::null_mut();
    let status = unsafe { sys::napi_call_function(env.raw(), recv, f, args.len(), args.as_ptr(), &mut result) };
    if status == sys::Status::napi_ok {
        return Ok(result);
    }
    let message = take_exception(env).unwrap_or_else(|| "JS function failed".to_string());
    Err(napi::Error::new(napi::Status::GenericFailure, message))
}

/// The pending JS exception, cleared, as `String(exception)`; `None` when none is pending or it
/// cannot be printed.
pub fn take_exception(env: &Env) -> Option<String> {
    let mut pending = false;
    unsafe { sys::napi_is_exception_pending(env.raw(), &mut pending) };
    if !pending {
        return None;
    }
    let mut exception = ptr::null_mut();
    unsafe { sys::napi_get_and_clear_last_exception(env.raw(), &mut exception) };
    let text = display(env, exception).ok();
    // A `toString` that threw in turn: clear that one too.
    unsafe { sys::napi_get_and_clear_last_exception(env.raw(), &mut exception) };
    text
}

/// `String(value)`.
pub fn display(env: &Env, value: sys::napi_value) -> Result<String> {
    let mut text = ptr::null_mut();
    check_status!(unsafe { sys::napi_coerce_to_string(env.raw(), value, &mut text) })?;
    string_value(env, text)
}

/// The JS callbacks registered with one `onX(listener)`; each is removed by the id `add` gave it.
#[derive(Default)]
pub struct Listeners {
    entries: Attachments<JsRef>,
    /// The owner's JS side keeps the listeners alive; these references are weak (see [`JsRef`]).
    held_by_js: bool,
}

impl Listeners {
    /// Listeners whose owner's JS side holds them: a listener that closes over its owner then
    /// does not keep the owner from being collected.
    pub fn held_by_js() -> Self {
        Self { held_by_js: true, ..Self::default() }
    }

    /// Keeps `listener` (`INVALID_ARGUMENT` unless it is a function) and returns its id.
    pub fn add(&mut self, env: &Env, listener: sys::napi_value) -> JsResult<u64> {
        let mut kind = 0;
        check_status!(unsafe { sys::napi_typeof(env.raw(), listener, &mut kind) }).js()?;
        if ValueType::from(kind) != ValueType::Function {
            return Err(SidecarError::invalid_argument("listener: expected a function").into());
        }
        let held = if self.held_by_js { JsRef::weak(env, listener) } else { JsRef::new(env, listener) };
        Ok(self.entries.add(held.js()?))
    }

    pub fn remove(&mut self, id: u64) {
        self.entries.remove(id);
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The listeners as they are now, to call once the owner's state is no longer borrowed (a
    /// listener may call back into it).
    pub fn current(&self) -> Vec<sys::napi_value> {
        self.entries.iter().filter_map(|l| l.get_live().ok().flatten()).collect()
    }
}

/// Calls every listener with `arg`. One that throws is logged as `owner`'s and the rest still run.
pub fn call_listeners(env: &Env, listeners: &[sys::napi_value], arg: sys::napi_value, owner: &str) {
    let Ok(undefined) = (unsafe { <()>::to_napi_value(env.raw(), ()) }) else { return };
    for listener in listeners {
        if let Err(e) = call(env, undefined, *listener, &[arg]) {
            tracing::warn!(error = %e.reason, "a {owner} listener threw");
        }
    }
}

/// Wakes the JS thread from any thread. Weak: it never keeps Node alive.
pub type WakeFn = ThreadsafeFunction<(), (), (), napi::Status, false, true>;

/// A [`WakeFn`] that runs `on_wake(env, state)` on the JS thread, unless `state` was collected
/// meanwhile. Background producers queue their work and call it; `name` shows in stack traces.
pub fn wake_function<S: 'static>(
    env: &Env,
    state: &Rc<S>,
    name: &'static str,
    on_wake: fn(&Env, &Rc<S>),
) -> Result<WakeFn> {
    let weak: Weak<S> = Rc::downgrade(state);
    let drain = env.create_function_from_closure::<(), (), _>(name, move |ctx| {
        no_panic(name, || {
            if let Some(state) = weak.upgrade() {
                on_wake(ctx.env, &state);
            }
            Ok(())
        })
    })?;
    drain.build_threadsafe_function::<()>().weak::<true>().callee_handled::<false>().build()
}

/// A JS function (an unsubscribe or detach function) that calls `f` with the state `state` points
/// to, unless that was collected.
pub fn detach_function<'env, S: 'static>(
    env: &'env Env,
    name: &str,
    state: &Rc<S>,
    f: impl Fn(&Env, &S) + 'static,
) -> JsResult<napi::bindgen_prelude::Function<'env, (), ()>> {
    let weak = Rc::downgrade(state);
    let detach = move |ctx: napi::bindgen_prelude::FunctionCallContext| {
        if let Some(state) = weak.upgrade() {
            f(ctx.env, &state);
        }
        Ok(())
    };
    env.create_function_from_closure::<(), (), _>(name, detach).js()
}

/// Calls `f` on a later turn of the event loop (`setImmediate`: after pending I/O), a panic in it
/// caught as [`no_panic`] does. `name` is the JS function's name, as stacks show it.
pub fn set_immediate(env: &Env, name: &'static str, f: impl Fn(&Env) + 'static) -> Result<()> {
    let callback = env.create_function_from_closure::<(), (), _>(name, move |ctx| {
        no_panic(name, || {
            f(ctx.env);
            Ok(())
        })
    })?;
    let global = global(env)?;
    call(env, global, named_property(env, global, "setImmediate")?, &[napi::JsValue::raw(&callback)])?;
    Ok(())
}

/// Runs `f`, turning a Rust panic into an error instead of unwinding into Node.
pub fn no_panic<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let e = SidecarError::from_panic(what, &*payload);
        Err(napi::Error::new(napi::Status::GenericFailure, e.message))
    })
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_panic_becomes_an_error_instead_of_unwinding_into_node() {
        let error = super::no_panic::<()>("test", || panic!("boom at {}", 42)).unwrap_err();
        assert_eq!(
            (error.status, error.reason.as_str()),
            (napi::Status::GenericFailure, "internal error in test: boom at 42")
        );
    }
}

thread_local! {
    /// This thread's `JSON.parse` (a Node env is one thread), looked up once. Never dropped: a
    /// thread's locals outlive its env, and deleting the reference then is undefined behaviour.
    static JSON_PARSE: std::cell::RefCell<Option<std::mem::ManuallyDrop<JsRef>>> = const { std::cell::RefCell::new(None) };
}

fn json_parse(env: &Env) -> Result<sys::napi_value> {
    if let Some(parse) = JSON_PARSE.with_borrow(|p| p.as_ref().map(|p| p.get())) {
        return parse;
    }
    let parse = named_property(env, named_property(env, global(env)?, "JSON")?, "parse")?;
    JSON_PARSE.with_borrow_mut(|p| -> Result<()> {
        *p = Some(std::mem::ManuallyDrop::new(JsRef::new(env, parse)?));
        Ok(())
    })?;
    Ok(parse)
}

/// A value's serde form as a JS value: the one way the binding hands a serde value to JS. Through
/// JSON text and `JSON.parse`, so fields keep their declaration order and every integer arrives
/// as a number (napi's serializer makes a BigInt of one above `u32::MAX`), as the generated types
/// say; a non-finite float is `null`, as in JSON.
pub fn to_js<'env, T: serde::Serialize>(env: &'env Env, value: &T) -> JsResult<napi::Unknown<'env>> {
    let text = serde_json::to_string(value).map_err(|e| SidecarError::new(ErrorCode::Internal, e.to_string()))?;
    let recv = unsafe { <() as ToNapiValue>::to_napi_value(env.raw(), ()) }.js()?;
    let parsed = call(env, recv, json_parse(env).js()?, &[string(env, &text).js()?]).js()?;
    Ok(unsafe { napi::Unknown::from_raw_unchecked(env.raw(), parsed) })
}
