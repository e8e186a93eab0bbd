//! The local backend: sliding-window counts in fixed memory, per replica.
//!
//! Each policy (per device, per IP) keeps two sketches ([`super::sketch::Sketch`]: count-min
//! with conservative update, a key's counters in one 64-bit word): one for the current fixed
//! window, one for the previous. A key is never stored, and:
//!
//! - memory is fixed at start-up from `expected_devices` and the limit, independent of the
//!   number of distinct keys: 2 MiB per window for 100,000 expected devices and a limit of at
//!   most 15 (4-bit counters), twice that per doubling of the counter width;
//! - nothing is ever evicted: a flood of new ids can only raise counters, never lower a
//!   device's count, so it cannot reset anyone's budget. Collisions can only over-count.
//!
//! ## Why not `pingora_limits::estimator::Estimator`
//!
//! pingora's estimator is a plain count-min sketch: every increment adds one to a counter in
//! each row (signed 64-bit counters, one cache line per row). Two devices sharing a counter read
//! the sum of their counts there, so at the same memory many devices of moderate rate refuse
//! each other. Measured by `benches/limiter_flood.rs` (100,000 devices making 6 of their 10
//! requests in each of three windows): in 2 MiB per window the estimator (4 × 65,536 counters)
//! wrongly refuses 37.5 % of them in the first window, this sketch 0.018 % (18 devices), then
//! 0.012 % and 0.009 %; the estimator needed 32 MiB per window (4 × 2^20, the former default)
//! for 0.014 %. Through a flood of a million new ids, devices making exactly their 10 are
//! refused at the 10th in 0.2 % (the estimator at 32 MiB: 12 %). Each key's counters sit in one
//! word, so a decision is one cache line and one compare-and-swap instead of eight cache lines
//! (4 rows × 2 windows). The estimator stays as the bench's reference; the per-IP policy uses
//! this sketch too (its keys are fewer, and one implementation keeps one bound).
//!
//! Over-count: see [`super::sketch`] for the bound and its table. A refused request is not
//! counted, so a single abusive device adds at most `q` to anyone's estimate.
//!
//! ## Windows and concurrency
//!
//! Fixed windows are numbered from the limiter's creation; the two sketches alternate between
//! odd and even windows, and each records the window it holds. The first request of a new
//! window clears the sketch that held the window before last (a fraction of a millisecond for
//! the default size, once per window) while concurrent requests for that window wait; readers of
//! the previous window check its number before and after reading, so a sketch being cleared is
//! read as empty.
//!
//! A request is decided and counted by one compare-and-swap of its key's word in the current
//! window's sketch, so of two racing requests for a key's last unit exactly one is admitted, and
//! a refused request is never counted: refusals consume no budget.

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use super::sketch::{Sketch, Ticket};
use super::{Decision, Key, Quota, SketchSize, Source, Standing, Tally};

/// A window number no real window has: the sketch is being cleared.
const CLEARING: u64 = u64::MAX;

struct Slot {
    /// The fixed window whose counts this sketch holds, or [`CLEARING`].
    window: AtomicU64,
    sketch: Sketch,
}

/// Sliding-window counts of one policy over an unbounded key space, in fixed memory.
pub struct SlidingSketch {
    slots: [Slot; 2],
    /// Turns a key into 64 bits once per decision, so the sketch hashes a `u64` rather
    /// than re-reading the key. Randomly seeded: nobody can pick ids that collide on purpose.
    prehash: ahash::RandomState,
    /// Start of the first fixed window, on [`super::now_ms`]'s clock.
    origin_ms: u64,
    window_ms: u64,
    limit: u32,
}

/// The outcome of [`SlidingSketch::acquire`].
pub struct Acquired<'a> {
    pub admitted: bool,
    /// Counts before this request.
    pub tally: Tally,
    /// Where an admitted request was counted, to take it back ([`SlidingSketch::undo`]).
    counted: Option<(&'a Slot, u64, Ticket)>,
}

impl SlidingSketch {
    /// `origin_ms` is the start of the first fixed window (see [`super::now_ms`]).
    pub fn new(quota: Quota, size: SketchSize, origin_ms: u64) -> Self {
        let window_ms = u64::try_from(quota.window.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let slot = |window| Slot {
            window: AtomicU64::new(window),
            sketch: Sketch::new(size.expected_keys, quota.requests.get()),
        };
        // Windows are numbered from 1, so that window 0 (the empty "previous" of the first
        // one) needs no special case.
        Self {
            slots: [slot(0), slot(1)],
            prehash: ahash::RandomState::new(),
            origin_ms,
            window_ms,
            limit: quota.requests.get(),
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Bytes of counters, both windows.
    pub fn bytes(&self) -> usize {
        self.slots.iter().map(|s| s.sketch.bytes()).sum()
    }

    /// The sketch of the current window, for checking its bound.
    pub fn over_count_bound(&self, keys: usize) -> f64 {
        self.slots[0].sketch.over_count_bound(keys)
    }

    /// The fixed window containing `now_ms`, and the milliseconds elapsed in it.
    fn locate(&self, now_ms: u64) -> (u64, u64) {
        let ms = now_ms.saturating_sub(self.origin_ms).min(u64::MAX - 1);
        (ms / self.window_ms + 1, ms % self.window_ms)
    }

    /// The sketch of window `n`, cleared first if it still holds window `n − 2` or older.
    fn current(&self, n: u64) -> &Slot {
        let slot = &self.slots[(n & 1) as usize];
        let mut spins = 0u32;
        loop {
            let held = slot.window.load(Ordering::Acquire);
            if held == CLEARING {
                // Another request is clearing it for this window: well under a millisecond.
                spins += 1;
                if spins < 64 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
                continue;
            }
            if held >= n {
                // `held > n` only for a request that read the clock a whole window ago and was
                // descheduled since: it counts in the newer window, which is when it is seen.
                return slot;
            }
            if slot
                .window
                .compare_exchange(held, CLEARING, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                slot.sketch.clear();
                slot.window.store(n, Ordering::Release);
                return slot;
            }
        }
    }

    /// The count of `hash` in window `n − 1`, or 0 if that window is gone.
    fn previous(&self, n: u64, hash: u64) -> u64 {
        let slot = &self.slots[((n + 1) & 1) as usize];
        let want = n - 1;
        if slot.window.load(Ordering::Acquire) != want {
            return 0;
        }
        let count = slot.sketch.estimate(hash);
        // Cleared for a newer window while being read: the old counts are gone.
        if slot.window.load(Ordering::Acquire) != want {
            return 0;
        }
        count
    }

    /// Counts one request for `key` if it fits within the limit; if not, leaves the counts as
    /// they were. The decision and the count are one compare-and-swap of the key's word, so of
    /// two racing requests for a key's last unit exactly one is admitted.
    pub fn acquire<K: Hash>(&self, key: &K, now_ms: u64) -> Acquired<'_> {
        self.count(key, now_ms, true)
    }

    /// Where `key` stands now, counting nothing.
    pub fn peek<K: Hash>(&self, key: &K, now_ms: u64) -> Acquired<'_> {
        self.count(key, now_ms, false)
    }

    fn count<K: Hash>(&self, key: &K, now_ms: u64, add: bool) -> Acquired<'_> {
        let hash = self.prehash.hash_one(key);
        let (n, elapsed_ms) = self.locate(now_ms);
        let prev = self.previous(n, hash);
        let slot = self.current(n);
        let tally = |curr| Tally {
            prev,
            curr,
            elapsed_ms,
            window_ms: self.window_ms,
        };
        if !add {
            let t = tally(slot.sketch.estimate(hash));
            return Acquired {
                admitted: t.admits(self.limit),
                tally: t,
                counted: None,
            };
        }
        let (curr, ticket) = slot
            .sketch
            .add_if(hash, |curr| tally(curr).admits(self.limit));
        Acquired {
            admitted: ticket.is_some(),
            tally: tally(curr),
            counted: ticket.map(|t| (slot, n, t)),
        }
    }

    /// Takes back an admitted request (a later policy refused it), if nothing else has touched
    /// its counters since (otherwise it stays counted: an over-count, never an under-count).
    pub fn undo(&self, acquired: &Acquired<'_>) {
        if let Some((slot, window, ticket)) = &acquired.counted {
            // If the sketch moved on to a newer window the count went with it.
            if slot.window.load(Ordering::Acquire) == *window {
                slot.sketch.take_back(ticket);
            }
        }
    }

    /// Counts one request for `key` whatever the limit says (another backend admitted it), and
    /// returns the counts before it.
    pub fn record<K: Hash>(&self, key: &K, now_ms: u64) -> Tally {
        let hash = self.prehash.hash_one(key);
        let (n, elapsed_ms) = self.locate(now_ms);
        let prev = self.previous(n, hash);
        let (curr, _) = self.current(n).sketch.add_if(hash, |_| true);
        Tally {
            prev,
            curr,
            elapsed_ms,
            window_ms: self.window_ms,
        }
    }
}

/// The local sketches of every configured policy.
pub struct LocalLimiter {
    session: SlidingSketch,
    per_ip: Option<SlidingSketch>,
}

impl LocalLimiter {
    pub fn new(session: Quota, per_ip: Option<Quota>, size: SketchSize, origin_ms: u64) -> Self {
        Self {
            session: SlidingSketch::new(session, size, origin_ms),
            per_ip: per_ip.map(|q| SlidingSketch::new(q, size, origin_ms)),
        }
    }

    fn ip_sketch(&self, ip: Option<IpAddr>) -> Option<(&SlidingSketch, IpAddr)> {
        Some((self.per_ip.as_ref()?, ip?))
    }

    /// Admits the request if every policy has room, counting it in each; otherwise counts it
    /// nowhere.
    ///
    /// With a per-IP limit the device's standing is read first, the IP counted, then the
    /// device: a refused device (the common refusal: one device retrying) never touches the
    /// IP's counts, and a refused IP never touches the device's. Only a device that loses a
    /// race for its last unit in between has its IP count taken back.
    pub fn acquire(&self, key: Key<'_>, now_ms: u64, source: Source) -> Decision {
        let limit = self.session.limit();
        let refused = |dev: &Acquired<'_>, ip: Option<Standing>| Decision {
            allowed: false,
            source,
            session: dev.tally.standing(limit, false),
            ip,
        };
        let ip = match self.ip_sketch(key.ip) {
            Some((sketch, addr)) => {
                let peeked = self.session.peek(&key.device, now_ms);
                if !peeked.admitted {
                    return refused(&peeked, None);
                }
                let got = sketch.acquire(&addr, now_ms);
                if !got.admitted {
                    return refused(&peeked, Some(got.tally.standing(sketch.limit(), false)));
                }
                Some((sketch, got))
            }
            None => None,
        };
        let dev = self.session.acquire(&key.device, now_ms);
        if !dev.admitted {
            if let Some((sketch, got)) = &ip {
                sketch.undo(got);
            }
            return refused(&dev, None);
        }
        Decision {
            allowed: true,
            source,
            session: dev.tally.standing(limit, true),
            ip: ip.map(|(sketch, got)| got.tally.standing(sketch.limit(), true)),
        }
    }

    /// Counts a request another backend admitted; returns where the keys stand locally.
    pub fn record(&self, key: Key<'_>, now_ms: u64) -> (Standing, Option<Standing>) {
        let session = self
            .session
            .record(&key.device, now_ms)
            .standing(self.session.limit(), true);
        let ip = self
            .ip_sketch(key.ip)
            .map(|(sketch, addr)| sketch.record(&addr, now_ms).standing(sketch.limit(), true));
        (session, ip)
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::time::Duration;

    use super::*;

    const SMALL: SketchSize = SketchSize {
        expected_keys: 4096,
    };

    fn quota(requests: u32, secs: u64) -> Quota {
        Quota {
            requests: NonZeroU32::new(requests).unwrap(),
            window: Duration::from_secs(secs),
        }
    }

    fn key(device: &str) -> Key<'_> {
        Key { device, ip: None }
    }

    #[test]
    fn ten_fit_the_eleventh_is_refused_and_refusals_cost_nothing() {
        let t0 = 1_000_000;
        let l = LocalLimiter::new(quota(10, 60), None, SMALL, t0);
        let now = t0 + 1_000;
        for i in 0..10 {
            let d = l.acquire(key("a"), now, Source::Local);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.session.remaining, 9 - i);
        }
        for _ in 0..50 {
            let d = l.acquire(key("a"), now, Source::Local);
            assert!(!d.allowed);
            assert_eq!(d.session.remaining, 0);
            // 59 s left of this window, then 6 s of the next (10 × 54/60 = 9).
            assert_eq!(d.session.reset_secs, 65);
        }
        assert!(l.acquire(key("b"), now, Source::Local).allowed);
        // The refusals were not counted: the budget returns exactly on schedule.
        let later = t0 + 66_000;
        assert!(l.acquire(key("a"), later, Source::Local).allowed);
        assert!(!l.acquire(key("a"), later, Source::Local).allowed);
    }

    #[test]
    fn the_previous_window_is_weighted_and_two_windows_later_forgotten() {
        let t0 = 1_000_000;
        let s = SlidingSketch::new(quota(10, 10), SMALL, t0);
        for _ in 0..10 {
            assert!(s.acquire(&"d", t0).admitted);
        }
        // Halfway through the next window half of the previous one still counts.
        let half = t0 + 15_000;
        let got: usize = (0..10).filter(|_| s.acquire(&"d", half).admitted).count();
        assert_eq!(got, 5);
        // Two windows on, the sketch of the first was cleared and reused.
        let t2 = t0 + 20_000;
        let got: usize = (0..20).filter(|_| s.acquire(&"d", t2).admitted).count();
        assert_eq!(got, 5, "window 2's five weigh fully at its end");
        let t4 = t0 + 45_000;
        assert_eq!(s.acquire(&"d", t4).tally.prev, 0, "window 3 was empty");
        assert_eq!(s.acquire(&"d", t4).tally.curr, 1);
    }

    #[test]
    fn a_per_ip_refusal_takes_back_the_device_count() {
        let t0 = 1_000_000;
        let l = LocalLimiter::new(quota(10, 60), Some(quota(3, 60)), SMALL, t0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for d in ["a", "b", "c"] {
            assert!(
                l.acquire(
                    Key {
                        device: d,
                        ip: Some(ip)
                    },
                    t0,
                    Source::Local
                )
                .allowed
            );
        }
        let refused = l.acquire(
            Key {
                device: "d",
                ip: Some(ip),
            },
            t0,
            Source::Local,
        );
        assert!(!refused.allowed);
        assert_eq!(refused.ip.unwrap().remaining, 0);
        assert_eq!(refused.session.remaining, 10, "d's count was taken back");
        let d = l.acquire(key("d"), t0, Source::Local);
        assert_eq!(d.session.remaining, 9);
    }

    #[test]
    fn concurrent_requests_for_one_key_never_exceed_the_limit() {
        let t0 = 1_000_000;
        let s = std::sync::Arc::new(SlidingSketch::new(quota(1000, 60), SMALL, t0));
        let admitted: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let s = s.clone();
                    scope.spawn(move || (0..1000).filter(|_| s.acquire(&"k", t0).admitted).count())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(admitted, 1000);
    }

    #[test]
    fn recorded_requests_count_against_later_local_decisions() {
        let t0 = 1_000_000;
        let l = LocalLimiter::new(quota(3, 60), None, SMALL, t0);
        for _ in 0..3 {
            l.record(key("r"), t0);
        }
        assert!(!l.acquire(key("r"), t0, Source::Fallback).allowed);
    }
}
