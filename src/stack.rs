//! The one place where layers are composed. Outermost first:
//!
//! - **trace**: request id, route match (once per request), span, access log, request metrics.
//!   Outside rescue (DESIGN puts rescue first) so that it sees the final status of every
//!   request, rescued errors included, and stamps `x-request-id` on error responses too.
//! - **hold**: every answer goes out under the answer budget (503 past it, which trace sees)
//!   and the send watch of its connection (`layers::hold`).
//! - **rescue**: every `Err` and panic becomes an envelope response; hyper never sees an `Err`.
//!   It sees every infrastructure error, so it is where upstream errors are counted by kind.
//! - **framing**: HTTP framing rules and the gateway's URI/head limits (`layers::framing`),
//!   before any route or policy, so a refused request is counted and never forwarded.
//! - **CORS** (when configured): preflights answered here, for every route, before the router;
//!   allowed origins get their headers on every answer, the gateway's own errors included.
//! - **router**: the route table; unknown routes are a 404 here, before any body is read.
//!
//! Then one policy chain per kind of route:
//!
//! The slot for upstream work (`max_concurrency`, 503 beyond) is taken by the admission layer
//! right under each policy chain's body layer, once the body is whole, so a client that never
//! sends its body holds no slot (`layers::admission`). Pass routes take none: their bodies
//! stream and are never whole; they are bounded by the connection caps and idle timeouts.
//!
//! - session: deadline → origin guard (CORS on) → body limit (415/413) → admission → validate
//!   (400/422) → rate limit (429) → key injection → session observer → forward hygiene →
//!   upstream. The whole-request deadline is set on the policy chains, not above the router:
//!   pass routes stream for as long as bytes move. It is a time in the request's `Arrival`, not
//!   a timer: the upstream exchange ends at it (`layers::arrival`). The origin guard refuses a
//!   foreign website before anything is read or counted. Validation precedes everything that costs or counts, so
//!   nothing invalid reaches the limiter or the upstream; its rejections are counted per field.
//!   The limiter keys on the validated `deviceId` (one budget across v3, v4, v5 and visitor
//!   sessions) and answers a refusal before any cache bookkeeping or key injection, so a
//!   refused request is never forwarded; it is absent when `rate_limit.enabled = false`. The
//!   observer needs the validated facts (deviceId retires older tokens) and reads the answer on
//!   its way back; it sits below key injection so the network it files the issued token under
//!   is named by the very key the request carries (the key is read once per request, even
//!   while it rotates).
//! - lookup: deadline → body limit → admission → key strip → lookup cache → forward hygiene →
//!   upstream. The cache answers only after the client-key policy has run, so a hit never
//!   skips a rejection, and it sits right above forwarding so a hit costs no header rewriting.
//! - pass: key strip → pass (streams, upgrades, idle timeouts) → forward hygiene → upstream.
//!   There is no key injection in this chain at all: the key cannot leak through it.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder};

use crate::cache::LookupCache;
use crate::config::Config;
use crate::error::{Body, BoxError};
use crate::layers::admission::AdmissionLayer;
use crate::layers::api_key::{ApiKey, ApiKeyLayer};
use crate::layers::arrival::DeadlineLayer;
use crate::layers::body::BodyLayer;
use crate::layers::forward::ForwardLayer;
use crate::layers::framing::FramingLayer;
use crate::layers::hold::HoldLayer;
use crate::layers::lookup_cache::LookupCacheLayer;
use crate::layers::pass::{PassLayer, StreamStats};
use crate::layers::rate_limit::RateLimitLayer;
use crate::layers::rescue::RescueLayer;
use crate::layers::session_observer::SessionObserverLayer;
use crate::layers::trace::{Observer, TraceLayer};
use crate::layers::validate::ValidateLayer;
use crate::logging::AccessLog;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::routes::{Chains, Router};
use crate::session::Rules;

/// Everything the stack shares across requests, built once.
#[derive(Clone)]
pub struct Shared {
    pub config: Arc<Config>,
    pub api_key: Arc<ApiKey>,
    pub metrics: Arc<Metrics>,
    /// Sees every request start and finish; the metrics, unless a bench swaps it out.
    pub observer: Arc<dyn Observer>,
    pub cache: Arc<LookupCache>,
    /// `None` when rate limiting is disabled.
    pub rate_limit: Option<Arc<RateLimiter>>,
    /// The pass routes' streams and tunnels.
    pub streams: Arc<StreamStats>,
}

impl Shared {
    pub fn new(config: Config) -> Result<Self, String> {
        let api_key = Arc::new(ApiKey::load(&config.api_key)?);
        let metrics = Arc::new(Metrics::new().map_err(|e| format!("metrics: {e}"))?);
        let rate_limit = match &config.rate_limit {
            Some(rl) => Some(Arc::new(RateLimiter::new(rl)?)),
            None => None,
        };
        Ok(Self {
            cache: LookupCache::start(&config.cache),
            config: Arc::new(config),
            api_key,
            observer: metrics.clone(),
            metrics,
            rate_limit,
            streams: Arc::new(StreamStats::default()),
        })
    }
}

/// Builds the client-facing service over any upstream service (the real client, or an
/// in-memory one in benches). The result never fails.
pub fn build<B, U>(
    shared: &Shared,
    upstream: U,
) -> impl Service<Request<B>, Response = Response<Body>, Error = Infallible, Future: Send>
       + Clone
       + Send
       + 'static
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    U: Service<Request<Body>, Response = Response<Body>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    U::Future: Send + 'static,
{
    let cfg = &shared.config;
    let forward = ForwardLayer::new(&cfg.upstream.base, cfg.upstream.http2);
    let strip_key = ApiKeyLayer::new(shared.api_key.clone(), cfg.client_key, false);

    let deadline = DeadlineLayer::new(cfg.request_timeout);
    let admission = AdmissionLayer::new(cfg.max_concurrency, shared.metrics.refusals());
    let session = ServiceBuilder::new()
        .layer(deadline)
        .option_layer(cfg.cors.as_ref().map(|c| c.guard()))
        .layer(
            BodyLayer::new(cfg.max_body_bytes, cfg.body_read_timeout, true)
                .min_rate(cfg.min_body_rate, cfg.body_rate_grace),
        )
        .layer(admission.clone())
        .layer(
            ValidateLayer::new(Rules { secure: cfg.secure }).on_reject(shared.metrics.on_reject()),
        )
        .option_layer(shared.rate_limit.clone().map(RateLimitLayer::new))
        .layer(
            ApiKeyLayer::new(shared.api_key.clone(), cfg.client_key, true)
                .trusting_hops(cfg.rate_limit.as_ref().map_or(0, |r| r.trusted_hops)),
        )
        .layer(SessionObserverLayer::new(
            shared.cache.clone(),
            cfg.upstream.timeout,
        ))
        .layer(forward.clone())
        .service(upstream.clone());

    let lookup = ServiceBuilder::new()
        .layer(deadline)
        .layer(
            BodyLayer::new(cfg.max_body_bytes, cfg.body_read_timeout, false)
                .min_rate(cfg.min_body_rate, cfg.body_rate_grace),
        )
        .layer(admission)
        .layer(strip_key.clone())
        .layer(LookupCacheLayer::new(
            shared.cache.clone(),
            cfg.upstream.timeout,
        ))
        .layer(forward.clone())
        .service(upstream.clone());

    let pass = ServiceBuilder::new()
        .layer(strip_key)
        .layer(PassLayer::new(shared.streams.clone()).access(AccessLog::new(&cfg.log)))
        .layer(forward)
        .service(upstream);

    let table = Arc::new(cfg.routes.clone());
    let router = Router::new(
        cfg.routes.clone(),
        Chains {
            session: BoxCloneSyncService::new(session),
            lookup: BoxCloneSyncService::new(lookup),
            pass: BoxCloneSyncService::new(pass),
        },
    );

    ServiceBuilder::new()
        .layer(TraceLayer::new(shared.observer.clone(), table).access(AccessLog::new(&cfg.log)))
        .layer(HoldLayer::new(cfg.answer_budget, shared.metrics.refusals()))
        .layer(RescueLayer::new().on_error(shared.metrics.on_error()))
        .layer(FramingLayer::new(cfg.max_uri_bytes, cfg.max_header_bytes))
        .option_layer(cfg.cors.as_ref().map(|c| c.layer()))
        .service(router)
}
