//! Framing rules, checked on every request before any policy or route sees it.
//!
//! A proxy and its upstream must read a request the same way, or a request can mean one thing
//! to the gateway and another to the upstream (smuggling, a body validated under one
//! `Content-Type` and decoded under another). So a request is refused in the envelope, never
//! forwarded, when:
//!
//! - its request target is longer than `server.max_uri_bytes` (414) or its head larger than
//!   `server.max_header_bytes` (431): the gateway's own limits, well inside what hyper refuses
//!   by itself (see `server`), so the client gets the envelope and the answer is counted;
//! - it is HTTP/1.1 without exactly one `Host` (RFC 9112 §3.2), or repeats `Host`,
//!   `Content-Type`, `Content-Length`, `Content-Encoding`, `Authorization` or `Origin` (the
//!   headers the gateway decides by: which of two lines counts is up to each parser);
//! - it carries both `Content-Length` and `Transfer-Encoding` (RFC 9112 §6.1 allows refusing
//!   it; the connection is closed after the answer, as that section requires of a server that
//!   goes on).
//!
//! hyper hides two of these facts on HTTP/1: it drops a repeated `Content-Length` line of the
//! same value and removes `Content-Length` when `Transfer-Encoding` is present. The listener
//! reads them from the raw head and hands them over as [`HeadFacts`] in the request's
//! extensions; without them (HTTP/2, tests) the header map is all there is to go by.

use std::task::{Context, Poll};

use http::header::{
    AUTHORIZATION, CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HOST, ORIGIN,
    TRANSFER_ENCODING,
};
use http::{HeaderName, HeaderValue, Request, Response, Version};
use tower::{Layer, Service};

use crate::error::{ApiError, Body, ErrorFormat};
use crate::layers::arrival::Arrival;

/// What the raw HTTP/1 head said about the body framing, before hyper normalised it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeadFacts {
    /// `Content-Length` lines in the head.
    pub content_length_lines: u16,
    /// A `Transfer-Encoding` line was present.
    pub transfer_encoding: bool,
}

/// The headers the gateway decides by; each may appear at most once. `Content-Length`, which
/// may not either, is counted with the raw head's lines in the framing pass.
const SINGLE: [HeaderName; 5] = [HOST, CONTENT_TYPE, CONTENT_ENCODING, AUTHORIZATION, ORIGIN];

#[derive(Debug, Clone, Copy)]
pub struct FramingLayer {
    max_uri_bytes: usize,
    max_header_bytes: usize,
}

impl FramingLayer {
    pub fn new(max_uri_bytes: usize, max_header_bytes: usize) -> Self {
        Self {
            max_uri_bytes,
            max_header_bytes,
        }
    }

    /// The refusal for this request, if any, and whether the connection must close after it.
    fn check<B>(&self, req: &Request<B>) -> Option<(ApiError, bool)> {
        let uri = req.uri();
        let target = uri.path_and_query().map_or(0, |p| p.as_str().len())
            + uri.authority().map_or(0, |a| a.as_str().len());
        if target > self.max_uri_bytes {
            return Some((
                ApiError::UriTooLong {
                    limit: self.max_uri_bytes,
                },
                false,
            ));
        }
        let headers = req.headers();
        // One pass: the size of the head as sent on HTTP/1 (name, ": ", value, CRLF) and the
        // framing headers present.
        let (mut head, mut cl_in_map, mut te_in_map, mut host) = (0, 0, false, false);
        for (n, v) in headers {
            head += n.as_str().len() + v.len() + 4;
            if n == CONTENT_LENGTH {
                cl_in_map += 1;
            } else if n == TRANSFER_ENCODING {
                te_in_map = true;
            } else if n == HOST {
                host = true;
            }
        }
        if head > self.max_header_bytes {
            return Some((
                ApiError::HeadersTooLarge {
                    limit: self.max_header_bytes,
                },
                false,
            ));
        }
        let facts = req.extensions().get::<Arrival>().and_then(|a| a.head);
        let cl_lines = facts
            .map_or(0, |f| usize::from(f.content_length_lines))
            .max(cl_in_map);
        let te = facts.is_some_and(|f| f.transfer_encoding) || te_in_map;
        if te && cl_lines > 0 {
            return Some((
                bad("content-length and transfer-encoding must not be combined"),
                true,
            ));
        }
        if req.version() == Version::HTTP_11 && !host {
            return Some((bad("exactly one host header is required"), false));
        }
        if cl_lines > 1 {
            return Some((bad(duplicate(&CONTENT_LENGTH)), false));
        }
        // Only a map holding more values than names repeats one.
        if headers.len() != headers.keys_len() {
            for name in &SINGLE {
                let mut values = headers.get_all(name).iter();
                if values.next().is_some() && values.next().is_some() {
                    return Some((bad(duplicate(name)), false));
                }
            }
        }
        None
    }
}

fn bad(detail: &'static str) -> ApiError {
    ApiError::BadRequest(detail.into())
}

/// A fixed detail per header, so nothing the client sent is echoed.
fn duplicate(name: &HeaderName) -> &'static str {
    match *name {
        HOST => "the host header must appear once",
        CONTENT_TYPE => "the content-type header must appear at most once",
        CONTENT_LENGTH => "the content-length header must appear at most once",
        CONTENT_ENCODING => "the content-encoding header must appear at most once",
        AUTHORIZATION => "the authorization header must appear at most once",
        _ => "the origin header must appear at most once",
    }
}

impl<S> Layer<S> for FramingLayer {
    type Service = Framing<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Framing { inner, cfg: *self }
    }
}

#[derive(Debug, Clone)]
pub struct Framing<S> {
    inner: S,
    cfg: FramingLayer,
}

impl<S, B> Service<Request<B>> for Framing<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = futures_util::future::Either<
        std::future::Ready<Result<Response<Body>, S::Error>>,
        S::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        use futures_util::future::Either;
        match self.cfg.check(&req) {
            None => Either::Right(self.inner.call(req)),
            Some((err, close)) => {
                let mut res = err.to_response(ErrorFormat::from_headers(req.headers()));
                if close && req.version() < Version::HTTP_2 {
                    res.headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                Either::Left(std::future::ready(Ok(res)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer() -> FramingLayer {
        FramingLayer::new(64, 256)
    }

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri("/api/v3/sessions");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    fn status(r: &Request<()>) -> Option<(u16, bool)> {
        layer()
            .check(r)
            .map(|(e, close)| (e.status().as_u16(), close))
    }

    #[test]
    fn one_host_on_http11() {
        assert_eq!(status(&req(&[("host", "a")])), None);
        assert_eq!(status(&req(&[])), Some((400, false)));
        assert_eq!(
            status(&req(&[("host", "a"), ("host", "a")])),
            Some((400, false))
        );
        let mut r = req(&[]);
        *r.version_mut() = Version::HTTP_10;
        assert_eq!(status(&r), None, "HTTP/1.0 has no Host requirement");
        *r.version_mut() = Version::HTTP_2;
        assert_eq!(status(&r), None, "HTTP/2 names the authority in :authority");
    }

    #[test]
    fn deciding_headers_appear_once() {
        for name in [
            "content-type",
            "content-encoding",
            "authorization",
            "origin",
            "content-length",
        ] {
            let r = req(&[("host", "a"), (name, "1"), (name, "1")]);
            assert_eq!(status(&r), Some((400, false)), "{name}");
        }
        let r = req(&[("host", "a"), ("accept", "x"), ("accept", "y")]);
        assert_eq!(status(&r), None, "other headers may repeat");
    }

    fn arrived(head: HeadFacts) -> Arrival {
        Arrival::from_client(([127, 0, 0, 1], 5000).into(), Some(head))
    }

    #[test]
    fn facts_hyper_hides_are_used() {
        let mut r = req(&[("host", "a"), ("content-length", "3")]);
        r.extensions_mut().insert(arrived(HeadFacts {
            content_length_lines: 2,
            transfer_encoding: false,
        }));
        assert_eq!(status(&r), Some((400, false)));
        let mut r = req(&[("host", "a"), ("transfer-encoding", "chunked")]);
        r.extensions_mut().insert(arrived(HeadFacts {
            content_length_lines: 1,
            transfer_encoding: true,
        }));
        assert_eq!(status(&r), Some((400, true)));
        let r = req(&[
            ("host", "a"),
            ("transfer-encoding", "chunked"),
            ("content-length", "1"),
        ]);
        assert_eq!(status(&r), Some((400, true)));
    }

    #[test]
    fn own_limits_answer_414_and_431() {
        let r = Request::builder()
            .uri(format!("/{}", "a".repeat(64)))
            .header("host", "a")
            .body(())
            .unwrap();
        assert_eq!(status(&r), Some((414, false)));
        let r = req(&[("host", "a"), ("x-big", &"b".repeat(256))]);
        assert_eq!(status(&r), Some((431, false)));
    }
}
