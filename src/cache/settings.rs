//! The `[cache]` section: file struct with documented defaults, typed once at start-up.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::shared::{invalid, positive, ConfigError, Secret};

/// Who may be served an answer another token fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Answers are shared by every gateway-issued token of the network, except answers the
    /// upstream does not mark as everyone's (a file not `accessType: "public"`, an answer with
    /// `Cache-Control: private`): those stay with the token that fetched them.
    Network,
    /// Every answer is served only to the token that fetched it.
    Token,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheFile {
    /// Serve user and file lookups from the gateway. Default true.
    pub enabled: bool,
    /// Most answers kept. Default 10000.
    pub max_entries: u64,
    /// Most bytes of answers kept (bodies, keys and per-entry overhead). Default 64 MiB.
    pub max_bytes: u64,
    /// Largest single answer stored; larger ones are served but not kept. Default 256 KiB.
    pub max_entry_bytes: u64,
    /// Age at which an answer is dropped whatever `lastCachePurge` says. Default 300 s.
    pub ttl_secs: u64,
    /// How long a token the gateway did not see issued stays trusted after a 2xx lookup
    /// answer proved it. Default 60 s.
    pub proven_token_ttl_secs: u64,
    /// Most tokens (and devices) remembered; the least used are forgotten first, and a
    /// forgotten token is simply forwarded. Default 100000.
    pub max_tokens: u64,
    /// Slots of the per-user freshness table (rounded up to a power of two). Users share a
    /// slot by hash; sharing only costs extra misses, never a stale answer. Default 65536.
    pub user_mark_slots: usize,
    /// Answers fetched less than this before a reported `lastCachePurge` count as purged too:
    /// covers the millisecond resolution of the upstream's dates and a gateway clock that runs
    /// ahead of the upstream's. Default 1 ms.
    pub purge_margin_ms: u64,
    /// `"network"`: an answer is shared by every token the gateway saw issued for the network,
    /// unless the upstream marks it as not everyone's (file answers not `accessType: "public"`,
    /// `Cache-Control: private`), which stay with the token that fetched them. `"token"`: every
    /// answer only for the token that fetched it. Default `"network"`.
    pub scope: Scope,
    /// Facts shared with the replicas using the same Redis; see `cache::shared`.
    pub shared: super::shared::SharedFile,
}

impl Default for CacheFile {
    fn default() -> Self {
        Self {
            enabled: true,
            max_entries: 10_000,
            max_bytes: 64 << 20,
            max_entry_bytes: 256 << 10,
            ttl_secs: 300,
            proven_token_ttl_secs: 60,
            max_tokens: 100_000,
            user_mark_slots: 65_536,
            purge_margin_ms: 1,
            scope: Scope::Network,
            shared: Default::default(),
        }
    }
}

/// The validated `[cache]` section. Compared on reload: the cache is kept (entries and all)
/// when its settings are unchanged.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    pub enabled: bool,
    pub max_entries: u64,
    pub max_bytes: u64,
    pub max_entry_bytes: usize,
    pub ttl: Duration,
    pub proven_token_ttl: Duration,
    pub max_tokens: u64,
    pub user_mark_slots: usize,
    pub purge_margin: Duration,
    pub scope: Scope,
    /// `Some` when sharing is on.
    pub shared: Option<super::shared::SharedConfig>,
}

impl CacheFile {
    pub fn resolve(&self) -> Result<CacheConfig, ConfigError> {
        self.resolve_with(None)
    }

    /// `redis_url`: the rate limiter's, which sharing uses when it names none of its own.
    pub fn resolve_with(&self, redis_url: Option<&Secret>) -> Result<CacheConfig, ConfigError> {
        let max_entries = positive("cache.max_entries", self.max_entries)?;
        let max_bytes = positive("cache.max_bytes", self.max_bytes)?;
        if max_bytes < max_entries {
            return Err(invalid(
                "cache.max_bytes",
                "must be at least cache.max_entries (one byte per entry)",
            ));
        }
        // moka weighs entries in u32; one answer can never be larger than the whole store.
        let max_entry_bytes = positive("cache.max_entry_bytes", self.max_entry_bytes)?;
        if max_entry_bytes > max_bytes || max_entry_bytes > u64::from(u32::MAX) {
            return Err(invalid(
                "cache.max_entry_bytes",
                "must be at most cache.max_bytes and below 4 GiB",
            ));
        }
        let slots = Some(self.user_mark_slots)
            .filter(|&n| n > 0 && n <= 1 << 24)
            .map(usize::next_power_of_two)
            .ok_or_else(|| invalid("cache.user_mark_slots", "must be 1 to 16777216"))?;
        Ok(CacheConfig {
            enabled: self.enabled,
            max_entries,
            max_bytes,
            max_entry_bytes: usize::try_from(max_entry_bytes).unwrap_or(usize::MAX),
            ttl: Duration::from_secs(positive("cache.ttl_secs", self.ttl_secs)?),
            proven_token_ttl: Duration::from_secs(positive(
                "cache.proven_token_ttl_secs",
                self.proven_token_ttl_secs,
            )?),
            max_tokens: positive("cache.max_tokens", self.max_tokens)?,
            user_mark_slots: slots,
            purge_margin: Duration::from_millis(self.purge_margin_ms),
            scope: self.scope,
            shared: self.shared.resolve(redis_url)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_resolve() {
        let c = CacheFile::default().resolve().unwrap();
        assert!(c.enabled);
        assert_eq!(c.ttl, Duration::from_secs(300));
        assert_eq!(c.user_mark_slots, 65_536);
    }

    #[test]
    fn bad_values_name_their_key() {
        let bad = |edit: fn(&mut CacheFile), key: &str| {
            let mut f = CacheFile::default();
            edit(&mut f);
            let err = f.resolve().unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
        };
        bad(|f| f.max_entries = 0, "cache.max_entries");
        bad(|f| f.max_bytes = 10, "cache.max_bytes");
        bad(|f| f.max_entry_bytes = 1 << 40, "cache.max_entry_bytes");
        bad(|f| f.ttl_secs = 0, "cache.ttl_secs");
        bad(|f| f.user_mark_slots = 0, "cache.user_mark_slots");
    }

    #[test]
    fn the_shipped_config_documents_the_defaults() {
        let file: toml::Table = toml::from_str(include_str!("../../config/gateway.toml")).unwrap();
        let shipped: CacheFile = file["cache"].clone().try_into().unwrap();
        assert_eq!(
            toml::to_string(&shipped).unwrap(),
            toml::to_string(&CacheFile::default()).unwrap()
        );
    }

    #[test]
    fn slots_round_up_to_a_power_of_two() {
        let f = CacheFile {
            user_mark_slots: 1000,
            ..CacheFile::default()
        };
        assert_eq!(f.resolve().unwrap().user_mark_slots, 1024);
    }
}
