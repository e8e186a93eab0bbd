//! The gateway's `/metrics` over real sockets: what known traffic counts, that client input never
//! creates a series, that no secret reaches the scrape, and that the in-flight and draining
//! gauges tell the truth.

mod common;
mod scrape;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use futures_util::StreamExt;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use scrape::{scrape, scrape_text, total, value, Sample};
use tokio::io::AsyncWriteExt;

const REQUESTS: &str = "gateway_http_requests_total";

fn requests(s: &[Sample], route: &str, method: &str, status: &str) -> f64 {
    value(
        s,
        REQUESTS,
        &[("method", method), ("route", route), ("status", status)],
    )
    .unwrap_or(0.0)
}

fn session_body(user: &str, device: &str) -> String {
    format!(
        r#"{{"userId":"{user}","deviceId":"{device}","deviceInfo":{{"kind":"android"}},"authToken":"auth-{device}"}}"#
    )
}

/// Polls the scrape until `ready` holds, for at most `limit`; returns the last scrape.
async fn scrape_until(
    env: &TestEnv,
    limit: Duration,
    what: &str,
    ready: impl Fn(&[Sample]) -> bool,
) -> Vec<Sample> {
    let deadline = Instant::now() + limit;
    loop {
        let s = scrape(env.gw.admin_addr).await;
        if ready(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn known_traffic_is_counted_by_route_method_status_field_and_upstream_error_kind() {
    let mut env = TestEnv::start().await;
    let base = env.url("");
    let url = |p: &str| format!("{base}{p}");
    for _ in 0..3 {
        assert_eq!(
            post_json(&url("/api/v3/sessions"), VALID).await.status,
            StatusCode::OK
        );
    }
    let session = post_json(&url("/api/v4/sessions"), VALID).await;
    assert_eq!(session.status, StatusCode::OK);
    let token = session.json()["accessToken"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {token}");
    let user = request(
        Method::GET,
        &url("/api/v3/users/user-123"),
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(user.status, StatusCode::OK);
    for _ in 0..2 {
        let res = post_json(
            &url("/api/v5/sessions"),
            r#"{"userId":"ADMIN_x","deviceId":"","deviceInfo":{"kind":"tv"}}"#,
        )
        .await;
        assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    }
    assert_eq!(
        post_json(&url("/api/v3/sessions"), "{").await.status,
        StatusCode::BAD_REQUEST
    );
    for p in ["/", "/v3/channels"] {
        assert_eq!(
            request(Method::GET, &url(p), &[], "").await.status,
            StatusCode::NOT_FOUND
        );
    }
    env.stop_sim().await;
    for _ in 0..2 {
        assert_eq!(
            post_json(&url("/api/v3/sessions"), VALID).await.status,
            StatusCode::BAD_GATEWAY
        );
    }

    let s = scrape(env.gw.admin_addr).await;
    for (route, method, status, want) in [
        ("session_v3", "POST", "200", 3.0),
        ("session_v4", "POST", "200", 1.0),
        ("user", "GET", "200", 1.0),
        ("session_v5", "POST", "422", 2.0),
        ("session_v3", "POST", "400", 1.0),
        ("unmatched", "GET", "404", 2.0),
        ("session_v3", "POST", "502", 2.0),
    ] {
        assert_eq!(
            requests(&s, route, method, status),
            want,
            "{route} {method} {status}"
        );
    }
    assert_eq!(total(&s, REQUESTS), 12.0, "nothing else was counted");
    let hist = |name: &str, route: &str| value(&s, name, &[("route", route)]).unwrap_or(0.0);
    assert_eq!(
        hist("gateway_http_request_duration_seconds_count", "session_v3"),
        6.0
    );
    assert_eq!(
        hist(
            "gateway_upstream_request_duration_seconds_count",
            "session_v3"
        ),
        3.0,
        "only exchanges the upstream answered have an upstream duration"
    );
    assert_eq!(
        hist("gateway_upstream_request_duration_seconds_count", "user"),
        1.0
    );
    let failures = |route: &str, field: &str| {
        value(
            &s,
            "gateway_validation_failures_total",
            &[("route", route), ("field", field)],
        )
    };
    assert_eq!(failures("session_v5", "userId"), Some(2.0));
    assert_eq!(failures("session_v5", "deviceId"), Some(2.0));
    assert_eq!(failures("session_v5", "deviceInfo.kind"), Some(2.0));
    assert_eq!(failures("session_v3", "body"), Some(1.0));
    let errors = |kind: &str| value(&s, "gateway_upstream_errors_total", &[("kind", kind)]);
    assert_eq!(errors("connect"), Some(2.0));
    assert_eq!(errors("timeout"), Some(0.0));
    assert_eq!(errors("protocol"), Some(0.0));
    assert_eq!(value(&s, "gateway_inflight_requests", &[]), Some(0.0));
    assert_eq!(value(&s, "gateway_draining", &[]), Some(0.0));
    assert!(value(&s, "process_resident_memory_bytes", &[]).is_some_and(|v| v > 0.0));
    env.shutdown().await;
}

#[tokio::test]
async fn upstream_timeouts_are_counted_by_kind() {
    let env = TestEnv::start_with(|f| f.upstream.timeout_ms = 200).await;
    env.sim.set_latency(Duration::from_millis(1_000));
    let res = post_json(&env.url("/api/v3/sessions"), VALID).await;
    assert_eq!(res.status, StatusCode::GATEWAY_TIMEOUT);
    let s = scrape(env.gw.admin_addr).await;
    assert_eq!(
        value(&s, "gateway_upstream_errors_total", &[("kind", "timeout")]),
        Some(1.0)
    );
    assert_eq!(requests(&s, "session_v3", "POST", "504"), 1.0);
    env.sim.set_latency(Duration::ZERO);
    env.shutdown().await;
}

/// A keep-alive client shared by the load loop (a fresh connection per request would measure
/// the kernel, not the gateway).
type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

async fn send_on(client: &Client, method: Method, url: String, body: String) -> StatusCode {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let res = client.request(req).await.expect("gateway answers");
    let status = res.status();
    let _ = res.into_body().collect().await;
    status
}

fn random_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[tokio::test]
async fn ten_thousand_distinct_device_ids_user_ids_and_paths_create_no_series() {
    const N: usize = 10_000;
    let env = TestEnv::start().await;
    env.sim.set_recording(false);
    let client = common::client();
    // Three requests per id: a session (one in four invalid), a lookup on a matched route, and
    // an unmatched path (every other one with an extension method).
    let shapes = |i: usize| {
        let id = format!("{i}-{}", random_token());
        let version = ["v3", "v4", "v5"][i % 3];
        let session = if i % 4 == 3 {
            format!(
                r#"{{"userId":"{}","deviceId":"device-{id}"}}"#,
                "u".repeat(51)
            )
        } else {
            session_body(&format!("user-{id}"), &format!("device-{id}"))
        };
        let lookup = if i.is_multiple_of(2) {
            format!("/api/v3/users/user-{id}")
        } else {
            format!("/api/v3/files/file-{id}")
        };
        let method = if i.is_multiple_of(2) {
            Method::GET
        } else {
            Method::from_bytes(format!("X{}", random_token()).as_bytes()).unwrap()
        };
        [
            (Method::POST, format!("/api/{version}/sessions"), session),
            (Method::GET, lookup, String::new()),
            (method, format!("/{id}/{}", random_token()), String::new()),
        ]
    };
    let per_iteration = shapes(0).len();
    // Every shape once first (12 covers each version, validity, lookup and method), so the
    // label combinations the loop can reach exist before the count.
    for i in 0..12 {
        for (m, p, b) in shapes(i) {
            send_on(&client, m, env.url(&p), b).await;
        }
    }
    let before = scrape(env.gw.admin_addr).await;
    let series_before: BTreeSet<String> = before.iter().map(Sample::series).collect();
    let counted_before = total(&before, REQUESTS);

    let statuses: Vec<StatusCode> = futures_util::stream::iter(0..N)
        .flat_map(|i| futures_util::stream::iter(shapes(i)))
        .map(|(m, p, b)| send_on(&client, m, env.url(&p), b))
        .buffer_unordered(32)
        .collect()
        .await;
    assert_eq!(statuses.len(), N * per_iteration);
    for want in [
        StatusCode::OK,
        StatusCode::UNPROCESSABLE_ENTITY,
        StatusCode::UNAUTHORIZED,
        StatusCode::NOT_FOUND,
    ] {
        assert!(statuses.contains(&want), "the loop produced {want}");
    }

    let after = scrape(env.gw.admin_addr).await;
    let series_after: BTreeSet<String> = after.iter().map(Sample::series).collect();
    let new: Vec<_> = series_after.difference(&series_before).collect();
    assert!(new.is_empty(), "new series: {new:?}");
    assert_eq!(series_after.len(), series_before.len());
    assert_eq!(
        total(&after, REQUESTS) - counted_before,
        (N * per_iteration) as f64,
        "every request was counted, in the existing series"
    );
    env.shutdown().await;
}

#[tokio::test]
async fn no_key_token_or_id_reaches_the_scrape() {
    let env = TestEnv::start().await;
    let mut secrets = vec![KEY.to_owned(), "tok-xyz".to_owned()];
    let mut access = String::new();
    for version in ["v3", "v4", "v5"] {
        let res = post_json(&env.url(&format!("/api/{version}/sessions")), VALID).await;
        assert_eq!(res.status, StatusCode::OK);
        let json = res.json();
        // One device: each session retires the previous token, so the last one is valid.
        access = json["accessToken"].as_str().unwrap().to_owned();
        for field in ["accessToken", "refreshToken"] {
            if let Some(t) = json[field].as_str() {
                secrets.push(t.to_owned());
            }
        }
    }
    let bearer = format!("Bearer {access}");
    let res = request(
        Method::GET,
        &env.url("/api/v3/users/user-123"),
        &[("authorization", &bearer), ("x-api-key", "client-key-42")],
        "",
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    secrets.push("client-key-42".into());
    assert!(secrets.len() >= 7, "tokens collected: {}", secrets.len());
    let text = scrape_text(env.gw.admin_addr).await;
    for s in &secrets {
        assert!(!text.contains(s.as_str()), "a secret is in the scrape");
    }
    for id in ["user-123", "device-abc-0001", "Alice", "iPhone15,2"] {
        assert!(!text.contains(id), "{id} is in the scrape");
    }
    env.shutdown().await;
}

#[tokio::test]
async fn a_client_that_goes_away_is_counted_as_499_and_leaves_the_in_flight_gauge() {
    let env = TestEnv::start().await;
    env.sim.set_latency(Duration::from_secs(3));
    let mut conn = tokio::net::TcpStream::connect(env.gw.addr).await.unwrap();
    let req = format!(
        "POST /api/v3/sessions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{VALID}",
        VALID.len()
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    let inflight =
        |v: f64| move |s: &[Sample]| value(s, "gateway_inflight_requests", &[]) == Some(v);
    scrape_until(
        &env,
        Duration::from_secs(10),
        "one request in flight",
        inflight(1.0),
    )
    .await;
    drop(conn);
    scrape_until(
        &env,
        Duration::from_secs(10),
        "the gauge to return to 0",
        inflight(0.0),
    )
    .await;
    let s = scrape(env.gw.admin_addr).await;
    assert_eq!(
        value(
            &s,
            REQUESTS,
            &[
                ("method", "POST"),
                ("route", "session_v3"),
                ("status", "499")
            ]
        ),
        Some(1.0),
        "an abandoned request is counted as 499 (client closed)"
    );
    assert_eq!(total(&s, REQUESTS), 1.0);
    env.sim.set_latency(Duration::ZERO);
    env.shutdown().await;
}

#[tokio::test]
async fn draining_is_visible_while_in_flight_requests_finish() {
    let env = TestEnv::start().await;
    env.sim.set_latency(Duration::from_millis(1_500));
    let admin = env.gw.admin_addr;
    let url = env.url("/api/v3/sessions");
    let slow = tokio::spawn(async move { post_json(&url, VALID).await.status });
    scrape_until(&env, Duration::from_secs(10), "the slow request", |s| {
        value(s, "gateway_inflight_requests", &[]) == Some(1.0)
    })
    .await;
    assert_eq!(
        value(&scrape(admin).await, "gateway_draining", &[]),
        Some(0.0)
    );
    let sim = env.sim.clone();
    let stopping = tokio::spawn(env.shutdown());
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        let s = scrape(admin).await;
        if value(&s, "gateway_draining", &[]) == Some(1.0) {
            break s;
        }
        assert!(Instant::now() < deadline, "draining never showed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        value(&s, "gateway_inflight_requests", &[]),
        Some(1.0),
        "the request is still finishing"
    );
    assert_eq!(slow.await.unwrap(), StatusCode::OK);
    stopping.await.unwrap();
    sim.set_latency(Duration::ZERO);
}
