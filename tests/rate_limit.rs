//! Per-deviceId rate limiting with the local backend, end to end over loopback sockets against
//! the simulator.

mod common;

use std::time::Duration;

use common::*;
use http::{Method, StatusCode};

fn body(device: &str) -> String {
    format!(r#"{{"userId":"u-1","deviceId":"{device}"}}"#)
}

async fn register(env: &TestEnv, version: &str, device: &str) -> Reply {
    post_json(&env.url(&format!("/api/{version}/sessions")), body(device)).await
}

/// `(r, t)` of the `"session"` item of the `RateLimit` field.
fn session_standing(res: &Reply) -> (u64, u64) {
    item(res, "session").unwrap_or_else(|| panic!("no session item: {:?}", res.headers))
}

/// `(r, t)` of one item of the `RateLimit` field, if present.
fn item(res: &Reply, name: &str) -> Option<(u64, u64)> {
    let field = res.headers.get("ratelimit")?.to_str().ok()?;
    let rest = field
        .split(", ")
        .find_map(|i| i.strip_prefix(&format!("\"{name}\";")))?;
    let param = |p: &str| {
        rest.split(';')
            .find_map(|kv| kv.strip_prefix(p))
            .and_then(|v| v.parse().ok())
    };
    Some((param("r=")?, param("t=")?))
}

fn retry_after(res: &Reply) -> u64 {
    res.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn ten_pass_the_eleventh_is_a_429_never_forwarded_and_the_device_is_admitted_after_the_window(
) {
    let env = TestEnv::start_with(|f| f.rate_limit.window_secs = 2).await;
    // Sent together, so that all of them fall well inside the 2 s window even on a busy
    // machine (a sliding window legitimately frees budget as time passes).
    let first: Vec<Reply> =
        futures_util::future::join_all((0..10).map(|_| register(&env, "v3", "device-a"))).await;
    let mut remaining: Vec<u64> = first
        .iter()
        .map(|res| {
            assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
            assert_eq!(res.headers["ratelimit-policy"], "\"session\";q=10;w=2");
            session_standing(res).0
        })
        .collect();
    remaining.sort_unstable();
    assert_eq!(
        remaining,
        (0..10).collect::<Vec<u64>>(),
        "one count, 10 units"
    );
    let refused = register(&env, "v3", "device-a").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let json = refused.json();
    assert_eq!(json["status"], "error");
    assert_eq!(json["code"], 400311);
    assert_eq!(json["message"], "RateLimit Exceed.");
    assert_eq!(refused.headers["ratelimit-policy"], "\"session\";q=10;w=2");
    let (r, t) = session_standing(&refused);
    assert_eq!(r, 0);
    assert!((1..=4).contains(&t), "t within two windows of 2 s: {t}");
    assert_eq!(retry_after(&refused), t, "Retry-After agrees with t");
    // A client asking for problem details gets the same refusal in that format.
    let problem = request(
        Method::POST,
        &env.url("/api/v3/sessions"),
        &[
            ("content-type", "application/json"),
            ("accept", "application/problem+json"),
        ],
        body("device-a"),
    )
    .await;
    assert_eq!(problem.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(problem.json()["code"], 400311);
    assert!(problem.headers.contains_key("retry-after"));

    // Another device has its own budget.
    let other = register(&env, "v3", "device-b").await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(session_standing(&other).0, 9);

    // Only admitted requests reached the upstream.
    let forwarded: Vec<String> = env
        .sim
        .requests()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body_bytes).into_owned())
        .collect();
    assert_eq!(forwarded.len(), 11, "10 for device-a, 1 for device-b");
    assert_eq!(
        forwarded.iter().filter(|b| b.contains("device-a")).count(),
        10
    );

    // Once Retry-After has passed the device is admitted again.
    tokio::time::sleep(Duration::from_secs(retry_after(&problem))).await;
    let again = register(&env, "v3", "device-a").await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
    assert_eq!(env.sim.requests().len(), 12);
    env.shutdown().await;
}

#[tokio::test]
async fn one_device_shares_one_budget_across_v3_v4_and_v5() {
    let env = TestEnv::start().await;
    let versions = ["v3", "v5", "v4", "v3", "v5", "v4", "v5", "v3", "v4", "v5"];
    for (i, version) in versions.iter().enumerate() {
        let res = register(&env, version, "device-shared").await;
        assert_eq!(res.status, StatusCode::OK, "{version} #{i}");
        assert_eq!(session_standing(&res).0, 9 - i as u64, "{version} #{i}");
    }
    for version in ["v3", "v4", "v5"] {
        let res = register(&env, version, "device-shared").await;
        assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS, "{version}");
    }
    assert_eq!(env.sim.requests().len(), 10);
    env.shutdown().await;
}

#[tokio::test]
async fn rejected_bodies_consume_no_budget_and_carry_no_rate_limit_fields() {
    let env = TestEnv::start().await;
    for _ in 0..25 {
        let res = post_json(
            &env.url("/api/v3/sessions"),
            r#"{"userId":"","deviceId":"device-x"}"#,
        )
        .await;
        assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(!res.headers.contains_key("ratelimit"));
        assert!(!res.headers.contains_key("ratelimit-policy"));
    }
    let res = post_json(
        &env.url("/api/v3/sessions"),
        r#"{"userId":"u","deviceId":"device-x""#,
    )
    .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    for i in 0..10u64 {
        let res = register(&env, "v4", "device-x").await;
        assert_eq!(res.status, StatusCode::OK, "valid request {i}");
        assert_eq!(session_standing(&res).0, 9 - i);
    }
    assert_eq!(
        register(&env, "v4", "device-x").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    env.shutdown().await;
}

#[tokio::test]
async fn per_ip_limit_keys_on_the_trusted_forwarded_address_and_refunds_the_device() {
    let env = TestEnv::start_with(|f| {
        f.rate_limit.per_ip.requests = 3;
        f.rate_limit.per_ip.trusted_hops = 1;
    })
    .await;
    let from = |ip: &'static str, device: &'static str| {
        let url = env.url("/api/v3/sessions");
        async move {
            request(
                Method::POST,
                &url,
                &[
                    ("content-type", "application/json"),
                    // The first entry is what the client claims; the trusted proxy appended the last.
                    ("x-forwarded-for", &format!("10.9.9.9, {ip}")),
                ],
                body(device),
            )
            .await
        }
    };
    for (i, device) in ["rot-1", "rot-2", "rot-3"].into_iter().enumerate() {
        let res = from("203.0.113.7", device).await;
        assert_eq!(res.status, StatusCode::OK, "{device}");
        assert_eq!(
            res.headers["ratelimit-policy"],
            "\"session\";q=10;w=60, \"ip\";q=3;w=60"
        );
        assert_eq!(item(&res, "ip").unwrap().0, 2 - i as u64);
    }
    let refused = from("203.0.113.7", "rot-4").await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let (r, t) = item(&refused, "ip").unwrap();
    assert_eq!(r, 0);
    assert_eq!(retry_after(&refused), t, "Retry-After is the IP policy's t");
    // The device's own count was taken back, and another address is not affected.
    let res = from("198.51.100.1", "rot-4").await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(session_standing(&res).0, 9);
    assert_eq!(env.sim.requests().len(), 4);
    env.shutdown().await;
}

#[tokio::test]
async fn disabled_rate_limiting_forwards_everything_without_fields() {
    let env = TestEnv::start_with(|f| f.rate_limit.enabled = false).await;
    assert!(env.rate_limit.is_none());
    for _ in 0..15 {
        let res = register(&env, "v3", "device-free").await;
        assert_eq!(res.status, StatusCode::OK);
        assert!(!res.headers.contains_key("ratelimit"));
    }
    assert_eq!(env.sim.requests().len(), 15);
    env.shutdown().await;
}

#[tokio::test]
async fn lookup_routes_are_not_limited() {
    let env = TestEnv::start_with(|f| f.rate_limit.requests = 1).await;
    let res = register(&env, "v3", "device-l").await;
    assert_eq!(res.status, StatusCode::OK);
    let token = res.json()["accessToken"].as_str().unwrap().to_owned();
    for _ in 0..3 {
        let res = request(
            Method::GET,
            &env.url("/api/v3/users/u-1"),
            &[("authorization", &format!("Bearer {token}"))],
            "",
        )
        .await;
        assert_ne!(res.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(!res.headers.contains_key("ratelimit"));
    }
    let stats = env.rate_limit.as_ref().unwrap();
    assert_eq!(
        stats.decisions(amity_gateway::ratelimit::Verdict::Allowed),
        1
    );
    env.shutdown().await;
}
