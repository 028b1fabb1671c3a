//! A parsed Prometheus text-format scrape (the gateway's admin `/metrics`).
//!
//! Only what assertions need: samples with their labels and values, and the metric family
//! names declared by `# TYPE` lines. Histograms and summaries are plain samples here: ask
//! for `sse_delivery_latency_seconds_count`, `…_sum` or `…_bucket` with `le`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use anyhow::{Context as _, bail};

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Sample name (for histograms this includes `_bucket`, `_sum`, `_count`).
    pub name: String,
    /// Labels in the order they appeared.
    pub labels: Vec<(String, String)>,
    /// The value (`+Inf`, `-Inf` and `NaN` included).
    pub value: f64,
}

impl Sample {
    /// True when this sample carries exactly `labels` (in any order), no more, no fewer.
    pub fn has_exact_labels(&self, labels: &[(&str, &str)]) -> bool {
        self.labels.len() == labels.len()
            && labels
                .iter()
                .all(|(k, v)| self.labels.iter().any(|(sk, sv)| sk == k && sv == v))
    }
}

/// A parsed scrape.
#[derive(Clone)]
pub struct Metrics {
    text: String,
    samples: Vec<Sample>,
    types: BTreeMap<String, String>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Metrics {
    /// Parses Prometheus text exposition format. Malformed lines are an error naming the
    /// line.
    pub fn parse(text: &str) -> anyhow::Result<Metrics> {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let parsed = if let Some(comment) = line.strip_prefix('#') {
                parse_type_comment(comment).map(|t| {
                    if let Some((name, kind)) = t {
                        types.insert(name, kind);
                    }
                })
            } else {
                parse_sample(line).map(|s| samples.push(s))
            };
            parsed.with_context(|| format!("metrics line {}: {line:?}", n + 1))?;
        }
        Ok(Metrics {
            text: text.to_owned(),
            samples,
            types,
        })
    }

    /// The value of the series `name` with exactly `labels` (order does not matter;
    /// a series with extra labels does not match). `None` when there is no such series.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| s.name == name && s.has_exact_labels(labels))
            .map(|s| s.value)
    }

    /// The sum over every series named `name`, whatever its labels; `None` when there is
    /// none.
    pub fn sum(&self, name: &str) -> Option<f64> {
        let mut found = false;
        let total = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .inspect(|_| found = true)
            .map(|s| s.value)
            .sum();
        found.then_some(total)
    }

    /// Metric family names declared by `# TYPE` lines.
    pub fn names(&self) -> BTreeSet<String> {
        self.types.keys().cloned().collect()
    }

    /// The declared type of a family (`counter`, `gauge`, `histogram`, …).
    pub fn type_of(&self, family: &str) -> Option<&str> {
        self.types.get(family).map(String::as_str)
    }

    /// Every sample, in scrape order.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The scrape as received.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// `# TYPE name kind` → `Some((name, kind))`; `# HELP` and other comments → `None`.
fn parse_type_comment(comment: &str) -> anyhow::Result<Option<(String, String)>> {
    let mut words = comment.split_whitespace();
    if words.next() != Some("TYPE") {
        return Ok(None);
    }
    let (Some(name), Some(kind), None) = (words.next(), words.next(), words.next()) else {
        bail!("a TYPE line needs exactly a name and a type");
    };
    if !is_metric_name(name) {
        bail!("bad metric name {name:?}");
    }
    Ok(Some((name.to_owned(), kind.to_owned())))
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_sample(line: &str) -> anyhow::Result<Sample> {
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..name_end];
    if !is_metric_name(name) {
        bail!("bad metric name {name:?}");
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(after_brace)?;
        labels = parsed;
        rest = after;
    }
    let mut fields = rest.split_whitespace();
    let Some(value) = fields.next() else {
        bail!("sample has no value");
    };
    let value = parse_value(value)?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .with_context(|| format!("bad timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        bail!("junk after value and timestamp");
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `k="v",k2="v2"}` (after the opening brace); returns the labels and the text
/// after the closing brace.
fn parse_labels(mut s: &str) -> anyhow::Result<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let Some(eq) = s.find('=') else {
            bail!("label without '='");
        };
        let key = s[..eq].trim();
        if key.is_empty()
            || key.starts_with(|c: char| c.is_ascii_digit())
            || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            bail!("bad label name {key:?}");
        }
        let Some(quoted) = s[eq + 1..].trim_start().strip_prefix('"') else {
            bail!("label value of {key:?} is not quoted");
        };
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next() {
                None => bail!("unterminated label value of {key:?}"),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => bail!("bad escape in label value of {key:?}: {other:?}"),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((key.to_owned(), value));
        s = quoted[end + 1..].trim_start();
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        } else if !s.starts_with('}') {
            bail!("expected ',' or '}}' after label {key:?}");
        }
    }
}

fn parse_value(s: &str) -> anyhow::Result<f64> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().with_context(|| format!("bad value {s:?}")),
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    const SCRAPE: &str = r#"# HELP sse_connections_active Open SSE streams.
# TYPE sse_connections_active gauge
sse_connections_active 3
# HELP sse_connections_total Connection attempts by outcome.
# TYPE sse_connections_total counter
sse_connections_total{outcome="accepted"} 7
sse_connections_total{outcome="rate_limited"} 0
sse_connections_total{ outcome = "bad_request" , } 2
# TYPE sse_delivery_latency_seconds histogram
sse_delivery_latency_seconds_bucket{le="0.005"} 1
sse_delivery_latency_seconds_bucket{le="+Inf"} 4
sse_delivery_latency_seconds_sum 0.25
sse_delivery_latency_seconds_count 4
weird{path="a\"b\\c\nd",method="GET"} 1.5e3 1700000000000
not_a_number NaN
"#;

    #[test]
    fn parses_samples_and_labels() {
        let m = Metrics::parse(SCRAPE).unwrap();
        assert_eq!(m.get("sse_connections_active", &[]), Some(3.0));
        assert_eq!(
            m.get("sse_connections_total", &[("outcome", "accepted")]),
            Some(7.0)
        );
        assert_eq!(
            m.get("sse_connections_total", &[("outcome", "bad_request")]),
            Some(2.0)
        );
        assert_eq!(m.get("sse_delivery_latency_seconds_count", &[]), Some(4.0));
        assert_eq!(
            m.get("sse_delivery_latency_seconds_bucket", &[("le", "+Inf")]),
            Some(4.0)
        );
        assert_eq!(
            m.get("weird", &[("method", "GET"), ("path", "a\"b\\c\nd")]),
            Some(1500.0)
        );
        assert!(m.get("not_a_number", &[]).unwrap().is_nan());
        assert_eq!(m.text(), SCRAPE);
    }

    #[test]
    fn labels_must_match_exactly() {
        let m = Metrics::parse(SCRAPE).unwrap();
        assert_eq!(m.get("sse_connections_total", &[]), None);
        assert_eq!(m.get("weird", &[("method", "GET")]), None);
        assert_eq!(m.get("sse_connections_active", &[("x", "y")]), None);
        assert_eq!(m.get("missing", &[]), None);
    }

    #[test]
    fn sum_and_names_and_types() {
        let m = Metrics::parse(SCRAPE).unwrap();
        assert_eq!(m.sum("sse_connections_total"), Some(9.0));
        assert_eq!(m.sum("missing"), None);
        let names: Vec<_> = m.names().into_iter().collect();
        assert_eq!(
            names,
            [
                "sse_connections_active",
                "sse_connections_total",
                "sse_delivery_latency_seconds"
            ]
        );
        assert_eq!(m.type_of("sse_delivery_latency_seconds"), Some("histogram"));
        assert_eq!(m.samples().len(), 10);
    }

    #[test]
    fn rejects_malformed_lines() {
        for bad in [
            "no_value",
            "1bad 1",
            "x{a=\"1\" 1",
            "x{a=1} 1",
            "x{a=\"1} 1",
            "x{a=\"\\q\"} 1",
            "x one",
            "x 1 2 3",
            "# TYPE x",
        ] {
            let err = Metrics::parse(bad).unwrap_err();
            assert!(format!("{err:#}").contains("line 1"), "{bad}: {err:#}");
        }
    }
}
