//! Structured logs of the real binary: `amity-gateway serve` with `log.format = "json"`, driven
//! over loopback against the simulator and stopped with SIGTERM. Every stdout line is JSON; each
//! request has exactly one access line with its fields; errors inside a request carry the
//! request's id; no key, token or body appears anywhere in stdout or stderr. Also: W3C trace
//! context reaches the upstream unchanged.

mod common;

use common::process::GatewayProcess as Gateway;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use serde_json::Value;

fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line:?}"))
}

/// One request of the scenario and what its access line must say.
struct Sent {
    id: String,
    route: &'static str,
    method: &'static str,
    status: u16,
    /// Whether the upstream answered (so the line has `upstream_ms`).
    upstream: bool,
}

#[tokio::test]
async fn access_lines_are_json_with_every_field_and_no_secret_or_body_is_logged() {
    let (_sim, sim_handle) = start_sim().await;
    let (mut gw, _dir) = Gateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndrain_timeout_secs = 5\n\
         [upstream]\nurl = \"http://{}\"\n[log]\nformat = \"json\"\nlevel = \"info\"\n",
        sim_handle.addr
    ));
    let listening = json(&gw.wait_for("listening line", |l| l.contains("gateway listening")));
    let addr: SocketAddr = listening["listen"].as_str().unwrap().parse().unwrap();
    let url = |p: &str| format!("http://{addr}{p}");

    // Values that must never be logged: the key, tokens, client-sent keys and body contents.
    let marker = "Body-Marker-Display-Name";
    let auth_token = "auth-token-never-logged-5b1e";
    let client_key = "client-sent-key-8c2d";
    let mut secrets = vec![
        KEY.to_owned(),
        auth_token.to_owned(),
        client_key.to_owned(),
        marker.to_owned(),
    ];
    let body = format!(
        r#"{{"userId":"user-logs-1","deviceId":"device-logs-1","displayName":"{marker}","authToken":"{auth_token}"}}"#
    );
    let mut sent = Vec::new();
    let mut access = String::new();
    for (n, version) in ["v3", "v4", "v5"].into_iter().enumerate() {
        let id = format!("req-session-{n}");
        let res = request(
            Method::POST,
            &url(&format!("/api/{version}/sessions")),
            &[
                ("content-type", "application/json"),
                ("x-request-id", &id),
                ("x-api-key", client_key),
            ],
            body.clone(),
        )
        .await;
        assert_eq!(res.status, StatusCode::OK);
        let j = res.json();
        access = j["accessToken"].as_str().unwrap().to_owned();
        secrets.push(access.clone());
        if let Some(r) = j["refreshToken"].as_str() {
            secrets.push(r.to_owned());
        }
        let route = ["session_v3", "session_v4", "session_v5"][n];
        sent.push(Sent {
            id,
            route,
            method: "POST",
            status: 200,
            upstream: true,
        });
    }
    let bearer = format!("Bearer {access}");
    let res = request(
        Method::GET,
        &url("/api/v3/users/user-logs-1"),
        &[("authorization", &bearer), ("x-request-id", "req-user")],
        "",
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    sent.push(Sent {
        id: "req-user".into(),
        route: "user",
        method: "GET",
        status: 200,
        upstream: true,
    });
    let res = post_json(
        &url("/api/v5/sessions"),
        format!(r#"{{"userId":"ADMIN_{marker}","deviceId":"","authToken":"{auth_token}"}}"#),
    )
    .await;
    assert_eq!(res.status, StatusCode::UNPROCESSABLE_ENTITY);
    // No client id: the minted one is returned and logged.
    let minted = res.headers["x-request-id"].to_str().unwrap().to_owned();
    sent.push(Sent {
        id: minted,
        route: "session_v5",
        method: "POST",
        status: 422,
        upstream: false,
    });
    let res = request(
        Method::GET,
        &url(&format!("/v3/channels/{auth_token}")),
        &[("x-request-id", "req-404")],
        "",
    )
    .await;
    assert_eq!(res.status, StatusCode::NOT_FOUND);
    sent.push(Sent {
        id: "req-404".into(),
        route: "unmatched",
        method: "GET",
        status: 404,
        upstream: false,
    });
    sim_handle.stop().await;
    let res = request(
        Method::POST,
        &url("/api/v3/sessions"),
        &[
            ("content-type", "application/json"),
            ("x-request-id", "req-down"),
        ],
        body.clone(),
    )
    .await;
    assert_eq!(res.status, StatusCode::BAD_GATEWAY);
    sent.push(Sent {
        id: "req-down".into(),
        route: "session_v3",
        method: "POST",
        status: 502,
        upstream: false,
    });

    // The last access line is written when the gateway goes idle after answering.
    gw.wait_for("access line of the last request", |l| {
        l.contains("\"req-down\"") && l.contains("\"access\"")
    });
    let (stdout, stderr) = gw.terminate();

    let lines: Vec<Value> = stdout
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| json(l))
        .collect();
    for l in &lines {
        for k in ["timestamp", "level", "target"] {
            assert!(l[k].is_string(), "{k} missing: {l}");
        }
    }
    let access_lines: BTreeMap<String, &Value> = lines
        .iter()
        .filter(|l| l["target"] == "access")
        .map(|l| (l["request_id"].as_str().unwrap().to_owned(), l))
        .collect();
    assert_eq!(
        access_lines.len(),
        sent.len(),
        "one access line per request: {access_lines:#?}"
    );
    for s in &sent {
        let l = access_lines
            .get(&s.id)
            .unwrap_or_else(|| panic!("no access line for {}", s.id));
        assert_eq!(l["level"], "INFO");
        assert_eq!(l["method"], s.method, "{l}");
        assert_eq!(l["route"], s.route, "{l}");
        assert_eq!(l["status"], s.status, "{l}");
        assert!(l["duration_ms"].as_f64().is_some_and(|d| d >= 0.0), "{l}");
        assert_eq!(
            l["upstream_ms"].as_f64().is_some(),
            s.upstream,
            "upstream_ms iff the upstream answered: {l}"
        );
        assert!(
            [
                "none",
                "allowed",
                "limited",
                "fallback_allowed",
                "fallback_denied"
            ]
            .contains(&l["rate_limit"].as_str().unwrap_or("")),
            "{l}"
        );
        assert!(
            ["none", "HIT", "MISS", "BYPASS"].contains(&l["cache"].as_str().unwrap_or("")),
            "{l}"
        );
    }
    // The failure inside the last request is logged with the request's id.
    let failure = lines
        .iter()
        .find(|l| l["message"] == "request failed")
        .expect("the upstream failure is logged");
    assert_eq!(failure["kind"], "connect");
    assert_eq!(failure["request_id"], "req-down", "{failure}");
    assert!(lines.iter().any(|l| l["message"] == "stopped"));

    let everything = format!("{}\n{stderr}", stdout.join("\n"));
    assert!(
        secrets.len() >= 9,
        "collected {} secret values",
        secrets.len()
    );
    for s in &secrets {
        assert!(
            !everything.contains(s.as_str()),
            "a secret or body value is in the logs"
        );
    }
}

#[tokio::test]
async fn w3c_trace_context_reaches_the_upstream_unchanged() {
    let env = TestEnv::start().await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let tracestate = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
    let res = request(
        Method::POST,
        &env.url("/api/v3/sessions"),
        &[
            ("content-type", "application/json"),
            ("traceparent", traceparent),
            ("tracestate", tracestate),
        ],
        VALID,
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    let seen = &env.sim.requests()[0];
    assert_eq!(seen.header("traceparent"), Some(traceparent));
    assert_eq!(seen.header("tracestate"), Some(tracestate));
    env.shutdown().await;
}

#[tokio::test]
async fn access_false_writes_no_access_line_and_the_rest_is_flushed_at_exit() {
    let (_sim, sim_handle) = start_sim().await;
    let (mut gw, _dir) = Gateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndrain_timeout_secs = 5\n\
         worker_threads = 1\n[upstream]\nurl = \"http://{}\"\n[log]\nformat = \"json\"\naccess = false\n",
        sim_handle.addr
    ));
    let listening = json(&gw.wait_for("listening line", |l| l.contains("gateway listening")));
    let addr: SocketAddr = listening["listen"].as_str().unwrap().parse().unwrap();
    let res = post_json(&format!("http://{addr}/api/v3/sessions"), VALID).await;
    assert_eq!(res.status, StatusCode::OK);
    // A websocket tunnel that ends writes no line either.
    let token = res.json()["accessToken"].as_str().unwrap().to_owned();
    let mut ws = open_socket(addr, &token, &[]).await;
    ws.close(None).await.unwrap();
    drop(ws);
    let admin = listening["admin"].as_str().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = request(Method::GET, &format!("http://{admin}/metrics"), &[], "").await;
        let text = String::from_utf8_lossy(&m.body).into_owned();
        if sample(&text, "gateway_tunnels_total") == Some(1.0)
            && sample(&text, "gateway_tunnels_open") == Some(0.0)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the tunnel ends: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (stdout, _) = gw.terminate();
    let lines: Vec<Value> = stdout.iter().map(|l| json(l)).collect();
    assert!(lines.iter().all(|l| l["target"] != "access"), "{stdout:#?}");
    // Written by the single runtime thread after its last park: flushed at exit.
    assert!(
        lines.iter().any(|l| l["message"] == "stopped"),
        "{stdout:#?}"
    );
    sim_handle.stop().await;
}
