//! The cache's decisions in-process: races with purges and sessions, TTL, odd dates.

use std::time::Duration;

use super::*;
use crate::cache::settings::CacheFile;
use serde_json::json;

const KEY: &str = "network-key";

fn cache() -> LookupCache {
    LookupCache::new(&CacheFile::default().resolve().unwrap())
}

fn answer(body: &str) -> Response<Body> {
    let mut res = Response::new(crate::error::Body::from(body.to_owned()));
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

fn bearer_headers(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

/// A session answer for `user` on `device` issuing `token`, reporting `purge`.
fn log_in(c: &LookupCache, user: &str, device: &str, token: &str, purge: &str) {
    let key = HeaderValue::from_static(KEY);
    let p = c.session(&key, Some(user), device).unwrap();
    let body = json!({
        "accessToken": token, "issuedAt": now_text(), "expiresAt": "2999-01-01T00:00:00.000Z",
        "users": [{"userId": user}], "lastCachePurge": purge,
    });
    c.finish_session(p, &answer(&body.to_string()));
}

/// Now as the upstream writes dates (to the nanosecond, so successive calls are ordered).
fn now_text() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn decide(c: &LookupCache, path: &str, token: &str) -> Decision {
    decide_on(c, Route::User, path, token)
}

fn decide_on(c: &LookupCache, route: Route, path: &str, token: &str) -> Decision {
    c.decide(route, &path.parse().unwrap(), &bearer_headers(token), false)
}

fn user_answer(user: &str) -> String {
    users_answer(&[user])
}

fn users_answer(users: &[&str]) -> String {
    let users: Vec<_> = users
        .iter()
        .map(|u| json!({"userId": u, "displayName": "x"}))
        .collect();
    json!({"users": users, "files": []}).to_string()
}

/// Forwards `path` and feeds the simulated upstream answer back; returns `x-cache`.
fn miss_and_fill(c: &LookupCache, path: &str, token: &str, user: &str) -> String {
    let Decision::Forward(p) = decide(c, path, token) else {
        panic!("expected a forward");
    };
    let mut res = answer(&user_answer(user));
    c.finish(p, &mut res);
    res.headers()[&X_CACHE].to_str().unwrap().to_owned()
}

fn is_hit(d: &Decision) -> bool {
    matches!(d, Decision::Hit(_))
}

const EPOCH: &str = "2000-01-01T00:00:00.000Z";

#[test]
fn miss_fills_and_the_hit_carries_body_type_age_and_outcome() {
    let c = cache();
    log_in(&c, "u", "d", "t", EPOCH);
    assert_eq!(miss_and_fill(&c, "/api/v3/users/u", "t", "u"), "MISS");
    let Decision::Hit(res) = decide(&c, "/api/v3/users/u", "t") else {
        panic!("expected a hit");
    };
    assert_eq!(res.headers()[&X_CACHE], "HIT");
    assert_eq!(res.headers()[AGE], "0");
    assert_eq!(res.headers()[CONTENT_TYPE], "application/json");
    assert_eq!(body_bytes(res.body()).unwrap(), user_answer("u").as_bytes());
    assert_eq!(
        res.extensions().get::<Outcome>().unwrap().cache,
        Some("HIT")
    );
}

#[test]
fn the_miss_outcome_keeps_what_other_layers_noted() {
    let c = cache();
    let Decision::Forward(p) = decide(&c, "/api/v3/users/u", "t") else {
        panic!("expected a forward");
    };
    let mut res = answer("{}");
    res.extensions_mut().insert(Outcome {
        upstream: Some(Duration::from_millis(500)),
        ..Outcome::default()
    });
    c.finish(p, &mut res);
    let o = res.extensions().get::<Outcome>().unwrap();
    assert_eq!(
        (o.cache, o.upstream),
        (Some("MISS"), Some(Duration::from_millis(500)))
    );
}

#[test]
fn an_answer_whose_fetch_raced_a_purge_is_never_stored() {
    let c = cache();
    log_in(&c, "u", "d", "t", EPOCH);
    let Decision::Forward(p) = decide(&c, "/api/v3/users/u", "t") else {
        panic!("expected a forward");
    };
    // A purge is reported while the lookup is in flight.
    let later = time::OffsetDateTime::now_utc() + time::Duration::seconds(1);
    let later = later
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    log_in(&c, "v", "d2", "t2", &later);
    c.finish(p, &mut answer(&user_answer("u")));
    assert!(!is_hit(&decide(&c, "/api/v3/users/u", "t")));
    assert_eq!(c.stats().purges, 1);
}

#[test]
fn an_answer_whose_fetch_raced_a_session_of_its_user_is_never_stored() {
    let c = cache();
    log_in(&c, "reader", "d", "t", EPOCH);
    let list = "/api/v3/users/list?userIds=a&userIds=u";
    let Decision::Forward(p) = decide_on(&c, Route::UserList, list, "t") else {
        panic!("expected a forward");
    };
    log_in(&c, "u", "d-u", "tu", EPOCH);
    c.finish(p, &mut answer(&users_answer(&["a", "u"])));
    assert!(!is_hit(&decide_on(&c, Route::UserList, list, "t")));
}

#[test]
fn answers_older_than_the_ttl_are_gone() {
    let c = cache();
    let now = now_us();
    let entry = |fetched_us| Entry {
        content_type: None,
        body: Bytes::new(),
        fetched_us,
        users: Box::new([]),
    };
    assert!(c.fresh(&entry(now - c.ttl_us + 1), now));
    assert!(!c.fresh(&entry(now - c.ttl_us), now));
}

#[test]
fn odd_dates_are_counted_and_never_crash() {
    let c = cache();
    let key = HeaderValue::from_static(KEY);
    let p = c.session(&key, Some("u"), "d").unwrap();
    let body = json!({"accessToken": "t", "issuedAt": now_text(), "expiresAt": "soon",
        "lastCachePurge": "yesterday"});
    c.finish_session(p, &answer(&body.to_string()));
    assert_eq!(c.stats().unparseable_dates, 2);
    assert_eq!(c.stats().purges, 0);
    // The token was still issued through the gateway: trusted, for the short time.
    assert!(c.tokens.valid(&TokenHash::of("t"), now_us()).is_some());
    let p = c.session(&key, Some("u"), "d").unwrap();
    c.finish_session(p, &answer(r#"{"lastCachePurge": 1700000000}"#));
    assert_eq!(c.stats().unparseable_dates, 3);
    let p = c.session(&key, Some("u"), "d").unwrap();
    c.finish_session(p, &answer("not json"));
    assert_eq!(c.stats().unparseable_dates, 3);
}

#[test]
fn failed_sessions_teach_nothing() {
    let c = cache();
    let key = HeaderValue::from_static(KEY);
    let p = c.session(&key, Some("u"), "d").unwrap();
    let mut res = answer(r#"{"accessToken":"t","lastCachePurge":"2999-01-01T00:00:00Z"}"#);
    *res.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
    c.finish_session(p, &res);
    assert!(c.tokens.valid(&TokenHash::of("t"), now_us()).is_none());
    assert_eq!(c.watermark.get(), i64::MIN);
}

#[test]
fn oversized_answers_are_served_but_not_kept() {
    let f = CacheFile {
        max_entry_bytes: 16,
        ..CacheFile::default()
    };
    let c = LookupCache::new(&f.resolve().unwrap());
    log_in(&c, "u", "d", "t", EPOCH);
    miss_and_fill(&c, "/api/v3/users/u", "t", "u");
    assert!(!is_hit(&decide(&c, "/api/v3/users/u", "t")));
}

#[test]
fn compressed_answers_are_not_kept() {
    let c = cache();
    log_in(&c, "u", "d", "t", EPOCH);
    let Decision::Forward(p) = decide(&c, "/api/v3/users/u", "t") else {
        panic!("expected a forward");
    };
    let mut res = answer("\u{1f}\u{8b}compressed");
    res.headers_mut().insert(
        http::header::CONTENT_ENCODING,
        HeaderValue::from_static("gzip"),
    );
    c.finish(p, &mut res);
    assert!(!is_hit(&decide(&c, "/api/v3/users/u", "t")));
}

#[test]
fn answers_varying_on_other_headers_are_not_stored() {
    let c = cache();
    log_in(&c, "u", "d", "t", EPOCH);
    let Decision::Forward(p) = decide(&c, "/api/v3/users/u", "t") else {
        panic!("expected a forward");
    };
    let mut res = answer(&user_answer("u"));
    res.headers_mut().insert(
        http::header::VARY,
        HeaderValue::from_static("accept-language"),
    );
    c.finish(p, &mut res);
    assert!(!is_hit(&decide(&c, "/api/v3/users/u", "t")));
}

/// Feeds `body` (with `headers`) back as the answer to `path` looked up by `token` on `route`.
fn fill_with(
    c: &LookupCache,
    route: Route,
    path: &str,
    token: &str,
    body: &str,
    headers: &[(&'static str, &'static str)],
) {
    let Decision::Forward(p) = decide_on(c, route, path, token) else {
        panic!("expected a forward");
    };
    let mut res = answer(body);
    for (k, v) in headers {
        res.headers_mut().insert(*k, HeaderValue::from_static(v));
    }
    c.finish(p, &mut res);
}

#[test]
fn an_answer_is_kept_only_when_it_is_about_the_ids_asked_for() {
    let c = cache();
    log_in(&c, "u", "d", "t", EPOCH);
    let list = "/api/v3/users/list?userIds=a&userIds=b";
    for wrong in [
        users_answer(&["a"]),
        users_answer(&["a", "b", "c"]),
        users_answer(&["a", "x"]),
    ] {
        fill_with(&c, Route::UserList, list, "t", &wrong, &[]);
        assert!(
            !is_hit(&decide_on(&c, Route::UserList, list, "t")),
            "{wrong}"
        );
    }
    fill_with(
        &c,
        Route::User,
        "/api/v3/users/a",
        "t",
        &user_answer("b"),
        &[],
    );
    assert!(!is_hit(&decide(&c, "/api/v3/users/a", "t")));
    let file = "/api/v3/files/f";
    fill_with(
        &c,
        Route::File,
        file,
        "t",
        r#"{"fileId":"g","accessType":"public"}"#,
        &[],
    );
    assert!(!is_hit(&decide_on(&c, Route::File, file, "t")));
    // The right answers are kept.
    fill_with(
        &c,
        Route::UserList,
        list,
        "t",
        &users_answer(&["b", "a"]),
        &[],
    );
    assert!(is_hit(&decide_on(&c, Route::UserList, list, "t")));
    fill_with(
        &c,
        Route::File,
        file,
        "t",
        r#"{"fileId":"f","accessType":"public"}"#,
        &[],
    );
    assert!(is_hit(&decide_on(&c, Route::File, file, "t")));
}

#[test]
fn private_and_non_public_answers_stay_with_the_token_that_fetched_them() {
    let c = cache();
    log_in(&c, "u", "d", "t", EPOCH);
    log_in(&c, "v", "d2", "t2", EPOCH);
    fill_with(
        &c,
        Route::User,
        "/api/v3/users/u",
        "t",
        &user_answer("u"),
        &[("cache-control", "private, max-age=60")],
    );
    assert!(is_hit(&decide(&c, "/api/v3/users/u", "t")));
    assert!(!is_hit(&decide(&c, "/api/v3/users/u", "t2")));
    let file = "/api/v3/files/f";
    fill_with(
        &c,
        Route::File,
        file,
        "t",
        r#"{"fileId":"f","accessType":"network"}"#,
        &[],
    );
    assert!(is_hit(&decide_on(&c, Route::File, file, "t")));
    assert!(!is_hit(&decide_on(&c, Route::File, file, "t2")));
    // Never kept at all.
    fill_with(
        &c,
        Route::User,
        "/api/v3/users/v",
        "t",
        &user_answer("v"),
        &[("cache-control", "no-store")],
    );
    assert!(!is_hit(&decide(&c, "/api/v3/users/v", "t")));
}

#[test]
fn a_lookup_with_a_body_never_fills_the_cache() {
    let c = cache();
    log_in(&c, "u", "d", "t", EPOCH);
    let d = c.decide(
        Route::User,
        &"/api/v3/users/u".parse().unwrap(),
        &bearer_headers("t"),
        true,
    );
    let Decision::Forward(p) = d else {
        panic!("expected a forward");
    };
    assert!(!p.fills());
    c.finish(p, &mut answer(&user_answer("u")));
    assert!(!is_hit(&decide(&c, "/api/v3/users/u", "t")));
}

#[test]
fn the_same_future_purge_date_reported_again_keeps_the_cache() {
    let c = cache();
    let future = "2999-01-01T00:00:00.000Z";
    log_in(&c, "u", "d", "t", future);
    // Past the watermark (now, plus the 1 ms margin) that date set.
    std::thread::sleep(Duration::from_millis(5));
    miss_and_fill(&c, "/api/v3/users/x", "t", "x");
    assert!(is_hit(&decide(&c, "/api/v3/users/x", "t")));
    log_in(&c, "v", "d2", "t2", future);
    assert!(
        is_hit(&decide(&c, "/api/v3/users/x", "t")),
        "not a new purge"
    );
}

#[test]
fn the_remembered_network_follows_a_rotated_key() {
    let (a, b) = (
        HeaderValue::from_static("key-a"),
        HeaderValue::from_static("key-b"),
    );
    for key in [&a, &a, &b, &b, &a] {
        assert_eq!(network_of(key), Partition::of_network(key.as_bytes()));
    }
    assert_ne!(network_of(&a), network_of(&b));
}
