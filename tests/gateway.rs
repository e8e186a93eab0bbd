//! End-to-end behaviour of the gateway core over loopback sockets, against the simulator.

mod common;

use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SESSION: &str = "/api/v3/sessions";

#[tokio::test]
async fn valid_bodies_reach_the_upstream_byte_for_byte_with_exactly_the_configured_key() {
    let env = TestEnv::start().await;
    for version in ["v3", "v4", "v5"] {
        env.sim.clear_requests();
        // Odd spacing and key order: forwarded bytes must be the client's, not a re-serialization.
        let body = format!("{{ \"deviceId\" : \"dev-{version}\",\n \"userId\":\"u-1\", \"extra\": {{\"x\": [1,2]}} }}");
        let res = request(
            Method::POST,
            &env.url(&format!("/api/{version}/sessions")),
            &[
                ("content-type", "application/json"),
                ("x-api-key", "client-forged-key"),
            ],
            body.clone(),
        )
        .await;
        assert_eq!(res.status, StatusCode::OK, "{version}: {:?}", res.body);
        let seen = env.sim.requests();
        assert_eq!(seen.len(), 1, "{version}");
        assert_eq!(
            seen[0].body_bytes.as_ref(),
            body.as_bytes(),
            "{version}: body changed"
        );
        let keys: Vec<_> = seen[0]
            .headers
            .iter()
            .filter(|(k, _)| k == "x-api-key")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(
            keys,
            vec![KEY],
            "{version}: exactly one, the configured key"
        );
        let json = res.json();
        assert!(
            json["accessToken"].is_string(),
            "{version}: simulator's body reaches the client"
        );
        assert_eq!(json["users"][0]["userId"], "u-1");
        assert_eq!(json.get("refreshToken").is_some(), version != "v5");
        assert!(res.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
    }
    env.shutdown().await;
}

#[tokio::test]
async fn client_keys_in_any_case_and_count_are_stripped() {
    let env = TestEnv::start().await;
    let body = VALID;
    let raw_req = format!(
        "POST /api/v3/sessions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nX-API-KEY: one\r\nx-Api-Key: two\r\nx-api-key: three\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let out = raw(env.gw.addr, raw_req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let seen = env.sim.requests();
    let keys: Vec<_> = seen[0]
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("x-api-key"))
        .collect();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].1, KEY);
    env.shutdown().await;
}

#[tokio::test]
async fn client_key_can_be_rejected_instead() {
    let env = TestEnv::start_with(|f| {
        f.api_key.client_key = amity_gateway::config::ClientKeyPolicy::Reject
    })
    .await;
    let res = request(
        Method::POST,
        &env.url(SESSION),
        &[("content-type", "application/json"), ("x-api-key", "mine")],
        VALID,
    )
    .await;
    assert_eq!(res.status, StatusCode::BAD_REQUEST);
    assert!(env.sim.requests().is_empty());
    env.shutdown().await;
}

#[tokio::test]
async fn four_broken_rules_come_back_in_one_422_and_nothing_is_forwarded() {
    let env = TestEnv::start().await;
    let body = r#"{"userId":"","deviceId":7,"deviceInfo":{"kind":"toaster"},"displayName":null}"#;
    let res = post_json(&env.url(SESSION), body).await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    let json = res.json();
    assert_eq!(json["status"], "error");
    assert_eq!(json["code"], 500000);
    assert_eq!(json["message"], "Parameters validation error!");
    let pointers: Vec<_> = json["data"]["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["pointer"].as_str().unwrap().to_owned())
        .collect();
    for p in ["/userId", "/deviceId", "/deviceInfo/kind", "/displayName"] {
        assert!(
            pointers.iter().any(|x| x == p),
            "{p} missing from {pointers:?}"
        );
    }
    assert_eq!(pointers.len(), 4);
    assert!(env.sim.requests().is_empty());
    env.shutdown().await;
}

#[tokio::test]
async fn every_rule_has_a_failing_case_over_the_socket() {
    let env = TestEnv::start_with(|f| f.network.secure = true).await;
    let long = |n: usize| "x".repeat(n);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "v3",
            r#"{"deviceId":"d","authToken":"t"}"#.into(),
            "/userId",
        ),
        (
            "v3",
            format!(
                r#"{{"userId":"{}","deviceId":"d","authToken":"t"}}"#,
                long(51)
            ),
            "/userId",
        ),
        (
            "v3",
            r#"{"userId":"u","authToken":"t"}"#.into(),
            "/deviceId",
        ),
        (
            "v3",
            format!(
                r#"{{"userId":"u","deviceId":"{}","authToken":"t"}}"#,
                long(151)
            ),
            "/deviceId",
        ),
        (
            "v3",
            r#"{"userId":"u","deviceId":"d","deviceInfo":[],"authToken":"t"}"#.into(),
            "/deviceInfo",
        ),
        (
            "v3",
            r#"{"userId":"u","deviceId":"d","deviceInfo":{"kind":"tv"},"authToken":"t"}"#.into(),
            "/deviceInfo/kind",
        ),
        (
            "v3",
            format!(
                r#"{{"userId":"u","deviceId":"d","deviceInfo":{{"model":"{}"}},"authToken":"t"}}"#,
                long(101)
            ),
            "/deviceInfo/model",
        ),
        (
            "v3",
            format!(
                r#"{{"userId":"u","deviceId":"d","deviceInfo":{{"sdkVersion":"{}"}},"authToken":"t"}}"#,
                long(31)
            ),
            "/deviceInfo/sdkVersion",
        ),
        (
            "v3",
            format!(
                r#"{{"userId":"u","deviceId":"d","displayName":"{}","authToken":"t"}}"#,
                long(101)
            ),
            "/displayName",
        ),
        (
            "v3",
            r#"{"userId":"u","deviceId":"d"}"#.into(),
            "/authToken",
        ),
        (
            "v3",
            format!(
                r#"{{"userId":"u","deviceId":"d","authToken":"{}"}}"#,
                long(101)
            ),
            "/authToken",
        ),
        (
            "v4",
            format!(
                r#"{{"userId":"u","deviceId":"d","authToken":"t","profileHandle":"{}"}}"#,
                long(101)
            ),
            "/profileHandle",
        ),
        (
            "v5",
            r#"{"userId":"ADMIN_x","deviceId":"d","authToken":"t"}"#.into(),
            "/userId",
        ),
        (
            "v5",
            r#"{"userId":"DELETED_x","deviceId":"d","authToken":"t"}"#.into(),
            "/userId",
        ),
    ];
    for (version, body, pointer) in cases {
        let res = post_json(&env.url(&format!("/api/{version}/sessions")), body.clone()).await;
        assert_eq!(
            res.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{version} {body}"
        );
        let json = res.json();
        let pointers: Vec<_> = json["data"]["detail"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["pointer"].clone())
            .collect();
        assert_eq!(
            pointers,
            vec![serde_json::json!(pointer)],
            "{version} {body}"
        );
    }
    assert!(
        env.sim.requests().is_empty(),
        "no invalid body was forwarded"
    );
    // v4 accepts profileHandle at the bound; v3 passes it through as an unknown field.
    let ok = format!(
        r#"{{"userId":"u","deviceId":"d","authToken":"t","profileHandle":"{}"}}"#,
        long(100)
    );
    assert_eq!(
        post_json(&env.url("/api/v4/sessions"), ok).await.status,
        StatusCode::OK
    );
    env.shutdown().await;
}

#[tokio::test]
async fn length_bounds_count_utf16_units_like_the_upstream() {
    let env = TestEnv::start().await;
    // 25 astral characters are 50 UTF-16 units (allowed); 25 + "a" is 51.
    let emoji = "😀".repeat(25);
    let combining = "e\u{301}".repeat(75); // 150 units: 75 letters each with a combining accent
    let cases = [
        (
            format!(r#"{{"userId":"{emoji}","deviceId":"d"}}"#),
            StatusCode::OK,
        ),
        (
            format!(r#"{{"userId":"{emoji}a","deviceId":"d"}}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            format!(r#"{{"userId":"{}","deviceId":"d"}}"#, "é".repeat(50)),
            StatusCode::OK,
        ),
        (
            format!(r#"{{"userId":"{}","deviceId":"d"}}"#, "é".repeat(51)),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            format!(r#"{{"userId":"u","deviceId":"{combining}"}}"#),
            StatusCode::OK,
        ),
        (
            format!(r#"{{"userId":"u","deviceId":"{combining}x"}}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            format!(
                r#"{{"userId":"u","deviceId":"d","displayName":"{}"}}"#,
                "😀".repeat(50)
            ),
            StatusCode::OK,
        ),
        (
            format!(
                r#"{{"userId":"u","deviceId":"d","displayName":"{}a"}}"#,
                "😀".repeat(50)
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (body, want) in cases {
        assert_eq!(
            post_json(&env.url(SESSION), body.clone()).await.status,
            want,
            "{body}"
        );
    }
    env.shutdown().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_envelope_and_is_never_forwarded() {
    // A limit large enough for 10,000-deep bodies to reach the parser.
    let env = TestEnv::start_with(|f| f.limits.max_body_bytes = 128 * 1024).await;
    let deep_arrays = format!(
        r#"{{"userId":"u","deviceId":"d","x":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let deep_objects = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    let cases: Vec<(&str, Vec<u8>, StatusCode)> = vec![
        (
            "malformed",
            br#"{"userId":"u","deviceId":"#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "array",
            br#"[{"userId":"u","deviceId":"d"}]"#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        ("string", br#""userId""#.to_vec(), StatusCode::BAD_REQUEST),
        ("number", b"42".to_vec(), StatusCode::BAD_REQUEST),
        ("empty", Vec::new(), StatusCode::BAD_REQUEST),
        (
            "wrong types",
            br#"{"userId":1,"deviceId":true,"deviceInfo":"ios"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "nulls",
            br#"{"userId":null,"deviceId":null}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "deep arrays",
            deep_arrays.into_bytes(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "deep objects",
            deep_objects.into_bytes(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "invalid utf-8",
            b"{\"userId\":\"u\xff\xfe\",\"deviceId\":\"d\"}".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "duplicate key",
            br#"{"userId":"u","deviceId":"d","userId":"v"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "over the limit",
            format!(
                r#"{{"userId":"u","deviceId":"d","pad":"{}"}}"#,
                "x".repeat(140_000)
            )
            .into_bytes(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (name, body, want) in cases {
        let res = post_json(&env.url(SESSION), body).await;
        assert_eq!(res.status, want, "{name}");
        let json = res.json();
        assert_eq!(json["status"], "error", "{name}");
        assert!(json["code"].is_u64(), "{name}");
        assert!(
            json["data"]["detail"]
                .as_array()
                .is_some_and(|d| !d.is_empty()),
            "{name}: a detail says why"
        );
    }
    let res = request(
        Method::POST,
        &env.url(SESSION),
        &[("content-type", "text/plain")],
        VALID,
    )
    .await;
    assert_eq!(res.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(res.json()["code"], 400000);
    let res = request(Method::POST, &env.url(SESSION), &[], VALID).await;
    assert_eq!(
        res.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "missing content type"
    );
    assert!(env.sim.requests().is_empty(), "none of them was forwarded");
    env.shutdown().await;
}

#[tokio::test]
async fn oversized_chunked_body_without_content_length_is_413() {
    let env = TestEnv::start().await;
    let mut req = b"POST /api/v3/sessions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n".to_vec();
    let chunk = "x".repeat(4096);
    req.extend_from_slice(b"d\r\n{\"pad\":\"xxxx\"\r\n");
    for _ in 0..5 {
        req.extend_from_slice(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes());
    }
    req.extend_from_slice(b"2\r\n\"}\r\n0\r\n\r\n");
    let out = raw(env.gw.addr, &req).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.contains("16384"), "detail states the limit: {out}");
    // A declared length over the limit is refused before the body is sent.
    let out = raw(
        env.gw.addr,
        b"POST /api/v3/sessions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000000\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(env.sim.requests().is_empty());
    env.shutdown().await;
}

#[tokio::test]
async fn problem_details_on_request() {
    let env = TestEnv::start().await;
    let res = request(
        Method::POST,
        &env.url(SESSION),
        &[
            ("content-type", "application/json"),
            ("accept", "application/problem+json"),
        ],
        r#"{"userId":"","deviceId":""}"#,
    )
    .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(res.headers["content-type"], "application/problem+json");
    let p = res.json();
    assert_eq!(p["status"], 422);
    assert_eq!(p["title"], "Parameters validation error!");
    assert_eq!(p["errors"].as_array().unwrap().len(), 2);
    assert_eq!(p["errors"][0]["pointer"], "/userId");
    env.shutdown().await;
}

#[tokio::test]
async fn unknown_routes_are_404_in_the_envelope_and_not_forwarded() {
    let env = TestEnv::start().await;
    for (m, p) in [
        (Method::GET, "/"),
        (Method::GET, "/admin"),
        (Method::POST, "/api"),
        (Method::GET, "/..%2fapi/v3/x"),
        (Method::GET, "/_sim/requests"),
    ] {
        let res = request(
            m.clone(),
            &env.url(p),
            &[("content-type", "application/json")],
            VALID,
        )
        .await;
        assert_eq!(res.status, StatusCode::NOT_FOUND, "{m} {p}");
        assert_eq!(res.json()["code"], 400400);
        assert_eq!(res.json()["message"], "Not Found.");
    }
    assert!(env.sim.requests().is_empty());
    env.shutdown().await;
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_is_504() {
    let mut env = TestEnv::start_with(|f| f.upstream.timeout_ms = 300).await;
    env.sim.set_latency(Duration::from_millis(1_000));
    let res = post_json(&env.url(SESSION), VALID).await;
    assert_eq!(res.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(res.json()["code"], 500000);
    env.stop_sim().await;
    let res = post_json(&env.url(SESSION), VALID).await;
    assert_eq!(res.status, StatusCode::BAD_GATEWAY);
    let json = res.json();
    assert_eq!(json["status"], "error");
    assert!(!String::from_utf8_lossy(&res.body).contains(KEY));
    env.shutdown().await;
}

/// The whole-request budget counts from the request's arrival: time the client took to send
/// its body shortens what is left for the upstream. Each part is within its own budget here
/// (body 700 ms of 1,200; upstream 900 ms of 1,200), the sum (1,600 ms) is not (1,500): the
/// client gets 504 at the deadline, while the session exchange runs on under the upstream's
/// budget and its token is still learnt.
#[tokio::test]
async fn the_request_budget_cuts_an_upstream_exchange_its_body_read_has_shortened() {
    let env = TestEnv::start_with(|f| {
        f.server.request_timeout_ms = 1_500;
        f.server.body_read_timeout_ms = 1_200;
        f.upstream.timeout_ms = 1_200;
    })
    .await;
    env.sim.set_latency(Duration::from_millis(900));
    let send = |body: String, pause: Duration| {
        let addr = env.gw.addr;
        async move {
            let head = format!(
                "POST {SESSION} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(head.as_bytes()).await.expect("head");
            tokio::time::sleep(pause).await;
            s.write_all(body.as_bytes()).await.expect("body");
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    let tokens = || {
        env.cache.sync();
        env.cache.stats().tokens
    };
    let prompt = send(VALID.to_owned(), Duration::ZERO).await;
    assert!(prompt.starts_with("HTTP/1.1 200"), "{prompt}");
    assert_eq!(tokens(), 1);
    let late_body = VALID.replace("device-abc-0001", "device-late-0001");
    let late = send(late_body, Duration::from_millis(700)).await;
    assert!(late.starts_with("HTTP/1.1 504"), "{late}");
    assert!(late.contains("upstream did not answer in time"), "{late}");
    assert_eq!(env.sim.requests().len(), 2, "both reached the upstream");
    // The late session's answer comes after the 504 and is still read and learnt.
    for _ in 0..300 {
        if tokens() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        tokens(),
        2,
        "the token of the answer that came after the 504"
    );
    env.shutdown().await;
}

#[tokio::test]
async fn forwarding_hygiene_and_request_ids() {
    let env = TestEnv::start().await;
    let res = request(
        Method::POST,
        &env.url(SESSION),
        &[
            ("content-type", "application/json"),
            ("connection", "x-drop-me"),
            ("x-drop-me", "1"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("x-forwarded-for", "203.0.113.7"),
            ("x-request-id", "req-abc-123"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ],
        VALID,
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(
        res.headers["x-request-id"], "req-abc-123",
        "client id returned"
    );
    let seen = &env.sim.requests()[0];
    assert_eq!(seen.header("x-drop-me"), None);
    assert_eq!(seen.header("proxy-authorization"), None);
    // No proxy is trusted (trusted_hops = 0): the client's own entry does not ride beside the
    // injected key; the peer is appended.
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-request-id"), Some("req-abc-123"));
    assert_eq!(seen.header("host"), Some(env.sim_addr.to_string().as_str()));
    assert_eq!(
        seen.header("traceparent"),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    // Without a client id one is minted, forwarded and returned; error responses carry it too.
    let res = post_json(&env.url(SESSION), "{").await;
    let id = res.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    env.sim.clear_requests();
    let res = post_json(&env.url(SESSION), VALID).await;
    let id2 = res.headers["x-request-id"].to_str().unwrap();
    assert_ne!(id, id2);
    assert_eq!(env.sim.requests()[0].header("x-request-id"), Some(id2));
    env.shutdown().await;
}

#[tokio::test]
async fn http2_prior_knowledge_is_served_on_the_same_port() {
    let env = TestEnv::start().await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = http::Request::post(env.url(SESSION))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            VALID.as_bytes(),
        )))
        .unwrap();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), StatusCode::OK);
    env.shutdown().await;
}

#[tokio::test]
async fn rotated_key_file_is_used_by_the_next_request() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api-key");
    std::fs::write(&path, "old-key\n").unwrap();
    let p = path.clone();
    let env = TestEnv::start_with(move |f| {
        f.api_key.value = None;
        f.api_key.file = Some(p);
    })
    .await;
    let res = post_json(&env.url(SESSION), VALID).await;
    assert_eq!(
        res.status,
        StatusCode::UNAUTHORIZED,
        "simulator refuses the old key"
    );
    // Rotate like a Kubernetes Secret update: new file renamed over the old one.
    let tmp = dir.path().join("api-key.tmp");
    std::fs::write(&tmp, format!("{KEY}\n")).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let res = post_json(&env.url(SESSION), VALID).await;
    assert_eq!(
        res.status,
        StatusCode::OK,
        "the next request carries the new key"
    );
    let keys: Vec<_> = env
        .sim
        .requests()
        .iter()
        .map(|r| r.header("x-api-key").unwrap_or("").to_owned())
        .collect();
    assert_eq!(keys, vec!["old-key".to_owned(), KEY.to_owned()]);
    env.shutdown().await;
}

#[tokio::test]
async fn health_endpoints_answer_on_the_admin_port() {
    let env = TestEnv::start().await;
    let admin = format!("http://{}", env.gw.admin_addr);
    assert_eq!(
        request(Method::GET, &format!("{admin}/healthz"), &[], "")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        request(Method::GET, &format!("{admin}/readyz"), &[], "")
            .await
            .status,
        StatusCode::OK
    );
    env.shutdown().await;
}

/// Headers a client names in `Connection` are hop-by-hop: they go before any policy runs, so
/// they can neither remove the injected key nor differ between what was checked and what is sent.
#[tokio::test]
async fn headers_named_in_connection_cannot_remove_what_the_gateway_set_or_checked() {
    let env = TestEnv::start().await;
    let send = |connection: &str| {
        format!(
            "POST /api/v3/sessions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nx-api-key: mine\r\nconnection: {connection}\r\ncontent-length: {}\r\n\r\n{VALID}",
            VALID.len()
        )
    };
    let out = raw(env.gw.addr, send("x-api-key, close").as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let seen = &env.sim.requests()[0];
    let keys: Vec<_> = seen
        .headers
        .iter()
        .filter(|(k, _)| k == "x-api-key")
        .collect();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].1, KEY, "the injected key survives");
    assert_eq!(seen.header("connection"), None);
    // A content type declared hop-by-hop is not there for validation either: 415, not forwarded.
    let out = raw(env.gw.addr, send("content-type, close").as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 415"), "{out}");
    assert_eq!(env.sim.requests().len(), 1);
    env.shutdown().await;
}

#[tokio::test]
async fn bodies_the_upstream_would_decode_differently_are_415() {
    let env = TestEnv::start().await;
    for (name, value) in [
        ("content-type", "application/json; charset=utf-16"),
        ("content-encoding", "gzip"),
    ] {
        let mut headers = vec![("content-type", "application/json")];
        if name == "content-type" {
            headers[0] = (name, value);
        } else {
            headers.push((name, value));
        }
        let res = request(Method::POST, &env.url(SESSION), &headers, VALID).await;
        assert_eq!(
            res.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{name}: {value}"
        );
        assert_eq!(res.json()["code"], 400000);
    }
    let res = request(
        Method::POST,
        &env.url(SESSION),
        &[("content-type", "application/json; charset=UTF-8")],
        VALID,
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(
        env.sim.requests().len(),
        1,
        "only the UTF-8 JSON body was forwarded"
    );
    env.shutdown().await;
}

#[tokio::test]
async fn dot_segment_and_encoded_separator_ids_are_not_routes() {
    let env = TestEnv::start().await;
    for path in [
        "/api/v3/users/..",
        "/api/v3/users/%2e%2e",
        "/api/v3/files/.",
        "/api/v3/files/x%2Fdownload",
        "/api/v3/users/a%5Cb",
    ] {
        let res = request(
            Method::GET,
            &env.url(path),
            &[("authorization", "Bearer t")],
            "",
        )
        .await;
        assert_eq!(res.status, StatusCode::NOT_FOUND, "{path}");
    }
    assert!(env.sim.requests().is_empty());
    env.shutdown().await;
}

#[tokio::test]
async fn a_body_that_never_finishes_is_408_not_a_gateway_timeout() {
    let env = TestEnv::start_with(|f| f.server.body_read_timeout_ms = 300).await;
    let mut s = tokio::net::TcpStream::connect(env.gw.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"POST /api/v3/sessions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"userId\":")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let out = String::from_utf8_lossy(&buf[..n]);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(env.sim.requests().is_empty());
    env.shutdown().await;
}
