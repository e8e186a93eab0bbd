//! `[cache.shared]` end to end: two gateways in front of one simulator, sharing a real
//! `redis-server` on loopback. What one replica learns (a purge, a logout, a token it issued,
//! a revocation) the other applies; without Redis each serves on its own facts and says so.
//!
//! Needs `redis-server` on PATH (Debian: `apt-get install -y redis-server`); without it these
//! tests fail and say so.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use amity_gateway::cache::shared::SharedStats;
use amity_gateway::config::Secret;
use amity_gateway::sim::{SimHandle, Simulator};
use common::redis_servers::{free_port, RedisServer};
use common::*;
use http::{Method, StatusCode};

/// A gateway in front of `sim`, sharing its cache truth through `redis`.
async fn replica(sim: &Arc<Simulator>, sim_addr: SocketAddr, redis: &RedisServer) -> TestEnv {
    let url = redis.url();
    TestEnv::start_on(sim.clone(), sim_addr, move |f| {
        f.cache.shared.enabled = true;
        f.cache.shared.url = Some(Secret(url));
    })
    .await
}

fn shared(env: &TestEnv) -> SharedStats {
    env.cache.stats().shared.expect("sharing is on")
}

/// Polls `ok` every 10 ms for at most 10 s; returns how long it took.
async fn wait(what: &str, ok: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: not within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

/// Runs `act` on `from` and waits until `to` has applied every fact it published; returns how
/// long the facts took to arrive.
async fn propagated<F: std::future::Future>(from: &TestEnv, to: &TestEnv, act: F) -> F::Output {
    let (queued, applied) = (shared(from).queued, shared(to).applied);
    let out = act.await;
    let answered = Instant::now();
    // Facts are queued before the answer is returned, and sent in order.
    let n = shared(from).queued - queued;
    assert!(n >= 1, "the action published nothing");
    let all = shared(from).queued;
    wait("published", || shared(from).published >= all).await;
    wait("applied by the other replica", || {
        shared(to).applied >= applied + n
    })
    .await;
    eprintln!(
        "{n} fact(s) applied by the other replica {:?} after the answer",
        answered.elapsed()
    );
    out
}

async fn login(env: &TestEnv, user: &str, device: &str) -> String {
    let body = format!(r#"{{"userId":"{user}","deviceId":"{device}"}}"#);
    let r = post_json(&env.url("/api/v3/sessions"), body).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    r.json()["accessToken"].as_str().expect("token").to_owned()
}

/// Looks up `user` with `token`; returns the status and `x-cache`.
async fn lookup(env: &TestEnv, user: &str, token: &str) -> (StatusCode, String) {
    let auth = format!("Bearer {token}");
    let r = request(
        Method::GET,
        &env.url(&format!("/api/v3/users/{user}")),
        &[("authorization", &auth)],
        "",
    )
    .await;
    let x = r
        .headers
        .get("x-cache")
        .map_or("<none>", |v| v.to_str().unwrap_or("<bad>"));
    (r.status, x.to_owned())
}

async fn synced_metric(env: &TestEnv) -> f64 {
    let r = request(
        Method::GET,
        &format!("http://{}/metrics", env.gw.admin_addr),
        &[],
        "",
    )
    .await;
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix("gateway_cache_shared_synced ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("gateway_cache_shared_synced missing from\n{text}"))
}

async fn both_synced(a: &TestEnv, b: &TestEnv) {
    wait("both replicas caught up", || {
        shared(a).synced && shared(b).synced
    })
    .await;
    assert_eq!(synced_metric(a).await, 1.0);
    assert_eq!(synced_metric(b).await, 1.0);
}

/// B caches alice in the network's partition through her own token; then a token issued
/// through A finds that answer on B at once (no lookup of its own was needed to trust it).
async fn a_token_from_a_is_a_hit_on_b(a: &TestEnv, b: &TestEnv, device: &str) -> String {
    let own = login(b, "alice", &format!("{device}-alice")).await;
    assert_eq!(
        lookup(b, "alice", &own).await,
        (StatusCode::OK, "MISS".into())
    );
    assert_eq!(
        lookup(b, "alice", &own).await,
        (StatusCode::OK, "HIT".into())
    );
    let from_a = propagated(a, b, login(a, "carol", device)).await;
    assert_eq!(
        lookup(b, "alice", &from_a).await,
        (StatusCode::OK, "HIT".into()),
        "B trusts the token A issued"
    );
    from_a
}

/// Two replicas in front of one simulator, sharing one Redis, both caught up.
struct Pair {
    redis: RedisServer,
    sim: Arc<Simulator>,
    handle: SimHandle,
    a: TestEnv,
    b: TestEnv,
}

impl Pair {
    async fn start() -> Self {
        let mut redis = RedisServer::new(free_port());
        redis.start().await;
        let (sim, handle) = start_sim().await;
        let a = replica(&sim, handle.addr, &redis).await;
        let b = replica(&sim, handle.addr, &redis).await;
        both_synced(&a, &b).await;
        Self {
            redis,
            sim,
            handle,
            a,
            b,
        }
    }
}

async fn stop(a: TestEnv, b: TestEnv, handle: SimHandle) {
    a.shutdown().await;
    b.shutdown().await;
    handle.stop().await;
}

#[tokio::test]
async fn replicas_share_purges_issued_tokens_and_logouts() {
    let Pair {
        redis: _redis,
        sim,
        handle,
        a,
        b,
    } = Pair::start().await;

    let from_a = a_token_from_a_is_a_hit_on_b(&a, &b, "d-carol").await;

    // A purge seen through A: B's cached alice is gone.
    sim.purge();
    propagated(&a, &b, login(&a, "dave", "d-dave")).await;
    assert_eq!(
        lookup(&b, "alice", &from_a).await,
        (StatusCode::OK, "MISS".into())
    );
    assert_eq!(
        lookup(&b, "alice", &from_a).await,
        (StatusCode::OK, "HIT".into())
    );
    assert!(b.cache.stats().purges >= 1, "B counted the purge");

    // A newer session for carol's device through A retires her token on B too.
    let newer = propagated(&a, &b, login(&a, "carol", "d-carol")).await;
    assert_ne!(lookup(&b, "alice", &from_a).await.1, "HIT", "retired");
    assert_eq!(
        lookup(&b, "alice", &newer).await,
        (StatusCode::OK, "HIT".into())
    );

    // Logout through A: B stops serving that token.
    let auth = format!("Bearer {newer}");
    let (url, headers) = (
        a.url("/api/v4/sessions"),
        [("authorization", auth.as_str())],
    );
    let logout = request(Method::DELETE, &url, &headers, "");
    assert_eq!(propagated(&a, &b, logout).await.status, StatusCode::OK);
    let (status, x) = lookup(&b, "alice", &newer).await;
    assert_ne!(x, "HIT", "logged out through A");
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    stop(a, b, handle).await;
}

#[tokio::test]
async fn without_redis_each_replica_serves_on_its_own_facts_and_sharing_resumes_when_it_returns() {
    let Pair {
        mut redis,
        sim: _,
        handle,
        a,
        b,
    } = Pair::start().await;
    let from_a = a_token_from_a_is_a_hit_on_b(&a, &b, "d-1").await;
    let own_b = login(&b, "erin", "d-erin").await;
    assert_eq!(lookup(&b, "alice", &own_b).await.1, "HIT");

    redis.stop();
    wait("both replicas on local truth", || {
        !shared(&a).synced && !shared(&b).synced
    })
    .await;
    assert_eq!(synced_metric(&a).await, 0.0);
    assert_eq!(synced_metric(&b).await, 0.0);
    // B still serves its own token from its cache; A's token, whose logout B could be missing,
    // is forwarded (and proven by the upstream) instead.
    assert_eq!(
        lookup(&b, "alice", &own_b).await,
        (StatusCode::OK, "HIT".into())
    );
    assert_eq!(
        lookup(&b, "alice", &from_a).await,
        (StatusCode::OK, "MISS".into())
    );
    // A keeps serving too, and its facts wait for Redis.
    let during = login(&a, "frank", "d-frank").await;
    assert_eq!(
        lookup(&a, "alice", &during).await,
        (StatusCode::OK, "MISS".into())
    );
    assert_eq!(
        lookup(&a, "alice", &during).await,
        (StatusCode::OK, "HIT".into())
    );

    // Redis returns empty: neither can know what it missed, so both start afresh, and then
    // share again.
    let resets = (shared(&a).resets, shared(&b).resets);
    redis.start().await;
    both_synced(&a, &b).await;
    assert_eq!(shared(&a).resets, resets.0 + 1);
    assert_eq!(shared(&b).resets, resets.1 + 1);
    assert_eq!(
        lookup(&b, "alice", &own_b).await.1,
        "MISS",
        "dropped on the reset"
    );
    a_token_from_a_is_a_hit_on_b(&a, &b, "d-2").await;

    stop(a, b, handle).await;
}

/// An admin revocation through A distrusts on B the user's tokens B issued itself (the fact
/// names the user by a hash both replicas compute alike), while other users' tokens are still
/// served there; and a newer session through B retires on A the token A issued.
#[tokio::test]
async fn revocations_and_retirements_cross_in_both_directions() {
    let Pair {
        redis: _redis,
        sim,
        handle,
        a,
        b,
    } = Pair::start().await;
    let carol = a_token_from_a_is_a_hit_on_b(&a, &b, "d-carol").await;
    let victim = propagated(&b, &a, login(&b, "victim", "d-victim")).await;
    assert_eq!(
        lookup(&b, "alice", &victim).await,
        (StatusCode::OK, "HIT".into())
    );

    let admin = propagated(&a, &b, login(&a, "admin", "d-admin")).await;
    sim.make_admin("admin");
    let auth = format!("Bearer {admin}");
    let (url, headers) = (
        a.url("/api/v4/sessions?userId=victim&isPublic=true"),
        [("authorization", auth.as_str())],
    );
    let revoke = request(Method::DELETE, &url, &headers, "");
    assert_eq!(propagated(&a, &b, revoke).await.status, StatusCode::OK);
    let (status, x) = lookup(&b, "alice", &victim).await;
    assert_ne!(x, "HIT", "revoked through A");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        lookup(&b, "alice", &carol).await,
        (StatusCode::OK, "HIT".into()),
        "another user's token"
    );

    // A caches alice through carol's token; a newer session for carol's device through B
    // retires that token on A.
    assert_eq!(lookup(&a, "alice", &carol).await.0, StatusCode::OK);
    assert_eq!(
        lookup(&a, "alice", &carol).await,
        (StatusCode::OK, "HIT".into())
    );
    let newer = propagated(&b, &a, login(&b, "carol", "d-carol")).await;
    assert_ne!(
        lookup(&a, "alice", &carol).await.1,
        "HIT",
        "retired through B"
    );
    assert_eq!(
        lookup(&a, "alice", &newer).await,
        (StatusCode::OK, "HIT".into())
    );

    stop(a, b, handle).await;
}
