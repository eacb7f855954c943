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
//! Windows needs none of this: its job objects already end the whole tree with the host.

use std::io::{self, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};

/// The watchdog's script. It trusts nothing it reads: anything but `+`/`-` and a decimal group
/// id is skipped, and the ids are only ever used as numbers.
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
"#;

/// A running watchdog process and the write end of its pipe.
pub struct HostDeathWatchdog {
    process: Child,
    /// `None` only while dropping.
    pipe: Mutex<Option<ChildStdin>>,
}

impl HostDeathWatchdog {
    /// Starts the watchdog process. Unix only; elsewhere this returns `Unsupported`.
    pub fn start() -> io::Result<Arc<Self>> {
        if !cfg!(unix) {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        let mut command = Command::new("/bin/sh");
        command.args(["-c", SCRIPT]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::null());
        // Its own group: a terminal's Ctrl-C for the host must not end the watchdog first, and
        // no service's group ever contains it.
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut process = command.spawn()?;
        let pipe = process.stdin.take();
        Ok(Arc::new(Self { process, pipe: Mutex::new(pipe) }))
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
