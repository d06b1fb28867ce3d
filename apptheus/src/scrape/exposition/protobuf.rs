//! The protobuf exposition (length-delimited `io.prometheus.client.MetricFamily` messages),
//! written straight from the store. Fields go in the order, and with the presence, that the
//! prometheus crate's generated code writes them for the protos the container families used to
//! be built as, so the bytes are the ones `ProtobufEncoder` produced.

use prometheus::proto::MetricType;

use super::families::{Family, MachineTotals, Values};
use super::series::{self, Runqueue, Value, RUNQ_BUCKETS};
use super::Row;

/// Field keys: (field number << 3) | wire type (0 varint, 1 fixed64, 2 length-delimited).
mod key {
    pub const FAMILY_NAME: u8 = (1 << 3) | 2;
    pub const FAMILY_HELP: u8 = (2 << 3) | 2;
    pub const FAMILY_TYPE: u8 = 3 << 3;
    pub const FAMILY_METRIC: u8 = (4 << 3) | 2;
    pub const METRIC_LABEL: u8 = (1 << 3) | 2;
    pub const METRIC_GAUGE: u8 = (2 << 3) | 2;
    pub const METRIC_COUNTER: u8 = (3 << 3) | 2;
    pub const METRIC_HISTOGRAM: u8 = (7 << 3) | 2;
    pub const LABEL_NAME: u8 = (1 << 3) | 2;
    pub const LABEL_VALUE: u8 = (2 << 3) | 2;
    /// `Gauge.value` and `Counter.value`.
    pub const VALUE: u8 = (1 << 3) | 1;
    pub const HISTOGRAM_COUNT: u8 = 1 << 3;
    pub const HISTOGRAM_SUM: u8 = (2 << 3) | 1;
    pub const HISTOGRAM_BUCKET: u8 = (3 << 3) | 2;
    pub const BUCKET_COUNT: u8 = 1 << 3;
    pub const BUCKET_BOUND: u8 = (2 << 3) | 1;
}

/// A double field: key and 8 bytes.
const DOUBLE_LEN: usize = 9;

/// The family's `name`, `help` and `type` fields.
pub fn header(family: &Family) -> Vec<u8> {
    let mut out = Vec::new();
    bytes_field(key::FAMILY_NAME, family.name.as_bytes(), &mut out);
    bytes_field(key::FAMILY_HELP, family.help.as_bytes(), &mut out);
    out.push(key::FAMILY_TYPE);
    varint(kind_number(family.kind), &mut out);
    out
}

fn kind_number(kind: MetricType) -> u64 {
    match kind {
        MetricType::COUNTER => 0,
        MetricType::GAUGE => 1,
        MetricType::SUMMARY => 2,
        MetricType::UNTYPED => 3,
        MetricType::HISTOGRAM => 4,
    }
}

/// Appends one `Metric.label` field (both `name` and `value` present, even when empty).
pub fn label(name: &str, value: &str, block: &mut Vec<u8>) {
    block.push(key::METRIC_LABEL);
    varint(label_len(name, value) as u64, block);
    bytes_field(key::LABEL_NAME, name.as_bytes(), block);
    bytes_field(key::LABEL_VALUE, value.as_bytes(), block);
}

fn label_len(name: &str, value: &str) -> usize {
    bytes_field_len(name.len()) + bytes_field_len(value.len())
}

/// Appends `family` as one delimited message; nothing when no row has a series in it.
pub fn write_family(out: &mut Vec<u8>, family: &Family, header: &[u8], rows: &[Row<'_>], machine: MachineTotals) {
    let start = out.len();
    out.extend_from_slice(header);
    let first_metric = out.len();
    let kind = family.kind;
    let legacy = matches!(family.values, Values::Legacy(_));
    let bounds = series::runqueue_bounds();
    for row in rows {
        let labels = if legacy { &row.legacy_labels } else { &row.labels };
        series::each(family, row.entry, &row.io, machine, |extra, value| match value {
            Value::Number(v) => number_metric(out, kind, labels, extra, v),
            Value::Runqueue(c) => histogram_metric(out, labels, &Runqueue::new(c), &bounds),
        });
    }
    if out.len() == first_metric {
        out.truncate(start);
        return;
    }
    // The delimiting length goes before the message, now that its size is known.
    let mut prefix = Vec::with_capacity(10);
    varint((out.len() - start) as u64, &mut prefix);
    out.splice(start..start, prefix);
}

fn number_metric(out: &mut Vec<u8>, kind: MetricType, labels: &[u8], extra: Option<(&str, &str)>, v: f64) {
    let extra_len = extra.map_or(0, |(k, v)| bytes_field_len(label_len(k, v)));
    out.push(key::FAMILY_METRIC);
    varint((labels.len() + extra_len + bytes_field_len(DOUBLE_LEN)) as u64, out);
    out.extend_from_slice(labels);
    if let Some((k, v)) = extra {
        label(k, v, out);
    }
    // Counters fill `Metric.counter`, everything else `Metric.gauge`.
    out.push(if kind == MetricType::COUNTER { key::METRIC_COUNTER } else { key::METRIC_GAUGE });
    varint(DOUBLE_LEN as u64, out);
    double(key::VALUE, v, out);
}

fn histogram_metric(out: &mut Vec<u8>, labels: &[u8], h: &Runqueue, bounds: &[f64; RUNQ_BUCKETS]) {
    let bucket_len = |n: u64| 1 + varint_len(n) + DOUBLE_LEN;
    let buckets: usize = h.buckets.iter().map(|&n| bytes_field_len(bucket_len(n))).sum();
    let histogram_len = 1 + varint_len(h.count) + DOUBLE_LEN + buckets;
    out.push(key::FAMILY_METRIC);
    varint((labels.len() + bytes_field_len(histogram_len)) as u64, out);
    out.extend_from_slice(labels);
    out.push(key::METRIC_HISTOGRAM);
    varint(histogram_len as u64, out);
    out.push(key::HISTOGRAM_COUNT);
    varint(h.count, out);
    double(key::HISTOGRAM_SUM, h.sum_seconds, out);
    // No `+Inf` bucket: the protos never had one (it is implied).
    for (&n, &bound) in h.buckets.iter().zip(bounds) {
        out.push(key::HISTOGRAM_BUCKET);
        varint(bucket_len(n) as u64, out);
        out.push(key::BUCKET_COUNT);
        varint(n, out);
        double(key::BUCKET_BOUND, bound, out);
    }
}

fn bytes_field(key: u8, bytes: &[u8], out: &mut Vec<u8>) {
    out.push(key);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// Size of a length-delimited field holding `len` bytes.
fn bytes_field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn double(key: u8, v: f64, out: &mut Vec<u8>) {
    out.push(key);
    out.extend_from_slice(&v.to_le_bytes());
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    // 7 bits per byte; 0 still takes one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_lengths_match_the_encoding() {
        for v in [0, 1, 127, 128, 16383, 16384, u32::MAX as u64, u64::MAX >> 1, u64::MAX] {
            let mut out = Vec::new();
            varint(v, &mut out);
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
    }
}
