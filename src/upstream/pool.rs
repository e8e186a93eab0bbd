//! A lean pooled client for the one upstream: keep-alive connections made with
//! `hyper::client::conn` (HTTP/1.1, or HTTP/2 when configured), without hyper-util's legacy
//! client and its per-request machinery.
//!
//! Why its own pool: the legacy client clones its connector and pool handles for every request,
//! keys its pool by host (there is one host here), and spawns a task per request to wait until
//! an HTTP/1 connection is idle again before returning it. Here an HTTP/1 sender goes back to
//! the pool as soon as its request is handed to the connection, and a request takes the first
//! parked sender that is ready again (its previous exchange is over): no task, no channel, one
//! short lock per request.
//!
//! - **Health before reuse**: a parked sender whose connection is closed (the upstream hung
//!   up) is dropped, not used; only a sender that is ready is handed out.
//! - **Bounded**: at most `max_total` open connections; when all are busy a request waits for
//!   the oldest busy one to finish (or for any to close), at most `connect_timeout`. At most
//!   `max_idle` parked senders.
//! - **Idle expiry**: a sender idle (ready, unused) longer than `idle_timeout` is closed, by the
//!   next request that looks at it or by a background sweep every half `idle_timeout`.
//! - **Retry only what never left**: hyper's `try_send_request` gives a request back when the
//!   connection closed before taking it (it closed between the health check and the send);
//!   such a request on a reused connection is sent once more on a fresh one. A request hyper
//!   has started writing is never retried, even when the upstream's close of an idle
//!   connection crossed it on the wire (`IncompleteMessage`): a session registration is not
//!   idempotent, and hyper-util's client behaves the same.
//! - **Upgrades**: HTTP/1 connections run `with_upgrades()`, so a `101 Switching Protocols`
//!   answer can be taken over with `hyper::upgrade::on` and tunnelled.
//! - **Connect + TLS**: the same rustls connector as the rest of the gateway ([`connector`]:
//!   ring provider, webpki roots, ALPN `h2` first when HTTP/2 is configured). An `https`
//!   upstream that picks `h2` by ALPN gets one shared multiplexed connection; `http` with
//!   HTTP/2 configured speaks it by prior knowledge.
//!
//! Requests may carry an absolute URI or origin-form; HTTP/1 sends origin-form with the `Host`
//! of the configured base (unless the request has one), HTTP/2 the absolute URI.
//! The body type is generic: `Full<Bytes>` for buffered routes, a streamed body for
//! pass-through.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::Either;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::body::{Body, Incoming};
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::Service;

use crate::error::BoxError;

/// Open connections allowed by default ([`PoolConfig::max_total`]).
pub const DEFAULT_MAX_TOTAL: usize = 1024;

/// What the pool is built from.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// `scheme://authority` of the upstream.
    pub base: Uri,
    /// TCP connect, TLS and HTTP handshake together; also the longest a request waits for a
    /// connection when `max_total` are open.
    pub connect_timeout: Duration,
    /// A connection idle this long is closed.
    pub idle_timeout: Duration,
    /// Parked HTTP/1 senders kept at most.
    pub max_idle: usize,
    /// Open connections at most.
    pub max_total: usize,
    /// Speak HTTP/2 (ALPN `h2` for https, prior knowledge for http).
    pub http2: bool,
}

impl PoolConfig {
    /// From the `[upstream]` section, with [`DEFAULT_MAX_TOTAL`].
    pub fn from_upstream(cfg: &crate::config::Upstream) -> Self {
        Self {
            base: cfg.base.clone(),
            connect_timeout: cfg.connect_timeout,
            idle_timeout: cfg.pool_idle_timeout,
            max_idle: cfg.pool_max_idle_per_host,
            max_total: DEFAULT_MAX_TOTAL.max(cfg.pool_max_idle_per_host),
            http2: cfg.http2,
        }
    }
}

/// The gateway's upstream connector: TCP with nodelay and keep-alive, rustls (ring, webpki
/// roots) for https, ALPN `h2` then `http/1.1` when `http2`.
pub fn connector(connect_timeout: Duration, http2: bool) -> HttpsConnector<HttpConnector> {
    let builder = match hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
    {
        Ok(b) => b,
        // The ring provider supports rustls' safe defaults; keep the crate's defaults if not.
        Err(_) => hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots(),
    };
    finish_connector(builder, connect_timeout, http2)
}

/// The TCP side and the protocols, around a TLS set-up with its roots chosen.
fn finish_connector(
    builder: hyper_rustls::HttpsConnectorBuilder<hyper_rustls::builderstates::WantsSchemes>,
    connect_timeout: Duration,
    http2: bool,
) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let builder = builder.https_or_http();
    if http2 {
        builder.enable_all_versions().wrap_connector(http)
    } else {
        builder.enable_http1().wrap_connector(http)
    }
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No connection could be made (refused, DNS, TLS, handshake).
    #[error("upstream connect failed: {0}")]
    Connect(BoxError),
    /// Connecting took longer than `connect_timeout`.
    #[error("upstream connect timed out")]
    ConnectTimeout,
    /// `max_total` connections were busy for `connect_timeout`.
    #[error("upstream connection pool exhausted")]
    Exhausted,
    /// The exchange failed after the request was handed to a connection.
    #[error("upstream request failed: {0}")]
    Request(#[source] hyper::Error),
}

impl PoolError {
    /// Whether nothing of the request can have reached the upstream.
    pub fn is_connect(&self) -> bool {
        !matches!(self, PoolError::Request(_))
    }
}

/// Counters for metrics and tests.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Connections made.
    pub opened: AtomicU64,
    /// Requests sent on a connection that had served one before.
    pub reused: AtomicU64,
    /// Requests given back unsent by a reused connection and sent again on a fresh one.
    pub retried: AtomicU64,
}

/// Open connections and the wake-up for requests waiting for one.
#[derive(Default)]
struct Live {
    open: AtomicUsize,
    changed: Notify,
}

impl Live {
    fn reserve(self: &Arc<Self>, max: usize) -> Option<OpenSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| OpenSlot(self.clone()))
    }
}

/// One open connection's place in `max_total`, held by its connection task.
struct OpenSlot(Arc<Live>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_one();
    }
}

enum Sender<B> {
    H1(http1::SendRequest<B>),
    H2(http2::SendRequest<B>),
}

type Sent<B> = Result<Response<Incoming>, TrySendError<Request<B>>>;

impl<B> Sender<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    fn try_send(&mut self, req: Request<B>) -> impl Future<Output = Sent<B>> {
        match self {
            Sender::H1(s) => Either::Left(s.try_send_request(req)),
            Sender::H2(s) => Either::Right(s.try_send_request(req)),
        }
    }
}

struct Parked<B> {
    sender: http1::SendRequest<B>,
    /// When it was last seen busy or parked; idle since at most then.
    since: Instant,
}

struct Shared<B> {
    connector: HttpsConnector<HttpConnector>,
    scheme: Scheme,
    authority: Authority,
    host: HeaderValue,
    cfg: PoolConfig,
    parked: Mutex<VecDeque<Parked<B>>>,
    h2: Mutex<Option<http2::SendRequest<B>>>,
    live: Arc<Live>,
    stats: PoolStats,
    sweeping: AtomicBool,
}

/// The pooled client; cheap to clone (one `Arc`).
pub struct Pool<B> {
    shared: Arc<Shared<B>>,
}

impl<B> Clone for Pool<B> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<B> Pool<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    pub fn new(cfg: PoolConfig) -> Self {
        let connector = connector(cfg.connect_timeout, cfg.http2);
        Self::with_connector(cfg, connector)
    }

    /// With a connector of the caller's (a test's own root certificates).
    pub fn with_connector(cfg: PoolConfig, connector: HttpsConnector<HttpConnector>) -> Self {
        let scheme = cfg.base.scheme().cloned().unwrap_or(Scheme::HTTP);
        let authority = cfg
            .base
            .authority()
            .cloned()
            .unwrap_or_else(|| Authority::from_static("localhost"));
        let host = HeaderValue::from_str(authority.as_str())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        Self {
            shared: Arc::new(Shared {
                connector,
                scheme,
                authority,
                host,
                cfg,
                parked: Mutex::new(VecDeque::new()),
                h2: Mutex::new(None),
                live: Arc::default(),
                stats: PoolStats::default(),
                sweeping: AtomicBool::new(false),
            }),
        }
    }

    pub fn stats(&self) -> &PoolStats {
        &self.shared.stats
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.live.open.load(Ordering::Acquire)
    }

    /// Sends `req` and returns the response head; the body streams from the connection.
    pub async fn send(&self, req: Request<B>) -> Result<Response<Incoming>, PoolError> {
        let (sender, reused) = self.shared.checkout().await?;
        self.send_on(sender, reused, req).await
    }

    /// Sends `req` on `sender`; if a reused connection gives it back unsent, once more on a
    /// fresh connection.
    async fn send_on(
        &self,
        mut sender: Sender<B>,
        reused: bool,
        mut req: Request<B>,
    ) -> Result<Response<Incoming>, PoolError> {
        let s = &self.shared;
        s.shape(&mut req, matches!(sender, Sender::H2(_)));
        if reused {
            s.stats.reused.fetch_add(1, Ordering::Relaxed);
        }
        let sent = sender.try_send(req);
        if let Sender::H1(h1) = sender {
            // Back at once: it becomes ready again when this exchange is over.
            s.park(h1);
        }
        match sent.await {
            Ok(res) => Ok(res),
            Err(mut e) => match e.take_message() {
                Some(req) if reused => {
                    // The connection closed before any of it was written: once more, fresh.
                    s.stats.retried.fetch_add(1, Ordering::Relaxed);
                    let slot = s.reserve_or_wait().await?;
                    let mut fresh = s.connect(slot).await?;
                    let sent = fresh.try_send(req);
                    if let Sender::H1(h1) = fresh {
                        s.park(h1);
                    }
                    sent.await.map_err(|e| PoolError::Request(e.into_error()))
                }
                _ => Err(PoolError::Request(e.into_error())),
            },
        }
    }
}

impl<B> Shared<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// HTTP/1: origin-form and a `Host`; HTTP/2: an absolute URI.
    fn shape(&self, req: &mut Request<B>, h2: bool) {
        let uri = req.uri();
        if h2 {
            if uri.scheme().is_none() {
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(self.scheme.clone());
                parts.authority = Some(self.authority.clone());
                parts.path_and_query = uri.path_and_query().cloned();
                if let Ok(u) = Uri::from_parts(parts) {
                    *req.uri_mut() = u;
                }
            }
            return;
        }
        if uri.scheme().is_some() || uri.authority().is_some() {
            let pq = uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *req.uri_mut() = Uri::from(pq);
        }
        if !req.headers().contains_key(HOST) {
            req.headers_mut().insert(HOST, self.host.clone());
        }
    }

    /// A ready sender from the pool, or a new connection; `true` when reused.
    async fn checkout(self: &Arc<Self>) -> Result<(Sender<B>, bool), PoolError> {
        if self.cfg.http2 {
            let shared = lock(&self.h2).as_ref().filter(|s| !s.is_closed()).cloned();
            if let Some(s) = shared {
                return Ok((Sender::H2(s), true));
            }
        }
        let deadline = Instant::now() + self.cfg.connect_timeout;
        loop {
            if let Some(s) = self.take_parked(true) {
                return Ok((Sender::H1(s), true));
            }
            if let Some(slot) = self.live.reserve(self.cfg.max_total) {
                return Ok((self.connect(slot).await?, false));
            }
            // Every connection is open and busy: wait for the oldest to finish.
            if let Some(mut busy) = self.take_parked(false) {
                match tokio::time::timeout_at(deadline, busy.ready()).await {
                    Ok(Ok(())) => return Ok((Sender::H1(busy), true)),
                    Ok(Err(_)) => continue,
                    Err(_) => return Err(PoolError::Exhausted),
                }
            }
            tokio::time::timeout_at(deadline, self.live.changed.notified())
                .await
                .map_err(|_| PoolError::Exhausted)?;
        }
    }

    /// A slot for a fresh connection, waiting while `max_total` are open.
    async fn reserve_or_wait(&self) -> Result<OpenSlot, PoolError> {
        let deadline = Instant::now() + self.cfg.connect_timeout;
        loop {
            if let Some(slot) = self.live.reserve(self.cfg.max_total) {
                return Ok(slot);
            }
            tokio::time::timeout_at(deadline, self.live.changed.notified())
                .await
                .map_err(|_| PoolError::Exhausted)?;
        }
    }

    /// The oldest parked sender that is ready (or, with `ready == false`, the oldest still
    /// open, busy or not). Closed and expired ones met on the way are dropped.
    fn take_parked(&self, ready: bool) -> Option<http1::SendRequest<B>> {
        let now = Instant::now();
        let mut parked = lock(&self.parked);
        let mut i = 0;
        while let Some(p) = parked.get_mut(i) {
            if self.is_dead(p, now) {
                parked.remove(i);
                continue;
            }
            if !ready || p.sender.is_ready() {
                return parked.remove(i).map(|p| p.sender);
            }
            i += 1;
        }
        None
    }

    /// Closed, or idle past `idle_timeout`. A busy sender is not idle, whatever it was
    /// before: its idle time restarts.
    fn is_dead(&self, p: &mut Parked<B>, now: Instant) -> bool {
        if p.sender.is_closed() {
            return true;
        }
        if !p.sender.is_ready() {
            p.since = now;
            return false;
        }
        now.duration_since(p.since) > self.cfg.idle_timeout
    }

    fn park(&self, sender: http1::SendRequest<B>) {
        let mut parked = lock(&self.parked);
        if parked.len() < self.cfg.max_idle && !sender.is_closed() {
            parked.push_back(Parked {
                sender,
                since: Instant::now(),
            });
            drop(parked);
            self.live.changed.notify_one();
        }
    }

    /// Closes idle senders past `idle_timeout` (dropping a sender ends its connection).
    fn sweep(&self) {
        let now = Instant::now();
        lock(&self.parked).retain_mut(|p| !self.is_dead(p, now));
    }

    fn start_sweeper(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        let every = (self.cfg.idle_timeout / 2).max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(shared) => shared.sweep(),
                    None => return,
                }
            }
        });
    }

    /// A new connection in `slot`: TCP, TLS, the HTTP handshake, its task spawned. Boxed: the
    /// connector's and TLS handshake's futures run kilobytes, and every request's future (which
    /// reaches this only on the rare path) would otherwise carry, and move, them inline.
    fn connect(
        self: &Arc<Self>,
        slot: OpenSlot,
    ) -> Pin<Box<dyn Future<Output = Result<Sender<B>, PoolError>> + Send + '_>> {
        Box::pin(self.connect_now(slot))
    }

    async fn connect_now(self: &Arc<Self>, slot: OpenSlot) -> Result<Sender<B>, PoolError> {
        self.start_sweeper();
        let uri = Uri::from_parts({
            let mut p = http::uri::Parts::default();
            p.scheme = Some(self.scheme.clone());
            p.authority = Some(self.authority.clone());
            p.path_and_query = Some(PathAndQuery::from_static("/"));
            p
        })
        .map_err(|e| PoolError::Connect(e.into()))?;
        let mut connector = self.connector.clone();
        let handshake = async move {
            let io = connector.call(uri).await.map_err(PoolError::Connect)?;
            let h2 = io.connected().is_negotiated_h2()
                || (self.cfg.http2 && self.scheme == Scheme::HTTP);
            if h2 {
                let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .handshake(io)
                    .await
                    .map_err(|e| PoolError::Connect(e.into()))?;
                tokio::spawn(async move {
                    let _slot = slot;
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "upstream h2 connection ended");
                    }
                });
                *lock(&self.h2) = Some(sender.clone());
                Ok(Sender::H2(sender))
            } else {
                let (sender, conn) = http1::Builder::new()
                    .handshake(io)
                    .await
                    .map_err(|e| PoolError::Connect(e.into()))?;
                tokio::spawn(async move {
                    let _slot = slot;
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(error = %e, "upstream connection ended");
                    }
                });
                Ok(Sender::H1(sender))
            }
        };
        let sender = tokio::time::timeout(self.cfg.connect_timeout, handshake)
            .await
            .map_err(|_| PoolError::ConnectTimeout)??;
        self.stats.opened.fetch_add(1, Ordering::Relaxed);
        Ok(sender)
    }
}

impl<B> Service<Request<B>> for Pool<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<Incoming>;
    type Error = PoolError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Incoming>, PoolError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), PoolError>> {
        // Waiting for a connection happens per request, bounded by `connect_timeout`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let pool = self.clone();
        Box::pin(async move { pool.send(req).await })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::convert::Infallible;
    use std::net::SocketAddr;

    use bytes::Bytes;
    use http::{Method, StatusCode};
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::sim::{SimConfig, Simulator};

    const KEY: &str = "pool-test-key";

    fn config(addr: SocketAddr) -> PoolConfig {
        PoolConfig {
            base: format!("http://{addr}").parse().unwrap(),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(90),
            max_idle: 16,
            max_total: 16,
            http2: false,
        }
    }

    fn get(path: &str) -> Request<Full<Bytes>> {
        Request::get(path).body(Full::default()).unwrap()
    }

    async fn text(res: Response<Incoming>) -> String {
        let body = res.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// A tiny HTTP/1.1 server: answers `path host` to every request, holds `/hold` until
    /// `release` has a permit, answers `/upgrade` with 101 and echoes the tunnel. Counts
    /// connections accepted and ended.
    struct Server {
        addr: SocketAddr,
        accepted: Arc<AtomicUsize>,
        ended: Arc<AtomicUsize>,
        arrived: Arc<Notify>,
        release: Arc<tokio::sync::Semaphore>,
    }

    async fn server() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = Server {
            addr: listener.local_addr().unwrap(),
            accepted: Arc::default(),
            ended: Arc::default(),
            arrived: Arc::default(),
            release: Arc::new(tokio::sync::Semaphore::new(0)),
        };
        let (accepted, ended, arrived, release) = (
            s.accepted.clone(),
            s.ended.clone(),
            s.arrived.clone(),
            s.release.clone(),
        );
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                accepted.fetch_add(1, Ordering::SeqCst);
                let (ended, arrived, release) = (ended.clone(), arrived.clone(), release.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let (arrived, release) = (arrived.clone(), release.clone());
                        async move {
                            let host = req
                                .headers()
                                .get(HOST)
                                .and_then(|h| h.to_str().ok())
                                .unwrap_or("-")
                                .to_owned();
                            let line = format!("{} {host}", req.uri());
                            if req.uri().path() == "/hold" {
                                arrived.notify_one();
                                release.acquire().await.unwrap().forget();
                            }
                            if req.uri().path() == "/upgrade" {
                                tokio::spawn(async move {
                                    let mut io =
                                        TokioIo::new(hyper::upgrade::on(req).await.unwrap());
                                    let mut buf = [0u8; 4];
                                    io.read_exact(&mut buf).await.unwrap();
                                    io.write_all(&buf).await.unwrap();
                                });
                                let res = Response::builder()
                                    .status(StatusCode::SWITCHING_PROTOCOLS)
                                    .header("connection", "upgrade")
                                    .header("upgrade", "echo")
                                    .body(Full::<Bytes>::default())
                                    .unwrap();
                                return Ok::<_, Infallible>(res);
                            }
                            Ok(Response::new(Full::from(line)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        s
    }

    /// Reads a request head off `s`; false when the peer closed (or failed) first.
    async fn read_head(s: &mut tokio::net::TcpStream) -> bool {
        let mut buf = vec![0u8; 4096];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        true
    }

    /// A raw HTTP/1.1 server: on each connection it answers the first request `ok` (without
    /// `Connection: close`), then hands the connection to `after`. Counts connections accepted.
    async fn answers_once<F, Fut>(after: F) -> (SocketAddr, Arc<AtomicUsize>)
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let after = Arc::new(after);
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let after = after.clone();
                tokio::spawn(async move {
                    if !read_head(&mut s).await {
                        return;
                    }
                    if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .is_ok()
                    {
                        after(s).await;
                    }
                });
            }
        });
        (addr, accepted)
    }

    /// Waits (bounded) until `cond` holds; no timing is asserted, only the condition.
    async fn until(cond: impl Fn() -> bool, what: &str) {
        for _ in 0..500 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("gave up waiting: {what}");
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection_with_origin_form_and_host() {
        let srv = server().await;
        let pool = Pool::new(config(srv.addr));
        for i in 0..20 {
            let uri = format!("http://{}/n/{i}?q=1", srv.addr);
            let res = pool.send(get(&uri)).await.unwrap();
            assert_eq!(text(res).await, format!("/n/{i}?q=1 {}", srv.addr));
        }
        assert_eq!(srv.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.stats().opened.load(Ordering::SeqCst), 1);
        assert_eq!(pool.stats().reused.load(Ordering::SeqCst), 19);
    }

    #[tokio::test]
    async fn a_session_post_reaches_the_simulator_unchanged_through_the_service() {
        let sim = Simulator::new(SimConfig::new(KEY));
        let handle = sim
            .clone()
            .spawn(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let mut pool: Pool<Full<Bytes>> = Pool::new(config(handle.addr));
        let body = r#"{"userId":"u1","deviceId":"d1","displayName":"U"}"#;
        for _ in 0..3 {
            let req = Request::builder()
                .method(Method::POST)
                .uri("/api/v3/sessions")
                .header("content-type", "application/json")
                .header("x-api-key", KEY)
                .body(Full::from(body))
                .unwrap();
            let res = pool.call(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            let json: serde_json::Value = serde_json::from_str(&text(res).await).unwrap();
            assert!(json["accessToken"].is_string(), "{json}");
        }
        let seen = sim.requests();
        assert_eq!(seen.len(), 3);
        assert!(seen
            .iter()
            .all(|r| r.body == body && r.path == "/api/v3/sessions"));
        assert_eq!(pool.stats().opened.load(Ordering::SeqCst), 1);
    }

    /// A server that answers one request per connection and then closes it, without saying
    /// so (`Connection: close` absent): the pooled connection is dead when it is next used.
    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_the_server_closed_is_replaced_transparently() {
        let closed = Arc::new(Notify::new());
        let closed_srv = closed.clone();
        let (addr, accepted) = answers_once(move |s| {
            drop(s);
            closed_srv.notify_one();
            std::future::ready(())
        })
        .await;
        let pool = Pool::new(config(addr));
        for _ in 0..3 {
            let res = pool.send(get("/x")).await.unwrap();
            assert_eq!(text(res).await, "ok");
            closed.notified().await;
            // The connection's task has seen the close (the sender itself stays parked).
            until(|| pool.open_connections() == 0, "the close seen").await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        let s = pool.stats();
        assert_eq!(s.opened.load(Ordering::SeqCst), 3);
        // The health check saw each closed connection before reuse.
        assert_eq!(s.reused.load(Ordering::SeqCst), 0);
    }

    /// A connection that closes after checkout but before the request is taken (the race the
    /// health check cannot close): hyper gives the request back unsent and it goes once more
    /// on a fresh connection. The race is made certain by handing out a sender whose
    /// connection is already closed.
    #[tokio::test]
    async fn a_request_given_back_unsent_is_retried_once_on_a_fresh_connection() {
        // Each connection answers one request, then closes when told to.
        let hang_up = Arc::new(Notify::new());
        let hang = hang_up.clone();
        let (addr, accepted) = answers_once(move |s| {
            let hang = hang.clone();
            async move {
                hang.notified().await;
                drop(s);
            }
        })
        .await;
        let pool = Pool::new(config(addr));
        assert_eq!(text(pool.send(get("/1")).await.unwrap()).await, "ok");
        let dead = lock(&pool.shared.parked).pop_front().unwrap().sender;
        hang_up.notify_one();
        until(|| dead.is_closed(), "the connection closed").await;
        let res = pool
            .send_on(Sender::H1(dead), true, get("/2"))
            .await
            .unwrap();
        assert_eq!(text(res).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(pool.stats().retried.load(Ordering::SeqCst), 1);
        assert_eq!(pool.stats().opened.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn open_connections_never_exceed_max_total() {
        let srv = server().await;
        let pool = Pool::new(PoolConfig {
            max_total: 2,
            ..config(srv.addr)
        });
        let tasks: Vec<_> = (0..6)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { text(pool.send(get("/hold")).await.unwrap()).await })
            })
            .collect();
        // Two requests reach the server; the other four wait for a connection.
        srv.arrived.notified().await;
        srv.arrived.notified().await;
        assert_eq!(pool.open_connections(), 2);
        srv.release.add_permits(6);
        for t in tasks {
            assert!(t.await.unwrap().starts_with("/hold "));
        }
        assert_eq!(srv.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn waiting_for_a_busy_pool_ends_at_the_connect_timeout() {
        let srv = server().await;
        let pool = Pool::new(PoolConfig {
            max_total: 1,
            connect_timeout: Duration::from_millis(100),
            ..config(srv.addr)
        });
        let held = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.send(get("/hold")).await.map(|_| ()) })
        };
        srv.arrived.notified().await;
        let err = pool.send(get("/other")).await.unwrap_err();
        assert!(matches!(err, PoolError::Exhausted), "{err}");
        assert!(err.is_connect());
        srv.release.add_permits(1);
        held.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn idle_connections_expire() {
        let srv = server().await;
        let pool = Pool::new(PoolConfig {
            idle_timeout: Duration::from_millis(50),
            ..config(srv.addr)
        });
        text(pool.send(get("/a")).await.unwrap()).await;
        until(
            || pool.open_connections() == 0,
            "the idle connection closed",
        )
        .await;
        until(
            || srv.ended.load(Ordering::SeqCst) == 1,
            "the server saw it close",
        )
        .await;
        text(pool.send(get("/b")).await.unwrap()).await;
        assert_eq!(srv.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_101_answer_is_tunnelled_and_the_pool_goes_on() {
        let srv = server().await;
        let pool = Pool::new(config(srv.addr));
        let req = Request::get("/upgrade")
            .header("connection", "upgrade")
            .header("upgrade", "echo")
            .body(Full::<Bytes>::default())
            .unwrap();
        let res = pool.send(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
        let mut io = TokioIo::new(hyper::upgrade::on(res).await.unwrap());
        io.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        // The upgraded connection is the tunnel's now: the next request gets another one.
        assert!(text(pool.send(get("/after")).await.unwrap())
            .await
            .starts_with("/after "));
        assert_eq!(srv.accepted.load(Ordering::SeqCst), 2);
    }

    /// An https upstream with its own certificate: the pool's connector with that root instead
    /// of the webpki roots; ALPN picks `h2` when HTTP/2 is configured, `http/1.1` otherwise.
    #[tokio::test]
    async fn https_upstreams_speak_what_alpn_agreed() {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let der = CertificateDer::from(cert.der().to_vec());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server_cfg = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        server_cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let tls = acceptor.accept(tcp).await.unwrap();
                    let svc = service_fn(|req: Request<Incoming>| async move {
                        let line = format!("{:?} {}", req.version(), req.uri().path());
                        Ok::<_, Infallible>(Response::new(Full::<Bytes>::from(line)))
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let tls = || {
            rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth()
        };
        let base: Uri = format!("https://localhost:{port}").parse().unwrap();
        for (http2, version) in [(false, "HTTP/1.1"), (true, "HTTP/2.0")] {
            let connector = finish_connector(
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls()),
                Duration::from_secs(5),
                http2,
            );
            let pool: Pool<Full<Bytes>> = Pool::with_connector(
                PoolConfig {
                    base: base.clone(),
                    http2,
                    ..config(SocketAddr::from(([127, 0, 0, 1], port)))
                },
                connector,
            );
            for i in 0..3 {
                let res = pool.send(get(&format!("/t/{i}"))).await.unwrap();
                assert_eq!(text(res).await, format!("{version} /t/{i}"));
            }
            assert_eq!(pool.stats().opened.load(Ordering::SeqCst), 1, "{version}");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn http2_multiplexes_on_one_connection_to_the_simulator() {
        let sim = Simulator::new(SimConfig::new(KEY));
        let handle = sim
            .clone()
            .spawn(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let pool = Pool::new(PoolConfig {
            http2: true,
            ..config(handle.addr)
        });
        // The first request makes the connection; the rest share it concurrently.
        let first = pool.send(get("/api/v3/users/nobody")).await.unwrap();
        assert_eq!(first.version(), http::Version::HTTP_2);
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    pool.send(get(&format!("/api/v3/users/u{i}")))
                        .await
                        .unwrap()
                        .status()
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), StatusCode::UNAUTHORIZED);
        }
        assert_eq!(pool.stats().opened.load(Ordering::SeqCst), 1);
        assert_eq!(sim.requests().len(), 9);
    }
}
