//! The answers: one moka cache bounded by entry count AND bytes, with a TTL cap.
//!
//! moka bounds one weighted capacity, so both bounds ride on it: capacity is `max_bytes` and an
//! entry weighs its bytes but never less than `max_bytes / max_entries`. Then the weights sum to
//! at most `max_bytes`, so the bytes do, and each entry weighs at least the share, so there are
//! at most `max_entries`.

use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;
use moka::sync::Cache;

use super::key::Key;
use super::marks::UserHash;
use super::settings::CacheConfig;

/// One upstream 200 answer, as it came.
#[derive(Debug)]
pub struct Entry {
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
    /// When the request that fetched it was sent (gateway wall clock, µs): the answer reflects
    /// the upstream's data as of this moment or later.
    pub fetched_us: i64,
    /// Every user the answer contains, for per-user freshness.
    pub users: Box<[UserHash]>,
}

/// Fixed cost of an entry beyond its body and key: the moka node, the `Arc`, the header.
const OVERHEAD: usize = 192;

impl Entry {
    fn bytes(&self) -> usize {
        self.body.len()
            + self.content_type.as_ref().map_or(0, HeaderValue::len)
            + self.users.len() * std::mem::size_of::<UserHash>()
            + OVERHEAD
    }
}

pub struct Store {
    cache: Cache<Key, Arc<Entry>, ahash::RandomState>,
}

impl Store {
    pub fn new(cfg: &CacheConfig) -> Self {
        let floor = u32::try_from((cfg.max_bytes / cfg.max_entries).max(1)).unwrap_or(u32::MAX);
        let cache = Cache::builder()
            .max_capacity(cfg.max_bytes)
            .weigher(move |k: &Key, v: &Arc<Entry>| {
                u32::try_from(k.weight() + v.bytes())
                    .unwrap_or(u32::MAX)
                    .max(floor)
            })
            .time_to_live(cfg.ttl)
            .support_invalidation_closures()
            .build_with_hasher(ahash::RandomState::new());
        Self { cache }
    }

    pub fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        self.cache.get(key)
    }

    pub fn insert(&self, key: Key, entry: Entry) {
        self.cache.insert(key, Arc::new(entry));
    }

    pub fn invalidate(&self, key: &Key) {
        self.cache.invalidate(key);
    }

    /// Drops every answer fetched before `watermark_us` (in the background; reads already
    /// treat them as gone).
    pub fn drop_fetched_before(&self, watermark_us: i64) {
        // Fails only when invalidation closures are disabled, which `new` never does.
        let _ = self
            .cache
            .invalidate_entries_if(move |_, e| e.fetched_us < watermark_us);
    }

    pub fn entries(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Weighted size: the bytes the store accounts for (at least the real bytes).
    pub fn weighted_bytes(&self) -> u64 {
        self.cache.weighted_size()
    }

    pub fn sync(&self) {
        self.cache.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::key::Kind;
    use crate::cache::settings::CacheFile;
    use crate::cache::tokens::Partition;

    fn store(max_entries: u64, max_bytes: u64) -> Store {
        let f = CacheFile {
            max_entries,
            max_bytes,
            max_entry_bytes: max_bytes,
            ..CacheFile::default()
        };
        Store::new(&f.resolve().unwrap())
    }

    fn entry(len: usize) -> Entry {
        Entry {
            content_type: None,
            body: Bytes::from(vec![b'x'; len]),
            fetched_us: 0,
            users: Box::new([]),
        }
    }

    fn key(i: usize) -> Key {
        Key::new(
            Partition::of_network(b"k"),
            Kind::User,
            [i.to_string().as_str()],
        )
    }

    #[test]
    fn bytes_stay_within_the_bound() {
        let s = store(1_000, 64 * 1024);
        for i in 0..500 {
            s.insert(key(i), entry(1000));
            s.sync();
            assert!(s.weighted_bytes() <= 64 * 1024, "{}", s.weighted_bytes());
        }
        assert!(s.entries() > 10 && s.entries() < 64, "{}", s.entries());
    }

    #[test]
    fn entries_stay_within_the_bound_even_when_small() {
        let s = store(20, 1 << 20);
        for i in 0..500 {
            s.insert(key(i), entry(1));
        }
        s.sync();
        assert!(s.entries() <= 20, "{}", s.entries());
    }

    #[test]
    fn dropping_by_fetch_time() {
        let s = store(100, 1 << 20);
        let mut old = entry(1);
        old.fetched_us = 10;
        let mut new = entry(1);
        new.fetched_us = 20;
        s.insert(key(1), old);
        s.insert(key(2), new);
        s.drop_fetched_before(15);
        assert!(s.get(&key(1)).is_none());
        assert!(s.get(&key(2)).is_some());
    }
}
