//! The user/file lookup cache: answers to `GET /api/v3/users/{id}`, `/api/v3/users/list` and
//! `/api/v3/files/{id}`, served only to bearer tokens the gateway knows are valid, and dropped
//! when the upstream reports a newer `lastCachePurge`.
//!
//! * [`store`]: the answers (moka, bounded by entries and bytes, TTL cap).
//! * [`key`]: what identifies an answer.
//! * [`tokens`]: which tokens may be served, and from which partition.
//! * [`watermark`]: the purge watermark; [`marks`]: per-user freshness.
//! * [`view`]: what the cache reads from upstream answers.
//!
//! An answer counts as gone when it is older than the TTL, fetched before the purge watermark,
//! or fetched before the latest session of any user it contains. These checks run on every read,
//! so an answer whose fetch raced a purge or a session is never served; eager invalidation only
//! frees the memory sooner. "Fetched" is when its request was sent: the upstream cannot have
//! answered with data older than that.
//!
//! Session responses are not turned into lookup answers: an answer served from the cache is
//! always bytes the upstream sent for that very lookup, never one the gateway composed (the
//! upstream's file answer even differs in shape between versions).

pub mod encoding;
pub mod key;
pub mod marks;
mod scan;
pub mod settings;
pub mod shared;
pub mod stats;
pub mod store;
pub mod tokens;
pub mod view;
pub mod watermark;

#[cfg(test)]
mod tests;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use bytes::Bytes;
use futures_util::FutureExt;
use http::header::{HeaderName, HeaderValue, AGE, CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};

use crate::error::Body;
use crate::layers::trace::Outcome;
use crate::routes::Route;
use crate::wire::bearer;
use key::{Key, Kind, Lookup};
use marks::{UserHash, UserMarks};
use settings::CacheConfig;
use shared::{Fact, SharedTruth};
use stats::{CacheResult, CacheStats, Counters};
use store::{Entry, Store};
use tokens::{DeviceHash, Partition, TokenHash, TokenRegistry};
use view::{Loose, SessionAnswer, UsersAnswer};
use watermark::{micros, now_us, parse_date, Advance, Watermark};

pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// The cache's shared state, built once per gateway.
pub struct LookupCache {
    cfg: CacheConfig,
    store: Store,
    tokens: TokenRegistry,
    watermark: Watermark,
    marks: UserMarks,
    devices: RandomState,
    counters: Counters,
    ttl_us: i64,
    proven_ttl_us: i64,
    /// Facts shared with the other replicas (`[cache.shared]`).
    shared: Option<SharedTruth>,
}

/// What to do with a request on a route the cache watches.
pub enum Decision {
    /// Answer from the cache.
    Hit(Response<Body>),
    /// Forward, then hand the answer to [`LookupCache::finish`].
    Forward(Pending),
}

/// What the cache must do with the upstream's answer to a forwarded request.
pub struct Pending {
    route: Route,
    token: Option<TokenHash>,
    fill: Option<Fill>,
    result: Option<CacheResult>,
}

struct Fill {
    key: Key,
    lookup: Lookup,
    /// The token was not known valid: a 2xx answer proves it.
    prove: bool,
    fetched_us: i64,
}

/// What the cache must learn from the answer to a session request.
pub struct SessionPending {
    partition: Partition,
    user_id: Box<str>,
    device: DeviceHash,
}

/// The bytes of a collected body (a `Full` yields its one frame at once).
fn body_bytes(body: &Body) -> Option<Bytes> {
    let collected = body.clone().collect().now_or_never()?;
    collected.ok().map(http_body_util::Collected::to_bytes)
}

/// Puts the cache result into the response's [`Outcome`] (for the access log and metrics),
/// keeping whatever other layers put there.
fn note_outcome(res: &mut Response<Body>, result: CacheResult) {
    Outcome::of(res).cache = Some(result.as_header());
}

impl LookupCache {
    pub fn new(cfg: &CacheConfig) -> Self {
        Self {
            store: Store::new(cfg),
            tokens: TokenRegistry::new(cfg.max_tokens, cfg.proven_token_ttl),
            watermark: Watermark::new(cfg.purge_margin),
            marks: UserMarks::new(cfg.user_mark_slots),
            devices: RandomState::new(),
            counters: Counters::default(),
            ttl_us: micros(cfg.ttl),
            proven_ttl_us: micros(cfg.proven_token_ttl),
            shared: cfg.shared.as_ref().map(|s| SharedTruth::new(s, cfg)),
            cfg: cfg.clone(),
        }
    }

    /// [`LookupCache::new`], sharing with the other replicas when configured (the sharing
    /// runs on the current Tokio runtime).
    pub fn start(cfg: &CacheConfig) -> std::sync::Arc<Self> {
        let cache = std::sync::Arc::new(Self::new(cfg));
        if let Some(shared) = &cache.shared {
            shared.start(std::sync::Arc::downgrade(&cache));
        }
        cache
    }

    /// Tells the other replicas, if sharing.
    fn publish(&self, fact: Fact) {
        if let Some(shared) = &self.shared {
            shared.publish(fact);
        }
    }

    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    /// Decides a request on `route`: a hit, or what to watch for in the forwarded answer.
    pub fn decide(&self, route: Route, uri: &Uri, headers: &HeaderMap) -> Decision {
        let token = if self.cfg.enabled {
            bearer(headers).map(TokenHash::of)
        } else {
            None
        };
        let forward = |token, fill, result| {
            Decision::Forward(Pending {
                route,
                token,
                fill,
                result,
            })
        };
        let Some(kind) = Kind::of(route) else {
            return forward(token, None, None);
        };
        let lookup = Lookup::of(route, uri).filter(|_| self.cfg.enabled);
        let (Some(token), Some(lookup)) = (token, lookup) else {
            self.counters.request(kind, CacheResult::Bypass);
            return forward(token, None, Some(CacheResult::Bypass));
        };
        let now = now_us();
        let trusted = self.tokens.valid(&token, now).or_else(|| {
            let shared = self.shared.as_ref()?;
            shared.valid(&token, now)
        });
        let (key, prove) = match trusted {
            Some(partition) => {
                let key = lookup.key(partition);
                if let Some(entry) = self.store.get(&key) {
                    if !self.fresh(&entry, now) {
                        self.store.invalidate(&key);
                    } else if entry
                        .content_encoding
                        .as_ref()
                        .is_none_or(|enc| encoding::accepts(headers, enc))
                    {
                        self.counters.request(kind, CacheResult::Hit);
                        return Decision::Hit(self.hit(&entry, now));
                    }
                }
                (key, false)
            }
            None => (lookup.key(token.private_partition()), true),
        };
        self.counters.request(kind, CacheResult::Miss);
        let fill = Fill {
            key,
            lookup,
            prove,
            fetched_us: now,
        };
        forward(Some(token), Some(fill), Some(CacheResult::Miss))
    }

    fn fresh(&self, e: &Entry, now: i64) -> bool {
        now.saturating_sub(e.fetched_us) < self.ttl_us
            && !self.watermark.purged(e.fetched_us)
            && !self.marks.stale(&e.users, e.fetched_us)
    }

    fn hit(&self, e: &Entry, now: i64) -> Response<Body> {
        let mut res = Response::new(Full::new(e.body.clone()));
        let h = res.headers_mut();
        if let Some(ct) = &e.content_type {
            h.insert(CONTENT_TYPE, ct.clone());
        }
        if let Some(enc) = &e.content_encoding {
            h.insert(CONTENT_ENCODING, enc.clone());
        }
        h.insert(X_CACHE.clone(), CacheResult::Hit.header_value());
        let age = now.saturating_sub(e.fetched_us).max(0) / 1_000_000;
        h.insert(AGE, HeaderValue::from(age));
        note_outcome(&mut res, CacheResult::Hit);
        res
    }

    /// Learns from the upstream's answer to a forwarded request and marks it `x-cache`.
    pub fn finish(&self, pending: Pending, res: &mut Response<Body>) {
        let status = res.status();
        let now = now_us();
        if let Some(token) = &pending.token {
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                self.tokens.forget(token);
                self.publish(Fact::Forget { token: *token });
            } else if status.is_success() {
                match pending.route {
                    Route::Logout => {
                        self.tokens.forget(token);
                        self.publish(Fact::Forget { token: *token });
                    }
                    Route::VerifySession => {
                        self.tokens.proven(*token, now);
                        if let Some(v) = body_bytes(res.body()) {
                            if let Some(view) = SessionAnswer::read(&v) {
                                self.report_purge(&view.last_cache_purge);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        if let (Some(fill), Some(token)) = (pending.fill, pending.token) {
            if status.is_success() && fill.prove {
                self.tokens.proven(token, now);
            }
            if status == StatusCode::OK {
                self.fill(fill, res);
            }
        }
        if let Some(result) = pending.result {
            res.headers_mut()
                .insert(X_CACHE.clone(), result.header_value());
            note_outcome(res, result);
        }
    }

    fn fill(&self, fill: Fill, res: &Response<Body>) {
        let Some(content_encoding) = encoding::storable(res.headers()) else {
            return;
        };
        let Some(body) = body_bytes(res.body()) else {
            return;
        };
        if body.len() > self.cfg.max_entry_bytes {
            return;
        }
        let mut users: Vec<UserHash> = Vec::new();
        // Compressed bytes cannot be read; the ids asked for are the users they contain.
        if fill.lookup.kind != Kind::File {
            let mut add = |id: &str| {
                let h = self.marks.hash(id);
                if !users.contains(&h) {
                    users.push(h);
                }
            };
            fill.lookup.ids.iter().for_each(|id| add(id));
            let readable = content_encoding.is_none();
            if let Some(view) = UsersAnswer::read(&body).filter(|_| readable) {
                view.users.0.iter().for_each(|id| add(id));
            }
        }
        let entry = Entry {
            content_type: res.headers().get(CONTENT_TYPE).cloned(),
            content_encoding,
            body,
            fetched_us: fill.fetched_us,
            users: users.into_boxed_slice(),
        };
        // A purge or a session for one of its users may have happened while it was in flight.
        if self.fresh(&entry, now_us()) {
            self.store.insert(fill.key, entry);
        }
    }

    /// Moves the purge watermark for a reported `lastCachePurge`; counts dates that are not.
    fn report_purge(&self, reported: &Loose<'_>) {
        let at = match reported {
            Loose::Absent => return,
            Loose::Str(s) => parse_date(s),
            Loose::Other => None,
        };
        let Some(at) = at else {
            Counters::bump(&self.counters.unparseable_dates);
            tracing::debug!("lastCachePurge is not a date; ignored");
            return;
        };
        self.purge_at(at, true);
    }

    /// Moves the purge watermark to a `lastCachePurge` date (µs), dropping what it purges;
    /// `publish`: the date was seen here, not learnt from another replica.
    fn purge_at(&self, at: i64, publish: bool) {
        match self.watermark.report(at, now_us()) {
            Advance::Unchanged => {}
            advance => {
                if publish {
                    self.publish(Fact::Purge { at_us: at });
                }
                if advance == Advance::Moved {
                    Counters::bump(&self.counters.purges);
                    tracing::info!(
                        "upstream reported a newer lastCachePurge; cached lookups dropped"
                    );
                }
                self.store.drop_fetched_before(self.watermark.get());
            }
        }
    }

    /// Prepares to learn from a session request's answer. `api_key` is the key injected for
    /// it (its hash names the network); `user_id`/`device_id` come from the validated body.
    pub fn session(
        &self,
        api_key: &HeaderValue,
        user_id: &str,
        device_id: &str,
    ) -> Option<SessionPending> {
        if !self.cfg.enabled {
            return None;
        }
        Some(SessionPending {
            partition: Partition::of_network(api_key.as_bytes()),
            user_id: user_id.into(),
            device: match self.shared {
                Some(_) => shared::device_hash(device_id),
                None => DeviceHash(self.devices.hash_one(device_id)),
            },
        })
    }

    /// Learns from a session answer: its users' cached answers go, the token is known valid
    /// (retiring the device's older one), and `lastCachePurge` moves the watermark. The body is
    /// only read.
    pub fn finish_session(&self, pending: SessionPending, res: &Response<Body>) {
        if !res.status().is_success() {
            return;
        }
        let now = now_us();
        let body = body_bytes(res.body()).unwrap_or_default();
        let view = SessionAnswer::read(&body);
        let answer_users = view.as_ref().map_or(&[][..], |v| &v.users.0[..]);
        for id in std::iter::once(&*pending.user_id).chain(answer_users.iter().map(|c| &**c)) {
            self.marks.mark(self.marks.hash(id), now);
            self.store
                .invalidate(&Key::new(pending.partition, Kind::User, [id]));
        }
        let Some(view) = view else {
            return;
        };
        self.report_purge(&view.last_cache_purge);
        let Some(token) = view.access_token.as_str() else {
            return;
        };
        let expires = match &view.expires_at {
            Loose::Absent => None,
            Loose::Str(s) => parse_date(s),
            Loose::Other => None,
        };
        if expires.is_none() && !view.expires_at.is_absent() {
            Counters::bump(&self.counters.unparseable_dates);
        }
        // Without a usable expiry the token is fresh now, but only trusted briefly.
        let expires = expires.unwrap_or_else(|| now.saturating_add(self.proven_ttl_us));
        let token = TokenHash::of(token);
        self.tokens
            .issued(token, pending.partition, pending.device, expires, now);
        self.publish(Fact::Issued {
            token,
            partition: pending.partition,
            device: pending.device,
            expires_us: expires,
        });
    }

    /// Counters and sizes (sizes as of moka's last maintenance; see [`LookupCache::sync`]).
    pub fn stats(&self) -> CacheStats {
        let mut s = self.counters.snapshot();
        s.entries = self.store.entries();
        s.bytes = self.store.weighted_bytes();
        s.tokens = self.tokens.len();
        s.shared = self.shared.as_ref().map(SharedTruth::stats);
        s
    }

    /// Runs pending maintenance so [`LookupCache::stats`] sizes are exact.
    pub fn sync(&self) {
        self.store.sync();
        self.tokens.sync();
    }
}
