//! The series a container has in a family, from the family's row ([`super::families`]): the
//! one place where stored samples become exported numbers, shared by the text, OpenMetrics and
//! protobuf writers.
//!
//! Series come out in the order `Registry::gather` sorted them when the families were built as
//! protos (the order of earlier releases, kept so that an exposition diffs cleanly): within one
//! container, by the value of the extra label.

use super::families::{Family, MachineTotals, Values};
use crate::cgroup::DeviceIo;
use crate::ebpf::{EbpfCounters, RUNQ_LATENCY_SLOTS};
use crate::store::Entry;

/// One sample's value: a number (counter or gauge), or the run-queue histogram.
pub enum Value<'a> {
    Number(f64),
    Runqueue(&'a EbpfCounters),
}

/// Calls `emit(extra label, value)` for each series `e` has in `family`. `io` is the sample's
/// devices sorted by name (see [`devices_in_order`]); `machine` is for the legacy series.
pub fn each<'a>(
    family: &Family,
    e: &'a Entry,
    io: &[&'a DeviceIo],
    machine: MachineTotals,
    mut emit: impl FnMut(Option<(&'static str, &'a str)>, Value<'a>),
) {
    let timed = e.latest.as_deref();
    match &family.values {
        Values::Entry(get) => {
            if let Some(v) = get(e) {
                emit(None, Value::Number(v));
            }
        }
        Values::Legacy(get) => {
            if let Some(v) = get(e, machine) {
                emit(None, Value::Number(v));
            }
        }
        Values::Sample(get) => {
            if let Some(v) = timed.and_then(get) {
                emit(None, Value::Number(v));
            }
        }
        Values::Labelled(key, series) => {
            let Some(timed) = timed else { return };
            for (label, get) in series.iter() {
                if let Some(v) = get(&timed.sample) {
                    emit(Some((key, label)), Value::Number(v));
                }
            }
        }
        Values::PerDevice(get) => {
            if timed.is_some() {
                for d in io {
                    emit(Some(("device", d.device.as_str())), Value::Number(get(d) as f64));
                }
            }
        }
        Values::Runqueue => {
            if let Some(c) = timed.and_then(|t| t.sample.ebpf.as_ref()) {
                emit(None, Value::Runqueue(c));
            }
        }
    }
}

/// The devices of `e`'s sample by name (stable: equal names keep the sample's order).
pub fn devices_in_order(e: &Entry) -> Vec<&DeviceIo> {
    let mut io: Vec<&DeviceIo> = e.latest.as_deref().map(|t| t.sample.io.iter().collect()).unwrap_or_default();
    io.sort_by(|a, b| a.device.cmp(&b.device));
    io
}

/// Histogram buckets start at 2^10 ns (~1 µs): shorter waits all fall in the first bucket,
/// which keeps the series per container at 24 instead of 33 (the log2 slots below add nothing
/// a dashboard shows).
const FIRST_RUNQ_SLOT: usize = 9;

/// Buckets written per container, `+Inf` excluded: slot i of the kernel histogram counts waits
/// in [2^i, 2^(i+1)) ns; the last slot is open-ended and goes to `+Inf` only.
pub const RUNQ_BUCKETS: usize = RUNQ_LATENCY_SLOTS - 1 - FIRST_RUNQ_SLOT;

/// The upper bounds of the written buckets, in seconds.
pub fn runqueue_bounds() -> [f64; RUNQ_BUCKETS] {
    std::array::from_fn(|b| (1u64 << (FIRST_RUNQ_SLOT + b + 1)) as f64 * 1e-9)
}

/// The run-queue histogram of one container.
pub struct Runqueue {
    /// Cumulative counts of the buckets of [`runqueue_bounds`].
    pub buckets: [u64; RUNQ_BUCKETS],
    pub count: u64,
    pub sum_seconds: f64,
}

impl Runqueue {
    pub fn new(c: &EbpfCounters) -> Runqueue {
        let slots = &c.runqueue_latency_log2_ns;
        let mut buckets = [0; RUNQ_BUCKETS];
        let mut cumulative = 0u64;
        for (i, n) in slots.iter().enumerate().take(RUNQ_LATENCY_SLOTS - 1) {
            cumulative += n;
            if i >= FIRST_RUNQ_SLOT {
                buckets[i - FIRST_RUNQ_SLOT] = cumulative;
            }
        }
        Runqueue { buckets, count: slots.iter().sum(), sum_seconds: c.runqueue_latency_sum_ns as f64 * 1e-9 }
    }
}
