//! The metrics as an operator's Prometheus sees them: a real Prometheus server (Debian's
//! `prometheus` package) on loopback scrapes the gateway's admin port while known traffic runs,
//! and its query API must report exactly that traffic. `promtool` lints a scrape and checks and
//! unit-tests the alert rules; the Grafana dashboard may only name metrics the gateway exports.

mod common;
mod scrape;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use amity_gateway::metrics::Metrics;
use common::*;
use http::{Method, StatusCode};
use serde_json::Value;

const JOB: &str = "amity-gateway";
const INSTALL: &str = "apt-get install -y prometheus";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A binary from the `prometheus` package; a missing one fails the test with what to install.
fn tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`{name}` is not installed; run `{INSTALL}`"))
}

/// Runs promtool; returns (success, stdout + stderr).
fn promtool(args: &[&str], stdin: Option<&[u8]>) -> (bool, String) {
    let mut child = Command::new(tool("promtool"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input)
            .expect("promtool reads stdin");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("promtool finishes");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

// ------------------------------------------------------------------ a Prometheus of our own

/// A Prometheus server on its own loopback port with its own storage, killed on drop. (A system
/// Prometheus the package may have started is never touched.)
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

impl Prometheus {
    /// Scrapes `target` every second and evaluates the shipped alert rules.
    async fn start(target: SocketAddr) -> Self {
        let bin = tool("prometheus");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: ['{target}']\n",
                rules = repo("deploy/prometheus/gateway.rules.yml").display()
            ),
        )
        .unwrap();
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let mut p = Prometheus { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("prometheus exited with {status}:\n{}", p.log());
            }
            if let Ok(Ok(res)) = tokio::time::timeout(
                Duration::from_secs(2),
                client().get(format!("http://{addr}/-/ready").parse().unwrap()),
            )
            .await
            {
                if res.status() == StatusCode::OK {
                    return p;
                }
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                p.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<path>?query=<promql>`; the `data` of a successful answer.
    async fn api(&self, path: &str, query: Option<&str>) -> Value {
        let url = match query {
            Some(q) => format!("http://{}/api/v1/{path}?query={}", self.addr, encode(q)),
            None => format!("http://{}/api/v1/{path}", self.addr),
        };
        let res = request(Method::GET, &url, &[], "").await;
        let json = res.json();
        assert_eq!(json["status"], "success", "{path} {query:?}: {json}");
        json["data"].clone()
    }

    /// An instant query's samples as (labels, value).
    async fn query(&self, q: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let data = self.api("query", Some(q)).await;
        data["result"]
            .as_array()
            .unwrap_or_else(|| panic!("{q}: {data}"))
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect();
                let value = s["value"][1].as_str().unwrap().parse().unwrap();
                (labels, value)
            })
            .collect()
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ------------------------------------------------------------------ known traffic

/// A run of identical-shaped requests and the statuses they must get. The request of the i-th
/// send comes from `request(i)`. Blocks run in order; `upstream_down` stops the simulator first,
/// so such blocks go last.
struct Block {
    what: &'static str,
    route: &'static str,
    method: Method,
    request: fn(usize) -> (String, String),
    expect: &'static [(u16, usize)],
    upstream_down: bool,
}

fn session(version: &str, i: usize) -> (String, String) {
    (
        format!("/api/{version}/sessions"),
        format!(r#"{{"userId":"user-{i}","deviceId":"device-{version}-{i}"}}"#),
    )
}

fn traffic() -> Vec<Block> {
    vec![
        Block {
            what: "valid v3 sessions",
            route: "session_v3",
            method: Method::POST,
            request: |i| session("v3", i),
            expect: &[(200, 5)],
            upstream_down: false,
        },
        Block {
            what: "valid v5 sessions",
            route: "session_v5",
            method: Method::POST,
            request: |i| session("v5", i),
            expect: &[(200, 2)],
            upstream_down: false,
        },
        Block {
            what: "invalid v4 sessions",
            route: "session_v4",
            method: Method::POST,
            request: |i| {
                (
                    "/api/v4/sessions".into(),
                    format!(r#"{{"userId":"","deviceId":"device-{i}"}}"#),
                )
            },
            expect: &[(422, 3)],
            upstream_down: false,
        },
        Block {
            what: "routes not served",
            route: "unmatched",
            method: Method::GET,
            request: |i| (format!("/v3/channels/{i}"), String::new()),
            expect: &[(404, 4)],
            upstream_down: false,
        },
        Block {
            what: "one device over its budget (10 per window)",
            route: "session_v5",
            method: Method::POST,
            request: |_| {
                (
                    "/api/v5/sessions".into(),
                    r#"{"userId":"flood-user","deviceId":"flood-device"}"#.into(),
                )
            },
            expect: &[(200, 10), (429, 2)],
            upstream_down: false,
        },
        Block {
            what: "upstream down",
            route: "session_v3",
            method: Method::POST,
            request: |i| session("v3", 1000 + i),
            expect: &[(502, 2)],
            upstream_down: true,
        },
    ]
}

/// Sends every block; checks each got its statuses; returns the expected count per
/// (route, method, status).
async fn drive(env: &mut TestEnv, blocks: &[Block]) -> BTreeMap<(String, String, String), f64> {
    let mut expected = BTreeMap::new();
    for b in blocks {
        if b.upstream_down {
            env.stop_sim().await;
        }
        let sends: usize = b.expect.iter().map(|(_, n)| n).sum();
        let mut got: BTreeMap<u16, usize> = BTreeMap::new();
        for i in 0..sends {
            let (path, body) = (b.request)(i);
            let res = request(
                b.method.clone(),
                &env.url(&path),
                &[("content-type", "application/json")],
                body,
            )
            .await;
            *got.entry(res.status.as_u16()).or_default() += 1;
        }
        let want: BTreeMap<u16, usize> = b.expect.iter().copied().collect();
        assert_eq!(got, want, "{}", b.what);
        for (status, n) in b.expect {
            *expected
                .entry((b.route.to_owned(), b.method.to_string(), status.to_string()))
                .or_insert(0.0) += *n as f64;
        }
    }
    expected
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test]
async fn prometheus_scrapes_the_admin_port_and_reports_the_traffic_per_route_and_status() {
    let mut env = TestEnv::start().await;
    let prom = Prometheus::start(env.gw.admin_addr).await;

    let blocks = traffic();
    let expected = drive(&mut env, &blocks).await;
    let done = unix_now();

    // Wait (bounded) for a scrape that began after the last answer: `up`'s timestamp is the
    // scrape's start, and every request was counted before its answer left the gateway.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = prom
            .query(&format!(r#"timestamp(up{{job="{JOB}"}})"#))
            .await;
        if up.first().is_some_and(|(_, ts)| *ts > done) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no scrape after the traffic: {up:?}\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let up = prom.query(&format!(r#"up{{job="{JOB}"}}"#)).await;
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].1, 1.0, "the target is up");

    // Every series Prometheus holds, exactly the traffic sent: nothing missing, nothing extra.
    let series = prom
        .query(&format!(r#"gateway_http_requests_total{{job="{JOB}"}}"#))
        .await;
    let seen: BTreeMap<(String, String, String), f64> = series
        .iter()
        .map(|(l, v)| {
            let k = |n: &str| l.get(n).cloned().unwrap_or_default();
            ((k("route"), k("method"), k("status")), *v)
        })
        .collect();
    assert_eq!(seen, expected);

    // The same through PromQL aggregation, per status and per route.
    let by = |label: &'static str| {
        let mut m: BTreeMap<String, f64> = BTreeMap::new();
        for ((route, _, status), n) in &expected {
            let k = if label == "route" { route } else { status };
            *m.entry(k.clone()).or_default() += n;
        }
        m
    };
    for label in ["status", "route"] {
        let got: BTreeMap<String, f64> = prom
            .query(&format!(
                r#"sum by ({label}) (gateway_http_requests_total{{job="{JOB}"}})"#
            ))
            .await
            .into_iter()
            .map(|(l, v)| (l[label].clone(), v))
            .collect();
        assert_eq!(got, by(label), "by {label}");
    }
    let connect = prom
        .query(r#"gateway_upstream_errors_total{kind="connect"}"#)
        .await;
    assert_eq!(connect[0].1, 2.0, "upstream errors by kind");
    let fields = prom
        .query(r#"gateway_validation_failures_total{route="session_v4"}"#)
        .await;
    assert_eq!(fields.len(), 1);
    assert_eq!(fields[0].0["field"], "userId");
    assert_eq!(fields[0].1, 3.0);
    let limited = prom
        .query(r#"gateway_rate_limit_decisions_total{backend="local",decision="limited"}"#)
        .await;
    assert_eq!(
        limited[0].1, 2.0,
        "rate-limit rejections by backend and decision"
    );

    // A scrape taken after that traffic passes promtool's lint without a word.
    let text = scrape::scrape_text(env.gw.admin_addr).await;
    let (ok, out) = promtool(&["check", "metrics"], Some(text.as_bytes()));
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics:\n{out}"
    );

    // Every dashboard query parses and runs on the real server.
    for expr in dashboard_exprs() {
        let q = grafana_to_promql(&expr);
        prom.api("query", Some(&q)).await;
    }

    // The shipped alert rules are loaded and evaluate without error on the real series.
    let rules = prom.api("rules", None).await;
    let loaded: Vec<&Value> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert_eq!(loaded.len(), 6, "{rules}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rules = prom.api("rules", None).await;
        let health: Vec<(String, String)> = rules["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .map(|r| {
                (
                    r["name"].as_str().unwrap().to_owned(),
                    r["health"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        if health.iter().all(|(_, h)| h == "ok") {
            break;
        }
        assert!(
            health.iter().all(|(_, h)| h != "err"),
            "rules failed: {rules}"
        );
        assert!(
            Instant::now() < deadline,
            "rules never evaluated: {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    drop(prom);
    env.shutdown().await;
}

// ------------------------------------------------------------------ rules and config files

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let rules: Vec<PathBuf> = std::fs::read_dir(repo("deploy/prometheus"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".rules.yml"))
        .collect();
    assert!(!rules.is_empty(), "no deploy/prometheus/*.rules.yml");
    let mut args = vec!["check", "rules"];
    let paths: Vec<String> = rules.iter().map(|p| p.display().to_string()).collect();
    args.extend(paths.iter().map(String::as_str));
    let (ok, out) = promtool(&args, None);
    assert!(ok, "promtool check rules:\n{out}");

    let tests = repo("deploy/prometheus/gateway.rules.test.yml");
    let (ok, out) = promtool(&["test", "rules", &tests.display().to_string()], None);
    assert!(ok, "promtool test rules:\n{out}");

    let config = repo("deploy/prometheus/prometheus.yml");
    let (ok, out) = promtool(&["check", "config", &config.display().to_string()], None);
    assert!(ok, "promtool check config:\n{out}");
}

// ------------------------------------------------------------------ the dashboard

fn dashboard() -> Value {
    let path = repo("deploy/grafana/amity-gateway.json");
    let text = std::fs::read_to_string(&path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `expr` in the dashboard (panel targets, at any depth).
fn dashboard_exprs() -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                m.values().for_each(|v| walk(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dashboard(), &mut out);
    out
}

/// Grafana's variables replaced by what they stand for in a plain query.
fn grafana_to_promql(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$job", ".*")
        .replace("$instance", ".*")
        .replace("$route", ".*")
}

/// The metric names a PromQL expression selects: identifiers that are not functions,
/// aggregations, keywords, label names (inside `{}` or `by (…)`), strings or durations.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: [&str; 8] = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "group_left",
        "group_right",
        "inf",
    ];
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    let skip_until = |i: &mut usize, close: char| {
        while *i < chars.len() && chars[*i] != close {
            if chars[*i] == '"' || chars[*i] == '\'' {
                let q = chars[*i];
                *i += 1;
                while *i < chars.len() && chars[*i] != q {
                    *i += if chars[*i] == '\\' { 2 } else { 1 };
                }
            }
            *i += 1;
        }
        *i += 1;
    };
    while i < chars.len() {
        let c = chars[i];
        if c == '{' {
            i += 1;
            skip_until(&mut i, '}');
        } else if c == '[' {
            i += 1;
            skip_until(&mut i, ']');
        } else if c == '"' || c == '\'' {
            i += 1;
            skip_until(&mut i, c);
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j].is_whitespace() {
                j += 1;
            }
            let rest: String = chars[j..].iter().collect();
            // A call, or an aggregation written `sum by (…) (…)`.
            let call = rest.starts_with('(')
                || ["by", "without"].iter().any(|g| {
                    rest.strip_prefix(g)
                        .is_some_and(|r| r.trim_start().starts_with('('))
                });
            if GROUPING.contains(&word.as_str()) && call {
                i = j + 1;
                skip_until(&mut i, ')');
            } else if !call && !KEYWORDS.contains(&word.to_lowercase().as_str()) {
                names.insert(word);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The gateway's family names, with the series names a histogram adds.
fn exported() -> BTreeSet<String> {
    let metrics = Metrics::new().unwrap();
    let mut names = BTreeSet::new();
    for f in metrics.family_names() {
        for suffix in ["", "_bucket", "_sum", "_count"] {
            names.insert(format!("{f}{suffix}"));
        }
    }
    names
}

#[test]
fn metric_names_are_found_in_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (route, le) (rate(a_bucket{job=~"$job", x="y{z}"}[5m] offset 1h))) / on (job) group_left (v) b > 3 * c + 1e3 and time() - d"#,
    );
    let want: BTreeSet<String> = ["a_bucket", "b", "c", "d"].map(String::from).into();
    assert_eq!(names, want);
}

#[test]
fn the_dashboard_names_only_metrics_the_gateway_exports_and_covers_every_family() {
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 20, "dashboard has {} queries", exprs.len());
    let exported = exported();
    let mut used = BTreeSet::new();
    for e in &exprs {
        let names = metric_names(e);
        assert!(!names.is_empty(), "a query without a metric: {e}");
        for n in names {
            assert!(exported.contains(&n), "{n} is not exported (in {e})");
            used.insert(n);
        }
    }
    // Every family the gateway exports has a panel.
    let metrics = Metrics::new().unwrap();
    for f in metrics.family_names() {
        let shown = ["", "_bucket", "_sum", "_count"]
            .iter()
            .any(|s| used.contains(&format!("{f}{s}")));
        let is_process_detail = f.starts_with("process_")
            && !matches!(
                f.as_str(),
                "process_cpu_seconds_total" | "process_resident_memory_bytes"
            );
        assert!(shown || is_process_detail, "{f} has no panel");
    }
    // The rules name only exported metrics too (besides Prometheus' own `up`).
    for file in ["gateway.rules.yml", "gateway.rules.test.yml"] {
        let text = std::fs::read_to_string(repo(&format!("deploy/prometheus/{file}"))).unwrap();
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("gateway_") {
                assert!(exported.contains(word), "{file}: {word} is not exported");
            }
        }
    }
}
