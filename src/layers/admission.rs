//! Admission: a slot for upstream work, taken only once the request is whole.
//!
//! The limit used to wrap the router, so a request held its slot while its body was still (not)
//! arriving: a few connections opening many streams that declare a body and never send it
//! could take every slot, and every other client got 503. Placed right under the body layer,
//! a slot is held only by requests that are ready for the upstream; slow bodies are bounded by
//! the body layer's minimum data rate instead, and connections and streams by the listener.
//!
//! Over the limit the answer is 503 in the envelope at once (no queue), counted in
//! [`Refusals`] under `concurrency`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use crate::error::{ApiError, Body, ErrorFormat};
use crate::layers::guarded::Guarded;

/// Why the gateway refused work before doing it; the `reason` label of
/// `gateway_refusals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No upstream slot free (`server.max_concurrency`).
    Concurrency,
    /// An HTTP/2 connection already had `server.max_streams_per_connection` requests in progress.
    Streams,
    /// `server.max_connections` connections were open.
    Connections,
    /// `server.max_connections_per_ip` connections were open from the client's address.
    ConnectionsPerIp,
    /// Answers already held `server.answer_budget_bytes` (`layers::hold`).
    AnswerBudget,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::Concurrency,
        Refusal::Streams,
        Refusal::Connections,
        Refusal::ConnectionsPerIp,
        Refusal::AnswerBudget,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::Concurrency => "concurrency",
            Refusal::Streams => "streams",
            Refusal::Connections => "connections",
            Refusal::ConnectionsPerIp => "connections_per_ip",
            Refusal::AnswerBudget => "answer_budget",
        }
    }
}

/// What the listener and the admission and hold layers count: refusals, failed accepts,
/// connections closed for a stalled answer, and the bytes of answers held. Plain atomics on
/// the request path, copied into the metrics at scrape time.
#[derive(Debug, Default)]
pub struct Refusals {
    counts: [AtomicU64; Refusal::ALL.len()],
    accept_errors: AtomicU64,
    send_stalls: AtomicU64,
    held: AtomicUsize,
}

impl Refusals {
    pub fn refused(&self, why: Refusal) {
        self.counts[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self, why: Refusal) -> u64 {
        self.counts[why as usize].load(Ordering::Relaxed)
    }

    /// An `accept` that failed (out of file descriptors and the like).
    pub fn accept_failed(&self) {
        self.accept_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn accept_errors(&self) -> u64 {
        self.accept_errors.load(Ordering::Relaxed)
    }

    /// A connection closed because an answer stopped moving (`layers::hold`).
    pub fn send_stalled(&self) {
        self.send_stalls.fetch_add(1, Ordering::Relaxed);
    }

    pub fn send_stalls(&self) -> u64 {
        self.send_stalls.load(Ordering::Relaxed)
    }

    /// Adds `n` bytes to those held if the total stays within `limit`.
    pub fn try_hold(&self, n: usize, limit: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n).filter(|&t| t <= limit)
            })
            .is_ok()
    }

    /// Gives back `n` bytes taken by [`Refusals::try_hold`].
    pub fn release(&self, n: usize) {
        if n > 0 {
            self.held.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Bytes of answers held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// One budget of upstream slots, shared by every route chain it is placed in.
#[derive(Clone)]
pub struct AdmissionLayer {
    slots: Arc<Semaphore>,
    refusals: Arc<Refusals>,
}

impl AdmissionLayer {
    pub fn new(max_concurrency: usize, refusals: Arc<Refusals>) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max_concurrency.min(Semaphore::MAX_PERMITS))),
            refusals,
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    layer: AdmissionLayer,
}

impl<S, B> Service<Request<B>> for Admission<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Guarded<S::Future, OwnedSemaphorePermit>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Ok(slot) = self.layer.slots.clone().try_acquire_owned() else {
            self.layer.refusals.refused(Refusal::Concurrency);
            let res = ApiError::Overloaded { retry_after: 1 }
                .to_response(ErrorFormat::from_headers(req.headers()));
            return Guarded::now(res);
        };
        Guarded::later(self.inner.call(req), slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn over_the_limit_is_503_and_counted() {
        let refusals = Arc::new(Refusals::default());
        let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
        let inner = tower::service_fn(move |_req: Request<()>| {
            let mut gate = gate_rx.clone();
            async move {
                let _ = gate.wait_for(|open| *open).await;
                Ok::<_, std::convert::Infallible>(Response::new(Body::default()))
            }
        });
        let svc = AdmissionLayer::new(1, refusals.clone()).layer(inner);
        // `call` takes the slot at once; the answer waits on the gate.
        let held = svc.clone().call(Request::new(()));
        let refused = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(refused.status(), 503);
        assert_eq!(refused.headers()["retry-after"], "1");
        assert_eq!(refusals.count(Refusal::Concurrency), 1);
        gate_tx.send(true).unwrap();
        assert_eq!(held.await.unwrap().status(), 200);
        let res = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.status(), 200, "the slot is free again");
    }
}
