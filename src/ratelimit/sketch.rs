//! A count-min sketch with conservative update, one 64-bit word per key, for the local limiter.
//!
//! ## Layout
//!
//! The sketch is an array of `AtomicU64` words. Each word is cut into counters of `bits` bits
//! (4, 8, 16 or 32: the narrowest that holds the limit). A key's hash picks one word, then
//! `rows` distinct counters of that word (4 of 16 for 4-bit counters: 1,820 possible choices).
//! A key's counters thus all live in one word, so
//!
//! - a decision reads one cache line, not one per row (a plain count-min sketch of 4 rows
//!   costs 4 cache misses once the sketch outgrows the caches);
//! - a key is counted by one compare-and-swap of its word: read, decide, write or retry. Of two
//!   racing requests for a key's last unit exactly one is admitted, and a refused request never
//!   touches the sketch;
//! - the update is **conservative**: only the key's counters holding its current estimate
//!   (their smallest) are raised, by one. Every counter then stays at least the count of every
//!   key mapped to it (no under-count) while rising no higher than the largest estimate of the
//!   keys sharing it. Two devices sharing some counters in a plain count-min sketch read the
//!   sum of their counts there; here they read about the larger one, so devices that each
//!   make 6 of their 10 requests are not refused because they collide.
//!
//! Counters saturate at `2^bits − 1` (at least the limit), where a key is refused anyway.
//!
//! ## Over-count bound
//!
//! A key is over-counted only if each of its `rows` counters is also chosen by another key
//! counted in the same window. With `K` keys spread over `words` words (`λ = K / words` other
//! keys per word, Poisson), each other key in the word holding a given counter with
//! probability `r = rows / counters per word`:
//!
//! ```text
//! P(over-counted) ≤ Σₙ Poisson(n; λ) · (1 − (1 − r)ⁿ)^rows
//! ```
//!
//! [`Sketch::over_count_bound`] evaluates it; the unit tests and `benches/limiter_flood.rs`
//! check measured rates against it. How much a key is over-counted depends on how it is
//! covered:
//!
//! - by one other key choosing exactly its counters (probability about `λ / choices`): the
//!   two read the sum of their counts, as in any count-min sketch;
//! - by several keys each sharing some of its counters: about the largest of their counts
//!   minus its own, so keys of similar rates barely over-count each other.
//!
//! Words are sized from the expected number of keys per window, `K₀`:
//! `words = next_power_of_two(K₀ · bits / 2)`, so that at `K = K₀`, `λ ≤ 2 / bits`. For the
//! default limit (10: 4-bit counters, 4 of 16) and `K₀` = 100,000 (262,144 words, 2 MiB per
//! window):
//!
//! | keys in the window | λ | P(over-counted) at most | exact choice shared (sum) |
//! | --- | --- | --- | --- |
//! | 10,000 | 0.04 | 2.7·10⁻⁵ | 2·10⁻⁵ |
//! | 100,000 | 0.38 | 3.7·10⁻³ | 2·10⁻⁴ |
//! | 300,000 | 1.14 | 2.5·10⁻² | 6·10⁻⁴ |
//! | 1,000,000 | 3.8 | 0.22 | 2·10⁻³ |
//!
//! Being over-counted at all is far from being refused: a device is refused early only when
//! its excess reaches the budget it has left (for a device making 6 of 10, about 4).

use std::sync::atomic::{AtomicU64, Ordering};

/// Most counter groups a key uses (its "rows").
const MAX_ROWS: usize = 4;

/// Counts per key over an unbounded key space, in fixed memory.
pub struct Sketch {
    words: Box<[AtomicU64]>,
    mask: u64,
    bits: u32,
    /// Largest value a counter holds: `2^bits − 1`.
    cap: u64,
    rows: u32,
    /// Every choice of `rows` counters out of a word's, as bit offsets.
    choices: Box<[[u8; MAX_ROWS]]>,
}

/// Where a counted request went, to take it back exactly ([`Sketch::take_back`]).
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    index: usize,
    before: u64,
    after: u64,
}

/// A key's word and the bit offsets of its counters in it.
struct Lanes {
    index: usize,
    shifts: [u8; MAX_ROWS],
}

impl Sketch {
    /// A sketch for about `expected_keys` distinct keys whose counts must reach `max_count`.
    pub fn new(expected_keys: usize, max_count: u32) -> Self {
        let bits = match max_count {
            0..=15 => 4,
            16..=255 => 8,
            256..=65_535 => 16,
            _ => 32,
        };
        let per_word = 64 / bits;
        let rows = per_word.min(MAX_ROWS as u32).min(per_word / 2).max(1);
        let words = Self::words_for(expected_keys, bits);
        let choices = (0u32..1 << per_word)
            .filter(|set| set.count_ones() == rows)
            .map(|set| {
                let mut shifts = [0u8; MAX_ROWS];
                let lanes = (0..per_word).filter(|lane| set & (1 << lane) != 0);
                for (shift, lane) in shifts.iter_mut().zip(lanes) {
                    *shift = (lane * bits) as u8;
                }
                shifts
            })
            .collect();
        Self {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            mask: words as u64 - 1,
            bits,
            cap: (1u64 << bits) - 1,
            rows,
            choices,
        }
    }

    /// `next_power_of_two(expected_keys · bits / 2)`, at least 64 words.
    fn words_for(expected_keys: usize, bits: u32) -> usize {
        expected_keys
            .saturating_mul(bits as usize / 2)
            .max(64)
            .checked_next_power_of_two()
            .unwrap_or(1 << 40)
    }

    /// Bytes of counters.
    pub fn bytes(&self) -> usize {
        self.words.len() * 8
    }

    /// The largest count a counter holds.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    fn lanes(&self, hash: u64) -> Lanes {
        // The word from the high half, the choice of counters from the low half.
        let index = ((hash >> 32) & self.mask) as usize;
        let pick = ((hash & 0xffff_ffff) * self.choices.len() as u64) >> 32;
        Lanes {
            index,
            shifts: self.choices.get(pick as usize).copied().unwrap_or_default(),
        }
    }

    /// The smallest of the key's counters in `word`.
    fn min_in(&self, word: u64, lanes: &Lanes) -> u64 {
        lanes.shifts[..self.rows as usize]
            .iter()
            .map(|s| (word >> s) & self.cap)
            .min()
            .unwrap_or(0)
    }

    /// The key's estimate: never below its true count (up to `cap`).
    pub fn estimate(&self, hash: u64) -> u64 {
        let lanes = self.lanes(hash);
        let word = self.words[lanes.index].load(Ordering::Acquire);
        self.min_in(word, &lanes)
    }

    /// Counts one for the key if `admit(estimate before)` says so, conservatively (only its
    /// counters at the estimate rise). Returns the estimate before and, if counted, a ticket.
    /// A key at `cap` is not raised further.
    pub fn add_if(&self, hash: u64, admit: impl Fn(u64) -> bool) -> (u64, Option<Ticket>) {
        let lanes = self.lanes(hash);
        let cell = &self.words[lanes.index];
        let mut word = cell.load(Ordering::Acquire);
        loop {
            let m = self.min_in(word, &lanes);
            if !admit(m) {
                return (m, None);
            }
            if m >= self.cap {
                return (
                    m,
                    Some(Ticket {
                        index: lanes.index,
                        before: word,
                        after: word,
                    }),
                );
            }
            let mut next = word;
            for s in &lanes.shifts[..self.rows as usize] {
                if (word >> s) & self.cap == m {
                    next += 1 << s;
                }
            }
            match cell.compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    return (
                        m,
                        Some(Ticket {
                            index: lanes.index,
                            before: word,
                            after: next,
                        }),
                    )
                }
                Err(now) => word = now,
            }
        }
    }

    /// Takes a counted request back if its word is untouched since; otherwise leaves it (an
    /// over-count of one, never an under-count: lowering a counter another key has since
    /// relied on could hide that key's requests).
    pub fn take_back(&self, ticket: &Ticket) -> bool {
        self.words[ticket.index]
            .compare_exchange(
                ticket.after,
                ticket.before,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
    }

    /// Sets every counter to zero.
    pub fn clear(&self) {
        for w in self.words.iter() {
            w.store(0, Ordering::Relaxed);
        }
    }

    /// The bound of the module doc for `keys` distinct keys counted: the probability that a
    /// key shares every one of its counters with another key.
    pub fn over_count_bound(&self, keys: usize) -> f64 {
        let lambda = keys as f64 / self.words.len() as f64;
        let per_word = 64 / self.bits;
        let miss = 1.0 - f64::from(self.rows) / f64::from(per_word);
        let mut p_n = (-lambda).exp();
        let mut sum = 0.0;
        for n in 1..200 {
            p_n *= lambda / n as f64;
            sum += p_n * (1.0 - miss.powi(n)).powi(self.rows as i32);
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn hash(k: u64) -> u64 {
        ahash::RandomState::with_seeds(1, 2, 3, 4).hash_one(k)
    }

    #[test]
    fn layout_follows_the_limit() {
        let s = Sketch::new(100_000, 10);
        assert_eq!((s.bits, s.rows, s.choices.len(), s.cap), (4, 4, 1820, 15));
        assert_eq!(s.bytes(), 2 << 20);
        let s = Sketch::new(1000, 100);
        assert_eq!((s.bits, s.rows, s.choices.len()), (8, 4, 70));
        let s = Sketch::new(1000, 1000);
        assert_eq!((s.bits, s.rows, s.choices.len()), (16, 2, 6));
        let s = Sketch::new(1000, 1_000_000);
        assert_eq!((s.bits, s.rows, s.choices.len()), (32, 1, 2));
        // Each choice is `rows` distinct counters.
        let s = Sketch::new(1000, 10);
        for c in s.choices.iter() {
            assert!(c.windows(2).all(|w| w[0] < w[1]), "{c:?}");
        }
    }

    #[test]
    fn counts_saturate_at_the_cap_without_spilling_into_neighbours() {
        let s = Sketch::new(64, 10);
        for _ in 0..40 {
            s.add_if(hash(1), |_| true);
        }
        assert_eq!(s.estimate(hash(1)), 15);
        let word = s.words[s.lanes(hash(1)).index].load(Ordering::Relaxed);
        // Exactly the key's four counters are full; no carry reached another.
        assert_eq!(word.count_ones(), 16, "{word:#x}");
    }

    #[test]
    fn take_back_restores_only_an_untouched_word() {
        let s = Sketch::new(64, 10);
        let (_, t) = s.add_if(hash(7), |_| true);
        assert!(s.take_back(&t.unwrap()));
        assert_eq!(s.estimate(hash(7)), 0);
        let (_, t) = s.add_if(hash(7), |_| true);
        s.add_if(hash(7), |_| true);
        assert!(!s.take_back(&t.unwrap()));
        assert_eq!(s.estimate(hash(7)), 2);
    }

    /// A seeded random workload far past the expected keys: no estimate is ever below the true
    /// count, and the share of over-counted keys stays within the stated bound.
    #[test]
    fn never_under_counts_and_the_over_count_bound_holds() {
        for (expected, keys, limit) in [
            (10_000, 10_000, 10),
            (10_000, 30_000, 10),
            (2_000, 2_000, 200),
            (2_000, 4_000, 5000),
        ] {
            let s = Sketch::new(expected, limit);
            let mut rng = StdRng::seed_from_u64(42);
            let mut truth: HashMap<u64, u64> = HashMap::new();
            // Skewed counts: most keys a few requests, some many.
            for _ in 0..keys * 4 {
                let k = if rng.random_bool(0.8) {
                    rng.random_range(0..keys as u64)
                } else {
                    rng.random_range(0..(keys as u64 / 20).max(1))
                };
                let h = hash(k);
                let (before, ticket) = s.add_if(h, |_| true);
                let t = truth.entry(k).or_default();
                assert!(before >= (*t).min(s.cap()), "under-count before adding");
                assert!(ticket.is_some());
                *t += 1;
            }
            let mut over = 0usize;
            for (k, t) in &truth {
                let e = s.estimate(hash(*k));
                assert!(e >= (*t).min(s.cap()), "key {k}: estimate {e} < true {t}");
                if e > *t && *t < s.cap() {
                    over += 1;
                }
            }
            let rate = over as f64 / truth.len() as f64;
            let bound = s.over_count_bound(truth.len());
            assert!(
                rate <= bound,
                "{expected}/{keys}/{limit}: over-counted {rate:.5} > bound {bound:.5}"
            );
        }
    }

    #[test]
    fn racing_adds_for_the_last_unit_admit_exactly_the_limit() {
        let s = Sketch::new(64, 1000);
        let admitted: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        (0..1000)
                            .filter(|_| s.add_if(hash(3), |m| m < 1000).1.is_some())
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).sum()
        });
        assert_eq!(admitted, 1000);
        assert_eq!(s.estimate(hash(3)), 1000);
    }
}
