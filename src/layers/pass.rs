//! Pass-through: the rest of the app's API, forwarded as the client sent it.
//!
//! Bodies stream both ways and are never collected, so an upload or download of any size holds
//! a few frames of memory. A websocket (`HTTP/1.1 Upgrade`) is tunnelled after the upstream's
//! `101 Switching Protocols` until either side closes. The gateway's key is never attached here:
//! this chain has no key injection at all, and the client's own `x-api-key` was stripped (or
//! refused) above it, so a pass route reaches exactly what the client's own bearer token could.
//!
//! Time limits suit streams rather than requests: the upstream gets `upstream.timeout_ms` to
//! send its answer's head, counted from the last byte of the request body (an upload may take
//! longer than any fixed deadline); after that, a body or tunnel that moves no byte for the
//! route's idle timeout is closed and counted. A stream that keeps moving is never cut.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Sleep;
use tower::{Layer, Service};

use crate::error::{ApiError, Body, BoxError, ErrorFormat, GatewayError};
use crate::layers::arrival::Arrival;
use crate::layers::guarded::{Finish, Guarded};
use crate::logging::AccessLog;
use crate::routes::Matched;

/// Counters of the pass routes' streams, read by the metrics at scrape time.
#[derive(Debug, Default)]
pub struct StreamStats {
    tunnels_open: AtomicI64,
    tunnels: AtomicU64,
    idle_bodies: AtomicU64,
    idle_tunnels: AtomicU64,
}

/// A snapshot of [`StreamStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamCounts {
    pub tunnels_open: i64,
    pub tunnels: u64,
    /// Bodies (either direction) closed for moving no byte within the idle timeout.
    pub idle_bodies: u64,
    /// Websocket tunnels closed the same way.
    pub idle_tunnels: u64,
}

impl StreamStats {
    pub fn snapshot(&self) -> StreamCounts {
        StreamCounts {
            tunnels_open: self.tunnels_open.load(Ordering::Relaxed),
            tunnels: self.tunnels.load(Ordering::Relaxed),
            idle_bodies: self.idle_bodies.load(Ordering::Relaxed),
            idle_tunnels: self.idle_tunnels.load(Ordering::Relaxed),
        }
    }
}

/// When a stream last moved a byte, shared by the request body and the wait for the answer's
/// head. Milliseconds since `origin`.
#[derive(Debug)]
pub struct Activity {
    origin: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    /// Activity counted from `origin` (a time already read: no clock read of its own).
    fn since(origin: Instant) -> Self {
        Self {
            origin,
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        self.touch_at(Instant::now());
    }

    fn touch_at(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.origin).as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// The instant of the last activity.
    pub fn last(&self) -> Instant {
        self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// Left in a pass request's extensions for the upstream client: stream the answer, close it
/// when idle, and count the head's deadline from the request body's last activity.
#[derive(Debug, Clone)]
pub struct Streaming {
    pub idle_timeout: Duration,
    pub activity: Arc<Activity>,
    pub stats: Arc<StreamStats>,
}

impl Streaming {
    /// Wraps an answer's body, whose head came at `since`: closed (and counted) when idle.
    pub fn body<B>(&self, body: B, since: Instant) -> Body
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Body::stream(IdleBody::new(
            body,
            self.idle_timeout,
            since,
            None,
            self.stats.clone(),
        ))
    }
}

/// The error a stream ends with when it moved nothing within its idle timeout.
#[derive(Debug, thiserror::Error)]
#[error("stream idle for longer than its timeout")]
pub struct IdleTimeout;

pin_project! {
    /// A body that fails with [`IdleTimeout`] when no frame arrives within `idle`.
    ///
    /// The timer is armed only when the body first has to wait, and moved only when it fires
    /// early (a frame came meanwhile): a frame costs a clock read, not a timer-wheel update, and
    /// a body that never waits (a small request or answer, read whole in one go) never touches
    /// the timer wheel at all.
    pub struct IdleBody<B> {
        #[pin]
        inner: B,
        #[pin]
        sleep: Option<Sleep>,
        idle: Duration,
        // When the last frame came (at first: `since`), on tokio's clock, which tests may pause.
        last: tokio::time::Instant,
        activity: Option<Arc<Activity>>,
        stats: Arc<StreamStats>,
        done: bool,
    }
}

impl<B> IdleBody<B> {
    /// Idle from `since` until its first frame.
    fn new(
        inner: B,
        idle: Duration,
        since: Instant,
        activity: Option<Arc<Activity>>,
        stats: Arc<StreamStats>,
    ) -> Self {
        Self {
            inner,
            sleep: None,
            idle,
            last: since.into(),
            activity,
            stats,
            done: false,
        }
    }
}

impl<B> HttpBody for IdleBody<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let now = tokio::time::Instant::now();
                *this.last = now;
                if let Some(a) = this.activity {
                    a.touch_at(now.into_std());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                *this.done = true;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                *this.done = true;
                if let Some(a) = this.activity {
                    a.touch();
                }
                Poll::Ready(None)
            }
            Poll::Pending => loop {
                let due = *this.last + *this.idle;
                let Some(mut sleep) = this.sleep.as_mut().as_pin_mut() else {
                    this.sleep.set(Some(tokio::time::sleep_until(due)));
                    continue;
                };
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                if sleep.deadline() < due {
                    // Armed before the last frame came: on to that frame's own deadline.
                    sleep.reset(due);
                    continue;
                }
                *this.done = true;
                this.stats.idle_bodies.fetch_add(1, Ordering::Relaxed);
                return Poll::Ready(Some(Err(IdleTimeout.into())));
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The protocol a request asks to upgrade to: HTTP/1.1 with `Upgrade` and a `Connection`
/// naming `upgrade`. Read before hop-by-hop headers are removed.
pub fn requested_upgrade(version: Version, headers: &HeaderMap) -> Option<UpgradeRequest> {
    if version != Version::HTTP_11 {
        return None;
    }
    let names_upgrade = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    let proto = headers.get(header::UPGRADE)?;
    names_upgrade.then(|| UpgradeRequest(proto.clone()))
}

/// An upgrade the client asked for (the `Upgrade` value), in the request's extensions.
#[derive(Debug, Clone)]
pub struct UpgradeRequest(pub HeaderValue);

static UPGRADE: HeaderValue = HeaderValue::from_static("upgrade");

fn set_upgrade_headers(headers: &mut HeaderMap, proto: HeaderValue) {
    headers.insert(header::CONNECTION, UPGRADE.clone());
    headers.insert(header::UPGRADE, proto);
}

/// The pass-through policy.
#[derive(Clone)]
pub struct PassLayer {
    stats: Arc<StreamStats>,
    access: AccessLog,
}

impl PassLayer {
    pub fn new(stats: Arc<StreamStats>) -> Self {
        Self {
            stats,
            access: AccessLog::Json,
        }
    }

    /// How the line written when a tunnel ends is written: not at all when `log.access` is
    /// off, like the access line of each request.
    pub fn access(mut self, access: AccessLog) -> Self {
        self.access = access;
        self
    }
}

impl<S> Layer<S> for PassLayer {
    type Service = Pass<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Pass {
            inner,
            stats: self.stats.clone(),
            access: self.access,
        }
    }
}

#[derive(Clone)]
pub struct Pass<S> {
    inner: S,
    stats: Arc<StreamStats>,
    access: AccessLog,
}

/// Used when a request reaches this chain without a [`Matched`] (a wiring bug, or a bench).
const DEFAULT_IDLE: Duration = Duration::from_secs(60);

impl<S, B> Service<Request<B>> for Pass<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError>,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = Guarded<S::Future, Option<Upgrade>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let limits = req.extensions().get::<Matched>().and_then(|m| m.pass);
        let idle = limits.map_or(DEFAULT_IDLE, |l| l.idle_timeout);
        let max_body = limits.and_then(|l| l.max_body_bytes);
        if let Some(max) = max_body {
            if super::body::declared_len(req.headers()).is_some_and(|n| n > max) {
                let res = ApiError::PayloadTooLarge {
                    limit: usize::try_from(max).unwrap_or(usize::MAX),
                }
                .to_response(ErrorFormat::from_headers(req.headers()));
                return Guarded::now(res);
            }
        }
        let upgrade =
            req.extensions_mut()
                .remove::<UpgradeRequest>()
                .map(|UpgradeRequest(proto)| {
                    set_upgrade_headers(req.headers_mut(), proto.clone());
                    Upgrade {
                        proto,
                        client_side: hyper::upgrade::on(&mut req),
                        idle,
                        stats: self.stats.clone(),
                        access: self.access,
                    }
                });
        // Both count from the request's arrival, a time already read.
        let arrived = req
            .extensions()
            .get::<Arrival>()
            .map_or_else(Instant::now, |a| a.at);
        let activity = Arc::new(Activity::since(arrived));
        let streaming = Streaming {
            idle_timeout: idle,
            activity: activity.clone(),
            stats: self.stats.clone(),
        };
        let (mut parts, body) = req.into_parts();
        let stats = self.stats.clone();
        let body = match max_body {
            Some(max) => Body::stream(IdleBody::new(
                http_body_util::Limited::new(body, usize::try_from(max).unwrap_or(usize::MAX)),
                idle,
                arrived,
                Some(activity),
                stats,
            )),
            None => Body::stream(IdleBody::new(body, idle, arrived, Some(activity), stats)),
        };
        parts.extensions.insert(streaming);
        Guarded::later(self.inner.call(Request::from_parts(parts, body)), upgrade)
    }
}

/// A websocket the client asked for: tunnelled once the upstream agrees.
pub struct Upgrade {
    proto: HeaderValue,
    client_side: hyper::upgrade::OnUpgrade,
    idle: Duration,
    stats: Arc<StreamStats>,
    access: AccessLog,
}

/// An upgrade held until the upstream answers: a `101` starts the tunnel.
impl Finish for Upgrade {
    fn finish(self, res: &mut Response<Body>) {
        if res.status() != StatusCode::SWITCHING_PROTOCOLS {
            return;
        }
        let upstream_side = hyper::upgrade::on(&mut *res);
        let answered = res
            .headers()
            .get(header::UPGRADE)
            .cloned()
            .unwrap_or(self.proto);
        set_upgrade_headers(res.headers_mut(), answered);
        tokio::spawn(tunnel(
            self.client_side,
            upstream_side,
            self.idle,
            self.stats,
            self.access,
        ));
    }
}

/// Copies bytes both ways between the two upgraded connections until either side closes or
/// nothing moves for `idle`; one log line when it ends.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    idle: Duration,
    stats: Arc<StreamStats>,
    access: AccessLog,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    stats.tunnels.fetch_add(1, Ordering::Relaxed);
    stats.tunnels_open.fetch_add(1, Ordering::Relaxed);
    let start = Instant::now();
    let activity = Arc::new(Activity::since(start));
    let mut client = Watched::new(hyper_util::rt::TokioIo::new(client), activity.clone());
    let mut upstream = Watched::new(hyper_util::rt::TokioIo::new(upstream), activity.clone());
    let end = {
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        tokio::pin!(copy);
        loop {
            let deadline = activity.last() + idle;
            tokio::select! {
                r = &mut copy => break match r {
                    Ok(_) => "closed",
                    Err(_) => "error",
                },
                () = tokio::time::sleep_until(deadline.into()) => {
                    if activity.last() + idle <= Instant::now() {
                        stats.idle_tunnels.fetch_add(1, Ordering::Relaxed);
                        break "idle";
                    }
                }
            }
        }
    };
    stats.tunnels_open.fetch_sub(1, Ordering::Relaxed);
    if access == AccessLog::Off {
        return;
    }
    tracing::info!(
        target: "access",
        kind = "tunnel",
        end,
        duration_ms = start.elapsed().as_millis() as u64,
        bytes_from_client = client.read,
        bytes_from_upstream = upstream.read,
        "tunnel closed"
    );
}

pin_project! {
    /// An upgraded connection that records activity and counts the bytes read from it.
    struct Watched<T> {
        #[pin]
        io: T,
        activity: Arc<Activity>,
        read: u64,
    }
}

impl<T> Watched<T> {
    fn new(io: T, activity: Arc<Activity>) -> Self {
        Self {
            io,
            activity,
            read: 0,
        }
    }
}

impl<T: AsyncRead> AsyncRead for Watched<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.io.poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            *this.read += n as u64;
            this.activity.touch();
        }
        r
    }
}

crate::io::write_through!(Watched);

/// Waits for an answer's head: `timeout` after the request's last activity (its last body
/// byte), re-armed while the body still moves.
pub async fn head_within<F, T>(
    response: F,
    timeout: Duration,
    activity: &Activity,
) -> Result<T, GatewayError>
where
    F: Future<Output = Result<T, GatewayError>>,
{
    tokio::pin!(response);
    loop {
        let deadline = activity.last() + timeout;
        tokio::select! {
            r = &mut response => return r,
            () = tokio::time::sleep_until(deadline.into()) => {
                if activity.last() + timeout <= Instant::now() {
                    return Err(GatewayError::UpstreamTimeout);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn upgrades_are_read_from_http11_heads_only() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(requested_upgrade(Version::HTTP_11, &h).is_none());
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert_eq!(
            requested_upgrade(Version::HTTP_11, &h).unwrap().0,
            "websocket"
        );
        assert!(requested_upgrade(Version::HTTP_2, &h).is_none());
        h.remove(header::UPGRADE);
        assert!(requested_upgrade(Version::HTTP_11, &h).is_none());
    }

    #[tokio::test]
    async fn an_idle_body_fails_and_is_counted_a_moving_one_does_not() {
        let stats = Arc::new(StreamStats::default());
        let (mut tx, rx) = futures_channel_body();
        let body = IdleBody::new(
            rx,
            Duration::from_millis(80),
            Instant::now(),
            None,
            stats.clone(),
        );
        let feeder = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(30)).await;
                tx.send(Bytes::from_static(b"x")).await;
            }
            // then silence, longer than the idle timeout
            tokio::time::sleep(Duration::from_millis(400)).await;
            drop(tx);
        });
        let mut body = std::pin::pin!(body);
        let mut got = 0;
        let err = loop {
            match body.frame().await {
                Some(Ok(_)) => got += 1,
                Some(Err(e)) => break e,
                None => panic!("body ended instead of timing out"),
            }
        };
        assert_eq!(got, 5, "frames 30 ms apart pass an 80 ms idle timeout");
        assert!(err.is::<IdleTimeout>());
        assert_eq!(stats.snapshot().idle_bodies, 1);
        feeder.abort();
    }

    #[tokio::test]
    async fn a_body_that_never_waits_never_arms_its_timer() {
        let stats = Arc::new(StreamStats::default());
        let inner = Body::full(Bytes::from_static(b"{\"text\":\"hi\"}"));
        let mut body = std::pin::pin!(IdleBody::new(
            inner,
            DEFAULT_IDLE,
            Instant::now(),
            None,
            stats
        ));
        let data = body.as_mut().collect().await.unwrap().to_bytes();
        assert_eq!(&data[..], b"{\"text\":\"hi\"}");
        assert!(body.sleep.is_none(), "no wait, so no timer");

        // One that waits arms it once, at its first wait.
        let stats = Arc::new(StreamStats::default());
        let (mut tx, rx) = futures_channel_body();
        let mut body = std::pin::pin!(IdleBody::new(rx, DEFAULT_IDLE, Instant::now(), None, stats));
        let waiting = futures_util::FutureExt::now_or_never(body.as_mut().frame());
        assert!(waiting.is_none());
        assert!(body.sleep.is_some(), "armed when it first had to wait");
        tx.send(Bytes::from_static(b"x")).await;
        assert!(body.as_mut().frame().await.unwrap().unwrap().is_data());
    }

    /// A body fed from a channel, for the tests.
    fn futures_channel_body() -> (Feeder, Body) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
        });
        (
            Feeder(tx),
            Body::stream(http_body_util::StreamBody::new(stream)),
        )
    }

    struct Feeder(tokio::sync::mpsc::Sender<Bytes>);

    impl Feeder {
        async fn send(&mut self, b: Bytes) {
            let _ = self.0.send(b).await;
        }
    }
}
