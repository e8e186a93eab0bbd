//! The simulated network: users, their avatar files, issued tokens and the purge clock.
//!
//! Everything here is plain data behind one mutex in [`super::Simulator`]; no method blocks or
//! awaits, so the lock is only ever held for a few map operations.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

/// How long an access token lives: the upstream documents 30 days (v4 description, and the
/// `issuedAt`/`expiresAt` pair of a real v3 sample).
pub(crate) const TOKEN_LIFETIME: time::Duration = time::Duration::days(30);

/// The API version of a session call; it decides the response shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ApiVersion {
    V3,
    V4,
    V5,
}

/// One user of the simulated network, as the upstream keeps it between sessions.
#[derive(Debug, Clone)]
pub(crate) struct UserRecord {
    pub(crate) user_id: String,
    pub(crate) internal_id: String,
    pub(crate) display_name: String,
    pub(crate) profile_handle: String,
    pub(crate) avatar_file_id: String,
    pub(crate) created_at: OffsetDateTime,
    pub(crate) updated_at: OffsetDateTime,
}

/// What the simulator remembers about an access token it issued.
#[derive(Debug, Clone)]
struct TokenRecord {
    device_id: String,
    user_id: String,
    expires_at: OffsetDateTime,
}

/// A file only one token may see (say, uploaded to a private channel): the upstream answers
/// anyone else 403. Marked `accessType: "network"`, as the upstream marks files that need
/// authentication; only `"public"` files are anyone's.
#[derive(Debug, Clone)]
struct PrivateFile {
    viewer: String,
    created_at: OffsetDateTime,
}

/// What a file lookup finds.
pub(crate) enum FileLookup {
    Found(Value),
    Forbidden,
    Missing,
}

/// What a session request asks for, taken leniently from its JSON body.
#[derive(Debug)]
pub(crate) struct SessionInput<'a> {
    pub(crate) user_id: &'a str,
    pub(crate) device_id: &'a str,
    pub(crate) display_name: Option<&'a str>,
    pub(crate) profile_handle: Option<&'a str>,
}

/// The simulated network state.
pub(crate) struct World {
    /// Shown in user `path`s; derived from the api key by a hash, never the key itself.
    network_id: String,
    users: HashMap<String, UserRecord>,
    /// Avatar fileId → owning userId.
    files: HashMap<String, String>,
    /// Access token → record. Only tokens that are still valid (not revoked, not replaced).
    tokens: HashMap<String, TokenRecord>,
    /// deviceId → its current access token: a new session for the device retires the old one.
    devices: HashMap<String, String>,
    /// fileId → the one token allowed to see it.
    private_files: HashMap<String, PrivateFile>,
    /// Users with the admin role: they may revoke other users' tokens.
    admins: HashSet<String>,
    last_purge: OffsetDateTime,
    /// Lifetime of tokens issued from now on; [`TOKEN_LIFETIME`] unless a test shortens it.
    token_lifetime: time::Duration,
}

impl World {
    pub(crate) fn new(api_key: &str) -> Self {
        let network_id = hex(&Sha256::digest(format!("amity-sim-network:{api_key}"))[..12]);
        Self {
            network_id,
            users: HashMap::new(),
            files: HashMap::new(),
            tokens: HashMap::new(),
            devices: HashMap::new(),
            private_files: HashMap::new(),
            admins: HashSet::new(),
            last_purge: now_ms(),
            token_lifetime: TOKEN_LIFETIME,
        }
    }

    pub(crate) fn last_purge(&self) -> OffsetDateTime {
        self.last_purge
    }

    /// Sets the lifetime of tokens issued from now on (tests of token expiry).
    pub(crate) fn set_token_lifetime(&mut self, lifetime: time::Duration) {
        self.token_lifetime = lifetime;
    }

    /// Moves `lastCachePurge` to now, and always strictly forward (by at least 1 ms, the
    /// resolution of the ISO-8601 text), so two purges in one millisecond are still ordered.
    pub(crate) fn purge(&mut self) -> OffsetDateTime {
        let next = now_ms().max(self.last_purge + time::Duration::milliseconds(1));
        self.last_purge = next;
        next
    }

    /// Creates or updates the user, issues a token pair and retires the device's older token.
    /// Returns the full session response body.
    pub(crate) fn create_session(
        &mut self,
        version: ApiVersion,
        input: &SessionInput<'_>,
    ) -> Value {
        let now = now_ms();
        let user = self.upsert_user(input, now);

        let access_token = jwt_like_token(now, self.token_lifetime);
        let expires_at = now + self.token_lifetime;
        if let Some(old) = self
            .devices
            .insert(input.device_id.to_owned(), access_token.clone())
        {
            self.tokens.remove(&old);
        }
        self.tokens.insert(
            access_token.clone(),
            TokenRecord {
                device_id: input.device_id.to_owned(),
                user_id: input.user_id.to_owned(),
                expires_at,
            },
        );
        if self.tokens.len() > 4096 && self.tokens.len().is_power_of_two() {
            // Amortised clean-up so long benches do not accumulate dead entries.
            self.tokens.retain(|_, t| t.expires_at > now);
        }

        let mut body = json!({
            "accessToken": access_token,
            "issuedAt": iso(now),
            "expiresAt": iso(expires_at),
            "users": [self.user_json(&user)],
            "roles": [member_role()],
            "files": [file_json(&user)],
            "lastCachePurge": iso(self.last_purge),
        });
        if let Some(obj) = body.as_object_mut() {
            match version {
                ApiVersion::V3 | ApiVersion::V4 => {
                    obj.insert("refreshToken".into(), Value::String(random_hex()));
                }
                ApiVersion::V5 => {
                    obj.insert("userType".into(), Value::String("signed-in".into()));
                }
            }
        }
        body
    }

    fn upsert_user(&mut self, input: &SessionInput<'_>, now: OffsetDateTime) -> UserRecord {
        let record = self
            .users
            .entry(input.user_id.to_owned())
            .or_insert_with(|| {
                let digest = Sha256::digest(format!("user:{}", input.user_id));
                let file_digest = Sha256::digest(format!("avatar:{}", input.user_id));
                UserRecord {
                    user_id: input.user_id.to_owned(),
                    // 24 hex digits, shaped like the upstream's Mongo object ids.
                    internal_id: hex(&digest[..12]),
                    display_name: input.user_id.to_owned(),
                    profile_handle: input.user_id.to_lowercase(),
                    // "avatar-" + 24 hex = 31 chars: within the 50-char fileId limit.
                    avatar_file_id: format!("avatar-{}", hex(&file_digest[..12])),
                    created_at: now,
                    updated_at: now,
                }
            });
        if let Some(name) = input.display_name {
            if record.display_name != name {
                record.display_name = name.to_owned();
                record.updated_at = now;
            }
        }
        if let Some(handle) = input.profile_handle {
            if record.profile_handle != handle {
                record.profile_handle = handle.to_owned();
                record.updated_at = now;
            }
        }
        let record = record.clone();
        self.files
            .insert(record.avatar_file_id.clone(), record.user_id.clone());
        record
    }

    /// Whether `token` is a live access token this simulator issued.
    pub(crate) fn token_valid(&self, token: &str) -> bool {
        self.tokens
            .get(token)
            .is_some_and(|t| t.expires_at > OffsetDateTime::now_utc())
    }

    /// Revokes a live token; `false` if it was not valid.
    pub(crate) fn revoke(&mut self, token: &str) -> bool {
        if !self.token_valid(token) {
            return false;
        }
        if let Some(record) = self.tokens.remove(token) {
            if self.devices.get(&record.device_id).map(String::as_str) == Some(token) {
                self.devices.remove(&record.device_id);
            }
        }
        true
    }

    /// The device's current token, while it is live.
    pub(crate) fn device_token(&self, device_id: &str) -> Option<String> {
        self.devices
            .get(device_id)
            .filter(|t| self.token_valid(t))
            .cloned()
    }

    /// Revokes every token of `user_id` (an admin's `DELETE /api/v4/sessions?userId=`).
    pub(crate) fn revoke_user(&mut self, user_id: &str) {
        self.tokens.retain(|_, t| t.user_id != user_id);
        let tokens = &self.tokens;
        self.devices.retain(|_, t| tokens.contains_key(t));
    }

    /// Whether `token` is a live token of an admin.
    pub(crate) fn is_admin(&self, token: &str) -> bool {
        self.token_valid(token)
            && self
                .tokens
                .get(token)
                .is_some_and(|t| self.admins.contains(&t.user_id))
    }

    /// Gives `user_id` the admin role.
    pub(crate) fn make_admin(&mut self, user_id: &str) {
        self.admins.insert(user_id.to_owned());
    }

    /// Adds a file only `viewer` may see; returns its id.
    pub(crate) fn add_private_file(&mut self, viewer: &str) -> String {
        let id = format!("private-{}", hex(&rand::random::<[u8; 12]>()));
        let file = PrivateFile {
            viewer: viewer.to_owned(),
            created_at: now_ms(),
        };
        self.private_files.insert(id.clone(), file);
        id
    }

    /// The File answer for `file_id` as `token` may see it.
    pub(crate) fn file_for(&self, file_id: &str, token: &str) -> FileLookup {
        if let Some(p) = self.private_files.get(file_id) {
            if p.viewer != token {
                return FileLookup::Forbidden;
            }
            let mut f = file_object(file_id, p.created_at);
            f["accessType"] = Value::String("network".into());
            return FileLookup::Found(f);
        }
        match self.file(file_id) {
            Some(owner) => FileLookup::Found(file_json(owner)),
            None => FileLookup::Missing,
        }
    }

    /// Forgets every issued token (every later bearer call answers 401).
    pub(crate) fn revoke_all(&mut self) {
        self.tokens.clear();
        self.devices.clear();
    }

    pub(crate) fn user(&self, user_id: &str) -> Option<&UserRecord> {
        self.users.get(user_id)
    }

    pub(crate) fn file(&self, file_id: &str) -> Option<&UserRecord> {
        self.files.get(file_id).and_then(|uid| self.users.get(uid))
    }

    /// A UserV3 object for `user`.
    pub(crate) fn user_json(&self, user: &UserRecord) -> Value {
        json!({
            "_id": user.internal_id,
            "path": format!("network/{}/user/{}", self.network_id, user.internal_id),
            "userId": user.user_id,
            "userInternalId": user.internal_id,
            "userPublicId": user.user_id,
            "roles": [],
            "permissions": ["MUTE_CHANNEL"],
            "displayName": user.display_name,
            "profileHandle": user.profile_handle,
            "description": "",
            "avatarFileId": user.avatar_file_id,
            "avatarCustomUrl": "",
            "flagCount": 0,
            "hashFlag": {"bits": 0, "hashes": 0, "hash": []},
            "metadata": {},
            "isGlobalBan": false,
            "isBrand": false,
            "createdAt": iso(user.created_at),
            "updatedAt": iso(user.updated_at),
            "isDeleted": false,
        })
    }
}

/// The avatar File object of `user` (TS SDK shape).
pub(crate) fn file_json(user: &UserRecord) -> Value {
    file_object(&user.avatar_file_id, user.created_at)
}

/// A public image File object (TS SDK shape).
fn file_object(id: &str, created_at: OffsetDateTime) -> Value {
    json!({
        "fileId": id,
        // `.invalid` is reserved (RFC 2606): the URL can never reach a real host.
        "fileUrl": format!("https://sim.invalid/api/v3/files/{id}/download"),
        "type": "image",
        "accessType": "public",
        "altText": "",
        "createdAt": iso(created_at),
        "updatedAt": iso(created_at),
        "isDeleted": false,
        "attributes": {
            "name": "avatar.jpg",
            "extension": "jpg",
            "size": 12345,
            "mimeType": "image/jpeg",
            "metadata": {"exif": {}, "gps": {}, "height": 256, "width": 256, "isFull": true},
        },
    })
}

fn member_role() -> Value {
    let epoch = "2023-11-07T05:31:56.000Z";
    json!({
        "roleId": "member",
        "displayName": "Member",
        "permissions": [],
        "createdAt": epoch,
        "updatedAt": epoch,
        "isDeleted": false,
    })
}

/// Now, truncated to whole milliseconds (what the ISO-8601 text can carry), so comparisons of
/// stored times agree with comparisons of their text.
pub(crate) fn now_ms() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now - time::Duration::nanoseconds(i64::from(now.nanosecond() % 1_000_000))
}

/// ISO-8601 / RFC 3339 in UTC with milliseconds, e.g. `2026-11-25T10:00:00.000Z`.
pub(crate) fn iso(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// 32 random bytes as 64 lowercase hex digits.
fn random_hex() -> String {
    hex(&rand::random::<[u8; 32]>())
}

/// A fresh access token that looks like the upstream's JWTs (`header.payload.signature`); the
/// signature is 32 random bytes, so every token is unique and unguessable.
fn jwt_like_token(now: OffsetDateTime, lifetime: time::Duration) -> String {
    let header = base64url(br#"{"alg":"HS256","typ":"JWT"}"#);
    let iat = now.unix_timestamp();
    let exp = (now + lifetime).unix_timestamp();
    let jti = hex(&rand::random::<[u8; 16]>());
    let payload = base64url(format!(r#"{{"jti":"{jti}","iat":{iat},"exp":{exp}}}"#).as_bytes());
    let signature = base64url(&rand::random::<[u8; 32]>());
    format!("{header}.{payload}.{signature}")
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Unpadded base64url (RFC 4648 §5), as JWTs use.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b0 = chunk.first().copied().unwrap_or(0);
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let n = (u32::from(b0) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let idx = (n >> (18 - 6 * i)) & 0x3f;
            out.push(char::from(ALPHABET[idx as usize]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_rfc4648_vectors() {
        assert_eq!(base64url(b""), "");
        assert_eq!(base64url(b"f"), "Zg");
        assert_eq!(base64url(b"fo"), "Zm8");
        assert_eq!(base64url(b"foo"), "Zm9v");
        assert_eq!(base64url(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn iso_has_millis_and_z() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
            + time::Duration::milliseconds(7);
        assert_eq!(iso(t), "2023-11-14T22:13:20.007Z");
    }

    #[test]
    fn purge_is_strictly_monotonic_within_a_millisecond() {
        let mut w = World::new("k");
        let a = w.purge();
        let b = w.purge();
        let c = w.purge();
        assert!(a < b && b < c);
        assert!(iso(a) < iso(b) && iso(b) < iso(c));
    }
}
