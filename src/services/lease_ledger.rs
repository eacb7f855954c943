//! The arbiter's leases, attributed to the services that serve their task types (`gpu.taskTypes`),
//! and the hang rule: `hangAfterRevokes` watchdog revokes within `hangWindowMs` declare a service
//! hung (seed 002: a hung ASR worker holds its leases until the watchdog takes them back).
//! Pure: times are passed in.

use std::collections::{BTreeMap, VecDeque};

use schemars::JsonSchema;
use serde::{Serialize, Serializer};

/// A lease of one of the service's `gpu.taskTypes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "ServiceLease")]
pub struct AttributedLease {
    pub lease_id: String,
    pub task_type: String,
    /// Epoch ms.
    #[serde(rename = "acquiredAt")]
    pub acquired_at_ms: u64,
}

/// The service's leases in the attached arbiter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceLeases {
    /// The leases it holds now, by lease id (JS gets them as a list).
    #[serde(serialize_with = "serialize_values")]
    #[schemars(with = "Vec<AttributedLease>")]
    pub active: BTreeMap<String, AttributedLease>,
    /// Revoked by the arbiter's hold watchdog, since the supervisor was made.
    pub watchdog_revokes: u64,
    pub last_grant: Option<AttributedLease>,
    /// Time (ms) and lease id of the revokes that still count toward a hang.
    #[serde(skip)]
    recent_revokes: VecDeque<(u64, String)>,
}

fn serialize_values<S: Serializer>(map: &BTreeMap<String, AttributedLease>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(map.values())
}

impl ServiceLeases {
    pub fn acquired(&mut self, lease: AttributedLease) {
        self.last_grant = Some(lease.clone());
        self.active.insert(lease.lease_id.clone(), lease);
    }

    /// A release (or a lease dropped for another reason); `false` for a lease not held here.
    pub fn released(&mut self, lease_id: &str) -> bool {
        self.active.remove(lease_id).is_some()
    }

    /// Records a watchdog revoke at `now_ms`. Returns the ids of the revoked leases in the window
    /// when they reach `threshold`: the service is hung, and those revokes are used up.
    pub fn revoked(&mut self, lease_id: &str, now_ms: u64, threshold: u32, window_ms: u64) -> Option<Vec<String>> {
        self.active.remove(lease_id);
        self.watchdog_revokes += 1;
        self.recent_revokes.push_back((now_ms, lease_id.to_string()));
        let since = now_ms.saturating_sub(window_ms);
        while self.recent_revokes.front().is_some_and(|(at, _)| *at < since) {
            self.recent_revokes.pop_front();
        }
        (self.recent_revokes.len() as u32 >= threshold)
            .then(|| self.recent_revokes.drain(..).map(|(_, id)| id).collect())
    }

    /// A new process serves the task types: old revokes no longer say anything about it.
    pub fn forget_revokes(&mut self) {
        self.recent_revokes.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(id: &str, at: u64) -> AttributedLease {
        AttributedLease { lease_id: id.into(), task_type: "ASR".into(), acquired_at_ms: at }
    }

    #[test]
    fn grants_and_releases_are_tracked() {
        let mut s = ServiceLeases::default();
        s.acquired(lease("a", 1));
        s.acquired(lease("b", 2));
        assert_eq!(s.active.len(), 2);
        assert!(s.released("a"));
        assert!(!s.released("a"));
        assert_eq!(s.last_grant.as_ref().map(|l| l.lease_id.as_str()), Some("b"));
    }

    #[test]
    fn two_revokes_within_the_window_are_a_hang_and_are_used_up() {
        let mut s = ServiceLeases::default();
        s.acquired(lease("a", 0));
        s.acquired(lease("b", 0));
        assert_eq!(s.revoked("a", 1_000, 2, 60_000), None);
        assert_eq!(s.revoked("b", 2_000, 2, 60_000), Some(vec!["a".to_string(), "b".to_string()]));
        assert!(s.active.is_empty());
        assert_eq!(s.watchdog_revokes, 2);
        // Used up: one more revoke alone is not a new hang.
        assert_eq!(s.revoked("c", 3_000, 2, 60_000), None);
    }

    #[test]
    fn revokes_further_apart_than_the_window_are_not_a_hang() {
        let mut s = ServiceLeases::default();
        assert_eq!(s.revoked("a", 0, 2, 10_000), None);
        assert_eq!(s.revoked("b", 10_001, 2, 10_000), None);
        assert_eq!(s.revoked("c", 20_000, 2, 10_000), Some(vec!["b".to_string(), "c".to_string()]));
        s.forget_revokes();
        assert_eq!(s.revoked("d", 20_001, 2, 10_000), None);
    }
}
