//! Config changes while running: `setConfig` patches, and edits of a watched config file, which
//! the core's watcher (`config::watch`) reports from its thread through a weak threadsafe function
//! (watching never keeps Node alive).

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;

use std::sync::Arc;

use napi::threadsafe_function::ThreadsafeFunctionCallMode;
use napi::Env;

use super::super::{IntoJsResult, JsResult};
use super::state::{after_call, ArbiterBinding, Caller};
use crate::config::watch::watch_config_file;
pub use crate::link::arbiter_host::ConfigChange;
use crate::node_api as js;

/// Applies a change, or keeps the config and emits `config-rejected` (`config-file-missing` for
/// a file that went away). A bad patch also throws; a bad file edit is only logged.
pub fn apply(env: &Env, state: &Rc<RefCell<ArbiterBinding>>, change: ConfigChange) -> JsResult<()> {
    let (result, out) = state.borrow_mut().host.change_config(&change);
    after_call(env, state, out, Caller::Native)?;
    Ok(result?)
}

/// Applies every change of the file at `path` on the JS thread while the arbiter lives: the
/// watcher thread queues the change and wakes the JS thread.
pub fn watch(env: &Env, state: &Rc<RefCell<ArbiterBinding>>, path: PathBuf) -> JsResult<()> {
    let wake = js::wake_function(env, state, "onConfigFileChange", take_file_changes).js()?;
    let inbox = Arc::clone(&state.borrow().file_changes);
    let source = path.display().to_string();
    let watch = watch_config_file(path, move |change| {
        inbox.lock().unwrap_or_else(|p| p.into_inner()).push_back((change, source.clone()));
        wake.call((), ThreadsafeFunctionCallMode::NonBlocking);
    })?;
    state.borrow_mut().watch = Some(watch);
    Ok(())
}

fn take_file_changes(env: &Env, state: &Rc<RefCell<ArbiterBinding>>) {
    let changes: Vec<_> = {
        let inbox = Arc::clone(&state.borrow().file_changes);
        let mut queue = inbox.lock().unwrap_or_else(|p| p.into_inner());
        queue.drain(..).collect()
    };
    for (change, source) in changes {
        if let Err(e) = apply(env, state, ConfigChange::File(change, source)) {
            tracing::warn!(error = %e.reason, "could not apply a config file change");
        }
    }
}
