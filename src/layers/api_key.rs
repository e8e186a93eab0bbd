//! Key injection: every client `x-api-key` is removed (any case, any count); on routes that need
//! it, exactly one server-side key is set. The key is a sensitive `HeaderValue`, so hyper and
//! `http`'s `Debug` never print it.
//!
//! A request the key is attached to carries only what the gateway vouches for: its query
//! string is dropped (the session endpoints take a JSON body and no query; the SDKs send none),
//! and so are method-override headers (`X-HTTP-Method-Override` and kin: the upstream must not
//! read the request as another method than the one the route table let through), and the
//! client's own `X-Real-IP` and `Forwarded`. The client's `X-Forwarded-For` is dropped too
//! unless proxies in front are trusted (`rate_limit.per_ip.trusted_hops` > 0): the forwarding
//! layer then appends the peer to the chain they built.
//!
//! A key read from a file (a mounted Kubernetes Secret) is re-read when the file changes on
//! disk (see [`crate::reload`]): the next request after a rotation already carries the new key.

use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{self, Either, Ready};
use http::header::HeaderName;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Request, Response, Uri};
use tower::{Layer, Service};

use crate::config::shared::key_header;
use crate::config::{ClientKeyPolicy, KeySource};
use crate::error::{ApiError, Body, BoxError, ErrorFormat};
use crate::reload::Reloading;

pub static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The source of the injected key.
#[derive(Debug)]
pub struct ApiKey {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Static(HeaderValue),
    File(Reloading<HeaderValue>),
}

/// Reads the key file (one path); an empty file is an error, the key never appears in one.
fn read_key(paths: &[PathBuf]) -> Result<HeaderValue, String> {
    let path = paths.first().ok_or("no api key file")?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read api key file {}: {e}", path.display()))?;
    let key = text.trim();
    if key.is_empty() {
        return Err(format!("api key file {} is empty", path.display()));
    }
    key_header(key)
}

impl ApiKey {
    /// Loads the key once; a missing or empty file fails start-up.
    pub fn load(source: &KeySource) -> Result<Self, String> {
        let inner = match source {
            KeySource::Value(v) => Inner::Static(key_header(v)?),
            KeySource::File(path) => {
                Inner::File(Reloading::new("api key", vec![path.clone()], read_key)?)
            }
        };
        Ok(Self { inner })
    }

    /// The key to inject now. For a file source, re-reads the file if it changed; if the new
    /// content is unusable the last good key is kept (and a warning logged without the key).
    pub fn current(&self) -> HeaderValue {
        match &self.inner {
            Inner::Static(v) => v.clone(),
            Inner::File(file) => file.current(),
        }
    }
}

/// Strips client keys and (when `inject`) sets the server-side key.
#[derive(Debug, Clone)]
pub struct ApiKeyLayer {
    key: Arc<ApiKey>,
    policy: ClientKeyPolicy,
    inject: bool,
    trusted_hops: usize,
}

impl ApiKeyLayer {
    pub fn new(key: Arc<ApiKey>, policy: ClientKeyPolicy, inject: bool) -> Self {
        Self {
            key,
            policy,
            inject,
            trusted_hops: 0,
        }
    }

    /// Proxies in front whose `X-Forwarded-For` entries are trusted (0: none, the default).
    pub fn trusting_hops(mut self, hops: usize) -> Self {
        self.trusted_hops = hops;
        self
    }
}

/// Headers a key-injected request never carries from the client.
static NOT_VOUCHED: [HeaderName; 5] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("forwarded"),
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Makes a request fit to carry the key (see the module doc).
fn vouch(uri: &mut Uri, headers: &mut HeaderMap, trusted_hops: usize) {
    for name in &NOT_VOUCHED {
        headers.remove(name);
    }
    if trusted_hops == 0 {
        headers.remove(&X_FORWARDED_FOR);
    }
    if uri.query().is_some() {
        let mut parts = std::mem::take(uri).into_parts();
        parts.path_and_query = parts
            .path_and_query
            .and_then(|pq| PathAndQuery::try_from(pq.path()).ok());
        // Dropping the query from a valid URI leaves a valid URI.
        *uri = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
    }
}

impl<S> Layer<S> for ApiKeyLayer {
    type Service = ApiKeyService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ApiKeyService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiKeyService<S> {
    inner: S,
    layer: ApiKeyLayer,
}

impl<S, B> Service<Request<B>> for ApiKeyService<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Either<Ready<Result<Response<Body>, BoxError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let headers = req.headers_mut();
        if self.layer.policy == ClientKeyPolicy::Reject && headers.contains_key(&X_API_KEY) {
            let err = ApiError::BadRequest("x-api-key must not be sent by clients".into());
            return Either::Left(future::ready(Ok(
                err.to_response(ErrorFormat::from_headers(headers))
            )));
        }
        // `remove` drops every value of the name; names are case-insensitive in `http`.
        headers.remove(&X_API_KEY);
        if self.layer.inject {
            headers.insert(X_API_KEY.clone(), self.layer.key.current());
            let (mut parts, body) = req.into_parts();
            vouch(&mut parts.uri, &mut parts.headers, self.layer.trusted_hops);
            req = Request::from_parts(parts, body);
        }
        Either::Right(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn key_is_sensitive_and_debug_hides_it() {
        let k = ApiKey::load(&KeySource::Value("s3cr3t".into())).unwrap();
        let v = k.current();
        assert!(v.is_sensitive());
        assert!(!format!("{v:?}").contains("s3cr3t"));
    }

    #[test]
    fn rotated_file_is_used_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "first\n").unwrap();
        let k = ApiKey::load(&KeySource::File(path.clone())).unwrap();
        assert_eq!(k.current(), "first");
        // Rotate the way Kubernetes does: write a new file, rename it over the old one.
        let tmp = dir.path().join("key.new");
        std::fs::File::create(&tmp)
            .unwrap()
            .write_all(b"second")
            .unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(k.current(), "second");
        // An unreadable rotation keeps the last good key.
        std::fs::remove_file(&path).unwrap();
        assert_eq!(k.current(), "second");
    }

    #[test]
    fn a_key_injected_request_keeps_only_what_the_gateway_vouches_for() {
        use crate::test_util::headers;
        let all = [
            ("x-forwarded-for", "6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-http-method-override", "DELETE"),
            ("x-http-method", "DELETE"),
            ("x-method-override", "DELETE"),
            ("content-type", "application/json"),
        ];
        let mut uri: Uri = "/api/v3/sessions?userId=x&debug=1".parse().unwrap();
        let mut h = headers(&all);
        vouch(&mut uri, &mut h, 0);
        assert_eq!(uri, "/api/v3/sessions");
        assert_eq!(h.len(), 1, "{h:?}");
        let mut uri: Uri = "http://gw/api/v5/sessions?a".parse().unwrap();
        let mut h = headers(&all);
        vouch(&mut uri, &mut h, 1);
        assert_eq!(uri, "http://gw/api/v5/sessions");
        assert_eq!(
            h["x-forwarded-for"], "6.6.6.6",
            "a trusted proxy's chain stays"
        );
        assert_eq!(h.len(), 2, "{h:?}");
    }

    #[test]
    fn empty_or_missing_file_fails_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        assert!(ApiKey::load(&KeySource::File(path.clone())).is_err());
        std::fs::write(&path, "  \n").unwrap();
        assert!(ApiKey::load(&KeySource::File(path)).is_err());
    }
}
