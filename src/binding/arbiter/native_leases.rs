//! Leases asked for by other parts of the addon (a service's startup lease), straight from Rust:
//! no JS promise and no trip through `arbiter.acquire`. They run on the JS thread like every
//! arbiter call (the services binding is woken there), and their answers go to a channel instead
//! of the mailbox, so the JS half never sees them.

use std::cell::RefCell;
use std::rc::Rc;

use napi::Env;
use tokio::sync::oneshot;

use super::super::JsResult;
use super::state::{after_call, Caller, State};
use crate::arbiter::{AcquireRequest, Admission, LeaseId, Outcome, MICROS_PER_MS};

/// How a native request ended: its lease id, or why it was not granted (`SKIPPED (TIMEOUT)`, or
/// the error that refused the request).
pub type NativeReply = oneshot::Sender<Result<LeaseId, String>>;

/// The refusal's text for the requester.
pub fn refusal(outcome: &Outcome) -> String {
    match outcome {
        Outcome::NotAcquired { status, reason } => format!("{} ({})", status.as_str(), reason.as_str()),
        Outcome::Acquired(_) => "granted".to_string(),
    }
}

/// Asks the arbiter for a lease on behalf of Rust code; `reply` hears the answer, now or when a
/// later call settles the request. A request the arbiter refuses to take (closed, unknown GPU)
/// is answered with its error. A lease granted after its requester dropped `reply` is released
/// at once.
pub fn acquire(env: &Env, state: &Rc<RefCell<State>>, request: AcquireRequest, reply: NativeReply) -> JsResult<()> {
    let admission = {
        let mut s = state.borrow_mut();
        let now = s.now();
        s.core.acquire(request, now)
    };
    let admission = match admission {
        Ok(admission) => admission,
        Err(e) => {
            let _ = reply.send(Err(e.message));
            return Ok(());
        }
    };
    match admission {
        Admission::Settled(Outcome::Acquired(grant)) => {
            if reply.send(Ok(grant.lease_id)).is_err() {
                // Nobody waits for it any more (the start was stopped).
                return release(env, state, grant.lease_id).map(|_| ());
            }
        }
        Admission::Settled(refused) => {
            let _ = reply.send(Err(refusal(&refused)));
        }
        Admission::Queued(waiter) => {
            state.borrow_mut().native_waiters.insert(waiter, reply);
        }
    }
    // The new deadline (or grant) must reach the JS half's timer.
    after_call(env, state, Vec::new(), Caller::Native)
}

/// Gives back a lease `acquire` granted. Returns whether it was still held.
pub fn release(env: &Env, state: &Rc<RefCell<State>>, lease_id: LeaseId) -> JsResult<bool> {
    let (released, out) = {
        let mut s = state.borrow_mut();
        let mut out = s.lend_resolutions();
        let now = s.now();
        (s.core.release(lease_id, now, &mut out), out)
    };
    after_call(env, state, out, Caller::Native)?;
    Ok(released)
}

/// Puts on-demand `task_types` on standby (`Some`: their service is not loaded; requests wait up
/// to that many ms longer and the first one asks for it) or off it (`None`: it is ready).
pub fn set_standby(
    env: &Env,
    state: &Rc<RefCell<State>>,
    task_types: &[String],
    load_allowance_ms: Option<u64>,
) -> JsResult<()> {
    let out = {
        let mut s = state.borrow_mut();
        let mut out = s.lend_resolutions();
        let now = s.now();
        let allowance = load_allowance_ms.map(|ms| ms.saturating_mul(MICROS_PER_MS));
        for task_type in task_types {
            s.core.set_task_standby(task_type, allowance, now, &mut out);
        }
        out
    };
    after_call(env, state, out, Caller::Native)
}

/// Settles what waits for `task_types` with `SERVICE_UNAVAILABLE` (their service did not start).
pub fn fail_task_types(env: &Env, state: &Rc<RefCell<State>>, task_types: &[String]) -> JsResult<()> {
    let out = {
        let mut s = state.borrow_mut();
        let mut out = s.lend_resolutions();
        let now = s.now();
        for task_type in task_types {
            s.core.fail_task_type(task_type, now, &mut out);
        }
        out
    };
    after_call(env, state, out, Caller::Native)
}
