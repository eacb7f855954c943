//! sd_notify-style messages from a service over an inherited pipe (`GPU_SIDECAR_NOTIFY_FD`):
//! newline-separated `READY=1`, `STATUS=<text>`, `EXTEND_TIMEOUT_MS=<n>`, `WATCHDOG=1` and
//! `STOPPING=1`. A pipe rather than systemd's datagram socket: it needs no path, works the same
//! for every language (a file descriptor and `write`), and its end is the service's exit.
//!
//! Windows (on paper): the same protocol over an anonymous pipe whose write handle is made
//! inheritable and passed in `STARTUPINFOEX`'s `PROC_THREAD_ATTRIBUTE_HANDLE_LIST` (so only that
//! handle is inherited), its value in `GPU_SIDECAR_NOTIFY_HANDLE`; Python opens it with
//! `msvcrt.open_osfhandle`. Until that is built, `notify` checks fail the start with
//! `SPAWN_FAILED` there.

use std::time::Instant;

use tokio::sync::watch;

/// The environment variable that carries the write end's descriptor number.
pub const NOTIFY_FD_ENV: &str = "GPU_SIDECAR_NOTIFY_FD";

/// The longest notify line read; longer ones are cut (a status text is a line of prose).
const MAX_MESSAGE_BYTES: usize = 4096;

/// One notify message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyMessage {
    Ready,
    Status(String),
    /// Push the readiness deadline to at least this many ms from now.
    ExtendTimeout(u64),
    Watchdog,
    Stopping,
    /// Anything else: ignored, as sd_notify ignores unknown assignments.
    Other(String),
}

impl NotifyMessage {
    pub fn parse(line: &str) -> Option<Self> {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            return None;
        }
        let (key, value) = line.split_once('=').unwrap_or((line, ""));
        Some(match (key.trim(), value) {
            ("READY", "1") => NotifyMessage::Ready,
            ("STATUS", text) => NotifyMessage::Status(text.to_string()),
            ("EXTEND_TIMEOUT_MS", n) => match n.trim().parse() {
                Ok(ms) => NotifyMessage::ExtendTimeout(ms),
                Err(_) => NotifyMessage::Other(line.to_string()),
            },
            ("WATCHDOG", "1") => NotifyMessage::Watchdog,
            ("STOPPING", "1") => NotifyMessage::Stopping,
            _ => NotifyMessage::Other(line.to_string()),
        })
    }
}

/// What the service has said so far, for the waits that watch it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifySeen {
    pub ready: bool,
    /// Messages of any kind (progress, for the stall timer).
    pub messages: u64,
    pub watchdogs: u64,
    /// The latest deadline an `EXTEND_TIMEOUT_MS` asked for.
    pub extend_until: Option<Instant>,
    pub stopping: bool,
}

impl NotifySeen {
    pub fn apply(&mut self, message: &NotifyMessage, now: Instant) {
        self.messages += 1;
        match message {
            NotifyMessage::Ready => self.ready = true,
            NotifyMessage::Watchdog => self.watchdogs += 1,
            NotifyMessage::Stopping => self.stopping = true,
            NotifyMessage::ExtendTimeout(ms) => {
                let until = now + std::time::Duration::from_millis(*ms);
                self.extend_until = Some(self.extend_until.map_or(until, |old| old.max(until)));
            }
            NotifyMessage::Status(_) | NotifyMessage::Other(_) => {}
        }
    }
}

/// One end of a notify pipe (none can exist where notify is not built yet).
#[cfg(unix)]
pub type PipeEnd = std::os::fd::OwnedFd;
#[cfg(not(unix))]
pub type PipeEnd = std::convert::Infallible;

/// The two ends of a notify pipe before spawn.
pub struct NotifyPipe {
    pub read: PipeEnd,
    pub write: PipeEnd,
}

impl NotifyPipe {
    /// Both ends close-on-exec: the spawn clears the flag on the write end in the service's
    /// child only, so no other process the host starts inherits it.
    #[cfg(unix)]
    pub fn new() -> std::io::Result<Self> {
        use std::os::fd::FromRawFd;
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe() writes.
        #[cfg(target_os = "linux")]
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        #[cfg(not(target_os = "linux"))]
        let rc = unsafe {
            let rc = libc::pipe(fds.as_mut_ptr());
            if rc == 0 {
                libc::fcntl(fds[0], libc::F_SETFD, libc::FD_CLOEXEC);
                libc::fcntl(fds[1], libc::F_SETFD, libc::FD_CLOEXEC);
            }
            rc
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: pipe() just opened both; each is owned once.
        Ok(unsafe {
            Self { read: std::os::fd::OwnedFd::from_raw_fd(fds[0]), write: std::os::fd::OwnedFd::from_raw_fd(fds[1]) }
        })
    }

    #[cfg(not(unix))]
    pub fn new() -> std::io::Result<Self> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "notify readiness and liveness need Unix here (the Windows design is in the README)",
        ))
    }
}

/// Reads messages from the read end until the service closes its end (exits); each is applied
/// to `seen` and passed to `on_message`.
#[cfg(unix)]
pub async fn read_messages(
    read: std::os::fd::OwnedFd,
    seen: watch::Sender<NotifySeen>,
    on_message: impl Fn(&NotifyMessage),
) {
    use tokio::io::AsyncReadExt;
    let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(read) else { return };
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&chunk[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]);
            deliver(&text, &seen, &on_message);
        }
        if pending.len() > MAX_MESSAGE_BYTES {
            let text = String::from_utf8_lossy(&pending[..MAX_MESSAGE_BYTES]).into_owned();
            pending.clear();
            deliver(&text, &seen, &on_message);
        }
    }
    if !pending.is_empty() {
        deliver(&String::from_utf8_lossy(&pending), &seen, &on_message);
    }
}

#[cfg(not(unix))]
pub async fn read_messages(read: PipeEnd, _seen: watch::Sender<NotifySeen>, _on_message: impl Fn(&NotifyMessage)) {
    match read {}
}

fn deliver(text: &str, seen: &watch::Sender<NotifySeen>, on_message: &impl Fn(&NotifyMessage)) {
    if let Some(message) = NotifyMessage::parse(text) {
        seen.send_modify(|s| s.apply(&message, Instant::now()));
        on_message(&message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_message() {
        assert_eq!(NotifyMessage::parse("READY=1"), Some(NotifyMessage::Ready));
        assert_eq!(NotifyMessage::parse("STATUS=loading 40%\r"), Some(NotifyMessage::Status("loading 40%".into())));
        assert_eq!(NotifyMessage::parse("EXTEND_TIMEOUT_MS=5000"), Some(NotifyMessage::ExtendTimeout(5000)));
        assert_eq!(NotifyMessage::parse("WATCHDOG=1"), Some(NotifyMessage::Watchdog));
        assert_eq!(NotifyMessage::parse("STOPPING=1"), Some(NotifyMessage::Stopping));
        assert_eq!(
            NotifyMessage::parse("EXTEND_TIMEOUT_MS=soon"),
            Some(NotifyMessage::Other("EXTEND_TIMEOUT_MS=soon".into()))
        );
        assert_eq!(NotifyMessage::parse("MAINPID=4"), Some(NotifyMessage::Other("MAINPID=4".into())));
        assert_eq!(NotifyMessage::parse("  "), None);
    }

    #[test]
    fn extensions_only_push_the_deadline_out() {
        let now = Instant::now();
        let mut seen = NotifySeen::default();
        seen.apply(&NotifyMessage::ExtendTimeout(5_000), now);
        seen.apply(&NotifyMessage::ExtendTimeout(1_000), now);
        assert_eq!(seen.extend_until, Some(now + std::time::Duration::from_millis(5_000)));
        seen.apply(&NotifyMessage::Watchdog, now);
        seen.apply(&NotifyMessage::Ready, now);
        assert_eq!((seen.messages, seen.watchdogs, seen.ready), (4, 1, true));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn reads_messages_across_writes_from_the_pipe() {
        use std::io::Write;
        let pipe = NotifyPipe::new().unwrap();
        let (tx, rx) = watch::channel(NotifySeen::default());
        let mut writer = std::fs::File::from(pipe.write);
        writer.write_all(b"STATUS=loading\nWATCH").unwrap();
        writer.write_all(b"DOG=1\nREADY=1").unwrap();
        drop(writer);
        let got = std::sync::Mutex::new(vec![]);
        read_messages(pipe.read, tx, |m| got.lock().unwrap().push(m.clone())).await;
        assert_eq!(
            got.into_inner().unwrap(),
            [NotifyMessage::Status("loading".into()), NotifyMessage::Watchdog, NotifyMessage::Ready]
        );
        assert!(rx.borrow().ready);
    }
}
