//! Per-user freshness: when a session for user U passes through, every answer that contains U
//! and was fetched before that moment is stale (the session may have changed U's
//! `displayName`, and user edits do not move `lastCachePurge`).
//!
//! A fixed table of slots holds, per hash of a user id, the time of the latest session for any
//! user in that slot. Memory does not grow with the number of users, nothing is ever evicted
//! (an evicted mark would let a stale answer through), and users that share a slot only cost
//! each other extra misses, never a stale hit. The hash is keyed per process, so slot sharing
//! cannot be aimed at a chosen user; except with `[cache.shared]`, where every replica must
//! hash a user alike to apply the others' facts (see [`UserMarks::replicated`]).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicI64, Ordering};

#[derive(Debug)]
pub struct UserMarks {
    slots: Box<[AtomicI64]>,
    mask: u64,
    keying: Keying,
}

#[derive(Debug)]
enum Keying {
    Process(std::collections::hash_map::RandomState),
    /// The same hash in every process (`cache::shared`).
    Replicas,
}

/// A user id, hashed with the table's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserHash(u64);

impl UserHash {
    /// The hash itself, for sharing it with other replicas (see `cache::shared`).
    pub fn to_bits(self) -> u64 {
        self.0
    }

    pub fn from_bits(bits: u64) -> Self {
        Self(bits)
    }
}

impl UserMarks {
    /// `slots` must be a power of two (the config rounds it up).
    pub fn new(slots: usize) -> Self {
        Self::keyed(slots, Keying::Process(Default::default()))
    }

    /// A table whose users hash alike in every process, so that a user named by another
    /// replica's fact lands in the same slot here. A slot can then be aimed at a chosen user,
    /// which costs that user extra misses or forwarded lookups, never a stale hit.
    pub fn replicated(slots: usize) -> Self {
        Self::keyed(slots, Keying::Replicas)
    }

    fn keyed(slots: usize, keying: Keying) -> Self {
        let slots = slots.max(1).next_power_of_two();
        Self {
            slots: (0..slots).map(|_| AtomicI64::new(i64::MIN)).collect(),
            mask: (slots as u64) - 1,
            keying,
        }
    }

    pub fn hash(&self, user_id: &str) -> UserHash {
        UserHash(match &self.keying {
            Keying::Process(h) => h.hash_one(user_id),
            Keying::Replicas => super::shared::stable_hash(b"amity-gateway user\0", user_id),
        })
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

    #[test]
    fn replicated_tables_hash_users_alike() {
        let (a, b) = (UserMarks::replicated(64), UserMarks::replicated(64));
        assert_eq!(a.hash("u"), b.hash("u"));
        assert_ne!(a.hash("u"), a.hash("v"));
        b.mark(a.hash("u"), 100);
        assert!(b.stale(&[b.hash("u")], 99));
    }
}
