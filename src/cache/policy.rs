//! What the upstream's answer headers, and the request's, allow the cache to do.
//!
//! * A lookup that may fill the cache is forwarded with a fixed allowlist of request headers
//!   ([`FILL_HEADERS`]): any other header (`Accept-Language`, `X-Forwarded-Host`,
//!   `X-Original-URL`, a method override, `Accept-Encoding`…) might change the answer, and the
//!   key does not hold it, so it is not sent. The upstream then answers uncompressed, and the
//!   gateway can read every answer it keeps.
//! * An answer is kept only when uncompressed (it must be read to check it is about the ids
//!   asked for) and when it varies on nothing but `accept-encoding` (which was not sent).
//! * `Cache-Control: no-store` or `no-cache` answers are never kept; `private` ones are kept
//!   only for the token that fetched them.

use http::header::{HeaderName, AUTHORIZATION, CACHE_CONTROL, CONTENT_ENCODING, VARY};
use http::HeaderMap;

/// The request headers a cache-filling lookup carries upstream: the bearer token (the answer
/// is keyed under its partition) and tracing ids (which cannot change an answer). The
/// forwarding layer then adds `Host` and `X-Forwarded-For` (the peer).
pub static FILL_HEADERS: [HeaderName; 4] = [
    AUTHORIZATION,
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("traceparent"),
    HeaderName::from_static("tracestate"),
];

/// Keeps only the [`FILL_HEADERS`] of a cache-filling lookup.
pub fn keep_fill_headers(headers: &mut HeaderMap) {
    let mut kept = HeaderMap::with_capacity(FILL_HEADERS.len());
    for name in &FILL_HEADERS {
        for v in headers.get_all(name) {
            kept.append(name.clone(), v.clone());
        }
    }
    *headers = kept;
}

/// Who an answer may be kept for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Never,
    /// Only for the token that fetched it (`Cache-Control: private`).
    Own,
    /// For whoever the scope allows.
    Shared,
}

/// What an answer's headers allow.
pub fn keep(headers: &HeaderMap) -> Keep {
    let only_accept_encoding = headers.get_all(VARY).iter().all(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .map(str::trim)
                .all(|t| t.is_empty() || t.eq_ignore_ascii_case("accept-encoding"))
        })
    });
    let identity = headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .all(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"));
    if !only_accept_encoding || !identity {
        return Keep::Never;
    }
    let mut keep = Keep::Shared;
    for v in headers.get_all(CACHE_CONTROL) {
        // As bytes: an odd byte beside a directive must not hide it.
        for d in v.as_bytes().split(|&b| b == b',') {
            let name = d.split(|&b| b == b'=').next().unwrap_or(d).trim_ascii();
            if name.eq_ignore_ascii_case(b"no-store") || name.eq_ignore_ascii_case(b"no-cache") {
                return Keep::Never;
            }
            if name.eq_ignore_ascii_case(b"private") {
                keep = Keep::Own;
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::headers;

    #[test]
    fn what_may_be_kept_and_for_whom() {
        assert_eq!(keep(&headers(&[])), Keep::Shared);
        assert_eq!(
            keep(&headers(&[("content-encoding", "identity")])),
            Keep::Shared
        );
        assert_eq!(keep(&headers(&[("vary", "Accept-Encoding")])), Keep::Shared);
        for never in [
            &[("content-encoding", "gzip")][..],
            &[("vary", "accept-encoding, cookie")],
            &[("vary", "*")],
            &[("cache-control", "max-age=60, no-store")],
            &[("cache-control", "No-Cache")],
            &[("cache-control", "public"), ("cache-control", "no-store")],
        ] {
            assert_eq!(keep(&headers(never)), Keep::Never, "{never:?}");
        }
        for own in ["private", "max-age=60,PRIVATE", "private=\"set-cookie\""] {
            assert_eq!(
                keep(&headers(&[("cache-control", own)])),
                Keep::Own,
                "{own}"
            );
        }
    }

    #[test]
    fn only_allowlisted_headers_fill_the_cache() {
        let mut h = headers(&[
            ("authorization", "Bearer t"),
            ("x-request-id", "r1"),
            ("accept-language", "fr"),
            ("x-forwarded-host", "evil.example"),
            ("x-original-url", "/api/v3/users/admin"),
            ("x-http-method-override", "DELETE"),
            ("accept-encoding", "gzip"),
        ]);
        keep_fill_headers(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["authorization"], "Bearer t");
        assert_eq!(h["x-request-id"], "r1");
    }
}
