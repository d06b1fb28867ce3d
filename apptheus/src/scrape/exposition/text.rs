//! The text format 0.0.4 and OpenMetrics, written straight from the store: a container's label
//! block is escaped once per scrape ([`label`]), then each series is a few appends to the body.
//! The bytes are those the prometheus crate's `TextEncoder` and our OpenMetrics encoder wrote
//! from gathered protos.

use std::io::Write as _;

use prometheus::proto::MetricType;

use super::families::{Family, MachineTotals, Values};
use super::number;
use super::series::{self, Runqueue, Value};
use super::Row;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Text,
    OpenMetrics,
}

/// `# HELP` and `# TYPE` of a family.
pub fn header(dialect: Dialect, family: &Family) -> Vec<u8> {
    let mut out = Vec::new();
    match dialect {
        Dialect::Text => {
            // As `TextEncoder`: the help escapes `\` and newline only, the type is lower case.
            if !family.help.is_empty() {
                out.extend_from_slice(b"# HELP ");
                out.extend_from_slice(family.name.as_bytes());
                out.push(b' ');
                escape(family.help, false, &mut out);
                out.push(b'\n');
            }
            let kind = match family.kind {
                MetricType::COUNTER => "counter",
                MetricType::GAUGE => "gauge",
                MetricType::SUMMARY => "summary",
                MetricType::UNTYPED => "untyped",
                MetricType::HISTOGRAM => "histogram",
            };
            out.extend_from_slice(format!("# TYPE {} {kind}\n", family.name).as_bytes());
        }
        Dialect::OpenMetrics => openmetrics_header(family.name, family.help, family.kind, &mut out),
    }
    out
}

/// `# HELP` (when there is a help text) and `# TYPE` of family `name` in OpenMetrics, as Go's
/// `expfmt` writes them: a counter `x_total` is family `x`, one without the suffix is `unknown`.
pub fn openmetrics_header(name: &str, help: &str, kind: MetricType, out: &mut Vec<u8>) {
    let (family, type_name) = match kind {
        MetricType::COUNTER => match name.strip_suffix("_total") {
            Some(short) => (short, "counter"),
            None => (name, "unknown"),
        },
        MetricType::GAUGE => (name, "gauge"),
        MetricType::HISTOGRAM => (name, "histogram"),
        MetricType::SUMMARY => (name, "summary"),
        MetricType::UNTYPED => (name, "unknown"),
    };
    if !help.is_empty() {
        out.extend_from_slice(b"# HELP ");
        out.extend_from_slice(family.as_bytes());
        out.push(b' ');
        escape(help, true, out);
        out.push(b'\n');
    }
    let _ = writeln!(out, "# TYPE {family} {type_name}");
}

/// The `le` label values of the run-queue buckets.
pub fn bucket_bounds(dialect: Dialect) -> Vec<Vec<u8>> {
    let spell = match dialect {
        Dialect::Text => number::text,
        Dialect::OpenMetrics => number::openmetrics_bound,
    };
    series::runqueue_bounds()
        .iter()
        .map(|&b| {
            let mut out = Vec::new();
            spell(b, &mut out);
            out
        })
        .collect()
}

/// Appends `name="value"` (escaped) to a label block, comma-separated.
pub fn label(name: &str, value: &str, block: &mut Vec<u8>) {
    if !block.is_empty() {
        block.push(b',');
    }
    block.extend_from_slice(name.as_bytes());
    block.extend_from_slice(b"=\"");
    escape(value, true, block);
    block.push(b'"');
}

/// Escapes `\`, newline and, with `quote`, `"`, as both formats do in label values (and
/// OpenMetrics in help texts).
pub fn escape(text: &str, quote: bool, out: &mut Vec<u8>) {
    let special = |b: u8| b == b'\\' || b == b'\n' || (quote && b == b'"');
    if !text.bytes().any(special) {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    // The three are ASCII, so they never occur inside a multi-byte UTF-8 sequence.
    for b in text.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'"' if quote => out.extend_from_slice(b"\\\""),
            b => out.push(b),
        }
    }
}

/// What one family needs besides the rows.
pub struct Parts<'a> {
    pub dialect: Dialect,
    pub header: &'a [u8],
    /// From [`bucket_bounds`], for the same dialect.
    pub bounds: &'a [Vec<u8>],
    pub machine: MachineTotals,
}

/// Appends `family` with every row's series; nothing when no row has one (as
/// `Registry::gather` drops empty families).
pub fn write_family(out: &mut Vec<u8>, family: &Family, parts: &Parts<'_>, rows: &[Row<'_>]) {
    let start = out.len();
    out.extend_from_slice(parts.header);
    let first_series = out.len();
    let name = family.name;
    let dialect = parts.dialect;
    let legacy = matches!(family.values, Values::Legacy(_));
    for row in rows {
        let labels = if legacy { &row.legacy_labels } else { &row.labels };
        series::each(family, row.entry, &row.io, parts.machine, |extra, value| match value {
            Value::Number(v) => {
                open(out, name, "", labels);
                if let Some((key, value)) = extra {
                    label_after(key, value, out);
                }
                out.extend_from_slice(b"} ");
                float(dialect, v, out);
                out.push(b'\n');
            }
            Value::Runqueue(c) => histogram(out, name, labels, &Runqueue::new(c), parts),
        });
    }
    if out.len() == first_series {
        out.truncate(start);
    }
}

/// `name` `suffix` `{` labels — the caller closes the braces (a container always has labels).
fn open(out: &mut Vec<u8>, name: &str, suffix: &str, labels: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(suffix.as_bytes());
    out.push(b'{');
    out.extend_from_slice(labels);
}

/// `,key="value"` after the container's labels.
fn label_after(key: &str, value: &str, out: &mut Vec<u8>) {
    out.push(b',');
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"=\"");
    escape(value, true, out);
    out.push(b'"');
}

fn float(dialect: Dialect, v: f64, out: &mut Vec<u8>) {
    match dialect {
        Dialect::Text => number::text(v, out),
        Dialect::OpenMetrics => number::openmetrics(v, out),
    }
}

/// Histogram counts: floats in the text format (the proto field was converted), integers in
/// OpenMetrics.
fn count(dialect: Dialect, v: u64, out: &mut Vec<u8>) {
    match dialect {
        Dialect::Text => number::text(v as f64, out),
        Dialect::OpenMetrics => number::unsigned(v, out),
    }
}

fn histogram(out: &mut Vec<u8>, name: &str, labels: &[u8], h: &Runqueue, parts: &Parts<'_>) {
    let bucket = |out: &mut Vec<u8>, le: &[u8], n: u64| {
        open(out, name, "_bucket", labels);
        out.extend_from_slice(b",le=\"");
        out.extend_from_slice(le);
        out.extend_from_slice(b"\"} ");
        count(parts.dialect, n, out);
        out.push(b'\n');
    };
    for (&n, le) in h.buckets.iter().zip(parts.bounds) {
        bucket(out, le, n);
    }
    // The last kernel slot is open-ended: it only counts in `+Inf`.
    bucket(out, b"+Inf", h.count);
    open(out, name, "_sum", labels);
    out.extend_from_slice(b"} ");
    float(parts.dialect, h.sum_seconds, out);
    out.push(b'\n');
    open(out, name, "_count", labels);
    out.extend_from_slice(b"} ");
    count(parts.dialect, h.count, out);
    out.push(b'\n');
}
