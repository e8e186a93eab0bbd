//! TLS on the client listener, over loopback sockets against the simulator: ALPN picks HTTP/2
//! or HTTP/1.1, TLS 1.2 and 1.3 both work, renewed certificate files reach new handshakes while
//! open connections carry on, and a silent client neither blocks others nor stays forever.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::crypto::ring;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ProtocolVersion, RootCertStore, SupportedProtocolVersion};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A self-signed certificate for `localhost` and its key, made at test time.
struct Pair {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

fn pair(common_name: &str, serial: u64) -> Pair {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.serial_number = Some(rcgen::SerialNumber::from(serial));
    let cert = params.self_signed(&key).unwrap();
    Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

struct Files {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn new(pair: &Pair) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let files = Self {
            cert: dir.path().join("tls.crt"),
            key: dir.path().join("tls.key"),
            _dir: dir,
        };
        files.install(pair);
        files
    }

    /// Puts `pair` in place the way cert-manager's Secret update does: each file renamed over
    /// the old one, never rewritten in place.
    fn install(&self, pair: &Pair) {
        replace(&self.cert, &pair.cert_pem);
        replace(&self.key, &pair.key_pem);
    }
}

fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A gateway serving TLS with a fresh certificate `a` from files the test can replace.
async fn start(handshake_timeout_ms: u64) -> (Pair, Files, TestEnv) {
    let a = pair("gateway-a", 1);
    let files = Files::new(&a);
    let env = TestEnv::start_with(|f| {
        f.tls.cert_file = Some(files.cert.clone());
        f.tls.key_file = Some(files.key.clone());
        f.tls.handshake_timeout_ms = handshake_timeout_ms;
    })
    .await;
    (a, files, env)
}

/// A TLS connection to the gateway that trusts exactly `trusted`, offering `alpn`.
async fn connect(
    addr: SocketAddr,
    trusted: &[&CertificateDer<'static>],
    alpn: &[&[u8]],
    versions: &[&'static SupportedProtocolVersion],
) -> TlsStream<TcpStream> {
    let mut roots = RootCertStore::empty();
    for der in trusted {
        roots.add((*der).clone()).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("tls handshake")
}

const BOTH: &[&[u8]] = &[b"h2", b"http/1.1"];
const ALL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn alpn(tls: &TlsStream<TcpStream>) -> Option<&[u8]> {
    tls.get_ref().1.alpn_protocol()
}

fn presented(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

fn session(uri: &str) -> Request<Full<Bytes>> {
    Request::post(uri)
        .header("content-type", "application/json")
        .header("host", "localhost")
        .body(Full::new(Bytes::from_static(VALID.as_bytes())))
        .unwrap()
}

/// A session registration answered by the simulator through the gateway: status, version,
/// and the simulator's body.
async fn expect_session(res: http::Response<hyper::body::Incoming>, version: Version) {
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.version(), version);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(json["accessToken"].is_string(), "{json}");
}

async fn h2(tls: TlsStream<TcpStream>) -> http2::SendRequest<Full<Bytes>> {
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn h1(tls: TlsStream<TcpStream>) -> http1::SendRequest<Full<Bytes>> {
    let (sender, conn) = http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    sender
}

async fn post_h2(sender: &mut http2::SendRequest<Full<Bytes>>) {
    sender.ready().await.unwrap();
    let res = sender
        .send_request(session("https://localhost/api/v3/sessions"))
        .await
        .unwrap();
    expect_session(res, Version::HTTP_2).await;
}

async fn post_h1(sender: &mut http1::SendRequest<Full<Bytes>>) {
    sender.ready().await.unwrap();
    let res = sender
        .send_request(session("/api/v3/sessions"))
        .await
        .unwrap();
    expect_session(res, Version::HTTP_11).await;
}

#[tokio::test]
async fn https_speaks_http2_and_http1_as_alpn_negotiates_over_tls_1_2_and_1_3() {
    let (a, _files, env) = start(10_000).await;
    let addr = env.gw.addr;

    // A client offering both gets the server's first choice, h2.
    let tls = connect(addr, &[&a.der], BOTH, ALL_VERSIONS).await;
    assert_eq!(alpn(&tls), Some(&b"h2"[..]));
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
    assert_eq!(presented(&tls), a.der);
    post_h2(&mut h2(tls).await).await;

    // An HTTP/1.1-only client gets http/1.1.
    let tls = connect(addr, &[&a.der], &[b"http/1.1"], ALL_VERSIONS).await;
    assert_eq!(alpn(&tls), Some(&b"http/1.1"[..]));
    post_h1(&mut h1(tls).await).await;

    // TLS 1.2 is still accepted, with ALPN.
    let tls = connect(addr, &[&a.der], BOTH, &[&rustls::version::TLS12]).await;
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_2)
    );
    assert_eq!(alpn(&tls), Some(&b"h2"[..]));
    post_h2(&mut h2(tls).await).await;

    // Every request went upstream with the injected key; nothing else reached the simulator.
    let seen = env.sim.requests();
    assert_eq!(seen.len(), 3);
    assert!(seen
        .iter()
        .all(|r| r.body_bytes.as_ref() == VALID.as_bytes()));

    // Plain HTTP on the TLS port gets no HTTP answer.
    let out = raw(
        addr,
        b"GET /api/v3/users/u HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(!out.contains("HTTP/1.1"), "{out}");
    env.shutdown().await;
}

#[tokio::test]
async fn renewed_certificate_files_reach_new_handshakes_while_open_connections_keep_working() {
    let b = pair("gateway-b", 2);
    let (a, files, env) = start(10_000).await;
    let addr = env.gw.addr;

    let before_h2 = connect(addr, &[&a.der], BOTH, ALL_VERSIONS).await;
    assert_eq!(presented(&before_h2), a.der);
    let mut before_h2 = h2(before_h2).await;
    post_h2(&mut before_h2).await;
    let before_h1 = connect(addr, &[&a.der], &[b"http/1.1"], ALL_VERSIONS).await;
    let mut before_h1 = h1(before_h1).await;
    post_h1(&mut before_h1).await;

    files.install(&b);

    let after = connect(addr, &[&a.der, &b.der], BOTH, ALL_VERSIONS).await;
    assert_eq!(
        presented(&after),
        b.der,
        "a new handshake presents the new certificate"
    );
    post_h2(&mut h2(after).await).await;
    // A client that trusts only the new certificate can connect too.
    let only_b = connect(addr, &[&b.der], BOTH, ALL_VERSIONS).await;
    assert_eq!(presented(&only_b), b.der);

    // Connections opened under the old certificate keep serving requests.
    post_h2(&mut before_h2).await;
    post_h1(&mut before_h1).await;

    // A broken renewal (certificate that does not parse) keeps the last good pair.
    replace(
        &files.cert,
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    );
    let still_b = connect(addr, &[&b.der], BOTH, ALL_VERSIONS).await;
    assert_eq!(presented(&still_b), b.der);
    post_h2(&mut h2(still_b).await).await;
    env.shutdown().await;
}

#[tokio::test]
async fn a_client_silent_in_its_handshake_does_not_hold_up_other_connections() {
    // A handshake timeout far beyond the test's bound: only a handshake done outside the accept
    // loop lets the second client through in time.
    let (a, _files, env) = start(600_000).await;
    let addr = env.gw.addr;

    // Connects and never sends a ClientHello.
    let silent = TcpStream::connect(addr).await.unwrap();
    let served = tokio::time::timeout(Duration::from_secs(10), async {
        let tls = connect(addr, &[&a.der], BOTH, ALL_VERSIONS).await;
        post_h2(&mut h2(tls).await).await;
    })
    .await;
    assert!(
        served.is_ok(),
        "a pending handshake blocked accepting others"
    );
    // A handshake in progress holds up the drain; closing it lets shutdown finish at once.
    drop(silent);
    env.shutdown().await;
}

#[tokio::test]
async fn a_client_that_never_completes_its_handshake_is_closed_after_the_timeout() {
    let (_a, _files, env) = start(300).await;

    let mut silent = TcpStream::connect(env.gw.addr).await.unwrap();
    // Bounded wait so a regression fails instead of hanging.
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf))
        .await
        .expect("the gateway closes a connection that never completes its handshake");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    env.shutdown().await;
}
