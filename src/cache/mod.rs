//! The user/file lookup cache: answers to `GET /api/v3/users/{id}`, `/api/v3/users/list` and
//! `/api/v3/files/{id}`, served only to bearer tokens the gateway knows are valid, and dropped
//! when the upstream reports a newer `lastCachePurge`.
//!
//! * [`store`]: the answers (moka, bounded by entries and bytes, TTL cap).
//! * [`key`]: what identifies an answer.
//! * [`tokens`]: which tokens may be served, and from which partition.
//! * [`watermark`]: the purge watermark; [`marks`]: per-user freshness.
//! * [`view`]: what the cache reads from upstream answers.
//! * [`shared`]: the facts above shared with other replicas through Redis (`[cache.shared]`).
//!
//! An answer counts as gone when it is older than the TTL, fetched before the purge watermark,
//! or fetched before the latest session of any user it contains. These checks run on every read,
//! so an answer whose fetch raced a purge or a session is never served; eager invalidation only
//! frees the memory sooner. "Fetched" is when its request was sent: the upstream cannot have
//! answered with data older than that.
//!
//! An answer is kept only when it is about the ids asked for (every user asked for and no
//! other, or the file asked for), and then for the partition [`settings::Scope`] and the
//! upstream's marks allow (see [`policy`]): with the `network` scope, a file answer is shared
//! only when `accessType: "public"`, and an answer the upstream marks `Cache-Control: private`
//! never; those stay with the fetching token, looked up after the shared entry misses.
//!
//! Session responses are not turned into lookup answers: an answer served from the cache is
//! always bytes the upstream sent for that very lookup, never one the gateway composed (the
//! upstream's file answer even differs in shape between versions).

pub(crate) mod bounded;
pub mod key;
pub mod marks;
pub mod policy;
pub(crate) mod scan;
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
use http::header::{HeaderName, HeaderValue, AGE, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode, Uri};

use crate::error::Body;
use crate::layers::trace::Outcome;
use crate::routes::Route;
use crate::wire::bearer;
use key::{Key, Kind, Lookup};
use marks::{UserHash, UserMarks};
use policy::Keep;
use settings::{CacheConfig, Scope};
use shared::{Fact, SharedTruth};
use stats::{CacheResult, CacheStats, Counters};
use store::{Entry, Store};
use tokens::{DeviceHash, Issued, Partition, TokenHash, TokenRegistry};
use view::{FileAnswer, Loose, SessionAnswer, UsersAnswer};
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
    /// An admin revocation of these users' tokens is in flight.
    revoke: Vec<UserHash>,
    sent_us: i64,
}

impl Pending {
    /// Whether the answer may be stored: the request must then carry only the
    /// [`policy::FILL_HEADERS`].
    pub fn fills(&self) -> bool {
        self.fill.is_some()
    }

    /// Whether the answer must be learnt from even when the client is gone: a logout or
    /// revocation (what the upstream forgot) or a token check (what it reports).
    pub fn must_finish(&self) -> bool {
        matches!(self.route, Route::Logout | Route::VerifySession) && self.token.is_some()
    }
}

struct Fill {
    /// Where a shared answer goes (the scope's partition for the token).
    key: Key,
    /// Where an answer only for this token goes; `None` when `key` already is.
    own: Option<Key>,
    lookup: Lookup,
    /// The token was not known valid: a 2xx answer proves it.
    prove: bool,
    fetched_us: i64,
}

/// What the cache must learn from the answer to a session request.
pub struct SessionPending {
    partition: Partition,
    /// `None` for a visitor session (its user is named by the answer).
    user_id: Option<Box<str>>,
    user: Option<UserHash>,
    device: DeviceHash,
    sent_us: i64,
}

/// The bytes of a complete body (policy routes' answers always are).
fn body_bytes(body: &Body) -> Option<Bytes> {
    body.bytes().cloned()
}

/// Puts the cache result into the response's [`Outcome`] (for the access log and metrics),
/// keeping whatever other layers put there.
fn note_outcome(res: &mut Response<Body>, result: CacheResult) {
    Outcome::of(res).cache = Some(result.as_header());
}

/// [`Partition::of_network`] of `api_key`, remembered on each thread for the last key seen:
/// the injected key is the same for nearly every request (it changes when rotated), and
/// comparing it costs less than hashing it.
fn network_of(api_key: &HeaderValue) -> Partition {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(HeaderValue, Partition)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((key, partition)) if key == api_key => *partition,
        _ => {
            let partition = Partition::of_network(api_key.as_bytes());
            *last = Some((api_key.clone(), partition));
            partition
        }
    })
}

impl LookupCache {
    pub fn new(cfg: &CacheConfig) -> Self {
        // Shared facts name users by a hash every replica computes alike.
        let marks = || match cfg.shared {
            Some(_) => UserMarks::replicated(cfg.user_mark_slots),
            None => UserMarks::new(cfg.user_mark_slots),
        };
        let tokens = TokenRegistry::with_marks(cfg.max_tokens, cfg.proven_token_ttl, marks());
        // Nothing learnt from the other replicas is trusted before catching up with them.
        tokens.trust_learnt(cfg.shared.is_none());
        Self {
            store: Store::new(cfg),
            tokens,
            watermark: Watermark::new(cfg.purge_margin),
            marks: marks(),
            devices: RandomState::new(),
            counters: Counters::default(),
            ttl_us: micros(cfg.ttl),
            proven_ttl_us: micros(cfg.proven_token_ttl),
            shared: cfg.shared.as_ref().map(SharedTruth::new),
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

    /// Forgets a token for good, here and on the other replicas.
    fn forget(&self, token: &TokenHash) {
        self.tokens.forget(token);
        self.publish(Fact::Forget { token: *token });
    }

    /// An admin revocation of `user`'s tokens at `at_us`, here and on the other replicas.
    fn revoke(&self, user: UserHash, at_us: i64) {
        self.tokens.revoke_user(user, at_us);
        self.publish(Fact::Revoke { user, at_us });
    }

    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    /// Decides a request on `route`: a hit, or what to watch for in the forwarded answer.
    /// `has_body` says the request carries a body (never with a cache-filling lookup: the key
    /// does not hold it).
    pub fn decide(&self, route: Route, uri: &Uri, headers: &HeaderMap, has_body: bool) -> Decision {
        let token = if self.cfg.enabled {
            bearer(headers).map(TokenHash::of)
        } else {
            None
        };
        let now = now_us();
        let forward = |token, fill, result, revoke| {
            Decision::Forward(Pending {
                route,
                token,
                fill,
                result,
                revoke,
                sent_us: now,
            })
        };
        if route == Route::Logout && self.cfg.enabled {
            // Forgotten as the request leaves: the upstream may act before its answer is read,
            // or the answer may never be.
            if let Some(t) = &token {
                self.forget(t);
            }
            let revoke: Vec<UserHash> = key::revoked_users(uri)
                .map(|u| self.tokens.user(&u))
                .collect();
            for &u in &revoke {
                self.revoke(u, now);
            }
            return forward(token, None, None, revoke);
        }
        let Some(kind) = Kind::of(route) else {
            return forward(token, None, None, Vec::new());
        };
        let lookup = Lookup::of(route, uri).filter(|_| self.cfg.enabled && !has_body);
        let (Some(token), Some(lookup)) = (token, lookup) else {
            self.counters.request(kind, CacheResult::Bypass);
            return forward(token, None, Some(CacheResult::Bypass), Vec::new());
        };
        let own_partition = token.private_partition();
        let (key, own, prove) = match self.tokens.valid(&token, now) {
            Some(partition) => {
                let partition = match self.cfg.scope {
                    Scope::Network => partition,
                    Scope::Token => own_partition,
                };
                let key = lookup.key(partition);
                if let Some(hit) = self.serve(&key, now) {
                    self.counters.request(kind, CacheResult::Hit);
                    return Decision::Hit(hit);
                }
                let own = (partition != own_partition).then(|| lookup.key(own_partition));
                if let Some(hit) = own.as_ref().and_then(|own| self.serve(own, now)) {
                    self.counters.request(kind, CacheResult::Hit);
                    return Decision::Hit(hit);
                }
                (key, own, false)
            }
            None => (lookup.key(own_partition), None, true),
        };
        self.counters.request(kind, CacheResult::Miss);
        let fill = Fill {
            key,
            own,
            lookup,
            prove,
            fetched_us: now,
        };
        forward(Some(token), Some(fill), Some(CacheResult::Miss), Vec::new())
    }

    /// The stored answer under `key` if it is still fresh (a stale one is dropped).
    fn serve(&self, key: &Key, now: i64) -> Option<Response<Body>> {
        let entry = self.store.get(key)?;
        if !self.fresh(&entry, now) {
            self.store.invalidate(key);
            return None;
        }
        Some(self.hit(&entry, now))
    }

    fn fresh(&self, e: &Entry, now: i64) -> bool {
        now.saturating_sub(e.fetched_us) < self.ttl_us
            && !self.watermark.purged(e.fetched_us)
            && !self.marks.stale(&e.users, e.fetched_us)
    }

    fn hit(&self, e: &Entry, now: i64) -> Response<Body> {
        let mut res = Response::new(Body::full(e.body.clone()));
        let h = res.headers_mut();
        if let Some(ct) = &e.content_type {
            h.insert(CONTENT_TYPE, ct.clone());
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
        // Sessions sent while a revocation was in flight may predate it upstream.
        for &u in &pending.revoke {
            self.revoke(u, now);
        }
        if let Some(token) = &pending.token {
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                self.forget(token);
            } else if status.is_success() && pending.route == Route::VerifySession {
                self.tokens.proven(*token, pending.sent_us, now);
                if let Some(v) = body_bytes(res.body()) {
                    if let Some(view) = SessionAnswer::read(&v) {
                        self.report_purge(&view.last_cache_purge);
                    }
                }
            }
        }
        if let (Some(fill), Some(token)) = (pending.fill, pending.token) {
            if status.is_success() && fill.prove {
                self.tokens.proven(token, fill.fetched_us, now);
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

    /// The forwarded request's answer never came (upstream error, or gone with its client):
    /// what was forgotten as it left stays forgotten; a revocation is marked answered now.
    pub fn abandon(&self, pending: Pending) {
        let now = now_us();
        for &u in &pending.revoke {
            self.revoke(u, now);
        }
    }

    fn fill(&self, fill: Fill, res: &Response<Body>) {
        let keep = policy::keep(res.headers());
        if keep == Keep::Never {
            return;
        }
        let Some(body) = body_bytes(res.body()) else {
            return;
        };
        if body.len() > self.cfg.max_entry_bytes {
            return;
        }
        let Some((users, shareable)) = self.about(&fill.lookup, &body) else {
            return;
        };
        let key = match (keep == Keep::Shared && shareable, fill.own) {
            (true, _) | (false, None) => fill.key,
            (false, Some(own)) => own,
        };
        let entry = Entry {
            content_type: res.headers().get(CONTENT_TYPE).cloned(),
            body,
            fetched_us: fill.fetched_us,
            users: users.into_boxed_slice(),
        };
        // A purge or a session for one of its users may have happened while it was in flight.
        if self.fresh(&entry, now_us()) {
            self.store.insert(key, entry);
        }
    }

    /// Whether `body` is about exactly what `lookup` asked for: the users it contains (for
    /// freshness) and whether the upstream marks it as everyone's. `None` when it is not.
    fn about(&self, lookup: &Lookup, body: &[u8]) -> Option<(Vec<UserHash>, bool)> {
        let asked = |id: &str| lookup.ids.iter().any(|a| a == id);
        if lookup.kind == Kind::File {
            let view = FileAnswer::read(body)?;
            let about = !view.file_ids.is_empty() && view.file_ids.iter().all(|id| asked(id));
            return about.then_some((Vec::new(), view.all_public));
        }
        let view = UsersAnswer::read(body)?;
        let got = &view.users.0;
        let about = got.iter().all(|id| asked(id))
            && lookup.ids.iter().all(|a| got.iter().any(|id| id == a));
        if !about {
            return None;
        }
        let mut users: Vec<UserHash> = Vec::with_capacity(lookup.ids.len());
        for id in &lookup.ids {
            let h = self.marks.hash(id);
            if !users.contains(&h) {
                users.push(h);
            }
        }
        Some((users, true))
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

    /// Prepares to learn from a session request's answer, as the request leaves: the device's
    /// current token is retired now (see [`tokens`]). `api_key` is the key injected for it
    /// (its hash names the network); `user_id`/`device_id` come from the validated body.
    pub fn session(
        &self,
        api_key: &HeaderValue,
        user_id: Option<&str>,
        device_id: &str,
    ) -> Option<SessionPending> {
        if !self.cfg.enabled {
            return None;
        }
        let device = match self.shared {
            Some(_) => shared::device_hash(device_id),
            None => DeviceHash(self.devices.hash_one(device_id)),
        };
        if let Some(retired) = self.tokens.session_sent(device) {
            self.publish(Fact::Forget { token: retired });
        }
        Some(SessionPending {
            partition: network_of(api_key),
            user_id: user_id.map(Into::into),
            user: user_id.map(|u| self.tokens.user(u)),
            device,
            sent_us: now_us(),
        })
    }

    /// Learns from a session answer: its users' cached answers go, the token is known valid
    /// (retiring the device's older one, in `issuedAt` order), and `lastCachePurge` moves the
    /// watermark. The body is only read. An answer without a readable `issuedAt` cannot be
    /// ordered against the device's other tokens: its token is not trusted.
    pub fn finish_session(&self, pending: SessionPending, res: &Response<Body>) {
        if !res.status().is_success() {
            return;
        }
        let now = now_us();
        let body = body_bytes(res.body()).unwrap_or_default();
        let view = SessionAnswer::read(&body);
        let answer_users = view.as_ref().map_or(&[][..], |v| &v.users.0[..]);
        let own = pending.user_id.as_deref();
        for id in own.into_iter().chain(answer_users.iter().map(|c| &**c)) {
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
        let (Some(issued_us), expires) = (self.date(&view.issued_at), self.date(&view.expires_at))
        else {
            return;
        };
        // Without a usable expiry the token is fresh now, but only trusted briefly.
        let expires_us = expires.unwrap_or_else(|| now.saturating_add(self.proven_ttl_us));
        let issued = Issued {
            token: TokenHash::of(token),
            partition: pending.partition,
            device: pending.device,
            // A visitor's user is the one its answer names.
            user: pending
                .user
                .or_else(|| view.users.0.first().map(|u| self.tokens.user(u)))
                .unwrap_or_else(|| self.tokens.user("")),
            issued_us,
            sent_us: pending.sent_us,
            expires_us,
        };
        self.tokens.issued(issued, now);
        self.publish(Fact::Issued(issued));
    }

    /// A date field of a session answer; one present but not a date is counted.
    fn date(&self, field: &Loose<'_>) -> Option<i64> {
        let at = field.as_str().and_then(parse_date);
        if at.is_none() && !field.is_absent() {
            Counters::bump(&self.counters.unparseable_dates);
        }
        at
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
    }
}
