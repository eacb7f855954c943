//! Readiness checks: HTTP (status and JSON body), TCP, a log line, none, and their timeout.

use super::support::*;

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
    assert_eq!(
        steps(&events, "dependent"),
        [&ServiceEventKind::Blocked { dependency: "slow".into(), reason: "\"slow\" failed".into() }]
    );
    let slow_pid = spawned_pids(&events)[0];
    assert!(reaped(slow_pid));
    assert_eq!(sup.status("slow").unwrap().state, ServiceState::Failed);
    sup.close().await;
}
