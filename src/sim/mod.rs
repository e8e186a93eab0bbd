//! An upstream simulator speaking the Amity Social Cloud contract, for the demo, end-to-end
//! tests and benches.
//!
//! It is a real HTTP server (HTTP/1.1 and HTTP/2 with prior knowledge) on a tokio
//! [`TcpListener`], so the gateway talks to it exactly as it talks to the upstream: over a
//! socket, through its pooled client.
//!
//! # Upstream API served
//!
//! | route | auth | answer |
//! | --- | --- | --- |
//! | `POST /api/v3/sessions`, `/api/v4/sessions`, `/api/v5/sessions` | `x-api-key` | session (v5: no `refreshToken`, adds `userType`) |
//! | `GET /api/v3/sessions` | bearer | `{"lastCachePurge": …}` |
//! | `DELETE /api/v4/sessions` | bearer | revokes the token, `{"success":true}`; with `?userId=U` (admin tokens only, else 403) every token of U |
//! | `GET /api/v3/users/{userId}` | bearer | `{"users":[…],"files":[…]}` |
//! | `GET /api/v3/users/list?userIds=…` | bearer | same, every id must exist |
//! | `GET /api/v3/files/{fileId}` | bearer | the bare File object; a private file ([`Simulator::add_private_file`]) only to its one viewer, 403 to others |
//! | `POST /api/v5/sessions/visitor` | `x-api-key` | a visitor session (`userType: "visitor"`) |
//! | `GET /api/v3/network-settings/chat` | bearer | the network's chat settings |
//! | `GET /socket.io/?token=…` | token | websocket: Engine.IO open packet, then echo |
//! | `GET /api/v3/files/{fileId}/download?size=N` | bearer | N bytes, streamed (see [`stream`]) |
//! | any other `/api/` call | bearer | echo of method, path, body length and SHA-256 |
//!
//! Anything else is 404 in the upstream's envelope. A new session for a `deviceId` retires that
//! device's older access token, as the upstream does; tokens expire after 30 days
//! ([`Simulator::set_token_lifetime`] changes that for tests).
//!
//! # Control API (never recorded, never delayed, never failed)
//!
//! * `GET /_sim/requests`: JSON array of [`RecordedRequest`]; `DELETE /_sim/requests` clears it.
//! * `POST /_sim/purge`: moves `lastCachePurge` strictly forward, answers `{"lastCachePurge": …}`.
//! * `PUT /_sim/faults` with `{"latency_ms": N, "failure_rate": F, "reset_rate": R}` (each
//!   optional); `GET /_sim/faults` reads them back. A reset closes the connection without an
//!   answer, as a crashed or cut-off upstream does.
//!
//! Every other request is recorded (method, path + query, headers, body) BEFORE any check, so a
//! test sees exactly what the gateway sent, including requests the simulator rejects.
//! The simulator never logs tokens or the api key.

mod routes;
mod stream;
mod world;

pub use stream::download_byte;

#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use routes::{ApiRequest, SimBody};
use world::World;

/// How the simulator starts. `Debug` leaves the key out.
#[derive(Clone)]
pub struct SimConfig {
    /// The only `x-api-key` accepted by the session endpoints. Never logged.
    pub api_key: String,
    /// Delay before answering every non-control request.
    pub latency: Duration,
    /// Fraction (0.0 to 1.0) of non-control requests answered with a 500 envelope.
    pub failure_rate: f64,
    /// Fraction (0.0 to 1.0) of non-control requests whose connection is closed without an
    /// answer (every request in flight on that connection loses its answer too).
    pub reset_rate: f64,
}

impl std::fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimConfig")
            .field("api_key", &"****")
            .field("latency", &self.latency)
            .field("failure_rate", &self.failure_rate)
            .field("reset_rate", &self.reset_rate)
            .finish()
    }
}

impl SimConfig {
    /// A simulator accepting `api_key`, with no latency and no failures.
    pub fn new(api_key: impl Into<String>) -> Self {
        Self {
            api_key: api_key.into(),
            latency: Duration::ZERO,
            failure_rate: 0.0,
            reset_rate: 0.0,
        }
    }
}

/// One request the simulator received, as it arrived on the wire.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query exactly as received (not decoded).
    pub path: String,
    /// Lowercase names, in arrival order; a repeated name appears once per value.
    pub headers: Vec<(String, String)>,
    /// The body as lossy UTF-8.
    pub body: String,
    /// The body bytes exactly as received.
    #[serde(skip)]
    pub body_bytes: Bytes,
}

impl RecordedRequest {
    fn of(parts: &http::request::Parts, body: Bytes) -> Self {
        Self {
            method: parts.method.as_str().to_owned(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
            headers: parts
                .headers
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str().to_owned(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: String::from_utf8_lossy(&body).into_owned(),
            body_bytes: body,
        }
    }

    /// The first value of header `name` (case-insensitive), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Clone, Copy)]
struct Faults {
    latency: Duration,
    failure_rate: f64,
    reset_rate: f64,
}

/// The upstream simulator. Cheap to share: all state is behind mutexes held only for a few
/// map operations, never across an await.
pub struct Simulator {
    api_key: String,
    world: Mutex<World>,
    faults: Mutex<Faults>,
    requests: Mutex<Vec<RecordedRequest>>,
    record: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The api key stays out of Debug output on purpose.
        f.debug_struct("Simulator")
            .field("faults", &*lock(&self.faults))
            .finish_non_exhaustive()
    }
}

/// Locks ignoring poison: every critical section leaves the data consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn sanitize_rate(r: f64) -> f64 {
    if r.is_nan() {
        0.0
    } else {
        r.clamp(0.0, 1.0)
    }
}

impl Simulator {
    #[must_use]
    pub fn new(cfg: SimConfig) -> Arc<Self> {
        Arc::new(Self {
            world: Mutex::new(World::new(&cfg.api_key)),
            api_key: cfg.api_key,
            faults: Mutex::new(Faults {
                latency: cfg.latency,
                failure_rate: sanitize_rate(cfg.failure_rate),
                reset_rate: sanitize_rate(cfg.reset_rate),
            }),
            requests: Mutex::new(Vec::new()),
            record: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Serves connections from `listener` until `shutdown` resolves; then stops accepting,
    /// drops the listener (new connects are refused), asks open connections to close once
    /// their in-flight requests are answered (idle keep-alive connections close at once), and
    /// returns without waiting for them.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new());
        builder.http2().timer(TokioTimer::new());
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                biased;
                () = &mut shutdown => break,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _peer)) => stream,
                Err(err) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %err, "simulator accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let sim = Arc::clone(&self);
            // A reset fault fires this; the connection's task then drops the connection.
            let reset = Arc::new(tokio::sync::Notify::new());
            let fire = Arc::clone(&reset);
            let service = service_fn(move |req: Request<Incoming>| {
                let sim = Arc::clone(&sim);
                let fire = Arc::clone(&fire);
                async move {
                    if sim.draws_reset(req.uri().path()) {
                        fire.notify_one();
                        // Never answered: the connection is dropped under this request.
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, Infallible>(sim.handle(req).await)
                }
            });
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                tokio::select! {
                    res = conn => if let Err(err) = res {
                        tracing::debug!(error = %err, "simulator connection ended with an error");
                    },
                    // Dropping the connection closes its socket with nothing more written.
                    () = reset.notified() => {}
                }
            });
        }
        drop(listener);
        // Signals every watched connection; the returned future (all connections closed) is
        // left to run on its own so `serve` returns promptly.
        tokio::spawn(graceful.shutdown());
    }

    /// Binds `addr`, spawns [`Simulator::serve`] on the current runtime and returns a handle
    /// holding the bound address. Dropping the handle or calling [`SimHandle::stop`] shuts the
    /// server down and closes the listener.
    ///
    /// # Errors
    ///
    /// When `addr` cannot be bound.
    pub async fn spawn(self: Arc<Self>, addr: SocketAddr) -> std::io::Result<SimHandle> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(self.serve(listener, async move {
            // Resolves on an explicit stop and when the handle (the sender) is dropped.
            let _ = rx.await;
        }));
        Ok(SimHandle {
            addr,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// Every request received so far, except `/_sim/*` control calls, oldest first.
    #[must_use]
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.requests).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.requests).clear();
    }

    /// Turns request recording on (the default) or off; benches turn it off so memory does
    /// not grow with the number of requests.
    pub fn set_recording(&self, enabled: bool) {
        self.record
            .store(enabled, std::sync::atomic::Ordering::Relaxed);
    }

    /// `lastCachePurge := now`, always strictly later than the previous value.
    pub fn purge(&self) {
        lock(&self.world).purge();
    }

    /// Revokes every access token issued so far: later bearer calls answer 401, as after an
    /// upstream-side logout of everyone.
    pub fn revoke_all_tokens(&self) {
        lock(&self.world).revoke_all();
    }

    /// Gives `user_id` the admin role: its tokens may revoke other users' tokens
    /// (`DELETE /api/v4/sessions?userId=`).
    pub fn make_admin(&self, user_id: &str) {
        lock(&self.world).make_admin(user_id);
    }

    /// Adds a file only the access token `viewer` may see (as a file in a private channel):
    /// anyone else is answered 403. Returns its fileId.
    pub fn add_private_file(&self, viewer: &str) -> String {
        lock(&self.world).add_private_file(viewer)
    }

    /// The access token the simulator last issued for `device_id`, while it is live.
    pub fn device_token(&self, device_id: &str) -> Option<String> {
        lock(&self.world).device_token(device_id)
    }

    /// Whether the simulator accepts `token` (a live access token it issued).
    pub fn token_valid(&self, token: &str) -> bool {
        lock(&self.world).token_valid(token)
    }

    /// Lifetime of the access tokens issued from now on (default 30 days, as the upstream's);
    /// tests shorten it to see tokens expire. Capped at ten years so expiry dates stay valid.
    pub fn set_token_lifetime(&self, d: Duration) {
        let cap = time::Duration::days(3650);
        let lifetime = time::Duration::try_from(d).map_or(cap, |l| l.min(cap));
        lock(&self.world).set_token_lifetime(lifetime);
    }

    pub fn set_latency(&self, d: Duration) {
        lock(&self.faults).latency = d;
    }

    /// Fraction of non-control requests answered 500 (clamped to 0.0..=1.0; NaN means 0).
    pub fn set_failure_rate(&self, r: f64) {
        lock(&self.faults).failure_rate = sanitize_rate(r);
    }

    /// Fraction of non-control requests whose connection is closed without an answer
    /// (clamped to 0.0..=1.0; NaN means 0).
    pub fn set_reset_rate(&self, r: f64) {
        lock(&self.faults).reset_rate = sanitize_rate(r);
    }

    /// Whether a request for `path` draws the reset fault (control calls never do).
    fn draws_reset(&self, path: &str) -> bool {
        let rate = lock(&self.faults).reset_rate;
        rate > 0.0 && !is_control(path) && rand::random::<f64>() < rate
    }

    /// The current `lastCachePurge`, ISO-8601 with milliseconds and `Z`.
    #[must_use]
    pub fn last_cache_purge(&self) -> String {
        world::iso(lock(&self.world).last_purge())
    }

    /// Records a request whose body is streamed, not held (its body is recorded empty).
    fn record_head(&self, parts: &http::request::Parts) {
        if self.record.load(std::sync::atomic::Ordering::Relaxed) {
            lock(&self.requests).push(RecordedRequest::of(parts, Bytes::new()));
        }
    }

    /// Streamed calls: the realtime websocket, downloads, and every `/api/` call the world
    /// does not model (see [`stream`]).
    async fn handle_streamed(&self, mut req: Request<Incoming>) -> Response<SimBody> {
        let on_upgrade = hyper::upgrade::on(&mut req);
        let (parts, body) = req.into_parts();
        self.record_head(&parts);
        let faults = *lock(&self.faults);
        if !faults.latency.is_zero() {
            tokio::time::sleep(faults.latency).await;
        }
        if faults.failure_rate > 0.0 && rand::random::<f64>() < faults.failure_rate {
            return routes::internal_error();
        }
        let path = parts.uri.path();
        let query = parts.uri.query();
        if path.starts_with("/socket.io/") {
            let valid = stream::query_param(query, "token")
                .is_some_and(|t| lock(&self.world).token_valid(&t));
            return stream::websocket(&parts.headers, valid, on_upgrade);
        }
        let authorized =
            crate::wire::bearer(&parts.headers).is_some_and(|t| lock(&self.world).token_valid(t));
        if !authorized {
            return routes::unauthorized();
        }
        if parts.method == Method::GET
            && path.starts_with("/api/v3/files/")
            && path.ends_with("/download")
        {
            return stream::download(query);
        }
        stream::echo(&parts.method, path, body).await
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<SimBody> {
        if routes::is_streamed(req.method(), req.uri().path()) {
            return self.handle_streamed(req).await;
        }
        let (parts, body) = req.into_parts();
        let path = parts.uri.path();
        if is_control(path) {
            let body = match Limited::new(body, routes::MAX_BODY_BYTES).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => return routes::bad_request(),
            };
            return self.control(&parts.method, path, &body);
        }

        let collected = Limited::new(body, routes::MAX_BODY_BYTES).collect().await;
        let (body, body_error) = match collected {
            Ok(collected) => (collected.to_bytes(), None),
            Err(err) => {
                let too_large = err
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some();
                (Bytes::new(), Some(too_large))
            }
        };
        if self.record.load(std::sync::atomic::Ordering::Relaxed) {
            lock(&self.requests).push(RecordedRequest::of(&parts, body.clone()));
        }

        let faults = *lock(&self.faults);
        if !faults.latency.is_zero() {
            tokio::time::sleep(faults.latency).await;
        }
        if faults.failure_rate > 0.0 && rand::random::<f64>() < faults.failure_rate {
            return routes::internal_error();
        }
        match body_error {
            Some(true) => return routes::payload_too_large(),
            Some(false) => return routes::bad_request(),
            None => {}
        }

        let req = ApiRequest {
            method: &parts.method,
            path,
            query: parts.uri.query(),
            headers: &parts.headers,
            body: &body,
        };
        routes::handle_api(&mut lock(&self.world), &self.api_key, &req)
    }

    fn control(&self, method: &Method, path: &str, body: &Bytes) -> Response<SimBody> {
        match (method, path) {
            (&Method::GET, "/_sim/requests") => {
                let requests = self.requests();
                match serde_json::to_value(&requests) {
                    Ok(v) => routes::json_response(StatusCode::OK, &v),
                    Err(_) => routes::internal_error(),
                }
            }
            (&Method::DELETE, "/_sim/requests") => {
                self.clear_requests();
                routes::json_response(StatusCode::OK, &json!({"success": true}))
            }
            (&Method::POST, "/_sim/purge") => {
                let at = world::iso(lock(&self.world).purge());
                routes::json_response(StatusCode::OK, &json!({"lastCachePurge": at}))
            }
            (&Method::PUT, "/_sim/faults") => {
                let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
                    return routes::bad_request();
                };
                let latency = match obj.get("latency_ms") {
                    None | Some(Value::Null) => None,
                    Some(v) => match v.as_u64() {
                        Some(ms) => Some(Duration::from_millis(ms)),
                        None => return routes::bad_request(),
                    },
                };
                let (Ok(rate), Ok(reset)) = (
                    rate_field(&obj, "failure_rate"),
                    rate_field(&obj, "reset_rate"),
                ) else {
                    return routes::bad_request();
                };
                let mut faults = lock(&self.faults);
                if let Some(d) = latency {
                    faults.latency = d;
                }
                if let Some(r) = rate {
                    faults.failure_rate = r;
                }
                if let Some(r) = reset {
                    faults.reset_rate = r;
                }
                faults_json(&faults)
            }
            (&Method::GET, "/_sim/faults") => faults_json(&lock(&self.faults)),
            _ => routes::not_found(),
        }
    }
}

fn is_control(path: &str) -> bool {
    path == "/_sim" || path.starts_with("/_sim/")
}

/// An optional rate in 0.0..=1.0 from the faults body; `Err` when present but not one.
fn rate_field(obj: &serde_json::Map<String, Value>, name: &str) -> Result<Option<f64>, ()> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(r) if (0.0..=1.0).contains(&r) => Ok(Some(r)),
            _ => Err(()),
        },
    }
}

fn faults_json(f: &Faults) -> Response<SimBody> {
    let latency_ms = u64::try_from(f.latency.as_millis()).unwrap_or(u64::MAX);
    routes::json_response(
        StatusCode::OK,
        &json!({
            "latency_ms": latency_ms,
            "failure_rate": f.failure_rate,
            "reset_rate": f.reset_rate,
        }),
    )
}

/// A running simulator started by [`Simulator::spawn`]. Dropping it shuts the server down.
#[derive(Debug)]
pub struct SimHandle {
    /// The address the simulator listens on (the real port when bound to port 0).
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl SimHandle {
    /// `http://{addr}`, for building upstream URLs.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Shuts the server down and waits until the listener is closed, so connects are refused
    /// once this returns.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
