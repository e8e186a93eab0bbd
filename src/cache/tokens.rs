//! Which bearer tokens may be served from the cache, kept as SHA-256 hashes (never in clear).
//!
//! A token is known valid when
//!
//! * a session response issued it through this gateway: trusted until its `expiresAt`, and in
//!   the partition of the network whose key the gateway injected for that session; or
//! * a 2xx upstream answer to a lookup proved it: trusted for a short configured time, in a
//!   partition of its own. The gateway cannot tell which network such a token belongs to (a
//!   token of another Amity network is a valid bearer there too), so its answers are neither
//!   served to nor taken from anyone else.
//!
//! A newer session for the same deviceId retires the older token: each device maps to its
//! current token, and a session-issued token is valid only while its device still maps to it.
//! Logout through the gateway and an upstream 401/403 forget a token. Both maps are bounded;
//! whatever they forget or refuse to admit only makes a token unknown, and an unknown token is
//! always forwarded, so memory pressure never lets a retired token through.

use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;
use sha2::{Digest, Sha256};

use super::watermark::{micros, now_us};

/// The SHA-256 of a bearer token. Its `Debug` shows nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    /// The hash itself, for sharing it with other replicas (see `cache::shared`).
    pub fn to_bytes(self) -> [u8; 32] {
        self.0
    }

    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The partition of answers fetched with this token when its network is unknown.
    pub fn private_partition(&self) -> Partition {
        let mut p = [0u8; 16];
        p.copy_from_slice(&self.0[..16]);
        Partition(p)
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash(..)")
    }
}

/// Whose answers an entry may be served to: one network (identified by a hash of the api key
/// the gateway injected), or one token whose network the gateway does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Partition([u8; 16]);

impl Partition {
    /// The partition of the network behind `api_key` (a hash; the key is not kept).
    pub fn of_network(api_key: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(b"amity-gateway network\0");
        h.update(api_key);
        let d: [u8; 32] = h.finalize().into();
        let mut p = [0u8; 16];
        p.copy_from_slice(&d[..16]);
        Partition(p)
    }

    pub fn to_bytes(self) -> [u8; 16] {
        self.0
    }

    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }
}

/// A hashed deviceId (hashed with the cache's per-process key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceHash(pub u64);

#[derive(Debug, Clone, Copy)]
struct TokenRecord {
    partition: Partition,
    /// The device a session issued the token for; `None` for proven tokens.
    device: Option<DeviceHash>,
    expires_us: i64,
}

#[derive(Debug, Clone, Copy)]
struct DeviceRecord {
    token: TokenHash,
    expires_us: i64,
}

trait ExpiresAt {
    fn expires_us(&self) -> i64;
}

impl ExpiresAt for TokenRecord {
    fn expires_us(&self) -> i64 {
        self.expires_us
    }
}

impl ExpiresAt for DeviceRecord {
    fn expires_us(&self) -> i64 {
        self.expires_us
    }
}

/// Expires each record at its own wall-clock date.
struct AtDate;

fn until(expires_us: i64) -> Duration {
    let left = expires_us.saturating_sub(now_us());
    Duration::from_micros(u64::try_from(left).unwrap_or(0))
}

impl<K, V: ExpiresAt> Expiry<K, V> for AtDate {
    fn expire_after_create(&self, _: &K, v: &V, _: Instant) -> Option<Duration> {
        Some(until(v.expires_us()))
    }

    fn expire_after_update(
        &self,
        _: &K,
        v: &V,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(until(v.expires_us()))
    }
}

pub struct TokenRegistry {
    tokens: Cache<TokenHash, TokenRecord, ahash::RandomState>,
    devices: Cache<DeviceHash, DeviceRecord, ahash::RandomState>,
    proven_ttl_us: i64,
}

impl TokenRegistry {
    pub fn new(max_tokens: u64, proven_ttl: Duration) -> Self {
        Self {
            tokens: Cache::builder()
                .max_capacity(max_tokens)
                .expire_after(AtDate)
                .build_with_hasher(ahash::RandomState::new()),
            devices: Cache::builder()
                .max_capacity(max_tokens)
                .expire_after(AtDate)
                .build_with_hasher(ahash::RandomState::new()),
            proven_ttl_us: micros(proven_ttl),
        }
    }

    /// A session response issued `token` for `device` in `partition`, valid until
    /// `expires_us`; the device's previous token is retired.
    pub fn issued(
        &self,
        token: TokenHash,
        partition: Partition,
        device: DeviceHash,
        expires_us: i64,
        now_us: i64,
    ) {
        if expires_us <= now_us {
            return;
        }
        if let Some(old) = self.devices.get(&device) {
            if old.token != token {
                self.tokens.invalidate(&old.token);
            }
        }
        self.devices
            .insert(device, DeviceRecord { token, expires_us });
        self.tokens.insert(
            token,
            TokenRecord {
                partition,
                device: Some(device),
                expires_us,
            },
        );
    }

    /// A 2xx upstream answer proved `token`; trusted for the proven TTL in its own partition,
    /// unless it is already known (a session-issued record is never downgraded).
    pub fn proven(&self, token: TokenHash, now_us: i64) {
        let _ = self.tokens.entry(token).or_insert_with(|| TokenRecord {
            partition: token.private_partition(),
            device: None,
            expires_us: now_us.saturating_add(self.proven_ttl_us),
        });
    }

    /// Logout or an upstream 401/403: the token is no longer trusted.
    pub fn forget(&self, token: &TokenHash) {
        self.tokens.invalidate(token);
    }

    /// The partition `token` may be served from, if it is known valid at `now_us`.
    pub fn valid(&self, token: &TokenHash, now_us: i64) -> Option<Partition> {
        let rec = self.tokens.get(token)?;
        if rec.expires_us <= now_us {
            return None;
        }
        if let Some(device) = rec.device {
            // Retired by a newer session of its device, or the device mapping was forgotten.
            if self.devices.get(&device).is_none_or(|d| d.token != *token) {
                return None;
            }
        }
        Some(rec.partition)
    }

    /// The token a session last issued for `device`, if remembered.
    pub fn token_of(&self, device: &DeviceHash) -> Option<TokenHash> {
        self.devices.get(device).map(|d| d.token)
    }

    /// Forgets every token and device.
    pub fn clear(&self) {
        self.tokens.invalidate_all();
        self.devices.invalidate_all();
    }

    /// Tokens remembered (approximate until pending maintenance has run).
    pub fn len(&self) -> u64 {
        self.tokens.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs moka's pending maintenance so counts are exact (tests, stats).
    pub fn sync(&self) {
        self.tokens.run_pending_tasks();
        self.devices.run_pending_tasks();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_US: i64 = 86_400_000_000;

    fn reg() -> TokenRegistry {
        TokenRegistry::new(1000, Duration::from_secs(60))
    }

    fn net() -> Partition {
        Partition::of_network(b"key")
    }

    #[test]
    fn issued_tokens_are_valid_in_their_network_until_expiry() {
        let r = reg();
        let now = now_us();
        let t = TokenHash::of("t1");
        r.issued(t, net(), DeviceHash(1), now + DAY_US, now);
        assert_eq!(r.valid(&t, now), Some(net()));
        assert_eq!(r.valid(&t, now + DAY_US), None, "expired");
        assert_eq!(r.valid(&TokenHash::of("forged"), now), None);
    }

    #[test]
    fn already_expired_tokens_are_not_learnt() {
        let r = reg();
        let now = now_us();
        let t = TokenHash::of("old");
        r.issued(t, net(), DeviceHash(1), now - 1, now);
        assert_eq!(r.valid(&t, now), None);
    }

    #[test]
    fn a_newer_session_of_the_device_retires_the_older_token() {
        let r = reg();
        let now = now_us();
        let (old, new, other) = (TokenHash::of("a"), TokenHash::of("b"), TokenHash::of("c"));
        r.issued(old, net(), DeviceHash(1), now + DAY_US, now);
        r.issued(other, net(), DeviceHash(2), now + DAY_US, now);
        r.issued(new, net(), DeviceHash(1), now + DAY_US, now);
        assert_eq!(r.valid(&old, now), None);
        assert_eq!(r.valid(&new, now), Some(net()));
        assert_eq!(
            r.valid(&other, now),
            Some(net()),
            "other devices keep theirs"
        );
        // Proving the retired token again must not bring back its network partition.
        r.proven(old, now);
        assert_ne!(r.valid(&old, now), Some(net()));
    }

    #[test]
    fn a_forgotten_device_mapping_makes_its_token_unknown() {
        let r = reg();
        let now = now_us();
        let t = TokenHash::of("a");
        r.issued(t, net(), DeviceHash(1), now + DAY_US, now);
        r.devices.invalidate(&DeviceHash(1));
        assert_eq!(r.valid(&t, now), None);
    }

    #[test]
    fn proven_tokens_get_a_private_partition_for_a_short_time() {
        let r = reg();
        let now = now_us();
        let t = TokenHash::of("p");
        r.proven(t, now);
        assert_eq!(r.valid(&t, now), Some(t.private_partition()));
        assert_ne!(t.private_partition(), net());
        assert_eq!(r.valid(&t, now + 60_000_000), None);
    }

    #[test]
    fn proving_never_downgrades_an_issued_token() {
        let r = reg();
        let now = now_us();
        let t = TokenHash::of("s");
        r.issued(t, net(), DeviceHash(1), now + DAY_US, now);
        r.proven(t, now);
        assert_eq!(r.valid(&t, now + 120_000_000), Some(net()));
    }

    #[test]
    fn forgotten_tokens_are_unknown() {
        let r = reg();
        let now = now_us();
        let t = TokenHash::of("s");
        r.issued(t, net(), DeviceHash(1), now + DAY_US, now);
        r.forget(&t);
        assert_eq!(r.valid(&t, now), None);
    }

    #[test]
    fn hashes_and_partitions_hide_their_input() {
        let t = TokenHash::of("secret-token");
        assert!(!format!("{t:?}").contains("secret"));
        assert_ne!(Partition::of_network(b"a"), Partition::of_network(b"b"));
    }
}
