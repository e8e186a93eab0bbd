//! Request id, span and access log. Sits outside the rescue layer so it sees the final status
//! of every request, errors included, and stamps `x-request-id` on every response.
//!
//! The id is kept from the client's `x-request-id` when it is a short visible-ASCII token, and
//! minted otherwise; it is forwarded upstream and returned to the client. The access log has
//! method, route label, status, durations and decisions, never a header value, body or token.
//!
//! A request dropped before it had a response (its client went away: hyper drops the future)
//! is still logged and counted, with status 499 (the client closed the request, as nginx
//! writes it): a key-injected request the upstream may have acted on never goes unrecorded.
//!
//! The per-request span is at debug level: at info it would cost more than the rest of the
//! logging together (a span record, its fields formatted, entered on every poll). Warnings
//! about one request carry its id as a field instead (see the rescue layer).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::{HeaderName, HeaderValue};
use http::{Method, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::instrument::Instrumented;
use tracing::Instrument;

use crate::error::Body;
use crate::layers::arrival::Arrival;
use crate::logging::access::AccessLine;
use crate::logging::AccessLog;
use crate::routes::{Route, RouteLabel, RouteTable};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id: the `x-request-id` header the trace layer leaves on every request.
#[derive(Debug, Clone)]
pub struct RequestId(pub HeaderValue);

impl RequestId {
    /// The id the trace layer put on `req`.
    pub fn of<B>(req: &Request<B>) -> Option<Self> {
        req.headers().get(&X_REQUEST_ID).cloned().map(Self)
    }

    /// The id as a log field.
    pub fn as_str(&self) -> &str {
        id_field(&self.0)
    }
}

/// Facts later layers leave in the response's extensions for the access log and metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    /// Time spent waiting on the upstream, if it was called.
    pub upstream: Option<Duration>,
    /// `allowed`, `limited`, … when a rate limit decided.
    pub rate_limit: Option<&'static str>,
    /// `HIT`, `MISS`, `BYPASS` on lookup routes.
    pub cache: Option<&'static str>,
}

impl Outcome {
    /// The response's outcome, inserted if absent, so that each layer fills in its own field
    /// without erasing what another layer recorded.
    pub fn of<B>(res: &mut Response<B>) -> &mut Outcome {
        res.extensions_mut().get_or_insert_default::<Outcome>()
    }
}

/// What one finished request reports to observers (metrics).
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    pub route: RouteLabel,
    pub method: &'a Method,
    pub status: u16,
    pub secs: f64,
    pub outcome: Outcome,
}

/// Observes requests as they start and finish (the metrics layer hooks in here). Every
/// `started` is followed by exactly one `finished`, with status [`CLIENT_CLOSED`] when the
/// request was dropped before it had a response.
pub trait Observer: Send + Sync + 'static {
    fn started(&self) {}
    fn finished(&self, _f: &Finished<'_>) {}
}

/// The status logged and counted for a request whose client went away before its response.
pub const CLIENT_CLOSED: u16 = 499;

impl Observer for () {}

#[derive(Clone)]
pub struct TraceLayer {
    observer: Arc<dyn Observer>,
    access: AccessLog,
    routes: Arc<RouteTable>,
}

impl TraceLayer {
    /// Access lines as `tracing` events unless [`TraceLayer::access`] says otherwise. The
    /// table is matched here, once per request: the label names the request in the access
    /// line and metrics, and the match travels on to the router in the extensions.
    pub fn new(observer: Arc<dyn Observer>, routes: Arc<RouteTable>) -> Self {
        Self {
            observer,
            access: AccessLog::Event,
            routes,
        }
    }

    pub fn access(mut self, access: AccessLog) -> Self {
        self.access = access;
        self
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Trace {
            inner,
            observer: self.observer.clone(),
            access: self.access,
            routes: self.routes.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Trace<S> {
    inner: S,
    observer: Arc<dyn Observer>,
    access: AccessLog,
    routes: Arc<RouteTable>,
}

fn acceptable_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

/// A fresh 128-bit id in hex.
pub fn mint_id() -> HeaderValue {
    let n: u128 = rand::random();
    let mut buf = [0u8; 32];
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((n >> (124 - 4 * i)) & 0xf) as usize];
    }
    // 32 hex digits are always a valid header value.
    HeaderValue::from_bytes(&buf).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

pin_project! {
    pub struct TraceFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        start: Instant,
        id: HeaderValue,
        method: Method,
        route: RouteLabel,
        // Pass routes: the path for the access line (the query never).
        path: Option<http::uri::PathAndQuery>,
        observer: Arc<dyn Observer>,
        access: AccessLog,
        finished: bool,
    }

    impl<F> PinnedDrop for TraceFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if !*this.finished {
                let elapsed = this.start.elapsed();
                access_line(
                    *this.access,
                    &AccessLine {
                        request_id: id_field(this.id),
                        method: this.method.as_str(),
                        route: this.route.name(),
                        path: this.path.as_ref().map(|p| p.path()),
                        status: CLIENT_CLOSED,
                        duration: elapsed,
                        upstream: None,
                        rate_limit: "none",
                        cache: "none",
                    },
                );
                this.observer.finished(&Finished {
                    route: *this.route,
                    method: this.method,
                    status: CLIENT_CLOSED,
                    secs: elapsed.as_secs_f64(),
                    outcome: Outcome::default(),
                });
            }
        }
    }
}

/// The id as a log field: ids are visible ASCII (checked or minted), so this is never empty.
fn id_field(id: &HeaderValue) -> &str {
    id.to_str().unwrap_or("-")
}

/// Writes the access line as `access` says, if the filter lets `access` events through at info.
fn access_line(access: AccessLog, line: &AccessLine<'_>) {
    if access == AccessLog::Off || !tracing::enabled!(target: "access", tracing::Level::INFO) {
        return;
    }
    match access {
        AccessLog::Json => line.emit(),
        // Every field is always present (`none` when no decision was made) so that the lines
        // share one shape; `upstream_ms` only when the upstream answered.
        _ => tracing::info!(
            target: "access",
            parent: None,
            request_id = line.request_id,
            method = line.method,
            route = line.route,
            path = line.path,
            status = line.status,
            duration_ms = line.duration.as_secs_f64() * 1e3,
            upstream_ms = line.upstream.map(|d| d.as_secs_f64() * 1e3),
            rate_limit = line.rate_limit,
            cache = line.cache,
            "request"
        ),
    }
}

impl<F> Future for TraceFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut res) = futures_util::ready!(this.inner.poll(cx));
        let elapsed = this.start.elapsed();
        let secs = elapsed.as_secs_f64();
        let outcome = res
            .extensions()
            .get::<Outcome>()
            .copied()
            .unwrap_or_default();
        let status = res.status().as_u16();
        access_line(
            *this.access,
            &AccessLine {
                request_id: id_field(this.id),
                method: this.method.as_str(),
                route: this.route.name(),
                path: this.path.as_ref().map(|p| p.path()),
                status,
                duration: elapsed,
                upstream: outcome.upstream,
                rate_limit: outcome.rate_limit.unwrap_or("none"),
                cache: outcome.cache.unwrap_or("none"),
            },
        );
        *this.finished = true;
        this.observer.finished(&Finished {
            route: *this.route,
            method: this.method,
            status,
            secs,
            outcome,
        });
        res.headers_mut()
            .insert(X_REQUEST_ID.clone(), this.id.clone());
        Poll::Ready(Ok(res))
    }
}

impl<S, B> Service<Request<B>> for Trace<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = TraceFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let start = req
            .extensions()
            .get::<Arrival>()
            .map_or_else(Instant::now, |a| a.at);
        self.observer.started();
        let id = match req.headers().get(&X_REQUEST_ID) {
            Some(v) if acceptable_id(v) => v.clone(),
            _ => {
                let v = mint_id();
                req.headers_mut().insert(X_REQUEST_ID.clone(), v.clone());
                v
            }
        };
        let matched = self.routes.matches(req.method(), req.uri().path());
        let route = matched.map_or(RouteLabel::UNMATCHED, |m| m.label);
        let path = match matched {
            Some(m) if m.route == Route::Pass => req.uri().path_and_query().cloned(),
            _ => None,
        };
        if let Some(m) = matched {
            req.extensions_mut().insert(m);
        }
        let method = req.method().clone();
        let span =
            tracing::debug_span!("request", request_id = id_field(&id), route = route.name());
        let inner = span.in_scope(|| self.inner.call(req)).instrument(span);
        TraceFuture {
            inner,
            start,
            id,
            method,
            route,
            path,
            observer: self.observer.clone(),
            access: self.access,
            finished: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_ids_are_valid_and_distinct() {
        let a = mint_id();
        let b = mint_id();
        assert_eq!(a.len(), 32);
        assert!(acceptable_id(&a));
        assert_ne!(a, b);
    }

    #[test]
    fn odd_client_ids_are_replaced() {
        assert!(!acceptable_id(&HeaderValue::from_static("")));
        assert!(!acceptable_id(&HeaderValue::from_static("has space")));
        assert!(!acceptable_id(
            &HeaderValue::from_bytes(&[b'a'; 129]).unwrap()
        ));
        assert!(acceptable_id(&HeaderValue::from_static("abc-123")));
    }
}
