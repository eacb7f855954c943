//! Stopping: process groups and grandchildren, zombies, the stop timeout, and services dying with their host.

use super::support::*;

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
    let events = drain(&mut rx);
    let pids = spawned_pids(&events);
    assert_eq!(pids.len(), 22);
    // Every stop is announced before its end: `stopping`, then `stopped` (the runner, on another
    // thread, sends `stopped` as soon as the process is gone).
    let stops: Vec<_> = steps(&events, "svc")
        .into_iter()
        .filter(|k| matches!(k, ServiceEventKind::Stopping | ServiceEventKind::Stopped))
        .collect();
    assert_eq!(stops.len(), 42, "{stops:?}");
    assert!(
        stops.chunks(2).all(|pair| matches!(pair, [ServiceEventKind::Stopping, ServiceEventKind::Stopped])),
        "{stops:?}"
    );
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
        .args(["--exact", "services::tests::stop::host_process_for_the_death_signal_test", "--ignored"])
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
async fn a_stop_waits_for_the_port_even_when_the_process_ended_before_the_wait_began() {
    let sb = Sandbox::new("portrace");
    let port = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
    let mut svc = sb.service("idle", &["--log-ready"], log_ready());
    svc["port"] = json!(port);
    svc["portReleaseTimeoutMs"] = json!(300);
    let (sup, mut rx) = supervisor(json!({"services": [svc]}), SupervisorHooks::default());
    ready_ms(&sup.start("idle").await.unwrap());
    // Someone else takes the port the service declared (it never bound it).
    let _squatter = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port)).unwrap();
    // A host asks for the stop in its own turn (as the binding does); the process is gone and
    // reaped before the stop's waiting part runs.
    sup.begin_stop("idle").unwrap();
    let pid = sup.status("idle").unwrap().pid.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while sup.status("idle").unwrap().state != ServiceState::Stopped || !reaped(pid) {
        assert!(Instant::now() < deadline, "the runner did not end: {:?}", sup.status("idle").unwrap().state);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    sup.stop("idle").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300), "returned after {:?}", started.elapsed());
    let events = drain(&mut rx);
    let held: Vec<_> =
        steps(&events, "idle").into_iter().filter(|k| matches!(k, ServiceEventKind::PortStillHeld { .. })).collect();
    assert!(matches!(held.as_slice(), [ServiceEventKind::PortStillHeld { port: p, .. }] if *p == port), "{held:?}");
}
