//! Per-user freshness: when a session for user U passes through, every answer that contains U
//! and was fetched before that moment is stale (the session may have changed U's
//! `displayName`, and user edits do not move `lastCachePurge`).
//!
//! A fixed table of slots holds, per hash of a user id, the time of the latest session for any
//! user in that slot. Memory does not grow with the number of users, nothing is ever evicted
//! (an evicted mark would let a stale answer through), and users that share a slot only cost
//! each other extra misses, never a stale hit. The hash is keyed per process, so slot sharing
//! cannot be aimed at a chosen user.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicI64, Ordering};

#[derive(Debug)]
pub struct UserMarks {
    slots: Box<[AtomicI64]>,
    mask: u64,
    hasher: std::collections::hash_map::RandomState,
}

/// A user id, hashed with the table's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserHash(u64);

impl UserMarks {
    /// `slots` must be a power of two (the config rounds it up).
    pub fn new(slots: usize) -> Self {
        let slots = slots.max(1).next_power_of_two();
        Self {
            slots: (0..slots).map(|_| AtomicI64::new(i64::MIN)).collect(),
            mask: (slots as u64) - 1,
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    pub fn hash(&self, user_id: &str) -> UserHash {
        UserHash(self.hasher.hash_one(user_id))
    }

    fn slot(&self, h: UserHash) -> Option<&AtomicI64> {
        self.slots
            .get(usize::try_from(h.0 & self.mask).unwrap_or(0))
    }

    /// Answers containing `user` fetched before `at_us` are stale from now on.
    pub fn mark(&self, user: UserHash, at_us: i64) {
        if let Some(s) = self.slot(user) {
            s.fetch_max(at_us, Ordering::AcqRel);
        }
    }

    /// Whether an answer containing `users`, fetched at `fetched_us`, is stale.
    pub fn stale(&self, users: &[UserHash], fetched_us: i64) -> bool {
        users.iter().any(|&u| {
            self.slot(u)
                .is_some_and(|s| fetched_us < s.load(Ordering::Acquire))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_makes_earlier_answers_stale_and_later_ones_fresh() {
        let m = UserMarks::new(1024);
        let (u, v) = (m.hash("u"), m.hash("v"));
        assert!(!m.stale(&[u], 10));
        m.mark(u, 100);
        assert!(m.stale(&[u], 99));
        assert!(m.stale(&[v, u], 99), "any user of a list answer");
        assert!(!m.stale(&[u], 100));
        m.mark(u, 50);
        assert!(m.stale(&[u], 99), "marks never move back");
    }

    #[test]
    fn a_shared_slot_only_over_invalidates() {
        let m = UserMarks::new(1);
        let (u, v) = (m.hash("u"), m.hash("v"));
        m.mark(u, 100);
        assert!(m.stale(&[v], 99), "one slot: v's answers go too");
        assert!(!m.stale(&[v], 100));
    }
}
