//! The lookup cache in front of the upstream on the lookup chain: a hit is answered at once
//! (`x-cache: HIT`, `age`); anything else is forwarded and its answer handed to the cache
//! (stored, or teaching it about the token) on the way back, marked `MISS` or `BYPASS`.
//!
//! `GET /api/v3/sessions` and `DELETE /api/v4/sessions` pass through here too: their answers
//! prove, or forget, the caller's token, and the former reports `lastCachePurge` (so its
//! `accept-encoding` is dropped: the gateway must read that answer, a few bytes long).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{self, Either, Ready};
use http::header::ACCEPT_ENCODING;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::cache::{Decision, LookupCache, Pending};
use crate::error::{Body, BoxError};
use crate::routes::Route;

/// Learns from a forwarded request's answer before it goes back to the client.
pub trait OnResponse {
    fn on_response(self, res: &mut Response<Body>);
}

pin_project! {
    /// The inner future, with `ctx` applied to its response; errors pass untouched.
    pub struct OnResponseFuture<F, C> {
        #[pin]
        inner: F,
        ctx: Option<C>,
    }
}

impl<F, C> OnResponseFuture<F, C> {
    pub fn new(inner: F, ctx: Option<C>) -> Self {
        Self { inner, ctx }
    }
}

impl<F, C> Future for OnResponseFuture<F, C>
where
    F: Future<Output = Result<Response<Body>, BoxError>>,
    C: OnResponse,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut out = futures_util::ready!(this.inner.poll(cx));
        if let (Ok(res), Some(ctx)) = (&mut out, this.ctx.take()) {
            ctx.on_response(res);
        }
        Poll::Ready(out)
    }
}

impl OnResponse for (Arc<LookupCache>, Pending) {
    fn on_response(self, res: &mut Response<Body>) {
        self.0.finish(self.1, res);
    }
}

#[derive(Clone)]
pub struct LookupCacheLayer {
    cache: Arc<LookupCache>,
}

impl LookupCacheLayer {
    pub fn new(cache: Arc<LookupCache>) -> Self {
        Self { cache }
    }
}

impl<S> Layer<S> for LookupCacheLayer {
    type Service = LookupCacheService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        LookupCacheService {
            inner,
            cache: self.cache.clone(),
        }
    }
}

#[derive(Clone)]
pub struct LookupCacheService<S> {
    inner: S,
    cache: Arc<LookupCache>,
}

type Forwarded<F> = OnResponseFuture<F, (Arc<LookupCache>, Pending)>;

impl<S, B> Service<Request<B>> for LookupCacheService<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Either<Ready<Result<Response<Body>, BoxError>>, Forwarded<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some(&route) = req.extensions().get::<Route>() else {
            return Either::Right(OnResponseFuture::new(self.inner.call(req), None));
        };
        if route == Route::VerifySession && self.cache.enabled() {
            req.headers_mut().remove(ACCEPT_ENCODING);
        }
        match self.cache.decide(route, req.uri(), req.headers()) {
            Decision::Hit(res) => Either::Left(future::ready(Ok(res))),
            Decision::Forward(pending) => Either::Right(OnResponseFuture::new(
                self.inner.call(req),
                Some((self.cache.clone(), pending)),
            )),
        }
    }
}
