//! The route table ([`table`]) and the router that sends each request to its route's policy
//! chain. Everything the table does not name is a 404 in the upstream's envelope, never
//! forwarded, so the gateway cannot be used to reach anything but its configured upstream's API,
//! and the injected key is attached only where a `session` route says so.

pub mod label;
pub mod table;

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request, Response};
use tower::util::{BoxCloneSyncService, Oneshot};
use tower::Service;

use crate::error::{ApiError, Body, BoxError, ErrorFormat};
use crate::live::call_ready;
use crate::session::ApiVersion;

pub use label::{RouteLabel, UNMATCHED};
pub use table::{Matched, PassLimits, RouteTable};

/// What a route does with a request: its policy, with the option that policy needs. Layers read
/// it from the request's extensions; the route's name (its label) travels beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// `POST /api/v{3,4,5}/sessions`: validated by that version's contract, key injected.
    Session(ApiVersion),
    /// `POST /api/v5/sessions/visitor`: the visitor contract, key injected.
    VisitorSession,
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
    /// Forwarded as sent, streamed; never carries the injected key.
    Pass,
    /// Refused with a 404, never forwarded.
    Deny,
}

impl Route {
    /// The policy's name, as the config spells it.
    pub fn policy(self) -> &'static str {
        match self {
            Route::Session(_) | Route::VisitorSession => "session",
            Route::VerifySession | Route::Logout | Route::User | Route::UserList | Route::File => {
                "lookup"
            }
            Route::Pass => "pass",
            Route::Deny => "deny",
        }
    }

    /// The policy with its option, as the config spells them: `session v5`, `lookup user`.
    pub fn describe(self) -> &'static str {
        match self {
            Route::Session(ApiVersion::V3) => "session v3",
            Route::Session(ApiVersion::V4) => "session v4",
            Route::Session(ApiVersion::V5) => "session v5",
            Route::VisitorSession => "session visitor",
            Route::VerifySession => "lookup verify_session",
            Route::Logout => "lookup logout",
            Route::User => "lookup user",
            Route::UserList => "lookup user_list",
            Route::File => "lookup file",
            Route::Pass => "pass",
            Route::Deny => "deny",
        }
    }

    /// The one method a policy route serves (`None`: whatever the route's `methods` say).
    pub fn fixed_method(self) -> Option<Method> {
        match self {
            Route::Session(_) | Route::VisitorSession => Some(Method::POST),
            Route::VerifySession | Route::User | Route::UserList | Route::File => Some(Method::GET),
            Route::Logout => Some(Method::DELETE),
            Route::Pass | Route::Deny => None,
        }
    }

    /// Whether the gateway's key is attached to requests on this route.
    pub fn injects_key(self) -> bool {
        matches!(self, Route::Session(_) | Route::VisitorSession)
    }
}

/// One boxed policy chain per kind of route.
pub type RouteService<B> = BoxCloneSyncService<Request<B>, Response<Body>, BoxError>;

/// The policy chains the router dispatches to.
pub struct Chains<B> {
    pub session: RouteService<B>,
    pub lookup: RouteService<B>,
    pub pass: RouteService<B>,
}

// Not derived: a derive would demand `B: Clone`, which request bodies are not.
impl<B> Clone for Chains<B> {
    fn clone(&self) -> Self {
        Self {
            session: self.session.clone(),
            lookup: self.lookup.clone(),
            pass: self.pass.clone(),
        }
    }
}

/// Dispatches to the policy chain of the matched route. The trace layer matches the table once
/// per request and leaves a [`Matched`] in the extensions; the router matches only when it
/// finds none (a stack built without the trace layer). Each connection runs requests on a copy
/// of its own (`live::Live`), so the chains are cloned once per connection and a request is
/// called on its chain in place ([`call_ready`]).
pub struct Router<B> {
    table: Arc<RouteTable>,
    chains: Chains<B>,
}

// Not derived, as for [`Chains`].
impl<B> Clone for Router<B> {
    fn clone(&self) -> Self {
        Self {
            table: self.table.clone(),
            chains: self.chains.clone(),
        }
    }
}

impl<B> Router<B> {
    pub fn new(table: RouteTable, chains: Chains<B>) -> Self {
        Self {
            table: Arc::new(table),
            chains,
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
        futures_util::future::Either<
            <RouteService<B> as Service<Request<B>>>::Future,
            Oneshot<RouteService<B>, Request<B>>,
        >,
    >;

    /// Always ready: the chosen chain's own readiness is settled when it is called
    /// ([`call_ready`]).
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        use futures_util::future::{ready, Either};
        let Self { table, chains } = self;
        // Matched once, by the trace layer, when it is there; the match then travels on.
        let (matched, found) = match req.extensions().get::<Matched>() {
            Some(m) => (Some(*m), true),
            None => (table.matches(req.method(), req.uri().path()), false),
        };
        let chain = match matched.map(|m| m.route) {
            None | Some(Route::Deny) => {
                let res = ApiError::NotFound.to_response(ErrorFormat::from_headers(req.headers()));
                return Either::Left(ready(Ok(res)));
            }
            Some(Route::Session(_) | Route::VisitorSession) => &mut chains.session,
            Some(Route::Pass) => &mut chains.pass,
            Some(_) => &mut chains.lookup,
        };
        if let Some(m) = matched {
            if m.route == Route::Pass {
                // Read before the hop-by-hop headers that carry it go.
                if let Some(u) =
                    crate::layers::pass::requested_upgrade(req.version(), req.headers())
                {
                    req.extensions_mut().insert(u);
                }
            }
            if !found {
                req.extensions_mut().insert(m);
            }
        }
        // Before any policy runs, so what is validated and injected is what is sent.
        crate::layers::forward::strip_hop_by_hop(req.headers_mut());
        Either::Right(call_ready(chain, req))
    }
}
