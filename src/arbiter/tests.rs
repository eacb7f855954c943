//! The state machine on a hand-driven clock, and a property test of its invariants.

use std::collections::HashMap;

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::error::ErrorCode;

const MS: Micros = MICROS_PER_MS;

fn arbiter(cfg: serde_json::Value) -> Arbiter {
    let mut w = vec![];
    let mut a = Arbiter::new(ArbiterConfig::from_json(&cfg, &mut w).unwrap());
    a.set_record_events(true);
    a
}

fn req(task: &str) -> AcquireRequest {
    AcquireRequest::new(task)
}

fn granted(adm: Admission) -> Grant {
    match adm {
        Admission::Settled(Outcome::Acquired(g)) => g,
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn queued(adm: Admission) -> WaiterId {
    match adm {
        Admission::Queued(id) => id,
        other => panic!("expected queued, got {other:?}"),
    }
}

fn not_acquired(adm: Admission) -> (Status, Reason) {
    match adm {
        Admission::Settled(Outcome::NotAcquired { status, reason }) => (status, reason),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn grants_up_to_capacity_then_queues_and_hands_over_on_release() {
    let mut a = arbiter(json!({"maxConcurrentLeases": 2}));
    let l1 = granted(a.acquire(req("ASR"), 0).unwrap());
    let _l2 = granted(a.acquire(req("NMT"), 0).unwrap());
    let w = queued(a.acquire(req("TTS"), 5 * MS).unwrap());
    let mut out = vec![];
    assert!(a.release(l1.lease_id, 30 * MS, &mut out));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].waiter, w);
    match &out[0].outcome {
        Outcome::Acquired(g) => assert_eq!(g.queue_wait, 25 * MS),
        o => panic!("{o:?}"),
    }
    // Release is idempotent.
    assert!(!a.release(l1.lease_id, 31 * MS, &mut out));
    assert_eq!(out.len(), 1);
}

#[test]
fn busy_policies_answer_at_once() {
    let mut a = arbiter(json!({}));
    granted(a.acquire(req("ASR"), 0).unwrap());
    let mut skip = req("SEMANTIC_REPAIR");
    skip.busy_policy = Some(BusyPolicy::Skip);
    assert_eq!(not_acquired(a.acquire(skip, 0).unwrap()), (Status::Skipped, Reason::GpuBusy));
    let mut fb = req("X");
    fb.busy_policy = Some(BusyPolicy::FallbackCpu);
    assert_eq!(not_acquired(a.acquire(fb, 0).unwrap()), (Status::FallbackCpu, Reason::GpuBusy));
    let mut no_wait = req("X");
    no_wait.max_wait_ms = Some(0);
    assert_eq!(not_acquired(a.acquire(no_wait, 0).unwrap()), (Status::Skipped, Reason::Timeout));
    assert_eq!(a.waiter_count(), 0);
}

#[test]
fn a_full_queue_is_answered_queue_full_and_never_grows() {
    let mut a = arbiter(json!({"defaultQueueLimit": 2}));
    granted(a.acquire(req("ASR"), 0).unwrap());
    queued(a.acquire(req("ASR"), 0).unwrap());
    queued(a.acquire(req("ASR"), 0).unwrap());
    assert_eq!(not_acquired(a.acquire(req("ASR"), 0).unwrap()), (Status::Skipped, Reason::QueueFull));
    let mut fb = req("ASR");
    fb.busy_policy = Some(BusyPolicy::FallbackCpu);
    assert_eq!(not_acquired(a.acquire(fb, 0).unwrap()), (Status::FallbackCpu, Reason::QueueFull));
    assert_eq!(a.waiter_count(), 2);
    assert!(a.metrics().contains("gpu_arbiter_queue_full_total{gpu=\"gpu:0\",task_type=\"ASR\"} 2"));
}

#[test]
fn waiters_time_out_at_max_wait() {
    let mut a = arbiter(json!({}));
    granted(a.acquire(req("ASR"), 0).unwrap());
    let w = queued(a.acquire(req("TTS"), 10 * MS).unwrap()); // TTS waits 13000 ms
    assert_eq!(a.next_deadline(), Some(13_010 * MS));
    let mut out = vec![];
    a.tick(13_009 * MS, &mut out);
    assert!(out.is_empty());
    a.tick(13_010 * MS, &mut out);
    assert_eq!(
        out,
        vec![Resolution {
            waiter: w,
            // The old arbiter's answer to a plain wait that ran out.
            outcome: Outcome::NotAcquired { status: Status::Skipped, reason: Reason::Timeout }
        }]
    );
    assert_eq!(a.waiter_count(), 0);
    assert!(a.metrics().contains("gpu_arbiter_timeouts_total{gpu=\"gpu:0\",task_type=\"TTS\"} 1"));
}

#[test]
fn priority_order_then_fifo() {
    let mut a = arbiter(json!({"agingMsPerPriority": 0, "defaultQueueLimit": 10}));
    let first = granted(a.acquire(req("ASR"), 0).unwrap());
    let low1 = queued(a.acquire(req("TTS"), 1).unwrap());
    let high = queued(a.acquire(req("ASR"), 2).unwrap());
    let low2 = queued(a.acquire(req("TTS"), 3).unwrap());
    let mid = queued(a.acquire(req("NMT"), 4).unwrap());
    let mut order = vec![];
    let mut lease = first.lease_id;
    for t in 1..=4 {
        let mut out = vec![];
        a.release(lease, t * MS, &mut out);
        let r = out.pop().unwrap();
        order.push(r.waiter);
        lease = match r.outcome {
            Outcome::Acquired(g) => g.lease_id,
            o => panic!("{o:?}"),
        };
    }
    assert_eq!(order, vec![high, mid, low1, low2]);
}

#[test]
fn aging_lets_a_low_priority_waiter_pass_newer_high_priority_ones() {
    // 1 point per 10 ms: a priority-20 waiter that has waited 800 ms outranks a fresh 90.
    let mut a = arbiter(json!({"agingMsPerPriority": 10, "defaultQueueLimit": 10,
        "policies": {"SEMANTIC_REPAIR": {"busyPolicy": "WAIT", "maxWaitMs": 10000}}}));
    let lease = granted(a.acquire(req("ASR"), 0).unwrap());
    let old_low = queued(a.acquire(req("SEMANTIC_REPAIR"), 0).unwrap());
    let _new_high = queued(a.acquire(req("ASR"), 800 * MS).unwrap());
    let snap = a.snapshot("gpu:0", 800 * MS).unwrap();
    assert_eq!(snap.queue[0].task_type, "SEMANTIC_REPAIR");
    assert!((snap.queue[0].effective_priority - 100.0).abs() < 1e-9);
    let mut out = vec![];
    a.release(lease.lease_id, 801 * MS, &mut out);
    assert_eq!(out[0].waiter, old_low);
}

#[test]
fn unknown_gpu_key_and_bad_requests_are_errors() {
    let mut a = arbiter(json!({"gpuKeys": ["gpu:0", "gpu:1"]}));
    let mut r = req("ASR");
    r.gpu_key = Some("gpu:7".into());
    let e = a.acquire(r, 0).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidGpuKey);
    assert!(e.message.contains("gpu:7") && e.message.contains("gpu:0, gpu:1"), "{}", e.message);
    assert_eq!(a.acquire(req(""), 0).unwrap_err().code, ErrorCode::InvalidArgument);
    let mut r = req("ASR");
    r.priority = Some(101);
    assert_eq!(a.acquire(r, 0).unwrap_err().code, ErrorCode::InvalidArgument);
}

#[test]
fn no_gpu_key_picks_the_least_loaded_gpu() {
    let mut a = arbiter(json!({"gpuKeys": ["gpu:0", "gpu:1"]}));
    let g1 = granted(a.acquire(req("ASR"), 0).unwrap());
    let g2 = granted(a.acquire(req("ASR"), 0).unwrap());
    assert_eq!((g1.gpu, g2.gpu), (0, 1));
    let mut out = vec![];
    a.release(g1.lease_id, MS, &mut out);
    assert_eq!(granted(a.acquire(req("NMT"), 2 * MS).unwrap()).gpu, 0);
}

#[test]
fn watchdog_warns_or_revokes() {
    let mut a = arbiter(json!({"defaultHoldMaxMs": 100}));
    let l = granted(a.acquire(req("ASR"), 0).unwrap());
    let w = queued(a.acquire(req("NMT"), 0).unwrap());
    let mut out = vec![];
    a.tick(100 * MS, &mut out);
    assert!(out.is_empty(), "warn keeps the lease");
    assert!(a.take_events().iter().any(|e| e.kind == EventKind::Watchdog && e.detail.as_deref() == Some("warn")));
    assert!(a.snapshot("gpu:0", 100 * MS).unwrap().leases[0].watchdog_fired);
    a.release(l.lease_id, 150 * MS, &mut out);
    assert_eq!(out[0].waiter, w);

    let mut a = arbiter(json!({"defaultHoldMaxMs": 100, "watchdogAction": "revoke"}));
    let l = granted(a.acquire(req("ASR"), 0).unwrap());
    let w = queued(a.acquire(req("NMT"), 0).unwrap());
    let mut out = vec![];
    a.tick(100 * MS, &mut out);
    assert_eq!(out[0].waiter, w, "the stuck lease is taken back and the waiter served");
    assert!(!a.release(l.lease_id, 200 * MS, &mut out), "a revoked lease is unknown");
    assert!(a.metrics().contains("gpu_arbiter_watchdog_exceeded_total{gpu=\"gpu:0\",task_type=\"ASR\"} 1"));
}

#[test]
fn cancel_frees_the_place_at_once() {
    let mut a = arbiter(json!({"defaultQueueLimit": 1}));
    granted(a.acquire(req("ASR"), 0).unwrap());
    let w = queued(a.acquire(req("ASR"), 0).unwrap());
    let r = a.cancel(w, MS).unwrap();
    assert_eq!(r.outcome, Outcome::NotAcquired { status: Status::Cancelled, reason: Reason::Aborted });
    assert!(a.cancel(w, MS).is_none());
    queued(a.acquire(req("NMT"), 2 * MS).unwrap()); // NMT waits 8000 ms
    assert_eq!(a.next_deadline(), Some(2 * MS + 8_000 * MS));
}

#[test]
fn close_cancels_everyone_and_refuses_later_calls() {
    let mut a = arbiter(json!({"defaultQueueLimit": 5}));
    granted(a.acquire(req("ASR"), 0).unwrap());
    let w1 = queued(a.acquire(req("ASR"), 0).unwrap());
    let w2 = queued(a.acquire(req("ASR"), MS).unwrap());
    let mut out = vec![];
    a.close(2 * MS, &mut out);
    assert_eq!(out.iter().map(|r| r.waiter).collect::<Vec<_>>(), vec![w1, w2]);
    assert!(out
        .iter()
        .all(|r| r.outcome == Outcome::NotAcquired { status: Status::Cancelled, reason: Reason::Shutdown }));
    assert_eq!((a.waiter_count(), a.lease_count(), a.next_deadline()), (0, 0, None));
    assert_eq!(a.acquire(req("ASR"), 3 * MS).unwrap_err().code, ErrorCode::Closed);
}

#[test]
fn disabled_arbiter_grants_everything_without_counting() {
    let mut a = arbiter(json!({"enabled": false}));
    for _ in 0..5 {
        granted(a.acquire(req("ASR"), 0).unwrap());
    }
    assert_eq!(a.lease_count(), 0);
}

#[test]
fn set_config_keeps_leases_and_queue_and_applies_new_capacity() {
    let mut a = arbiter(json!({}));
    granted(a.acquire(req("ASR"), 0).unwrap());
    let w = queued(a.acquire(req("NMT"), 0).unwrap());
    let mut wn = vec![];
    let cfg = a.config().patched(&json!({"maxConcurrentLeases": 2, "gpuKeys": ["gpu:0", "gpu:1"]}), &mut wn).unwrap();
    let mut out = vec![];
    a.set_config(cfg, MS, &mut out).unwrap();
    assert_eq!(out[0].waiter, w);
    assert_eq!(a.lease_count(), 2);
    let shrink = a.config().patched(&json!({"gpuKeys": ["gpu:1"]}), &mut wn).unwrap();
    let e = a.set_config(shrink, MS, &mut out).unwrap_err();
    assert!(e.message.contains("cannot remove \"gpu:0\""), "{}", e.message);
}

fn reading(at: Micros, util: f64, free_mb: u64) -> GpuReading {
    GpuReading { at, utilization_gpu: Some(util), free_mb: Some(free_mb), total_mb: Some(80_000) }
}

#[test]
fn high_pressure_holds_back_low_priority_work_with_hysteresis() {
    let mut a = arbiter(json!({"maxConcurrentLeases": 4,
        "policies": {"SEMANTIC_REPAIR": {"busyPolicy": "WAIT", "maxWaitMs": 5000}}}));
    let mut out = vec![];
    a.observe_gpu("gpu:0", reading(0, 90.0, 40_000), 0, &mut out);
    assert_eq!(a.snapshot("gpu:0", 0).unwrap().admission.state, AdmissionState::HighPressure);
    let mut skip = req("SEMANTIC_REPAIR");
    skip.busy_policy = Some(BusyPolicy::Skip);
    assert_eq!(not_acquired(a.acquire(skip, 0).unwrap()), (Status::Skipped, Reason::GpuUsageHigh));
    granted(a.acquire(req("ASR"), 0).unwrap()); // high priority still gets in
    let w = queued(a.acquire(req("SEMANTIC_REPAIR"), 0).unwrap());
    a.observe_gpu("gpu:0", reading(MS, 80.0, 40_000), MS, &mut out);
    assert!(out.is_empty(), "80% is between the water marks: still HIGH_PRESSURE");
    a.observe_gpu("gpu:0", reading(2 * MS, 70.0, 40_000), 2 * MS, &mut out);
    assert_eq!(out[0].waiter, w);
}

#[test]
fn pressure_timeout_reports_gpu_usage_high() {
    let mut a = arbiter(json!({"maxConcurrentLeases": 4,
        "policies": {"SEMANTIC_REPAIR": {"busyPolicy": "WAIT", "maxWaitMs": 400}}}));
    let mut out = vec![];
    a.observe_gpu("gpu:0", reading(0, 95.0, 40_000), 0, &mut out);
    let w = queued(a.acquire(req("SEMANTIC_REPAIR"), 0).unwrap());
    a.observe_gpu("gpu:0", reading(300 * MS, 95.0, 40_000), 300 * MS, &mut out);
    a.tick(400 * MS, &mut out);
    assert_eq!(
        out,
        vec![Resolution {
            waiter: w,
            // Below priority 70 under pressure: skipped, not a timeout.
            outcome: Outcome::NotAcquired { status: Status::Skipped, reason: Reason::GpuUsageHigh }
        }]
    );
}

#[test]
fn vram_admission_counts_reserve_and_unseen_grants() {
    let mut a = arbiter(json!({"maxConcurrentLeases": 4, "gpuUsage": {"vramReserveMb": 1000}}));
    let mut out = vec![];
    a.observe_gpu("gpu:0", reading(0, 10.0, 11_000), 0, &mut out);
    let mut big = req("ASR");
    big.vram_mb = Some(6_000);
    let first = granted(a.acquire(big.clone(), MS).unwrap()); // 11000 - 1000 reserve >= 6000
                                                              // The first grant is not in the sample yet: 10000 - 6000 = 4000 < 6000.
    let w = queued(a.acquire(big.clone(), 2 * MS).unwrap());
    let mut small = req("NMT");
    small.vram_mb = Some(3_000);
    granted(a.acquire(small, 3 * MS).unwrap()); // a smaller one is not held up behind it
                                                // A new sample that sees the first two grants' memory: free 2000.
    a.observe_gpu("gpu:0", reading(4 * MS, 10.0, 2_000), 4 * MS, &mut out);
    assert!(out.is_empty());
    a.release(first.lease_id, 5 * MS, &mut out);
    assert!(out.is_empty(), "release alone does not make memory visible");
    a.observe_gpu("gpu:0", reading(6 * MS, 10.0, 8_000), 6 * MS, &mut out);
    assert_eq!(out[0].waiter, w);
    let mut skip = req("X");
    skip.vram_mb = Some(50_000);
    skip.busy_policy = Some(BusyPolicy::Skip);
    assert_eq!(not_acquired(a.acquire(skip, 7 * MS).unwrap()), (Status::Skipped, Reason::VramLow));
}

/// Boot: a Telemetry attached whose first reading is still to come. A request naming its VRAM
/// need is not admitted blind (before: granted, however large); one that names none is.
#[test]
fn before_the_first_reading_a_vram_request_waits_for_it_and_is_then_answered_by_its_policy() {
    let mut a = arbiter(json!({"maxConcurrentLeases": 4}));
    let mut out = vec![];
    a.await_first_reading(true, 0, &mut out);
    let mut fits = req("ASR");
    fits.vram_mb = Some(2_000);
    let mut huge = req("NMT");
    huge.vram_mb = Some(30_000);
    huge.max_wait_ms = Some(2_000);
    let mut skip = req("TTS");
    skip.vram_mb = Some(30_000);
    skip.busy_policy = Some(BusyPolicy::Skip);
    let fits = queued(a.acquire(fits, MS).unwrap());
    let huge = queued(a.acquire(huge, MS).unwrap());
    let skip = queued(a.acquire(skip, MS).unwrap());
    granted(a.acquire(req("OTHER"), MS).unwrap()); // no VRAM need: nothing to wait for
    let queued_events: Vec<String> =
        a.take_events().into_iter().filter(|e| e.kind == EventKind::Queued).filter_map(|e| e.detail).collect();
    assert_eq!(queued_events.len(), 3);
    assert!(
        queued_events.iter().all(|d| d.ends_with("waiting for the attached Telemetry's first reading")),
        "{queued_events:?}"
    );
    a.tick(2 * MS, &mut out);
    assert!(out.is_empty(), "nothing answered before the reading: {out:?}");
    // The reading: 24000 MB free.
    a.observe_gpu("gpu:0", reading(3 * MS, 10.0, 24_000), 3 * MS, &mut out);
    a.await_first_reading(false, 3 * MS, &mut out);
    fn answer(out: &[Resolution], id: WaiterId) -> Option<Outcome> {
        out.iter().find(|r| r.waiter == id).map(|r| r.outcome.clone())
    }
    assert!(matches!(answer(&out, fits), Some(Outcome::Acquired(_))), "{out:?}");
    // SKIP has no wait of its own: answered now, by the reading.
    assert_eq!(answer(&out, skip), Some(Outcome::NotAcquired { status: Status::Skipped, reason: Reason::VramLow }));
    // WAIT waits out its own maxWaitMs, from when it came.
    assert_eq!(answer(&out, huge), None);
    a.tick(2_001 * MS, &mut out);
    assert_eq!(answer(&out, huge), Some(Outcome::NotAcquired { status: Status::Skipped, reason: Reason::VramLow }));
}

#[test]
fn a_first_reading_that_never_comes_holds_a_vram_request_five_seconds_at_most() {
    let mut a = arbiter(json!({"maxConcurrentLeases": 4}));
    let mut out = vec![];
    a.await_first_reading(true, 0, &mut out);
    let mut skip = req("TTS");
    skip.vram_mb = Some(1_000);
    skip.busy_policy = Some(BusyPolicy::Skip);
    skip.max_wait_ms = Some(0);
    let id = queued(a.acquire(skip, 0).unwrap());
    a.tick(4_999 * MS, &mut out);
    assert!(out.is_empty());
    a.tick(5_000 * MS, &mut out);
    assert_eq!(
        out,
        vec![Resolution {
            waiter: id,
            outcome: Outcome::NotAcquired { status: Status::Skipped, reason: Reason::Timeout }
        }]
    );
    // Detached (or NVML unavailable): nothing to wait for, admitted as before.
    a.await_first_reading(false, 5_001 * MS, &mut out);
    let mut again = req("TTS");
    again.vram_mb = Some(1_000);
    granted(a.acquire(again, 5_002 * MS).unwrap());
}

#[test]
fn a_stale_reading_falls_back_to_logical_leases() {
    let mut a = arbiter(json!({"maxConcurrentLeases": 4, "gpuUsage": {"staleAfterMs": 1000}}));
    let mut out = vec![];
    a.observe_gpu("gpu:0", reading(0, 99.0, 100), 0, &mut out);
    let mut r = req("SEMANTIC_REPAIR");
    r.busy_policy = Some(BusyPolicy::Wait);
    r.max_wait_ms = Some(5000);
    let w = queued(a.acquire(r, 0).unwrap());
    a.tick(1000 * MS, &mut out);
    assert_eq!(out[0].waiter, w, "the reading went stale, so pressure no longer holds it back");
    assert_eq!(a.snapshot("gpu:0", 1000 * MS).unwrap().admission.state, AdmissionState::Unknown);
}

#[test]
fn snapshot_lists_holders_queue_and_percentiles() {
    let mut a = arbiter(json!({"defaultQueueLimit": 4}));
    let mut r = req("ASR");
    r.trace = Trace { job_id: Some("j1".into()), utterance_index: Some(3), ..Trace::default() };
    let l = granted(a.acquire(r, 0).unwrap());
    queued(a.acquire(req("TTS"), 10 * MS).unwrap());
    queued(a.acquire(req("ASR"), 20 * MS).unwrap());
    let s = a.snapshot("gpu:0", 50 * MS).unwrap();
    assert_eq!(s.leases[0].trace.job_id.as_deref(), Some("j1"));
    assert_eq!(s.leases[0].held, 50 * MS);
    assert_eq!(s.queue.iter().map(|w| w.task_type.as_str()).collect::<Vec<_>>(), vec!["ASR", "TTS"]);
    let mut out = vec![];
    a.release(l.lease_id, 60 * MS, &mut out);
    let s = a.snapshot("gpu:0", 60 * MS).unwrap();
    let asr = s.tasks.iter().find(|t| t.task_type == "ASR").unwrap();
    assert_eq!(asr.acquired, 2);
    assert_eq!(asr.hold.unwrap().p99, 60.0);
    assert_eq!(asr.wait.unwrap().p99, 40.0);
    assert!(a.snapshot("gpu:9", 0).is_none());
}

// ---- property test ----

#[derive(Debug, Clone)]
enum Op {
    Acquire { task: u8, gpu: Option<u8>, priority: Option<u8>, wait_ms: u16 },
    Release(usize),
    Cancel(usize),
    Advance(u16),
    Observe { gpu: u8, util: u8 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..4, proptest::option::of(0u8..2), proptest::option::of(0u8..=100), 0u16..3000)
            .prop_map(|(task, gpu, priority, wait_ms)| Op::Acquire { task, gpu, priority, wait_ms }),
        3 => (0usize..64).prop_map(Op::Release),
        1 => (0usize..64).prop_map(Op::Cancel),
        2 => (0u16..1500).prop_map(Op::Advance),
        1 => (0u8..2, 0u8..=100).prop_map(|(gpu, util)| Op::Observe { gpu, util }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Capacity is never exceeded, every request resolves exactly once, grants from the queue come
    /// in queue order, and nothing is left behind after close.
    #[test]
    fn invariants_hold_under_any_sequence(ops in proptest::collection::vec(op(), 1..120), cap in 1u64..3, revoke in any::<bool>()) {
        let tasks = ["ASR", "NMT", "TTS", "SEMANTIC_REPAIR"];
        let mut a = arbiter(json!({
            "gpuKeys": ["gpu:0", "gpu:1"], "maxConcurrentLeases": cap, "defaultQueueLimit": 6,
            "defaultHoldMaxMs": 2000, "agingMsPerPriority": 50,
            "watchdogAction": if revoke { "revoke" } else { "warn" },
        }));
        let mut now: Micros = 0;
        let mut leases: Vec<LeaseId> = vec![];
        let mut pending: HashMap<WaiterId, ()> = HashMap::new();
        let mut resolved: HashMap<WaiterId, usize> = HashMap::new();
        let mut out = vec![];
        for op in ops {
            match op {
                Op::Acquire { task, gpu, priority, wait_ms } => {
                    let mut r = req(tasks[task as usize]);
                    r.gpu_key = gpu.map(|g| format!("gpu:{g}"));
                    r.priority = priority.map(u64::from);
                    r.max_wait_ms = Some(wait_ms as u64);
                    r.busy_policy = Some(BusyPolicy::Wait);
                    match a.acquire(r, now).unwrap() {
                        Admission::Settled(Outcome::Acquired(g)) => leases.push(g.lease_id),
                        Admission::Settled(_) => {}
                        Admission::Queued(id) => { pending.insert(id, ()); }
                    }
                }
                Op::Release(i) => if !leases.is_empty() {
                    let id = leases.remove(i % leases.len());
                    a.release(id, now, &mut out);
                },
                Op::Cancel(i) => {
                    let ids: Vec<_> = pending.keys().copied().collect();
                    if !ids.is_empty() {
                        if let Some(r) = a.cancel(ids[i % ids.len()], now) { out.push(r); }
                    }
                }
                Op::Advance(ms) => { now += ms as u64 * MS; a.tick(now, &mut out); }
                Op::Observe { gpu, util } => {
                    a.observe_gpu(&format!("gpu:{gpu}"), GpuReading { at: now, utilization_gpu: Some(util as f64), free_mb: None, total_mb: None }, now, &mut out);
                }
            }
            // Before settling this step's resolutions, check queue-order fairness: a waiter granted
            // now must not have had an admissible waiter ahead of it (checked via the snapshot order).
            for r in out.drain(..) {
                prop_assert!(pending.remove(&r.waiter).is_some(), "resolved twice or never queued: {:?}", r);
                *resolved.entry(r.waiter).or_default() += 1;
                if let Outcome::Acquired(g) = r.outcome { leases.push(g.lease_id); }
            }
            for s in a.snapshot_all(now) {
                prop_assert!(s.leases.len() as u64 <= cap, "capacity exceeded on {}", s.gpu_key);
                prop_assert!(s.queue.len() <= 6, "queue grew past its limit");
                // Dequeue order is by effective priority, FIFO among equals.
                for pair in s.queue.windows(2) {
                    prop_assert!(pair[0].effective_priority >= pair[1].effective_priority - 1e-6);
                }
                // Nothing waits on a GPU with a free slot unless pressure holds it back.
                if (s.leases.len() as u64) < cap && s.admission.state != AdmissionState::HighPressure {
                    prop_assert!(s.queue.is_empty(), "a waiter was left behind on a free GPU");
                }
            }
            prop_assert_eq!(a.waiter_count(), pending.len());
        }
        a.close(now, &mut out);
        for r in out.drain(..) {
            prop_assert!(pending.remove(&r.waiter).is_some());
        }
        prop_assert!(pending.is_empty(), "unresolved after close: {:?}", pending);
        prop_assert_eq!((a.waiter_count(), a.lease_count(), a.next_deadline()), (0, 0, None));
        prop_assert!(resolved.values().all(|n| *n == 1));
    }

    /// Aging bound: with aging on, a waiter is served before any request that arrives
    /// (100 - priority) * agingMs or later after it, whatever that request's priority.
    #[test]
    fn aging_bounds_starvation(low in 0u64..100, aging_ms in 1u64..50, extra in 1u64..1000) {
        let mut a = arbiter(json!({"agingMsPerPriority": aging_ms, "defaultQueueLimit": 10}));
        let lease = granted(a.acquire(req("ASR"), 0).unwrap());
        let mut r = req("LOW");
        r.priority = Some(low);
        r.max_wait_ms = Some(86_400_000);
        let old = queued(a.acquire(r, 0).unwrap());
        let later = (100 - low) * aging_ms * MS + extra;
        let mut hi = req("HIGH");
        hi.priority = Some(100);
        hi.max_wait_ms = Some(86_400_000);
        queued(a.acquire(hi, later).unwrap());
        let mut out = vec![];
        a.release(lease.lease_id, later + 1, &mut out);
        prop_assert_eq!(out[0].waiter, old);
    }
}

/// Runs one WAIT request of `priority` and `busy` into its deadline on a GPU held by another
/// lease, under HIGH_PRESSURE or not, and returns how it was answered.
fn wait_runs_out(pressure: bool, priority: u64, busy: BusyPolicy) -> (Status, Reason) {
    let mut a = arbiter(json!({"maxConcurrentLeases": 1, "gpuUsage": {"priorityFloor": 0}}));
    let mut out = vec![];
    a.observe_gpu("gpu:0", reading(0, if pressure { 95.0 } else { 10.0 }, 40_000), 0, &mut out);
    granted(a.acquire(req("HOLDER"), 0).unwrap());
    let mut r = req("X");
    r.priority = Some(priority);
    r.max_wait_ms = Some(100);
    // The old arbiter let every policy wait; here only WAIT queues, the others answer at once.
    r.busy_policy = Some(busy);
    match a.acquire(r, 0).unwrap() {
        Admission::Queued(w) => {
            a.observe_gpu("gpu:0", reading(90 * MS, if pressure { 95.0 } else { 10.0 }, 40_000), 90 * MS, &mut out);
            a.tick(100 * MS, &mut out);
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].waiter, w);
            match out[0].outcome {
                Outcome::NotAcquired { status, reason } => (status, reason),
                ref o => panic!("{o:?}"),
            }
        }
        other => panic!("expected a WAIT request to queue, got {other:?}"),
    }
}

#[test]
fn a_wait_that_runs_out_is_answered_by_the_old_arbiters_rule() {
    use BusyPolicy::*;
    assert_eq!(wait_runs_out(false, 90, Wait), (Status::Skipped, Reason::Timeout));
    assert_eq!(wait_runs_out(false, 20, Wait), (Status::Skipped, Reason::Timeout));
    assert_eq!(wait_runs_out(true, 90, Wait), (Status::Timeout, Reason::GpuUsageHigh));
    assert_eq!(wait_runs_out(true, 70, Wait), (Status::Timeout, Reason::GpuUsageHigh));
    assert_eq!(wait_runs_out(true, 69, Wait), (Status::Skipped, Reason::GpuUsageHigh));
    // The counters follow the statuses; every wait that ran out counts as a timeout.
    let mut a = arbiter(json!({}));
    granted(a.acquire(req("ASR"), 0).unwrap());
    let mut r = req("NMT");
    r.max_wait_ms = Some(10);
    queued(a.acquire(r, 0).unwrap());
    a.tick(10 * MS, &mut vec![]);
    let m = a.metrics();
    assert!(m.contains("gpu_arbiter_acquire_total{gpu=\"gpu:0\",task_type=\"NMT\",status=\"SKIPPED\"} 1"), "{m}");
    assert!(m.contains("gpu_arbiter_timeouts_total{gpu=\"gpu:0\",task_type=\"NMT\"} 1"), "{m}");
    let snap = a.snapshot("gpu:0", 10 * MS).unwrap();
    assert_eq!((snap.metrics.skipped, snap.metrics.timeouts, snap.metrics.acquired), (1, 1, 1));
}

#[test]
fn fallback_cpu_requests_that_ran_out_at_once_follow_the_rule() {
    let mut a = arbiter(json!({}));
    let mut out = vec![];
    a.observe_gpu("gpu:0", reading(0, 95.0, 40_000), 0, &mut out);
    granted(a.acquire(req("ASR"), 0).unwrap());
    let mut asr = req("ASR");
    asr.max_wait_ms = Some(0);
    assert_eq!(not_acquired(a.acquire(asr, 0).unwrap()), (Status::Timeout, Reason::GpuUsageHigh));
}

#[test]
fn a_queued_request_keeps_its_id_as_its_lease_id() {
    let mut a = arbiter(json!({}));
    let first = granted(a.acquire(req("ASR"), 0).unwrap());
    let w = queued(a.acquire(req("NMT"), 0).unwrap());
    assert_eq!(a.snapshot("gpu:0", MS).unwrap().queue[0].id, w);
    let mut out = vec![];
    a.release(first.lease_id, 2 * MS, &mut out);
    match &out[0].outcome {
        Outcome::Acquired(g) => assert_eq!(g.lease_id, w),
        o => panic!("{o:?}"),
    }
    let snap = a.snapshot("gpu:0", 3 * MS).unwrap();
    assert_eq!(snap.metrics.recent_waits_ms, vec![0.0, 2.0]);
    assert_eq!(snap.metrics.recent_holds_ms, vec![2.0]);
}

#[test]
fn revoked_leases_are_reported_once() {
    let mut a = arbiter(json!({"watchdogAction": "revoke", "defaultHoldMaxMs": 50}));
    let l = granted(a.acquire(req("ASR"), 0).unwrap());
    a.tick(50 * MS, &mut vec![]);
    assert!(a.has_revoked());
    assert_eq!(a.take_revoked(), vec![l.lease_id]);
    assert!(a.take_revoked().is_empty());
}

#[test]
fn huge_waits_and_holds_are_capped_at_one_day() {
    let mut a = arbiter(json!({}));
    let mut r = req("ASR");
    r.hold_max_ms = Some(u64::MAX / 2);
    granted(a.acquire(r, 0).unwrap());
    assert_eq!(a.next_deadline(), Some(86_400_000 * MS));
    let mut w = req("NMT");
    w.max_wait_ms = Some(u64::MAX / 2);
    queued(a.acquire(w, 0).unwrap());
    assert_eq!(a.next_deadline(), Some(86_400_000 * MS));
}

#[test]
fn a_long_audio_hint_raises_both_marks_for_a_while() {
    let mut a = arbiter(json!({"maxConcurrentLeases": 4, "gpuUsage": {"staleAfterMs": 60_000}}));
    let mut out = vec![];
    a.observe_gpu("gpu:0", reading(0, 88.0, 40_000), 0, &mut out);
    assert_eq!(a.snapshot("gpu:0", 0).unwrap().admission.state, AdmissionState::HighPressure);
    assert!(!a.notify_asr_task_hint(Some(8_000), None, MS, &mut out), "not longer than the threshold");
    assert!(a.notify_asr_task_hint(Some(12_000), Some(9_000), MS, &mut out));
    assert_eq!(a.water_marks(), WaterMarks { high: 92.0, low: 85.0 });
    a.observe_gpu("gpu:0", reading(2 * MS, 84.0, 40_000), 2 * MS, &mut out);
    assert_eq!(a.snapshot("gpu:0", 2 * MS).unwrap().admission.state, AdmissionState::Normal);
    a.observe_gpu("gpu:0", reading(3 * MS, 90.0, 40_000), 3 * MS, &mut out);
    assert_eq!(a.snapshot("gpu:0", 3 * MS).unwrap().admission.state, AdmissionState::Normal, "90 < 92");
    assert_eq!(a.next_deadline(), Some(MS + 15_000 * MS));
    a.tick(MS + 15_000 * MS, &mut out);
    assert_eq!(a.water_marks(), WaterMarks { high: 85.0, low: 78.0 });
    let snap = a.snapshot("gpu:0", MS + 15_000 * MS).unwrap();
    assert_eq!(snap.admission.state, AdmissionState::HighPressure, "90% is over the restored high mark");
}

#[test]
fn left_behind_deadlines_are_swept_and_never_fire() {
    let mut a = arbiter(json!({"maxConcurrentLeases": 1, "defaultQueueLimit": 100}));
    let mut out = vec![];
    let mut held = granted(a.acquire(req("ASR"), 0).unwrap()).lease_id;
    for i in 1..10_000u64 {
        let w = queued(a.acquire(req("NMT"), i).unwrap());
        assert!(a.release(held, i, &mut out));
        held = w; // the waiter kept its id as its lease id
        out.clear();
    }
    // Each round trip left a wait and a watchdog deadline behind; sweeps keep the heap small.
    assert!(a.deadlines.len() <= 256 + 3, "{} entries", a.deadlines.len());
    // Only the live lease's watchdog is due.
    assert_eq!(a.next_deadline(), Some(9_999 + 60_000 * MS));
    a.tick(9_999 + 60_000 * MS, &mut out);
    assert!(out.is_empty());
    assert_eq!(a.snapshot("gpu:0", 9_999 + 60_000 * MS).unwrap().metrics.watchdog_exceeded, 1);
}

#[test]
fn a_changed_stale_after_moves_the_stale_deadline() {
    let mut a = arbiter(json!({"gpuUsage": {"staleAfterMs": 5000}}));
    let mut out = vec![];
    a.observe_gpu("gpu:0", reading(0, 10.0, 1_000), 0, &mut out);
    assert_eq!(a.next_deadline(), Some(5_000 * MS));
    let cfg = a.config().patched(&json!({"gpuUsage": {"staleAfterMs": 2000}}), &mut vec![]).unwrap();
    a.set_config(cfg, MS, &mut out).unwrap();
    assert_eq!(a.next_deadline(), Some(2_000 * MS));
}

#[test]
fn close_reports_each_lease_it_drops_as_released() {
    let mut a = arbiter(json!({"maxConcurrentLeases": 2}));
    let l1 = granted(a.acquire(req("ASR"), 0).unwrap());
    let l2 = granted(a.acquire(req("NMT"), 0).unwrap());
    a.take_events();
    a.close(5 * MS, &mut vec![]);
    let released: Vec<_> = a
        .take_events()
        .into_iter()
        .filter(|e| e.kind == EventKind::Released)
        .map(|e| (e.lease_id, e.task_type, e.detail))
        .collect();
    assert_eq!(
        released,
        vec![
            (Some(l1.lease_id), Some("ASR".to_string()), Some("shutdown".to_string())),
            (Some(l2.lease_id), Some("NMT".to_string()), Some("shutdown".to_string()))
        ]
    );
}

#[test]
fn a_task_type_claimed_by_a_service_goes_to_its_gpu() {
    let mut a = arbiter(json!({"gpuKeys": ["gpu:0", "gpu:1"], "maxConcurrentLeases": 4}));
    // Least-loaded placement puts the first requests on gpu:0.
    assert_eq!(granted(a.acquire(req("NMT"), 0).unwrap()).gpu, 0);
    a.set_task_gpus([("ASR".to_string(), "gpu:1".to_string()), ("TTS".to_string(), "gpu:9".to_string())]);
    for _ in 0..3 {
        assert_eq!(granted(a.acquire(req("ASR"), 0).unwrap()).gpu, 1, "where its model is loaded");
    }
    // Unclaimed task types, and a route to a GPU the arbiter lacks, stay least-loaded.
    assert_eq!(granted(a.acquire(req("NMT"), 0).unwrap()).gpu, 0);
    assert_eq!(granted(a.acquire(req("TTS"), 0).unwrap()).gpu, 0);
    // An explicit gpuKey still wins.
    let mut pinned = req("ASR");
    pinned.gpu_key = Some("gpu:0".into());
    assert_eq!(granted(a.acquire(pinned, 0).unwrap()).gpu, 0);
    let mut fresh = arbiter(json!({"gpuKeys": ["gpu:0", "gpu:1"]}));
    fresh.set_task_gpus([("ASR".to_string(), "gpu:1".to_string())]);
    fresh.set_task_gpus([]);
    assert_eq!(granted(fresh.acquire(req("ASR"), 0).unwrap()).gpu, 0, "routes cleared: least-loaded again");
}

#[test]
fn a_standby_task_type_waits_through_its_load_asks_once_and_is_granted_when_ready() {
    let mut a = arbiter(json!({"policies": {"NMT": {"maxWaitMs": 100}}}));
    let mut out = vec![];
    a.set_task_standby("NMT", Some(2_000 * MS), 0, &mut out);
    // A free GPU, but the model is not loaded: queued, and the service is asked for once.
    let w1 = queued(a.acquire(req("NMT"), 0).unwrap());
    let w2 = queued(a.acquire(req("NMT"), 10 * MS).unwrap());
    assert_eq!(a.take_demands(), ["NMT"]);
    assert!(a.take_demands().is_empty());
    // Other task types are not held back.
    let other = granted(a.acquire(req("ASR"), 20 * MS).unwrap());
    a.release(other.lease_id, 30 * MS, &mut out);
    assert!(out.is_empty());
    // Past maxWaitMs, within the load allowance: still waiting.
    a.tick(500 * MS, &mut out);
    assert!(out.is_empty());
    a.set_task_standby("NMT", None, 800 * MS, &mut out);
    let waited: Vec<(WaiterId, Micros)> = out
        .iter()
        .map(|r| match &r.outcome {
            Outcome::Acquired(g) => (r.waiter, g.queue_wait),
            o => panic!("{o:?}"),
        })
        .collect();
    assert_eq!(waited[0], (w1, 800 * MS), "the real wait is reported");
    assert_eq!(waited.len(), 1, "one lease slot");
    assert_eq!(a.waiter_count(), 1);
    let _ = w2;
    // Loaded: no more demands, and new requests are granted as usual.
    assert!(a.take_demands().is_empty());
}

#[test]
fn a_failed_on_demand_start_settles_its_waiters_service_unavailable() {
    let mut a = arbiter(json!({"policies": {"NMT": {"maxWaitMs": 100}}}));
    let mut out = vec![];
    a.set_task_standby("NMT", Some(1_000 * MS), 0, &mut out);
    let _w = queued(a.acquire(req("NMT"), 0).unwrap());
    let mut fallback = req("NMT");
    fallback.busy_policy = Some(BusyPolicy::FallbackCpu);
    assert_eq!(not_acquired(a.acquire(fallback, 0).unwrap()), (Status::FallbackCpu, Reason::ServiceUnavailable));
    assert_eq!(a.take_demands(), ["NMT"]);
    a.fail_task_type("NMT", 50 * MS, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].outcome, Outcome::NotAcquired { status: Status::Skipped, reason: Reason::ServiceUnavailable });
    assert_eq!(a.waiter_count(), 0);
    // Still on standby: the next request asks again, and times out after wait + allowance.
    let _w = queued(a.acquire(req("NMT"), 100 * MS).unwrap());
    assert_eq!(a.take_demands(), ["NMT"]);
    out.clear();
    a.tick(1_099 * MS, &mut out);
    assert!(out.is_empty());
    a.tick(1_200 * MS, &mut out);
    assert_eq!(out[0].outcome, Outcome::NotAcquired { status: Status::Skipped, reason: Reason::ServiceUnavailable });
}

#[test]
fn a_waiter_waits_for_a_start_on_its_way_however_long_and_then_its_own_wait() {
    let mut a = arbiter(json!({"policies": {"NMT": {"maxWaitMs": 100}}}));
    let mut out = vec![];
    // Unloaded, allowance 1 s: a request no start is on its way for waits 100 ms + 1 s.
    a.set_task_standby("NMT", Some(1_000 * MS), 0, &mut out);
    let first = queued(a.acquire(req("NMT"), 0).unwrap());
    assert_eq!(a.take_demands(), ["NMT"]);
    // The start begins (evicting, then loading): nothing times out while it is on its way, far
    // past wait + allowance (the learned load time is a median; a slower load must not fail).
    a.set_task_starting("NMT");
    let second = queued(a.acquire(req("NMT"), 50 * MS).unwrap());
    let mut zero_wait = req("NMT");
    zero_wait.max_wait_ms = Some(0);
    let third = queued(a.acquire(zero_wait, 60 * MS).unwrap());
    for t in (1..=30).map(|s| s * 1_000 * MS) {
        a.tick(t, &mut out);
        assert!(out.is_empty(), "settled at {t}: {out:?}");
    }
    // Ready: granted in queue order (one slot), the rest wait their own maxWaitMs from now.
    a.set_task_standby("NMT", None, 30_500 * MS, &mut out);
    assert_eq!(out.iter().map(|r| r.waiter).collect::<Vec<_>>(), [first]);
    assert!(matches!(out[0].outcome, Outcome::Acquired(_)));
    out.clear();
    a.tick(30_599 * MS, &mut out);
    assert_eq!(out.iter().map(|r| r.waiter).collect::<Vec<_>>(), [third], "no wait of its own left");
    assert_eq!(out[0].outcome, Outcome::NotAcquired { status: Status::Skipped, reason: Reason::Timeout });
    out.clear();
    a.tick(30_600 * MS, &mut out);
    assert_eq!(out.iter().map(|r| r.waiter).collect::<Vec<_>>(), [second]);
    assert_eq!(
        out[0].outcome,
        Outcome::NotAcquired { status: Status::Skipped, reason: Reason::Timeout },
        "slow after the load is the GPU's business, never SERVICE_UNAVAILABLE"
    );
}

#[test]
fn a_start_that_fails_settles_what_waited_for_it_service_unavailable() {
    let mut a = arbiter(json!({"policies": {"NMT": {"maxWaitMs": 100}}}));
    let mut out = vec![];
    a.set_task_standby("NMT", Some(1_000 * MS), 0, &mut out);
    a.set_task_starting("NMT");
    let w = queued(a.acquire(req("NMT"), 0).unwrap());
    a.tick(5_000 * MS, &mut out);
    assert!(out.is_empty());
    // The supervisor gives up (readiness timeout, VRAM timeout): back to unloaded, then failed.
    a.set_task_standby("NMT", Some(1_000 * MS), 6_000 * MS, &mut out);
    a.fail_task_type("NMT", 6_000 * MS, &mut out);
    assert_eq!(out.iter().map(|r| r.waiter).collect::<Vec<_>>(), [w]);
    assert_eq!(out[0].outcome, Outcome::NotAcquired { status: Status::Skipped, reason: Reason::ServiceUnavailable });
}

#[test]
fn stats_follow_each_gpu_and_task_type_however_the_name_arrives() {
    let mut a = arbiter(json!({"gpuKeys": ["gpu:0", "gpu:1"], "maxConcurrentLeases": 4}));
    let mut out = vec![];
    let shared: TaskType = "ASR".into();
    let on = |task: TaskType, gpu: &str| {
        let mut r = AcquireRequest::of(task, Trace::default());
        r.gpu_key = Some(gpu.into());
        r
    };
    // The shared name, a fresh copy of it, another type between them, and another GPU.
    let first = granted(a.acquire(on(shared.clone(), "gpu:0"), 0).unwrap()).lease_id;
    let nmt = granted(a.acquire(on("NMT".into(), "gpu:0"), 0).unwrap()).lease_id;
    let copy = granted(a.acquire(on("ASR".into(), "gpu:0"), 0).unwrap()).lease_id;
    let other_gpu = granted(a.acquire(on(shared.clone(), "gpu:1"), 0).unwrap()).lease_id;
    // Held exactly 1 ms (the first bucket's bound) and 1 µs longer (the next bucket).
    assert!(a.release(first, MS, &mut out));
    assert!(a.release(copy, MS + 1, &mut out));
    assert!(a.release(nmt, 7 * MS, &mut out));
    assert!(a.release(other_gpu, 100 * MS, &mut out));
    // Reordered GPU keys: a lease keeps counting where its GPU's key counts.
    a.set_config(
        ArbiterConfig::from_json(&json!({"gpuKeys": ["gpu:1", "gpu:0"], "maxConcurrentLeases": 4}), &mut vec![])
            .unwrap(),
        200 * MS,
        &mut out,
    )
    .unwrap();
    let after = granted(a.acquire(on(shared.clone(), "gpu:0"), 200 * MS).unwrap()).lease_id;
    assert!(a.release(after, 260 * MS, &mut out));

    let tasks = a.snapshot("gpu:0", 300 * MS).unwrap().tasks;
    let counts: Vec<(&str, u64)> = tasks.iter().map(|t| (t.task_type.as_str(), t.acquired)).collect();
    assert_eq!(counts, [("ASR", 3), ("NMT", 1)]);
    assert_eq!(a.snapshot("gpu:1", 300 * MS).unwrap().tasks[0].acquired, 1);
    let text = a.metrics();
    let hold = |labels: &str, le: &str| {
        let line = format!("gpu_arbiter_hold_ms_bucket{{{labels},le=\"{le}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .unwrap_or_else(|| panic!("{line} in {text}"))
            .to_string()
    };
    let asr0 = "gpu=\"gpu:0\",task_type=\"ASR\"";
    assert_eq!((hold(asr0, "1"), hold(asr0, "5"), hold(asr0, "100")), ("1".into(), "2".into(), "3".into()));
    assert_eq!(hold("gpu=\"gpu:1\",task_type=\"ASR\"", "50"), "0");
    assert_eq!(hold("gpu=\"gpu:1\",task_type=\"ASR\"", "100"), "1");
    assert!(
        text.contains("gpu_arbiter_acquire_total{gpu=\"gpu:0\",task_type=\"ASR\",status=\"ACQUIRED\"} 3\n"),
        "{text}"
    );
    assert!(!text.contains("status=\"SKIPPED\""), "only outcomes that happened are listed: {text}");
}

#[test]
fn a_blank_task_type_is_refused_however_it_starts() {
    let mut a = arbiter(json!({}));
    for blank in ["", " ", "\t\n", "\u{3000}"] {
        let e = a.acquire(req(blank), 0).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument, "{blank:?}");
    }
    for named in ["ASR", " ASR", "\u{3000}ASR", "é"] {
        assert!(a.acquire(req(named), 0).is_ok(), "{named:?}");
    }
}

#[test]
fn a_trace_goes_with_its_request_through_the_queue_to_its_lease_and_its_release() {
    let mut a = arbiter(json!({"maxConcurrentLeases": 1}));
    let mut out = vec![];
    let first = granted(a.acquire(req("ASR"), 0).unwrap()).lease_id;
    let mut traced = req("ASR");
    traced.trace = Trace { stage: Some("asr".into()), ..Trace::default() };
    let waiter = queued(a.acquire(traced, MS).unwrap());
    assert_eq!(a.snapshot("gpu:0", MS).unwrap().queue[0].trace.stage.as_deref(), Some("asr"));
    a.take_events();
    assert!(a.release(first, 2 * MS, &mut out));
    assert!(a.release(waiter, 3 * MS, &mut out));
    let traces: Vec<(EventKind, Option<Trace>)> = a.take_events().into_iter().map(|e| (e.kind, e.trace)).collect();
    let asr = Trace { stage: Some("asr".into()), ..Trace::default() };
    assert_eq!(
        traces,
        [
            (EventKind::Released, Some(Trace::default())),
            (EventKind::Acquired, Some(asr.clone())),
            (EventKind::Released, Some(asr)),
        ],
        "an untraced lease shows an empty trace, a traced one its own"
    );
}
