//! Shared harness for the end-to-end tests: a real simulator and a real gateway on loopback
//! sockets (`127.0.0.1:0`), and small clients that speak to them.
#![allow(dead_code)]

pub mod process;
pub mod redis_servers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use amity_gateway::app::Gateway;
use amity_gateway::cache::LookupCache;
use amity_gateway::config::{FileConfig, Secret};
use amity_gateway::ratelimit::RateLimitStats;
use amity_gateway::server::Bound;
use amity_gateway::sim::{SimConfig, SimHandle, Simulator};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const KEY: &str = "test-upstream-key-7f3a9c";

pub const VALID: &str = r#"{"userId":"user-123","deviceId":"device-abc-0001","deviceInfo":{"kind":"ios","model":"iPhone15,2","sdkVersion":"6.35.3"},"displayName":"Alice","authToken":"tok-xyz"}"#;

pub struct TestEnv {
    pub sim: Arc<Simulator>,
    pub sim_handle: Option<SimHandle>,
    pub sim_addr: SocketAddr,
    pub gw: Bound,
    pub cache: Arc<LookupCache>,
    /// The gateway's rate-limit counters (`None` when rate limiting is disabled).
    pub rate_limit: Option<Arc<RateLimitStats>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A file config pointing at `sim_addr`, listening on ephemeral loopback ports.
pub fn base_config(sim_addr: SocketAddr) -> FileConfig {
    let mut f = FileConfig::default();
    f.server.listen = "127.0.0.1:0".into();
    f.server.admin_listen = "127.0.0.1:0".into();
    f.server.drain_timeout_secs = 5;
    f.upstream.url = format!("http://{sim_addr}");
    f.upstream.timeout_ms = 2_000;
    f.upstream.connect_timeout_ms = 500;
    f.api_key.value = Some(Secret(KEY.into()));
    f
}

/// A simulator accepting [`KEY`], serving on an ephemeral loopback port.
pub async fn start_sim() -> (Arc<Simulator>, SimHandle) {
    let sim = Simulator::new(SimConfig::new(KEY));
    let handle = sim
        .clone()
        .spawn("127.0.0.1:0".parse().unwrap())
        .await
        .expect("simulator binds");
    (sim, handle)
}

impl TestEnv {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(edit: impl FnOnce(&mut FileConfig)) -> Self {
        let (sim, sim_handle) = start_sim().await;
        let sim_addr = sim_handle.addr;
        let mut env = Self::start_on(sim, sim_addr, edit).await;
        env.sim_handle = Some(sim_handle);
        env
    }

    /// A gateway in front of a simulator already running at `sim_addr` (replicas sharing one
    /// upstream); the caller keeps the simulator's handle.
    pub async fn start_on(
        sim: Arc<Simulator>,
        sim_addr: SocketAddr,
        edit: impl FnOnce(&mut FileConfig),
    ) -> Self {
        let mut file = base_config(sim_addr);
        edit(&mut file);
        let config = file
            .resolve(&Default::default())
            .expect("valid test config");
        let gateway = Gateway::bind(config).await.expect("gateway binds");
        let gw = gateway.bound();
        let cache = gateway.cache();
        let rate_limit = gateway.rate_limit_stats();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(gateway.run(async {
            let _ = stopped.await;
        }));
        Self {
            sim,
            sim_handle: None,
            sim_addr,
            gw,
            cache,
            rate_limit,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.gw.addr, path)
    }

    pub async fn stop_sim(&mut self) {
        if let Some(h) = self.sim_handle.take() {
            h.stop().await;
        }
    }

    pub async fn shutdown(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub async fn send(req: Request<Full<Bytes>>) -> Reply {
    let res = client().request(req).await.expect("gateway answers");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(b.body(Full::new(body.into())).unwrap()).await
}

pub async fn post_json(url: &str, body: impl Into<Bytes>) -> Reply {
    request(
        Method::POST,
        url,
        &[("content-type", "application/json")],
        body,
    )
    .await
}

/// Registers a session (`body`) on the simulator directly, with the key; its access token.
pub async fn sim_session(sim: &SimHandle, body: &str) -> String {
    let res = request(
        Method::POST,
        &format!("{}/api/v3/sessions", sim.base_url()),
        &[("x-api-key", KEY), ("content-type", "application/json")],
        body.to_owned(),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "{:?}", res.body);
    res.json()["accessToken"]
        .as_str()
        .expect("a session answer has an accessToken")
        .to_owned()
}

pub type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Opens the realtime websocket through the gateway at `addr` with a real websocket client.
pub async fn open_socket(addr: SocketAddr, token: &str, extra: &[(&str, &str)]) -> Ws {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://{addr}/socket.io/?token={token}&EIO=3&transport=websocket");
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        url.as_str(),
    )
    .unwrap();
    for (k, v) in extra {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let (ws, res) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("websocket upgrade through the gateway");
    assert_eq!(res.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

/// Writes raw bytes on a fresh connection and reads until the server closes it.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// GETs the admin `/metrics` page.
pub async fn scrape(env: &TestEnv) -> String {
    let res = request(
        Method::GET,
        &format!("http://{}/metrics", env.gw.admin_addr),
        &[],
        Bytes::new(),
    )
    .await;
    String::from_utf8(res.body.to_vec()).expect("metrics are text")
}

/// The value of the sample line `series` (name and labels exactly as exported), if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
