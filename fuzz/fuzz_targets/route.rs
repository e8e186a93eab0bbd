//! The route matcher (the default route table): any method and path, raw or as `http::Uri`
//! parses a request target, is matched without panicking, to a bounded label, and only when no
//! path segment is `.` or `..` or hides a `/` or `\` (even percent-encoded), so a hop that
//! normalises paths cannot turn a matched path into one outside the table.
//!
//! The input reads as a request line's start: `METHOD SP PATH`.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use amity_gateway::routes::RouteTable;
use http::{Method, Uri};
use libfuzzer_sys::fuzz_target;

fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        RouteTable::defaults(Duration::from_secs(60)).expect("the default table compiles")
    })
}

/// The matcher under test: the label of the route `method` and `path` match, if any. The one
/// place to change when the matcher changes.
fn matched(method: &Method, path: &str) -> Option<&'static str> {
    table().matches(method, path).map(|m| m.label.name())
}

/// Every label the matcher may answer.
fn labels() -> Vec<&'static str> {
    table().entries().iter().map(|e| e.label.name()).collect()
}

fuzz_target!(|data: &[u8]| {
    let Some(space) = data.iter().position(|&b| b == b' ') else {
        return;
    };
    let Ok(method) = Method::from_bytes(&data[..space]) else {
        return;
    };
    let target = &data[space + 1..];
    let raw = String::from_utf8_lossy(target);
    check(&method, &raw);
    if let Ok(uri) = Uri::try_from(target) {
        check(&method, uri.path());
    }
});

fn check(method: &Method, path: &str) {
    let Some(label) = matched(method, path) else {
        return;
    };
    assert!(labels().contains(&label), "{label}");
    assert_eq!(matched(method, path), Some(label), "not deterministic");
    let rest = path
        .strip_prefix('/')
        .unwrap_or_else(|| panic!("{method} {path:?} matched {label} without a leading /"));
    for segment in rest.split('/') {
        let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
        assert!(
            decoded != "." && decoded != ".." && !decoded.contains(['/', '\\']),
            "{method} {path:?} matched {label} with segment {segment:?}"
        );
    }
}
