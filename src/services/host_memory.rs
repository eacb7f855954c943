//! Host memory managed like VRAM (seed 004: 100 workers of ~250 MB started at once drove a
//! machine into swap for 40 hours). The decisions live here, free of Node and of the supervisor's
//! state: the budget arithmetic a start is gated on, the answer `hostBudget` gives a worker pool,
//! and the resident memory of a service's whole process tree, from which its peak is learned.

/// The host's memory as of one telemetry sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostMemReading {
    /// Memory available for new work (MB): what the kernel could hand out without swapping.
    pub available_mb: u64,
    pub total_mb: u64,
    /// Whether the telemetry's `SWAP_ACTIVE` alert is raised: no new start begins meanwhile.
    pub swap_active: bool,
    /// When the sample was taken (ms since the Unix epoch): memory a load allocated after it is
    /// not in `available_mb` yet.
    pub sampled_at_ms: u64,
}

/// Live host memory readings (the binding backs it with the attached Telemetry). `None`: no
/// reading, so the host-memory gate is off.
pub trait HostMemorySource: Send + Sync {
    fn host_memory(&self) -> Option<HostMemReading>;
    /// Whether a reading is on its way (an attached Telemetry has not sampled yet): the gate
    /// waits for it rather than turning off.
    fn first_reading_pending(&self) -> bool {
        false
    }
}

/// What the host can take on now, and the figures behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(inline)]
pub struct HostBudget {
    /// The attached Telemetry's latest `host.availableMb`.
    pub available_mb: u64,
    /// `hostMemHeadroomMb`: kept free whatever starts.
    pub headroom_mb: u64,
    /// What the services loading are still expected to take, not in the reading yet.
    pub in_flight_mb: u64,
    /// `availableMb - headroomMb - inFlightMb`, never negative.
    pub budget_mb: u64,
    /// The Telemetry's SWAP_ACTIVE alert is raised: no service start begins, and `workers` is 0.
    pub swap_active: bool,
    /// When the reading was taken (epoch ms).
    #[serde(rename = "sampledAt")]
    pub sampled_at_ms: u64,
}

/// What `ServiceSupervisor#hostBudget(perWorkerMb?)` returns: the budget, and how many more
/// workers of a size fit.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "HostBudget")]
pub struct HostBudgetAnswer {
    #[serde(flatten)]
    pub budget: HostBudget,
    /// The size asked about, or `null`.
    pub per_worker_mb: Option<f64>,
    /// How many more workers of `perWorkerMb` fit now: `floor(budgetMb / perWorkerMb)`, 0 while
    /// swapping; `null` without `perWorkerMb`.
    pub workers: Option<u64>,
}

impl HostBudget {
    /// The budget from a reading, the headroom and the loads on their way.
    pub fn new(reading: HostMemReading, headroom_mb: u64, in_flight_mb: u64) -> Self {
        Self {
            available_mb: reading.available_mb,
            headroom_mb,
            in_flight_mb,
            budget_mb: reading.available_mb.saturating_sub(headroom_mb).saturating_sub(in_flight_mb),
            swap_active: reading.swap_active,
            sampled_at_ms: reading.sampled_at_ms,
        }
    }

    /// Whether a start that needs `need_mb` (`None`: no estimate) may begin now. While swap is
    /// active nothing begins; without an estimate only the swap stop applies.
    pub fn admits(&self, need_mb: Option<u64>) -> Admission {
        if self.swap_active {
            Admission::WaitSwap
        } else if need_mb.is_some_and(|need| need > self.budget_mb) {
            Admission::WaitMemory
        } else {
            Admission::Go
        }
    }

    /// [`Self::workers`] for a size given by a caller: `INVALID_ARGUMENT` unless it is a number
    /// above 0.
    pub fn workers_checked(&self, per_worker_mb: f64) -> crate::error::SidecarResult<u64> {
        if !(per_worker_mb.is_finite() && per_worker_mb > 0.0) {
            return Err(crate::error::SidecarError::invalid_argument(format!(
                "perWorkerMb: expected a number > 0, got {per_worker_mb}"
            )));
        }
        Ok(self.workers(per_worker_mb))
    }

    /// The answer to a worker pool that asks about workers of `per_worker_mb` (or about nothing):
    /// `INVALID_ARGUMENT` for a size that is not a number above 0.
    pub fn answer(&self, per_worker_mb: Option<f64>) -> crate::error::SidecarResult<HostBudgetAnswer> {
        let workers = per_worker_mb.map(|mb| self.workers_checked(mb)).transpose()?;
        Ok(HostBudgetAnswer { budget: *self, per_worker_mb, workers })
    }

    /// `hostBudget`'s argument as JSON (`None`: absent or null); `INVALID_ARGUMENT` for a
    /// non-number (its size is checked by [`HostBudget::answer`]).
    pub fn per_worker_arg(value: Option<&serde_json::Value>) -> crate::error::SidecarResult<Option<f64>> {
        match value {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::Number(n)) => Ok(n.as_f64()),
            Some(other) => Err(crate::error::SidecarError::invalid_argument(format!(
                "perWorkerMb: expected a number, got {other}"
            ))),
        }
    }

    /// How many more workers of `per_worker_mb` fit now: none while swap is active.
    pub fn workers(&self, per_worker_mb: f64) -> u64 {
        if self.swap_active || !(per_worker_mb.is_finite() && per_worker_mb > 0.0) {
            return 0;
        }
        (self.budget_mb as f64 / per_worker_mb).floor() as u64
    }
}

/// What the gate does with one start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Go,
    /// Not enough memory in the budget.
    WaitMemory,
    /// The host is swapping.
    WaitSwap,
}

/// What a load on its way is still expected to take from the host: all of `expected_mb` if the
/// reading was taken before its spawn (or it is not spawned yet), else what its process tree has
/// not allocated yet (`rss_now_mb`), since the reading shows at least what it held by then.
pub fn still_to_come_mb(expected_mb: u64, spawned_at_ms: Option<u64>, reading_at_ms: u64, rss_now_mb: u64) -> u64 {
    match spawned_at_ms {
        Some(at) if at < reading_at_ms => expected_mb.saturating_sub(rss_now_mb),
        _ => expected_mb,
    }
}

/// The resident memory (MB) of `root` and every process below it, walked down from it (a
/// worker that left the service's process group is still its descendant: see `descendants`).
/// `None` once `root` is gone, and where `/proc` is not there to read.
pub fn tree_rss_mb(root: u32) -> Option<u64> {
    use super::descendants::{tree_rss_kb, walk, Procfs};
    let (root, below) = walk(&Procfs, root, true)?;
    Some(tree_rss_kb(&root, &below) / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(available_mb: u64, swap_active: bool) -> HostMemReading {
        HostMemReading { available_mb, total_mb: 32_000, swap_active, sampled_at_ms: 1_000 }
    }

    #[test]
    fn the_per_worker_argument_is_a_number_or_nothing() {
        use serde_json::json;
        assert_eq!(HostBudget::per_worker_arg(None).unwrap(), None);
        assert_eq!(HostBudget::per_worker_arg(Some(&json!(null))).unwrap(), None);
        assert_eq!(HostBudget::per_worker_arg(Some(&json!(250))).unwrap(), Some(250.0));
        let e = HostBudget::per_worker_arg(Some(&json!("250"))).unwrap_err();
        assert_eq!(e.message, "perWorkerMb: expected a number, got \"250\"");
    }

    #[test]
    fn the_budget_is_available_less_headroom_less_loads_on_their_way() {
        let b = HostBudget::new(reading(16_000, false), 1_000, 2_500);
        assert_eq!(b.budget_mb, 12_500);
        assert_eq!(b.admits(Some(12_500)), Admission::Go);
        assert_eq!(b.admits(Some(12_501)), Admission::WaitMemory);
        assert_eq!(b.admits(None), Admission::Go);
        // Seed 004: 250 MB workers into that budget.
        assert_eq!(b.workers(250.0), 50);
        assert_eq!(b.workers(0.0), 0);
        assert_eq!(b.workers(f64::NAN), 0);
        assert_eq!(b.workers_checked(250.0), Ok(50));
        assert_eq!(b.workers_checked(-1.0).unwrap_err().message, "perWorkerMb: expected a number > 0, got -1");
        // Never negative.
        let b = HostBudget::new(reading(900, false), 1_000, 2_500);
        assert_eq!((b.budget_mb, b.workers(1.0)), (0, 0));
        assert_eq!(b.admits(Some(1)), Admission::WaitMemory);
        assert_eq!(b.admits(Some(0)), Admission::Go);
    }

    #[test]
    fn while_swap_is_active_nothing_begins() {
        let b = HostBudget::new(reading(16_000, true), 0, 0);
        assert_eq!(b.admits(Some(1)), Admission::WaitSwap);
        assert_eq!(b.admits(None), Admission::WaitSwap);
        assert_eq!(b.workers(250.0), 0);
    }

    #[test]
    fn a_load_spawned_before_the_reading_counts_only_what_it_has_not_allocated_yet() {
        // Not spawned yet, or spawned at or after the reading: all of it.
        assert_eq!(still_to_come_mb(600, None, 1_000, 0), 600);
        assert_eq!(still_to_come_mb(600, Some(1_000), 1_000, 400), 600);
        // Spawned before: the reading shows what it held then.
        assert_eq!(still_to_come_mb(600, Some(999), 1_000, 400), 200);
        assert_eq!(still_to_come_mb(600, Some(10), 1_000, 700), 0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_tree_rss_counts_the_children() {
        let me = std::process::id();
        let mine = tree_rss_mb(me).unwrap();
        assert!(mine > 0);
        assert_eq!(tree_rss_mb(u32::MAX - 1), None);
        // A child that holds 64 MB shows up in its parent's tree.
        let mut child = std::process::Command::new("python3")
            .args(["-c", "import sys,time\nb=bytearray(64<<20)\nfor i in range(0,len(b),4096): b[i]=1\nprint('ok',flush=True)\ntime.sleep(30)"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        let own = tree_rss_mb(child.id()).unwrap();
        assert!((64..64 + 40).contains(&own), "{own}");
        assert!(tree_rss_mb(me).unwrap() >= own, "the parent's tree includes the child");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
