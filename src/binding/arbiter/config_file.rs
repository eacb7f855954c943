//! Config changes while running: `setConfig` patches, and edits of a watched config file, which
//! the core's watcher (`config::watch`) reports from its thread through a weak threadsafe function
//! (watching never keeps Node alive).

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;

use std::sync::Arc;

use napi::threadsafe_function::ThreadsafeFunctionCallMode;
use napi::Env;

use super::super::js;
use super::super::{IntoJsResult, JsResult};
use super::state::{after_call, Caller, State};
use crate::config::watch::{watch_config_file, ConfigFileChange};
use crate::node_config as config;

pub enum ConfigChange {
    Patch(serde_json::Value),
    File(ConfigFileChange, String),
}

/// Applies a change, or keeps the config and emits `config-rejected` (`config-file-missing` for
/// a file that went away). A bad patch also throws; a bad file edit is only logged.
pub fn apply(env: &Env, state: &Rc<RefCell<State>>, change: ConfigChange) -> JsResult<()> {
    let mut warnings = vec![];
    let mut out = Vec::new();
    let result = {
        let mut s = state.borrow_mut();
        let now = s.clock.now();
        let parsed = match &change {
            ConfigChange::Patch(patch) => s.core.config().patched(patch, &mut warnings),
            ConfigChange::File(ConfigFileChange::Edited(text), source) => {
                config::parse_node_config(text, source).map(|node| {
                    warnings = node.warnings;
                    node.gpu_arbiter
                })
            }
            ConfigChange::File(ConfigFileChange::Unusable(e), _) => Err(e.clone()),
            ConfigChange::File(ConfigFileChange::Missing, source) => {
                tracing::warn!(path = %source, "the watched config file is gone; keeping the last good config");
                s.core.note_config_file_missing(now);
                drop(s);
                return after_call(env, state, out, Caller::Native);
            }
        };
        let applied = parsed.and_then(|cfg| s.core.set_config(cfg, now, &mut out));
        match &applied {
            Ok(()) => s.config_generation += 1,
            Err(e) => s.core.note_config_rejected(e, now),
        }
        applied
    };
    for w in &warnings {
        tracing::warn!("{w}");
    }
    after_call(env, state, out, Caller::Native)?;
    match (result, change) {
        (Ok(()), _) => Ok(()),
        (Err(e), ConfigChange::Patch(_)) => Err(e.into()),
        (Err(e), ConfigChange::File(..)) => {
            tracing::warn!(error = %e.message, "config file edit rejected; keeping the last good config");
            Ok(())
        }
    }
}

/// Applies every change of the file at `path` on the JS thread while the arbiter lives: the
/// watcher thread queues the change and wakes the JS thread.
pub fn watch(env: &Env, state: &Rc<RefCell<State>>, path: PathBuf) -> JsResult<()> {
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

fn take_file_changes(env: &Env, state: &Rc<RefCell<State>>) {
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
