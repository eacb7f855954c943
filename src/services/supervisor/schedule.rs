//! Which service starts when: dependencies first, a bounded number loading at once; and stops.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{watch, OwnedSemaphorePermit};

use super::{Runner, ServiceOutcome, ServiceState, Shared, StartOutcome};
use crate::services::events::ServiceEventKind;
use crate::services::restart_budget::RestartBudget;

/// How a dependency set looks to a scheduler.
enum Dependencies {
    Ready,
    Pending,
    NotReady(String),
}

impl Shared {
    /// `i` and everything it depends on, directly or not.
    pub(super) fn with_dependencies(&self, i: usize) -> Vec<usize> {
        let mut found = vec![i];
        let mut next = 0;
        while next < found.len() {
            for d in self.dependency_indices(found[next]) {
                if !found.contains(&d) {
                    found.push(d);
                }
            }
            next += 1;
        }
        self.order().into_iter().filter(|j| found.contains(j)).collect()
    }

    fn dependencies(&self, i: usize, pending: &[usize]) -> Dependencies {
        if let Some(removed) = self.missing_dependency(i) {
            return Dependencies::NotReady(removed);
        }
        for d in self.dependency_indices(i) {
            if pending.contains(&d) {
                return Dependencies::Pending;
            }
            match self.state(d) {
                ServiceState::Ready => {}
                ServiceState::Starting | ServiceState::Restarting | ServiceState::Stopping => {
                    return Dependencies::Pending
                }
                _ => return Dependencies::NotReady(self.spec(d).name.clone()),
            }
        }
        Dependencies::Ready
    }

    /// Starts `targets` (given in start order), then waits until all of them are settled. Each
    /// one starts once its dependencies are ready (or is blocked once one of them is not), taking
    /// a start slot. The first pending service in start order waits for a slot; a later one may
    /// go ahead of it (while the first waits for its dependencies) only into a slot free now, so
    /// with one slot services load strictly in start order.
    pub(super) async fn schedule(self: &Arc<Self>, targets: &[usize]) -> Vec<ServiceOutcome> {
        let mut pending = targets.to_vec();
        let mut changes = self.changes.subscribe();
        while !pending.is_empty() {
            changes.borrow_and_update();
            let next = pending.iter().enumerate().find_map(|(pos, &i)| match self.dependencies(i, &pending) {
                Dependencies::Ready => Some((pos, None)),
                Dependencies::NotReady(dep) => Some((pos, Some(dep))),
                Dependencies::Pending => None,
            });
            match next {
                Some((pos, Some(dependency))) => {
                    let i = pending.remove(pos);
                    self.block(i, dependency);
                }
                Some((0, None)) => {
                    let i = pending.remove(0);
                    if !self.is_active(i) {
                        let permit = self.start_slots.clone().acquire_owned().await;
                        self.launch(i, permit.expect("start slots are never closed"));
                    }
                }
                Some((pos, None)) if self.is_active(pending[pos]) => {
                    pending.remove(pos);
                }
                Some((pos, None)) => match self.start_slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let i = pending.remove(pos);
                        self.launch(i, permit);
                    }
                    Err(_) => {
                        let _ = changes.changed().await;
                    }
                },
                None => {
                    // The sender lives in `self`, so this only returns on a change.
                    let _ = changes.changed().await;
                }
            }
        }
        for &i in targets {
            let _ = changes.wait_for(|_| self.state(i).is_settled()).await;
        }
        targets
            .iter()
            .map(|&i| ServiceOutcome { service: self.spec(i).name.clone(), outcome: self.outcome(i) })
            .collect()
    }

    fn outcome(&self, i: usize) -> StartOutcome {
        let cell = self.cell(i);
        match cell.state {
            ServiceState::Ready => StartOutcome::Ready { time_to_ready_ms: cell.time_to_ready_ms.unwrap_or(0) },
            ServiceState::Failed => StartOutcome::Failed {
                error: cell.error.clone().expect("a failed service has an error"),
                last_lines: cell.last_lines.clone(),
            },
            ServiceState::Blocked => StartOutcome::Blocked {
                dependency: cell.blocked_by.clone().expect("a blocked service names its dependency"),
            },
            _ => StartOutcome::Stopped,
        }
    }

    fn block(&self, i: usize, dependency: String) {
        {
            let mut cell = self.cell(i);
            if cell.runner.as_ref().is_some_and(|r| !r.task.is_finished()) {
                return;
            }
            cell.blocked_by = Some(dependency.clone());
            cell.error = None;
        }
        let reason = match self.find(&dependency) {
            None => format!("{dependency:?} was removed from the services"),
            Some(d) => format!("{dependency:?} {}", state_words(self.state(d))),
        };
        self.emit(i, ServiceEventKind::Blocked { dependency, reason });
        self.set_state(i, ServiceState::Blocked);
    }

    fn is_active(&self, i: usize) -> bool {
        self.cell(i).runner.as_ref().is_some_and(|r| !r.task.is_finished())
    }

    /// Hands service `i` to a new runner holding `permit`, unless one already runs it. An
    /// explicit start begins a fresh restart budget.
    fn launch(self: &Arc<Self>, i: usize, permit: OwnedSemaphorePermit) {
        let mut cell = self.cell(i);
        if cell.runner.as_ref().is_some_and(|r| !r.task.is_finished()) {
            return;
        }
        if self.closed.load(Ordering::SeqCst) {
            drop(cell);
            self.set_state(i, ServiceState::Stopped);
            return;
        }
        cell.restarts = 0;
        cell.budget = RestartBudget::default();
        cell.next_restart_at_ms = None;
        cell.error = None;
        cell.last_lines.clear();
        cell.blocked_by = None;
        cell.time_to_ready_ms = None;
        let was = std::mem::replace(&mut cell.state, ServiceState::Starting);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(self.clone().run_guarded(i, permit, stop_rx));
        cell.runner = Some(Runner { stop, task, stopped_running: false });
        drop(cell);
        self.changes.send_modify(|n| *n += 1);
        if was != ServiceState::Starting {
            // What waits for an on-demand service now waits for this start to end.
            self.announce_route(i, ServiceState::Starting);
        }
    }

    /// What takes effect at once when service `i` is asked to stop: a running one reads
    /// `stopping` and says so (`stopping` event), and its runner is told. A runner whose stop
    /// found it running (or already stopping) keeps that fact, for [`Shared::stop`] to wait for
    /// the port however soon the process ends.
    pub(super) fn begin_stop(&self, i: usize) {
        let mut cell = self.cell(i);
        let state = cell.state;
        let Some(runner) = cell.runner.as_mut() else { return };
        let began = matches!(state, ServiceState::Starting | ServiceState::Ready | ServiceState::Restarting);
        if began || state == ServiceState::Stopping {
            runner.stopped_running = true;
        }
        if !began {
            runner.stop.send_replace(true);
            return;
        }
        cell.state = ServiceState::Stopping;
        drop(cell);
        // Announced before the runner is told: its `stopped` (sent from another thread as soon
        // as the process is gone) must come after this `stopping`.
        self.emit(i, ServiceEventKind::Stopping);
        self.changes.send_modify(|n| *n += 1);
        if let Some(runner) = self.cell(i).runner.as_ref() {
            runner.stop.send_replace(true);
        }
    }

    /// Stops service `i` and waits for its runner to end, then for its port to be free. The
    /// port is waited for when a stop found the service running, this one or an earlier
    /// `Supervisor::begin_stop` of the same run: the process may have ended before this runs.
    pub(super) async fn stop(&self, i: usize) {
        self.begin_stop(i);
        let runner = self.cell(i).runner.take();
        let Some(Runner { task, stopped_running, .. }) = runner else { return };
        let _ = task.await;
        if stopped_running {
            self.wait_port_released(i).await;
        }
        // The runner may have ended on its own just before the stop request reached it.
        if self.state(i) == ServiceState::Stopping {
            self.set_state(i, ServiceState::Stopped);
        }
    }
}

/// A dependency's state, as a blocked service's reason says it.
fn state_words(state: ServiceState) -> &'static str {
    match state {
        ServiceState::Idle => "was not started",
        ServiceState::Failed => "failed",
        ServiceState::Stopped => "was stopped",
        ServiceState::Blocked => "is blocked",
        ServiceState::Stopping => "is stopping",
        ServiceState::Starting | ServiceState::Restarting | ServiceState::Ready => "is not ready",
    }
}
