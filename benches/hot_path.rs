//! What the gateway's own policy costs per session request, with no I/O: parse + validate the
//! body, the rate-limit decision, key injection and header hygiene, composed as in the stack
//! (validate → rate limit → key → forward) over an in-memory upstream that answers at once.
//! deviceId rotates over 100,000 values, as in the load runs, so the limiter's counters are
//! spread over its whole sketch. The target is 2 µs per request.
//!
//! `cargo bench --bench hot_path -- --warm-up-time 1 --measurement-time 3`

#[path = "support/alloc.rs"]
mod alloc;

use std::hint::black_box;
use std::sync::Arc;

use amity_gateway::config::{ClientKeyPolicy, KeySource};
use amity_gateway::error::{Body, BoxError};
use amity_gateway::layers::api_key::{ApiKey, ApiKeyLayer};
use amity_gateway::layers::forward::ForwardLayer;
use amity_gateway::layers::rate_limit::RateLimitLayer;
use amity_gateway::layers::validate::ValidateLayer;
use amity_gateway::ratelimit::{Key, RateLimitFile, RateLimiter};
use amity_gateway::routes::{Matched, Route, RouteLabel};
use amity_gateway::session::{self, ApiVersion, Rules};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use futures_util::FutureExt;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, Response};
use tower::{ServiceBuilder, ServiceExt};

const DEVICES: usize = 100_000;
const RESPONSE: &[u8] = include_bytes!("../tests/data/session-response.json");

/// The load runs' request body (shared/bench/request.json's shape) for one device.
fn body(device: usize) -> Bytes {
    Bytes::from(format!(
        r#"{{"userId":"user-123","deviceId":"device-abc-{device:06}","deviceInfo":{{"kind":"ios","model":"iPhone15,2","sdkVersion":"6.35.3"}},"displayName":"Alice","authToken":"tok-xyz"}}"#
    ))
}

fn limiter() -> Arc<RateLimiter> {
    // The production default policy, with a budget no bench device reaches.
    let file = RateLimitFile {
        requests: amity_gateway::ratelimit::MAX_REQUESTS,
        ..RateLimitFile::default()
    };
    Arc::new(RateLimiter::new(&file.resolve().unwrap().unwrap()).unwrap())
}

fn request(body: Bytes) -> Request<Bytes> {
    let mut req = Request::post("http://gw.local/api/v3/sessions")
        .header(CONTENT_TYPE, "application/json")
        .header("x-api-key", "client-sent-key")
        .header("connection", "keep-alive")
        .header("user-agent", "wrk")
        .body(body)
        .unwrap();
    req.extensions_mut().insert(Matched {
        label: RouteLabel::UNMATCHED,
        route: Route::Session(ApiVersion::V3),
        pass: None,
    });
    req
}

fn upstream(_req: Request<Body>) -> std::future::Ready<Result<Response<Body>, BoxError>> {
    let mut res = Response::new(Body::from(Bytes::from_static(RESPONSE)));
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(RESPONSE.len()));
    std::future::ready(Ok(res))
}

fn bench(c: &mut Criterion) {
    let bodies: Vec<Bytes> = (0..DEVICES).map(body).collect();
    let rules = Rules { secure: false };
    let mut g = c.benchmark_group("hot_path");
    g.throughput(Throughput::Elements(1));

    // The pieces as plain calls: parse + validate, then decide, then build the key header.
    let limits = limiter();
    let key = ApiKey::load(&KeySource::Value("bench-key".into())).unwrap();
    let mut i = 0;
    g.bench_function("calls_validate_decide_key", |b| {
        b.iter(|| {
            i = (i + 1) % DEVICES;
            let facts = session::validate(ApiVersion::V3, &bodies[i], &rules).unwrap();
            let decision = limits.decide_local(Key {
                device: &facts.device_id,
                ip: None,
            });
            black_box((decision, key.current()))
        })
    });

    // The same policy as layers, the way the session chain composes them.
    let svc = ServiceBuilder::new()
        .layer(ValidateLayer::new(rules))
        .layer(RateLimitLayer::new(limiter()))
        .layer(ApiKeyLayer::new(
            Arc::new(ApiKey::load(&KeySource::Value("bench-key".into())).unwrap()),
            ClientKeyPolicy::Strip,
            true,
        ))
        .layer(ForwardLayer::new(
            &"http://127.0.0.1:9".parse().unwrap(),
            false,
        ))
        .service(tower::service_fn(upstream));
    let mut i = 0;
    g.bench_function("layers_validate_limit_key_forward", |b| {
        b.iter_batched(
            || {
                i = (i + 1) % DEVICES;
                request(bodies[i].clone())
            },
            |req| {
                let res = svc.clone().oneshot(req).now_or_never();
                assert!(matches!(&res, Some(Ok(r)) if r.status().is_success()));
                black_box(res)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
