//! The arbiter binding's state around the host ([`crate::link::arbiter_host`]), and how a change
//! reaches JS: resolutions and revocations go to the mailbox, events to the listeners, and, when
//! the change did not come from a hot call (which reads the mailbox on return), the JS half is
//! told to look.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use napi::{Env, JsValue};

use super::super::{IntoJsResult, JsResult};
use super::mailbox::Mailbox;
use crate::arbiter::{ArbiterConfig, Resolution};
use crate::config::watch::{ConfigFileChange, ConfigFileWatch};
use crate::link::arbiter_host::ArbiterHost;
use crate::link::arbiter_mailbox;
use crate::link::arbiter_views::{event_view, GpuArbiterEvent};
use crate::node_api::{self as js, ExternalMemory, JsRef, Listeners};

pub struct ArbiterBinding {
    pub host: ArbiterHost,
    /// Shared with the JS half; made with the first hot call's env (see `hot_path::install`).
    pub mailbox: Option<Mailbox>,
    /// This arbiter's native footprint, as V8 is told it (see `ExternalMemory`).
    pub footprint: Option<ExternalMemory>,
    /// The JS half's "look at the mailbox" function, once it has bound itself. Weak: the JS half
    /// holds it (a strong reference would keep the arbiter from ever being collected).
    pub notify: Option<JsRef>,
    pub listeners: Listeners,
    pub watch: Option<ConfigFileWatch>,
    /// Changes of the watched config file, queued by the watcher thread for the JS thread.
    pub file_changes: Arc<Mutex<VecDeque<(ConfigFileChange, String)>>>,
}

/// Who made the change: a hot call's JS caller reads the mailbox itself; anything else (a
/// slow-path method, a telemetry sample, a config file edit) must tell the JS half.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Js,
    Native,
}

impl ArbiterBinding {
    pub fn new(config: ArbiterConfig) -> Self {
        Self {
            host: ArbiterHost::new(config),
            mailbox: None,
            footprint: None,
            notify: None,
            listeners: Listeners::held_by_js(),
            watch: None,
            file_changes: Arc::default(),
        }
    }

    /// Writes the header and the next batch of records to the mailbox.
    pub fn publish(&mut self) {
        let (Some(header), Some(mailbox)) = (self.host.end_call(self.mailbox.is_some()), &self.mailbox) else { return };
        let (clock, outbox) = (&self.host.clock, &mut self.host.outbox);
        mailbox.write(|slots| {
            arbiter_mailbox::write_header(slots, &header);
            arbiter_mailbox::write_records(slots, outbox, |at| clock.epoch_ms(at));
        });
    }
}

/// Ends every call that changed the core: routes its resolutions, starts what was demanded,
/// delivers events (after every borrow is released, so a listener may call back into the
/// arbiter), publishes to the mailbox, and tells the JS half when the change did not come from it.
pub fn after_call(
    env: &Env,
    state: &Rc<RefCell<ArbiterBinding>>,
    out: Vec<Resolution>,
    caller: Caller,
) -> JsResult<()> {
    let events = {
        let mut s = state.borrow_mut();
        if caller == Caller::Js && s.host.quiet(&out) {
            // The common hot call: nothing to route or tell, only the header to publish.
            s.host.recycle(out);
            s.publish();
            return Ok(());
        }
        s.host.collect(out);
        s.host.dispatch_demands();
        s.host.take_events().map(|events| {
            let values: Vec<GpuArbiterEvent> = events.into_iter().map(|e| event_view(&s.host.clock, e)).collect();
            (values, s.listeners.current())
        })
    };
    if let Some((events, listeners)) = events {
        for event in events {
            if let Ok(value) = js::to_js(env, &event) {
                js::call_listeners(env, &listeners, value.raw(), "GpuArbiter");
            }
        }
    }
    let notify = {
        let mut s = state.borrow_mut();
        s.publish();
        match (&s.notify, caller) {
            (Some(f), Caller::Native) => f.get_live().js()?,
            _ => None,
        }
    };
    if let Some(f) = notify {
        if let Err(e) = js::call(env, js::undefined(env).js()?, f, &[]) {
            tracing::warn!(error = %e.reason, "the arbiter's JS half failed to take its records");
        }
    }
    Ok(())
}
