//! Body limit: reads the request body once, bounded, before any policy sees it. The limit is
//! enforced from `Content-Length` before a byte is read, and again while a chunked body streams,
//! so an oversized body never sits in memory, and within a deadline of its own (408), so a slow
//! client is not reported as a slow upstream. Session routes also require a JSON body as the
//! upstream will read it: `application/json` in UTF-8, not content-encoded; any other charset or
//! encoding would let the gateway validate other characters than the upstream decodes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, Request, Response};
use http_body::Body as HttpBody;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tower::{Layer, Service};

use crate::error::{ApiError, Body, BoxError, ErrorFormat};

#[derive(Debug, Clone, Copy)]
pub struct BodyLayer {
    max: usize,
    read_timeout: Duration,
    require_json: bool,
}

impl BodyLayer {
    pub fn new(max: usize, read_timeout: Duration, require_json: bool) -> Self {
        Self {
            max,
            read_timeout,
            require_json,
        }
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

/// `application/json` in any letter case, with no charset or `charset=utf-8` (JSON is UTF-8,
/// RFC 8259 §8.1); other parameters are ignored.
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(v) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut parts = v.split(';');
    let essence = parts.next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        && parts.all(|p| match p.split_once('=') {
            Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
                value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
            }
            _ => true,
        })
}

/// No `Content-Encoding`, or only `identity`.
fn is_identity(headers: &HeaderMap) -> bool {
    headers.get_all(CONTENT_ENCODING).iter().all(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .all(|c| c.trim().eq_ignore_ascii_case("identity"))
        })
    })
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
                return reject(ApiError::UnsupportedMediaType(
                    "content-type must be application/json (UTF-8)".into(),
                ));
            }
            if cfg.require_json && !is_identity(req.headers()) {
                return reject(ApiError::UnsupportedMediaType(
                    "content-encoding is not supported on this route".into(),
                ));
            }
            if declared_len(req.headers()).is_some_and(|n| n > cfg.max as u64) {
                return reject(ApiError::PayloadTooLarge { limit: cfg.max });
            }
            let (parts, body) = req.into_parts();
            let read =
                tokio::time::timeout(cfg.read_timeout, Limited::new(body, cfg.max).collect());
            let bytes = match read.await {
                Ok(Ok(collected)) => collected.to_bytes(),
                Ok(Err(e)) if e.is::<LengthLimitError>() => {
                    return reject(ApiError::PayloadTooLarge { limit: cfg.max })
                }
                Err(_elapsed) => return reject(ApiError::RequestTimeout),
                Ok(Err(_)) => {
                    return reject(ApiError::BadRequest(
                        "could not read the request body".into(),
                    ))
                }
            };
            inner.call(Request::from_parts(parts, bytes)).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::headers;

    #[test]
    fn json_means_utf8_json() {
        for ok in [
            "application/json",
            "Application/JSON; charset=UTF-8",
            "application/json;charset=\"utf-8\"",
            "application/json; foo=bar",
        ] {
            assert!(is_json(&headers(&[("content-type", ok)])), "{ok}");
        }
        for bad in [
            "text/plain",
            "application/json; charset=utf-16",
            "application/jsonx",
            "application/json; charset=latin1",
        ] {
            assert!(!is_json(&headers(&[("content-type", bad)])), "{bad}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn only_identity_encoding_passes() {
        assert!(is_identity(&HeaderMap::new()));
        assert!(is_identity(&headers(&[("content-encoding", "identity")])));
        assert!(!is_identity(&headers(&[("content-encoding", "gzip")])));
        assert!(!is_identity(&headers(&[
            ("content-encoding", "identity"),
            ("content-encoding", "br")
        ])));
    }
}
