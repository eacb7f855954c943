//! The sampling thread: every tick it builds a sample (from NVML and the host, from a replay, or
//! from what the application pushed), records it, runs the alert engine and hands the result to a
//! sink.

use std::collections::{BTreeMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::alerts::{Alert, AlertCode, AlertEngine, Backlog};
use super::host::{HostReader, ProcessRegistry};
use super::metrics;
use super::nvml::{GpuRead, GpuReader, GpuSource};
use super::options::{ReplaySpeed, TelemetryOptions, TelemetrySource};
use super::record::{replay_delay, Recorder, Replay};
use super::sample::{parse_sample, GpuProcess, Sample};
use crate::error::{panic_message, ErrorCode, SidecarError, SidecarResult};

/// The sampler thread's name, as it shows in debuggers and `top -H`.
pub const THREAD_NAME: &str = "gpu-sidecar-telemetry";

/// Supplies the arbiter's leases and waiters per GPU key, called once per sample on the sampler
/// thread; it must return quickly.
pub type BacklogFn = Box<dyn FnMut() -> BTreeMap<String, Backlog> + Send>;

/// Receives the sampler's events on the sampler thread. It must not block: sampling waits for it
/// (the binding queues events to JS without waiting).
pub type Sink = Box<dyn FnMut(SamplerEvent) + Send>;

/// One tick's result.
#[derive(Debug, Clone)]
pub struct SamplerOutput {
    /// Also what [`SamplerHandle::latest`] returns until the next tick.
    pub sample: Arc<Sample>,
    /// Alerts this sample raised or cleared.
    pub alerts: Vec<Alert>,
}

/// What the sampler tells its sink.
#[derive(Debug, Clone)]
pub enum SamplerEvent {
    Sample(SamplerOutput),
    /// Writing the record file failed; recording stopped, sampling goes on.
    RecordingStopped(SidecarError),
    /// The replay ran out (`None`), hit a bad line or a cut-off last line (`Some`), or the thread
    /// panicked (`Some`, code `INTERNAL`, live or replayed); no events follow. Not sent after
    /// [`SamplerHandle::stop`].
    Ended(Option<SidecarError>),
}

/// Takes one live sample now, on the calling thread (for one-off questions such as capacity
/// advice; a running [`Sampler`] is the way to watch).
pub fn sample_once(registry: Arc<ProcessRegistry>) -> SidecarResult<Sample> {
    let mut host = HostReader::new(registry.clone())?;
    let at = epoch_ms();
    let mut gpu = GpuReader::new(None).read(&registry, true);
    for g in &mut gpu.gpus {
        g.processes_at = Some(at);
    }
    Ok(Sample { at, nvml: gpu.status, gpus: gpu.gpus, host: host.read(), xid_errors: gpu.xid_errors })
}

/// The GPU half of live sampling: memory and utilisation every tick, the per-process lists only
/// every `processInterval` or when a decision asks for them (NVML's process query can take
/// milliseconds and serialises with inference on the driver). Ticks in between carry the last
/// lists, relabelled, with the `processesAt` of the tick that read them.
struct LiveGpus {
    source: Box<dyn GpuSource>,
    process_interval: Duration,
    /// When the lists were last read.
    lists_read: Option<Instant>,
    /// The last lists by GPU index, with the sample time they were read at.
    lists: BTreeMap<u32, (Vec<GpuProcess>, f64)>,
}

impl LiveGpus {
    fn new(source: Box<dyn GpuSource>, process_interval: Duration) -> Self {
        Self { source, process_interval, lists_read: None, lists: BTreeMap::new() }
    }

    /// The GPUs as of `now` (a sample stamped `at`); `wanted`: read the lists whatever the interval.
    fn read(&mut self, now: Instant, at: f64, wanted: bool, registry: &ProcessRegistry) -> GpuRead {
        let due =
            wanted || self.lists_read.is_none_or(|read| now.saturating_duration_since(read) >= self.process_interval);
        let mut read = self.source.read(registry, due);
        if due {
            self.lists_read = Some(now);
            self.lists.clear();
            for gpu in &mut read.gpus {
                gpu.processes_at = Some(at);
                self.lists.insert(gpu.index, (gpu.processes.clone(), at));
            }
        } else {
            for gpu in &mut read.gpus {
                if let Some((list, read_at)) = self.lists.get(&gpu.index) {
                    gpu.processes = list.clone();
                    // A pid registered since the read gets its label now.
                    for p in &mut gpu.processes {
                        p.service = registry.service_of(p.pid);
                    }
                    gpu.processes_at = Some(*read_at);
                }
            }
        }
        read
    }
}

/// Configures and starts a sampler.
pub struct Sampler {
    options: TelemetryOptions,
    registry: Arc<ProcessRegistry>,
    backlog: Option<BacklogFn>,
    held: bool,
}

impl Sampler {
    /// A sampler with an empty process registry and no arbiter backlog.
    pub fn new(options: TelemetryOptions) -> Self {
        Self { options, registry: ProcessRegistry::new(), backlog: None, held: false }
    }

    /// Starts the thread held: it takes no sample until [`SamplerHandle::release`]. The binding
    /// releases it at the end of the JS turn that made it, so what that turn attaches (an
    /// arbiter's backlog, listeners) is in place for the first sample, even for a replay played
    /// as fast as possible.
    pub fn held(mut self) -> Self {
        self.held = true;
        self
    }

    /// Shares a registry of processes whose memory to report and whose GPU use to label.
    pub fn registry(mut self, registry: Arc<ProcessRegistry>) -> Self {
        self.registry = registry;
        self
    }

    /// Supplies the arbiter's backlog for GPU_IDLE_WITH_BACKLOG; without it that alert never fires.
    pub fn backlog(mut self, backlog: BacklogFn) -> Self {
        self.backlog = Some(backlog);
        self
    }

    /// Opens the record and replay files (errors here are synchronous) and starts the thread.
    /// NVML is touched only on that thread.
    pub fn start(self, sink: Sink) -> SidecarResult<SamplerHandle> {
        let options = &self.options;
        let recorder = options.record.as_deref().map(Recorder::open).transpose()?;
        let source = match (&options.replay, options.source) {
            (_, TelemetrySource::Manual) => Source::Manual,
            (Some(path), TelemetrySource::Live) => {
                Source::Replay { replay: Replay::open(path)?, speed: options.replay_speed, played: None }
            }
            (None, TelemetrySource::Live) => Source::Live {
                host: Box::new(HostReader::new(self.registry.clone())?),
                gpus: LiveGpus::new(
                    Box::new(GpuReader::new(options.gpu_indices())),
                    Duration::from_millis(options.process_interval_ms.get()),
                ),
                interval: Duration::from_millis(options.interval_ms.get()),
                next_tick: Instant::now()
                    + Duration::from_millis(options.interval_ms.get()).min(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL),
            },
        };
        let manual = matches!(source, Source::Manual);
        let shared = Arc::new(Shared::default());
        lock(&shared.control).held = self.held;
        let worker = Worker {
            shared: shared.clone(),
            source,
            recorder,
            engine: AlertEngine::new(options.thresholds.clone()),
            registry: self.registry,
            backlog: self.backlog,
            sink,
        };
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.to_string())
            .spawn(move || worker.run())
            .map_err(|e| SidecarError::new(ErrorCode::Internal, format!("cannot start the telemetry thread: {e}")))?;
        Ok(SamplerHandle { shared, thread: Some(thread), manual })
    }
}

/// A running sampler. Dropping it stops it.
pub struct SamplerHandle {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    manual: bool,
}

impl SamplerHandle {
    /// Hands a sample to a manual source: the sampler thread then treats it exactly like a sampled
    /// one (recording, alerts, the sink), in push order. `INVALID_ARGUMENT` on a live or replaying
    /// sampler, `CLOSED` once stopped (or ended on a panic).
    pub fn push(&self, sample: Sample) -> SidecarResult<()> {
        self.check_push()?;
        let mut control = lock(&self.shared.control);
        if control.stopped {
            return Err(closed());
        }
        control.pushed.push_back(sample);
        drop(control);
        self.shared.wake.notify_all();
        Ok(())
    }

    /// Checks a pushed sample as a replayed line is checked ([`parse_sample`], with JSON paths
    /// under `sample`), then [`push`](Self::push)es it. The sampler's state is checked first.
    pub fn push_json(&self, value: &serde_json::Value) -> SidecarResult<()> {
        self.check_push()?;
        self.push(parse_sample(value, "sample")?)
    }

    /// Whether [`push`](Self::push) would take a sample now.
    pub fn check_push(&self) -> SidecarResult<()> {
        if !self.manual {
            return Err(SidecarError::invalid_argument(
                "push: this Telemetry reads NVML and the host (or a replay); only one made with \
                 source: \"manual\" takes pushed samples",
            ));
        }
        if self.shared.is_stopped() || self.is_finished() {
            return Err(closed());
        }
        Ok(())
    }

    /// See [`LatestSample::want_processes`].
    pub fn want_processes(&self) {
        self.shared.want_processes();
    }

    /// The last sample, without touching NVML: a clone of a pointer under a short lock.
    pub fn latest(&self) -> Option<Arc<Sample>> {
        lock(&self.shared.latest).clone()
    }

    /// A `Send + Sync` reader of the last sample for other threads (the handle itself stays with
    /// its owner).
    pub fn latest_source(&self) -> LatestSample {
        LatestSample(self.shared.clone())
    }

    /// Prometheus text for the last sample; empty before the first.
    pub fn metrics(&self) -> String {
        self.latest().map(|s| metrics::render(&s)).unwrap_or_default()
    }

    /// Whether the thread has ended (a replay ran out, or after [`stop`](Self::stop)).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Lets a thread started [`held`](Sampler::held) take its first sample. Idempotent.
    pub fn release(&self) {
        lock(&self.shared.control).held = false;
        self.shared.wake.notify_all();
    }

    /// Stops the thread and waits for it; it wakes at once from its wait between samples. Safe to
    /// call twice, and from the sink (it then does not wait for itself).
    pub fn stop(&mut self) {
        lock(&self.shared.control).stopped = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            if thread.thread().id() == std::thread::current().id() {
                return;
            }
            if thread.join().is_err() {
                tracing::error!("the telemetry thread panicked");
            }
        }
    }
}

impl Drop for SamplerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads a sampler's last sample from any thread; see [`SamplerHandle::latest_source`].
#[derive(Clone)]
pub struct LatestSample(Arc<Shared>);

impl LatestSample {
    /// The last sample; `None` before the first and once the sampler was stopped.
    pub fn get(&self) -> Option<Arc<Sample>> {
        if lock(&self.0.control).stopped {
            return None;
        }
        lock(&self.0.latest).clone()
    }

    /// Whether the first sample is still to come: the sampler runs (or waits for its first
    /// push) and has produced none yet.
    pub fn first_pending(&self) -> bool {
        !lock(&self.0.control).stopped && lock(&self.0.latest).is_none()
    }

    /// Asks for the per-process lists in the next live sample, whatever `processIntervalMs` says:
    /// for a decision (a VRAM gate, an eviction) that needs fresh per-process figures. Wait for a
    /// sample whose GPUs' `processes_at` is its `at`. No effect on a replay or a manual source.
    pub fn want_processes(&self) {
        self.0.want_processes();
    }

    /// Whether the SWAP_ACTIVE alert is raised as of the last sample.
    pub fn swap_active(&self) -> bool {
        self.0.swap_active.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// What other threads ask of the sampler thread; one lock, so the thread's wait sees every change.
#[derive(Default)]
struct Control {
    stopped: bool,
    /// No sample is taken yet (see [`Sampler::held`]).
    held: bool,
    /// Samples pushed to a manual source, oldest first.
    pushed: VecDeque<Sample>,
    /// The next live sample reads the process lists.
    processes_wanted: bool,
}

#[derive(Default)]
struct Shared {
    latest: Mutex<Option<Arc<Sample>>>,
    /// Whether the SWAP_ACTIVE alert is raised as of `latest` (the host-memory gate holds starts
    /// meanwhile).
    swap_active: std::sync::atomic::AtomicBool,
    control: Mutex<Control>,
    wake: Condvar,
}

impl Shared {
    /// Waits while the sampler is held; returns whether it was stopped meanwhile.
    fn wait_released(&self) -> bool {
        let mut control = lock(&self.control);
        while control.held && !control.stopped {
            control = self.wake.wait(control).unwrap_or_else(|e| e.into_inner());
        }
        control.stopped
    }

    /// Sleeps until `deadline` unless stopped first; returns whether it was stopped.
    fn wait_until(&self, deadline: Instant) -> bool {
        let mut control = lock(&self.control);
        loop {
            if control.stopped {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            control = self.wake.wait_timeout(control, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// The next pushed sample, waiting for one; `None` once stopped.
    fn next_pushed(&self) -> Option<Sample> {
        let mut control = lock(&self.control);
        loop {
            if control.stopped {
                return None;
            }
            if let Some(sample) = control.pushed.pop_front() {
                return Some(sample);
            }
            control = self.wake.wait(control).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn want_processes(&self) {
        lock(&self.control).processes_wanted = true;
    }

    /// Whether the process lists were asked for since the last call.
    fn take_processes_wanted(&self) -> bool {
        std::mem::take(&mut lock(&self.control).processes_wanted)
    }

    fn is_stopped(&self) -> bool {
        lock(&self.control).stopped
    }
}

fn closed() -> SidecarError {
    SidecarError::new(ErrorCode::Closed, "push: the Telemetry is closed")
}

/// The locked values stay consistent even if a holder panicked, so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

enum Source {
    Live {
        host: Box<HostReader>,
        gpus: LiveGpus,
        interval: Duration,
        next_tick: Instant,
    },
    /// `played`: when the previous sample was due, and its recorded `at`.
    Replay {
        replay: Replay,
        speed: ReplaySpeed,
        played: Option<(Instant, f64)>,
    },
    /// Samples pushed by the application, handled in push order.
    Manual,
    /// Panics on its first sample, to test that a panic reaches the sink.
    #[cfg(test)]
    Panicking,
}

/// What waiting for the next sample gave.
enum Next {
    Sample(Sample),
    Stopped,
    Ended(Option<SidecarError>),
}

impl Source {
    fn next(&mut self, shared: &Shared, registry: &ProcessRegistry) -> Next {
        match self {
            Source::Live { host, gpus, interval, next_tick } => {
                if shared.wait_until(*next_tick) {
                    return Next::Stopped;
                }
                // A slow tick does not cause a burst of catch-up samples.
                let now = Instant::now();
                *next_tick = (*next_tick + *interval).max(now);
                let at = epoch_ms();
                let gpu = gpus.read(now, at, shared.take_processes_wanted(), registry);
                Next::Sample(Sample {
                    at,
                    nvml: gpu.status,
                    gpus: gpu.gpus,
                    host: host.read(),
                    xid_errors: gpu.xid_errors,
                })
            }
            Source::Manual => match shared.next_pushed() {
                Some(sample) => Next::Sample(sample),
                None => Next::Stopped,
            },
            Source::Replay { replay, speed, played } => {
                let sample = match replay.next() {
                    None => return Next::Ended(replay.cut_last_line().cloned()),
                    Some(Err(e)) => return Next::Ended(Some(e)),
                    Some(Ok(sample)) => sample,
                };
                // Each sample is due a (capped, scaled) gap after the previous one was due, not
                // after it was sent, so delays do not accumulate drift.
                let due = match *played {
                    None => Instant::now(),
                    Some((previous_due, previous_at)) => {
                        let delay = replay_delay(previous_at, sample.at, *speed);
                        previous_due.checked_add(delay).unwrap_or_else(far_future)
                    }
                };
                *played = Some((due, sample.at));
                if shared.wait_until(due) {
                    return Next::Stopped;
                }
                Next::Sample(sample)
            }
            #[cfg(test)]
            Source::Panicking => panic!("cannot convert float seconds to Duration: value is either too big or NaN"),
        }
    }
}

struct Worker {
    shared: Arc<Shared>,
    source: Source,
    recorder: Option<Recorder>,
    engine: AlertEngine,
    registry: Arc<ProcessRegistry>,
    backlog: Option<BacklogFn>,
    sink: Sink,
}

impl Worker {
    /// The thread's body. A panic anywhere in sampling ends the stream with an `INTERNAL` error
    /// to the sink: the caller must hear that sampling stopped, never find out from silence.
    fn run(mut self) {
        let Err(payload) = catch_unwind(AssertUnwindSafe(|| self.run_loop())) else { return };
        let detail = panic_message(payload.as_ref());
        tracing::error!(%detail, "the telemetry thread panicked; sampling stopped");
        if !self.shared.is_stopped() {
            let message = format!("the telemetry thread panicked, sampling stopped: {detail}");
            self.emit(SamplerEvent::Ended(Some(SidecarError::new(ErrorCode::Internal, message))));
        }
    }

    fn run_loop(&mut self) {
        if self.shared.wait_released() {
            return;
        }
        loop {
            let sample = match self.source.next(&self.shared, &self.registry) {
                Next::Sample(sample) => sample,
                Next::Stopped => return,
                Next::Ended(error) => {
                    self.emit(SamplerEvent::Ended(error));
                    return;
                }
            };
            if let Some(recorder) = &mut self.recorder {
                if let Err(e) = recorder.append(&sample) {
                    tracing::warn!(error = %e, "telemetry recording stopped");
                    self.recorder = None;
                    self.emit(SamplerEvent::RecordingStopped(e));
                }
            }
            let backlog = match &mut self.backlog {
                Some(backlog) => guarded("backlog", backlog).unwrap_or_default(),
                None => BTreeMap::new(),
            };
            let alerts = self.engine.observe(&sample, &backlog);
            if let Some(swap) = alerts.iter().rev().find(|a| a.code == AlertCode::SwapActive) {
                self.shared.swap_active.store(swap.active, std::sync::atomic::Ordering::SeqCst);
            }
            let sample = Arc::new(sample);
            *lock(&self.shared.latest) = Some(sample.clone());
            // Once stop() is asked for, nothing new reaches the sink.
            if self.shared.is_stopped() {
                return;
            }
            self.emit(SamplerEvent::Sample(SamplerOutput { sample, alerts }));
        }
    }

    fn emit(&mut self, event: SamplerEvent) {
        let sink = &mut self.sink;
        guarded("sink", || sink(event));
    }
}

/// Runs caller-supplied code so that its panic is logged instead of ending sampling.
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> Option<T> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|_| tracing::error!("telemetry {what} callback panicked")).ok()
}

/// A deadline that never comes (a replay wait past it lasts until `stop`).
fn far_future() -> Instant {
    let now = Instant::now();
    now.checked_add(Duration::from_secs(100 * 365 * 86_400)).unwrap_or(now)
}

fn epoch_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1_000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Int;
    use crate::telemetry::alerts::AlertCode;
    use crate::telemetry::record::temp_path;
    use crate::telemetry::sample::fixtures::sample;
    use crate::telemetry::sample::NvmlUnavailable;
    use crate::telemetry::TelemetrySource;
    use std::path::Path;
    use std::sync::mpsc;

    fn write_recording(path: &Path, samples: &[Sample]) {
        let lines: Vec<String> = samples.iter().map(|s| serde_json::to_string(s).unwrap()).collect();
        std::fs::write(path, lines.join("\n") + "\n").unwrap();
    }

    fn channel_sink() -> (Sink, mpsc::Receiver<SamplerEvent>) {
        let (tx, rx) = mpsc::channel();
        (Box::new(move |event| drop(tx.send(event))), rx)
    }

    fn replay_options(path: &Path, speed: ReplaySpeed) -> TelemetryOptions {
        let mut options =
            TelemetryOptions { replay: Some(path.to_path_buf()), replay_speed: speed, ..Default::default() };
        options.thresholds.min_duration_ms = Int(0);
        options
    }

    #[test]
    fn replays_samples_with_alerts_and_backlog_to_the_sink_then_ends() {
        let path = temp_path("sampler-replay.jsonl");
        let mut samples: Vec<Sample> = (0..5).map(|i| sample(i as f64 * 60_000.0)).collect();
        samples[2].host.swap_used_mb = 2_000;
        samples[3].gpus[0].utilization_gpu = Some(0.0);
        write_recording(&path, &samples);
        let mut options = replay_options(&path, ReplaySpeed::AsFastAsPossible);
        options.thresholds.gpu_idle.idle_for_ms = Int(0);
        let (sink, events) = channel_sink();
        let backlog: BacklogFn = Box::new(|| [("gpu:0".to_string(), Backlog { leases: 1, waiters: 0 })].into());
        let handle = Sampler::new(options).backlog(backlog).start(sink).unwrap();
        let mut got = vec![];
        let ended = loop {
            match events.recv_timeout(Duration::from_secs(10)).expect("replay stalled") {
                SamplerEvent::Sample(output) => got.push(output),
                SamplerEvent::Ended(error) => break error,
                SamplerEvent::RecordingStopped(e) => panic!("{e}"),
            }
        };
        assert!(ended.is_none(), "{ended:?}");
        let played: Vec<Sample> = got.iter().map(|o| (*o.sample).clone()).collect();
        assert_eq!(played, samples);
        let codes: Vec<(usize, AlertCode, bool)> =
            got.iter().enumerate().flat_map(|(i, o)| o.alerts.iter().map(move |a| (i, a.code, a.active))).collect();
        assert_eq!(
            codes,
            // Samples are 60 s apart, so the 5 s clear duration has passed by the next one.
            vec![
                (2, AlertCode::SwapActive, true),
                (3, AlertCode::GpuIdleWithBacklog, true),
                (4, AlertCode::SwapActive, false),
            ]
        );
        assert_eq!(handle.latest().as_deref(), Some(&samples[4]));
        assert!(handle.metrics().contains("gpu_sidecar_host_cpu_percent 10\n"));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_held_sampler_takes_no_sample_until_released_and_stops_while_held() {
        let path = temp_path("sampler-held.jsonl");
        write_recording(&path, &[sample(0.0), sample(1_000.0)]);
        let (sink, events) = channel_sink();
        let handle = Sampler::new(replay_options(&path, ReplaySpeed::AsFastAsPossible)).held().start(sink).unwrap();
        // A replay played as fast as possible would be over long before this.
        assert!(events.recv_timeout(Duration::from_millis(300)).is_err(), "sampled while held");
        assert!(handle.latest().is_none());
        handle.release();
        let first = events.recv_timeout(Duration::from_secs(10)).expect("released, it samples");
        assert!(matches!(first, SamplerEvent::Sample(ref o) if o.sample.at == 0.0));
        // Stopped before it was ever released: the thread ends without a sample.
        let (sink, events) = channel_sink();
        let mut never = Sampler::new(replay_options(&path, ReplaySpeed::AsFastAsPossible)).held().start(sink).unwrap();
        never.stop();
        assert!(never.is_finished());
        assert!(events.try_recv().is_err());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn replays_in_real_time_scaled_by_speed_and_records_what_it_plays() {
        let path = temp_path("sampler-timed.jsonl");
        let record = temp_path("sampler-recorded.jsonl");
        let samples: Vec<Sample> = (0..4).map(|i| sample(i as f64 * 100.0)).collect();
        write_recording(&path, &samples);
        let mut options = replay_options(&path, ReplaySpeed::Factor(2.0));
        options.record = Some(record.clone());
        let (sink, events) = channel_sink();
        let started = Instant::now();
        let mut handle = Sampler::new(options).start(sink).unwrap();
        let mut arrivals = vec![];
        while let SamplerEvent::Sample(_) = events.recv_timeout(Duration::from_secs(10)).unwrap() {
            arrivals.push(started.elapsed());
        }
        assert_eq!(arrivals.len(), 4);
        // 300 ms recorded at speed 2 takes 150 ms.
        assert!(arrivals[3] >= Duration::from_millis(150), "{arrivals:?}");
        assert!(arrivals[3] < Duration::from_secs(2), "{arrivals:?}");
        handle.stop();
        assert!(handle.is_finished());
        let recorded: Vec<Sample> = Replay::open(&record).unwrap().map(Result::unwrap).collect();
        assert_eq!(recorded, samples);
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(&record).unwrap();
    }

    #[test]
    fn stops_promptly_in_the_middle_of_a_long_gap() {
        let path = temp_path("sampler-gap.jsonl");
        write_recording(&path, &[sample(0.0), sample(3_600_000.0)]);
        let (sink, events) = channel_sink();
        let mut handle = Sampler::new(replay_options(&path, ReplaySpeed::Factor(1.0))).start(sink).unwrap();
        assert!(matches!(events.recv_timeout(Duration::from_secs(10)).unwrap(), SamplerEvent::Sample(_)));
        let asked = Instant::now();
        handle.stop();
        assert!(asked.elapsed() < Duration::from_millis(500), "{:?}", asked.elapsed());
        assert!(handle.is_finished());
        assert!(events.try_recv().is_err(), "no event after stop");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn live_sampling_without_nvml_still_reports_the_host() {
        let options = TelemetryOptions { interval_ms: Int(50), ..Default::default() };
        let (sink, events) = channel_sink();
        let mut handle = Sampler::new(options).start(sink).unwrap();
        let mut samples = vec![];
        while samples.len() < 3 {
            match events.recv_timeout(Duration::from_secs(10)).unwrap() {
                SamplerEvent::Sample(output) => samples.push(output.sample),
                other => panic!("{other:?}"),
            }
        }
        handle.stop();
        for s in &samples {
            if std::env::var_os("GPU_SIDECAR_EXPECT_NVML").is_none() {
                assert!(!s.nvml.available);
                assert_eq!(s.nvml.reason, Some(NvmlUnavailable::LibraryNotFound));
                assert!(s.gpus.is_empty());
            }
            assert!(s.host.total_mb > 0 && s.host.available_mb <= s.host.total_mb, "{:?}", s.host);
            assert!((0.0..=100.0).contains(&s.host.cpu_percent));
        }
        assert!(samples.windows(2).all(|w| w[1].at > w[0].at));
        assert!(handle.latest().is_some());
        assert!(handle.metrics().contains("gpu_sidecar_host_memory_total_bytes"));
    }

    #[test]
    fn a_panicking_sink_does_not_end_sampling() {
        let path = temp_path("sampler-panic.jsonl");
        write_recording(&path, &[sample(0.0), sample(1.0), sample(2.0)]);
        let (tx, rx) = mpsc::channel();
        let sink: Sink = Box::new(move |event| {
            if let SamplerEvent::Sample(output) = &event {
                if output.sample.at == 0.0 {
                    panic!("sink failure on purpose");
                }
            }
            let _ = tx.send(event);
        });
        let _handle = Sampler::new(replay_options(&path, ReplaySpeed::AsFastAsPossible)).start(sink).unwrap();
        let mut ats = vec![];
        while let SamplerEvent::Sample(output) = rx.recv_timeout(Duration::from_secs(10)).unwrap() {
            ats.push(output.sample.at);
        }
        assert_eq!(ats, vec![1.0, 2.0]);
        std::fs::remove_file(&path).unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_failing_record_file_stops_recording_but_not_sampling() {
        let path = temp_path("sampler-full.jsonl");
        write_recording(&path, &[sample(0.0), sample(1.0), sample(2.0)]);
        let mut options = replay_options(&path, ReplaySpeed::AsFastAsPossible);
        // Every write to /dev/full fails with ENOSPC.
        options.record = Some("/dev/full".into());
        let (sink, events) = channel_sink();
        let _handle = Sampler::new(options).start(sink).unwrap();
        let mut seen = vec![];
        loop {
            match events.recv_timeout(Duration::from_secs(10)).unwrap() {
                SamplerEvent::Sample(output) => seen.push(format!("sample {}", output.sample.at)),
                SamplerEvent::RecordingStopped(e) => seen.push(format!("stopped {:?}", e.code)),
                SamplerEvent::Ended(e) => {
                    assert!(e.is_none());
                    break;
                }
            }
        }
        assert_eq!(seen, ["stopped Io", "sample 0", "sample 1", "sample 2"]);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_sink_may_stop_its_own_sampler() {
        let path = temp_path("sampler-self-stop.jsonl");
        write_recording(&path, &[sample(0.0), sample(1.0), sample(2.0)]);
        let handle: Arc<Mutex<Option<SamplerHandle>>> = Arc::default();
        let (tx, rx) = mpsc::channel();
        let in_sink = handle.clone();
        let sink: Sink = Box::new(move |event| {
            if let Some(h) = lock(&in_sink).as_mut() {
                h.stop();
            }
            let _ = tx.send(event);
        });
        // Hold the lock while starting so the sink sees the handle on the first sample.
        let mut slot = lock(&handle);
        *slot = Some(Sampler::new(replay_options(&path, ReplaySpeed::AsFastAsPossible)).start(sink).unwrap());
        drop(slot);
        assert!(matches!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), SamplerEvent::Sample(_)));
        // The thread ends after the first sample instead of playing the rest.
        assert!(rx.recv_timeout(Duration::from_secs(10)).is_err());
        drop(lock(&handle).take());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_panic_on_the_thread_ends_the_stream_with_an_internal_error() {
        let (sink, events) = channel_sink();
        let worker = Worker {
            shared: Arc::new(Shared::default()),
            source: Source::Panicking,
            recorder: None,
            engine: AlertEngine::new(Default::default()),
            registry: ProcessRegistry::new(),
            backlog: None,
            sink,
        };
        std::thread::spawn(move || worker.run()).join().expect("the panic is caught");
        match events.recv_timeout(Duration::from_secs(10)).unwrap() {
            SamplerEvent::Ended(Some(e)) => {
                assert_eq!(e.code, ErrorCode::Internal);
                assert!(e.message.contains("cannot convert float seconds to Duration"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_cut_off_last_line_ends_the_replay_after_every_whole_sample() {
        let path = temp_path("sampler-cut.jsonl");
        let whole = serde_json::to_string(&sample(0.0)).unwrap();
        let cut = &serde_json::to_string(&sample(1.0)).unwrap()[..40];
        std::fs::write(&path, format!("{whole}\n{whole}\n{cut}")).unwrap();
        let (sink, events) = channel_sink();
        let _handle = Sampler::new(replay_options(&path, ReplaySpeed::AsFastAsPossible)).start(sink).unwrap();
        let mut played = 0;
        let ended = loop {
            match events.recv_timeout(Duration::from_secs(10)).unwrap() {
                SamplerEvent::Sample(_) => played += 1,
                SamplerEvent::Ended(e) => break e.expect("the cut line is reported"),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(played, 2);
        assert_eq!(ended.code, ErrorCode::InvalidArgument);
        assert!(
            ended.message.starts_with(&format!("{}:3: the last line is cut off", path.display())),
            "{}",
            ended.message
        );
        assert!(ended.message.ends_with("the 2 samples before it were played"), "{}", ended.message);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_huge_recorded_gap_waits_at_most_an_hour_and_still_stops() {
        let path = temp_path("sampler-huge-gap.jsonl");
        write_recording(&path, &[sample(0.0), sample(1e300)]);
        let (sink, events) = channel_sink();
        let mut handle = Sampler::new(replay_options(&path, ReplaySpeed::Factor(1.0))).start(sink).unwrap();
        assert!(matches!(events.recv_timeout(Duration::from_secs(10)).unwrap(), SamplerEvent::Sample(_)));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!handle.is_finished(), "the thread waits instead of panicking");
        handle.stop();
        assert!(events.try_recv().is_err());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_manual_source_handles_pushed_samples_like_sampled_ones() {
        let record = temp_path("manual-recorded.jsonl");
        let mut options =
            TelemetryOptions { source: TelemetrySource::Manual, record: Some(record.clone()), ..Default::default() };
        options.thresholds.min_duration_ms = Int(0);
        options.thresholds.clear_duration_ms = Int(0);
        let (sink, events) = channel_sink();
        let mut handle = Sampler::new(options).start(sink).unwrap();
        assert!(handle.latest().is_none());
        assert!(events.recv_timeout(Duration::from_millis(100)).is_err(), "nothing is sampled by itself");
        let mut samples: Vec<Sample> = (0..3).map(|i| sample(i as f64 * 60_000.0)).collect();
        samples[1].host.swap_used_mb = 2_000;
        for s in &samples {
            handle.push(s.clone()).unwrap();
        }
        let mut got = vec![];
        while got.len() < 3 {
            match events.recv_timeout(Duration::from_secs(10)).unwrap() {
                SamplerEvent::Sample(output) => got.push(output),
                other => panic!("{other:?}"),
            }
        }
        let played: Vec<Sample> = got.iter().map(|o| (*o.sample).clone()).collect();
        assert_eq!(played, samples);
        let alerts: Vec<(usize, AlertCode, bool)> =
            got.iter().enumerate().flat_map(|(i, o)| o.alerts.iter().map(move |a| (i, a.code, a.active))).collect();
        assert_eq!(alerts, vec![(1, AlertCode::SwapActive, true), (2, AlertCode::SwapActive, false)]);
        assert_eq!(handle.latest().as_deref(), Some(&samples[2]));
        let recorded: Vec<Sample> = Replay::open(&record).unwrap().map(Result::unwrap).collect();
        assert_eq!(recorded, samples);
        let mut bad = serde_json::to_value(sample(3.0)).unwrap();
        bad["host"]["swapUsedMb"] = serde_json::json!(-1);
        let refused = handle.push_json(&bad).unwrap_err();
        assert_eq!(refused.message, "sample.host.swapUsedMb: expected u64, got -1");
        handle.stop();
        let closed = handle.push(sample(1.0)).unwrap_err();
        assert_eq!((closed.code, closed.message.as_str()), (ErrorCode::Closed, "push: the Telemetry is closed"));
        std::fs::remove_file(&record).unwrap();
    }

    #[test]
    fn push_is_refused_by_a_replaying_sampler() {
        let path = temp_path("sampler-no-push.jsonl");
        write_recording(&path, &[sample(0.0), sample(3_600_000.0)]);
        let (sink, _events) = channel_sink();
        let handle = Sampler::new(replay_options(&path, ReplaySpeed::Factor(1.0))).start(sink).unwrap();
        let e = handle.push(sample(1.0)).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert_eq!(handle.push_json(&serde_json::json!({})).unwrap_err().message, e.message, "refused before parsing");
        assert!(e.message.contains("only one made with source: \"manual\" takes pushed samples"), "{}", e.message);
        std::fs::remove_file(&path).unwrap();
    }

    /// One GPU whose process list names the read it came from (pid 100, 101, ...), counting reads.
    struct FakeGpus {
        list_reads: u32,
        reads: u32,
    }

    impl GpuSource for FakeGpus {
        fn read(&mut self, registry: &ProcessRegistry, with_processes: bool) -> GpuRead {
            self.reads += 1;
            let mut gpu = crate::telemetry::sample::fixtures::gpu(0, 50.0, 8_000 - self.reads as u64);
            gpu.processes = vec![];
            if with_processes {
                let pid = 100 + self.list_reads;
                self.list_reads += 1;
                gpu.processes = vec![GpuProcess { pid, used_mb: Some(500), service: registry.service_of(pid) }];
            }
            GpuRead {
                status: crate::telemetry::NvmlStatus { available: true, reason: None },
                gpus: vec![gpu],
                xid_errors: vec![],
            }
        }
    }

    #[test]
    fn process_lists_are_read_every_process_interval_or_when_wanted_and_carried_in_between() {
        let mut gpus = LiveGpus::new(Box::new(FakeGpus { list_reads: 0, reads: 0 }), Duration::from_millis(1_000));
        let registry = ProcessRegistry::new();
        let start = Instant::now();
        // A tick every 250 ms on a hand-driven clock; the lists are wanted once, at 1300 ms.
        let mut seen = vec![];
        for ms in [0u64, 250, 500, 750, 1_000, 1_250, 1_300, 1_500, 2_000, 2_250, 2_300] {
            if ms == 1_250 {
                registry.register(101, "ASR");
            }
            let read = gpus.read(start + Duration::from_millis(ms), ms as f64, ms == 1_300, &registry);
            let gpu = &read.gpus[0];
            assert_eq!(gpu.free_mb, Some(8_000 - seen.len() as u64 - 1), "memory is read every tick");
            let process = &gpu.processes[0];
            seen.push((ms, process.pid, gpu.processes_at.unwrap(), process.service.clone()));
        }
        let asr = || Some("ASR".to_string());
        assert_eq!(
            seen,
            vec![
                (0, 100, 0.0, None),
                (250, 100, 0.0, None),
                (500, 100, 0.0, None),
                (750, 100, 0.0, None),
                (1_000, 101, 1_000.0, None),
                // Carried lists are relabelled: pid 101 was registered after the read.
                (1_250, 101, 1_000.0, asr()),
                (1_300, 102, 1_300.0, None),
                (1_500, 102, 1_300.0, None),
                // The interval counts from the wanted read, so 2000 carries it too.
                (2_000, 102, 1_300.0, None),
                (2_250, 102, 1_300.0, None),
                (2_300, 103, 2_300.0, None),
            ]
        );
    }

    #[test]
    fn a_zero_process_interval_reads_the_lists_every_tick() {
        let mut gpus = LiveGpus::new(Box::new(FakeGpus { list_reads: 0, reads: 0 }), Duration::ZERO);
        let registry = ProcessRegistry::new();
        let start = Instant::now();
        let pids: Vec<u32> = (0..3)
            .map(|i| gpus.read(start + Duration::from_millis(i * 50), 0.0, false, &registry).gpus[0].processes[0].pid)
            .collect();
        assert_eq!(pids, vec![100, 101, 102]);
    }

    #[test]
    fn a_live_source_reads_the_lists_when_wanted_between_intervals() {
        let registry = ProcessRegistry::new();
        let shared = Shared::default();
        let mut source = Source::Live {
            host: Box::new(HostReader::new(registry.clone()).unwrap()),
            gpus: LiveGpus::new(Box::new(FakeGpus { list_reads: 0, reads: 0 }), Duration::from_secs(3_600)),
            interval: Duration::from_millis(1),
            next_tick: Instant::now(),
        };
        let mut tick = |want: bool| {
            if want {
                LatestSample(Arc::new(Shared::default())).want_processes(); // another sampler: no effect here
                shared.want_processes();
            }
            match source.next(&shared, &registry) {
                Next::Sample(s) => (s.gpus[0].processes[0].pid, s.gpus[0].processes_at == Some(s.at)),
                _ => panic!("a live source ended"),
            }
        };
        assert_eq!(tick(false), (100, true));
        assert_eq!(tick(false), (100, false), "carried: read an hour's interval ago at most");
        assert_eq!(tick(true), (101, true));
        assert_eq!(tick(false), (101, false));
    }

    #[test]
    fn wanting_the_process_lists_marks_the_next_tick_once() {
        let shared = Shared::default();
        assert!(!shared.take_processes_wanted());
        LatestSample(Arc::new(Shared::default())).want_processes();
        shared.want_processes();
        assert!(shared.take_processes_wanted());
        assert!(!shared.take_processes_wanted(), "one request, one read");
    }

    #[test]
    fn bad_record_and_replay_paths_fail_at_start() {
        let (sink, _events) = channel_sink();
        let options = TelemetryOptions { replay: Some(temp_path("absent.jsonl")), ..Default::default() };
        assert_eq!(Sampler::new(options).start(sink).err().unwrap().code, ErrorCode::Io);
        let (sink, _events) = channel_sink();
        let options = TelemetryOptions { record: Some(temp_path("no-such-dir").join("r.jsonl")), ..Default::default() };
        assert_eq!(Sampler::new(options).start(sink).err().unwrap().code, ErrorCode::Io);
    }
}
