//! Error rescue: every `Err` (and every panic) below this layer becomes a response in the
//! upstream's envelope. The service it returns cannot fail, which is what hyper needs: an `Err`
//! handed to hyper drops the connection without a response.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::CatchUnwind;
use futures_util::FutureExt;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::trace::RequestId;
use crate::error::{self, ApiError, Body, BoxError, ErrorFormat, GatewayError};

/// Called with every rescued infrastructure error (for metrics); never sees a client rejection.
pub type OnError = std::sync::Arc<dyn Fn(&BoxError) + Send + Sync>;

#[derive(Clone, Default)]
pub struct RescueLayer {
    on_error: Option<OnError>,
}

impl RescueLayer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn on_error(mut self, f: OnError) -> Self {
        self.on_error = Some(f);
        self
    }
}

impl<S> Layer<S> for RescueLayer {
    type Service = Rescue<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Rescue {
            inner,
            on_error: self.on_error.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Rescue<S> {
    inner: S,
    on_error: Option<OnError>,
}

pin_project! {
    pub struct RescueFuture<F> {
        #[pin]
        inner: Option<CatchUnwind<AssertUnwindSafe<F>>>,
        format: ErrorFormat,
        on_error: Option<OnError>,
        // The request's id, for the warning: the request span is off at info level.
        id: Option<RequestId>,
    }
}

fn respond(
    err: &BoxError,
    format: ErrorFormat,
    on_error: &Option<OnError>,
    id: Option<&RequestId>,
) -> Response<Body> {
    let api = error::rescue(err);
    let kind = err
        .downcast_ref::<GatewayError>()
        .map(GatewayError::kind)
        .unwrap_or("other");
    tracing::warn!(
        error = %err,
        kind,
        status = api.status().as_u16(),
        request_id = id.map_or("-", RequestId::as_str),
        "request failed"
    );
    if let Some(f) = on_error {
        f(err);
    }
    api.to_response(format)
}

fn panicked(format: ErrorFormat, id: Option<&RequestId>) -> Response<Body> {
    tracing::error!(
        request_id = id.map_or("-", RequestId::as_str),
        "panic while handling a request"
    );
    ApiError::Internal.to_response(format)
}

impl<F> Future for RescueFuture<F>
where
    F: Future<Output = Result<Response<Body>, BoxError>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Ok(panicked(*this.format, this.id.as_ref())));
        };
        Poll::Ready(Ok(match futures_util::ready!(inner.poll(cx)) {
            Ok(Ok(res)) => res,
            Ok(Err(err)) => respond(&err, *this.format, this.on_error, this.id.as_ref()),
            Err(_panic) => panicked(*this.format, this.id.as_ref()),
        }))
    }
}

impl<S, B> Service<Request<B>> for Rescue<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RescueFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // An inner readiness error is reported on the call instead; here it would have to be
        // dropped, so we claim readiness and let `call` decide.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let format = ErrorFormat::from_headers(req.headers());
        let id = RequestId::of(&req);
        let inner = std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(req)))
            .ok()
            .map(|f| AssertUnwindSafe(f).catch_unwind());
        RescueFuture {
            inner,
            format,
            on_error: self.on_error.clone(),
            id,
        }
    }
}
