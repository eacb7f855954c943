//! On-demand services: started by a lease request for one of their task types (or `ensure`),
//! and stopped again after `keepAliveMs` without a lease. While such a service is not ready, the
//! arbiter holds its task types on standby: their requests wait for the load instead of being
//! granted a GPU with no model on it.

use std::time::Duration;

use super::{ServiceState, Shared, StartOutcome, Supervisor};
use crate::error::{ErrorCode, SidecarError, SidecarResult};
use crate::services::events::{epoch_ms, ServiceEventKind};

impl Supervisor {
    /// The task types of on-demand services, each with the load allowance its requests get while
    /// the service is not ready (`None` when it is ready now).
    pub fn on_demand_routes(&self) -> Vec<(String, Option<u64>)> {
        let mut routes = Vec::new();
        for i in self.shared.listed() {
            let spec = self.shared.spec(i);
            if !spec.on_demand {
                continue;
            }
            let allowance = (self.shared.state(i) != ServiceState::Ready).then(|| self.shared.load_allowance_ms(i));
            let task_types = spec.gpu.iter().flat_map(|g| &g.task_types);
            routes.extend(task_types.map(|t| (t.clone(), allowance)));
        }
        routes
    }

    /// A lease request of `task_type` found no loaded service: starts the on-demand service that
    /// serves it. A start that does not end ready settles the waiting requests
    /// `SERVICE_UNAVAILABLE`.
    pub async fn demand(&self, task_type: &str) {
        let Some(i) = self.shared.listed().into_iter().find(|&i| {
            let s = self.shared.spec(i);
            s.on_demand && s.gpu.as_ref().is_some_and(|g| g.task_types.iter().any(|t| t == task_type))
        }) else {
            return;
        };
        if self.shared.state(i) == ServiceState::Ready {
            // The request raced the ready announcement; tell the arbiter again.
            self.shared.announce_route(i, ServiceState::Ready);
            return;
        }
        self.shared.emit(i, ServiceEventKind::Demanded { task_type: task_type.to_string() });
        let name = self.shared.spec(i).name.clone();
        let ready = matches!(self.start(&name).await, Ok(StartOutcome::Ready { .. }));
        if !ready {
            self.shared.tell_routes(i, |routes, task_types| routes.unavailable(task_types));
        }
    }

    /// Starts service `name` (and what it depends on) if it is not running, and resolves with
    /// its status once it is ready; rejects with the start's error (`Blocked`: the dependency
    /// that was not ready; stopped meanwhile: `CLOSED` or `SERVICE_EXITED`). Counts as use for
    /// `keepAliveMs`.
    pub async fn ensure(&self, name: &str) -> SidecarResult<super::ServiceStatus> {
        let i = self.shared.index(name)?;
        self.shared.cell(i).last_used_ms = epoch_ms();
        match self.start(name).await? {
            StartOutcome::Ready { .. } => {
                self.shared.cell(i).last_used_ms = epoch_ms();
                Ok(self.shared.status(i))
            }
            StartOutcome::Failed { error, .. } => Err(error),
            StartOutcome::Blocked { dependency } => Err(SidecarError::new(
                ErrorCode::ServiceExited,
                format!("{name}: not started: its dependency {dependency:?} is not ready"),
            )),
            StartOutcome::Stopped => Err(SidecarError::new(
                if self.shared.closed.load(std::sync::atomic::Ordering::SeqCst) {
                    ErrorCode::Closed
                } else {
                    ErrorCode::ServiceExited
                },
                format!("{name}: stopped before it was ready"),
            )),
        }
    }

    /// The arbiter's policy priority of each task type, the default eviction priority of the
    /// services that serve them.
    pub fn set_task_priorities(&self, priorities: impl IntoIterator<Item = (String, u64)>) {
        *self.shared.task_priorities.lock().expect("priorities lock") = priorities.into_iter().collect();
    }
}

impl Shared {
    /// How much longer than `maxWaitMs` a request may wait while service `i` loads: its learned
    /// load time, else its `readinessTimeoutMs`.
    pub(super) fn load_allowance_ms(&self, i: usize) -> u64 {
        let spec = self.spec(i);
        let learned = self.profiles.lock().expect("profiles lock").get(&spec.name).time_to_ready_ms;
        learned.unwrap_or(spec.readiness_timeout_ms.get())
    }

    /// Tells the arbiter (through the `TaskRoutes` hook) whether an on-demand service's task
    /// types have a loaded service, one on its way, or none, as its state changes.
    pub(super) fn announce_route(&self, i: usize, state: ServiceState) {
        if !self.spec(i).on_demand {
            return;
        }
        match state {
            ServiceState::Ready => {
                self.cell(i).last_used_ms = epoch_ms();
                self.tell_routes(i, |routes, task_types| routes.ready(task_types));
            }
            ServiceState::Starting => self.tell_routes(i, |routes, task_types| routes.starting(task_types)),
            _ => {
                let allowance = self.load_allowance_ms(i);
                self.tell_routes(i, |routes, task_types| routes.standby(task_types, allowance));
            }
        }
    }

    fn tell_routes(&self, i: usize, call: impl FnOnce(&dyn crate::services::TaskRoutes, &[String])) {
        let (Some(routes), Some(gpu)) = (&self.hooks.task_routes, &self.spec(i).gpu) else { return };
        if !gpu.task_types.is_empty() {
            call(routes.as_ref(), &gpu.task_types);
        }
    }

    /// Resolves once on-demand service `i` has been idle (no lease held, none taken or given
    /// back, no `ensure`) for its `keepAliveMs`, with the idle time; never without one.
    pub(super) async fn idle_out(&self, i: usize) -> u64 {
        let spec = self.spec(i);
        let Some(keep_alive) = spec.keep_alive_ms.filter(|_| spec.on_demand).map(|k| k.get()) else {
            return std::future::pending().await;
        };
        loop {
            let (busy, last_used) = {
                let cell = self.cell(i);
                (!cell.leases.active.is_empty(), cell.last_used_ms)
            };
            let idle = epoch_ms().saturating_sub(last_used);
            if !busy && idle >= keep_alive {
                return idle;
            }
            let wait = if busy { keep_alive } else { keep_alive - idle };
            tokio::time::sleep(Duration::from_millis(wait.max(1))).await;
        }
    }
}
