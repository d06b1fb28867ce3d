//! The container families: cAdvisor's names, types and units, and the Go Apptheus legacy
//! series. What each container exports in them is in [`super::series`].

use prometheus::proto::MetricType;

/// One family: name, help and type.
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: MetricType,
}

macro_rules! families {
    ($($ident:ident = ($name:literal, $kind:ident, $help:literal);)*) => {
        /// A container family (labels `name`, `id`, `pid`, `user`, the environment labels, and
        /// the extra label a family has, such as `device`).
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(usize)]
        pub enum F { $($ident,)* }
        const FAMILIES: &[Family] = &[
            $(Family { name: $name, help: $help, kind: MetricType::$kind },)*
        ];
        impl F {
            pub const ALL: &[F] = &[$(F::$ident,)*];
            pub fn family(self) -> &'static Family {
                &FAMILIES[self as usize]
            }
        }
    };
}

families! {
    CpuUsage = ("container_cpu_usage_seconds_total", COUNTER, "Cumulative cpu time consumed in seconds.");
    CpuUser = ("container_cpu_user_seconds_total", COUNTER, "Cumulative user cpu time consumed in seconds.");
    CpuSystem = ("container_cpu_system_seconds_total", COUNTER, "Cumulative system cpu time consumed in seconds.");
    CfsPeriods = ("container_cpu_cfs_periods_total", COUNTER, "Number of elapsed enforcement period intervals.");
    CfsThrottledPeriods = ("container_cpu_cfs_throttled_periods_total", COUNTER, "Number of throttled period intervals.");
    CfsThrottledSeconds = ("container_cpu_cfs_throttled_seconds_total", COUNTER, "Total time duration the container has been throttled.");
    MemUsage = ("container_memory_usage_bytes", GAUGE, "Current memory usage in bytes, including all memory regardless of when it was accessed.");
    MemWorkingSet = ("container_memory_working_set_bytes", GAUGE, "Current working set in bytes.");
    MemRss = ("container_memory_rss", GAUGE, "Size of RSS in bytes.");
    MemCache = ("container_memory_cache", GAUGE, "Number of bytes of page cache memory.");
    MemSwap = ("container_memory_swap", GAUGE, "Container swap usage in bytes.");
    MemFailcnt = ("container_memory_failcnt", GAUGE, "Number of memory usage hits limits (cumulative; typed gauge because the cAdvisor name lacks _total).");
    MemLimit = ("container_spec_memory_limit_bytes", GAUGE, "Memory limit for the container in bytes, 0 when unlimited.");
    MemSwapLimit = ("container_spec_memory_swap_limit_bytes", GAUGE, "Swap limit for the container in bytes, 0 when unlimited.");
    MemMaxUsage = ("container_memory_max_usage_bytes", GAUGE, "Maximum memory usage recorded in bytes.");
    CpuQuota = ("container_spec_cpu_quota", GAUGE, "CPU quota of the container in microseconds per period (only when one is set).");
    CpuPeriod = ("container_spec_cpu_period", GAUGE, "CPU period of the container in microseconds.");
    CpuShares = ("container_spec_cpu_shares", GAUGE, "CPU share of the container (v2 cpu.weight mapped to shares as cAdvisor does).");
    CpusetCpus = ("container_spec_cpuset_cpus", GAUGE, "Number of CPUs in the container's effective cpuset.");
    OomEvents = ("container_oom_events_total", COUNTER, "Count of out of memory events observed for the container.");
    Processes = ("container_processes", GAUGE, "Number of processes running inside the container.");
    Threads = ("container_threads", GAUGE, "Number of threads running inside the container.");
    ThreadsMax = ("container_threads_max", GAUGE, "Maximum number of threads allowed inside the container, 0 when unlimited.");
    FsReadBytes = ("container_fs_reads_bytes_total", COUNTER, "Cumulative count of bytes read.");
    FsWriteBytes = ("container_fs_writes_bytes_total", COUNTER, "Cumulative count of bytes written.");
    FsReads = ("container_fs_reads_total", COUNTER, "Cumulative count of reads completed.");
    FsWrites = ("container_fs_writes_total", COUNTER, "Cumulative count of writes completed.");
    CpuWaiting = ("container_pressure_cpu_waiting_seconds_total", COUNTER, "Total time duration tasks in the container have waited due to CPU congestion.");
    CpuStalled = ("container_pressure_cpu_stalled_seconds_total", COUNTER, "Total time duration no tasks in the container could make progress due to CPU congestion.");
    MemWaiting = ("container_pressure_memory_waiting_seconds_total", COUNTER, "Total time duration tasks in the container have waited due to memory congestion.");
    MemStalled = ("container_pressure_memory_stalled_seconds_total", COUNTER, "Total time duration no tasks in the container could make progress due to memory congestion.");
    IoWaiting = ("container_pressure_io_waiting_seconds_total", COUNTER, "Total time duration tasks in the container have waited due to IO congestion.");
    IoStalled = ("container_pressure_io_stalled_seconds_total", COUNTER, "Total time duration no tasks in the container could make progress due to IO congestion.");
    StartTime = ("container_start_time_seconds", GAUGE, "Start time of the container since unix epoch in seconds.");
    LastSeen = ("container_last_seen", GAUGE, "Last time a container was seen by the exporter (unix seconds).");
    ContextSwitches = ("container_context_switches_total", COUNTER, "Context switches of the container's tasks (eBPF), voluntary (the task blocked) or involuntary (preempted).");
    RunqueueLatency = ("container_runqueue_latency_seconds", HISTOGRAM, "Time the container's tasks waited on a run queue before running (eBPF, log2 buckets).");
    Forks = ("container_forks_total", COUNTER, "Processes forked by the container's tasks (eBPF).");
    Execs = ("container_execs_total", COUNTER, "Programs executed by the container's tasks (eBPF).");
    Exits = ("container_process_exits_total", COUNTER, "Processes of the container that exited (eBPF).");
    OomKills = ("container_oom_kills_total", COUNTER, "Tasks of the container killed by the OOM killer (eBPF, victim's cgroup).");
    NetRxBytes = ("container_network_receive_bytes_total", COUNTER, "Bytes received by the container's sockets, IP headers included (eBPF cgroup_skb).");
    NetTxBytes = ("container_network_transmit_bytes_total", COUNTER, "Bytes sent by the container's sockets, IP headers included (eBPF cgroup_skb).");
    NetRxPackets = ("container_network_receive_packets_total", COUNTER, "Packets received by the container's sockets (eBPF cgroup_skb).");
    NetTxPackets = ("container_network_transmit_packets_total", COUNTER, "Packets sent by the container's sockets (eBPF cgroup_skb).");
    EndTime = ("container_end_time_seconds", GAUGE, "Time the container's last process was gone (unix seconds); its series stay for --metrics.retention.");
}

macro_rules! legacy_families {
    ($($ident:ident = ($name:literal, $help:literal);)*) => {
        /// A legacy family (gauges labelled `job`, `instance` and the environment labels).
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(usize)]
        pub enum L { $($ident,)* }
        const LEGACY: &[Family] = &[
            $(Family { name: $name, help: $help, kind: MetricType::GAUGE },)*
        ];
        impl L {
            pub const ALL: &[L] = &[$(L::$ident,)*];
            pub fn family(self) -> &'static Family {
                &LEGACY[self as usize]
            }
        }
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

/// Any family the exposition writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fam {
    Container(F),
    Legacy(L),
}

impl Fam {
    pub fn family(self) -> &'static Family {
        match self {
            Fam::Container(f) => f.family(),
            Fam::Legacy(l) => l.family(),
        }
    }

    /// The families exported, in name order: the order `Registry::gather` gives, which the
    /// scrape merges with the registry's own families.
    pub fn in_name_order(legacy: bool) -> Vec<Fam> {
        let legacy_families = L::ALL.iter().filter(|_| legacy).map(|&l| Fam::Legacy(l));
        let mut all: Vec<Fam> = F::ALL.iter().map(|&f| Fam::Container(f)).chain(legacy_families).collect();
        all.sort_by_key(|f| f.family().name);
        all
    }
}
