//! What every phase's tests share: the Python fake service (`SERVICE_PY`), a sandbox to run it
//! in, a supervisor with its event stream, fake VRAM, and helpers that read events and processes.

pub(super) use std::collections::HashMap;
pub(super) use std::net::{Ipv4Addr, TcpListener};
pub(super) use std::path::{Path, PathBuf};
pub(super) use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
pub(super) use std::sync::Arc;
pub(super) use std::time::{Duration, Instant};

pub(super) use serde_json::{json, Value};
pub(super) use tokio::sync::mpsc::UnboundedReceiver;

pub(super) use super::super::*;
pub(super) use crate::error::{ErrorCode, SidecarError, SidecarResult};

pub(super) const SERVICE_PY: &str = r#"
import argparse, http.server, json, os, socket, subprocess, sys, threading, time

p = argparse.ArgumentParser()
p.add_argument("--load", type=float, default=0.0)
p.add_argument("--http", type=int)
p.add_argument("--not-ready-for", type=float, default=0.0)
p.add_argument("--tcp", type=int)
p.add_argument("--log-ready", action="store_true")
p.add_argument("--exit", type=int)
p.add_argument("--grandchild-pidfile")
p.add_argument("--count-file")
p.add_argument("--ignore-term", action="store_true")
p.add_argument("--crash-after", type=float)
a = p.parse_args()
if a.ignore_term:
    import signal
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
start = time.time()
print("loading model", flush=True)
if a.count_file:
    with open(a.count_file, "a") as f:
        f.write("started\n")
if a.grandchild_pidfile:
    g = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(1)"])
    with open(a.grandchild_pidfile, "w") as f:
        f.write(str(g.pid))

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ready = time.time() - start >= a.not_ready_for
        body = json.dumps({"status": "ok" if ready else "not_ready"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

def serve():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", a.http), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()

if a.http and a.not_ready_for:
    serve()
time.sleep(a.load)
if a.exit is not None:
    print("CUDA out of memory", file=sys.stderr, flush=True)
    sys.exit(a.exit)
if a.tcp:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", a.tcp))
    s.listen()
if a.http and not a.not_ready_for:
    serve()
if a.log_ready:
    print("[SERVICE_READY]", flush=True)
if a.crash_after is not None:
    time.sleep(a.crash_after)
    print("segfault in decoder", flush=True)
    os._exit(139)
while True:
    time.sleep(1)
"#;

/// A temp dir holding the service script, removed at the end of the test.
pub(super) struct Sandbox {
    pub(super) dir: PathBuf,
}

impl Sandbox {
    pub(super) fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("gpu-sidecar-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("service.py"), SERVICE_PY).unwrap();
        Self { dir }
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A service entry running the script with `args`, ready by `readiness`.
    pub(super) fn service(&self, name: &str, args: &[&str], readiness: Value) -> Value {
        let mut argv = vec![self.path("service.py").display().to_string()];
        argv.extend(args.iter().map(|a| a.to_string()));
        json!({
            "name": name, "command": "python3", "args": argv, "readiness": readiness,
            "readinessTimeoutMs": 10000, "probeIntervalMs": 50, "stopTimeoutMs": 2000
        })
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(super) fn log_ready() -> Value {
    json!({"logLine": {"pattern": "\\[SERVICE_READY\\]"}})
}

pub(super) fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

pub(super) fn supervisor(config: Value, hooks: SupervisorHooks) -> (Supervisor, UnboundedReceiver<ServiceEvent>) {
    let mut warnings = Vec::new();
    let config = ServicesConfig::from_json(&config, &mut warnings).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    Supervisor::new(config, hooks)
}

pub(super) fn drain(rx: &mut UnboundedReceiver<ServiceEvent>) -> Vec<ServiceEvent> {
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    events
}

/// The events of one service that are not log lines.
pub(super) fn steps<'a>(events: &'a [ServiceEvent], service: &str) -> Vec<&'a ServiceEventKind> {
    events
        .iter()
        .filter(|e| e.service == service && !matches!(e.kind, ServiceEventKind::Log { .. }))
        .map(|e| &e.kind)
        .collect()
}

/// When `service` first had an event matching `pred`.
pub(super) fn first_at(events: &[ServiceEvent], service: &str, pred: impl Fn(&ServiceEventKind) -> bool) -> u64 {
    events
        .iter()
        .find(|e| e.service == service && pred(&e.kind))
        .unwrap_or_else(|| panic!("no such event for {service}: {events:#?}"))
        .timestamp_ms
}

pub(super) fn is_starting(k: &ServiceEventKind) -> bool {
    matches!(k, ServiceEventKind::Starting { .. })
}
pub(super) fn is_ready(k: &ServiceEventKind) -> bool {
    matches!(k, ServiceEventKind::Ready { .. })
}

pub(super) fn ready_ms(outcome: &StartOutcome) -> u64 {
    match outcome {
        StartOutcome::Ready { time_to_ready_ms } => *time_to_ready_ms,
        other => panic!("expected ready, got {other:?}"),
    }
}

pub(super) fn failure(outcome: &StartOutcome) -> (&SidecarError, &[String]) {
    match outcome {
        StartOutcome::Failed { error, last_lines } => (error, last_lines),
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// Process state letter from `/proc/<pid>/stat`; `None` once the pid is gone.
pub(super) fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}

/// Our child `pid` is fully gone: dead and reaped.
pub(super) fn reaped(pid: u32) -> bool {
    proc_state(pid).is_none()
}

/// A process that is not our child is dead (a zombie waiting for init counts as dead).
pub(super) fn dead(pid: u32) -> bool {
    matches!(proc_state(pid), None | Some('Z'))
}

pub(super) fn spawned_pids(events: &[ServiceEvent]) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e.kind {
            ServiceEventKind::Spawned { pid } => Some(pid),
            _ => None,
        })
        .collect()
}

/// A GPU whose free memory the test sets, and whose processes all use `used_mb` (0: the source
/// has no per-process figures). The GPU's used memory is `gpu_used_mb` (0: not reported).
/// Readings are taken at `sampled_at_ms`, or when read while that is 0.
#[derive(Default)]
pub(super) struct FakeVram {
    pub(super) free_mb: AtomicU64,
    pub(super) used_mb: AtomicU64,
    pub(super) gpu_used_mb: AtomicU64,
    pub(super) sampled_at_ms: AtomicU64,
}

impl VramSource for FakeVram {
    fn free_mb(&self, gpu_key: &str) -> Option<VramReading> {
        let sampled_at_ms = match self.sampled_at_ms.load(Ordering::SeqCst) {
            0 => now_ms(),
            at => at,
        };
        (gpu_key == "gpu:0").then(|| VramReading {
            free_mb: self.free_mb.load(Ordering::SeqCst),
            used_mb: Some(self.gpu_used_mb.load(Ordering::SeqCst)).filter(|&mb| mb > 0),
            sampled_at_ms,
        })
    }
    fn gpu_keys(&self) -> Vec<String> {
        vec!["gpu:0".into()]
    }
    fn process_used_mb(&self, _pid: u32) -> Option<u64> {
        Some(self.used_mb.load(Ordering::SeqCst)).filter(|&mb| mb > 0)
    }
    fn load_seen(&self, _gpu_key: &str, pid: u32, _spawned_at_ms: u64) -> LoadSeen {
        self.process_used_mb(pid).map_or(LoadSeen::Unknown, LoadSeen::Shown)
    }
}

pub(super) fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Waits until every one of `names` has a running process.
pub(super) async fn until_spawned(sup: &Supervisor, names: &[&str]) {
    while !names.iter().all(|n| sup.status(n).unwrap().pid.is_some()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
