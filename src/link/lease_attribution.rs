//! An arbiter's grants, releases and watchdog revokes as the supervisor needs them to attribute
//! leases to the services that serve their task types: typed, from the core's events, with no
//! trip through the JSON JS listeners get.

use crate::arbiter::{lease_id_text, ArbiterEvent, EventKind};
use crate::services::LeaseChange;

use super::attachments::Attachments;

/// The lease change an arbiter event stands for, if any.
pub fn lease_change(event: &ArbiterEvent) -> Option<LeaseChange> {
    let lease_id = lease_id_text(event.lease_id?);
    let gpu_key = event.gpu_key.clone().unwrap_or_default();
    match (event.kind, event.detail.as_deref()) {
        (EventKind::Acquired, _) => {
            Some(LeaseChange::Acquired { lease_id, task_type: event.task_type.clone()?, gpu_key })
        }
        (EventKind::Released, _) => Some(LeaseChange::Released { lease_id }),
        (EventKind::Watchdog, Some("revoke")) => {
            Some(LeaseChange::Revoked { lease_id, task_type: event.task_type.clone()?, gpu_key })
        }
        _ => None,
    }
}

/// Who hears lease changes: each attached supervisor, by the id its detach function holds.
/// A change comes with its time, epoch ms.
pub type LeaseSink = Box<dyn Fn(LeaseChange, u64)>;

#[derive(Default)]
pub struct LeaseSinks {
    sinks: Attachments<LeaseSink>,
}

impl LeaseSinks {
    pub fn add(&mut self, sink: LeaseSink) -> u64 {
        self.sinks.add(sink)
    }

    pub fn remove(&mut self, id: u64) {
        self.sinks.remove(id);
    }

    pub fn clear(&mut self) {
        self.sinks.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// Tells every sink the change `event` stands for, if any.
    pub fn tell(&self, event: &ArbiterEvent, at_epoch_ms: u64) {
        if self.sinks.is_empty() {
            return;
        }
        if let Some(change) = lease_change(event) {
            for sink in self.sinks.iter() {
                sink(change.clone(), at_epoch_ms);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    fn event(kind: EventKind, lease: Option<u64>, detail: Option<&str>) -> ArbiterEvent {
        let mut e = ArbiterEvent::new(kind, 0);
        e.lease_id = lease;
        e.gpu_key = Some("gpu:0".into());
        e.task_type = Some("ASR".into());
        e.detail = detail.map(String::from);
        e
    }

    #[test]
    fn grants_releases_and_revokes_are_lease_changes_and_nothing_else_is() {
        assert_eq!(
            lease_change(&event(EventKind::Acquired, Some(7), None)),
            Some(LeaseChange::Acquired {
                lease_id: "lease-7".into(),
                task_type: "ASR".into(),
                gpu_key: "gpu:0".into()
            })
        );
        assert_eq!(
            lease_change(&event(EventKind::Released, Some(7), None)),
            Some(LeaseChange::Released { lease_id: "lease-7".into() })
        );
        assert_eq!(
            lease_change(&event(EventKind::Watchdog, Some(7), Some("revoke"))),
            Some(LeaseChange::Revoked { lease_id: "lease-7".into(), task_type: "ASR".into(), gpu_key: "gpu:0".into() })
        );
        assert_eq!(lease_change(&event(EventKind::Watchdog, Some(7), Some("warn"))), None, "a warning keeps the lease");
        assert_eq!(lease_change(&event(EventKind::Queued, Some(7), None)), None);
        assert_eq!(lease_change(&event(EventKind::Acquired, None, None)), None);
    }

    #[test]
    fn every_attached_sink_hears_each_change_until_removed() {
        let heard = Rc::new(RefCell::new(Vec::new()));
        let mut sinks = LeaseSinks::default();
        let ids: Vec<u64> = (0..2)
            .map(|n| {
                let heard = heard.clone();
                sinks.add(Box::new(move |change, at| heard.borrow_mut().push((n, change, at))))
            })
            .collect();
        sinks.tell(&event(EventKind::Released, Some(1), None), 99);
        sinks.remove(ids[0]);
        sinks.tell(&event(EventKind::Released, Some(2), None), 100);
        let released = |id: &str| LeaseChange::Released { lease_id: id.into() };
        assert_eq!(
            *heard.borrow(),
            [(0, released("lease-1"), 99), (1, released("lease-1"), 99), (1, released("lease-2"), 100)]
        );
    }
}
