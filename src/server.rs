//! Listeners, HTTP/1.1 + HTTP/2 on one port (plain, or TLS with ALPN), the admin endpoints and
//! graceful shutdown.
//!
//! The accept loop only accepts: the TLS handshake runs in the connection's own task under a
//! timeout, so a slow or silent client never delays the next accept.
//!
//! Shutdown order: readiness turns false, the listeners close (new connections are refused),
//! open connections are told to finish (HTTP/1 stops keep-alive, HTTP/2 sends GOAWAY), and the
//! process waits up to the drain timeout for in-flight requests before it returns.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::{Service, ServiceExt};

use crate::error::Body;
use crate::layers::forward::ClientAddr;

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

fn http_builder(header_read_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256);
    b
}

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

/// Serves `service` on `listener` until `shutdown` resolves, then drains for at most `drain`.
pub async fn serve<S>(
    listener: TcpListener,
    acceptor: Acceptor,
    service: S,
    header_read_timeout: Duration,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let builder = Arc::new(http_builder(header_read_timeout));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let client = ClientAddr::new(peer);
        let svc = service
            .clone()
            .map_request(move |mut req: Request<Incoming>| {
                req.extensions_mut().insert(client.clone());
                req
            });
        // Taken here, not in the task: a shutdown that starts during the handshake still
        // reaches the connection, and the drain waits for it.
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                Acceptor::Plain => serve_connection(&builder, stream, svc, watcher).await,
                Acceptor::Tls {
                    acceptor,
                    handshake_timeout,
                } => match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => serve_connection(&builder, tls, svc, watcher).await,
                    // Scanners and broken clients: not the gateway's fault, so not a warning.
                    Ok(Err(e)) => tracing::debug!(error = %e, %peer, "tls handshake failed"),
                    Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                },
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(drain) => tracing::warn!("drain timeout reached; closing remaining connections"),
    }
}

/// Speaks HTTP/1.1 or HTTP/2 (by the client's preface) on `io` until the connection ends.
async fn serve_connection<I, S>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    // With upgrades: a pass route's websocket is handed over after its 101.
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
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
    serve(
        listener,
        Acceptor::Plain,
        svc,
        Duration::from_secs(5),
        shutdown,
        Duration::from_secs(1),
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
