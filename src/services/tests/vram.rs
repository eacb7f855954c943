//! The VRAM gate under a startup lease, loads spawned after a reading, and what runs learn for the next.

use super::support::*;

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
    fn acquire<'a>(&'a self, _service: &'a str, _gpu_key: &'a str, _hold_max_ms: u64) -> LeaseFuture<'a> {
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

/// A load spawned before the reading and still loading when it was taken has only part of its
/// memory in it: the rest is still to come, so a second start must not take it (issue 19: the
/// node's boot with every start allowed at once over-committed its GPU by the loads' growth).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vram_gate_counts_the_rest_of_a_load_still_on_its_way_when_the_reading_was_taken() {
    let sb = Sandbox::new("vramgrowing");
    let vram = Arc::new(FakeVram::default());
    // Every reading is fresh (taken when read): `a` is spawned before all of them, and the
    // readings list 300 MB for its process while it loads.
    vram.free_mb.store(2_000, Ordering::SeqCst);
    vram.used_mb.store(300, Ordering::SeqCst);
    let mut a = sb.service("a", &["--load", "1.0", "--log-ready"], log_ready());
    a["gpu"] = json!({"key": "gpu:0", "vramMb": 1500});
    let mut b = sb.service("b", &["--log-ready"], log_ready());
    b["gpu"] = json!({"key": "gpu:0", "vramMb": 1000});
    let hooks = SupervisorHooks { vram: Some(vram.clone()), startup_lease: None, ..Default::default() };
    let (sup, mut rx) = supervisor(
        json!({"maxConcurrentStarts": 2, "vramHeadroomMb": 0, "vramTimeoutMs": 10000, "services": [a, b]}),
        hooks,
    );
    // `b` comes to the gate while `a` loads.
    let (a_outcome, b_outcome) = tokio::join!(sup.start("a"), async {
        until_spawned(&sup, &["a"]).await;
        sup.start("b").await
    });
    ready_ms(&a_outcome.unwrap());
    ready_ms(&b_outcome.unwrap());
    let events = drain(&mut rx);
    // 2000 free less what `a` had still to take (all 1500 before its spawn, 1200 after): short
    // of b's 1000.
    assert!(
        steps(&events, "b")
            .iter()
            .any(|k| matches!(k, ServiceEventKind::VramWait { needed_mb: 1000, free_mb: 500 | 800, .. })),
        "{:?}",
        steps(&events, "b")
    );
    let a_ready = first_at(&events, "a", is_ready);
    let b_spawned = first_at(&events, "b", |k| matches!(k, ServiceEventKind::Spawned { .. }));
    assert!(b_spawned >= a_ready, "b spawned at {b_spawned}, while a was still loading (ready at {a_ready})");
    sup.close().await;
}

/// Two starts at the gate at once never both take the same free memory: the one that fits is
/// counted against the other from the moment it passes, not only once it is spawned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_starts_at_the_gate_at_once_do_not_both_take_the_same_memory() {
    let sb = Sandbox::new("vramrace");
    let vram = Arc::new(FakeVram::default());
    vram.free_mb.store(2_000, Ordering::SeqCst);
    // One reading, taken before either start: neither load will ever show in it.
    vram.sampled_at_ms.store(now_ms().saturating_sub(1_000), Ordering::SeqCst);
    let mut services = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let mut s = sb.service(name, &["--log-ready"], log_ready());
        s["gpu"] = json!({"key": "gpu:0", "vramMb": 1500});
        services.push(s);
    }
    // A slow beforeSpawn hook (the node resolves a model folder there) holds each start between
    // the gate and its spawn: where the old gate counted nothing yet.
    struct SlowEnv;
    impl crate::services::SpawnEnv for SlowEnv {
        fn env_for(&self, _service: &str, _attempt: u32) -> Option<crate::services::SpawnEnvFuture<'_>> {
            Some(Box::pin(async {
                tokio::time::sleep(Duration::from_millis(200)).await;
                Ok(serde_json::Value::Null)
            }))
        }
    }
    let hooks = SupervisorHooks {
        vram: Some(vram.clone()),
        startup_lease: None,
        spawn_env: Some(Arc::new(SlowEnv)),
        ..Default::default()
    };
    let (sup, _rx) = supervisor(
        json!({"maxConcurrentStarts": 4, "vramHeadroomMb": 0, "vramTimeoutMs": 600, "services": services}),
        hooks,
    );
    let outcomes = sup.start_all().await.unwrap();
    let ready = outcomes.iter().filter(|o| matches!(o.outcome, StartOutcome::Ready { .. })).count();
    assert_eq!(ready, 1, "{outcomes:?}");
    sup.close().await;
}
