//! A flood of 1,000,000 distinct deviceIds through the local limiter, with light devices
//! interleaved: resident memory before, during and after, and how many light devices were
//! wrongly refused. Then the other hard case for a count-min sketch: many devices, each well
//! within its budget but making several requests (100,000 devices, 6 of 10 each, round-robin),
//! where a device whose counters are all shared by other devices may be over-counted. Run for
//! the default size (`expected_devices` = 100,000) and a tenth of it; the steady case also
//! runs `pingora_limits`' plain count-min estimator in the same memory, for comparison, and
//! checks the sketch's stated over-count bound (it panics if the measured rate exceeds it).
//!
//! `cargo bench --bench limiter_flood`
//!
//! All requests fall in one 60 s window (the flood takes well under a second per size), the
//! worst case for the sketch: every flood request is still counted when the light devices ask.

#[path = "support/alloc.rs"]
mod alloc;
#[path = "support/rss.rs"]
mod rss;

use std::fmt::Write;
use std::time::Instant;

use amity_gateway::ratelimit::local::SlidingSketch;
use amity_gateway::ratelimit::sketch::Sketch;
use amity_gateway::ratelimit::{Key, RateLimitFile, RateLimiter};
use pingora_limits::estimator::Estimator;

const FLOOD: usize = 1_000_000;
/// Light devices, each making `LIGHT_REQUESTS` of its 10: all must be admitted.
const LIGHT: usize = 10_000;
const LIGHT_REQUESTS: usize = 5;
/// Devices making exactly their 10 requests: all must be admitted too (the tightest case).
const AT_LIMIT: usize = 1_000;
const AT_LIMIT_REQUESTS: usize = 10;

fn rss_kib() -> u64 {
    rss::rss_kib(None).unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

struct Group {
    name: &'static str,
    devices: usize,
    requests: usize,
    refused: Vec<bool>,
    /// Send one of this group's requests every `every` flood ids.
    every: usize,
    sent: usize,
}

impl Group {
    fn new(name: &'static str, devices: usize, requests: usize) -> Self {
        Self {
            name,
            devices,
            requests,
            refused: vec![false; devices],
            every: FLOOD / (devices * requests),
            sent: 0,
        }
    }

    fn maybe_send(&mut self, i: usize, limiter: &RateLimiter, buf: &mut String) {
        if i % self.every != self.every - 1 || self.sent >= self.devices * self.requests {
            return;
        }
        let device = self.sent % self.devices;
        self.sent += 1;
        buf.clear();
        let _ = write!(buf, "{}-{device:05}", self.name);
        let d = limiter.decide_local(Key {
            device: buf,
            ip: None,
        });
        if !d.allowed {
            self.refused[device] = true;
        }
    }

    fn wrongly_refused(&self) -> usize {
        self.refused.iter().filter(|r| **r).count()
    }
}

fn run(expected_devices: usize) {
    let rss_start = rss_kib();
    let file = RateLimitFile {
        expected_devices,
        ..RateLimitFile::default()
    };
    let config = file.resolve().unwrap().unwrap();
    let limiter = RateLimiter::new(&config).unwrap();
    // Everything the loop keeps is allocated before the first reading, so the readings see
    // the limiter and nothing of the bench's own bookkeeping.
    let mut light = Group::new("light", LIGHT, LIGHT_REQUESTS);
    let mut at_limit = Group::new("at-limit", AT_LIMIT, AT_LIMIT_REQUESTS);
    let mut buf = String::with_capacity(32);
    let mut other = String::with_capacity(32);
    let mut checkpoints: Vec<(usize, u64)> = Vec::with_capacity(FLOOD / 250_000);
    let rss_before = rss_kib();
    let mut flood_refused = 0usize;
    let start = Instant::now();
    for i in 0..FLOOD {
        buf.clear();
        let _ = write!(buf, "flood-{i:08}");
        if !limiter
            .decide_local(Key {
                device: &buf,
                ip: None,
            })
            .allowed
        {
            flood_refused += 1;
        }
        light.maybe_send(i, &limiter, &mut other);
        at_limit.maybe_send(i, &limiter, &mut other);
        if (i + 1) % 250_000 == 0 {
            checkpoints.push(((i + 1) / 1000, rss_kib()));
        }
    }
    let elapsed = start.elapsed();
    let rss_after = rss_kib();
    let decisions = FLOOD + light.sent + at_limit.sent;
    let origin = amity_gateway::ratelimit::now_ms();
    let sketch = SlidingSketch::new(config.session, config.sketch, origin);
    println!(
        "expected_devices {expected_devices} ({:.1} MiB for both windows)",
        sketch.bytes() as f64 / (1024.0 * 1024.0)
    );
    println!(
        "  RSS MiB: process start {:.1}, limiter built {:.1}, after flood {:.1} (growth {:+.1}); during: {}",
        mib(rss_start),
        mib(rss_before),
        mib(rss_after),
        mib(rss_after) - mib(rss_before),
        checkpoints
            .iter()
            .map(|(k, rss)| format!("{k}k: {:.1}", mib(*rss)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  {decisions} decisions in {:.2} s ({:.0} ns each, id formatting included); flood ids refused: {flood_refused}",
        elapsed.as_secs_f64(),
        elapsed.as_nanos() as f64 / decisions as f64
    );
    // The first request of a window clears the sketch of the window before last.
    sketch.acquire(&"warm", origin);
    let t = Instant::now();
    let two_windows = 2 * config.session.window.as_millis() as u64;
    sketch.acquire(&"rotate", origin + two_windows);
    println!(
        "  window rotation (clearing one sketch): {:.2} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    for g in [&light, &at_limit] {
        println!(
            "  {} devices x {} requests (limit 10): {} wrongly refused ({:.2} %)",
            g.devices,
            g.requests,
            g.wrongly_refused(),
            100.0 * g.wrongly_refused() as f64 / g.devices as f64
        );
    }
}

/// Devices of the steady case, and requests each makes (of its 10).
const STEADY: usize = 100_000;
const STEADY_REQUESTS: usize = 6;

fn steady(expected_devices: usize) {
    let file = RateLimitFile {
        expected_devices,
        ..RateLimitFile::default()
    };
    let config = file.resolve().unwrap().unwrap();
    let limit = u64::from(config.session.requests.get());
    let window_ms = config.session.window.as_millis() as u64;
    let slot_ms = window_ms / STEADY_REQUESTS as u64;
    let sketch = SlidingSketch::new(config.session, config.sketch, 0);
    let id = |buf: &mut String, device: usize| {
        buf.clear();
        let _ = write!(buf, "device-abc-{device:06}");
    };
    let mut buf = String::with_capacity(32);
    // Every device makes its requests evenly through each window, so its sliding estimate
    // never passes 7 of 10: any refusal is the sketch's doing. Window 1 alone is the case of
    // the bound's table; in windows 2 and 3 the previous window's sketch weighs in too.
    for window in 0..3u64 {
        let mut refused = vec![false; STEADY];
        for k in 0..STEADY_REQUESTS as u64 {
            for (device, refused) in refused.iter_mut().enumerate() {
                id(&mut buf, device);
                let at = window * window_ms + k * slot_ms + device as u64 % slot_ms;
                *refused |= !sketch.acquire(&buf.as_str(), at).admitted;
            }
        }
        let wrong = refused.iter().filter(|r| **r).count();
        println!(
            "  {STEADY} devices x {STEADY_REQUESTS} requests per window (limit 10), window {}: {wrong} wrongly refused ({:.3} %)",
            window + 1,
            100.0 * wrong as f64 / STEADY as f64
        );
    }

    // The bound, on one window's sketch: the share of devices whose estimate exceeds their
    // true count must stay within `Sketch::over_count_bound`.
    let one = Sketch::new(expected_devices, config.session.requests.get());
    let hasher = ahash::RandomState::new();
    for _ in 0..STEADY_REQUESTS {
        for device in 0..STEADY {
            id(&mut buf, device);
            one.add_if(hasher.hash_one(buf.as_str()), |_| true);
        }
    }
    let over = (0..STEADY)
        .filter(|device| {
            id(&mut buf, *device);
            one.estimate(hasher.hash_one(buf.as_str())) > STEADY_REQUESTS as u64
        })
        .count();
    let rate = over as f64 / STEADY as f64;
    let bound = one.over_count_bound(STEADY);
    println!(
        "  over-counted after 6 each: {over} ({:.4} %), stated bound {:.4} %",
        100.0 * rate,
        100.0 * bound
    );
    assert!(rate <= bound, "the sketch's over-count bound does not hold");

    // pingora's plain count-min estimator in the same memory (its counters are 8 bytes; 4
    // rows), window 1 alone: count, refuse past the limit and take the count back.
    let slots = one.bytes() / (4 * 8);
    let plain = Estimator::new(4, slots);
    let mut refused = vec![false; STEADY];
    for _ in 0..STEADY_REQUESTS {
        for (device, refused) in refused.iter_mut().enumerate() {
            id(&mut buf, device);
            let key = buf.as_str();
            if plain.incr(key, 1) as u64 > limit {
                plain.decr(key, 1);
                *refused = true;
            }
        }
    }
    let wrong = refused.iter().filter(|r| **r).count();
    println!(
        "  pingora Estimator 4 x {slots} (same bytes), window 1: {wrong} wrongly refused ({:.3} %)",
        100.0 * wrong as f64 / STEADY as f64
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a name filter is not meaningful here.
    // The default first: its resident-memory figures start from a fresh process.
    let sizes = [100_000, 10_000];
    for expected in sizes {
        run(expected);
    }
    // After every flood, so that memory the steady case leaves with the allocator does not
    // blur the flood's resident-memory figures.
    for expected in sizes {
        println!("expected_devices {expected}, steady devices");
        steady(expected);
    }
}
