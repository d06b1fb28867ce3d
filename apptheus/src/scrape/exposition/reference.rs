//! The reference for the tests: the container series as earlier releases built them, as
//! `prometheus` protos from a `Collector` that a `Registry` gathers and the crate's encoders (or
//! our OpenMetrics one) encode. Kept as it was (apptheus/src/exposition.rs at dca01a0), so the
//! direct writers are compared byte for byte with what was served before them.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType};

use crate::cgroup::Sample;
use crate::ebpf::{EbpfCounters, RUNQ_LATENCY_SLOTS};
use crate::kernfs::{Limit, Pressure};
use crate::store::{Entry, Store};

const CONTAINER_LABELS: &[&str] = &["name", "id", "pid", "user", "image"];
const LEGACY_LABELS: &[&str] = &["job", "instance"];

/// One family: name, help, type, and the extra labels beyond the container's own.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    extra: &'static [&'static str],
}

macro_rules! families {
    ($($ident:ident = ($name:literal, $kind:ident, $extra:expr, $help:literal);)*) => {
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        #[derive(Clone, Copy)]
        #[repr(usize)]
        enum F { $($ident,)* }
        const FAMILIES: &[Family] = &[
            $(Family { name: $name, help: $help, kind: MetricType::$kind, extra: $extra },)*
        ];
    };
}

families! {
    CpuUsage = ("container_cpu_usage_seconds_total", COUNTER, &["cpu"], "Cumulative cpu time consumed in seconds.");
    CpuUser = ("container_cpu_user_seconds_total", COUNTER, &[], "Cumulative user cpu time consumed in seconds.");
    CpuSystem = ("container_cpu_system_seconds_total", COUNTER, &[], "Cumulative system cpu time consumed in seconds.");
    CfsPeriods = ("container_cpu_cfs_periods_total", COUNTER, &[], "Number of elapsed enforcement period intervals.");
    CfsThrottledPeriods = ("container_cpu_cfs_throttled_periods_total", COUNTER, &[], "Number of throttled period intervals.");
    CfsThrottledSeconds = ("container_cpu_cfs_throttled_seconds_total", COUNTER, &[], "Total time duration the container has been throttled.");
    MemUsage = ("container_memory_usage_bytes", GAUGE, &[], "Current memory usage in bytes, including all memory regardless of when it was accessed.");
    MemWorkingSet = ("container_memory_working_set_bytes", GAUGE, &[], "Current working set in bytes.");
    MemRss = ("container_memory_rss", GAUGE, &[], "Size of RSS in bytes.");
    MemCache = ("container_memory_cache", GAUGE, &[], "Number of bytes of page cache memory.");
    MemSwap = ("container_memory_swap", GAUGE, &[], "Container swap usage in bytes.");
    MemFailcnt = ("container_memory_failcnt", GAUGE, &[], "Number of memory usage hits limits (cumulative; typed gauge because the cAdvisor name lacks _total).");
    MemLimit = ("container_spec_memory_limit_bytes", GAUGE, &[], "Memory limit for the container in bytes, 0 when unlimited.");
    MemSwapLimit = ("container_spec_memory_swap_limit_bytes", GAUGE, &[], "Swap limit for the container in bytes, 0 when unlimited.");
    MemReservation = ("container_spec_memory_reservation_limit_bytes", GAUGE, &[], "Memory reservation of the container in bytes (v2 memory.min, v1 soft limit), 0 when unlimited.");
    MemMaxUsage = ("container_memory_max_usage_bytes", GAUGE, &[], "Maximum memory usage recorded in bytes.");
    CpuQuota = ("container_spec_cpu_quota", GAUGE, &[], "CPU quota of the container in microseconds per period (only when one is set).");
    CpuPeriod = ("container_spec_cpu_period", GAUGE, &[], "CPU period of the container in microseconds.");
    CpuShares = ("container_spec_cpu_shares", GAUGE, &[], "CPU share of the container (v2 cpu.weight mapped to shares as cAdvisor does).");
    CpusetCpus = ("container_spec_cpuset_cpus", GAUGE, &[], "Number of CPUs in the container's effective cpuset.");
    OomEvents = ("container_oom_events_total", COUNTER, &[], "Count of out of memory events observed for the container.");
    Processes = ("container_processes", GAUGE, &[], "Number of processes running inside the container.");
    Threads = ("container_threads", GAUGE, &[], "Number of threads running inside the container.");
    ThreadsMax = ("container_threads_max", GAUGE, &[], "Maximum number of threads allowed inside the container, 0 when unlimited.");
    FsReadBytes = ("container_fs_reads_bytes_total", COUNTER, &["device"], "Cumulative count of bytes read.");
    FsWriteBytes = ("container_fs_writes_bytes_total", COUNTER, &["device"], "Cumulative count of bytes written.");
    FsReads = ("container_fs_reads_total", COUNTER, &["device"], "Cumulative count of reads completed.");
    FsWrites = ("container_fs_writes_total", COUNTER, &["device"], "Cumulative count of writes completed.");
    CpuWaiting = ("container_pressure_cpu_waiting_seconds_total", COUNTER, &[], "Total time duration tasks in the container have waited due to CPU congestion.");
    CpuStalled = ("container_pressure_cpu_stalled_seconds_total", COUNTER, &[], "Total time duration no tasks in the container could make progress due to CPU congestion.");
    MemWaiting = ("container_pressure_memory_waiting_seconds_total", COUNTER, &[], "Total time duration tasks in the container have waited due to memory congestion.");
    MemStalled = ("container_pressure_memory_stalled_seconds_total", COUNTER, &[], "Total time duration no tasks in the container could make progress due to memory congestion.");
    IoWaiting = ("container_pressure_io_waiting_seconds_total", COUNTER, &[], "Total time duration tasks in the container have waited due to IO congestion.");
    IoStalled = ("container_pressure_io_stalled_seconds_total", COUNTER, &[], "Total time duration no tasks in the container could make progress due to IO congestion.");
    StartTime = ("container_start_time_seconds", GAUGE, &[], "Start time of the container since unix epoch in seconds.");
    LastSeen = ("container_last_seen", GAUGE, &[], "Last time a container was seen by the exporter (unix seconds).");
    ContextSwitches = ("container_context_switches_total", COUNTER, &["kind"], "Context switches of the container's tasks (eBPF), voluntary (the task blocked) or involuntary (preempted).");
    RunqueueLatency = ("container_runqueue_latency_seconds", HISTOGRAM, &[], "Time the container's tasks waited on a run queue before running (eBPF, log2 buckets).");
    Forks = ("container_forks_total", COUNTER, &[], "Processes forked by the container's tasks (eBPF).");
    Execs = ("container_execs_total", COUNTER, &[], "Programs executed by the container's tasks (eBPF).");
    Exits = ("container_process_exits_total", COUNTER, &[], "Processes of the container that exited (eBPF).");
    OomKills = ("container_oom_kills_total", COUNTER, &[], "Tasks of the container killed by the OOM killer (eBPF, victim's cgroup).");
    NetRxBytes = ("container_network_receive_bytes_total", COUNTER, &[], "Bytes received by the container's sockets, IP headers included (eBPF cgroup_skb).");
    NetTxBytes = ("container_network_transmit_bytes_total", COUNTER, &[], "Bytes sent by the container's sockets, IP headers included (eBPF cgroup_skb).");
    NetRxPackets = ("container_network_receive_packets_total", COUNTER, &[], "Packets received by the container's sockets (eBPF cgroup_skb).");
    NetTxPackets = ("container_network_transmit_packets_total", COUNTER, &[], "Packets sent by the container's sockets (eBPF cgroup_skb).");
    EndTime = ("container_end_time_seconds", GAUGE, &[], "Time the container's last process was gone (unix seconds); its series stay for --metrics.retention.");
}

macro_rules! legacy_families {
    ($($ident:ident = ($name:literal, $help:literal);)*) => {
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy)]
        #[repr(usize)]
        enum L { $($ident,)* }
        const LEGACY: &[Family] = &[
            $(Family { name: $name, help: $help, kind: MetricType::GAUGE, extra: &[] },)*
        ];
    };
}

legacy_families! {
    CpuUsagePer = ("cpu_usage_per", "Legacy Apptheus: CPU use in percent of one core between the last two samples.");
    MemoryUsage = ("memory_usage", "Legacy Apptheus: memory usage in bytes.");
    MemoryLimit = ("memory_limit", "Legacy Apptheus: memory limit in bytes (the machine's RAM when unlimited).");
    MemoryUsagePer = ("memory_usage_per", "Legacy Apptheus: memory usage in percent of the limit.");
    MemorySwap = ("memory_swap", "Legacy Apptheus: swap usage in bytes.");
    MemorySwapLimit = ("memory_swap_limit", "Legacy Apptheus: swap limit in bytes (the machine's swap when unlimited).");
    MemorySwapUsagePer = ("memory_swap_usage_per", "Legacy Apptheus: swap usage in percent of the swap limit.");
    PidUsage = ("pid_usage", "Legacy Apptheus: number of tasks.");
    PidLimit = ("pid_limit", "Legacy Apptheus: task limit, 0 when unlimited.");
    PidUsagePer = ("pid_usage_per", "Legacy Apptheus: tasks in percent of the limit, 0 when unlimited.");
    BlkioRead = ("blkio_read", "Legacy Apptheus: bytes read from block devices.");
    BlkioWrite = ("blkio_write", "Legacy Apptheus: bytes written to block devices.");
    PushTime = ("push_time_seconds", "Legacy Apptheus: last time the container was sampled (unix seconds).");
}

/// The prometheus-crate collector that renders every container in the store.
pub struct ContainerCollector {
    store: Arc<Store>,
    legacy: bool,
    descs: Vec<Desc>,
    machine: MachineTotals,
}

/// What the legacy series report as the limit when a container has none (as the original did).
#[derive(Debug, Clone, Copy)]
struct MachineTotals {
    ram_bytes: u64,
    swap_bytes: u64,
}

impl ContainerCollector {
    pub fn new(store: Arc<Store>, legacy: bool) -> ContainerCollector {
        let mut descs = Vec::new();
        let all = FAMILIES.iter().map(|f| (f, CONTAINER_LABELS)).chain(
            LEGACY.iter().filter(|_| legacy).map(|f| (f, LEGACY_LABELS)),
        );
        for (f, base) in all {
            let labels = base.iter().chain(f.extra).map(|s| s.to_string()).collect();
            descs.push(Desc::new(f.name.into(), f.help.into(), labels, Default::default()).expect("static metric names are valid"));
        }
        let info = rustix::system::sysinfo();
        let unit = u64::from(info.mem_unit.max(1));
        let machine = MachineTotals { ram_bytes: info.totalram as u64 * unit, swap_bytes: info.totalswap as u64 * unit };
        ContainerCollector { store, legacy, descs, machine }
    }
}

impl Collector for ContainerCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut out: Vec<MetricFamily> = FAMILIES.iter().map(empty_family).collect();
        let mut legacy: Vec<MetricFamily> =
            if self.legacy { LEGACY.iter().map(empty_family).collect() } else { Vec::new() };
        for entry in self.store.snapshot() {
            let labels = container_labels(&entry);
            render_container(&mut out, &entry, &labels);
            if self.legacy {
                let mut job = vec![label("job", &entry.info.id), label("instance", "")];
                job.extend(entry.info.labels.iter().map(|(k, v)| label(k, v)));
                render_legacy(&mut legacy, &entry, &job, self.machine);
            }
        }
        out.extend(legacy);
        out
    }
}

fn empty_family(f: &Family) -> MetricFamily {
    let mut mf = MetricFamily::default();
    mf.set_name(f.name.to_string());
    mf.set_help(f.help.to_string());
    mf.set_field_type(f.kind);
    mf
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

fn container_labels(e: &Entry) -> Vec<LabelPair> {
    let mut labels = vec![
        label("name", &e.info.id),
        label("id", &e.info.cgroup_path),
        label("pid", &e.info.pid.to_string()),
        label("user", &e.info.user),
        label("image", &e.info.image),
    ];
    labels.extend(e.info.labels.iter().map(|(k, v)| label(k, v)));
    labels
}

fn push(mf: &mut MetricFamily, labels: &[LabelPair], extra: &[(&str, &str)], value: f64) {
    let mut pairs = labels.to_vec();
    pairs.extend(extra.iter().map(|(k, v)| label(k, v)));
    let mut m = Metric::from_label(pairs);
    if mf.get_field_type() == MetricType::COUNTER {
        let mut c = Counter::default();
        c.set_value(value);
        m.set_counter(c);
    } else {
        let mut g = Gauge::default();
        g.set_value(value);
        m.set_gauge(g);
    }
    mf.mut_metric().push(m);
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

fn render_container(out: &mut [MetricFamily], e: &Entry, labels: &[LabelPair]) {
    let mut put = |f: F, value: Option<f64>| {
        if let Some(v) = value {
            push(&mut out[f as usize], labels, &[], v);
        }
    };
    put(F::StartTime, Some(unix_seconds(e.info.started)));
    put(F::EndTime, e.ended.map(unix_seconds));
    let Some(timed) = e.latest.as_deref() else { return };
    let s: &Sample = &timed.sample;
    let secs = |ns: Option<u64>| ns.map(|v| v as f64 / 1e9);
    let num = |v: Option<u64>| v.map(|v| v as f64);
    put(F::CpuUser, secs(s.cpu.user_ns));
    put(F::CpuSystem, secs(s.cpu.system_ns));
    put(F::CfsPeriods, num(s.cpu.periods));
    put(F::CfsThrottledPeriods, num(s.cpu.throttled_periods));
    put(F::CfsThrottledSeconds, secs(s.cpu.throttled_ns));
    put(F::MemUsage, num(s.memory.usage_bytes));
    put(F::MemWorkingSet, num(s.memory.working_set_bytes));
    put(F::MemRss, num(s.memory.rss_bytes));
    put(F::MemCache, num(s.memory.cache_bytes));
    put(F::MemSwap, num(s.memory.swap_bytes));
    put(F::MemFailcnt, num(s.memory.failcnt));
    put(F::MemLimit, s.memory.limit.map(limit_or_zero));
    put(F::MemSwapLimit, s.memory.swap_limit.map(limit_or_zero));
    put(F::MemReservation, s.memory.reservation.map(limit_or_zero));
    put(F::MemMaxUsage, num(s.memory.max_usage_bytes));
    put(F::CpuQuota, s.cpu.quota_us.and_then(Limit::value).map(|v| v as f64));
    put(F::CpuPeriod, num(s.cpu.period_us));
    put(F::CpuShares, num(s.cpu.shares));
    put(F::CpusetCpus, num(s.cpu.cpuset_cpus));
    put(F::OomEvents, num(s.memory.oom_kills));
    put(F::Processes, num(s.processes));
    put(F::Threads, num(s.pids.current));
    put(F::ThreadsMax, s.pids.limit.map(limit_or_zero));
    let pressure = [
        (s.pressure.cpu, F::CpuWaiting, F::CpuStalled),
        (s.pressure.memory, F::MemWaiting, F::MemStalled),
        (s.pressure.io, F::IoWaiting, F::IoStalled),
    ];
    for (p, waiting, stalled) in pressure {
        let Some(p): Option<Pressure> = p else { continue };
        put(waiting, Some(p.some.total_us as f64 / 1e6));
        put(stalled, p.full.map(|f| f.total_us as f64 / 1e6));
    }
    put(F::LastSeen, Some(unix_seconds(timed.at)));
    if let Some(usage) = secs(s.cpu.usage_ns) {
        push(&mut out[F::CpuUsage as usize], labels, &[("cpu", "total")], usage);
    }
    if let Some(c) = &s.ebpf {
        render_ebpf(out, labels, c);
    }
    for io in &s.io {
        let dev = [("device", io.device.as_str())];
        push(&mut out[F::FsReadBytes as usize], labels, &dev, io.read_bytes as f64);
        push(&mut out[F::FsWriteBytes as usize], labels, &dev, io.write_bytes as f64);
        push(&mut out[F::FsReads as usize], labels, &dev, io.reads as f64);
        push(&mut out[F::FsWrites as usize], labels, &dev, io.writes as f64);
    }
}

/// Histogram buckets start at 2^10 ns (~1 µs): shorter waits all fall in the first bucket,
/// which keeps the series per container at 24 instead of 33 (the log2 slots below add nothing
/// a dashboard shows).
const FIRST_RUNQ_SLOT: usize = 9;

fn render_ebpf(out: &mut [MetricFamily], labels: &[LabelPair], c: &EbpfCounters) {
    let mut put = |f: F, extra: &[(&str, &str)], v: u64| push(&mut out[f as usize], labels, extra, v as f64);
    put(F::ContextSwitches, &[("kind", "voluntary")], c.voluntary_switches);
    put(F::ContextSwitches, &[("kind", "involuntary")], c.involuntary_switches);
    put(F::Forks, &[], c.forks);
    put(F::Execs, &[], c.execs);
    put(F::Exits, &[], c.exits);
    put(F::OomKills, &[], c.oom_kills);
    put(F::NetRxBytes, &[], c.rx_bytes);
    put(F::NetTxBytes, &[], c.tx_bytes);
    put(F::NetRxPackets, &[], c.rx_packets);
    put(F::NetTxPackets, &[], c.tx_packets);
    out[F::RunqueueLatency as usize].mut_metric().push(runqueue_histogram(labels, c));
}

/// Slot i of the kernel histogram counts waits in [2^i, 2^(i+1)) ns, so its upper bound is
/// 2^(i+1) ns; the last slot is open-ended and goes to +Inf only.
fn runqueue_histogram(labels: &[LabelPair], c: &EbpfCounters) -> Metric {
    let slots = &c.runqueue_latency_log2_ns;
    let mut h = Histogram::default();
    let mut cumulative = 0u64;
    for (i, n) in slots.iter().enumerate().take(RUNQ_LATENCY_SLOTS - 1) {
        cumulative += n;
        if i >= FIRST_RUNQ_SLOT {
            let mut b = Bucket::default();
            b.set_cumulative_count(cumulative);
            b.set_upper_bound((1u64 << (i + 1)) as f64 * 1e-9);
            h.bucket.push(b);
        }
    }
    h.set_sample_count(slots.iter().sum());
    h.set_sample_sum(c.runqueue_latency_sum_ns as f64 * 1e-9);
    let mut m = Metric::from_label(labels.to_vec());
    m.set_histogram(h);
    m
}

fn percent(used: f64, limit: f64) -> f64 {
    if limit > 0.0 {
        used / limit * 100.0
    } else {
        0.0
    }
}

fn render_legacy(out: &mut [MetricFamily], e: &Entry, labels: &[LabelPair], machine: MachineTotals) {
    let Some(timed) = e.latest.as_deref() else { return };
    let s = &timed.sample;
    let mut put = |f: L, v: f64| push(&mut out[f as usize], labels, &[], v);
    if let Some(p) = e.cpu_percent {
        put(L::CpuUsagePer, p);
    }
    if let Some(usage) = s.memory.usage_bytes {
        // "Unlimited" is recognised before any percentage is computed; the original divided by
        // the v1 sentinel 9223372036854771712 and reported 0 %.
        let limit = match s.memory.limit {
            Some(Limit::Value(v)) => v.min(machine.ram_bytes) as f64,
            _ => machine.ram_bytes as f64,
        };
        put(L::MemoryUsage, usage as f64);
        put(L::MemoryLimit, limit);
        put(L::MemoryUsagePer, percent(usage as f64, limit));
    }
    if let Some(swap) = s.memory.swap_bytes {
        let limit = match s.memory.swap_limit {
            Some(Limit::Value(v)) => v.min(machine.swap_bytes) as f64,
            _ => machine.swap_bytes as f64,
        };
        put(L::MemorySwap, swap as f64);
        put(L::MemorySwapLimit, limit);
        put(L::MemorySwapUsagePer, percent(swap as f64, limit));
    }
    if let Some(current) = s.pids.current {
        let limit = match s.pids.limit {
            Some(Limit::Value(v)) => v as f64,
            _ => 0.0,
        };
        put(L::PidUsage, current as f64);
        put(L::PidLimit, limit);
        put(L::PidUsagePer, percent(current as f64, limit));
    }
    put(L::BlkioRead, s.io.iter().map(|d| d.read_bytes).sum::<u64>() as f64);
    put(L::BlkioWrite, s.io.iter().map(|d| d.write_bytes).sum::<u64>() as f64);
    put(L::PushTime, unix_seconds(timed.at));
}
