//! After ready: restarts with backoff, a panicking runner, and a service declared hung by its revoked leases.

use super::support::*;

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
