//! Answers on their way to the client: a byte budget for the ones held in memory, and a watch
//! on every one, so clients that stop reading cannot pin them.
//!
//! An answer stays in memory until the client has taken it. Policy routes buffer the
//! upstream's answer (up to `upstream.max_response_bytes`), and an HTTP/2 client that opens
//! many streams and never grants window would otherwise pin one whole answer per stream, with
//! no bound. So:
//!
//! - **Budget.** A complete answer is let out only within `server.answer_budget_bytes` of
//!   answers held at once, across every connection; past it the answer is dropped and the
//!   client gets 503 in the envelope, counted as `gateway_refusals_total{reason=
//!   "answer_budget"}`. The bytes are given back when the last piece of the answer is freed,
//!   wherever it is by then (this body, hyper's write buffer, the HTTP/2 send queue): every
//!   chunk handed on owns a share of the lease ([`Bytes::from_owner`]), so the count is the
//!   memory actually held, not what the body still has. Cache hits count although their
//!   bytes are shared with the cache: the budget bounds what answers may hold.
//! - **Watch.** Answers are handed on in chunks of at most [`CHUNK`] bytes, and each chunk
//!   must be taken on within `server.send_timeout_ms`: the next one asked for, or, for the
//!   last, freed. The listener's [`Sweeper`] looks at every connection's [`Ledger`] each
//!   quarter of that and ends the task of a connection holding a chunk older than it, which
//!   closes the connection and every stream it carries: hyper owns the HTTP/2 send stream and
//!   gives the gateway no way to reset one stream of an answer in progress. A client must thus
//!   read at least [`CHUNK`] bytes per send timeout of every answer it has asked for. Counted
//!   as `gateway_send_stalls_total`. The sweeper is one task for all connections, so a
//!   request pays for no timer and its connection task polls nothing more.
//!
//! Streamed answers (pass routes) hold no lease, since at most a chunk of each is in memory,
//! but are watched the same way; waiting on the upstream is not a stall, only a chunk the
//! client does not take.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use coarsetime::Instant;
use http::{Request, Response};
use http_body::{Body as _, Frame, SizeHint};
use tokio::task::AbortHandle;
use tower::{Layer, Service};

use crate::error::{ApiError, Body, BoxError, ErrorFormat};
use crate::layers::admission::{Refusal, Refusals};
use crate::layers::arrival::{Arrival, Peer};

/// Largest chunk handed on at once: the unit of progress the watch sees.
pub const CHUNK: usize = 64 * 1024;

/// One answer on its way out: its lease on the budget, and when its last chunk was handed on.
/// Dropped (the lease given back) once the body and every chunk of it are freed.
pub struct Answer {
    leased: usize,
    counts: Arc<Refusals>,
    /// The coarse monotonic clock's ticks (a few milliseconds' resolution, read without a
    /// system call) when a chunk was handed on that has not been taken on since; 0 while the
    /// sender is asking for more.
    handed: AtomicU64,
}

impl Answer {
    fn new(leased: usize, counts: Arc<Refusals>) -> Arc<Self> {
        Arc::new(Self {
            leased,
            counts,
            handed: AtomicU64::new(0),
        })
    }

    fn asked(&self) {
        self.handed.store(0, Ordering::Relaxed);
    }

    fn handed(&self) {
        let now = Instant::now_without_cache_update().as_ticks();
        self.handed.store(now.max(1), Ordering::Relaxed);
    }

    /// How long a chunk has waited to be taken on, as of `now`.
    fn waiting(&self, now: Instant) -> Duration {
        match self.handed.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            t => now.as_ticks().checked_sub(t).map_or(Duration::ZERO, |d| {
                coarsetime::Duration::from_ticks(d).into()
            }),
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.counts.release(self.leased);
    }
}

/// A chunk handed on: its bytes, and a share of its answer, freed with it.
struct Piece {
    bytes: Bytes,
    _answer: Arc<Answer>,
}

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// The answers of one connection, for the [`Sweeper`]. Each request names it in its
/// [`Arrival`].
#[derive(Default)]
pub struct Ledger {
    answers: Mutex<Vec<Weak<Answer>>>,
}

impl Ledger {
    fn watch(&self, answer: &Arc<Answer>) {
        let mut answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget freed answers before growing: amortised O(1) a watch, the list bounded by the
        // answers alive at once.
        if answers.len() == answers.capacity() {
            answers.retain(|a| a.strong_count() > 0);
        }
        answers.push(Arc::downgrade(answer));
    }

    /// The longest any answer of the connection has waited for its client, freed ones
    /// forgotten; `None` when none is left.
    fn longest_wait(&self, now: Instant) -> Option<Duration> {
        let mut answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        answers.retain(|a| a.strong_count() > 0);
        answers
            .iter()
            .filter_map(Weak::upgrade)
            .map(|a| a.waiting(now))
            .max()
    }
}

/// One task per listener watching every connection's answers: a connection holding a chunk
/// its client has not taken for the send timeout has its task ended (its connection closed,
/// every stream with it), checked every quarter of the timeout.
pub struct Sweeper {
    timeout: Duration,
    conns: Mutex<Vec<(Weak<Ledger>, AbortHandle)>>,
}

impl Sweeper {
    pub fn new(timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            timeout,
            conns: Mutex::new(Vec::new()),
        })
    }

    /// Watches the connection whose answers `ledger` lists, served by the task `task`.
    pub fn watch(&self, ledger: &Arc<Ledger>, task: AbortHandle) {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        if conns.len() == conns.capacity() {
            conns.retain(|(l, _)| l.strong_count() > 0);
        }
        conns.push((Arc::downgrade(ledger), task));
    }

    /// Ends the tasks of stalled connections; returns how many.
    pub fn sweep(&self) -> usize {
        let now = Instant::now_without_cache_update();
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        conns.retain(|(l, _)| l.strong_count() > 0);
        let mut ended = 0;
        for (ledger, task) in conns.iter() {
            let stalled = ledger
                .upgrade()
                .and_then(|l| l.longest_wait(now))
                .is_some_and(|w| w >= self.timeout);
            if stalled && !task.is_finished() {
                task.abort();
                ended += 1;
            }
        }
        ended
    }

    /// Sweeps until dropped (the listener aborts it), counting each stall in `counts`.
    pub async fn run(self: Arc<Self>, counts: Arc<Refusals>) {
        let tick = (self.timeout / 4).max(Duration::from_millis(5));
        loop {
            tokio::time::sleep(tick).await;
            for _ in 0..self.sweep() {
                counts.send_stalled();
                tracing::debug!(
                    "an answer was not taken within the send timeout; connection closed"
                );
            }
        }
    }
}

/// A body handed on in watched chunks; see the module doc.
pub struct Sending {
    inner: Body,
    /// The rest of the frame being handed on.
    pending: Bytes,
    answer: Arc<Answer>,
}

impl Sending {
    /// The bytes not yet handed on, when they are all in hand (a complete answer).
    pub fn bytes(&self) -> Option<&Bytes> {
        (self.inner.is_end_stream() && self.inner.bytes().is_some()).then_some(&self.pending)
    }

    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.answer.asked();
        while self.pending.is_empty() {
            match futures_util::ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.pending = data,
                    Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                },
                end => return Poll::Ready(end),
            }
        }
        let chunk = if self.pending.len() > CHUNK {
            self.pending.split_to(CHUNK)
        } else {
            std::mem::take(&mut self.pending)
        };
        self.answer.handed();
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_owner(Piece {
            bytes: chunk,
            _answer: self.answer.clone(),
        })))))
    }

    pub fn is_end_stream(&self) -> bool {
        self.pending.is_empty() && self.inner.is_end_stream()
    }

    pub fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let held = self.pending.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + held);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}

/// Puts answers under the budget and the watch; see the module doc.
#[derive(Clone)]
pub struct HoldLayer {
    budget: usize,
    counts: Arc<Refusals>,
}

impl HoldLayer {
    /// `budget` bytes of answers held at once, counted in `counts` (shared by every stack the
    /// process builds, so a reload keeps the bytes already held).
    pub fn new(budget: usize, counts: Arc<Refusals>) -> Self {
        Self { budget, counts }
    }

    /// `res` with its body under the budget and the watch of its connection's `ledger`, or 503
    /// if the budget cannot take it.
    fn hold(
        &self,
        res: Response<Body>,
        ledger: Option<&Ledger>,
        format: ErrorFormat,
    ) -> Response<Body> {
        let held = match res.body().bytes() {
            Some(b) if b.is_empty() => return res,
            Some(b) => b.len(),
            None => 0,
        };
        if held > 0 && !self.counts.try_hold(held, self.budget) {
            self.counts.refused(Refusal::AnswerBudget);
            return ApiError::Overloaded { retry_after: 1 }.to_response(format);
        }
        let answer = Answer::new(held, self.counts.clone());
        if let Some(ledger) = ledger {
            ledger.watch(&answer);
        }
        res.map(|inner| {
            let (inner, pending) = match inner.into_bytes() {
                Ok(bytes) => (Body::empty(), bytes),
                Err(stream) => (stream, Bytes::new()),
            };
            Body::sending(Sending {
                inner,
                pending,
                answer,
            })
        })
    }
}

impl<S> Layer<S> for HoldLayer {
    type Service = Hold<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Hold {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Hold<S> {
    inner: S,
    layer: HoldLayer,
}

impl<S, B> Service<Request<B>> for Hold<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = HoldFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let peer = req.extensions().get::<Arrival>().map(|a| a.peer.clone());
        let format = ErrorFormat::from_headers(req.headers());
        HoldFuture {
            inner: self.inner.call(req),
            hold: Some((self.layer.clone(), peer, format)),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct HoldFuture<F> {
        #[pin]
        inner: F,
        hold: Option<(HoldLayer, Option<Arc<Peer>>, ErrorFormat)>,
    }
}

impl<F> Future for HoldFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(res) = futures_util::ready!(this.inner.poll(cx));
        Poll::Ready(Ok(match this.hold.take() {
            Some((layer, peer, format)) => {
                layer.hold(res, peer.as_ref().map(|p| &*p.ledger), format)
            }
            None => res,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::forward::ClientAddr;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn answering(
        body: fn() -> Body,
    ) -> impl Service<Request<()>, Response = Response<Body>, Error = Infallible, Future: Send> + Clone
    {
        tower::service_fn(move |_req: Request<()>| async move { Ok(Response::new(body())) })
    }

    fn big() -> Body {
        Body::from(vec![7u8; 3 * CHUNK + 5])
    }

    fn watched(ledger: &Arc<Ledger>) -> Request<()> {
        let mut req = Request::new(());
        let peer = Peer {
            client: ClientAddr::new(([127, 0, 0, 1], 5000).into()),
            ledger: ledger.clone(),
        };
        req.extensions_mut()
            .insert(Arrival::new(Arc::new(peer), None));
        req
    }

    #[tokio::test]
    async fn answers_go_out_in_chunks_and_the_lease_ends_with_the_last_one() {
        let counts = Arc::new(Refusals::default());
        let svc = HoldLayer::new(1 << 20, counts.clone()).layer(answering(big));
        let mut body = svc.oneshot(Request::new(())).await.unwrap().into_body();
        assert_eq!(body.size_hint().exact(), Some(3 * CHUNK as u64 + 5));
        assert_eq!(counts.held(), 3 * CHUNK + 5);
        let mut chunks = Vec::new();
        while let Some(f) = body.frame().await {
            chunks.push(f.unwrap().into_data().unwrap());
        }
        let sizes: Vec<usize> = chunks.iter().map(Bytes::len).collect();
        assert_eq!(sizes, [CHUNK, CHUNK, CHUNK, 5]);
        drop(body);
        assert_eq!(
            counts.held(),
            3 * CHUNK + 5,
            "chunks not yet freed hold the lease"
        );
        let last = chunks.pop().unwrap();
        drop(chunks);
        assert_eq!(counts.held(), 3 * CHUNK + 5);
        drop(last);
        assert_eq!(counts.held(), 0);
    }

    #[tokio::test]
    async fn over_the_budget_is_503_and_counted_and_nothing_is_kept() {
        let counts = Arc::new(Refusals::default());
        let svc = HoldLayer::new(4 * CHUNK, counts.clone()).layer(answering(big));
        let first = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(first.status(), 200);
        let refused = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(refused.status(), 503);
        assert_eq!(refused.headers()["retry-after"], "1");
        assert_eq!(counts.count(Refusal::AnswerBudget), 1);
        assert_eq!(counts.held(), 3 * CHUNK + 5);
        let got = first.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(got.len(), 3 * CHUNK + 5);
        drop(got);
        assert_eq!(counts.held(), 0);
        let again = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(again.status(), 200, "the budget is free again");
    }

    #[tokio::test]
    async fn empty_and_streamed_answers_take_no_budget() {
        let counts = Arc::new(Refusals::default());
        let empty = HoldLayer::new(1, counts.clone()).layer(answering(Body::empty));
        let res = empty.oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.body().bytes().map(Bytes::len), Some(0));
        let streamed = HoldLayer::new(1, counts.clone()).layer(answering(|| {
            Body::stream(http_body_util::Full::new(Bytes::from(vec![1u8; 10])))
        }));
        let res = streamed.oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(counts.held(), 0);
        assert_eq!(
            res.into_body().collect().await.unwrap().to_bytes().len(),
            10
        );
    }

    #[tokio::test]
    async fn a_connection_holding_a_chunk_past_the_send_timeout_is_ended() {
        let counts = Arc::new(Refusals::default());
        let ledger = Arc::new(Ledger::default());
        let svc = HoldLayer::new(1 << 20, counts).layer(answering(big));
        // Long beside the pauses below, so a loaded machine oversleeping them stays far inside.
        let timeout = Duration::from_millis(1000);
        let sweeper = Sweeper::new(timeout);
        let conn = tokio::spawn(std::future::pending::<()>());
        sweeper.watch(&ledger, conn.abort_handle());

        // Each chunk taken while the next is asked for: never stalled.
        let mut body = svc.oneshot(watched(&ledger)).await.unwrap().into_body();
        let mut taken = Vec::new();
        for _ in 0..3 {
            taken.push(body.frame().await.unwrap().unwrap());
            tokio::time::sleep(timeout / 10).await;
            assert_eq!(sweeper.sweep(), 0);
        }
        // A chunk left untaken past the timeout ends the connection's task.
        tokio::time::sleep(timeout + timeout / 5).await;
        assert_eq!(sweeper.sweep(), 1);
        assert!(conn.await.unwrap_err().is_cancelled());
        assert!(ledger
            .longest_wait(Instant::now_without_cache_update())
            .is_some());
        drop((body, taken));
        assert_eq!(
            ledger.longest_wait(Instant::now_without_cache_update()),
            None,
            "freed answers are forgotten"
        );
        drop(ledger);
        assert_eq!(sweeper.sweep(), 0);
        assert!(
            sweeper.conns.lock().unwrap().is_empty(),
            "ended connections are forgotten"
        );
    }
}
