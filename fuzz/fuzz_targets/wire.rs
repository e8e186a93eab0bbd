//! The request-part parsers of `wire` against the url crate family's own parsers: percent
//! decoding against `percent-encoding`, the `userIds` query against `form_urlencoded`, and the
//! bearer token of an `Authorization` header against its definition.
#![no_main]

use amity_gateway::cache::key::MAX_LIST_IDS;
use amity_gateway::wire::{bearer, percent_decode, user_ids_from_query};
use http::header::{HeaderValue, AUTHORIZATION};
use http::HeaderMap;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    for plus_as_space in [false, true] {
        let got = percent_decode(&text, plus_as_space);
        let spaced = if plus_as_space {
            text.replace('+', " ")
        } else {
            text.to_string()
        };
        let want = percent_encoding::percent_decode_str(&spaced).decode_utf8_lossy();
        assert_eq!(got, want, "plus_as_space={plus_as_space}");
        // An escape is three bytes and decodes to one, or to U+FFFD (three) when not UTF-8.
        assert!(got.len() <= text.len());
    }
    // Every byte escaped decodes back to the bytes.
    let escaped: String = data.iter().map(|b| format!("%{b:02X}")).collect();
    assert_eq!(
        percent_decode(&escaped, true),
        String::from_utf8_lossy(data)
    );

    // Read with the cache's cap: the ids, or a refusal exactly when there are more than the cap.
    let want = user_ids_oracle(&text);
    match user_ids_from_query(&text, MAX_LIST_IDS) {
        Ok(got) => assert_eq!(got, want),
        Err(_) => assert!(want.len() > MAX_LIST_IDS, "refused {} ids", want.len()),
    }

    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, value.clone());
        assert_eq!(bearer(&headers), bearer_oracle(&value));
    }
});

/// `userIds` as `form_urlencoded` reads the query: keys `userIds`, `userIds[]` or
/// `userIds[<digits>]`, values split at commas, empty ids dropped, first occurrences kept.
fn user_ids_oracle(query: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let named = match key.strip_prefix("userIds") {
            Some("") => true,
            Some(rest) => {
                rest.len() >= 2
                    && rest.starts_with('[')
                    && rest.ends_with(']')
                    && rest[1..rest.len() - 1].chars().all(|c| c.is_ascii_digit())
            }
            None => false,
        };
        if !named {
            continue;
        }
        for id in value.split(',').filter(|id| !id.is_empty()) {
            if !out.contains(&id.to_owned()) {
                out.push(id.to_owned());
            }
        }
    }
    out
}

/// RFC 6750's `Bearer <token>`, scheme in any case, around optional white space; `None` for
/// anything else, an empty token or a value that is not visible ASCII.
fn bearer_oracle(value: &HeaderValue) -> Option<&str> {
    let v = value.to_str().ok()?.trim();
    let scheme = v.get(..6)?;
    let rest = v.get(6..)?;
    if !scheme.eq_ignore_ascii_case("bearer") || !rest.starts_with(' ') {
        return None;
    }
    Some(rest.trim()).filter(|t| !t.is_empty())
}
