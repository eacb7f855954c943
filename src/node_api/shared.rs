//! Numbers shared with JS: a `Float64Array` over memory Rust writes in place, so a hot call can
//! leave several results without making a JS value for each.

use std::ptr;

use napi::{check_status, sys, Env, Result};

use super::refs::JsRef;

/// `N` numbers, seen by JS as one `Float64Array` and by Rust as `[f64; N]`.
pub struct SharedFloats<const N: usize> {
    data: *mut [f64; N],
    /// Keeps the buffer alive while its owner lives.
    array: JsRef,
}

impl<const N: usize> SharedFloats<N> {
    pub fn new(env: &Env) -> Result<Self> {
        let mut data: *mut std::ffi::c_void = ptr::null_mut();
        let mut buffer = ptr::null_mut();
        check_status!(unsafe {
            sys::napi_create_arraybuffer(env.raw(), std::mem::size_of::<[f64; N]>(), &mut data, &mut buffer)
        })?;
        let mut array = ptr::null_mut();
        check_status!(unsafe {
            sys::napi_create_typedarray(env.raw(), sys::TypedarrayType::float64_array, N, buffer, 0, &mut array)
        })?;
        Ok(Self { data: data.cast(), array: JsRef::new(env, array)? })
    }

    /// The `Float64Array`.
    pub fn array(&self) -> Result<sys::napi_value> {
        self.array.get()
    }

    /// Writes into the shared numbers.
    pub fn write<R>(&self, f: impl FnOnce(&mut [f64; N]) -> R) -> R {
        // SAFETY: the buffer holds N f64s, lives as long as `array`, is never detached (only its
        // owner's JS side sees the array), and is only touched on the JS thread, by one `write`
        // at a time.
        f(unsafe { &mut *self.data })
    }
}
