//! The host-memory gate against real processes that really allocate RAM
//! (`tests/fixtures/services/alloc.py`), with host readings set by hand.

use std::sync::atomic::AtomicBool;

use super::support::*;

/// Host memory the test sets; readings are taken at `sampled_at_ms`, or when read while it is 0.
#[derive(Default)]
struct FakeHost {
    available_mb: AtomicU64,
    sampled_at_ms: AtomicU64,
    swap_active: AtomicBool,
}

impl HostMemorySource for FakeHost {
    fn host_memory(&self) -> Option<HostMemReading> {
        let sampled_at_ms = match self.sampled_at_ms.load(Ordering::SeqCst) {
            0 => now_ms(),
            at => at,
        };
        Some(HostMemReading {
            available_mb: self.available_mb.load(Ordering::SeqCst),
            total_mb: 32_000,
            swap_active: self.swap_active.load(Ordering::SeqCst),
            sampled_at_ms,
        })
    }
}

fn alloc_service(name: &str, args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/services/alloc.py");
    let mut argv = vec![script.display().to_string()];
    argv.extend(args.iter().map(|a| a.to_string()));
    json!({
        "name": name, "command": "python3", "args": argv, "readiness": log_ready(),
        "readinessTimeoutMs": 30000, "probeIntervalMs": 50, "stopTimeoutMs": 2000
    })
}

fn host_hooks(host: &Arc<FakeHost>) -> SupervisorHooks {
    SupervisorHooks { host_memory: Some(host.clone() as Arc<dyn HostMemorySource>), ..Default::default() }
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Two services of 600 MB and room for one: the second waits (shown in its status and an event)
/// although a start slot is free, until a reading shows room again. Each one's peak RSS is
/// learned within 10% of what it allocated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_are_serialised_by_host_memory_and_peaks_are_learned() {
    let host = Arc::new(FakeHost::default());
    host.available_mb.store(900, Ordering::SeqCst);
    // One reading, taken before either start, until the test takes another.
    host.sampled_at_ms.store(now_ms().saturating_sub(1_000), Ordering::SeqCst);
    let mut a = alloc_service("a", &["--mb", "250", "--child-mb", "250"]);
    a["hostMemMb"] = json!(600);
    let mut b = alloc_service("b", &["--mb", "300"]);
    b["hostMemMb"] = json!(600);
    let (sup, mut rx) = supervisor(
        json!({"maxConcurrentStarts": 2, "hostMemHeadroomMb": 100, "hostMemTimeoutMs": 30000, "services": [a, b]}),
        host_hooks(&host),
    );
    let sup = Arc::new(sup);
    let budget = sup.host_budget().unwrap();
    assert_eq!((budget.available_mb, budget.headroom_mb, budget.in_flight_mb, budget.budget_mb), (900, 100, 0, 800));
    let start = |name: &'static str| {
        let sup = sup.clone();
        tokio::spawn(async move { sup.start(name).await.unwrap() })
    };
    let run_a = start("a");
    wait_for("a to be spawned", || sup.status("a").unwrap().pid.is_some()).await;
    let run_b = start("b");
    // `b` waits although a start slot is free: 900 - 100 headroom - 600 on its way for `a`
    // leaves 200.
    wait_for("b to wait for host memory", || sup.status("b").unwrap().waiting == Some(WaitReason::HostMemory)).await;
    let budget = sup.host_budget().unwrap();
    assert_eq!((budget.in_flight_mb, budget.budget_mb, budget.workers(50.0)), (600, 200, 4));
    wait_for("a to be ready", || sup.status("a").unwrap().state == ServiceState::Ready).await;
    // The reading predates `a`'s ready: `a` still counts, and `b` still waits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sup.status("b").unwrap().state, ServiceState::Starting);
    assert_eq!(sup.status("b").unwrap().waiting, Some(WaitReason::HostMemory));
    assert_eq!(sup.status("b").unwrap().pid, None);
    // A fresh reading shows `a`'s memory in use: 350 - 100 = 250 < 600, still waiting.
    host.available_mb.store(350, Ordering::SeqCst);
    host.sampled_at_ms.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sup.status("b").unwrap().pid, None);
    assert_eq!(sup.host_budget().unwrap().in_flight_mb, 0, "a is in the reading now");
    // Memory freed elsewhere: `b` starts.
    host.available_mb.store(800, Ordering::SeqCst);
    ready_ms(&run_a.await.unwrap());
    ready_ms(&run_b.await.unwrap());
    assert_eq!(sup.status("b").unwrap().waiting, None);
    let events = drain(&mut rx);
    let waits: Vec<_> =
        steps(&events, "b").into_iter().filter(|k| matches!(k, ServiceEventKind::HostMemoryWait { .. })).collect();
    assert_eq!(
        waits,
        vec![&ServiceEventKind::HostMemoryWait {
            needed_mb: Some(600),
            available_mb: 900,
            headroom_mb: 100,
            in_flight_mb: 600,
            budget_mb: 200,
            swap_active: false
        }]
    );
    assert!(
        first_at(&events, "b", |k| matches!(k, ServiceEventKind::Spawned { .. })) >= first_at(&events, "a", is_ready)
    );
    // Peaks: the whole tree for `a` (itself and its worker), within 10% of 500 and 300 MB.
    for (name, allocated) in [("a", 500.0), ("b", 300.0)] {
        let peak = sup.status(name).unwrap().learned.peak_rss_mb.expect("a learned peak RSS") as f64;
        eprintln!("{name}: allocated {allocated} MB, learned peak RSS {peak} MB");
        assert!((peak - allocated).abs() <= allocated * 0.1, "{name}: learned {peak} MB for {allocated} MB");
    }
    sup.close().await;
}

/// While swap is active no start begins, whatever memory is free; it begins once swap stops,
/// and past `hostMemTimeoutMs` it fails with HOST_MEMORY_LOW.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_stops_every_start_until_it_ends_or_the_timeout() {
    let host = Arc::new(FakeHost::default());
    host.available_mb.store(20_000, Ordering::SeqCst);
    host.swap_active.store(true, Ordering::SeqCst);
    // No hostMemMb and nothing learned: only the swap stop applies.
    let a = alloc_service("a", &["--mb", "1"]);
    let (sup, mut rx) = supervisor(json!({"hostMemTimeoutMs": 400, "services": [a]}), host_hooks(&host));
    let outcome = sup.start("a").await.unwrap();
    let (error, _) = failure(&outcome);
    assert_eq!(error.code, ErrorCode::HostMemoryLow);
    assert_eq!(error.message, "a: the host was still swapping (SWAP_ACTIVE) after 400 ms");
    assert_eq!(sup.status("a").unwrap().waiting, None);
    let events = drain(&mut rx);
    assert!(steps(&events, "a").contains(&&ServiceEventKind::HostMemoryWait {
        needed_mb: None,
        available_mb: 20_000,
        headroom_mb: 1_024,
        in_flight_mb: 0,
        budget_mb: 18_976,
        swap_active: true
    }));
    assert!(!steps(&events, "a").iter().any(|k| matches!(k, ServiceEventKind::Spawned { .. })));
    assert_eq!(sup.host_budget().unwrap().workers(250.0), 0);

    let run = tokio::spawn({
        let host = host.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            host.swap_active.store(false, Ordering::SeqCst);
        }
    });
    let (sup, _rx) = supervisor(
        json!({"hostMemTimeoutMs": 20000, "services": [alloc_service("a", &["--mb", "1"])]}),
        host_hooks(&host),
    );
    ready_ms(&sup.start("a").await.unwrap());
    run.await.unwrap();
    sup.close().await;
}

/// Too little memory for the declared need: HOST_MEMORY_LOW with the figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_memory_fails_with_host_memory_low() {
    let host = Arc::new(FakeHost::default());
    host.available_mb.store(1_000, Ordering::SeqCst);
    let mut a = alloc_service("a", &["--mb", "1"]);
    a["hostMemMb"] = json!(900);
    let (sup, _rx) =
        supervisor(json!({"hostMemHeadroomMb": 200, "hostMemTimeoutMs": 300, "services": [a]}), host_hooks(&host));
    let outcome = sup.start("a").await.unwrap();
    let (error, _) = failure(&outcome);
    assert_eq!(error.code, ErrorCode::HostMemoryLow);
    assert_eq!(
        error.message,
        "a: needs 900 MB of host memory but after 300 ms only 1000 MB was available, less 200 MB headroom and 0 MB for loads on their way (800 MB left)"
    );
    sup.close().await;
}
