//! CORS for browser apps, off unless `[cors] allowed_origins` names an origin.
//!
//! Off: the gateway adds nothing and answers no preflight itself; an `OPTIONS` request is routed
//! like any other, so on pass routes the upstream's own CORS answers reach the browser.
//!
//! On: tower-http's `CorsLayer` answers every preflight itself and adds
//! `Access-Control-Allow-Origin` (with `Vary: Origin`) to answers for the allowed origins.
//! CORS is enforced by browsers, which protects the browser's user, not the gateway's key: so
//! on the routes that carry the key, [`OriginGuard`] also refuses (403 in the envelope, never
//! forwarded) a request whose `Origin` is present and not allowed. A foreign website then
//! cannot spend the key through a visitor's browser, even with a simple request that needs no
//! preflight. Requests without `Origin` (native apps, servers) are not concerned.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{self, Either, Ready};
use http::header::{HeaderName, HeaderValue, ORIGIN};
use http::{Method, Request, Response};
use serde::{Deserialize, Serialize};
use tower::{Layer, Service};
use tower_http::cors::{AllowHeaders, AllowMethods, AllowOrigin, CorsLayer, ExposeHeaders};

use crate::config::shared::{invalid, ConfigError};
use crate::error::{ApiError, Body, BoxError, ErrorFormat};

/// `[cors]` in the config file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsFile {
    /// Exact origins (`https://app.example.com`) allowed to call the gateway from a browser.
    /// Default: none, and CORS is off.
    pub allowed_origins: Vec<String>,
    /// Request headers a browser may send. Default: authorization, content-type, x-api-key,
    /// x-request-id, set-access-token-cookie (what the official web SDK sends).
    pub allowed_headers: Vec<String>,
    /// Answer headers a browser script may read. Default: x-request-id, ratelimit,
    /// ratelimit-policy, retry-after, x-cache.
    pub exposed_headers: Vec<String>,
    /// How long a browser may cache a preflight's answer. Default 600 s.
    pub max_age_secs: u64,
}

impl Default for CorsFile {
    fn default() -> Self {
        let list = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        Self {
            allowed_origins: Vec::new(),
            allowed_headers: list(&[
                "authorization",
                "content-type",
                "x-api-key",
                "x-request-id",
                "set-access-token-cookie",
            ]),
            exposed_headers: list(&[
                "x-request-id",
                "ratelimit",
                "ratelimit-policy",
                "retry-after",
                "x-cache",
            ]),
            max_age_secs: 600,
        }
    }
}

/// Validated `[cors]`; `None` from [`CorsFile::resolve`] when CORS is off.
#[derive(Debug, Clone)]
pub struct Cors {
    origins: Arc<[HeaderValue]>,
    allowed_headers: Vec<HeaderName>,
    exposed_headers: Vec<HeaderName>,
    max_age: Duration,
}

fn header_names(key: &'static str, names: &[String]) -> Result<Vec<HeaderName>, ConfigError> {
    names
        .iter()
        .map(|n| {
            HeaderName::from_bytes(n.trim().as_bytes())
                .map_err(|_| invalid(key, format!("{n:?} is not a header name")))
        })
        .collect()
}

impl CorsFile {
    pub fn resolve(&self) -> Result<Option<Cors>, ConfigError> {
        if self.allowed_origins.is_empty() {
            return Ok(None);
        }
        let mut origins = Vec::with_capacity(self.allowed_origins.len());
        for o in &self.allowed_origins {
            let uri: http::Uri = o
                .parse()
                .map_err(|_| invalid("cors.allowed_origins", format!("{o:?} is not an origin")))?;
            let plain = matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.authority().is_some()
                && uri
                    .path_and_query()
                    .is_none_or(|p| p.as_str().is_empty() || p == "/")
                && !o.ends_with('/');
            if !plain {
                return Err(invalid(
                    "cors.allowed_origins",
                    format!("{o:?}: an origin is scheme://host[:port], nothing more (and no *)"),
                ));
            }
            origins.push(
                HeaderValue::from_str(o).map_err(|_| {
                    invalid("cors.allowed_origins", format!("{o:?} is not an origin"))
                })?,
            );
        }
        Ok(Some(Cors {
            origins: origins.into(),
            allowed_headers: header_names("cors.allowed_headers", &self.allowed_headers)?,
            exposed_headers: header_names("cors.exposed_headers", &self.exposed_headers)?,
            max_age: Duration::from_secs(self.max_age_secs),
        }))
    }
}

impl Cors {
    /// The preflight and response-header layer.
    pub fn layer(&self) -> CorsLayer {
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(self.origins.iter().cloned()))
            .allow_methods(AllowMethods::list([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ]))
            .allow_headers(AllowHeaders::list(self.allowed_headers.iter().cloned()))
            .expose_headers(ExposeHeaders::list(self.exposed_headers.iter().cloned()))
            .max_age(self.max_age)
    }

    /// The origin check for key-carrying routes.
    pub fn guard(&self) -> OriginGuardLayer {
        OriginGuardLayer {
            origins: self.origins.clone(),
        }
    }
}

/// Refuses requests from origins that are not allowed (see the module doc).
#[derive(Debug, Clone)]
pub struct OriginGuardLayer {
    origins: Arc<[HeaderValue]>,
}

impl<S> Layer<S> for OriginGuardLayer {
    type Service = OriginGuard<S>;
    fn layer(&self, inner: S) -> Self::Service {
        OriginGuard {
            inner,
            origins: self.origins.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct OriginGuard<S> {
    inner: S,
    origins: Arc<[HeaderValue]>,
}

impl<S, B> Service<Request<B>> for OriginGuard<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Either<Ready<Result<Response<Body>, BoxError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mut origins = req.headers().get_all(ORIGIN).iter();
        let allowed = match (origins.next(), origins.next()) {
            (None, _) => true,
            (Some(o), None) => self.origins.iter().any(|a| a == o),
            // Two Origin headers: no browser sends that.
            (Some(_), Some(_)) => false,
        };
        if allowed {
            return Either::Right(self.inner.call(req));
        }
        let res = ApiError::Forbidden("origin not allowed".into())
            .to_response(ErrorFormat::from_headers(req.headers()));
        Either::Left(future::ready(Ok(res)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_without_origins_and_origins_must_be_exact() {
        assert!(CorsFile::default().resolve().unwrap().is_none());
        let with = |o: &str| CorsFile {
            allowed_origins: vec![o.to_owned()],
            ..CorsFile::default()
        };
        assert!(with("https://app.example.com").resolve().unwrap().is_some());
        assert!(with("http://localhost:3000").resolve().unwrap().is_some());
        for bad in [
            "*",
            "app.example.com",
            "https://app.example.com/",
            "https://a.b/path",
            "ftp://x",
        ] {
            let err = with(bad).resolve().unwrap_err().to_string();
            assert!(err.contains("cors.allowed_origins"), "{bad}: {err}");
        }
        let f = CorsFile {
            exposed_headers: vec!["bad header".into()],
            ..with("https://a.b")
        };
        assert!(f
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("cors.exposed_headers"));
    }
}
