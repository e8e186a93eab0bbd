//! The one place where layers are composed. Outermost first:
//!
//! - **trace**: request id, span, access log, request metrics. Outside rescue (DESIGN puts
//!   rescue first) so that it sees the final status of every request, rescued errors included,
//!   and stamps `x-request-id` on error responses too.
//! - **rescue**: every `Err` and panic becomes an envelope response; hyper never sees an `Err`.
//!   It sees every infrastructure error, so it is where upstream errors are counted by kind.
//! - **load shed + concurrency limit**: above `max_concurrency` in flight, answer 503 at once
//!   rather than queue; sits above the timeout so shed requests cost nothing.
//! - **timeout**: the whole-request budget (body read + upstream), 504 in the envelope.
//! - **router**: the route table; unknown routes are a 404 here, before any body is read.
//!
//! Then one policy chain per kind of route:
//!
//! - session: body limit (415/413) → validate (400/422) → rate limit (429) → key injection →
//!   session observer → forward hygiene → upstream. Validation precedes everything that costs or
//!   counts, so nothing invalid reaches the limiter or the upstream; its rejections are counted
//!   per field. The limiter keys on the validated `deviceId` (one budget across v3, v4 and v5)
//!   and answers a refusal before any cache bookkeeping or key injection, so a refused request
//!   is never forwarded; it is absent when `rate_limit.enabled = false`. The observer needs the
//!   validated facts (deviceId retires older tokens) and reads the answer on its way back; it
//!   sits below key injection so the network it files the issued token under is named by the
//!   very key the request carries (the key is read once per request, even while it rotates).
//! - lookup and pass-through: body limit → key strip → lookup cache → forward hygiene →
//!   upstream. The cache answers only after the client-key policy has run, so a hit never
//!   skips a rejection, and it sits right above forwarding so a hit costs no header rewriting.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder};

use crate::cache::LookupCache;
use crate::config::Config;
use crate::error::{Body, BoxError};
use crate::layers::api_key::{ApiKey, ApiKeyLayer};
use crate::layers::body::BodyLayer;
use crate::layers::forward::ForwardLayer;
use crate::layers::lookup_cache::LookupCacheLayer;
use crate::layers::rate_limit::RateLimitLayer;
use crate::layers::rescue::RescueLayer;
use crate::layers::session_observer::SessionObserverLayer;
use crate::layers::trace::{Observer, TraceLayer};
use crate::layers::validate::ValidateLayer;
use crate::logging::AccessLog;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::routes::Router;
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
    U: Service<Request<Full<Bytes>>, Response = Response<Body>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    U::Future: Send + 'static,
{
    let cfg = &shared.config;
    let forward = ForwardLayer::new(&cfg.upstream.base, cfg.upstream.http2);

    let session = ServiceBuilder::new()
        .layer(BodyLayer::new(
            cfg.max_body_bytes,
            cfg.body_read_timeout,
            true,
        ))
        .layer(
            ValidateLayer::new(Rules { secure: cfg.secure }).on_reject(shared.metrics.on_reject()),
        )
        .option_layer(shared.rate_limit.clone().map(RateLimitLayer::new))
        .layer(ApiKeyLayer::new(
            shared.api_key.clone(),
            cfg.client_key,
            true,
        ))
        .layer(SessionObserverLayer::new(shared.cache.clone()))
        .layer(forward.clone())
        .service(upstream.clone());

    let lookup = ServiceBuilder::new()
        .layer(BodyLayer::new(
            cfg.max_body_bytes,
            cfg.body_read_timeout,
            false,
        ))
        .layer(ApiKeyLayer::new(
            shared.api_key.clone(),
            cfg.client_key,
            false,
        ))
        .layer(LookupCacheLayer::new(shared.cache.clone()))
        .layer(forward)
        .service(upstream);

    let router = Router::new(
        BoxCloneSyncService::new(session),
        BoxCloneSyncService::new(lookup),
    );

    ServiceBuilder::new()
        .layer(TraceLayer::new(shared.observer.clone()).access(AccessLog::new(&cfg.log)))
        .layer(RescueLayer::new().on_error(shared.metrics.on_error()))
        .load_shed()
        .concurrency_limit(cfg.max_concurrency)
        .timeout(cfg.request_timeout)
        .service(router)
}
