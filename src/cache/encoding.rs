//! Content negotiation the store must respect. The upstream may compress an answer for a
//! client that accepts it (`content-encoding: gzip`); the stored bytes are then served, with
//! that header, only to clients that accept the same encoding; others are forwarded, and their
//! uncompressed answer replaces the entry (it suits every client). An answer that varies on any
//! header but `accept-encoding` is not stored at all: the key could not tell its variants apart.

use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, VARY};
use http::{HeaderMap, HeaderValue};

/// Whether an answer with these headers may be stored; `Some(encoding)` when it may, where the
/// encoding is `None` for uncompressed bytes.
pub fn storable(headers: &HeaderMap) -> Option<Option<HeaderValue>> {
    let only_accept_encoding = headers.get_all(VARY).iter().all(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .map(str::trim)
                .all(|t| t.is_empty() || t.eq_ignore_ascii_case("accept-encoding"))
        })
    });
    if !only_accept_encoding {
        return None;
    }
    let mut encodings = headers.get_all(CONTENT_ENCODING).iter();
    match (encodings.next(), encodings.next()) {
        (None, _) => Some(None),
        (Some(v), None) if v.as_bytes().eq_ignore_ascii_case(b"identity") => Some(None),
        (Some(v), None) if v.to_str().is_ok_and(|s| !s.contains(',')) => Some(Some(v.clone())),
        _ => None,
    }
}

/// Whether the client's `accept-encoding` accepts `encoding` (by name or `*`, with q > 0).
pub fn accepts(request: &HeaderMap, encoding: &HeaderValue) -> bool {
    let Ok(encoding) = encoding.to_str() else {
        return false;
    };
    let encoding = encoding.trim();
    request
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            !refused && (name == "*" || name.eq_ignore_ascii_case(encoding))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::headers;

    #[test]
    fn what_may_be_stored() {
        assert_eq!(storable(&headers(&[])), Some(None));
        assert_eq!(
            storable(&headers(&[("content-encoding", "identity")])),
            Some(None)
        );
        let gz = storable(&headers(&[
            ("content-encoding", "gzip"),
            ("vary", "Accept-Encoding"),
        ]));
        assert_eq!(gz, Some(Some(HeaderValue::from_static("gzip"))));
        assert_eq!(
            storable(&headers(&[("vary", "accept-encoding, cookie")])),
            None
        );
        assert_eq!(storable(&headers(&[("vary", "*")])), None);
        assert_eq!(
            storable(&headers(&[("content-encoding", "gzip, br")])),
            None
        );
        assert_eq!(
            storable(&headers(&[
                ("content-encoding", "gzip"),
                ("content-encoding", "br")
            ])),
            None
        );
    }

    #[test]
    fn who_accepts_an_encoding() {
        let gzip = HeaderValue::from_static("gzip");
        assert!(accepts(&headers(&[("accept-encoding", "br, GZIP")]), &gzip));
        assert!(accepts(&headers(&[("accept-encoding", "*")]), &gzip));
        assert!(accepts(
            &headers(&[("accept-encoding", "gzip;q=0.5")]),
            &gzip
        ));
        assert!(!accepts(
            &headers(&[("accept-encoding", "gzip;q=0")]),
            &gzip
        ));
        assert!(!accepts(&headers(&[("accept-encoding", "br")]), &gzip));
        assert!(!accepts(&headers(&[]), &gzip));
    }
}
