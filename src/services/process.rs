//! One running service process: spawned in its own process group, its output read line by line,
//! stopped with its stop signal and then SIGKILL, always reaped.
//!
//! Host death: on Linux each service gets `PR_SET_PDEATHSIG(SIGKILL)`, so it dies even when the
//! host is killed with SIGKILL. That signal fires when the *thread* that forked the child exits,
//! so every spawn runs on one spawner thread that lives as long as the process. Grandchildren are
//! not covered by it; they share the service's process group, which every stop (and every exit of
//! the service) kills as a whole, and which the supervisor's [`HostDeathWatchdog`] kills when the host
//! dies. Descendants that left the group (double fork and `setsid`) are tracked by
//! [`EscapedGroups`] (see [`super::descendants`] for how, and why a subreaper).
use std::collections::VecDeque;
use std::io;
use std::process::Stdio;
use std::sync::{mpsc as std_mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use process_wrap::tokio::{ChildWrapper, CommandWrap};
use regex::Regex;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::config::{ServiceSpec, StopSignal};
use super::descendants::{EscapedGroups, SCAN_INTERVAL};
use super::events::{ExitInfo, OutputStream, ServiceEvent, ServiceEventKind};
use super::host_death::{HostDeathWatchdog, WatchedGroup};
use super::log_file::RotatingLog;

/// How many output lines `status().lastLines` and a failure report carry.
const TAIL_LINES: usize = 50;
/// Bytes of each tail line kept (the rest of a longer one is dropped from the tail only).
const TAIL_LINE_BYTES: usize = 8 * 1024;

/// Where a process's output lines go: events, the log file, the tail kept for status and
/// failure reports, the `logLine` patterns, and the count of lines (progress, for the stall timer).
pub struct OutputSink {
    service: String,
    events: mpsc::UnboundedSender<ServiceEvent>,
    /// Buffered, and flushed after each read from the pipe: one write per read, not per line.
    log_file: Option<Mutex<RotatingLog>>,
    tail: Mutex<VecDeque<String>>,
    /// Each watched pattern and how many lines matched it.
    patterns: Vec<(Regex, watch::Sender<u64>)>,
    lines: watch::Sender<u64>,
}

impl OutputSink {
    /// A sink that counts the lines matching each of `patterns`.
    pub fn new(
        spec: &ServiceSpec,
        events: mpsc::UnboundedSender<ServiceEvent>,
        patterns: Vec<Regex>,
    ) -> io::Result<Self> {
        let log_file = match &spec.log_file {
            Some(path) => Some(Mutex::new(RotatingLog::open(
                path,
                spec.log_max_bytes.get(),
                spec.log_keep.get() as u32,
                MAX_LINE_BYTES,
            )?)),
            None => None,
        };
        Ok(Self {
            service: spec.name.clone(),
            events,
            log_file,
            tail: Mutex::new(VecDeque::with_capacity(TAIL_LINES)),
            patterns: patterns.into_iter().map(|p| (p, watch::channel(0).0)).collect(),
            lines: watch::channel(0).0,
        })
    }

    /// Counts the lines that matched `pattern` (one given to [`OutputSink::new`]; another
    /// pattern never matches).
    pub fn matches(&self, pattern: &Regex) -> watch::Receiver<u64> {
        match self.patterns.iter().find(|(p, _)| p.as_str() == pattern.as_str()) {
            Some((_, count)) => count.subscribe(),
            None => watch::channel(0).1,
        }
    }

    /// Counts every output line.
    pub fn lines(&self) -> watch::Receiver<u64> {
        self.lines.subscribe()
    }

    /// The last lines of output, oldest first.
    pub fn tail(&self) -> Vec<String> {
        self.tail.lock().expect("tail lock").iter().cloned().collect()
    }

    /// Writes the buffered log lines to the log file.
    fn flush_log(&self) {
        if let Some(file) = &self.log_file {
            let _ = file.lock().expect("log file lock").flush();
        }
    }

    fn line(&self, stream: OutputStream, line: String) {
        if let Some(file) = &self.log_file {
            // A small local append; a failing log file must not take the service down.
            let _ = file.lock().expect("log file lock").write_line(&line);
        }
        for (pattern, count) in &self.patterns {
            if pattern.is_match(&line) {
                count.send_modify(|n| *n += 1);
            }
        }
        self.lines.send_modify(|n| *n += 1);
        {
            let mut tail = self.tail.lock().expect("tail lock");
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            // A tail line is for error messages and the OOM check, which read a line's start: a
            // long one (a 64 KiB piece of an endless line) is kept short, so 50 of them stay small.
            tail.push_back(line[..char_boundary_at(&line, TAIL_LINE_BYTES)].to_string());
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
    /// Process groups its descendants formed outside its own.
    escaped: Arc<EscapedGroups>,
    /// Walks its subtree for escaped groups while it runs.
    scanner: Option<JoinHandle<()>>,
}

type SpawnJob = Box<dyn FnOnce() + Send>;

/// The write end of a notify pipe, handed to the service at spawn.
pub type NotifyWriteEnd = super::notify::PipeEnd;

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
    /// With `notify`, the service inherits the pipe's write end, its number in
    /// `GPU_SIDECAR_NOTIFY_FD` (see [`super::notify`]); the host's copy is closed after the spawn.
    /// `placement` is environment the supervisor sets (the GPU the service runs on); the spec's
    /// own `env` wins over it.
    pub async fn spawn(
        spec: &ServiceSpec,
        placement: &[(String, String)],
        hook_env: &[(String, String)],
        sink: Arc<OutputSink>,
        watchdog: Option<&Arc<HostDeathWatchdog>>,
        notify: Option<NotifyWriteEnd>,
    ) -> io::Result<Self> {
        let mut command = CommandWrap::with_new(&spec.command, |c| {
            // The hook's answer wins: it is what is known at this very spawn.
            c.args(&spec.args).envs(placement.iter().cloned()).envs(&spec.env).envs(hook_env.iter().cloned());
            c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
            if let Some(cwd) = &spec.cwd {
                c.current_dir(cwd);
            }
        });
        #[cfg(unix)]
        if let Some(write) = &notify {
            use std::os::fd::AsRawFd;
            let fd = write.as_raw_fd();
            command.command_mut().env(super::notify::NOTIFY_FD_ENV, fd.to_string());
            // SAFETY: fcntl is async-signal-safe; it only clears close-on-exec on our pipe end.
            unsafe {
                command.command_mut().pre_exec(move || {
                    if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        #[cfg(unix)]
        command.wrap(process_wrap::tokio::ProcessGroup::leader());
        #[cfg(windows)]
        command.wrap(process_wrap::tokio::JobObject);
        // No KillOnDrop: `Drop` kills the whole tree and reaps the service itself.
        #[cfg(target_os = "linux")]
        linux_child_setup(command.command_mut());

        let runtime = tokio::runtime::Handle::current();
        let (tx, rx) = oneshot::channel();
        on_spawner_thread(Box::new(move || {
            // The child registers with this runtime's process driver.
            let _entered = runtime.enter();
            let _ = tx.send(command.spawn());
        }));
        let mut child = rx.await.map_err(|_| io::Error::other("spawner thread dropped the job"))??;
        // The service holds its copy now; ours must close, or the pipe never ends.
        drop(notify);
        let pid = child.id().ok_or_else(|| io::Error::other("child exited before its pid was read"))?;
        // The group leader's pid is the group id.
        let watched = watchdog.map(|w| w.watch(pid));
        let escaped = EscapedGroups::new(pid, watchdog);
        let scanner = cfg!(target_os = "linux").then(|| {
            let escaped = escaped.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(SCAN_INTERVAL).await;
                    escaped.scan();
                }
            })
        });
        let mut readers = Vec::new();
        if let Some(out) = child.stdout().take() {
            readers.push(tokio::spawn(read_lines(out, OutputStream::Stdout, sink.clone())));
        }
        if let Some(err) = child.stderr().take() {
            readers.push(tokio::spawn(read_lines(err, OutputStream::Stderr, sink)));
        }
        Ok(Self { child, pid, readers, exit: None, watched, escaped, scanner })
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
        // Reaped: its pid may be reused, so its subtree is no longer walked.
        if let Some(scanner) = self.scanner.take() {
            scanner.abort();
        }
        self.signal_group(Signal::Kill);
        self.escaped.kill_known();
        self.watched = None;
        exit
    }

    /// Sends `signal` to the process group, waits up to `grace`, then SIGKILLs the group.
    pub async fn stop(&mut self, signal: StopSignal, grace: Duration) -> ExitInfo {
        if let Some(exit) = self.exit {
            return exit;
        }
        // Escaped descendants get the stop signal too, and are killed once the service is gone.
        let strays = self.escaped.scan();
        self.signal_group(Signal::Stop(signal));
        #[cfg(unix)]
        self.escaped.signal(signal_number(Signal::Stop(signal)), &strays);
        #[cfg(not(unix))]
        let _ = strays;
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(exit) => exit,
            Err(_) => {
                self.escaped.kill_tree();
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
        // SAFETY: killpg only sends a signal; ESRCH (group already gone) is fine to ignore.
        unsafe {
            libc::killpg(self.pid as libc::pid_t, signal_number(signal));
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
    /// Dropped while running (a supervisor dropped or garbage-collected, a worker terminated):
    /// kills the whole tree and reaps the service here and now. Left to tokio, the reap waits
    /// for the next SIGCHLD the runtime sees, which may never come (zombies after a worker ended).
    fn drop(&mut self) {
        if self.exit.is_some() {
            return;
        }
        if let Some(scanner) = self.scanner.take() {
            scanner.abort();
        }
        self.escaped.kill_tree();
        self.signal_group(Signal::Kill);
        #[cfg(unix)]
        {
            let mut status = 0;
            // SAFETY: waits for our own child, which was just sent SIGKILL, so this is short.
            // tokio's handle then finds it reaped (ECHILD) and lets it go.
            unsafe { libc::waitpid(self.pid as libc::pid_t, &mut status, 0) };
        }
        #[cfg(windows)]
        let _ = self.child.start_kill();
        self.escaped.kill_known();
    }
}

#[derive(Clone, Copy)]
enum Signal {
    Stop(StopSignal),
    Kill,
}

#[cfg(unix)]
fn signal_number(signal: Signal) -> libc::c_int {
    match signal {
        Signal::Kill | Signal::Stop(StopSignal::Kill) => libc::SIGKILL,
        Signal::Stop(StopSignal::Term) => libc::SIGTERM,
        Signal::Stop(StopSignal::Int) => libc::SIGINT,
        Signal::Stop(StopSignal::Hup) => libc::SIGHUP,
        Signal::Stop(StopSignal::Quit) => libc::SIGQUIT,
    }
}

/// Makes the child die with the host process, and not start at all if the host is already gone;
/// and makes it a child subreaper, so whatever it forks stays in its tree (see
/// [`super::descendants`]).
#[cfg(target_os = "linux")]
fn linux_child_setup(command: &mut tokio::process::Command) {
    let host = std::process::id() as libc::pid_t;
    // SAFETY: the hook only makes async-signal-safe calls (prctl, getppid) and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) == -1 {
                return Err(io::Error::last_os_error());
            }
            // Kept across exec. Without it (very old kernels) only escaped processes go untracked.
            libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong);
            // The host may have died between fork and prctl; then no signal would ever come.
            if libc::getppid() != host {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// The longest output line passed on whole: a longer one (a progress bar that never prints a
/// newline, a dumped tensor) is split into pieces of at most this many bytes, each but the last
/// ending in [`SPLIT_MARKER`], so no line ever buffers more than this.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Ends each piece of a split line except its last.
pub const SPLIT_MARKER: &str = " [line split: over 64 KiB]";

/// Cuts output bytes into lines. `\n`, `\r\n` and a lone `\r` all end a line (a progress bar
/// redrawn with `\r` gives one line per redraw instead of one endless line), and a line longer
/// than `max` bytes is split at a UTF-8 character boundary.
pub struct LineSplitter {
    max: usize,
    pending: Vec<u8>,
    /// The last byte seen was `\r`: a `\n` right after it ends no further line.
    after_cr: bool,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        Self { max: max.max(4), pending: Vec::new(), after_cr: false }
    }

    /// Feeds bytes; `emit` gets every line they complete.
    pub fn push(&mut self, mut bytes: &[u8], emit: &mut impl FnMut(String)) {
        while let Some(&first) = bytes.first() {
            if std::mem::take(&mut self.after_cr) && first == b'\n' {
                bytes = &bytes[1..];
                continue;
            }
            match bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
                Some(end) => {
                    self.append(&bytes[..end], emit);
                    emit(String::from_utf8_lossy(&self.pending).into_owned());
                    self.pending.clear();
                    self.after_cr = bytes[end] == b'\r';
                    bytes = &bytes[end + 1..];
                }
                None => {
                    self.append(bytes, emit);
                    bytes = &[];
                }
            }
        }
    }

    /// The output ended: a last line with no line end is emitted too.
    pub fn finish(&mut self, emit: &mut impl FnMut(String)) {
        if !self.pending.is_empty() {
            emit(String::from_utf8_lossy(&self.pending).into_owned());
            self.pending.clear();
        }
    }

    fn append(&mut self, mut chunk: &[u8], emit: &mut impl FnMut(String)) {
        while self.pending.len() + chunk.len() > self.max {
            let room = self.max - self.pending.len();
            self.pending.extend_from_slice(&chunk[..room]);
            chunk = &chunk[room..];
            let carry = self.pending.split_off(char_boundary(&self.pending));
            emit(format!("{}{SPLIT_MARKER}", String::from_utf8_lossy(&self.pending)));
            self.pending = carry;
        }
        self.pending.extend_from_slice(chunk);
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn char_boundary_at(text: &str, max: usize) -> usize {
    if text.len() <= max {
        return text.len();
    }
    (0..=max).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0)
}

/// Where a UTF-8 character cut short at the end of `bytes` starts (`bytes.len()` when none is).
fn char_boundary(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=len.min(3) {
        let byte = bytes[len - back];
        if byte & 0xC0 == 0x80 {
            continue; // a continuation byte: the lead byte is further back
        }
        let width = match byte {
            b if b >= 0xF0 => 4,
            b if b >= 0xE0 => 3,
            b if b >= 0xC0 => 2,
            _ => 1,
        };
        return if width > back { len - back } else { len };
    }
    len
}

async fn read_lines(pipe: impl AsyncRead + Unpin, stream: OutputStream, sink: Arc<OutputSink>) {
    let mut reader = BufReader::with_capacity(MAX_LINE_BYTES, pipe);
    let mut lines = LineSplitter::new(MAX_LINE_BYTES);
    let mut emit = |line: String| sink.line(stream, line);
    loop {
        let read = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(bytes) => {
                lines.push(bytes, &mut emit);
                bytes.len()
            }
        };
        reader.consume(read);
        sink.flush_log();
    }
    lines.finish(&mut emit);
    sink.flush_log();
}

#[cfg(test)]
mod line_tests {
    use super::*;

    fn split(max: usize, pieces: &[&[u8]]) -> Vec<String> {
        let mut lines = vec![];
        let mut splitter = LineSplitter::new(max);
        let mut emit = |line: String| lines.push(line);
        for piece in pieces {
            splitter.push(piece, &mut emit);
        }
        splitter.finish(&mut emit);
        lines
    }

    #[test]
    fn newline_crlf_and_a_lone_cr_each_end_one_line_across_reads() {
        assert_eq!(split(100, &[b"a\nb\r\nc\r", b"\nd\re\n\nlast"]), ["a", "b", "c", "d", "e", "", "last"]);
        // A progress bar redrawn with \r.
        assert_eq!(split(100, &[b"10%\r20%\r", b"30%\r"]), ["10%", "20%", "30%"]);
    }

    #[test]
    fn a_long_line_is_split_with_a_marker_at_a_character_boundary() {
        let lines = split(8, &[b"abcdefghij", b"klmnopqrst\nz"]);
        assert_eq!(
            lines,
            [format!("abcdefgh{SPLIT_MARKER}"), format!("ijklmnop{SPLIT_MARKER}"), "qrst".into(), "z".into()]
        );
        // "\u{e9}" is two bytes; a cut between them moves the whole character to the next piece.
        let lines = split(6, &["abcde\u{e9}f\n".as_bytes()]);
        assert_eq!(lines, [format!("abcde{SPLIT_MARKER}"), "\u{e9}f".to_string()]);
    }

    #[test]
    fn an_endless_line_never_holds_more_than_the_cap() {
        let mut splitter = LineSplitter::new(MAX_LINE_BYTES);
        let chunk = vec![b'x'; 1 << 20];
        let mut count = 0;
        for _ in 0..20 {
            splitter.push(&chunk, &mut |line: String| {
                assert!(line.len() <= MAX_LINE_BYTES + SPLIT_MARKER.len());
                count += 1;
            });
            assert!(splitter.pending.capacity() <= 2 * MAX_LINE_BYTES);
        }
        // The last piece waits for more of its line.
        assert_eq!(count, 20 * 16 - 1);
    }

    #[test]
    fn tail_lines_keep_a_bounded_start_cut_at_a_character_boundary() {
        assert_eq!(char_boundary_at("short", TAIL_LINE_BYTES), 5);
        let long = format!("{}\u{e9}rest", "x".repeat(TAIL_LINE_BYTES - 1));
        // "\u{e9}" straddles the cap: the cut moves before it.
        assert_eq!(char_boundary_at(&long, TAIL_LINE_BYTES), TAIL_LINE_BYTES - 1);
        assert_eq!(char_boundary_at(&"y".repeat(MAX_LINE_BYTES), TAIL_LINE_BYTES), TAIL_LINE_BYTES);
    }
}
