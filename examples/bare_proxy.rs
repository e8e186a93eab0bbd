//! The least a proxy built on the gateway's crates can do: hyper's HTTP/1.1 server, the pooled
//! hyper-util client, tokio's current-thread runtime and mimalloc, forwarding every request
//! to one upstream with the API key injected and nothing else (no validation, rate limit,
//! cache, metrics, logs, timeouts; bodies streamed through, not read). Run beside the gateway
//! under `peers.sh`, it tells how much of the gateway's CPU per request is the framework's
//! floor and how much is the gateway's own work.
//!
//! `BARE_CLIENT=pool` forwards through the gateway's own upstream pool
//! (`amity_gateway::upstream::pool`, senders of `hyper::client::conn::http1`, each connection
//! on a task of its own) instead of hyper-util's legacy client: the floor of the gateway's
//! own client beside hyper's server.
//!
//! ```sh
//! cargo build --release --example bare_proxy
//! BARE_LISTEN=127.0.0.1:18095 BARE_UPSTREAM=127.0.0.1:18080 BARE_API_KEY=test-key \
//!   target/release/examples/bare_proxy
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use amity_gateway::upstream::pool::{Pool, PoolConfig};
use futures_util::future::{self, TryFutureExt};

use http::header::HOST;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

#[path = "../src/allocator.rs"]
mod allocator;

#[global_allocator]
static GLOBAL: allocator::Mimalloc = allocator::Mimalloc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn env(name: &str) -> Result<String, BoxError> {
    std::env::var(name).map_err(|_| format!("{name} is not set").into())
}

fn main() -> Result<(), BoxError> {
    let listen: SocketAddr = env("BARE_LISTEN")?.parse()?;
    let upstream = env("BARE_UPSTREAM")?;
    let key = HeaderValue::try_from(env("BARE_API_KEY")?)?;
    let host = HeaderValue::try_from(upstream.as_str())?;
    let base: Uri = format!("http://{upstream}/").parse()?;
    let pool = std::env::var("BARE_CLIENT").is_ok_and(|c| c == "pool");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(listen, base, host, key, pool))
}

/// Sends a request upstream: hyper-util's legacy client, or the gateway's pool.
#[derive(Clone)]
enum Upstream {
    Legacy(Box<Client<HttpConnector, Incoming>>),
    Pool(Pool<Incoming>),
}

impl Upstream {
    fn new(base: &Uri, pool: bool) -> Self {
        if pool {
            return Upstream::Pool(Pool::new(PoolConfig {
                base: base.clone(),
                connect_timeout: Duration::from_secs(5),
                idle_timeout: Duration::from_secs(90),
                max_idle: 1024,
                max_total: 1024,
                http2: false,
            }));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Upstream::Legacy(Box::new(
            Client::builder(TokioExecutor::new()).build(connector),
        ))
    }

    fn send(
        &self,
        req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<Incoming>, BoxError>> + Send + 'static {
        match self {
            Upstream::Legacy(client) => {
                future::Either::Left(client.request(req).map_err(BoxError::from))
            }
            Upstream::Pool(pool) => {
                let pool = pool.clone();
                future::Either::Right(async move { pool.send(req).await.map_err(BoxError::from) })
            }
        }
    }
}

async fn serve(
    listen: SocketAddr,
    base: Uri,
    host: HeaderValue,
    key: HeaderValue,
    pool: bool,
) -> Result<(), BoxError> {
    let client = Upstream::new(&base, pool);
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let (client, base, host, key) = (client.clone(), base.clone(), host.clone(), key.clone());
        let service = service_fn(move |mut req: Request<Incoming>| {
            let mut parts = base.clone().into_parts();
            parts.path_and_query = req.uri().path_and_query().cloned();
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
            let headers = req.headers_mut();
            headers.insert(HOST, host.clone());
            headers.insert("x-api-key", key.clone());
            let response = client.send(req);
            async move {
                Ok::<_, Infallible>(match response.await {
                    Ok(res) => res.map(Either::Upstream),
                    Err(_) => {
                        let mut res = Response::new(Either::Empty);
                        *res.status_mut() = StatusCode::BAD_GATEWAY;
                        res
                    }
                })
            }
        });
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The upstream's body, or nothing (a 502).
enum Either {
    Upstream(Incoming),
    Empty,
}

impl hyper::body::Body for Either {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        match self.get_mut() {
            Either::Upstream(b) => std::pin::Pin::new(b).poll_frame(cx),
            Either::Empty => std::task::Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Either::Upstream(b) => b.is_end_stream(),
            Either::Empty => true,
        }
    }
}
