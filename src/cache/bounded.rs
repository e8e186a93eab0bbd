//! The token registry's maps: small `Copy` records under a fixed bound on their number, each
//! expiring at its own date, kept in a fraction of the memory a general cache spends on them.
//!
//! moka, which holds the answers, spent about 270 bytes on each token record, device record
//! and tombstone (its nodes, deques and timer wheel around the key and value): the default
//! 100,000 tokens took the gateway from 17 to 125 MiB under a flood of devices. Here an entry
//! is its key and value in a hash table slot.
//!
//! A map is split into shards by the key's hash, each one lock over two generations: entries
//! go into the young one; when it holds its share, the old generation is dropped whole and the
//! young one takes its place. A read that finds an entry in the old generation moves it to the
//! young one, so what is used survives and what is not goes a generation later (a coarse LRU,
//! as good as the bound needs). A shard holds at most two shares, so the map holds no more
//! than its bound (`max`, or two when `max` is below two); the emptied old table becomes the
//! new young one, so a full map turns generations without allocating. An expired record reads
//! as absent and is dropped where it is found.
//!
//! Each shard remembers when it last lost records other than by [`Bounded::remove`] (a
//! generation dropped, an expired record, [`Bounded::clear`]): [`Bounded::update`] reports it,
//! so that a caller can tell "never had a record" from "may have forgotten one".

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::watermark::now_us;

/// A record that stops counting at a date (wall clock, µs since the epoch).
pub trait Expires {
    fn expires_us(&self) -> i64;
}

/// Shards of a map bounded to at least this many entries per shard; small maps have one.
const MIN_SHARD: usize = 1024;
const MAX_SHARDS: usize = 32;

pub struct Bounded<K, V> {
    shards: Box<[Mutex<Shard<K, V>>]>,
    hasher: ahash::RandomState,
    /// Entries a generation of one shard takes before it turns old.
    share: usize,
}

struct Shard<K, V> {
    young: HashMap<K, V, ahash::RandomState>,
    old: HashMap<K, V, ahash::RandomState>,
    /// When this shard last lost records other than by removal (wall clock, µs).
    lost_us: i64,
}

/// What [`Bounded::update`] found for a key.
#[derive(Debug, Clone, Copy)]
pub struct Found<V> {
    /// The key's record, as [`Bounded::get`] reads it.
    pub record: Option<V>,
    /// When the key's shard last lost records (a dropped generation, an expired record, a
    /// clear), wall clock µs; `i64::MIN` if never. Without a record, the key may have had one
    /// until then.
    pub lost_us: i64,
}

impl<K: Hash + Eq + Copy, V: Copy + Expires> Bounded<K, V> {
    /// A map of at most `max` entries (at least two).
    pub fn new(max: usize) -> Self {
        let max = max.max(2);
        let shards = (max / MIN_SHARD).clamp(1, MAX_SHARDS);
        let share = (max / (2 * shards)).max(1);
        let hasher = ahash::RandomState::new();
        let shards = (0..shards)
            .map(|_| {
                Mutex::new(Shard {
                    young: HashMap::with_hasher(hasher.clone()),
                    old: HashMap::with_hasher(hasher.clone()),
                    lost_us: i64::MIN,
                })
            })
            .collect();
        Self {
            shards,
            hasher,
            share,
        }
    }

    fn shard(&self, k: &K) -> MutexGuard<'_, Shard<K, V>> {
        // Bits the tables inside do not use: they place by the low bits and tag by the top 7.
        let i = (self.hasher.hash_one(k) >> 32) as usize % self.shards.len();
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The record of `k`, if it has one not expired at `now_us`.
    pub fn get(&self, k: &K, now_us: i64) -> Option<V> {
        self.shard(k).get(k, now_us, self.share)
    }

    pub fn contains(&self, k: &K, now_us: i64) -> bool {
        self.get(k, now_us).is_some()
    }

    pub fn insert(&self, k: K, v: V) {
        self.shard(&k).put(k, v, self.share);
    }

    /// Inserts `make()` unless `k` has a record not expired at `now_us`.
    pub fn insert_if_absent(&self, k: K, now_us: i64, make: impl FnOnce() -> V) {
        let mut s = self.shard(&k);
        if s.get(&k, now_us, self.share).is_none() {
            s.put(k, make(), self.share);
        }
    }

    /// Reads and rewrites the record of `k` under the shard's lock, so that two updates of one
    /// key never interleave: `f` is given what is found and returns the record to store, if any
    /// (`None` leaves the map as it is), and its answer. `f` must not use this map: the lock
    /// is held.
    pub fn update<R>(&self, k: K, now_us: i64, f: impl FnOnce(Found<V>) -> (Option<V>, R)) -> R {
        let mut s = self.shard(&k);
        let record = s.get(&k, now_us, self.share);
        let (put, r) = f(Found {
            record,
            lost_us: s.lost_us,
        });
        if let Some(v) = put {
            s.put(k, v, self.share);
        }
        r
    }

    pub fn remove(&self, k: &K) {
        let mut s = self.shard(k);
        s.young.remove(k);
        s.old.remove(k);
    }

    pub fn clear(&self) {
        for s in self.shards.iter() {
            let mut s = s.lock().unwrap_or_else(PoisonError::into_inner);
            s.young = HashMap::with_hasher(self.hasher.clone());
            s.old = HashMap::with_hasher(self.hasher.clone());
            s.lost_us = s.lost_us.max(now_us());
        }
    }

    /// Entries held, expired ones not yet dropped included.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(PoisonError::into_inner);
                s.young.len() + s.old.len()
            })
            .sum()
    }
}

impl<K: Hash + Eq + Copy, V: Copy + Expires> Shard<K, V> {
    fn get(&mut self, k: &K, now_us: i64, share: usize) -> Option<V> {
        if let Some(v) = self.young.get(k).copied() {
            if v.expires_us() > now_us {
                return Some(v);
            }
            self.young.remove(k);
            self.lost_us = self.lost_us.max(now_us);
            return None;
        }
        let v = self.old.remove(k)?;
        if v.expires_us() <= now_us {
            self.lost_us = self.lost_us.max(now_us);
            return None;
        }
        self.put(*k, v, share);
        Some(v)
    }

    fn put(&mut self, k: K, v: V, share: usize) {
        self.old.remove(&k);
        if self.young.len() >= share && !self.young.contains_key(&k) {
            // The old table is emptied and reused as the young one: once both have grown to a
            // share, turning generations allocates nothing.
            if !self.old.is_empty() {
                self.old.clear();
                self.lost_us = self.lost_us.max(now_us());
            }
            std::mem::swap(&mut self.young, &mut self.old);
        }
        self.young.insert(k, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq)]
    struct Until(i64);

    impl Expires for Until {
        fn expires_us(&self) -> i64 {
            self.0
        }
    }

    const LATER: Until = Until(i64::MAX);

    impl<K: Hash + Eq, V> Bounded<K, V> {
        /// The most entries the map holds.
        fn bound(&self) -> usize {
            2 * self.share * self.shards.len()
        }

        /// Whether `k` is held, without the move to the young generation a read makes.
        fn holds(&self, k: &K) -> bool {
            self.shards.iter().any(|s| {
                let s = s.lock().unwrap();
                s.young.contains_key(k) || s.old.contains_key(k)
            })
        }
    }

    #[test]
    fn never_holds_more_than_its_bound() {
        for max in [1, 7, 1000, 5000, 100_000] {
            let m = Bounded::<u64, Until>::new(max);
            assert!(m.bound() <= max.max(2), "{max}: bound {}", m.bound());
            assert!(
                m.bound() * 2 >= max,
                "{max}: bound {} wastes half",
                m.bound()
            );
            for k in 0..(3 * max as u64) {
                m.insert(k, LATER);
                assert!(m.len() <= m.bound());
            }
            // The newest entries are there: the latest share of every shard at least.
            let kept = (3 * max as u64 - m.bound() as u64 / 2..3 * max as u64)
                .filter(|k| m.holds(k))
                .count();
            assert!(
                kept * 2 >= m.bound() / 2,
                "{max}: {kept} of the newest kept"
            );
        }
    }

    #[test]
    fn one_shard_keeps_exactly_its_newest_entries() {
        let m = Bounded::<u64, Until>::new(1000);
        assert_eq!(m.shards.len(), 1);
        for k in 0..5_000u64 {
            m.insert(k, LATER);
            // Re-inserting an entry of either generation adds nothing.
            m.insert(k / 2, LATER);
        }
        let held = (0..5_000u64).filter(|k| m.holds(k)).count();
        assert_eq!(held, m.len());
        // Everything of the latest share of insertions is there (two per round).
        assert!((5_000 - m.share as u64 / 2..5_000).all(|k| m.holds(&k)));
    }

    #[test]
    fn removal_and_expiry_reach_the_old_generation() {
        let m = Bounded::<u64, Until>::new(100);
        m.insert(1, LATER);
        m.insert(2, Until(10));
        for k in 100..150 {
            m.insert(k, LATER);
        }
        // 1 and 2 are old now.
        assert!(m.shards[0].lock().unwrap().old.contains_key(&1));
        m.remove(&1);
        assert!(!m.contains(&1, 0));
        assert_eq!(m.get(&2, 10), None);
        assert!(!m.shards[0].lock().unwrap().young.contains_key(&2));
        assert_eq!(m.len(), 50);
    }

    #[test]
    fn updates_are_told_when_the_shard_last_lost_records() {
        let m = Bounded::<u64, Until>::new(100);
        let lost = |m: &Bounded<u64, Until>| m.update(0, 0, |f| (None, f.lost_us));
        for k in 1..=50 {
            m.insert(k, LATER);
        }
        // The first turn of a generation loses nothing.
        m.insert(51, LATER);
        assert_eq!(lost(&m), i64::MIN);
        for k in 52..=101 {
            m.insert(k, LATER);
        }
        let before = now_us();
        assert!(lost(&m) > i64::MIN && lost(&m) <= before);
        // An expired record read counts as lost, at the time it was read.
        m.insert(7, Until(5));
        assert_eq!(m.get(&7, before + 10), None);
        assert_eq!(lost(&m), before + 10);
    }

    #[test]
    fn what_is_read_survives_what_is_not_goes() {
        let m = Bounded::<u64, Until>::new(100);
        assert_eq!(m.shards.len(), 1);
        m.insert(0, LATER);
        // Each round turns the young generation old: entry 0 lives on as long as it is read.
        for round in 0..10u64 {
            for k in 1..=50 {
                m.insert(round * 1000 + k, LATER);
            }
            assert!(m.contains(&0, 0), "read entry lost in round {round}");
        }
        // Two rounds without a read: gone, and so are the entries of rounds long past.
        for k in 1..=100 {
            m.insert(99_000 + k, LATER);
        }
        assert!(!m.contains(&0, 0));
        assert!(!m.contains(&1, 0));
    }

    #[test]
    fn expired_records_read_as_absent_and_are_dropped() {
        let m = Bounded::<u64, Until>::new(100);
        m.insert(1, Until(10));
        assert_eq!(m.get(&1, 9), Some(Until(10)));
        assert_eq!(m.get(&1, 10), None);
        assert_eq!(m.len(), 0);
        // An expired record is no obstacle to a new one.
        m.insert(2, Until(10));
        m.insert_if_absent(2, 20, || Until(30));
        assert_eq!(m.get(&2, 20), Some(Until(30)));
        m.insert_if_absent(2, 20, || Until(40));
        assert_eq!(m.get(&2, 20), Some(Until(30)));
    }

    #[test]
    fn updates_see_the_record_and_may_leave_it() {
        let m = Bounded::<u64, Until>::new(100);
        let seen = m.update(5, 0, |f| (Some(Until(7)), f.record));
        assert_eq!(seen, None);
        let seen = m.update(5, 0, |f| (None, f.record));
        assert_eq!(seen, Some(Until(7)));
        assert_eq!(m.get(&5, 0), Some(Until(7)));
        m.remove(&5);
        assert_eq!(m.get(&5, 0), None);
        m.insert(6, LATER);
        m.clear();
        assert_eq!(m.len(), 0);
    }

    /// Counting updates of one key from many threads: none is lost.
    #[test]
    fn updates_of_one_key_never_interleave() {
        let m = std::sync::Arc::new(Bounded::<u64, Until>::new(10_000));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        m.update(1, 0, |old| {
                            let n = old.record.map_or(0, |u| u.0 - 1_000_000);
                            (Some(Until(1_000_000 + n + 1)), ())
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(m.get(&1, 0), Some(Until(1_040_000)));
    }
}
