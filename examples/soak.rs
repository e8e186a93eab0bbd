//! A bounded fault soak, all on 127.0.0.1: the built-in upstream simulator and the gateway
//! (in this process, through `amity_gateway::app::Gateway`, so the RSS and file-descriptor
//! checks measure the whole soak: gateway, simulator and clients), a `redis-server` child as
//! the rate limiter's shared backend, and mixed concurrent traffic: sessions (v3, v5, visitor;
//! valid, invalid, malformed, wrong media type, oversized), lookups with issued tokens,
//! pass-through calls, streamed downloads and websockets. Meanwhile it cycles upstream faults
//! through the simulator (latency, latency past the gateway's upstream timeout, 500s,
//! connection resets) and kills and restarts redis-server.
//!
//! It fails (exit 1) unless, at the end: every request got a defined answer (a complete
//! response whose status is the upstream's or one the gateway documents, with the JSON
//! envelope on every error; a client-side transport error is never one), nothing panicked and
//! the gateway still runs, RSS after warm-up stayed flat (the last third's maximum within
//! 25 % + 16 MiB of the first third's) and the open file descriptors did not grow (at most
//! 16 more once traffic stops than at the end of warm-up).
//!
//! ```sh
//! cargo run --example soak -- --seconds 60            # what CI runs
//! cargo run --release --example soak -- --seconds 3600 --max-requests 50000000
//! cargo run --example soak -- --seconds 60 --no-redis # without redis-server on PATH
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amity_gateway::app::Gateway;
use amity_gateway::config::{FileConfig, Secret};
use amity_gateway::ratelimit::BackendKind;
use amity_gateway::sim::{SimConfig, Simulator};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

// The binary's allocator, so RSS behaves as the shipped gateway's does.
#[path = "../src/allocator.rs"]
mod allocator;
#[path = "../benches/support/rss.rs"]
mod rss;

#[global_allocator]
static GLOBAL: allocator::Mimalloc = allocator::Mimalloc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type HttpClient = Client<HttpConnector, Full<Bytes>>;

const KEY: &str = "soak-upstream-key-5b1e";
/// Concurrent HTTP clients and websocket clients.
const HTTP_WORKERS: usize = 24;
const WS_WORKERS: usize = 4;
/// Devices (and users) the traffic spreads over: bounds the simulator's world.
const DEVICES: usize = 200;
/// Each request (and each websocket frame) must be answered within this, or it is undefined.
const ANSWER_BUDGET: Duration = Duration::from_secs(15);
/// The gateway's upstream budget; one fault phase injects latency past it (504s).
const UPSTREAM_TIMEOUT_MS: u64 = 1_000;
/// Statuses a defined answer may carry: the simulator's own (200, 400, 401, 403, 404, 413,
/// 500) and the gateway's documented ones.
const DEFINED: &[u16] = &[
    200, 400, 401, 403, 404, 413, 415, 422, 429, 500, 502, 503, 504,
];

struct Args {
    seconds: u64,
    max_requests: u64,
    redis: bool,
}

fn args() -> Result<Args, BoxError> {
    let mut a = Args {
        seconds: 60,
        max_requests: 0,
        redis: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seconds" => a.seconds = it.next().ok_or("--seconds N")?.parse()?,
            "--max-requests" => a.max_requests = it.next().ok_or("--max-requests N")?.parse()?,
            "--no-redis" => a.redis = false,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    if a.seconds < 6 {
        return Err("--seconds must be at least 6".into());
    }
    if a.max_requests == 0 {
        // Bounded in count as well as time: far above what one machine drives per second.
        a.max_requests = a.seconds * 20_000;
    }
    Ok(a)
}

/// What the run saw, shared by every client task.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    websockets: AtomicU64,
    ws_frames: AtomicU64,
    undefined: AtomicU64,
    statuses: Mutex<BTreeMap<u16, u64>>,
    /// The first few undefined answers, described.
    examples: Mutex<Vec<String>>,
}

impl Tally {
    fn status(&self, s: u16) {
        *lock(&self.statuses).entry(s).or_default() += 1;
    }

    fn undefined(&self, what: String) {
        self.undefined.fetch_add(1, Ordering::Relaxed);
        let mut ex = lock(&self.examples);
        if ex.len() < 10 {
            ex.push(what);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Tokens and users issued so far (bounded ring), for lookups and websockets.
#[derive(Default)]
struct Issued {
    tokens: Mutex<Vec<(String, String, Option<String>)>>,
    next: AtomicUsize,
}

impl Issued {
    fn add(&self, token: String, user: String, file: Option<String>) {
        let mut t = lock(&self.tokens);
        if t.len() < 64 {
            t.push((token, user, file));
        } else {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % 64;
            t[i] = (token, user, file);
        }
    }

    fn pick(&self) -> Option<(String, String, Option<String>)> {
        let t = lock(&self.tokens);
        if t.is_empty() {
            return None;
        }
        Some(t[rand::random_range(0..t.len())].clone())
    }
}

fn main() -> Result<(), BoxError> {
    let args = args()?;
    let panics = Arc::new(AtomicU64::new(0));
    let default_hook = std::panic::take_hook();
    let counted = Arc::clone(&panics);
    std::panic::set_hook(Box::new(move |info| {
        counted.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let failures = rt.block_on(soak(&args, &panics))?;
    rt.shutdown_timeout(Duration::from_secs(5));
    if failures.is_empty() {
        Ok(())
    } else {
        for f in &failures {
            eprintln!("soak: FAILED: {f}");
        }
        std::process::exit(1);
    }
}

/// A `redis-server` child on a fixed loopback port, killed and restarted during the run.
struct Redis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    fn start(&mut self) -> Result<(), BoxError> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!("redis-server not found on PATH ({e}): apt-get install -y redis-server, or pass --no-redis")
            })?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_ready(&self) -> Result<(), BoxError> {
        for _ in 0..200 {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                let mut buf = [0u8; 7];
                if s.write_all(b"PING\r\n").await.is_ok()
                    && s.read_exact(&mut buf).await.is_ok()
                    && &buf == b"+PONG\r\n"
                {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(format!("redis-server did not answer PING on port {}", self.port).into())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `VmRSS` of this process, in KiB.
fn rss_kib() -> u64 {
    rss::rss_kib(None).unwrap_or(0)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

async fn soak(args: &Args, panics: &AtomicU64) -> Result<Vec<String>, BoxError> {
    let sim = Simulator::new(SimConfig::new(KEY));
    // The world is bounded by DEVICES; the request log would grow with every request.
    sim.set_recording(false);
    let sim_handle = Arc::clone(&sim)
        .spawn(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await?;

    let mut redis = if args.redis {
        let mut r = Redis {
            port: free_port()?,
            dir: tempfile::tempdir()?,
            child: None,
        };
        r.start()?;
        r.wait_ready().await?;
        Some(r)
    } else {
        None
    };

    let mut file = FileConfig::default();
    file.server.listen = "127.0.0.1:0".into();
    file.server.admin_listen = "127.0.0.1:0".into();
    file.upstream.url = sim_handle.base_url();
    file.upstream.timeout_ms = UPSTREAM_TIMEOUT_MS;
    file.upstream.connect_timeout_ms = 500;
    file.api_key.value = Some(Secret(KEY.into()));
    // Most devices stay under the budget; one hot device is limited (429s).
    file.rate_limit.requests = 50;
    // Small bounded caches, full within the warm-up: later growth is not a cache filling up.
    file.cache.max_entries = 500;
    file.cache.max_tokens = 1_000;
    if let Some(r) = &redis {
        file.rate_limit.backend = BackendKind::Redis;
        file.rate_limit.redis.url = Some(Secret(format!("redis://127.0.0.1:{}/", r.port)));
        file.rate_limit.redis.timeout_ms = 50;
    }
    let config = file.resolve(&Default::default())?;
    let gateway = Gateway::bind(config).await?;
    let gw = gateway.bound().addr;
    let limiter = gateway.rate_limit_stats();
    let (stop_gw, stopped) = tokio::sync::oneshot::channel::<()>();
    let gw_task = tokio::spawn(gateway.run(async {
        let _ = stopped.await;
    }));

    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let warmup = Duration::from_secs((args.seconds / 6).clamp(3, 30));
    let tally = Arc::new(Tally::default());
    let issued = Arc::new(Issued::default());
    let budget = Arc::new(AtomicU64::new(args.max_requests));
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(1))
        .build_http();

    let mut tasks = Vec::new();
    for w in 0..HTTP_WORKERS {
        let (client, tally, issued, budget) = (
            client.clone(),
            Arc::clone(&tally),
            Arc::clone(&issued),
            Arc::clone(&budget),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline && take(&budget) {
                http_step(&client, gw, w, n, &tally, &issued).await;
                n += 1;
            }
        }));
    }
    for _ in 0..WS_WORKERS {
        let (tally, issued, budget) =
            (Arc::clone(&tally), Arc::clone(&issued), Arc::clone(&budget));
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline && take(&budget) {
                ws_step(gw, &tally, &issued).await;
            }
        }));
    }

    // Faults, Redis restarts and samples, once a second until the deadline.
    let phases = [
        ("clean", 0, 0.0, 0.0),
        ("latency 50 ms", 50, 0.0, 0.0),
        ("upstream 500s", 0, 0.2, 0.0),
        ("connection resets", 0, 0.0, 0.05),
        (
            "latency past the upstream timeout",
            UPSTREAM_TIMEOUT_MS + 300,
            0.0,
            0.0,
        ),
        ("everything at once", 20, 0.1, 0.03),
    ];
    let mut rss = Vec::new();
    let mut fds = Vec::new();
    let mut fds_after_warmup = None;
    let mut redis_restarts = 0u32;
    let mut tick = 0u64;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        tick += 1;
        let (_, latency, fail, reset) =
            phases[usize::try_from(tick / 4).unwrap_or(0) % phases.len()];
        sim.set_latency(Duration::from_millis(latency));
        sim.set_failure_rate(fail);
        sim.set_reset_rate(reset);
        if let Some(r) = redis.as_mut() {
            // Down for 3 s in every 10.
            match tick % 10 {
                5 => r.kill(),
                8 => {
                    r.start()?;
                    r.wait_ready().await?;
                    redis_restarts += 1;
                }
                _ => {}
            }
        }
        if started.elapsed() >= warmup {
            rss.push(rss_kib());
            fds.push(open_fds());
            fds_after_warmup.get_or_insert(open_fds());
        }
        if tick.is_multiple_of(10) {
            println!(
                "soak: {tick:>5} s: {} requests, RSS {} KiB, {} fds",
                tally.requests.load(Ordering::Relaxed),
                rss_kib(),
                open_fds()
            );
        }
    }
    for t in tasks {
        if let Err(e) = t.await {
            tally.undefined(format!("a client task failed: {e}"));
        }
    }
    sim.set_latency(Duration::ZERO);
    sim.set_failure_rate(0.0);
    sim.set_reset_rate(0.0);
    drop(client);
    // Idle pooled connections close (the client's pool after 1 s) before the last count.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let fds_end = open_fds();
    let gateway_alive = !gw_task.is_finished();
    let _ = stop_gw.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), gw_task).await;
    sim_handle.stop().await;
    drop(redis);

    let mut failures = Vec::new();
    let requests = tally.requests.load(Ordering::Relaxed);
    let undefined = tally.undefined.load(Ordering::Relaxed);
    let panicked = panics.load(Ordering::SeqCst);
    if undefined > 0 {
        failures.push(format!(
            "{undefined} undefined answers, e.g. {:?}",
            lock(&tally.examples)
        ));
    }
    if panicked > 0 {
        failures.push(format!("{panicked} panics"));
    }
    if !gateway_alive {
        failures.push("the gateway stopped before the end of the run".into());
    }
    if requests == 0 || tally.websockets.load(Ordering::Relaxed) == 0 {
        failures.push("no traffic was driven".into());
    }
    let third = rss.len() / 3;
    let (rss_first, rss_last) = if third > 0 {
        (
            rss[..third].iter().copied().max().unwrap_or(0),
            rss[rss.len() - third..].iter().copied().max().unwrap_or(0),
        )
    } else {
        (0, 0)
    };
    let rss_limit = rss_first + rss_first / 4 + 16 * 1024;
    if third == 0 {
        failures.push("too few RSS samples after warm-up".into());
    } else if rss_last > rss_limit {
        failures.push(format!(
            "RSS grew: last third's max {rss_last} KiB > {rss_limit} KiB (first third's max {rss_first} KiB + 25 % + 16 MiB)"
        ));
    }
    let fds_warm = fds_after_warmup.unwrap_or(0);
    if fds_end > fds_warm + 16 {
        failures.push(format!(
            "file descriptors grew: {fds_end} open at the end > {fds_warm} after warm-up + 16"
        ));
    }
    let statuses: Vec<String> = lock(&tally.statuses)
        .iter()
        .map(|(s, n)| format!("{s}:{n}"))
        .collect();
    let backend_errors = limiter.map_or(0, |l| l.backend_errors());
    println!(
        "soak: {requests} requests, {} websockets ({} frames echoed), {redis_restarts} redis restarts ({backend_errors} limiter decisions fell back), statuses [{}], RSS max {rss_first} -> {rss_last} KiB, fds {fds_warm} -> {fds_end} (max {} during traffic), {panicked} panics, {undefined} undefined answers",
        tally.websockets.load(Ordering::Relaxed),
        tally.ws_frames.load(Ordering::Relaxed),
        statuses.join(" "),
        fds.iter().max().copied().unwrap_or(0),
    );
    Ok(failures)
}

fn take(budget: &AtomicU64) -> bool {
    budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

/// One session body, by kind: valid for `device`, or one of the ways a client gets it wrong.
fn session_body(kind: u32, user: &str, device: &str) -> (&'static str, String) {
    let valid = json!({
        "userId": user,
        "deviceId": device,
        "deviceInfo": {"kind": "ios", "model": "iPhone15,2", "sdkVersion": "6.35.3"},
        "displayName": "Soak User",
    });
    match kind {
        0 => ("application/json", "{\"userId\":".into()),
        1 => ("text/plain", valid.to_string()),
        2 => (
            "application/json",
            json!({"userId": user, "deviceId": 7}).to_string(),
        ),
        3 => (
            "application/json",
            json!({"userId": user, "deviceId": device, "displayName": "x".repeat(20_000)})
                .to_string(),
        ),
        _ => ("application/json", valid.to_string()),
    }
}

async fn http_step(
    client: &HttpClient,
    gw: SocketAddr,
    worker: usize,
    n: u64,
    tally: &Tally,
    issued: &Issued,
) {
    let d = rand::random_range(0..DEVICES);
    // One device in ten requests is the same hot one: it is rate limited.
    let device = if rand::random_range(0..10) == 0 {
        "soak-hot-device".to_owned()
    } else {
        format!("soak-device-{d}")
    };
    let user = format!("soak-user-{d}");
    let tok = issued.pick();
    let bearer = tok.as_ref().map(|(t, _, _)| format!("Bearer {t}"));
    let roll = rand::random_range(0..100u32);
    let (method, path, ctype, body, expect_len) = match roll {
        0..=29 => {
            let path = match roll % 3 {
                0 => "/api/v3/sessions",
                1 => "/api/v5/sessions",
                _ => "/api/v5/sessions/visitor",
            };
            let (ctype, body) = session_body(rand::random_range(0..8), &user, &device);
            (Method::POST, path.to_owned(), Some(ctype), body, None)
        }
        30..=44 => {
            let u = tok.as_ref().map_or("nobody", |(_, u, _)| u.as_str());
            (
                Method::GET,
                format!("/api/v3/users/{u}"),
                None,
                String::new(),
                None,
            )
        }
        45..=54 => (
            Method::GET,
            format!(
                "/api/v3/users/list?userIds={user}&userIds=soak-user-{}",
                (d + 1) % DEVICES
            ),
            None,
            String::new(),
            None,
        ),
        55..=64 => {
            let f = tok
                .as_ref()
                .and_then(|(_, _, f)| f.clone())
                .unwrap_or_else(|| "no-such-file".into());
            (
                Method::GET,
                format!("/api/v3/files/{f}"),
                None,
                String::new(),
                None,
            )
        }
        65..=74 => (
            Method::GET,
            format!("/api/v3/channels/soak-{worker}-{n}"),
            None,
            String::new(),
            None,
        ),
        75..=84 => (
            Method::POST,
            "/api/v3/messages".to_owned(),
            Some("application/json"),
            json!({"text": "x".repeat(rand::random_range(0..2_000))}).to_string(),
            None,
        ),
        _ => {
            let size = rand::random_range(0..256 * 1024usize);
            (
                Method::GET,
                format!("/api/v3/files/f/download?size={size}"),
                None,
                String::new(),
                Some(size),
            )
        }
    };
    let mut req = Request::builder()
        .method(method.clone())
        .uri(format!("http://{gw}{path}"));
    if let Some(c) = ctype {
        req = req.header("content-type", c);
    }
    if let Some(b) = &bearer {
        if !path.contains("/sessions") || path == "/api/v3/sessions" && method == Method::GET {
            req = req.header("authorization", b.as_str());
        }
    }
    let Ok(req) = req.body(Full::new(Bytes::from(body))) else {
        tally.undefined(format!("could not build {method} {path}"));
        return;
    };
    tally.requests.fetch_add(1, Ordering::Relaxed);
    let label = format!("{method} {}", path.split('?').next().unwrap_or(""));
    let answer = tokio::time::timeout(ANSWER_BUDGET, async {
        let res = client
            .request(req)
            .await
            .map_err(|e| format!("transport: {e:?}"))?;
        let (parts, body) = res.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("{} then body error: {e:?}", parts.status))?
            .to_bytes();
        Ok::<_, String>((parts.status, body))
    })
    .await;
    let (status, body) = match answer {
        Err(_) => return tally.undefined(format!("{label}: no answer within {ANSWER_BUDGET:?}")),
        Ok(Err(e)) => return tally.undefined(format!("{label}: {e}")),
        Ok(Ok(a)) => a,
    };
    tally.status(status.as_u16());
    if let Err(why) = defined(status, &body, expect_len) {
        return tally.undefined(format!("{label}: {status}: {why}"));
    }
    if status == StatusCode::OK && path.contains("/sessions") {
        if let Ok(v) = serde_json::from_slice::<Value>(&body) {
            if let Some(t) = v["accessToken"].as_str() {
                let user = v["users"][0]["userId"].as_str().unwrap_or(&user).to_owned();
                let file = v["files"][0]["fileId"].as_str().map(str::to_owned);
                issued.add(t.to_owned(), user, file);
            }
        }
    }
}

/// Whether a complete answer is defined: a documented status, the envelope on every error,
/// and a download's full length.
fn defined(status: StatusCode, body: &[u8], expect_len: Option<usize>) -> Result<(), String> {
    if !DEFINED.contains(&status.as_u16()) {
        return Err("not a documented status".into());
    }
    if status.is_success() {
        return match expect_len {
            Some(n) if body.len() != n => Err(format!("{} of {n} bytes", body.len())),
            _ => Ok(()),
        };
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.get("code").is_some() => Ok(()),
        _ => Err(format!(
            "no envelope: {:?}",
            String::from_utf8_lossy(&body[..body.len().min(120)])
        )),
    }
}

/// One websocket through the gateway: open, a few echoed frames, close. A refused upgrade must
/// be a defined answer too.
async fn ws_step(gw: SocketAddr, tally: &Tally, issued: &Issued) {
    let token = issued
        .pick()
        .map_or_else(|| "no-token-yet".to_owned(), |(t, _, _)| t);
    tally.requests.fetch_add(1, Ordering::Relaxed);
    let url = format!("ws://{gw}/socket.io/?token={token}&EIO=3&transport=websocket");
    let outcome = tokio::time::timeout(ANSWER_BUDGET, async {
        let tcp = tokio::net::TcpStream::connect(gw)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut ws, _) = match tokio_tungstenite::client_async(url.as_str(), tcp).await {
            Ok(ok) => ok,
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
                let status = res.status();
                let body = res.body().clone().unwrap_or_default();
                return defined(status, &body, None)
                    .map(|()| Some(status))
                    .map_err(|why| format!("upgrade refused {status}: {why}"));
            }
            Err(e) => return Err(format!("upgrade: {e}")),
        };
        tally.websockets.fetch_add(1, Ordering::Relaxed);
        // The Engine.IO open packet first, then echoes.
        next_text(&mut ws).await?;
        for i in 0..3 {
            let frame = format!("42[\"soak\",{i}]");
            ws.send(Message::text(frame.clone()))
                .await
                .map_err(|e| format!("send: {e}"))?;
            let back = next_text(&mut ws).await?;
            if back != frame {
                return Err(format!("echo {back:?} for {frame:?}"));
            }
            tally.ws_frames.fetch_add(1, Ordering::Relaxed);
        }
        let _ = ws.close(None).await;
        Ok(Some(StatusCode::SWITCHING_PROTOCOLS))
    })
    .await;
    match outcome {
        Err(_) => tally.undefined(format!("websocket: nothing within {ANSWER_BUDGET:?}")),
        Ok(Err(e)) => tally.undefined(format!("websocket: {e}")),
        Ok(Ok(Some(s))) => tally.status(s.as_u16()),
        Ok(Ok(None)) => {}
    }
}

async fn next_text(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
) -> Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(other)) => return Err(format!("unexpected frame {other:?}")),
            Some(Err(e)) => return Err(format!("read: {e}")),
            None => return Err("closed".into()),
        }
    }
}
