//! OpenMetrics 1.0.0 text rendering of gathered `MetricFamily` protos. The prometheus crate has
//! no OpenMetrics encoder; this follows Go's `expfmt.MetricFamilyToOpenMetrics`:
//!
//! - a counter named `x_total` is announced as family `x` (`# TYPE x counter`) with samples
//!   `x_total`; a counter without the suffix is typed `unknown` (a valid OpenMetrics family);
//! - untyped families are `unknown`; histograms get `_bucket` (with a `+Inf` bucket, added when
//!   missing), `_sum` and `_count`; summaries `{quantile=...}`, `_sum`, `_count`;
//! - HELP texts and label values escape `\`, newline and `"`; floats always carry a `.` or an
//!   exponent (`1.0`, `+Inf`, `NaN`); timestamps are seconds;
//! - the exposition ends with `# EOF`.
//!
//! `_created` series, `# UNIT` and exemplars are not written (the registry has none).

use std::io::Write as _;

use prometheus::proto::{LabelPair, Metric, MetricFamily, MetricType};

use super::exposition::{escape, number, openmetrics_header as header};

/// Render `families` (as `Registry::gather` returns them: sorted, one family per name).
pub fn encode(families: &[MetricFamily]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 * 1024);
    for mf in families {
        encode_family(mf, &mut out);
    }
    out.extend_from_slice(EOF);
    out
}

/// The last line of an OpenMetrics exposition.
pub const EOF: &[u8] = b"# EOF\n";

/// Append one family (nothing when it has no metrics).
pub fn encode_family(mf: &MetricFamily, out: &mut Vec<u8>) {
    let name = mf.name();
    if name.is_empty() || mf.get_metric().is_empty() {
        return;
    }
    let kind = mf.get_field_type();
    header(name, mf.help(), kind, out);

    for m in mf.get_metric() {
        match kind {
            MetricType::COUNTER => sample(out, name, "", m, None, Value::Float(m.get_counter().value())),
            MetricType::GAUGE => sample(out, name, "", m, None, Value::Float(m.get_gauge().value())),
            MetricType::UNTYPED => sample(out, name, "", m, None, Value::Float(m.untyped.value())),
            MetricType::SUMMARY => {
                let s = m.get_summary();
                for q in s.get_quantile() {
                    sample(out, name, "", m, Some(("quantile", q.quantile())), Value::Float(q.value()));
                }
                sample(out, name, "_sum", m, None, Value::Float(s.sample_sum()));
                sample(out, name, "_count", m, None, Value::Int(s.sample_count()));
            }
            MetricType::HISTOGRAM => {
                let h = m.get_histogram();
                let mut inf_seen = false;
                for b in h.get_bucket() {
                    let bound = b.upper_bound();
                    inf_seen |= bound == f64::INFINITY;
                    sample(out, name, "_bucket", m, Some(("le", bound)), Value::Int(b.cumulative_count()));
                }
                if !inf_seen {
                    sample(out, name, "_bucket", m, Some(("le", f64::INFINITY)), Value::Int(h.get_sample_count()));
                }
                sample(out, name, "_sum", m, None, Value::Float(h.get_sample_sum()));
                sample(out, name, "_count", m, None, Value::Int(h.get_sample_count()));
            }
        }
    }
}

enum Value {
    Float(f64),
    Int(u64),
}

fn sample(out: &mut Vec<u8>, name: &str, suffix: &str, m: &Metric, extra: Option<(&str, f64)>, value: Value) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(suffix.as_bytes());
    labels(out, m.get_label(), extra);
    out.push(b' ');
    match value {
        Value::Float(v) => number::openmetrics(v, out),
        Value::Int(v) => number::unsigned(v, out),
    }
    if m.has_timestamp_ms() {
        // Seconds, exactly: no float round trip.
        let ms = m.timestamp_ms();
        let sign = if ms < 0 { "-" } else { "" };
        let abs = ms.unsigned_abs();
        let _ = write!(out, " {sign}{}.{:03}", abs / 1000, abs % 1000);
    }
    out.push(b'\n');
}

fn labels(out: &mut Vec<u8>, pairs: &[LabelPair], extra: Option<(&str, f64)>) {
    if pairs.is_empty() && extra.is_none() {
        return;
    }
    let mut sep = b'{';
    for lp in pairs {
        out.push(sep);
        out.extend_from_slice(lp.name().as_bytes());
        out.extend_from_slice(b"=\"");
        escape(lp.value(), true, out);
        out.push(b'"');
        sep = b',';
    }
    if let Some((k, v)) = extra {
        out.push(sep);
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"=\"");
        number::openmetrics_bound(v, out);
        out.push(b'"');
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::core::Collector;
    use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};

    fn float(v: f64) -> String {
        let mut s = Vec::new();
        number::openmetrics(v, &mut s);
        String::from_utf8(s).unwrap()
    }

    fn text(families: &[MetricFamily]) -> String {
        String::from_utf8(encode(families)).unwrap()
    }

    #[test]
    fn floats_are_canonical() {
        assert_eq!(float(1.0), "1.0");
        assert_eq!(float(0.0), "0.0");
        assert_eq!(float(-1.0), "-1.0");
        assert_eq!(float(0.25), "0.25");
        assert_eq!(float(1e-5), "1e-5");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(float(f64::NAN), "NaN");
        for v in [1e-5, 123456789.125, 1e21, 3.0e-300, 0.1] {
            assert_eq!(float(v).parse::<f64>().unwrap(), v);
        }
    }

    #[test]
    fn bounds_match_the_text_format_digits() {
        let bound = |v: f64| {
            let mut s = Vec::new();
            number::openmetrics_bound(v, &mut s);
            String::from_utf8(s).unwrap()
        };
        assert_eq!(bound(0.00001), "0.00001");
        assert_eq!(bound(0.5), "0.5");
        assert_eq!(bound(1.0), "1.0");
        assert_eq!(bound(10.0), "10.0");
        assert_eq!(bound(f64::INFINITY), "+Inf");
    }

    fn registry() -> Registry {
        let r = Registry::new();
        let c = IntCounterVec::new(Opts::new("jobs_total", "Jobs \"done\"\\ by\nresult."), &["result"]).unwrap();
        c.with_label_values(&["ok"]).inc_by(3);
        c.with_label_values(&["a\"b\\c\nd"]).inc();
        let g = IntGauge::new("queue_length", "Queue length.").unwrap();
        g.set(7);
        let h = Histogram::with_opts(HistogramOpts::new("latency_seconds", "Latency.").buckets(vec![0.5, 1.0])).unwrap();
        h.observe(0.25);
        h.observe(0.75);
        h.observe(4.0);
        r.register(Box::new(c)).unwrap();
        r.register(Box::new(g)).unwrap();
        r.register(Box::new(h)).unwrap();
        r
    }

    #[test]
    fn renders_counters_gauges_histograms_and_eof() {
        let text = text(&registry().gather());
        let expected = "\
# HELP jobs Jobs \\\"done\\\"\\\\ by\\nresult.
# TYPE jobs counter
jobs_total{result=\"a\\\"b\\\\c\\nd\"} 1.0
jobs_total{result=\"ok\"} 3.0
# HELP latency_seconds Latency.
# TYPE latency_seconds histogram
latency_seconds_bucket{le=\"0.5\"} 1
latency_seconds_bucket{le=\"1.0\"} 2
latency_seconds_bucket{le=\"+Inf\"} 3
latency_seconds_sum 5.0
latency_seconds_count 3
# HELP queue_length Queue length.
# TYPE queue_length gauge
queue_length 7.0
# EOF
";
        assert_eq!(text, expected);
    }

    #[test]
    fn counter_without_total_suffix_is_unknown_and_untyped_too() {
        let mut mf = IntCounterVec::new(Opts::new("events", "Events."), &[]).unwrap();
        mf.with_label_values::<&str>(&[]).inc();
        let mut families = mf.collect();
        let text = self::text(&families);
        assert!(text.contains("# TYPE events unknown\nevents 1.0\n"), "{text}");
        families[0].set_field_type(MetricType::UNTYPED);
        let mut m = families[0].get_metric()[0].clone();
        let mut u = prometheus::proto::Untyped::default();
        u.set_value(2.5);
        m.untyped = Some(u).into();
        m.set_timestamp_ms(1_700_000_000_123);
        families[0].set_metric(vec![m]);
        let text = self::text(&families);
        assert!(text.contains("# TYPE events unknown\nevents 2.5 1700000000.123\n"), "{text}");
        mf = IntCounterVec::new(Opts::new("x_total", "X."), &[]).unwrap();
        assert_eq!(self::text(&mf.collect()), "# EOF\n", "families without metrics are left out");
    }
}
