//! What a rate-limit decision costs with the local backend: the limiter alone, and one request
//! through the layer (in process, trivial inner service) next to the same request without it.
//!
//! `cargo bench --bench rate_limit -- --warm-up-time 1 --measurement-time 3`

#[path = "support/alloc.rs"]
mod alloc;

use std::hint::black_box;
use std::sync::Arc;

use amity_gateway::error::{Body, BoxError};
use amity_gateway::layers::rate_limit::RateLimitLayer;
use amity_gateway::ratelimit::{Key, RateLimitFile, RateLimiter};
use amity_gateway::session::SessionFacts;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use futures_util::FutureExt;
use http::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, DATE};
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};

/// Distinct devices the admitted cases cycle through: enough that their counters are spread
/// over the sketch as in production, not one hot cache line.
const DEVICES: usize = 100_000;

fn limiter(requests: u32) -> Arc<RateLimiter> {
    let file = RateLimitFile {
        requests,
        ..RateLimitFile::default()
    };
    let config = file.resolve().unwrap().unwrap();
    Arc::new(RateLimiter::new(&config).unwrap())
}

fn device_ids() -> Vec<String> {
    (0..DEVICES).map(|i| format!("device-{i:08}-ios")).collect()
}

fn decisions(c: &mut Criterion) {
    let ids = device_ids();
    let mut g = c.benchmark_group("decision");
    // A budget nobody reaches: every decision admits and counts. Cycling over 1,000 devices
    // keeps their counters in cache; over 100,000 they are spread across the whole sketch (and
    // beyond the CPU caches), as under heavy production traffic.
    let open = limiter(amity_gateway::ratelimit::MAX_REQUESTS);
    for devices in [1_000, DEVICES] {
        let mut i = 0;
        g.bench_function(format!("admitted_{devices}_devices"), |b| {
            b.iter(|| {
                i = (i + 1) % devices;
                black_box(open.decide_local(Key {
                    device: &ids[i],
                    ip: None,
                }))
            })
        });
    }
    // One device far over its 10 per minute: count, refuse, take the count back.
    let strict = limiter(10);
    for _ in 0..10 {
        strict.decide_local(Key {
            device: &ids[0],
            ip: None,
        });
    }
    g.bench_function("refused", |b| {
        b.iter(|| {
            black_box(strict.decide_local(Key {
                device: black_box(&ids[0]),
                ip: None,
            }))
        })
    });
    g.finish();
}

/// The inner service: answers at once with a response shaped like the upstream's (a few
/// headers already in the map), so the layer's cost is what it adds to such a response.
fn ok(_req: Request<Bytes>) -> std::future::Ready<Result<Response<Body>, BoxError>> {
    let mut res = Response::new(Body::from(Bytes::from_static(b"{}")));
    let h = res.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(CONTENT_LENGTH, HeaderValue::from_static("2"));
    h.insert(
        DATE,
        HeaderValue::from_static("Thu, 26 Nov 2026 08:00:00 GMT"),
    );
    std::future::ready(Ok(res))
}

fn session_request(device: &str) -> Request<Bytes> {
    let mut req = Request::new(Bytes::from_static(br#"{"userId":"u","deviceId":"d"}"#));
    req.extensions_mut().insert(SessionFacts {
        user_id: Some("u".into()),
        device_id: device.into(),
    });
    req
}

fn run<S>(svc: &S, req: Request<Bytes>) -> Response<Body>
where
    S: Service<Request<Bytes>, Response = Response<Body>, Error = BoxError> + Clone,
{
    match svc.clone().oneshot(req).now_or_never() {
        Some(Ok(res)) => res,
        _ => unreachable!("the local path never waits"),
    }
}

fn through_the_layer(c: &mut Criterion) {
    let ids = device_ids();
    let inner = tower::service_fn(ok);
    let mut g = c.benchmark_group("request");
    let mut i = 0;
    g.bench_function("without_layer", |b| {
        b.iter_batched(
            || {
                i = (i + 1) % DEVICES;
                session_request(&ids[i])
            },
            |req| black_box(run(&inner, req)),
            BatchSize::SmallInput,
        )
    });
    // 1,000 devices: the decision's counters stay in cache, so the difference to
    // `without_layer` is the layer's own work (the decision group shows the cold-cache cost).
    let admitting =
        RateLimitLayer::new(limiter(amity_gateway::ratelimit::MAX_REQUESTS)).layer(inner);
    g.bench_function("admitted", |b| {
        b.iter_batched(
            || {
                i = (i + 1) % 1_000;
                session_request(&ids[i])
            },
            |req| black_box(run(&admitting, req)),
            BatchSize::SmallInput,
        )
    });
    let strict = limiter(10);
    let refusing = RateLimitLayer::new(strict.clone()).layer(inner);
    for _ in 0..10 {
        run(&refusing, session_request(&ids[0]));
    }
    g.bench_function("refused_429", |b| {
        b.iter_batched(
            || session_request(&ids[0]),
            |req| black_box(run(&refusing, req)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, decisions, through_the_layer);
criterion_main!(benches);
