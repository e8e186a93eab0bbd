//! Where log lines go: stdout, in whole lines, batched per runtime thread.
//!
//! A `write` to stdout per line costs a system call on every request. Instead each runtime
//! worker appends its lines to its own buffer and writes the buffer in one call when it is
//! about to go idle (the runtime's park hook), when the buffer passes [`FLUSH_AT`], and when
//! the thread stops; `main` flushes its own thread after the runtime returns. No line is
//! dropped: a full pipe blocks the writer, as an unbuffered write would. Threads that never
//! park through the runtime (the blocking pool, `main` before the runtime) write through at
//! once, so nothing can sit in a buffer that is never flushed.
//!
//! Lines are written under stdout's lock, so lines of different threads never interleave.

use std::cell::{Cell, RefCell};
use std::io::{self, Write};

/// Buffered bytes above which a thread writes without waiting to go idle.
pub const FLUSH_AT: usize = 32 * 1024;

thread_local! {
    static BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Set on a thread once its runtime is known to flush it when it parks.
    static BATCHED: Cell<bool> = const { Cell::new(false) };
}

fn write_out(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    // Nowhere to report a failed log write to; stdout closed is the only realistic cause.
    let _ = io::stdout().lock().write_all(bytes);
}

/// Appends one line (built by `fill`, newline included) to this thread's batch, or writes it
/// at once on a thread that does not batch.
pub fn line(fill: impl FnOnce(&mut Vec<u8>)) {
    if BATCHED.get() {
        let full = BUFFER.with_borrow_mut(|buf| {
            fill(buf);
            buf.len() >= FLUSH_AT
        });
        if full {
            flush();
        }
    } else {
        let mut buf = Vec::with_capacity(256);
        fill(&mut buf);
        write_out(&buf);
    }
}

/// Writes this thread's batch. Called by the runtime's park and stop hooks.
pub fn flush() {
    BUFFER.with_borrow_mut(|buf| {
        write_out(buf);
        buf.clear();
        if buf.capacity() > 4 * FLUSH_AT {
            buf.shrink_to(FLUSH_AT);
        }
    });
}

/// The runtime's park hook: this thread is going idle, so its batch is written, and from now
/// on it batches (it parks, so it will be flushed again).
pub fn on_park() {
    BATCHED.set(true);
    flush();
}

/// The runtime's thread-stop hook, and `main` after the runtime returns: write what is left
/// and stop batching on this thread.
pub fn on_stop() {
    BATCHED.set(false);
    flush();
}

/// A `tracing_subscriber` writer for every other log line, through the same batches so that a
/// thread's lines keep their order.
#[derive(Clone, Copy, Default)]
pub struct Stdout;

/// One event's bytes; tracing-subscriber writes each formatted event with one `write_all`.
pub struct EventWriter;

impl Write for EventWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        line(|buf| buf.extend_from_slice(bytes));
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Stdout {
    type Writer = EventWriter;
    fn make_writer(&'a self) -> EventWriter {
        EventWriter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batching_thread_keeps_lines_until_flushed() {
        std::thread::spawn(|| {
            BATCHED.set(true);
            line(|b| b.extend_from_slice(b"one\n"));
            line(|b| b.extend_from_slice(b"two\n"));
            assert_eq!(BUFFER.with_borrow(|b| b.clone()), b"one\ntwo\n");
            BUFFER.with_borrow_mut(|b| b.clear());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn other_threads_write_through() {
        std::thread::spawn(|| {
            line(|b| b.extend_from_slice(b""));
            assert!(BUFFER.with_borrow(|b| b.is_empty()));
        })
        .join()
        .unwrap();
    }
}
