//! Bounded label values. Every label the gateway exports comes from a fixed set defined here (or
//! from the route table), so no client input can create a series: a deviceId, userId, token, raw
//! path or odd HTTP method has no way into a label value.
//!
//! Each set maps to a small index ("slot"), which is how the metrics find their pre-resolved
//! children without hashing label strings per request.

use http::Method;

use crate::routes::label::MAX_LABELS;
use crate::routes::RouteLabel;

/// Defines a closed set of label values: an enum with `ALL`, `label()` and `slot()`.
macro_rules! label_set {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $label:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name { $($(#[$vmeta])* $variant,)+ }

        impl $name {
            /// Every value, in slot order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The label value.
            pub fn label(self) -> &'static str {
                match self { $($name::$variant => $label,)+ }
            }

            pub(crate) fn slot(self) -> usize {
                self as usize
            }
        }
    };
}

label_set! {
    /// `kind` of `gateway_upstream_errors_total`, from `GatewayError::kind`.
    pub enum UpstreamErrorKind {
        /// No connection could be made.
        Connect => "connect",
        /// No complete answer within the upstream budget.
        Timeout => "timeout",
        /// The upstream answered something that is not a usable HTTP response.
        Protocol => "protocol",
    }
}

impl UpstreamErrorKind {
    /// The slot of a `GatewayError::kind()` label, if it is an upstream kind.
    pub(crate) fn from_label(kind: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.label() == kind)
    }
}

// ------------------------------------------------------------------ routes

/// Route slots: one per route name (see [`RouteLabel`]), then one shared by every unmatched
/// request.
pub(crate) const ROUTES: usize = MAX_LABELS + 1;

pub(crate) fn route_label(slot: usize) -> &'static str {
    RouteLabel::of_slot(slot)
}

// ------------------------------------------------------------------ methods

/// The standard methods keep their name; any extension method is `other`.
const METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::OPTIONS,
    Method::PATCH,
    Method::CONNECT,
    Method::TRACE,
];
pub(crate) const METHOD_SLOTS: usize = METHODS.len() + 1;

pub(crate) fn method_slot(m: &Method) -> usize {
    METHODS
        .iter()
        .position(|x| x == m)
        .unwrap_or(METHOD_SLOTS - 1)
}

pub(crate) fn method_label(slot: usize) -> &'static str {
    METHODS.get(slot).map_or("other", Method::as_str)
}

// ------------------------------------------------------------------ statuses

/// Defines the statuses with a pre-resolved child (sorted) and their label strings.
macro_rules! statuses {
    ($($code:literal)*) => {
        const STATUSES: &[u16] = &[$($code,)*];
        const STATUS_LABELS: &[&str] = &[$(stringify!($code),)*];
    };
}

// Others are still counted under their own code (at most the 900 codes `http` can represent)
// through the registry's own child map.
statuses!(
    200 201 204 206 301 302 304 400 401 403 404 405 408 409 410 413 415 422 429
    500 501 502 503 504
);
pub(crate) const STATUS_SLOTS: usize = STATUSES.len();

pub(crate) fn status_slot(status: u16) -> Option<usize> {
    STATUSES.binary_search(&status).ok()
}

pub(crate) fn status_label(slot: usize) -> &'static str {
    STATUS_LABELS.get(slot).copied().unwrap_or("000")
}

// ------------------------------------------------------------------ validated fields

/// `field` of `gateway_validation_failures_total`: the checked fields of a session body (their
/// JSON pointer with `/` written as `.`), `body` for a body that could not be read as a JSON
/// object, and `other` for any pointer outside this set.
pub const FIELDS: [&str; 11] = [
    "userId",
    "deviceId",
    "deviceInfo",
    "deviceInfo.kind",
    "deviceInfo.model",
    "deviceInfo.sdkVersion",
    "displayName",
    "authToken",
    "profileHandle",
    BODY,
    OTHER,
];
const BODY: &str = "body";
const OTHER: &str = "other";
pub(crate) const FIELD_SLOTS: usize = FIELDS.len();
pub(crate) const BODY_SLOT: usize = FIELD_SLOTS - 2;
const OTHER_SLOT: usize = FIELD_SLOTS - 1;

/// The field slot of a violation's JSON pointer: `/deviceInfo/kind` is `deviceInfo.kind`; the
/// empty pointer (the whole document) is `body`; anything unknown is `other`.
pub(crate) fn field_slot(pointer: &str) -> usize {
    let Some(path) = pointer.strip_prefix('/') else {
        return if pointer.is_empty() {
            BODY_SLOT
        } else {
            OTHER_SLOT
        };
    };
    FIELDS[..BODY_SLOT]
        .iter()
        .position(|f| {
            f.len() == path.len()
                && f.bytes()
                    .zip(path.bytes())
                    .all(|(f, p)| if f == b'.' { p == b'/' } else { f == p })
        })
        .unwrap_or(OTHER_SLOT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_map_to_bounded_fields() {
        let label = |p: &str| FIELDS[field_slot(p)];
        assert_eq!(label("/userId"), "userId");
        assert_eq!(label("/deviceInfo/kind"), "deviceInfo.kind");
        assert_eq!(label("/deviceInfo/sdkVersion"), "deviceInfo.sdkVersion");
        assert_eq!(label("/profileHandle"), "profileHandle");
        assert_eq!(label(""), "body");
        for odd in [
            "/",
            "/deviceInfo.kind",
            "/userid",
            "/userId/x",
            "/a-device-123",
            "userId",
            "/deviceInfo/kind/0",
        ] {
            assert_eq!(label(odd), "other", "{odd:?}");
        }
    }

    #[test]
    fn methods_and_statuses_are_bounded() {
        assert_eq!(method_label(method_slot(&Method::POST)), "POST");
        let odd = Method::from_bytes(b"X-DEVICE-123").unwrap();
        assert_eq!(method_label(method_slot(&odd)), "other");
        assert!(STATUSES.windows(2).all(|w| w[0] < w[1]), "sorted");
        for (i, s) in STATUSES.iter().enumerate() {
            assert_eq!(status_slot(*s), Some(i));
            assert_eq!(status_label(i), s.to_string());
        }
        assert_eq!(status_slot(418), None);
    }

    #[test]
    fn routes_have_slots_and_unmatched_shares_the_last() {
        let table = crate::routes::RouteTable::defaults(std::time::Duration::from_secs(1)).unwrap();
        for e in table.entries() {
            assert!(e.label.slot() < ROUTES - 1);
            assert_eq!(route_label(e.label.slot()), e.label.name());
        }
        assert_eq!(RouteLabel::UNMATCHED.slot(), ROUTES - 1);
        assert_eq!(route_label(ROUTES - 1), crate::routes::UNMATCHED);
    }

    #[test]
    fn label_sets_are_slot_ordered() {
        for (i, k) in UpstreamErrorKind::ALL.iter().enumerate() {
            assert_eq!(k.slot(), i);
        }
        assert_eq!(
            UpstreamErrorKind::from_label("timeout"),
            Some(UpstreamErrorKind::Timeout)
        );
        assert_eq!(UpstreamErrorKind::from_label("overloaded"), None);
    }
}
