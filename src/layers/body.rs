//! Body limit: reads the request body once, bounded, before any policy sees it. The limit is
//! enforced from `Content-Length` before a byte is read, and again while a chunked body streams,
//! so an oversized body never sits in memory. Session routes also require a JSON content type.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Request, Response};
use http_body::Body as HttpBody;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower::{Layer, Service};

use crate::error::{ApiError, Body, BoxError, ErrorFormat};

#[derive(Debug, Clone, Copy)]
pub struct BodyLayer {
    max: usize,
    require_json: bool,
}

impl BodyLayer {
    pub fn new(max: usize, require_json: bool) -> Self {
        Self { max, require_json }
    }
}

impl<S> Layer<S> for BodyLayer {
    type Service = BodyService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BodyService { inner, cfg: *self }
    }
}

#[derive(Debug, Clone)]
pub struct BodyService<S> {
    inner: S,
    cfg: BodyLayer,
}

/// `application/json`, optionally with parameters (`; charset=utf-8`), any letter case.
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .is_some_and(|essence| essence.eq_ignore_ascii_case("application/json"))
}

fn declared_len(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl<S, B> Service<Request<B>> for BodyService<S>
where
    S: Service<Request<Bytes>, Response = Response<Body>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Take the instance that was polled ready; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let cfg = self.cfg;
        Box::pin(async move {
            let format = ErrorFormat::from_headers(req.headers());
            let reject = |e: ApiError| Ok(e.to_response(format));
            if cfg.require_json && !is_json(req.headers()) {
                return reject(ApiError::UnsupportedMediaType);
            }
            if declared_len(req.headers()).is_some_and(|n| n > cfg.max as u64) {
                return reject(ApiError::PayloadTooLarge { limit: cfg.max });
            }
            let (parts, body) = req.into_parts();
            let bytes = match Limited::new(body, cfg.max).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) if e.is::<LengthLimitError>() => {
                    return reject(ApiError::PayloadTooLarge { limit: cfg.max })
                }
                Err(_) => {
                    return reject(ApiError::BadRequest(
                        "could not read the request body".into(),
                    ))
                }
            };
            inner.call(Request::from_parts(parts, bytes)).await
        })
    }
}
