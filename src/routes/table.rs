//! The route table as data: `[[routes]]` in the config file, compiled once into a matcher.
//!
//! Each route has a name (its metric and log label), methods, a path and a policy. A path is
//! exact (`/api/v3/sessions`), a template whose `{params}` each match one non-empty segment
//! (`/api/v3/users/{userId}`), or a prefix ending in `/` (`prefix = "/api/"`).
//!
//! # Which route wins
//!
//! The most specific route that allows the request's method:
//!
//! 1. exact paths and templates before prefixes;
//! 2. among templates, segment by segment from the left, a literal beats a `{param}` (so
//!    `/api/v3/users/list` beats `/api/v3/users/{userId}`);
//! 3. among prefixes, the longest.
//!
//! A route whose path matches but whose methods do not is skipped, and the next most specific
//! one is tried: `PUT /api/v3/sessions` is not a session route, so it falls to the `/api/`
//! pass-through prefix. Two routes of the same shape (same literals, params in the same
//! places, or the same prefix) whose methods overlap are ambiguous and rejected at load, by
//! name. A path no route matches is a 404 in the envelope and never forwarded.
//!
//! # What never matches
//!
//! Before any route is tried, a path that a later hop could read as another path is refused
//! (404): a `.` or `..` segment (raw or percent-encoded), an encoded `/` or `\`, a raw `\`, or
//! anything not starting with `/`. Otherwise `/api/../admin` would match the `/api/` prefix and
//! reach an upstream that normalises it away from `/api/`.

use std::fmt::Write as _;
use std::time::Duration;

use http::Method;
use serde::{Deserialize, Serialize};

use super::label::{RouteLabel, MAX_LABELS};
use super::Route;
use crate::config::shared::{invalid, ConfigError};
use crate::session::ApiVersion;

// ------------------------------------------------------------------ file structs

/// One `[[routes]]` entry of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    /// The route's label in metrics and logs: `[a-z][a-z0-9_]*`, at most 32 bytes, unique.
    pub name: String,
    /// Methods served, upper case (`["GET", "POST"]`). Default: any method for `pass` and
    /// `deny`; session routes are `POST`, lookups `GET` (logout `DELETE`), and may not differ.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// An exact path or a template with `{params}`. Exactly one of `path` and `prefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A path prefix, starting and ending with `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// `session`, `lookup`, `pass` or `deny`.
    pub policy: PolicyName,
    /// Session routes: the body contract, `v3`, `v4`, `v5` or `visitor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<SchemaName>,
    /// Lookup routes: `user`, `user_list`, `file` (cached), `verify_session` or `logout` (token
    /// bookkeeping only: a logout, or an admin's revocation of a user's sessions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookup: Option<LookupName>,
    /// Pass routes: a stream (request body, answer body or websocket) that moves no byte for
    /// this long is closed. Default `upstream.idle_timeout_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    /// Pass routes: the largest request body forwarded (413 above it, from Content-Length or
    /// while streaming). Default: no limit (the body streams, it is never held).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyName {
    /// Body limit, validation, rate limit per deviceId, key injection, token bookkeeping.
    Session,
    /// The user / file lookup cache and token bookkeeping.
    Lookup,
    /// Forwarded as sent, streamed, websockets tunnelled; the key is never attached.
    Pass,
    /// Answered 404 in the envelope, never forwarded.
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SchemaName {
    V3,
    V4,
    V5,
    Visitor,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LookupName {
    User,
    UserList,
    File,
    VerifySession,
    Logout,
}

/// The `[[routes]]` array; its default is the shipped table (see [`default_routes`]). A file
/// that names any route replaces the whole table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct RoutesFile(pub Vec<RouteFile>);

impl Default for RoutesFile {
    fn default() -> Self {
        Self(default_routes())
    }
}

fn route(name: &str, methods: &[&str], path: &str, policy: PolicyName) -> RouteFile {
    let (path, prefix) = match path.strip_suffix('*') {
        Some(p) => (None, Some(p.to_owned())),
        None => (Some(path.to_owned()), None),
    };
    RouteFile {
        name: name.to_owned(),
        methods: methods.iter().map(|m| (*m).to_owned()).collect(),
        path,
        prefix,
        policy,
        schema: None,
        lookup: None,
        idle_timeout_ms: None,
        max_body_bytes: None,
    }
}

fn session(name: &str, path: &str, schema: SchemaName) -> RouteFile {
    RouteFile {
        schema: Some(schema),
        ..route(name, &["POST"], path, PolicyName::Session)
    }
}

fn lookup(name: &str, method: &str, path: &str, lookup: LookupName) -> RouteFile {
    RouteFile {
        lookup: Some(lookup),
        ..route(name, &[method], path, PolicyName::Lookup)
    }
}

/// The shipped table: the session endpoints (v3, v4, v5, visitor), token checks, the cached
/// lookups, and every other path under `/api/` and `/socket.io/` passed through.
pub fn default_routes() -> Vec<RouteFile> {
    use LookupName as L;
    use SchemaName as S;
    vec![
        session("session_v3", "/api/v3/sessions", S::V3),
        session("session_v4", "/api/v4/sessions", S::V4),
        session("session_v5", "/api/v5/sessions", S::V5),
        session("session_visitor", "/api/v5/sessions/visitor", S::Visitor),
        lookup(
            "verify_session",
            "GET",
            "/api/v3/sessions",
            L::VerifySession,
        ),
        lookup("logout", "DELETE", "/api/v4/sessions", L::Logout),
        lookup(
            "revoke_user",
            "DELETE",
            "/api/v4/sessions/users/{userId}",
            L::Logout,
        ),
        lookup("user", "GET", "/api/v3/users/{userId}", L::User),
        lookup("user_list", "GET", "/api/v3/users/list", L::UserList),
        lookup("file", "GET", "/api/v3/files/{fileId}", L::File),
        route("api", &[], "/api/*", PolicyName::Pass),
        route("realtime", &[], "/socket.io/*", PolicyName::Pass),
    ]
}

// ------------------------------------------------------------------ compiled table

/// What a pass route allows a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassLimits {
    pub idle_timeout: Duration,
    pub max_body_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    Param,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// Exact paths are templates without params.
    Template(Box<[Segment]>),
    Prefix(Box<str>),
}

/// Most path segments kept apart for matching; a longer path is matched segment by segment
/// again for each template (no route of the API has more than 7).
const MAX_SEGMENTS: usize = 12;

/// A request path split at `/` once for every route (the split used to be done per template).
struct Segments<'a> {
    path: &'a str,
    /// The path without its leading `/`.
    rest: &'a str,
    parts: [&'a str; MAX_SEGMENTS],
    /// How many segments the path has (may exceed [`MAX_SEGMENTS`]).
    count: usize,
}

impl<'a> Segments<'a> {
    /// `path`'s segments, or `None` when it is not plain: no leading `/`, a `\`, or a segment
    /// that is `.` or `..` or hides one, a `/` or a `\` behind percent-encoding.
    fn plain(path: &'a str) -> Option<Self> {
        let rest = path.strip_prefix('/')?;
        let mut segs = Segments {
            path,
            rest,
            parts: [""; MAX_SEGMENTS],
            count: 0,
        };
        // One pass over the bytes: a `\` refuses the path, a `/` ends a segment, and only a
        // segment with a `%` is decoded to be checked.
        let (mut start, mut escaped) = (0, false);
        for (i, b) in rest.bytes().chain([b'/']).enumerate() {
            match b {
                b'\\' => return None,
                b'%' => escaped = true,
                b'/' => {
                    let seg = rest.get(start..i)?;
                    if !plain_segment(seg, escaped) {
                        return None;
                    }
                    if let Some(slot) = segs.parts.get_mut(segs.count) {
                        *slot = seg;
                    }
                    segs.count += 1;
                    (start, escaped) = (i + 1, false);
                }
                _ => {}
            }
        }
        Some(segs)
    }
}

/// Whether `seg` is plain; `escaped` says whether it may hold a `%`.
fn plain_segment(seg: &str, escaped: bool) -> bool {
    if !escaped || !seg.contains('%') {
        return seg != "." && seg != "..";
    }
    let decoded = crate::wire::percent_decode(seg, false);
    !(decoded == "." || decoded == ".." || decoded.contains(['/', '\\']))
}

fn segment_matches(seg: &Segment, part: &str) -> bool {
    match seg {
        Segment::Literal(l) => **l == *part,
        Segment::Param => !part.is_empty(),
    }
}

impl Pattern {
    fn matches(&self, path: &Segments<'_>) -> bool {
        match self {
            Pattern::Prefix(p) => path.path.starts_with(&**p),
            Pattern::Template(segs) if segs.len() != path.count => false,
            // Last segment first: the resource names differ there, while nearly every path
            // shares its first ones (`api`, the version).
            Pattern::Template(segs) if path.count <= MAX_SEGMENTS => segs
                .iter()
                .zip(&path.parts)
                .rev()
                .all(|(seg, part)| segment_matches(seg, part)),
            Pattern::Template(segs) => segs
                .iter()
                .zip(path.rest.split('/'))
                .all(|(seg, part)| segment_matches(seg, part)),
        }
    }

    /// Orders patterns most specific first (see the module doc).
    fn rank(&self) -> (u8, Vec<u8>, usize) {
        match self {
            Pattern::Template(segs) => (
                0,
                segs.iter()
                    .map(|s| u8::from(matches!(s, Segment::Param)))
                    .collect(),
                0,
            ),
            Pattern::Prefix(p) => (1, Vec::new(), usize::MAX - p.len()),
        }
    }

    fn render(&self) -> String {
        match self {
            Pattern::Prefix(p) => format!("{p}*"),
            Pattern::Template(segs) => {
                let mut out = String::new();
                for s in segs.iter() {
                    out.push('/');
                    match s {
                        Segment::Literal(l) => out.push_str(l),
                        Segment::Param => out.push_str("{}"),
                    }
                }
                out
            }
        }
    }
}

/// One compiled route.
#[derive(Debug, Clone)]
pub struct Entry {
    pub label: RouteLabel,
    pub route: Route,
    /// `None`: any method.
    methods: Option<Box<[Method]>>,
    pattern: Pattern,
    /// Set on pass routes.
    pub pass: Option<PassLimits>,
}

impl Entry {
    fn allows(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(method))
    }
}

/// The compiled table, most specific route first.
#[derive(Debug, Clone)]
pub struct RouteTable {
    entries: Box<[Entry]>,
}

/// What a request matched: its route's label, role and (pass routes) limits.
#[derive(Debug, Clone, Copy)]
pub struct Matched {
    pub label: RouteLabel,
    pub route: Route,
    pub pass: Option<PassLimits>,
}

impl RouteTable {
    /// Compiles `routes`; `idle_timeout` is the pass routes' default. The error names the
    /// route (by name, or by position when the name itself is bad) and what is wrong.
    pub fn compile(routes: &[RouteFile], idle_timeout: Duration) -> Result<Self, ConfigError> {
        if routes.is_empty() {
            return Err(invalid(
                "routes",
                "the table is empty: nothing would be served",
            ));
        }
        if routes.len() > MAX_LABELS {
            return Err(invalid(
                "routes",
                format!("{} routes; at most {MAX_LABELS}", routes.len()),
            ));
        }
        let mut entries: Vec<Entry> = Vec::with_capacity(routes.len());
        for (i, r) in routes.iter().enumerate() {
            let entry = compile_one(r, idle_timeout)
                .map_err(|m| invalid("routes", format!("route {:?} (#{}): {m}", r.name, i + 1)))?;
            if let Some(other) = entries.iter().find(|e| e.label == entry.label) {
                return Err(invalid(
                    "routes",
                    format!("route {:?}: name used twice", other.label.name()),
                ));
            }
            if let Some(other) = entries
                .iter()
                .find(|e| e.pattern == entry.pattern && methods_overlap(e, &entry))
            {
                return Err(invalid(
                    "routes",
                    format!(
                        "routes {:?} and {:?} are ambiguous: same path {} and overlapping methods",
                        other.label.name(),
                        entry.label.name(),
                        entry.pattern.render()
                    ),
                ));
            }
            entries.push(entry);
        }
        // Stable: among equal ranks (same shape, disjoint methods), file order.
        entries.sort_by_cached_key(|e| e.pattern.rank());
        Ok(Self {
            entries: entries.into_boxed_slice(),
        })
    }

    /// The default table.
    pub fn defaults(idle_timeout: Duration) -> Result<Self, ConfigError> {
        Self::compile(&default_routes(), idle_timeout)
    }

    /// The route serving `method` on `path`, or `None` (404, never forwarded).
    pub fn matches(&self, method: &Method, path: &str) -> Option<Matched> {
        let segments = Segments::plain(path)?;
        self.entries
            .iter()
            .find(|e| e.pattern.matches(&segments) && e.allows(method))
            .map(|e| Matched {
                label: e.label,
                route: e.route,
                pass: e.pass,
            })
    }

    /// Every route, most specific first.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The effective table as text, one route a line in matching order (for `check-config`).
    pub fn render(&self) -> String {
        let mut out =
            String::from("routes (most specific first; the first that allows the method wins):\n");
        for e in self.entries.iter() {
            let methods = e.methods.as_ref().map_or_else(
                || "*".to_owned(),
                |m| m.iter().map(Method::as_str).collect::<Vec<_>>().join(","),
            );
            let _ = write!(
                out,
                "  {:<16} {:<8} {:<28} {}",
                e.label.name(),
                methods,
                e.pattern.render(),
                e.route.describe()
            );
            if let Some(p) = e.pass {
                let _ = write!(out, " idle={}ms", p.idle_timeout.as_millis());
                if let Some(max) = p.max_body_bytes {
                    let _ = write!(out, " max_body={max}");
                }
            }
            out.push('\n');
        }
        out.push_str("  (anything else: 404, not forwarded)\n");
        out
    }
}

fn methods_overlap(a: &Entry, b: &Entry) -> bool {
    match (&a.methods, &b.methods) {
        (Some(x), Some(y)) => x.iter().any(|m| y.contains(m)),
        _ => true,
    }
}

fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

fn compile_one(r: &RouteFile, idle_timeout: Duration) -> Result<Entry, String> {
    if !valid_name(&r.name) || r.name == super::UNMATCHED {
        return Err("name must be [a-z][a-z0-9_]*, at most 32 bytes, not \"unmatched\"".into());
    }
    let label = RouteLabel::intern(&r.name)
        .ok_or_else(|| format!("more than {MAX_LABELS} distinct route names in this process"))?;
    let pattern = match (&r.path, &r.prefix) {
        (Some(p), None) => template(p)?,
        (None, Some(p)) => prefix(p)?,
        _ => return Err("give exactly one of `path` and `prefix`".into()),
    };
    let route = role(r)?;
    let fixed = route.fixed_method();
    let methods = if r.methods.is_empty() {
        fixed.map(|m| vec![m].into_boxed_slice())
    } else {
        let mut ms = Vec::with_capacity(r.methods.len());
        for m in &r.methods {
            let method = Method::from_bytes(m.as_bytes())
                .ok()
                .filter(|_| m.bytes().all(|b| b.is_ascii_uppercase()))
                .ok_or_else(|| format!("method {m:?} is not an upper-case HTTP method"))?;
            if !ms.contains(&method) {
                ms.push(method);
            }
        }
        if let Some(f) = &fixed {
            if ms.len() != 1 || ms[0] != *f {
                return Err(format!("a {} route serves {f} only", route.policy()));
            }
        }
        Some(ms.into_boxed_slice())
    };
    if matches!(route, Route::User | Route::File)
        && !matches!(&pattern, Pattern::Template(s) if s.last() == Some(&Segment::Param))
    {
        return Err("a user or file lookup needs a path ending in a {param} (the id)".into());
    }
    let pass = match route {
        Route::Pass => Some(PassLimits {
            idle_timeout: match r.idle_timeout_ms {
                Some(0) => return Err("idle_timeout_ms must be greater than 0".into()),
                Some(ms) => Duration::from_millis(ms),
                None => idle_timeout,
            },
            max_body_bytes: r.max_body_bytes,
        }),
        _ => {
            if r.idle_timeout_ms.is_some() || r.max_body_bytes.is_some() {
                return Err("idle_timeout_ms and max_body_bytes are for pass routes".into());
            }
            None
        }
    };
    Ok(Entry {
        label,
        route,
        methods,
        pattern,
        pass,
    })
}

/// The route's role from its policy and that policy's one option.
fn role(r: &RouteFile) -> Result<Route, String> {
    let route =
        match (r.policy, r.schema, r.lookup) {
            (PolicyName::Session, Some(s), None) => match s {
                SchemaName::V3 => Route::Session(ApiVersion::V3),
                SchemaName::V4 => Route::Session(ApiVersion::V4),
                SchemaName::V5 => Route::Session(ApiVersion::V5),
                SchemaName::Visitor => Route::VisitorSession,
            },
            (PolicyName::Session, None, _) => {
                return Err("a session route needs `schema` (v3, v4, v5 or visitor)".into())
            }
            (PolicyName::Lookup, None, Some(l)) => match l {
                LookupName::User => Route::User,
                LookupName::UserList => Route::UserList,
                LookupName::File => Route::File,
                LookupName::VerifySession => Route::VerifySession,
                LookupName::Logout => Route::Logout,
            },
            (PolicyName::Lookup, _, None) => return Err(
                "a lookup route needs `lookup` (user, user_list, file, verify_session or logout)"
                    .into(),
            ),
            (PolicyName::Pass, None, None) => Route::Pass,
            (PolicyName::Deny, None, None) => Route::Deny,
            _ => return Err("`schema` is for session routes, `lookup` for lookup routes".into()),
        };
    Ok(route)
}

/// A literal segment must mean itself to every hop: no escapes, no dot segments.
fn plain_literal(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'%' | b'\\' | b'{' | b'}' | b'?' | b'#'))
}

fn template(p: &str) -> Result<Pattern, String> {
    let rest = p
        .strip_prefix('/')
        .ok_or_else(|| format!("path {p:?} must start with /"))?;
    let mut segs = Vec::new();
    for s in rest.split('/') {
        if let Some(name) = s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("path {p:?}: bad parameter {s:?}"));
            }
            segs.push(Segment::Param);
        } else if plain_literal(s) {
            segs.push(Segment::Literal(s.into()));
        } else {
            return Err(format!(
                "path {p:?}: segment {s:?} must be plain text or a whole {{param}}"
            ));
        }
    }
    Ok(Pattern::Template(segs.into_boxed_slice()))
}

fn prefix(p: &str) -> Result<Pattern, String> {
    let inner = p
        .strip_prefix('/')
        .and_then(|p| p.strip_suffix('/'))
        .ok_or_else(|| format!("prefix {p:?} must start and end with /"))?;
    if !inner.is_empty() && !inner.split('/').all(plain_literal) {
        return Err(format!("prefix {p:?}: every segment must be plain text"));
    }
    Ok(Pattern::Prefix(p.into()))
}

/// A path every hop reads the same way (see the module doc).
#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(60);

    fn table() -> RouteTable {
        RouteTable::defaults(IDLE).unwrap()
    }

    /// The matcher as it was before paths were split once: each template splits the path.
    fn reference(t: &RouteTable, method: &Method, path: &str) -> Option<&'static str> {
        let rest = path.strip_prefix('/')?;
        if path.contains('\\') || !rest.split('/').all(|s| plain_segment(s, true)) {
            return None;
        }
        let hit = |p: &Pattern| match p {
            Pattern::Prefix(p) => path.starts_with(&**p),
            Pattern::Template(segs) => {
                let mut parts = rest.split('/');
                segs.iter()
                    .all(|seg| parts.next().is_some_and(|part| segment_matches(seg, part)))
                    && parts.next().is_none()
            }
        };
        t.entries
            .iter()
            .find(|e| hit(&e.pattern) && e.allows(method))
            .map(|e| e.label.name())
    }

    #[test]
    fn splitting_once_matches_as_splitting_per_template() {
        let t = table();
        let segs = [
            "",
            "api",
            "v3",
            "v4",
            "v5",
            "sessions",
            "users",
            "list",
            "files",
            "x",
            "%2e",
            ".",
            "socket.io",
            "visitor",
            "download",
            "a%2Fb",
            "a\\b",
            "%5C",
        ];
        let mut paths = vec!["/".to_owned(), String::new(), "api".to_owned()];
        for a in segs {
            for b in segs {
                for c in segs {
                    paths.push(format!("/{a}/{b}/{c}"));
                    paths.push(format!("/api/{a}/{b}/{c}/"));
                }
            }
        }
        paths.push(format!("/api{}", "/x".repeat(MAX_SEGMENTS + 3)));
        paths.push(format!("/socket.io{}", "/x".repeat(MAX_SEGMENTS)));
        for m in [Method::GET, Method::POST, Method::DELETE, Method::PUT] {
            for p in &paths {
                assert_eq!(name(&t, m.clone(), p), reference(&t, &m, p), "{m} {p:?}");
            }
        }
    }

    fn name(t: &RouteTable, m: Method, p: &str) -> Option<&'static str> {
        t.matches(&m, p).map(|x| x.label.name())
    }

    #[test]
    fn default_table_serves_the_policy_routes_and_passes_the_rest_of_the_api() {
        let t = table();
        let cases = [
            (Method::POST, "/api/v3/sessions", Some("session_v3")),
            (Method::POST, "/api/v4/sessions", Some("session_v4")),
            (Method::POST, "/api/v5/sessions", Some("session_v5")),
            (
                Method::POST,
                "/api/v5/sessions/visitor",
                Some("session_visitor"),
            ),
            (Method::GET, "/api/v3/sessions", Some("verify_session")),
            (Method::DELETE, "/api/v4/sessions", Some("logout")),
            (
                Method::DELETE,
                "/api/v4/sessions/users/u-1",
                Some("revoke_user"),
            ),
            (Method::GET, "/api/v3/users/u-1", Some("user")),
            (Method::GET, "/api/v3/users/list", Some("user_list")),
            (Method::GET, "/api/v3/files/f-1", Some("file")),
            (Method::GET, "/api/v3/network-settings/chat", Some("api")),
            (Method::PUT, "/api/v3/sessions", Some("api")),
            (Method::OPTIONS, "/api/v5/sessions", Some("api")),
            (Method::GET, "/api/v3/users/", Some("api")),
            (Method::GET, "/api/v3/files/f-1/download", Some("api")),
            (Method::POST, "/api/v3/users/u-1", Some("api")),
            (Method::GET, "/socket.io/", Some("realtime")),
            (Method::GET, "/", None),
            (Method::GET, "/admin", None),
            (Method::GET, "/api", None),
            (Method::GET, "/apix/v3", None),
            (Method::GET, "/socket.io", None),
            (Method::GET, "/..%2fapi/v3/x", None),
            (Method::GET, "/api/../admin", None),
            (Method::GET, "/api/v3/users/..", None),
            (Method::GET, "/api/v3/users/.", None),
            (Method::GET, "/api/v3/users/%2e%2E", None),
            (Method::GET, "/api/v3/files/a%2Fb", None),
            (Method::GET, "/api/v3/files/a%5cb", None),
            (Method::GET, "/api/v3/files/a\\b", None),
            (Method::GET, "*", None),
        ];
        for (m, p, want) in cases {
            assert_eq!(name(&t, m.clone(), p), want, "{m} {p}");
        }
        let m = t
            .matches(&Method::POST, "/api/v5/sessions/visitor")
            .unwrap();
        assert_eq!(m.route, Route::VisitorSession);
        let m = t.matches(&Method::GET, "/socket.io/?x").unwrap();
        assert_eq!(
            m.pass,
            Some(PassLimits {
                idle_timeout: IDLE,
                max_body_bytes: None
            })
        );
    }

    #[test]
    fn longest_prefix_and_literal_segments_win_whatever_the_file_order() {
        let mut routes = vec![
            route("wide", &[], "/api/*", PolicyName::Pass),
            route("narrow", &[], "/api/v3/*", PolicyName::Deny),
            route("by_id", &["GET"], "/api/v3/things/{id}", PolicyName::Pass),
            route("mine", &["GET"], "/api/v3/things/mine", PolicyName::Deny),
        ];
        let t = RouteTable::compile(&routes, IDLE).unwrap();
        assert_eq!(name(&t, Method::GET, "/api/v4/x"), Some("wide"));
        assert_eq!(name(&t, Method::GET, "/api/v3/x"), Some("narrow"));
        assert_eq!(name(&t, Method::GET, "/api/v3/things/7"), Some("by_id"));
        assert_eq!(name(&t, Method::GET, "/api/v3/things/mine"), Some("mine"));
        // A method the specific route does not serve falls to the next route.
        assert_eq!(name(&t, Method::POST, "/api/v3/things/7"), Some("narrow"));
        routes.reverse();
        let t = RouteTable::compile(&routes, IDLE).unwrap();
        assert_eq!(name(&t, Method::GET, "/api/v3/things/mine"), Some("mine"));
        assert_eq!(name(&t, Method::GET, "/api/v3/x"), Some("narrow"));
    }

    fn err(routes: &[RouteFile]) -> String {
        RouteTable::compile(routes, IDLE).unwrap_err().to_string()
    }

    #[test]
    fn malformed_and_ambiguous_tables_are_rejected_by_route_name() {
        let ok = route("fine", &[], "/api/*", PolicyName::Pass);
        let cases: Vec<(RouteFile, &str)> = vec![
            (route("Bad-Name", &[], "/x/*", PolicyName::Pass), "Bad-Name"),
            (
                route("unmatched", &[], "/x/*", PolicyName::Pass),
                "unmatched",
            ),
            (
                route("no_slash", &[], "api/*", PolicyName::Pass),
                "no_slash",
            ),
            (route("dots", &[], "/api/../*", PolicyName::Pass), "dots"),
            (
                route("escape", &[], "/api/%2e/x", PolicyName::Pass),
                "escape",
            ),
            (
                route("half_param", &[], "/api/v{n}/x", PolicyName::Pass),
                "half_param",
            ),
            (route("lower", &["get"], "/y", PolicyName::Pass), "lower"),
            (route("sess", &[], "/s", PolicyName::Session), "sess"),
            (
                session("sess_get", "/s", SchemaName::V3).with_methods(&["GET"]),
                "sess_get",
            ),
            (
                lookup("user_lit", "GET", "/api/v3/users/me", LookupName::User),
                "user_lit",
            ),
            (
                RouteFile {
                    idle_timeout_ms: Some(5),
                    ..session("sess_idle", "/s", SchemaName::V3)
                },
                "sess_idle",
            ),
            (
                RouteFile {
                    prefix: Some("/p/".into()),
                    ..route("both", &[], "/x", PolicyName::Pass)
                },
                "both",
            ),
        ];
        for (bad, needle) in cases {
            let msg = err(&[ok.clone(), bad]);
            assert!(
                msg.contains(needle) && msg.contains("routes"),
                "{needle}: {msg}"
            );
        }
        let msg = err(&[ok.clone(), route("fine", &[], "/other/*", PolicyName::Pass)]);
        assert!(msg.contains("\"fine\"") && msg.contains("twice"), "{msg}");
        let msg = err(&[
            route("a", &["GET", "POST"], "/api/v3/{x}", PolicyName::Pass),
            route("b", &["POST"], "/api/v3/{y}", PolicyName::Deny),
        ]);
        assert!(
            msg.contains("\"a\"") && msg.contains("\"b\"") && msg.contains("ambiguous"),
            "{msg}"
        );
        let msg = err(&[
            ok.clone(),
            route("again", &["GET"], "/api/*", PolicyName::Deny),
        ]);
        assert!(msg.contains("ambiguous"), "{msg}");
        assert!(err(&[]).contains("empty"));
        // Same shape, disjoint methods: fine.
        RouteTable::compile(
            &[
                route("g", &["GET"], "/api/v3/{x}", PolicyName::Pass),
                route("p", &["POST"], "/api/v3/{y}", PolicyName::Deny),
            ],
            IDLE,
        )
        .unwrap();
    }

    impl RouteFile {
        fn with_methods(mut self, m: &[&str]) -> Self {
            self.methods = m.iter().map(|m| (*m).to_owned()).collect();
            self
        }
    }

    #[test]
    fn render_lists_every_route_in_matching_order() {
        let text = table().render();
        let order: Vec<&str> = text
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(order.first(), Some(&"session_v3"));
        assert_eq!(&order[order.len() - 3..], &["realtime", "api", "(anything"]);
        let user_list = order.iter().position(|n| *n == "user_list").unwrap();
        let user = order.iter().position(|n| *n == "user").unwrap();
        assert!(user_list < user, "{text}");
        assert_eq!(order.len(), default_routes().len() + 1);
    }
}
