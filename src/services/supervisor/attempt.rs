//! One start attempt: host-memory gate, lease, VRAM gate, port, spawn, then readiness against its deadlines (the
//! hard one, pushed out by `EXTEND_TIMEOUT_MS` up to its cap, and the stall timer), an early
//! exit, or a stop request.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::host_gate::RssSampler;
use super::readiness::ReadyWatch;
use super::{ms, stop_requested, AbortOnDrop, Attempt, Launched, Shared, OUTPUT_DRAIN};
use crate::error::{ErrorCode, SidecarError, SidecarResult};
use crate::services::events::{epoch_ms, ServiceEventKind};
use crate::services::hooks::spawn_env_from_json;
use crate::services::notify::{NotifyMessage, NotifyPipe, NotifySeen, PipeEnd};
use crate::services::process::{OutputSink, ServiceProcess};

/// How a load ended without becoming ready.
enum NotReady {
    /// The hard deadline (`readinessTimeoutMs`, as extended) passed.
    Timeout(u64),
    /// No progress for `readinessStallTimeoutMs`.
    Stalled(u64),
}

/// How long a spawn-env hook may take to answer.
const SPAWN_ENV_TIMEOUT: Duration = Duration::from_secs(30);

/// Names the GPU key a service runs on.
pub const GPU_KEY_ENV: &str = "GPU_SIDECAR_GPU_KEY";
const CUDA_VISIBLE_DEVICES_ENV: &str = "CUDA_VISIBLE_DEVICES";

impl Shared {
    pub(super) async fn attempt(self: &Arc<Self>, i: usize, attempt: u32, stop: &mut watch::Receiver<bool>) -> Attempt {
        let spec = self.spec(i);
        let learned = self.profiles.lock().expect("profiles lock").get(&spec.name);
        self.emit(i, ServiceEventKind::Starting { attempt, expected_ready_ms: learned.time_to_ready_ms });
        let failed = |error| Attempt::Failed { error, last_lines: Vec::new() };

        // First, before anything is held on a GPU: a start that waits for host memory holds no
        // lease meanwhile. Counted against later starts from here until a reading shows it.
        let host_admission = tokio::select! {
            gate = self.host_memory_gate(i, learned) => match gate {
                Ok(admission) => admission,
                Err(error) => return failed(error),
            },
            _ = stop_requested(stop) => return Attempt::Stopped,
        };
        let gpu_key = tokio::select! {
            placed = self.place(i) => match placed {
                Ok(key) => key,
                Err(error) => return failed(error),
            },
            _ = stop_requested(stop) => return Attempt::Stopped,
        };
        // Held until ready is announced (or this attempt fails): the lease covers the load, not the
        // service's life.
        let startup_lease = match (&gpu_key, &self.hooks.startup_lease) {
            (Some(gpu_key), Some(lease)) if self.config.gpu_startup_lease => tokio::select! {
                guard = lease.acquire(&spec.name, gpu_key, spec.readiness_timeout_ms.get()) => match guard {
                    Ok(guard) => Some(guard),
                    Err(error) => return failed(error),
                },
                _ = stop_requested(stop) => return Attempt::Stopped,
            },
            _ => None,
        };
        if let (Some(gpu), Some(gpu_key)) = (&spec.gpu, &gpu_key) {
            tokio::select! {
                gate = self.vram_gate(i, gpu, gpu_key, learned) => if let Err(error) = gate { return failed(error) },
                _ = stop_requested(stop) => return Attempt::Stopped,
            }
        }
        if let Some(port) = spec.port {
            tokio::select! {
                claimed = self.claim_port(i, port.get() as u16) => if let Err(error) = claimed { return failed(error) },
                _ = stop_requested(stop) => return Attempt::Stopped,
            }
        }

        // Last before the spawn, so what it resolves (a model folder, say) is current.
        let hook_env = tokio::select! {
            env = self.spawn_env(i, attempt) => match env {
                Ok(env) => env,
                Err(error) => return failed(error),
            },
            _ = stop_requested(stop) => return Attempt::Stopped,
        };
        let spawn_failed = |e: std::io::Error| {
            SidecarError::new(ErrorCode::SpawnFailed, format!("{}: cannot start {:?}: {e}", spec.name, spec.command))
        };
        let sink = match OutputSink::new(&spec, self.events.clone(), spec.line_patterns()) {
            Ok(sink) => Arc::new(sink),
            Err(e) => return failed(spawn_failed(e)),
        };
        let pipe = match spec.uses_notify().then(NotifyPipe::new).transpose() {
            Ok(pipe) => pipe,
            Err(e) => return failed(spawn_failed(e)),
        };
        if spec.gpu.is_some() {
            // Until the spawn returns, other gates count this load against any reading.
            self.cell(i).spawned_at_ms = Some(u64::MAX);
        }
        {
            let mut cell = self.cell(i);
            cell.sink = Some(sink.clone());
            cell.notify_status = None;
        }
        let (notify_read, notify_write) = split_pipe(pipe);
        let watchdog = self.host_death_watchdog();
        let placement = self.gpu_placement_env(gpu_key.as_deref());
        // Ends (dropped) at ready, or when this attempt fails.
        let load = gpu_key.as_deref().and_then(|key| self.begin_load(key));
        let mut process =
            match ServiceProcess::spawn(&spec, &placement, &hook_env, sink.clone(), watchdog.as_ref(), notify_write)
                .await
            {
                Ok(process) => process,
                Err(e) => return failed(spawn_failed(e)),
            };
        let spawned = Instant::now();
        let pid = process.pid();
        {
            let mut cell = self.cell(i);
            cell.pid = Some(pid);
            cell.spawned_at_ms = Some(epoch_ms());
        }
        self.emit(i, ServiceEventKind::Spawned { pid });
        let (notify, notify_reader) = match notify_read {
            Some(read) => {
                let (seen, reader) = self.read_notify(i, read);
                (Some(seen), Some(reader))
            }
            None => (None, None),
        };
        let mut vram_peak = self.sample_vram(i, pid, load);
        let rss_peak = RssSampler::new(process.tree());

        let last_probe_failure = Mutex::new(None::<String>);
        let watch = ReadyWatch { sink: &sink, notify: notify.clone(), last_failure: &last_probe_failure };
        let ready = self.wait_ready(i, &spec.readiness, &watch);
        tokio::select! {
            result = self.until_deadline(i, ready, spawned, &sink, notify.clone()) => match result {
                Ok(()) => {
                    let time_to_ready_ms = spawned.elapsed().as_millis() as u64;
                    let peak = vram_peak.as_mut().and_then(|s| s.loaded(&spec.name));
                    let mut profiles = self.profiles.lock().expect("profiles lock");
                    profiles.record(&spec.name, Some(time_to_ready_ms), peak);
                    if let Some(rss) = rss_peak.peak() {
                        profiles.record_rss(&spec.name, rss);
                    }
                    drop(profiles);
                    rss_peak.loaded();
                    if let Some(admission) = host_admission {
                        admission.ready();
                    }
                    self.cell(i).time_to_ready_ms = Some(time_to_ready_ms);
                    let rss_peak = Some(rss_peak);
                    Attempt::Ready(Box::new(Launched {
                        process,
                        sink,
                        vram_peak,
                        rss_peak,
                        notify,
                        _notify_reader: notify_reader,
                        spawned,
                        startup_lease,
                    }))
                }
                Err(not_ready) => {
                    let error = match not_ready {
                        NotReady::Timeout(timeout_ms) => {
                            self.emit(i, ServiceEventKind::ReadinessTimeout { timeout_ms });
                            let last = last_probe_failure.lock().expect("probe lock").take();
                            let detail = last.map(|r| format!("; last probe: {r}")).unwrap_or_default();
                            SidecarError::new(
                                ErrorCode::ReadinessTimeout,
                                format!(
                                    "{name}: not ready after {timeout_ms} ms{detail}. It was waited for on {}; if it tells it is ready another way or needs longer, set \"readiness\" or \"readinessTimeoutMs\" in the services[] entry named {name:?} of the services config",
                                    spec.readiness.describe(spec.port.map(|p| p.get() as u16)),
                                    name = spec.name
                                ),
                            )
                        }
                        NotReady::Stalled(stall_timeout_ms) => {
                            self.emit(i, ServiceEventKind::ReadinessStalled { stall_timeout_ms });
                            SidecarError::new(
                                ErrorCode::ReadinessStalled,
                                format!(
                                    "{}: its load made no progress (no output line or notify message) for {stall_timeout_ms} ms",
                                    spec.name
                                ),
                            )
                        }
                    };
                    let exit = process.stop(spec.stop_signal, ms(spec.stop_timeout_ms.get())).await;
                    self.record_exit(i, exit);
                    process.drain_output(OUTPUT_DRAIN).await;
                    Attempt::Failed { error, last_lines: sink.tail() }
                }
            },
            exit = process.wait() => {
                process.drain_output(OUTPUT_DRAIN).await;
                Attempt::Exited { exit, last_lines: sink.tail(), ran: spawned.elapsed() }
            }
            _ = stop_requested(stop) => {
                let exit = process.stop(spec.stop_signal, ms(spec.stop_timeout_ms.get())).await;
                self.record_exit(i, exit);
                Attempt::Stopped
            }
        }
    }

    /// The spawn-env hook's extra variables for this spawn (none without a hook). A hook that
    /// throws, answers junk or takes longer than [`SPAWN_ENV_TIMEOUT`] fails the attempt with
    /// `SPAWN_FAILED`.
    async fn spawn_env(&self, i: usize, attempt: u32) -> SidecarResult<Vec<(String, String)>> {
        let name = &self.spec(i).name;
        let Some(answer) = self.hooks.spawn_env.as_ref().and_then(|hook| hook.env_for(name, attempt)) else {
            return Ok(Vec::new());
        };
        let failed =
            |why: String| SidecarError::new(ErrorCode::SpawnFailed, format!("{name}: the beforeSpawn hook {why}"));
        match tokio::time::timeout(SPAWN_ENV_TIMEOUT, answer).await {
            Err(_) => Err(failed(format!("did not answer within {} ms", SPAWN_ENV_TIMEOUT.as_millis()))),
            Ok(Err(why)) => Err(failed(why)),
            Ok(Ok(value)) => spawn_env_from_json(&value).map_err(|e| failed(format!("answered {e}"))),
        }
    }

    /// Runs `ready` until it resolves or a deadline passes: the hard one (`readinessTimeoutMs`
    /// from `spawned`, pushed out by `EXTEND_TIMEOUT_MS` up to its cap) or, when set, the stall
    /// timer, which every output line and notify message restarts.
    async fn until_deadline(
        &self,
        i: usize,
        ready: impl std::future::Future<Output = ()>,
        spawned: Instant,
        sink: &OutputSink,
        notify: Option<watch::Receiver<NotifySeen>>,
    ) -> Result<(), NotReady> {
        let spec = self.spec(i);
        let cap_ms = spec.readiness_cap_ms();
        let stall_ms = spec.readiness_stall_timeout_ms.map(|s| s.get());
        let mut timeout_ms = spec.readiness_timeout_ms.get();
        let mut lines = Some(sink.lines());
        let mut notify = notify;
        let mut progress_at = Instant::now();
        tokio::pin!(ready);
        loop {
            let hard = spawned + ms(timeout_ms);
            let stall_at = stall_ms.map(|s| progress_at + ms(s));
            let wake = stall_at.map_or(hard, |s| s.min(hard));
            tokio::select! {
                _ = &mut ready => return Ok(()),
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    if now >= hard {
                        return Err(NotReady::Timeout(timeout_ms));
                    }
                    if let (Some(at), Some(s)) = (stall_at, stall_ms) {
                        if now >= at {
                            return Err(NotReady::Stalled(s));
                        }
                    }
                }
                _ = changed(&mut lines) => progress_at = Instant::now(),
                seen = changed(&mut notify) => {
                    progress_at = Instant::now();
                    if let Some(until) = seen.extend_until {
                        let wanted = until.saturating_duration_since(spawned).as_millis() as u64;
                        let extended = wanted.min(cap_ms);
                        if extended > timeout_ms {
                            timeout_ms = extended;
                            self.emit(i, ServiceEventKind::ReadinessExtended { timeout_ms });
                        }
                    }
                }
            }
        }
    }

    /// What a GPU service is told about its GPU (`gpu_key`, as placed): `GPU_SIDECAR_GPU_KEY`,
    /// and `CUDA_VISIBLE_DEVICES` set to the GPU's UUID when telemetry knows it (NVIDIA recommends UUIDs: NVML's and CUDA's
    /// indices can differ). The service's own `env` wins over both.
    fn gpu_placement_env(&self, gpu_key: Option<&str>) -> Vec<(String, String)> {
        let Some(gpu_key) = gpu_key else { return Vec::new() };
        let mut env = vec![(GPU_KEY_ENV.to_string(), gpu_key.to_string())];
        if let Some(uuid) = self.hooks.vram.as_ref().and_then(|v| v.gpu_uuid(gpu_key)) {
            env.push((CUDA_VISIBLE_DEVICES_ENV.to_string(), uuid));
        }
        env
    }

    /// Starts reading the service's notify pipe: `STATUS=` goes to its status and a `status`
    /// event, `STOPPING=1` to a `notify-stopping` event.
    fn read_notify(self: &Arc<Self>, i: usize, read: PipeEnd) -> (watch::Receiver<NotifySeen>, AbortOnDrop) {
        let (seen, receiver) = watch::channel(NotifySeen::default());
        let shared = self.clone();
        let task = tokio::spawn(async move {
            crate::services::notify::read_messages(read, seen, |message| match message {
                NotifyMessage::Status(text) => {
                    shared.cell(i).notify_status = Some(text.clone());
                    shared.emit(i, ServiceEventKind::Status { text: text.clone() });
                }
                NotifyMessage::Stopping => shared.emit(i, ServiceEventKind::NotifyStopping),
                _ => {}
            })
            .await
        });
        (receiver, AbortOnDrop(task))
    }
}

/// The next value of a watch, or never once its sender is gone (then `rx` is cleared, so a loop
/// that selects on it does not spin).
pub(super) async fn changed<T: Clone>(rx: &mut Option<watch::Receiver<T>>) -> T {
    if let Some(receiver) = rx {
        if receiver.changed().await.is_ok() {
            return receiver.borrow_and_update().clone();
        }
    }
    *rx = None;
    std::future::pending().await
}

fn split_pipe(pipe: Option<NotifyPipe>) -> (Option<PipeEnd>, Option<PipeEnd>) {
    match pipe {
        Some(p) => (Some(p.read), Some(p.write)),
        None => (None, None),
    }
}
