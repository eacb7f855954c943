//! After ready: the liveness check (one method per kind), and the hang seen through the
//! service's leases. Each future here resolves only when the service must be replaced.

use std::future::Future;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{ms, HungReport, Shared};
use crate::services::config::{LivenessCheck, LivenessConfig};
use crate::services::events::ServiceEventKind;
use crate::services::notify::NotifySeen;
use crate::services::probe::{probe_http, probe_tcp};
use crate::services::process::OutputSink;

impl Shared {
    /// Resolves with the reasons of `failureThreshold` consecutive liveness failures; never
    /// without a `liveness` config.
    pub(super) async fn watch_liveness(
        &self,
        i: usize,
        sink: &OutputSink,
        notify: Option<watch::Receiver<NotifySeen>>,
    ) -> Vec<String> {
        let Some(config) = &self.spec(i).liveness else { return std::future::pending().await };
        // A validated config has exactly one check; with none (or several) nothing is watched.
        let Some(check) = config.check() else { return std::future::pending().await };
        match check {
            LivenessCheck::Http(probe) => {
                let timeout = ms(config.timeout_ms.get());
                self.live_by_probe(i, config, || probe_http(probe, timeout)).await
            }
            LivenessCheck::Tcp(probe) => {
                let timeout = ms(config.timeout_ms.get());
                let port = self.spec(i).port.map_or(0, |p| p.get() as u16);
                self.live_by_probe(i, config, || probe_tcp(probe, port, timeout)).await
            }
            LivenessCheck::LogLine(probe) => {
                let what = format!("line matching {:?}", probe.pattern.0.as_str());
                self.live_by_heartbeat(i, config, sink.matches(&probe.pattern.0), |n| *n, &what).await
            }
            LivenessCheck::Notify => match notify {
                Some(seen) => self.live_by_heartbeat(i, config, seen, |s| s.watchdogs, "WATCHDOG=1 message").await,
                None => std::future::pending().await,
            },
        }
    }

    /// A probe every `intervalMs`; a pass clears the failures.
    async fn live_by_probe<F, Fut>(&self, i: usize, config: &LivenessConfig, probe: F) -> Vec<String>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let interval = ms(config.interval_ms.get());
        let mut failures = Vec::new();
        loop {
            tokio::time::sleep(interval).await;
            match probe().await {
                Ok(()) => failures.clear(),
                Err(reason) => {
                    if let Some(all) = self.liveness_failure(i, config, &mut failures, reason) {
                        return all;
                    }
                }
            }
        }
    }

    /// A heartbeat (a counter in `beats` moving) at least every `intervalMs`; each interval
    /// without one is a failure, and a beat clears the failures.
    async fn live_by_heartbeat<T>(
        &self,
        i: usize,
        config: &LivenessConfig,
        mut beats: watch::Receiver<T>,
        count: impl Fn(&T) -> u64,
        what: &str,
    ) -> Vec<String> {
        let interval = ms(config.interval_ms.get());
        let mut last = count(&beats.borrow_and_update());
        let mut deadline = Instant::now() + interval;
        let mut failures = Vec::new();
        loop {
            tokio::select! {
                changed = beats.changed() => {
                    if changed.is_err() {
                        // The process closed its end: its exit ends the run.
                        return std::future::pending().await;
                    }
                    let now = count(&beats.borrow_and_update());
                    if now != last {
                        last = now;
                        failures.clear();
                        deadline = Instant::now() + interval;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let reason = format!("no {what} for {} ms", config.interval_ms.get());
                    if let Some(all) = self.liveness_failure(i, config, &mut failures, reason) {
                        return all;
                    }
                    deadline += interval;
                }
            }
        }
    }

    /// Records one failure; returns them all once they reach the threshold.
    fn liveness_failure(
        &self,
        i: usize,
        config: &LivenessConfig,
        failures: &mut Vec<String>,
        reason: String,
    ) -> Option<Vec<String>> {
        failures.push(reason.clone());
        let consecutive = failures.len() as u32;
        self.emit(i, ServiceEventKind::LivenessFailed { reason, consecutive });
        (consecutive >= config.failure_threshold.get() as u32).then(|| std::mem::take(failures))
    }

    /// Resolves when the service is declared hung through its leases (see `observe_lease`).
    pub(super) async fn hung(&self, i: usize) -> HungReport {
        let alarm = self.cell(i).alarm.clone();
        loop {
            let notified = alarm.notified();
            if let Some(report) = self.cell(i).hung.take() {
                return report;
            }
            notified.await;
        }
    }
}
