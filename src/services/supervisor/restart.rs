//! The runner: one task per started service, from its first attempt to its final state. It
//! decides what ends a ready run (an exit, failed liveness, a hang, a stop) and whether the
//! service is started again (its policy, then its restart budget).

use std::sync::Arc;

use tokio::sync::{watch, OwnedSemaphorePermit};

use super::{ms, stop_requested, AbortOnDrop, Attempt, HungReport, Launched, ServiceState, Shared};
use crate::error::{ErrorCode, SidecarError};
use crate::services::config::RestartPolicy;
use crate::services::events::{epoch_ms, ExitInfo, ServiceEventKind};
use crate::services::restart_budget::{random_spread, RestartDecision};

/// How a run ended, other than by a stop request.
enum RunEnd {
    Exited(ExitInfo),
    /// Stopped after `failureThreshold` liveness failures (their reasons).
    Unhealthy(Vec<String>),
    Hung(HungReport),
    /// An on-demand service idle for its `keepAliveMs` (ms idle); stopped, not a failure.
    Idle(u64),
}

impl RunEnd {
    fn is_failure(&self) -> bool {
        match self {
            RunEnd::Exited(exit) => !exit.success(),
            RunEnd::Unhealthy(_) | RunEnd::Hung(_) => true,
            RunEnd::Idle(_) => false,
        }
    }
}

impl Shared {
    /// Runs [`Self::run`] as its own task, so that a panic in it (a bug, or a hook that panics)
    /// fails the service with `INTERNAL` instead of leaving it starting forever, unseen. The
    /// unwinding drops the runner's process, which kills and reaps it.
    pub(super) async fn run_guarded(
        self: Arc<Self>,
        i: usize,
        permit: OwnedSemaphorePermit,
        stop: watch::Receiver<bool>,
    ) {
        // Aborting the outer task (a dropped supervisor) must end the inner one too.
        let mut runner = AbortOnDrop(tokio::spawn(self.clone().run(i, permit, stop)));
        let Err(error) = (&mut runner.0).await else { return };
        let Ok(payload) = error.try_into_panic() else { return };
        let detail = crate::error::panic_message(payload.as_ref());
        tracing::error!(service = %self.spec(i).name, %detail, "the service runner panicked");
        let error = SidecarError::new(
            ErrorCode::Internal,
            format!("{}: internal error in the service runner: {detail}", self.spec(i).name),
        );
        {
            let mut cell = self.cell(i);
            cell.clear_process();
            cell.error = Some(error.clone());
            cell.last_lines.clear();
        }
        self.emit(i, ServiceEventKind::Failed { error, last_lines: Vec::new() });
        self.set_state(i, ServiceState::Failed);
    }

    /// Drives service `i` from its first start attempt to its final state.
    async fn run(self: Arc<Self>, i: usize, permit: OwnedSemaphorePermit, mut stop: watch::Receiver<bool>) {
        let spec = self.spec(i);
        let mut permit = Some(permit);
        let mut attempt = 0u32;
        // One retry per start after a load ran out of GPU memory.
        let mut oom_retried = false;
        let end = loop {
            if permit.is_none() {
                tokio::select! {
                    p = self.start_slots.clone().acquire_owned() => {
                        permit = Some(p.expect("start slots are never closed"));
                    }
                    _ = stop_requested(&mut stop) => break None,
                }
            }
            self.set_state(i, ServiceState::Starting);
            let (ended, last_lines, was_ready, ran) = match self.attempt(i, attempt, &mut stop).await {
                Attempt::Ready(launched) => {
                    let spawned = launched.spawned;
                    let slot = permit.take();
                    let Some((ended, last_lines)) = self.run_ready(i, *launched, slot, &mut stop).await else {
                        break None;
                    };
                    (ended, last_lines, true, spawned.elapsed())
                }
                Attempt::Exited { exit, last_lines, ran } => {
                    self.emit(i, ServiceEventKind::Exited { exit });
                    if let Some(gpu) = spec.gpu.as_ref().filter(|_| ran_out_of_vram(&spec.oom_pattern.0, &last_lines)) {
                        if oom_retried {
                            let error = SidecarError::new(
                                ErrorCode::VramOom,
                                format!(
                                    "{}: ran out of GPU memory on {} while loading, again after evicting what could be evicted",
                                    spec.name, gpu.key
                                ),
                            );
                            self.record_failure(i, &error);
                            break Some((error, last_lines));
                        }
                        oom_retried = true;
                        self.cell(i).clear_process();
                        let evicted = self.evict_all(i, &gpu.key).await;
                        self.emit(i, ServiceEventKind::OomRetry { gpu_key: gpu.key.clone(), evicted });
                        continue;
                    }
                    (RunEnd::Exited(exit), last_lines, false, ran)
                }
                Attempt::Failed { error, last_lines } => {
                    self.record_failure(i, &error);
                    break Some((error, last_lines));
                }
                Attempt::Stopped => break None,
            };
            self.cell(i).clear_process();
            let failure = self.failure_error(i, &ended, was_ready);
            if let Some(error) = &failure {
                self.record_failure(i, error);
            }
            let restart = &spec.restart;
            let wanted = match restart.policy {
                RestartPolicy::No => false,
                RestartPolicy::OnFailure => ended.is_failure(),
                RestartPolicy::Always => true,
            };
            if wanted {
                let decision = self.cell(i).budget.decide(restart, ran.as_millis() as u64, epoch_ms(), random_spread());
                if let RestartDecision::Restart { attempt: next, delay_ms } = decision {
                    attempt = next;
                    {
                        let mut cell = self.cell(i);
                        cell.restarts += 1;
                        cell.next_restart_at_ms = Some(epoch_ms() + delay_ms);
                    }
                    self.set_state(i, ServiceState::Restarting);
                    self.emit(i, ServiceEventKind::Restarting { attempt: next, delay_ms });
                    let restart_now = tokio::select! {
                        _ = tokio::time::sleep(ms(delay_ms)) => true,
                        _ = stop_requested(&mut stop) => false,
                    };
                    self.cell(i).next_restart_at_ms = None;
                    if restart_now {
                        continue;
                    }
                    break None;
                }
            }
            let Some(error) = failure else {
                if was_ready && !wanted {
                    break None;
                }
                // A clean exit with `always` and no restarts left.
                let error = self.exited_error(i, &ExitInfo { code: Some(0), signal: None }, was_ready);
                break Some((error, last_lines));
            };
            break Some((error, last_lines));
        };
        drop(permit);
        let mut cell = self.cell(i);
        cell.clear_process();
        // `lastLines` keeps showing the last run's output once it is over.
        if let Some(sink) = cell.sink.take() {
            cell.last_lines = sink.tail();
        }
        match end {
            Some((error, last_lines)) => {
                cell.error = Some(error.clone());
                cell.last_lines = last_lines.clone();
                drop(cell);
                self.emit(i, ServiceEventKind::Failed { error, last_lines });
                self.set_state(i, ServiceState::Failed);
            }
            None => {
                drop(cell);
                self.emit(i, ServiceEventKind::Stopped);
                self.set_state(i, ServiceState::Stopped);
            }
        }
    }

    /// A ready run, until the process exits, fails its liveness check, is found hung, or a stop
    /// is requested (`None`). An unhealthy or hung process is stopped here.
    async fn run_ready(
        &self,
        i: usize,
        launched: Launched,
        start_slot: Option<OwnedSemaphorePermit>,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<(RunEnd, Vec<String>)> {
        let spec = self.spec(i);
        let Launched { mut process, sink, vram_peak, rss_peak, notify, _notify_reader, spawned: _ } = launched;
        {
            let mut cell = self.cell(i);
            cell.hung = None;
            cell.leases.forget_revokes();
        }
        let time_to_ready_ms = self.cell(i).time_to_ready_ms.unwrap_or(0);
        // Event first: whoever sees the state settle must find its event sent.
        self.emit(i, ServiceEventKind::Ready { time_to_ready_ms });
        self.set_state(i, ServiceState::Ready);
        // The slot is for loading; a ready service lets the next one load. Only now: freed
        // before the state said ready, a scheduler could hand it to a later service while the
        // ones that wait for this one still see it starting.
        drop(start_slot);
        let ended = tokio::select! {
            exit = process.wait() => Some(RunEnd::Exited(exit)),
            failures = self.watch_liveness(i, &sink, notify) => Some(RunEnd::Unhealthy(failures)),
            report = self.hung(i) => Some(RunEnd::Hung(report)),
            idle_ms = self.idle_out(i) => Some(RunEnd::Idle(idle_ms)),
            _ = stop_requested(stop) => None,
        };
        let grace = ms(spec.stop_timeout_ms.get());
        let ended = match ended {
            None => {
                self.set_state(i, ServiceState::Stopping);
                let exit = process.stop(spec.stop_signal, grace).await;
                self.record_exit(i, exit);
                None
            }
            Some(RunEnd::Idle(idle_ms)) => {
                self.set_state(i, ServiceState::Stopping);
                self.emit(i, ServiceEventKind::IdleStopped { idle_ms });
                self.emit(i, ServiceEventKind::Stopping);
                let exit = process.stop(spec.stop_signal, grace).await;
                self.record_exit(i, exit);
                None
            }
            Some(RunEnd::Exited(exit)) => Some((RunEnd::Exited(exit), exit)),
            Some(RunEnd::Unhealthy(failures)) => {
                // No longer ready: dependents and schedulers wait while it is replaced.
                self.set_state(i, ServiceState::Restarting);
                self.emit(i, ServiceEventKind::Unhealthy { failures: failures.clone() });
                let exit = process.stop(spec.stop_signal, grace).await;
                Some((RunEnd::Unhealthy(failures), exit))
            }
            Some(RunEnd::Hung(report)) => {
                self.set_state(i, ServiceState::Restarting);
                self.emit(
                    i,
                    ServiceEventKind::Hung {
                        revokes: report.lease_ids.len() as u32,
                        window_ms: spec.hang_window_ms.get(),
                        lease_ids: report.lease_ids.clone(),
                    },
                );
                let exit = process.stop(spec.stop_signal, grace).await;
                Some((RunEnd::Hung(report), exit))
            }
        };
        let peak = vram_peak.as_ref().and_then(|s| s.process_peak());
        self.profiles.lock().expect("profiles lock").record(&spec.name, None, peak);
        if let Some(rss) = rss_peak.as_ref().and_then(|s| s.peak()) {
            self.profiles.lock().expect("profiles lock").record_rss(&spec.name, rss);
        }
        let (ended, exit) = ended?;
        process.drain_output(super::OUTPUT_DRAIN).await;
        self.emit(i, ServiceEventKind::Exited { exit });
        Some((ended, sink.tail()))
    }

    /// The error a run's end stands for, when it was a failure.
    fn failure_error(&self, i: usize, ended: &RunEnd, was_ready: bool) -> Option<SidecarError> {
        let name = &self.spec(i).name;
        let restarts = self.cell(i).restarts;
        let after = if restarts > 0 { format!(" after {restarts} restarts") } else { String::new() };
        match ended {
            RunEnd::Exited(exit) if exit.success() => None,
            RunEnd::Idle(_) => None,
            RunEnd::Exited(exit) => Some(self.exited_error(i, exit, was_ready)),
            RunEnd::Unhealthy(failures) => Some(SidecarError::new(
                ErrorCode::LivenessFailed,
                format!(
                    "{name}: failed its liveness check {} times in a row{after} (last: {})",
                    failures.len(),
                    failures.last().map(String::as_str).unwrap_or("?")
                ),
            )),
            RunEnd::Hung(report) => Some(SidecarError::new(
                ErrorCode::ServiceHung,
                format!(
                    "{name}: hung: the arbiter's watchdog revoked {} of its leases within {} ms{after} ({})",
                    report.lease_ids.len(),
                    self.spec(i).hang_window_ms.get(),
                    report.lease_ids.join(", ")
                ),
            )),
        }
    }

    fn exited_error(&self, i: usize, exit: &ExitInfo, was_ready: bool) -> SidecarError {
        let restarts = self.cell(i).restarts;
        let after = if restarts > 0 { format!(" after {restarts} restarts") } else { String::new() };
        let during = if was_ready { "" } else { " during startup" };
        SidecarError::new(ErrorCode::ServiceExited, format!("{}: exited with {exit}{during}{after}", self.spec(i).name))
    }
}

/// Whether a load's last output lines say it ran out of GPU memory.
fn ran_out_of_vram(pattern: &regex::Regex, last_lines: &[String]) -> bool {
    last_lines.iter().any(|line| pattern.is_match(line))
}
