//! The simulator over real loopback sockets, through a hyper client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{SimConfig, SimHandle, Simulator};

const KEY: &str = "sim-test-key";

type HttpClient = Client<HttpConnector, Full<Bytes>>;

struct Fixture {
    sim: Arc<Simulator>,
    handle: SimHandle,
    client: HttpClient,
}

async fn start() -> Fixture {
    let sim = Simulator::new(SimConfig::new(KEY));
    let handle = Arc::clone(&sim)
        .spawn(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind simulator");
    let client = Client::builder(TokioExecutor::new()).build_http();
    Fixture {
        sim,
        handle,
        client,
    }
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    json: Value,
}

impl Fixture {
    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        call_with(&self.client, self.handle.addr, method, path, headers, body).await
    }

    async fn session(&self, version: u8, body: Value) -> Reply {
        self.call(
            Method::POST,
            &format!("/api/v{version}/sessions"),
            &[("content-type", "application/json"), ("x-api-key", KEY)],
            &body.to_string(),
        )
        .await
    }

    async fn token_for(&self, user: &str, device: &str) -> String {
        let r = self
            .session(3, json!({"userId": user, "deviceId": device}))
            .await;
        assert_eq!(r.status, StatusCode::OK);
        r.json["accessToken"].as_str().unwrap().to_owned()
    }

    async fn get_bearer(&self, path: &str, token: &str) -> Reply {
        let auth = format!("Bearer {token}");
        self.call(Method::GET, path, &[("authorization", auth.as_str())], "")
            .await
    }
}

async fn call_with(
    client: &HttpClient,
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .unwrap();
    let resp = client.request(req).await.expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        json,
    }
}

fn parse_time(v: &Value) -> OffsetDateTime {
    let s = v.as_str().expect("time is a string");
    assert!(
        s.len() == 24 && s.ends_with('Z'),
        "ISO-8601 with millis and Z: {s}"
    );
    OffsetDateTime::parse(s, &Rfc3339).expect("RFC 3339")
}

fn assert_envelope(r: &Reply, status: StatusCode, code: u64, message: &str) {
    assert_eq!(r.status, status);
    assert_eq!(r.json["status"], "error");
    assert_eq!(r.json["code"], code);
    assert_eq!(r.json["message"], message);
    assert!(r.json["data"].is_object());
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

fn sorted(mut v: Vec<&str>) -> Vec<&str> {
    v.sort_unstable();
    v
}

/// A session without the configured key, with a wrong key, or with the key twice is 401 in
/// the upstream envelope on every version.
#[tokio::test]
async fn session_without_exact_api_key_is_401_envelope() {
    let f = start().await;
    let body = json!({"userId": "u1", "deviceId": "d1"}).to_string();
    for v in [3, 4, 5] {
        let path = format!("/api/v{v}/sessions");
        for headers in [
            vec![],
            vec![("x-api-key", "wrong")],
            vec![("x-api-key", KEY), ("x-api-key", KEY)],
            vec![("x-api-key", "SIM-TEST-KEY")],
            vec![("x-api-key", "sim-test-ke")],
        ] {
            let r = f.call(Method::POST, &path, &headers, &body).await;
            assert_envelope(&r, StatusCode::UNAUTHORIZED, 400100, "Unauthorized");
        }
    }
}

/// A v3 session carries every field of the spec example, times are ISO-8601 with millis,
/// expiry is 30 days, and users[0]/files[0] are the caller and their avatar.
#[tokio::test]
async fn session_with_key_has_every_spec_field() {
    let f = start().await;
    let r = f
        .session(
            3,
            json!({"userId": "user-123", "deviceId": "device-abc-0001",
                   "deviceInfo": {"kind": "ios", "model": "iPhone15,2", "sdkVersion": "6.35.3"},
                   "displayName": "Alice", "authToken": "tok-xyz"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let j = &r.json;
    assert_eq!(
        keys(j),
        sorted(vec![
            "accessToken",
            "refreshToken",
            "issuedAt",
            "expiresAt",
            "users",
            "roles",
            "files",
            "lastCachePurge"
        ])
    );
    let access = j["accessToken"].as_str().unwrap();
    assert_eq!(access.split('.').count(), 3, "JWT-looking");
    assert!(access.starts_with("eyJ"));
    let refresh = j["refreshToken"].as_str().unwrap();
    assert_eq!(refresh.len(), 64);
    assert!(refresh.bytes().all(|b| b.is_ascii_hexdigit()));

    let issued = parse_time(&j["issuedAt"]);
    let expires = parse_time(&j["expiresAt"]);
    assert_eq!(expires - issued, time::Duration::days(30));
    assert!((OffsetDateTime::now_utc() - issued).abs() < time::Duration::minutes(1));
    assert_eq!(j["lastCachePurge"], f.sim.last_cache_purge());
    parse_time(&j["lastCachePurge"]);

    let user = &j["users"][0];
    assert_eq!(j["users"].as_array().unwrap().len(), 1);
    assert_eq!(
        keys(user),
        sorted(vec![
            "_id",
            "path",
            "userId",
            "userInternalId",
            "userPublicId",
            "roles",
            "permissions",
            "displayName",
            "profileHandle",
            "description",
            "avatarFileId",
            "avatarCustomUrl",
            "flagCount",
            "hashFlag",
            "metadata",
            "isGlobalBan",
            "isBrand",
            "createdAt",
            "updatedAt",
            "isDeleted"
        ])
    );
    assert_eq!(user["userId"], "user-123");
    assert_eq!(user["userPublicId"], "user-123");
    assert_eq!(user["displayName"], "Alice");
    assert_eq!(user["_id"], user["userInternalId"]);
    assert!(user["permissions"].is_array() && user["roles"].is_array());
    assert!(user["flagCount"].is_number());
    assert_eq!(keys(&user["hashFlag"]), vec!["bits", "hash", "hashes"]);
    assert!(user["metadata"].is_object());
    assert_eq!(user["isDeleted"], false);
    parse_time(&user["createdAt"]);
    parse_time(&user["updatedAt"]);

    let role = &j["roles"][0];
    assert_eq!(
        keys(role),
        sorted(vec![
            "roleId",
            "displayName",
            "permissions",
            "createdAt",
            "updatedAt",
            "isDeleted"
        ])
    );

    let file = &j["files"][0];
    for k in [
        "fileId",
        "fileUrl",
        "type",
        "accessType",
        "altText",
        "createdAt",
        "updatedAt",
        "attributes",
    ] {
        assert!(file.get(k).is_some(), "file field {k}");
    }
    assert_eq!(file["fileId"], user["avatarFileId"]);
    assert!(file["fileId"].as_str().unwrap().len() <= 50);
    assert_eq!(
        keys(&file["attributes"]),
        vec!["extension", "metadata", "mimeType", "name", "size"]
    );
    assert_eq!(
        keys(&file["attributes"]["metadata"]),
        vec!["exif", "gps", "height", "isFull", "width"]
    );
}

/// v4 keeps refreshToken; v5 drops it and adds `userType: signed-in`; tokens are fresh each time.
#[tokio::test]
async fn v4_and_v5_session_shapes() {
    let f = start().await;
    let v4 = f
        .session(
            4,
            json!({"userId": "u", "deviceId": "d4", "profileHandle": "handle-4"}),
        )
        .await;
    assert_eq!(v4.status, StatusCode::OK);
    assert!(v4.json["refreshToken"].is_string());
    assert!(v4.json.get("userType").is_none());
    assert_eq!(v4.json["users"][0]["profileHandle"], "handle-4");

    let v5 = f.session(5, json!({"userId": "u", "deviceId": "d5"})).await;
    assert_eq!(v5.status, StatusCode::OK);
    assert!(v5.json.get("refreshToken").is_none());
    assert_eq!(v5.json["userType"], "signed-in");
    for k in [
        "accessToken",
        "issuedAt",
        "expiresAt",
        "users",
        "roles",
        "files",
        "lastCachePurge",
    ] {
        assert!(v5.json.get(k).is_some(), "v5 field {k}");
    }
    assert_ne!(v4.json["accessToken"], v5.json["accessToken"]);
    assert_eq!(
        v4.json["users"][0]["_id"], v5.json["users"][0]["_id"],
        "same user record"
    );
}

/// The user record persists: a new displayName updates it, a session without one keeps it,
/// and lookups show the current record.
#[tokio::test]
async fn display_name_persists_across_sessions() {
    let f = start().await;
    let a = f
        .session(
            3,
            json!({"userId": "p", "deviceId": "d", "displayName": "Alice"}),
        )
        .await;
    let b = f
        .session(
            3,
            json!({"userId": "p", "deviceId": "d", "displayName": "Bob"}),
        )
        .await;
    assert_eq!(b.json["users"][0]["displayName"], "Bob");
    assert_eq!(
        a.json["users"][0]["createdAt"],
        b.json["users"][0]["createdAt"]
    );
    let c = f.session(5, json!({"userId": "p", "deviceId": "d"})).await;
    assert_eq!(c.json["users"][0]["displayName"], "Bob");
    let token = c.json["accessToken"].as_str().unwrap();
    let got = f.get_bearer("/api/v3/users/p", token).await;
    assert_eq!(got.json["users"][0]["displayName"], "Bob");

    let fresh = f.session(3, json!({"userId": "q", "deviceId": "e"})).await;
    assert_eq!(
        fresh.json["users"][0]["displayName"], "q",
        "defaults to the userId"
    );
}

/// User and file lookups need a bearer token the simulator issued; with one they answer the
/// documented shapes, and unknown ids are 404 envelopes.
#[tokio::test]
async fn lookups_need_a_valid_token() {
    let f = start().await;
    let s = f
        .session(
            3,
            json!({"userId": "a b/ü", "deviceId": "d1", "displayName": "A"}),
        )
        .await;
    let token = s.json["accessToken"].as_str().unwrap().to_owned();
    let file_id = s.json["files"][0]["fileId"].as_str().unwrap().to_owned();
    f.token_for("second", "d2").await;

    let enc = "a%20b%2F%C3%BC";
    let paths = [
        format!("/api/v3/users/{enc}"),
        format!("/api/v3/users/{enc}?type=internal"),
        format!("/api/v3/users/list?userIds={enc}"),
        format!("/api/v3/files/{file_id}"),
    ];
    for p in &paths {
        let r = f.call(Method::GET, p, &[], "").await;
        assert_envelope(&r, StatusCode::UNAUTHORIZED, 400100, "Unauthorized");
        let r = f.get_bearer(p, "not-a-token").await;
        assert_envelope(&r, StatusCode::UNAUTHORIZED, 400100, "Unauthorized");
        let r = f
            .call(Method::GET, p, &[("authorization", token.as_str())], "")
            .await;
        assert_envelope(&r, StatusCode::UNAUTHORIZED, 400100, "Unauthorized");
        let r = f.get_bearer(p, &token).await;
        assert_eq!(r.status, StatusCode::OK, "{p}");
    }

    let one = f.get_bearer(&paths[0], &token).await;
    assert_eq!(keys(&one.json), vec!["files", "users"]);
    assert_eq!(one.json["users"][0]["userId"], "a b/ü");
    assert_eq!(one.json["files"][0]["fileId"], file_id.as_str());

    for q in [
        format!("userIds={enc}&userIds=second"),
        format!("userIds[]={enc}&userIds[]=second"),
        format!("userIds%5B%5D={enc}&userIds%5B%5D=second"),
        format!("userIds={enc},second"),
    ] {
        let r = f
            .get_bearer(&format!("/api/v3/users/list?{q}"), &token)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{q}");
        let ids: Vec<&str> = r.json["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["userId"].as_str().unwrap())
            .collect();
        assert_eq!(ids, vec!["a b/ü", "second"], "{q}");
        assert_eq!(r.json["files"].as_array().unwrap().len(), 2);
    }

    let file = f
        .get_bearer(&format!("/api/v3/files/{file_id}"), &token)
        .await;
    assert_eq!(file.json["fileId"], file_id.as_str(), "bare File object");
    assert!(file.json["attributes"].is_object());

    let r = f.get_bearer("/api/v3/users/nobody", &token).await;
    assert_envelope(&r, StatusCode::NOT_FOUND, 400400, "Some userId Not Found");
    let r = f
        .get_bearer("/api/v3/users/list?userIds=second&userIds=nobody", &token)
        .await;
    assert_envelope(&r, StatusCode::NOT_FOUND, 400400, "Some userId Not Found");
    let r = f.get_bearer("/api/v3/files/nofile", &token).await;
    assert_envelope(&r, StatusCode::NOT_FOUND, 400400, "File not found nofile.");
}

/// A new session for the same deviceId retires the older token of that device only; other
/// devices' tokens stay valid. DELETE v4 revokes the caller's token.
#[tokio::test]
async fn new_session_for_same_device_invalidates_older_token() {
    let f = start().await;
    let old = f.token_for("u", "dev-1").await;
    let other = f.token_for("u", "dev-2").await;
    assert_eq!(
        f.get_bearer("/api/v3/sessions", &old).await.status,
        StatusCode::OK
    );
    let new = f.token_for("v", "dev-1").await;
    assert_ne!(old, new);
    let r = f.get_bearer("/api/v3/sessions", &old).await;
    assert_envelope(&r, StatusCode::UNAUTHORIZED, 400100, "Unauthorized");
    let r = f.get_bearer("/api/v3/sessions", &new).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(keys(&r.json), vec!["lastCachePurge"]);
    assert_eq!(
        f.get_bearer("/api/v3/sessions", &other).await.status,
        StatusCode::OK
    );

    let auth = format!("Bearer {new}");
    let r = f
        .call(
            Method::DELETE,
            "/api/v4/sessions",
            &[("authorization", auth.as_str())],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json, json!({"success": true}));
    let r = f
        .call(
            Method::DELETE,
            "/api/v4/sessions",
            &[("authorization", auth.as_str())],
            "",
        )
        .await;
    assert_envelope(&r, StatusCode::UNAUTHORIZED, 400100, "Unauthorized");
    let r = f.get_bearer("/api/v3/users/v", &new).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    f.sim.revoke_all_tokens();
    assert_eq!(
        f.get_bearer("/api/v3/sessions", &other).await.status,
        StatusCode::UNAUTHORIZED
    );
}

/// purge() and POST /_sim/purge move lastCachePurge strictly forward (even twice within one
/// millisecond), and sessions and GET /api/v3/sessions report the new value.
#[tokio::test]
async fn purge_moves_last_cache_purge_forward() {
    let f = start().await;
    let token = f.token_for("u", "d").await;
    let t0 = f.sim.last_cache_purge();
    f.sim.purge();
    let t1 = f.sim.last_cache_purge();
    f.sim.purge();
    let t2 = f.sim.last_cache_purge();
    assert!(parse_time(&json!(t0)) < parse_time(&json!(t1)));
    assert!(parse_time(&json!(t1)) < parse_time(&json!(t2)));

    let r = f.call(Method::POST, "/_sim/purge", &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    let t3 = r.json["lastCachePurge"].as_str().unwrap().to_owned();
    assert!(parse_time(&json!(t2)) < parse_time(&json!(t3)));
    assert_eq!(f.sim.last_cache_purge(), t3);

    let v = f.get_bearer("/api/v3/sessions", &token).await;
    assert_eq!(v.json["lastCachePurge"], t3.as_str());
    let s = f.session(5, json!({"userId": "u", "deviceId": "d"})).await;
    assert_eq!(s.json["lastCachePurge"], t3.as_str());
}

/// Every non-control request is recorded as it arrived (before the key check), control calls
/// are not, and the control API lists and clears the record.
#[tokio::test]
async fn requests_are_recorded_before_checks() {
    let f = start().await;
    let body = r#"{"userId":"u","deviceId":"d", "x":1}"#;
    let r = f
        .call(
            Method::POST,
            "/api/v3/sessions?trace=1&a=%2F",
            &[
                ("Content-Type", "application/json"),
                ("X-Api-Key", "wrong"),
                ("x-multi", "1"),
                ("x-multi", "2"),
            ],
            body,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    f.call(Method::GET, "/nowhere", &[], "").await;
    f.call(Method::GET, "/_sim/faults", &[], "").await;

    let reqs = f.sim.requests();
    assert_eq!(reqs.len(), 2, "control calls are not recorded");
    let first = &reqs[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, "/api/v3/sessions?trace=1&a=%2F");
    assert_eq!(first.body, body);
    assert_eq!(&first.body_bytes[..], body.as_bytes());
    assert_eq!(first.header("x-api-key"), Some("wrong"));
    assert!(first
        .headers
        .iter()
        .all(|(n, _)| *n == n.to_ascii_lowercase()));
    let multi: Vec<&str> = first
        .headers
        .iter()
        .filter(|(n, _)| n == "x-multi")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(multi, vec!["1", "2"]);
    assert_eq!(reqs[1].path, "/nowhere");

    let listed = f.call(Method::GET, "/_sim/requests", &[], "").await;
    assert_eq!(listed.status, StatusCode::OK);
    let arr = listed.json.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    assert_eq!(arr[0]["path"], "/api/v3/sessions?trace=1&a=%2F");
    assert_eq!(arr[0]["body"], body);
    assert!(arr[0].get("body_bytes").is_none());
    assert_eq!(arr[0]["headers"][0].as_array().unwrap().len(), 2);

    let cleared = f.call(Method::DELETE, "/_sim/requests", &[], "").await;
    assert_eq!(cleared.status, StatusCode::OK);
    assert!(f.sim.requests().is_empty());

    f.sim.set_recording(false);
    f.call(Method::GET, "/nowhere", &[], "").await;
    assert!(f.sim.requests().is_empty());
    f.sim.set_recording(true);
    f.call(Method::GET, "/nowhere", &[], "").await;
    assert_eq!(f.sim.requests().len(), 1);
    f.sim.clear_requests();
    assert!(f.sim.requests().is_empty());
}

/// Bodies the simulator cannot use are answered, never a panic: invalid JSON and non-objects
/// are 400, missing ids 422, oversize 413; unknown routes and methods are 404 "Not Found.".
#[tokio::test]
async fn bad_input_gets_envelopes_not_panics() {
    let f = start().await;
    let key = [("x-api-key", KEY)];
    for body in [
        "",
        "{",
        "[]",
        "null",
        "\"s\"",
        "{\"userId\":\"u\",}",
        "\u{0}\u{ff}",
    ] {
        let r = f.call(Method::POST, "/api/v4/sessions", &key, body).await;
        assert_envelope(&r, StatusCode::BAD_REQUEST, 400000, "Bad Request.");
    }
    for body in [
        json!({}),
        json!({"userId": 1, "deviceId": "d"}),
        json!({"userId": "u", "deviceId": ""}),
        json!({"userId": null, "deviceId": null}),
    ] {
        let r = f
            .call(Method::POST, "/api/v5/sessions", &key, &body.to_string())
            .await;
        assert_envelope(
            &r,
            StatusCode::UNPROCESSABLE_ENTITY,
            500000,
            "Parameters validation error!",
        );
    }
    let big = "x".repeat(super::routes::MAX_BODY_BYTES + 1);
    let r = f.call(Method::POST, "/api/v3/sessions", &key, &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);

    for (m, p) in [(Method::GET, "/"), (Method::GET, "/_sim/nothing")] {
        let r = f.call(m.clone(), p, &key, "").await;
        assert_envelope(&r, StatusCode::NOT_FOUND, 400400, "Not Found.");
    }
    // The rest of the API exists upstream, for a bearer token it issued; a key is not enough.
    for (m, p) in [
        (Method::GET, "/api/v4/sessions"),
        (Method::PUT, "/api/v3/sessions"),
        (Method::POST, "/api/v3/users/x"),
        (Method::GET, "/api/v3/users/"),
        (Method::GET, "/api/v3/users/a/b"),
        (Method::GET, "/api/v3/sessions/"),
    ] {
        let r = f.call(m.clone(), p, &key, "").await;
        assert_envelope(&r, StatusCode::UNAUTHORIZED, 400100, "Unauthorized");
    }
    let r = f.call(Method::PUT, "/_sim/faults", &[], "{").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = f
        .call(Method::PUT, "/_sim/faults", &[], r#"{"failure_rate": 2}"#)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

/// Injected latency delays API calls and failure_rate 1.0 answers 500 / 500000; control calls
/// are exempt; both can be set over the control API and from code.
#[tokio::test]
async fn faults_delay_and_fail_api_calls() {
    let f = start().await;
    let r = f
        .call(
            Method::PUT,
            "/_sim/faults",
            &[],
            r#"{"latency_ms": 80, "failure_rate": 1.0}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json,
        json!({"latency_ms": 80, "failure_rate": 1.0, "reset_rate": 0.0})
    );

    let started = Instant::now();
    let r = f.session(3, json!({"userId": "u", "deviceId": "d"})).await;
    assert!(started.elapsed() >= Duration::from_millis(80));
    assert_envelope(
        &r,
        StatusCode::INTERNAL_SERVER_ERROR,
        500000,
        "Internal Server Error.",
    );
    assert_eq!(f.sim.requests().len(), 1, "failed calls are still recorded");

    let started = Instant::now();
    let r = f.call(Method::POST, "/_sim/purge", &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_millis(80));

    f.sim.set_latency(Duration::ZERO);
    f.sim.set_failure_rate(0.0);
    let r = f.session(3, json!({"userId": "u", "deviceId": "d"})).await;
    assert_eq!(r.status, StatusCode::OK);
    f.sim.set_failure_rate(f64::NAN);
    let r = f.session(3, json!({"userId": "u", "deviceId": "d"})).await;
    assert_eq!(r.status, StatusCode::OK, "NaN rate means no failures");
}

/// reset_rate 1.0 closes the connection without an answer (the client sees a transport error,
/// never a status), control calls are exempt, and a bad rate is refused; back at 0 every call
/// is answered again.
#[tokio::test]
async fn reset_fault_closes_the_connection_without_an_answer() {
    let f = start().await;
    let r = f
        .call(Method::PUT, "/_sim/faults", &[], r#"{"reset_rate": 1.5}"#)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = f
        .call(Method::PUT, "/_sim/faults", &[], r#"{"reset_rate": 1.0}"#)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["reset_rate"], json!(1.0));

    let req = Request::post(format!("http://{}/api/v3/sessions", f.handle.addr))
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(
            br#"{"userId":"u","deviceId":"d"}"#,
        )))
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(5), f.client.request(req))
        .await
        .expect("the reset comes at once, not as a hang");
    assert!(res.is_err(), "a reset is a transport error: {res:?}");
    assert_eq!(f.sim.requests().len(), 0, "reset before recording");

    let r = f.call(Method::GET, "/_sim/faults", &[], "").await;
    assert_eq!(r.status, StatusCode::OK, "control calls are never reset");
    f.sim.set_reset_rate(0.0);
    let r = f.session(3, json!({"userId": "u", "deviceId": "d"})).await;
    assert_eq!(r.status, StatusCode::OK);
}

/// HTTP/2 with prior knowledge is served on the same port.
#[tokio::test]
async fn serves_http2_prior_knowledge() {
    let f = start().await;
    let h2: HttpClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let r = call_with(
        &h2,
        f.handle.addr,
        Method::POST,
        "/api/v5/sessions",
        &[("x-api-key", KEY)],
        r#"{"userId":"h2","deviceId":"h2"}"#,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["userType"], "signed-in");
    let reqs = f.sim.requests();
    assert_eq!(reqs[0].path, "/api/v5/sessions");
}

/// After stop() returns, connects are refused; dropping a handle stops its server too.
#[tokio::test]
async fn stop_and_drop_close_the_listener() {
    let f = start().await;
    let addr = f.handle.addr;
    assert_eq!(
        f.call(Method::GET, "/nowhere", &[], "").await.status,
        StatusCode::NOT_FOUND
    );
    f.handle.stop().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    let fresh: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let req = Request::get(format!("http://{addr}/nowhere"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert!(fresh.request(req).await.is_err());

    let sim = Simulator::new(SimConfig::new(KEY));
    let handle = sim
        .spawn(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let addr = handle.addr;
    assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
    drop(handle);
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "dropping the handle closes the listener");
}

/// serve() on a caller's listener returns once the shutdown future resolves.
#[tokio::test]
async fn serve_returns_on_shutdown() {
    let sim = Simulator::new(SimConfig::new(KEY));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(Arc::clone(&sim).serve(listener, async move {
        let _ = rx.await;
    }));
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let r = call_with(&client, addr, Method::GET, "/_sim/faults", &[], "").await;
    assert_eq!(r.status, StatusCode::OK);
    tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("serve returns")
        .unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
