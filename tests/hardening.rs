//! The listener against hostile and careless clients, over loopback sockets: framing rules read
//! from raw bytes, the gateway's own URI and head limits, silent and idle connections, stream
//! and connection floods that must leave room for an ordinary client, and a drain under
//! keep-alive load that loses no request.

mod common;
mod scrape;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::process::GatewayProcess;
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use scrape::{scrape, value, Sample};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const REQUESTS: &str = "gateway_http_requests_total";
const REFUSALS: &str = "gateway_refusals_total";

/// Answers counted with `status`, over every route and method.
fn answered(s: &[Sample], status: &str) -> f64 {
    s.iter()
        .filter(|x| x.name == REQUESTS && x.label("status") == status)
        .map(|x| x.value)
        .sum()
}

fn refused(s: &[Sample], reason: &str) -> f64 {
    value(s, REFUSALS, &[("reason", reason)]).unwrap_or(0.0)
}

/// A raw HTTP/1 answer: status, head lines (lower-cased names), body.
struct RawAnswer {
    status: u16,
    head: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawAnswer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// Reads one answer with a `Content-Length` body from `s`; `None` if the stream ends or fails
/// before the answer is complete.
async fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<RawAnswer> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let text = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let head: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = head
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let body = buf[head_end..head_end + len].to_vec();
    buf.drain(..head_end + len);
    Some(RawAnswer { status, head, body })
}

/// Writes `bytes` on a fresh connection and reads one answer; also says whether the server
/// then closed the connection (waiting at most 5 s for it).
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> (RawAnswer, bool) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut buf = Vec::new();
    let answer = read_answer(&mut s, &mut buf)
        .await
        .expect("a complete answer");
    let mut rest = [0u8; 64];
    let closed = matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut rest)).await,
        Ok(Ok(0) | Err(_))
    );
    (answer, closed)
}

fn session(headers: &str, body: &str) -> Vec<u8> {
    format!("POST /api/v3/sessions HTTP/1.1\r\n{headers}\r\n{body}").into_bytes()
}

#[tokio::test]
async fn framing_violations_are_refused_in_the_envelope_counted_and_never_forwarded() {
    let env = TestEnv::start().await;
    let len = VALID.len();
    let json = "Content-Type: application/json\r\n";
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "no host",
            session(&format!("{json}Content-Length: {len}\r\n"), VALID),
            false,
        ),
        (
            "two hosts",
            session(
                &format!("Host: a\r\nHost: b\r\n{json}Content-Length: {len}\r\n"),
                VALID,
            ),
            false,
        ),
        (
            "two content types",
            session(
                &format!("Host: a\r\n{json}Content-Type: text/plain\r\nContent-Length: {len}\r\n"),
                VALID,
            ),
            false,
        ),
        (
            "two equal content lengths",
            session(
                &format!("Host: a\r\n{json}Content-Length: {len}\r\nContent-Length: {len}\r\n"),
                VALID,
            ),
            false,
        ),
        (
            "two content encodings",
            session(
                &format!("Host: a\r\n{json}Content-Encoding: identity\r\nContent-Encoding: identity\r\nContent-Length: {len}\r\n"),
                VALID,
            ),
            false,
        ),
        (
            "content length and chunked",
            session(
                &format!("Host: a\r\n{json}Content-Length: {len}\r\nTransfer-Encoding: chunked\r\n"),
                &format!("{len:x}\r\n{VALID}\r\n0\r\n\r\n"),
            ),
            true,
        ),
        (
            "chunked and content length",
            session(
                &format!("Host: a\r\n{json}Transfer-Encoding: chunked\r\nContent-Length: {len}\r\n"),
                &format!("{len:x}\r\n{VALID}\r\n0\r\n\r\n"),
            ),
            true,
        ),
        (
            "two authorizations",
            b"GET /api/v3/users/u1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer x\r\nAuthorization: Bearer y\r\n\r\n".to_vec(),
            false,
        ),
        (
            "two origins",
            b"GET /api/v3/users/u1 HTTP/1.1\r\nHost: a\r\nOrigin: https://a\r\nOrigin: https://b\r\nAuthorization: Bearer x\r\n\r\n".to_vec(),
            false,
        ),
    ];
    let before = answered(&scrape(env.gw.admin_addr).await, "400");
    for (name, bytes, must_close) in &cases {
        let (answer, closed) = exchange(env.gw.addr, bytes).await;
        assert_eq!(answer.status, 400, "{name}");
        let body = answer.json();
        assert_eq!(body["status"], "error", "{name}: {body}");
        assert_eq!(body["code"], 400000, "{name}: {body}");
        assert_eq!(body["message"], "Bad Request.", "{name}: {body}");
        if *must_close {
            assert_eq!(answer.header("connection"), Some("close"), "{name}");
            assert!(closed, "{name}: the connection is closed after the answer");
        }
    }
    let after = answered(&scrape(env.gw.admin_addr).await, "400");
    assert_eq!(
        after - before,
        cases.len() as f64,
        "every refusal is counted"
    );
    assert!(
        env.sim.requests().is_empty(),
        "nothing reached the upstream: {:?}",
        env.sim.requests()
    );
    // The same requests, well framed, are served: the rules refuse only what they name.
    let (ok, _) = exchange(
        env.gw.addr,
        &session(
            &format!("Host: a\r\n{json}Content-Length: {len}\r\nConnection: close\r\n"),
            VALID,
        ),
    )
    .await;
    assert_eq!(ok.status, 200);
    let (chunked, _) = exchange(
        env.gw.addr,
        &session(
            &format!("Host: a\r\n{json}Transfer-Encoding: chunked\r\nConnection: close\r\n"),
            &format!("{len:x}\r\n{VALID}\r\n0\r\n\r\n"),
        ),
    )
    .await;
    assert_eq!(chunked.status, 200);
    assert_eq!(env.sim.requests().len(), 2);
    env.shutdown().await;
}

#[tokio::test]
async fn keep_alive_heads_are_followed_so_a_later_bad_one_is_caught() {
    let env = TestEnv::start().await;
    let len = VALID.len();
    let good = session(
        "Host: a\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n",
        &format!("{len:x}\r\n{VALID}\r\n0\r\n\r\n"),
    );
    let bad = session(
        &format!("Host: a\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nContent-Length: {len}\r\n"),
        VALID,
    );
    let mut s = TcpStream::connect(env.gw.addr).await.unwrap();
    let mut buf = Vec::new();
    s.write_all(&good).await.unwrap();
    assert_eq!(read_answer(&mut s, &mut buf).await.unwrap().status, 200);
    s.write_all(&bad).await.unwrap();
    assert_eq!(read_answer(&mut s, &mut buf).await.unwrap().status, 400);
    assert_eq!(
        env.sim.requests().len(),
        1,
        "only the good one was forwarded"
    );
    env.shutdown().await;
}

#[tokio::test]
async fn own_uri_and_head_limits_answer_414_and_431_in_the_envelope_counted() {
    let env = TestEnv::start_with(|f| {
        f.server.max_uri_bytes = 1024;
        f.server.max_header_bytes = 4096;
    })
    .await;
    let before = scrape(env.gw.admin_addr).await;
    let long = format!(
        "GET /api/v3/users/{} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer x\r\nConnection: close\r\n\r\n",
        "u".repeat(2000)
    );
    let (answer, _) = exchange(env.gw.addr, long.as_bytes()).await;
    assert_eq!(answer.status, 414);
    assert_eq!(answer.json()["code"], 400000);
    assert_eq!(answer.json()["status"], "error");
    let big = format!(
        "GET /api/v3/users/u1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(5000)
    );
    let (answer, _) = exchange(env.gw.addr, big.as_bytes()).await;
    assert_eq!(answer.status, 431);
    assert_eq!(answer.json()["status"], "error");
    let after = scrape(env.gw.admin_addr).await;
    assert_eq!(answered(&after, "414") - answered(&before, "414"), 1.0);
    assert_eq!(answered(&after, "431") - answered(&before, "431"), 1.0);
    assert!(env.sim.requests().is_empty());
    env.shutdown().await;
}

#[tokio::test]
async fn a_silent_connection_and_an_idle_http2_connection_are_closed() {
    let env = TestEnv::start_with(|f| {
        f.server.first_bytes_timeout_ms = 300;
        f.server.http2_idle_timeout_ms = 300;
    })
    .await;
    // Sends nothing: closed once the first bytes are overdue.
    let mut silent = TcpStream::connect(env.gw.addr).await.unwrap();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "a silent connection is closed by the gateway: {read:?}"
    );
    // HTTP/2: one request, then nothing: the gateway ends the connection (GOAWAY).
    let tcp = TcpStream::connect(env.gw.addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let driver = tokio::spawn(conn);
    let res = send
        .send_request(
            Request::get(format!("http://{}/healthz-not-a-route", env.gw.addr))
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let ended = tokio::time::timeout(Duration::from_secs(10), driver).await;
    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "the idle HTTP/2 connection was closed by the gateway: {ended:?}"
    );
    env.shutdown().await;
}

/// A request body that declares its length and never sends a byte.
type Never =
    StreamBody<futures_util::stream::Pending<Result<Frame<Bytes>, std::convert::Infallible>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_less_http2_streams_leave_room_for_an_ordinary_session() {
    const CONNS: usize = 20;
    const STREAMS: usize = 256;
    const CAP: usize = 128;
    // max_concurrency is far below the streams that get in (20 x 128): before the slot waited
    // for the body, these alone would have turned every other client away with 503.
    let env = TestEnv::start_with(|f| {
        f.server.max_concurrency = 64;
        f.server.max_streams_per_connection = CAP;
        // Long enough that no body-less stream has been cut (freeing its place) before every
        // stream has arrived, even on a loaded machine.
        f.server.body_rate_grace_ms = 9_000;
        f.rate_limit.enabled = false;
    })
    .await;
    let mut floods = Vec::new();
    for _ in 0..CONNS {
        let tcp = TcpStream::connect(env.gw.addr).await.unwrap();
        let (send, conn) = hyper::client::conn::http2::handshake::<_, _, Never>(
            TokioExecutor::new(),
            TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        for _ in 0..STREAMS {
            let mut send = send.clone();
            let req = Request::post(format!("http://{}/api/v3/sessions", env.gw.addr))
                .header("content-type", "application/json")
                .header("content-length", "100")
                .body(StreamBody::new(futures_util::stream::pending()))
                .unwrap();
            floods.push(tokio::spawn(async move {
                send.send_request(req).await.map(|r| r.status())
            }));
        }
    }
    // Once every stream has arrived (the refused ones are counted at once), an ordinary
    // session on its own connection is served.
    let deadline = Instant::now() + Duration::from_secs(60);
    let expected = (CONNS * (STREAMS - CAP)) as f64;
    loop {
        let s = scrape(env.gw.admin_addr).await;
        if refused(&s, "streams") >= expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "streams refused: {}",
            refused(&s, "streams")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ordinary = post_json(&env.url("/api/v3/sessions"), VALID).await;
    assert_eq!(ordinary.status, StatusCode::OK, "{:?}", ordinary.body);
    let mut by_status = std::collections::BTreeMap::new();
    for f in floods {
        let status = f.await.unwrap().map(|s| s.as_u16()).unwrap_or(0);
        *by_status.entry(status).or_insert(0usize) += 1;
    }
    assert_eq!(
        by_status.get(&503),
        Some(&(CONNS * (STREAMS - CAP))),
        "{by_status:?}"
    );
    assert_eq!(by_status.get(&408), Some(&(CONNS * CAP)), "{by_status:?}");
    let s = scrape(env.gw.admin_addr).await;
    assert_eq!(refused(&s, "streams"), expected);
    assert_eq!(
        refused(&s, "concurrency"),
        0.0,
        "the body-less streams took no slot"
    );
    assert_eq!(
        env.sim.requests().len(),
        1,
        "only the ordinary session was forwarded"
    );
    env.shutdown().await;
}

/// A connection from `ip` (any 127.0.0.0/8 address is loopback).
async fn connect_from(ip: &str, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    sock.connect(to).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_sending_only_heads_leave_room_for_an_ordinary_session() {
    // Scaled down from thousands of connections to the test's file descriptors: the per-IP cap
    // is lowered to 200 and 300 connections send only a head.
    const FLOOD: usize = 300;
    const PER_IP: usize = 200;
    let env = TestEnv::start_with(|f| {
        f.server.max_concurrency = 50;
        f.server.max_connections_per_ip = PER_IP;
        f.server.body_rate_grace_ms = 5_000;
        f.rate_limit.enabled = false;
    })
    .await;
    let head = b"POST /api/v3/sessions HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..FLOOD {
        let mut s = connect_from("127.0.0.1", env.gw.addr).await;
        // A refused connection may already be closed: the write may fail, which is the point.
        let _ = s.write_all(head).await;
        held.push(s);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = scrape(env.gw.admin_addr).await;
        if refused(&s, "connections_per_ip") >= (FLOOD - PER_IP) as f64 {
            assert_eq!(refused(&s, "connections_per_ip"), (FLOOD - PER_IP) as f64);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "per-IP refusals never reached the flood's excess"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Another client address, an ordinary session: served.
    let tcp = connect_from("127.0.0.2", env.gw.addr).await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let res = send
        .send_request(
            Request::post("/api/v3/sessions")
                .header("host", "gateway")
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(VALID.as_bytes())))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let s = scrape(env.gw.admin_addr).await;
    assert_eq!(refused(&s, "concurrency"), 0.0, "the heads took no slot");
    assert_eq!(env.sim.requests().len(), 1);
    drop(held);
    env.shutdown().await;
}

/// One keep-alive client of the drain test: sends sessions back to back on one connection,
/// and on a new one after each `Connection: close`, until a connection is refused. Returns
/// (requests written, complete answers, answers that carried `Connection: close`).
async fn drain_client(addr: SocketAddr) -> (usize, usize, usize) {
    let request = session(
        &format!(
            "Host: a\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            VALID.len()
        ),
        VALID,
    );
    let (mut written, mut answered, mut closes) = (0, 0, 0);
    'connections: loop {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            return (written, answered, closes);
        };
        let mut buf = Vec::new();
        loop {
            if s.write_all(&request).await.is_err() {
                // Not written in full: the server closed first, which it may only do after
                // an answer that said so.
                continue 'connections;
            }
            written += 1;
            let Some(a) = read_answer(&mut s, &mut buf).await else {
                return (written, answered, closes);
            };
            assert_eq!(a.status, 200);
            answered += 1;
            if a.header("connection") == Some("close") {
                closes += 1;
                continue 'connections;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_keep_alive_load_answers_every_request_written_and_exits_zero() {
    let (sim, sim_handle) = start_sim().await;
    sim.set_recording(false);
    sim.set_latency(Duration::from_millis(2));
    let (mut gw, _dir) = GatewayProcess::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndrain_timeout_secs = 10\n\
         [upstream]\nurl = \"http://{}\"\ntimeout_ms = 5000\n[rate_limit]\nenabled = false\n\
         [log]\nformat = \"json\"\naccess = false\n",
        sim_handle.addr
    ));
    let addr = gw.listen_addr();
    let clients: Vec<_> = (0..32).map(|_| tokio::spawn(drain_client(addr))).collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    gw.term();
    let mut totals = (0, 0, 0);
    for c in clients {
        let (w, a, c) = tokio::time::timeout(Duration::from_secs(30), c)
            .await
            .expect("clients finish once the listener is closed")
            .unwrap();
        totals = (totals.0 + w, totals.1 + a, totals.2 + c);
    }
    let (written, answered, closes) = totals;
    eprintln!("drain: {written} written, {answered} answered, {closes} told to close");
    assert!(written > 32, "the load ran: {written} requests");
    assert_eq!(
        answered, written,
        "every request written got a complete answer"
    );
    assert!(closes >= 32, "each connection was told to close: {closes}");
    let (lines, _) = gw.wait_exit(); // exit status 0
    assert!(
        lines.iter().any(|l| l.contains("all connections drained")),
        "drained before the deadline: {lines:#?}"
    );
    sim_handle.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_is_survived_counted_and_logged() {
    let (_sim, sim_handle) = start_sim().await;
    let (mut gw, _dir) = GatewayProcess::start_with_fd_limit(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [upstream]\nurl = \"http://{}\"\n[log]\nformat = \"json\"\n",
            sim_handle.addr
        ),
        48,
    );
    let line = gw.wait_for("listening line", |l| l.contains("gateway listening"));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let addr: SocketAddr = v["listen"].as_str().unwrap().parse().unwrap();
    let admin: SocketAddr = v["admin"].as_str().unwrap().parse().unwrap();
    // More connections than the process may hold descriptors: the kernel completes them in
    // the backlog, the gateway's accepts fail.
    let mut held = Vec::new();
    for _ in 0..80 {
        held.push(
            TcpStream::connect(addr)
                .await
                .expect("the backlog takes it"),
        );
    }
    gw.wait_for("a failed accept in the log", |l| {
        l.contains("accept failed")
    });
    drop(held);
    // Descriptors come back as those connections end; the listener goes on.
    let res = post_json(&format!("http://{addr}/api/v3/sessions"), VALID).await;
    assert_eq!(res.status, StatusCode::OK);
    let s = scrape(admin).await;
    let failed = value(&s, "gateway_accept_errors_total", &[]).unwrap_or(0.0);
    assert!(failed >= 1.0, "accept failures are counted: {failed}");
    gw.terminate();
    sim_handle.stop().await;
}

/// 256 HTTP/2 streams of `users/list` answers (about 100 KiB each) from a client that never
/// grants a stream window: the answers held stay within the budget (the rest get 503,
/// counted), the gateway's memory grows by at most the budget and a margin, and after the send
/// timeout the connection is closed with its streams, every byte given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_a_client_never_takes_stay_within_the_budget_and_end_with_the_send_timeout() {
    const STREAMS: usize = 256;
    const BATCH: usize = 4;
    const BUDGET: u64 = 4 << 20;
    // Beside the answers held: HTTP/2 state of 256 streams, a batch of answers being read from
    // the upstream, the upstream connections, and the allocator's slack.
    const MARGIN: u64 = 12 << 20;
    // Long enough for every stream to be opened before the first stalled answer ends the
    // connection, even on a loaded machine.
    const SEND_TIMEOUT_MS: u64 = 15_000;
    let (sim, sim_handle) = start_sim().await;
    sim.set_recording(false);
    let mut token = String::new();
    let mut ids = Vec::new();
    for i in 0..100 {
        let id = format!("list-user-{i:03}");
        token = sim_session(
            &sim_handle,
            &format!(
                r#"{{"userId":"{id}","deviceId":"list-device-{i:03}","deviceInfo":{{"kind":"ios","model":"iPhone15,2","sdkVersion":"6.35.3"}},"displayName":"User {i}"}}"#
            ),
        )
        .await;
        ids.push(format!("userIds={id}"));
    }
    let (mut gw, _dir) = GatewayProcess::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         answer_budget_bytes = {BUDGET}\nsend_timeout_ms = {SEND_TIMEOUT_MS}\n\
         [upstream]\nurl = \"http://{}\"\nmax_response_bytes = 1048576\n\
         [rate_limit]\nenabled = false\n[cache]\nenabled = false\n[log]\naccess = false\n",
        sim_handle.addr
    ));
    let (addr, admin) = gw.addrs();
    let path = format!("/api/v3/users/list?{}", ids.join("&"));
    let bearer = format!("Bearer {token}");
    // Warm up with the same traffic read normally, a batch at a time (pools, buffers and the
    // allocator's working set in place before the baseline), and learn the answer's size.
    let url = format!("http://{addr}{path}");
    let auth = [("authorization", bearer.as_str())];
    let get = || request(http::Method::GET, &url, &auth, Bytes::new());
    let mut warm = get().await;
    for _ in 0..16 {
        let batch = futures_util::future::join_all((0..BATCH).map(|_| get())).await;
        warm = batch.into_iter().next().unwrap();
    }
    assert_eq!(warm.status, StatusCode::OK, "{:?}", warm.body);
    let size = warm.body.len() as u64;
    assert!(
        STREAMS as u64 * size > 2 * BUDGET + MARGIN,
        "the answers ({size} bytes each) must outgrow the bound for the test to mean anything"
    );
    let baseline = gw.rss_kib();
    let (stop, peak) = gw.sample_rss();

    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(0)
        .handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
        .await
        .unwrap();
    let closed = tokio::spawn(conn);
    let mut answers = Vec::new();
    let started = Instant::now();
    for _ in 0..STREAMS / BATCH {
        let batch: Vec<_> = (0..BATCH)
            .map(|_| {
                let mut send = send.clone();
                let req = Request::get(format!("http://{addr}{path}"))
                    .header("authorization", &bearer)
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                tokio::spawn(async move { send.send_request(req).await })
            })
            .collect();
        for b in batch {
            answers.push(b.await.unwrap().expect("every head arrives"));
        }
    }
    let heads_in = started.elapsed();
    let held = answers.iter().filter(|r| r.status() == 200).count() as u64;
    let refused_now = answers.iter().filter(|r| r.status() == 503).count() as u64;
    assert_eq!(held + refused_now, STREAMS as u64);
    assert!(held * size <= BUDGET, "{held} answers of {size} bytes held");
    assert!(refused_now > 0);
    let s = scrape(admin).await;
    assert_eq!(refused(&s, "answer_budget"), refused_now as f64);
    let bytes_held = value(&s, "gateway_answer_bytes_held", &[]).unwrap();
    assert!(
        bytes_held > 0.0 && bytes_held <= BUDGET as f64,
        "{bytes_held}"
    );
    let _ = stop.send(());
    let grew = peak.await.unwrap().saturating_sub(baseline) * 1024;
    eprintln!(
        "{held} answers held, {refused_now} refused; RSS grew {} KiB (bound {} KiB)",
        grew / 1024,
        (BUDGET + MARGIN) / 1024
    );
    assert!(grew <= BUDGET + MARGIN, "RSS grew {grew} bytes");

    // No byte has moved: the connection ends after the send timeout, and every stream with it.
    assert!(
        heads_in < Duration::from_millis(SEND_TIMEOUT_MS),
        "every stream was opened within the send timeout"
    );
    let mut first = answers.pop().unwrap().into_body();
    let cut = tokio::time::timeout(Duration::from_secs(30), first.frame())
        .await
        .expect("the stalled connection is closed");
    assert!(!matches!(cut, Some(Ok(_))), "no data without a window");
    let _ = tokio::time::timeout(Duration::from_secs(5), closed).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = scrape(admin).await;
        let stalls = value(&s, "gateway_send_stalls_total", &[]).unwrap();
        let held_now = value(&s, "gateway_answer_bytes_held", &[]).unwrap();
        if stalls == 1.0 && held_now == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stalls {stalls}, held {held_now}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The whole budget is free again: an ordinary client is served in full.
    let after = request(
        http::Method::GET,
        &format!("http://{addr}{path}"),
        &[("authorization", &bearer)],
        Bytes::new(),
    )
    .await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(after.body.len() as u64, size);
    gw.terminate();
    sim_handle.stop().await;
}
