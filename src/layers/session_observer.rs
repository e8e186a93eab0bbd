//! Watches session answers on their way to the client for what the lookup cache must know:
//! the issued token (kept hashed) retires the device's older one, the session's user has its
//! cached answers dropped, and `lastCachePurge` may move the purge watermark. The body passes
//! unchanged. Sits right after validation, where the request's [`SessionFacts`] are known.
//!
//! The request's `accept-encoding` is dropped so the upstream answers uncompressed: the gateway
//! must read the answer, and a session answer is a few kilobytes at most.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::ACCEPT_ENCODING;
use http::{Request, Response};
use tower::{Layer, Service};

use super::api_key::ApiKey;
use super::lookup_cache::{OnResponse, OnResponseFuture};
use crate::cache::{LookupCache, SessionPending};
use crate::error::{Body, BoxError};
use crate::session::SessionFacts;

#[derive(Clone)]
pub struct SessionObserverLayer {
    cache: Arc<LookupCache>,
    api_key: Arc<ApiKey>,
}

impl SessionObserverLayer {
    /// `api_key` is the key the session chain injects: its hash names the network whose
    /// tokens the observed answers issue.
    pub fn new(cache: Arc<LookupCache>, api_key: Arc<ApiKey>) -> Self {
        Self { cache, api_key }
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
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = OnResponseFuture<S::Future, (Arc<LookupCache>, SessionPending)>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let cache = &self.layer.cache;
        let pending = if cache.enabled() {
            req.extensions().get::<SessionFacts>().and_then(|f| {
                let key = self.layer.api_key.current();
                cache.session(key.as_ref(), &f.user_id, &f.device_id)
            })
        } else {
            None
        };
        if pending.is_some() {
            req.headers_mut().remove(ACCEPT_ENCODING);
        }
        let ctx = pending.map(|p| (cache.clone(), p));
        OnResponseFuture::new(self.inner.call(req), ctx)
    }
}
