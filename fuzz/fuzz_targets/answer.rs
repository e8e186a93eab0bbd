//! The session-answer scanner (`cache::view`, over `cache::scan`) against serde_json, as its
//! unit test `damaged_answers_read_as_serde_json_reads_them` checks it on random damage: no
//! view wherever serde_json finds no JSON object, and wherever serde_json reads the fields the
//! same token, dates and users. Lookup answers (`UsersAnswer`) likewise.
#![no_main]

use amity_gateway::cache::view::{Loose, SessionAnswer, UsersAnswer};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// What the session view must read, as serde_json reads it: a derived struct refuses a
/// repeated field and keys that are not text, as the view does. A field is `None` only when
/// absent (`null` is present, as `Loose::Other`).
#[derive(serde::Deserialize)]
struct Oracle {
    #[serde(rename = "accessToken", default, deserialize_with = "present")]
    access_token: Option<Value>,
    #[serde(rename = "issuedAt", default, deserialize_with = "present")]
    issued_at: Option<Value>,
    #[serde(rename = "expiresAt", default, deserialize_with = "present")]
    expires_at: Option<Value>,
    #[serde(rename = "lastCachePurge", default, deserialize_with = "present")]
    last_cache_purge: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    users: Option<Value>,
}

/// What the lookup view must read.
#[derive(serde::Deserialize)]
struct UsersOracle {
    #[serde(default, deserialize_with = "present")]
    users: Option<Value>,
}

/// A present field's value, `null` included (a plain `Option` reads `null` as absent).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    serde::Deserialize::deserialize(d).map(Some)
}

fn field(v: &Option<Value>) -> Option<Option<String>> {
    v.as_ref().map(|f| f.as_str().map(str::to_owned))
}

fn loose(l: &Loose<'_>) -> Option<Option<String>> {
    match l {
        Loose::Absent => None,
        Loose::Str(s) => Some(Some(s.to_string())),
        Loose::Other => Some(None),
    }
}

/// The `userId` strings of a `users` array, the last one of an element that repeats it.
fn user_ids(users: &Option<Value>) -> Vec<&str> {
    users
        .as_ref()
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|e| e.get("userId")?.as_str()).collect())
        .unwrap_or_default()
}

fuzz_target!(|doc: &[u8]| {
    let session = SessionAnswer::read(doc);
    let lookup = UsersAnswer::read(doc);
    let is_object = doc.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let serde_ok = is_object && serde_json::from_slice::<serde::de::IgnoredAny>(doc).is_ok();
    if !serde_ok {
        assert!(
            session.is_none(),
            "serde_json refuses, the session view reads"
        );
        assert!(
            lookup.is_none(),
            "serde_json refuses, the lookup view reads"
        );
        return;
    }
    // Valid in form, but a repeated field, a key that is not text, or a string the tree
    // decodes that is not: the views may refuse those too.
    if let Ok(tree) = serde_json::from_slice::<Oracle>(doc) {
        let v = session.expect("serde_json reads, the session view does not");
        assert_eq!(loose(&v.access_token), field(&tree.access_token));
        assert_eq!(loose(&v.issued_at), field(&tree.issued_at));
        assert_eq!(loose(&v.expires_at), field(&tree.expires_at));
        assert_eq!(loose(&v.last_cache_purge), field(&tree.last_cache_purge));
        assert_eq!(v.users.0, user_ids(&tree.users));
    }
    if let Ok(tree) = serde_json::from_slice::<UsersOracle>(doc) {
        let v = lookup.expect("serde_json reads, the lookup view does not");
        assert_eq!(v.users.0, user_ids(&tree.users));
    }
});
