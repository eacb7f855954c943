//! One running service process: spawned in its own process group, its output read line by line,
//! stopped with its stop signal and then SIGKILL, always reaped.
//!
//! Host death: on Linux each service gets `PR_SET_PDEATHSIG(SIGKILL)`, so it dies even when the
//! host is killed with SIGKILL. That signal fires when the *thread* that forked the child exits,
//! so every spawn runs on one spawner thread that lives as long as the process. Grandchildren are
//! not covered by it; they share the service's process group, which every stop (and every exit of
//! the service) kills as a whole, and which the supervisor's [`HostDeathWatchdog`] kills when the host
//! dies.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::process::Stdio;
use std::sync::{mpsc as std_mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use process_wrap::tokio::{ChildWrapper, CommandWrap, KillOnDrop};
use regex::Regex;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::config::{ServiceSpec, StopSignal};
use super::events::{ExitInfo, OutputStream, ServiceEvent, ServiceEventKind};
use super::host_death::{HostDeathWatchdog, WatchedGroup};

/// How many output lines a failure report carries.
const TAIL_LINES: usize = 20;

/// Where a process's output lines go: events, the log file, the tail kept for failure reports,
/// and the `logLine` readiness pattern.
pub struct OutputSink {
    service: String,
    events: mpsc::UnboundedSender<ServiceEvent>,
    log_file: Option<Mutex<File>>,
    tail: Mutex<VecDeque<String>>,
    ready_pattern: Option<Regex>,
    pattern_seen: watch::Sender<bool>,
}

impl OutputSink {
    pub fn new(
        spec: &ServiceSpec,
        events: mpsc::UnboundedSender<ServiceEvent>,
        ready_pattern: Option<Regex>,
    ) -> io::Result<Self> {
        let log_file = match &spec.log_file {
            Some(path) => Some(Mutex::new(File::options().create(true).append(true).open(path)?)),
            None => None,
        };
        Ok(Self {
            service: spec.name.clone(),
            events,
            log_file,
            tail: Mutex::new(VecDeque::with_capacity(TAIL_LINES)),
            ready_pattern,
            pattern_seen: watch::channel(false).0,
        })
    }

    /// Flips to `true` when a line matches the readiness pattern.
    pub fn pattern_seen(&self) -> watch::Receiver<bool> {
        self.pattern_seen.subscribe()
    }

    /// The last lines of output, oldest first.
    pub fn tail(&self) -> Vec<String> {
        self.tail.lock().expect("tail lock").iter().cloned().collect()
    }

    fn line(&self, stream: OutputStream, line: String) {
        if let Some(file) = &self.log_file {
            // A small local append; a failing log file must not take the service down.
            let _ = writeln!(file.lock().expect("log file lock"), "{line}");
        }
        if self.ready_pattern.as_ref().is_some_and(|p| p.is_match(&line)) {
            self.pattern_seen.send_replace(true);
        }
        {
            let mut tail = self.tail.lock().expect("tail lock");
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.clone());
        }
        let _ = self.events.send(ServiceEvent::now(&self.service, ServiceEventKind::Log { stream, line }));
    }
}

/// A spawned service process.
pub struct ServiceProcess {
    child: Box<dyn ChildWrapper>,
    pid: u32,
    readers: Vec<JoinHandle<()>>,
    exit: Option<ExitInfo>,
    /// Held until the group is killed; dropped after `Drop::drop` has killed it.
    watched: Option<WatchedGroup>,
}

type SpawnJob = Box<dyn FnOnce() + Send>;

/// Runs spawn jobs on a thread that never exits (see the module docs on `PR_SET_PDEATHSIG`).
fn on_spawner_thread(job: SpawnJob) {
    static SPAWNER: OnceLock<Mutex<std_mpsc::Sender<SpawnJob>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = std_mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("gpu-sidecar-spawner".into())
            .spawn(move || {
                for job in rx {
                    // A panicking job drops its reply channel (its caller sees an error); the
                    // thread itself must live on for every later service.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })
            .expect("spawn the process spawner thread");
        Mutex::new(tx)
    });
    sender.lock().expect("spawner lock").send(job).expect("spawner thread runs forever");
}

impl ServiceProcess {
    /// Spawns `spec`'s command, registers its process group with `watchdog` (if any), and starts
    /// reading its output into `sink`.
    pub async fn spawn(
        spec: &ServiceSpec,
        sink: Arc<OutputSink>,
        watchdog: Option<&Arc<HostDeathWatchdog>>,
    ) -> io::Result<Self> {
        let mut command = CommandWrap::with_new(&spec.command, |c| {
            c.args(&spec.args).envs(&spec.env).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
            if let Some(cwd) = &spec.cwd {
                c.current_dir(cwd);
            }
        });
        #[cfg(unix)]
        command.wrap(process_wrap::tokio::ProcessGroup::leader());
        #[cfg(windows)]
        command.wrap(process_wrap::tokio::JobObject);
        command.wrap(KillOnDrop);
        #[cfg(target_os = "linux")]
        die_with_host(command.command_mut());

        let runtime = tokio::runtime::Handle::current();
        let (tx, rx) = oneshot::channel();
        on_spawner_thread(Box::new(move || {
            // The child registers with this runtime's process driver.
            let _entered = runtime.enter();
            let _ = tx.send(command.spawn());
        }));
        let mut child = rx.await.map_err(|_| io::Error::other("spawner thread dropped the job"))??;
        let pid = child.id().ok_or_else(|| io::Error::other("child exited before its pid was read"))?;
        // The group leader's pid is the group id.
        let watched = watchdog.map(|w| w.watch(pid));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout().take() {
            readers.push(tokio::spawn(read_lines(out, OutputStream::Stdout, sink.clone())));
        }
        if let Some(err) = child.stderr().take() {
            readers.push(tokio::spawn(read_lines(err, OutputStream::Stderr, sink)));
        }
        Ok(Self { child, pid, readers, exit: None, watched })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for the process to exit and reaps it; cancel-safe. Whatever is left of its process
    /// group (grandchildren) is killed, so a dead service leaves nothing holding its GPU memory.
    pub async fn wait(&mut self) -> ExitInfo {
        if let Some(exit) = self.exit {
            return exit;
        }
        let exit = match self.child.wait().await {
            Ok(status) => ExitInfo::from_status(status),
            // Only when the child was already reaped elsewhere; nothing is left to wait for.
            Err(_) => ExitInfo { code: None, signal: None },
        };
        self.exit = Some(exit);
        self.signal_group(Signal::Kill);
        self.watched = None;
        exit
    }

    /// Sends `signal` to the process group, waits up to `grace`, then SIGKILLs the group.
    pub async fn stop(&mut self, signal: StopSignal, grace: Duration) -> ExitInfo {
        if let Some(exit) = self.exit {
            return exit;
        }
        self.signal_group(Signal::Stop(signal));
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(exit) => exit,
            Err(_) => {
                self.signal_group(Signal::Kill);
                self.wait().await
            }
        }
    }

    /// Waits (up to `limit`) until both output pipes are read to the end, so the tail is complete.
    pub async fn drain_output(&mut self, limit: Duration) {
        let readers = std::mem::take(&mut self.readers);
        let _ = tokio::time::timeout(limit, async {
            for reader in readers {
                let _ = reader.await;
            }
        })
        .await;
    }

    fn signal_group(&mut self, signal: Signal) {
        #[cfg(unix)]
        {
            let number = match signal {
                Signal::Kill | Signal::Stop(StopSignal::Kill) => libc::SIGKILL,
                Signal::Stop(StopSignal::Term) => libc::SIGTERM,
                Signal::Stop(StopSignal::Int) => libc::SIGINT,
                Signal::Stop(StopSignal::Hup) => libc::SIGHUP,
                Signal::Stop(StopSignal::Quit) => libc::SIGQUIT,
            };
            // SAFETY: killpg only sends a signal; ESRCH (group already gone) is fine to ignore.
            unsafe {
                libc::killpg(self.pid as libc::pid_t, number);
            }
        }
        #[cfg(windows)]
        {
            // Windows has no signals: every stop ends the job object's whole process tree.
            let _ = signal;
            let _ = self.child.start_kill();
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        // KillOnDrop ends the leader (tokio reaps it); this ends the rest of its group.
        if self.exit.is_none() {
            self.signal_group(Signal::Kill);
        }
    }
}

#[derive(Clone, Copy)]
enum Signal {
    Stop(StopSignal),
    Kill,
}

/// Makes the child die with the host process, and not start at all if the host is already gone.
#[cfg(target_os = "linux")]
fn die_with_host(command: &mut tokio::process::Command) {
    let host = std::process::id() as libc::pid_t;
    // SAFETY: the hook only makes async-signal-safe calls (prctl, getppid) and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
                return Err(io::Error::last_os_error());
            }
            // The host may have died between fork and prctl; then no signal would ever come.
            if libc::getppid() != host {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

async fn read_lines(pipe: impl AsyncRead + Unpin, stream: OutputStream, sink: Arc<OutputSink>) {
    let mut reader = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                sink.line(stream, text.trim_end_matches(['\n', '\r']).to_string());
            }
        }
    }
}
