//! Prometheus metrics: one registry, served on the admin listener at `/metrics`.
//!
//! | family | type | labels |
//! | --- | --- | --- |
//! | `gateway_http_requests_total` | counter | `route`, `method`, `status` |
//! | `gateway_http_request_duration_seconds` | histogram | `route` |
//! | `gateway_upstream_request_duration_seconds` | histogram | `route` |
//! | `gateway_upstream_errors_total` | counter | `kind`: connect, timeout, protocol |
//! | `gateway_validation_failures_total` | counter | `route`, `field` (see [`labels::FIELDS`]) |
//! | `gateway_rate_limit_decisions_total` | counter | `backend`: local, redis; `decision`: allowed, limited, fallback_allowed, fallback_denied |
//! | `gateway_rate_limit_backend_errors_total` | counter | |
//! | `gateway_cache_requests_total` | counter | `cache`: user, user_list, file; `result`: hit, miss, bypass |
//! | `gateway_cache_entries` | gauge | `cache` |
//! | `gateway_cache_purges_total` | counter | |
//! | `gateway_cache_shared_synced` | gauge | 1 while `[cache.shared]` is caught up with the other replicas' facts; 0 while on local truth (or sharing is off) |
//! | `gateway_cache_shared_facts_total` | counter | `direction`: published, applied |
//! | `gateway_cache_shared_resets_total` | counter | |
//! | `gateway_inflight_requests` | gauge | |
//! | `gateway_refusals_total` | counter | `reason`: concurrency, streams, connections, connections_per_ip, answer_budget |
//! | `gateway_accept_errors_total` | counter | |
//! | `gateway_answer_bytes_held` | gauge | bytes of answers held for clients (`server.answer_budget_bytes`) |
//! | `gateway_send_stalls_total` | counter | connections closed for an answer not taken within `server.send_timeout_ms` |
//! | `gateway_draining` | gauge | 1 once shutdown has begun |
//! | `gateway_tunnels_open` | gauge | websocket tunnels open on pass routes |
//! | `gateway_tunnels_total` | counter | websocket tunnels opened |
//! | `gateway_stream_idle_closes_total` | counter | `kind` (`body`, `tunnel`) |
//! | `gateway_build_info` | gauge (always 1) | `version` |
//! | `gateway_config_reloads_total` | counter | `result`: ok, error |
//! | `gateway_config_info` | gauge (always 1) | `hash`: of the configuration in use |
//! | `process_*` | standard process metrics (CPU, memory, open fds, start time) | |
//!
//! Every label value comes from a closed set ([`labels`]) or the route table; requests that
//! match no route share the `unmatched` route label and extension methods share `other`, so no
//! client input (device id, user id, token, path) can create a series.
//!
//! Cost on the request path: the children are resolved once per slot ([`children`]), so
//! observing a request is a few slot computations, atomic adds and two histogram observations,
//! with no hashing, locking or allocation (`benches/metrics.rs` measures it).

mod children;
pub mod labels;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::cache::key::Kind;
use crate::cache::stats::CacheResult;
use crate::cache::LookupCache;
use crate::error::{ApiError, BoxError, GatewayError};
use crate::layers::admission::{Refusal, Refusals};
use crate::layers::pass::{StreamCounts, StreamStats};
use crate::layers::rescue::OnError;
use crate::layers::trace::{Finished, Observer};
use crate::layers::validate::OnReject;
use crate::ratelimit::{BackendKind, RateLimitStats, Verdict};
use crate::routes::RouteLabel;
use crate::server::{Health, MetricsRender};
use children::Children;
use labels::*;

pub use labels::UpstreamErrorKind;

/// Histogram buckets in seconds, for a mobile API: the gateway's own answers take well under a
/// millisecond, a healthy upstream answers in tens to hundreds of milliseconds, and mobile
/// clients give up after a few seconds; the top buckets reach the default upstream (10 s) and
/// request (15 s) budgets so timeouts land in a bucket of their own.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0,
    15.0,
];

/// `cache` label of the one lookup store (answers of every lookup route share it).
const LOOKUP_STORE: &str = "lookup";

/// The gateway's metrics. Built once, shared behind an `Arc` by the stack (as its
/// [`Observer`] and the validation/rescue hooks) and by the admin endpoint.
pub struct Metrics {
    registry: Registry,
    families: Vec<String>,
    requests: Children<IntCounterVec>,
    duration: Children<HistogramVec>,
    upstream_duration: Children<HistogramVec>,
    upstream_errors: Vec<IntCounter>,
    validation: Children<IntCounterVec>,
    rate_limit: Vec<Mirror>,
    rate_limit_backend_errors: Mirror,
    cache_requests: Vec<Mirror>,
    cache_entries: IntGauge,
    cache_bytes: IntGauge,
    cache_purges: Mirror,
    cache_shared_synced: IntGauge,
    cache_shared_facts: [Mirror; 2],
    cache_shared_resets: Mirror,
    inflight: IntGauge,
    draining: IntGauge,
    tunnels_open: IntGauge,
    tunnels: Mirror,
    idle_closes: Vec<Mirror>,
    config_reloads: Vec<IntCounter>,
    config_info: IntGaugeVec,
    /// Held while the mirrors are brought up to their sources, and while a reload swaps
    /// those sources, so that no scrape reads a retired source after its mirrors were reset.
    syncing: Mutex<()>,
    refusal_counts: Vec<Mirror>,
    accept_errors: Mirror,
    answer_bytes_held: IntGauge,
    send_stalls: Mirror,
    refusals: Arc<Refusals>,
}

/// A counter that mirrors a count kept elsewhere (the cache's, the limiter's), brought up to it
/// at each scrape. It remembers the count it last saw, so a source replaced by a configuration
/// reload (counting again from zero) continues the counter instead of stalling it.
struct Mirror {
    counter: IntCounter,
    seen: AtomicU64,
}

impl Mirror {
    fn new(counter: IntCounter) -> Self {
        Self {
            counter,
            seen: AtomicU64::new(0),
        }
    }

    /// Adds what the source counted since the last look; a total below the last one is a new
    /// source, all of whose count is new.
    fn follow(&self, total: u64) {
        let last = self.seen.swap(total, Ordering::Relaxed);
        self.counter
            .inc_by(if total >= last { total - last } else { total });
    }
}

/// `kind` of `gateway_stream_idle_closes_total`.
const IDLE_KINDS: [&str; 2] = ["body", "tunnel"];

/// Registers collectors and remembers their family names.
struct Register {
    registry: Registry,
    families: Vec<String>,
}

impl Register {
    fn add<C: Collector + Clone + 'static>(&mut self, c: C) -> prometheus::Result<C> {
        self.families
            .extend(c.desc().iter().map(|d| d.fq_name.clone()));
        self.registry.register(Box::new(c.clone()))?;
        Ok(c)
    }
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), labels)
}

fn latency(name: &str, help: &str) -> prometheus::Result<HistogramVec> {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        &["route"],
    )
}

/// One child per value of a closed label set (or of two, in row-major order), created up front so
/// that alerts and dashboards see zeros instead of missing series.
fn eager<V: Copy, W: Copy>(
    vec: &IntCounterVec,
    rows: &[V],
    cols: &[W],
    label: impl Fn(V, W) -> Vec<&'static str>,
) -> prometheus::Result<Vec<IntCounter>> {
    let mut out = Vec::with_capacity(rows.len() * cols.len());
    for r in rows {
        for c in cols {
            out.push(vec.get_metric_with_label_values(&label(*r, *c))?);
        }
    }
    Ok(out)
}

impl Metrics {
    /// A fresh registry with every family registered. Fails only on a registration bug.
    pub fn new() -> prometheus::Result<Self> {
        let mut reg = Register {
            registry: Registry::new(),
            families: Vec::new(),
        };
        let requests = reg.add(counter_vec(
            "gateway_http_requests_total",
            "Requests answered, by route label, method and status.",
            &["route", "method", "status"],
        )?)?;
        let duration = reg.add(latency(
            "gateway_http_request_duration_seconds",
            "Time from the request head to the response head, by route label.",
        )?)?;
        let upstream_duration = reg.add(latency(
            "gateway_upstream_request_duration_seconds",
            "Time the upstream took to answer (head and body), by route label; failed exchanges are counted in gateway_upstream_errors_total instead.",
        )?)?;
        let upstream_errors = reg.add(counter_vec(
            "gateway_upstream_errors_total",
            "Upstream exchanges that failed, by kind (connect, timeout, protocol).",
            &["kind"],
        )?)?;
        let validation = reg.add(counter_vec(
            "gateway_validation_failures_total",
            "Rejected session bodies, by route label and field (body: not a readable JSON object).",
            &["route", "field"],
        )?)?;
        let rate_limit = reg.add(counter_vec(
            "gateway_rate_limit_decisions_total",
            "Rate-limit decisions, by backend and decision.",
            &["backend", "decision"],
        )?)?;
        let rate_limit_backend_errors = reg.add(IntCounter::new(
            "gateway_rate_limit_backend_errors_total",
            "Calls to the rate-limit backend that failed or exceeded their time budget.",
        )?)?;
        let cache_requests = reg.add(counter_vec(
            "gateway_cache_requests_total",
            "Lookup cache requests, by cache and result (hit, miss, bypass).",
            &["cache", "result"],
        )?)?;
        let cache_entries = reg.add(IntGaugeVec::new(
            Opts::new("gateway_cache_entries", "Answers held, by cache."),
            &["cache"],
        )?)?;
        let cache_bytes = reg.add(IntGaugeVec::new(
            Opts::new(
                "gateway_cache_bytes",
                "Bytes the held answers account for, by cache.",
            ),
            &["cache"],
        )?)?;
        let cache_purges = reg.add(IntCounter::new(
            "gateway_cache_purges_total",
            "Times a newer lastCachePurge dropped the cached entries.",
        )?)?;
        let cache_shared_synced = reg.add(IntGauge::new(
            "gateway_cache_shared_synced",
            "1 while the cache is caught up with the other replicas' facts; 0 while it serves on this replica's own.",
        )?)?;
        let cache_shared_facts = reg.add(counter_vec(
            "gateway_cache_shared_facts_total",
            "Cache facts (purges, issued and forgotten tokens) published to and applied from the other replicas.",
            &["direction"],
        )?)?;
        let cache_shared_resets = reg.add(IntCounter::new(
            "gateway_cache_shared_resets_total",
            "Times the cache dropped its tokens and answers because it could not tell which shared facts it missed.",
        )?)?;
        let inflight = reg.add(IntGauge::new(
            "gateway_inflight_requests",
            "Requests being handled.",
        )?)?;
        let draining = reg.add(IntGauge::new(
            "gateway_draining",
            "1 once shutdown has begun: the listener is closed and in-flight requests are finishing.",
        )?)?;
        let tunnels_open = reg.add(IntGauge::new(
            "gateway_tunnels_open",
            "Websocket tunnels open on pass routes.",
        )?)?;
        let tunnels = reg.add(IntCounter::new(
            "gateway_tunnels_total",
            "Websocket tunnels opened on pass routes.",
        )?)?;
        let idle_closes = reg.add(counter_vec(
            "gateway_stream_idle_closes_total",
            "Pass-route streams closed for moving no byte within their idle timeout, by kind (body: a request or answer body; tunnel: a websocket).",
            &["kind"],
        )?)?;
        let idle_closes = eager(&idle_closes, &IDLE_KINDS, &[()], |k, ()| vec![k])?;
        let config_reloads = reg.add(counter_vec(
            "gateway_config_reloads_total",
            "Configuration reloads (SIGHUP or the file changing on disk), by result: ok, or error (the running configuration kept).",
            &["result"],
        )?)?;
        let config_info = reg.add(IntGaugeVec::new(
            Opts::new(
                "gateway_config_info",
                "Always 1; `hash` names the configuration in use (the start of the SHA-256 of `check-config`'s output).",
            ),
            &["hash"],
)?)?;
        let refusal_counts = reg.add(counter_vec(
            "gateway_refusals_total",
            "Work refused before it started, by reason: concurrency (no upstream slot, 503), streams (an HTTP/2 connection's request cap, 503), connections and connections_per_ip (closed at accept), answer_budget (answers held for clients at their budget, 503).",
            &["reason"],
        )?)?;
        let accept_errors = reg.add(IntCounter::new(
            "gateway_accept_errors_total",
            "Accepts that failed (out of file descriptors and the like); the listener backs off and goes on.",
        )?)?;
        let answer_bytes_held = reg.add(IntGauge::new(
            "gateway_answer_bytes_held",
            "Bytes of answers held in memory until their clients take them (bounded by server.answer_budget_bytes).",
        )?)?;
        let send_stalls = reg.add(IntCounter::new(
            "gateway_send_stalls_total",
            "Connections closed because a client did not take a chunk of an answer within server.send_timeout_ms.",
        )?)?;
        let build_info = reg.add(IntGaugeVec::new(
            Opts::new(
                "gateway_build_info",
                "Always 1; the labels describe the build.",
            ),
            &["version"],
        )?)?;
        build_info
            .get_metric_with_label_values(&[env!("CARGO_PKG_VERSION")])?
            .set(1);
        #[cfg(target_os = "linux")]
        reg.add(ProcessMetrics(Arc::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )))?;

        let upstream_errors = eager(&upstream_errors, UpstreamErrorKind::ALL, &[()], |k, ()| {
            vec![k.label()]
        })?;
        let rate_limit = eager(&rate_limit, &BackendKind::ALL, &Verdict::ALL, |b, d| {
            vec![b.label(), d.label()]
        })?;
        let cache_requests = eager(&cache_requests, &Kind::ALL, &CacheResult::ALL, |c, r| {
            vec![c.label(), r.label()]
        })?;
        let config_reloads = eager(&config_reloads, &["ok", "error"], &[()], |r, ()| vec![r])?;
        let refusal_counts = eager(&refusal_counts, &Refusal::ALL, &[()], |r, ()| {
            vec![r.label()]
        })?;
        let cache_entries = cache_entries.get_metric_with_label_values(&[LOOKUP_STORE])?;
        let cache_bytes = cache_bytes.get_metric_with_label_values(&[LOOKUP_STORE])?;
        let cache_shared_facts = [
            cache_shared_facts.get_metric_with_label_values(&["published"])?,
            cache_shared_facts.get_metric_with_label_values(&["applied"])?,
        ];

        Ok(Self {
            registry: reg.registry,
            families: reg.families,
            requests: Children::new(requests, ROUTES * METHOD_SLOTS * STATUS_SLOTS),
            duration: Children::new(duration, ROUTES),
            upstream_duration: Children::new(upstream_duration, ROUTES),
            upstream_errors,
            validation: Children::new(validation, ROUTES * FIELD_SLOTS),
            rate_limit: rate_limit.into_iter().map(Mirror::new).collect(),
            rate_limit_backend_errors: Mirror::new(rate_limit_backend_errors),
            cache_requests: cache_requests.into_iter().map(Mirror::new).collect(),
            cache_entries,
            cache_bytes,
            cache_purges: Mirror::new(cache_purges),
            cache_shared_synced,
            cache_shared_facts: cache_shared_facts.map(Mirror::new),
            cache_shared_resets: Mirror::new(cache_shared_resets),
            inflight,
            draining,
            tunnels_open,
            tunnels: Mirror::new(tunnels),
            idle_closes: idle_closes.into_iter().map(Mirror::new).collect(),
            config_reloads,
            config_info,
            syncing: Mutex::new(()),
            refusal_counts: refusal_counts.into_iter().map(Mirror::new).collect(),
            accept_errors: Mirror::new(accept_errors),
            answer_bytes_held,
            send_stalls: Mirror::new(send_stalls),
            refusals: Arc::new(Refusals::default()),
        })
    }

    /// The counters the listener and the admission layer add to; copied in at each scrape.
    pub fn refusals(&self) -> Arc<Refusals> {
        self.refusals.clone()
    }

    fn sync_refusals(&self) {
        for (why, c) in Refusal::ALL.iter().zip(&self.refusal_counts) {
            c.follow(self.refusals.count(*why));
        }
        self.accept_errors.follow(self.refusals.accept_errors());
        self.send_stalls.follow(self.refusals.send_stalls());
        self.answer_bytes_held
            .set(i64::try_from(self.refusals.held()).unwrap_or(i64::MAX));
    }

    /// Names of every registered family (histograms without their `_bucket`/`_sum`/`_count`
    /// suffixes), whether or not they have a series yet.
    pub fn family_names(&self) -> &[String] {
        &self.families
    }

    /// The registry in the Prometheus text format, and its content type.
    pub fn encode(&self) -> (String, Vec<u8>) {
        let encoder = TextEncoder::new();
        let mut buf = Vec::with_capacity(16 * 1024);
        match encoder.encode(&self.registry.gather(), &mut buf) {
            Ok(()) => (encoder.format_type().to_owned(), buf),
            Err(e) => (
                "text/plain; charset=utf-8".to_owned(),
                format!("# metrics could not be encoded: {e}\n").into_bytes(),
            ),
        }
    }

    /// The `/metrics` renderer. The draining gauge is read from `health` at each scrape, so it
    /// can never disagree with `/readyz`. `parts` names the cache and the limiter in use at
    /// the time of the scrape (a configuration reload may have replaced them).
    pub fn render(
        self: &Arc<Self>,
        health: Arc<Health>,
        parts: impl Fn() -> (Arc<LookupCache>, Option<Arc<RateLimitStats>>) + Send + Sync + 'static,
        streams: Arc<StreamStats>,
    ) -> MetricsRender {
        let m = self.clone();
        Arc::new(move || {
            m.draining.set(i64::from(!health.ready()));
            m.sync_refusals();
            m.sync_streams(&streams.snapshot());
            {
                let _syncing = m.syncing.lock().unwrap_or_else(PoisonError::into_inner);
                let (cache, rate_limit) = parts();
                if let Some(stats) = &rate_limit {
                    m.sync_rate_limit(stats);
                }
                m.sync_cache(&cache);
            }
            m.encode()
        })
    }

    fn sync_streams(&self, s: &StreamCounts) {
        self.tunnels_open.set(s.tunnels_open);
        self.tunnels.follow(s.tunnels);
        if let [bodies, tunnels] = &self.idle_closes[..] {
            bodies.follow(s.idle_bodies);
            tunnels.follow(s.idle_tunnels);
        }
    }

    /// A reload replaces the cache (`cache`, the retiring one) or the limiter (`rate_limit`'s):
    /// their last counts are taken, the mirrors start again from zero for the new ones, and
    /// `swap` puts the new ones in place, all before any scrape can look. Requests still in
    /// flight on a retired part are not counted.
    pub fn replace_parts(
        &self,
        cache: Option<&LookupCache>,
        rate_limit: Option<&RateLimitStats>,
        swap: impl FnOnce(),
    ) {
        let _syncing = self.syncing.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(stats) = rate_limit {
            self.sync_rate_limit(stats);
            for m in self
                .rate_limit
                .iter()
                .chain([&self.rate_limit_backend_errors])
            {
                m.seen.store(0, Ordering::Relaxed);
            }
        }
        if let Some(cache) = cache {
            self.sync_cache(cache);
            for m in self.cache_requests.iter().chain([&self.cache_purges]) {
                m.seen.store(0, Ordering::Relaxed);
            }
        }
        swap();
    }

    /// Counts a configuration reload: applied, or refused with the running one kept.
    pub fn config_reloaded(&self, ok: bool) {
        if let Some(c) = self.config_reloads.get(usize::from(!ok)) {
            c.inc();
        }
    }

    /// Names the configuration in use in `gateway_config_info`, in place of the previous one.
    pub fn config_in_use(&self, hash: &str) {
        self.config_info.reset();
        if let Ok(g) = self.config_info.get_metric_with_label_values(&[hash]) {
            g.set(1);
        }
    }

    /// Hook for `ValidateLayer::on_reject`: counts each rejected field once per request.
    pub fn on_reject(self: &Arc<Self>) -> OnReject {
        let m = self.clone();
        Arc::new(move |route, err| m.validation_failed(route, err))
    }

    /// Hook for `RescueLayer::on_error`: counts upstream failures by kind.
    pub fn on_error(self: &Arc<Self>) -> OnError {
        let m = self.clone();
        Arc::new(move |err| m.rescued(err))
    }

    fn validation_failed(&self, route: RouteLabel, err: &ApiError) {
        let route = route.slot();
        let mut seen = 0u32;
        let mut count = |field: usize| {
            if seen & (1 << field) == 0 {
                seen |= 1 << field;
                let child = self.validation.get(route * FIELD_SLOTS + field, || {
                    [route_label(route), FIELDS[field]]
                });
                if let Some(c) = child {
                    c.inc();
                }
            }
        };
        match err {
            ApiError::Invalid(violations) => {
                for v in violations {
                    count(field_slot(&v.pointer));
                }
            }
            _ => count(BODY_SLOT),
        }
    }

    fn rescued(&self, err: &BoxError) {
        let kind = match err.downcast_ref::<GatewayError>() {
            Some(
                e @ (GatewayError::UpstreamConnect(_)
                | GatewayError::UpstreamTimeout
                | GatewayError::UpstreamProtocol(_)
                | GatewayError::UpstreamTooLarge),
            ) => UpstreamErrorKind::from_label(e.kind()),
            _ => None,
        };
        if let Some(c) = kind.and_then(|k| self.upstream_errors.get(k.slot())) {
            c.inc();
        }
    }

    /// Brings the rate-limit families up to the limiter's own counters (scrape time, like
    /// [`Metrics::sync_cache`]). Decisions are counted under the configured backend.
    pub fn sync_rate_limit(&self, stats: &RateLimitStats) {
        let mut slot = 0;
        for backend in BackendKind::ALL {
            for verdict in Verdict::ALL {
                if let Some(c) = self.rate_limit.get(slot) {
                    if backend == stats.backend() {
                        c.follow(stats.decisions(verdict));
                    }
                }
                slot += 1;
            }
        }
        self.rate_limit_backend_errors
            .follow(stats.backend_errors());
    }

    /// Brings the cache families up to the cache's own counters. Called at scrape time, so the
    /// request path counts each lookup once, in the cache, and nowhere else.
    pub fn sync_cache(&self, cache: &LookupCache) {
        cache.sync();
        let stats = &cache.stats();
        let mut slot = 0;
        for kind in Kind::ALL {
            for result in CacheResult::ALL {
                if let Some(c) = self.cache_requests.get(slot) {
                    c.follow(stats.requests(kind, result));
                }
                slot += 1;
            }
        }
        self.cache_purges.follow(stats.purges);
        self.cache_entries
            .set(i64::try_from(stats.entries).unwrap_or(i64::MAX));
        self.cache_bytes
            .set(i64::try_from(stats.bytes).unwrap_or(i64::MAX));
        let shared = stats.shared.unwrap_or_default();
        self.cache_shared_synced.set(i64::from(shared.synced));
        let [published, applied] = &self.cache_shared_facts;
        published.follow(shared.published);
        applied.follow(shared.applied);
        self.cache_shared_resets.follow(shared.resets);
    }
}

impl Observer for Metrics {
    fn started(&self) {
        self.inflight.inc();
    }

    fn finished(&self, f: &Finished<'_>) {
        self.inflight.dec();
        let route = f.route.slot();
        let method = method_slot(f.method);
        match status_slot(f.status) {
            Some(status) => {
                let slot = (route * METHOD_SLOTS + method) * STATUS_SLOTS + status;
                let child = self.requests.get(slot, || {
                    [
                        route_label(route),
                        method_label(method),
                        status_label(status),
                    ]
                });
                if let Some(c) = child {
                    c.inc();
                }
            }
            None => self.count_rare_status(route, method, f.status),
        }
        if let Some(h) = self.duration.get(route, || [route_label(route)]) {
            h.observe(f.secs);
        }
        if let Some(took) = f.outcome.upstream {
            if let Some(h) = self.upstream_duration.get(route, || [route_label(route)]) {
                h.observe(took.as_secs_f64());
            }
        }
    }
}

impl Metrics {
    /// A status without a slot (418, 507, …): still counted under its own code, through the
    /// vec's child map. The code is a number below 1000, so the set stays bounded.
    #[cold]
    fn count_rare_status(&self, route: usize, method: usize, status: u16) {
        let Ok(status) = http::StatusCode::from_u16(status) else {
            return;
        };
        let labels = [route_label(route), method_label(method), status.as_str()];
        if let Some(c) = self.requests.lookup(&labels) {
            c.inc();
        }
    }
}

/// The process collector behind an `Arc`, so it can be registered and still be `Clone`.
#[cfg(target_os = "linux")]
#[derive(Clone)]
struct ProcessMetrics(Arc<prometheus::process_collector::ProcessCollector>);

#[cfg(target_os = "linux")]
impl Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }
    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.0.collect()
    }
}

#[cfg(test)]
mod tests;
