//! The host-death watchdog: kills every service process group, grandchildren included, when the
//! host dies, even by SIGKILL.
//!
//! `PR_SET_PDEATHSIG` reaches only the service itself; what it forked (multiprocessing workers
//! holding GPU memory) would outlive the host. So each supervisor starts one small `/bin/sh`
//! process (no cgroups needed, portable to macOS) that reads the service group ids from a pipe
//! whose write end only the host holds (Rust opens pipes close-on-exec, so services never
//! inherit it). The host writes `+ <pgid>` when a group is spawned and `- <pgid>` once it is
//! killed, so a pgid the kernel later reuses is never killed. When the host exits, however it
//! exits, the kernel closes the write end; the watchdog reads EOF, SIGKILLs every group it still
//! knows and exits. Dropping the watchdog closes the pipe the same way and reaps it.
//!
//! A group a service's descendant formed after the last walk of the service's tree (at most 1 s
//! before, see `descendants`) is not known yet. So every service also carries this watchdog's
//! marker in its environment ([`TREE_MARKER_ENV`]), which whatever it forks inherits; on Linux
//! the watchdog then kills every process whose `/proc/<pid>/environ` holds the marker too (one
//! `grep` over `/proc`, once, at the end). A descendant that clears its environment is left to
//! the walks.
//!
//! Windows needs none of this: its job objects already end the whole tree with the host.

use std::io::{self, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};

/// The environment variable every service (and so, unless it clears it, every descendant)
/// carries: `<name>=<marker>`, the marker its supervisor's watchdog's own.
pub const TREE_MARKER_ENV: &str = "GPU_SIDECAR_TREE";

/// The watchdog's script; `$1` is its marker (lower-case hex), `$2` [`TREE_MARKER_ENV`]. It trusts nothing it reads:
/// anything but `+`/`-` and a decimal group id is skipped, and the ids are only ever used as
/// numbers.
const SCRIPT: &str = r#"
groups=' '
while read -r op pgid; do
  case $pgid in ''|*[!0-9]*) continue ;; esac
  case $op in
    +) groups="$groups$pgid " ;;
    -) case $groups in *" $pgid "*) groups="${groups%% $pgid *} ${groups#* $pgid }" ;; esac ;;
  esac
done
for pgid in $groups; do kill -s KILL -- "-$pgid" 2>/dev/null; done
case $1 in ''|*[!0-9a-f]*) exit 0 ;; esac
for round in 1 2; do
  for file in $(grep -l -z -x -F -- "$2=$1" /proc/[0-9]*/environ 2>/dev/null); do
    pid=${file#/proc/}; pid=${pid%/environ}
    case $pid in ''|*[!0-9]*) continue ;; esac
    kill -s KILL "$pid" 2>/dev/null
  done
done
"#;

/// A running watchdog process and the write end of its pipe.
pub struct HostDeathWatchdog {
    process: Child,
    /// What its services carry in [`TREE_MARKER_ENV`].
    marker: String,
    /// `None` only while dropping.
    pipe: Mutex<Option<ChildStdin>>,
}

impl HostDeathWatchdog {
    /// Starts the watchdog process. Unix only; elsewhere this returns `Unsupported`.
    pub fn start() -> io::Result<Arc<Self>> {
        if !cfg!(unix) {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        // Unique to this watchdog: the host's pid, the time and a per-process count.
        static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let count = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let marker = format!("{:x}{nanos:x}{count:x}", std::process::id());
        let mut command = Command::new("/bin/sh");
        command
            .args(["-c", SCRIPT, "sh", &marker, TREE_MARKER_ENV])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Never its own target.
        command.env_remove(TREE_MARKER_ENV);
        // Its own group: a terminal's Ctrl-C for the host must not end the watchdog first, and
        // no service's group ever contains it.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut process = command.spawn()?;
        let pipe = process.stdin.take();
        Ok(Arc::new(Self { process, marker, pipe: Mutex::new(pipe) }))
    }

    /// The value its services carry in [`TREE_MARKER_ENV`].
    pub fn marker(&self) -> &str {
        &self.marker
    }

    /// The watchdog's pid.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Tells the watchdog about process group `pgid`; it is killed if the host dies before the
    /// returned guard is dropped. Drop the guard only once the group has been killed.
    pub fn watch(self: &Arc<Self>, pgid: u32) -> WatchedGroup {
        self.send('+', pgid);
        WatchedGroup { watchdog: self.clone(), pgid }
    }

    fn send(&self, op: char, pgid: u32) {
        if let Some(pipe) = self.pipe.lock().expect("watchdog pipe lock").as_mut() {
            // One short write (atomic on a pipe). A failure means the watchdog is gone: the
            // services still have their death signal, and SIGPIPE is ignored by Rust and Node.
            let _ = pipe.write_all(format!("{op} {pgid}\n").as_bytes());
        }
    }
}

impl Drop for HostDeathWatchdog {
    fn drop(&mut self) {
        // EOF: the watchdog kills what it still knows (nothing, after a normal stop) and exits
        // at once, so this wait is short.
        drop(self.pipe.get_mut().expect("watchdog pipe lock").take());
        let _ = self.process.wait();
    }
}

/// A process group the watchdog kills if the host dies; dropping it tells the watchdog to forget
/// the group.
pub struct WatchedGroup {
    watchdog: Arc<HostDeathWatchdog>,
    pgid: u32,
}

impl Drop for WatchedGroup {
    fn drop(&mut self) {
        self.watchdog.send('-', self.pgid);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::unix::process::{CommandExt, ExitStatusExt};

    fn sleeper(marker: Option<&str>) -> Child {
        let mut command = Command::new("sleep");
        // Its own group, which the watchdog is never told of: only the marker can find it.
        command.arg("30").process_group(0);
        if let Some(marker) = marker {
            command.env(TREE_MARKER_ENV, marker);
        }
        command.spawn().unwrap()
    }

    #[test]
    fn at_the_end_what_carries_the_marker_is_killed_and_nothing_else() {
        let watchdog = HostDeathWatchdog::start().unwrap();
        let mut marked = sleeper(Some(watchdog.marker()));
        let mut unmarked = sleeper(None);
        let mut foreign = sleeper(Some("0123abcdef"));
        std::thread::sleep(std::time::Duration::from_millis(100));
        drop(watchdog); // EOF, as at host death
        assert_eq!(marked.wait().unwrap().signal(), Some(libc::SIGKILL));
        assert!(unmarked.try_wait().unwrap().is_none(), "an unmarked process lives");
        assert!(foreign.try_wait().unwrap().is_none(), "another watchdog's marker lives");
        for mut child in [unmarked, foreign] {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}
