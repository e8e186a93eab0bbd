//! Session request validation (`session::validate`, every API version, open and secure
//! networks) against an independent reading of the same body by serde_json: the outcome must
//! be the one the contract predicts from serde_json's parse (400, or 422 with exactly the
//! expected violations in table order, or the facts), and a 400's detail never quotes input.
#![no_main]

use std::borrow::Cow;
use std::fmt;

use amity_gateway::session::{validate, ApiVersion, Rules, SessionFacts, MAX_DEPTH};
use amity_gateway::ApiError;
use libfuzzer_sys::fuzz_target;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

fuzz_target!(|body: &[u8]| {
    for version in ApiVersion::ALL {
        for secure in [false, true] {
            let got = validate(version, body, &Rules { secure });
            let want = expect(version, secure, body);
            match (&got, &want) {
                (Err(ApiError::BadRequest(detail)), Expect::BadRequest) => no_echo(detail),
                (Err(ApiError::Invalid(v)), Expect::Invalid(w)) => {
                    let v: Vec<(&str, &str)> =
                        v.iter().map(|v| (&*v.pointer, &*v.detail)).collect();
                    assert_eq!(&v, w, "{version} secure={secure}");
                }
                (Ok(facts), Expect::Valid(user_id, device_id)) => {
                    assert_eq!(
                        facts,
                        &SessionFacts {
                            user_id: Some(user_id.as_str().into()),
                            device_id: device_id.as_str().into(),
                        }
                    );
                }
                _ => panic!(
                    "{version} secure={secure}: validate {got:?}, serde_json's reading {want:?}"
                ),
            }
        }
    }
});

#[derive(Debug)]
enum Expect {
    BadRequest,
    Invalid(Vec<(&'static str, &'static str)>),
    Valid(String, String),
}

/// An object's members in document order, values kept raw (checked for form only, as the
/// upstream's parser and serde's skipping see them); keys decoded.
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    out.push(entry);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl Members {
    /// The raw value of `key`; `Err` when the key repeats.
    fn get(&self, key: &str) -> Result<Option<&RawValue>, ()> {
        let mut found = self.0.iter().filter(|(k, _)| k == key);
        match (found.next(), found.next()) {
            (_, Some(_)) => Err(()),
            (first, None) => Ok(first.map(|(_, v)| &**v)),
        }
    }
}

/// A field read as a string: `Some(Ok)` a string, `Some(Err(()))` another type.
type Field = Option<Result<String, ()>>;

/// The string value of `raw`, `Err(())` when it is another type, or `None` when the gateway
/// cannot read it: a string serde_json cannot decode (half a surrogate pair), or an object
/// whose own keys are not text (the gateway reads them as text while it skips the object).
fn string(raw: &RawValue) -> Option<Result<String, ()>> {
    match raw.get().as_bytes()[0] {
        b'"' => serde_json::from_str::<String>(raw.get()).ok().map(Ok),
        b'{' => serde_json::from_str::<Members>(raw.get())
            .ok()
            .map(|_| Err(())),
        // A number is read too (to say what was found instead of a string): one serde_json
        // cannot represent (out of range) makes the body a 400, like an undecodable string.
        b'-' | b'0'..=b'9' => serde_json::from_str::<serde_json::Number>(raw.get())
            .ok()
            .map(|_| Err(())),
        _ => Some(Err(())),
    }
}

/// Arrays and objects nested in a well-formed JSON text, at most.
fn max_depth(text: &[u8]) -> usize {
    let (mut depth, mut max, mut i) = (0usize, 0usize, 0);
    while i < text.len() {
        match text[i] {
            b'"' => {
                i += 1;
                while text[i] != b'"' {
                    i += if text[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    max
}

fn js_len(s: &str) -> usize {
    s.encode_utf16().count()
}

/// What the contract says about `body`.
fn expect(version: ApiVersion, secure: bool, body: &[u8]) -> Expect {
    let Ok(text) = std::str::from_utf8(body) else {
        return Expect::BadRequest;
    };
    let Ok(top) = serde_json::from_str::<Members>(text) else {
        return Expect::BadRequest;
    };
    if max_depth(body) > MAX_DEPTH {
        return Expect::BadRequest;
    }
    let mut fields: Vec<(&'static str, Field)> = Vec::new();
    let mut names = vec![
        "userId",
        "deviceId",
        "displayName",
        "authToken",
        "deviceInfo",
    ];
    if version == ApiVersion::V4 {
        names.push("profileHandle");
    }
    let mut device_info = None;
    for name in names {
        let Ok(raw) = top.get(name) else {
            return Expect::BadRequest;
        };
        if name == "deviceInfo" {
            device_info = raw;
            continue;
        }
        let field = match raw.map(string) {
            None => None,
            Some(None) => return Expect::BadRequest,
            Some(Some(v)) => Some(v),
        };
        fields.push((name, field));
    }
    let mut info: Option<Result<Vec<(&'static str, Field)>, ()>> = None;
    if let Some(raw) = device_info {
        info = Some(Err(()));
        // A string or number in its place is read (to say what was found instead of an
        // object), so one that cannot be decoded is a 400, as in every other known field.
        if !raw.get().starts_with('{') && string(raw).is_none() {
            return Expect::BadRequest;
        }
        if raw.get().starts_with('{') {
            let Ok(members) = serde_json::from_str::<Members>(raw.get()) else {
                return Expect::BadRequest;
            };
            let mut inner = Vec::new();
            for name in ["kind", "model", "sdkVersion"] {
                let Ok(raw) = members.get(name) else {
                    return Expect::BadRequest;
                };
                let field = match raw.map(string) {
                    None => None,
                    Some(None) => return Expect::BadRequest,
                    Some(Some(v)) => Some(v),
                };
                inner.push((name, field));
            }
            info = Some(Ok(inner));
        }
    }
    let field = |name: &str| -> Field {
        fields
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, f)| f.clone())
    };

    let mut out = Vec::new();
    // (pointer, field, required, min, max, length detail), in the order of the rule table.
    let check = |out: &mut Vec<(&'static str, &'static str)>,
                 pointer: &'static str,
                 f: Field,
                 required: bool,
                 (min, max, detail): (usize, usize, &'static str)|
     -> Option<String> {
        match f {
            None if required => out.push((pointer, "is required")),
            None => {}
            Some(Err(())) => out.push((pointer, "must be a string")),
            Some(Ok(s)) => {
                if !(min..=max).contains(&js_len(&s)) {
                    out.push((pointer, detail));
                }
                return Some(s);
            }
        }
        None
    };
    let user_id = check(
        &mut out,
        "/userId",
        field("userId"),
        true,
        (1, 50, "length must be 1 to 50"),
    );
    if let Some(u) = &user_id {
        if version == ApiVersion::V5 && (u.starts_with("ADMIN_") || u.starts_with("DELETED_")) {
            out.push(("/userId", "must not start with ADMIN_ or DELETED_"));
        }
    }
    let device_id = check(
        &mut out,
        "/deviceId",
        field("deviceId"),
        true,
        (1, 150, "length must be 1 to 150"),
    );
    match info {
        None => {}
        Some(Err(())) => out.push(("/deviceInfo", "must be an object")),
        Some(Ok(inner)) => {
            let get = |name: &str| inner.iter().find(|(n, _)| *n == name).unwrap().1.clone();
            if let Some(kind) = check(
                &mut out,
                "/deviceInfo/kind",
                get("kind"),
                false,
                (0, usize::MAX, ""),
            ) {
                if !["ios", "android", "web", "node"].contains(&kind.as_str()) {
                    out.push(("/deviceInfo/kind", "must be one of ios, android, web, node"));
                }
            }
            check(
                &mut out,
                "/deviceInfo/model",
                get("model"),
                false,
                (0, 100, "length must be at most 100"),
            );
            check(
                &mut out,
                "/deviceInfo/sdkVersion",
                get("sdkVersion"),
                false,
                (0, 30, "length must be at most 30"),
            );
        }
    }
    check(
        &mut out,
        "/displayName",
        field("displayName"),
        false,
        (0, 100, "length must be at most 100"),
    );
    check(
        &mut out,
        "/authToken",
        field("authToken"),
        secure,
        (1, 100, "length must be 1 to 100"),
    );
    check(
        &mut out,
        "/profileHandle",
        field("profileHandle"),
        false,
        (0, 100, "length must be at most 100"),
    );
    match (user_id, device_id) {
        (Some(u), Some(d)) if out.is_empty() => Expect::Valid(u, d),
        _ => Expect::Invalid(out),
    }
}

/// A 400's detail is one of the gateway's fixed texts, or serde_json's description of a syntax
/// error (a fixed text and a position): never a piece of the body.
fn no_echo(detail: &Cow<'static, str>) {
    const FIXED: [&str; 5] = [
        "body is empty",
        "body is not valid UTF-8",
        "body must be a JSON object",
        "body nests arrays/objects deeper than 128 levels",
        "malformed JSON",
    ];
    const SYNTAX: [&str; 18] = [
        "EOF while parsing a list",
        "EOF while parsing an object",
        "EOF while parsing a string",
        "EOF while parsing a value",
        "expected `:`",
        "expected `,` or `]`",
        "expected `,` or `}`",
        "expected ident",
        "expected value",
        "invalid escape",
        "invalid number",
        "number out of range",
        "invalid unicode code point",
        "control character (\\u0000-\\u001F) found while parsing a string",
        "key must be a string",
        "lone leading surrogate in hex escape",
        "trailing comma",
        "trailing characters",
    ];
    if FIXED.contains(&&**detail) || detail.starts_with("duplicate key /") {
        return;
    }
    let digitless = |s: &str| -> String { s.chars().filter(|c| !c.is_ascii_digit()).collect() };
    let shape = digitless(detail);
    let known = SYNTAX
        .iter()
        .chain(["unexpected end of hex escape", "recursion limit exceeded"].iter())
        .any(|m| shape == digitless(&format!("malformed JSON: {m} at line 1 column 1")));
    assert!(known, "a 400 detail of unknown shape: {detail:?}");
}
