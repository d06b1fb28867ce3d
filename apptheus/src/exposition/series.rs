//! Which series a container has in each family, and their values: the one place where stored
//! samples become exported numbers, shared by the text, OpenMetrics and protobuf writers.
//!
//! Series come out in the order `Registry::gather` sorted them when the families were built as
//! protos (the order of earlier releases, kept so that an exposition diffs cleanly): within one
//! container, by the value of the extra label.

use std::time::{SystemTime, UNIX_EPOCH};

use super::families::{F, L};
use crate::cgroup::{DeviceIo, Timed};
use crate::ebpf::{EbpfCounters, RUNQ_LATENCY_SLOTS};
use crate::kernfs::Limit;
use crate::store::Entry;

/// One sample's value: a number (counter or gauge), or the run-queue histogram.
pub enum Value<'a> {
    Number(f64),
    Runqueue(&'a EbpfCounters),
}

/// What the legacy series report as the limit when a container has none (as the original did).
#[derive(Debug, Clone, Copy)]
pub struct MachineTotals {
    pub ram_bytes: u64,
    pub swap_bytes: u64,
}

impl MachineTotals {
    pub fn read() -> MachineTotals {
        let info = rustix::system::sysinfo();
        let unit = u64::from(info.mem_unit.max(1));
        MachineTotals { ram_bytes: info.totalram as u64 * unit, swap_bytes: info.totalswap as u64 * unit }
    }
}

/// Calls `emit(extra label, value)` for each series `e` has in container family `f`.
/// `io` is the sample's devices sorted by name (see [`devices_in_order`]).
pub fn container<'a>(
    f: F,
    e: &'a Entry,
    io: &[&'a DeviceIo],
    mut emit: impl FnMut(Option<(&'static str, &'a str)>, Value<'a>),
) {
    match f {
        F::StartTime => emit(None, Value::Number(unix_seconds(e.info.started))),
        F::EndTime => {
            if let Some(t) = e.ended {
                emit(None, Value::Number(unix_seconds(t)));
            }
        }
        _ => from_sample(f, e, io, emit),
    }
}

/// The series that come from the latest sample (none before the first one).
fn from_sample<'a>(
    f: F,
    e: &'a Entry,
    io: &[&'a DeviceIo],
    mut emit: impl FnMut(Option<(&'static str, &'a str)>, Value<'a>),
) {
    let Some(timed) = e.latest.as_deref() else { return };
    let s = &timed.sample;
    let number = Value::Number;
    match f {
        F::CpuUsage => {
            if let Some(v) = secs(s.cpu.usage_ns) {
                emit(Some(("cpu", "total")), number(v));
            }
        }
        F::FsReadBytes | F::FsWriteBytes | F::FsReads | F::FsWrites => {
            for d in io {
                let v = match f {
                    F::FsReadBytes => d.read_bytes,
                    F::FsWriteBytes => d.write_bytes,
                    F::FsReads => d.reads,
                    _ => d.writes,
                };
                emit(Some(("device", d.device.as_str())), number(v as f64));
            }
        }
        F::ContextSwitches => {
            if let Some(c) = &s.ebpf {
                // Label-value order: "involuntary" sorts before "voluntary".
                emit(Some(("kind", "involuntary")), number(c.involuntary_switches as f64));
                emit(Some(("kind", "voluntary")), number(c.voluntary_switches as f64));
            }
        }
        F::RunqueueLatency => {
            if let Some(c) = &s.ebpf {
                emit(None, Value::Runqueue(c));
            }
        }
        _ => {
            if let Some(v) = single(f, timed) {
                emit(None, number(v));
            }
        }
    }
}

/// The value of a family with one unlabelled series per container (None: not in this sample).
fn single(f: F, timed: &Timed) -> Option<f64> {
    let s = &timed.sample;
    let num = |v: Option<u64>| v.map(|v| v as f64);
    let ebpf = |pick: fn(&EbpfCounters) -> u64| s.ebpf.as_ref().map(|c| pick(c) as f64);
    let psi_seconds = |us: u64| us as f64 / 1e6;
    let p = &s.pressure;
    match f {
        F::CpuUser => secs(s.cpu.user_ns),
        F::CpuSystem => secs(s.cpu.system_ns),
        F::CfsPeriods => num(s.cpu.periods),
        F::CfsThrottledPeriods => num(s.cpu.throttled_periods),
        F::CfsThrottledSeconds => secs(s.cpu.throttled_ns),
        F::MemUsage => num(s.memory.usage_bytes),
        F::MemWorkingSet => num(s.memory.working_set_bytes),
        F::MemRss => num(s.memory.rss_bytes),
        F::MemCache => num(s.memory.cache_bytes),
        F::MemSwap => num(s.memory.swap_bytes),
        F::MemFailcnt => num(s.memory.failcnt),
        F::MemLimit => s.memory.limit.map(limit_or_zero),
        F::MemSwapLimit => s.memory.swap_limit.map(limit_or_zero),
        F::MemMaxUsage => num(s.memory.max_usage_bytes),
        // cAdvisor exports a quota only when there is one.
        F::CpuQuota => s.cpu.quota_us.and_then(Limit::value).map(|v| v as f64),
        F::CpuPeriod => num(s.cpu.period_us),
        F::CpuShares => num(s.cpu.shares),
        F::CpusetCpus => num(s.cpu.cpuset_cpus),
        F::OomEvents => num(s.memory.oom_kills),
        F::Processes => num(s.processes),
        F::Threads => num(s.pids.current),
        F::ThreadsMax => s.pids.limit.map(limit_or_zero),
        F::CpuWaiting => p.cpu.map(|p| psi_seconds(p.some.total_us)),
        F::CpuStalled => p.cpu.and_then(|p| p.full).map(|l| psi_seconds(l.total_us)),
        F::MemWaiting => p.memory.map(|p| psi_seconds(p.some.total_us)),
        F::MemStalled => p.memory.and_then(|p| p.full).map(|l| psi_seconds(l.total_us)),
        F::IoWaiting => p.io.map(|p| psi_seconds(p.some.total_us)),
        F::IoStalled => p.io.and_then(|p| p.full).map(|l| psi_seconds(l.total_us)),
        F::LastSeen => Some(unix_seconds(timed.at)),
        F::Forks => ebpf(|c| c.forks),
        F::Execs => ebpf(|c| c.execs),
        F::Exits => ebpf(|c| c.exits),
        F::OomKills => ebpf(|c| c.oom_kills),
        F::NetRxBytes => ebpf(|c| c.rx_bytes),
        F::NetTxBytes => ebpf(|c| c.tx_bytes),
        F::NetRxPackets => ebpf(|c| c.rx_packets),
        F::NetTxPackets => ebpf(|c| c.tx_packets),
        // Not single series: handled by `container`.
        F::CpuUsage
        | F::FsReadBytes
        | F::FsWriteBytes
        | F::FsReads
        | F::FsWrites
        | F::ContextSwitches
        | F::RunqueueLatency
        | F::StartTime
        | F::EndTime => None,
    }
}

/// The value `e` has in legacy family `l` (one series per container, or none).
pub fn legacy(l: L, e: &Entry, machine: MachineTotals) -> Option<f64> {
    let timed = e.latest.as_deref()?;
    let s = &timed.sample;
    // "Unlimited" is recognised before any percentage is computed; the original divided by
    // the v1 sentinel 9223372036854771712 and reported 0 %.
    let capped = |limit: Option<Limit>, machine: u64| match limit {
        Some(Limit::Value(v)) => v.min(machine) as f64,
        _ => machine as f64,
    };
    let memory = s.memory.usage_bytes.map(|used| (used as f64, capped(s.memory.limit, machine.ram_bytes)));
    let swap = s.memory.swap_bytes.map(|used| (used as f64, capped(s.memory.swap_limit, machine.swap_bytes)));
    let pids = s.pids.current.map(|used| {
        let limit = match s.pids.limit {
            Some(Limit::Value(v)) => v as f64,
            _ => 0.0,
        };
        (used as f64, limit)
    });
    let usage = |pair: Option<(f64, f64)>| pair.map(|(used, _)| used);
    let limit = |pair: Option<(f64, f64)>| pair.map(|(_, limit)| limit);
    let per = |pair: Option<(f64, f64)>| pair.map(|(used, limit)| percent(used, limit));
    match l {
        L::CpuUsagePer => e.cpu_percent,
        L::MemoryUsage => usage(memory),
        L::MemoryLimit => limit(memory),
        L::MemoryUsagePer => per(memory),
        L::MemorySwap => usage(swap),
        L::MemorySwapLimit => limit(swap),
        L::MemorySwapUsagePer => per(swap),
        L::PidUsage => usage(pids),
        L::PidLimit => limit(pids),
        L::PidUsagePer => per(pids),
        L::BlkioRead => Some(s.io.iter().map(|d| d.read_bytes).sum::<u64>() as f64),
        L::BlkioWrite => Some(s.io.iter().map(|d| d.write_bytes).sum::<u64>() as f64),
        L::PushTime => Some(unix_seconds(timed.at)),
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

fn secs(ns: Option<u64>) -> Option<f64> {
    ns.map(|v| v as f64 / 1e9)
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn limit_or_zero(l: Limit) -> f64 {
    match l {
        Limit::Value(v) => v as f64,
        Limit::Unlimited => 0.0,
    }
}

fn percent(used: f64, limit: f64) -> f64 {
    if limit > 0.0 {
        used / limit * 100.0
    } else {
        0.0
    }
}
