//! End-to-end behaviour of the lookup cache over loopback sockets, against the simulator: who is
//! served from the cache, what invalidates it, and what it never stores.

mod common;

use std::time::Duration;

use amity_gateway::cache::key::Kind;
use amity_gateway::cache::stats::CacheResult;
use common::*;
use http::{Method, StatusCode};
use serde_json::{json, Value};

/// Registers a session through the gateway; returns the access token and the whole answer.
async fn session(env: &TestEnv, body: Value) -> (String, Value) {
    let r = post_json(&env.url("/api/v3/sessions"), body.to_string()).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let json = r.json();
    let token = json["accessToken"].as_str().expect("token").to_owned();
    (token, json)
}

async fn login(env: &TestEnv, user: &str, device: &str) -> String {
    session(env, json!({"userId": user, "deviceId": device}))
        .await
        .0
}

async fn get(env: &TestEnv, path: &str, token: &str) -> Reply {
    get_with(env, path, token, &[]).await
}

async fn get_with(env: &TestEnv, path: &str, token: &str, extra: &[(&str, &str)]) -> Reply {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    request(Method::GET, &env.url(path), &headers, "").await
}

fn x_cache(r: &Reply) -> &str {
    r.headers
        .get("x-cache")
        .map_or("<none>", |v| v.to_str().unwrap_or("<bad>"))
}

/// How many times the simulator saw `GET {path}`.
fn upstream_gets(env: &TestEnv, path: &str) -> usize {
    env.sim
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == path)
        .count()
}

/// Looks `path` up twice and checks MISS then an identical HIT, with one upstream call.
async fn miss_then_hit(env: &TestEnv, path: &str, token: &str) -> Reply {
    let before = upstream_gets(env, path);
    let first = get(env, path, token).await;
    assert_eq!(first.status, StatusCode::OK, "{path}: {:?}", first.body);
    assert_eq!(x_cache(&first), "MISS", "{path}");
    assert!(
        first.headers.get("age").is_none(),
        "{path}: age only on hits"
    );
    let second = get(env, path, token).await;
    assert_eq!(second.status, StatusCode::OK, "{path}");
    assert_eq!(x_cache(&second), "HIT", "{path}");
    assert_eq!(first.body, second.body, "{path}: byte-identical");
    assert_eq!(
        first.headers["content-type"], second.headers["content-type"],
        "{path}"
    );
    let age: u64 = second.headers["age"].to_str().unwrap().parse().unwrap();
    assert!(age <= 300, "{path}: age {age}");
    assert_eq!(
        upstream_gets(env, path) - before,
        1,
        "{path}: one upstream lookup"
    );
    second
}

#[tokio::test]
async fn session_then_user_file_and_list_lookups_are_miss_then_identical_hit() {
    let env = TestEnv::start().await;
    let (token, s) = session(&env, json!({"userId": "alice", "deviceId": "d-a"})).await;
    let file_id = s["files"][0]["fileId"].as_str().unwrap().to_owned();
    login(&env, "bob", "d-b").await;

    let user = miss_then_hit(&env, "/api/v3/users/alice", &token).await;
    assert_eq!(user.json()["users"][0]["userId"], "alice");
    let file = miss_then_hit(&env, &format!("/api/v3/files/{file_id}"), &token).await;
    assert_eq!(file.json()["fileId"], file_id.as_str());
    let list = miss_then_hit(&env, "/api/v3/users/list?userIds=alice&userIds=bob", &token).await;
    assert_eq!(list.json()["users"].as_array().unwrap().len(), 2);

    // Other encodings of the same list are the same entry; another order is another answer.
    for q in [
        "userIds[]=alice&userIds[]=bob",
        "userIds%5B%5D=alice&userIds%5B%5D=bob",
    ] {
        let r = get(&env, &format!("/api/v3/users/list?{q}"), &token).await;
        assert_eq!(x_cache(&r), "HIT", "{q}");
        assert_eq!(r.body, list.body, "{q}");
    }
    let r = get(&env, "/api/v3/users/list?userIds=bob&userIds=alice", &token).await;
    assert_eq!(x_cache(&r), "MISS");
    // `type=public` is the default view: the same entry.
    let r = get(&env, "/api/v3/users/alice?type=public", &token).await;
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(r.body, user.body);

    let stats = env.cache.stats();
    assert_eq!(stats.requests(Kind::User, CacheResult::Hit), 2);
    assert_eq!(stats.requests(Kind::File, CacheResult::Miss), 1);
    assert_eq!(stats.requests(Kind::UserList, CacheResult::Hit), 3);
    assert_eq!(stats.total(CacheResult::Bypass), 0);
    env.shutdown().await;
}

#[tokio::test]
async fn a_newer_last_cache_purge_seen_in_any_session_drops_every_entry() {
    let env = TestEnv::start().await;
    let (token, s) = session(&env, json!({"userId": "alice", "deviceId": "d-a"})).await;
    let file = format!(
        "/api/v3/files/{}",
        s["files"][0]["fileId"].as_str().unwrap()
    );
    for p in ["/api/v3/users/alice", file.as_str()] {
        miss_then_hit(&env, p, &token).await;
    }

    env.sim.purge();
    // The gateway learns of a purge from an answer that reports it, not before.
    assert_eq!(
        x_cache(&get(&env, "/api/v3/users/alice", &token).await),
        "HIT"
    );
    login(&env, "someone-else", "d-other").await;
    for p in ["/api/v3/users/alice", file.as_str()] {
        miss_then_hit(&env, p, &token).await;
    }
    assert_eq!(env.cache.stats().purges, 1);

    // A token check answer reports it too.
    env.sim.purge();
    let r = get(&env, "/api/v3/sessions", &token).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json()["lastCachePurge"],
        env.sim.last_cache_purge().as_str()
    );
    for p in ["/api/v3/users/alice", file.as_str()] {
        miss_then_hit(&env, p, &token).await;
    }
    assert_eq!(env.cache.stats().purges, 2);

    // The same date again moves nothing.
    login(&env, "someone-else", "d-other").await;
    assert_eq!(x_cache(&get(&env, file.as_str(), &token).await), "HIT");
    assert_eq!(env.cache.stats().purges, 2);
    assert_eq!(env.cache.stats().unparseable_dates, 0);
    env.shutdown().await;
}

#[tokio::test]
async fn a_session_with_a_new_display_name_drops_every_answer_containing_that_user() {
    let env = TestEnv::start_with(|f| f.cache.user_mark_slots = 1 << 24).await;
    let alice = session(
        &env,
        json!({"userId": "alice", "deviceId": "d-a", "displayName": "Alice"}),
    )
    .await
    .0;
    let bob = login(&env, "bob", "d-b").await;
    let one = miss_then_hit(&env, "/api/v3/users/alice", &bob).await;
    assert_eq!(one.json()["users"][0]["displayName"], "Alice");
    let list = "/api/v3/users/list?userIds=bob&userIds=alice";
    miss_then_hit(&env, list, &bob).await;
    miss_then_hit(&env, "/api/v3/users/bob", &bob).await;

    session(
        &env,
        json!({"userId": "alice", "deviceId": "d-a2", "displayName": "Alicia"}),
    )
    .await;
    let r = get(&env, "/api/v3/users/alice", &bob).await;
    assert_eq!(x_cache(&r), "MISS");
    assert_eq!(r.json()["users"][0]["displayName"], "Alicia");
    let r = get(&env, list, &bob).await;
    assert_eq!(x_cache(&r), "MISS", "list answers containing alice go too");
    assert_eq!(r.json()["users"][1]["displayName"], "Alicia");
    let r = get(&env, "/api/v3/users/bob", &bob).await;
    assert_eq!(x_cache(&r), "HIT", "answers without alice stay");
    // alice's first device still holds a valid token: the new session was another device.
    assert_eq!(
        x_cache(&get(&env, "/api/v3/users/alice", &alice).await),
        "HIT"
    );
    env.shutdown().await;
}

#[tokio::test]
async fn forged_retired_and_logged_out_tokens_are_never_served_from_the_cache() {
    let env = TestEnv::start().await;
    let main = login(&env, "alice", "d-main").await;
    miss_then_hit(&env, "/api/v3/users/alice", &main).await;
    let path = "/api/v3/users/alice";

    for forged in ["forged.token.value", "", "Bearer"] {
        let r = get(&env, path, forged).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{forged:?}");
        assert_ne!(x_cache(&r), "HIT", "{forged:?}");
    }
    let r = request(Method::GET, &env.url(path), &[], "").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(x_cache(&r), "BYPASS", "no bearer token");
    // The scheme is case-insensitive.
    let auth = format!("bEaReR {main}");
    let r = request(Method::GET, &env.url(path), &[("authorization", &auth)], "").await;
    assert_eq!(x_cache(&r), "HIT");

    // Retired: a newer session for the same device.
    let old = login(&env, "carol", "d-shared").await;
    assert_eq!(
        x_cache(&get(&env, path, &old).await),
        "HIT",
        "known while current"
    );
    login(&env, "dave", "d-shared").await;
    let r = get(&env, path, &old).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(x_cache(&r), "MISS");

    // Logged out through the gateway.
    let gone = login(&env, "erin", "d-logout").await;
    assert_eq!(x_cache(&get(&env, path, &gone).await), "HIT");
    let auth = format!("Bearer {gone}");
    let r = request(
        Method::DELETE,
        &env.url("/api/v4/sessions"),
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = get(&env, path, &gone).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_ne!(x_cache(&r), "HIT");

    assert_eq!(
        x_cache(&get(&env, path, &main).await),
        "HIT",
        "others unaffected"
    );
    env.shutdown().await;
}

#[tokio::test]
async fn an_expired_token_is_never_served_from_the_cache() {
    let env = TestEnv::start().await;
    let main = login(&env, "alice", "d-main").await;
    let path = "/api/v3/users/alice";
    miss_then_hit(&env, path, &main).await;

    env.sim.set_token_lifetime(Duration::from_secs(2));
    let short = login(&env, "frank", "d-short").await;
    env.sim.set_token_lifetime(Duration::from_secs(30 * 86_400));
    assert_eq!(
        x_cache(&get(&env, path, &short).await),
        "HIT",
        "known until expiresAt"
    );

    // Wait (bounded) until the simulator itself rejects the token, asked directly.
    let direct = format!("http://{}/api/v3/sessions", env.sim_addr);
    let auth = format!("Bearer {short}");
    let mut expired = false;
    for _ in 0..100 {
        let r = request(Method::GET, &direct, &[("authorization", &auth)], "").await;
        if r.status == StatusCode::UNAUTHORIZED {
            expired = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(expired, "the simulator never expired the token");
    let r = get(&env, path, &short).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_ne!(x_cache(&r), "HIT");
    env.shutdown().await;
}

#[tokio::test]
async fn an_upstream_401_makes_the_gateway_forget_the_token() {
    let env = TestEnv::start().await;
    let token = login(&env, "alice", "d-a").await;
    login(&env, "bob", "d-b").await;
    miss_then_hit(&env, "/api/v3/users/alice", &token).await;

    env.sim.revoke_all_tokens();
    // The upstream revoked it without the gateway seeing: hits continue until it learns.
    assert_eq!(
        x_cache(&get(&env, "/api/v3/users/alice", &token).await),
        "HIT"
    );
    let r = get(&env, "/api/v3/users/bob", &token).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = get(&env, "/api/v3/users/alice", &token).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(x_cache(&r), "MISS");
    env.shutdown().await;
}

/// A session registered straight at the upstream, never seen by the gateway.
async fn login_elsewhere(env: &TestEnv, user: &str, device: &str) -> String {
    let r = request(
        Method::POST,
        &format!("http://{}/api/v3/sessions", env.sim_addr),
        &[("content-type", "application/json"), ("x-api-key", KEY)],
        json!({"userId": user, "deviceId": device}).to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    r.json()["accessToken"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn tokens_issued_elsewhere_are_proven_by_a_lookup_and_kept_apart() {
    let env = TestEnv::start().await;
    let outside = login_elsewhere(&env, "zed", "d-out").await;
    let inside = login(&env, "alice", "d-in").await;
    let path = "/api/v3/users/alice";

    // A 2xx answer proves the token: its next lookup is a hit.
    miss_then_hit(&env, path, &outside).await;
    // But the gateway cannot tell its network, so its answers are its own: a gateway-issued
    // token does not see them, and another outside token does not see either.
    miss_then_hit(&env, path, &inside).await;
    let stranger = login_elsewhere(&env, "yves", "d-stranger").await;
    assert_eq!(x_cache(&get(&env, path, &stranger).await), "MISS");
    assert_eq!(x_cache(&get(&env, path, &outside).await), "HIT");
    env.shutdown().await;
}

#[tokio::test]
async fn the_store_stays_within_its_byte_bound_and_internal_lookups_are_never_stored() {
    let env = TestEnv::start_with(|f| {
        f.cache.max_bytes = 16 * 1024;
        f.cache.max_entries = 1000;
        f.cache.max_entry_bytes = 8 * 1024;
    })
    .await;
    let token = login(&env, "u-0", "d-0").await;
    let mut stored = 0;
    for i in 0..60 {
        let user = format!("u-{i}");
        if i > 0 {
            login(&env, &user, &format!("d-{i}")).await;
        }
        let r = get(&env, &format!("/api/v3/users/{user}"), &token).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(x_cache(&r), "MISS");
        stored += r.body.len();
        env.cache.sync();
        let s = env.cache.stats();
        assert!(s.bytes <= 16 * 1024, "{} bytes after {i}", s.bytes);
    }
    assert!(
        stored > 2 * 16 * 1024,
        "the test fills well past the bound: {stored}"
    );
    let s = env.cache.stats();
    assert!(s.entries > 0 && s.entries < 60, "{} entries", s.entries);

    let internal = "/api/v3/users/u-59?type=internal";
    let before = env.cache.stats().entries;
    for _ in 0..2 {
        let r = get(&env, internal, &token).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(x_cache(&r), "BYPASS");
    }
    assert_eq!(upstream_gets(&env, internal), 2);
    env.cache.sync();
    assert!(env.cache.stats().entries <= before);
    assert_eq!(
        env.cache.stats().requests(Kind::User, CacheResult::Bypass),
        2
    );
    env.shutdown().await;
}

#[tokio::test]
async fn answers_the_gateway_must_read_are_asked_for_uncompressed() {
    let env = TestEnv::start().await;
    let body = json!({"userId": "alice", "deviceId": "d-a"}).to_string();
    let r = request(
        Method::POST,
        &env.url("/api/v3/sessions"),
        &[
            ("content-type", "application/json"),
            ("accept-encoding", "gzip"),
        ],
        body,
    )
    .await;
    let token = r.json()["accessToken"].as_str().unwrap().to_owned();
    let gzip = [("accept-encoding", "gzip")];
    let r = get_with(&env, "/api/v3/sessions", &token, &gzip).await;
    assert_eq!(r.status, StatusCode::OK);
    // A lookup that fills the cache is asked for uncompressed too: the gateway reads every
    // answer it keeps (is it about the ids asked for?).
    get_with(&env, "/api/v3/users/alice", &token, &gzip).await;
    // Another gateway-issued token is served that answer: it was stored for the network, so
    // the session answer taught the gateway the first token.
    let other = login(&env, "bob", "d-b").await;
    let r = get_with(&env, "/api/v3/users/alice", &other, &gzip).await;
    assert_eq!(x_cache(&r), "HIT");
    let asked: Vec<(String, bool)> = env
        .sim
        .requests()
        .iter()
        .map(|r| (r.path.clone(), r.header("accept-encoding").is_some()))
        .collect();
    assert_eq!(
        asked,
        vec![
            ("/api/v3/sessions".to_owned(), false),
            ("/api/v3/sessions".to_owned(), false),
            ("/api/v3/users/alice".to_owned(), false),
            ("/api/v3/sessions".to_owned(), false),
        ]
    );
    env.shutdown().await;
}

#[tokio::test]
async fn a_disabled_cache_forwards_everything_as_bypass() {
    let env = TestEnv::start_with(|f| f.cache.enabled = false).await;
    let token = login(&env, "alice", "d-a").await;
    for _ in 0..2 {
        let r = get(&env, "/api/v3/users/alice", &token).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(x_cache(&r), "BYPASS");
    }
    assert_eq!(upstream_gets(&env, "/api/v3/users/alice"), 2);
    env.cache.sync();
    assert_eq!(env.cache.stats().tokens, 0);
    env.shutdown().await;
}

/// The cache's decisions reach Prometheus through the admin endpoint's scrape.
#[tokio::test]
async fn cache_results_purges_and_size_are_exported_on_the_metrics_endpoint() {
    let env = TestEnv::start().await;
    let token = login(&env, "metric-user", "metric-dev").await;
    miss_then_hit(&env, "/api/v3/users/metric-user", &token).await;
    get(&env, "/api/v3/users/metric-user?type=internal", &token).await;
    env.sim.purge();
    login(&env, "metric-user-2", "metric-dev-2").await;
    let scrape = request(
        Method::GET,
        &format!("http://{}/metrics", env.gw.admin_addr),
        &[],
        "",
    )
    .await;
    let text = String::from_utf8(scrape.body.to_vec()).unwrap();
    let value = |series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
    };
    assert_eq!(
        value(r#"gateway_cache_requests_total{cache="user",result="hit"}"#),
        1.0
    );
    assert_eq!(
        value(r#"gateway_cache_requests_total{cache="user",result="miss"}"#),
        1.0
    );
    assert_eq!(
        value(r#"gateway_cache_requests_total{cache="user",result="bypass"}"#),
        1.0
    );
    assert_eq!(
        value(r#"gateway_cache_requests_total{cache="file",result="hit"}"#),
        0.0
    );
    assert_eq!(value("gateway_cache_purges_total"), 1.0);
    assert_eq!(
        value(r#"gateway_cache_entries{cache="lookup"}"#),
        0.0,
        "the purge dropped the stored answer"
    );
    env.shutdown().await;
}

/// The upstream retires a device's older token when it issues a newer one, in its own order.
/// Two sessions for one device sent at once, 200 times over: whichever answer arrives first,
/// no token the simulator refuses is ever served from the cache, the device's token from
/// before the race included.
#[tokio::test]
async fn racing_sessions_of_one_device_never_leave_a_refused_token_served_from_the_cache() {
    let env = TestEnv::start().await;
    let reader = login(&env, "alice", "d-alice").await;
    miss_then_hit(&env, "/api/v3/users/alice", &reader).await;
    let (mut hits, mut checked) = (0, 0);
    for trial in 0..200 {
        let device = format!("race-{trial}");
        let t0 = login(&env, "racer", &device).await;
        let (a, b) = tokio::join!(login(&env, "racer", &device), login(&env, "racer", &device));
        for token in [&t0, &a, &b] {
            let r = get(&env, "/api/v3/users/alice", token).await;
            checked += 1;
            if x_cache(&r) == "HIT" {
                hits += 1;
                assert!(
                    env.sim.token_valid(token),
                    "trial {trial}: a HIT to a token the upstream refuses"
                );
            }
        }
    }
    // Winners were served from the cache (those issued in the same millisecond as their rival
    // are distrusted, being unorderable): the check above had something to refuse.
    assert!(hits >= 20, "{hits} hits of {checked}");
    env.shutdown().await;
}

/// An admin's `DELETE /api/v4/sessions?userId=U` revokes every token of U upstream; none of
/// them is served from the cache afterwards, while other users' tokens still are. A plain
/// logout forgets the caller's token the same way.
#[tokio::test]
async fn admin_revocation_and_logout_forget_every_named_token() {
    let env = TestEnv::start().await;
    let admin = login(&env, "admin", "d-admin").await;
    env.sim.make_admin("admin");
    let v1 = login(&env, "victim", "d-v1").await;
    let v2 = login(&env, "victim", "d-v2").await;
    let other = login(&env, "bystander", "d-b").await;
    let leaving = login(&env, "leaver", "d-l").await;
    miss_then_hit(&env, "/api/v3/users/bystander", &other).await;
    for t in [&v1, &v2, &leaving] {
        assert_eq!(
            x_cache(&get(&env, "/api/v3/users/bystander", t).await),
            "HIT"
        );
    }

    let auth = format!("Bearer {admin}");
    let r = request(
        Method::DELETE,
        &env.url("/api/v4/sessions?userId=victim&isPublic=true"),
        &[("authorization", auth.as_str())],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let auth = format!("Bearer {leaving}");
    let r = request(
        Method::DELETE,
        &env.url("/api/v4/sessions"),
        &[("authorization", auth.as_str())],
        "",
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);

    for t in [&v1, &v2, &leaving] {
        assert!(!env.sim.token_valid(t));
        for _ in 0..2 {
            let r = get(&env, "/api/v3/users/bystander", t).await;
            assert_ne!(x_cache(&r), "HIT");
            assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        }
    }
    assert_eq!(
        x_cache(&get(&env, "/api/v3/users/bystander", &other).await),
        "HIT"
    );
    env.shutdown().await;
}

/// A session whose client hangs up before the answer: the gateway still reads the answer to
/// the end, so the device's older token is retired and the token that replaced it is learnt.
#[tokio::test]
async fn a_session_whose_client_went_away_still_retires_the_older_token() {
    use tokio::io::AsyncWriteExt;
    let env = TestEnv::start().await;
    let old = login(&env, "alice", "d-a").await;
    miss_then_hit(&env, "/api/v3/users/alice", &old).await;
    env.sim.clear_requests();

    env.sim.set_latency(Duration::from_millis(300));
    let body = json!({"userId": "alice", "deviceId": "d-a"}).to_string();
    let head = format!(
        "POST /api/v3/sessions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut conn = tokio::net::TcpStream::connect(env.gw.addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    // Gone once the request has reached the simulator, before its delayed answer.
    for _ in 0..200 {
        if env.sim.requests().iter().any(|r| r.method == "POST") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(conn);
    let mut new = None;
    for _ in 0..200 {
        new = env.sim.device_token("d-a").filter(|t| *t != old);
        if new.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let new = new.expect("the simulator issued the new token");
    env.sim.set_latency(Duration::ZERO);
    assert!(!env.sim.token_valid(&old));
    let r = get(&env, "/api/v3/users/alice", &old).await;
    assert_eq!((r.status, x_cache(&r)), (StatusCode::UNAUTHORIZED, "MISS"));
    // The answer nobody received was read: the new token is known, served from the cache
    // (the session dropped alice's entry, so one fill first).
    let mut learnt = false;
    for _ in 0..200 {
        let r = get(&env, "/api/v3/users/alice", &new).await;
        if x_cache(&r) == "HIT" {
            learnt = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(learnt, "the new token was never learnt");
    // The request that went away is on the books: counted as 499 (client closed).
    let m = request(
        Method::GET,
        &format!("http://{}/metrics", env.gw.admin_addr),
        &[],
        "",
    )
    .await;
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.contains(
            r#"gateway_http_requests_total{method="POST",route="session_v3",status="499"} 1"#
        ),
        "{text}"
    );
    env.shutdown().await;
}

/// A lookup that fills the cache reaches the upstream with only the headers the key accounts
/// for: headers that might change the answer are not forwarded.
#[tokio::test]
async fn cache_filling_lookups_carry_only_allowlisted_headers() {
    let env = TestEnv::start().await;
    let token = login(&env, "alice", "d-a").await;
    let extra = [
        ("x-forwarded-host", "evil.example"),
        ("x-original-url", "/api/v3/users/admin"),
        ("accept-language", "fr-FR"),
        ("x-http-method-override", "DELETE"),
        ("forwarded", "host=evil.example"),
        ("x-request-id", "req-1"),
    ];
    let r = get_with(&env, "/api/v3/users/alice", &token, &extra).await;
    assert_eq!((r.status, x_cache(&r)), (StatusCode::OK, "MISS"));
    let sent = env
        .sim
        .requests()
        .into_iter()
        .find(|r| r.path == "/api/v3/users/alice")
        .expect("forwarded");
    for (name, _) in &extra[..5] {
        assert_eq!(sent.header(name), None, "{name} reached the upstream");
    }
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {token}").as_str())
    );
    assert_eq!(sent.header("x-request-id"), Some("req-1"));
    // A lookup that cannot fill the cache is forwarded as it came.
    let r = get_with(&env, "/api/v3/users/alice?type=internal", &token, &extra).await;
    assert_eq!(x_cache(&r), "BYPASS");
    let sent = env.sim.requests().into_iter().last().unwrap();
    assert_eq!(sent.header("accept-language"), Some("fr-FR"));
    env.shutdown().await;
}

/// A file only one token may see (a private channel's): with the network scope it is kept for
/// that token alone, and never served to another token of the network from the cache.
#[tokio::test]
async fn a_private_file_is_never_served_to_another_token_with_the_network_scope() {
    let env = TestEnv::start().await;
    let viewer = login(&env, "alice", "d-a").await;
    let other = login(&env, "bob", "d-b").await;
    let file = format!("/api/v3/files/{}", env.sim.add_private_file(&viewer));
    let seen = miss_then_hit(&env, &file, &viewer).await;
    assert_eq!(seen.json()["accessType"], "network");
    for _ in 0..2 {
        let r = get(&env, &file, &other).await;
        assert_eq!((r.status, x_cache(&r)), (StatusCode::FORBIDDEN, "MISS"));
    }
    env.shutdown().await;
}

/// With `cache.scope = "token"` no answer is shared, even between tokens of one network.
#[tokio::test]
async fn the_token_scope_shares_nothing() {
    let env =
        TestEnv::start_with(|f| f.cache.scope = amity_gateway::cache::settings::Scope::Token).await;
    let a = login(&env, "alice", "d-a").await;
    let b = login(&env, "bob", "d-b").await;
    miss_then_hit(&env, "/api/v3/users/alice", &a).await;
    miss_then_hit(&env, "/api/v3/users/alice", &b).await;
    env.shutdown().await;
}

/// A session request carries the injected key, so it reaches the upstream with nothing the
/// gateway does not vouch for: no query string, no method override, and (no proxy trusted by
/// default) none of the client's own forwarding headers; `x-forwarded-for` names the peer.
#[tokio::test]
async fn key_injected_requests_carry_no_query_override_or_client_forwarding_headers() {
    let env = TestEnv::start().await;
    let body = json!({"userId": "alice", "deviceId": "d-a"}).to_string();
    let r = request(
        Method::POST,
        &env.url("/api/v3/sessions?isAdmin=true&debug=1"),
        &[
            ("content-type", "application/json"),
            ("x-forwarded-for", "198.51.100.9"),
            ("x-real-ip", "198.51.100.9"),
            ("forwarded", "for=198.51.100.9"),
            ("x-http-method-override", "DELETE"),
        ],
        body,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let sent = env.sim.requests().pop().expect("forwarded");
    assert_eq!(sent.path, "/api/v3/sessions");
    assert!(sent.header("x-api-key").is_some());
    for name in ["x-real-ip", "forwarded", "x-http-method-override"] {
        assert_eq!(sent.header(name), None, "{name}");
    }
    assert_eq!(sent.header("x-forwarded-for"), Some("127.0.0.1"));
    env.shutdown().await;
}
