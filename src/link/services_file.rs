//! A node config file as a supervisor's source: its `services` section read with the file's
//! folder as the base of `manifests` paths, and, when watched, each edit of that section applied
//! as a run-time update ([`crate::services::Supervisor::apply_section`]). An edit that cannot be
//! used keeps what runs and says why in the log.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Weak};

use crate::config::read_config_text;
use crate::config::watch::{watch_config_file, ConfigFileChange, ConfigFileWatch};
use crate::error::{SidecarError, SidecarResult};
use crate::services::{ServicesSource, Supervisor};

/// Runs a future on the addon's runtime (the binding passes napi's `spawn`).
pub type Spawn = Arc<dyn Fn(Pin<Box<dyn Future<Output = ()> + Send>>) + Send + Sync>;

/// The `services` section of the node config text from `source` (a file path), with its folder.
pub fn services_source(text: &str, source: &Path) -> SidecarResult<ServicesSource> {
    let name = source.display();
    let root = crate::node_config::parse_root(text, &name.to_string())?;
    let Some(section) = root.get("services") else {
        return Err(SidecarError::invalid_config(format!("{name}: has no \"services\" section")));
    };
    let base_dir = match source.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base_dir = std::path::absolute(&base_dir).unwrap_or(base_dir);
    Ok(ServicesSource { section: section.clone(), base_dir })
}

/// Reads the node config file at `path` as a supervisor's source.
pub fn load_services_source(path: &Path) -> SidecarResult<ServicesSource> {
    services_source(&read_config_text(path)?, path)
}

/// Applies every edit of the file's `services` section to `supervisor` while it lives.
pub fn watch_services_file(
    path: PathBuf,
    supervisor: Weak<Supervisor>,
    spawn: Spawn,
) -> SidecarResult<ConfigFileWatch> {
    let source = path.clone();
    watch_config_file(path, move |change| {
        let section = match change {
            ConfigFileChange::Edited(text) => match services_source(&text, &source) {
                Ok(read) => read.section,
                Err(e) => return rejected(&source, &e),
            },
            ConfigFileChange::Unusable(e) => return rejected(&source, &e),
            ConfigFileChange::Missing => {
                tracing::warn!(path = %source.display(), "the watched config file is gone; the services stay as they are");
                return;
            }
        };
        let Some(supervisor) = supervisor.upgrade() else { return };
        let path = source.clone();
        spawn(Box::pin(async move {
            match supervisor.apply_section(section).await {
                Ok(done) => {
                    let u = &done.update;
                    tracing::info!(
                        path = %path.display(),
                        added = %u.added.join(", "),
                        changed = %u.changed.join(", "),
                        removed = %u.removed.join(", "),
                        "services updated from the config file"
                    );
                }
                Err(e) => rejected(&path, &e),
            }
        }));
    })
}

fn rejected(path: &Path, error: &SidecarError) {
    tracing::warn!(
        path = %path.display(),
        code = error.code.as_str(),
        error = %error.message,
        "services section edit rejected; the services stay as they are"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_and_the_files_folder_or_why_not() {
        let read = services_source(r#"{"services": {"manifests": ["services"]}}"#, Path::new("/etc/node/config.json"))
            .unwrap();
        assert_eq!(read.section, serde_json::json!({"manifests": ["services"]}));
        assert_eq!(read.base_dir, Path::new("/etc/node"));
        let error = services_source("{}", Path::new("/etc/node/config.json")).unwrap_err();
        assert_eq!(error.message, "/etc/node/config.json: has no \"services\" section");
        assert!(services_source("{", Path::new("c.json")).unwrap_err().message.starts_with("c.json: not valid JSON"));
    }
}
