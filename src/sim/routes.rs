//! Request routing and response building of the simulator.
//!
//! Every function here returns a finished response: there is no error path, so the service
//! handed to hyper never fails and no request can make the simulator panic.

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use super::world::{file_json, iso, ApiVersion, SessionInput, World};

/// Response body type of the simulator.
pub(crate) type SimBody = Full<Bytes>;

/// Largest accepted request body; bigger bodies answer 413.
pub(crate) const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Upstream limit on `userIds` per list call.
const MAX_LIST_IDS: usize = 100;

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<SimBody> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

/// The upstream's error envelope.
pub(crate) fn envelope(
    status: StatusCode,
    code: u32,
    message: &str,
    data: Value,
) -> Response<SimBody> {
    json_response(
        status,
        &json!({"status": "error", "code": code, "message": message, "data": data}),
    )
}

pub(crate) fn unauthorized() -> Response<SimBody> {
    envelope(StatusCode::UNAUTHORIZED, 400100, "Unauthorized", json!({}))
}

pub(crate) fn bad_request() -> Response<SimBody> {
    envelope(StatusCode::BAD_REQUEST, 400000, "Bad Request.", json!({}))
}

pub(crate) fn not_found() -> Response<SimBody> {
    envelope(StatusCode::NOT_FOUND, 400400, "Not Found.", json!({}))
}

pub(crate) fn payload_too_large() -> Response<SimBody> {
    envelope(
        StatusCode::PAYLOAD_TOO_LARGE,
        400000,
        "Bad Request.",
        json!({"detail": [format!("body exceeds {MAX_BODY_BYTES} bytes")]}),
    )
}

pub(crate) fn internal_error() -> Response<SimBody> {
    envelope(
        StatusCode::INTERNAL_SERVER_ERROR,
        500000,
        "Internal Server Error.",
        json!({}),
    )
}

fn validation_error(details: Vec<String>) -> Response<SimBody> {
    envelope(
        StatusCode::UNPROCESSABLE_ENTITY,
        500000,
        "Parameters validation error!",
        json!({"detail": details}),
    )
}

/// A request of the upstream API (not a `/_sim` control call), body already collected.
pub(crate) struct ApiRequest<'a> {
    pub(crate) method: &'a Method,
    pub(crate) path: &'a str,
    pub(crate) query: Option<&'a str>,
    pub(crate) headers: &'a HeaderMap,
    pub(crate) body: &'a Bytes,
}

/// Routes one upstream API call against the world. `api_key` is the configured key.
pub(crate) fn handle_api(
    world: &mut World,
    api_key: &str,
    req: &ApiRequest<'_>,
) -> Response<SimBody> {
    let session_version = match req.path {
        "/api/v3/sessions" => Some(ApiVersion::V3),
        "/api/v4/sessions" => Some(ApiVersion::V4),
        "/api/v5/sessions" => Some(ApiVersion::V5),
        _ => None,
    };
    match (req.method, session_version) {
        (&Method::POST, Some(version)) => return create_session(world, api_key, version, req),
        (&Method::GET, Some(ApiVersion::V3)) => return verify_session(world, req.headers),
        (&Method::DELETE, Some(ApiVersion::V4)) => return revoke_session(world, req.headers),
        _ => {}
    }
    if req.method != Method::GET {
        return not_found();
    }
    if req.path == "/api/v3/users/list" {
        return with_token(world, req.headers, |w| list_users(w, req.query));
    }
    if let Some(raw) = single_segment(req.path, "/api/v3/users/") {
        return with_token(world, req.headers, |w| {
            get_user(w, &percent_decode(raw, false))
        });
    }
    if let Some(raw) = single_segment(req.path, "/api/v3/files/") {
        return with_token(world, req.headers, |w| {
            get_file(w, &percent_decode(raw, false))
        });
    }
    not_found()
}

/// The one non-empty path segment after `prefix`, if the path is exactly `prefix{segment}`.
fn single_segment<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?;
    (!rest.is_empty() && !rest.contains('/')).then_some(rest)
}

/// True when the request carries exactly one `x-api-key` header equal to the configured key.
fn has_api_key(headers: &HeaderMap, api_key: &str) -> bool {
    let mut values = headers.get_all("x-api-key").iter();
    match (values.next(), values.next()) {
        (Some(v), None) => v.as_bytes() == api_key.as_bytes(),
        _ => false,
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn with_token(
    world: &World,
    headers: &HeaderMap,
    f: impl FnOnce(&World) -> Response<SimBody>,
) -> Response<SimBody> {
    match bearer(headers) {
        Some(token) if world.token_valid(token) => f(world),
        _ => unauthorized(),
    }
}

fn create_session(
    world: &mut World,
    api_key: &str,
    version: ApiVersion,
    req: &ApiRequest<'_>,
) -> Response<SimBody> {
    if !has_api_key(req.headers, api_key) {
        return unauthorized();
    }
    let Ok(body) = serde_json::from_slice::<Value>(req.body) else {
        return bad_request();
    };
    let Some(obj) = body.as_object() else {
        return bad_request();
    };
    // Lenient on purpose: the gateway validates; the simulator only needs the two keys.
    let user_id = obj
        .get("userId")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let device_id = obj
        .get("deviceId")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let (Some(user_id), Some(device_id)) = (user_id, device_id) else {
        let mut details = Vec::new();
        if user_id.is_none() {
            details.push("userId is required".to_owned());
        }
        if device_id.is_none() {
            details.push("deviceId is required".to_owned());
        }
        return validation_error(details);
    };
    let input = SessionInput {
        user_id,
        device_id,
        display_name: obj.get("displayName").and_then(Value::as_str),
        profile_handle: obj.get("profileHandle").and_then(Value::as_str),
    };
    json_response(StatusCode::OK, &world.create_session(version, &input))
}

fn verify_session(world: &World, headers: &HeaderMap) -> Response<SimBody> {
    with_token(world, headers, |w| {
        json_response(
            StatusCode::OK,
            &json!({"lastCachePurge": iso(w.last_purge())}),
        )
    })
}

fn revoke_session(world: &mut World, headers: &HeaderMap) -> Response<SimBody> {
    match bearer(headers) {
        Some(token) if world.revoke(token) => {
            json_response(StatusCode::OK, &json!({"success": true}))
        }
        _ => unauthorized(),
    }
}

fn user_not_found() -> Response<SimBody> {
    envelope(
        StatusCode::NOT_FOUND,
        400400,
        "Some userId Not Found",
        json!({}),
    )
}

fn get_user(world: &World, user_id: &str) -> Response<SimBody> {
    match world.user(user_id) {
        Some(user) => json_response(
            StatusCode::OK,
            &json!({"users": [world.user_json(user)], "files": [file_json(user)]}),
        ),
        None => user_not_found(),
    }
}

/// `GET /api/v3/users/list`: every requested id must exist (else 404 "Some userId Not Found").
fn list_users(world: &World, query: Option<&str>) -> Response<SimBody> {
    let ids = user_ids_from_query(query.unwrap_or(""));
    if ids.is_empty() {
        return validation_error(vec!["userIds is required".to_owned()]);
    }
    if ids.len() > MAX_LIST_IDS {
        return validation_error(vec![format!(
            "userIds must have at most {MAX_LIST_IDS} items"
        )]);
    }
    let mut users = Vec::with_capacity(ids.len());
    let mut files = Vec::with_capacity(ids.len());
    for id in &ids {
        let Some(user) = world.user(id) else {
            return user_not_found();
        };
        users.push(world.user_json(user));
        files.push(file_json(user));
    }
    json_response(StatusCode::OK, &json!({"users": users, "files": files}))
}

fn get_file(world: &World, file_id: &str) -> Response<SimBody> {
    match world.file(file_id) {
        // The bare File object, as the TS SDK reads it.
        Some(owner) => json_response(StatusCode::OK, &file_json(owner)),
        None => envelope(
            StatusCode::NOT_FOUND,
            400400,
            &format!("File not found {file_id}."),
            json!({}),
        ),
    }
}

/// Collects `userIds` from a query string in every encoding clients use: repeated
/// `userIds=a&userIds=b`, qs brackets `userIds[]=a` (also percent-encoded `userIds%5B%5D=a`
/// and indexed `userIds[0]=a`), and comma-separated values. Order kept, duplicates dropped.
pub(crate) fn user_ids_from_query(query: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !is_user_ids_key(&percent_decode(key, true)) {
            continue;
        }
        for id in percent_decode(value, true).split(',') {
            if !id.is_empty() && !out.iter().any(|seen| seen == id) {
                out.push(id.to_owned());
            }
        }
    }
    out
}

fn is_user_ids_key(key: &str) -> bool {
    let Some(rest) = key.strip_prefix("userIds") else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    rest.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .is_some_and(|index| index.bytes().all(|b| b.is_ascii_digit()))
}

/// Percent-decodes `s` (invalid escapes are kept literally; invalid UTF-8 is replaced).
/// `plus_as_space` applies the form-encoding rule used in query strings.
pub(crate) fn percent_decode(s: &str, plus_as_space: bool) -> String {
    fn hex_val(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_val);
                let lo = bytes.get(i + 2).copied().and_then(hex_val);
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' if plus_as_space => out.push(b' '),
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_accepts_every_encoding() {
        let want = vec!["a".to_owned(), "b c".to_owned(), "d/e".to_owned()];
        assert_eq!(
            user_ids_from_query("userIds=a&userIds=b+c&userIds=d%2Fe"),
            want
        );
        assert_eq!(
            user_ids_from_query("userIds[]=a&userIds[]=b%20c&userIds[]=d/e"),
            want
        );
        assert_eq!(
            user_ids_from_query("userIds%5B%5D=a&userIds%5b%5d=b+c&userIds%5B%5D=d%2Fe"),
            want
        );
        assert_eq!(
            user_ids_from_query("userIds[0]=a&userIds[1]=b+c&userIds[2]=d/e"),
            want
        );
        assert_eq!(user_ids_from_query("userIds=a,b%20c,d%2Fe&x=1"), want);
        assert_eq!(
            user_ids_from_query("userIds=a%2Cb+c&userIds=a&other=z"),
            vec!["a", "b c"]
        );
        assert!(user_ids_from_query("").is_empty());
        assert!(user_ids_from_query("userIdsX=a&userIds[x]=b&=&&").is_empty());
    }

    #[test]
    fn percent_decode_never_panics_on_broken_escapes() {
        assert_eq!(percent_decode("%", false), "%");
        assert_eq!(percent_decode("%4", false), "%4");
        assert_eq!(percent_decode("%zz%41", false), "%zzA");
        assert_eq!(percent_decode("a+b", false), "a+b");
        assert_eq!(percent_decode("%F0%9F%98%80", false), "\u{1F600}");
        assert_eq!(percent_decode("%FF", false), "\u{FFFD}");
    }

    #[test]
    fn bearer_parses_scheme_case_insensitively() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer abc"));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);
    }
}
