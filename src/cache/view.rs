//! Borrowed, lenient views of the upstream answers the cache learns from, each read in one
//! pass over the bytes the client receives unchanged.
//!
//! Lenient: a field of an unexpected type is treated as absent (and a date that is not a date
//! is counted by the caller) instead of failing the whole view, so one odd field never costs
//! the gateway the rest of what an answer teaches. Nothing here implements `Debug`: the views
//! hold bearer tokens.

use std::borrow::Cow;

use super::scan::{self, Scanner};

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

impl<'a> Loose<'a> {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Loose::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn is_absent(&self) -> bool {
        matches!(self, Loose::Absent)
    }

    fn scan(s: &mut Scanner<'a>) -> scan::Result<Self> {
        Ok(s.take_str()?.map_or(Loose::Other, Loose::Str))
    }
}

/// The `userId`s of a `users` array; anything that is not an array contributes nothing, and
/// neither does an element that is not an object with a string `userId` (its last `userId`
/// when it repeats one: a repeated user id can only make the gateway forget more).
#[derive(Default)]
pub struct UserIds<'a>(pub Vec<Cow<'a, str>>);

impl<'a> UserIds<'a> {
    fn scan(s: &mut Scanner<'a>) -> scan::Result<Self> {
        let mut ids = Vec::new();
        s.array(|s| {
            let mut id = None;
            s.object(|s, key| {
                if key.is("userId") {
                    id = s.take_str()?;
                    Ok(())
                } else {
                    s.skip()
                }
            })?;
            ids.extend(id);
            Ok(())
        })?;
        Ok(UserIds(ids))
    }
}

/// A session response (`POST /api/v{3,4,5}/sessions`) or a token check
/// (`GET /api/v3/sessions`, which carries only `lastCachePurge`). `files`, `roles` and the
/// rest are skipped without being built. An answer that repeats one of the fields read is not
/// read at all: JSON parsers disagree on which occurrence counts, so the gateway must not
/// trust a token the client may not have taken.
#[derive(Default)]
pub struct SessionAnswer<'a> {
    pub access_token: Loose<'a>,
    /// When the upstream issued the token: the order in which it retires a device's tokens.
    pub issued_at: Loose<'a>,
    pub expires_at: Loose<'a>,
    pub last_cache_purge: Loose<'a>,
    pub users: UserIds<'a>,
}

/// A user lookup answer (`{"users":[…],"files":[…]}`): the users it contains.
#[derive(Default)]
pub struct UsersAnswer<'a> {
    pub users: UserIds<'a>,
}

/// Which of a view's fields were met: meeting one twice makes the answer [`scan::Malformed`].
#[derive(Default)]
struct Once(u8);

impl Once {
    fn first(&mut self, field: u8) -> scan::Result<()> {
        let bit = 1 << field;
        if self.0 & bit != 0 {
            return Err(scan::Malformed);
        }
        self.0 |= bit;
        Ok(())
    }
}

impl<'a> SessionAnswer<'a> {
    /// The view of `body`; `None` when it is not a JSON object, or repeats a field read here.
    pub fn read(body: &'a [u8]) -> Option<Self> {
        let mut v = SessionAnswer::default();
        let mut seen = Once::default();
        Scanner::document(body, |s, key| {
            if key.is("accessToken") {
                seen.first(0)?;
                v.access_token = Loose::scan(s)?;
            } else if key.is("expiresAt") {
                seen.first(1)?;
                v.expires_at = Loose::scan(s)?;
            } else if key.is("lastCachePurge") {
                seen.first(2)?;
                v.last_cache_purge = Loose::scan(s)?;
            } else if key.is("users") {
                seen.first(3)?;
                v.users = UserIds::scan(s)?;
            } else if key.is("issuedAt") {
                seen.first(4)?;
                v.issued_at = Loose::scan(s)?;
            } else {
                s.skip()?;
            }
            Ok(())
        })
        .ok()?;
        Some(v)
    }
}

impl<'a> UsersAnswer<'a> {
    /// The view of `body`; `None` when it is not a JSON object, or repeats a field read here.
    pub fn read(body: &'a [u8]) -> Option<Self> {
        let mut v = UsersAnswer::default();
        let mut seen = Once::default();
        Scanner::document(body, |s, key| {
            if key.is("users") {
                seen.first(0)?;
                v.users = UserIds::scan(s)?;
                Ok(())
            } else {
                s.skip()
            }
        })
        .ok()?;
        Some(v)
    }
}

/// A file lookup answer, in any of the shapes the upstream is known to send: the bare File
/// object, `{"data": File}` or `{"files": [File]}`. Which files it describes, and whether every
/// one of them is `accessType: "public"` (the only mark that says any member may see it).
#[derive(Default)]
pub struct FileAnswer<'a> {
    pub file_ids: Vec<Cow<'a, str>>,
    pub all_public: bool,
}

impl<'a> FileAnswer<'a> {
    /// The view of `body`; `None` when it is not a JSON object, or repeats a field read here.
    pub fn read(body: &'a [u8]) -> Option<Self> {
        let mut v = FileAnswer {
            file_ids: Vec::new(),
            all_public: true,
        };
        let mut top = FileFields::default();
        let mut seen = Once::default();
        Scanner::document(body, |s, key| {
            if key.is("data") {
                seen.first(2)?;
                v.take(s)
            } else if key.is("files") {
                seen.first(3)?;
                s.array(|s| v.take(s)).map(drop)
            } else {
                top.field(s, &key, &mut seen)
            }
        })
        .ok()?;
        if let Some(id) = top.id {
            v.file_ids.push(id);
            v.all_public &= top.public;
        }
        Some(v)
    }

    /// One File object at the cursor.
    fn take(&mut self, s: &mut Scanner<'a>) -> scan::Result<()> {
        let mut f = FileFields::default();
        let mut seen = Once::default();
        s.object(|s, key| f.field(s, &key, &mut seen))?;
        if let Some(id) = f.id {
            self.file_ids.push(id);
            self.all_public &= f.public;
        }
        Ok(())
    }
}

/// The two fields of a File object the cache reads.
#[derive(Default)]
struct FileFields<'a> {
    id: Option<Cow<'a, str>>,
    public: bool,
}

impl<'a> FileFields<'a> {
    fn field(
        &mut self,
        s: &mut Scanner<'a>,
        key: &scan::Key<'a>,
        seen: &mut Once,
    ) -> scan::Result<()> {
        if key.is("fileId") {
            seen.first(0)?;
            self.id = s.take_str()?;
        } else if key.is("accessType") {
            seen.first(1)?;
            self.public = s.take_str()?.is_some_and(|t| t == "public");
        } else {
            s.skip()?;
        }
        Ok(())
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
    fn an_answer_repeating_a_field_it_reads_is_not_read() {
        for field in ["accessToken", "expiresAt", "lastCachePurge", "users"] {
            let body = format!(r#"{{"{field}":"a","x":1,"{field}":"b"}}"#);
            assert!(SessionAnswer::read(body.as_bytes()).is_none(), "{field}");
            // Written with an escape, the key is the same key.
            let escaped = format!(r"\u{:04x}{}", field.as_bytes()[0], &field[1..]);
            let body = format!(r#"{{"{field}":"a","{escaped}":"b"}}"#);
            assert!(SessionAnswer::read(body.as_bytes()).is_none(), "{body}");
        }
        assert!(UsersAnswer::read(br#"{"users":[],"users":[{"userId":"u"}]}"#).is_none());
        // Repeats elsewhere are the answer's own business.
        let v = SessionAnswer::read(
            br#"{"accessToken":"t","refreshToken":1,"refreshToken":2,"users":[{"userId":"a","userId":"b"}]}"#,
        )
        .unwrap();
        assert_eq!(v.access_token.as_str(), Some("t"));
        assert_eq!(v.users.0, vec!["b"]);
    }

    /// What the view must read, as serde_json reads it: a derived struct refuses a repeated
    /// field and keys that are not text, as the view does. A field is `None` only when absent:
    /// `null` is present (the view reads it as `Loose::Other`), which a plain `Option` would
    /// read as absent.
    #[derive(serde::Deserialize)]
    struct Oracle {
        #[serde(rename = "accessToken", default, deserialize_with = "present")]
        access_token: Option<serde_json::Value>,
        #[serde(rename = "issuedAt", default, deserialize_with = "present")]
        issued_at: Option<serde_json::Value>,
        #[serde(rename = "expiresAt", default, deserialize_with = "present")]
        expires_at: Option<serde_json::Value>,
        #[serde(rename = "lastCachePurge", default, deserialize_with = "present")]
        last_cache_purge: Option<serde_json::Value>,
        #[serde(default, deserialize_with = "present")]
        users: Option<serde_json::Value>,
    }

    fn present<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<serde_json::Value>, D::Error> {
        serde::Deserialize::deserialize(d).map(Some)
    }

    #[test]
    fn a_null_field_is_present_and_not_a_string() {
        let v = SessionAnswer::read(br#"{"accessToken":"t","expiresAt":null}"#).unwrap();
        assert_eq!(loose(&v.expires_at), Some(None));
        let o: Oracle = serde_json::from_slice(br#"{"accessToken":"t","expiresAt":null}"#).unwrap();
        assert_eq!(field(&o.expires_at), Some(None));
    }

    fn field(v: &Option<serde_json::Value>) -> Option<Option<String>> {
        v.as_ref().map(|f| f.as_str().map(str::to_owned))
    }

    fn loose(l: &Loose<'_>) -> Option<Option<String>> {
        match l {
            Loose::Absent => None,
            Loose::Str(s) => Some(Some(s.to_string())),
            Loose::Other => Some(None),
        }
    }

    /// The view agrees with serde_json on thousands of damaged answers: `None` wherever
    /// serde_json finds no JSON object (its `IgnoredAny` pass, which, like the view, checks
    /// skipped strings for form only), and wherever serde_json reads the fields (as values,
    /// checked whole) the same token, dates and users.
    #[test]
    fn damaged_answers_read_as_serde_json_reads_them() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let seeds: [&[u8]; 4] = [
            br#"{"accessToken":"eyJ.a\u00e9.c","refreshToken":"r","issuedAt":"2024-01-01T00:00:00.000Z",
                "expiresAt":"2024-01-31T00:00:00.000Z","users":[{"_id":"x","userId":"u\\u00fc",
                "metadata":{"n":[1,-2.5e3,true,null,{"deep":[[]]}]},"roles":[]},{"userId":"b\"q"}],
                "roles":[{"roleId":"member"}],"files":[{"fileId":"f","size":1024}],
                "lastCachePurge":"2023-11-07T05:31:56Z"}"#,
            br#"{"users":[{"userId":"a"},7,{"userId":{"x":"y"}},{"displayName":"\uD83D\uDE00"}],"files":[]}"#,
            br#"{ "lastCachePurge" : "2023-01-01T00:00:00Z" , "x" : [ 0 , 1E+2 , "\/" ] }"#,
            br#"{"accessToken":"a","expiresAt":"e","accessTokeN":"b","\u0075sers":[{"userId":"u"}],"usersX":1}"#,
        ];
        let alphabet = b"{}[]\",:0-e.tfnu\\ \x01\x1f\xc3\xa9\xff";
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let (mut agreed_ok, mut agreed_bad) = (0, 0);
        for round in 0..20_000 {
            let mut doc = seeds[round % seeds.len()].to_vec();
            for _ in 0..rng.random_range(1..=3) {
                let at = rng.random_range(0..doc.len());
                let byte = if rng.random_bool(0.7) {
                    alphabet[rng.random_range(0..alphabet.len())]
                } else {
                    rng.random()
                };
                match rng.random_range(0..4) {
                    0 => doc[at] = byte,
                    1 => doc.insert(at, byte),
                    2 => {
                        doc.remove(at);
                    }
                    _ => doc.truncate(at.max(1)),
                }
                if doc.is_empty() {
                    doc.push(b'{');
                }
            }
            let view = SessionAnswer::read(&doc);
            let is_object = doc.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
            let serde_ok =
                is_object && serde_json::from_slice::<serde::de::IgnoredAny>(&doc).is_ok();
            let shown = String::from_utf8_lossy(&doc);
            if !serde_ok {
                assert!(
                    view.is_none(),
                    "serde_json refuses, the view reads: {shown}"
                );
                agreed_bad += 1;
                continue;
            }
            let Ok(tree) = serde_json::from_slice::<Oracle>(&doc) else {
                // Valid in form, but a repeated field, a key that is not text, or a string the
                // tree decodes that is not: the view may refuse it too.
                continue;
            };
            let v = view.unwrap_or_else(|| panic!("serde_json reads, the view does not: {shown}"));
            assert_eq!(loose(&v.access_token), field(&tree.access_token), "{shown}");
            assert_eq!(loose(&v.issued_at), field(&tree.issued_at), "{shown}");
            assert_eq!(loose(&v.expires_at), field(&tree.expires_at), "{shown}");
            assert_eq!(
                loose(&v.last_cache_purge),
                field(&tree.last_cache_purge),
                "{shown}"
            );
            let users: Vec<&str> = tree
                .users
                .as_ref()
                .and_then(|u| u.as_array())
                .map(|a| a.iter().filter_map(|e| e.get("userId")?.as_str()).collect())
                .unwrap_or_default();
            assert_eq!(v.users.0, users, "{shown}");
            agreed_ok += 1;
        }
        // Both outcomes were exercised, not just one.
        assert!(
            agreed_ok > 2_000 && agreed_bad > 2_000,
            "{agreed_ok} {agreed_bad}"
        );
    }

    #[test]
    fn a_file_answer_is_read_in_every_shape_the_upstream_sends() {
        for body in [
            r#"{"fileId":"f","accessType":"public","attributes":{"name":"a"}}"#,
            r#"{"status":"ok","data":{"fileId":"f","accessType":"public"}}"#,
            r#"{"files":[{"fileId":"f","accessType":"public"}]}"#,
        ] {
            let v = FileAnswer::read(body.as_bytes()).unwrap();
            assert_eq!(v.file_ids, vec!["f"], "{body}");
            assert!(v.all_public, "{body}");
        }
        let v = FileAnswer::read(br#"{"fileId":"f","accessType":"network"}"#).unwrap();
        assert!(!v.all_public);
        let v = FileAnswer::read(br#"{"fileId":"f"}"#).unwrap();
        assert!(!v.all_public, "unmarked is not public");
        let v =
            FileAnswer::read(br#"{"files":[{"fileId":"f","accessType":"public"},{"fileId":"g"}]}"#)
                .unwrap();
        assert_eq!((v.file_ids.len(), v.all_public), (2, false));
        assert!(FileAnswer::read(br#"{"fileId":"f","fileId":"g"}"#).is_none());
        assert!(FileAnswer::read(br#"{"users":[]}"#)
            .unwrap()
            .file_ids
            .is_empty());
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
