//! Validation of session bodies: parse once, check every rule, report every violation at once.
//! A valid body's [`SessionFacts`] go into the request's extensions, so no later layer parses
//! again; the original bytes travel on unchanged.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::{self, Either, Ready};
use http::{Request, Response};
use tower::{Layer, Service};

use crate::error::{ApiError, Body, BoxError, ErrorFormat};
use crate::routes::{Matched, Route, RouteLabel};
use crate::session::{self, ApiVersion, Rules, Schema};

/// Called with each rejected body, e.g. to count failures per field.
pub type OnReject = Arc<dyn Fn(RouteLabel, &ApiError) + Send + Sync>;

#[derive(Clone)]
pub struct ValidateLayer {
    rules: Rules,
    on_reject: Option<OnReject>,
}

impl ValidateLayer {
    pub fn new(rules: Rules) -> Self {
        Self {
            rules,
            on_reject: None,
        }
    }

    pub fn on_reject(mut self, f: OnReject) -> Self {
        self.on_reject = Some(f);
        self
    }
}

impl<S> Layer<S> for ValidateLayer {
    type Service = Validate<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Validate {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Validate<S> {
    inner: S,
    layer: ValidateLayer,
}

impl<S> Service<Request<Bytes>> for Validate<S>
where
    S: Service<Request<Bytes>, Response = Response<Body>, Error = BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Either<Ready<Result<Response<Body>, BoxError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Bytes>) -> Self::Future {
        let matched = req.extensions().get::<Matched>().copied();
        let schema = match matched.map(|m| m.route) {
            Some(Route::VisitorSession) => Schema::Visitor,
            Some(Route::Session(v)) => Schema::Session(v),
            // Only session routes carry this layer; anything else is a wiring bug.
            _ => Schema::Session(ApiVersion::V3),
        };
        match session::validate(schema, req.body(), &self.layer.rules) {
            Ok(facts) => {
                req.extensions_mut().insert(facts);
                Either::Right(self.inner.call(req))
            }
            Err(err) => {
                if let Some(f) = &self.layer.on_reject {
                    let label = matched.map_or(RouteLabel::UNMATCHED, |m| m.label);
                    f(label, &err);
                }
                let res = err.to_response(ErrorFormat::from_headers(req.headers()));
                Either::Left(future::ready(Ok(res)))
            }
        }
    }
}
