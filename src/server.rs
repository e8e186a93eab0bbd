//! Listeners, HTTP/1.1 + HTTP/2 on one port (plain, or TLS with ALPN), the admin endpoints and
//! graceful shutdown.
//!
//! The accept loop only accepts: caps, the TLS handshake and protocol detection run in the
//! connection's own task under timeouts, so a slow or silent client never delays the next
//! accept. An accept that fails (out of file descriptors) is counted and backed off, up to a
//! second, instead of spinning.
//!
//! A connection's life: admitted under the total and per-IP caps ([`caps`]); the protocol told
//! from its first bytes within `first_bytes_timeout` ([`detect`]); then HTTP/1 (idle keep-alive
//! and slow heads bounded by `header_read_timeout`, the raw heads read for the framing rules by
//! [`sniff`]) or HTTP/2 (keep-alive pings, closed with GOAWAY after `http2_idle_timeout` without
//! a request in progress, at most `max_streams_per_connection` requests in progress: more get
//! 503 in the envelope, counted).
//!
//! Answers on their way out are watched (`layers::hold`): one sweeper task per listener ends
//! the task of a connection holding a chunk of an answer its client has not taken within
//! `send_timeout`, closing the connection with all its streams.
//!
//! The drain loses nothing: on shutdown readiness turns false, connections already waiting in
//! the listener's backlog are taken, then the listener closes. Connections keep serving: every
//! HTTP/1 answer carries `Connection: close` (the client knows not to send again), an HTTP/1
//! connection idle at that moment is closed only after `drain_idle_grace` (a request it sends
//! until then is answered), HTTP/2 connections get GOAWAY at once (their open streams finish).
//! The process waits for the last connection, at most `drain_timeout`.
//!
//! What only hyper refuses, without the envelope and uncounted (the gateway's own limits in
//! `layers::framing` sit well inside these): an HTTP/1 request target over 65534 bytes (414), an
//! HTTP/1 head over 64 KiB or with more than 100 header lines (431), an HTTP/2 header list over
//! 64 KiB, streams past `http2_max_concurrent_streams` (RST_STREAM), and requests that cannot be
//! parsed at all (400, connection closed).

mod caps;
mod detect;
mod sniff;

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::future::Either;
use futures_util::FutureExt;
use http::header::CONNECTION;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio_rustls::TlsAcceptor;
use tower::util::Oneshot;
use tower::Service;

use crate::config::{Connections, HYPER_MAX_HEAD};
use crate::error::{ApiError, Body, ErrorFormat};
use crate::layers::admission::{Refusal, Refusals};
use crate::layers::arrival::{Arrival, Peer};
use crate::layers::forward::ClientAddr;
use crate::layers::guarded::{Finish, Guarded};
use crate::layers::hold::Sweeper;
use crate::live::call_ready;
use caps::ConnCaps;
use detect::Protocol;
use sniff::{FactsQueue, Sniff};

/// Liveness and readiness, shared with the admin endpoints.
#[derive(Debug, Default)]
pub struct Health {
    draining: AtomicBool,
}

impl Health {
    pub fn ready(&self) -> bool {
        !self.draining.load(Ordering::Acquire)
    }
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}

/// Renders `/metrics`; supplied by the metrics module.
pub type MetricsRender = Arc<dyn Fn() -> (String, Vec<u8>) + Send + Sync>;

/// How an accepted TCP connection becomes the byte stream HTTP is spoken on.
#[derive(Clone)]
pub enum Acceptor {
    /// HTTP directly on TCP: the sidecar case, where the app is on the same pod.
    Plain,
    /// TLS first; a handshake not done within `handshake_timeout` closes the connection.
    Tls {
        acceptor: TlsAcceptor,
        handshake_timeout: Duration,
    },
}

/// What every connection task of one listener shares.
struct Listener {
    acceptor: Acceptor,
    cfg: Connections,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    caps: Arc<ConnCaps>,
    refusals: Arc<Refusals>,
    /// Ends connections holding an answer their client stopped taking.
    sweeper: Arc<Sweeper>,
    /// Set once the drain starts: HTTP/1 answers then carry `Connection: close`.
    draining: Arc<AtomicBool>,
    drain: watch::Receiver<bool>,
    /// Never sent on: each connection task holds a clone, so the drain knows the last
    /// connection has ended when the receiver sees the channel close.
    alive: mpsc::Sender<()>,
}

fn builders(cfg: &Connections) -> (http1::Builder, http2::Builder<TokioExecutor>) {
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout)
        .max_header_size(HYPER_MAX_HEAD)
        .keep_alive(true);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(cfg.http2_max_concurrent_streams)
        .max_header_list_size(HYPER_MAX_HEAD as u32)
        .keep_alive_interval(cfg.http2_keep_alive_interval)
        .keep_alive_timeout(cfg.http2_keep_alive_timeout);
    (h1, h2)
}

/// Next pause after a failed accept: 10 ms, doubling, at most a second.
fn backoff(prev: Duration) -> Duration {
    (prev * 2).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

/// Serves `service` on `listener` until `shutdown` resolves, then drains (see the module doc).
pub async fn serve<S>(
    listener: TcpListener,
    acceptor: Acceptor,
    service: S,
    cfg: Connections,
    refusals: Arc<Refusals>,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let (h1, h2) = builders(&cfg);
    let (drain_tx, drain) = watch::channel(false);
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
    let drain_timeout = cfg.drain_timeout;
    let sweeper = Sweeper::new(cfg.send_timeout);
    let sweeping = tokio::spawn(sweeper.clone().run(refusals.clone()));
    let shared = Arc::new(Listener {
        acceptor,
        sweeper,
        caps: ConnCaps::new(cfg.max_connections, cfg.max_per_ip),
        cfg,
        h1,
        h2,
        refusals,
        draining: Arc::new(AtomicBool::new(false)),
        drain,
        alive,
    });
    tokio::pin!(shutdown);
    let mut pause = Duration::ZERO;
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                pause = Duration::ZERO;
                spawn_connection(&shared, service.clone(), stream, peer);
            }
            // The client gave up before the accept: nothing to back off from.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                ) => {}
            Err(e) => {
                shared.refusals.accept_failed();
                pause = backoff(pause);
                tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64, "accept failed; backing off");
                tokio::time::sleep(pause).await;
            }
        }
    }
    // Clients whose connection completed before the listener closes are answered, not reset.
    shared.draining.store(true, Ordering::Release);
    let _ = drain_tx.send(true);
    while let Some(Ok((stream, peer))) = listener.accept().now_or_never() {
        spawn_connection(&shared, service.clone(), stream, peer);
    }
    drop(listener);
    let open = shared.caps.open();
    tracing::info!(open, "listener closed; draining connections");
    drop(shared);
    tokio::select! {
        _ = all_closed.recv() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(drain_timeout) => tracing::warn!("drain timeout reached; closing remaining connections"),
    }
    sweeping.abort();
}

fn spawn_connection<S>(shared: &Arc<Listener>, service: S, stream: TcpStream, peer: SocketAddr)
where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let admitted = match shared.caps.admit(peer.ip()) {
        Ok(a) => a,
        Err(why) => {
            shared.refusals.refused(why);
            tracing::debug!(%peer, reason = why.label(), "connection refused");
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let conn = Arc::new(Peer::new(ClientAddr::new(peer)));
    let sweeper = shared.sweeper.clone();
    let shared = shared.clone();
    let task = tokio::spawn({
        let conn = conn.clone();
        async move {
            let _admitted = admitted;
            let _alive = shared.alive.clone();
            match shared.acceptor.clone() {
                Acceptor::Plain => serve_connection(&shared, service, stream, peer, conn).await,
                Acceptor::Tls {
                    acceptor,
                    handshake_timeout,
                } => match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => serve_connection(&shared, service, tls, peer, conn).await,
                    // Scanners and broken clients: not the gateway's fault, so not a warning.
                    Ok(Err(e)) => tracing::debug!(error = %e, %peer, "tls handshake failed"),
                    Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                },
            }
        }
    });
    sweeper.watch(&conn.ledger, task.abort_handle());
}

/// Speaks HTTP/1.1 or HTTP/2 (by the client's first bytes) on `io` until the connection ends.
async fn serve_connection<I, S>(
    shared: &Listener,
    service: S,
    io: I,
    peer: SocketAddr,
    conn: Arc<Peer>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let cfg = &shared.cfg;
    let (protocol, io) = match detect::detect(io, cfg.first_bytes_timeout).await {
        Ok(found) => found,
        Err(e) => {
            tracing::debug!(%peer, reason = ?e, "connection closed before its protocol was known");
            return;
        }
    };
    let state = Arc::new(ConnState::default());
    let mut svc = ConnService {
        inner: RefCell::new(service),
        peer: conn,
        state: state.clone(),
        facts: None,
        draining: shared.draining.clone(),
        refusals: shared.refusals.clone(),
        max_streams: cfg.max_streams_per_connection,
    };
    let mut drain = shared.drain.clone();
    let result = {
        match protocol {
            Protocol::Http1 => {
                let facts = Arc::new(FactsQueue::default());
                svc.facts = Some(facts.clone());
                let io = TokioIo::new(Sniff::new(io, facts));
                let conn = shared.h1.serve_connection(io, svc).with_upgrades();
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => r,
                    () = drain_started(&mut drain) => {
                        // Idle now or after its answer: closed after the grace, not at once, so a
                        // request already on its way is answered.
                        tokio::select! {
                            r = conn.as_mut() => r,
                                    () = tokio::time::sleep(cfg.drain_idle_grace) => {
                                conn.as_mut().graceful_shutdown();
                                conn.await
                            }
                        }
                    }
                }
            }
            Protocol::Http2 => {
                let conn = shared.h2.serve_connection(TokioIo::new(io), svc);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => r,
                    () = drain_started(&mut drain) => {
                        conn.as_mut().graceful_shutdown();
                        tokio::select! {
                            r = conn.as_mut() => r,
                                }
                    }
                    () = state.idle_for(cfg.http2_idle_timeout) => {
                        tracing::debug!(%peer, "idle http2 connection closed");
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, %peer, "connection ended with an error");
    }
}

/// Resolves once the drain has begun (or the listener is gone).
///
/// Its connection's task polls it on every wake-up, nearly all of them for the connection's
/// own I/O. Polling the watch takes its waiters' lock, so after the first poll (which
/// registers the wake-up) the watch is polled again only once a probe sees it changed or
/// closed: one atomic load per unrelated wake-up.
fn drain_started(drain: &mut watch::Receiver<bool>) -> impl Future<Output = ()> + Send + '_ {
    let probe = drain.clone();
    // Unconstrained: tokio's cooperative budget could otherwise make the first poll return
    // without registering, and the probe would then keep it from ever being polled again.
    let mut wait = Box::pin(tokio::task::unconstrained(async move {
        let _ = drain.wait_for(|d| *d).await;
    }));
    let mut registered = false;
    std::future::poll_fn(move |cx| {
        if registered && matches!(probe.has_changed(), Ok(false)) {
            return Poll::Pending;
        }
        registered = true;
        wait.as_mut().poll(cx)
    })
}

/// Requests in progress on one HTTP/2 connection (an HTTP/1 connection runs one at a time).
#[derive(Debug, Default)]
struct ConnState {
    active: AtomicUsize,
    changed: Notify,
}

/// One request in progress; leaves when dropped.
struct InProgress(Arc<ConnState>);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_one();
    }
}

impl ConnState {
    fn enter(self: &Arc<Self>) -> InProgress {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
        InProgress(self.clone())
    }

    fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Resolves once no request has been in progress for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            if self.active() == 0 {
                tokio::select! {
                    () = tokio::time::sleep(idle) => {
                        if self.active() == 0 {
                            return;
                        }
                    }
                    () = self.changed.notified() => {}
                }
            } else {
                self.changed.notified().await;
            }
        }
    }
}

/// The service of one connection: adds its [`Arrival`] (the connection's facts and, on
/// HTTP/1, the raw head's framing facts) to each request, caps requests in progress per HTTP/2
/// connection, and marks HTTP/1 answers `Connection: close` once the drain has begun.
///
/// hyper calls it by reference, and the connection's own copy of the service is called in
/// place ([`call_ready`]): the stack is not cloned per request.
struct ConnService<S> {
    inner: RefCell<S>,
    peer: Arc<Peer>,
    state: Arc<ConnState>,
    facts: Option<Arc<FactsQueue>>,
    draining: Arc<AtomicBool>,
    refusals: Arc<Refusals>,
    max_streams: usize,
}

type Called<S> = Either<<S as Service<Request<Incoming>>>::Future, Oneshot<S, Request<Incoming>>>;

impl<S> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible> + Clone,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Guarded<Called<S>, OnConnection>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let head = self.facts.as_ref().and_then(|q| q.pop());
        req.extensions_mut()
            .insert(Arrival::new(self.peer.clone(), head));
        let http1 = req.version() < Version::HTTP_2;
        // Streams are counted on HTTP/2 only: an HTTP/1 connection runs one request at a time.
        let in_progress = if http1 {
            None
        } else if self.state.active() >= self.max_streams {
            self.refusals.refused(Refusal::Streams);
            return overloaded(&req);
        } else {
            Some(self.state.enter())
        };
        // hyper never calls it while a call is under way; were it to, the request is refused.
        let Ok(mut inner) = self.inner.try_borrow_mut() else {
            return overloaded(&req);
        };
        let held = OnConnection {
            in_progress,
            draining: http1.then(|| self.draining.clone()),
        };
        Guarded::later(call_ready(&mut *inner, req), held)
    }
}

/// What a request holds while it runs on its connection, and what its answer gets at the end.
struct OnConnection {
    /// HTTP/2: its place in the connection's stream count.
    in_progress: Option<InProgress>,
    /// HTTP/1: once the drain has begun, the answer closes the connection.
    draining: Option<Arc<AtomicBool>>,
}

impl Finish for OnConnection {
    fn finish(self, res: &mut Response<Body>) {
        drop(self.in_progress);
        // Not on 101: its `Connection: upgrade` hands the connection over instead.
        if self.draining.is_some_and(|d| d.load(Ordering::Acquire))
            && res.status() != StatusCode::SWITCHING_PROTOCOLS
        {
            res.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
    }
}

fn overloaded<F>(req: &Request<Incoming>) -> Guarded<F, OnConnection> {
    Guarded::now(
        ApiError::Overloaded { retry_after: 1 }
            .to_response(ErrorFormat::from_headers(req.headers())),
    )
}

/// The admin endpoints: `/healthz` (alive), `/readyz` (false while draining), `/metrics`.
pub async fn serve_admin(
    listener: TcpListener,
    health: Arc<Health>,
    metrics: Option<MetricsRender>,
    shutdown: impl Future<Output = ()>,
) {
    let svc = tower::service_fn(move |req: Request<Incoming>| {
        let health = health.clone();
        let metrics = metrics.clone();
        async move { Ok::<_, Infallible>(admin(&req, &health, metrics.as_ref())) }
    });
    let cfg = Connections {
        drain_timeout: Duration::from_secs(1),
        ..Connections::internal()
    };
    serve(
        listener,
        Acceptor::Plain,
        svc,
        cfg,
        Arc::new(Refusals::default()),
        shutdown,
    )
    .await;
}

fn admin(
    req: &Request<Incoming>,
    health: &Health,
    metrics: Option<&MetricsRender>,
) -> Response<Body> {
    let text = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Body::from(body));
        *r.status_mut() = status;
        r
    };
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if health.ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        "/metrics" => match metrics {
            Some(render) => {
                let (content_type, body) = render();
                let mut r = Response::new(Body::from(body));
                if let Ok(ct) = http::HeaderValue::from_str(&content_type) {
                    r.headers_mut().insert(http::header::CONTENT_TYPE, ct);
                }
                r
            }
            None => text(StatusCode::NOT_FOUND, "metrics disabled\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
}

/// Addresses a running gateway listens on.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::pin::Pin;
    use std::time::Duration;

    use super::*;

    /// Polls once with the test task's own waker, so a wake-up reaches the test.
    async fn poll_once<F: Future + Unpin>(f: &mut F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx))).await
    }

    #[tokio::test]
    async fn the_drain_is_seen_after_wake_ups_it_did_not_cause() {
        let (tx, mut rx) = watch::channel(false);
        let mut started = std::pin::pin!(drain_started(&mut rx));
        assert!(poll_once(&mut started).await.is_pending());
        // Wake-ups of the connection's own: nothing changed, nothing seen.
        assert!(poll_once(&mut started).await.is_pending());
        assert!(poll_once(&mut started).await.is_pending());
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), started)
            .await
            .expect("the drain wakes and ends the wait");

        // The listener gone without a drain ends it too.
        let (tx, mut rx) = watch::channel(false);
        let mut started = std::pin::pin!(drain_started(&mut rx));
        assert!(poll_once(&mut started).await.is_pending());
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), started)
            .await
            .expect("a closed watch ends the wait");

        // A drain begun before the first poll.
        let (tx, mut rx) = watch::channel(false);
        tx.send(true).unwrap();
        assert!(poll_once(&mut std::pin::pin!(drain_started(&mut rx)))
            .await
            .is_ready());
    }
}
