//! Tells HTTP/1 from HTTP/2 by the client's first bytes, within a deadline, and hands the bytes
//! read back to the protocol in front of the rest of the stream.
//!
//! hyper-util's automatic builder does the same without a deadline, so a connection that sends
//! nothing lived until the client left; here it is closed after `server.first_bytes_timeout_ms`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// Why no protocol was found.
#[derive(Debug)]
pub enum DetectError {
    /// Nothing decisive arrived in time.
    TimedOut,
    /// The client closed or the read failed before anything decisive arrived.
    Closed,
}

/// Reads until the bytes match the HTTP/2 preface in full or stop matching it.
pub async fn detect<I>(mut io: I, timeout: Duration) -> Result<(Protocol, Prefixed<I>), DetectError>
where
    I: AsyncRead + Unpin,
{
    let mut buf = Vec::with_capacity(H2_PREFACE.len());
    let read = async {
        loop {
            let mut chunk = [0u8; 24];
            let want = H2_PREFACE.len() - buf.len();
            let n = io
                .read(&mut chunk[..want])
                .await
                .map_err(|_| DetectError::Closed)?;
            if n == 0 {
                return Err(DetectError::Closed);
            }
            buf.extend_from_slice(&chunk[..n]);
            if !H2_PREFACE.starts_with(&buf) {
                return Ok(Protocol::Http1);
            }
            if buf.len() == H2_PREFACE.len() {
                return Ok(Protocol::Http2);
            }
        }
    };
    let protocol = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| DetectError::TimedOut)??;
    Ok((protocol, Prefixed::new(buf, io)))
}

pin_project_lite::pin_project! {
    /// A stream that first yields `prefix`, then reads from `io`.
    pub struct Prefixed<I> {
        prefix: Vec<u8>,
        at: usize,
        #[pin]
        io: I,
    }
}

impl<I> Prefixed<I> {
    pub fn new(prefix: Vec<u8>, io: I) -> Self {
        Self { prefix, at: 0, io }
    }
}

impl<I: AsyncRead> AsyncRead for Prefixed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if *this.at < this.prefix.len() {
            let rest = &this.prefix[*this.at..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            *this.at += n;
            if *this.at == this.prefix.len() {
                *this.prefix = Vec::new();
                *this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        this.io.poll_read(cx, buf)
    }
}

crate::io::write_through!(Prefixed);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn detect_bytes(chunks: &[&[u8]]) -> (Protocol, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(64);
        for c in chunks {
            client.write_all(c).await.unwrap();
        }
        drop(client);
        let (p, mut io) = detect(server, Duration::from_secs(5)).await.unwrap();
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        (p, all)
    }

    #[tokio::test]
    async fn tells_the_protocols_apart_and_loses_no_byte() {
        let (p, all) = detect_bytes(&[b"GET / HTTP/1.1\r\n\r\n"]).await;
        assert_eq!(p, Protocol::Http1);
        assert_eq!(all, b"GET / HTTP/1.1\r\n\r\n");
        let (p, all) = detect_bytes(&[b"PRI * HTTP/2.0\r\n", b"\r\nSM\r\n\r\nrest"]).await;
        assert_eq!(p, Protocol::Http2);
        assert_eq!(all, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nrest");
        let (p, _) = detect_bytes(&[b"PRI * HTTP/1.1\r\n"]).await;
        assert_eq!(
            p,
            Protocol::Http1,
            "a near miss is HTTP/1, which refuses it"
        );
    }

    #[tokio::test]
    async fn silence_times_out() {
        let (_client, server) = tokio::io::duplex(64);
        let r = detect(server, Duration::from_millis(20)).await;
        assert!(matches!(r, Err(DetectError::TimedOut)));
    }
}
