//! Helpers for unit tests.

use http::{HeaderMap, HeaderValue};

/// A header map of static pairs, repeated names appended in order.
pub fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_static(v));
    }
    h
}
