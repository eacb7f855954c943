//! What a supervisor asks of this arbiter from Rust (startup leases, routes, on-demand standby),
//! applied on the JS thread like every arbiter call. The host decides
//! ([`crate::link::arbiter_host::ArbiterHost::apply`]); this ends the call like any other, so
//! grants to JS waiters and new deadlines reach the JS half. Answers to Rust requesters go to
//! their channels, never to the mailbox.

use std::cell::RefCell;
use std::rc::Rc;

use napi::Env;

use super::super::JsResult;
use super::state::{after_call, ArbiterBinding, Caller};
use crate::link::arbiter_calls::ArbiterCall;

pub fn apply(env: &Env, state: &Rc<RefCell<ArbiterBinding>>, call: ArbiterCall) -> JsResult<()> {
    let out = state.borrow_mut().host.apply(call);
    after_call(env, state, out, Caller::Native)
}
