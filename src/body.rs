//! The one body type of every response the gateway sends, and of every request it forwards.
//!
//! Policy routes work on complete bytes (validation reads the request, the cache stores the
//! answer), so most bodies are [`Body::full`]: one frame, its length known, its bytes readable
//! by the layers that need them without polling. Pass-through routes stream: a [`Body::stream`]
//! wraps the peer's body and is never collected, so an upload or download of any size costs
//! the gateway a few frames of memory.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;

use crate::error::BoxError;
use crate::layers::hold::Sending;

/// A complete body, or a stream passed through.
pub struct Body {
    kind: Kind,
}

enum Kind {
    /// Complete bytes, taken by the first poll.
    Full(Bytes),
    Stream(UnsyncBoxBody<Bytes, BoxError>),
    /// On its way to the client, in watched chunks (`layers::hold`).
    Sending(Box<Sending>),
}

impl Body {
    /// No bytes.
    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// Complete bytes, sent as one frame.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self {
            kind: Kind::Full(bytes.into()),
        }
    }

    /// Any body, streamed frame by frame as it arrives; its errors become [`BoxError`]s.
    pub fn stream<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Self {
            kind: Kind::Stream(body.map_err(Into::into).boxed_unsync()),
        }
    }

    /// A body on its way to the client (`layers::hold`).
    pub fn sending(s: Sending) -> Self {
        Self {
            kind: Kind::Sending(Box::new(s)),
        }
    }

    /// The bytes of a complete body not yet sent; `None` for a stream.
    pub fn bytes(&self) -> Option<&Bytes> {
        match &self.kind {
            Kind::Full(b) => Some(b),
            Kind::Stream(_) => None,
            Kind::Sending(s) => s.bytes(),
        }
    }

    /// The bytes of a complete body, or the body itself when it is not one.
    pub fn into_bytes(self) -> Result<Bytes, Self> {
        match self.kind {
            Kind::Full(b) => Ok(b),
            kind => Err(Self { kind }),
        }
    }

    /// Whether the body is a stream (not complete bytes).
    pub fn is_stream(&self) -> bool {
        self.bytes().is_none()
    }
}

impl Default for Body {
    fn default() -> Self {
        Self::empty()
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Full(b) => write!(f, "Body::Full({} bytes)", b.len()),
            Kind::Stream(_) => f.write_str("Body::Stream"),
            Kind::Sending(_) => f.write_str("Body::Sending"),
        }
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Self::full(b)
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Self::full(Bytes::from_static(s.as_bytes()))
    }
}

impl From<String> for Body {
    fn from(s: String) -> Self {
        Self::full(s)
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Self {
        Self::full(v)
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            Kind::Full(b) if b.is_empty() => Poll::Ready(None),
            Kind::Full(b) => Poll::Ready(Some(Ok(Frame::data(std::mem::take(b))))),
            Kind::Stream(s) => Pin::new(s).poll_frame(cx),
            Kind::Sending(s) => s.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_empty(),
            Kind::Stream(s) => s.is_end_stream(),
            Kind::Sending(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.len() as u64),
            Kind::Stream(s) => s.size_hint(),
            Kind::Sending(s) => s.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;

    #[tokio::test]
    async fn full_bodies_are_one_frame_of_known_length() {
        let b = Body::from("hello");
        assert_eq!(b.size_hint().exact(), Some(5));
        assert_eq!(b.bytes().unwrap(), "hello");
        assert!(!b.is_stream());
        let got = b.collect().await.unwrap().to_bytes();
        assert_eq!(got, "hello");
        assert!(Body::empty().is_end_stream());
    }

    #[tokio::test]
    async fn streams_pass_every_frame_and_their_errors() {
        let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"a"))),
            Ok(Frame::data(Bytes::from_static(b"b"))),
        ];
        let b = Body::stream(http_body_util::StreamBody::new(futures_util::stream::iter(
            chunks,
        )));
        assert!(b.is_stream() && b.bytes().is_none());
        assert_eq!(b.collect().await.unwrap().to_bytes(), "ab");
        let failing: Vec<Result<Frame<Bytes>, std::io::Error>> =
            vec![Err(std::io::Error::other("cut"))];
        let b = Body::stream(http_body_util::StreamBody::new(futures_util::stream::iter(
            failing,
        )));
        assert!(b.collect().await.is_err());
    }
}
