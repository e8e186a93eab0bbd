//! A flood of 1,000,000 distinct deviceIds through the local limiter, with light devices
//! interleaved: resident memory before, during and after, and how many light devices were
//! wrongly refused. Then the other hard case for a count-min sketch: many devices, each well
//! within its budget but making several requests (100,000 devices, 6 of 10 each, round-robin),
//! where a device whose counters are all shared is over-counted by whole devices' counts. Run
//! for the default sketch and two smaller sizes.
//!
//! `cargo bench --bench limiter_flood`
//!
//! All requests fall in one 60 s window (the flood takes well under a second per size), the
//! worst case for the sketch: every flood request is still counted when the light devices ask.

#[path = "support/alloc.rs"]
mod alloc;

use std::fmt::Write;
use std::time::Instant;

use amity_gateway::ratelimit::local::SlidingSketch;
use amity_gateway::ratelimit::{Key, RateLimitFile, RateLimiter};

const FLOOD: usize = 1_000_000;
/// Light devices, each making `LIGHT_REQUESTS` of its 10: all must be admitted.
const LIGHT: usize = 10_000;
const LIGHT_REQUESTS: usize = 5;
/// Devices making exactly their 10 requests: all must be admitted too (the tightest case).
const AT_LIMIT: usize = 1_000;
const AT_LIMIT_REQUESTS: usize = 10;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
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

fn run(slots: usize) {
    let rss_start = rss_kib();
    let file = RateLimitFile {
        sketch_slots: slots,
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
    println!(
        "sketch {} x {slots} ({:.0} MiB for both windows)",
        config.sketch.hashes,
        (2 * config.sketch.hashes * slots * 8) as f64 / (1024.0 * 1024.0)
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
    let origin = amity_gateway::ratelimit::now_ms();
    let sketch = SlidingSketch::new(config.session, config.sketch, origin);
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

fn steady(slots: usize) {
    let file = RateLimitFile {
        sketch_slots: slots,
        ..RateLimitFile::default()
    };
    let config = file.resolve().unwrap().unwrap();
    let window_ms = config.session.window.as_millis() as u64;
    let slot_ms = window_ms / STEADY_REQUESTS as u64;
    let sketch = SlidingSketch::new(config.session, config.sketch, 0);
    let mut buf = String::with_capacity(32);
    // Every device makes its requests evenly through each window, so its sliding estimate
    // never passes 7 of 10: any refusal is the sketch's doing. Window 1 alone is the case of
    // the bound's table; in windows 2 and 3 the previous window's sketch weighs in too.
    for window in 0..3u64 {
        let mut refused = vec![false; STEADY];
        for k in 0..STEADY_REQUESTS as u64 {
            for (device, refused) in refused.iter_mut().enumerate() {
                buf.clear();
                let _ = write!(buf, "device-abc-{device:06}");
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
}

fn main() {
    // `cargo bench` passes `--bench`; a name filter is not meaningful here.
    // The default first: its resident-memory figures start from a fresh process.
    let sizes = [1 << 20, 1 << 18, 1 << 16];
    for slots in sizes {
        run(slots);
    }
    // After every flood, so that memory the steady case leaves with the allocator does not
    // blur the flood's resident-memory figures.
    for slots in sizes {
        println!("sketch 4 x {slots}, steady devices");
        steady(slots);
    }
}
