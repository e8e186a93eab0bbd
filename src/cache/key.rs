//! What identifies a lookup answer: the partition (whose answers), the route, the id(s), and
//! the query parameters that change the answer. Requests the gateway does not fully understand
//! are not cached at all: an unknown query parameter might change the answer.
//!
//! * `GET /api/v3/users/{userId}`: the id percent-decoded (the upstream decodes it too);
//!   `type=public` and no `type` are the same answer; `type=internal` and any other value or
//!   parameter are never cached.
//! * `GET /api/v3/users/list?userIds=…`: cached only in the forms every query parser reads the
//!   same way: repeated `userIds=a&userIds=b` or `userIds[]=` (also percent-encoded), each id
//!   once; indexed keys (`userIds[0]=`), commas and repeated ids are forwarded uncached. Order
//!   is kept on purpose: the answer lists users in request order, so `[a,b]` and `[b,a]` are
//!   different bytes.
//! * `GET /api/v3/files/{fileId}`: the id percent-decoded; any query parameter is not cached.

use http::Uri;

use super::tokens::Partition;
use crate::routes::Route;
use crate::wire::{percent_decode, user_ids_from_query};

/// Upstream limit on ids per list call; longer lists are an upstream 422, never cached.
pub const MAX_LIST_IDS: usize = 100;

/// Which lookup: also the `cache` label of the request counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    User,
    UserList,
    File,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::User, Kind::UserList, Kind::File];

    pub fn of(route: Route) -> Option<Kind> {
        match route {
            Route::User => Some(Kind::User),
            Route::UserList => Some(Kind::UserList),
            Route::File => Some(Kind::File),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::User => "user",
            Kind::UserList => "user_list",
            Kind::File => "file",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Kind::User => 0,
            Kind::UserList => 1,
            Kind::File => 2,
        }
    }
}

/// A cacheable lookup, normalised; [`Lookup::key`] places it in a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub kind: Kind,
    /// The decoded ids, in request order.
    pub ids: Vec<String>,
}

/// The store's key. `ids` holds every id length-prefixed, so no id can fake a separator.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    partition: Partition,
    kind: Kind,
    ids: Box<str>,
}

impl Key {
    pub fn new<'a>(
        partition: Partition,
        kind: Kind,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let mut enc = String::new();
        let mut len = itoa::Buffer::new();
        for id in ids {
            enc.push_str(len.format(id.len()));
            enc.push(':');
            enc.push_str(id);
        }
        Self {
            partition,
            kind,
            ids: enc.into_boxed_str(),
        }
    }

    /// Bytes this key holds, for the store's weigher.
    pub fn weight(&self) -> usize {
        self.ids.len() + std::mem::size_of::<Self>()
    }
}

impl Lookup {
    /// The normalised lookup of a request on `route`, or `None` when it must not be cached.
    pub fn of(route: Route, uri: &Uri) -> Option<Lookup> {
        let kind = Kind::of(route)?;
        let query = uri.query().unwrap_or("");
        let ids = match kind {
            Kind::User => {
                let raw = uri.path().strip_prefix("/api/v3/users/")?;
                public_only(query)?;
                vec![percent_decode(raw, false)]
            }
            Kind::File => {
                let raw = uri.path().strip_prefix("/api/v3/files/")?;
                if pairs(query).next().is_some() {
                    return None;
                }
                vec![percent_decode(raw, false)]
            }
            Kind::UserList => {
                // Only the forms whose meaning does not depend on how the upstream's query
                // parser treats commas, indices or repeats are cached: repeated `userIds=` or
                // `userIds[]=` (plain or percent-encoded), each id once. Anything else is
                // forwarded uncached, so a hit never answers a query the upstream reads otherwise.
                // The cap is checked before any id is decoded: a long list costs one count.
                let count = pairs(query).count();
                if count == 0 || count > MAX_LIST_IDS {
                    return None;
                }
                let unambiguous = pairs(query).all(|(k, v)| {
                    matches!(percent_decode(k, true).as_str(), "userIds" | "userIds[]")
                        && !percent_decode(v, true).contains(',')
                });
                if !unambiguous {
                    return None;
                }
                let ids = user_ids_from_query(query, MAX_LIST_IDS).ok()?;
                if ids.len() != count {
                    return None;
                }
                ids
            }
        };
        if ids.iter().any(String::is_empty) {
            return None;
        }
        Some(Lookup { kind, ids })
    }

    pub fn key(&self, partition: Partition) -> Key {
        Key::new(partition, self.kind, self.ids.iter().map(String::as_str))
    }
}

/// The non-empty `key=value` pairs of a query.
fn pairs(query: &str) -> impl Iterator<Item = (&str, &str)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// The users whose every token an admin revocation names: `DELETE /api/v4/sessions?userId=U`
/// (every `userId` when repeated: any of them may be the one the upstream reads) or
/// `DELETE /api/v4/sessions/users/{U}`, decoded as the upstream decodes them.
pub fn revoked_users(uri: &Uri) -> impl Iterator<Item = String> + '_ {
    let in_path = uri
        .path()
        .strip_prefix("/api/v4/sessions/users/")
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .map(|id| percent_decode(id, false));
    pairs(uri.query().unwrap_or(""))
        .filter(|(k, _)| matches!(percent_decode(k, true).as_str(), "userId" | "userId[]"))
        .map(|(_, v)| percent_decode(v, true))
        .chain(in_path)
}

/// `Some(())` when the query asks for the public user view: no parameter but at most one
/// `type=public`.
fn public_only(query: &str) -> Option<()> {
    let mut seen_type = false;
    for (k, v) in pairs(query) {
        if percent_decode(k, true) != "type" || seen_type || percent_decode(v, true) != "public" {
            return None;
        }
        seen_type = true;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(route: Route, uri: &str) -> Option<Lookup> {
        Lookup::of(route, &uri.parse().unwrap())
    }

    fn ids(route: Route, uri: &str) -> Vec<String> {
        lookup(route, uri).unwrap().ids
    }

    #[test]
    fn user_ids_are_decoded_and_type_public_is_the_default() {
        assert_eq!(
            ids(Route::User, "/api/v3/users/a%20b%2F%C3%BC"),
            vec!["a b/ü"]
        );
        let plain = lookup(Route::User, "/api/v3/users/u1").unwrap();
        assert_eq!(
            lookup(Route::User, "/api/v3/users/u1?type=public"),
            Some(plain.clone())
        );
        assert_eq!(
            lookup(Route::User, "/api/v3/users/u%31?&type=public&"),
            Some(plain)
        );
    }

    #[test]
    fn internal_odd_or_unknown_parameters_are_never_cached() {
        for uri in [
            "/api/v3/users/u1?type=internal",
            "/api/v3/users/u1?type=INTERNAL",
            "/api/v3/users/u1?type=public&type=internal",
            "/api/v3/users/u1?type=public&type=public",
            "/api/v3/users/u1?type",
            "/api/v3/users/u1?fresh=1",
        ] {
            assert_eq!(lookup(Route::User, uri), None, "{uri}");
        }
        assert_eq!(lookup(Route::File, "/api/v3/files/f1?size=full"), None);
        assert_eq!(
            lookup(Route::UserList, "/api/v3/users/list?userIds=a&type=x"),
            None
        );
        assert_eq!(lookup(Route::UserList, "/api/v3/users/list"), None);
        assert_eq!(lookup(Route::Logout, "/api/v4/sessions"), None);
    }

    #[test]
    fn list_encodings_normalise_to_one_key_and_order_is_kept() {
        let want = vec!["a".to_owned(), "b c".to_owned()];
        for q in [
            "userIds=a&userIds=b+c",
            "userIds[]=a&userIds[]=b%20c",
            "userIds%5B%5D=a&userIds%5b%5d=b+c",
            "userIds=a&userIds[]=b+c",
        ] {
            assert_eq!(
                ids(Route::UserList, &format!("/api/v3/users/list?{q}")),
                want,
                "{q}"
            );
        }
        assert_eq!(
            ids(Route::UserList, "/api/v3/users/list?userIds=b&userIds=a"),
            vec!["b", "a"]
        );
        // Forms whose reading depends on the upstream's query parser are never cached.
        for q in [
            "userIds[0]=a&userIds[1]=b",
            "userIds=a,b",
            "userIds=a%2Cb",
            "userIds=a&userIds=b&userIds=a",
        ] {
            assert_eq!(
                lookup(Route::UserList, &format!("/api/v3/users/list?{q}")),
                None,
                "{q}"
            );
        }
        let many: String = (0..=MAX_LIST_IDS)
            .map(|i| format!("userIds={i}&"))
            .collect();
        assert_eq!(
            lookup(Route::UserList, &format!("/api/v3/users/list?{many}")),
            None
        );
    }

    #[test]
    fn revocations_name_their_users_in_query_or_path() {
        let users = |uri: &str| revoked_users(&uri.parse().unwrap()).collect::<Vec<_>>();
        assert!(users("/api/v4/sessions").is_empty());
        assert_eq!(
            users("/api/v4/sessions?userId=a%20b&isPublic=true"),
            ["a b"]
        );
        assert_eq!(users("/api/v4/sessions?userId=a&userId[]=b"), ["a", "b"]);
        assert_eq!(users("/api/v4/sessions/users/u%2B1"), ["u+1"]);
        assert!(users("/api/v4/sessions/users/").is_empty());
    }

    #[test]
    fn keys_separate_partitions_kinds_and_id_boundaries() {
        let p = Partition::of_network(b"k");
        let q = Partition::of_network(b"other");
        let k = |p, kind, ids: &[&str]| Key::new(p, kind, ids.iter().copied());
        assert_eq!(k(p, Kind::User, &["a"]), k(p, Kind::User, &["a"]));
        assert_ne!(k(p, Kind::User, &["a"]), k(q, Kind::User, &["a"]));
        assert_ne!(k(p, Kind::User, &["a"]), k(p, Kind::File, &["a"]));
        assert_ne!(
            k(p, Kind::UserList, &["a", "b"]),
            k(p, Kind::UserList, &["a1:b"])
        );
        assert_ne!(
            k(p, Kind::UserList, &["ab"]),
            k(p, Kind::UserList, &["a", "b"])
        );
    }
}
