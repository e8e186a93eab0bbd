//! Reads the framing facts of each HTTP/1 request head from the bytes as they arrive, before
//! hyper parses (and normalises) them: hyper keeps one of two equal `Content-Length` lines and
//! drops `Content-Length` when `Transfer-Encoding` is present, so the framing rules
//! (`layers::framing`) could not see either from the request it hands over.
//!
//! The sniffer follows the message framing as hyper does (the head with the same parser,
//! httparse; then a fixed-length or chunked body) to find where the next head starts, and
//! queues one [`HeadFacts`] per head in arrival order; the connection's service takes them in
//! the same order, one per request. Where the two could disagree, hyper refuses the bytes and
//! closes the connection, so no later request is served. On anything it cannot follow (a
//! malformed or oversized head, a size it cannot parse) the sniffer stops and queues nothing
//! more: the rules then go by the header map alone. After a protocol upgrade the bytes are no
//! longer HTTP, and no request follows them.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use crate::config::HYPER_MAX_HEAD;
use crate::layers::framing::HeadFacts;

/// Facts of the heads read so far, oldest first.
#[derive(Debug, Default)]
pub struct FactsQueue(Mutex<VecDeque<HeadFacts>>);

impl FactsQueue {
    pub fn pop(&self) -> Option<HeadFacts> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }

    fn push(&self, f: HeadFacts) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(f);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a request head.
    Head,
    /// Skipping this many body bytes.
    Fixed(u64),
    /// Reading a chunk-size line: the size so far, and whether the digits have ended.
    Size(u64, bool),
    /// Skipping chunk data, then the line end after it.
    Data(u64),
    DataEnd,
    /// Trailer lines after the last chunk: at the start of a line (a blank one ends the message).
    TrailerStart,
    TrailerLine,
    /// Lost track: stop.
    Done,
}

/// The framing follower, independent of any IO (tested on its own).
#[derive(Debug)]
pub struct Follower {
    state: State,
    head: Vec<u8>,
    queue: Arc<FactsQueue>,
}

impl Follower {
    pub fn new(queue: Arc<FactsQueue>) -> Self {
        Self {
            state: State::Head,
            head: Vec::new(),
            queue,
        }
    }

    /// Consumes bytes as read from the client.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Done => return,
                State::Head if self.head.is_empty() => {
                    // The usual case: a head that starts this read is parsed where it lies,
                    // not copied (a head can only complete with a line feed).
                    let parsed = if data.contains(&b'\n') {
                        self.parse_head(data)
                    } else {
                        Head::Partial
                    };
                    match parsed {
                        Head::Complete(used) => data = &data[used..],
                        Head::Partial => {
                            self.head.extend_from_slice(data);
                            return self.stop_if_oversized();
                        }
                        Head::Refused => return self.stop(),
                    }
                }
                State::Head => {
                    // The rest of a head begun in an earlier read.
                    self.head.extend_from_slice(data);
                    if data.contains(&b'\n') {
                        let head = std::mem::take(&mut self.head);
                        match self.parse_head(&head) {
                            Head::Complete(used) => return self.feed(&head[used..]),
                            Head::Refused => return self.stop(),
                            Head::Partial => self.head = head,
                        }
                    }
                    return self.stop_if_oversized();
                }
                State::Fixed(n) | State::Data(n) => {
                    let take = n.min(data.len() as u64);
                    data = &data[take as usize..];
                    let left = n - take;
                    self.state = match (self.state, left) {
                        (State::Fixed(_), 0) => State::Head,
                        (State::Fixed(_), l) => State::Fixed(l),
                        (_, 0) => State::DataEnd,
                        (_, l) => State::Data(l),
                    };
                }
                State::Size(size, ended) => {
                    let b = data[0];
                    data = &data[1..];
                    self.state = match (b, ended) {
                        (b'\n', _) if size == 0 => State::TrailerStart,
                        (b'\n', _) => State::Data(size),
                        (_, false) if b.is_ascii_hexdigit() => {
                            let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                            match size.checked_mul(16).and_then(|s| s.checked_add(digit)) {
                                Some(s) => State::Size(s, false),
                                None => State::Done,
                            }
                        }
                        // Extensions, whitespace, the CR: skipped to the line end.
                        _ => State::Size(size, true),
                    };
                }
                State::DataEnd => {
                    let b = data[0];
                    data = &data[1..];
                    if b == b'\n' {
                        self.state = State::Size(0, false);
                    }
                }
                State::TrailerStart => {
                    let b = data[0];
                    data = &data[1..];
                    self.state = match b {
                        b'\n' => State::Head,
                        b'\r' => State::TrailerStart,
                        _ => State::TrailerLine,
                    };
                }
                State::TrailerLine => {
                    let b = data[0];
                    data = &data[1..];
                    if b == b'\n' {
                        self.state = State::TrailerStart;
                    }
                }
            }
        }
    }

    /// A head kept incomplete may grow only to hyper's limit; past it hyper refuses it.
    fn stop_if_oversized(&mut self) {
        if self.head.len() > HYPER_MAX_HEAD {
            self.stop();
        }
    }

    fn stop(&mut self) {
        self.state = State::Done;
        self.head = Vec::new();
    }

    /// Parses the head at the start of `head`; when complete, queues its facts, sets the body
    /// state and returns the head's length.
    fn parse_head(&mut self, head: &[u8]) -> Head {
        // Uninitialised, as hyper gives them: 100 headers written out first would cost more than
        // parsing the few a head has.
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; 100];
        let mut req = httparse::Request::new(&mut []);
        let used = match req.parse_with_uninit_headers(head, &mut headers) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Head::Partial,
            Err(_) => return Head::Refused,
        };
        let mut facts = HeadFacts::default();
        let mut length = None;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                facts.content_length_lines = facts.content_length_lines.saturating_add(1);
                if length.is_none() {
                    length = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok());
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                facts.transfer_encoding = true;
            }
        }
        self.queue.push(facts);
        self.state = if facts.transfer_encoding {
            State::Size(0, false)
        } else if facts.content_length_lines > 0 {
            match length {
                Some(0) => State::Head,
                Some(n) => State::Fixed(n),
                None => State::Done,
            }
        } else {
            State::Head
        };
        Head::Complete(used)
    }
}

/// What parsing a head found.
enum Head {
    /// A whole head of this many bytes.
    Complete(usize),
    /// Not all of it yet.
    Partial,
    /// Not a head httparse (and so hyper) accepts: the follower stops.
    Refused,
}

pin_project_lite::pin_project! {
    /// An HTTP/1 byte stream whose reads also go through a [`Follower`].
    pub struct Sniff<I> {
        #[pin]
        io: I,
        follower: Follower,
    }
}

impl<I> Sniff<I> {
    pub fn new(io: I, queue: Arc<FactsQueue>) -> Self {
        Self {
            io,
            follower: Follower::new(queue),
        }
    }
}

impl<I: AsyncRead> AsyncRead for Sniff<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.io.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            this.follower.feed(&buf.filled()[before..]);
        }
        res
    }
}

crate::io::write_through!(Sniff);

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(stream: &[u8], piece: usize) -> Vec<HeadFacts> {
        let q = Arc::new(FactsQueue::default());
        let mut f = Follower::new(q.clone());
        for chunk in stream.chunks(piece) {
            f.feed(chunk);
        }
        std::iter::from_fn(|| q.pop()).collect()
    }

    const PLAIN: HeadFacts = HeadFacts {
        content_length_lines: 0,
        transfer_encoding: false,
    };

    #[test]
    fn follows_fixed_and_chunked_bodies_to_the_next_head() {
        let stream = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nGET /\r\n\
POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nGET \r\n0\r\nX-T: 1\r\n\r\n\
GET /c HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-length: 0\r\n\r\n\
POST /d HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
GET /e HTTP/1.1\r\nHost: x\r\n\r\n";
        let want = vec![
            HeadFacts {
                content_length_lines: 1,
                ..PLAIN
            },
            HeadFacts {
                transfer_encoding: true,
                ..PLAIN
            },
            HeadFacts {
                content_length_lines: 2,
                ..PLAIN
            },
            HeadFacts {
                content_length_lines: 1,
                transfer_encoding: true,
            },
            PLAIN,
        ];
        for piece in [1, 2, 7, 64, stream.len()] {
            assert_eq!(facts(stream, piece), want, "read {piece} bytes at a time");
        }
    }

    #[test]
    fn stops_on_what_it_cannot_follow() {
        assert_eq!(
            facts(b"\x00\x01garbage\r\n\r\nGET / HTTP/1.1\r\n\r\n", 5),
            vec![]
        );
        let huge = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n",
            "a".repeat(HYPER_MAX_HEAD + 1)
        );
        assert_eq!(facts(huge.as_bytes(), 4096), vec![]);
        let bad_len = b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(
            facts(bad_len, 3).len(),
            1,
            "nothing after a length it cannot read"
        );
    }
}
