//! One cache truth across replicas that share Redis (`[cache.shared]`, off by default).
//!
//! Cached answers stay per replica; what is shared are the facts that decide whether an answer
//! is fresh and whether a token may be served:
//!
//! * the purge watermark: a `lastCachePurge` date a replica saw move;
//! * tokens issued by session answers ([`Issued`]): the token's SHA-256 (never the token
//!   itself), its network partition, hashes of its deviceId and user, its `issuedAt`, when its
//!   session was sent and its `expiresAt`. Each replica orders a device's tokens by `issuedAt`
//!   whichever replica issued them (see `cache::tokens`), and marks the user's cached answers
//!   stale as a session through itself would;
//! * forgotten tokens (logouts, upstream 401/403, a device's token retired as a new session
//!   for it is sent): each replica tombstones them as its own;
//! * admin revocations of a user's tokens, at the sender's clock.
//!
//! With sharing on, deviceIds and userIds are hashed alike on every replica ([`stable_hash`])
//! so a fact names the same device and user everywhere. What stays per replica: the cached
//! answers, tokens proven by a lookup's 2xx (a replica proves its own), the per-user marks of
//! users a session answer names besides the token's own user, and the stale-marking of those
//! answers eagerly (each replica checks freshness on read anyway). Times compared across
//! replicas (a revocation against a token's session) are gateway clocks of different hosts:
//! they agree only as far as those clocks do.
//!
//! Facts go into one Redis stream (`<key_prefix>:{facts}`, capped at `max_facts` entries), in
//! order, from every replica; each replica reads it with a blocking `XREAD` (which returns as
//! soon as an entry arrives) and applies the others' facts, in milliseconds on a healthy Redis.
//! A stream rather than pub/sub because a replica that lost Redis reads on from the last entry
//! it applied when it comes back, instead of missing what was said.
//!
//! Tokens learnt from others enter the replica's own registry, flagged, so they can be
//! distrusted as a whole while out of touch. A token this replica proved by a lookup before
//! hearing it was issued elsewhere moves to the network partition the fact names.
//!
//! Trust while Redis is away: a replica keeps serving on what it knows itself (its own tokens,
//! answers and watermark) and says so (`gateway_cache_shared_synced` 0); tokens it learnt from
//! other replicas are not served from the cache until it has caught up again, since their
//! logouts may be waiting in the stream. On reconnect it reads everything it missed before it
//! trusts those tokens again. When it cannot know what it missed (Redis came back empty,
//! detected by an epoch key; or the stream was trimmed past its last entry; or a replica had
//! to drop facts it could not send, announced by a reset fact) it forgets every token and
//! drops every cached answer, so nothing missed can be served; clients are forwarded until
//! their tokens are seen again.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{RedisError, Value};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::marks::UserHash;
use super::tokens::{DeviceHash, Issued, Partition, TokenHash, TokenRegistry};
use super::watermark::now_us;
use super::LookupCache;
use crate::config::shared::{invalid, ConfigError, Secret};
use crate::redis_link::{RedisLink, RedisTarget};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SharedFile {
    /// Share purge dates, issued and forgotten tokens with the replicas using the same Redis.
    /// Default false.
    pub enabled: bool,
    /// The Redis to share through, in any form `rate_limit.redis.url` takes (one server,
    /// `redis+cluster://`, `redis+sentinel://`). Default: none, meaning the same Redis as
    /// `rate_limit.redis.url` (or `GATEWAY_REDIS_URL`).
    pub url: Option<Secret>,
    /// Prefix of the stream and the epoch key. Default `amity-gateway:cache`.
    pub key_prefix: String,
    /// Entries the stream keeps (approximately); a replica away for longer than it takes the
    /// others to publish this many facts starts afresh. Default 100000.
    pub max_facts: u64,
}

impl Default for SharedFile {
    fn default() -> Self {
        Self {
            enabled: false,
            url: None,
            key_prefix: "amity-gateway:cache".into(),
            max_facts: 100_000,
        }
    }
}

/// The validated `[cache.shared]` section. `Debug` hides the URL.
#[derive(Clone, PartialEq)]
pub struct SharedConfig {
    pub target: RedisTarget,
    /// The stream key; the braces keep it and the epoch key in one Cluster slot.
    pub stream: String,
    pub epoch_key: String,
    pub max_facts: u64,
}

impl fmt::Debug for SharedConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedConfig")
            .field("target", &self.target)
            .field("stream", &self.stream)
            .field("max_facts", &self.max_facts)
            .finish()
    }
}

impl SharedFile {
    /// `None` when sharing is off. `fallback` is the rate limiter's Redis URL.
    pub fn resolve(&self, fallback: Option<&Secret>) -> Result<Option<SharedConfig>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        let url = self
            .url
            .as_ref()
            .or(fallback)
            .filter(|u| !u.0.trim().is_empty())
            .ok_or_else(|| {
                invalid(
                    "cache.shared.url",
                    "sharing is on but no Redis is set: set cache.shared.url or rate_limit.redis.url",
                )
            })?;
        let target = RedisTarget::parse(&url.0).map_err(|e| invalid("cache.shared.url", e))?;
        if self.max_facts < 1_000 {
            return Err(invalid("cache.shared.max_facts", "must be at least 1000"));
        }
        Ok(Some(SharedConfig {
            target,
            stream: format!("{}:{{facts}}", self.key_prefix),
            epoch_key: format!("{}:{{facts}}:epoch", self.key_prefix),
            max_facts: self.max_facts,
        }))
    }
}

/// The same hash of an id on every replica (SHA-256 of `domain` and `id`, first 8 bytes), so
/// that a fact names one device or user everywhere: a newer session through one replica
/// retires the token another issued.
pub fn stable_hash(domain: &[u8], id: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(domain);
    h.update(id.as_bytes());
    let d: [u8; 32] = h.finalize().into();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_le_bytes(b)
}

/// A deviceId hashed alike on every replica. A chosen device cannot be made to collide with
/// another's without a second preimage of SHA-256.
pub fn device_hash(device_id: &str) -> DeviceHash {
    DeviceHash(stable_hash(b"amity-gateway device\0", device_id))
}

/// One shared fact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fact {
    /// A `lastCachePurge` date (µs, upstream clock) that moved a watermark.
    Purge {
        at_us: i64,
    },
    Issued(Issued),
    Forget {
        token: TokenHash,
    },
    /// An admin revoked `user`'s tokens, at `at_us` (the sender's clock).
    Revoke {
        user: UserHash,
        at_us: i64,
    },
    /// The sender lost facts it could not send: nobody can know what they were.
    Reset,
}

impl Fact {
    /// `kind, origin, payload`: fixed-size binary, one stream field.
    fn encode(&self, origin: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(97);
        let (kind, rest): (u8, Vec<u8>) = match *self {
            Fact::Purge { at_us } => (b'P', at_us.to_le_bytes().to_vec()),
            Fact::Issued(i) => {
                let mut r = i.token.to_bytes().to_vec();
                r.extend_from_slice(&i.partition.to_bytes());
                for n in [i.device.0, i.user.to_bits()] {
                    r.extend_from_slice(&n.to_le_bytes());
                }
                for t in [i.issued_us, i.sent_us, i.expires_us] {
                    r.extend_from_slice(&t.to_le_bytes());
                }
                (b'I', r)
            }
            Fact::Forget { token } => (b'F', token.to_bytes().to_vec()),
            Fact::Revoke { user, at_us } => {
                let mut r = user.to_bits().to_le_bytes().to_vec();
                r.extend_from_slice(&at_us.to_le_bytes());
                (b'U', r)
            }
            Fact::Reset => (b'R', Vec::new()),
        };
        v.push(kind);
        v.extend_from_slice(&origin.to_le_bytes());
        v.extend_from_slice(&rest);
        v
    }

    /// `None` for anything this version did not write.
    fn decode(b: &[u8]) -> Option<(u64, Fact)> {
        let (&kind, rest) = b.split_first()?;
        let (origin, rest) = rest.split_first_chunk::<8>()?;
        let origin = u64::from_le_bytes(*origin);
        let fact = match (kind, rest.len()) {
            (b'P', 8) => Fact::Purge {
                at_us: i64::from_le_bytes(*rest.first_chunk::<8>()?),
            },
            (b'I', 88) => {
                let (token, tail) = rest.split_first_chunk::<32>()?;
                let (partition, tail) = tail.split_first_chunk::<16>()?;
                let mut w = words(tail);
                Fact::Issued(Issued {
                    token: TokenHash::from_bytes(*token),
                    partition: Partition::from_bytes(*partition),
                    device: DeviceHash(u64::from_le_bytes(w.next()?)),
                    user: UserHash::from_bits(u64::from_le_bytes(w.next()?)),
                    issued_us: i64::from_le_bytes(w.next()?),
                    sent_us: i64::from_le_bytes(w.next()?),
                    expires_us: i64::from_le_bytes(w.next()?),
                })
            }
            (b'U', 16) => {
                let mut w = words(rest);
                Fact::Revoke {
                    user: UserHash::from_bits(u64::from_le_bytes(w.next()?)),
                    at_us: i64::from_le_bytes(w.next()?),
                }
            }
            (b'F', 32) => Fact::Forget {
                token: TokenHash::from_bytes(*rest.first_chunk::<32>()?),
            },
            (b'R', 0) => Fact::Reset,
            _ => return None,
        };
        Some((origin, fact))
    }
}

/// The 8-byte fields of `b`, in order.
fn words(b: &[u8]) -> impl Iterator<Item = [u8; 8]> + '_ {
    b.chunks_exact(8).filter_map(|c| c.try_into().ok())
}

/// Facts waiting to be sent, at most; past it they are dropped and a reset is announced.
const OUTBOX: usize = 10_000;
/// Facts sent in one pipeline, and read in one `XREAD`.
const BATCH: usize = 512;
/// How long one blocking read waits for new facts.
const READ_SLICE_MS: u64 = 250;
/// Pause after a failed call before the next attempt.
const PAUSE: Duration = Duration::from_millis(100);

/// The sharing state of one replica.
pub struct SharedTruth {
    cfg: SharedConfig,
    /// Tells this replica's own facts apart in the stream.
    origin: u64,
    outbox: mpsc::Sender<Fact>,
    inbox: Mutex<Option<mpsc::Receiver<Fact>>>,
    /// Facts were dropped unsent: a reset goes first once Redis answers again.
    lost: AtomicBool,
    synced: AtomicBool,
    queued: AtomicU64,
    published: AtomicU64,
    applied: AtomicU64,
    resets: AtomicU64,
}

/// Counters of the sharing, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedStats {
    /// Caught up with the stream and reading it.
    pub synced: bool,
    /// Facts handed to the sender (published once Redis took them).
    pub queued: u64,
    pub published: u64,
    pub applied: u64,
    /// Times this replica forgot its tokens and answers because it could not know what it
    /// missed.
    pub resets: u64,
}

impl SharedTruth {
    pub fn new(cfg: &SharedConfig) -> Self {
        let (outbox, inbox) = mpsc::channel(OUTBOX);
        Self {
            cfg: cfg.clone(),
            origin: rand::random(),
            outbox,
            inbox: Mutex::new(Some(inbox)),
            lost: AtomicBool::new(false),
            synced: AtomicBool::new(false),
            queued: AtomicU64::new(0),
            published: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            resets: AtomicU64::new(0),
        }
    }

    /// Starts the sender and the reader (needs a Tokio runtime; without one nothing is shared).
    pub fn start(&self, cache: Weak<LookupCache>) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let Some(inbox) = self.inbox.lock().ok().and_then(|mut i| i.take()) else {
            return;
        };
        let send = RedisLink::new(self.cfg.target.clone(), "cache sharing (send)");
        let read = RedisLink::new(self.cfg.target.clone(), "cache sharing (read)");
        tokio::spawn(sender(cache.clone(), inbox, send));
        tokio::spawn(reader(cache, read));
    }

    /// Queues a fact (already applied here) for the other replicas.
    pub fn publish(&self, fact: Fact) {
        if self.outbox.try_send(fact).is_err() {
            self.lost.store(true, Ordering::Release);
        } else {
            self.queued.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn stats(&self) -> SharedStats {
        SharedStats {
            synced: self.synced.load(Ordering::Acquire),
            queued: self.queued.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
            applied: self.applied.load(Ordering::Relaxed),
            resets: self.resets.load(Ordering::Relaxed),
        }
    }

    /// Caught up (learnt tokens trusted) or not.
    fn set_synced(&self, tokens: &TokenRegistry, synced: bool) {
        tokens.trust_learnt(synced);
        if self.synced.swap(synced, Ordering::AcqRel) != synced {
            if synced {
                tracing::info!("cache sharing caught up; trusting other replicas' facts");
            } else {
                tracing::warn!("cache sharing lost Redis; serving on this replica's own facts");
            }
        }
    }
}

/// Applies another replica's fact.
fn apply(cache: &LookupCache, shared: &SharedTruth, fact: Fact) {
    let now = now_us();
    match fact {
        Fact::Purge { at_us } => cache.purge_at(at_us, false),
        Fact::Issued(issued) => {
            cache.marks.mark(issued.user, now);
            cache.tokens.learnt(issued, now);
        }
        Fact::Forget { token } => cache.tokens.forget(&token),
        Fact::Revoke { user, at_us } => cache.tokens.revoke_user(user, at_us),
        Fact::Reset => reset(cache, shared),
    }
    shared.applied.fetch_add(1, Ordering::Relaxed);
}

/// Forgets every token (own and learnt) and every cached answer: what was missed is unknown.
fn reset(cache: &LookupCache, shared: &SharedTruth) {
    cache.tokens.clear();
    cache.purge_at(now_us(), false);
    shared.resets.fetch_add(1, Ordering::Relaxed);
    tracing::warn!("cache sharing cannot tell what it missed; tokens and cached answers dropped");
}

/// Sends queued facts in order, in pipelines, retrying until Redis takes them.
async fn sender(cache: Weak<LookupCache>, mut inbox: mpsc::Receiver<Fact>, link: Arc<RedisLink>) {
    let mut batch = Vec::with_capacity(BATCH);
    while inbox.recv_many(&mut batch, BATCH).await > 0 {
        loop {
            let Some(cache) = cache.upgrade() else { return };
            let Some(shared) = cache.shared.as_ref() else {
                return;
            };
            if let Some(mut conn) = link.conn() {
                let reset = shared.lost.swap(false, Ordering::AcqRel);
                let mut pipe = redis::pipe();
                for fact in reset.then_some(&Fact::Reset).into_iter().chain(&batch) {
                    pipe.cmd("XADD")
                        .arg(&shared.cfg.stream)
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(shared.cfg.max_facts)
                        .arg("*")
                        .arg("f")
                        .arg(fact.encode(shared.origin))
                        .ignore();
                }
                let sent =
                    tokio::time::timeout(Duration::from_secs(1), pipe.exec_async(&mut conn)).await;
                match sent {
                    Ok(Ok(())) => {
                        shared
                            .published
                            .fetch_add(batch.len() as u64, Ordering::Relaxed);
                        break;
                    }
                    Ok(Err(e)) => link.failed(&e),
                    Err(_) => {}
                }
                if reset {
                    shared.lost.store(true, Ordering::Release);
                }
            }
            drop(cache);
            tokio::time::sleep(PAUSE).await;
        }
        batch.clear();
    }
}

/// A stream entry id, ordered as Redis orders them.
type EntryId = (u64, u64);

fn parse_id(s: &str) -> Option<EntryId> {
    let (ms, seq) = s.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// The entries of an `XRANGE` reply (or one stream of an `XREAD` reply): `[id, [field,
/// value, …]]` each; the value of field `f` is the fact.
fn entries(v: &Value) -> Vec<(EntryId, Option<(u64, Fact)>)> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(pair) = item else {
                return None;
            };
            let id = parse_id(&text(pair.first()?)?)?;
            let fact = match pair.get(1) {
                Some(Value::Array(kv)) => kv.chunks(2).find_map(|c| match c {
                    [Value::BulkString(k), Value::BulkString(v)] if k == b"f" => Fact::decode(v),
                    _ => None,
                }),
                _ => None,
            };
            Some((id, fact))
        })
        .collect()
}

/// The entries of an `XREAD` reply for one stream (nil when the block timed out).
fn read_reply(v: &Value) -> Vec<(EntryId, Option<(u64, Fact)>)> {
    match v {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|s| match s {
                Value::Array(pair) => pair.get(1).map(entries),
                _ => None,
            })
            .flatten()
            .collect(),
        Value::Map(streams) => streams.iter().flat_map(|(_, e)| entries(e)).collect(),
        _ => Vec::new(),
    }
}

/// Where the reader is in the stream, and which Redis it read it from.
#[derive(Default)]
struct Position {
    last: Option<EntryId>,
    epoch: Option<String>,
}

impl Position {
    fn after(&self) -> String {
        let (ms, seq) = self.last.unwrap_or((0, 0));
        format!("{ms}-{seq}")
    }
}

async fn call<C: ConnectionLike>(
    conn: &mut C,
    cmd: &redis::Cmd,
    budget: Duration,
) -> Result<Value, RedisError> {
    tokio::time::timeout(budget, cmd.query_async(conn))
        .await
        .map_err(|_| RedisError::from((redis::ErrorKind::IoError, "timed out")))?
}

/// Reads new entries after the position (blocking up to `block_ms` if given) and applies the
/// other replicas' facts; returns how many entries were read.
async fn read_on<C: ConnectionLike>(
    conn: &mut C,
    cache: &LookupCache,
    shared: &SharedTruth,
    pos: &mut Position,
    block_ms: Option<u64>,
) -> Result<usize, RedisError> {
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT").arg(BATCH);
    if let Some(ms) = block_ms {
        cmd.arg("BLOCK").arg(ms);
    }
    cmd.arg("STREAMS").arg(&shared.cfg.stream).arg(pos.after());
    let budget = Duration::from_millis(block_ms.unwrap_or(0) + 1_000);
    let read = read_reply(&call(conn, &cmd, budget).await?);
    for (id, fact) in &read {
        pos.last = Some(*id);
        if let Some((origin, fact)) = fact {
            if *origin != shared.origin {
                apply(cache, shared, *fact);
            }
        }
    }
    Ok(read.len())
}

/// Catches up after (re)connecting: checks that nothing was lost (same Redis, stream not
/// trimmed past the position), resets if it cannot tell, then reads everything up to now.
async fn resync<C: ConnectionLike>(
    conn: &mut C,
    cache: &LookupCache,
    shared: &SharedTruth,
    pos: &mut Position,
) -> Result<(), RedisError> {
    let budget = Duration::from_secs(1);
    let mut set = redis::cmd("SET");
    set.arg(&shared.cfg.epoch_key)
        .arg(format!("{:016x}", rand::random::<u64>()))
        .arg("NX");
    call(conn, &set, budget).await?;
    let mut get = redis::cmd("GET");
    get.arg(&shared.cfg.epoch_key);
    let epoch = text(&call(conn, &get, budget).await?);
    let mut first = redis::cmd("XRANGE");
    first
        .arg(&shared.cfg.stream)
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1);
    let first = entries(&call(conn, &first, budget).await?)
        .first()
        .map(|(id, _)| *id);
    let new_redis = pos.epoch.is_some() && pos.epoch != epoch;
    let trimmed = matches!((pos.last, first), (Some(last), Some(first)) if first > last);
    if new_redis || trimmed {
        reset(cache, shared);
        pos.last = None;
    }
    pos.epoch = epoch;
    while read_on(conn, cache, shared, pos, None).await? > 0 {}
    Ok(())
}

/// Follows the stream: catches up after every (re)connection, then blocks for new facts.
async fn reader(cache: Weak<LookupCache>, link: Arc<RedisLink>) {
    let mut pos = Position::default();
    loop {
        let Some(cache) = cache.upgrade() else { return };
        let Some(shared) = cache.shared.as_ref() else {
            return;
        };
        let result = match link.conn() {
            None => Err(None),
            Some(mut conn) => {
                let caught_up = if shared.synced.load(Ordering::Acquire) {
                    Ok(())
                } else {
                    resync(&mut conn, &cache, shared, &mut pos).await
                };
                match caught_up {
                    Ok(()) => {
                        shared.set_synced(&cache.tokens, true);
                        read_on(&mut conn, &cache, shared, &mut pos, Some(READ_SLICE_MS))
                            .await
                            .map(|_| ())
                            .map_err(Some)
                    }
                    Err(e) => Err(Some(e)),
                }
            }
        };
        if let Err(e) = result {
            shared.set_synced(&cache.tokens, false);
            if let Some(e) = e {
                link.failed(&e);
            }
            drop(cache);
            tokio::time::sleep(PAUSE).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_round_trip_and_garbage_is_ignored() {
        let facts = [
            Fact::Purge { at_us: -5 },
            Fact::Issued(Issued {
                token: TokenHash::of("t"),
                partition: Partition::of_network(b"k"),
                device: device_hash("d"),
                user: UserHash::from_bits(7),
                issued_us: 1_699_999_999_000_000,
                sent_us: 1_699_999_999_500_000,
                expires_us: 1_700_000_000_000_000,
            }),
            Fact::Forget {
                token: TokenHash::of("u"),
            },
            Fact::Revoke {
                user: UserHash::from_bits(9),
                at_us: -3,
            },
            Fact::Reset,
        ];
        for f in facts {
            let bytes = f.encode(42);
            assert_eq!(Fact::decode(&bytes), Some((42, f)));
            for cut in 0..bytes.len() {
                assert_eq!(Fact::decode(&bytes[..cut]), None, "{f:?} cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(Fact::decode(&longer), None);
        }
        assert_eq!(Fact::decode(b"Xgarbage-garbage"), None);
    }

    #[test]
    fn device_hashes_agree_across_processes_and_tokens_never_travel() {
        assert_eq!(device_hash("dev-1"), device_hash("dev-1"));
        assert_ne!(device_hash("dev-1"), device_hash("dev-2"));
        let bytes = Fact::Forget {
            token: TokenHash::of("secret-token"),
        }
        .encode(1);
        assert!(!bytes.windows(6).any(|w| w == b"secret"));
    }

    #[test]
    fn sharing_is_off_by_default_and_falls_back_to_the_limiter_url() {
        assert!(SharedFile::default().resolve(None).unwrap().is_none());
        let on = SharedFile {
            enabled: true,
            ..SharedFile::default()
        };
        let err = on.resolve(None).unwrap_err().to_string();
        assert!(err.contains("cache.shared.url"), "{err}");
        let url = Secret("redis+sentinel://:pw@s1,s2/m".into());
        let c = on.resolve(Some(&url)).unwrap().unwrap();
        assert!(matches!(c.target, RedisTarget::Sentinel { .. }));
        assert_eq!(c.stream, "amity-gateway:cache:{facts}");
        assert!(!format!("{c:?}").contains("pw"));
    }

    #[test]
    fn stream_replies_parse_in_both_protocols() {
        let fact = Fact::Reset.encode(7);
        let entry = Value::Array(vec![
            Value::BulkString(b"5-1".to_vec()),
            Value::Array(vec![
                Value::BulkString(b"f".to_vec()),
                Value::BulkString(fact),
            ]),
        ]);
        let stream = Value::BulkString(b"s".to_vec());
        let resp2 = Value::Array(vec![Value::Array(vec![
            stream.clone(),
            Value::Array(vec![entry.clone()]),
        ])]);
        let resp3 = Value::Map(vec![(stream, Value::Array(vec![entry]))]);
        for v in [resp2, resp3] {
            assert_eq!(read_reply(&v), vec![((5, 1), Some((7, Fact::Reset)))]);
        }
        assert!(read_reply(&Value::Nil).is_empty());
    }
}
