//! What a supervisor asks of an attached arbiter from its own (tokio) threads: startup leases,
//! where task types go, and whether on-demand task types have a loaded service. The arbiter lives
//! on the JS thread, so each ask is queued here and that thread is woken to apply it
//! ([`super::arbiter_host::ArbiterHost::apply`]). With no arbiter attached an ask is dropped:
//! routes and standby are re-sent on attach, and a startup lease is then not needed.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use crate::arbiter::{AcquireRequest, BusyPolicy, LeaseId, Trace};
use crate::error::{ErrorCode, SidecarError};
use crate::services::{LeaseFuture, LeaseGuard, ServicesConfig, StartupLease, TaskRoutes};

/// The task type a startup lease is requested under (its policy, if the arbiter config has one).
pub const STARTUP_TASK_TYPE: &str = "SERVICE_STARTUP";

/// How a lease asked for from Rust ended: its lease id, or why it was not granted
/// (`SKIPPED (TIMEOUT)`, or the error that refused the request).
pub type NativeReply = oneshot::Sender<Result<LeaseId, String>>;

/// One ask of the arbiter.
pub enum ArbiterCall {
    /// A startup lease; `reply` hears the answer. (The request is boxed: it is large, and the
    /// other asks are small.)
    Acquire {
        service: String,
        request: Box<AcquireRequest>,
        reply: NativeReply,
    },
    Release {
        lease_id: LeaseId,
    },
    /// On-demand task types lost (`Some(load allowance ms)`) or regained (`None`) their service.
    Standby {
        task_types: Vec<String>,
        load_allowance_ms: Option<u64>,
    },
    /// Their service is being started: what waits for them waits for the start to end.
    Starting {
        task_types: Vec<String>,
    },
    /// Their service could not be started.
    Unavailable {
        task_types: Vec<String>,
    },
    /// Where task types go (an `auto` service was placed).
    Routes(Vec<(String, String)>),
}

impl ArbiterCall {
    /// The service a startup lease is asked for.
    pub fn service(&self) -> Option<&str> {
        match self {
            ArbiterCall::Acquire { service, .. } => Some(service),
            _ => None,
        }
    }
}

/// Wakes the arbiter's thread; `None` while no arbiter is attached.
pub type Waker = Box<dyn Fn() + Send + Sync>;

/// The queue of asks, and how to wake the arbiter's thread.
#[derive(Default)]
pub struct ArbiterCalls {
    calls: Mutex<VecDeque<ArbiterCall>>,
    waker: Mutex<Option<Waker>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ArbiterCalls {
    /// Queues `call` and wakes the arbiter's thread; `false` (the call dropped) when no arbiter is
    /// attached.
    pub fn send(&self, call: ArbiterCall) -> bool {
        let waker = lock(&self.waker);
        let Some(wake) = waker.as_ref() else { return false };
        lock(&self.calls).push_back(call);
        wake();
        true
    }

    /// An arbiter was attached (`Some`) or detached (`None`). Detached, the queued asks are
    /// dropped: a waiting startup lease sees its reply dropped and fails.
    pub fn set_waker(&self, waker: Option<Waker>) {
        let detached = waker.is_none();
        *lock(&self.waker) = waker;
        if detached {
            lock(&self.calls).clear();
        }
    }

    /// The asks queued so far, in order.
    pub fn take(&self) -> Vec<ArbiterCall> {
        lock(&self.calls).drain(..).collect()
    }
}

/// The startup lease a service's load holds: `WAIT`, as long as the VRAM gate waits
/// (`vramTimeoutMs`), held at most until the service's readiness times out.
pub struct StartupLeasePolicy {
    max_wait_ms: u64,
}

impl StartupLeasePolicy {
    pub fn new(config: &ServicesConfig) -> Self {
        Self { max_wait_ms: config.vram_timeout_ms.get() }
    }

    /// The lease `service` loads under, held up to `hold_max_ms` (its readiness timeout: the
    /// spec it starts with, so a service added or changed at run time gets its own).
    pub fn request(&self, service: &str, gpu_key: &str, hold_max_ms: u64) -> AcquireRequest {
        AcquireRequest {
            task_type: STARTUP_TASK_TYPE.into(),
            gpu_key: Some(gpu_key.to_string()),
            busy_policy: Some(BusyPolicy::Wait),
            max_wait_ms: Some(self.max_wait_ms),
            hold_max_ms: Some(hold_max_ms),
            trace: Trace {
                job_id: Some(service.to_string()),
                stage: Some("service-startup".into()),
                ..Trace::default()
            },
            ..AcquireRequest::default()
        }
    }
}

/// The supervisor's [`StartupLease`] and [`TaskRoutes`]: asks queued for the attached arbiter.
pub struct ArbiterLease {
    calls: Arc<ArbiterCalls>,
    policy: StartupLeasePolicy,
}

impl ArbiterLease {
    pub fn new(calls: Arc<ArbiterCalls>, policy: StartupLeasePolicy) -> Self {
        Self { calls, policy }
    }
}

/// A granted startup lease; released (on the arbiter's thread) when dropped.
struct HeldLease {
    calls: Arc<ArbiterCalls>,
    lease_id: LeaseId,
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        // Detached meanwhile: the arbiter is no longer ours to release into.
        let _ = self.calls.send(ArbiterCall::Release { lease_id: self.lease_id });
    }
}

fn not_granted(service: &str, why: &str) -> SidecarError {
    SidecarError::new(ErrorCode::GpuLeaseNotGranted, format!("{service}: startup lease not granted: {why}"))
}

impl StartupLease for ArbiterLease {
    fn acquire<'a>(&'a self, service: &'a str, gpu_key: &'a str, hold_max_ms: u64) -> LeaseFuture<'a> {
        Box::pin(async move {
            let (reply, granted) = oneshot::channel();
            let request = self.policy.request(service, gpu_key, hold_max_ms);
            if !self.calls.send(ArbiterCall::Acquire {
                service: service.to_string(),
                request: Box::new(request),
                reply,
            }) {
                tracing::warn!(
                    service,
                    "gpuStartupLease is set but no GpuArbiter is attached: loading without a lease"
                );
                return Ok(Box::new(()) as LeaseGuard);
            }
            let answer = granted.await.map_err(|_| {
                SidecarError::new(
                    ErrorCode::GpuLeaseNotGranted,
                    format!("{service}: the GpuArbiter was detached before it granted a startup lease"),
                )
            })?;
            match answer {
                Ok(lease_id) => Ok(Box::new(HeldLease { calls: self.calls.clone(), lease_id }) as LeaseGuard),
                Err(why) => Err(not_granted(service, &why)),
            }
        })
    }
}

impl TaskRoutes for ArbiterLease {
    fn routes_changed(&self, routes: Vec<(String, String)>) {
        let _ = self.calls.send(ArbiterCall::Routes(routes));
    }

    fn standby(&self, task_types: &[String], load_allowance_ms: u64) {
        let call = ArbiterCall::Standby { task_types: task_types.to_vec(), load_allowance_ms: Some(load_allowance_ms) };
        let _ = self.calls.send(call);
    }

    fn starting(&self, task_types: &[String]) {
        let _ = self.calls.send(ArbiterCall::Starting { task_types: task_types.to_vec() });
    }

    fn ready(&self, task_types: &[String]) {
        let _ = self.calls.send(ArbiterCall::Standby { task_types: task_types.to_vec(), load_allowance_ms: None });
    }

    fn unavailable(&self, task_types: &[String]) {
        let _ = self.calls.send(ArbiterCall::Unavailable { task_types: task_types.to_vec() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn config() -> ServicesConfig {
        let mut w = vec![];
        ServicesConfig::from_json(
            &serde_json::json!({"vramTimeoutMs": 9000, "services": [
                {"name": "asr", "command": "x", "readiness": {"none": {}}, "readinessTimeoutMs": 4000}
            ]}),
            &mut w,
        )
        .unwrap()
    }

    fn counting_waker() -> (Arc<AtomicUsize>, Waker) {
        let wakes = Arc::new(AtomicUsize::new(0));
        let w = wakes.clone();
        (
            wakes,
            Box::new(move || {
                w.fetch_add(1, Ordering::SeqCst);
            }),
        )
    }

    #[test]
    fn a_startup_lease_waits_as_long_as_the_vram_gate_and_is_held_until_readiness_times_out() {
        let policy = StartupLeasePolicy::new(&config());
        let r = policy.request("asr", "gpu:1", 4000);
        assert_eq!(&*r.task_type, STARTUP_TASK_TYPE);
        assert_eq!(r.gpu_key.as_deref(), Some("gpu:1"));
        assert_eq!((r.busy_policy, r.max_wait_ms, r.hold_max_ms), (Some(BusyPolicy::Wait), Some(9000), Some(4000)));
        assert_eq!(r.trace.job_id.as_deref(), Some("asr"));
    }

    #[test]
    fn asks_are_dropped_without_an_arbiter_and_queued_in_order_with_one() {
        let calls = Arc::new(ArbiterCalls::default());
        let lease = ArbiterLease::new(calls.clone(), StartupLeasePolicy::new(&config()));
        lease.ready(&["NMT".into()]);
        assert!(calls.take().is_empty(), "no arbiter: dropped (re-sent on attach)");
        let (wakes, waker) = counting_waker();
        calls.set_waker(Some(waker));
        lease.starting(&["NMT".into()]);
        lease.ready(&["NMT".into()]);
        lease.routes_changed(vec![("ASR".into(), "gpu:0".into())]);
        let taken = calls.take();
        assert!(matches!(&taken[0], ArbiterCall::Starting { task_types } if task_types == &["NMT"]));
        assert!(matches!(&taken[1], ArbiterCall::Standby { load_allowance_ms: None, .. }));
        assert!(matches!(&taken[2], ArbiterCall::Routes(r) if r.len() == 1));
        assert_eq!(wakes.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_granted_startup_lease_is_released_when_dropped_and_a_detach_fails_a_waiting_one() {
        let calls = Arc::new(ArbiterCalls::default());
        let lease = Arc::new(ArbiterLease::new(calls.clone(), StartupLeasePolicy::new(&config())));
        // No arbiter: the load goes ahead without a lease.
        assert!(lease.acquire("asr", "gpu:0", 4000).await.is_ok());

        let (_wakes, waker) = counting_waker();
        calls.set_waker(Some(waker));
        let waiting = tokio::spawn({
            let lease = lease.clone();
            async move { lease.acquire("asr", "gpu:0", 4000).await.map(drop) }
        });
        let reply = loop {
            if let Some(ArbiterCall::Acquire { reply, request, .. }) = calls.take().pop() {
                assert_eq!(request.max_wait_ms, Some(9000));
                break reply;
            }
            tokio::task::yield_now().await;
        };
        reply.send(Ok(42)).unwrap();
        waiting.await.unwrap().unwrap(); // granted, then the guard is dropped
        assert!(matches!(calls.take().as_slice(), [ArbiterCall::Release { lease_id: 42 }]));

        let waiting = tokio::spawn({
            let lease = lease.clone();
            async move { lease.acquire("asr", "gpu:0", 4000).await.map(drop) }
        });
        while lock(&calls.calls).is_empty() {
            tokio::task::yield_now().await;
        }
        calls.set_waker(None); // detached: the queued ask (and its reply) is dropped
        let error = waiting.await.unwrap().unwrap_err();
        assert_eq!(error.code, ErrorCode::GpuLeaseNotGranted);
        assert!(error.message.contains("detached before it granted"), "{}", error.message);
    }
}
