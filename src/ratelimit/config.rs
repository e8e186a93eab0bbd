//! `[rate_limit]`: the file section (every field with its default) and the typed runtime form,
//! checked once at start-up.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::shared::{invalid, ConfigError, Secret};
use crate::redis_link::RedisTarget;

/// Largest `requests` accepted: keeps the sliding-window arithmetic (`requests × window_ms`)
/// exact in the Redis script, whose Lua numbers are doubles.
pub const MAX_REQUESTS: u32 = 1_000_000;
/// Longest window accepted, one day; for the same reason as [`MAX_REQUESTS`].
pub const MAX_WINDOW_SECS: u32 = 86_400;
/// Largest `expected_devices` accepted: 256 MiB per window with 4-bit counters (limits up to
/// 15), 8× that with 32-bit ones.
pub const MAX_EXPECTED_DEVICES: usize = 10_000_000;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitFile {
    /// Limit session registrations per deviceId at all. Default true.
    pub enabled: bool,
    /// Requests one deviceId may make per window. Default 10.
    pub requests: u32,
    /// Length of the sliding window, in whole seconds (at least 1). Default 60.
    pub window_secs: u32,
    /// `local` (default: an in-process sketch, per replica) or `redis` (one budget shared by
    /// every replica using the same Redis).
    pub backend: BackendKind,
    /// What a decision does when Redis fails or is slower than `redis.timeout_ms`: `local`
    /// (default: decide with this replica's own sketch), `allow` or `deny`.
    pub on_backend_error: OnBackendError,
    /// Distinct devices (and, with the per-IP limit, client IPs) expected to make requests in
    /// one window: sizes the local sketch. Default 100000 (4 MiB: 2 MiB per window with the
    /// default limit; wider counters for larger limits scale it up to 8×). More devices than
    /// this are still limited, with more over-counting; see `ratelimit::sketch` for the bound.
    /// 1 to 10000000.
    pub expected_devices: usize,
    pub redis: RedisFile,
    pub per_ip: PerIpFile,
}

impl Default for RateLimitFile {
    fn default() -> Self {
        Self {
            enabled: true,
            requests: 10,
            window_secs: 60,
            backend: BackendKind::Local,
            on_backend_error: OnBackendError::Local,
            expected_devices: 100_000,
            redis: RedisFile::default(),
            per_ip: PerIpFile::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisFile {
    /// Required when `backend = "redis"`. Env `GATEWAY_REDIS_URL`. Default: none. One server:
    /// `redis://[:password@]host:port[/db]`; a Cluster by its seed nodes:
    /// `redis+cluster://[:password@]host:port,host:port,…`; a Sentinel-managed primary:
    /// `redis+sentinel://[:password@]sentinel:port,sentinel:port,…/master-name[/db]` (the
    /// password is the data nodes'). See `redis_link`.
    pub url: Option<Secret>,
    /// Budget of one decision's round trip; past it `on_backend_error` decides. Default 5 ms.
    pub timeout_ms: u64,
    /// Prefix of every key the limiter writes. Default `amity-gateway:rl`.
    pub key_prefix: String,
}

impl Default for RedisFile {
    fn default() -> Self {
        Self {
            url: None,
            timeout_ms: 5,
            key_prefix: "amity-gateway:rl".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerIpFile {
    /// Requests one client IP may make per window on the session routes; 0 (default) turns the
    /// per-IP limit off.
    pub requests: u32,
    /// Window of the per-IP limit, in whole seconds. Default 60.
    pub window_secs: u32,
    /// Proxies in front of the gateway whose `x-forwarded-for` entries are trusted: 0 (default)
    /// keys on the peer address; N keys on the N-th entry from the right.
    pub trusted_hops: usize,
}

impl Default for PerIpFile {
    fn default() -> Self {
        Self {
            requests: 0,
            window_secs: 60,
            trusted_hops: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Local,
    Redis,
}

impl BackendKind {
    pub const ALL: [BackendKind; 2] = [BackendKind::Local, BackendKind::Redis];

    /// The `backend` label of the decision metric.
    pub fn label(self) -> &'static str {
        match self {
            BackendKind::Local => "local",
            BackendKind::Redis => "redis",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnBackendError {
    /// Decide with this replica's own sketch (it counts every admitted request, also while
    /// Redis is healthy, so it has history when it takes over).
    #[default]
    Local,
    Allow,
    Deny,
}

/// `requests` per `window`, both checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub requests: NonZeroU32,
    pub window: Duration,
}

impl Quota {
    fn new(
        key_requests: &'static str,
        requests: u32,
        key_window: &'static str,
        window_secs: u32,
    ) -> Result<Self, ConfigError> {
        let requests = NonZeroU32::new(requests)
            .filter(|r| r.get() <= MAX_REQUESTS)
            .ok_or_else(|| invalid(key_requests, format!("must be 1 to {MAX_REQUESTS}")))?;
        if !(1..=MAX_WINDOW_SECS).contains(&window_secs) {
            return Err(invalid(
                key_window,
                format!("must be 1 to {MAX_WINDOW_SECS} seconds"),
            ));
        }
        Ok(Self {
            requests,
            window: Duration::from_secs(u64::from(window_secs)),
        })
    }

    pub fn window_secs(&self) -> u64 {
        self.window.as_secs()
    }
}

/// What the local sketch is sized from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SketchSize {
    /// Distinct keys expected per window.
    pub expected_keys: usize,
}

/// Where the shared budget lives when `backend = "redis"`. `Debug` hides the URL (it may carry
/// a password).
#[derive(Clone, PartialEq)]
pub struct RedisConfig {
    pub target: RedisTarget,
    pub timeout: Duration,
    pub key_prefix: String,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("target", &self.target)
            .field("timeout", &self.timeout)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

/// The validated `[rate_limit]` section. Compared on reload: the limiter is kept (counters and
/// all) when its settings are unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    pub session: Quota,
    pub per_ip: Option<Quota>,
    pub trusted_hops: usize,
    pub sketch: SketchSize,
    /// `Some` when `backend = "redis"`.
    pub redis: Option<RedisConfig>,
    pub on_backend_error: OnBackendError,
}

impl RateLimitFile {
    /// `None` when rate limiting is disabled.
    pub fn resolve(&self) -> Result<Option<RateLimitConfig>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        let session = Quota::new(
            "rate_limit.requests",
            self.requests,
            "rate_limit.window_secs",
            self.window_secs,
        )?;
        let per_ip = match self.per_ip.requests {
            0 => None,
            n => Some(Quota::new(
                "rate_limit.per_ip.requests",
                n,
                "rate_limit.per_ip.window_secs",
                self.per_ip.window_secs,
            )?),
        };
        if !(1..=MAX_EXPECTED_DEVICES).contains(&self.expected_devices) {
            return Err(invalid(
                "rate_limit.expected_devices",
                format!("must be 1 to {MAX_EXPECTED_DEVICES}"),
            ));
        }
        let redis = match self.backend {
            BackendKind::Local => None,
            BackendKind::Redis => {
                let url = self
                    .redis
                    .url
                    .as_ref()
                    .map(|s| s.0.clone())
                    .filter(|u| !u.trim().is_empty())
                    .ok_or_else(|| {
                        invalid(
                            "rate_limit.redis.url",
                            "backend is redis but no URL is set: set GATEWAY_REDIS_URL or rate_limit.redis.url",
                        )
                    })?;
                // Parsed now so a typo fails start-up; connecting happens later, in the
                // background, so a Redis that is down does not.
                let target =
                    RedisTarget::parse(&url).map_err(|e| invalid("rate_limit.redis.url", e))?;
                if target.is_cluster() && per_ip.is_some() {
                    // A device's key and an IP's key hash to different slots, and one script
                    // may touch one slot only.
                    return Err(invalid(
                        "rate_limit.per_ip.requests",
                        "the per-IP limit cannot be combined with a Redis Cluster (its keys and the device's live in different slots); set it to 0",
                    ));
                }
                if self.redis.timeout_ms == 0 {
                    return Err(invalid(
                        "rate_limit.redis.timeout_ms",
                        "must be greater than 0",
                    ));
                }
                Some(RedisConfig {
                    target,
                    timeout: Duration::from_millis(self.redis.timeout_ms),
                    key_prefix: self.redis.key_prefix.clone(),
                })
            }
        };
        Ok(Some(RateLimitConfig {
            session,
            per_ip,
            trusted_hops: self.per_ip.trusted_hops,
            sketch: SketchSize {
                expected_keys: self.expected_devices,
            },
            redis,
            on_backend_error: self.on_backend_error,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_ten_per_minute_local_without_per_ip() {
        let c = RateLimitFile::default().resolve().unwrap().unwrap();
        assert_eq!(c.session.requests.get(), 10);
        assert_eq!(c.session.window, Duration::from_secs(60));
        assert!(c.redis.is_none());
        assert!(c.per_ip.is_none());
        assert_eq!(c.on_backend_error, OnBackendError::Local);
        assert_eq!(
            c.sketch,
            SketchSize {
                expected_keys: 100_000
            }
        );
    }

    #[test]
    fn the_shipped_config_file_states_the_defaults() {
        let file: toml::Table = toml::from_str(include_str!("../../config/gateway.toml")).unwrap();
        let shipped: RateLimitFile = file["rate_limit"].clone().try_into().unwrap();
        assert_eq!(
            toml::to_string(&shipped).unwrap(),
            toml::to_string(&RateLimitFile::default()).unwrap()
        );
    }

    #[test]
    fn disabled_resolves_to_none() {
        let f = RateLimitFile {
            enabled: false,
            ..RateLimitFile::default()
        };
        assert!(f.resolve().unwrap().is_none());
    }

    #[test]
    fn bad_values_name_their_key() {
        type Edit = fn(&mut RateLimitFile);
        let cases: [(Edit, &str); 5] = [
            (|f| f.requests = 0, "rate_limit.requests"),
            (|f| f.window_secs = 0, "rate_limit.window_secs"),
            (
                |f| {
                    f.per_ip.requests = 5;
                    f.per_ip.window_secs = 0
                },
                "rate_limit.per_ip.window_secs",
            ),
            (|f| f.expected_devices = 0, "rate_limit.expected_devices"),
            (|f| f.backend = BackendKind::Redis, "rate_limit.redis.url"),
        ];
        for (edit, key) in cases {
            let mut f = RateLimitFile::default();
            edit(&mut f);
            let err = f.resolve().unwrap_err().to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn a_bad_url_is_never_shown() {
        let mut f = RateLimitFile {
            backend: BackendKind::Redis,
            ..RateLimitFile::default()
        };
        f.redis.url = Some(Secret("http://:secret@x".into()));
        let err = f.resolve().unwrap_err().to_string();
        assert!(!err.contains("secret"), "{err}");
    }

    #[test]
    fn cluster_and_sentinel_urls_resolve_and_a_cluster_refuses_the_per_ip_limit() {
        let mut f = RateLimitFile {
            backend: BackendKind::Redis,
            ..RateLimitFile::default()
        };
        f.redis.url = Some(Secret("redis+sentinel://s1,s2,s3/mymaster".into()));
        let c = f.resolve().unwrap().unwrap();
        assert!(matches!(
            c.redis.unwrap().target,
            RedisTarget::Sentinel { .. }
        ));
        f.redis.url = Some(Secret("redis+cluster://:pw@n1:7000,n2:7000".into()));
        assert!(f
            .resolve()
            .unwrap()
            .unwrap()
            .redis
            .unwrap()
            .target
            .is_cluster());
        f.per_ip.requests = 100;
        let err = f.resolve().unwrap_err().to_string();
        assert!(err.contains("rate_limit.per_ip.requests"), "{err}");
        assert!(!err.contains("pw"), "{err}");
    }
}
