//! The lookup cache in front of the upstream on the lookup chain: a hit is answered at once
//! (`x-cache: HIT`, `age`); anything else is forwarded and its answer handed to the cache
//! (stored, or teaching it about the token) on the way back, marked `MISS` or `BYPASS`.
//!
//! `GET /api/v3/sessions` and `DELETE /api/v4/sessions` pass through here too: their answers
//! prove, or forget, the caller's token (or, for an admin's `?userId=`, every token of that
//! user; `DELETE /api/v4/sessions/users/{U}` is read the same way when the route table sends
//! it here as [`Route::Logout`]), and the former reports `lastCachePurge` (so its
//! `accept-encoding` is dropped: the gateway must read that answer, a few bytes long). These
//! are read to the end in a task of their own, so a client that goes away cannot keep the
//! gateway from learning what the upstream did.
//!
//! A lookup that may fill the cache is forwarded with only the headers the key accounts for
//! ([`crate::cache::policy::FILL_HEADERS`]), and never with a body.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::{self, Either, Ready};
use http::header::ACCEPT_ENCODING;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::cache::{policy, Decision, LookupCache, Pending};
use crate::error::{Body, BoxError};
use crate::layers::arrival::{deadline_first, Arrival, BudgetElapsed};
use crate::routes::{Matched, Route};

/// Learns from a forwarded request's answer before it goes back to the client.
pub trait OnResponse {
    fn on_response(self, res: &mut Response<Body>);

    /// No answer came (an upstream error).
    fn on_error(self)
    where
        Self: Sized,
    {
    }
}

/// A forwarded request run to its end whatever happens to the client's side.
pub type Detached = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

/// Sends `req` through `call` in a task of its own and applies `ctx` to its outcome there:
/// dropping the returned future (the client went away) leaves the task running, so the answer
/// is still read to the end and learnt from. The request's whole-request deadline is taken out
/// of it: the exchange runs under the upstream's own budget (`upstream_timeout`), and the
/// deadline ends only the client's wait ([`BudgetElapsed`]), with a timer of its own only when
/// it comes before the upstream's budget ends. A request whose deadline has already passed is
/// not sent. Outside a tokio runtime (never the case when serving) it runs in place.
pub fn detached<B, F, C>(
    mut req: Request<B>,
    call: impl FnOnce(Request<B>) -> F,
    ctx: C,
    upstream_timeout: Duration,
) -> Detached
where
    F: Future<Output = Result<Response<Body>, BoxError>> + Send + 'static,
    C: OnResponse + Send + 'static,
{
    let now = Instant::now();
    let deadline = match deadline_first(
        Arrival::take_deadline(&mut req),
        now,
        now + upstream_timeout,
    ) {
        Ok(deadline) => deadline,
        Err(spent) => return Box::pin(future::ready(Err(spent.into()))),
    };
    let inner = call(req);
    let run = async move {
        let mut out = inner.await;
        match &mut out {
            Ok(res) => ctx.on_response(res),
            Err(_) => ctx.on_error(),
        }
        out
    };
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => {
            let task = rt.spawn(run);
            Box::pin(async move {
                match deadline {
                    None => task.await.map_err(BoxError::from)?,
                    Some(d) => match tokio::time::timeout_at(d.into(), task).await {
                        Ok(joined) => joined.map_err(BoxError::from)?,
                        Err(_) => Err(BudgetElapsed.into()),
                    },
                }
            })
        }
        Err(_) => Box::pin(run),
    }
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
        if let Some(ctx) = this.ctx.take() {
            match &mut out {
                Ok(res) => ctx.on_response(res),
                Err(_) => ctx.on_error(),
            }
        }
        Poll::Ready(out)
    }
}

impl OnResponse for (Arc<LookupCache>, Pending) {
    fn on_response(self, res: &mut Response<Body>) {
        self.0.finish(self.1, res);
    }

    fn on_error(self) {
        self.0.abandon(self.1);
    }
}

#[derive(Clone)]
pub struct LookupCacheLayer {
    cache: Arc<LookupCache>,
    upstream_timeout: Duration,
}

impl LookupCacheLayer {
    /// `upstream_timeout` is the upstream's own budget, under which answers that must be learnt
    /// from run on past the request's deadline ([`detached`]).
    pub fn new(cache: Arc<LookupCache>, upstream_timeout: Duration) -> Self {
        Self {
            cache,
            upstream_timeout,
        }
    }
}

impl<S> Layer<S> for LookupCacheLayer {
    type Service = LookupCacheService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        LookupCacheService {
            inner,
            cache: self.cache.clone(),
            upstream_timeout: self.upstream_timeout,
        }
    }
}

#[derive(Clone)]
pub struct LookupCacheService<S> {
    inner: S,
    cache: Arc<LookupCache>,
    upstream_timeout: Duration,
}

type Forwarded<F> = OnResponseFuture<F, (Arc<LookupCache>, Pending)>;

impl<S, B> Service<Request<B>> for LookupCacheService<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = BoxError>,
    S::Future: Send + 'static,
    B: AsRef<[u8]>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future =
        Either<Ready<Result<Response<Body>, BoxError>>, Either<Forwarded<S::Future>, Detached>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let Some(route) = req.extensions().get::<Matched>().map(|m| m.route) else {
            return Either::Right(Either::Left(OnResponseFuture::new(
                self.inner.call(req),
                None,
            )));
        };
        if route == Route::VerifySession && self.cache.enabled() {
            req.headers_mut().remove(ACCEPT_ENCODING);
        }
        let has_body = !req.body().as_ref().is_empty();
        match self.cache.decide(route, req.uri(), req.headers(), has_body) {
            Decision::Hit(res) => Either::Left(future::ready(Ok(res))),
            Decision::Forward(pending) => {
                if pending.fills() {
                    policy::keep_fill_headers(req.headers_mut());
                }
                let ctx = (self.cache.clone(), pending);
                Either::Right(if ctx.1.must_finish() {
                    let inner = &mut self.inner;
                    Either::Right(detached(req, |r| inner.call(r), ctx, self.upstream_timeout))
                } else {
                    Either::Left(OnResponseFuture::new(self.inner.call(req), Some(ctx)))
                })
            }
        }
    }
}
