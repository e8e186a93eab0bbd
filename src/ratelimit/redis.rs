//! The Redis backend: one budget per key shared by every replica using the same Redis.
//!
//! Each decision is one `EVALSHA` of [`SCRIPT`], which runs atomically in Redis: it reads the
//! key's previous and current window counters, decides with the same sliding-window arithmetic
//! as the local sketches ([`Tally::admits`], on integers scaled by the window in ms), and counts
//! the request only when every policy admits it. Windows are numbered from Redis's own clock
//! (`TIME`), so replicas whose clocks disagree still share window boundaries.
//!
//! A key is one hash per device (`<prefix>:session:<window_secs>:{<deviceId>}`, and per IP when
//! that limit is on) whose fields are window numbers; the braces are a Cluster hash tag, so on
//! a Cluster a device's budget is one key on one primary; fields older than the previous window are
//! deleted when a new one is created, and the hash expires when its newest counter stops
//! mattering. One key per limited thing keeps every key the script touches declared in `KEYS`.
//!
//! The connection is a [`RedisLink`]: one server, a Cluster or a Sentinel-managed primary,
//! (re)connected in the background, so a Redis that is down at start-up, resharding or failing
//! over delays nothing: until it answers every decision is a fallback. Each call has a time budget; a call that
//! misses it is a fallback too (the script may still have counted the request in Redis, which
//! can only make the shared count stricter).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::{Decision, Key, Quota, RedisConfig, Source, Tally};
use crate::redis_link::RedisLink;

/// KEYS: one hash per policy. ARGV: `limit, window_ms` per policy, in the same order.
///
/// Returns `{admitted, refused_by, prev₁, curr₁, elapsed₁, prev₂, curr₂, elapsed₂}` where
/// `refused_by` is the 1-based policy that refused (0 if none) and the triples (counts before
/// this request) stop at the refusing policy.
pub const SCRIPT: &str = r#"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {1, 0}
local at = {}
for i = 1, #KEYS do
  local limit = tonumber(ARGV[2 * i - 1])
  local w = tonumber(ARGV[2 * i])
  local n = math.floor(now / w)
  local el = now - n * w
  local got = redis.call('HMGET', KEYS[i], string.format('%d', n - 1), string.format('%d', n))
  local prev = tonumber(got[1]) or 0
  local curr = tonumber(got[2]) or 0
  out[#out + 1] = prev
  out[#out + 1] = curr
  out[#out + 1] = el
  if prev * (w - el) + (curr + 1) * w > limit * w then
    out[1] = 0
    out[2] = i
    return out
  end
  at[i] = {n, w, el}
end
for i = 1, #KEYS do
  local n, w, el = at[i][1], at[i][2], at[i][3]
  if redis.call('HINCRBY', KEYS[i], string.format('%d', n), 1) == 1 then
    for _, f in ipairs(redis.call('HKEYS', KEYS[i])) do
      if tonumber(f) < n - 1 then redis.call('HDEL', KEYS[i], f) end
    end
  end
  redis.call('PEXPIRE', KEYS[i], 2 * w - el)
end
return out
"#;

/// Why Redis did not decide. Messages are fixed or a category: a Redis error's own text may
/// quote the URL.
#[derive(Debug)]
pub enum RemoteError {
    /// No connection yet (Redis was down at start-up and still is).
    NotConnected,
    /// The call missed its time budget.
    Timeout,
    Redis(redis::ErrorKind),
    /// The script answered something it never answers.
    BadReply,
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoteError::NotConnected => f.write_str("not connected"),
            RemoteError::Timeout => f.write_str("time budget exceeded"),
            RemoteError::Redis(kind) => write!(f, "redis error ({kind:?})"),
            RemoteError::BadReply => f.write_str("unexpected script reply"),
        }
    }
}

impl std::error::Error for RemoteError {}

pub struct RedisLimiter {
    link: Arc<RedisLink>,
    script: redis::Script,
    timeout: Duration,
    session: Quota,
    per_ip: Option<Quota>,
    session_prefix: String,
    ip_prefix: String,
}

impl RedisLimiter {
    /// Starts connecting in the background if a Tokio runtime is running (else on the first
    /// decision).
    pub fn new(cfg: &RedisConfig, session: Quota, per_ip: Option<Quota>) -> Self {
        Self {
            link: RedisLink::new(cfg.target.clone(), "rate limit backend"),
            script: redis::Script::new(SCRIPT),
            timeout: cfg.timeout,
            session,
            per_ip,
            session_prefix: format!("{}:session:{}:", cfg.key_prefix, session.window_secs()),
            ip_prefix: format!(
                "{}:ip:{}:",
                cfg.key_prefix,
                per_ip.map_or(0, |q| q.window_secs())
            ),
        }
    }

    /// One atomic decision in Redis, within the time budget.
    pub async fn check(&self, key: Key<'_>) -> Result<Decision, RemoteError> {
        let Some(mut conn) = self.link.conn() else {
            return Err(RemoteError::NotConnected);
        };
        let mut call = self.script.prepare_invoke();
        call.key(tagged(&self.session_prefix, key.device))
            .arg(self.session.requests.get())
            .arg(window_ms(self.session));
        let ip = match (self.per_ip, key.ip) {
            (Some(q), Some(addr)) => {
                call.key(tagged(&self.ip_prefix, addr))
                    .arg(q.requests.get())
                    .arg(window_ms(q));
                Some(q)
            }
            _ => None,
        };
        let reply: Vec<i64> = tokio::time::timeout(self.timeout, call.invoke_async(&mut conn))
            .await
            .map_err(|_| {
                self.link.timed_out();
                RemoteError::Timeout
            })?
            .map_err(|e| {
                self.link.failed(&e);
                RemoteError::Redis(e.kind())
            })?;
        self.link.succeeded();
        decode(&reply, self.session, ip)
    }
}

/// `<prefix>{<id>}`: the braces are a Cluster hash tag, so a key's slot depends on the device
/// (or IP) alone and every key of one device lives on one primary, whatever the prefix.
fn tagged(prefix: &str, id: impl fmt::Display) -> String {
    format!("{prefix}{{{id}}}")
}

fn window_ms(q: Quota) -> u64 {
    u64::try_from(q.window.as_millis()).unwrap_or(u64::MAX)
}

/// Turns the script's reply into a decision (see [`SCRIPT`] for its shape).
fn decode(reply: &[i64], session: Quota, ip: Option<Quota>) -> Result<Decision, RemoteError> {
    let num = |i: usize| {
        reply
            .get(i)
            .and_then(|v| u64::try_from(*v).ok())
            .ok_or(RemoteError::BadReply)
    };
    let tally = |at: usize, q: Quota| -> Result<Tally, RemoteError> {
        Ok(Tally {
            prev: num(at)?,
            curr: num(at + 1)?,
            elapsed_ms: num(at + 2)?,
            window_ms: window_ms(q),
        })
    };
    let allowed = num(0)? == 1;
    let refused_by = num(1)?;
    let dev = tally(2, session)?;
    let session_standing = dev.standing(session.requests.get(), allowed);
    let ip = match ip {
        Some(q) if refused_by != 1 => Some(tally(5, q)?.standing(q.requests.get(), allowed)),
        _ => None,
    };
    Ok(Decision {
        allowed,
        source: Source::Redis,
        session: session_standing,
        ip,
    })
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn q(requests: u32, secs: u64) -> Quota {
        Quota {
            requests: NonZeroU32::new(requests).unwrap(),
            window: Duration::from_secs(secs),
        }
    }

    #[test]
    fn replies_decode_into_the_same_standing_as_the_local_arithmetic() {
        let d = decode(&[1, 0, 0, 4, 1_000], q(10, 60), None).unwrap();
        assert!(d.allowed);
        assert_eq!(d.session.remaining, 5);
        let d = decode(&[0, 1, 0, 10, 1_000], q(10, 60), Some(q(100, 60))).unwrap();
        assert!(!d.allowed);
        assert_eq!(d.session.remaining, 0);
        assert_eq!(d.session.reset_secs, 65);
        assert_eq!(d.ip, None, "the IP policy was not consulted");
        let d = decode(&[0, 2, 0, 3, 0, 0, 100, 0], q(10, 60), Some(q(100, 60))).unwrap();
        assert!(!d.allowed);
        assert_eq!(d.session.remaining, 7, "not counted");
        assert_eq!(d.ip.unwrap().remaining, 0);
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        for reply in [&[][..], &[1], &[1, 0, 0, -4, 1], &[0, 2, 0, 3, 0]] {
            assert!(
                decode(reply, q(10, 60), Some(q(5, 60))).is_err(),
                "{reply:?}"
            );
        }
    }
}
