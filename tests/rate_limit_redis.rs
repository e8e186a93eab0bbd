//! The Redis backend end to end: real `redis-server` processes on free loopback ports, gateways
//! over loopback sockets against the simulator.
//!
//! Needs `redis-server` on PATH (Debian: `apt-get install -y redis-server`); without it these
//! tests fail and say so.

mod common;

use std::sync::Arc;
use std::time::Duration;

use amity_gateway::config::Secret;
use amity_gateway::ratelimit::{BackendKind, OnBackendError, RateLimitStats, Verdict};
use common::redis_servers::{free_port, RedisCluster, RedisSentinels, RedisServer};
use common::*;
use http::StatusCode;

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
    wait_for_redis_with(env, label, &|i| format!("probe-{label}-{i}")).await
}

/// [`wait_for_redis`] with the probes' devices named by `device`.
async fn wait_for_redis_with(env: &TestEnv, label: &str, device: &dyn Fn(usize) -> String) {
    let s = stats(env);
    let before = s.decisions(Verdict::Allowed);
    for i in 0..100 {
        let res = register(env, &device(i)).await;
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

/// With Redis unable to decide for `devices`, gateways falling back to `local`, `deny` and
/// `allow` (in that order) answer every request as configured, each fallback counted.
async fn fallbacks_as_configured(gateways: [&TestEnv; 3], devices: [&str; 3]) {
    let [local, deny, allow] = gateways;
    let errors = |g: &TestEnv| stats(g).backend_errors();
    let before = gateways.map(errors);

    // local: this replica's own sketch limits the device at 10.
    for i in 0..10u64 {
        let res = register(local, devices[0]).await;
        assert_eq!(res.status, StatusCode::OK, "local fallback #{i}");
        assert_eq!(remaining(&res), 9 - i);
    }
    let res = register(local, devices[0]).await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers.contains_key("retry-after"));

    // deny: refused, told to retry in a second.
    for _ in 0..2 {
        let res = register(deny, devices[1]).await;
        assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(res.headers["retry-after"], "1");
        assert_eq!(res.headers["ratelimit"], "\"session\";r=0;t=1");
    }

    // allow: admitted beyond the limit.
    for i in 0..12 {
        let res = register(allow, devices[2]).await;
        assert_eq!(res.status, StatusCode::OK, "allow fallback #{i}");
        assert!(res.headers.contains_key("ratelimit"));
    }

    let after = gateways.map(errors);
    assert_eq!(
        [
            after[0] - before[0],
            after[1] - before[1],
            after[2] - before[2]
        ],
        [11, 2, 12],
        "one counted fallback per request"
    );
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
    let mut redis = RedisServer::new(free_port());
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
    fallbacks_as_configured(
        all,
        [
            "device-outage-local",
            "device-outage-deny",
            "device-outage-allow",
        ],
    )
    .await;
    // local remembers what it admitted while Redis was healthy (4 of device-shared).
    let res = register(&local, "device-shared").await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(remaining(&res), 5);
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
    let mut redis = RedisServer::new(free_port());
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
    let key = "amity-gateway:rl:session:60:{device-late}";
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
    let mut redis = RedisServer::new(free_port());
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
    let key = "amity-gateway:rl:session:1:{device-old}";
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

/// The first `n` devices named `<prefix>-<i>` whose budget key hashes into `slots`.
async fn devices_in(
    cluster: &RedisCluster,
    prefix: &str,
    slots: std::ops::RangeInclusive<i64>,
    n: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0.. {
        let device = format!("{prefix}-{i}");
        let key = format!("amity-gateway:rl:session:60:{{{device}}}");
        if slots.contains(&cluster.slot(&key).await) {
            out.push(device);
            if out.len() == n {
                break;
            }
        }
    }
    out
}

#[tokio::test]
async fn a_cluster_shares_one_budget_answers_through_a_dead_primary_and_shares_again_when_it_rejoins(
) {
    let mut cluster = RedisCluster::start().await;
    let first: String = cluster.nodes[0].query(&["CLUSTER", "NODES"]).await.unwrap();
    assert!(
        first
            .lines()
            .any(|l| l.contains("myself") && l.ends_with("0-5460")),
        "the first node holds slots 0-5460: {first}"
    );
    let url = cluster.url();
    let local = gateway(&url, OnBackendError::Local).await;
    let deny = gateway(&url, OnBackendError::Deny).await;
    let allow = gateway(&url, OnBackendError::Allow).await;
    let all = [&local, &deny, &allow];
    for (g, label) in all.iter().zip(["local", "deny", "allow"]) {
        wait_for_redis(g, label).await;
    }

    // One budget per device whichever primary holds it.
    for slots in [0..=5460, 5461..=10922, 10923..=16383] {
        let device = devices_in(&cluster, "device-shared", slots, 1)
            .await
            .remove(0);
        one_budget(&all, &device).await;
        assert_eq!(forwarded(&all, &device), 10);
    }

    // The first primary crashes: the devices it held are decided by each gateway's fallback,
    // every request answered, every fallback counted.
    let on_first = devices_in(&cluster, "device-outage", 0..=5460, 3).await;
    cluster.nodes[0].stop();
    fallbacks_as_configured(all, [&on_first[0], &on_first[1], &on_first[2]]).await;

    // It comes back on its port with its slots: shared limiting resumes, no gateway restart.
    cluster.nodes[0].start().await;
    cluster.wait_ok().await;
    let probes = devices_in(&cluster, "probe-rejoined", 0..=5460, 100).await;
    for (g, label) in all.iter().zip(["local", "deny", "allow"]) {
        wait_for_redis_with(g, label, &|i| format!("{}-{label}", probes[i])).await;
    }
    let device = devices_in(&cluster, "device-after", 0..=5460, 1)
        .await
        .remove(0);
    one_budget(&all, &device).await;
    assert_eq!(forwarded(&all, &device), 10);

    local.shutdown().await;
    deny.shutdown().await;
    allow.shutdown().await;
}

/// Sends requests (fresh devices, 100 ms apart, bounded) through each gateway until Redis
/// decides again; asserts every request was answered and each one before that fell back
/// (local: admitted) and was counted.
async fn follow_the_switch(gateways: &[&TestEnv]) {
    for (n, g) in gateways.iter().enumerate() {
        let s = stats(g);
        let (decided, errors, fallbacks) = (
            s.decisions(Verdict::Allowed),
            s.backend_errors(),
            s.decisions(Verdict::FallbackAllowed),
        );
        let mut sent = 0u64;
        while s.decisions(Verdict::Allowed) == decided {
            assert!(
                sent < 300,
                "gateway {n}: never decided with the promoted replica"
            );
            let res = register(g, &format!("switch-{n}-{sent}")).await;
            assert_eq!(res.status, StatusCode::OK, "gateway {n} #{sent}");
            sent += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let failed = s.backend_errors() - errors;
        assert!(failed >= 1, "gateway {n}: the switch went uncounted");
        assert_eq!(
            failed,
            sent - 1,
            "gateway {n}: every request but the last fell back"
        );
        assert_eq!(s.decisions(Verdict::FallbackAllowed) - fallbacks, failed);
    }
}

#[tokio::test]
async fn behind_sentinel_the_gateways_follow_a_promoted_replica_and_count_the_fallbacks_between() {
    let mut set = RedisSentinels::start().await;
    let a = gateway(&set.url(), OnBackendError::Local).await;
    let b = gateway(&set.url(), OnBackendError::Local).await;
    wait_for_redis(&a, "a").await;
    wait_for_redis(&b, "b").await;
    one_budget(&[&a, &b], "device-before").await;

    // The primary crashes. Until Sentinel promotes the replica and a gateway finds it, its
    // decisions are fallbacks (here local: fresh devices are admitted), each counted.
    set.primary.stop();
    follow_the_switch(&[&a, &b]).await;
    set.wait_primary(set.replica.port).await;

    // One budget again, kept by the promoted replica.
    one_budget(&[&a, &b], "device-after").await;
    let counters: std::collections::HashMap<String, u64> = set
        .replica
        .query(&["HGETALL", "amity-gateway:rl:session:60:{device-after}"])
        .await
        .unwrap();
    assert_eq!(counters.values().sum::<u64>(), 10, "{counters:?}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn behind_sentinel_a_primary_that_answers_nothing_is_left_behind_too() {
    let set = RedisSentinels::start().await;
    let a = gateway(&set.url(), OnBackendError::Local).await;
    wait_for_redis(&a, "a").await;
    // Frozen, not dead: its connections stay open, so no call fails, they only time out.
    set.primary.freeze();
    follow_the_switch(&[&a]).await;
    set.wait_primary(set.replica.port).await;
    one_budget(&[&a], "device-after-freeze").await;
    a.shutdown().await;
}
