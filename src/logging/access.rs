//! The access line in JSON, written straight into the thread's log batch.
//!
//! It has the shape of the other JSON lines (`timestamp`, `level`, `target`, `message` and the
//! fields at the top level) but skips the generic formatter: a fixed set of fields written by
//! hand costs a fraction of a field visitor and a serializer per request. The timestamp's date
//! and time of day are formatted once per second per thread.

use std::cell::RefCell;
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::sink;

/// The fields of one access line.
#[derive(Debug, Clone, Copy)]
pub struct AccessLine<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub route: &'a str,
    /// Pass routes: the path, never its query (tokens travel in queries, e.g. `/socket.io/?token=`).
    pub path: Option<&'a str>,
    pub status: u16,
    /// Written as `duration_ms` with three decimals.
    pub duration: Duration,
    /// Written as `upstream_ms`; absent from the line when the upstream was not called.
    pub upstream: Option<Duration>,
    pub rate_limit: &'a str,
    pub cache: &'a str,
}

thread_local! {
    /// The whole second last formatted, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: RefCell<(u64, [u8; 19])> = const { RefCell::new((u64::MAX, [0; 19])) };
}

fn push_timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != secs {
            *cached = secs;
            let t = time::OffsetDateTime::from(now);
            let mut w = &mut text[..];
            let _ = write!(
                w,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            );
        }
        out.extend_from_slice(text);
    });
    out.push(b'.');
    push_padded(out, u64::from(since.subsec_micros()), 6);
    out.push(b'Z');
}

/// `n` in decimal. (Integers without `fmt`: its machinery and float formatting cost more than
/// the rest of the line.)
fn push_uint(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// The last `width` decimal digits of `n`, zero-padded.
fn push_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    let mut n = n;
    for d in out[start..].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
}

/// `d` in milliseconds with three decimals (whole microseconds, saturating).
fn push_millis(out: &mut Vec<u8>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    push_uint(out, us / 1000);
    out.push(b'.');
    push_padded(out, us % 1000, 3);
}

/// `s` as a JSON string, quotes included.
fn push_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    // Ids, methods, route names and paths nearly never need an escape: one plain scan, then
    // one copy.
    if crate::cache::scan::special(s.as_bytes(), 0) == s.len() {
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&s.as_bytes()[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&s.as_bytes()[start..]);
    out.push(b'"');
}

impl AccessLine<'_> {
    /// The line, newline included, as of `now`.
    pub fn write(&self, out: &mut Vec<u8>, now: SystemTime) {
        out.extend_from_slice(b"{\"timestamp\":\"");
        push_timestamp(out, now);
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"request_id\":");
        push_str(out, self.request_id);
        out.extend_from_slice(b",\"method\":");
        push_str(out, self.method);
        out.extend_from_slice(b",\"route\":");
        push_str(out, self.route);
        if let Some(path) = self.path {
            out.extend_from_slice(b",\"path\":");
            push_str(out, path);
        }
        out.extend_from_slice(b",\"status\":");
        push_uint(out, u64::from(self.status));
        out.extend_from_slice(b",\"duration_ms\":");
        push_millis(out, self.duration);
        if let Some(d) = self.upstream {
            out.extend_from_slice(b",\"upstream_ms\":");
            push_millis(out, d);
        }
        out.extend_from_slice(b",\"rate_limit\":");
        push_str(out, self.rate_limit);
        out.extend_from_slice(b",\"cache\":");
        push_str(out, self.cache);
        out.extend_from_slice(b",\"target\":\"access\"}\n");
    }

    /// Appends the line to this thread's log batch.
    pub fn emit(&self) {
        let now = SystemTime::now();
        sink::line(|buf| self.write(buf, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(l: &AccessLine<'_>, at: SystemTime) -> serde_json::Value {
        let mut out = Vec::new();
        l.write(&mut out, at);
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn fields_timestamp_and_escapes() {
        let at = UNIX_EPOCH + Duration::from_micros(1_764_145_834_000_042);
        let l = AccessLine {
            request_id: "a\"b\\c\u{1}",
            method: "POST",
            route: "session_v3",
            path: None,
            status: 200,
            duration: Duration::from_micros(125),
            upstream: Some(Duration::from_micros(100)),
            rate_limit: "allowed",
            cache: "none",
        };
        let v = line(&l, at);
        assert_eq!(v["timestamp"], "2025-11-26T08:30:34.000042Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "access");
        assert_eq!(v["message"], "request");
        assert_eq!(v["request_id"], "a\"b\\c\u{1}");
        assert_eq!(v["method"], "POST");
        assert_eq!(v["route"], "session_v3");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 0.125);
        assert_eq!(v["upstream_ms"], 0.1);
        assert_eq!(v["rate_limit"], "allowed");
        assert_eq!(v["cache"], "none");
        // The cached second is not reused for the next one.
        let v = line(
            &AccessLine {
                upstream: None,
                duration: Duration::from_micros(12_345_678),
                status: 7,
                ..l
            },
            at + Duration::from_secs(1),
        );
        assert_eq!(v["timestamp"], "2025-11-26T08:30:35.000042Z");
        assert!(v.get("upstream_ms").is_none());
        assert_eq!(v["duration_ms"], 12_345.678);
        assert_eq!(v["status"], 7);
        let v = line(
            &AccessLine {
                duration: Duration::ZERO,
                ..l
            },
            at,
        );
        assert_eq!(v["duration_ms"], 0.0);
        // Escapes past the first words of a long string, and a long string with none.
        for id in [
            "0123456789abcdefghij\"k\\l\n",
            "0123456789abcdefghijklmnopqrstuv",
        ] {
            let v = line(
                &AccessLine {
                    request_id: id,
                    ..l
                },
                at,
            );
            assert_eq!(v["request_id"], id);
        }
    }

    #[test]
    fn integers_at_their_edges() {
        for n in [0, 9, 10, 99, 100, 1_000_001, u64::MAX] {
            let mut out = Vec::new();
            push_uint(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
        let mut out = Vec::new();
        push_millis(&mut out, Duration::from_micros(1_001));
        out.push(b' ');
        push_millis(&mut out, Duration::from_nanos(249_999));
        assert_eq!(out, b"1.001 0.249");
    }
}
