//! Calls into JS with their exceptions caught, the listeners of an `onX`, wakes of the JS thread
//! from other threads, functions run on a later turn, and panics turned into errors.

use std::ptr;
use std::rc::{Rc, Weak};

use napi::threadsafe_function::ThreadsafeFunction;
use napi::{sys, Env, Result, ValueType};

use super::refs::JsRef;
use super::values::{display, global, named_property, undefined, value_type};
use super::{IntoJsResult, JsResult};
use crate::error::SidecarError;
use crate::link::attachments::Attachments;

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
        if value_type(env, listener).js()? != ValueType::Function {
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
    let Ok(undefined) = undefined(env) else { return };
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
    let drain = function(env, name, move |env| weak.upgrade().into_iter().for_each(|state| on_wake(env, &state)))?;
    drain.build_threadsafe_function::<()>().weak::<true>().callee_handled::<false>().build()
}

/// A JS function of no arguments that calls `f`, a panic in it caught as [`no_panic`] does (napi's
/// closures do not catch one); `name` shows in stacks. Every function the addon makes from a
/// closure is made here.
pub fn function<'env>(
    env: &'env Env,
    name: &'static str,
    f: impl Fn(&Env) + 'static,
) -> Result<napi::bindgen_prelude::Function<'env, (), ()>> {
    env.create_function_from_closure::<(), (), _>(name, move |ctx| {
        no_panic(name, || {
            f(ctx.env);
            Ok(())
        })
    })
}

/// A JS function (an unsubscribe or detach function) that calls `f` with the state `state` points
/// to, unless that was collected.
pub fn detach_function<'env, S: 'static>(
    env: &'env Env,
    name: &'static str,
    state: &Rc<S>,
    f: impl Fn(&Env, &S) + 'static,
) -> JsResult<napi::bindgen_prelude::Function<'env, (), ()>> {
    let weak = Rc::downgrade(state);
    function(env, name, move |env| weak.upgrade().into_iter().for_each(|state| f(env, &state))).js()
}

/// Adds `listener` to the list `list` picks in `state` and returns the function that removes it
/// (an `onX`'s unsubscribe); `changed` runs after the add and after the removal.
pub fn subscribe<'env, S: 'static>(
    env: &'env Env,
    state: &Rc<std::cell::RefCell<S>>,
    listener: sys::napi_value,
    list: fn(&mut S) -> &mut Listeners,
    changed: fn(&mut S),
) -> JsResult<napi::bindgen_prelude::Function<'env, (), ()>> {
    let id = {
        let mut s = state.borrow_mut();
        let id = list(&mut s).add(env, listener)?;
        changed(&mut s);
        id
    };
    detach_function(env, "unsubscribe", state, move |_, state| {
        let mut s = state.borrow_mut();
        list(&mut s).remove(id);
        changed(&mut s);
    })
}

/// Calls `f` on a later turn of the event loop (`setImmediate`: after pending I/O), a panic in it
/// caught as [`no_panic`] does. `name` is the JS function's name, as stacks show it.
pub fn set_immediate(env: &Env, name: &'static str, f: impl Fn(&Env) + 'static) -> Result<()> {
    let callback = function(env, name, f)?;
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
