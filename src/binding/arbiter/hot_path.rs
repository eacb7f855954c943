//! The arbiter's hot calls, plain native functions bound to one arbiter's state: napi's generated
//! class methods pay for `this` unwrapping and argument conversion on every call, several times
//! the cost of the lease logic. They live on an internal handle, not on the arbiter: the handle
//! goes to the JS half's `register` function (given once per thread, `bindArbiterHalf`) with the
//! arbiter it serves, and no one else can reach it.
//!
//! - `taskTypeNumber(name)`: the number a task type crosses as from then on (-1: send the text);
//! - `acquireTask(taskType, trace?)`: the common request (its task type's policy applies), the
//!   task type as its number or its text (a trace not passed is no trace);
//! - `acquireRequest(request)`: a request with any other field, read by name;
//! - `releaseLease(id)`, `leaseHeld(id)`, `tick()`, `cancelWaiter(id)`, `takeRecords()`;
//! - `bindSide(notify)`: the JS half registers itself and gets the mailbox.
//!
//! The acquires return nothing: the outcome's record, kind first, is in the mailbox with the
//! rest. `releaseLease` and `leaseHeld` return a boolean.

use std::cell::RefCell;
use std::ptr;
use std::rc::Rc;

use napi::bindgen_prelude::Unknown;
use napi::{sys, Env, JsValue, Result, ValueType};
use napi_derive::napi;

use super::super::{IntoJsResult, JsResult};
use super::mailbox::Mailbox;
use super::state::{after_call, ArbiterBinding, Caller};
use crate::arbiter::{AcquireRequest, Admission, Resolution, Trace};
use crate::error::SidecarError;
use crate::link::arbiter_mailbox;
use crate::link::arbiter_requests::{self, Field};
use crate::node_api::bound::{self, Args};
use crate::node_api::{self as js, EnvSlot, JsRef};

type Handler = bound::Handler<RefCell<ArbiterBinding>>;

/// About what an arbiter costs outside the JS heap once used: its core and config, the mailbox,
/// the bound hot functions with their finalizers and the wrapper (measured: 54 KB of RSS per
/// arbiter after an acquire and a release). Told to V8 so that dead arbiters are collected
/// before thousands pile up (`tests/arbiter-leak.test.ts`).
const NATIVE_FOOTPRINT_BYTES: i64 = 64 * 1024;

thread_local! {
    /// The JS half's `register(arbiter, handle)`, one per thread.
    static REGISTER: EnvSlot = const { EnvSlot::new() };
}

/// For the arbiter's JS half (src/js/arbiter.js), once per thread: `register(arbiter, handle)`
/// is called with every arbiter made from then on and its internal handle. A second call throws.
#[napi(catch_unwind, skip_typescript)]
pub fn bind_arbiter_half(env: &Env, register: Option<Unknown>) -> napi::Result<(), super::super::Code> {
    let register = match register {
        Some(f) if f.get_type().js()? == ValueType::Function => f,
        _ => return Err(SidecarError::invalid_argument("register: expected a function").into()),
    };
    if !REGISTER.with(|slot| slot.set(env, register.raw())).js()? {
        return Err(SidecarError::invalid_argument("register: the arbiter's JS half is bound already").into());
    }
    Ok(())
}

/// Makes the arbiter's internal handle (its hot calls and mailbox) and gives it to the JS half.
pub fn install(env: &Env, this: sys::napi_value, state: &Rc<RefCell<ArbiterBinding>>) -> Result<()> {
    {
        let mut s = state.borrow_mut();
        s.mailbox = Some(Mailbox::new(env)?);
        s.footprint = Some(js::ExternalMemory::new(env, NATIVE_FOOTPRINT_BYTES)?);
    }
    let handle = bound::bound_object(
        env,
        "GpuArbiter",
        state,
        &[
            ("taskTypeNumber", task_type_number as Handler),
            ("acquireTask", acquire_task),
            ("acquireRequest", acquire_request),
            ("releaseLease", release_lease),
            ("leaseHeld", lease_held),
            ("tick", tick),
            ("cancelWaiter", cancel_waiter),
            ("takeRecords", take_records),
            ("bindSide", bind_side),
        ],
    )?;
    let Some(register) = REGISTER.with(EnvSlot::get)? else {
        // Only the generated binding was loaded: there is no JS half to serve.
        return Ok(());
    };
    js::call(env, js::undefined(env)?, register, &[this, handle]).map(|_| ())
}

/// A number argument, read without asking its type first (one Node-API call, not two); `None`
/// when it is not a number.
fn number_arg(env: &Env, value: sys::napi_value) -> Option<f64> {
    let mut n = 0.0;
    let status = unsafe { sys::napi_get_value_double(env.raw(), value, &mut n) };
    (status == sys::Status::napi_ok).then_some(n)
}

/// A lease or waiter id from the JS half ([`arbiter_requests::id`]).
fn id_arg(env: &Env, value: sys::napi_value) -> JsResult<Option<u64>> {
    Ok(arbiter_requests::id(&field_value(env, value)?))
}

fn acquire_task(env: &Env, state: &Rc<RefCell<ArbiterBinding>>, args: &Args) -> JsResult<sys::napi_value> {
    let task_type = match number_arg(env, args[0]) {
        Some(number) => state.borrow_mut().host.task_type_named(number as u32).ok_or_else(|| {
            SidecarError::invalid_argument(format!("request.taskType: no task type has the number {number}"))
        })?,
        None if js::value_type(env, args[0]).js()? == ValueType::String => {
            js::with_str(env, args[0], |text| state.borrow_mut().host.intern_task_type(text)).js()?
        }
        None => return Err(SidecarError::invalid_argument("request.taskType: expected a string").into()),
    };
    let trace = if args.passed > 1 { read_trace(env, args[1])? } else { Trace::default() };
    acquire(env, state, AcquireRequest::of(task_type, trace))
}

fn task_type_number(env: &Env, state: &Rc<RefCell<ArbiterBinding>>, args: &Args) -> JsResult<sys::napi_value> {
    if js::value_type(env, args[0]).js()? != ValueType::String {
        return Err(SidecarError::invalid_argument("request.taskType: expected a string").into());
    }
    let number = js::with_str(env, args[0], |text| state.borrow_mut().host.task_type_number(text)).js()?;
    js::number(env, number.map_or(-1.0, f64::from)).js()
}

fn acquire_request(env: &Env, state: &Rc<RefCell<ArbiterBinding>>, args: &Args) -> JsResult<sys::napi_value> {
    let request = read_request(env, args[0])?;
    acquire(env, state, request)
}

// Inlined: the request is then built where the core takes it, not copied on the way.
#[inline(always)]
fn acquire(env: &Env, state: &Rc<RefCell<ArbiterBinding>>, request: AcquireRequest) -> JsResult<sys::napi_value> {
    let admission = {
        let mut s = state.borrow_mut();
        let now = s.host.now();
        s.host.core.acquire(request, now)?
    };
    after_call(env, state, Vec::new(), Caller::Js)?;
    let s = state.borrow();
    s.mailbox.as_ref().expect("made at install").write(|slots| match &admission {
        Admission::Queued(id) => arbiter_mailbox::write_queued(slots, *id),
        Admission::Settled(outcome) => {
            let id = match outcome {
                crate::arbiter::Outcome::Acquired(g) => g.lease_id,
                crate::arbiter::Outcome::NotAcquired { .. } => 0,
            };
            arbiter_mailbox::write_outcome(slots, id, outcome, |at| s.host.clock.epoch_ms(at))
        }
    });
    // Nothing: JS reads the outcome's kind from the mailbox (no number made to return it).
    Ok(ptr::null_mut())
}

fn release_lease(env: &Env, state: &Rc<RefCell<ArbiterBinding>>, args: &Args) -> JsResult<sys::napi_value> {
    let (released, out) = release_value(env, state, args[0])?;
    after_call(env, state, out, Caller::Js)?;
    js::boolean(env, released).js()
}

/// Releases the lease a JS value names ([`arbiter_requests::released_lease`]).
pub fn release_value(
    env: &Env,
    state: &Rc<RefCell<ArbiterBinding>>,
    value: sys::napi_value,
) -> JsResult<(bool, Vec<Resolution>)> {
    let field = match number_arg(env, value) {
        Some(n) => Field::Number(n),
        None => field_value(env, value)?,
    };
    let Some(id) = arbiter_requests::released_lease(&field) else { return Ok((false, Vec::new())) };
    let (released, out) = state.borrow_mut().host.release(id);
    if !released {
        tracing::debug!(lease_id = id, "release of an unknown, released or revoked lease: ignored");
    }
    Ok((released, out))
}

fn lease_held(env: &Env, state: &Rc<RefCell<ArbiterBinding>>, args: &Args) -> JsResult<sys::napi_value> {
    let held = id_arg(env, args[0])?.is_some_and(|id| state.borrow().host.core.holds_lease(id));
    js::boolean(env, held).js()
}

fn tick(env: &Env, state: &Rc<RefCell<ArbiterBinding>>, _args: &Args) -> JsResult<sys::napi_value> {
    let out = {
        let mut s = state.borrow_mut();
        let mut out = s.host.lend_resolutions();
        let now = s.host.now();
        s.host.core.tick(now, &mut out);
        out
    };
    after_call(env, state, out, Caller::Js)?;
    js::undefined(env).js()
}

fn cancel_waiter(env: &Env, state: &Rc<RefCell<ArbiterBinding>>, args: &Args) -> JsResult<sys::napi_value> {
    let Some(id) = id_arg(env, args[0])? else { return js::undefined(env).js() };
    let resolution = {
        let mut s = state.borrow_mut();
        let now = s.host.now();
        s.host.core.cancel(id, now)
    };
    after_call(env, state, resolution.into_iter().collect(), Caller::Js)?;
    js::undefined(env).js()
}

fn take_records(env: &Env, state: &Rc<RefCell<ArbiterBinding>>, _args: &Args) -> JsResult<sys::napi_value> {
    state.borrow_mut().publish();
    js::undefined(env).js()
}

fn bind_side(env: &Env, state: &Rc<RefCell<ArbiterBinding>>, args: &Args) -> JsResult<sys::napi_value> {
    if js::value_type(env, args[0]).js()? != ValueType::Function {
        return Err(SidecarError::invalid_argument("notify: expected a function").into());
    }
    let mut s = state.borrow_mut();
    // Weak: the JS half holds its notify function, and it reaches this arbiter's JS object.
    s.notify = Some(JsRef::weak(env, args[0]).js()?);
    s.host.js_half_bound = true;
    s.publish();
    s.mailbox.as_ref().expect("made at install").array().js()
}

/// A trace is diagnostics: a field of another type is converted (a numeric `jobId`, a string
/// `utteranceIndex`) or left out, never a reason to refuse the request.
fn read_trace(env: &Env, trace: sys::napi_value) -> JsResult<Trace> {
    if js::value_type(env, trace).js()? != ValueType::Object {
        return Ok(Trace::default());
    }
    let text = |name: &str| -> JsResult<Option<String>> {
        let v = js::named_property(env, trace, name).js()?;
        Ok(match js::value_type(env, v).js()? {
            ValueType::String => Some(js::string_value(env, v).js()?),
            ValueType::Number | ValueType::Boolean | ValueType::BigInt => Some(js::display(env, v).js()?),
            _ => None,
        })
    };
    let utterance_index = arbiter_requests::utterance_index(&field(env, trace, "utteranceIndex")?);
    Ok(Trace { job_id: text("jobId")?, session_id: text("sessionId")?, utterance_index, stage: text("stage")? })
}

/// A full request object, each field checked ([`arbiter_requests::read_request`]).
fn read_request(env: &Env, request: sys::napi_value) -> JsResult<AcquireRequest> {
    if js::value_type(env, request).js()? != ValueType::Object {
        return Err(SidecarError::invalid_argument("request: expected an object with a taskType").into());
    }
    let trace = read_trace(env, js::named_property(env, request, "trace").js()?)?;
    arbiter_requests::read_request(|name| field(env, request, name), trace)
}

/// One field of a request object, as [`arbiter_requests`] reads it.
fn field(env: &Env, object: sys::napi_value, name: &str) -> JsResult<Field> {
    field_value(env, js::named_property(env, object, name).js()?)
}

fn field_value(env: &Env, v: sys::napi_value) -> JsResult<Field> {
    Ok(match js::value_type(env, v).js()? {
        ValueType::Undefined | ValueType::Null => Field::Absent,
        ValueType::Number => Field::Number(js::number_value(env, v).js()?),
        ValueType::String => Field::Text(js::string_value(env, v).js()?),
        _ => Field::Other,
    })
}
