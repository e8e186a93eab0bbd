//! Per-deviceId rate limiting of session registration (and an optional per-client-IP limit).
//!
//! Both backends implement one algorithm, the sliding-window estimate: each key has a counter
//! for the current fixed window and one for the previous window, and the number of requests in
//! the last `window` is estimated as `prev × (1 − elapsed/window) + curr`. A request is admitted
//! when that estimate, counting the request itself, stays within `requests`; only admitted
//! requests are counted, so a refused request consumes no budget and a client that keeps
//! retrying while refused is admitted again on schedule.
//!
//! - [`local`]: fixed-memory count-min sketches with conservative update ([`sketch`]), one pair
//!   per policy, per replica, sized from the expected devices per window. Memory does not
//!   depend on how many keys exist; collisions can only over-count.
//! - [`redis`]: the same arithmetic in one atomic Lua script, one round trip per decision, one
//!   budget shared by every replica. On an error or a missed time budget, `on_backend_error`
//!   decides and the fallback is counted in [`RateLimitStats`].
//!
//! All arithmetic is done on integers scaled by the window length in milliseconds
//! ([`Tally::scaled`]), so both backends agree to the request on every decision (the Redis
//! script's doubles are exact for every `requests × window` the config accepts).

mod config;
pub mod local;
pub mod redis;
pub mod sketch;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub use config::{
    BackendKind, OnBackendError, PerIpFile, Quota, RateLimitConfig, RateLimitFile, RedisConfig,
    RedisFile, SketchSize, MAX_REQUESTS, MAX_WINDOW_SECS,
};
use local::LocalLimiter;
use redis::RedisLimiter;

/// The limiter's clock, in milliseconds: the system's coarse monotonic clock (on Linux
/// `CLOCK_MONOTONIC_COARSE`, which advances once per kernel tick, 1 to 10 ms, and is read
/// without a hardware timer: a few nanoseconds instead of twenty). An error of `δ` moves the
/// weight of the previous window's requests by `δ / window` and a request across a window
/// boundary at most `δ` early or late: a fraction of a percent for windows of a second or
/// more. (Not tokio's clock: no test pauses time for the limiter; its unit tests pass
/// milliseconds explicitly.)
pub fn now_ms() -> u64 {
    let now = coarsetime::Instant::now_without_cache_update();
    now.duration_since(coarsetime::Instant::from_ticks(0))
        .as_millis()
}

/// What a decision is about: the validated deviceId and, when the per-IP limit is on, the
/// client's IP.
#[derive(Debug, Clone, Copy)]
pub struct Key<'a> {
    pub device: &'a str,
    pub ip: Option<IpAddr>,
}

/// The counts of one key at one instant: the input of every decision and of the response
/// headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Requests counted in the previous fixed window.
    pub prev: u64,
    /// Requests counted in the current fixed window, not including the one being decided.
    pub curr: u64,
    /// Time since the current fixed window began, in milliseconds (`< window_ms`).
    pub elapsed_ms: u64,
    pub window_ms: u64,
}

/// Where a key stands after a decision: the `r` and `t` of the `RateLimit` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    /// Requests that would still be admitted now.
    pub remaining: u32,
    /// Seconds until `remaining` grows by one, if no further request is admitted; for a refused
    /// request this is when the next one will be admitted (`Retry-After`). 0 when nothing of
    /// the budget is in use.
    pub reset_secs: u64,
}

impl Tally {
    /// The sliding-window estimate in units of `1/window_ms` requests, with `extra` requests
    /// added to the current window: `prev × (window − elapsed) + (curr + extra) × window`.
    /// Saturating: a count that would overflow is far over any limit anyway.
    pub fn scaled(&self, extra: u64) -> u64 {
        let left = self.window_ms - self.elapsed_ms.min(self.window_ms);
        self.prev.saturating_mul(left).saturating_add(
            self.curr
                .saturating_add(extra)
                .saturating_mul(self.window_ms),
        )
    }

    /// Whether one more request fits in `limit`.
    pub fn admits(&self, limit: u32) -> bool {
        self.scaled(1) <= u64::from(limit) * self.window_ms
    }

    /// Where the key stands, with the decided request counted or not.
    pub fn standing(&self, limit: u32, counted: bool) -> Standing {
        let w = self.window_ms.max(1);
        let used = self.scaled(u64::from(counted));
        let free = (u64::from(limit) * w).saturating_sub(used) / w;
        let remaining = free.min(u64::from(limit)) as u32;
        let reset_ms = if remaining >= limit {
            0
        } else {
            // The estimate must fall to this for one more request to fit.
            let target = u64::from(limit - remaining - 1) * w;
            self.ms_until(target, counted)
        };
        Standing {
            remaining,
            reset_secs: reset_ms.div_ceil(1000),
        }
    }

    /// Milliseconds until the estimate falls to `target` (scaled) if nothing more is counted.
    /// Within the current window only the previous window's share shrinks; after it, the
    /// current count becomes the previous one and shrinks in turn.
    fn ms_until(&self, target: u64, counted: bool) -> u64 {
        let w = self.window_ms.max(1);
        let el = self.elapsed_ms.min(w);
        let curr = self.curr.saturating_add(u64::from(counted));
        let curr_scaled = curr.saturating_mul(w);
        if curr_scaled <= target {
            if self.prev == 0 {
                return 0;
            }
            // prev × (w − e) ≤ target − curr × w  ⇔  e ≥ w − ⌊(target − curr × w) / prev⌋
            let e = w.saturating_sub((target - curr_scaled) / self.prev);
            e.saturating_sub(el)
        } else {
            // Next window: curr × (w − e) ≤ target  ⇔  e ≥ w − ⌊target / curr⌋
            (w - el) + (w - (target / curr).min(w))
        }
    }
}

/// Who took a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The local sketch, as the configured backend.
    Local,
    /// Redis.
    Redis,
    /// `on_backend_error`, because Redis failed or was late.
    Fallback,
}

/// What was decided: the `decision` label of `gateway_rate_limit_decisions_total` and the
/// `rate_limit` field of the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Under budget; forwarded.
    Allowed,
    /// Over budget; answered 429.
    Limited,
    /// Redis failed or was late and `on_backend_error` admitted the request.
    FallbackAllowed,
    /// Redis failed or was late and `on_backend_error` refused the request.
    FallbackDenied,
}

impl Verdict {
    pub const ALL: [Verdict; 4] = [
        Verdict::Allowed,
        Verdict::Limited,
        Verdict::FallbackAllowed,
        Verdict::FallbackDenied,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Limited => "limited",
            Verdict::FallbackAllowed => "fallback_allowed",
            Verdict::FallbackDenied => "fallback_denied",
        }
    }
}

/// One decision and where the keys stand after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub source: Source,
    pub session: Standing,
    /// Present when the per-IP limit was consulted (it is not when the device was refused).
    pub ip: Option<Standing>,
}

impl Decision {
    pub fn verdict(&self) -> Verdict {
        match (self.source, self.allowed) {
            (Source::Fallback, true) => Verdict::FallbackAllowed,
            (Source::Fallback, false) => Verdict::FallbackDenied,
            (_, true) => Verdict::Allowed,
            (_, false) => Verdict::Limited,
        }
    }

    /// Seconds a refused client should wait: the `t` of the policy that refused, at least 1.
    /// The per-IP limit is consulted only after the device's admitted the request, so when it
    /// is present on a refusal, it is the one that refused.
    pub fn retry_after(&self) -> u64 {
        self.ip.unwrap_or(self.session).reset_secs.max(1)
    }
}

/// Counters for observability, read without locking: the metrics registry brings
/// `gateway_rate_limit_decisions_total{backend,decision}` and
/// `gateway_rate_limit_backend_errors_total` up to them at scrape time; tests read them
/// directly.
#[derive(Debug)]
pub struct RateLimitStats {
    backend: BackendKind,
    /// Indexed by [`Verdict`].
    decisions: [AtomicU64; 4],
    backend_errors: AtomicU64,
}

impl RateLimitStats {
    fn new(backend: BackendKind) -> Self {
        Self {
            backend,
            decisions: Default::default(),
            backend_errors: AtomicU64::new(0),
        }
    }

    /// The configured backend: the `backend` label of every decision counted here.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// Decisions with this verdict so far.
    pub fn decisions(&self, verdict: Verdict) -> u64 {
        self.decisions[verdict as usize].load(Ordering::Relaxed)
    }

    /// Redis calls that failed or missed their time budget; each was answered by
    /// `on_backend_error` (a fallback).
    pub fn backend_errors(&self) -> u64 {
        self.backend_errors.load(Ordering::Relaxed)
    }

    /// Every `(backend, decision, count)`, labelled as in `gateway_rate_limit_decisions_total`.
    pub fn each_decision(&self, mut f: impl FnMut(&'static str, &'static str, u64)) {
        for v in Verdict::ALL {
            f(self.backend.label(), v.label(), self.decisions(v));
        }
    }

    fn count(&self, d: &Decision) {
        self.decisions[d.verdict() as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// The configured limiter: the local sketches always (as the backend, or as Redis's fallback
/// and shadow), Redis when configured.
pub struct RateLimiter {
    session: Quota,
    per_ip: Option<Quota>,
    trusted_hops: usize,
    local: LocalLimiter,
    redis: Option<RedisLimiter>,
    on_error: OnBackendError,
    stats: Arc<RateLimitStats>,
    /// Redis is failing: logged once on the way down and once on the way back.
    degraded: AtomicBool,
}

impl RateLimiter {
    /// Builds the sketches and, for Redis, the client; connecting happens in the background
    /// so that a Redis that is down does not stop start-up.
    pub fn new(cfg: &RateLimitConfig) -> Result<Self, String> {
        let redis = cfg
            .redis
            .as_ref()
            .map(|r| RedisLimiter::new(r, cfg.session, cfg.per_ip));
        Ok(Self {
            session: cfg.session,
            per_ip: cfg.per_ip,
            trusted_hops: cfg.trusted_hops,
            local: LocalLimiter::new(cfg.session, cfg.per_ip, cfg.sketch, now_ms()),
            redis,
            on_error: cfg.on_backend_error,
            stats: Arc::new(RateLimitStats::new(if cfg.redis.is_some() {
                BackendKind::Redis
            } else {
                BackendKind::Local
            })),
            degraded: AtomicBool::new(false),
        })
    }

    pub fn session_quota(&self) -> Quota {
        self.session
    }

    pub fn per_ip_quota(&self) -> Option<Quota> {
        self.per_ip
    }

    pub fn trusted_hops(&self) -> usize {
        self.trusted_hops
    }

    pub fn stats(&self) -> Arc<RateLimitStats> {
        self.stats.clone()
    }

    /// Whether decisions need a round trip ([`RateLimiter::decide`]) rather than
    /// [`RateLimiter::decide_local`].
    pub fn is_remote(&self) -> bool {
        self.redis.is_some()
    }

    /// Decides with the local sketches, synchronously: the path of the `local` backend.
    pub fn decide_local(&self, key: Key<'_>) -> Decision {
        let d = self.local.acquire(key, now_ms(), Source::Local);
        self.stats.count(&d);
        d
    }

    /// Decides with the configured backend.
    pub async fn decide(&self, key: Key<'_>) -> Decision {
        let Some(redis) = &self.redis else {
            return self.decide_local(key);
        };
        let d = match redis.check(key).await {
            Ok(d) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("rate limit backend answering again");
                }
                if d.allowed {
                    // Keep the local history current for when Redis fails.
                    self.local.record(key, now_ms());
                }
                d
            }
            Err(e) => {
                self.stats.backend_errors.fetch_add(1, Ordering::Relaxed);
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, fallback = ?self.on_error, "rate limit backend failing; deciding by on_backend_error");
                } else {
                    tracing::debug!(error = %e, "rate limit backend error");
                }
                self.fallback(key)
            }
        };
        self.stats.count(&d);
        d
    }

    fn fallback(&self, key: Key<'_>) -> Decision {
        let now = now_ms();
        match self.on_error {
            OnBackendError::Local => self.local.acquire(key, now, Source::Fallback),
            OnBackendError::Allow => {
                // Admitted whatever the counts; the headers show this replica's own.
                let (session, ip) = self.local.record(key, now);
                Decision {
                    allowed: true,
                    source: Source::Fallback,
                    session,
                    ip,
                }
            }
            OnBackendError::Deny => {
                let refused = Standing {
                    remaining: 0,
                    reset_secs: 1,
                };
                Decision {
                    allowed: false,
                    source: Source::Fallback,
                    session: refused,
                    ip: None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(prev: u64, curr: u64, elapsed_ms: u64) -> Tally {
        Tally {
            prev,
            curr,
            elapsed_ms,
            window_ms: 60_000,
        }
    }

    #[test]
    fn stats_count_decisions_under_the_metric_labels() {
        let cfg = RateLimitFile {
            requests: 1,
            ..RateLimitFile::default()
        }
        .resolve()
        .unwrap()
        .unwrap();
        let limiter = RateLimiter::new(&cfg).unwrap();
        let key = Key {
            device: "d",
            ip: None,
        };
        assert!(limiter.decide_local(key).allowed);
        assert!(!limiter.decide_local(key).allowed);
        let mut seen = Vec::new();
        limiter
            .stats()
            .each_decision(|b, d, n| seen.push(format!("{b}/{d}={n}")));
        assert_eq!(
            seen,
            [
                "local/allowed=1",
                "local/limited=1",
                "local/fallback_allowed=0",
                "local/fallback_denied=0"
            ]
        );
    }

    #[test]
    fn the_eleventh_request_in_a_window_is_refused() {
        assert!(tally(0, 9, 10_000).admits(10));
        assert!(!tally(0, 10, 10_000).admits(10));
    }

    #[test]
    fn the_previous_window_counts_by_its_share_still_inside_the_sliding_window() {
        // 10 last window, 15 s into this one: 10 × 45/60 = 7.5 in use, so 2 more fit, not 3.
        let t = tally(10, 0, 15_000);
        assert!(t.admits(10));
        assert!(tally(10, 1, 15_000).admits(10));
        assert!(!tally(10, 2, 15_000).admits(10));
        assert_eq!(t.standing(10, false).remaining, 2);
    }

    #[test]
    fn standing_after_a_full_window_names_the_second_the_next_request_fits() {
        // 10 counted, 10 s into the window: the next request fits once 10 × (60 − e)/60 ≤ 9,
        // i.e. 6 s into the next window: 50 s + 6 s.
        let s = tally(0, 10, 10_000).standing(10, false);
        assert_eq!(
            s,
            Standing {
                remaining: 0,
                reset_secs: 56
            }
        );
        // Same count, but the refused request was the one counted: identical.
        assert_eq!(tally(0, 9, 10_000).standing(10, true), s);
    }

    #[test]
    fn reset_is_exact_when_the_previous_window_drains_within_this_one() {
        // prev 10 at 30 s: 5 in use + curr 5 = 10, full. One fits at 10 × (60 − e)/60 ≤ 4,
        // e ≥ 36 s: 6 s from now.
        let s = tally(10, 5, 30_000).standing(10, false);
        assert_eq!(
            s,
            Standing {
                remaining: 0,
                reset_secs: 6
            }
        );
        assert!(tally(10, 5, 36_000).admits(10));
        assert!(!tally(10, 5, 35_999).admits(10));
    }

    #[test]
    fn an_unused_budget_reports_everything_remaining_and_no_reset() {
        assert_eq!(
            tally(0, 0, 0).standing(10, false),
            Standing {
                remaining: 10,
                reset_secs: 0
            }
        );
        assert_eq!(tally(0, 0, 0).standing(10, true).remaining, 9);
    }

    #[test]
    fn sketch_over_counts_far_above_the_limit_saturate() {
        let s = tally(1_000_000, 1_000_000, 1).standing(10, false);
        assert_eq!(s.remaining, 0);
        assert!(s.reset_secs <= 120, "{s:?}");
    }

    #[test]
    fn a_limit_of_one_waits_for_the_window_to_pass_entirely() {
        let s = tally(0, 1, 0).standing(1, false);
        assert_eq!(s.reset_secs, 120);
        assert!(tally(1, 0, 59_999).standing(1, false).reset_secs <= 1);
    }
}
