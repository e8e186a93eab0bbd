//! The app's whole API through the gateway, over loopback against the simulator: the official
//! SDK's login sequence (session, realtime websocket, network settings), pass-through that never
//! carries the gateway's key, streamed bodies and websockets with idle timeouts, CORS, visitor
//! sessions, and the paths that are never forwarded.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::Message;

const SDK_KEY: &str = "sdk-own-api-key-from-the-app-bundle";

/// A session as the official TS SDK registers it; returns the access token.
async fn sdk_session(env: &TestEnv) -> String {
    let body = serde_json::json!({
        "userId": "sdk-user-1",
        "deviceId": "ascWebSdk#0a4f6b7e-61f4-4d43-9c4e-2f8c1a9b7d55",
        "deviceInfo": {"kind": "web", "model": "Chrome 131", "sdkVersion": "6.35.3"},
        "displayName": "SDK User",
    });
    let res = request(
        Method::POST,
        &env.url("/api/v5/sessions"),
        &[
            ("content-type", "application/json"),
            ("X-API-Key", SDK_KEY),
            ("set-access-token-cookie", "true"),
        ],
        body.to_string(),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
    res.json()["accessToken"].as_str().unwrap().to_owned()
}

/// Reads the next data frame (bounded).
async fn next_data(ws: &mut Ws) -> Message {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within 5 s")
            .expect("the socket is open")
            .expect("a valid frame");
        if msg.is_text() || msg.is_binary() {
            return msg;
        }
    }
}

fn api_keys_seen(env: &TestEnv, path_prefix: &str) -> Vec<String> {
    env.sim
        .requests()
        .iter()
        .filter(|r| r.path.starts_with(path_prefix))
        .flat_map(|r| {
            r.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("x-api-key"))
                .map(|(_, v)| v.clone())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The SDK's login, replayed: its session gets the gateway's key instead of its own, its
/// websocket exchanges frames both ways through the gateway, and its first REST call passes.
#[tokio::test]
async fn the_sdk_login_sequence_works_through_the_gateway() {
    let env = TestEnv::start().await;
    let token = sdk_session(&env).await;
    let session = env
        .sim
        .requests()
        .into_iter()
        .find(|r| r.path == "/api/v5/sessions")
        .unwrap();
    let keys: Vec<_> = session
        .headers
        .iter()
        .filter(|(n, _)| n == "x-api-key")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(keys, [KEY], "exactly one key, the gateway's");

    let mut ws = open_socket(env.gw.addr, &token, &[]).await;
    let open = next_data(&mut ws).await;
    assert!(open.to_text().unwrap().starts_with("0{"), "{open:?}");
    ws.send(Message::text("42[\"ping\"]")).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::text("42[\"ping\"]"));
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(next_data(&mut ws).await, Message::binary(vec![1u8, 2, 3]));
    ws.close(None).await.unwrap();

    let res = request(
        Method::GET,
        &env.url("/api/v3/network-settings/chat"),
        &[("authorization", &format!("Bearer {token}"))],
        Bytes::new(),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.json()["chatSettings"]["isEnabled"], true);

    // A websocket without a valid token is refused by the upstream, through the gateway.
    let tcp = tokio::net::TcpStream::connect(env.gw.addr).await.unwrap();
    let url = format!(
        "ws://{}/socket.io/?token=forged&EIO=3&transport=websocket",
        env.gw.addr
    );
    let err = tokio_tungstenite::client_async(url.as_str(), tcp)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
    assert!(api_keys_seen(&env, "/socket.io/").is_empty());
    env.shutdown().await;
}

/// Every method on pass routes, and the websocket, with and without a client key in any
/// letter case: the upstream never receives an `x-api-key`.
#[tokio::test]
async fn pass_routes_never_carry_an_api_key() {
    let env = TestEnv::start().await;
    let token = sdk_session(&env).await;
    let bearer = format!("Bearer {token}");
    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ];
    let mut sent = 0;
    for key_header in [
        None,
        Some("x-api-key"),
        Some("X-API-KEY"),
        Some("X-Api-Key"),
    ] {
        for m in &methods {
            let mut headers = vec![("authorization", bearer.as_str())];
            if let Some(h) = key_header {
                headers.push((h, SDK_KEY));
            }
            let res = request(
                m.clone(),
                &env.url("/api/v3/channels/ch-1/messages?limit=5"),
                &headers,
                r#"{"text":"hi"}"#,
            )
            .await;
            assert_eq!(res.status, StatusCode::OK, "{m} {key_header:?}");
            assert_eq!(res.json()["method"], m.as_str());
            sent += 1;
        }
        let extra: Vec<(&str, &str)> = key_header.map(|h| (h, SDK_KEY)).into_iter().collect();
        let mut ws = open_socket(env.gw.addr, &token, &extra).await;
        let _open = next_data(&mut ws).await;
        ws.close(None).await.unwrap();
    }
    let seen = env
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/api/v3/channels/"))
        .count();
    assert_eq!(seen, sent, "every pass request reached the simulator");
    assert!(api_keys_seen(&env, "/api/v3/channels/").is_empty());
    assert!(api_keys_seen(&env, "/socket.io/").is_empty());
    env.shutdown().await;
}

/// With `client_key = "reject"`, a client key is refused on pass routes too, never forwarded.
#[tokio::test]
async fn a_client_key_is_refused_on_pass_routes_when_configured() {
    let env = TestEnv::start_with(|f| {
        f.api_key.client_key = amity_gateway::config::ClientKeyPolicy::Reject;
    })
    .await;
    let res = request(
        Method::GET,
        &env.url("/api/v3/channels"),
        &[("x-api-key", SDK_KEY)],
        Bytes::new(),
    )
    .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert!(env.sim.requests().is_empty());
    env.shutdown().await;
}

/// `/`, `/admin`, `/api`, paths that a later hop could normalise elsewhere, and the
/// simulator's own control API: 404 in the envelope, never forwarded.
#[tokio::test]
async fn paths_outside_the_table_are_404_and_never_forwarded() {
    let env = TestEnv::start().await;
    for p in [
        "/",
        "/admin",
        "/api",
        "/..%2fapi/v3/x",
        "/api/../admin",
        "/api/v3/%2e%2e/%2e%2e/_sim/requests",
        "/api/v3/users/a%2fb",
        "/_sim/requests",
        "/socket.io",
    ] {
        let res = request(Method::GET, &env.url(p), &[], Bytes::new()).await;
        assert_eq!(res.status, StatusCode::NOT_FOUND, "{p}");
        assert_eq!(res.json()["code"], 400400, "{p}");
        assert_eq!(res.json()["message"], "Not Found.");
    }
    assert!(env.sim.requests().is_empty(), "{:?}", env.sim.requests());
    env.shutdown().await;
}

fn pattern_stream(
    total: u64,
    chunk: usize,
) -> (
    impl http_body::Body<Data = Bytes, Error = std::io::Error> + Send + 'static,
    Sha256,
) {
    let mut hasher = Sha256::new();
    let block: Vec<u8> = (0..chunk as u64).map(|i| (i * 7 + 3) as u8).collect();
    let mut left = total;
    while left > 0 {
        let n = (chunk as u64).min(left) as usize;
        hasher.update(&block[..n]);
        left -= n as u64;
    }
    let block = Bytes::from(block);
    let stream = futures_util::stream::unfold(total, move |left| {
        let block = block.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = (block.len() as u64).min(left);
            Some((
                Ok::<_, std::io::Error>(Frame::data(block.slice(..n as usize))),
                left - n,
            ))
        }
    });
    (StreamBody::new(stream), hasher)
}

/// 200 MiB up and 200 MiB down through a pass route of the real binary: the bytes arrive
/// intact (SHA-256 at the other end) and the gateway's memory does not grow with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_uploads_and_downloads_stream_without_growing_the_gateway() {
    const SIZE: u64 = 200 << 20;
    let (sim, sim_handle) = start_sim().await;
    sim.set_recording(false);
    let token = sim_session(&sim_handle, VALID).await;
    let (mut gw, _dir) = common::process::GatewayProcess::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [upstream]\nurl = \"http://{}\"\n[log]\naccess = false\n",
        sim_handle.addr
    ));
    let addr = gw.listen_addr();
    // Warm up: one small exchange, so the baseline has the pools and buffers in place.
    let warm = request(
        Method::GET,
        &format!("http://{addr}/api/v3/files/f/download?size=100000"),
        &[("authorization", &format!("Bearer {token}"))],
        Bytes::new(),
    )
    .await;
    assert_eq!(warm.body.len(), 100_000);
    let baseline = gw.rss_kib();
    let (stop, max) = gw.sample_rss();

    // Upload.
    let (body, hasher) = pattern_stream(SIZE, 64 * 1024);
    let want = format!("{:x}", hasher.finalize());
    let req = Request::put(format!("http://{addr}/api/v4/files/upload"))
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::combinators::BoxBody::new(body))
        .unwrap();
    let c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let res = c.request(req).await.expect("upload answered");
    assert_eq!(res.status(), StatusCode::OK);
    let echo: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(echo["bodyLength"], SIZE);
    assert_eq!(echo["sha256"], want);

    // Download, hashed as it arrives.
    let req = Request::get(format!("http://{addr}/api/v3/files/f/download?size={SIZE}"))
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let res = client().request(req).await.expect("download answered");
    assert_eq!(res.status(), StatusCode::OK);
    let mut body = res.into_body();
    let mut got = Sha256::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame.unwrap().data_ref() {
            got.update(d);
            len += d.len() as u64;
        }
    }
    let mut expect = Sha256::new();
    let block: Vec<u8> = (0..SIZE).map(amity_gateway::sim::download_byte).collect();
    expect.update(&block);
    assert_eq!(len, SIZE);
    assert_eq!(got.finalize(), expect.finalize());

    let _ = stop.send(());
    let max = max.await.unwrap();
    let grown = max.saturating_sub(baseline);
    assert!(
        grown < 32 * 1024,
        "gateway RSS grew by {grown} KiB during 400 MiB of transfers (baseline {baseline} KiB)"
    );
    gw.terminate();
}

/// Streams are limited by idleness, not by `request_timeout`: a slow download and a chatty
/// websocket outlive it; a download or websocket that goes silent is closed, and counted.
#[tokio::test]
async fn streams_end_when_idle_not_when_slow() {
    let env = TestEnv::start_with(|f| {
        f.server.request_timeout_ms = 600;
        f.server.body_read_timeout_ms = 500;
        f.upstream.timeout_ms = 500;
        f.upstream.idle_timeout_ms = 400;
    })
    .await;
    let token = sdk_session(&env).await;
    let auth = format!("Bearer {token}");

    // 12 chunks 100 ms apart: 1.2 s in all, twice the request timeout.
    let res = request(
        Method::GET,
        &env.url("/api/v3/files/f/download?size=12000&chunk=1000&interval_ms=100"),
        &[("authorization", &auth)],
        Bytes::new(),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.body.len(), 12_000);

    // 2000 bytes, then silence longer than the idle timeout: the body is cut.
    let req =
        Request::get(env.url("/api/v3/files/f/download?size=10000&chunk=1000&silent_after=2000"))
            .header("authorization", &auth)
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
    let res = client().request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let cut = tokio::time::timeout(Duration::from_secs(5), res.into_body().collect())
        .await
        .expect("the silent download is closed well before the simulator's 60 s");
    assert!(cut.is_err(), "a cut body is an error, not a short success");

    // A websocket that keeps talking, 100 ms apart for 1.2 s, then goes silent.
    let mut ws = open_socket(env.gw.addr, &token, &[]).await;
    let _open = next_data(&mut ws).await;
    for i in 0..12 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ws.send(Message::text(format!("m{i}"))).await.unwrap();
        assert_eq!(next_data(&mut ws).await, Message::text(format!("m{i}")));
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(m)) if m.is_close() => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the silent websocket is closed by the gateway"
    );

    // Counted by kind; the tunnel gauge is back to zero.
    let mut text = String::new();
    for _ in 0..50 {
        text = scrape(&env).await;
        if sample(&text, r#"gateway_stream_idle_closes_total{kind="tunnel"}"#) == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        sample(&text, r#"gateway_stream_idle_closes_total{kind="tunnel"}"#),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, r#"gateway_stream_idle_closes_total{kind="body"}"#) >= Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "gateway_tunnels_open"), Some(0.0));
    assert_eq!(sample(&text, "gateway_tunnels_total"), Some(1.0));
    env.shutdown().await;
}

const ORIGIN: &str = "https://app.example.com";

fn preflight(origin: &str) -> Vec<(&str, &str)> {
    vec![
        ("origin", origin),
        ("access-control-request-method", "POST"),
        ("access-control-request-headers", "content-type, x-api-key"),
    ]
}

/// CORS off: a preflight is routed like any request, so the upstream answers it.
#[tokio::test]
async fn without_cors_preflights_reach_the_upstream() {
    let env = TestEnv::start().await;
    let res = request(
        Method::OPTIONS,
        &env.url("/api/v5/sessions"),
        &preflight(ORIGIN),
        Bytes::new(),
    )
    .await;
    assert!(res.headers.get("access-control-allow-origin").is_none());
    let seen: Vec<_> = env
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.method == "OPTIONS" && r.path == "/api/v5/sessions")
        .collect();
    assert_eq!(seen.len(), 1, "the preflight was forwarded");
    assert!(seen[0].header("x-api-key").is_none());
    env.shutdown().await;
}

/// CORS on: the gateway answers preflights itself, allowed origins get their headers on real
/// answers, and a foreign origin cannot spend the key (403, not forwarded).
#[tokio::test]
async fn with_cors_the_gateway_answers_preflights_and_guards_the_key() {
    let env = TestEnv::start_with(|f| {
        f.cors.allowed_origins = vec![ORIGIN.to_owned()];
        f.cors.max_age_secs = 321;
    })
    .await;
    let res = request(
        Method::OPTIONS,
        &env.url("/api/v5/sessions"),
        &preflight(ORIGIN),
        Bytes::new(),
    )
    .await;
    assert!(res.status.is_success(), "{}", res.status);
    assert_eq!(res.headers["access-control-allow-origin"], ORIGIN);
    assert_eq!(res.headers["access-control-max-age"], "321");
    let allowed = res.headers["access-control-allow-headers"]
        .to_str()
        .unwrap();
    assert!(
        allowed.contains("content-type") && allowed.contains("x-api-key"),
        "{allowed}"
    );
    assert!(
        env.sim.requests().is_empty(),
        "preflights are not forwarded"
    );

    let session = |origin: &'static str| {
        let url = env.url("/api/v5/sessions");
        async move {
            request(
                Method::POST,
                &url,
                &[("content-type", "application/json"), ("origin", origin)],
                VALID,
            )
            .await
        }
    };
    let res = session("https://evil.example.net").await;
    assert_eq!(res.status, StatusCode::FORBIDDEN);
    assert_eq!(res.json()["code"], 400300);
    assert!(
        env.sim.requests().is_empty(),
        "a foreign origin is not forwarded"
    );

    let res = session(ORIGIN).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.headers["access-control-allow-origin"], ORIGIN);
    let vary: Vec<_> = res
        .headers
        .get_all("vary")
        .iter()
        .map(|v| v.to_str().unwrap().to_ascii_lowercase())
        .collect();
    assert!(vary.iter().any(|v| v.contains("origin")), "{vary:?}");
    let exposed = res.headers["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(
        exposed.contains("ratelimit") && exposed.contains("x-request-id"),
        "{exposed}"
    );
    assert_eq!(env.sim.requests().len(), 1);
    env.shutdown().await;
}

fn visitor(body: serde_json::Value) -> String {
    body.to_string()
}

/// Visitor sessions are validated, share the per-device budget with ordinary sessions, and
/// carry the gateway's key.
#[tokio::test]
async fn visitor_sessions_are_validated_limited_and_keyed() {
    let env = TestEnv::start().await;
    let url = env.url("/api/v5/sessions/visitor");
    let long = "d".repeat(151);
    let cases = [
        (serde_json::json!({}), "/deviceId"),
        (serde_json::json!({"deviceId": ""}), "/deviceId"),
        (serde_json::json!({"deviceId": long}), "/deviceId"),
        (serde_json::json!({"deviceId": 7}), "/deviceId"),
        (
            serde_json::json!({"deviceId": "v", "deviceInfo": "web"}),
            "/deviceInfo",
        ),
        (
            serde_json::json!({"deviceId": "v", "deviceInfo": {"kind": "toaster"}}),
            "/deviceInfo/kind",
        ),
        (
            serde_json::json!({"deviceId": "v", "deviceInfo": {"model": "m".repeat(101)}}),
            "/deviceInfo/model",
        ),
        (
            serde_json::json!({"deviceId": "v", "deviceInfo": {"sdkVersion": "s".repeat(31)}}),
            "/deviceInfo/sdkVersion",
        ),
        (
            serde_json::json!({"deviceId": "v", "authSignature": 1}),
            "/authSignature",
        ),
        (
            serde_json::json!({"deviceId": "v", "authSignatureExpiresAt": null}),
            "/authSignatureExpiresAt",
        ),
    ];
    for (body, pointer) in cases {
        let res = post_json(&url, visitor(body.clone())).await;
        assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let detail = res.json()["data"]["detail"].clone();
        assert!(
            detail
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["pointer"] == pointer),
            "{body}: {detail}"
        );
    }
    let res = post_json(&url, "{not json").await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert!(
        env.sim.requests().is_empty(),
        "nothing invalid is forwarded"
    );

    // One budget per device: 5 ordinary sessions and 5 visitor sessions, then the 11th is 429.
    let device = "shared-budget-device";
    for _ in 0..5 {
        let body = format!(r#"{{"userId":"u-1","deviceId":"{device}"}}"#);
        assert_eq!(
            post_json(&env.url("/api/v5/sessions"), body).await.status,
            StatusCode::OK
        );
    }
    let body = visitor(serde_json::json!({
        "deviceId": device,
        "deviceInfo": {"kind": "web", "model": "Firefox", "sdkVersion": "6.35.3"},
        "authSignature": "sig",
        "authSignatureExpiresAt": "2030-01-01T00:00:00.000Z",
    }));
    for _ in 0..5 {
        let res = post_json(&url, body.clone()).await;
        assert_eq!(res.status, StatusCode::OK);
        assert_eq!(res.json()["userType"], "visitor");
    }
    let res = post_json(&url, body.clone()).await;
    assert_eq!(res.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.json()["code"], 400311);
    let visitors: Vec<_> = env
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/v5/sessions/visitor")
        .collect();
    assert_eq!(visitors.len(), 5);
    for r in visitors {
        let keys: Vec<_> = r.headers.iter().filter(|(n, _)| n == "x-api-key").collect();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].1, KEY);
    }
    env.shutdown().await;
}

/// The table README.md documents is the table the gateway runs with by default.
#[test]
fn readme_documents_the_effective_default_table() {
    let readme = include_str!("../README.md");
    let table = amity_gateway::routes::RouteTable::defaults(Duration::from_secs(60))
        .unwrap()
        .render();
    assert!(
        readme.contains(table.trim_end()),
        "README.md must show the default table exactly as check-config prints it:\n{table}"
    );
}

/// `check-config` prints the effective table, and names the bad route of a malformed one.
#[test]
fn check_config_prints_the_table_and_names_a_bad_route() {
    let run = |text: &str| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_amity-gateway"))
            .args(["check-config", "--config"])
            .arg(&path)
            .env("AMITY_API_KEY", KEY)
            .output()
            .unwrap()
    };
    let out = run(include_str!("../config/gateway.toml"));
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("# routes (most specific first"), "{stdout}");
    assert!(stdout.contains("session_visitor") && stdout.contains("/socket.io/*"));

    let bad = "[[routes]]\nname = \"api\"\nprefix = \"/api/\"\npolicy = \"pass\"\n\n\
               [[routes]]\nname = \"uploads\"\npath = \"/api/v3/files/../x\"\npolicy = \"pass\"\n";
    let out = run(bad);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\"uploads\""), "{stderr}");
    let ambiguous = "[[routes]]\nname = \"one\"\nprefix = \"/api/\"\npolicy = \"pass\"\n\n\
                     [[routes]]\nname = \"two\"\nprefix = \"/api/\"\npolicy = \"deny\"\n";
    let out = run(ambiguous);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("\"one\"") && stderr.contains("\"two\"") && stderr.contains("ambiguous"),
        "{stderr}"
    );
}

/// The real binary's whole log output, at debug level, for a session, a websocket whose token
/// is in the query string, and pass requests with bearer tokens and tokens in queries: no token
/// appears anywhere, and the access lines name the pass route and its path without the query.
#[tokio::test]
async fn no_token_from_a_query_or_header_is_logged() {
    let (_sim, sim_handle) = start_sim().await;
    let (mut gw, _dir) = common::process::GatewayProcess::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndrain_timeout_secs = 5\n\
         [upstream]\nurl = \"http://{}\"\n[log]\nformat = \"json\"\nlevel = \"debug\"\n",
        sim_handle.addr
    ));
    let addr = gw.listen_addr();
    let res = post_json(&format!("http://{addr}/api/v5/sessions"), VALID).await;
    assert_eq!(res.status, StatusCode::OK);
    let token = res.json()["accessToken"].as_str().unwrap().to_owned();
    let query_secret = "query-secret-token-3f9a";

    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://{addr}/socket.io/?token={token}&EIO=3&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::client_async(url.as_str(), tcp)
        .await
        .unwrap();
    let _open = ws.next().await.unwrap().unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    let _echo = ws.next().await.unwrap().unwrap();
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    drop(ws);

    let res = request(
        Method::GET,
        &format!("http://{addr}/api/v3/channels?accessToken={query_secret}&token={token}"),
        &[("authorization", &format!("Bearer {token}"))],
        Bytes::new(),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    // A token the upstream refuses, in both places.
    let res = request(
        Method::GET,
        &format!("http://{addr}/api/v3/channels?token={query_secret}"),
        &[("authorization", &format!("Bearer {query_secret}"))],
        Bytes::new(),
    )
    .await;
    assert_eq!(res.status, StatusCode::UNAUTHORIZED);
    // Let the tunnel's closing line be written before the stop.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (stdout, stderr) = gw.terminate();
    let all = format!("{}\n{stderr}", stdout.join("\n"));
    for secret in [token.as_str(), query_secret, KEY] {
        assert!(!all.contains(secret), "a secret reached the logs:\n{all}");
    }
    let lines: Vec<serde_json::Value> = stdout
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let pass: Vec<_> = lines
        .iter()
        .filter(|l| l["target"] == "access" && l["route"] == "api")
        .collect();
    assert_eq!(pass.len(), 2, "{stdout:#?}");
    assert!(
        pass.iter().all(|l| l["path"] == "/api/v3/channels"),
        "{pass:?}"
    );
    let socket = lines
        .iter()
        .find(|l| l["target"] == "access" && l["route"] == "realtime")
        .expect("an access line for the websocket's upgrade");
    assert_eq!(socket["path"], "/socket.io/");
    assert_eq!(socket["status"], 101);
    let tunnel = lines
        .iter()
        .find(|l| l["fields"]["kind"] == "tunnel" || l["kind"] == "tunnel")
        .unwrap_or_else(|| panic!("a line when the tunnel ended: {stdout:#?}"));
    let fields = if tunnel["fields"].is_object() {
        &tunnel["fields"]
    } else {
        tunnel
    };
    assert!(
        fields["bytes_from_client"].as_u64().unwrap() > 0,
        "{tunnel}"
    );
    assert!(
        fields["bytes_from_upstream"].as_u64().unwrap() > 0,
        "{tunnel}"
    );
}

/// HTTP/2 clients (prior knowledge) reach pass routes too, without the key; a pass route's own
/// body limit refuses a larger declared body before anything is forwarded.
#[tokio::test]
async fn http2_clients_pass_and_route_limits_apply() {
    let env = TestEnv::start_with(|f| {
        let routes = &mut f.routes.0;
        let mut uploads = routes.iter().find(|r| r.name == "api").unwrap().clone();
        uploads.name = "uploads".into();
        uploads.prefix = Some("/api/v4/files/".into());
        uploads.max_body_bytes = Some(1000);
        routes.push(uploads);
    })
    .await;
    let token = sdk_session(&env).await;
    let tcp = tokio::net::TcpStream::connect(env.gw.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::post(env.url("/api/v3/channels"))
        .header("authorization", format!("Bearer {token}"))
        .header("x-api-key", SDK_KEY)
        .body(http_body_util::Full::new(Bytes::from_static(b"h2 body")))
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let echo: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(echo["bodyLength"], 7);
    assert!(api_keys_seen(&env, "/api/v3/channels").is_empty());

    let auth = format!("Bearer {token}");
    let res = request(
        Method::POST,
        &env.url("/api/v4/files/"),
        &[("authorization", &auth)],
        vec![b'x'; 1001],
    )
    .await;
    assert_eq!(res.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(env
        .sim
        .requests()
        .iter()
        .all(|r| !r.path.starts_with("/api/v4/files/")));
    let res = request(
        Method::POST,
        &env.url("/api/v4/files/"),
        &[("authorization", &auth)],
        vec![b'x'; 1000],
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.json()["bodyLength"], 1000);
    env.shutdown().await;
}
