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
use crate::layers::arrival::{deadline_first, Arrival, BudgetElapsed};
use crate::layers::pass::{head_within, Streaming};
use crate::layers::trace::Outcome;

pub mod pool;

use pool::{Pool, PoolConfig, PoolError};

/// Cheap to clone (one `Arc`): each connection holds a copy of the stack, and the layers that
/// must wait before calling it (the body read, the Redis limiter) clone what lies below them.
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
                let now = Instant::now();
                let took = now.saturating_duration_since(start);
                let (parts, body) = res.into_parts();
                let mut res = Response::from_parts(parts, streaming.body(body, now));
                Outcome::of(&mut res).upstream = Some(took);
                Ok(res)
            });
        }
        let limit = self.inner.max_response_bytes;
        let inner = self.inner.clone();
        // The upstream's budget, cut short by the whole request's when that ends first; a
        // request whose budget has already run out is not sent at all.
        let own = start + timeout;
        let deadline = req.extensions().get::<Arrival>().and_then(|a| a.deadline);
        let budget = match deadline_first(deadline, start, own) {
            Ok(budget) => budget,
            Err(spent) => return Box::pin(std::future::ready(Err(spent.into()))),
        };
        let until = budget.unwrap_or(own);
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
                Err(_) if budget.is_some() => Err(BudgetElapsed.into()),
                Err(_) => Err(GatewayError::UpstreamTimeout.into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::sim::{SimConfig, Simulator};
    use tower::ServiceExt;

    fn upstream(addr: SocketAddr) -> Upstream {
        Upstream::new(&config::Upstream {
            base: format!("http://{addr}").parse().unwrap(),
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_host: 4,
            http2: false,
            max_response_bytes: 1 << 20,
        })
    }

    fn request(deadline: Option<Instant>) -> Request<Body> {
        let mut req = Request::get("/api/v3/users/u1")
            .body(Body::empty())
            .unwrap();
        let mut arrival = Arrival::from_client(([127, 0, 0, 1], 5000).into(), None);
        arrival.deadline = deadline;
        req.extensions_mut().insert(arrival);
        req
    }

    /// A request whose whole budget ran out before its exchange began is answered at once and
    /// never sent; one with budget left is sent; when the budget ends first, it is what ends
    /// the exchange, not the upstream's own timeout.
    #[tokio::test]
    async fn a_spent_budget_is_never_sent_and_a_short_one_ends_the_exchange() {
        let sim = Simulator::new(SimConfig::new("k"));
        let handle = sim
            .clone()
            .spawn(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let up = upstream(handle.addr);
        let spent = Instant::now() - Duration::from_millis(1);
        let err = up.clone().oneshot(request(Some(spent))).await.unwrap_err();
        assert!(err.is::<BudgetElapsed>(), "{err}");
        assert!(sim.requests().is_empty(), "nothing sent");

        let res = up.clone().oneshot(request(None)).await.unwrap();
        assert_eq!(
            res.status(),
            http::StatusCode::UNAUTHORIZED,
            "the simulator answered"
        );
        assert_eq!(sim.requests().len(), 1);

        sim.set_latency(Duration::from_millis(500));
        let short = Instant::now() + Duration::from_millis(100);
        let err = up.oneshot(request(Some(short))).await.unwrap_err();
        assert!(err.is::<BudgetElapsed>(), "{err}");
    }
}
