//! Watches session answers on their way to the client for what the lookup cache must know:
//! the issued token (kept hashed) retires the device's older one, the session's user has its
//! cached answers dropped, and `lastCachePurge` may move the purge watermark. The body passes
//! unchanged. Sits below validation (the request's [`SessionFacts`] are known) and below key
//! injection: the injected `x-api-key` names the network the issued token belongs to.
//!
//! The answer is read to the end in a task of its own ([`detached`]), under the upstream's own
//! budget: a client that goes away, or the request's whole budget running out, must not keep
//! the gateway from learning the token that retired the device's older one.
//!
//! The request's `accept-encoding` is dropped so the upstream answers uncompressed: the gateway
//! must read the answer, and a session answer is a few kilobytes at most.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::ACCEPT_ENCODING;
use http::{Request, Response};
use tower::{Layer, Service};

use super::api_key::X_API_KEY;
use futures_util::future::Either;

use super::lookup_cache::{detached, Detached, OnResponse};
use crate::cache::{LookupCache, SessionPending};
use crate::error::{Body, BoxError};
use crate::session::SessionFacts;

#[derive(Clone)]
pub struct SessionObserverLayer {
    cache: Arc<LookupCache>,
    upstream_timeout: Duration,
}

impl SessionObserverLayer {
    /// `upstream_timeout` is the upstream's own budget, under which the answer is read to the
    /// end even past the request's deadline ([`detached`]).
    pub fn new(cache: Arc<LookupCache>, upstream_timeout: Duration) -> Self {
        Self {
            cache,
            upstream_timeout,
        }
    }
}

impl<S> Layer<S> for SessionObserverLayer {
    type Service = SessionObserver<S>;
    fn layer(&self, inner: S) -> Self::Service {
        SessionObserver {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct SessionObserver<S> {
    inner: S,
    layer: SessionObserverLayer,
}

impl OnResponse for (Arc<LookupCache>, SessionPending) {
    fn on_response(self, res: &mut Response<Body>) {
        self.0.finish_session(self.1, res);
    }
}

impl<S, B> Service<Request<B>> for SessionObserver<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Either<S::Future, Detached>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let cache = &self.layer.cache;
        let pending = if cache.enabled() {
            // The key injected above this layer: its hash names the issuing network.
            let key = req.headers().get(&X_API_KEY);
            let facts = req.extensions().get::<SessionFacts>();
            key.zip(facts)
                .and_then(|(key, f)| cache.session(key, f.user_id.as_deref(), &f.device_id))
        } else {
            None
        };
        match pending {
            Some(p) => {
                req.headers_mut().remove(ACCEPT_ENCODING);
                let inner = &mut self.inner;
                let ctx = (cache.clone(), p);
                Either::Right(detached(
                    req,
                    |r| inner.call(r),
                    ctx,
                    self.layer.upstream_timeout,
                ))
            }
            None => Either::Left(self.inner.call(req)),
        }
    }
}
