//! Borrowed, lenient views of the upstream answers the cache learns from, each read in one
//! pass over the bytes the client receives unchanged.
//!
//! Lenient: a field of an unexpected type is treated as absent (and a date that is not a date
//! is counted by the caller) instead of failing the whole view, so one odd field never costs
//! the gateway the rest of what an answer teaches. Nothing here implements `Debug`: the views
//! hold bearer tokens.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// Visitor methods for the JSON shapes a lenient field does not use: each yields `$v`,
/// consuming arrays and objects without building them.
macro_rules! otherwise {
    ($lt:lifetime, $v:expr; $($kind:ident)*) => { $( otherwise!(@$kind $lt, $v); )* };
    (@scalars $lt:lifetime, $v:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> { Ok($v) }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> { Ok($v) }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> { Ok($v) }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> { Ok($v) }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> { Ok($v) }
    };
    (@str $lt:lifetime, $v:expr) => {
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> { Ok($v) }
    };
    (@seq $lt:lifetime, $v:expr) => {
        fn visit_seq<A: SeqAccess<$lt>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok($v)
        }
    };
    (@map $lt:lifetime, $v:expr) => {
        fn visit_map<A: MapAccess<$lt>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok($v)
        }
    };
}

/// A lenient JSON field: used only when it is a string.
#[derive(Default)]
pub enum Loose<'a> {
    /// The field was not in the object.
    #[default]
    Absent,
    Str(Cow<'a, str>),
    /// Present, but not a string.
    Other,
}

impl Loose<'_> {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Loose::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_absent(&self) -> bool {
        matches!(self, Loose::Absent)
    }
}

struct LooseVisitor;

impl<'de> Visitor<'de> for LooseVisitor {
    type Value = Loose<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Loose::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Loose::Str(Cow::Owned(v.to_owned())))
    }

    otherwise!('de, Loose::Other; scalars seq map);
}

impl<'de: 'a, 'a> Deserialize<'de> for Loose<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LooseVisitor)
    }
}

/// The `userId`s of a `users` array; anything that is not an array contributes nothing, and
/// neither does an element that is not an object with a string `userId`.
#[derive(Default)]
pub struct UserIds<'a>(pub Vec<Cow<'a, str>>);

struct UserIdsVisitor;

impl<'de> Visitor<'de> for UserIdsVisitor {
    type Value = UserIds<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of users")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut ids = Vec::new();
        while let Some(UserId(id)) = seq.next_element::<UserId<'de>>()? {
            if let Loose::Str(id) = id {
                ids.push(id);
            }
        }
        Ok(UserIds(ids))
    }

    otherwise!('de, UserIds::default(); scalars str map);
}

impl<'de: 'a, 'a> Deserialize<'de> for UserIds<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UserIdsVisitor)
    }
}

/// The `userId` of one element of `users`.
struct UserId<'a>(Loose<'a>);

struct UserIdVisitor;

impl<'de> Visitor<'de> for UserIdVisitor {
    type Value = UserId<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a user object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut id = Loose::Absent;
        while let Some(k) = map.next_key::<Loose<'de>>()? {
            if k.as_str() == Some("userId") {
                id = map.next_value()?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(UserId(id))
    }

    otherwise!('de, UserId(Loose::Other); scalars str seq);
}

impl<'de: 'a, 'a> Deserialize<'de> for UserId<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UserIdVisitor)
    }
}

/// A session response (`POST /api/v{3,4,5}/sessions`) or a token check
/// (`GET /api/v3/sessions`, which carries only `lastCachePurge`). `files`, `roles` and the
/// rest are skipped without being built.
#[derive(Default, Deserialize)]
pub struct SessionAnswer<'a> {
    #[serde(rename = "accessToken", borrow, default)]
    pub access_token: Loose<'a>,
    #[serde(rename = "expiresAt", borrow, default)]
    pub expires_at: Loose<'a>,
    #[serde(rename = "lastCachePurge", borrow, default)]
    pub last_cache_purge: Loose<'a>,
    #[serde(borrow, default)]
    pub users: UserIds<'a>,
}

/// A user lookup answer (`{"users":[…],"files":[…]}`): the users it contains.
#[derive(Default, Deserialize)]
pub struct UsersAnswer<'a> {
    #[serde(borrow, default)]
    pub users: UserIds<'a>,
}

/// `body` as a JSON object of type `T`; `None` when it is not an object (derived structs
/// would also read an array positionally).
fn read_object<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Option<T> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    serde_json::from_slice(body).ok()
}

impl<'a> SessionAnswer<'a> {
    /// The view of `body`; `None` when it is not a JSON object.
    pub fn read(body: &'a [u8]) -> Option<Self> {
        read_object(body)
    }
}

impl<'a> UsersAnswer<'a> {
    /// The view of `body`; `None` when it is not a JSON object.
    pub fn read(body: &'a [u8]) -> Option<Self> {
        read_object(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_answer_yields_token_dates_and_users() {
        let body = br#"{"accessToken":"a.b.c","refreshToken":"r","issuedAt":"2024-01-01T00:00:00.000Z",
            "expiresAt":"2024-01-31T00:00:00.000Z","users":[{"_id":"x","userId":"u\u00fc","roles":[]}],
            "roles":[{"roleId":"member"}],"files":[{"fileId":"f"}],"lastCachePurge":"2023-11-07T05:31:56Z"}"#;
        let v = SessionAnswer::read(body).unwrap();
        assert_eq!(v.access_token.as_str(), Some("a.b.c"));
        assert_eq!(v.expires_at.as_str(), Some("2024-01-31T00:00:00.000Z"));
        assert_eq!(v.last_cache_purge.as_str(), Some("2023-11-07T05:31:56Z"));
        assert_eq!(v.users.0, vec!["uü"]);
        assert!(
            matches!(v.users.0[0], Cow::Owned(_)),
            "escaped text is unescaped"
        );
    }

    #[test]
    fn odd_fields_are_absent_not_fatal() {
        let body = br#"{"accessToken":7,"lastCachePurge":{"at":1},"expiresAt":null,
            "users":[1,"x",[2],{"userId":3},{"userId":"ok"},null]}"#;
        let v = SessionAnswer::read(body).unwrap();
        assert!(v.access_token.as_str().is_none() && !v.access_token.is_absent());
        assert!(v.last_cache_purge.as_str().is_none() && !v.last_cache_purge.is_absent());
        assert!(v.expires_at.as_str().is_none());
        assert_eq!(v.users.0, vec!["ok"]);
        let v = SessionAnswer::read(br#"{"users":{"userId":"no"}}"#).unwrap();
        assert!(v.users.0.is_empty());
        assert!(v.last_cache_purge.is_absent());
        assert!(SessionAnswer::read(b"[1]").is_none());
        assert!(SessionAnswer::read(b"{").is_none());
        assert!(SessionAnswer::read(b"").is_none());
    }

    #[test]
    fn a_lookup_answer_yields_its_users() {
        let v =
            UsersAnswer::read(br#"{"users":[{"userId":"a"},{"userId":"b"}],"files":[]}"#).unwrap();
        assert_eq!(v.users.0, vec!["a", "b"]);
        assert!(UsersAnswer::read(br#"{"fileId":"f"}"#)
            .unwrap()
            .users
            .0
            .is_empty());
    }
}
