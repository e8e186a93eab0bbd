//! The simulator's streaming side: what the gateway's pass routes carry.
//!
//! * `GET /socket.io/?token=…&EIO=3&transport=websocket`: the realtime websocket. The upgrade is
//!   accepted for a token the simulator issued (401 otherwise); the server speaks first with an
//!   Engine.IO open packet (`0{"sid":…}`), as the real one does, then echoes every frame.
//! * `GET /api/v3/files/{fileId}/download?size=N`: N bytes of [`download_byte`], streamed in
//!   `chunk` bytes (default 65536) every `interval_ms` (default 0); with `silent_after=M` it
//!   goes silent for `silent_ms` (default 60000) after M bytes.
//! * any other `/api/` call: bearer-authenticated (401 without a token the simulator issued);
//!   the body is streamed through SHA-256, never held, and the answer echoes
//!   `{"method", "path", "bodyLength", "sha256"}`.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::routes::{self, SimBody};
use crate::body::Body;
use crate::wire::percent_decode;

/// Byte `i` of every download: a fixed pattern, so a test can hash what it expects.
#[must_use]
pub fn download_byte(i: u64) -> u8 {
    (i.wrapping_mul(31).wrapping_add(7) % 251) as u8
}

/// The value of `key` in a query, decoded.
pub(crate) fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| percent_decode(k, true) == key)
        .map(|(_, v)| percent_decode(v, true))
}

fn num(query: Option<&str>, key: &str, default: u64) -> u64 {
    query_param(query, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The websocket upgrade, if the request is one and its token is valid.
pub(crate) fn websocket(
    headers: &HeaderMap,
    token_valid: bool,
    on_upgrade: hyper::upgrade::OnUpgrade,
) -> Response<SimBody> {
    let is_ws = headers
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).filter(|_| is_ws) else {
        return routes::bad_request();
    };
    if !token_valid {
        return routes::unauthorized();
    }
    let accept = derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let open = json!({"sid": super::world::hex(&rand::random::<[u8; 10]>()),
            "upgrades": [], "pingInterval": 25000, "pingTimeout": 5000});
        if ws.send(format!("0{open}").into()).await.is_err() {
            return;
        }
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut res = Response::new(Body::empty());
    *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = res.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    res
}

/// `GET /api/v3/files/{fileId}/download`, streamed (see the module doc).
pub(crate) fn download(query: Option<&str>) -> Response<SimBody> {
    let size = num(query, "size", 0);
    let chunk = num(query, "chunk", 65536).clamp(1, 1 << 20);
    let interval = Duration::from_millis(num(query, "interval_ms", 0));
    let silent_after = query_param(query, "silent_after").and_then(|v| v.parse::<u64>().ok());
    let silent = Duration::from_millis(num(query, "silent_ms", 60_000));
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
    tokio::spawn(async move {
        let mut sent = 0u64;
        while sent < size {
            if silent_after.is_some_and(|m| sent >= m) {
                tokio::time::sleep(silent).await;
                return;
            }
            let n = chunk.min(size - sent);
            let bytes: Vec<u8> = (sent..sent + n).map(download_byte).collect();
            if tx.send(Bytes::from(bytes)).await.is_err() {
                return;
            }
            sent += n;
            if !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
    });
    let mut res = Response::new(Body::stream(http_body_util::StreamBody::new(stream)));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&size.to_string()) {
        res.headers_mut().insert(header::CONTENT_LENGTH, v);
    }
    res
}

/// Any other `/api/` call: hashes the streamed body and echoes what arrived.
pub(crate) async fn echo(method: &Method, path: &str, body: Incoming) -> Response<SimBody> {
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    let mut body = body;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    len += d.len() as u64;
                    hasher.update(d);
                }
            }
            Err(_) => return routes::bad_request(),
        }
    }
    routes::json_response(
        StatusCode::OK,
        &json!({
            "method": method.as_str(),
            "path": path,
            "bodyLength": len,
            "sha256": super::world::hex(&hasher.finalize()),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded() {
        assert_eq!(
            query_param(Some("a=1&token=x%2By&EIO=3"), "token").as_deref(),
            Some("x+y")
        );
        assert_eq!(query_param(Some("a=1"), "token"), None);
        assert_eq!(query_param(None, "token"), None);
    }

    #[tokio::test]
    async fn downloads_stream_the_pattern() {
        let res = download(Some("size=100000&chunk=7000"));
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), 100_000);
        assert!(body
            .iter()
            .enumerate()
            .all(|(i, b)| *b == download_byte(i as u64)));
    }
}
