//! The container families, one row each: name, help, type, unit, group and how its values come
//! from a container. cAdvisor's names, types and units, plus the Go Apptheus legacy series.
//! Adding a metric is adding a row here (and its test).

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::proto::MetricType::{self, COUNTER, GAUGE, HISTOGRAM};

use super::groups::Group::{self, Cpu, Io, Legacy, Memory, Network, Pressure, Processes, Sched};
use crate::cgroup::{DeviceIo, Sample, Timed};
use crate::ebpf::EbpfCounters;
use crate::kernfs::Limit;
use crate::store::Entry;

/// One exported family.
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricType,
    /// What the values measure (Prometheus base units where the name allows). The text formats
    /// carry no unit; the tests hold every name to it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub unit: Unit,
    /// Its `--metrics.disable` group; `None` for the lifecycle series, always exported.
    pub group: Option<Group>,
    pub values: Values,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Seconds,
    Bytes,
    /// cAdvisor's CPU quota and period.
    Microseconds,
    /// The legacy `*_per` series.
    Percent,
    /// Counts, ratios and CPU shares.
    None,
}

/// How a family's series come from one container.
pub enum Values {
    /// One series from the container's record (there before its first sample).
    Entry(fn(&Entry) -> Option<f64>),
    /// One series from the latest sample (none before the first).
    Sample(fn(&Timed) -> Option<f64>),
    /// One series per value of the extra label `.0`, from the latest sample, in label-value
    /// order.
    Labelled(&'static str, &'static [LabelledSeries]),
    /// One series per block device (extra label `device`), in device-name order.
    PerDevice(fn(&DeviceIo) -> u64),
    /// The run-queue latency histogram (eBPF).
    Runqueue,
    /// A legacy series: labels `job`, `instance` and the environment labels, one per container.
    Legacy(fn(&Entry, MachineTotals) -> Option<f64>),
}

/// One series of a [`Values::Labelled`] family: the extra label's value and the getter.
pub type LabelledSeries = (&'static str, fn(&Sample) -> Option<f64>);

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

const fn family(name: &'static str, kind: MetricType, unit: Unit, group: Option<Group>, help: &'static str, values: Values) -> Family {
    Family { name, help, kind, unit, group, values }
}

use Unit::{Bytes, Microseconds, Percent, Seconds};
use Values::{Entry as FromEntry, Labelled, PerDevice, Runqueue, Sample as FromSample};
const NO_UNIT: Unit = Unit::None;
const ALWAYS: Option<Group> = None;

/// The container families (labels `name`, `id`, `pid`, `user`, the environment labels, and the
/// extra label a family has, such as `device`).
#[rustfmt::skip]
pub static CONTAINER: &[Family] = &[
    family("container_cpu_usage_seconds_total", COUNTER, Seconds, Some(Cpu), "Cumulative cpu time consumed in seconds.",
        Labelled("cpu", &[("total", |s| secs(s.cpu.usage_ns))])),
    family("container_cpu_user_seconds_total", COUNTER, Seconds, Some(Cpu), "Cumulative user cpu time consumed in seconds.",
        FromSample(|t| secs(t.sample.cpu.user_ns))),
    family("container_cpu_system_seconds_total", COUNTER, Seconds, Some(Cpu), "Cumulative system cpu time consumed in seconds.",
        FromSample(|t| secs(t.sample.cpu.system_ns))),
    family("container_cpu_cfs_periods_total", COUNTER, NO_UNIT, Some(Cpu), "Number of elapsed enforcement period intervals.",
        FromSample(|t| num(t.sample.cpu.periods))),
    family("container_cpu_cfs_throttled_periods_total", COUNTER, NO_UNIT, Some(Cpu), "Number of throttled period intervals.",
        FromSample(|t| num(t.sample.cpu.throttled_periods))),
    family("container_cpu_cfs_throttled_seconds_total", COUNTER, Seconds, Some(Cpu), "Total time duration the container has been throttled.",
        FromSample(|t| secs(t.sample.cpu.throttled_ns))),
    family("container_memory_usage_bytes", GAUGE, Bytes, Some(Memory), "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        FromSample(|t| num(t.sample.memory.usage_bytes))),
    family("container_memory_working_set_bytes", GAUGE, Bytes, Some(Memory), "Current working set in bytes.",
        FromSample(|t| num(t.sample.memory.working_set_bytes))),
    family("container_memory_rss", GAUGE, Bytes, Some(Memory), "Size of RSS in bytes.",
        FromSample(|t| num(t.sample.memory.rss_bytes))),
    family("container_memory_cache", GAUGE, Bytes, Some(Memory), "Number of bytes of page cache memory.",
        FromSample(|t| num(t.sample.memory.cache_bytes))),
    family("container_memory_swap", GAUGE, Bytes, Some(Memory), "Container swap usage in bytes.",
        FromSample(|t| num(t.sample.memory.swap_bytes))),
    family("container_memory_failcnt", GAUGE, NO_UNIT, Some(Memory), "Number of memory usage hits limits (cumulative; typed gauge because the cAdvisor name lacks _total).",
        FromSample(|t| num(t.sample.memory.failcnt))),
    family("container_spec_memory_limit_bytes", GAUGE, Bytes, Some(Memory), "Memory limit for the container in bytes, 0 when unlimited.",
        FromSample(|t| t.sample.memory.limit.map(limit_or_zero))),
    family("container_spec_memory_swap_limit_bytes", GAUGE, Bytes, Some(Memory), "Swap limit for the container in bytes, 0 when unlimited.",
        FromSample(|t| t.sample.memory.swap_limit.map(limit_or_zero))),
    family("container_spec_memory_reservation_limit_bytes", GAUGE, Bytes, Some(Memory), "Memory reservation of the container in bytes (v2 memory.min, v1 soft limit), 0 when unlimited.",
        FromSample(|t| t.sample.memory.reservation.map(limit_or_zero))),
    family("container_memory_max_usage_bytes", GAUGE, Bytes, Some(Memory), "Maximum memory usage recorded in bytes.",
        FromSample(|t| num(t.sample.memory.max_usage_bytes))),
    // cAdvisor exports a quota only when there is one.
    family("container_spec_cpu_quota", GAUGE, Microseconds, Some(Cpu), "CPU quota of the container in microseconds per period (only when one is set).",
        FromSample(|t| t.sample.cpu.quota_us.and_then(Limit::value).map(|v| v as f64))),
    family("container_spec_cpu_period", GAUGE, Microseconds, Some(Cpu), "CPU period of the container in microseconds.",
        FromSample(|t| num(t.sample.cpu.period_us))),
    family("container_spec_cpu_shares", GAUGE, NO_UNIT, Some(Cpu), "CPU share of the container (v2 cpu.weight mapped to shares as cAdvisor does).",
        FromSample(|t| num(t.sample.cpu.shares))),
    family("container_spec_cpuset_cpus", GAUGE, NO_UNIT, Some(Cpu), "Number of CPUs in the container's effective cpuset.",
        FromSample(|t| num(t.sample.cpu.cpuset_cpus))),
    family("container_oom_events_total", COUNTER, NO_UNIT, Some(Memory), "Count of out of memory events observed for the container.",
        FromSample(|t| num(t.sample.memory.oom_kills))),
    family("container_processes", GAUGE, NO_UNIT, Some(Processes), "Number of processes running inside the container.",
        FromSample(|t| num(t.sample.processes))),
    family("container_threads", GAUGE, NO_UNIT, Some(Processes), "Number of threads running inside the container.",
        FromSample(|t| num(t.sample.pids.current))),
    family("container_threads_max", GAUGE, NO_UNIT, Some(Processes), "Maximum number of threads allowed inside the container, 0 when unlimited.",
        FromSample(|t| t.sample.pids.limit.map(limit_or_zero))),
    family("container_fs_reads_bytes_total", COUNTER, Bytes, Some(Io), "Cumulative count of bytes read.",
        PerDevice(|d| d.read_bytes)),
    family("container_fs_writes_bytes_total", COUNTER, Bytes, Some(Io), "Cumulative count of bytes written.",
        PerDevice(|d| d.write_bytes)),
    family("container_fs_reads_total", COUNTER, NO_UNIT, Some(Io), "Cumulative count of reads completed.",
        PerDevice(|d| d.reads)),
    family("container_fs_writes_total", COUNTER, NO_UNIT, Some(Io), "Cumulative count of writes completed.",
        PerDevice(|d| d.writes)),
    family("container_pressure_cpu_waiting_seconds_total", COUNTER, Seconds, Some(Pressure), "Total time duration tasks in the container have waited due to CPU congestion.",
        FromSample(|t| t.sample.pressure.cpu.map(|p| psi_seconds(p.some.total_us)))),
    family("container_pressure_cpu_stalled_seconds_total", COUNTER, Seconds, Some(Pressure), "Total time duration no tasks in the container could make progress due to CPU congestion.",
        FromSample(|t| t.sample.pressure.cpu.and_then(|p| p.full).map(|l| psi_seconds(l.total_us)))),
    family("container_pressure_memory_waiting_seconds_total", COUNTER, Seconds, Some(Pressure), "Total time duration tasks in the container have waited due to memory congestion.",
        FromSample(|t| t.sample.pressure.memory.map(|p| psi_seconds(p.some.total_us)))),
    family("container_pressure_memory_stalled_seconds_total", COUNTER, Seconds, Some(Pressure), "Total time duration no tasks in the container could make progress due to memory congestion.",
        FromSample(|t| t.sample.pressure.memory.and_then(|p| p.full).map(|l| psi_seconds(l.total_us)))),
    family("container_pressure_io_waiting_seconds_total", COUNTER, Seconds, Some(Pressure), "Total time duration tasks in the container have waited due to IO congestion.",
        FromSample(|t| t.sample.pressure.io.map(|p| psi_seconds(p.some.total_us)))),
    family("container_pressure_io_stalled_seconds_total", COUNTER, Seconds, Some(Pressure), "Total time duration no tasks in the container could make progress due to IO congestion.",
        FromSample(|t| t.sample.pressure.io.and_then(|p| p.full).map(|l| psi_seconds(l.total_us)))),
    family("container_start_time_seconds", GAUGE, Seconds, ALWAYS, "Start time of the container since unix epoch in seconds.",
        FromEntry(|e| Some(unix_seconds(e.info.started)))),
    family("container_last_seen", GAUGE, Seconds, ALWAYS, "Last time a container was seen by the exporter (unix seconds).",
        FromSample(|t| Some(unix_seconds(t.at)))),
    family("container_context_switches_total", COUNTER, NO_UNIT, Some(Sched), "Context switches of the container's tasks (eBPF), voluntary (the task blocked) or involuntary (preempted).",
        Labelled("kind", &[
            ("involuntary", |s| ebpf(s, |c| c.involuntary_switches)),
            ("voluntary", |s| ebpf(s, |c| c.voluntary_switches)),
        ])),
    family("container_runqueue_latency_seconds", HISTOGRAM, Seconds, Some(Sched), "Time the container's tasks waited on a run queue before running (eBPF, log2 buckets).",
        Runqueue),
    family("container_forks_total", COUNTER, NO_UNIT, Some(Processes), "Processes forked by the container's tasks (eBPF).",
        FromSample(|t| ebpf(&t.sample, |c| c.forks))),
    family("container_execs_total", COUNTER, NO_UNIT, Some(Processes), "Programs executed by the container's tasks (eBPF).",
        FromSample(|t| ebpf(&t.sample, |c| c.execs))),
    family("container_process_exits_total", COUNTER, NO_UNIT, Some(Processes), "Processes of the container that exited (eBPF).",
        FromSample(|t| ebpf(&t.sample, |c| c.exits))),
    family("container_oom_kills_total", COUNTER, NO_UNIT, Some(Memory), "Tasks of the container killed by the OOM killer (eBPF, victim's cgroup).",
        FromSample(|t| ebpf(&t.sample, |c| c.oom_kills))),
    family("container_network_receive_bytes_total", COUNTER, Bytes, Some(Network), "Bytes received by the container's sockets, IP headers included (eBPF cgroup_skb).",
        FromSample(|t| ebpf(&t.sample, |c| c.rx_bytes))),
    family("container_network_transmit_bytes_total", COUNTER, Bytes, Some(Network), "Bytes sent by the container's sockets, IP headers included (eBPF cgroup_skb).",
        FromSample(|t| ebpf(&t.sample, |c| c.tx_bytes))),
    family("container_network_receive_packets_total", COUNTER, NO_UNIT, Some(Network), "Packets received by the container's sockets (eBPF cgroup_skb).",
        FromSample(|t| ebpf(&t.sample, |c| c.rx_packets))),
    family("container_network_transmit_packets_total", COUNTER, NO_UNIT, Some(Network), "Packets sent by the container's sockets (eBPF cgroup_skb).",
        FromSample(|t| ebpf(&t.sample, |c| c.tx_packets))),
    family("container_end_time_seconds", GAUGE, Seconds, ALWAYS, "Time the container's last process was gone (unix seconds); its series stay for --metrics.retention.",
        FromEntry(|e| e.ended.map(unix_seconds))),
];

/// The Go Apptheus series (gauges), exported with `--metrics.legacy`.
#[rustfmt::skip]
pub static LEGACY: &[Family] = &[
    legacy("cpu_usage_per", Percent, "Legacy Apptheus: CPU use in percent of one core between the last two samples.",
        |e, _| sample(e).and(e.cpu_percent)),
    legacy("memory_usage", Bytes, "Legacy Apptheus: memory usage in bytes.",
        |e, m| used(memory(e, m))),
    legacy("memory_limit", Bytes, "Legacy Apptheus: memory limit in bytes (the machine's RAM when unlimited).",
        |e, m| limit(memory(e, m))),
    legacy("memory_usage_per", Percent, "Legacy Apptheus: memory usage in percent of the limit.",
        |e, m| per(memory(e, m))),
    legacy("memory_swap", Bytes, "Legacy Apptheus: swap usage in bytes.",
        |e, m| used(swap(e, m))),
    legacy("memory_swap_limit", Bytes, "Legacy Apptheus: swap limit in bytes (the machine's swap when unlimited).",
        |e, m| limit(swap(e, m))),
    legacy("memory_swap_usage_per", Percent, "Legacy Apptheus: swap usage in percent of the swap limit.",
        |e, m| per(swap(e, m))),
    legacy("pid_usage", NO_UNIT, "Legacy Apptheus: number of tasks.",
        |e, _| used(pids(e))),
    legacy("pid_limit", NO_UNIT, "Legacy Apptheus: task limit, 0 when unlimited.",
        |e, _| limit(pids(e))),
    legacy("pid_usage_per", Percent, "Legacy Apptheus: tasks in percent of the limit, 0 when unlimited.",
        |e, _| per(pids(e))),
    legacy("blkio_read", Bytes, "Legacy Apptheus: bytes read from block devices.",
        |e, _| sample(e).map(|s| s.io.iter().map(|d| d.read_bytes).sum::<u64>() as f64)),
    legacy("blkio_write", Bytes, "Legacy Apptheus: bytes written to block devices.",
        |e, _| sample(e).map(|s| s.io.iter().map(|d| d.write_bytes).sum::<u64>() as f64)),
    legacy("push_time_seconds", Seconds, "Legacy Apptheus: last time the container was sampled (unix seconds).",
        |e, _| e.latest.as_deref().map(|t| unix_seconds(t.at))),
];

const fn legacy(name: &'static str, unit: Unit, help: &'static str, value: fn(&Entry, MachineTotals) -> Option<f64>) -> Family {
    family(name, GAUGE, unit, Some(Legacy), help, Values::Legacy(value))
}

/// The families exported, in name order: the order `Registry::gather` gives, which the scrape
/// merges with the registry's own families.
pub fn in_name_order(legacy: bool) -> Vec<&'static Family> {
    let legacy_families = LEGACY.iter().filter(|_| legacy);
    let mut all: Vec<&'static Family> = CONTAINER.iter().chain(legacy_families).collect();
    all.sort_by_key(|f| f.name);
    all
}

fn secs(ns: Option<u64>) -> Option<f64> {
    ns.map(|v| v as f64 / 1e9)
}

fn num(v: Option<u64>) -> Option<f64> {
    v.map(|v| v as f64)
}

fn psi_seconds(us: u64) -> f64 {
    us as f64 / 1e6
}

fn ebpf(s: &Sample, pick: fn(&EbpfCounters) -> u64) -> Option<f64> {
    s.ebpf.as_ref().map(|c| pick(c) as f64)
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

fn sample(e: &Entry) -> Option<&Sample> {
    e.latest.as_deref().map(|t| &t.sample)
}

/// (used, limit) of the legacy memory series. "Unlimited" is recognised before any percentage
/// is computed; the original divided by the v1 sentinel 9223372036854771712 and reported 0 %.
fn memory(e: &Entry, machine: MachineTotals) -> Option<(f64, f64)> {
    let s = sample(e)?;
    s.memory.usage_bytes.map(|used| (used as f64, capped(s.memory.limit, machine.ram_bytes)))
}

fn swap(e: &Entry, machine: MachineTotals) -> Option<(f64, f64)> {
    let s = sample(e)?;
    s.memory.swap_bytes.map(|used| (used as f64, capped(s.memory.swap_limit, machine.swap_bytes)))
}

/// (used, limit) of the legacy task series; the limit is 0 when there is none.
fn pids(e: &Entry) -> Option<(f64, f64)> {
    let s = sample(e)?;
    s.pids.current.map(|used| {
        let limit = match s.pids.limit {
            Some(Limit::Value(v)) => v as f64,
            _ => 0.0,
        };
        (used as f64, limit)
    })
}

/// A limit no larger than the machine has; the machine's total when there is none.
fn capped(limit: Option<Limit>, machine: u64) -> f64 {
    match limit {
        Some(Limit::Value(v)) => v.min(machine) as f64,
        _ => machine as f64,
    }
}

fn used(pair: Option<(f64, f64)>) -> Option<f64> {
    pair.map(|(used, _)| used)
}

fn limit(pair: Option<(f64, f64)>) -> Option<f64> {
    pair.map(|(_, limit)| limit)
}

fn per(pair: Option<(f64, f64)>) -> Option<f64> {
    pair.map(|(used, limit)| if limit > 0.0 { used / limit * 100.0 } else { 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name says its unit the way Prometheus' naming rules spell it, and a unit in the row is
    /// the one the name says.
    #[test]
    fn names_agree_with_units() {
        for f in CONTAINER.iter().chain(LEGACY) {
            let name = f.name.trim_end_matches("_total");
            if name.ends_with("_seconds") || name.contains("_seconds_") {
                assert_eq!(f.unit, Unit::Seconds, "{}", f.name);
            }
            if name.ends_with("_bytes") {
                assert_eq!(f.unit, Unit::Bytes, "{}", f.name);
            }
            if f.name.ends_with("_per") {
                assert_eq!(f.unit, Unit::Percent, "{}", f.name);
            }
            assert_eq!(f.kind == COUNTER, f.name.ends_with("_total"), "{}: counters and only counters end in _total", f.name);
            assert!(matches!(f.values, Values::Legacy(_)) == LEGACY.iter().any(|l| l.name == f.name), "{}", f.name);
        }
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = CONTAINER.iter().chain(LEGACY).map(|f| f.name).collect();
        names.sort();
        let len = names.len();
        names.dedup();
        assert_eq!(names.len(), len);
    }
}
