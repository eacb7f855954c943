//! Supervisor tests against real processes: a small Python service (standard library only) that
//! plays a model load, then becomes ready in the way each test asks for, or crashes.

use std::collections::HashMap;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::*;
use crate::error::{ErrorCode, SidecarError, SidecarResult};

mod host_memory;

const SERVICE_PY: &str = r#"
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
struct Sandbox {
    dir: PathBuf,
}

impl Sandbox {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("gpu-sidecar-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("service.py"), SERVICE_PY).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A service entry running the script with `args`, ready by `readiness`.
    fn service(&self, name: &str, args: &[&str], readiness: Value) -> Value {
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

fn log_ready() -> Value {
    json!({"logLine": {"pattern": "\\[SERVICE_READY\\]"}})
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

fn supervisor(config: Value, hooks: SupervisorHooks) -> (Supervisor, UnboundedReceiver<ServiceEvent>) {
    let mut warnings = Vec::new();
    let config = ServicesConfig::from_json(&config, &mut warnings).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    Supervisor::new(config, hooks)
}

fn drain(rx: &mut UnboundedReceiver<ServiceEvent>) -> Vec<ServiceEvent> {
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    events
}

/// The events of one service that are not log lines.
fn steps<'a>(events: &'a [ServiceEvent], service: &str) -> Vec<&'a ServiceEventKind> {
    events
        .iter()
        .filter(|e| e.service == service && !matches!(e.kind, ServiceEventKind::Log { .. }))
        .map(|e| &e.kind)
        .collect()
}

/// When `service` first had an event matching `pred`.
fn first_at(events: &[ServiceEvent], service: &str, pred: impl Fn(&ServiceEventKind) -> bool) -> u64 {
    events
        .iter()
        .find(|e| e.service == service && pred(&e.kind))
        .unwrap_or_else(|| panic!("no such event for {service}: {events:#?}"))
        .timestamp_ms
}

fn is_starting(k: &ServiceEventKind) -> bool {
    matches!(k, ServiceEventKind::Starting { .. })
}
fn is_ready(k: &ServiceEventKind) -> bool {
    matches!(k, ServiceEventKind::Ready { .. })
}

fn ready_ms(outcome: &StartOutcome) -> u64 {
    match outcome {
        StartOutcome::Ready { time_to_ready_ms } => *time_to_ready_ms,
        other => panic!("expected ready, got {other:?}"),
    }
}

fn failure(outcome: &StartOutcome) -> (&SidecarError, &[String]) {
    match outcome {
        StartOutcome::Failed { error, last_lines } => (error, last_lines),
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// Process state letter from `/proc/<pid>/stat`; `None` once the pid is gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}

/// Our child `pid` is fully gone: dead and reaped.
fn reaped(pid: u32) -> bool {
    proc_state(pid).is_none()
}

/// A process that is not our child is dead (a zombie waiting for init counts as dead).
fn dead(pid: u32) -> bool {
    matches!(proc_state(pid), None | Some('Z'))
}

fn spawned_pids(events: &[ServiceEvent]) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e.kind {
            ServiceEventKind::Spawned { pid } => Some(pid),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_readiness_waits_through_failed_probes() {
    let sb = Sandbox::new("http");
    let port = free_port().to_string();
    let (sup, mut rx) = supervisor(
        json!({"services": [sb.service("asr", &["--load", "0.4", "--http", &port], json!({"http": {"url": format!("http://127.0.0.1:{port}/health")}}))]}),
        SupervisorHooks::default(),
    );
    let outcomes = sup.start_all().await.unwrap();
    assert!(ready_ms(&outcomes[0].outcome) >= 400);
    assert_eq!(sup.status("asr").unwrap().state, ServiceState::Ready);
    let events = drain(&mut rx);
    let steps = steps(&events, "asr");
    assert!(matches!(steps[0], ServiceEventKind::Starting { attempt: 0, .. }), "{steps:?}");
    assert!(steps.iter().any(|k| matches!(k, ServiceEventKind::ProbeFailed { .. })), "{steps:?}");
    assert!(is_ready(steps.last().unwrap()), "{steps:?}");
    assert!(events
        .iter()
        .any(|e| e.kind == ServiceEventKind::Log { stream: OutputStream::Stdout, line: "loading model".into() }));
    sup.close().await;
    assert_eq!(sup.status("asr").unwrap().state, ServiceState::Stopped);
    assert_eq!(sup.start("asr").await.unwrap_err().code, ErrorCode::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_body_that_says_not_ready_is_not_ready() {
    let sb = Sandbox::new("json");
    let port = free_port().to_string();
    let readiness =
        json!({"http": {"url": format!("http://127.0.0.1:{port}/health"), "jsonField": "status", "jsonValue": "ok"}});
    let (sup, mut rx) = supervisor(
        json!({"services": [sb.service("nmt", &["--http", &port, "--not-ready-for", "0.5"], readiness)]}),
        SupervisorHooks::default(),
    );
    let outcomes = sup.start_all().await.unwrap();
    assert!(ready_ms(&outcomes[0].outcome) >= 500);
    let events = drain(&mut rx);
    assert!(
        steps(&events, "nmt").iter().any(
            |k| matches!(k, ServiceEventKind::ProbeFailed { reason } if reason.contains("status is \"not_ready\""))
        ),
        "{events:#?}"
    );
    sup.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_log_line_and_no_readiness() {
    let sb = Sandbox::new("kinds");
    let port = free_port();
    let mut tcp = sb.service("tcp", &["--load", "0.2", "--tcp", &port.to_string()], json!({"tcp": {}}));
    tcp["port"] = json!(port);
    let (sup, mut rx) = supervisor(
        json!({"maxConcurrentStarts": 3, "services": [
            tcp,
            sb.service("log", &["--load", "0.2", "--log-ready"], log_ready()),
            sb.service("none", &["--load", "5"], json!({"none": {}})),
        ]}),
        SupervisorHooks::default(),
    );
    let outcomes = sup.start_all().await.unwrap();
    assert!(ready_ms(&outcomes[0].outcome) >= 200);
    // The log line is seen as it is printed, not at the next poll.
    let log_ms = ready_ms(&outcomes[1].outcome);
    assert!((200..1500).contains(&log_ms), "{log_ms}");
    assert!(ready_ms(&outcomes[2].outcome) < 1000);
    assert_eq!(sup.statuses().iter().filter(|s| s.state == ServiceState::Ready).count(), 3);
    let pids = spawned_pids(&drain(&mut rx));
    sup.stop_all().await;
    assert!(pids.iter().all(|&p| reaped(p)), "{pids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readiness_timeout_fails_stops_and_blocks_dependents_only() {
    let sb = Sandbox::new("timeout");
    let port = free_port().to_string();
    let mut slow =
        sb.service("slow", &["--load", "30"], json!({"http": {"url": format!("http://127.0.0.1:{port}/health")}}));
    slow["readinessTimeoutMs"] = json!(600);
    let mut dependent = sb.service("dependent", &["--log-ready"], log_ready());
    dependent["dependsOn"] = json!(["slow"]);
    let (sup, mut rx) = supervisor(
        json!({"services": [dependent, slow, sb.service("independent", &["--log-ready"], log_ready())]}),
        SupervisorHooks::default(),
    );
    let started = Instant::now();
    let outcomes = sup.start_all().await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    let by_name: HashMap<_, _> = outcomes.iter().map(|o| (o.service.as_str(), &o.outcome)).collect();
    let (error, last_lines) = failure(by_name["slow"]);
    assert_eq!(error.code, ErrorCode::ReadinessTimeout);
    assert!(error.message.contains("not ready after 600 ms; last probe: GET"), "{}", error.message);
    assert_eq!(last_lines, ["loading model"]);
    assert_eq!(by_name["dependent"], &StartOutcome::Blocked { dependency: "slow".into() });
    ready_ms(by_name["independent"]);
    let events = drain(&mut rx);
    let slow_steps = steps(&events, "slow");
    assert!(slow_steps.contains(&&ServiceEventKind::ReadinessTimeout { timeout_ms: 600 }), "{slow_steps:?}");
    assert!(matches!(slow_steps.last(), Some(ServiceEventKind::Failed { .. })), "{slow_steps:?}");
    assert_eq!(steps(&events, "dependent"), [&ServiceEventKind::Blocked { dependency: "slow".into() }]);
    let slow_pid = spawned_pids(&events)[0];
    assert!(reaped(slow_pid));
    assert_eq!(sup.status("slow").unwrap().state, ServiceState::Failed);
    sup.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_startup_fails_at_once_with_its_code_and_last_lines() {
    let sb = Sandbox::new("crash");
    let (sup, mut rx) = supervisor(
        json!({"services": [sb.service("tts", &["--load", "0.1", "--exit", "3"], log_ready())]}),
        SupervisorHooks::default(),
    );
    let started = Instant::now();
    let outcome = sup.start("tts").await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(3), "waited for the readiness timeout");
    let (error, last_lines) = failure(&outcome);
    assert_eq!(error.code, ErrorCode::ServiceExited);
    assert_eq!(error.message, "tts: exited with exit code 3 during startup");
    assert!(last_lines.contains(&"loading model".to_string()), "{last_lines:?}");
    assert!(last_lines.contains(&"CUDA out of memory".to_string()), "{last_lines:?}");
    let events = drain(&mut rx);
    assert!(
        steps(&events, "tts").contains(&&ServiceEventKind::Exited { exit: ExitInfo { code: Some(3), signal: None } })
    );
    assert!(reaped(spawned_pids(&events)[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_back_off_exponentially_then_fail() {
    let sb = Sandbox::new("restart");
    let count_file = sb.path("count").display().to_string();
    let mut flaky = sb.service("flaky", &["--exit", "1", "--count-file", &count_file], log_ready());
    flaky["restart"] =
        json!({"policy": "on-failure", "maxRestarts": 3, "backoffMs": 100, "maxBackoffMs": 250, "jitter": 0});
    let (sup, mut rx) = supervisor(json!({"services": [flaky]}), SupervisorHooks::default());
    let outcome = sup.start("flaky").await.unwrap();
    let (error, _) = failure(&outcome);
    assert_eq!(error.message, "flaky: exited with exit code 1 during startup after 3 restarts");
    assert_eq!(std::fs::read_to_string(&count_file).unwrap().lines().count(), 4);
    let events = drain(&mut rx);
    let restarts: Vec<(u32, u64)> = steps(&events, "flaky")
        .iter()
        .filter_map(|k| match k {
            ServiceEventKind::Restarting { attempt, delay_ms } => Some((*attempt, *delay_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(restarts, [(1, 100), (2, 200), (3, 250)]);
    let starts: Vec<u64> = events.iter().filter(|e| is_starting(&e.kind)).map(|e| e.timestamp_ms).collect();
    for (gap, (_, delay)) in starts.windows(2).map(|w| w[1] - w[0]).zip(&restarts) {
        assert!(gap >= *delay, "{gap} < {delay}");
    }
    assert_eq!(sup.status("flaky").unwrap().restarts, 3);
    assert!(spawned_pids(&events).iter().all(|&p| reaped(p)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_fails_at_once_naming_its_holder() {
    let sb = Sandbox::new("port");
    let holder = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = holder.local_addr().unwrap().port();
    let mut svc = sb.service("asr", &["--log-ready"], log_ready());
    svc["port"] = json!(port);
    let (sup, mut rx) = supervisor(json!({"services": [svc]}), SupervisorHooks::default());
    let outcome = sup.start("asr").await.unwrap();
    let (error, _) = failure(&outcome);
    assert_eq!(error.code, ErrorCode::PortInUse);
    let expected = format!("asr: port {port} is already in use by pid {}", std::process::id());
    assert!(error.message.starts_with(&expected), "{}", error.message);
    assert!(spawned_pids(&drain(&mut rx)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_load_at_a_time_in_dependency_order() {
    let sb = Sandbox::new("serial");
    let load = ["--load", "0.2", "--log-ready"];
    let mut web = sb.service("web", &load, log_ready());
    web["dependsOn"] = json!(["db"]);
    let (sup, mut rx) = supervisor(
        json!({"services": [web, sb.service("db", &load, log_ready()), sb.service("cache", &load, log_ready())]}),
        SupervisorHooks::default(),
    );
    let outcomes = sup.start_all().await.unwrap();
    let order: Vec<&str> = outcomes.iter().map(|o| o.service.as_str()).collect();
    assert_eq!(order, ["db", "web", "cache"]);
    let events = drain(&mut rx);
    for pair in order.windows(2) {
        let ready = first_at(&events, pair[0], is_ready);
        let next = first_at(&events, pair[1], is_starting);
        assert!(ready <= next, "{} started before {} was ready", pair[1], pair[0]);
    }
    sup.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_starts_bounds_overlapping_loads() {
    let sb = Sandbox::new("concurrent");
    let load = ["--load", "0.4", "--log-ready"];
    let names = ["a", "b", "c", "d"];
    let services: Vec<Value> = names.iter().map(|n| sb.service(n, &load, log_ready())).collect();
    let (sup, mut rx) = supervisor(json!({"maxConcurrentStarts": 2, "services": services}), SupervisorHooks::default());
    sup.start_all().await.unwrap();
    let events = drain(&mut rx);
    let spans: Vec<(u64, u64)> =
        names.iter().map(|n| (first_at(&events, n, is_starting), first_at(&events, n, is_ready))).collect();
    let most_loading =
        spans.iter().map(|&(start, _)| spans.iter().filter(|&&(s, r)| s <= start && start < r).count()).max().unwrap();
    assert_eq!(most_loading, 2, "{spans:?}");
    sup.close().await;
}

/// A GPU whose free memory the test sets, and whose processes all use `used_mb` (0: the source
/// has no per-process figures). The GPU's used memory is `gpu_used_mb` (0: not reported).
/// Readings are taken at `sampled_at_ms`, or when read while that is 0.
#[derive(Default)]
struct FakeVram {
    free_mb: AtomicU64,
    used_mb: AtomicU64,
    gpu_used_mb: AtomicU64,
    sampled_at_ms: AtomicU64,
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
}

/// Counts leases and checks that no two are held at once.
#[derive(Default)]
struct FakeLease {
    held: Arc<AtomicUsize>,
    granted: AtomicUsize,
}

struct HeldLease(Arc<AtomicUsize>);

impl Drop for HeldLease {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl StartupLease for FakeLease {
    fn acquire<'a>(&'a self, _service: &'a str, _gpu_key: &'a str) -> LeaseFuture<'a> {
        Box::pin(async move {
            assert_eq!(self.held.fetch_add(1, Ordering::SeqCst), 0, "two loads held the lease");
            self.granted.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(HeldLease(self.held.clone())) as LeaseGuard)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vram_gate_waits_for_free_memory_under_a_startup_lease() {
    let sb = Sandbox::new("vram");
    let vram = Arc::new(FakeVram::default());
    vram.free_mb.store(1_000, Ordering::SeqCst);
    let lease = Arc::new(FakeLease::default());
    let mut asr = sb.service("asr", &["--log-ready"], log_ready());
    asr["gpu"] = json!({"key": "gpu:0", "vramMb": 1000});
    let hooks = SupervisorHooks { vram: Some(vram.clone()), startup_lease: Some(lease.clone()), ..Default::default() };
    let (sup, mut rx) = supervisor(
        json!({"vramHeadroomMb": 500, "vramTimeoutMs": 10000, "gpuStartupLease": true, "services": [asr]}),
        hooks,
    );
    let raise = tokio::spawn({
        let vram = vram.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            vram.free_mb.store(1_500, Ordering::SeqCst);
        }
    });
    let outcome = sup.start("asr").await.unwrap();
    raise.await.unwrap();
    ready_ms(&outcome);
    assert_eq!(lease.granted.load(Ordering::SeqCst), 1);
    // The attempt drops its lease guard as it reports ready, on its own task: allow it a moment.
    for _ in 0..100 {
        if lease.held.load(Ordering::SeqCst) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(lease.held.load(Ordering::SeqCst), 0, "the lease is released at ready");
    let events = drain(&mut rx);
    assert!(steps(&events, "asr").contains(&&ServiceEventKind::VramWait {
        gpu_key: "gpu:0".into(),
        needed_mb: 1500,
        free_mb: 1000
    }));
    let waited = first_at(&events, "asr", |k| matches!(k, ServiceEventKind::Spawned { .. }))
        - first_at(&events, "asr", is_starting);
    assert!(waited >= 250, "spawned after {waited} ms");
    sup.close().await;
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The seed-000 incident: `a` is ready before telemetry samples again, so the latest reading
/// predates its load and still shows its memory as free. `b` must wait for a reading that shows
/// it rather than load on top of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vram_gate_counts_a_load_spawned_after_the_reading() {
    let sb = Sandbox::new("vramstale");
    let vram = Arc::new(FakeVram::default());
    vram.free_mb.store(2_000, Ordering::SeqCst);
    vram.sampled_at_ms.store(now_ms().saturating_sub(1_000), Ordering::SeqCst);
    let mut a = sb.service("a", &["--log-ready"], log_ready());
    a["gpu"] = json!({"key": "gpu:0", "vramMb": 1000});
    let mut b = sb.service("b", &["--log-ready"], log_ready());
    b["gpu"] = json!({"key": "gpu:0", "vramMb": 1000});
    let hooks = SupervisorHooks { vram: Some(vram.clone()), startup_lease: None, ..Default::default() };
    let (sup, mut rx) = supervisor(json!({"vramHeadroomMb": 500, "vramTimeoutMs": 10000, "services": [a, b]}), hooks);
    let sup = Arc::new(sup);
    // Once `a` is ready, telemetry samples again, later: `a` holds 400 MB (under its estimate).
    let fresh = tokio::spawn({
        let (sup, vram) = (sup.clone(), vram.clone());
        async move {
            while sup.status("a").unwrap().state != ServiceState::Ready {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let fresh_at = now_ms();
            vram.free_mb.store(1_600, Ordering::SeqCst);
            vram.sampled_at_ms.store(fresh_at, Ordering::SeqCst);
            fresh_at
        }
    });
    let outcomes = sup.start_all().await.unwrap();
    let fresh_at = fresh.await.unwrap();
    for o in &outcomes {
        ready_ms(&o.outcome);
    }
    let events = drain(&mut rx);
    assert!(!steps(&events, "a").iter().any(|k| matches!(k, ServiceEventKind::VramWait { .. })));
    assert!(steps(&events, "b").contains(&&ServiceEventKind::VramWait {
        gpu_key: "gpu:0".into(),
        needed_mb: 1500,
        free_mb: 1000
    }));
    let b_spawned = first_at(&events, "b", |k| matches!(k, ServiceEventKind::Spawned { .. }));
    assert!(b_spawned >= fresh_at, "b spawned at {b_spawned}, before the fresh reading at {fresh_at}");
    sup.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vram_gate_times_out() {
    let sb = Sandbox::new("vramtimeout");
    let vram = Arc::new(FakeVram::default());
    vram.free_mb.store(100, Ordering::SeqCst);
    let mut asr = sb.service("asr", &["--log-ready"], log_ready());
    asr["gpu"] = json!({"key": "gpu:0", "vramMb": 1000});
    let hooks = SupervisorHooks { vram: Some(vram), startup_lease: None, ..Default::default() };
    let (sup, mut rx) = supervisor(json!({"vramTimeoutMs": 300, "services": [asr]}), hooks);
    let outcome = sup.start("asr").await.unwrap();
    let (error, _) = failure(&outcome);
    assert_eq!(error.code, ErrorCode::VramTimeout);
    assert!(error.message.contains("needs 1512 MB (1000 MB + 512 MB headroom)"), "{}", error.message);
    assert!(spawned_pids(&drain(&mut rx)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_gates_on_what_the_first_run_learned() {
    let sb = Sandbox::new("learned");
    let state_file = sb.path("state.json");
    let vram = Arc::new(FakeVram::default());
    vram.free_mb.store(8_000, Ordering::SeqCst);
    vram.used_mb.store(3_000, Ordering::SeqCst);
    let mut asr = sb.service("asr", &["--load", "0.2", "--log-ready"], log_ready());
    asr["gpu"] = json!({"key": "gpu:0"});
    let config = json!({"stateFile": state_file, "vramHeadroomMb": 100, "services": [asr]});
    let hooks = SupervisorHooks { vram: Some(vram.clone()), startup_lease: None, ..Default::default() };

    let (first, mut rx) = supervisor(config.clone(), hooks.clone());
    ready_ms(&first.start("asr").await.unwrap());
    first.close().await;
    let events = drain(&mut rx);
    assert!(
        steps(&events, "asr")
            .iter()
            .any(|k| matches!(k, ServiceEventKind::VramGateOff { reason, .. } if reason.contains("none learned"))),
        "{events:#?}"
    );
    let learned = learned_profile(&state_file);
    assert_eq!(learned.peak_vram_mb, Some(3_000));
    assert_eq!(learned.peak_vram_method, Some(PeakVramMethod::Process));
    assert!(learned.time_to_ready_ms.unwrap() >= 200);

    vram.free_mb.store(2_000, Ordering::SeqCst);
    let (second, mut rx) = supervisor(config, hooks);
    assert_eq!(second.status("asr").unwrap().learned, learned);
    let raise = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        vram.free_mb.store(3_100, Ordering::SeqCst);
    });
    ready_ms(&second.start("asr").await.unwrap());
    raise.await.unwrap();
    let events = drain(&mut rx);
    let steps = steps(&events, "asr");
    assert_eq!(steps[0], &ServiceEventKind::Starting { attempt: 0, expected_ready_ms: learned.time_to_ready_ms });
    assert!(steps.contains(&&ServiceEventKind::VramWait { gpu_key: "gpu:0".into(), needed_mb: 3_100, free_mb: 2_000 }));
    second.close().await;
}

fn learned_profile(state_file: &Path) -> LearnedProfile {
    let state: Value = serde_json::from_slice(&std::fs::read(state_file).unwrap()).unwrap();
    serde_json::from_value(state["services"]["asr"].clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_the_service_and_its_grandchild() {
    let sb = Sandbox::new("grandchild");
    let pidfile = sb.path("grandchild.pid");
    let log_file = sb.path("service.log");
    let mut svc =
        sb.service("forker", &["--grandchild-pidfile", &pidfile.display().to_string(), "--log-ready"], log_ready());
    svc["logFile"] = json!(log_file);
    let (sup, mut rx) = supervisor(json!({"services": [svc]}), SupervisorHooks::default());
    ready_ms(&sup.start("forker").await.unwrap());
    let grandchild: u32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    let pid = sup.status("forker").unwrap().pid.unwrap();
    assert!(!dead(grandchild));
    sup.stop("forker").await.unwrap();
    assert!(reaped(pid), "the service is left as {:?}", proc_state(pid));
    let deadline = Instant::now() + Duration::from_secs(2);
    while !dead(grandchild) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(dead(grandchild), "the grandchild survived the stop");
    let steps: Vec<_> = steps(&drain(&mut rx), "forker").into_iter().cloned().collect();
    assert!(matches!(steps.last(), Some(ServiceEventKind::Stopped)), "{steps:?}");
    assert_eq!(sup.status("forker").unwrap().state, ServiceState::Stopped);
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert_eq!(log, "loading model\n[SERVICE_READY]\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_start_stop_cycles_leave_no_zombies() {
    let sb = Sandbox::new("cycles");
    let (sup, mut rx) =
        supervisor(json!({"services": [sb.service("svc", &["--log-ready"], log_ready())]}), SupervisorHooks::default());
    for _ in 0..20 {
        ready_ms(&sup.start("svc").await.unwrap());
        sup.stop("svc").await.unwrap();
    }
    // And one restart of a running service.
    ready_ms(&sup.start("svc").await.unwrap());
    ready_ms(&sup.restart("svc").await.unwrap());
    let pids = spawned_pids(&drain(&mut rx));
    assert_eq!(pids.len(), 22);
    let left: Vec<(u32, Option<char>)> =
        pids[..21].iter().map(|&p| (p, proc_state(p))).filter(|(_, s)| s.is_some()).collect();
    assert!(left.is_empty(), "processes left behind: {left:?}");
    sup.close().await;
    assert!(reaped(pids[21]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_the_load_ends_the_start() {
    let sb = Sandbox::new("stopload");
    let (sup, mut rx) = supervisor(
        json!({"services": [sb.service("slow", &["--load", "30", "--log-ready"], log_ready())]}),
        SupervisorHooks::default(),
    );
    let sup = Arc::new(sup);
    let start = tokio::spawn({
        let sup = sup.clone();
        async move { sup.start("slow").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sup.stop("slow").await.unwrap();
    let outcome: SidecarResult<StartOutcome> = start.await.unwrap();
    assert_eq!(outcome.unwrap(), StartOutcome::Stopped);
    let pids = spawned_pids(&drain(&mut rx));
    assert!(reaped(pids[0]));
    assert_eq!(sup.status("nope").unwrap_err().code, ErrorCode::UnknownService);
}

/// Set for the child test process that plays the host in `services_die_with_a_killed_host`.
const HOST_ENV: &str = "GPU_SIDECAR_TEST_HOST_DIR";

/// Not a test on its own: the host process for `services_die_with_a_killed_host`. It starts a
/// service that forks a grandchild, writes the grandchild's pid and then the service's, and waits
/// to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by services_die_with_a_killed_host"]
async fn host_process_for_the_death_signal_test() {
    let Ok(dir) = std::env::var(HOST_ENV) else {
        return;
    };
    let script = Path::new(&dir).join("service.py").display().to_string();
    let grandchild = Path::new(&dir).join("grandchild.pid").display().to_string();
    let args = json!([script, "--log-ready", "--grandchild-pidfile", grandchild]);
    let (sup, _rx) = supervisor(
        json!({"services": [{"name": "orphan", "command": "python3", "args": args, "readiness": log_ready()}]}),
        SupervisorHooks::default(),
    );
    ready_ms(&sup.start("orphan").await.unwrap());
    let pid = sup.status("orphan").unwrap().pid.unwrap();
    std::fs::write(Path::new(&dir).join("service.pid"), pid.to_string()).unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_die_with_a_killed_host() {
    let sb = Sandbox::new("pdeathsig");
    let mut host = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "services::tests::host_process_for_the_death_signal_test", "--ignored"])
        .env(HOST_ENV, &sb.dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pidfile = sb.path("service.pid");
    let deadline = Instant::now() + Duration::from_secs(10);
    let service_pid: u32 = loop {
        if let Some(pid) = std::fs::read_to_string(&pidfile).ok().and_then(|s| s.parse().ok()) {
            break pid;
        }
        assert!(Instant::now() < deadline, "the host never started its service");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Written before the service became ready, so before the service's pid.
    let grandchild_pid: u32 = std::fs::read_to_string(sb.path("grandchild.pid")).unwrap().parse().unwrap();
    assert!(!dead(service_pid) && !dead(grandchild_pid));
    host.kill().unwrap(); // SIGKILL: no cleanup code runs in the host.
    host.wait().unwrap();
    let killed_at = Instant::now();
    while !(dead(service_pid) && dead(grandchild_pid)) && killed_at.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(dead(service_pid), "the service outlived its SIGKILLed host");
    assert!(dead(grandchild_pid), "the service's child outlived the SIGKILLed host");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_death_watchdog_stays_out_of_service_groups_and_is_reaped_on_close() {
    let sb = Sandbox::new("watchdog");
    let (sup, _rx) = supervisor(
        json!({"services": [sb.service("a", &["--log-ready"], log_ready()), sb.service("b", &["--log-ready"], log_ready())]}),
        SupervisorHooks::default(),
    );
    assert_eq!(sup.host_death_watchdog_pid(), None, "no watchdog before the first service");
    sup.start_all().await.unwrap();
    let watchdog = sup.host_death_watchdog_pid().expect("a watchdog once services run");
    assert!(!dead(watchdog));
    let group_of = |pid: u32| {
        // SAFETY: getpgid only reads another process's group id.
        unsafe { libc::getpgid(pid as libc::pid_t) }
    };
    for name in ["a", "b"] {
        let pid = sup.status(name).unwrap().pid.unwrap();
        assert_eq!(group_of(pid), pid as libc::pid_t, "{name} leads its own group");
        assert_ne!(group_of(watchdog), pid as libc::pid_t, "the watchdog is in {name}'s group");
    }
    // One watchdog for the whole supervisor, also across a restart.
    sup.restart("a").await.unwrap();
    assert_eq!(sup.host_death_watchdog_pid(), Some(watchdog));
    sup.close().await;
    assert_eq!(sup.host_death_watchdog_pid(), None);
    assert!(reaped(watchdog), "the watchdog was not reaped on close");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_supervisor_reaps_its_watchdog() {
    let sb = Sandbox::new("watchdogdrop");
    let (sup, _rx) =
        supervisor(json!({"services": [sb.service("a", &["--log-ready"], log_ready())]}), SupervisorHooks::default());
    sup.start_all().await.unwrap();
    let watchdog = sup.host_death_watchdog_pid().unwrap();
    let service = sup.status("a").unwrap().pid.unwrap();
    drop(sup);
    // The aborted runner drops the service, and with it the last handle on the watchdog.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !(reaped(watchdog) && dead(service)) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(dead(service));
    assert!(reaped(watchdog), "the watchdog was not reaped after drop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_ignores_its_stop_signal_is_killed_after_the_stop_timeout() {
    let sb = Sandbox::new("ignoreterm");
    let mut svc = sb.service("stubborn", &["--ignore-term", "--log-ready"], log_ready());
    svc["stopTimeoutMs"] = json!(300);
    let (sup, _rx) = supervisor(json!({"services": [svc]}), SupervisorHooks::default());
    ready_ms(&sup.start("stubborn").await.unwrap());
    let pid = sup.status("stubborn").unwrap().pid.unwrap();
    let started = Instant::now();
    sup.stop("stubborn").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(reaped(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_ready_restarts_then_fails_with_its_last_lines() {
    let sb = Sandbox::new("runtimecrash");
    let mut svc = sb.service("decoder", &["--log-ready", "--crash-after", "0.2"], log_ready());
    svc["restart"] = json!({"policy": "always", "maxRestarts": 1, "backoffMs": 50, "jitter": 0});
    let (sup, mut rx) = supervisor(json!({"services": [svc]}), SupervisorHooks::default());
    ready_ms(&sup.start("decoder").await.unwrap());
    let mut steps = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(steps.last(), Some(ServiceEventKind::Failed { .. })) {
        assert!(Instant::now() < deadline, "never failed: {steps:?}");
        let event = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        if !matches!(event.kind, ServiceEventKind::Log { .. }) {
            steps.push(event.kind);
        }
    }
    let crash = ServiceEventKind::Exited { exit: ExitInfo { code: Some(139), signal: None } };
    assert_eq!(steps.iter().filter(|k| **k == crash).count(), 2, "{steps:?}");
    assert!(steps.contains(&ServiceEventKind::Restarting { attempt: 1, delay_ms: 50 }));
    assert_eq!(steps.iter().filter(|k| is_ready(k)).count(), 2, "{steps:?}");
    let Some(ServiceEventKind::Failed { error, last_lines }) = steps.last() else { unreachable!() };
    assert_eq!(error.message, "decoder: exited with exit code 139 after 1 restarts");
    assert_eq!(last_lines.last().map(String::as_str), Some("segfault in decoder"));
    // Events are sent just before the state they report is set.
    let deadline = Instant::now() + Duration::from_secs(1);
    while sup.status("decoder").unwrap().state != ServiceState::Failed {
        assert!(Instant::now() < deadline, "{:?}", sup.status("decoder"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A VRAM source with a bug: it panics.
struct PanickingVram;

impl VramSource for PanickingVram {
    fn free_mb(&self, _gpu_key: &str) -> Option<VramReading> {
        panic!("vram source bug")
    }
    fn process_used_mb(&self, _pid: u32) -> Option<u64> {
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_a_runner_fails_the_service_with_internal_instead_of_hanging() {
    let sb = Sandbox::new("runner-panic");
    let mut svc = sb.service("gpu", &["--log-ready"], log_ready());
    svc["gpu"] = json!({"key": "gpu:0", "vramMb": 100});
    let hooks = SupervisorHooks { vram: Some(Arc::new(PanickingVram)), startup_lease: None, ..Default::default() };
    let (sup, mut rx) = supervisor(json!({"services": [svc, sb.service("cpu", &["--log-ready"], log_ready())]}), hooks);
    let outcomes =
        tokio::time::timeout(Duration::from_secs(20), sup.start_all()).await.expect("start_all settles").unwrap();
    let (error, _) = failure(&outcomes[0].outcome);
    assert_eq!(error.code, ErrorCode::Internal);
    assert_eq!(error.message, "gpu: internal error in the service runner: vram source bug");
    ready_ms(&outcomes[1].outcome);
    assert_eq!(sup.status("gpu").unwrap().state, ServiceState::Failed);
    let steps: Vec<_> = steps(&drain(&mut rx), "gpu").into_iter().cloned().collect();
    assert!(matches!(steps.last(), Some(ServiceEventKind::Failed { .. })), "{steps:?}");
    sup.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_leases_of_its_task_types_declare_a_ready_service_hung_and_it_is_restarted() {
    use crate::services::LeaseChange;
    let sb = Sandbox::new("hung");
    let mut svc = sb.service("asr", &["--log-ready"], log_ready());
    svc["gpu"] = json!({"key": "gpu:0", "taskTypes": ["ASR", "ASR_LONG"]});
    svc["restart"] = json!({"policy": "on-failure", "backoffMs": 20, "jitter": 0});
    svc["hangWindowMs"] = json!(1_000);
    let (sup, mut rx) = supervisor(json!({"services": [svc]}), SupervisorHooks::default());
    assert!(sup.attributes_leases());
    ready_ms(&sup.start("asr").await.unwrap());
    let gpu = || "gpu:0".to_string();
    let acquired =
        |id: &str, task: &str| LeaseChange::Acquired { lease_id: id.into(), task_type: task.into(), gpu_key: gpu() };
    let revoked =
        |id: &str, task: &str| LeaseChange::Revoked { lease_id: id.into(), task_type: task.into(), gpu_key: gpu() };
    sup.observe_lease(acquired("L1", "ASR"), 1_000);
    sup.observe_lease(acquired("L2", "ASR_LONG"), 1_100);
    sup.observe_lease(acquired("L3", "MT"), 1_200);
    let leases = sup.status("asr").unwrap().leases;
    assert_eq!(leases.active.keys().collect::<Vec<_>>(), ["L1", "L2"]);
    assert_eq!(leases.last_grant.unwrap().lease_id, "L2");
    // Revokes further apart than hangWindowMs: not a hang.
    sup.observe_lease(revoked("L1", "ASR"), 2_000);
    sup.observe_lease(revoked("L2", "ASR_LONG"), 3_500);
    sup.observe_lease(LeaseChange::Released { lease_id: "L3".into() }, 3_600);
    assert_eq!(sup.status("asr").unwrap().state, ServiceState::Ready);
    sup.observe_lease(acquired("L4", "ASR"), 3_700);
    sup.observe_lease(revoked("L4", "ASR"), 4_000);
    let mut steps = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while steps.iter().filter(|k| is_ready(k)).count() < 2 {
        assert!(Instant::now() < deadline, "never ready again: {steps:?}");
        let event = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        if !matches!(
            event.kind,
            ServiceEventKind::Log { .. } | ServiceEventKind::Starting { .. } | ServiceEventKind::Spawned { .. }
        ) {
            steps.push(event.kind);
        }
    }
    let hung = steps.iter().position(|k| matches!(k, ServiceEventKind::Hung { .. })).expect("hung");
    assert_eq!(
        steps[hung],
        ServiceEventKind::Hung { revokes: 2, window_ms: 1_000, lease_ids: vec!["L2".into(), "L4".into()] }
    );
    assert!(matches!(steps[hung + 1], ServiceEventKind::Exited { .. }), "{steps:?}");
    assert_eq!(steps[hung + 2], ServiceEventKind::Restarting { attempt: 1, delay_ms: 20 });
    let status = sup.status("asr").unwrap();
    assert_eq!((status.restarts, status.leases.watchdog_revokes), (1, 3));
    assert_eq!(status.last_failure.unwrap().error.code, ErrorCode::ServiceHung);
    sup.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_attributed_to_the_service_of_its_task_type_on_its_gpu() {
    use crate::services::LeaseChange;
    let sb = Sandbox::new("twogpus");
    let mut asr0 = sb.service("asr0", &["--log-ready"], log_ready());
    asr0["gpu"] = json!({"key": "gpu:0", "taskTypes": ["ASR"]});
    let mut asr1 = sb.service("asr1", &["--log-ready"], log_ready());
    asr1["gpu"] = json!({"key": "gpu:1", "taskTypes": ["ASR"]});
    let (sup, _rx) = supervisor(json!({"services": [asr0, asr1]}), SupervisorHooks::default());
    let lease = |id: &str, gpu: &str| LeaseChange::Acquired {
        lease_id: id.into(),
        task_type: "ASR".into(),
        gpu_key: gpu.into(),
    };
    sup.observe_lease(lease("a", "gpu:1"), 1);
    sup.observe_lease(lease("b", "gpu:0"), 2);
    sup.observe_lease(lease("c", "gpu:7"), 3);
    let active = |name: &str| sup.status(name).unwrap().leases.active.into_keys().collect::<Vec<_>>();
    assert_eq!(active("asr0"), ["b", "c"]);
    assert_eq!(active("asr1"), ["a"]);
}

/// Waits until every one of `names` has a running process.
async fn until_spawned(sup: &Supervisor, names: &[&str]) {
    while !names.iter().all(|n| sup.status(n).unwrap().pid.is_some()) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_per_process_figures_a_lone_load_learns_the_rise_in_its_gpus_used_memory() {
    let sb = Sandbox::new("gpudelta");
    let state_file = sb.path("state.json");
    let vram = Arc::new(FakeVram::default());
    vram.free_mb.store(8_000, Ordering::SeqCst);
    vram.gpu_used_mb.store(10_000, Ordering::SeqCst);
    let mut asr = sb.service("asr", &["--load", "1.5", "--log-ready"], log_ready());
    asr["gpu"] = json!({"key": "gpu:0"});
    let hooks = SupervisorHooks { vram: Some(vram.clone()), ..Default::default() };
    let (sup, _rx) = supervisor(json!({"stateFile": state_file, "services": [asr]}), hooks);
    let sup = Arc::new(sup);
    // The load allocates in steps; the GPU's reading follows (no process lists, as under WDDM).
    let load = tokio::spawn({
        let (sup, vram) = (sup.clone(), vram.clone());
        async move {
            until_spawned(&sup, &["asr"]).await;
            vram.gpu_used_mb.store(11_000, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(200)).await;
            vram.gpu_used_mb.store(12_500, Ordering::SeqCst);
        }
    });
    ready_ms(&sup.start("asr").await.unwrap());
    load.await.unwrap();
    let learned = sup.status("asr").unwrap().learned;
    assert_eq!((learned.peak_vram_mb, learned.peak_vram_method), (Some(2_500), Some(PeakVramMethod::GpuDelta)));
    assert_eq!(learned_profile(&state_file), learned);
    sup.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_that_overlap_on_a_gpu_learn_nothing_from_its_used_memory() {
    let sb = Sandbox::new("gpudelta-overlap");
    let vram = Arc::new(FakeVram::default());
    vram.free_mb.store(8_000, Ordering::SeqCst);
    vram.gpu_used_mb.store(10_000, Ordering::SeqCst);
    let mut a = sb.service("a", &["--load", "3", "--log-ready"], log_ready());
    a["gpu"] = json!({"key": "gpu:0"});
    let mut b = sb.service("b", &["--load", "3", "--log-ready"], log_ready());
    b["gpu"] = json!({"key": "gpu:0"});
    let hooks = SupervisorHooks { vram: Some(vram.clone()), ..Default::default() };
    let (sup, _rx) = supervisor(json!({"maxConcurrentStarts": 2, "services": [a, b]}), hooks);
    let sup = Arc::new(sup);
    let load = tokio::spawn({
        let (sup, vram) = (sup.clone(), vram.clone());
        async move {
            until_spawned(&sup, &["a", "b"]).await;
            // Both are still loading (neither said ready yet): the rise is theirs together.
            assert!(["a", "b"].iter().all(|n| sup.status(n).unwrap().state == ServiceState::Starting));
            vram.gpu_used_mb.store(14_000, Ordering::SeqCst);
        }
    });
    for o in sup.start_all().await.unwrap() {
        ready_ms(&o.outcome);
    }
    load.await.unwrap();
    for name in ["a", "b"] {
        assert_eq!(sup.status(name).unwrap().learned.peak_vram_mb, None, "{name}");
    }
    sup.close().await;
}

/// Two GPUs with fixed readings taken before the test began (so loads spawned during it are not
/// in them); records the task-type routes it is told.
struct TwoGpus {
    free_mb: [u64; 2],
    routes: std::sync::Mutex<Vec<Vec<(String, String)>>>,
}

impl TwoGpus {
    fn new(free_mb: [u64; 2]) -> Self {
        Self { free_mb, routes: Default::default() }
    }
}

impl VramSource for TwoGpus {
    fn free_mb(&self, gpu_key: &str) -> Option<VramReading> {
        let i = ["gpu:0", "gpu:1"].iter().position(|k| *k == gpu_key)?;
        Some(VramReading { free_mb: self.free_mb[i], used_mb: None, sampled_at_ms: now_ms() - 60_000 })
    }
    fn gpu_keys(&self) -> Vec<String> {
        vec!["gpu:0".into(), "gpu:1".into()]
    }
    fn process_used_mb(&self, _pid: u32) -> Option<u64> {
        None
    }
    fn gpu_uuid(&self, gpu_key: &str) -> Option<String> {
        Some(format!("GPU-{gpu_key}"))
    }
}

impl TaskRoutes for TwoGpus {
    fn routes_changed(&self, routes: Vec<(String, String)>) {
        self.routes.lock().unwrap().push(routes);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_places_each_start_on_the_gpu_with_most_free_memory_less_loads_on_their_way() {
    let sb = Sandbox::new("auto");
    let gpus = Arc::new(TwoGpus::new([10_000, 8_000]));
    let mut a = sb.service("a", &["--log-ready"], log_ready());
    a["gpu"] = json!({"key": "auto", "vramMb": 5000, "taskTypes": ["ASR"]});
    let mut b = sb.service("b", &["--log-ready"], log_ready());
    b["gpu"] = json!({"key": "auto", "vramMb": 5000});
    let hooks = SupervisorHooks { vram: Some(gpus.clone()), task_routes: Some(gpus.clone()), ..Default::default() };
    let (sup, mut rx) = supervisor(json!({"maxConcurrentStarts": 2, "vramHeadroomMb": 100, "services": [a, b]}), hooks);
    assert_eq!(sup.status("a").unwrap().gpu_key, None);
    assert_eq!(sup.task_type_gpus(), []);
    for o in sup.start_all().await.unwrap() {
        ready_ms(&o.outcome);
    }
    // Both load at once, so either may be placed first: it gets gpu:0 (most free); the second
    // sees gpu:0 less the first one's 5000 MB on its way there, and takes gpu:1.
    let placed: Vec<(String, ServiceEventKind)> = drain(&mut rx)
        .into_iter()
        .filter(|e| matches!(e.kind, ServiceEventKind::Placed { .. }))
        .map(|e| (e.service, e.kind))
        .collect();
    assert_eq!(placed.len(), 2, "{placed:?}");
    assert_ne!(placed[0].0, placed[1].0);
    assert_eq!(placed[0].1, ServiceEventKind::Placed { gpu_key: "gpu:0".into(), free_mb: Some(10_000) });
    assert_eq!(placed[1].1, ServiceEventKind::Placed { gpu_key: "gpu:1".into(), free_mb: Some(8_000) });
    let a_key = if placed[0].0 == "a" { "gpu:0" } else { "gpu:1" };
    let b_key = if a_key == "gpu:0" { "gpu:1" } else { "gpu:0" };
    assert_eq!(sup.status("a").unwrap().gpu_key.as_deref(), Some(a_key));
    assert_eq!(sup.status("b").unwrap().gpu_key.as_deref(), Some(b_key));
    let routes = vec![("ASR".to_string(), a_key.to_string())];
    assert_eq!(sup.task_type_gpus(), routes);
    assert_eq!(*gpus.routes.lock().unwrap(), [routes], "told once, when `a` (which claims ASR) was placed");
    sup.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_without_telemetry_fails_with_no_gpu() {
    let sb = Sandbox::new("auto-nogpu");
    let mut asr = sb.service("asr", &["--log-ready"], log_ready());
    asr["gpu"] = json!({"key": "auto"});
    let (sup, mut rx) = supervisor(json!({"services": [asr.clone()]}), SupervisorHooks::default());
    let outcome = sup.start("asr").await.unwrap();
    let (error, _) = failure(&outcome);
    assert_eq!(error.code, ErrorCode::NoGpu);
    assert!(
        error.message.starts_with("asr: gpu.key is \"auto\" but the supervisor has no VRAM telemetry"),
        "{}",
        error.message
    );
    assert!(spawned_pids(&drain(&mut rx)).is_empty());

    struct NoGpus;
    impl VramSource for NoGpus {
        fn free_mb(&self, _gpu_key: &str) -> Option<VramReading> {
            None
        }
        fn process_used_mb(&self, _pid: u32) -> Option<u64> {
            None
        }
    }
    let hooks = SupervisorHooks { vram: Some(Arc::new(NoGpus)), ..Default::default() };
    let (sup, _rx) = supervisor(json!({"services": [asr]}), hooks);
    let outcome = sup.start("asr").await.unwrap();
    let (error, _) = failure(&outcome);
    assert_eq!(error.code, ErrorCode::NoGpu);
    assert!(error.message.contains("no attached telemetry lists a GPU"), "{}", error.message);
}

/// Records what the supervisor tells the arbiter about on-demand task types.
#[derive(Default)]
struct RouteLog(std::sync::Mutex<Vec<String>>);

impl TaskRoutes for RouteLog {
    fn standby(&self, task_types: &[String], _load_allowance_ms: u64) {
        self.0.lock().unwrap().push(format!("standby {}", task_types.join(",")));
    }
    fn starting(&self, task_types: &[String]) {
        self.0.lock().unwrap().push(format!("starting {}", task_types.join(",")));
    }
    fn ready(&self, task_types: &[String]) {
        self.0.lock().unwrap().push(format!("ready {}", task_types.join(",")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_on_demand_start_tells_the_arbiter_it_is_on_its_way_then_ready_then_gone() {
    let sb = Sandbox::new("routes-starting");
    let mut nmt = sb.service("nmt", &["--log-ready"], log_ready());
    nmt["onDemand"] = json!(true);
    nmt["gpu"] = json!({"key": "gpu:0", "taskTypes": ["NMT"]});
    let routes = Arc::new(RouteLog::default());
    let hooks = SupervisorHooks { task_routes: Some(routes.clone()), ..Default::default() };
    let (sup, _rx) = supervisor(json!({"services": [nmt]}), hooks);
    sup.demand("NMT").await;
    assert_eq!(sup.status("nmt").unwrap().state, ServiceState::Ready);
    sup.stop("nmt").await.unwrap();
    // Waiters wait through "starting" however long it takes (the start bounds itself); only
    // "standby" gives them a load allowance.
    assert_eq!(*routes.0.lock().unwrap(), ["starting NMT", "ready NMT", "standby NMT"]);
    sup.close().await;
}
