//! A validating JSON scanner for the few fields the cache reads from upstream answers.
//!
//! Reading a 1.6 KB session answer through serde visitors (the reader this one replaced)
//! cost about 24,000 instructions, a fifth of everything the gateway did for a proxied
//! session request (callgrind over the running gateway); this scanner takes about 19,500, and
//! about 40 % less time (`cargo bench --bench session_answer` has serde_json's own skipping
//! and tree building beside it for scale).
//!
//! It checks the grammar serde_json checks when it skips a value (RFC 8259: structure, strings
//! with escapes of the right form and no raw control characters, numbers, literals) and skips
//! what nobody asked for eight bytes at a time inside strings, without allocating and without
//! recursion, however deep the skipped value nests. What a caller reads is checked as serde
//! did: keys and taken strings must be UTF-8 and must not escape half a surrogate pair, and at
//! most [`MAX_DEPTH`] containers are read into.

use std::borrow::Cow;

/// The bytes are not one JSON value, or what was read of it is not text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

pub type Result<T> = std::result::Result<T, Malformed>;

/// serde_json's recursion limit for the containers a caller reads into (the views read three
/// deep): 127 nested arrays and objects, not 128. Skipped values may nest without limit.
pub const MAX_DEPTH: usize = 127;

/// A cursor over one JSON document.
pub struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    /// Containers opened by [`Scanner::object`] and [`Scanner::array`] around the cursor.
    depth: usize,
}

/// An object key's text, as bytes: borrowed from the document when it holds no escape,
/// decoded otherwise.
pub struct Key<'a>(Cow<'a, [u8]>);

impl Key<'_> {
    pub fn is(&self, name: &str) -> bool {
        *self.0 == *name.as_bytes()
    }
}

impl<'a> Scanner<'a> {
    /// Reads `body` as one JSON object, handing each key to `each` with the cursor on its
    /// value, which `each` must consume (take it or [`Scanner::skip`] it). Anything but one
    /// object, optionally surrounded by white space, is [`Malformed`].
    pub fn document(
        body: &'a [u8],
        each: impl FnMut(&mut Self, Key<'a>) -> Result<()>,
    ) -> Result<()> {
        let mut s = Scanner {
            b: body,
            i: 0,
            depth: 0,
        };
        s.ws();
        if s.peek() != Some(b'{') {
            return Err(Malformed);
        }
        s.object(each)?;
        s.ws();
        if s.i == s.b.len() {
            Ok(())
        } else {
            Err(Malformed)
        }
    }

    /// When the value at the cursor is an object, hands each key to `each` (as
    /// [`Scanner::document`] does) and returns true; otherwise skips the value, false.
    pub fn object(
        &mut self,
        mut each: impl FnMut(&mut Self, Key<'a>) -> Result<()>,
    ) -> Result<bool> {
        self.elements(b'{', b'}', |s| {
            let key = s.key()?;
            each(s, key)
        })
    }

    /// When the value at the cursor is an array, calls `each` with the cursor on each element,
    /// which `each` must consume, and returns true; otherwise skips the value, false.
    pub fn array(&mut self, each: impl FnMut(&mut Self) -> Result<()>) -> Result<bool> {
        self.elements(b'[', b']', each)
    }

    /// The container between `open` and `close` at the cursor, `each` called per element;
    /// false (the value skipped) when the value is something else.
    fn elements(
        &mut self,
        open: u8,
        close: u8,
        mut each: impl FnMut(&mut Self) -> Result<()>,
    ) -> Result<bool> {
        self.ws();
        if self.peek() != Some(open) {
            self.skip()?;
            return Ok(false);
        }
        self.enter()?;
        self.ws();
        if self.peek() == Some(close) {
            self.i += 1;
        } else {
            loop {
                each(self)?;
                self.ws();
                match self.bump()? {
                    b',' => continue,
                    c if c == close => break,
                    _ => return Err(Malformed),
                }
            }
        }
        self.depth -= 1;
        Ok(true)
    }

    /// The string at the cursor, or `None` (the value skipped) when it is not a string. A
    /// string that is not UTF-8 or escapes half a surrogate pair is [`Malformed`].
    pub fn take_str(&mut self) -> Result<Option<Cow<'a, str>>> {
        self.ws();
        if self.peek() != Some(b'"') {
            self.skip()?;
            return Ok(None);
        }
        let (raw, escaped) = self.string()?;
        text(raw, escaped).map(Some)
    }

    /// Moves past the value at the cursor, checking it.
    pub fn skip(&mut self) -> Result<()> {
        // Most skipped values are strings: no container bookkeeping for them.
        self.ws();
        if self.peek() == Some(b'"') {
            return self.string().map(drop);
        }
        let mut open = Open::default();
        'value: loop {
            self.ws();
            match self.bump()? {
                c @ (b'{' | b'[') => {
                    let object = c == b'{';
                    self.ws();
                    if self.peek() == Some(if object { b'}' } else { b']' }) {
                        self.i += 1;
                    } else {
                        open.push(object);
                        if object {
                            self.skip_key()?;
                        }
                        continue 'value;
                    }
                }
                b'"' => {
                    self.i -= 1;
                    self.string()?;
                }
                c @ (b'-' | b'0'..=b'9') => self.number(c)?,
                b't' => self.literal(b"rue")?,
                b'f' => self.literal(b"alse")?,
                b'n' => self.literal(b"ull")?,
                _ => return Err(Malformed),
            }
            // A value ended: the next element of its container, or the container's end.
            while let Some(object) = open.innermost() {
                self.ws();
                match self.bump()? {
                    b',' => {
                        if object {
                            self.skip_key()?;
                        }
                        continue 'value;
                    }
                    b'}' if object => open.pop(),
                    b']' if !object => open.pop(),
                    _ => return Err(Malformed),
                }
            }
            return Ok(());
        }
    }

    fn enter(&mut self) -> Result<()> {
        if self.depth >= MAX_DEPTH {
            return Err(Malformed);
        }
        self.depth += 1;
        self.i += 1;
        Ok(())
    }

    /// A key and its colon; the cursor is then on the value. A key that is not text is
    /// [`Malformed`], as serde_json found when it read keys.
    fn key(&mut self) -> Result<Key<'a>> {
        let (raw, escaped) = self.raw_key()?;
        if escaped {
            return Ok(Key(Cow::Owned(
                unescape(raw).ok_or(Malformed)?.into_bytes(),
            )));
        }
        // Keys are nearly always plain ASCII: no UTF-8 check (a call per key) for those.
        if !raw.is_ascii() {
            std::str::from_utf8(raw).map_err(|_| Malformed)?;
        }
        Ok(Key(Cow::Borrowed(raw)))
    }

    /// A key inside a skipped value: checked for form only, as serde_json skips it.
    fn skip_key(&mut self) -> Result<()> {
        self.raw_key().map(drop)
    }

    /// The raw string of a key (see [`Scanner::string`]) and the colon after it.
    fn raw_key(&mut self) -> Result<(&'a [u8], bool)> {
        self.ws();
        if self.peek() != Some(b'"') {
            return Err(Malformed);
        }
        let key = self.string()?;
        self.ws();
        match self.bump()? {
            b':' => Ok(key),
            _ => Err(Malformed),
        }
    }

    /// The string at the cursor (on its opening quote): the bytes between the quotes, and
    /// whether they hold escapes. Escapes are checked for form, control characters refused.
    #[inline]
    fn string(&mut self) -> Result<(&'a [u8], bool)> {
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            self.i = special(self.b, self.i);
            match self.b.get(self.i) {
                Some(b'"') => {
                    self.i += 1;
                    return Ok((&self.b[start..self.i - 1], escaped));
                }
                Some(b'\\') => {
                    escaped = true;
                    self.i += 1;
                    match self.bump()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            hex4(self.b.get(self.i..self.i + 4)).ok_or(Malformed)?;
                            self.i += 4;
                        }
                        _ => return Err(Malformed),
                    }
                }
                // A raw control character, or the end of the input.
                _ => return Err(Malformed),
            }
        }
    }

    /// The rest of a number whose first byte `first` was just read.
    fn number(&mut self, first: u8) -> Result<()> {
        let lead = if first == b'-' { self.bump()? } else { first };
        match lead {
            b'0' => {}
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return Err(Malformed),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return Err(Malformed);
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(Malformed);
            }
        }
        Ok(())
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    fn literal(&mut self, rest: &[u8]) -> Result<()> {
        if self.b[self.i..].starts_with(rest) {
            self.i += rest.len();
            Ok(())
        } else {
            Err(Malformed)
        }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn bump(&mut self) -> Result<u8> {
        let c = self.peek().ok_or(Malformed)?;
        self.i += 1;
        Ok(c)
    }
}

/// The kinds of the containers open inside a skipped value, innermost last: a bit each (set
/// for an object), 128 to a word, words beyond the first kept on the heap.
#[derive(Default)]
struct Open {
    top: u128,
    below: Vec<u128>,
    len: usize,
}

impl Open {
    fn push(&mut self, object: bool) {
        let bit = self.len % 128;
        if bit == 0 && self.len > 0 {
            self.below.push(self.top);
            self.top = 0;
        }
        self.top = self.top & !(1 << bit) | u128::from(object) << bit;
        self.len += 1;
    }

    fn pop(&mut self) {
        self.len -= 1;
        if self.len > 0 && self.len.is_multiple_of(128) {
            self.top = self.below.pop().unwrap_or_default();
        }
    }

    /// Whether the innermost open container is an object; `None` when none is open.
    fn innermost(&self) -> Option<bool> {
        let bit = self.len.checked_sub(1)? % 128;
        Some(self.top >> bit & 1 == 1)
    }
}

/// The index of the first `"`, `\` or control character at or after `i` (or the length): the
/// bytes a JSON string must escape. The access log asks it whether a string needs any. Eight
/// bytes at a time: in each word, a byte's high bit is set where it is zero after the
/// XOR with `"` or `\`, or below 0x20. A borrow can only set a bit above a byte that truly
/// matched, so the lowest set bit is exact.
pub(crate) fn special(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    while let Some(word) = b.get(i..i + 8).and_then(|w| <[u8; 8]>::try_from(w).ok()) {
        let w = u64::from_le_bytes(word);
        let quote = w ^ (ONES * u64::from(b'"'));
        let slash = w ^ (ONES * u64::from(b'\\'));
        let hits = (quote.wrapping_sub(ONES) & !quote
            | slash.wrapping_sub(ONES) & !slash
            | w.wrapping_sub(ONES * 0x20) & !w)
            & HIGH;
        if hits != 0 {
            return i + (hits.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            break;
        }
        i += 1;
    }
    i
}

fn hex4(digits: Option<&[u8]>) -> Option<u32> {
    let digits = digits?;
    if digits.len() != 4 {
        return None;
    }
    digits.iter().try_fold(0u32, |n, &d| {
        let v = (d as char).to_digit(16)?;
        Some(n << 4 | v)
    })
}

/// The text of a string's raw bytes (from [`Scanner::string`]): borrowed when it holds no
/// escape; [`Malformed`] when it is not UTF-8 or escapes half a surrogate pair.
fn text(raw: &[u8], escaped: bool) -> Result<Cow<'_, str>> {
    if escaped {
        unescape(raw).map(Cow::Owned).ok_or(Malformed)
    } else {
        std::str::from_utf8(raw)
            .map(Cow::Borrowed)
            .map_err(|_| Malformed)
    }
}

/// The decoded text of a string's raw bytes holding escapes (already checked for form);
/// `None` when it is not UTF-8 or escapes half a surrogate pair.
fn unescape(raw: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&c) = raw.get(i) {
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let e = *raw.get(i)?;
        i += 1;
        let plain = match e {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let unit = hex4(raw.get(i..i + 4))?;
                i += 4;
                let code = match unit {
                    0xD800..=0xDBFF => {
                        if raw.get(i..i + 2)? != b"\\u" {
                            return None;
                        }
                        let low = hex4(raw.get(i + 2..i + 6))?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return None;
                        }
                        i += 6;
                        0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
                    }
                    0xDC00..=0xDFFF => return None,
                    _ => unit,
                };
                let ch = char::from_u32(code)?;
                out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                continue;
            }
            _ => return None,
        };
        out.push(plain);
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value of `body`'s top-level object, skipped.
    fn skim(body: &[u8]) -> Result<()> {
        Scanner::document(body, |s, _| s.skip())
    }

    #[test]
    fn the_grammar_is_checked() {
        for ok in [
            r#"{}"#,
            r#" { "a" : [ 1 , -0.5e+3 , 0 , 2E7 , true , false , null , "x" , { } , [ ] ] } "#,
            r#"{"a":"\"\\\/\b\f\n\r\t\u00e9\uD83D\uDE00"}"#,
            "{\"a\":\"\u{e9}\u{1f600}\"}",
        ] {
            assert_eq!(skim(ok.as_bytes()), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "[]",
            "1",
            r#""s""#,
            "{",
            "}",
            r#"{"a"}"#,
            r#"{"a":}"#,
            r#"{"a":1,}"#,
            r#"{,}"#,
            r#"{"a":1 "b":2}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":[1 2]}"#,
            r#"{"a":[}"#,
            r#"{"a":{]}"#,
            r#"{"a":01}"#,
            r#"{"a":-}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":1e}"#,
            r#"{"a":+1}"#,
            r#"{"a":tru}"#,
            r#"{"a":nul}"#,
            r#"{"a":True}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12"}"#,
            r#"{"a":"\u12G4"}"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":"open}"#,
            r#"{a:1}"#,
            r#"{"a":1}{}"#,
            r#"{"a":1} x"#,
            r#"{"a":'x'}"#,
        ] {
            assert_eq!(skim(bad.as_bytes()), Err(Malformed), "{bad:?}");
        }
    }

    #[test]
    fn skipped_values_nest_without_limit_and_still_match_their_brackets() {
        let nested = |n: usize, open: &str, close: &str| {
            format!(r#"{{"a":{}1{}}}"#, open.repeat(n), close.repeat(n))
        };
        for n in [1, 127, 128, 129, 255, 256, 257, 1_000_000] {
            let doc = nested(n, "[", "]");
            assert_eq!(skim(doc.as_bytes()), Ok(()), "{n} arrays");
            // serde_json's own skipping agrees.
            assert!(serde_json::from_str::<serde::de::IgnoredAny>(&doc).is_ok());
            let doc = format!(r#"{{"a":{}1{}}}"#, r#"{"k":"#.repeat(n), "}".repeat(n));
            assert_eq!(skim(doc.as_bytes()), Ok(()), "{n} objects");
        }
        // Kinds are remembered across the words of the stack: alternate at the boundaries.
        for n in [127, 128, 129, 300] {
            let open: String = (0..n)
                .map(|i| if i % 3 == 0 { r#"{"k":"# } else { "[" })
                .collect();
            let close: String = (0..n)
                .rev()
                .map(|i| if i % 3 == 0 { "}" } else { "]" })
                .collect();
            let doc = format!(r#"{{"a":{open}1{close}}}"#);
            assert_eq!(skim(doc.as_bytes()), Ok(()), "{n}");
            let swapped = doc.replacen("]}", "}]", 1);
            assert_eq!(skim(swapped.as_bytes()), Err(Malformed), "{n}");
        }
    }

    #[test]
    fn read_containers_stop_where_serde_json_stops() {
        fn nest(s: &mut Scanner<'_>, n: &mut usize) -> Result<()> {
            *n += 1;
            s.array(|s| nest(s, n)).map(drop)
        }
        // 1 + 126 containers read; a 128th is refused, as serde_json refuses it.
        for (arrays, ok) in [(126, true), (127, false)] {
            let doc = format!(r#"{{"a":{}{}}}"#, "[".repeat(arrays), "]".repeat(arrays));
            let mut n = 0;
            let r = Scanner::document(doc.as_bytes(), |s, _| nest(s, &mut n));
            assert_eq!(r.is_ok(), ok, "{arrays}");
            assert_eq!(serde_json::from_str::<serde_json::Value>(&doc).is_ok(), ok);
        }
    }

    #[test]
    fn taken_strings_are_unescaped_only_when_needed() {
        let mut got = Vec::new();
        let doc = r#"{"plain":"abc","esc":"a\"b\u00e9\uD83D\uDE00\n","num":5,"obj":{"k":"v"}}"#;
        Scanner::document(doc.as_bytes(), |s, _| {
            got.push(s.take_str()?);
            Ok(())
        })
        .unwrap();
        assert!(matches!(got[0], Some(Cow::Borrowed("abc"))));
        assert_eq!(got[1].as_deref(), Some("a\"b\u{e9}\u{1f600}\n"));
        assert!(matches!(got[1], Some(Cow::Owned(_))));
        assert!(got[2].is_none() && got[3].is_none());
        for bad in [
            r#"{"a":"\uD800"}"#,
            r#"{"a":"\uDC00"}"#,
            r#"{"a":"\uD800\u0041"}"#,
        ] {
            let r = Scanner::document(bad.as_bytes(), |s, _| s.take_str().map(drop));
            assert_eq!(r, Err(Malformed), "{bad}");
            // Skipped, only the escape's form counts (as serde_json ignores it).
            assert_eq!(skim(bad.as_bytes()), Ok(()), "{bad}");
        }
        let not_utf8 = b"{\"a\":\"\xff\"}";
        let r = Scanner::document(not_utf8, |s, _| s.take_str().map(drop));
        assert_eq!(r, Err(Malformed));
    }

    #[test]
    fn keys_are_matched_by_their_text_and_must_be_text() {
        let mut seen = Vec::new();
        Scanner::document(br#"{"user\u0049d":1,"\u00e9":2,"id":3}"#, |s, k| {
            seen.push((k.is("userId"), k.is("id")));
            s.skip()
        })
        .unwrap();
        assert_eq!(seen, [(true, false), (false, false), (false, true)]);
        for bad in [&br#"{"\uD800":1}"#[..], b"{\"\xff\":1}"] {
            assert_eq!(Scanner::document(bad, |s, _| s.skip()), Err(Malformed));
        }
        // Keys inside skipped values are checked for form only, as serde_json skips them.
        assert_eq!(skim(br#"{"a":{"\uD800":1}}"#), Ok(()));
    }

    #[test]
    fn the_first_of_several_special_bytes_is_found() {
        // Neighbours of the special bytes never match; of several hits, the first wins.
        let b = b"#!$[]]^_`\x7f\x80 \"x\\\x01";
        assert_eq!(special(b, 0), 12);
        assert_eq!(special(b, 13), 14);
        assert_eq!(special(b, 15), 15);
        assert_eq!(special(b"ab\x1f\"\\cdefgh", 0), 2);
        assert_eq!(special(b"abcdefg\\\"", 0), 7);
        assert_eq!(special(b"0123456789abcdef\"", 3), 16);
    }

    #[test]
    fn special_bytes_are_found_at_every_offset() {
        for len in 0..40 {
            for at in 0..len {
                for c in [b'"', b'\\', 0x00, 0x1f] {
                    let mut b = vec![b'a'; len];
                    b[at] = c;
                    // Bytes just above the control range and with the high bit never match.
                    if at + 1 < len {
                        b[at + 1] = 0x20;
                    }
                    if at > 0 {
                        b[at - 1] = 0xff;
                    }
                    assert_eq!(special(&b, 0), at, "len {len}, at {at}, byte {c:#x}");
                }
                let clean = vec![0x7f; len];
                assert_eq!(special(&clean, 0), len);
            }
        }
    }
}
