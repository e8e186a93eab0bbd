//! The upstream client: pooled hyper-util clients (keep-alive, optional HTTP/2, https via
//! rustls) as a tower `Service`. Failures become [`GatewayError`]s with a bounded kind; the
//! time the exchange took goes into the response's [`Outcome`] for the access log and metrics.
//!
//! Two ways to answer, chosen by the request:
//!
//! * **buffered** (policy routes): the whole answer is read, bounded by
//!   `upstream.max_response_bytes`, inside the upstream time budget, so a slow body cannot hold
//!   a request past its deadline and the layers that read answers (session bookkeeping, the
//!   lookup cache) see complete bytes;
//! * **streamed** (pass routes, marked by [`Streaming`]): the head within `upstream.timeout_ms`
//!   of the request body's last byte, then the body passed on frame by frame, closed when idle.
//!
//! Upgrade requests (websockets) always go over HTTP/1.1, through a client of their own: an
//! upstream spoken to over HTTP/2 by prior knowledge cannot upgrade a connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::UPGRADE;
use http::{Request, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::Service;

use crate::config;
use crate::error::{Body, BoxError, GatewayError};
use crate::layers::pass::{head_within, Streaming};
use crate::layers::trace::Outcome;

type HttpsClient = Client<HttpsConnector<HttpConnector>, Body>;

/// Cheap to clone (one `Arc`): hyper-util clones the whole stack for every request.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    client: HttpsClient,
    /// HTTP/1.1 only, for upgrades.
    upgrades: HttpsClient,
    timeout: Duration,
    max_response_bytes: usize,
}

impl Upstream {
    pub fn new(cfg: &config::Upstream) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let tls = || {
            let builder = hyper_rustls::HttpsConnectorBuilder::new();
            match builder.with_provider_and_webpki_roots(rustls::crypto::ring::default_provider()) {
                Ok(b) => b,
                // The ring provider supports rustls' safe defaults; keep the crate's defaults if not.
                Err(_) => hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots(),
            }
            .https_or_http()
        };
        let h1 = tls().enable_http1().wrap_connector(http.clone());
        let connector = if cfg.http2 {
            tls().enable_all_versions().wrap_connector(http)
        } else {
            tls().enable_http1().wrap_connector(http)
        };
        let pooled = || {
            let mut b = Client::builder(TokioExecutor::new());
            // Without a timer the pool never expires idle connections.
            b.pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(cfg.pool_idle_timeout)
                .pool_max_idle_per_host(cfg.pool_max_idle_per_host);
            b
        };
        let client = pooled()
            .http2_only(cfg.http2 && cfg.base.scheme_str() == Some("http"))
            .build(connector);
        let upgrades = pooled().build(h1);
        Self {
            inner: Arc::new(Inner {
                client,
                upgrades,
                timeout: cfg.timeout,
                max_response_bytes: cfg.max_response_bytes,
            }),
        }
    }
}

fn classify(e: hyper_util::client::legacy::Error) -> GatewayError {
    if e.is_connect() {
        GatewayError::UpstreamConnect(e.into())
    } else {
        GatewayError::UpstreamProtocol(e.into())
    }
}

impl Service<Request<Body>> for Upstream {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // The legacy client is always ready; it queues on its pool.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let timeout = self.inner.timeout;
        let start = Instant::now();
        if let Some(streaming) = req.extensions().get::<Streaming>().cloned() {
            let client = if req.headers().contains_key(UPGRADE) {
                &self.inner.upgrades
            } else {
                &self.inner.client
            };
            let response = client.request(req);
            return Box::pin(async move {
                let head = async { response.await.map_err(classify) };
                let res = head_within(head, timeout, &streaming.activity).await?;
                let took = start.elapsed();
                let (parts, body) = res.into_parts();
                let mut res = Response::from_parts(parts, streaming.body(body));
                Outcome::of(&mut res).upstream = Some(took);
                Ok(res)
            });
        }
        let limit = self.inner.max_response_bytes;
        // The response future owns what it needs from the client: no client clone per request.
        let response = self.inner.client.request(req);
        Box::pin(async move {
            let exchange = async move {
                let res = response.await.map_err(classify)?;
                let (parts, body) = res.into_parts();
                let bytes = match Limited::new(body, limit).collect().await {
                    Ok(c) => c.to_bytes(),
                    Err(e) if e.is::<LengthLimitError>() => {
                        return Err(GatewayError::UpstreamTooLarge)
                    }
                    Err(e) => return Err(GatewayError::UpstreamProtocol(e)),
                };
                Ok(Response::from_parts(parts, Body::full(bytes)))
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(Ok(mut res)) => {
                    Outcome::of(&mut res).upstream = Some(start.elapsed());
                    Ok(res)
                }
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(GatewayError::UpstreamTimeout.into()),
            }
        })
    }
}
