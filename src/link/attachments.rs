//! Things attached under the id their detach function holds: JS listeners, arbiters attached to
//! a Telemetry, supervisors' lease sinks. An id is never reused, so a stale detach function
//! removes nothing.

pub struct Attachments<T> {
    next_id: u64,
    entries: Vec<(u64, T)>,
}

impl<T> Default for Attachments<T> {
    fn default() -> Self {
        Self { next_id: 0, entries: Vec::new() }
    }
}

impl<T> Attachments<T> {
    /// Keeps `item`, last in order; returns its id.
    pub fn add(&mut self, item: T) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.entries.push((id, item));
        id
    }

    pub fn remove(&mut self, id: u64) -> Option<T> {
        let at = self.entries.iter().position(|(i, _)| *i == id)?;
        Some(self.entries.remove(at).1)
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The items in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|(_, item)| item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_never_reused_so_a_stale_detach_removes_nothing() {
        let mut a = Attachments::default();
        let first = a.add("a");
        let second = a.add("b");
        assert_eq!(a.remove(first), Some("a"));
        let third = a.add("c");
        assert_ne!(third, first);
        assert_eq!(a.remove(first), None, "detached twice");
        assert_eq!(a.iter().copied().collect::<Vec<_>>(), ["b", "c"]);
        a.remove(second);
        a.remove(third);
        assert!(a.is_empty());
    }
}
