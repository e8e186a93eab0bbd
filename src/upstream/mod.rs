//! The upstream client: the gateway's own connection pool ([`pool`]: keep-alive over
//! `hyper::client::conn`, optional HTTP/2, https via rustls) as a tower `Service`. Failures become [`GatewayError`]s with a bounded kind; the
//! time the exchange took goes into the response's [`Outcome`] for the access log and metrics.
//!
//! Two ways to answer, chosen by the request:
//!
//! * **buffered** (policy routes): the whole answer is read, bounded by
//!   `upstream.max_response_bytes`, inside the upstream time budget or the whole request's
//!   deadline (its `Arrival`), whichever ends first, so a slow body cannot hold a request past
//!   its deadline and the layers that read answers (session bookkeeping, the
//!   lookup cache) see complete bytes;
//! * **streamed** (pass routes, marked by [`Streaming`]): the head within `upstream.timeout_ms`
//!   of the request body's last byte, then the body passed on frame by frame, closed when idle.
//!
//! Upgrade requests (websockets) always go over HTTP/1.1, through a pool of their own: an
//! upstream spoken to over HTTP/2 cannot upgrade a connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::header::UPGRADE;
use http::{Request, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower::Service;

use crate::config;
use crate::error::{Body, BoxError, GatewayError};
use crate::layers::arrival::Arrival;
use crate::layers::pass::{head_within, Streaming};
use crate::layers::trace::Outcome;

pub mod pool;

use pool::{Pool, PoolConfig, PoolError};

/// Cheap to clone (one `Arc`): hyper-util clones the whole stack for every request.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool<Body>,
    /// HTTP/1.1 only, for upgrades; the same as `pool` when that speaks HTTP/1.1.
    upgrades: Pool<Body>,
    timeout: Duration,
    max_response_bytes: usize,
}

impl Upstream {
    pub fn new(cfg: &config::Upstream) -> Self {
        let pool_cfg = PoolConfig::from_upstream(cfg);
        let pool = Pool::new(pool_cfg.clone());
        let upgrades = if cfg.http2 {
            Pool::new(PoolConfig {
                http2: false,
                ..pool_cfg
            })
        } else {
            pool.clone()
        };
        Self {
            inner: Arc::new(Inner {
                pool,
                upgrades,
                timeout: cfg.timeout,
                max_response_bytes: cfg.max_response_bytes,
            }),
        }
    }
}

fn classify(e: PoolError) -> GatewayError {
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
            let inner = self.inner.clone();
            return Box::pin(async move {
                let pool = if req.headers().contains_key(UPGRADE) {
                    &inner.upgrades
                } else {
                    &inner.pool
                };
                let head = async { pool.send(req).await.map_err(classify) };
                let res = head_within(head, timeout, &streaming.activity).await?;
                let took = start.elapsed();
                let (parts, body) = res.into_parts();
                let mut res = Response::from_parts(parts, streaming.body(body));
                Outcome::of(&mut res).upstream = Some(took);
                Ok(res)
            });
        }
        let limit = self.inner.max_response_bytes;
        let inner = self.inner.clone();
        // The upstream's budget, cut short by the whole request's when that ends first.
        let own = start + timeout;
        let until = match req.extensions().get::<Arrival>().and_then(|a| a.deadline) {
            Some(deadline) => deadline.min(own),
            None => own,
        };
        Box::pin(async move {
            let exchange = async {
                let res = inner.pool.send(req).await.map_err(classify)?;
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
            match tokio::time::timeout_at(until.into(), exchange).await {
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
