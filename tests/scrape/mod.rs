//! Reading the gateway's `/metrics` in tests: fetch a scrape and parse the text format into
//! samples, so tests compare series and values instead of grepping strings.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;

use http::{Method, StatusCode};

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    /// The series identity: name plus sorted labels.
    pub fn series(&self) -> String {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        format!("{}{{{}}}", self.name, labels.join(","))
    }

    pub fn label(&self, k: &str) -> &str {
        self.labels.get(k).map_or("", String::as_str)
    }
}

/// The admin endpoint's scrape, as text.
pub async fn scrape_text(admin: SocketAddr) -> String {
    let res =
        crate::common::request(Method::GET, &format!("http://{admin}/metrics"), &[], "").await;
    assert_eq!(res.status, StatusCode::OK);
    String::from_utf8(res.body.to_vec()).expect("the scrape is UTF-8")
}

pub async fn scrape(admin: SocketAddr) -> Vec<Sample> {
    parse(&scrape_text(admin).await)
}

/// Parses the Prometheus text format (comments skipped). Panics on a malformed line: the
/// gateway must never produce one.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| parse_line(l).unwrap_or_else(|| panic!("malformed sample line: {l:?}")))
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices();
        let mut key = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => break i,
                ',' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                c => value.push(c),
                            },
                            c => value.push(c),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                c => key.push(c),
            }
        };
        rest = &r[end + 1..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The value of the one sample with `name` and exactly these labels, if present.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
        })
        .map(|s| s.value)
}

/// The sum of every sample named `name`.
pub fn total(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

#[test]
fn parses_labels_escapes_and_infinities() {
    let s = parse(
        "# HELP x y\nx_total 3\nh_bucket{le=\"+Inf\",route=\"a\\\"b\"} 2\ng{a=\"1\",b=\"\"} -Inf\n",
    );
    assert_eq!(s.len(), 3);
    assert_eq!(s[0].name, "x_total");
    assert_eq!(s[0].value, 3.0);
    assert_eq!(s[1].label("route"), "a\"b");
    assert_eq!(s[1].label("le"), "+Inf");
    assert_eq!(s[2].value, f64::NEG_INFINITY);
    assert_eq!(
        value(&s, "g", &[("a", "1"), ("b", "")]),
        Some(f64::NEG_INFINITY)
    );
}
