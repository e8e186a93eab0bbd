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
//! A newer session for the same deviceId retires the older token, in the upstream's own order:
//! each device maps to the token with the latest `issuedAt` seen, whatever order the answers
//! arrive in; an answer issued before the device's current token is already retired, and two
//! tokens issued in the same millisecond are both distrusted (the text cannot order them). A
//! session request retires the device's current token when it is sent, not when its answer
//! comes: the upstream may retire it before the answer is read, or the answer may never be.
//!
//! Logout through the gateway, an upstream 401/403 and a session retiring a token forget it
//! for good: a forgotten token leaves a tombstone, so a 2xx answer to a request sent before it
//! was forgotten cannot prove it again. An admin revocation of a user distrusts every token of
//! that user learnt from a session sent before the revocation answered, and every proven token
//! (whose user is unknown) proven by a request sent before it.
//!
//! With `[cache.shared]`, tokens issued through other replicas are learnt from their facts
//! ([`TokenRegistry::learnt`]) and enter the same maps, so one device's tokens are ordered by
//! `issuedAt` whichever replica issued them, and tombstones and revocations apply to them
//! alike. Learnt tokens are flagged: while the replica is not caught up with the others'
//! facts ([`TokenRegistry::trust_learnt`]) they are not trusted, since their logouts may be
//! among the facts not yet read.
//!
//! Every map is bounded (`max_tokens` entries each, [`super::bounded`]), so memory pressure
//! makes the registry forget, and what it forgets must only make a token unknown (an unknown
//! token is always forwarded):
//!
//! * a token record forgotten: the token is unknown;
//! * a device record forgotten (or expired): a session answer for the device whose request was
//!   sent before its shard last forgot records is not trusted, since it may be older than the
//!   device's forgotten token (its request may have been sent before the newer one's);
//! * a tombstone forgotten: tombstones have no date of their own and go only when their map
//!   is full, after at least about `max_tokens / 2` later forgets; only then can a 2xx answer
//!   still in flight prove a forgotten token again (for the proven TTL).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::bounded::{Bounded, Expires};
use super::marks::{UserHash, UserMarks};
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

/// A hashed deviceId (hashed with the cache's per-process key, or alike on every replica with
/// `[cache.shared]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceHash(pub u64);

#[derive(Debug, Clone, Copy)]
struct TokenRecord {
    partition: Partition,
    /// The device a session issued the token for; `None` for proven tokens.
    device: Option<DeviceHash>,
    /// The user a session issued the token to; `None` for proven tokens.
    user: Option<UserHash>,
    /// Learnt from another replica's fact.
    learnt: bool,
    /// When the request that taught the token was sent (gateway clock): revocations answered
    /// after it distrust the token.
    sent_us: i64,
    expires_us: i64,
}

#[derive(Debug, Clone, Copy)]
struct DeviceRecord {
    /// The device's current token; `None` while a session is in flight or after a tie.
    token: Option<TokenHash>,
    /// The `issuedAt` of the latest token seen for the device (upstream clock, µs).
    issued_us: i64,
    expires_us: i64,
}

impl Expires for TokenRecord {
    fn expires_us(&self) -> i64 {
        self.expires_us
    }
}

impl Expires for DeviceRecord {
    fn expires_us(&self) -> i64 {
        self.expires_us
    }
}

/// A forgotten token's tombstone: the token is refused to proofs until the tombstone is
/// evicted (it has no date: a clock stepping forward must not end it).
#[derive(Debug, Clone, Copy)]
struct Tombstone;

impl Expires for Tombstone {
    fn expires_us(&self) -> i64 {
        i64::MAX
    }
}

/// What a session answer teaches: the token, whose it is, and when the upstream issued it.
/// Shared as it is with the other replicas (`cache::shared`), so each applies the same order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Issued {
    pub token: TokenHash,
    pub partition: Partition,
    pub device: DeviceHash,
    pub user: UserHash,
    /// `issuedAt` (upstream clock, µs).
    pub issued_us: i64,
    /// When the session request was sent (gateway clock, µs).
    pub sent_us: i64,
    pub expires_us: i64,
}

pub struct TokenRegistry {
    tokens: Bounded<TokenHash, TokenRecord>,
    /// Each device's record is read and rewritten under its shard's lock
    /// ([`Bounded::update`]), so two updates of one device never interleave.
    devices: Bounded<DeviceHash, DeviceRecord>,
    /// Tokens forgotten for good (see [`Tombstone`]).
    tombstones: Bounded<TokenHash, Tombstone>,
    /// Per user (hashed into fixed slots): when an admin last revoked the user's tokens.
    /// Users sharing a slot only lose each other's trust, never gain it.
    revoked: UserMarks,
    /// When any user's tokens were last revoked: proven tokens have no known user.
    any_revoked_us: AtomicI64,
    proven_ttl_us: i64,
    /// Whether tokens learnt from other replicas are trusted (caught up with their facts).
    trust_learnt: AtomicBool,
}

impl TokenRegistry {
    pub fn new(max_tokens: u64, proven_ttl: Duration, user_slots: usize) -> Self {
        Self::with_marks(max_tokens, proven_ttl, UserMarks::new(user_slots))
    }

    /// A registry whose users are hashed by `revoked` (see [`UserMarks::replicated`]).
    pub fn with_marks(max_tokens: u64, proven_ttl: Duration, revoked: UserMarks) -> Self {
        let max = usize::try_from(max_tokens).unwrap_or(usize::MAX);
        Self {
            tokens: Bounded::new(max),
            devices: Bounded::new(max),
            tombstones: Bounded::new(max),
            revoked,
            any_revoked_us: AtomicI64::new(i64::MIN),
            proven_ttl_us: micros(proven_ttl),
            trust_learnt: AtomicBool::new(true),
        }
    }

    /// The hash of `user_id` in the revocation table.
    pub fn user(&self, user_id: &str) -> UserHash {
        self.revoked.hash(user_id)
    }

    /// A session request for `device` is being sent: the device's current token is forgotten
    /// (the upstream retires it on success, possibly before its answer is read, or ever read).
    /// Returns the token retired, if any.
    pub fn session_sent(&self, device: DeviceHash) -> Option<TokenHash> {
        let retired = self.devices.update(device, now_us(), |d| match d.record {
            Some(mut d) => {
                let retired = d.token.take();
                (retired.map(|_| d), retired)
            }
            None => (None, None),
        })?;
        self.forget(&retired);
        Some(retired)
    }

    /// A session answer issued a token: trusted, unless the device has already seen a token
    /// the upstream issued later (this one is retired) or at the same millisecond (which of
    /// the two is retired cannot be told, so neither is trusted).
    pub fn issued(&self, i: Issued, now_us: i64) {
        self.admit(i, now_us, false);
    }

    /// Another replica's session answer issued a token: ordered with this replica's own as
    /// [`TokenRegistry::issued`], trusted only while [`TokenRegistry::trust_learnt`] is on.
    pub fn learnt(&self, i: Issued, now_us: i64) {
        self.admit(i, now_us, true);
    }

    /// Whether learnt tokens are trusted: off while the replica may have missed facts.
    pub fn trust_learnt(&self, trusted: bool) {
        self.trust_learnt.store(trusted, Ordering::Release);
    }

    fn admit(&self, i: Issued, now_us: i64, learnt: bool) {
        if i.expires_us <= now_us || self.tombstones.contains(&i.token, now_us) {
            return;
        }
        // Forgotten after the device's entry is updated (at most the old token and this one).
        let (retired, trusted) = self.devices.update(i.device, now_us, |found| {
            let old = found.record;
            let (retired, put, trusted) = match old {
                Some(d) if d.issued_us > i.issued_us => ([Some(i.token), None], None, false),
                Some(d) if d.issued_us == i.issued_us && d.token != Some(i.token) => (
                    [Some(i.token), d.token],
                    Some(DeviceRecord { token: None, ..d }),
                    false,
                ),
                // The device's record may have been forgotten after this answer's request was
                // sent, with a token issued after this one.
                None if i.sent_us <= found.lost_us => ([None, None], None, false),
                _ => (
                    [old.and_then(|d| d.token).filter(|t| *t != i.token), None],
                    Some(DeviceRecord {
                        token: Some(i.token),
                        issued_us: i.issued_us,
                        expires_us: i.expires_us,
                    }),
                    true,
                ),
            };
            (put, (retired, trusted))
        });
        retired.iter().flatten().for_each(|t| self.forget(t));
        if trusted {
            self.tokens.insert(
                i.token,
                TokenRecord {
                    partition: i.partition,
                    device: Some(i.device),
                    user: Some(i.user),
                    learnt,
                    sent_us: i.sent_us,
                    expires_us: i.expires_us,
                },
            );
            self.unless_forgotten(&i.token, now_us);
        }
    }

    /// Removes `token` again if it was forgotten meanwhile: `forget` writes the tombstone
    /// before it removes the token, so a token inserted after a tombstone check is either
    /// removed by a `forget` that follows or found here.
    fn unless_forgotten(&self, token: &TokenHash, now_us: i64) {
        if self.tombstones.contains(token, now_us) {
            self.tokens.remove(token);
        }
    }

    /// A 2xx upstream answer to a request sent at `sent_us` proved `token`; trusted for the
    /// proven TTL in its own partition, unless it is already known (a session-issued record is
    /// never downgraded), was forgotten, or a revocation answered after the request was sent.
    pub fn proven(&self, token: TokenHash, sent_us: i64, now_us: i64) {
        if self.tombstones.contains(&token, now_us)
            || sent_us <= self.any_revoked_us.load(Ordering::Acquire)
        {
            return;
        }
        self.tokens.insert_if_absent(token, now_us, || TokenRecord {
            partition: token.private_partition(),
            device: None,
            user: None,
            learnt: false,
            sent_us,
            expires_us: now_us.saturating_add(self.proven_ttl_us),
        });
        self.unless_forgotten(&token, now_us);
    }

    /// Logout, an upstream 401/403, or retirement: the token is never trusted again.
    pub fn forget(&self, token: &TokenHash) {
        self.tombstones.insert(*token, Tombstone);
        self.tokens.remove(token);
    }

    /// An admin revoked every token of `user` (reported when the revocation is sent and again
    /// when it is answered): tokens of `user` learnt from requests sent before `at_us`, and
    /// proven tokens proven before it, are no longer trusted.
    pub fn revoke_user(&self, user: UserHash, at_us: i64) {
        self.revoked.mark(user, at_us);
        self.any_revoked_us.fetch_max(at_us, Ordering::AcqRel);
    }

    /// The partition `token` may be served from, if it is known valid at `now_us`.
    pub fn valid(&self, token: &TokenHash, now_us: i64) -> Option<Partition> {
        let rec = self.tokens.get(token, now_us)?;
        if rec.expires_us <= now_us || (rec.learnt && !self.trust_learnt.load(Ordering::Acquire)) {
            return None;
        }
        match rec.user {
            Some(user) if self.revoked.stale(&[user], rec.sent_us) => return None,
            None if rec.sent_us <= self.any_revoked_us.load(Ordering::Acquire) => return None,
            _ => {}
        }
        if let Some(device) = rec.device {
            // Retired by a newer session of its device, or the device mapping was forgotten.
            if self
                .devices
                .get(&device, now_us)
                .is_none_or(|d| d.token != Some(*token))
            {
                return None;
            }
        }
        Some(rec.partition)
    }

    /// Forgets every token and device (tombstones and revocations stay).
    pub fn clear(&self) {
        self.tokens.clear();
        self.devices.clear();
    }

    /// Tokens remembered (expired ones not yet dropped included).
    pub fn len(&self) -> u64 {
        self.tokens.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY_US: i64 = 86_400_000_000;

    fn reg() -> TokenRegistry {
        TokenRegistry::new(1000, Duration::from_secs(60), 1 << 20)
    }

    fn net() -> Partition {
        Partition::of_network(b"key")
    }

    /// `token` issued at `issued_us` for device `device` of user "u", sent and learnt at `now`.
    fn issue(r: &TokenRegistry, token: &str, device: u64, issued_us: i64, now: i64) -> TokenHash {
        let t = TokenHash::of(token);
        r.issued(
            Issued {
                token: t,
                partition: net(),
                device: DeviceHash(device),
                user: r.user("u"),
                issued_us,
                sent_us: now,
                expires_us: now + DAY_US,
            },
            now,
        );
        t
    }

    /// Answers for one device arriving on many threads at once, in any order, with sessions
    /// sent among them: the token issued last is the device's, every other one is retired.
    #[test]
    fn concurrent_answers_for_one_device_leave_only_the_latest_token() {
        let r = std::sync::Arc::new(TokenRegistry::new(
            100_000,
            Duration::from_secs(60),
            1 << 20,
        ));
        let now = now_us();
        let threads: Vec<_> = (0..8)
            .map(|k| {
                let r = r.clone();
                std::thread::spawn(move || {
                    (0..1000)
                        .map(|n| {
                            let issued = n * 8 + k;
                            if n % 10 == 0 {
                                r.session_sent(DeviceHash(7));
                            }
                            (
                                issue(&r, &format!("t{issued}"), 7, now + issued, now),
                                issued,
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let issued: Vec<(TokenHash, i64)> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let latest = issued.iter().map(|(_, n)| *n).max().unwrap();
        for (t, n) in &issued {
            let valid = r.valid(t, now).is_some();
            if *n == latest {
                // Retired only if a session was sent after it was learnt.
                assert!(
                    valid
                        || r.devices
                            .get(&DeviceHash(7), now)
                            .is_some_and(|d| d.token.is_none())
                );
            } else {
                assert!(!valid, "token {n} is still valid beside {latest}");
            }
        }
    }

    #[test]
    fn issued_tokens_are_valid_in_their_network_until_expiry() {
        let r = reg();
        let now = now_us();
        let t = issue(&r, "t1", 1, now, now);
        assert_eq!(r.valid(&t, now), Some(net()));
        assert_eq!(r.valid(&t, now + DAY_US), None, "expired");
        assert_eq!(r.valid(&TokenHash::of("forged"), now), None);
    }

    #[test]
    fn already_expired_tokens_are_not_learnt() {
        let r = reg();
        let now = now_us();
        let t = TokenHash::of("old");
        r.issued(
            Issued {
                token: t,
                partition: net(),
                device: DeviceHash(1),
                user: r.user("u"),
                issued_us: now - DAY_US,
                sent_us: now,
                expires_us: now - 1,
            },
            now,
        );
        assert_eq!(r.valid(&t, now - 2), None);
    }

    #[test]
    fn a_newer_session_of_the_device_retires_the_older_token() {
        let r = reg();
        let now = now_us();
        let old = issue(&r, "a", 1, now, now);
        let other = issue(&r, "c", 2, now, now);
        let new = issue(&r, "b", 1, now + 1000, now);
        assert_eq!(r.valid(&old, now), None);
        assert_eq!(r.valid(&new, now), Some(net()));
        assert_eq!(
            r.valid(&other, now),
            Some(net()),
            "other devices keep theirs"
        );
        // Proving the retired token again must not bring it back.
        r.proven(old, now + 1, now + 1);
        assert_eq!(r.valid(&old, now + 1), None);
    }

    #[test]
    fn retirement_follows_issued_at_not_arrival() {
        let r = reg();
        let now = now_us();
        let later = issue(&r, "later", 1, now + 2000, now);
        let earlier = issue(&r, "earlier", 1, now + 1000, now);
        assert_eq!(r.valid(&later, now), Some(net()));
        assert_eq!(
            r.valid(&earlier, now),
            None,
            "issued before the device's current token"
        );
        r.proven(earlier, now + 1, now + 1);
        assert_eq!(r.valid(&earlier, now + 1), None, "retired for good");
    }

    #[test]
    fn two_tokens_issued_in_one_millisecond_are_both_distrusted() {
        let r = reg();
        let now = now_us();
        let a = issue(&r, "a", 1, now, now);
        let b = issue(&r, "b", 1, now, now);
        assert_eq!(r.valid(&a, now), None);
        assert_eq!(r.valid(&b, now), None);
        let c = issue(&r, "c", 1, now + 1000, now);
        assert_eq!(r.valid(&c, now), Some(net()));
    }

    #[test]
    fn a_session_sent_retires_the_device_token_before_its_answer() {
        let r = reg();
        let now = now_us();
        let t = issue(&r, "t", 1, now, now);
        r.session_sent(DeviceHash(1));
        assert_eq!(r.valid(&t, now), None);
        r.proven(t, now + 1, now + 1);
        assert_eq!(
            r.valid(&t, now + 1),
            None,
            "a lookup answer cannot prove it again"
        );
        let n = issue(&r, "n", 1, now + 1000, now);
        assert_eq!(r.valid(&n, now), Some(net()));
    }

    #[test]
    fn revoking_a_user_distrusts_tokens_learnt_before_and_proven_tokens() {
        let r = reg();
        let now = now_us();
        let t = issue(&r, "t", 1, now, now);
        let p = TokenHash::of("p");
        r.proven(p, now, now);
        assert_eq!(r.valid(&p, now), Some(p.private_partition()));
        r.revoke_user(r.user("someone-else"), now + 5);
        assert_eq!(
            r.valid(&t, now + 6),
            Some(net()),
            "another user's revocation"
        );
        assert_eq!(
            r.valid(&p, now + 6),
            None,
            "proven tokens have no known user"
        );
        r.revoke_user(r.user("u"), now + 10);
        assert_eq!(r.valid(&t, now + 11), None);
        // A session sent after the revocation answered is trusted again.
        let later = issue(&r, "later", 2, now + 20, now + 20);
        assert_eq!(r.valid(&later, now + 21), Some(net()));
        r.proven(p, now + 3, now + 21);
        assert_eq!(
            r.valid(&p, now + 21),
            None,
            "proof sent before the revocation"
        );
    }

    #[test]
    fn a_forgotten_device_mapping_makes_its_token_unknown() {
        let r = reg();
        let now = now_us();
        let t = issue(&r, "a", 1, now, now);
        r.devices.remove(&DeviceHash(1));
        assert_eq!(r.valid(&t, now), None);
    }

    #[test]
    fn proven_tokens_get_a_private_partition_for_a_short_time() {
        let r = reg();
        let now = now_us();
        let t = TokenHash::of("p");
        r.proven(t, now, now);
        assert_eq!(r.valid(&t, now), Some(t.private_partition()));
        assert_ne!(t.private_partition(), net());
        assert_eq!(r.valid(&t, now + 60_000_000), None);
    }

    #[test]
    fn proving_never_downgrades_an_issued_token() {
        let r = reg();
        let now = now_us();
        let t = issue(&r, "s", 1, now, now);
        r.proven(t, now, now);
        assert_eq!(r.valid(&t, now + 120_000_000), Some(net()));
    }

    #[test]
    fn forgotten_tokens_are_unknown_and_stay_so() {
        let r = reg();
        let now = now_us();
        let t = issue(&r, "s", 1, now, now);
        r.forget(&t);
        assert_eq!(r.valid(&t, now), None);
        // A session answer that arrives after its logout does not bring it back.
        let t = issue(&r, "s", 1, now + 1000, now);
        assert_eq!(r.valid(&t, now), None);
    }

    #[test]
    fn tombstones_have_no_date() {
        let r = reg();
        let now = now_us();
        let t = issue(&r, "s", 1, now, now);
        r.forget(&t);
        // Proofs sent long after (a clock stepped forward a day) still find the tombstone.
        let later = now + DAY_US;
        r.proven(t, later, later);
        assert_eq!(r.valid(&t, later), None);
    }

    /// A device record pushed out by others: an answer for the device whose request was sent
    /// before that may be older than the forgotten token, so it is not trusted; one sent after
    /// is.
    #[test]
    fn an_answer_sent_before_its_device_record_was_evicted_is_not_trusted() {
        let r = reg();
        let now = now_us();
        let b = issue(&r, "b", 1, now + 2000, now);
        assert!(r.valid(&b, now).is_some());
        // As many other devices as the registry holds, none reading device 1's record: it is
        // gone (and so its token is unknown).
        for d in 2..1003 {
            issue(&r, &format!("o{d}"), d, now, now);
        }
        assert_eq!(r.valid(&b, now), None);
        // A late answer for an older token of device 1, its request sent before the eviction.
        let a = issue(&r, "a", 1, now + 1000, now);
        assert_eq!(r.valid(&a, now), None);
        // A session sent after the eviction is trusted.
        let after = now_us() + 1;
        let c = issue(&r, "c", 1, after + 3000, after);
        assert!(r.valid(&c, after).is_some());
    }

    #[test]
    fn learnt_tokens_are_ordered_with_own_and_trusted_only_while_caught_up() {
        let r = reg();
        let now = now_us();
        let own = issue(&r, "own", 1, now, now);
        let remote = Issued {
            token: TokenHash::of("remote"),
            partition: net(),
            device: DeviceHash(1),
            user: r.user("u"),
            issued_us: now + 1000,
            sent_us: now,
            expires_us: now + DAY_US,
        };
        r.learnt(remote, now);
        assert_eq!(r.valid(&own, now), None, "retired by the later one");
        assert_eq!(r.valid(&remote.token, now), Some(net()));
        r.trust_learnt(false);
        assert_eq!(r.valid(&remote.token, now), None);
        r.trust_learnt(true);
        r.forget(&remote.token);
        r.learnt(remote, now);
        assert_eq!(r.valid(&remote.token, now), None, "tombstoned");
        let own = issue(&r, "own2", 2, now, now);
        r.learnt(
            Issued {
                token: TokenHash::of("older"),
                device: DeviceHash(2),
                issued_us: now - 1000,
                ..remote
            },
            now,
        );
        assert_eq!(r.valid(&own, now), Some(net()), "an older learnt token");
        assert_eq!(r.valid(&TokenHash::of("older"), now), None);
        r.clear();
        assert_eq!(r.valid(&own, now), None);
    }

    #[test]
    fn hashes_and_partitions_hide_their_input() {
        let t = TokenHash::of("secret-token");
        assert!(!format!("{t:?}").contains("secret"));
        assert_ne!(Partition::of_network(b"a"), Partition::of_network(b"b"));
    }
}
