use std::borrow::Cow;
use std::time::Duration;

use http::Method;

use super::*;
use crate::error::Violation;
use crate::layers::trace::Outcome;

fn scrape(m: &Metrics) -> String {
    String::from_utf8(m.encode().1).unwrap()
}

/// The value of the one sample line starting with `series` (name and labels, exactly).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn finished(m: &Metrics, route: &'static str, method: &Method, status: u16) {
    m.started();
    m.finished(&Finished {
        route: RouteLabel::intern(route).unwrap(),
        method,
        status,
        secs: 0.02,
        outcome: Outcome {
            upstream: Some(Duration::from_millis(15)),
            ..Outcome::default()
        },
    });
}

#[test]
fn requests_are_counted_by_route_method_and_status() {
    let m = Metrics::new().unwrap();
    for _ in 0..3 {
        finished(&m, "session_v3", &Method::POST, 200);
    }
    finished(&m, "unmatched", &Method::from_bytes(b"BREW").unwrap(), 418);
    finished(&m, "unmatched", &Method::GET, 404);
    let t = scrape(&m);
    assert_eq!(
        value(
            &t,
            r#"gateway_http_requests_total{method="POST",route="session_v3",status="200"}"#
        ),
        Some(3.0),
        "{t}"
    );
    assert_eq!(
        value(
            &t,
            r#"gateway_http_requests_total{method="other",route="unmatched",status="418"}"#
        ),
        Some(1.0),
        "rare status, extension method: {t}"
    );
    assert_eq!(
        value(
            &t,
            r#"gateway_http_requests_total{method="GET",route="unmatched",status="404"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &t,
            r#"gateway_http_request_duration_seconds_count{route="session_v3"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        value(
            &t,
            r#"gateway_upstream_request_duration_seconds_bucket{route="session_v3",le="0.025"}"#
        ),
        Some(3.0)
    );
    assert_eq!(value(&t, "gateway_inflight_requests"), Some(0.0));
}

/// A request dropped before its response (the client went away, perhaps after the key was
/// injected and the upstream acted) leaves the in-flight gauge and is counted as 499.
#[test]
fn requests_whose_client_went_away_are_counted_as_499() {
    use crate::layers::trace::TraceLayer;
    use tower::{Layer, Service};
    let m = Arc::new(Metrics::new().unwrap());
    let never = tower::service_fn(|_req: http::Request<()>| {
        std::future::pending::<Result<http::Response<crate::error::Body>, std::convert::Infallible>>(
        )
    });
    let table = crate::routes::RouteTable::defaults(std::time::Duration::from_secs(60)).unwrap();
    let mut svc = TraceLayer::new(m.clone(), Arc::new(table)).layer(never);
    let req = http::Request::post("/api/v3/sessions").body(()).unwrap();
    let pending = svc.call(req);
    assert_eq!(value(&scrape(&m), "gateway_inflight_requests"), Some(1.0));
    drop(pending);
    let t = scrape(&m);
    assert_eq!(value(&t, "gateway_inflight_requests"), Some(0.0));
    assert_eq!(
        value(
            &t,
            r#"gateway_http_requests_total{method="POST",route="session_v3",status="499"}"#
        ),
        Some(1.0),
        "{t}"
    );
}

#[test]
fn validation_failures_count_each_field_once_per_request() {
    let m = Arc::new(Metrics::new().unwrap());
    let hook = m.on_reject();
    let v = |p: &'static str| Violation {
        pointer: Cow::Borrowed(p),
        detail: Cow::Borrowed("x"),
    };
    hook(
        RouteLabel::intern("session_v5").unwrap(),
        &ApiError::Invalid(vec![
            v("/userId"),
            v("/userId"),
            v("/deviceInfo/kind"),
            v("/a-client-chosen-key"),
        ]),
    );
    hook(
        RouteLabel::intern("session_v3").unwrap(),
        &ApiError::BadRequest("malformed".into()),
    );
    let t = scrape(&m);
    for (series, want) in [
        (r#"{field="userId",route="session_v5"}"#, 1.0),
        (r#"{field="deviceInfo.kind",route="session_v5"}"#, 1.0),
        (r#"{field="other",route="session_v5"}"#, 1.0),
        (r#"{field="body",route="session_v3"}"#, 1.0),
    ] {
        let name = format!("gateway_validation_failures_total{series}");
        assert_eq!(value(&t, &name), Some(want), "{name}\n{t}");
    }
    assert!(!t.contains("a-client-chosen-key"));
}

#[test]
fn only_upstream_errors_are_counted_by_kind() {
    let m = Arc::new(Metrics::new().unwrap());
    let hook = m.on_error();
    let errs: Vec<BoxError> = vec![
        GatewayError::UpstreamConnect("refused".into()).into(),
        GatewayError::UpstreamTimeout.into(),
        GatewayError::UpstreamTooLarge.into(),
        GatewayError::UpstreamProtocol("reset".into()).into(),
        "something else".into(),
    ];
    for e in &errs {
        hook(e);
    }
    let t = scrape(&m);
    for (kind, want) in [("connect", 1.0), ("timeout", 1.0), ("protocol", 2.0)] {
        let name = format!(r#"gateway_upstream_errors_total{{kind="{kind}"}}"#);
        assert_eq!(value(&t, &name), Some(want), "{name}\n{t}");
    }
}

#[test]
fn rate_limit_families_start_at_zero() {
    let m = Metrics::new().unwrap();
    let t = scrape(&m);
    for b in crate::ratelimit::BackendKind::ALL {
        for d in crate::ratelimit::Verdict::ALL {
            let name = format!(
                r#"gateway_rate_limit_decisions_total{{backend="{}",decision="{}"}}"#,
                b.label(),
                d.label()
            );
            assert_eq!(value(&t, &name), Some(0.0), "{name}");
        }
    }
    assert_eq!(
        value(&t, "gateway_rate_limit_backend_errors_total"),
        Some(0.0)
    );
}

#[test]
fn draining_follows_health_and_build_info_names_the_version() {
    let m = Arc::new(Metrics::new().unwrap());
    let health = Arc::new(Health::default());
    let settings = crate::cache::settings::CacheFile::default()
        .resolve()
        .unwrap();
    let cache = Arc::new(crate::cache::LookupCache::new(&settings));
    let render = m.render(
        health.clone(),
        move || (cache.clone(), None),
        Default::default(),
    );
    let text = |r: &MetricsRender| String::from_utf8(r().1).unwrap();
    assert_eq!(value(&text(&render), "gateway_draining"), Some(0.0));
    health.start_draining();
    let t = text(&render);
    assert_eq!(value(&t, "gateway_draining"), Some(1.0));
    let info = format!(
        r#"gateway_build_info{{version="{}"}}"#,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value(&t, &info), Some(1.0));
    assert!(render().0.starts_with("text/plain; version=0.0.4"));
}

#[test]
fn every_family_is_registered_under_the_gateway_prefix_or_process() {
    let m = Metrics::new().unwrap();
    let names = m.family_names();
    for n in names {
        assert!(
            n.starts_with("gateway_") || n.starts_with("process_"),
            "{n}"
        );
    }
    for want in [
        "gateway_http_requests_total",
        "gateway_http_request_duration_seconds",
        "gateway_upstream_request_duration_seconds",
        "gateway_upstream_errors_total",
        "gateway_validation_failures_total",
        "gateway_rate_limit_decisions_total",
        "gateway_rate_limit_backend_errors_total",
        "gateway_cache_requests_total",
        "gateway_cache_entries",
        "gateway_cache_purges_total",
        "gateway_inflight_requests",
        "gateway_draining",
        "gateway_build_info",
        "gateway_config_reloads_total",
        "gateway_config_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
    }
}
