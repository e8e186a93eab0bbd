//! Small parsers of request parts that the gateway and its upstream simulator must read the
//! same way: bearer tokens, percent-encoding, and the `userIds` query of the user list route.
//! One implementation serves both, so the cache keys a list request exactly as the simulated
//! upstream reads it.
//!
//! Lists a client controls are read with their cap checked as they are read: the reader stops
//! at the first id past the cap, and each step costs at most the cap's comparisons, so reading
//! any query is linear in its length (a 6,000-id query is refused after 101 ids).

use http::header::AUTHORIZATION;
use http::HeaderMap;

/// The token of an `Authorization: Bearer <token>` header (scheme in any letter case).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A list with more distinct ids than its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooMany;

/// Collects `userIds` from a query string in every encoding clients use: repeated
/// `userIds=a&userIds=b`, qs brackets `userIds[]=a` (also percent-encoded `userIds%5B%5D=a`
/// and indexed `userIds[0]=a`), and comma-separated values. Order kept, duplicates dropped.
/// More than `cap` distinct ids is [`TooMany`], found without reading past the first extra id.
pub fn user_ids_from_query(query: &str, cap: usize) -> Result<Vec<String>, TooMany> {
    user_ids_counted(query, cap, &mut 0)
}

/// [`user_ids_from_query`], adding to `steps` one per byte decoded and one per id compared:
/// the count the linear-time test bounds.
pub fn user_ids_counted(query: &str, cap: usize, steps: &mut u64) -> Result<Vec<String>, TooMany> {
    let mut out: Vec<String> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        *steps += key.len() as u64;
        if !is_user_ids_key(&percent_decode(key, true)) {
            continue;
        }
        *steps += value.len() as u64;
        for id in percent_decode(value, true).split(',') {
            if id.is_empty() {
                continue;
            }
            // `out` never holds more than `cap` ids, so this scan is bounded by the cap.
            *steps += out.len() as u64;
            if out.iter().any(|seen| seen == id) {
                continue;
            }
            if out.len() == cap {
                return Err(TooMany);
            }
            out.push(id.to_owned());
        }
    }
    Ok(out)
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

    fn ids(q: &str) -> Vec<String> {
        user_ids_from_query(q, 100).unwrap()
    }

    #[test]
    fn user_ids_accepts_every_encoding() {
        let want = vec!["a".to_owned(), "b c".to_owned(), "d/e".to_owned()];
        assert_eq!(ids("userIds=a&userIds=b+c&userIds=d%2Fe"), want);
        assert_eq!(ids("userIds[]=a&userIds[]=b%20c&userIds[]=d/e"), want);
        assert_eq!(
            ids("userIds%5B%5D=a&userIds%5b%5d=b+c&userIds%5B%5D=d%2Fe"),
            want
        );
        assert_eq!(ids("userIds[0]=a&userIds[1]=b+c&userIds[2]=d/e"), want);
        assert_eq!(ids("userIds=a,b%20c,d%2Fe&x=1"), want);
        assert_eq!(ids("userIds=a%2Cb+c&userIds=a&other=z"), vec!["a", "b c"]);
        assert!(ids("").is_empty());
        assert!(ids("userIdsX=a&userIds[x]=b&=&&").is_empty());
    }

    /// A 6,000-id query costs a count linear in its length, never the quadratic dedup: one
    /// id repeated is read in a few steps per byte, and 6,000 distinct ids are refused at the
    /// 101st, after about the first 101 ids' worth of steps (the quadratic reader took ~18
    /// million comparisons).
    #[test]
    fn a_6000_id_query_is_read_in_linear_steps_or_refused_at_the_cap() {
        let repeated: String = (0..6000).map(|_| "userIds=a&").collect();
        let mut steps = 0;
        assert_eq!(
            user_ids_counted(&repeated, 100, &mut steps),
            Ok(vec!["a".to_owned()])
        );
        assert!(
            steps <= 2 * repeated.len() as u64,
            "{steps} for {}",
            repeated.len()
        );
        let short: String = (0..1000).map(|_| "userIds=a&").collect();
        let mut short_steps = 0;
        user_ids_counted(&short, 100, &mut short_steps).unwrap();
        // Six times the length, six times the steps (give or take the first id's): linear.
        assert!(
            steps.abs_diff(6 * short_steps) <= 6,
            "{steps} vs {short_steps}"
        );

        for distinct in [
            (0..6000)
                .map(|i| format!("userIds={i}&"))
                .collect::<String>(),
            format!(
                "userIds={}",
                (0..6000)
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        ] {
            let mut steps = 0;
            assert_eq!(user_ids_counted(&distinct, 100, &mut steps), Err(TooMany));
            // At most the bytes of one value and the first 101 ids' comparisons.
            assert!(steps < 30_000 + 101 * 100, "{steps}");
        }
        assert_eq!(
            ids(&(0..100)
                .map(|i| format!("userIds={i}&"))
                .collect::<String>())
            .len(),
            100
        );
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
