//! Request routing and response building of the simulator.
//!
//! Every function here returns a finished response: there is no error path, so the service
//! handed to hyper never fails and no request can make the simulator panic.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Method, Response, StatusCode};
use serde_json::{json, Value};
use sha2::Digest as _;

use super::world::{file_json, iso, ApiVersion, FileLookup, SessionInput, World};
use crate::wire::{bearer, percent_decode, user_ids_from_query};

/// Response body type of the simulator.
pub(crate) type SimBody = crate::body::Body;

/// Largest accepted request body; bigger bodies answer 413.
pub(crate) const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Upstream limit on `userIds` per list call.
const MAX_LIST_IDS: usize = 100;

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<SimBody> {
    let mut resp = Response::new(SimBody::from(body.to_string()));
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

/// Whether a call is served streamed (see [`super::stream`]) rather than by [`handle_api`]:
/// the websocket, and every `/api/` call the world does not model.
pub(crate) fn is_streamed(method: &Method, path: &str) -> bool {
    if path.starts_with("/socket.io/") {
        return true;
    }
    if !path.starts_with("/api/") {
        return false;
    }
    let modelled = match *method {
        Method::POST => matches!(
            path,
            "/api/v3/sessions"
                | "/api/v4/sessions"
                | "/api/v5/sessions"
                | "/api/v5/sessions/visitor"
        ),
        Method::GET => {
            path == "/api/v3/sessions"
                || path == "/api/v3/users/list"
                || path == "/api/v3/network-settings/chat"
                || single_segment(path, "/api/v3/users/").is_some()
                || single_segment(path, "/api/v3/files/").is_some()
        }
        Method::DELETE => path == "/api/v4/sessions",
        _ => false,
    };
    !modelled
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
    if req.method == Method::POST && req.path == "/api/v5/sessions/visitor" {
        return create_visitor_session(world, api_key, req);
    }
    if req.method == Method::GET && req.path == "/api/v3/network-settings/chat" {
        return with_token(world, req.headers, |_| {
            json_response(
                StatusCode::OK,
                &json!({"chatSettings": {"isEnabled": true, "mentionAllowed": true,
                    "messageEditable": true, "messageDeletable": true}}),
            )
        });
    }
    match (req.method, session_version) {
        (&Method::POST, Some(version)) => return create_session(world, api_key, version, req),
        (&Method::GET, Some(ApiVersion::V3)) => return verify_session(world, req.headers),
        (&Method::DELETE, Some(ApiVersion::V4)) => {
            return revoke_session(world, req.headers, req.query)
        }
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
        let token = bearer(req.headers).unwrap_or_default();
        return with_token(world, req.headers, |w| {
            get_file(w, &percent_decode(raw, false), token)
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

/// `POST /api/v5/sessions/visitor`: a session for a device without a user of its own; the
/// user is made up from the deviceId, as the upstream does for visitors.
fn create_visitor_session(
    world: &mut World,
    api_key: &str,
    req: &ApiRequest<'_>,
) -> Response<SimBody> {
    if !has_api_key(req.headers, api_key) {
        return unauthorized();
    }
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(req.body) else {
        return bad_request();
    };
    let Some(device_id) = obj
        .get("deviceId")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    else {
        return validation_error(vec!["deviceId is required".to_owned()]);
    };
    let user_id = format!(
        "visitor-{}",
        super::world::hex(&sha2::Sha256::digest(device_id.as_bytes())[..8])
    );
    let input = SessionInput {
        user_id: &user_id,
        device_id,
        display_name: None,
        profile_handle: None,
    };
    let mut body = world.create_session(ApiVersion::V5, &input);
    if let Some(o) = body.as_object_mut() {
        o.insert("userType".into(), Value::String("visitor".into()));
    }
    json_response(StatusCode::OK, &body)
}

fn verify_session(world: &World, headers: &HeaderMap) -> Response<SimBody> {
    with_token(world, headers, |w| {
        json_response(
            StatusCode::OK,
            &json!({"lastCachePurge": iso(w.last_purge())}),
        )
    })
}

pub(crate) fn forbidden() -> Response<SimBody> {
    envelope(StatusCode::FORBIDDEN, 400300, "Forbidden error.", json!({}))
}

/// `DELETE /api/v4/sessions`: revokes the caller's token, or with `?userId=U` (admins only)
/// every token of U.
fn revoke_session(
    world: &mut World,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Response<SimBody> {
    let target = query.and_then(|q| {
        q.split('&')
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| percent_decode(k, true) == "userId")
            .map(|(_, v)| percent_decode(v, true))
    });
    if let Some(user) = target {
        return match bearer(headers) {
            Some(t) if world.is_admin(t) => {
                world.revoke_user(&user);
                json_response(StatusCode::OK, &json!({"success": true}))
            }
            Some(t) if world.token_valid(t) => forbidden(),
            _ => unauthorized(),
        };
    }
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
    let Ok(ids) = user_ids_from_query(query.unwrap_or(""), MAX_LIST_IDS) else {
        return validation_error(vec![format!(
            "userIds must have at most {MAX_LIST_IDS} items"
        )]);
    };
    if ids.is_empty() {
        return validation_error(vec!["userIds is required".to_owned()]);
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

fn get_file(world: &World, file_id: &str, token: &str) -> Response<SimBody> {
    match world.file_for(file_id, token) {
        // The bare File object, as the TS SDK reads it.
        FileLookup::Found(file) => json_response(StatusCode::OK, &file),
        FileLookup::Forbidden => forbidden(),
        FileLookup::Missing => envelope(
            StatusCode::NOT_FOUND,
            400400,
            &format!("File not found {file_id}."),
            json!({}),
        ),
    }
}
