//! Starting: a crash during the load, a taken port, dependency order and `maxConcurrentStarts`.

use super::support::*;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_chosen_starts_only_the_named_services_and_their_dependencies_in_order_under_the_slot_bound() {
    let sb = Sandbox::new("chosen");
    let load = ["--load", "0.3", "--log-ready"];
    let mut web = sb.service("web", &load, log_ready());
    web["dependsOn"] = json!(["db"]);
    let mut lazy = sb.service("lazy", &load, log_ready());
    lazy["onDemand"] = json!(true);
    lazy["gpu"] = json!({"key": "gpu:0", "taskTypes": ["OTHER"]});
    let services = json!([
        web,
        sb.service("db", &load, log_ready()),
        sb.service("cache", &load, log_ready()),
        sb.service("tts", &load, log_ready()),
        lazy
    ]);
    let (sup, mut rx) = supervisor(json!({"maxConcurrentStarts": 1, "services": services}), SupervisorHooks::default());
    let only = StartAllOptions { only: Some(vec!["tts".into(), "web".into(), "lazy".into()]) };
    let outcomes = sup.start_chosen(&only).await.unwrap();
    // Start order (dependencies first, then config order), the unchosen `cache` and the
    // on-demand `lazy` left alone.
    let order: Vec<&str> = outcomes.iter().map(|o| o.service.as_str()).collect();
    assert_eq!(order, ["db", "web", "tts"]);
    assert!(outcomes.iter().all(|o| matches!(o.outcome, StartOutcome::Ready { .. })), "{outcomes:?}");
    assert_eq!(sup.status("cache").unwrap().state, ServiceState::Idle);
    assert_eq!(sup.status("lazy").unwrap().state, ServiceState::Idle);
    let events = drain(&mut rx);
    assert!(steps(&events, "cache").is_empty());
    for pair in order.windows(2) {
        let ready = first_at(&events, pair[0], is_ready);
        let next = first_at(&events, pair[1], is_starting);
        assert!(ready <= next, "{} started before {} was ready (maxConcurrentStarts 1)", pair[1], pair[0]);
    }
    sup.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_chosen_with_an_unknown_name_starts_nothing_and_names_it() {
    let sb = Sandbox::new("chosen-unknown");
    let (sup, mut rx) =
        supervisor(json!({"services": [sb.service("asr", &["--log-ready"], log_ready())]}), SupervisorHooks::default());
    let only = StartAllOptions { only: Some(vec!["asr".into(), "nmt".into()]) };
    let error = sup.start_chosen(&only).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::UnknownService);
    assert_eq!(error.message, "options.only[1]: no service named \"nmt\"");
    assert!(spawned_pids(&drain(&mut rx)).is_empty());
    assert_eq!(sup.status("asr").unwrap().state, ServiceState::Idle);
}

#[test]
fn start_all_options_name_the_json_path_of_a_bad_value() {
    let error = StartAllOptions::from_json(&json!({"only": ["asr", 3]})).unwrap_err();
    assert_eq!(error.code, ErrorCode::InvalidArgument);
    assert!(error.message.starts_with("options.only[1]: "), "{}", error.message);
    let error = StartAllOptions::from_json(&json!({"onlyy": []})).unwrap_err();
    assert!(error.message.starts_with("options"), "{}", error.message);
    assert_eq!(StartAllOptions::from_json(&json!({})).unwrap(), StartAllOptions::default());
}
