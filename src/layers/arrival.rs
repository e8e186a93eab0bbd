//! What the listener knows of a request as it arrives, put in its extensions as one value.
//!
//! Every `Extensions::insert` boxes its value, and the map itself grows by reallocation: one
//! extension carrying the connection's facts (shared, one `Arc`), the raw head's framing facts
//! and the arrival time costs one allocation where one per fact cost four, and the layers that
//! read them find them with one lookup.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::Request;
use tower::{Layer, Service};

use crate::layers::forward::ClientAddr;
use crate::layers::framing::HeadFacts;
use crate::layers::hold::Ledger;

/// The facts of one client connection, built once when it is accepted.
pub struct Peer {
    /// The client's address, its IP rendered for `x-forwarded-for`.
    pub client: ClientAddr,
    /// The connection's answers, watched by the send timeout (`layers::hold`).
    pub ledger: Arc<Ledger>,
}

impl Peer {
    pub fn new(client: ClientAddr) -> Self {
        Self {
            client,
            ledger: Arc::default(),
        }
    }
}

/// The request extension the listener adds to every request.
#[derive(Clone)]
pub struct Arrival {
    pub peer: Arc<Peer>,
    /// What the raw HTTP/1 head said about body framing (`None` over HTTP/2).
    pub head: Option<HeadFacts>,
    /// When the request's head had been read.
    pub at: Instant,
    /// When the whole request must have been answered: set by the policy chains
    /// ([`Arrival::answer_within`]), honoured by the upstream exchange. `None` on pass routes,
    /// which stream for as long as bytes move.
    pub deadline: Option<Instant>,
}

impl Arrival {
    pub fn new(peer: Arc<Peer>, head: Option<HeadFacts>) -> Self {
        Self {
            peer,
            head,
            at: Instant::now(),
            deadline: None,
        }
    }

    /// A request from a connection of its own from `addr` (tests and benches).
    pub fn from_client(addr: std::net::SocketAddr, head: Option<HeadFacts>) -> Self {
        Self::new(Arc::new(Peer::new(ClientAddr::new(addr))), head)
    }

    /// Sets the whole-request budget, counted from the arrival.
    pub fn answer_within(&mut self, budget: Duration) {
        self.deadline = Some(self.at + budget);
    }

    /// Takes `req`'s deadline out of its `Arrival`, for a caller that ends the client's wait
    /// itself while the exchange runs on (`layers::lookup_cache::detached`).
    pub fn take_deadline<B>(req: &mut Request<B>) -> Option<Instant> {
        req.extensions_mut()
            .get_mut::<Arrival>()
            .and_then(|a| a.deadline.take())
    }
}

/// The whole-request budget ran out (504, like an upstream timeout, but not counted as one:
/// the time may have gone on a slow body or a slow limiter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetElapsed;

impl std::fmt::Display for BudgetElapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request's time budget ran out")
    }
}

impl std::error::Error for BudgetElapsed {}

/// Whether the request's `deadline` ends a wait that would otherwise end at `own`, seen at
/// `now`: `Some` of it when it comes first, `None` when `own` does (or there is none), and
/// [`BudgetElapsed`] when it has already passed, so the wait must not begin at all.
pub fn deadline_first(
    deadline: Option<Instant>,
    now: Instant,
    own: Instant,
) -> Result<Option<Instant>, BudgetElapsed> {
    match deadline {
        Some(d) if d <= now => Err(BudgetElapsed),
        Some(d) if d < own => Ok(Some(d)),
        _ => Ok(None),
    }
}

/// Gives each request the whole-request budget of its policy chain
/// ([`Arrival::answer_within`]). It adds no future and no timer of its own: the body read and
/// the upstream exchange, the only places a policy request waits, each end at their own
/// deadline, and the upstream exchange also at this one ([`BudgetElapsed`] when it is this one
/// that ends it, and at once, unsent, when it has passed before the exchange begins). An
/// exchange whose answer the gateway learns from runs on past it in a task of its own; only the
/// client's wait ends (`layers::lookup_cache::detached`).
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    budget: Duration,
}

impl DeadlineLayer {
    pub fn new(budget: Duration) -> Self {
        Self { budget }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            budget: self.budget,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    budget: Duration,
}

impl<S, B> Service<Request<B>> for Deadline<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(arrival) = req.extensions_mut().get_mut::<Arrival>() {
            arrival.answer_within(self.budget);
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_deadline_ends_a_wait_only_when_it_comes_first() {
        let now = Instant::now();
        let own = now + Duration::from_secs(10);
        let early = now + Duration::from_secs(3);
        assert_eq!(deadline_first(Some(early), now, own), Ok(Some(early)));
        assert_eq!(deadline_first(Some(own), now, own), Ok(None));
        assert_eq!(deadline_first(None, now, own), Ok(None));
        assert_eq!(deadline_first(Some(now), now, own), Err(BudgetElapsed));
    }
}
