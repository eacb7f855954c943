//! Watching the node config file for edits made while the app runs.
//!
//! Editors save in many ways: in place, by writing a temporary file and renaming it over the old
//! one, or by deleting and re-creating it; operators also remove and restore whole folders. So the
//! watch is on the file's folder (notify: inotify / FSEvents / ReadDirectoryChangesW), and a slow
//! poll of the file's metadata backs it up: it notices a file that comes back after its folder was
//! removed (which ends an inotify watch silently) and re-arms the folder watch.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, SystemTime};

use notify::Watcher;

use super::read_config_text;
use serde_json::Value;

use crate::error::{ErrorCode, SidecarError, SidecarResult};

/// Bursts of change notices from one save are folded into one reading.
const SETTLE: Duration = Duration::from_millis(50);
/// How often the file's metadata is checked when no change notice comes.
const POLL: Duration = Duration::from_millis(500);

/// What happened to the watched file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigFileChange {
    /// The file's new text.
    Edited(String),
    /// The file changed but cannot be used as text (not UTF-8, too large, not a regular file).
    Unusable(SidecarError),
    /// The file (or its folder) is gone; the last good config stays in force.
    Missing,
}

/// `fromFile`'s `{ watch }` (absent: no watching), for `GpuArbiter` and `ServiceSupervisor` alike.
pub fn watch_option(options: Option<&Value>) -> SidecarResult<bool> {
    match options.and_then(|o| o.get("watch")) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(SidecarError::invalid_argument("options.watch: expected a boolean")),
    }
}

/// Keeps the watch alive; dropping it stops the watcher thread.
pub struct ConfigFileWatch {
    _stop: mpsc::Sender<()>,
}

/// Watches `path` and calls `on_change` (on the watcher's own thread) after each change.
pub fn watch_config_file(
    path: PathBuf,
    on_change: impl Fn(ConfigFileChange) + Send + 'static,
) -> SidecarResult<ConfigFileWatch> {
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (notice_tx, notices) = mpsc::channel::<()>();
    let file_name = path.file_name().map(|n| n.to_os_string());
    let folder_watcher = move || -> notify::Result<notify::RecommendedWatcher> {
        let tx = notice_tx.clone();
        let name = file_name.clone();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let touches_file = match &event {
                Ok(e) => e.paths.iter().any(|p| p.file_name().map(|n| n.to_os_string()) == name),
                Err(_) => true,
            };
            if touches_file {
                let _ = tx.send(());
            }
        })?;
        watcher.watch(&folder, notify::RecursiveMode::NonRecursive)?;
        Ok(watcher)
    };
    let first = folder_watcher()
        .map_err(|e| SidecarError::new(ErrorCode::Io, format!("cannot watch {}: {e}", path.display())))?;
    let (stop, stopped) = mpsc::channel::<()>();
    // Taken before returning, so an edit right after `watch_config_file` is seen as a change.
    let mut seen = fingerprint(&path);
    std::thread::Builder::new()
        .name("gpu-sidecar-config-watch".into())
        .spawn(move || {
            let mut watcher = Some(first);
            loop {
                match notices.recv_timeout(POLL) {
                    Ok(()) => {
                        std::thread::sleep(SETTLE);
                        while notices.try_recv().is_ok() {}
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                if !matches!(stopped.try_recv(), Err(mpsc::TryRecvError::Empty)) {
                    return;
                }
                let now = fingerprint(&path);
                if now == seen {
                    continue;
                }
                seen = now;
                if seen.is_none() {
                    watcher = None;
                    on_change(ConfigFileChange::Missing);
                    continue;
                }
                if watcher.is_none() {
                    // The folder came back: watch it again.
                    watcher = folder_watcher().ok();
                }
                on_change(match read_config_text(&path) {
                    Ok(text) => ConfigFileChange::Edited(text),
                    Err(e) => ConfigFileChange::Unusable(e),
                });
            }
        })
        .map_err(|e| SidecarError::new(ErrorCode::Io, format!("cannot start the config watcher: {e}")))?;
    Ok(ConfigFileWatch { _stop: stop })
}

/// What identifies a version of the file: `None` while it does not exist.
fn fingerprint(path: &Path) -> Option<(u64, Option<SystemTime>, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some((meta.len(), meta.modified().ok(), inode))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    #[test]
    fn the_watch_option_is_a_boolean_or_absent() {
        use serde_json::json;
        assert!(watch_option(Some(&json!({"watch": true}))).unwrap());
        assert!(!watch_option(None).unwrap());
        assert!(!watch_option(Some(&json!({"watch": null}))).unwrap());
        assert_eq!(watch_option(Some(&json!({"watch": 1}))).unwrap_err().message, "options.watch: expected a boolean");
    }

    fn wait_for(changes: &Arc<Mutex<Vec<ConfigFileChange>>>, what: impl Fn(&ConfigFileChange) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if changes.lock().unwrap().iter().any(&what) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no such change: {:?}", changes.lock().unwrap());
    }

    #[test]
    fn follows_edits_a_removed_folder_and_its_return() {
        let dir = std::env::temp_dir().join(format!("gpu-sidecar-watch-{}", std::process::id()));
        let sub = dir.join("cfg");
        std::fs::create_dir_all(&sub).unwrap();
        let file = sub.join("node.json");
        std::fs::write(&file, "{}").unwrap();
        let changes = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&changes);
        let _watch = watch_config_file(file.clone(), move |c| sink.lock().unwrap().push(c)).unwrap();
        std::fs::write(&file, "{\"gpuArbiter\":{}}").unwrap();
        wait_for(&changes, |c| *c == ConfigFileChange::Edited("{\"gpuArbiter\":{}}".into()));
        std::fs::remove_dir_all(&sub).unwrap();
        wait_for(&changes, |c| *c == ConfigFileChange::Missing);
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(&file, "{\"back\":1}").unwrap();
        wait_for(&changes, |c| *c == ConfigFileChange::Edited("{\"back\":1}".into()));
        std::fs::write(&file, b"\xff\xfe").unwrap();
        wait_for(&changes, |c| matches!(c, ConfigFileChange::Unusable(_)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
