//! A supervisor tied to an arbiter host (`attachArbiter`): requests of the task types its
//! services claim go to those services' GPUs, the arbiter's priorities order its starts, leases of
//! those task types are attributed to the services, and a request for an on-demand service's
//! task type starts that service. The binding holds the host and applies the calls returned here
//! like any other arbiter call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::arbiter_calls::{ArbiterCall, ArbiterCalls, Waker};
use super::arbiter_host::ArbiterHost;
use crate::services::Supervisor;

/// Runs a future on the addon's runtime (the binding's; a test's own).
pub type Spawn = fn(Pin<Box<dyn Future<Output = ()> + Send>>);

/// What a supervisor hung on one arbiter host, by the id its detach function holds.
pub struct ArbiterTie {
    pub id: u64,
    lease_sink: Option<u64>,
}

impl ArbiterTie {
    /// Ties `core` to `host` (`None`: the arbiter is gone, nothing to tie). Returns the tie and
    /// the calls that put on-demand task types on standby, to apply as arbiter calls (they may
    /// settle waiters).
    pub fn tie(
        id: u64,
        host: Option<&mut ArbiterHost>,
        core: &Arc<Supervisor>,
        spawn: Spawn,
    ) -> (Self, Vec<ArbiterCall>) {
        let Some(host) = host else { return (Self { id, lease_sink: None }, Vec::new()) };
        host.core.set_task_gpus(core.task_type_gpus());
        core.set_task_priorities(host.core.task_priorities());
        let lease_sink = core.attributes_leases().then(|| {
            let core = Arc::downgrade(core);
            host.add_lease_sink(Box::new(move |change, at_ms| {
                if let Some(core) = core.upgrade() {
                    core.observe_lease(change, at_ms);
                }
            }))
        });
        // On-demand services: their task types wait for a load while not ready, and the first
        // request starts them (in Rust: the arbiter calls the supervisor directly).
        let routes = core.on_demand_routes();
        if !routes.is_empty() {
            let weak = Arc::downgrade(core);
            host.demand_sink = Some(Box::new(move |task_type: String| {
                if let Some(core) = weak.upgrade() {
                    spawn(Box::pin(async move { core.demand(&task_type).await }));
                }
            }));
        }
        let standby = routes
            .into_iter()
            .map(|(task_type, allowance)| ArbiterCall::Standby {
                task_types: vec![task_type],
                load_allowance_ms: allowance,
            })
            .collect();
        (Self { id, lease_sink }, standby)
    }

    /// Stops attributing this host's leases (the supervisor closed). Idempotent.
    pub fn stop_attributing(&mut self, host: Option<&mut ArbiterHost>) {
        if let (Some(sink), Some(host)) = (self.lease_sink.take(), host) {
            host.remove_lease_sink(sink);
        }
    }

    /// Detached, or replaced by another arbiter: its leases are no longer followed, requests for
    /// the task types the services claim no longer go to the services' GPUs there, and on-demand
    /// task types no longer start services. Returns the call that takes them off standby, so what
    /// waited there is granted as usual.
    pub fn detached(mut self, host: Option<&mut ArbiterHost>, core: Option<&Supervisor>) -> Option<ArbiterCall> {
        if let Some(core) = core {
            core.forget_active_leases();
        }
        let host = host?;
        self.stop_attributing(Some(host));
        host.core.set_task_gpus([]);
        host.demand_sink = None;
        let task_types = core?.on_demand_routes().into_iter().map(|(t, _)| t).collect();
        Some(ArbiterCall::Standby { task_types, load_allowance_ms: None })
    }
}

/// The binding's handle on an arbiter's host, which lives on the JS thread and may be gone.
pub trait HostHandle {
    /// Runs `f` on the host, or on `None` once the arbiter is gone.
    fn with_host<R>(&self, f: impl FnOnce(Option<&mut ArbiterHost>) -> R) -> R;
}

/// What [`ArbiterSlot::attach`] leaves the binding to do.
pub struct Attached<H> {
    /// The id the detach function holds.
    pub id: u64,
    /// The calls to apply, in order, each on its arbiter: the one that takes the replaced
    /// arbiter's on-demand task types off standby (what waited there is granted as usual), then
    /// those that put them on standby on the new one.
    pub calls: Vec<(H, ArbiterCall)>,
}

/// The arbiter a supervisor is tied to, if any (`H`: the binding's handle on it), by the id its
/// detach function holds, and the asks the supervisor's core queues for it.
pub struct ArbiterSlot<H> {
    tied: Option<(H, ArbiterTie)>,
    next_id: u64,
    calls: Arc<ArbiterCalls>,
}

impl<H: HostHandle + Clone> ArbiterSlot<H> {
    pub fn new(calls: Arc<ArbiterCalls>) -> Self {
        Self { tied: None, next_id: 0, calls }
    }

    /// Ties `core` to `arbiter` in place of the one tied before, which is left as a detach
    /// leaves it ([`ArbiterTie::detached`]); `waker` wakes the arbiter's thread for the asks the
    /// core queues.
    pub fn attach(&mut self, arbiter: H, core: &Arc<Supervisor>, spawn: Spawn, waker: Waker) -> Attached<H> {
        let id = self.next_id;
        self.next_id += 1;
        let mut calls = Vec::new();
        if let Some((old, tie)) = self.tied.take() {
            if let Some(standby_off) = old.with_host(|host| tie.detached(host, Some(core))) {
                calls.push((old, standby_off));
            }
        }
        let (tie, standby) = arbiter.with_host(|host| ArbiterTie::tie(id, host, core, spawn));
        calls.extend(standby.into_iter().map(|call| (arbiter.clone(), call)));
        self.tied = Some((arbiter, tie));
        self.calls.set_waker(Some(waker));
        Attached { id, calls }
    }

    /// Unties the arbiter tied as `id`, unless another has replaced it; startup leases waiting on
    /// it see their reply dropped and fail. Returns it with its tie, for [`ArbiterTie::detached`]
    /// once nothing is borrowed (the arbiter's listeners may call the supervisor).
    pub fn take(&mut self, id: u64) -> Option<(H, ArbiterTie)> {
        if self.tied.as_ref().is_none_or(|(_, tie)| tie.id != id) {
            return None;
        }
        self.calls.set_waker(None);
        self.tied.take()
    }

    /// The supervisor closed: the tied arbiter's leases are no longer attributed.
    pub fn stop_attributing(&mut self) {
        if let Some((arbiter, tie)) = self.tied.as_mut() {
            arbiter.with_host(|host| tie.stop_attributing(host));
        }
    }

    pub fn current(&self) -> Option<&H> {
        self.tied.as_ref().map(|(arbiter, _)| arbiter)
    }

    /// The asks queued for the tied arbiter, to apply on its thread.
    pub fn take_calls(&self) -> Vec<ArbiterCall> {
        self.calls.take()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;
    use crate::arbiter::{AcquireRequest, Admission, ArbiterConfig};
    use crate::services::{ServicesConfig, SupervisorHooks};
    use serde_json::json;

    fn host() -> ArbiterHost {
        let cfg = json!({"gpuKeys": ["gpu:0", "gpu:1"]});
        ArbiterHost::new(ArbiterConfig::from_json(&cfg, &mut vec![]).unwrap())
    }

    fn supervisor() -> Arc<Supervisor> {
        let service = |name: &str, task: &str, on_demand: bool| {
            json!({
                "name": name, "command": "true", "onDemand": on_demand,
                "gpu": {"key": "gpu:1", "vramMb": 100, "taskTypes": [task]},
                "readiness": {"logLine": {"pattern": "ready"}}
            })
        };
        let config = json!({"services": [service("mt", "NMT", false), service("tts", "TTS", true)]});
        let config = ServicesConfig::from_json(&config, &mut vec![]).unwrap();
        Arc::new(Supervisor::new(config, SupervisorHooks::default()).0)
    }

    fn no_spawn(_: Pin<Box<dyn Future<Output = ()> + Send>>) {}

    fn gpu_of(h: &mut ArbiterHost, task: &str) -> usize {
        let now = h.now();
        match h.core.acquire(AcquireRequest::new(task), now).unwrap() {
            Admission::Settled(crate::arbiter::Outcome::Acquired(g)) => {
                let (_, out) = h.release(g.lease_id);
                h.collect(out);
                g.gpu
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_tie_routes_claimed_task_types_puts_on_demand_ones_on_standby_and_detaching_undoes_it() {
        let mut h = host();
        let core = supervisor();
        let (tie, standby) = ArbiterTie::tie(7, Some(&mut h), &core, no_spawn);
        assert_eq!(tie.id, 7);
        assert!(tie.lease_sink.is_some(), "the services claim task types: leases are attributed");
        assert!(
            matches!(standby.as_slice(), [ArbiterCall::Standby { task_types, load_allowance_ms: Some(_) }] if task_types == &["TTS"])
        );
        assert!(h.demand_sink.is_some());
        assert_eq!(gpu_of(&mut h, "NMT"), 1, "routed to its service's GPU");
        let off = tie.detached(Some(&mut h), Some(&core));
        assert!(
            matches!(off, Some(ArbiterCall::Standby { task_types, load_allowance_ms: None }) if task_types == ["TTS"])
        );
        assert!(h.demand_sink.is_none());
        assert_eq!(gpu_of(&mut h, "NMT"), 0, "no route any more");
        // Nothing listens: the core no longer records events.
        let now = h.now();
        h.core.acquire(AcquireRequest::new("X"), now).unwrap();
        assert!(h.core.take_events().is_empty());
    }

    #[tokio::test]
    async fn a_replaced_tie_stops_routing_and_attributing() {
        let mut h = host();
        let core = supervisor();
        let (tie, _) = ArbiterTie::tie(0, Some(&mut h), &core, no_spawn);
        let off = tie.detached(Some(&mut h), Some(&core));
        assert!(
            matches!(off, Some(ArbiterCall::Standby { task_types, load_allowance_ms: None }) if task_types == ["TTS"]),
            "the on-demand task types come off standby on the arbiter left behind"
        );
        assert!(h.demand_sink.is_none(), "requests there no longer start services");
        assert_eq!(gpu_of(&mut h, "NMT"), 0);
        let now = h.now();
        h.core.acquire(AcquireRequest::new("X"), now).unwrap();
        assert!(h.core.take_events().is_empty(), "no lease sink left");
    }

    impl HostHandle for Rc<RefCell<ArbiterHost>> {
        fn with_host<R>(&self, f: impl FnOnce(Option<&mut ArbiterHost>) -> R) -> R {
            f(Some(&mut self.borrow_mut()))
        }
    }

    #[tokio::test]
    async fn a_slot_replaces_its_arbiter_and_a_stale_detach_takes_nothing() {
        let core = supervisor();
        let (first, second) = (Rc::new(RefCell::new(host())), Rc::new(RefCell::new(host())));
        let mut slot = ArbiterSlot::new(Arc::default());
        let Attached { id: a, calls } = slot.attach(first.clone(), &core, no_spawn, Box::new(|| ()));
        assert!(
            matches!(calls.as_slice(), [(on, ArbiterCall::Standby { load_allowance_ms: Some(_), .. })] if Rc::ptr_eq(on, &first)),
            "the on-demand service's task type on standby on the new arbiter"
        );
        assert_eq!(gpu_of(&mut first.borrow_mut(), "NMT"), 1);
        let Attached { id: b, calls } = slot.attach(second.clone(), &core, no_spawn, Box::new(|| ()));
        assert_ne!(a, b);
        let [(old, standby_off), (new, standby_on)] = calls.as_slice() else { panic!("two calls: {}", calls.len()) };
        assert!(
            Rc::ptr_eq(old, &first) && matches!(standby_off, ArbiterCall::Standby { load_allowance_ms: None, .. }),
            "first, the replaced one's on-demand task types come off standby, as on a detach"
        );
        assert!(
            Rc::ptr_eq(new, &second) && matches!(standby_on, ArbiterCall::Standby { load_allowance_ms: Some(_), .. }),
            "then they go on standby on the new one"
        );
        assert_eq!(gpu_of(&mut first.borrow_mut(), "NMT"), 0, "the replaced one routes no more");
        assert_eq!(gpu_of(&mut second.borrow_mut(), "NMT"), 1);
        assert!(slot.take(a).is_none(), "the replaced one's detach function takes nothing");
        let (taken, tie) = slot.take(b).unwrap();
        assert!(Rc::ptr_eq(&taken, &second) && slot.current().is_none() && slot.take(b).is_none());
        let off = taken.with_host(|host| tie.detached(host, Some(&core)));
        assert!(matches!(off, Some(ArbiterCall::Standby { load_allowance_ms: None, .. })));
    }
}
