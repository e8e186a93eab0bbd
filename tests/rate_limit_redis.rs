//! The Redis backend end to end: real `redis-server` processes on free loopback ports, gateways
//! over loopback sockets against the simulator.
//!
//! Needs `redis-server` on PATH (Debian: `apt-get install -y redis-server`); without it these
//! tests fail and say so.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use amity_gateway::config::Secret;
use amity_gateway::ratelimit::{BackendKind, OnBackendError, RateLimitStats, Verdict};
use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A `redis-server` child process, killed on drop.
struct RedisServer {
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// A port nothing listens on (yet).
    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    fn new(port: u16) -> Self {
        Self { port, child: None }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts (or restarts) the server on its port and waits until it answers PING.
    async fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server not found ({e}): apt-get install -y redis-server")
            });
        self.child = Some(child);
        for _ in 0..200 {
            if self.pings().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not answer PING on port {}", self.port);
    }

    async fn pings(&self) -> bool {
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").await.is_ok()
            && s.read_exact(&mut buf).await.is_ok()
            && &buf == b"+PONG\r\n"
    }

    /// Kills the server (as a crash would) and waits for it to be gone.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A gateway using `url` for rate limiting, failing over as `on_error` says. The time budget is
/// generous: these tests prove semantics, not speed (the benches do that), and a loaded test
/// machine must not turn a healthy Redis into a fallback.
async fn gateway(url: &str, on_error: OnBackendError) -> TestEnv {
    let url = url.to_owned();
    TestEnv::start_with(move |f| {
        f.rate_limit.backend = BackendKind::Redis;
        f.rate_limit.redis.url = Some(Secret(url));
        f.rate_limit.redis.timeout_ms = 250;
        f.rate_limit.on_backend_error = on_error;
    })
    .await
}

fn stats(env: &TestEnv) -> &Arc<RateLimitStats> {
    env.rate_limit.as_ref().expect("rate limiting is on")
}

fn body(device: &str) -> String {
    format!(r#"{{"userId":"u-1","deviceId":"{device}"}}"#)
}

async fn register(env: &TestEnv, device: &str) -> Reply {
    post_json(&env.url("/api/v5/sessions"), body(device)).await
}

fn remaining(res: &Reply) -> u64 {
    let field = res.headers["ratelimit"].to_str().unwrap();
    let r = field.split(';').find_map(|p| p.strip_prefix("r=")).unwrap();
    r.parse().unwrap()
}

/// Sends probe requests (each its own device) until the gateway decides with Redis again;
/// bounded, and fails if Redis is never used.
async fn wait_for_redis(env: &TestEnv, label: &str) {
    let s = stats(env);
    let before = s.decisions(Verdict::Allowed);
    for i in 0..100 {
        let res = register(env, &format!("probe-{label}-{i}")).await;
        assert!(
            res.status == StatusCode::OK || res.status == StatusCode::TOO_MANY_REQUESTS,
            "{label}: {:?}",
            res.status
        );
        if s.decisions(Verdict::Allowed) > before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{label}: never decided with Redis");
}

/// Asserts that the gateways, taken in turn, admit exactly 10 requests for `device` between
/// them and refuse the next one on each; every decision by Redis.
async fn one_budget(gateways: &[&TestEnv], device: &str) {
    let errors: Vec<u64> = gateways.iter().map(|g| stats(g).backend_errors()).collect();
    for i in 0..10u64 {
        let g = gateways[i as usize % gateways.len()];
        let res = register(g, device).await;
        assert_eq!(res.status, StatusCode::OK, "{device} #{i}");
        assert_eq!(remaining(&res), 9 - i, "{device} #{i}: one shared count");
    }
    for (n, g) in gateways.iter().enumerate() {
        let res = register(g, device).await;
        assert_eq!(
            res.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{device} at gateway {n}"
        );
        assert_eq!(res.json()["code"], 400311);
        assert_eq!(remaining(&res), 0);
    }
    let after: Vec<u64> = gateways.iter().map(|g| stats(g).backend_errors()).collect();
    assert_eq!(errors, after, "every decision was Redis's, none a fallback");
}

fn forwarded(gateways: &[&TestEnv], device: &str) -> usize {
    gateways
        .iter()
        .flat_map(|g| g.sim.requests())
        .filter(|r| String::from_utf8_lossy(&r.body_bytes).contains(&format!("\"{device}\"")))
        .count()
}

#[tokio::test]
async fn replicas_share_one_budget_fall_back_while_redis_is_down_and_share_again_when_it_returns() {
    let mut redis = RedisServer::new(RedisServer::free_port());
    redis.start().await;
    let local = gateway(&redis.url(), OnBackendError::Local).await;
    let deny = gateway(&redis.url(), OnBackendError::Deny).await;
    let allow = gateway(&redis.url(), OnBackendError::Allow).await;
    let all = [&local, &deny, &allow];
    for (g, label) in all.iter().zip(["local", "deny", "allow"]) {
        wait_for_redis(g, label).await;
    }

    // Healthy: one budget across the three replicas, and nothing refused was forwarded.
    one_budget(&all, "device-shared").await;
    assert_eq!(forwarded(&all, "device-shared"), 10);

    // Redis crashes: every request is still answered, each as its gateway's fallback says.
    redis.stop();
    let errors = |g: &TestEnv| stats(g).backend_errors();
    let before = all.map(errors);

    // local: this replica's own sketch limits a fresh device at 10.
    for i in 0..10u64 {
        let res = register(&local, "device-outage-local").await;
        assert_eq!(res.status, StatusCode::OK, "local fallback #{i}");
        assert_eq!(remaining(&res), 9 - i);
    }
    let res = register(&local, "device-outage-local").await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers.contains_key("retry-after"));
    // ... and it remembers what it admitted while Redis was healthy (4 of device-shared).
    let res = register(&local, "device-shared").await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(remaining(&res), 5);

    // deny: refused, told to retry in a second.
    for _ in 0..2 {
        let res = register(&deny, "device-outage-deny").await;
        assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers["retry-after"], "1");
        assert_eq!(res.headers["ratelimit"], "\"session\";r=0;t=1");
    }

    // allow: admitted beyond the limit.
    for i in 0..12 {
        let res = register(&allow, "device-outage-allow").await;
        assert_eq!(res.status, StatusCode::OK, "allow fallback #{i}");
        assert!(res.headers.contains_key("ratelimit"));
    }

    let after = all.map(errors);
    assert_eq!(
        [
            after[0] - before[0],
            after[1] - before[1],
            after[2] - before[2]
        ],
        [12, 2, 12],
        "one counted fallback per request"
    );
    assert_eq!(stats(&deny).decisions(Verdict::FallbackDenied), 2);
    assert_eq!(stats(&allow).decisions(Verdict::FallbackAllowed), 12);

    // Redis returns on the same port (empty): shared limiting resumes, no gateway restart.
    redis.start().await;
    for (g, label) in all.iter().zip(["local-again", "deny-again", "allow-again"]) {
        wait_for_redis(g, label).await;
    }
    one_budget(&all, "device-after").await;
    assert_eq!(forwarded(&all, "device-after"), 10);

    local.shutdown().await;
    deny.shutdown().await;
    allow.shutdown().await;
}

#[tokio::test]
async fn a_gateway_starts_while_redis_is_down_and_shares_the_budget_once_it_is_up() {
    let mut redis = RedisServer::new(RedisServer::free_port());
    let a = gateway(&redis.url(), OnBackendError::Local).await;
    let b = gateway(&redis.url(), OnBackendError::Local).await;
    // Serving already: decided locally, each fallback counted.
    let res = register(&a, "device-early").await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(remaining(&res), 9);
    assert!(stats(&a).backend_errors() >= 1);
    assert_eq!(stats(&a).decisions(Verdict::FallbackAllowed), 1);

    redis.start().await;
    wait_for_redis(&a, "a").await;
    wait_for_redis(&b, "b").await;
    one_budget(&[&a, &b], "device-late").await;

    // What Redis holds: one hash for the device, a counter per window, expiring within two
    // windows.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = "amity-gateway:rl:session:60:device-late";
    let counters: std::collections::HashMap<String, u64> = redis::cmd("HGETALL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((1..=2).contains(&counters.len()), "{counters:?}");
    assert_eq!(counters.values().sum::<u64>(), 10, "{counters:?}");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 120_000, "{ttl}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn redis_keeps_only_the_counters_of_the_current_and_previous_window() {
    let mut redis = RedisServer::new(RedisServer::free_port());
    redis.start().await;
    let url = redis.url();
    let env = TestEnv::start_with(move |f| {
        f.rate_limit.backend = BackendKind::Redis;
        f.rate_limit.redis.url = Some(Secret(url));
        f.rate_limit.redis.timeout_ms = 250;
        f.rate_limit.window_secs = 1;
    })
    .await;
    wait_for_redis(&env, "short").await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = "amity-gateway:rl:session:1:device-old";
    // Six writes 0.6 s apart span at least three windows; each write keeps the hash alive
    // (it expires 1 to 2 s after the last one), so stale counters would pile up.
    for _ in 0..6 {
        assert_eq!(register(&env, "device-old").await.status, StatusCode::OK);
        let fields: Vec<String> = redis::cmd("HKEYS")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((1..=2).contains(&fields.len()), "{fields:?}");
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    env.shutdown().await;
}
