//! Configuration: serde file structs (every field documented with its default) turned once, at
//! start-up, into a validated runtime [`Config`] of typed values. Bad input fails fast with a
//! message that names the key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use serde::{Deserialize, Serialize};

pub mod shared;

use shared::{invalid, positive};
pub use shared::{ConfigError, Secret};

// ------------------------------------------------------------------ file structs

/// The TOML file. Every section is optional; every field has the default documented in
/// `config/gateway.toml`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub server: ServerFile,
    pub upstream: UpstreamFile,
    pub api_key: ApiKeyFile,
    pub network: NetworkFile,
    pub limits: LimitsFile,
    pub log: LogFile,
    pub cache: crate::cache::settings::CacheFile,
    pub tls: TlsFile,
    pub rate_limit: crate::ratelimit::RateLimitFile,
    pub cors: crate::layers::cors::CorsFile,
    /// The route table (`[[routes]]`); the default is the shipped table.
    pub routes: crate::routes::table::RoutesFile,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerFile {
    /// Client listener. Default `0.0.0.0:8080`. Env `GATEWAY_LISTEN`.
    pub listen: String,
    /// Admin listener (`/healthz`, `/readyz`, `/metrics`). Default `0.0.0.0:9090`. Env `GATEWAY_ADMIN_LISTEN`.
    pub admin_listen: String,
    /// Time in-flight requests get to finish after SIGTERM. Default 20 s.
    pub drain_timeout_secs: u64,
    /// Total time budget of one policy-route request, counted from its arrival; the upstream
    /// exchange ends at it when that comes before `upstream.timeout_ms`. Default 15 s.
    pub request_timeout_ms: u64,
    /// Requests in flight above which new ones are shed with 503. Default 4096.
    pub max_concurrency: usize,
    /// Time a client gets to send its request head. Default 10 s.
    pub header_read_timeout_ms: u64,
    /// Time a client gets to send its request body, once the head is in; 408 after it.
    /// Must be below `request_timeout_ms`. Default 10 s.
    pub body_read_timeout_ms: u64,
    /// Runtime threads: 0 (default) `TOKIO_WORKER_THREADS` if set, else one per CPU the process
    /// may use; N that many. When it comes out as 1, one current-thread runtime does everything.
    pub worker_threads: usize,
    /// A body must arrive at this average rate (bytes per second) once `body_rate_grace_ms` has
    /// passed; a slower one is cut with 408. Default 1024.
    pub min_body_rate_bytes_per_sec: u64,
    /// Time a body may take before `min_body_rate_bytes_per_sec` applies. Default 2000 ms.
    pub body_rate_grace_ms: u64,
    /// Longest request target (path and query) answered; longer gets 414. Default 8192.
    pub max_uri_bytes: usize,
    /// Largest request head (every header name and value, plus 4 bytes per line); larger gets
    /// 431. Default 32768.
    pub max_header_bytes: usize,
    /// Open client connections at most; further accepts are closed at once. Default 10000.
    pub max_connections: usize,
    /// Open client connections from one IP address at most. Default 1024.
    pub max_connections_per_ip: usize,
    /// Requests in progress on one HTTP/2 connection at most; further streams get 503.
    /// Default 128.
    pub max_streams_per_connection: usize,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` advertised to HTTP/2 clients: streams past it are
    /// reset by the protocol itself, uncounted. Default 256.
    pub http2_max_concurrent_streams: u32,
    /// Time a new connection gets to send enough bytes to tell HTTP/1 from HTTP/2 (after the
    /// TLS handshake, when TLS is on). Default 5000 ms.
    pub first_bytes_timeout_ms: u64,
    /// Interval of HTTP/2 keep-alive pings. Default 20000 ms.
    pub http2_keep_alive_interval_ms: u64,
    /// Time an HTTP/2 ping has to be answered before the connection is closed. Default 10000 ms.
    pub http2_keep_alive_timeout_ms: u64,
    /// An HTTP/2 connection with no request in progress for this long is closed (GOAWAY).
    /// Default 60000 ms. (An idle HTTP/1 connection is closed by `header_read_timeout_ms`.)
    pub http2_idle_timeout_ms: u64,
    /// During the drain, an idle HTTP/1 keep-alive connection is closed after this grace (a
    /// request it sends before then is answered, with `Connection: close`). Default 1000 ms.
    pub drain_idle_grace_ms: u64,
    /// Bytes of complete answers held at once, on every connection together, while clients
    /// take them; an answer past it gets 503. At least `upstream.max_response_bytes`.
    /// Default 32 MiB.
    pub answer_budget_bytes: usize,
    /// Time a client gets to take each chunk (64 KiB) of an answer; a connection holding one
    /// longer is closed. Default 30000 ms.
    pub send_timeout_ms: u64,
}

impl Default for ServerFile {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            admin_listen: "0.0.0.0:9090".into(),
            drain_timeout_secs: 20,
            request_timeout_ms: 15_000,
            max_concurrency: 4096,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 10_000,
            worker_threads: 0,
            min_body_rate_bytes_per_sec: 1024,
            body_rate_grace_ms: 2_000,
            max_uri_bytes: 8192,
            max_header_bytes: 32 * 1024,
            max_connections: 10_000,
            max_connections_per_ip: 1024,
            max_streams_per_connection: 128,
            http2_max_concurrent_streams: 256,
            first_bytes_timeout_ms: 5_000,
            http2_keep_alive_interval_ms: 20_000,
            http2_keep_alive_timeout_ms: 10_000,
            http2_idle_timeout_ms: 60_000,
            drain_idle_grace_ms: 1_000,
            answer_budget_bytes: 32 << 20,
            send_timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamFile {
    /// Base URL of the Amity REST API. Default `https://apix.us.amity.co`. Env `GATEWAY_UPSTREAM_URL`.
    pub url: String,
    /// TCP (+TLS) connect budget. Default 2000 ms.
    pub connect_timeout_ms: u64,
    /// Budget for the whole upstream exchange (send, head, body). Default 10000 ms.
    pub timeout_ms: u64,
    /// Idle pooled connections are closed after this. Default 90 s.
    pub pool_idle_timeout_secs: u64,
    /// Idle connections kept per upstream host. Default 256.
    pub pool_max_idle_per_host: usize,
    /// Speak HTTP/2 to the upstream (ALPN for https, prior knowledge for http). Default false.
    pub http2: bool,
    /// Largest upstream response body accepted; larger ones are a 502. Default 4 MiB.
    /// Pass routes stream and are not limited by it.
    pub max_response_bytes: usize,
    /// Pass routes: a body or websocket that moves no byte for this long is closed; a route's
    /// own `idle_timeout_ms` wins. Default 60000 ms.
    pub idle_timeout_ms: u64,
}

impl Default for UpstreamFile {
    fn default() -> Self {
        Self {
            url: "https://apix.us.amity.co".into(),
            connect_timeout_ms: 2_000,
            timeout_ms: 10_000,
            pool_idle_timeout_secs: 90,
            pool_max_idle_per_host: 256,
            http2: false,
            max_response_bytes: 4 << 20,
            idle_timeout_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiKeyFile {
    /// The key itself. Prefer env `AMITY_API_KEY` or `file`. Default: none.
    pub value: Option<Secret>,
    /// A file holding the key (a mounted Kubernetes Secret); re-read when it changes on disk.
    /// Env `GATEWAY_API_KEY_FILE`. Default: none.
    pub file: Option<PathBuf>,
    /// What to do with an `x-api-key` sent by a client: `strip` (default) or `reject` (400).
    pub client_key: ClientKeyPolicy,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientKeyPolicy {
    #[default]
    Strip,
    Reject,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkFile {
    /// The network's "secure mode": session bodies must carry `authToken`. Default false.
    pub secure: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsFile {
    /// Largest request body accepted, from Content-Length or while streaming. Default 16384.
    pub max_body_bytes: usize,
}

impl Default for LimitsFile {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogFile {
    /// `json` (default, for containers) or `pretty`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `amity_gateway=debug`; `RUST_LOG` wins. Default `info`.
    pub level: String,
    /// One access line per request (target `access`, level info). Default true.
    pub access: bool,
}

impl Default for LogFile {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: "info".into(),
            access: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

/// TLS on the client listener; off unless both files are named.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsFile {
    /// PEM certificate chain, leaf first. Env `GATEWAY_TLS_CERT_FILE`. Default: none (plain HTTP).
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Env `GATEWAY_TLS_KEY_FILE`. Default: none.
    pub key_file: Option<PathBuf>,
    /// Time a client gets to complete the TLS handshake. Default 10000 ms.
    pub handshake_timeout_ms: u64,
}

impl Default for TlsFile {
    fn default() -> Self {
        Self {
            cert_file: None,
            key_file: None,
            handshake_timeout_ms: 10_000,
        }
    }
}

// ------------------------------------------------------------------ runtime config

/// hyper's own limit on an HTTP/1 request target (65534 bytes); past it hyper answers 414 itself.
pub const HYPER_MAX_URI: usize = u16::MAX as usize - 1;
/// A request head the listener still reads whole (see `server`), so the gateway's own 431
/// answers first: HTTP/1 heads are read up to 64 KiB, HTTP/2 header lists up to this too.
pub const HYPER_MAX_HEAD: usize = 64 * 1024;

/// Where the injected key comes from. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    Value(String),
    File(PathBuf),
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Value(_) => f.write_str("Value(****)"),
            KeySource::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

/// Validated configuration, typed once at start-up.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub drain_timeout: Duration,
    pub request_timeout: Duration,
    pub max_concurrency: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    /// Minimum body data rate (bytes per second) after `body_rate_grace`.
    pub min_body_rate: u64,
    pub body_rate_grace: Duration,
    pub max_uri_bytes: usize,
    pub max_header_bytes: usize,
    /// Bytes of complete answers held at once (`layers::hold`).
    pub answer_budget: usize,
    /// Connection lifecycle and caps, for the listener.
    pub connections: Connections,
    /// 0: `TOKIO_WORKER_THREADS`, else one per usable CPU; N: N. One means a current-thread runtime.
    pub worker_threads: usize,
    pub upstream: Upstream,
    pub api_key: KeySource,
    pub client_key: ClientKeyPolicy,
    pub secure: bool,
    pub max_body_bytes: usize,
    pub log: LogFile,
    pub cache: crate::cache::settings::CacheConfig,
    /// TLS on the client listener, or plain HTTP when `None`.
    pub tls: Option<Tls>,
    /// `None` when rate limiting is disabled.
    pub rate_limit: Option<crate::ratelimit::RateLimitConfig>,
    /// `None` when CORS is off.
    pub cors: Option<crate::layers::cors::Cors>,
    pub routes: crate::routes::RouteTable,
    /// Names this configuration: the start of the SHA-256 of the effective file as
    /// `check-config` prints it (secrets masked), shown in `gateway_config_info`.
    pub hash: String,
}

/// How the client listener treats connections (see `server`).
#[derive(Debug, Clone, PartialEq)]
pub struct Connections {
    pub max_connections: usize,
    pub max_per_ip: usize,
    pub max_streams_per_connection: usize,
    pub http2_max_concurrent_streams: u32,
    pub header_read_timeout: Duration,
    pub first_bytes_timeout: Duration,
    pub http2_keep_alive_interval: Duration,
    pub http2_keep_alive_timeout: Duration,
    pub http2_idle_timeout: Duration,
    pub drain_idle_grace: Duration,
    pub drain_timeout: Duration,
    pub send_timeout: Duration,
}

impl Connections {
    /// Limits for a small internal listener (the admin endpoints): the defaults of the file.
    pub fn internal() -> Self {
        ServerFile::default().connections()
    }
}

impl ServerFile {
    /// The connection part of `[server]`; unchecked (see [`FileConfig::validate`]).
    fn connections(&self) -> Connections {
        let ms = Duration::from_millis;
        Connections {
            max_connections: self.max_connections,
            max_per_ip: self.max_connections_per_ip,
            max_streams_per_connection: self.max_streams_per_connection,
            http2_max_concurrent_streams: self.http2_max_concurrent_streams,
            header_read_timeout: ms(self.header_read_timeout_ms),
            first_bytes_timeout: ms(self.first_bytes_timeout_ms),
            http2_keep_alive_interval: ms(self.http2_keep_alive_interval_ms),
            http2_keep_alive_timeout: ms(self.http2_keep_alive_timeout_ms),
            http2_idle_timeout: ms(self.http2_idle_timeout_ms),
            drain_idle_grace: ms(self.drain_idle_grace_ms),
            drain_timeout: Duration::from_secs(self.drain_timeout_secs),
            send_timeout: ms(self.send_timeout_ms),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub handshake_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// `scheme://authority` of the upstream, without a trailing slash.
    pub base: Uri,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub http2: bool,
    pub max_response_bytes: usize,
}

/// Environment overrides, read by the caller (so tests can pass their own). No `Debug`: it
/// holds the key and the Redis URL (which may carry a password).
#[derive(Clone, Default)]
pub struct Env {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub upstream_url: Option<String>,
    pub api_key: Option<String>,
    pub api_key_file: Option<String>,
    pub tls_cert_file: Option<String>,
    pub tls_key_file: Option<String>,
    pub redis_url: Option<String>,
    pub rate_limit_backend: Option<String>,
    pub cache_shared: Option<String>,
}

impl Env {
    /// Reads `GATEWAY_LISTEN`, `GATEWAY_ADMIN_LISTEN`, `GATEWAY_UPSTREAM_URL`, `AMITY_API_KEY`,
    /// `GATEWAY_API_KEY_FILE`, `GATEWAY_TLS_CERT_FILE`, `GATEWAY_TLS_KEY_FILE`,
    /// `GATEWAY_REDIS_URL`, `GATEWAY_RATE_LIMIT_BACKEND`, `GATEWAY_CACHE_SHARED`; empty values
    /// count as unset.
    pub fn from_process() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            listen: var("GATEWAY_LISTEN"),
            admin_listen: var("GATEWAY_ADMIN_LISTEN"),
            upstream_url: var("GATEWAY_UPSTREAM_URL"),
            api_key: var("AMITY_API_KEY"),
            api_key_file: var("GATEWAY_API_KEY_FILE"),
            tls_cert_file: var("GATEWAY_TLS_CERT_FILE"),
            tls_key_file: var("GATEWAY_TLS_KEY_FILE"),
            redis_url: var("GATEWAY_REDIS_URL"),
            rate_limit_backend: var("GATEWAY_RATE_LIMIT_BACKEND"),
            cache_shared: var("GATEWAY_CACHE_SHARED"),
        }
    }
}

impl FileConfig {
    /// Parses the file. The error gives the line, column and reason, but not the text of the
    /// line: it is logged when a reload fails, and the line may hold a secret.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let at = e.span().map(|span| {
                let before = &text.as_bytes()[..span.start.min(text.len())];
                let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
                let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
                format!("line {line}, column {column}: ")
            });
            ConfigError::Parse {
                path: path.to_owned(),
                message: format!("{}{}", at.unwrap_or_default(), mask_quoted(e.message())),
            }
        })
    }

    /// Reads `path`, applies the environment overrides and validates: the file as in effect,
    /// and its typed form. Start-up, `check-config` and every reload go through here.
    pub fn load_effective(path: &Path, env: &Env) -> Result<(Self, Config), ConfigError> {
        let mut file = Self::load(path)?;
        file.apply_env(env)?;
        let config = file.validate()?;
        Ok((file, config))
    }

    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Applies environment overrides, then validates into a runtime [`Config`].
    pub fn resolve(mut self, env: &Env) -> Result<Config, ConfigError> {
        self.apply_env(env)?;
        self.validate()
    }

    /// Environment variables win over the file.
    pub fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        if let Some(v) = &env.listen {
            self.server.listen = v.clone();
        }
        if let Some(v) = &env.admin_listen {
            self.server.admin_listen = v.clone();
        }
        if let Some(v) = &env.upstream_url {
            self.upstream.url = v.clone();
        }
        if let Some(v) = &env.api_key {
            self.api_key.value = Some(Secret(v.clone()));
        }
        if let Some(v) = &env.api_key_file {
            self.api_key.file = Some(PathBuf::from(v));
        }
        if let Some(v) = &env.tls_cert_file {
            self.tls.cert_file = Some(PathBuf::from(v));
        }
        if let Some(v) = &env.tls_key_file {
            self.tls.key_file = Some(PathBuf::from(v));
        }
        if let Some(v) = &env.redis_url {
            self.rate_limit.redis.url = Some(Secret(v.clone()));
        }
        if let Some(v) = &env.rate_limit_backend {
            self.rate_limit.backend = match v.as_str() {
                "local" => crate::ratelimit::BackendKind::Local,
                "redis" => crate::ratelimit::BackendKind::Redis,
                other => {
                    return Err(invalid(
                        "GATEWAY_RATE_LIMIT_BACKEND",
                        format!("{other:?}: must be local or redis"),
                    ))
                }
            };
        }
        if let Some(v) = &env.cache_shared {
            self.cache.shared.enabled = match v.as_str() {
                "true" => true,
                "false" => false,
                other => {
                    return Err(invalid(
                        "GATEWAY_CACHE_SHARED",
                        format!("{other:?}: must be true or false"),
                    ))
                }
            };
        }
        Ok(())
    }

    /// Validates into typed values; the error names the offending key.
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let s = &self.server;
        let u = &self.upstream;
        let addr = |key, v: &str| {
            v.parse::<SocketAddr>()
                .map_err(|e| invalid(key, format!("{v:?}: {e}")))
        };
        let api_key = match (&self.api_key.value, &self.api_key.file) {
            (Some(Secret(v)), _) if !v.trim().is_empty() => {
                shared::key_header(v.trim()).map_err(|m| invalid("api_key.value", m))?;
                KeySource::Value(v.trim().to_owned())
            }
            (_, Some(p)) => KeySource::File(p.clone()),
            _ => {
                return Err(invalid(
                    "api_key",
                    "no key configured: set AMITY_API_KEY, GATEWAY_API_KEY_FILE, api_key.value or api_key.file",
                ))
            }
        };
        // The whole-request budget must leave room for its parts, or their own errors (408 for a
        // slow body, 504 counted as an upstream timeout) could never happen.
        if u.timeout_ms >= s.request_timeout_ms {
            return Err(invalid(
                "upstream.timeout_ms",
                format!(
                    "must be below server.request_timeout_ms ({})",
                    s.request_timeout_ms
                ),
            ));
        }
        if s.body_read_timeout_ms >= s.request_timeout_ms {
            return Err(invalid(
                "server.body_read_timeout_ms",
                format!(
                    "must be below server.request_timeout_ms ({})",
                    s.request_timeout_ms
                ),
            ));
        }
        for (key, v) in [
            (
                "server.min_body_rate_bytes_per_sec",
                s.min_body_rate_bytes_per_sec,
            ),
            ("server.max_uri_bytes", s.max_uri_bytes as u64),
            ("server.max_header_bytes", s.max_header_bytes as u64),
            ("server.max_connections", s.max_connections as u64),
            (
                "server.max_connections_per_ip",
                s.max_connections_per_ip as u64,
            ),
            (
                "server.max_streams_per_connection",
                s.max_streams_per_connection as u64,
            ),
            (
                "server.http2_max_concurrent_streams",
                u64::from(s.http2_max_concurrent_streams),
            ),
            ("server.first_bytes_timeout_ms", s.first_bytes_timeout_ms),
            (
                "server.http2_keep_alive_interval_ms",
                s.http2_keep_alive_interval_ms,
            ),
            (
                "server.http2_keep_alive_timeout_ms",
                s.http2_keep_alive_timeout_ms,
            ),
            ("server.http2_idle_timeout_ms", s.http2_idle_timeout_ms),
            ("server.send_timeout_ms", s.send_timeout_ms),
        ] {
            positive(key, v)?;
        }
        // Past these hyper answers by itself (414/431 with an empty body, uncounted).
        if s.max_uri_bytes > HYPER_MAX_URI {
            return Err(invalid(
                "server.max_uri_bytes",
                format!("must be at most {HYPER_MAX_URI}"),
            ));
        }
        if s.max_header_bytes > HYPER_MAX_HEAD {
            return Err(invalid(
                "server.max_header_bytes",
                format!("must be at most {HYPER_MAX_HEAD}"),
            ));
        }
        // A smaller budget would refuse every answer between the two.
        if s.answer_budget_bytes < u.max_response_bytes {
            return Err(invalid(
                "server.answer_budget_bytes",
                format!(
                    "must be at least upstream.max_response_bytes ({})",
                    u.max_response_bytes
                ),
            ));
        }
        Ok(Config {
            min_body_rate: s.min_body_rate_bytes_per_sec,
            answer_budget: s.answer_budget_bytes,
            body_rate_grace: Duration::from_millis(s.body_rate_grace_ms),
            max_uri_bytes: s.max_uri_bytes,
            max_header_bytes: s.max_header_bytes,
            connections: s.connections(),
            listen: addr("server.listen", &s.listen)?,
            admin_listen: addr("server.admin_listen", &s.admin_listen)?,
            drain_timeout: Duration::from_secs(s.drain_timeout_secs),
            request_timeout: Duration::from_millis(positive(
                "server.request_timeout_ms",
                s.request_timeout_ms,
            )?),
            max_concurrency: positive("server.max_concurrency", s.max_concurrency as u64)? as usize,
            header_read_timeout: Duration::from_millis(positive(
                "server.header_read_timeout_ms",
                s.header_read_timeout_ms,
            )?),
            body_read_timeout: Duration::from_millis(positive(
                "server.body_read_timeout_ms",
                s.body_read_timeout_ms,
            )?),
            worker_threads: s.worker_threads,
            upstream: Upstream {
                base: parse_base(&u.url)?,
                connect_timeout: Duration::from_millis(positive(
                    "upstream.connect_timeout_ms",
                    u.connect_timeout_ms,
                )?),
                timeout: Duration::from_millis(positive("upstream.timeout_ms", u.timeout_ms)?),
                pool_idle_timeout: Duration::from_secs(u.pool_idle_timeout_secs),
                pool_max_idle_per_host: u.pool_max_idle_per_host,
                http2: u.http2,
                max_response_bytes: positive(
                    "upstream.max_response_bytes",
                    u.max_response_bytes as u64,
                )? as usize,
            },
            api_key,
            client_key: self.api_key.client_key,
            secure: self.network.secure,
            max_body_bytes: positive("limits.max_body_bytes", self.limits.max_body_bytes as u64)?
                as usize,
            log: self.log.clone(),
            cache: self
                .cache
                .resolve_with(self.rate_limit.redis.url.as_ref())?,
            tls: self.tls.resolve(Duration::from_millis(positive(
                "tls.handshake_timeout_ms",
                self.tls.handshake_timeout_ms,
            )?))?,
            rate_limit: self.rate_limit.resolve()?,
            cors: self.cors.resolve()?,
            routes: crate::routes::RouteTable::compile(
                &self.routes.0,
                Duration::from_millis(positive("upstream.idle_timeout_ms", u.idle_timeout_ms)?),
            )?,
            hash: self.hash(),
        })
    }

    /// The start (12 hex digits) of the SHA-256 of [`FileConfig::to_masked_toml`]: what
    /// `amity-gateway check-config | sha256sum` prints, so an operator can tell which file a
    /// replica runs. Secrets are masked before hashing; a changed key alone keeps the hash.
    pub fn hash(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.to_masked_toml().as_bytes());
        digest[..6].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The effective config as TOML, secrets masked (for `check-config`).
    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

impl TlsFile {
    /// Both files or neither; the files themselves are read when the listener is bound.
    fn resolve(&self, handshake_timeout: Duration) -> Result<Option<Tls>, ConfigError> {
        match (&self.cert_file, &self.key_file) {
            (None, None) => Ok(None),
            (Some(cert_file), Some(key_file)) => Ok(Some(Tls {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
                handshake_timeout,
            })),
            (Some(_), None) => Err(invalid(
                "tls.key_file",
                "tls.cert_file is set but no key file (GATEWAY_TLS_KEY_FILE)",
            )),
            (None, Some(_)) => Err(invalid(
                "tls.cert_file",
                "tls.key_file is set but no certificate file (GATEWAY_TLS_CERT_FILE)",
            )),
        }
    }
}

/// Serde's messages quote a string of the wrong type (`invalid type: string "…"`); that string
/// may be a secret written in the wrong place, so it is left out.
fn mask_quoted(message: &str) -> String {
    match message.split_once("string \"") {
        Some((head, rest)) => match rest.split_once('"') {
            Some((_, tail)) => format!("{head}string \"****\"{tail}"),
            None => format!("{head}string \"****\""),
        },
        None => message.to_owned(),
    }
}

fn parse_base(url: &str) -> Result<Uri, ConfigError> {
    let uri: Uri = url
        .trim_end_matches('/')
        .parse()
        .map_err(|e| invalid("upstream.url", format!("{url:?}: {e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(invalid(
                "upstream.url",
                format!("{url:?}: scheme must be http or https"),
            ))
        }
    }
    if uri.authority().is_none() {
        return Err(invalid("upstream.url", format!("{url:?}: missing host")));
    }
    if uri.path() != "/" && !uri.path().is_empty() {
        return Err(invalid(
            "upstream.url",
            format!("{url:?}: must not carry a path"),
        ));
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_key() -> Env {
        Env {
            api_key: Some("k".into()),
            ..Env::default()
        }
    }

    #[test]
    fn misspelt_key_is_rejected_by_name() {
        let err = FileConfig::from_toml(
            "[server]\nlisten_addr = \"1.2.3.4:1\"\n",
            Path::new("x.toml"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }

    #[test]
    fn parse_errors_give_the_line_but_not_its_text() {
        let text = "[server]\nrequest_timeout_ms = 5\n[api_key]\nvalue = 7\nfile = \"/k\"\n[rate_limit]\nrequests = \"sk-secret-1\"\n";
        let err = FileConfig::from_toml(text, Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 4"), "{err}");
        let err = FileConfig::from_toml(
            &text.replace("value = 7", "value = \"v\""),
            Path::new("x.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 7"), "{err}");
        assert!(!err.contains("sk-secret-1"), "{err}");
    }

    #[test]
    fn the_hash_follows_the_effective_file_but_not_the_secrets() {
        let a = FileConfig::default().resolve(&env_key()).unwrap();
        let b = FileConfig::default()
            .resolve(&Env {
                api_key: Some("other".into()),
                ..Env::default()
            })
            .unwrap();
        assert_eq!(a.hash.len(), 12);
        assert_eq!(a.hash, b.hash, "the key is masked before hashing");
        let mut f = FileConfig::default();
        f.rate_limit.requests = 3;
        assert_ne!(f.resolve(&env_key()).unwrap().hash, a.hash);
    }

    #[test]
    fn defaults_resolve_with_a_key() {
        let c = FileConfig::default().resolve(&env_key()).unwrap();
        assert_eq!(c.listen.port(), 8080);
        assert_eq!(c.max_body_bytes, 16384);
        assert_eq!(c.upstream.base.host(), Some("apix.us.amity.co"));
    }

    #[test]
    fn missing_key_is_an_error_naming_the_env_vars() {
        let err = FileConfig::default()
            .resolve(&Env::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("AMITY_API_KEY"), "{err}");
    }

    #[test]
    fn env_overrides_win() {
        let env = Env {
            upstream_url: Some("http://127.0.0.1:1".into()),
            listen: Some("127.0.0.1:5".into()),
            ..env_key()
        };
        let c = FileConfig::default().resolve(&env).unwrap();
        assert_eq!(c.upstream.base.port_u16(), Some(1));
        assert_eq!(c.listen.port(), 5);
    }

    #[test]
    fn rate_limit_backend_from_env() {
        let mut f = FileConfig::default();
        let env = Env {
            rate_limit_backend: Some("redis".into()),
            redis_url: Some("redis://127.0.0.1:1".into()),
            ..env_key()
        };
        f.apply_env(&env).unwrap();
        assert_eq!(f.rate_limit.backend, crate::ratelimit::BackendKind::Redis);
        let env = Env {
            rate_limit_backend: Some("memcached".into()),
            ..env_key()
        };
        let err = FileConfig::default().resolve(&env).unwrap_err().to_string();
        assert!(err.contains("GATEWAY_RATE_LIMIT_BACKEND"), "{err}");
    }

    #[test]
    fn cache_sharing_from_env_uses_the_limiters_redis() {
        let env = Env {
            cache_shared: Some("true".into()),
            redis_url: Some("redis+sentinel://:pw@s1,s2,s3/mymaster".into()),
            ..env_key()
        };
        let c = FileConfig::default().resolve(&env).unwrap();
        let shared = c.cache.shared.expect("sharing on");
        assert!(matches!(
            shared.target,
            crate::redis_link::RedisTarget::Sentinel { .. }
        ));
        let env = Env {
            cache_shared: Some("yes".into()),
            ..env_key()
        };
        let err = FileConfig::default().resolve(&env).unwrap_err().to_string();
        assert!(err.contains("GATEWAY_CACHE_SHARED"), "{err}");
        let env = Env {
            cache_shared: Some("true".into()),
            ..env_key()
        };
        let err = FileConfig::default().resolve(&env).unwrap_err().to_string();
        assert!(err.contains("cache.shared.url"), "{err}");
    }

    #[test]
    fn parts_of_a_request_must_fit_in_its_budget() {
        let mut f = FileConfig::default();
        f.upstream.timeout_ms = f.server.request_timeout_ms;
        let err = f.resolve(&env_key()).unwrap_err().to_string();
        assert!(err.contains("upstream.timeout_ms"), "{err}");
        let mut f = FileConfig::default();
        f.server.body_read_timeout_ms = 20_000;
        let err = f.resolve(&env_key()).unwrap_err().to_string();
        assert!(err.contains("server.body_read_timeout_ms"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut f = FileConfig::default();
        f.upstream.url = "ftp://x".into();
        assert!(f
            .resolve(&env_key())
            .unwrap_err()
            .to_string()
            .contains("upstream.url"));
        let mut f = FileConfig::default();
        f.server.listen = "nope".into();
        assert!(f
            .resolve(&env_key())
            .unwrap_err()
            .to_string()
            .contains("server.listen"));
    }

    #[test]
    fn tls_needs_both_files_and_env_can_name_them() {
        let c = FileConfig::default().resolve(&env_key()).unwrap();
        assert!(c.tls.is_none(), "plain HTTP unless configured");
        let mut f = FileConfig::default();
        f.tls.cert_file = Some("/c.pem".into());
        let err = f.clone().resolve(&env_key()).unwrap_err().to_string();
        assert!(err.contains("tls.key_file"), "{err}");
        let env = Env {
            tls_key_file: Some("/k.pem".into()),
            ..env_key()
        };
        let tls = f.resolve(&env).unwrap().tls.unwrap();
        assert_eq!(tls.cert_file, Path::new("/c.pem"));
        assert_eq!(tls.key_file, Path::new("/k.pem"));
        assert_eq!(tls.handshake_timeout, Duration::from_secs(10));
        let env = Env {
            tls_cert_file: Some("/c.pem".into()),
            ..env_key()
        };
        let err = FileConfig::default().resolve(&env).unwrap_err().to_string();
        assert!(err.contains("tls.cert_file"), "{err}");
    }

    #[test]
    fn shipped_file_is_the_default_table_and_cors_is_off() {
        let text = include_str!("../config/gateway.toml");
        let f = FileConfig::from_toml(text, Path::new("gateway.toml")).unwrap();
        assert_eq!(f.routes, crate::routes::table::RoutesFile::default());
        assert_eq!(f.routes.0, crate::routes::table::default_routes());
        let c = f.clone().resolve(&env_key()).unwrap();
        assert!(c.cors.is_none());
        assert_eq!(c.routes.entries().len(), 12);
        // The masked rendering reads back as the same table.
        let again =
            FileConfig::from_toml(&FileConfig::default().to_masked_toml(), Path::new("x")).unwrap();
        assert_eq!(again.routes, f.routes);
    }

    #[test]
    fn a_bad_route_is_named_by_the_loader() {
        let text = "[[routes]]\nname = \"ok\"\nprefix = \"/api/\"\npolicy = \"pass\"\n\n[[routes]]\nname = \"broken\"\npath = \"/x\"\npolicy = \"session\"\n";
        let err = FileConfig::from_toml(text, Path::new("x.toml"))
            .unwrap()
            .resolve(&env_key())
            .unwrap_err()
            .to_string();
        assert!(err.contains("broken") && err.contains("schema"), "{err}");
        let err = FileConfig::from_toml(
            "[[routes]]\nname = \"x\"\nprefix = \"/a/\"\npolicy = \"open\"\n",
            Path::new("x.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("open"), "{err}");
    }

    #[test]
    fn the_shipped_config_file_states_the_server_defaults() {
        let f = FileConfig::from_toml(
            include_str!("../config/gateway.toml"),
            Path::new("gateway.toml"),
        )
        .unwrap();
        assert_eq!(
            toml::to_string(&f.server).unwrap(),
            toml::to_string(&ServerFile::default()).unwrap()
        );
    }

    #[test]
    fn connection_limits_must_be_positive_and_inside_hypers() {
        let mut f = FileConfig::default();
        f.server.max_streams_per_connection = 0;
        let err = f.resolve(&env_key()).unwrap_err().to_string();
        assert!(err.contains("server.max_streams_per_connection"), "{err}");
        let mut f = FileConfig::default();
        f.server.max_uri_bytes = 70_000;
        let err = f.resolve(&env_key()).unwrap_err().to_string();
        assert!(err.contains("server.max_uri_bytes"), "{err}");
        let mut f = FileConfig::default();
        f.server.max_header_bytes = 1 << 20;
        let err = f.resolve(&env_key()).unwrap_err().to_string();
        assert!(err.contains("server.max_header_bytes"), "{err}");
        let c = FileConfig::default().resolve(&env_key()).unwrap();
        assert_eq!(c.connections.first_bytes_timeout, Duration::from_secs(5));
        assert_eq!(c.connections.max_streams_per_connection, 128);
    }

    #[test]
    fn debug_and_masked_never_show_the_key() {
        let mut f = FileConfig::default();
        f.api_key.value = Some(Secret("very-secret".into()));
        assert!(!format!("{f:?}").contains("very-secret"));
        assert!(!f.to_masked_toml().contains("very-secret"));
        let c = f.resolve(&Env::default()).unwrap();
        assert!(!format!("{c:?}").contains("very-secret"));
    }

    #[test]
    fn env_redis_url_wins_and_the_url_is_never_shown() {
        let mut f = FileConfig::default();
        f.rate_limit.backend = crate::ratelimit::BackendKind::Redis;
        f.rate_limit.redis.url = Some(Secret("redis://:file-pass@10.0.0.1:6379".into()));
        f.apply_env(&Env {
            api_key: Some("k".into()),
            redis_url: Some("redis://:env-pass@127.0.0.1:6380/2".into()),
            ..Env::default()
        })
        .unwrap();
        assert!(!f.to_masked_toml().contains("-pass@"));
        let c = f.validate().unwrap().rate_limit.unwrap();
        let r = c.redis.as_ref().unwrap();
        assert!(
            matches!(&r.target, crate::redis_link::RedisTarget::Single(u) if u == "redis://:env-pass@127.0.0.1:6380/2")
        );
        assert_eq!(r.timeout, Duration::from_millis(5));
        let shown = format!("{c:?}");
        assert!(!shown.contains("pass"), "{shown}");
    }
}
