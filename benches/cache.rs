//! What does a lookup cache HIT cost through the whole stack, in-process?
//!
//! The full client-facing stack (`stack::build`: trace, rescue, load shed, timeout, router,
//! body limit, key strip, lookup cache, forwarding) over an in-memory upstream that answers like
//! the simulator. A session is registered first so the bearer token is known; one lookup fills
//! the entry; the measured request is then a hit. For comparison, the same lookup with
//! `type=internal` (never cached) goes through the stack to the in-memory upstream, and the
//! cache's own decision is measured alone.
//!
//! Run: `cargo bench --bench cache -- --warm-up-time 1 --measurement-time 3`

#[path = "support/alloc.rs"]
mod alloc;

mod support;

use std::convert::Infallible;
use std::hint::black_box;

use amity_gateway::cache::key::Kind;
use amity_gateway::cache::stats::CacheResult;
use amity_gateway::cache::Decision;
use amity_gateway::error::{Body, BoxError};
use amity_gateway::routes::Route;
use amity_gateway::stack;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Method, Request, Response};
use http_body_util::Full;
use serde_json::json;
use tower::ServiceExt;

const TOKEN: &str =
    "eyJhbGciOiJIUzI1NiJ9.eyJqdGkiOiJiZW5jaCJ9.c2lnbmF0dXJlLW9mLXRoZS1iZW5jaC10b2tlbg";

fn user_json(id: &str) -> serde_json::Value {
    json!({
        "_id": "65a1b2c3d4e5f6a7b8c9d0e1", "path": "network/n/user/65a1b2c3d4e5f6a7b8c9d0e1",
        "userId": id, "userInternalId": "65a1b2c3d4e5f6a7b8c9d0e1", "userPublicId": id,
        "roles": [], "permissions": ["MUTE_CHANNEL"], "displayName": "Alice",
        "profileHandle": id, "description": "", "avatarFileId": "avatar-0123456789abcdef01234567",
        "avatarCustomUrl": "", "flagCount": 0, "hashFlag": {"bits": 0, "hashes": 0, "hash": []},
        "metadata": {}, "isGlobalBan": false, "isBrand": false,
        "createdAt": "2024-01-01T00:00:00.000Z", "updatedAt": "2024-01-01T00:00:00.000Z",
        "isDeleted": false,
    })
}

fn file_json() -> serde_json::Value {
    json!({
        "fileId": "avatar-0123456789abcdef01234567",
        "fileUrl": "https://sim.invalid/api/v3/files/avatar-0123456789abcdef01234567/download",
        "type": "image", "accessType": "public", "altText": "",
        "createdAt": "2024-01-01T00:00:00.000Z", "updatedAt": "2024-01-01T00:00:00.000Z",
        "isDeleted": false,
        "attributes": {"name": "avatar.jpg", "extension": "jpg", "size": 12345,
            "mimeType": "image/jpeg",
            "metadata": {"exif": {}, "gps": {}, "height": 256, "width": 256, "isFull": true}},
    })
}

/// Canned answers shaped like the simulator's.
async fn upstream(req: Request<Body>) -> Result<Response<Body>, BoxError> {
    let body = if req.method() == Method::POST {
        json!({
            "accessToken": TOKEN, "refreshToken": "r", "issuedAt": "2024-01-01T00:00:00.000Z",
            "expiresAt": "2999-01-01T00:00:00.000Z", "users": [user_json("alice")],
            "roles": [], "files": [file_json()], "lastCachePurge": "2024-01-01T00:00:00.000Z",
        })
    } else {
        json!({"users": [user_json("alice")], "files": [file_json()]})
    };
    let mut res = Response::new(Body::from(body.to_string()));
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    Ok(res)
}

fn lookup(path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(path)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn x_cache<B>(res: &Response<B>) -> &str {
    res.headers()["x-cache"].to_str().unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let shared = support::shared();
    let svc = stack::build(&shared, tower::service_fn(upstream));

    rt.block_on(async {
        let session = Request::builder()
            .method(Method::POST)
            .uri("/api/v3/sessions")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(
                br#"{"userId":"alice","deviceId":"bench-device"}"#,
            )))
            .unwrap();
        let res = svc.clone().oneshot(session).await.unwrap();
        assert_eq!(res.status(), 200);
        for (path, want) in [
            ("/api/v3/users/alice", "MISS"),
            ("/api/v3/users/alice", "HIT"),
            ("/api/v3/users/alice?type=internal", "BYPASS"),
        ] {
            let res = svc.clone().oneshot(lookup(path)).await.unwrap();
            assert_eq!(x_cache(&res), want, "{path}");
        }
    });

    let mut g = c.benchmark_group("lookup_through_stack");
    for (name, path) in [
        ("hit", "/api/v3/users/alice"),
        (
            "bypass_to_in_memory_upstream",
            "/api/v3/users/alice?type=internal",
        ),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let res: Result<_, Infallible> =
                    rt.block_on(svc.clone().oneshot(lookup(black_box(path))));
                black_box(res)
            })
        });
    }
    // The cache's own share of a hit: token hash and check, key, store read, response.
    let (parts, _) = lookup("/api/v3/users/alice").into_parts();
    g.bench_function("hit_decision_alone", |b| {
        b.iter(|| {
            let d = shared.cache.decide(
                Route::User,
                black_box(&parts.uri),
                black_box(&parts.headers),
                false,
            );
            assert!(matches!(d, Decision::Hit(_)));
            black_box(d)
        })
    });
    g.finish();
    // The figures mean something only if every measured lookup was what it says: the one
    // miss is the priming lookup, every other cacheable lookup was a hit.
    let stats = shared.cache.stats();
    assert_eq!(stats.requests(Kind::User, CacheResult::Miss), 1);
    assert!(stats.requests(Kind::User, CacheResult::Hit) > 1);
}

criterion_group!(benches, bench);
criterion_main!(benches);
