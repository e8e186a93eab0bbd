//! Session request bodies (`POST /api/v3|v4|v5/sessions`): parsed once, checked against the
//! contract of each API version.
//!
//! [`validate`] reads the body exactly once with a hand-written serde visitor over
//! `serde_json::Deserializer`: known fields are borrowed from the body where they contain no
//! escapes, unknown fields are skipped without building values, and only `userId` / `deviceId`
//! survive as [`SessionFacts`] for the later layers (the rate limiter keys on `deviceId`). The
//! original bytes are what gets forwarded; nothing here re-serialises the body.
//!
//! Two kinds of failure, mirroring the error table of DESIGN.md:
//!
//! * [`ApiError::BadRequest`] (400) when the body is not a JSON object the gateway can safely read:
//!   empty, invalid UTF-8 (anywhere, also inside unknown fields), malformed JSON, trailing
//!   characters, a non-object top level, nesting deeper than [`MAX_DEPTH`], or a duplicated
//!   known key (a parser differential: the upstream's `JSON.parse` keeps the last value, so the
//!   gateway would validate one value and forward another).
//! * [`ApiError::Invalid`] (422) with every contract violation at once, in a stable order (the
//!   order of the rule table, not the order of the document).
//!
//! `null` counts as a wrong type wherever a string or object is expected, optional fields
//! included (`"displayName": null` is `must be a string`). Unknown fields, and duplicates of
//! unknown keys, pass through untouched; `profileHandle` is known only to v4.
//!
//! Lengths are counted the way the upstream's JavaScript runtime counts them: UTF-16 code units
//! ([`js_len`]), so `😀` counts 2 and `e` + U+0301 (combining acute) counts 2.
//!
//! Details are fixed strings chosen here; a field's value is never echoed (`authToken` is a
//! secret, and user ids are personal data).

mod parse;
#[cfg(test)]
mod tests;

use crate::error::{ApiError, Violation};
use parse::{DeviceInfo, Parsed, Val};

/// Deepest nesting of arrays/objects accepted anywhere in a body (the top-level object counts 1).
/// The same bound serde_json applies by default; checked before parsing so that skipped unknown
/// values (which serde_json ignores iteratively, without its recursion check) obey it too.
pub const MAX_DEPTH: usize = 128;

/// The session API versions the gateway serves; v4 and v5 share v3's body and add rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiVersion {
    V3,
    V4,
    V5,
}

impl ApiVersion {
    /// Every served version, oldest first.
    pub const ALL: [ApiVersion; 3] = [ApiVersion::V3, ApiVersion::V4, ApiVersion::V5];

    /// The path segment of this version: `"v3"`, `"v4"` or `"v5"`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V3 => "v3",
            ApiVersion::V4 => "v4",
            ApiVersion::V5 => "v5",
        }
    }

    /// The version named by a path segment (`"v3"`, `"v4"`, `"v5"`), if served.
    #[must_use]
    pub fn from_segment(segment: &str) -> Option<Self> {
        match segment {
            "v3" => Some(ApiVersion::V3),
            "v4" => Some(ApiVersion::V4),
            "v5" => Some(ApiVersion::V5),
            _ => None,
        }
    }
}

impl std::fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which contract a body is checked against: a session of one API version, or a visitor
/// session (`POST /api/v5/sessions/visitor`: `deviceId` required, `deviceInfo` as for sessions,
/// `authSignature` and `authSignatureExpiresAt` strings when present; no `userId`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Schema {
    Session(ApiVersion),
    Visitor,
}

impl From<ApiVersion> for Schema {
    fn from(v: ApiVersion) -> Self {
        Schema::Session(v)
    }
}

/// Network-level options that change the rules.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rules {
    /// The network is configured **secure**: `authToken` is required.
    pub secure: bool,
}

/// What later layers need from a valid body (goes into request extensions; the rate limiter keys
/// on `device_id`). A visitor session names no user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFacts {
    pub user_id: Option<Box<str>>,
    pub device_id: Box<str>,
}

/// Length as the upstream's JavaScript runtime counts it (UTF-16 code units).
///
/// Computed from the UTF-8 bytes without decoding: every byte that is not a continuation byte
/// starts one code point (one unit), and every 4-byte lead byte (`0xF0..`) starts an astral code
/// point, which takes a surrogate pair (one more unit).
#[must_use]
pub fn js_len(s: &str) -> usize {
    s.bytes()
        .map(|b| usize::from(b & 0xC0 != 0x80) + usize::from(b >= 0xF0))
        .sum()
}

// JSON pointers of the checked fields.
const USER_ID: &str = "/userId";
const DEVICE_ID: &str = "/deviceId";
const DEVICE_INFO: &str = "/deviceInfo";
const KIND: &str = "/deviceInfo/kind";
const MODEL: &str = "/deviceInfo/model";
const SDK_VERSION: &str = "/deviceInfo/sdkVersion";
const DISPLAY_NAME: &str = "/displayName";
const AUTH_TOKEN: &str = "/authToken";
const PROFILE_HANDLE: &str = "/profileHandle";
const AUTH_SIGNATURE: &str = "/authSignature";
const AUTH_SIGNATURE_EXPIRES_AT: &str = "/authSignatureExpiresAt";

// Details (fixed strings: a value is never echoed).
const REQUIRED: &str = "is required";
const NOT_STRING: &str = "must be a string";
const NOT_OBJECT: &str = "must be an object";
const BAD_KIND: &str = "must be one of ios, android, web, node";
const RESERVED_PREFIX: &str = "must not start with ADMIN_ or DELETED_";

/// `deviceInfo.kind` values the upstream accepts.
const KINDS: [&str; 4] = ["ios", "android", "web", "node"];
/// `userId` prefixes reserved by v5.
const V5_RESERVED_PREFIXES: [&str; 2] = ["ADMIN_", "DELETED_"];

/// Parses `body` once and checks every rule; Err is ApiError::BadRequest(detail) for
/// malformed JSON / invalid UTF-8 / non-object top level / empty body / too deep nesting /
/// duplicate keys, and ApiError::Invalid(all violations, in a stable order) for contract
/// violations.
///
/// # Errors
///
/// [`ApiError::BadRequest`] when the body cannot be read as one JSON object (see the module
/// docs), [`ApiError::Invalid`] with every violated rule otherwise.
pub fn validate(
    schema: impl Into<Schema>,
    body: &[u8],
    rules: &Rules,
) -> Result<SessionFacts, ApiError> {
    let schema = schema.into();
    let parsed = parse::parse(schema, body)?;
    check(schema, rules, &parsed)
}

/// Applies the rule table to a parsed body. Violations are pushed in table order.
fn check(schema: Schema, rules: &Rules, p: &Parsed<'_>) -> Result<SessionFacts, ApiError> {
    let mut out = Vec::new();

    // Visitors name no user: the parser leaves `userId` (and the other session-only fields)
    // unset, passed through.
    let user_id = match schema {
        Schema::Visitor => None,
        Schema::Session(version) => {
            let user_id = string_field(p.user_id.as_ref(), USER_ID, true, &mut out);
            if let Some(s) = user_id {
                length(s, 1, 50, USER_ID, "length must be 1 to 50", &mut out);
                if version == ApiVersion::V5
                    && V5_RESERVED_PREFIXES.iter().any(|pre| s.starts_with(pre))
                {
                    out.push(Violation::new(USER_ID, RESERVED_PREFIX));
                }
            }
            Some(user_id)
        }
    };

    let device_id = string_field(p.device_id.as_ref(), DEVICE_ID, true, &mut out);
    if let Some(s) = device_id {
        length(s, 1, 150, DEVICE_ID, "length must be 1 to 150", &mut out);
    }

    match &p.device_info {
        None => {}
        Some(DeviceInfo::NotObject) => out.push(Violation::new(DEVICE_INFO, NOT_OBJECT)),
        Some(DeviceInfo::Object {
            kind,
            model,
            sdk_version,
        }) => {
            if let Some(s) = string_field(kind.as_ref(), KIND, false, &mut out) {
                if !KINDS.contains(&s) {
                    out.push(Violation::new(KIND, BAD_KIND));
                }
            }
            if let Some(s) = string_field(model.as_ref(), MODEL, false, &mut out) {
                length(s, 0, 100, MODEL, "length must be at most 100", &mut out);
            }
            if let Some(s) = string_field(sdk_version.as_ref(), SDK_VERSION, false, &mut out) {
                length(s, 0, 30, SDK_VERSION, "length must be at most 30", &mut out);
            }
        }
    }

    if let Some(s) = string_field(p.display_name.as_ref(), DISPLAY_NAME, false, &mut out) {
        length(
            s,
            0,
            100,
            DISPLAY_NAME,
            "length must be at most 100",
            &mut out,
        );
    }

    if let Some(s) = string_field(p.auth_token.as_ref(), AUTH_TOKEN, rules.secure, &mut out) {
        length(s, 1, 100, AUTH_TOKEN, "length must be 1 to 100", &mut out);
    }

    // Only v4 knows profileHandle; the parser leaves it unset (passed through) elsewhere.
    if let Some(s) = string_field(p.profile_handle.as_ref(), PROFILE_HANDLE, false, &mut out) {
        length(
            s,
            0,
            100,
            PROFILE_HANDLE,
            "length must be at most 100",
            &mut out,
        );
    }

    // Visitor only; the parser leaves them unset elsewhere.
    string_field(p.auth_signature.as_ref(), AUTH_SIGNATURE, false, &mut out);
    string_field(
        p.auth_signature_expires_at.as_ref(),
        AUTH_SIGNATURE_EXPIRES_AT,
        false,
        &mut out,
    );

    match (user_id, device_id) {
        (Some(Some(user_id)), Some(device_id)) if out.is_empty() => Ok(SessionFacts {
            user_id: Some(Box::from(user_id)),
            device_id: Box::from(device_id),
        }),
        (None, Some(device_id)) if out.is_empty() => Ok(SessionFacts {
            user_id: None,
            device_id: Box::from(device_id),
        }),
        _ => Err(ApiError::Invalid(out)),
    }
}

/// The field as a string, or `None` after recording why not (absent and required, or not a
/// string: `null`, number, boolean, array, object). Absent and optional is `None` silently.
fn string_field<'a>(
    value: Option<&'a Val<'_>>,
    pointer: &'static str,
    required: bool,
    out: &mut Vec<Violation>,
) -> Option<&'a str> {
    match value {
        Some(Val::Str(s)) => Some(s),
        Some(Val::NotStr) => {
            out.push(Violation::new(pointer, NOT_STRING));
            None
        }
        None => {
            if required {
                out.push(Violation::new(pointer, REQUIRED));
            }
            None
        }
    }
}

/// Records `detail` unless `min <= js_len(s) <= max`.
fn length(
    s: &str,
    min: usize,
    max: usize,
    pointer: &'static str,
    detail: &'static str,
    out: &mut Vec<Violation>,
) {
    // UTF-16 units never exceed UTF-8 bytes, so short strings need no counting.
    let too_long = s.len() > max && js_len(s) > max;
    // A non-empty string has at least one unit, so `min <= 1` needs no counting either.
    let too_short = if min <= 1 {
        s.len() < min
    } else {
        js_len(s) < min
    };
    if too_long || too_short {
        out.push(Violation::new(pointer, detail));
    }
}
