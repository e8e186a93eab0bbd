//! The route table: the only requests this gateway forwards. Everything else is a 404 in the
//! upstream's envelope, so the injected key cannot be used against any other endpoint.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request, Response};
use tower::util::{BoxCloneSyncService, Oneshot};
use tower::{Service, ServiceExt};

use crate::error::{ApiError, Body, BoxError, ErrorFormat};
use crate::session::ApiVersion;

/// A served route. Its label is the only route identity that reaches metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// `POST /api/v{3,4,5}/sessions`
    Session(ApiVersion),
    /// `GET /api/v3/sessions` (verify a token; answers `lastCachePurge`)
    VerifySession,
    /// `DELETE /api/v4/sessions` (logout)
    Logout,
    /// `GET /api/v3/users/{userId}`
    User,
    /// `GET /api/v3/users/list?userIds=…`
    UserList,
    /// `GET /api/v3/files/{fileId}`
    File,
}

impl Route {
    /// Every route, for pre-registering metric children.
    pub const ALL: [Route; 8] = [
        Route::Session(ApiVersion::V3),
        Route::Session(ApiVersion::V4),
        Route::Session(ApiVersion::V5),
        Route::VerifySession,
        Route::Logout,
        Route::User,
        Route::UserList,
        Route::File,
    ];

    /// Bounded label; requests that match no route are labelled [`UNMATCHED`].
    pub fn label(self) -> &'static str {
        match self {
            Route::Session(ApiVersion::V3) => "session_v3",
            Route::Session(ApiVersion::V4) => "session_v4",
            Route::Session(ApiVersion::V5) => "session_v5",
            Route::VerifySession => "verify_session",
            Route::Logout => "logout",
            Route::User => "user",
            Route::UserList => "user_list",
            Route::File => "file",
        }
    }

    /// Matches a method and path; `None` is a 404.
    pub fn recognize(method: &Method, path: &str) -> Option<Route> {
        let rest = path.strip_prefix("/api/")?;
        let (version, rest) = rest.split_once('/')?;
        match (method, version, rest) {
            (&Method::POST, "v3", "sessions") => Some(Route::Session(ApiVersion::V3)),
            (&Method::POST, "v4", "sessions") => Some(Route::Session(ApiVersion::V4)),
            (&Method::POST, "v5", "sessions") => Some(Route::Session(ApiVersion::V5)),
            (&Method::GET, "v3", "sessions") => Some(Route::VerifySession),
            (&Method::DELETE, "v4", "sessions") => Some(Route::Logout),
            (&Method::GET, "v3", "users/list") => Some(Route::UserList),
            (&Method::GET, "v3", r) => {
                if let Some(id) = r.strip_prefix("users/") {
                    return single_segment(id).then_some(Route::User);
                }
                if let Some(id) = r.strip_prefix("files/") {
                    return single_segment(id).then_some(Route::File);
                }
                None
            }
            _ => None,
        }
    }
}

/// Label of requests that match no route.
pub const UNMATCHED: &str = "unmatched";

/// One path segment that stays one segment after percent-decoding: not empty, not `.` or
/// `..`, no `/` or backslash, raw or encoded. A hop that normalises paths could otherwise turn
/// `/api/v3/users/..` or `users/%2e%2e%2fsessions` into a route outside this table.
fn single_segment(s: &str) -> bool {
    if s.is_empty() || s.contains('/') {
        return false;
    }
    if !s.contains(['%', '.', '\\']) {
        return true;
    }
    let decoded = crate::wire::percent_decode(s, false);
    !(decoded == "." || decoded == ".." || decoded.contains(['/', '\\']))
}

/// One boxed policy chain per kind of route.
pub type RouteService<B> = BoxCloneSyncService<Request<B>, Response<Body>, BoxError>;

/// Dispatches to the policy chain of the matched route and records the [`Route`] in the
/// request's extensions. hyper-util clones the service for every request, so the chains sit
/// behind one `Arc` and only the chosen one is cloned, when it is called.
pub struct Router<B> {
    chains: Arc<Chains<B>>,
}

struct Chains<B> {
    session: RouteService<B>,
    lookup: RouteService<B>,
}

// Not derived: a derive would demand `B: Clone`, which request bodies are not.
impl<B> Clone for Router<B> {
    fn clone(&self) -> Self {
        Self {
            chains: self.chains.clone(),
        }
    }
}

impl<B> Router<B> {
    pub fn new(session: RouteService<B>, lookup: RouteService<B>) -> Self {
        Self {
            chains: Arc::new(Chains { session, lookup }),
        }
    }
}

impl<B> Service<Request<B>> for Router<B>
where
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = futures_util::future::Either<
        futures_util::future::Ready<Result<Response<Body>, BoxError>>,
        Oneshot<RouteService<B>, Request<B>>,
    >;

    /// Always ready: the chosen chain's own readiness is awaited by its [`Oneshot`].
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        use futures_util::future::{ready, Either};
        match Route::recognize(req.method(), req.uri().path()) {
            Some(route) => {
                req.extensions_mut().insert(route);
                // Before any policy runs, so what is validated and injected is what is sent.
                crate::layers::forward::strip_hop_by_hop(req.headers_mut());
                let chain = match route {
                    Route::Session(_) => &self.chains.session,
                    _ => &self.chains.lookup,
                };
                Either::Right(chain.clone().oneshot(req))
            }
            None => {
                let res = ApiError::NotFound.to_response(ErrorFormat::from_headers(req.headers()));
                Either::Left(ready(Ok(res)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let r = |m: Method, p: &str| Route::recognize(&m, p);
        assert_eq!(
            r(Method::POST, "/api/v3/sessions"),
            Some(Route::Session(ApiVersion::V3))
        );
        assert_eq!(
            r(Method::POST, "/api/v5/sessions"),
            Some(Route::Session(ApiVersion::V5))
        );
        assert_eq!(
            r(Method::GET, "/api/v3/sessions"),
            Some(Route::VerifySession)
        );
        assert_eq!(r(Method::DELETE, "/api/v4/sessions"), Some(Route::Logout));
        assert_eq!(r(Method::GET, "/api/v3/users/u-1"), Some(Route::User));
        assert_eq!(r(Method::GET, "/api/v3/users/list"), Some(Route::UserList));
        assert_eq!(r(Method::GET, "/api/v3/files/f-1"), Some(Route::File));
        assert_eq!(r(Method::GET, "/api/v3/users/john.doe"), Some(Route::User));
        assert_eq!(r(Method::GET, "/api/v3/users/a%20b"), Some(Route::User));
        for (m, p) in [
            (Method::GET, "/"),
            (Method::POST, "/api/v6/sessions"),
            (Method::PUT, "/api/v3/sessions"),
            (Method::POST, "/api/v3/sessions/visitor"),
            (Method::GET, "/api/v3/users/"),
            (Method::GET, "/api/v3/files/f-1/download"),
            (Method::POST, "/api/v3/users/u-1"),
            (Method::GET, "/api/v3/channels"),
            (Method::POST, "/api/v3/sessions/"),
            (Method::GET, "/api/v3/users/.."),
            (Method::GET, "/api/v3/users/."),
            (Method::GET, "/api/v3/users/%2e%2E"),
            (Method::GET, "/api/v3/files/a%2Fb"),
            (Method::GET, "/api/v3/files/a%5cb"),
            (Method::GET, "/api/v3/files/a\\b"),
        ] {
            assert_eq!(r(m.clone(), p), None, "{m} {p}");
        }
    }

    #[test]
    fn labels_are_distinct() {
        let mut labels: Vec<_> = Route::ALL.iter().map(|r| r.label()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), Route::ALL.len());
    }
}
