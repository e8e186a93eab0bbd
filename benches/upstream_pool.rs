//! The upstream client alone: one session POST at a time to the simulator over loopback,
//! response body read, through `upstream::pool::Pool` and through hyper-util's legacy client
//! (configured as `src/upstream.rs` configures it). Same connector, same runtime
//! (current-thread), same allocator.
//!
//! Criterion, with the simulator in process on a runtime thread of its own:
//!
//! `cargo bench --bench upstream_pool -- --warm-up-time 1 --measurement-time 3`
//!
//! Instructions per request, the simulator in a process of its own so that only the client
//! is counted (the difference of two runs removes start-up):
//!
//! ```text
//! target/release/amity-gateway sim --listen 127.0.0.1:18081 --api-key bench-key &
//! for c in pool legacy; do for n in 2000 4000; do
//!   POOL_BENCH_TARGET=127.0.0.1:18081 POOL_BENCH_ONLY=$c POOL_BENCH_N=$n \
//!     valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$c.$n \
//!     target/release/deps/upstream_pool-<hash> 2>&1 | grep 'refs'
//! done; done
//! ```
//!
//! `(I refs at 4000 − I refs at 2000) / 2000` is one request's count.

#[path = "support/alloc.rs"]
mod alloc;

use std::net::SocketAddr;
use std::time::Duration;

use amity_gateway::sim::{SimConfig, Simulator};
use amity_gateway::upstream::pool::{connector, Pool, PoolConfig};
use bytes::Bytes;
use criterion::{criterion_group, Criterion};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

const KEY: &str = "bench-key";
const BODY: &str = r#"{"userId":"bench-user","deviceId":"bench-device","displayName":"Bench"}"#;

type Legacy = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

fn request(base: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::POST)
        .uri(format!("{base}/api/v3/sessions"))
        .header("content-type", "application/json")
        .header("x-api-key", KEY)
        .body(Full::from(BODY))
        .unwrap()
}

fn pool_config(addr: SocketAddr) -> PoolConfig {
    PoolConfig {
        base: format!("http://{addr}").parse().unwrap(),
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(90),
        max_idle: 256,
        max_total: 1024,
        http2: false,
    }
}

fn legacy() -> Legacy {
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(connector(Duration::from_secs(2), false))
}

async fn via_pool(pool: &Pool<Full<Bytes>>, base: &str) -> usize {
    let res = pool.send(request(base)).await.unwrap();
    assert!(res.status().is_success());
    res.into_body().collect().await.unwrap().to_bytes().len()
}

async fn via_legacy(client: &Legacy, base: &str) -> usize {
    let res = client.request(request(base)).await.unwrap();
    assert!(res.status().is_success());
    res.into_body().collect().await.unwrap().to_bytes().len()
}

/// The simulator on a thread of its own, for the criterion run.
fn simulator() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let sim = Simulator::new(SimConfig::new(KEY));
            sim.set_recording(false);
            let handle = sim
                .spawn(SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .unwrap();
            tx.send(handle.addr).unwrap();
            std::future::pending::<()>().await;
            drop(handle);
        });
    });
    rx.recv().unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn clients(c: &mut Criterion) {
    let addr = simulator();
    let base = format!("http://{addr}");
    let rt = runtime();
    let mut g = c.benchmark_group("upstream_client");
    let pool = Pool::new(pool_config(addr));
    g.bench_function("pool", |b| {
        b.to_async(&rt).iter(|| via_pool(&pool, &base));
    });
    let client = legacy();
    g.bench_function("hyper_util_legacy", |b| {
        b.to_async(&rt).iter(|| via_legacy(&client, &base));
    });
    g.finish();
}

criterion_group!(benches, clients);

/// `POOL_BENCH_ONLY=pool|legacy POOL_BENCH_N=n POOL_BENCH_TARGET=addr`: n requests through one
/// client to a simulator already running, nothing else (for callgrind).
fn counted(only: &str) {
    let addr: SocketAddr = std::env::var("POOL_BENCH_TARGET")
        .expect("POOL_BENCH_TARGET=host:port of a running simulator")
        .parse()
        .expect("POOL_BENCH_TARGET must be host:port");
    let n: usize = std::env::var("POOL_BENCH_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let base = format!("http://{addr}");
    runtime().block_on(async {
        let mut bytes = 0;
        match only {
            "pool" => {
                let pool = Pool::new(pool_config(addr));
                for _ in 0..n {
                    bytes += via_pool(&pool, &base).await;
                }
            }
            "legacy" => {
                let client = legacy();
                for _ in 0..n {
                    bytes += via_legacy(&client, &base).await;
                }
            }
            other => panic!("POOL_BENCH_ONLY must be pool or legacy, not {other}"),
        }
        println!("{only}: {n} requests, {bytes} response bytes");
    });
}

fn main() {
    if let Ok(only) = std::env::var("POOL_BENCH_ONLY") {
        counted(&only);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
