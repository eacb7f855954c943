//! Run-time updates of the service list (`set_services`): added, removed and changed services,
//! with the rest left running as they are.

use super::support::*;

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_adds_removes_and_changes_while_the_rest_keep_running() {
    let sb = Sandbox::new("update");
    let a = sb.service("a", &["--log-ready"], log_ready());
    let b = sb.service("b", &["--log-ready"], log_ready());
    let keep = sb.service("keep", &["--log-ready"], log_ready());
    let (sup, mut rx) = supervisor(json!({"services": [a.clone(), b, keep.clone()]}), SupervisorHooks::default());
    sup.start_all().await.unwrap();
    let pid = |name: &str| sup.status(name).unwrap().pid.expect("running");
    let (a_pid, b_pid, keep_pid) = (pid("a"), pid("b"), pid("keep"));
    drain(&mut rx);

    let mut a_changed = a.clone();
    a_changed["args"].as_array_mut().unwrap().push(json!("--load"));
    a_changed["args"].as_array_mut().unwrap().push(json!("0.05"));
    let c = sb.service("c", &["--log-ready"], log_ready());
    let update = sup.set_services(&json!([a_changed, keep, c])).await.unwrap();
    assert_eq!(
        update,
        ServicesUpdate { added: vec!["c".into()], changed: vec!["a".into()], removed: vec!["b".into()] }
    );
    // The running ones keep their processes; the removed one is gone and no longer known.
    assert_eq!((pid("a"), pid("keep")), (a_pid, keep_pid));
    assert_eq!(sup.status("a").unwrap().state, ServiceState::Ready);
    assert!(!cmdline(a_pid).contains("--load 0.05"), "{}", cmdline(a_pid));
    assert!(reaped(b_pid));
    assert_eq!(sup.status("b").unwrap_err().code, ErrorCode::UnknownService);
    assert_eq!(sup.status("c").unwrap().state, ServiceState::Idle);
    let names: Vec<String> = sup.statuses().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["a", "keep", "c"]);
    let events = drain(&mut rx);
    assert!(steps(&events, "a").contains(&&ServiceEventKind::Changed));
    assert!(steps(&events, "c").contains(&&ServiceEventKind::Added));
    let b_steps = steps(&events, "b");
    assert_eq!(b_steps.last(), Some(&&ServiceEventKind::Removed), "{b_steps:?}");
    assert!(b_steps.contains(&&ServiceEventKind::Stopped));
    assert!(spawned_pids(&events).is_empty(), "an update started something");

    // The change takes effect at the next start.
    sup.restart("a").await.unwrap();
    assert!(cmdline(pid("a")).contains("--load 0.05"), "{}", cmdline(pid("a")));
    // The same list again changes nothing.
    let c = sb.service("c", &["--log-ready"], log_ready());
    let mut a_changed = a.clone();
    a_changed["args"].as_array_mut().unwrap().extend([json!("--load"), json!("0.05")]);
    let again =
        sup.set_services(&json!([a_changed, sb.service("keep", &["--log-ready"], log_ready()), c])).await.unwrap();
    assert_eq!(again, ServicesUpdate::default());
    sup.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_update_changes_nothing_and_names_the_json_path() {
    let sb = Sandbox::new("update-invalid");
    let a = sb.service("a", &["--log-ready"], log_ready());
    let (sup, mut rx) = supervisor(json!({"services": [a.clone()]}), SupervisorHooks::default());
    sup.start_all().await.unwrap();
    let a_pid = sup.status("a").unwrap().pid;
    drain(&mut rx);
    let mut bad = sb.service("b", &["--log-ready"], log_ready());
    bad["command"] = json!("");
    let error = sup.set_services(&json!([bad])).await.unwrap_err();
    assert_eq!(error.code, ErrorCode::InvalidConfig);
    assert_eq!(error.message, "services[0].command: expected a non-empty string");
    let mut unknown_dep = sb.service("b", &["--log-ready"], log_ready());
    unknown_dep["dependsOn"] = json!(["never-configured"]);
    let error = sup.set_services(&json!([a.clone(), unknown_dep])).await.unwrap_err();
    assert_eq!(error.message, "services[1].dependsOn[0]: unknown service \"never-configured\"");
    let error = sup.set_services(&json!({"name": "x"})).await.unwrap_err();
    assert!(error.message.starts_with("services"), "{}", error.message);
    assert_eq!(sup.status("a").unwrap().pid, a_pid);
    assert_eq!(sup.statuses().len(), 1);
    assert!(drain(&mut rx).is_empty());
    sup.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependent_of_a_removed_service_keeps_running_and_is_blocked_at_its_next_start() {
    let sb = Sandbox::new("update-deps");
    let mut web = sb.service("web", &["--log-ready"], log_ready());
    web["dependsOn"] = json!(["db"]);
    let db = sb.service("db", &["--log-ready"], log_ready());
    let (sup, mut rx) = supervisor(json!({"services": [web.clone(), db]}), SupervisorHooks::default());
    sup.start_all().await.unwrap();
    let web_pid = sup.status("web").unwrap().pid;
    let update = sup.set_services(&json!([web])).await.unwrap();
    assert_eq!(update.removed, ["db"]);
    assert_eq!(sup.status("web").unwrap().pid, web_pid, "no implicit restart");
    assert_eq!(sup.status("web").unwrap().state, ServiceState::Ready);
    sup.stop("web").await.unwrap();
    drain(&mut rx);
    let outcome = sup.start("web").await.unwrap();
    assert_eq!(outcome, StartOutcome::Blocked { dependency: "db".into() });
    let status = sup.status("web").unwrap();
    assert_eq!(status.blocked_by.as_deref(), Some("db"));
    let events = drain(&mut rx);
    assert_eq!(
        steps(&events, "web"),
        [&ServiceEventKind::Blocked { dependency: "db".into(), reason: "\"db\" was removed from the services".into() }]
    );
    sup.close().await;
}

/// A folder of the node's manifests: each `(id, dependsOn)` a `cpu` service running the fake.
fn write_manifests(sb: &Sandbox, root: &Path, ids: &[&str]) {
    let _ = std::fs::remove_dir_all(root);
    for id in ids {
        let folder = root.join(id);
        std::fs::create_dir_all(&folder).unwrap();
        let manifest = json!({
            "id": id, "name": id, "type": "tone", "device": "cpu",
            "exec": {"command": "python3", "args": [sb.path("service.py").display().to_string(), "--log-ready"]}
        });
        std::fs::write(folder.join("service.json"), manifest.to_string()).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rereads_the_manifests_keeping_what_runs_and_blocking_dependents_of_a_removed_one() {
    let sb = Sandbox::new("refresh");
    let root = sb.path("services");
    write_manifests(&sb, &root, &["asr", "vad", "tts"]);
    // The node config's own entries: an override making asr depend on vad.
    let section = json!({"manifests": ["services"], "services": [{"name": "asr", "dependsOn": ["vad"]}]});
    let base_dir = sb.path("");
    let mut warnings = Vec::new();
    let resolved = crate::services::manifest::resolve_services_section(&section, &base_dir, &mut warnings).unwrap();
    let (sup, mut rx) = Supervisor::new(resolved.config, SupervisorHooks::default());
    sup.set_source(ServicesSource { section, base_dir });
    sup.start_chosen(&StartAllOptions { only: Some(vec!["asr".into(), "tts".into()]) }).await.unwrap();
    let pids: Vec<Option<u32>> = ["asr", "vad", "tts"].iter().map(|n| sup.status(n).unwrap().pid).collect();
    assert!(pids.iter().all(Option::is_some), "{pids:?}");
    drain(&mut rx);

    // A package installed (punct) and one removed (vad); and a bad file that is skipped.
    write_manifests(&sb, &root, &["asr", "tts", "punct"]);
    std::fs::create_dir_all(root.join("broken")).unwrap();
    std::fs::write(root.join("broken/service.json"), "{ not json").unwrap();
    let refreshed = sup.refresh().await.unwrap();
    assert_eq!(refreshed.update.added, ["punct"]);
    assert_eq!(refreshed.update.removed, ["vad"]);
    assert_eq!(refreshed.update.changed, Vec::<String>::new());
    assert_eq!(refreshed.diagnostics.len(), 1, "{:?}", refreshed.diagnostics);
    assert!(refreshed.diagnostics[0].path.ends_with("broken/service.json"));
    assert_eq!(sup.status("asr").unwrap().pid, pids[0], "asr keeps running");
    assert_eq!(sup.status("tts").unwrap().pid, pids[2]);
    assert!(reaped(pids[1].unwrap()), "vad was stopped");
    assert_eq!(sup.status("punct").unwrap().state, ServiceState::Idle);
    let again = sup.refresh().await.unwrap();
    assert_eq!(again.update, ServicesUpdate::default(), "nothing new on disk, nothing changes");
    // asr still names vad: its next start is blocked, saying so.
    sup.stop("asr").await.unwrap();
    assert_eq!(sup.start("asr").await.unwrap(), StartOutcome::Blocked { dependency: "vad".into() });

    // A folder that is gone: an error, and nothing changes.
    std::fs::remove_dir_all(&root).unwrap();
    let error = sup.refresh().await.unwrap_err();
    assert_eq!(error.code, ErrorCode::ManifestsNotFound);
    assert_eq!(sup.statuses().len(), 3);
    sup.close().await;
}
