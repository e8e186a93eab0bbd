//! Forwarding hygiene between client and upstream (RFC 9110 §7.6.1): hop-by-hop headers are
//! removed in both directions, including every header named in `Connection` (on requests by
//! the router, before any policy sees them; on responses here); `x-forwarded-for`
//! gets the peer appended; the URI is rewritten onto the upstream's base, whose authority
//! becomes the Host. The body bytes pass unchanged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::MapOk;
use futures_util::TryFutureExt;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Request, Response, Uri};
use tower::{Layer, Service};

use crate::error::{Body, BoxError};
use crate::layers::arrival::Arrival;

/// The client's socket address, set by the server on every request, with its IP rendered for
/// `x-forwarded-for` once per connection rather than once per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddr {
    addr: SocketAddr,
    ip: HeaderValue,
}

impl ClientAddr {
    pub fn new(addr: SocketAddr) -> Self {
        let ip = HeaderValue::try_from(addr.ip().to_string())
            // An IP address is always a valid header value.
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self { addr, ip }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Hop-by-hop headers that are never forwarded (RFC 9110 §7.6.1, plus the legacy ones and
/// `Upgrade`, which the gateway does not proxy). `Connection` comes first.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether a name this long may be one of [`HOP_BY_HOP`]: no hop-by-hop name is 3 to 6, 8, 9
/// or 11 to 15 bytes long, which rules out most names (`host`, `content-type`,
/// `content-length`, ...) before any comparison.
fn hop_by_hop_length(len: usize) -> bool {
    matches!(len, 2 | 7 | 10 | 16..=19)
}

/// Removes hop-by-hop headers, those named in `Connection` first. One pass over the message's
/// few names finds which hop-by-hop names are present (most requests have none; most answers
/// only `Connection: keep-alive`), and only those are removed: a hashed removal per
/// hop-by-hop name would cost more than the pass.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let present = headers.keys().fold(0u16, |seen, n| {
        if !hop_by_hop_length(n.as_str().len()) {
            return seen;
        }
        HOP_BY_HOP
            .iter()
            .position(|h| h == n)
            .map_or(seen, |i| seen | 1 << i)
    });
    if present == 0 {
        return;
    }
    if present & 1 != 0 {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            // As bytes: one odd byte in the value must not hide the names beside it.
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            // `keep-alive`, the usual option, names a header that goes below anyway: compared
            // as bytes, it is never built into a name.
            .filter(|n| !n.eq_ignore_ascii_case(b"keep-alive"))
            .filter_map(|n| HeaderName::from_bytes(n).ok())
            .filter(|n| !HOP_BY_HOP.contains(n))
            .collect();
        for n in named {
            headers.remove(n);
        }
    }
    for (i, h) in HOP_BY_HOP.iter().enumerate() {
        if present & 1 << i != 0 {
            headers.remove(h);
        }
    }
}

/// Where requests go: the upstream's scheme and authority, and the `Host` value built from
/// them once (the pooled client would otherwise format one per request). `host` is `None`
/// when the upstream may speak HTTP/2, where the client sends `:authority` instead.
#[derive(Debug)]
struct Base {
    scheme: Scheme,
    authority: Authority,
    host: Option<HeaderValue>,
}

#[derive(Debug, Clone)]
pub struct ForwardLayer {
    base: Arc<Base>,
}

impl ForwardLayer {
    /// `base` is the upstream's `scheme://authority` (validated by the config); `http2` says
    /// whether the upstream client may speak HTTP/2 to it.
    pub fn new(base: &Uri, http2: bool) -> Self {
        let scheme = base.scheme().cloned().unwrap_or(Scheme::HTTPS);
        let authority = base
            .authority()
            .cloned()
            .unwrap_or_else(|| Authority::from_static("localhost"));
        let host = (!http2).then(|| host_value(&scheme, &authority));
        Self {
            base: Arc::new(Base {
                scheme,
                authority,
                host,
            }),
        }
    }
}

/// The `Host` of requests to `authority`: its host, and its port unless it is the scheme's
/// default (RFC 9110 §7.2), as hyper's client would write it.
fn host_value(scheme: &Scheme, authority: &Authority) -> HeaderValue {
    let default_port = if *scheme == Scheme::HTTP { 80 } else { 443 };
    let host = match authority.port_u16() {
        Some(port) if port != default_port => format!("{}:{port}", authority.host()),
        _ => authority.host().to_owned(),
    };
    // An authority parsed from a URI is always a valid header value.
    HeaderValue::try_from(host).unwrap_or_else(|_| HeaderValue::from_static("localhost"))
}

impl<S> Layer<S> for ForwardLayer {
    type Service = Forward<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Forward {
            inner,
            base: self.base.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Forward<S> {
    inner: S,
    base: Arc<Base>,
}

fn clean_response(mut res: Response<Body>) -> Response<Body> {
    strip_hop_by_hop(res.headers_mut());
    res
}

impl<S, B> Service<Request<B>> for Forward<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
    B: Into<Body>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = MapOk<S::Future, fn(Response<Body>) -> Response<Body>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let base = &*self.base;
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(base.scheme.clone());
        uri.authority = Some(base.authority.clone());
        uri.path_and_query = Some(pq);
        // Scheme, authority and path are all present, so this cannot fail; keep the old URI if it did.
        if let Ok(u) = Uri::from_parts(uri) {
            parts.uri = u;
        }
        parts.version = http::Version::HTTP_11;
        let headers = &mut parts.headers;
        // Hop-by-hop headers were removed by the router, before any policy ran: a header the
        // client names in `Connection` (say `x-api-key`) must not be removed after the gateway
        // set or checked it.
        // The client's Host and framing headers describe the client's hop, not ours: Host names
        // the upstream (over HTTP/2 hyper sends `:authority`), and hyper sets Content-Length
        // from a complete body. A streamed body keeps the client's Content-Length (hyper checks
        // the stream against it); without one it goes chunked.
        match &base.host {
            Some(host) => headers.insert(header::HOST, host.clone()),
            None => headers.remove(header::HOST),
        };
        let body: Body = body.into();
        if !body.is_stream() {
            headers.remove(header::CONTENT_LENGTH);
        }
        if let Some(arrival) = parts.extensions.get::<Arrival>() {
            append_forwarded_for(headers, &arrival.peer.client.ip);
        }
        self.inner
            .call(Request::from_parts(parts, body))
            .map_ok(clean_response as fn(_) -> _)
    }
}

/// Appends `ip` to the (possibly repeated) `x-forwarded-for`, folding it into one header.
fn append_forwarded_for(headers: &mut HeaderMap, ip: &HeaderValue) {
    if !headers.contains_key(&X_FORWARDED_FOR) {
        headers.insert(X_FORWARDED_FOR.clone(), ip.clone());
        return;
    }
    let ip = ip.to_str().unwrap_or("unknown");
    let mut prior = String::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(s) = v.to_str() {
            if !prior.is_empty() {
                prior.push_str(", ");
            }
            prior.push_str(s.trim());
        }
    }
    let value = if prior.is_empty() {
        ip.to_string()
    } else {
        format!("{prior}, {ip}")
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_and_hop_by_hop_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-end-to-end", HeaderValue::from_static("stays"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-end-to-end"], "stays");
    }

    #[test]
    fn only_hop_by_hop_names_go_whatever_their_case() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("Keep-Alive, Close"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("close", HeaderValue::from_static("named by an option"));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key(header::CONTENT_TYPE));
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn every_connection_line_names_headers_even_beside_odd_bytes() {
        let mut h = HeaderMap::new();
        h.append(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-one, caf\xe9").unwrap(),
        );
        h.append(header::CONNECTION, HeaderValue::from_static("X-Two"));
        h.insert("x-one", HeaderValue::from_static("1"));
        h.append("x-two", HeaderValue::from_static("2"));
        h.append("x-two", HeaderValue::from_static("3"));
        h.insert("x-stays", HeaderValue::from_static("4"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-stays"));
    }

    #[test]
    fn the_length_filter_lets_every_hop_by_hop_name_through() {
        for h in &HOP_BY_HOP {
            assert!(hop_by_hop_length(h.as_str().len()), "{h}");
        }
    }

    #[test]
    fn hop_by_hop_headers_go_without_a_connection_header_too() {
        for name in [
            "keep-alive",
            "proxy-connection",
            "te",
            "upgrade",
            "transfer-encoding",
        ] {
            let mut h = HeaderMap::new();
            h.insert("x-end-to-end", HeaderValue::from_static("stays"));
            h.insert(HeaderName::from_static(name), HeaderValue::from_static("x"));
            strip_hop_by_hop(&mut h);
            assert_eq!(h.len(), 1, "{name}: {h:?}");
        }
    }

    #[test]
    fn host_names_the_upstream_without_its_default_port() {
        for (uri, host) in [
            ("http://127.0.0.1:8081", "127.0.0.1:8081"),
            ("http://example.com:80", "example.com"),
            ("https://apix.us.amity.co", "apix.us.amity.co"),
            ("https://apix.us.amity.co:443", "apix.us.amity.co"),
            ("https://[::1]:8443", "[::1]:8443"),
        ] {
            let uri: Uri = uri.parse().unwrap();
            let base = &ForwardLayer::new(&uri, false).base;
            assert_eq!(base.host.as_ref().unwrap(), host, "{uri}");
            assert!(ForwardLayer::new(&uri, true).base.host.is_none());
        }
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(&X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        let client = ClientAddr::new("127.0.0.1:5000".parse().unwrap());
        append_forwarded_for(&mut h, &client.ip);
        assert_eq!(h.get_all(&X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(h[&X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 127.0.0.1");
        let mut h = HeaderMap::new();
        let client = ClientAddr::new("[2001:db8::1]:5000".parse().unwrap());
        append_forwarded_for(&mut h, &client.ip);
        assert_eq!(h[&X_FORWARDED_FOR], "2001:db8::1");
    }
}
