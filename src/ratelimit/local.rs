//! The local backend: sliding-window counts in fixed memory, per replica.
//!
//! Each policy (per device, per IP) keeps two count-min sketches
//! ([`pingora_limits::estimator::Estimator`]): one for the current fixed window, one for the
//! previous. A key is never stored, only added into one counter per row (`sketch_hashes` rows
//! of `sketch_slots` counters, each row with its own random hash), and its count is read as the
//! smallest of its counters. Hence:
//!
//! - memory is `2 × hashes × slots × 8` bytes per policy, fixed at start-up (64 MiB with the
//!   defaults) and independent of the number of distinct keys;
//! - nothing is ever evicted: a flood of new ids can only add to counters, never remove a
//!   device's count, so it cannot reset anyone's budget. Collisions can only over-count.
//!
//! ## Over-count bound
//!
//! A key's estimate is its true count plus, in every row, the counts of the other keys that
//! share its counter; the sketch keeps the smallest. With `K` distinct keys counted in the
//! sliding window spread over `slots` counters per row, the other keys in one of a key's
//! counters number about Poisson(`K / slots`), so
//!
//! ```text
//! P(a key shares a counter with another key in every row) ≈ (1 − e^(−K / slots)) ^ hashes
//! ```
//!
//! and such a key is over-counted by at least the smallest of those other keys' counts. A
//! device that has made `n` of its `q` requests is refused early when the excess reaches
//! `q − n + 1`. Two regimes matter:
//!
//! - a flood of new ids, one request each: the excess is the number of sharing keys, and
//!   `P(excess ≥ k) ≈ P(Poisson(K / slots) ≥ k) ^ hashes`;
//! - many devices each making several requests: one sharing key per row is enough to add a
//!   whole device's count, so a device is refused early with about the probability above as
//!   soon as its own count and that of the neighbours in its least-loaded row together pass
//!   `q`.
//!
//! The previous window's sketch has hashes of its own, so a device whose previous-window
//! requests still weigh has a second, independent chance of sharing all its counters: up to
//! twice the figures below (measured below, window by window).
//!
//! For the defaults (4 × 1,048,576):
//!
//! | distinct keys K in the window | shared in every row (refused at its q-th; or early, if its neighbours are busy) | flood: excess ≥ 6 (refused at its 5th of 10) |
//! | --- | --- | --- |
//! | 10,000 | 8·10⁻⁹ | 10⁻⁶⁰ |
//! | 100,000 | 7·10⁻⁵ | 9·10⁻³⁷ |
//! | 1,000,000 | 0.14 | 5·10⁻¹⁴ |
//!
//! Measured (`benches/limiter_flood.rs`): 100,000 devices making 6 of their 10 requests each,
//! evenly through every window, 5–9 wrongly refused (≤ 0.009 %) in the first window and 14
//! (0.014 %) in the next, where the previous window's sketch weighs too; through a flood of a
//! million new ids, devices that make 5 of 10 never refused, devices that make exactly 10
//! refused at their 10th in 12 %. At a quarter of the width (4 × 262,144, 16 MiB) the first
//! case refuses 1–2 % of the devices, the reason the default is 2^20: a benchmark or a busy
//! edge (100,000 devices each registering a session every ten seconds) is exactly that case.
//! Refused requests are not counted, so a single abusive device adds at most `q` to anyone's
//! estimate. Quadrupling `sketch_slots` divides `K / slots` by four.
//!
//! ## Windows and concurrency
//!
//! Fixed windows are numbered from the limiter's creation; the two sketches alternate between
//! odd and even windows, and each records the window it holds. The first request of a new
//! window clears the sketch that held the window before last (about 1.5 ms for the default
//! size, once per window; on a current-thread runtime the whole gateway pauses that long)
//! while concurrent requests for that window wait; readers of
//! the previous window check its number before and after reading, so a sketch being cleared is
//! read as empty.
//!
//! A request is counted in the current window first and the increment's own result decides; a
//! refused request takes its count back at once, so refusals consume no budget. The increment
//! goes row by row, and a key's count is its least row, so racing requests for a key's last
//! unit can each be first in a different row and each read the count as fitting: a burst of
//! racing requests at the limit admits at most `min(worker threads, sketch_hashes) − 1` more
//! than the limit (one more per extra thread, 3 at most with the default 4 rows). Closing that
//! gap would take a lock or a compare-and-swap over every row per request; one extra session
//! per thread at the limit does not pay for it. (Counting first makes the common,
//! admitted case one pass over the sketch instead of a read and a write; a refusal pays a
//! second pass to take its count back.)

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use pingora_limits::estimator::Estimator;

use super::{Decision, Key, Quota, SketchSize, Source, Standing, Tally};

/// A window number no real window has: the sketch is being cleared.
const CLEARING: u64 = u64::MAX;

struct Slot {
    /// The fixed window whose counts this sketch holds, or [`CLEARING`].
    window: AtomicU64,
    sketch: Estimator,
}

/// Sliding-window counts of one policy over an unbounded key space, in fixed memory.
pub struct SlidingSketch {
    slots: [Slot; 2],
    /// Turns a key into 64 bits once per decision, so the sketch's rows hash a `u64` rather
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
    slot: &'a Slot,
    window: u64,
    hash: u64,
}

impl SlidingSketch {
    /// `origin_ms` is the start of the first fixed window (see [`super::now_ms`]).
    pub fn new(quota: Quota, size: SketchSize, origin_ms: u64) -> Self {
        let window_ms = u64::try_from(quota.window.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let slot = |window| Slot {
            window: AtomicU64::new(window),
            sketch: Estimator::new(size.hashes.max(1), size.slots.max(1)),
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
                // Another request is clearing it for this window: a few milliseconds at most.
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
                slot.sketch.reset();
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
        let count = slot.sketch.get(hash);
        // Cleared for a newer window while being read: the old counts are gone.
        if slot.window.load(Ordering::Acquire) != want {
            return 0;
        }
        count.max(0) as u64
    }

    /// Counts one request for `key` if it fits within the limit; if not, leaves the counts as
    /// they were.
    ///
    /// The current window is counted first and the increment's own result decides; a refused
    /// request takes its count back at once. Racing requests for a key's last unit may admit
    /// up to `min(threads, rows) − 1` extra (see the module doc). Admitted requests, the common case, thus make one pass over the
    /// current window's sketch instead of a read and then a write.
    pub fn acquire<K: Hash>(&self, key: &K, now_ms: u64) -> Acquired<'_> {
        let hash = self.prehash.hash_one(key);
        let (n, elapsed_ms) = self.locate(now_ms);
        // The previous window is read first: its loads can overlap the increments, which the
        // processor must otherwise finish first (each is a locked instruction).
        let prev = self.previous(n, hash);
        let slot = self.current(n);
        let after = slot.sketch.incr(hash, 1).max(1) as u64;
        let tally = Tally {
            prev,
            curr: after - 1,
            elapsed_ms,
            window_ms: self.window_ms,
        };
        let admitted = tally.admits(self.limit);
        if !admitted {
            Self::take_back(slot, n, hash);
        }
        Acquired {
            admitted,
            tally,
            slot,
            window: n,
            hash,
        }
    }

    /// Takes back an admitted request (a later policy refused it).
    pub fn undo(&self, acquired: &Acquired<'_>) {
        if acquired.admitted {
            Self::take_back(acquired.slot, acquired.window, acquired.hash);
        }
    }

    fn take_back(slot: &Slot, window: u64, hash: u64) {
        // If the sketch moved on to a newer window the count went with it.
        if slot.window.load(Ordering::Acquire) == window {
            slot.sketch.decr(hash, 1);
        }
    }

    /// Counts one request for `key` whatever the limit says (another backend admitted it), and
    /// returns the counts before it.
    pub fn record<K: Hash>(&self, key: &K, now_ms: u64) -> Tally {
        let hash = self.prehash.hash_one(key);
        let (n, elapsed_ms) = self.locate(now_ms);
        let prev = self.previous(n, hash);
        let slot = self.current(n);
        let after = slot.sketch.incr(hash, 1).max(1) as u64;
        Tally {
            prev,
            curr: after - 1,
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
    pub fn acquire(&self, key: Key<'_>, now_ms: u64, source: Source) -> Decision {
        let limit = self.session.limit();
        let dev = self.session.acquire(&key.device, now_ms);
        if !dev.admitted {
            return Decision {
                allowed: false,
                source,
                session: dev.tally.standing(limit, false),
                ip: None,
            };
        }
        let ip = match self.ip_sketch(key.ip) {
            Some((sketch, addr)) => {
                let got = sketch.acquire(&addr, now_ms);
                if !got.admitted {
                    self.session.undo(&dev);
                    return Decision {
                        allowed: false,
                        source,
                        session: dev.tally.standing(limit, false),
                        ip: Some(got.tally.standing(sketch.limit(), false)),
                    };
                }
                Some(got.tally.standing(sketch.limit(), true))
            }
            None => None,
        };
        Decision {
            allowed: true,
            source,
            session: dev.tally.standing(limit, true),
            ip,
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
        hashes: 4,
        slots: 4096,
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
