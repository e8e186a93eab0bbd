//! What do the metrics cost a request?
//!
//! - `observer/*`: one request's observations alone (`started` + `finished`): the no-op
//!   observer against the metrics, on the common path (a served route, a standard method, a
//!   common status), on the slowest slot search (unmatched route, extension method) and on a
//!   status without a pre-resolved child (looked up in the registry's map).
//! - `stack/*`: one valid session through the whole tower stack, in-process, with an in-memory
//!   upstream, with the metrics as observer and with the no-op observer.
//!
//! Futures are polled once with `now_or_never` inside the runtime's context: everything here
//! completes without waiting, so no executor overhead dilutes the difference.

#[path = "support/alloc.rs"]
mod alloc;

mod support;

use support::shared;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use amity_gateway::error::{Body, BoxError};
use amity_gateway::layers::trace::{Finished, Observer, Outcome};
use amity_gateway::metrics::Metrics;
use amity_gateway::routes::RouteLabel;
use amity_gateway::stack;
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use futures_util::FutureExt;
use http::{Method, Request, Response};
use http_body_util::Full;
use tower::ServiceExt;

const BODY: &[u8] = br#"{"userId":"user-123","deviceId":"device-abc-0001","deviceInfo":{"kind":"ios","model":"iPhone15,2","sdkVersion":"6.35.3"},"displayName":"Alice","authToken":"tok-xyz"}"#;
const ANSWER: &[u8] = br#"{"accessToken":"a","refreshToken":"r","users":[],"files":[]}"#;

fn observe(o: &dyn Observer, route: &'static str, method: &Method, status: u16) {
    o.started();
    o.finished(&Finished {
        route: RouteLabel::intern(route).unwrap_or(RouteLabel::UNMATCHED),
        method,
        status,
        secs: black_box(0.012),
        outcome: Outcome {
            upstream: Some(black_box(Duration::from_millis(10))),
            ..Outcome::default()
        },
    });
}

fn observer(c: &mut Criterion) {
    let metrics = Metrics::new().expect("metrics");
    let odd = Method::from_bytes(b"PROPFIND").expect("method");
    let mut g = c.benchmark_group("observer");
    g.bench_function("noop", |b| {
        b.iter(|| observe(black_box(&()), "session_v3", &Method::POST, 200))
    });
    g.bench_function("metrics_session_200", |b| {
        b.iter(|| observe(black_box(&metrics), "session_v3", &Method::POST, 200))
    });
    g.bench_function("metrics_unmatched_other_404", |b| {
        b.iter(|| observe(black_box(&metrics), "unmatched", &odd, 404))
    });
    g.bench_function("metrics_rare_status_418", |b| {
        b.iter(|| observe(black_box(&metrics), "session_v3", &Method::POST, 418))
    });
    g.finish();
}

fn request() -> Request<Full<Bytes>> {
    Request::post("/api/v3/sessions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(BODY)))
        .expect("request")
}

fn whole_stack(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _ctx = rt.enter();
    // Like the real upstream client: the answer carries the exchange's duration.
    let upstream = tower::service_fn(|_req: Request<Body>| async {
        let mut res = Response::new(Body::from(Bytes::from_static(ANSWER)));
        Outcome::of(&mut res).upstream = Some(Duration::from_millis(10));
        Ok::<_, BoxError>(res)
    });
    let with = shared();
    let mut without = shared();
    without.observer = Arc::new(());
    let mut g = c.benchmark_group("stack");
    for (name, shared) in [
        ("session_with_metrics", &with),
        ("session_noop_observer", &without),
    ] {
        let svc = stack::build::<Full<Bytes>, _>(shared, upstream);
        let res = svc.clone().oneshot(request()).now_or_never();
        let status = res.and_then(Result::ok).map(|r| r.status());
        assert_eq!(
            status,
            Some(http::StatusCode::OK),
            "{name}: completes at once"
        );
        g.bench_function(name, |b| {
            b.iter_batched(
                request,
                |req| black_box(svc.clone().oneshot(req).now_or_never()),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, observer, whole_stack);
criterion_main!(benches);
