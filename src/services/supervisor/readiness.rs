//! Readiness checks, one method per kind: a new kind is a new arm in `wait_ready` and a method,
//! and the compiler points at every place that must handle it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::Poll;
use std::time::Duration;

use tokio::sync::watch;

use super::{ms, Shared};
use crate::services::config::{HttpProbe, LogLineProbe, Readiness, TcpProbe};
use crate::services::events::ServiceEventKind;
use crate::services::notify::NotifySeen;
use crate::services::probe::{probe_http, probe_tcp};
use crate::services::process::OutputSink;

/// The longest one HTTP or TCP probe may take, however short the probe interval.
const MIN_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

type ReadyFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// What the readiness checks watch during one attempt.
pub(super) struct ReadyWatch<'a> {
    pub sink: &'a OutputSink,
    pub notify: Option<watch::Receiver<NotifySeen>>,
    /// The last failed probe's reason, for the timeout message.
    pub last_failure: &'a Mutex<Option<String>>,
}

impl Shared {
    /// Resolves once `readiness` passes for service `i`; never on its own otherwise.
    pub(super) fn wait_ready<'a>(
        &'a self,
        i: usize,
        readiness: &'a Readiness,
        watch: &'a ReadyWatch<'a>,
    ) -> ReadyFuture<'a> {
        Box::pin(async move {
            match readiness {
                Readiness::Immediate(_) => {}
                Readiness::LogLine(probe) => self.ready_on_log_line(probe, watch).await,
                Readiness::Http(probe) => self.ready_on_http(i, probe, watch).await,
                Readiness::Tcp(probe) => self.ready_on_tcp(i, probe, watch).await,
                Readiness::Notify(_) => self.ready_on_notify(watch).await,
                Readiness::AnyOf(all) => self.ready_on_any_of(i, all, watch).await,
            }
        })
    }

    async fn ready_on_log_line(&self, probe: &LogLineProbe, watch: &ReadyWatch<'_>) {
        let _ = watch.sink.matches(&probe.pattern.0).wait_for(|&n| n > 0).await;
    }

    async fn ready_on_http(&self, i: usize, probe: &HttpProbe, watch: &ReadyWatch<'_>) {
        let timeout = self.probe_timeout(i);
        self.poll_probe(i, watch, || probe_http(probe, timeout)).await
    }

    async fn ready_on_tcp(&self, i: usize, probe: &TcpProbe, watch: &ReadyWatch<'_>) {
        let timeout = self.probe_timeout(i);
        let default_port = self.spec(i).port.map_or(0, |p| p.get() as u16);
        self.poll_probe(i, watch, || probe_tcp(probe, default_port, timeout)).await
    }

    /// `READY=1` on the notify pipe.
    async fn ready_on_notify(&self, watch: &ReadyWatch<'_>) {
        if let Some(mut seen) = watch.notify.clone() {
            if seen.wait_for(|s| s.ready).await.is_ok() {
                return;
            }
        }
        // No pipe, or the service closed it without READY=1: only its exit or a deadline ends this.
        std::future::pending().await
    }

    /// Whichever of `all` passes first.
    async fn ready_on_any_of(&self, i: usize, all: &[Readiness], watch: &ReadyWatch<'_>) {
        let mut checks: Vec<ReadyFuture<'_>> = all.iter().map(|r| self.wait_ready(i, r, watch)).collect();
        std::future::poll_fn(|cx| {
            if checks.iter_mut().any(|check| check.as_mut().poll(cx).is_ready()) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    fn probe_timeout(&self, i: usize) -> Duration {
        ms(self.spec(i).probe_interval_ms.get()).max(MIN_PROBE_TIMEOUT)
    }

    /// Probes every `probeIntervalMs` after `startPeriodMs` until one passes.
    async fn poll_probe<F, Fut>(&self, i: usize, watch: &ReadyWatch<'_>, probe: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), String>>,
    {
        let spec = self.spec(i);
        tokio::time::sleep(ms(spec.start_period_ms.get())).await;
        loop {
            match probe().await {
                Ok(()) => return,
                Err(reason) => {
                    *watch.last_failure.lock().expect("probe lock") = Some(reason.clone());
                    self.emit(i, ServiceEventKind::ProbeFailed { reason });
                }
            }
            tokio::time::sleep(ms(spec.probe_interval_ms.get())).await;
        }
    }
}
