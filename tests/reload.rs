//! Configuration reload in the real binary: SIGHUP and a rewritten file apply new limits to
//! the requests that follow, without a restart; a request in flight finishes on the config it
//! started with; a bad file or a new listener address keeps the running config, logged and
//! counted in the admin `/metrics`.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::process::GatewayProcess;
use common::*;
use http::{Method, StatusCode};

/// Never in a log line, whatever the file says.
const SECRET: &str = "sk-reload-secret-8e21";

fn config(sim: SocketAddr, listen: &str, rate_limit: &str, server: &str) -> String {
    format!(
        "[server]\nlisten = \"{listen}\"\nadmin_listen = \"127.0.0.1:0\"\ndrain_timeout_secs = 10\n{server}\n\
         [upstream]\nurl = \"http://{sim}\"\ntimeout_ms = 5000\n[log]\nformat = \"json\"\n\
         [rate_limit]\n{rate_limit}\n"
    )
}

/// Replaces the file the way a ConfigMap update or an editor's save does: a new file renamed
/// over the old one.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn session(device: &str) -> String {
    VALID.replace("device-abc-0001", device)
}

/// Statuses of `n` sessions of one device, in order.
async fn sessions(addr: SocketAddr, device: &str, n: usize) -> Vec<StatusCode> {
    let url = format!("http://{addr}/api/v3/sessions");
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(post_json(&url, session(device)).await.status);
    }
    out
}

/// One HTTP/1 connection kept alive from request to request.
struct KeptAlive(hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>);

impl KeptAlive {
    async fn open(addr: SocketAddr) -> Self {
        let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
        let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        Self(send)
    }

    /// Statuses of `n` sessions of one device, sent one after another on this connection (a
    /// closed connection fails the test).
    async fn sessions(&mut self, device: &str, n: usize) -> Vec<StatusCode> {
        use http_body_util::BodyExt;
        let mut out = Vec::new();
        for _ in 0..n {
            self.0.ready().await.expect("the connection is still open");
            let req = http::Request::post("/api/v3/sessions")
                .header("host", "gateway")
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(session(
                    device,
                ))))
                .unwrap();
            let res = self
                .0
                .send_request(req)
                .await
                .expect("answered on the same connection");
            out.push(res.status());
            res.into_body().collect().await.unwrap();
        }
        out
    }
}

const OK3_THEN_429: [StatusCode; 4] = [
    StatusCode::OK,
    StatusCode::OK,
    StatusCode::OK,
    StatusCode::TOO_MANY_REQUESTS,
];

async fn reloads(admin: SocketAddr, result: &str) -> f64 {
    scraped(
        admin,
        &format!("gateway_config_reloads_total{{result=\"{result}\"}}"),
    )
    .await
    .unwrap_or_else(|| panic!("no reload counter for {result}"))
}

async fn scraped(admin: SocketAddr, series: &str) -> Option<f64> {
    let res = request(Method::GET, &format!("http://{admin}/metrics"), &[], "").await;
    let text = String::from_utf8(res.body.to_vec()).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Reads the log until a line with `message` and `"trigger": trigger`; returns it parsed.
fn logged(gw: &mut GatewayProcess, message: &str, trigger: &str) -> serde_json::Value {
    let line = gw.wait_for(&format!("{message} ({trigger})"), |l| {
        serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message))
                && v["trigger"] == trigger
        })
    });
    serde_json::from_str(&line).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_file_changes_reload_limits_bad_files_and_new_listeners_are_refused() {
    let (sim, sim_handle) = start_sim().await;
    let sim_addr = sim_handle.addr;
    let (mut gw, dir) =
        GatewayProcess::start(&config(sim_addr, "127.0.0.1:0", "requests = 10", ""));
    let path = dir.path().join("gateway.toml");
    let (addr, admin) = gw.addrs();
    let pid = gw.pid();
    let first_hash = gw.seen().last().map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        v["config_hash"].as_str().unwrap().to_owned()
    });
    let first_hash = first_hash.unwrap();
    assert_eq!(
        scraped(
            admin,
            &format!("gateway_config_info{{hash=\"{first_hash}\"}}")
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        sessions(addr, "device-before-0001", 4).await,
        [StatusCode::OK; 4]
    );
    // A connection that stays open across the reload.
    let mut kept = KeptAlive::open(addr).await;
    assert_eq!(kept.sessions("device-kept-0001", 1).await, [StatusCode::OK]);

    // A session held in flight by the upstream across the reload.
    sim.set_latency(Duration::from_millis(2_500));
    let before = sim.requests().len();
    let url = format!("http://{addr}/api/v3/sessions");
    let slow = tokio::spawn(async move { post_json(&url, session("device-slow-0001")).await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.requests().len() == before {
        assert!(
            Instant::now() < deadline,
            "the slow session never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // requests = 3, and budgets the slow session would not fit in, sent by SIGHUP.
    let tight = "request_timeout_ms = 1500\nbody_read_timeout_ms = 1000";
    replace(
        &path,
        &config(sim_addr, "127.0.0.1:0", "requests = 3", tight)
            .replace("timeout_ms = 5000", "timeout_ms = 1000"),
    );
    gw.hup();
    let line = logged(&mut gw, "config reloaded", "sighup");
    let hash = line["hash"].as_str().unwrap().to_owned();
    assert_ne!(hash, first_hash);
    assert_eq!(line["rate_limit_kept"], false);
    assert_eq!(line["cache_kept"], true);

    // A session started now runs on the new budgets: the upstream is too slow for them.
    let late = post_json(
        &format!("http://{addr}/api/v3/sessions"),
        session("device-late-0001"),
    )
    .await;
    assert_eq!(late.status, StatusCode::GATEWAY_TIMEOUT);
    // The one in flight finishes on the budgets it started with.
    let slow = slow.await.unwrap();
    assert_eq!(
        slow.status,
        StatusCode::OK,
        "the in-flight session completes"
    );
    assert!(slow.json()["accessToken"].is_string());
    sim.set_latency(Duration::ZERO);

    // The new limit applies to a fresh device; the same process serves it.
    assert_eq!(sessions(addr, "device-fresh-0001", 4).await, OK3_THEN_429);
    // Also on the connection opened before the reload: it runs on the new config too.
    assert_eq!(kept.sessions("device-kept-0002", 4).await, OK3_THEN_429);
    assert_eq!(gw.pid(), pid);
    assert!(gw.running());
    assert_eq!(
        scraped(admin, &format!("gateway_config_info{{hash=\"{hash}\"}}")).await,
        Some(1.0)
    );
    assert_eq!(
        scraped(
            admin,
            &format!("gateway_config_info{{hash=\"{first_hash}\"}}")
        )
        .await,
        None,
        "only the config in use is named"
    );
    let errors = reloads(admin, "error").await;

    // A typo, sent by SIGHUP: refused, logged, counted; the old limit keeps applying.
    let good = config(sim_addr, "127.0.0.1:0", "requests = 3", tight)
        .replace("timeout_ms = 5000", "timeout_ms = 1000");
    replace(&path, &good.replace("requests = 3", "requets = 10"));
    gw.hup();
    let line = logged(&mut gw, "config reload failed", "sighup");
    let error = line["error"].as_str().unwrap();
    assert!(error.contains("requets"), "{error}");
    assert_eq!(
        line["hash"].as_str(),
        Some(hash.as_str()),
        "the running config is named"
    );
    assert!(reloads(admin, "error").await > errors);
    assert_eq!(sessions(addr, "device-typo-0001", 4).await, OK3_THEN_429);

    // A typo on a line holding a secret, by rewriting the file alone: the same, and the line's
    // text (the secret) is not in the log.
    let errors = reloads(admin, "error").await;
    replace(
        &path,
        &format!(
            "{}[api_key]\nvalu = \"{SECRET}\"\n",
            good.replace("requests = 3", "requests = 10")
        ),
    );
    let line = logged(&mut gw, "config reload failed", "file");
    let error = line["error"].as_str().unwrap();
    assert!(error.contains("valu"), "{error}");
    assert_eq!(reloads(admin, "error").await, errors + 1.0);
    assert_eq!(sessions(addr, "device-file-0001", 4).await, OK3_THEN_429);

    // A new client listener: refused with a message saying a restart is needed.
    let errors = reloads(admin, "error").await;
    let other = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    replace(
        &path,
        &config(sim_addr, &other.to_string(), "requests = 10", ""),
    );
    gw.hup();
    let line = logged(&mut gw, "config reload failed", "sighup");
    let error = line["error"].as_str().unwrap();
    assert!(
        error.contains("server.listen") && error.contains("restart"),
        "{error}"
    );
    assert!(reloads(admin, "error").await > errors);
    assert_eq!(sessions(addr, "device-listen-0001", 4).await, OK3_THEN_429);
    assert_eq!(gw.pid(), pid);

    let (lines, stderr) = gw.terminate();
    for l in lines.iter().chain([&stderr]) {
        assert!(!l.contains(SECRET), "a secret in the log: {l}");
    }
    sim_handle.stop().await;
}

/// Streams outlive a reload: a websocket and a slow download opened before a SIGHUP keep going
/// on the configuration they started with and complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_and_a_download_open_across_a_reload_complete() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let (_sim, sim_handle) = start_sim().await;
    let (mut gw, dir) =
        GatewayProcess::start(&config(sim_handle.addr, "127.0.0.1:0", "requests = 10", ""));
    let path = dir.path().join("gateway.toml");
    let (addr, _admin) = gw.addrs();
    let res = post_json(&format!("http://{addr}/api/v5/sessions"), VALID).await;
    assert_eq!(res.status, StatusCode::OK);
    let token = res.json()["accessToken"].as_str().unwrap().to_owned();

    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let url = format!("ws://{addr}/socket.io/?token={token}&EIO=3&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::client_async(url.as_str(), tcp)
        .await
        .unwrap();
    let open = ws.next().await.unwrap().unwrap();
    assert!(open.to_text().unwrap().starts_with("0{"));

    // 20 chunks 100 ms apart: still streaming when the reload lands.
    let download = {
        let url =
            format!("http://{addr}/api/v3/files/f/download?size=20000&chunk=1000&interval_ms=100");
        let auth = format!("Bearer {token}");
        tokio::spawn(
            async move { request(Method::GET, &url, &[("authorization", &auth)], "").await },
        )
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    replace(
        &path,
        &config(sim_handle.addr, "127.0.0.1:0", "requests = 3", ""),
    );
    gw.hup();
    logged(&mut gw, "config reloaded", "sighup");

    ws.send(Message::text("after the reload")).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the websocket still answers")
        .unwrap()
        .unwrap();
    assert_eq!(echo, Message::text("after the reload"));
    let res = download.await.unwrap();
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(
        res.body.len(),
        20_000,
        "the download completed across the reload"
    );
    ws.close(None).await.unwrap();
    // The new limits apply to sessions that start now.
    assert_eq!(
        sessions(addr, "device-after-ws-0001", 4).await,
        OK3_THEN_429
    );
    gw.terminate();
}
