//! Counters of the cache, read through [`CacheStats`] (the metrics layer exports them as
//! `gateway_cache_requests_total{cache,result}`, `gateway_cache_entries{cache}` and
//! `gateway_cache_purges_total`). Labels are the bounded [`Kind`] and [`CacheResult`] names.

use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderValue;

use super::key::Kind;

/// What the cache did for one lookup; also the `x-cache` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    /// Answered from the cache.
    Hit,
    /// Forwarded; a 200 answer is stored.
    Miss,
    /// Forwarded and never stored (`type=internal`, unknown parameters, no bearer token,
    /// cache disabled).
    Bypass,
}

impl CacheResult {
    pub const ALL: [CacheResult; 3] = [CacheResult::Hit, CacheResult::Miss, CacheResult::Bypass];

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::Bypass => "bypass",
        }
    }

    /// `x-cache` value, also the access log's `cache` field.
    pub fn as_header(self) -> &'static str {
        match self {
            CacheResult::Hit => "HIT",
            CacheResult::Miss => "MISS",
            CacheResult::Bypass => "BYPASS",
        }
    }

    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_header())
    }

    fn index(self) -> usize {
        match self {
            CacheResult::Hit => 0,
            CacheResult::Miss => 1,
            CacheResult::Bypass => 2,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    requests: [[AtomicU64; 3]; 3],
    pub(crate) purges: AtomicU64,
    pub(crate) unparseable_dates: AtomicU64,
}

impl Counters {
    pub(crate) fn request(&self, kind: Kind, result: CacheResult) {
        if let Some(c) = self
            .requests
            .get(kind.index())
            .and_then(|r| r.get(result.index()))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> CacheStats {
        let mut requests = [[0; 3]; 3];
        for (row, counters) in requests.iter_mut().zip(&self.requests) {
            for (v, c) in row.iter_mut().zip(counters) {
                *v = c.load(Ordering::Relaxed);
            }
        }
        CacheStats {
            requests,
            purges: self.purges.load(Ordering::Relaxed),
            unparseable_dates: self.unparseable_dates.load(Ordering::Relaxed),
            ..CacheStats::default()
        }
    }
}

/// A snapshot of the cache's counters and sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    requests: [[u64; 3]; 3],
    /// Times the purge watermark moved past an earlier `lastCachePurge`.
    pub purges: u64,
    /// `lastCachePurge` / `expiresAt` values that were present but not a date.
    pub unparseable_dates: u64,
    /// Answers stored.
    pub entries: u64,
    /// Bytes the stored answers account for (the store keeps this within `max_bytes`).
    pub bytes: u64,
    /// Tokens remembered.
    pub tokens: u64,
    /// The sharing with other replicas, when on.
    pub shared: Option<super::shared::SharedStats>,
}

impl CacheStats {
    /// Lookups of `kind` that ended as `result`.
    pub fn requests(&self, kind: Kind, result: CacheResult) -> u64 {
        self.requests
            .get(kind.index())
            .and_then(|r| r.get(result.index()))
            .copied()
            .unwrap_or(0)
    }

    /// All lookups that ended as `result`.
    pub fn total(&self, result: CacheResult) -> u64 {
        Kind::ALL.iter().map(|&k| self.requests(k, result)).sum()
    }
}
