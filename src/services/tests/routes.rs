//! GPU placement (`auto`), lease attribution and what the supervisor tells the arbiter about its task types.

use super::support::*;

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
    assert!(error.message.contains("the VRAM telemetry lists no GPU"), "{}", error.message);
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
