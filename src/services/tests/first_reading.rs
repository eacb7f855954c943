//! The gates at boot: with a Telemetry attached whose first reading is still to come, a start
//! waits for it (bounded by the gate's timeout) instead of turning the gate off or failing `auto`.

use std::sync::atomic::AtomicBool;

use super::support::*;

/// A Telemetry that has not sampled yet: no reading until `publish`, with `gpu:0` of `total_mb`
/// and `free_mb` free, and the host with `host_available_mb` available.
struct BootingTelemetry {
    published: AtomicBool,
    free_mb: u64,
    host_available_mb: u64,
}

impl BootingTelemetry {
    fn new(free_mb: u64, host_available_mb: u64) -> Arc<Self> {
        Arc::new(Self { published: AtomicBool::new(false), free_mb, host_available_mb })
    }
    fn publish(&self) {
        self.published.store(true, Ordering::SeqCst);
    }
    fn published(&self) -> bool {
        self.published.load(Ordering::SeqCst)
    }
}

impl VramSource for BootingTelemetry {
    fn free_mb(&self, gpu_key: &str) -> Option<VramReading> {
        (self.published() && gpu_key == "gpu:0").then(|| VramReading {
            free_mb: self.free_mb,
            used_mb: None,
            sampled_at_ms: now_ms(),
        })
    }
    fn gpu_keys(&self) -> Vec<String> {
        if self.published() {
            vec!["gpu:0".into()]
        } else {
            vec![]
        }
    }
    fn process_used_mb(&self, _pid: u32) -> Option<u64> {
        None
    }
    fn first_reading_pending(&self) -> bool {
        !self.published()
    }
}

impl HostMemorySource for BootingTelemetry {
    fn host_memory(&self) -> Option<HostMemReading> {
        self.published().then(|| HostMemReading {
            available_mb: self.host_available_mb,
            total_mb: 64_000,
            swap_active: false,
            sampled_at_ms: now_ms(),
        })
    }
    fn first_reading_pending(&self) -> bool {
        !self.published()
    }
}

fn hooks(source: &Arc<BootingTelemetry>) -> SupervisorHooks {
    SupervisorHooks {
        vram: Some(source.clone() as Arc<dyn VramSource>),
        host_memory: Some(source.clone() as Arc<dyn HostMemorySource>),
        ..Default::default()
    }
}

fn publish_after(source: &Arc<BootingTelemetry>, ms: u64) -> tokio::task::JoinHandle<()> {
    let source = source.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        source.publish();
    })
}

/// A GPU service too big for the card: before the fix it started at once with `vram-gate-off`
/// ("no VRAM telemetry for this GPU"); now it waits for the reading, which holds it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vram_gate_waits_for_the_first_reading_and_then_holds() {
    let sb = Sandbox::new("boot-vram");
    let source = BootingTelemetry::new(24_000, 32_000);
    let mut asr = sb.service("asr", &["--log-ready"], log_ready());
    asr["gpu"] = json!({"key": "gpu:0", "vramMb": 30_000});
    let (sup, mut rx) = supervisor(json!({"vramTimeoutMs": 600, "services": [asr]}), hooks(&source));
    let publish = publish_after(&source, 200);
    let outcome = sup.start("asr").await.unwrap();
    publish.await.unwrap();
    let (error, _) = failure(&outcome);
    assert_eq!(error.code, ErrorCode::VramTimeout, "{}", error.message);
    let events = drain(&mut rx);
    let kinds = steps(&events, "asr");
    assert!(kinds.iter().all(|k| !matches!(k, ServiceEventKind::VramGateOff { .. })), "{kinds:?}");
    assert!(kinds.contains(&&ServiceEventKind::VramWait {
        gpu_key: "gpu:0".into(),
        needed_mb: 30_512,
        free_mb: 24_000
    }));
    assert!(spawned_pids(&events).is_empty(), "a 30000 MB load started on a 24000 MB card");
    sup.close().await;
}

/// `auto` placement: before the fix, `NO_GPU` at once; now placed on the GPU the reading lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_placement_waits_for_the_first_reading() {
    let sb = Sandbox::new("boot-auto");
    let source = BootingTelemetry::new(24_000, 32_000);
    let mut asr = sb.service("asr", &["--log-ready"], log_ready());
    asr["gpu"] = json!({"key": "auto", "vramMb": 1_000});
    let (sup, mut rx) = supervisor(json!({"services": [asr]}), hooks(&source));
    let publish = publish_after(&source, 200);
    let starting = tokio::spawn({
        let sup = Arc::new(sup);
        let run = sup.clone();
        let outcome = tokio::spawn(async move { run.start("asr").await });
        async move {
            // While it waits, its status says what for.
            let mut seen = None;
            for _ in 0..100 {
                if let Some(why) = sup.status("asr").unwrap().waiting {
                    seen = Some(why);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let outcome = outcome.await.unwrap().unwrap();
            (sup, seen, outcome)
        }
    });
    let (sup, seen, outcome) = starting.await.unwrap();
    publish.await.unwrap();
    assert_eq!(seen, Some(WaitReason::Telemetry));
    ready_ms(&outcome);
    assert_eq!(sup.status("asr").unwrap().gpu_key.as_deref(), Some("gpu:0"));
    assert_eq!(sup.status("asr").unwrap().waiting, None);
    let events = drain(&mut rx);
    let kinds = steps(&events, "asr");
    assert!(kinds.contains(&&ServiceEventKind::TelemetryWait { gate: ReadingGate::HostMemory, timeout_ms: 120_000 }));
    assert!(kinds.contains(&&ServiceEventKind::Placed { gpu_key: "gpu:0".into(), free_mb: Some(24_000) }));
    sup.close().await;
}

/// The host-memory gate: off "before its first sample" no more; a start that needs more than the
/// host has waits for the reading and is then held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_gate_waits_for_the_first_reading_and_then_holds() {
    let sb = Sandbox::new("boot-host");
    let source = BootingTelemetry::new(24_000, 2_000);
    let mut worker = sb.service("worker", &["--log-ready"], log_ready());
    worker["hostMemMb"] = json!(8_000);
    let (sup, mut rx) = supervisor(json!({"hostMemTimeoutMs": 600, "services": [worker]}), hooks(&source));
    let publish = publish_after(&source, 150);
    let outcome = sup.start("worker").await.unwrap();
    publish.await.unwrap();
    let (error, _) = failure(&outcome);
    assert_eq!(error.code, ErrorCode::HostMemoryLow, "{}", error.message);
    assert!(spawned_pids(&drain(&mut rx)).is_empty());
    sup.close().await;
}

/// A reading that never comes: the wait ends with the gate's own timeout and code, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_first_reading_fails_within_the_gate_timeout() {
    let sb = Sandbox::new("boot-never");
    let source = BootingTelemetry::new(24_000, 32_000);
    let mut asr = sb.service("asr", &["--log-ready"], log_ready());
    asr["gpu"] = json!({"key": "gpu:0", "vramMb": 1_000});
    let (sup, mut rx) =
        supervisor(json!({"hostMemTimeoutMs": 300, "vramTimeoutMs": 300, "services": [asr]}), hooks(&source));
    let began = Instant::now();
    let outcome = sup.start("asr").await.unwrap();
    let (error, _) = failure(&outcome);
    assert_eq!(error.code, ErrorCode::HostMemoryLow);
    assert!(error.message.contains("took no sample within 300 ms (hostMemTimeoutMs)"), "{}", error.message);
    assert!(began.elapsed() >= Duration::from_millis(300));
    assert!(spawned_pids(&drain(&mut rx)).is_empty());
    sup.close().await;
}
