//! References to JS values, and native memory a JS object owns, told to V8.

use std::cell::RefCell;
use std::mem::ManuallyDrop;
use std::ptr;

use napi::{check_status, sys, Env, Result};

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

/// A JS value held for the life of this thread's env (a Node env is one thread), set once: for a
/// `thread_local!`. Never dropped: a thread's locals outlive its env, and deleting the reference
/// then is undefined behaviour.
pub struct EnvSlot(RefCell<Option<ManuallyDrop<JsRef>>>);

impl EnvSlot {
    pub const fn new() -> Self {
        Self(RefCell::new(None))
    }

    /// The value, if one was set.
    pub fn get(&self) -> Result<Option<sys::napi_value>> {
        self.0.borrow().as_ref().map(|r| r.get()).transpose()
    }

    /// Holds `value`, unless one is held already; returns whether it was set.
    pub fn set(&self, env: &Env, value: sys::napi_value) -> Result<bool> {
        let mut slot = self.0.borrow_mut();
        if slot.is_some() {
            return Ok(false);
        }
        *slot = Some(ManuallyDrop::new(JsRef::new(env, value)?));
        Ok(true)
    }
}
