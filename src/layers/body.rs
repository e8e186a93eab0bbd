//! Body limit: reads the request body once, bounded, before any policy sees it. The limit is
//! enforced from `Content-Length` before a byte is read, and again while a chunked body streams,
//! so an oversized body never sits in memory, and within a deadline of its own (408), so a slow
//! client is not reported as a slow upstream. Within that deadline the body must also keep a
//! minimum average data rate once a short grace has passed, so a client that declares a body and
//! sends it a byte at a time (or never) is cut after the grace, not after the whole deadline.
//! Session routes also require a JSON body as the
//! upstream will read it: `application/json` in UTF-8, not content-encoded; any other charset or
//! encoding would let the gateway validate other characters than the upstream decodes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
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
    /// Bytes per second a body must average after `grace`; 0 means no minimum.
    min_rate: u64,
    grace: Duration,
}

impl BodyLayer {
    pub fn new(max: usize, read_timeout: Duration, require_json: bool) -> Self {
        Self {
            max,
            read_timeout,
            require_json,
            min_rate: 0,
            grace: read_timeout,
        }
    }

    /// After `grace`, a body must have arrived at `bytes_per_sec` on average, or it gets 408.
    pub fn min_rate(mut self, bytes_per_sec: u64, grace: Duration) -> Self {
        self.min_rate = bytes_per_sec;
        self.grace = grace;
        self
    }

    /// When a body of which `received` bytes have arrived since `start` is too slow.
    fn deadline(&self, start: Instant, received: u64) -> Instant {
        let hard = start + self.read_timeout;
        if self.min_rate == 0 {
            return hard;
        }
        let earned = Duration::from_millis(received.saturating_mul(1000) / self.min_rate);
        hard.min(start + self.grace + earned)
    }
}

enum ReadError {
    TooLarge,
    TooSlow,
    Broken,
}

/// Reads the whole body, at most `cfg.max` bytes, within [`BodyLayer::deadline`]. A frame
/// that is already there is taken without a timer: most bodies arrive with their head, and
/// only a read that has to wait arms one (the clock starts at the first wait).
async fn read<B>(body: B, cfg: &BodyLayer) -> Result<Bytes, ReadError>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let body = Limited::new(body, cfg.max);
    tokio::pin!(body);
    let mut start = None;
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut received = 0u64;
    loop {
        let frame = match body.frame().now_or_never() {
            Some(frame) => frame,
            None => {
                let start = *start.get_or_insert_with(Instant::now);
                let deadline = cfg.deadline(start, received);
                match tokio::time::timeout_at(deadline.into(), body.frame()).await {
                    Ok(frame) => frame,
                    Err(_elapsed) => return Err(ReadError::TooSlow),
                }
            }
        };
        match frame {
            None => break,
            Some(Err(e)) if e.is::<LengthLimitError>() => return Err(ReadError::TooLarge),
            Some(Err(_)) => return Err(ReadError::Broken),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    received += data.len() as u64;
                    if !data.is_empty() {
                        chunks.push(data);
                    }
                }
            }
        }
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => Bytes::from(chunks.concat()),
    })
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

pub(crate) fn declared_len(headers: &HeaderMap) -> Option<u64> {
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
            let bytes = match read(body, &cfg).await {
                Ok(bytes) => bytes,
                Err(ReadError::TooLarge) => {
                    return reject(ApiError::PayloadTooLarge { limit: cfg.max })
                }
                Err(ReadError::TooSlow) => return reject(ApiError::RequestTimeout),
                Err(ReadError::Broken) => {
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
    fn a_slow_body_earns_time_by_sending() {
        let cfg = BodyLayer::new(100, Duration::from_secs(10), false)
            .min_rate(1000, Duration::from_secs(2));
        let t = Instant::now();
        assert_eq!(cfg.deadline(t, 0), t + Duration::from_secs(2));
        assert_eq!(cfg.deadline(t, 500), t + Duration::from_millis(2500));
        assert_eq!(
            cfg.deadline(t, 1 << 40),
            t + Duration::from_secs(10),
            "never past the cap"
        );
        let plain = BodyLayer::new(100, Duration::from_secs(10), false);
        assert_eq!(plain.deadline(t, 0), t + Duration::from_secs(10));
    }

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
