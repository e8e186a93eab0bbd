//! Rate limiting of session registration by the validated body's `deviceId` (and, when
//! configured, by client IP). Sits after validation, so the limiter never sees an unvalidated
//! id and a rejected body costs no budget; and before key injection, so a refused request is
//! never forwarded.
//!
//! Every response of a request that reached the limiter carries the IETF RateLimit fields:
//! `RateLimit-Policy: "session";q=10;w=60` (built once) and `RateLimit: "session";r=3;t=20`
//! (with an `"ip"` item when the per-IP limit is on and was consulted). A refusal is a 429 in
//! the envelope whose `Retry-After` equals the refusing policy's `t`. The decision goes into the
//! response's [`Outcome`] for the access log and metrics.
//!
//! The local backend decides synchronously and the inner future is only wrapped to stamp the
//! headers; the Redis backend must await its round trip, so only that path boxes.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{self, Either, Ready};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Request, Response};
use tower::{Layer, Service};

use crate::error::{ApiError, Body, BoxError, ErrorFormat};
use crate::layers::arrival::Arrival;
use crate::layers::forward::X_FORWARDED_FOR;
use crate::layers::lookup_cache::{OnResponse, OnResponseFuture};
use crate::layers::trace::Outcome;
use crate::ratelimit::{Decision, Key, RateLimiter, Standing};
use crate::session::SessionFacts;

pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// What every clone of the layer's service shares.
pub struct State {
    limiter: Arc<RateLimiter>,
    /// `RateLimit-Policy`, the same on every response.
    policy: HeaderValue,
}

#[derive(Clone)]
pub struct RateLimitLayer {
    state: Arc<State>,
}

impl RateLimitLayer {
    pub fn new(limiter: Arc<RateLimiter>) -> Self {
        let q = limiter.session_quota();
        let mut policy = format!("\"session\";q={};w={}", q.requests, q.window_secs());
        if let Some(ip) = limiter.per_ip_quota() {
            policy.push_str(&format!(
                ", \"ip\";q={};w={}",
                ip.requests,
                ip.window_secs()
            ));
        }
        // Digits, quotes, letters and punctuation only: always a valid header value.
        let policy = HeaderValue::from_maybe_shared(Bytes::from(policy))
            .unwrap_or_else(|_| HeaderValue::from_static("\"session\""));
        Self {
            state: Arc::new(State { limiter, policy }),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    state: Arc<State>,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

/// What an admitted request's response gets on its way out.
pub struct Stamp {
    decision: Decision,
    state: Arc<State>,
}

impl OnResponse for Stamp {
    fn on_response(self, res: &mut Response<Body>) {
        stamp(res, &self.state, &self.decision);
    }
}

/// Answered here (refused, or a wiring error); admitted by the local backend (the inner call,
/// whose response gets the fields); or the Redis backend's decision and inner call, boxed.
pub type RateLimitFuture<F> =
    Either<Ready<Result<Response<Body>, BoxError>>, Either<OnResponseFuture<F, Stamp>, BoxFuture>>;

impl<S, B> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = RateLimitFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some(facts) = req.extensions().get::<SessionFacts>() else {
            // Mounted only behind validation, which always leaves the facts: a wiring bug.
            return Either::Left(future::ready(Err(
                "rate limit reached without validated session facts".into(),
            )));
        };
        let limiter = &self.state.limiter;
        let ip = match limiter.per_ip_quota() {
            Some(_) => client_ip(
                req.headers(),
                req.extensions()
                    .get::<Arrival>()
                    .map(|a| a.peer.client.addr()),
                limiter.trusted_hops(),
            ),
            None => None,
        };
        if !limiter.is_remote() {
            let decision = limiter.decide_local(Key {
                device: &facts.device_id,
                ip,
            });
            if !decision.allowed {
                return Either::Left(future::ready(Ok(refusal(
                    req.headers(),
                    &self.state,
                    &decision,
                ))));
            }
            let stamp = Stamp {
                decision,
                state: self.state.clone(),
            };
            return Either::Right(Either::Left(OnResponseFuture::new(
                self.inner.call(req),
                Some(stamp),
            )));
        }
        let device = facts.device_id.clone();
        let state = self.state.clone();
        // Call the instance that was polled ready; leave a fresh clone in its place.
        let fresh = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, fresh);
        Either::Right(Either::Right(Box::pin(async move {
            let decision = state
                .limiter
                .decide(Key {
                    device: &device,
                    ip,
                })
                .await;
            if !decision.allowed {
                return Ok(refusal(req.headers(), &state, &decision));
            }
            let mut res = inner.call(req).await?;
            stamp(&mut res, &state, &decision);
            Ok(res)
        })))
    }
}

/// The 429 of a refused request, headers and outcome included.
fn refusal(headers: &HeaderMap, state: &State, decision: &Decision) -> Response<Body> {
    let err = ApiError::RateLimited {
        retry_after: decision.retry_after(),
    };
    let mut res = err.to_response(ErrorFormat::from_headers(headers));
    stamp(&mut res, state, decision);
    res
}

/// Adds the RateLimit fields and records the decision in the response's [`Outcome`], keeping
/// what inner layers put there.
fn stamp(res: &mut Response<Body>, state: &State, decision: &Decision) {
    let headers = res.headers_mut();
    headers.insert(RATELIMIT_POLICY.clone(), state.policy.clone());
    headers.insert(RATELIMIT.clone(), ratelimit_value(decision));
    Outcome::of(res).rate_limit = Some(decision.verdict().label());
}

/// `"session";r=<remaining>;t=<seconds>`, plus the `"ip"` item when it was consulted.
fn ratelimit_value(d: &Decision) -> HeaderValue {
    let item = |out: &mut String, name: &str, s: &Standing| {
        let mut n = itoa::Buffer::new();
        out.push('"');
        out.push_str(name);
        out.push_str("\";r=");
        out.push_str(n.format(s.remaining));
        out.push_str(";t=");
        out.push_str(n.format(s.reset_secs));
    };
    let mut v = String::with_capacity(64);
    item(&mut v, "session", &d.session);
    if let Some(ip) = &d.ip {
        v.push_str(", ");
        item(&mut v, "ip", ip);
    }
    HeaderValue::from_maybe_shared(Bytes::from(v))
        .unwrap_or_else(|_| HeaderValue::from_static("\"session\""))
}

/// The client IP the per-IP limit keys on: the peer address when no proxy is trusted;
/// otherwise the `trusted_hops`-th `x-forwarded-for` entry from the right (each trusted proxy
/// appended the address it saw), or the leftmost when fewer are present. An entry that is not
/// an address falls back to the peer. IPv6 clients are keyed by their /64 (one subscriber's
/// prefix, whose addresses a client can rotate at will); IPv4-mapped addresses as IPv4.
pub fn client_ip(
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    trusted_hops: usize,
) -> Option<IpAddr> {
    forwarded_ip(headers, peer, trusted_hops).map(limit_key)
}

fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

fn forwarded_ip(
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    trusted_hops: usize,
) -> Option<IpAddr> {
    let peer_ip = peer.map(|p| p.ip());
    if trusted_hops == 0 {
        return peer_ip;
    }
    // Split as bytes: one byte outside visible ASCII spoils its own entry (which then counts
    // as not an address), never the whole header and the entries the trusted proxies added.
    let entries = || {
        headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|e| !e.is_empty())
    };
    let count = entries().count();
    if count == 0 {
        return peer_ip;
    }
    entries()
        .nth(count.saturating_sub(trusted_hops))
        .and_then(|e| std::str::from_utf8(e).ok())
        .and_then(parse_addr)
        .or(peer_ip)
}

/// `1.2.3.4`, `2001:db8::1`, `[2001:db8::1]`, or either with a port.
fn parse_addr(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            s.strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse().ok())
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(&X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn one_odd_byte_spoils_only_its_own_forwarded_for_entry() {
        let peer = Some(SocketAddr::new("10.0.0.1".parse().unwrap(), 1));
        let mut h = HeaderMap::new();
        h.append(
            &X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"caf\xe9, 203.0.113.7").unwrap(),
        );
        assert_eq!(
            client_ip(&h, peer, 1),
            Some("203.0.113.7".parse().unwrap()),
            "the proxy's entry beside the odd one is still read"
        );
        assert_eq!(client_ip(&h, peer, 2), Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_and_mapped_v4_as_v4() {
        let peer = |s: &str| Some(SocketAddr::new(s.parse().unwrap(), 1));
        let h = HeaderMap::new();
        let a = client_ip(&h, peer("2001:db8:1:2:aaaa::1"), 0);
        let b = client_ip(&h, peer("2001:db8:1:2:bbbb::9"), 0);
        let c = client_ip(&h, peer("2001:db8:1:3::1"), 0);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, Some("2001:db8:1:2::".parse().unwrap()));
        assert_eq!(
            client_ip(&h, peer("::ffff:192.0.2.7"), 0),
            Some("192.0.2.7".parse().unwrap())
        );
    }

    #[test]
    fn client_ip_is_the_peer_unless_proxies_are_trusted() {
        let peer: SocketAddr = "10.0.0.9:5555".parse().unwrap();
        let h = xff(&["203.0.113.1, 198.51.100.2", "10.0.0.1"]);
        assert_eq!(client_ip(&h, Some(peer), 0), Some(peer.ip()));
        assert_eq!(client_ip(&h, Some(peer), 1), "10.0.0.1".parse().ok());
        assert_eq!(client_ip(&h, Some(peer), 2), "198.51.100.2".parse().ok());
        assert_eq!(client_ip(&h, Some(peer), 3), "203.0.113.1".parse().ok());
        // Fewer entries than trusted hops: the leftmost, written by a trusted proxy.
        assert_eq!(client_ip(&h, Some(peer), 9), "203.0.113.1".parse().ok());
        // Nothing forwarded, or garbage: the peer.
        assert_eq!(client_ip(&HeaderMap::new(), Some(peer), 1), Some(peer.ip()));
        assert_eq!(
            client_ip(&xff(&["not-an-ip"]), Some(peer), 1),
            Some(peer.ip())
        );
        assert_eq!(
            forwarded_ip(&xff(&["[2001:db8::1]:443"]), None, 1),
            "2001:db8::1".parse().ok()
        );
        assert_eq!(
            forwarded_ip(&xff(&["[2001:db8::2]"]), None, 1),
            "2001:db8::2".parse().ok()
        );
    }

    fn layered(
    ) -> impl Service<Request<Bytes>, Response = Response<Body>, Error = BoxError, Future: Unpin> + Clone
    {
        let config = crate::ratelimit::RateLimitFile {
            requests: 1,
            ..Default::default()
        }
        .resolve()
        .unwrap()
        .unwrap();
        let limiter = Arc::new(RateLimiter::new(&config).unwrap());
        RateLimitLayer::new(limiter).layer(tower::service_fn(|_req: Request<Bytes>| {
            let mut res = Response::new(Body::default());
            res.extensions_mut().insert(Outcome {
                upstream: Some(Duration::from_millis(250)),
                ..Outcome::default()
            });
            futures_util::future::ready(Ok::<_, BoxError>(res))
        }))
    }

    fn session(device: &str) -> Request<Bytes> {
        let mut req = Request::new(Bytes::new());
        req.extensions_mut().insert(SessionFacts {
            user_id: Some("u".into()),
            device_id: device.into(),
        });
        req
    }

    #[test]
    fn the_decision_joins_what_inner_layers_put_in_the_outcome() {
        use futures_util::FutureExt;
        use tower::ServiceExt;
        let svc = layered();
        let call = |req| svc.clone().oneshot(req).now_or_never().unwrap();
        let res = call(session("d")).unwrap();
        let outcome = res.extensions().get::<Outcome>().unwrap();
        assert_eq!(outcome.rate_limit, Some("allowed"));
        assert_eq!(outcome.upstream, Some(Duration::from_millis(250)));
        assert_eq!(res.headers()[&RATELIMIT_POLICY], "\"session\";q=1;w=60");
        let res = call(session("d")).unwrap();
        assert_eq!(res.status(), http::StatusCode::TOO_MANY_REQUESTS);
        let outcome = res.extensions().get::<Outcome>().unwrap();
        assert_eq!(outcome.rate_limit, Some("limited"));
        assert_eq!(outcome.upstream, None, "never forwarded");
        // Without validated facts nothing can be keyed: an error for the rescue layer.
        assert!(call(Request::new(Bytes::new())).is_err());
    }

    #[test]
    fn ratelimit_field_lists_the_consulted_policies() {
        let d = Decision {
            allowed: false,
            source: crate::ratelimit::Source::Local,
            session: Standing {
                remaining: 4,
                reset_secs: 0,
            },
            ip: Some(Standing {
                remaining: 0,
                reset_secs: 7,
            }),
        };
        assert_eq!(ratelimit_value(&d), "\"session\";r=4;t=0, \"ip\";r=0;t=7");
        assert_eq!(d.retry_after(), 7);
    }
}
