//! What does one request cost through the whole tower stack, in-process, with no I/O?
//! The upstream is an in-memory service answering the spec's session response.

#[path = "support/alloc.rs"]
mod alloc;

mod support;

use support::shared;

use std::convert::Infallible;
use std::hint::black_box;

use amity_gateway::error::{Body, BoxError};
use amity_gateway::stack;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{Request, Response};
use http_body_util::Full;
use tower::ServiceExt;

const BODY: &[u8] = br#"{"userId":"user-123","deviceId":"device-abc-0001","deviceInfo":{"kind":"ios","model":"iPhone15,2","sdkVersion":"6.35.3"},"displayName":"Alice","authToken":"tok-xyz"}"#;
const RESPONSE: &[u8] = include_bytes!("../tests/data/session-response.json");

fn request(body: &'static [u8]) -> Request<Full<Bytes>> {
    Request::post("/api/v3/sessions")
        .header("content-type", "application/json")
        .header("x-api-key", "client-key")
        .body(Full::new(Bytes::from_static(body)))
        .expect("request")
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let upstream = tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, BoxError>(Response::new(Body::from(Bytes::from_static(RESPONSE))))
    });
    let svc = stack::build::<Full<Bytes>, _>(&shared(), upstream);
    let mut g = c.benchmark_group("stack");
    g.throughput(Throughput::Elements(1));
    g.bench_function("session_valid_oneshot", |b| {
        b.to_async(&rt).iter(|| {
            let svc = svc.clone();
            async move {
                let res: Result<Response<Body>, Infallible> = svc.oneshot(request(BODY)).await;
                black_box(res)
            }
        })
    });
    g.bench_function("session_invalid_oneshot", |b| {
        b.to_async(&rt).iter(|| {
            let svc = svc.clone();
            async move { black_box(svc.oneshot(request(br#"{"userId":""}"#)).await) }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
