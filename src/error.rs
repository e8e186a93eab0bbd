//! Every response the gateway makes itself, in the upstream's error envelope.
//!
//! There is exactly one mapping from a failure to a response: [`ApiError::to_response`].
//! Client-caused rejections are built by the layer that detects them and returned as
//! `Ok(response)`; infrastructure failures travel up as [`GatewayError`] to the rescue layer,
//! which turns them into an [`ApiError`] here. The mapping never includes a secret: details are
//! fixed strings or JSON pointers chosen by the gateway, never echoed header values or tokens.

use std::borrow::Cow;
use std::fmt;

use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Response, StatusCode};

pub use crate::body::Body;

/// Errors that cross layer boundaries as `Err`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// One violated rule of a request body, located by a JSON pointer (RFC 6901).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// JSON pointer into the request body, e.g. `/deviceInfo/kind`.
    pub pointer: Cow<'static, str>,
    /// What is wrong, phrased for the client, e.g. `length must be 1 to 50`.
    pub detail: Cow<'static, str>,
}

impl Violation {
    pub fn new(
        pointer: impl Into<Cow<'static, str>>,
        detail: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            pointer: pointer.into(),
            detail: detail.into(),
        }
    }
}

/// A failure the gateway answers itself, in the upstream's envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 422: the body is well-formed JSON but breaks the contract; every violation is listed.
    Invalid(Vec<Violation>),
    /// 400: malformed JSON, a non-object body, a bad query.
    BadRequest(Cow<'static, str>),
    /// 415: not `application/json`.
    UnsupportedMediaType(Cow<'static, str>),
    /// 408: the client did not send its body within `server.body_read_timeout_ms`.
    RequestTimeout,
    /// 413: the body exceeds `limits.max_body_bytes`.
    PayloadTooLarge { limit: usize },
    /// 414: the request target is longer than `server.max_uri_bytes`.
    UriTooLong { limit: usize },
    /// 431: the request head is larger than `server.max_header_bytes`.
    HeadersTooLarge { limit: usize },
    /// 404: the route is not served by this gateway.
    NotFound,
    /// 403: refused by policy (a browser origin that is not allowed on a key-carrying route).
    Forbidden(Cow<'static, str>),
    /// 429: the per-device (or per-IP) budget is spent; `retry_after` in seconds.
    RateLimited { retry_after: u64 },
    /// 502: the upstream could not be reached or answered garbage.
    BadGateway(Cow<'static, str>),
    /// 504: the upstream did not answer in time.
    GatewayTimeout,
    /// 503: the gateway sheds load or is draining.
    Overloaded { retry_after: u64 },
    /// 500: a bug; the detail is generic on purpose.
    Internal,
}

/// How a client wants errors rendered, chosen from its `Accept` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorFormat {
    /// The upstream's `{"status":"error","code":…}` envelope (what the SDKs parse).
    #[default]
    Envelope,
    /// RFC 9457 problem details, for clients that ask for `application/problem+json`.
    Problem,
}

impl ErrorFormat {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        const PROBLEM: &[u8] = b"application/problem+json";
        let wants_problem = headers.get_all(http::header::ACCEPT).iter().any(|v| {
            v.as_bytes()
                .windows(PROBLEM.len())
                .any(|w| w.eq_ignore_ascii_case(PROBLEM))
        });
        if wants_problem {
            ErrorFormat::Problem
        } else {
            ErrorFormat::Envelope
        }
    }
}

static JSON: HeaderValue = HeaderValue::from_static("application/json");
static PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ApiError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The upstream's numeric error code for this case.
    pub fn code(&self) -> u32 {
        match self {
            ApiError::Invalid(_) => 500000,
            ApiError::BadRequest(_)
            | ApiError::UnsupportedMediaType(_)
            | ApiError::RequestTimeout
            | ApiError::PayloadTooLarge { .. }
            | ApiError::UriTooLong { .. }
            | ApiError::HeadersTooLarge { .. } => 400000,
            ApiError::NotFound => 400400,
            ApiError::Forbidden(_) => 400300,
            ApiError::RateLimited { .. } => 400311,
            ApiError::BadGateway(_)
            | ApiError::GatewayTimeout
            | ApiError::Overloaded { .. }
            | ApiError::Internal => 500000,
        }
    }

    /// The upstream's message for this case.
    pub fn message(&self) -> &'static str {
        match self {
            ApiError::Invalid(_) => "Parameters validation error!",
            ApiError::BadRequest(_)
            | ApiError::UnsupportedMediaType(_)
            | ApiError::RequestTimeout
            | ApiError::PayloadTooLarge { .. }
            | ApiError::UriTooLong { .. }
            | ApiError::HeadersTooLarge { .. } => "Bad Request.",
            ApiError::NotFound => "Not Found.",
            ApiError::Forbidden(_) => "Forbidden error.",
            ApiError::RateLimited { .. } => "RateLimit Exceed.",
            ApiError::BadGateway(_) => "Bad Gateway.",
            ApiError::GatewayTimeout => "Gateway Timeout.",
            ApiError::Overloaded { .. } => "Service Unavailable.",
            ApiError::Internal => "Internal Server Error.",
        }
    }

    /// The violations (422) or the one detail line of any other case.
    fn details(&self) -> Vec<Violation> {
        let one = |d: Cow<'static, str>| {
            vec![Violation {
                pointer: Cow::Borrowed(""),
                detail: d,
            }]
        };
        match self {
            ApiError::Invalid(v) => v.clone(),
            ApiError::BadRequest(d) | ApiError::BadGateway(d) | ApiError::Forbidden(d) => {
                one(d.clone())
            }
            ApiError::UnsupportedMediaType(d) => one(d.clone()),
            ApiError::RequestTimeout => one("request body not received in time".into()),
            ApiError::PayloadTooLarge { limit } => {
                one(format!("body must be at most {limit} bytes").into())
            }
            ApiError::UriTooLong { limit } => {
                one(format!("request target must be at most {limit} bytes").into())
            }
            ApiError::HeadersTooLarge { limit } => {
                one(format!("request headers must be at most {limit} bytes").into())
            }
            ApiError::NotFound => one("route not served by this gateway".into()),
            ApiError::RateLimited { retry_after } => {
                one(format!("retry after {retry_after} s").into())
            }
            ApiError::GatewayTimeout => one("upstream did not answer in time".into()),
            ApiError::Overloaded { .. } => one("gateway is overloaded, retry later".into()),
            ApiError::Internal => one("internal error".into()),
        }
    }

    /// Renders the error in the format the client asked for. The one mapping of the gateway.
    pub fn to_response(&self, format: ErrorFormat) -> Response<Body> {
        let status = self.status();
        let details = self.details();
        let body = match format {
            ErrorFormat::Envelope => {
                let detail: Vec<serde_json::Value> = details
                    .iter()
                    .map(|v| {
                        if v.pointer.is_empty() {
                            serde_json::Value::String(v.detail.to_string())
                        } else {
                            serde_json::json!({"pointer": v.pointer, "detail": v.detail})
                        }
                    })
                    .collect();
                serde_json::json!({
                    "status": "error",
                    "code": self.code(),
                    "message": self.message(),
                    "data": {"detail": detail},
                })
            }
            ErrorFormat::Problem => {
                let mut p = serde_json::json!({
                    "type": "about:blank",
                    "title": self.message(),
                    "status": status.as_u16(),
                    "code": self.code(),
                    "detail": details.iter().map(|v| v.detail.as_ref()).collect::<Vec<_>>().join("; "),
                });
                if let ApiError::Invalid(v) = self {
                    p["errors"] = v
                        .iter()
                        .map(|v| serde_json::json!({"pointer": v.pointer, "detail": v.detail}))
                        .collect();
                }
                p
            }
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut res = Response::new(Body::from(bytes));
        *res.status_mut() = status;
        let ct = match format {
            ErrorFormat::Envelope => JSON.clone(),
            ErrorFormat::Problem => PROBLEM_JSON.clone(),
        };
        res.headers_mut().insert(CONTENT_TYPE, ct);
        match self {
            ApiError::RateLimited { retry_after } | ApiError::Overloaded { retry_after } => {
                res.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            _ => {}
        }
        res
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message(), self.status())
    }
}

/// Infrastructure failures: they travel up the stack as `Err` to the rescue layer.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("upstream connect failed")]
    UpstreamConnect(#[source] BoxError),
    #[error("upstream timed out")]
    UpstreamTimeout,
    #[error("upstream protocol error")]
    UpstreamProtocol(#[source] BoxError),
    #[error("upstream response too large")]
    UpstreamTooLarge,
}

impl GatewayError {
    /// Bounded label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            GatewayError::UpstreamConnect(_) => "connect",
            GatewayError::UpstreamTimeout => "timeout",
            GatewayError::UpstreamProtocol(_) | GatewayError::UpstreamTooLarge => "protocol",
        }
    }
}

/// Maps any error that reached the rescue layer. Unknown errors are a 500 with a generic detail.
pub fn rescue(err: &BoxError) -> ApiError {
    if err.is::<crate::layers::arrival::BudgetElapsed>() {
        return ApiError::GatewayTimeout;
    }
    if let Some(e) = err.downcast_ref::<GatewayError>() {
        return match e {
            GatewayError::UpstreamConnect(_) => ApiError::BadGateway("upstream unreachable".into()),
            GatewayError::UpstreamProtocol(_) => {
                ApiError::BadGateway("upstream answered with an invalid response".into())
            }
            GatewayError::UpstreamTooLarge => {
                ApiError::BadGateway("upstream response too large".into())
            }
            GatewayError::UpstreamTimeout => ApiError::GatewayTimeout,
        };
    }
    ApiError::Internal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_details_only_for_clients_that_ask_in_any_letter_case() {
        let format = |accept: &[&'static str]| {
            let mut h = HeaderMap::new();
            for a in accept {
                h.append(http::header::ACCEPT, HeaderValue::from_static(a));
            }
            ErrorFormat::from_headers(&h)
        };
        assert_eq!(format(&[]), ErrorFormat::Envelope);
        assert_eq!(format(&["application/json"]), ErrorFormat::Envelope);
        assert_eq!(format(&["application/problem"]), ErrorFormat::Envelope);
        assert_eq!(
            format(&["text/html", "Application/Problem+JSON;q=0.9"]),
            ErrorFormat::Problem
        );
        assert_eq!(
            format(&["application/json, application/problem+json"]),
            ErrorFormat::Problem
        );
    }
}
