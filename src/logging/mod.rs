//! Logging: the subscriber, the batched stdout sink every line goes through, and the access
//! line, which is written by hand in JSON (see [`access`]).

pub mod access;
pub mod sink;

use crate::config::{LogFile, LogFormat};

/// How the trace layer writes its access line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    /// `log.access = false`.
    Off,
    /// The hand-written JSON line ([`access::AccessLine`]).
    Json,
    /// A `tracing` event, formatted by the subscriber (`log.format = "pretty"`).
    Event,
}

impl AccessLog {
    pub fn new(log: &LogFile) -> Self {
        match (log.access, log.format) {
            (false, _) => AccessLog::Off,
            (true, LogFormat::Json) => AccessLog::Json,
            (true, LogFormat::Pretty) => AccessLog::Event,
        }
    }
}

/// Installs the global subscriber: `RUST_LOG` if set, else `level`, in `format`, to the
/// batched stdout (see [`sink`]).
pub fn init(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sink::Stdout);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Pretty => builder.compact().init(),
    }
}
