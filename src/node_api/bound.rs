//! Native functions bound to a state: plain Node-API functions whose data pointer holds a weak
//! reference to the state and the handler to call. napi's generated class methods pay for `this`
//! unwrapping and argument conversion on every call, several times the cost of a hot call's logic.

use std::ffi::c_void;
use std::ptr;
use std::rc::{Rc, Weak};

use napi::{check_status, sys, Env, JsError, Result};

use super::values::define_methods;
use super::{IntoJsResult, JsResult};
use crate::error::{ErrorCode, SidecarError};

/// Most arguments a bound function reads.
pub const MAX_ARGS: usize = 2;

/// A bound call's arguments: those passed, then `undefined` up to [`MAX_ARGS`].
pub struct Args {
    values: [sys::napi_value; MAX_ARGS],
    pub passed: usize,
}

impl std::ops::Index<usize> for Args {
    type Output = sys::napi_value;
    fn index(&self, i: usize) -> &sys::napi_value {
        &self.values[i]
    }
}

/// What a bound function does, given its state.
pub type Handler<S> = fn(&Env, &Rc<S>, &Args) -> JsResult<sys::napi_value>;

/// What a bound function's data pointer holds.
struct Bound<S> {
    state: Weak<S>,
    handler: Handler<S>,
    /// The state's JS name, for errors (`the GpuArbiter was collected`).
    owner: &'static str,
}

/// A JS function named `name` that calls `handler` with `state` while it lives (`CLOSED` once it
/// was collected). A panic becomes a JS error (`INTERNAL`); our errors are thrown with their `code`.
pub fn bound_function<S: 'static>(
    env: &Env,
    name: &str,
    owner: &'static str,
    state: Weak<S>,
    handler: Handler<S>,
) -> Result<sys::napi_value> {
    let data = Box::into_raw(Box::new(Bound { state, handler, owner }));
    let mut function = ptr::null_mut();
    check_status!(unsafe {
        sys::napi_create_function(
            env.raw(),
            name.as_ptr().cast(),
            name.len() as isize,
            Some(trampoline::<S>),
            data.cast(),
            &mut function,
        )
    })?;
    check_status!(unsafe {
        sys::napi_add_finalizer(
            env.raw(),
            function,
            data.cast(),
            Some(free_bound::<S>),
            ptr::null_mut(),
            ptr::null_mut(),
        )
    })?;
    Ok(function)
}

/// An object whose (non-enumerable) methods are these bound functions, all bound to `state`.
pub fn bound_object<S: 'static>(
    env: &Env,
    owner: &'static str,
    state: &Rc<S>,
    methods: &[(&str, Handler<S>)],
) -> Result<sys::napi_value> {
    let mut functions = Vec::with_capacity(methods.len());
    for (name, handler) in methods {
        functions.push((*name, bound_function(env, name, owner, Rc::downgrade(state), *handler)?));
    }
    let mut object = ptr::null_mut();
    check_status!(unsafe { sys::napi_create_object(env.raw(), &mut object) })?;
    define_methods(env, object, &functions)?;
    Ok(object)
}

unsafe extern "C" fn free_bound<S>(_env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
    drop(Box::from_raw(data.cast::<Bound<S>>()));
}

/// Every bound call enters here.
unsafe extern "C" fn trampoline<S>(raw_env: sys::napi_env, info: sys::napi_callback_info) -> sys::napi_value {
    let env = Env::from_raw(raw_env);
    let mut args = Args { values: [ptr::null_mut(); MAX_ARGS], passed: MAX_ARGS };
    let mut data = ptr::null_mut();
    let mut owner = "a bound function";
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> JsResult<sys::napi_value> {
        let argv = args.values.as_mut_ptr();
        check_status!(sys::napi_get_cb_info(raw_env, info, &mut args.passed, argv, ptr::null_mut(), &mut data)).js()?;
        // Node-API fills the slots of arguments not passed with `undefined`.
        let bound = &*(data as *const Bound<S>);
        owner = bound.owner;
        let state = bound
            .state
            .upgrade()
            .ok_or_else(|| SidecarError::new(ErrorCode::Closed, format!("the {owner} was collected")))?;
        (bound.handler)(&env, &state, &args)
    }))
    .unwrap_or_else(|panic| Err(SidecarError::from_panic(owner, &*panic).into()));
    match outcome {
        Ok(value) => value,
        Err(e) => {
            JsError::from(e).throw_into(raw_env);
            ptr::null_mut()
        }
    }
}
