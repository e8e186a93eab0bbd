//! The single parse of a session body: a serde visitor that picks out the known fields and skips
//! everything else.
//!
//! Guards that serde_json alone would not give, and why they run before the parse:
//!
//! * UTF-8 is checked over the whole body: serde_json skips an ignored string without validating
//!   it, and unknown fields are forwarded to the upstream as they are. The checked `&str` then
//!   feeds `Deserializer::from_str`, which does not validate a second time.
//! * Nesting depth is checked over the whole body: serde_json skips ignored values iteratively,
//!   without its recursion limit. With the depth bounded up front, skipping stays cheap and can
//!   neither overflow the stack nor accept a body the rest of the stack would choke on.
//!
//! Every known field is read through a visitor that accepts any JSON type, so a wrong type is a
//! violation for the rule layer, not an abort of the parse. The only aborts raised here are
//! duplicate known keys; their detail travels in a side channel (`abort`) so that no serde error
//! text (which could quote input) ever reaches the client.

use std::borrow::Cow;
use std::fmt;

use serde::de::{
    self, DeserializeSeed, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor,
};
use serde_json::error::Category;

use super::{ApiVersion, MAX_DEPTH};
use crate::error::ApiError;

/// A known field's value: the string (borrowed from the body unless it had escapes), or the fact
/// that it was something else (`null`, number, boolean, array, object).
#[derive(Debug)]
pub(super) enum Val<'de> {
    Str(Cow<'de, str>),
    NotStr,
}

/// The `deviceInfo` member.
#[derive(Debug)]
pub(super) enum DeviceInfo<'de> {
    Object {
        kind: Option<Val<'de>>,
        model: Option<Val<'de>>,
        sdk_version: Option<Val<'de>>,
    },
    NotObject,
}

/// The known top-level members of a body; `None` means absent. No `Debug`: it holds the
/// client's `authToken`.
#[derive(Default)]
pub(super) struct Parsed<'de> {
    pub user_id: Option<Val<'de>>,
    pub device_id: Option<Val<'de>>,
    pub device_info: Option<DeviceInfo<'de>>,
    pub display_name: Option<Val<'de>>,
    pub auth_token: Option<Val<'de>>,
    /// Set only for v4; elsewhere `profileHandle` is an unknown field and passes through.
    pub profile_handle: Option<Val<'de>>,
}

fn bad(detail: &'static str) -> ApiError {
    ApiError::BadRequest(Cow::Borrowed(detail))
}

fn is_json_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Parses `body` into the known fields, or says why it cannot be read at all.
pub(super) fn parse(version: ApiVersion, body: &[u8]) -> Result<Parsed<'_>, ApiError> {
    let Some(&first) = body.iter().find(|b| !is_json_ws(**b)) else {
        return Err(bad("body is empty"));
    };
    let text = std::str::from_utf8(body).map_err(|_| bad("body is not valid UTF-8"))?;
    if first != b'{' {
        return Err(bad("body must be a JSON object"));
    }
    if nests_deeper_than(body, MAX_DEPTH) {
        return Err(bad("body nests arrays/objects deeper than 128 levels"));
    }

    let mut abort = None;
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = (&mut de)
        .deserialize_map(TopVisitor {
            version,
            abort: &mut abort,
        })
        .and_then(|parsed| de.end().map(|()| parsed));
    parsed.map_err(|err| match abort {
        Some(detail) => bad(detail),
        None => match err.classify() {
            // serde_json's syntax messages are fixed texts plus a position, never input.
            Category::Syntax | Category::Eof => {
                ApiError::BadRequest(format!("malformed JSON: {err}").into())
            }
            Category::Data | Category::Io => bad("malformed JSON"),
        },
    })
}

/// Whether arrays/objects nest deeper than `limit` anywhere in `body` (brackets inside strings do
/// not count). Exact for valid JSON; for invalid JSON the parse fails anyway.
fn nests_deeper_than(body: &[u8], limit: usize) -> bool {
    // Fast path: fewer opening brackets than the limit cannot nest deeper than it; typical
    // bodies never get past this line.
    if opening_brackets(body) <= limit {
        return false;
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// How many `[` and `{` bytes `body` holds, strings included (an upper bound of the depth).
///
/// `[` (0x5B) and `{` (0x7B) differ only in bit 0x20, so one compare finds both; a `u8` counter
/// per 128-byte chunk lets the loop vectorise (about 5x faster than `filter().count()`).
fn opening_brackets(body: &[u8]) -> usize {
    body.chunks(128)
        .map(|chunk| {
            usize::from(
                chunk
                    .iter()
                    .fold(0u8, |n, &b| n + u8::from(b | 0x20 == b'{')),
            )
        })
        .sum()
}

/// The raw error that stops the parse after `abort` was filled in; its text is never shown.
fn aborted<E: de::Error>(abort: &mut Option<&'static str>, detail: &'static str) -> E {
    *abort = Some(detail);
    E::custom("aborted")
}

// ---------------------------------------------------------------------------------------------
// Top level

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopKey {
    UserId,
    DeviceId,
    DeviceInfo,
    DisplayName,
    AuthToken,
    ProfileHandle,
    Unknown,
}

impl TopKey {
    fn bit(self) -> u8 {
        1 << self as u8
    }

    fn duplicate(self) -> &'static str {
        match self {
            TopKey::UserId => "duplicate key /userId",
            TopKey::DeviceId => "duplicate key /deviceId",
            TopKey::DeviceInfo => "duplicate key /deviceInfo",
            TopKey::DisplayName => "duplicate key /displayName",
            TopKey::AuthToken => "duplicate key /authToken",
            TopKey::ProfileHandle => "duplicate key /profileHandle",
            TopKey::Unknown => "duplicate key",
        }
    }
}

/// Reads a top-level key (escapes already decoded by serde_json, so `"user\u0049d"` is `userId`).
struct TopKeySeed(ApiVersion);

impl<'de> DeserializeSeed<'de> for TopKeySeed {
    type Value = TopKey;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<TopKey, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for TopKeySeed {
    type Value = TopKey;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<TopKey, E> {
        Ok(match key {
            "userId" => TopKey::UserId,
            "deviceId" => TopKey::DeviceId,
            "deviceInfo" => TopKey::DeviceInfo,
            "displayName" => TopKey::DisplayName,
            "authToken" => TopKey::AuthToken,
            "profileHandle" if self.0 == ApiVersion::V4 => TopKey::ProfileHandle,
            _ => TopKey::Unknown,
        })
    }
}

struct TopVisitor<'a> {
    version: ApiVersion,
    abort: &'a mut Option<&'static str>,
}

impl<'de> Visitor<'de> for TopVisitor<'_> {
    type Value = Parsed<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parsed<'de>, A::Error> {
        let mut parsed = Parsed::default();
        let mut seen = 0u8;
        while let Some(key) = map.next_key_seed(TopKeySeed(self.version))? {
            if key == TopKey::Unknown {
                // Passed through untouched; duplicates of unknown keys are the upstream's business.
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            if seen & key.bit() != 0 {
                return Err(aborted(self.abort, key.duplicate()));
            }
            seen |= key.bit();
            match key {
                TopKey::UserId => parsed.user_id = Some(map.next_value()?),
                TopKey::DeviceId => parsed.device_id = Some(map.next_value()?),
                TopKey::DeviceInfo => {
                    parsed.device_info = Some(map.next_value_seed(DeviceInfoSeed {
                        abort: &mut *self.abort,
                    })?);
                }
                TopKey::DisplayName => parsed.display_name = Some(map.next_value()?),
                TopKey::AuthToken => parsed.auth_token = Some(map.next_value()?),
                TopKey::ProfileHandle => parsed.profile_handle = Some(map.next_value()?),
                TopKey::Unknown => {}
            }
        }
        Ok(parsed)
    }
}

// ---------------------------------------------------------------------------------------------
// deviceInfo

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InfoKey {
    Kind,
    Model,
    SdkVersion,
    Unknown,
}

impl InfoKey {
    fn bit(self) -> u8 {
        1 << self as u8
    }

    fn duplicate(self) -> &'static str {
        match self {
            InfoKey::Kind => "duplicate key /deviceInfo/kind",
            InfoKey::Model => "duplicate key /deviceInfo/model",
            InfoKey::SdkVersion => "duplicate key /deviceInfo/sdkVersion",
            InfoKey::Unknown => "duplicate key",
        }
    }
}

struct InfoKeySeed;

impl<'de> DeserializeSeed<'de> for InfoKeySeed {
    type Value = InfoKey;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<InfoKey, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for InfoKeySeed {
    type Value = InfoKey;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<InfoKey, E> {
        Ok(match key {
            "kind" => InfoKey::Kind,
            "model" => InfoKey::Model,
            "sdkVersion" => InfoKey::SdkVersion,
            _ => InfoKey::Unknown,
        })
    }
}

/// Reads `deviceInfo`, whatever its JSON type.
struct DeviceInfoSeed<'a> {
    abort: &'a mut Option<&'static str>,
}

impl<'de> DeserializeSeed<'de> for DeviceInfoSeed<'_> {
    type Value = DeviceInfo<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<DeviceInfo<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DeviceInfoSeed<'_> {
    type Value = DeviceInfo<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DeviceInfo<'de>, A::Error> {
        let (mut kind, mut model, mut sdk_version) = (None, None, None);
        let mut seen = 0u8;
        while let Some(key) = map.next_key_seed(InfoKeySeed)? {
            if key == InfoKey::Unknown {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            if seen & key.bit() != 0 {
                return Err(aborted(self.abort, key.duplicate()));
            }
            seen |= key.bit();
            let value = Some(map.next_value()?);
            match key {
                InfoKey::Kind => kind = value,
                InfoKey::Model => model = value,
                InfoKey::SdkVersion => sdk_version = value,
                InfoKey::Unknown => {}
            }
        }
        Ok(DeviceInfo::Object {
            kind,
            model,
            sdk_version,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<DeviceInfo<'de>, A::Error> {
        skip_seq(seq).map(|()| DeviceInfo::NotObject)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<DeviceInfo<'de>, E> {
        Ok(DeviceInfo::NotObject)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<DeviceInfo<'de>, E> {
        Ok(DeviceInfo::NotObject)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<DeviceInfo<'de>, E> {
        Ok(DeviceInfo::NotObject)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<DeviceInfo<'de>, E> {
        Ok(DeviceInfo::NotObject)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<DeviceInfo<'de>, E> {
        Ok(DeviceInfo::NotObject)
    }

    fn visit_unit<E: de::Error>(self) -> Result<DeviceInfo<'de>, E> {
        Ok(DeviceInfo::NotObject)
    }

    fn visit_none<E: de::Error>(self) -> Result<DeviceInfo<'de>, E> {
        Ok(DeviceInfo::NotObject)
    }
}

// ---------------------------------------------------------------------------------------------
// String-typed fields

impl<'de> de::Deserialize<'de> for Val<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValVisitor)
    }
}

/// Accepts every JSON type: a string is kept, anything else is consumed and reported as such.
struct ValVisitor;

impl<'de> Visitor<'de> for ValVisitor {
    type Value = Val<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(v)))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Val<'de>, E> {
        Ok(Val::NotStr)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Val<'de>, E> {
        Ok(Val::NotStr)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Val<'de>, E> {
        Ok(Val::NotStr)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Val<'de>, E> {
        Ok(Val::NotStr)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Val<'de>, E> {
        Ok(Val::NotStr)
    }

    fn visit_none<E: de::Error>(self) -> Result<Val<'de>, E> {
        Ok(Val::NotStr)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Val<'de>, A::Error> {
        skip_seq(seq).map(|()| Val::NotStr)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Val<'de>, A::Error> {
        skip_map(map).map(|()| Val::NotStr)
    }
}

/// Consumes the rest of an array (depth already bounded by [`nests_deeper_than`]).
fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Consumes the rest of an object (depth already bounded by [`nests_deeper_than`]).
fn skip_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectorised count finds exactly `[` and `{`, across chunk boundaries.
    #[test]
    fn opening_brackets_counts_exactly_square_and_curly() {
        assert_eq!(opening_brackets(b""), 0);
        assert_eq!(opening_brackets(b"[{]};:\x5b\x7b\x3b\x1b\xdb\xfb"), 4);
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(opening_brackets(&all), 2);
        assert_eq!(opening_brackets(&b"[{".repeat(1_000)), 2_000);
        assert_eq!(opening_brackets(&b"a{".repeat(129)), 129);
    }

    #[test]
    fn depth_scan_ignores_strings_and_escapes() {
        let deep = format!("{}{}", "[".repeat(129), "]".repeat(129));
        assert!(nests_deeper_than(deep.as_bytes(), 128));
        let quoted = format!(r#"["\"{}"]"#, "[".repeat(200));
        assert!(!nests_deeper_than(quoted.as_bytes(), 128));
        let after_escaped_backslash = format!(r#"["\\",{}1{}]"#, "[".repeat(128), "]".repeat(128));
        assert!(nests_deeper_than(after_escaped_backslash.as_bytes(), 128));
    }
}
