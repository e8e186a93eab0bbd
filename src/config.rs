//! Configuration: serde file structs (every field documented with its default) turned once, at
//! start-up, into a validated runtime [`Config`] of typed values. Bad input fails fast with a
//! message that names the key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use serde::{Deserialize, Serialize};

/// Errors while loading configuration; the message names the offending key or value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

/// The error for a bad value of `key`; every config section reports through it.
pub(crate) fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// `v` if it is greater than 0, else an error naming `key`.
pub(crate) fn positive(key: &'static str, v: u64) -> Result<u64, ConfigError> {
    if v == 0 {
        Err(invalid(key, "must be greater than 0"))
    } else {
        Ok(v)
    }
}

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
    /// Total time budget of one request through the gateway. Default 15 s.
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
    pub max_response_bytes: usize,
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

/// A secret read from config: `Debug` and `Serialize` never show it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("****")
    }
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

#[derive(Debug, Clone, Deserialize, Serialize)]
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
}

#[derive(Debug, Clone)]
pub struct Tls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub handshake_timeout: Duration,
}

#[derive(Debug, Clone)]
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
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
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
                crate::layers::api_key::header_value(v.trim()).map_err(|m| invalid("api_key.value", m))?;
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
        Ok(Config {
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
        })
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
    fn debug_and_masked_never_show_the_key() {
        let mut f = FileConfig::default();
        f.api_key.value = Some(Secret("very-secret".into()));
        assert!(!format!("{f:?}").contains("very-secret"));
        assert!(!f.to_masked_toml().contains("very-secret"));
        let c = f.resolve(&Env::default()).unwrap();
        assert!(!format!("{c:?}").contains("very-secret"));
    }
}
