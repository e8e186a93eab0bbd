//! Small parsers of request parts that the gateway and its upstream simulator must read the
//! same way: bearer tokens, percent-encoding, and the `userIds` query of the user list route.
//! One implementation serves both, so the cache keys a list request exactly as the simulated
//! upstream reads it.

use http::header::AUTHORIZATION;
use http::HeaderMap;

/// The token of an `Authorization: Bearer <token>` header (scheme in any letter case).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Collects `userIds` from a query string in every encoding clients use: repeated
/// `userIds=a&userIds=b`, qs brackets `userIds[]=a` (also percent-encoded `userIds%5B%5D=a`
/// and indexed `userIds[0]=a`), and comma-separated values. Order kept, duplicates dropped.
pub fn user_ids_from_query(query: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if !is_user_ids_key(&percent_decode(key, true)) {
            continue;
        }
        for id in percent_decode(value, true).split(',') {
            if !id.is_empty() && !out.iter().any(|seen| seen == id) {
                out.push(id.to_owned());
            }
        }
    }
    out
}

/// Whether a decoded query key names the `userIds` array (`userIds`, `userIds[]`, `userIds[0]`).
pub fn is_user_ids_key(key: &str) -> bool {
    let Some(rest) = key.strip_prefix("userIds") else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    rest.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .is_some_and(|index| index.bytes().all(|b| b.is_ascii_digit()))
}

/// Percent-decodes `s` (invalid escapes are kept literally; invalid UTF-8 is replaced).
/// `plus_as_space` applies the form-encoding rule used in query strings.
pub fn percent_decode(s: &str, plus_as_space: bool) -> String {
    fn hex_val(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_val);
                let lo = bytes.get(i + 2).copied().and_then(hex_val);
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' if plus_as_space => out.push(b' '),
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn user_ids_accepts_every_encoding() {
        let want = vec!["a".to_owned(), "b c".to_owned(), "d/e".to_owned()];
        assert_eq!(
            user_ids_from_query("userIds=a&userIds=b+c&userIds=d%2Fe"),
            want
        );
        assert_eq!(
            user_ids_from_query("userIds[]=a&userIds[]=b%20c&userIds[]=d/e"),
            want
        );
        assert_eq!(
            user_ids_from_query("userIds%5B%5D=a&userIds%5b%5d=b+c&userIds%5B%5D=d%2Fe"),
            want
        );
        assert_eq!(
            user_ids_from_query("userIds[0]=a&userIds[1]=b+c&userIds[2]=d/e"),
            want
        );
        assert_eq!(user_ids_from_query("userIds=a,b%20c,d%2Fe&x=1"), want);
        assert_eq!(
            user_ids_from_query("userIds=a%2Cb+c&userIds=a&other=z"),
            vec!["a", "b c"]
        );
        assert!(user_ids_from_query("").is_empty());
        assert!(user_ids_from_query("userIdsX=a&userIds[x]=b&=&&").is_empty());
    }

    #[test]
    fn percent_decode_never_panics_on_broken_escapes() {
        assert_eq!(percent_decode("%", false), "%");
        assert_eq!(percent_decode("%4", false), "%4");
        assert_eq!(percent_decode("%zz%41", false), "%zzA");
        assert_eq!(percent_decode("a+b", false), "a+b");
        assert_eq!(percent_decode("%F0%9F%98%80", false), "\u{1F600}");
        assert_eq!(percent_decode("%FF", false), "\u{FFFD}");
    }

    #[test]
    fn bearer_parses_scheme_case_insensitively() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer abc"));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), None);
    }
}
