//! The agent's own series (`apptheus_*`, `process_*`) in a prometheus registry. The modules
//! that change them get their instruments (clones of the fields here), not this struct.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

pub struct Telemetry {
    pub registry: Registry,
    /// `apptheus_connections_total{result="accepted|refused|failed",reason}`.
    pub connections: IntCounterVec,
    pub containers: IntGauge,
    /// Ended containers dropped before the retention passed (`--limits.retained-containers`).
    pub retained_dropped: IntCounter,
    containers_max: IntGauge,
    containers_per_user_max: IntGauge,
    pub sample_duration: Histogram,
    /// `apptheus_sample_errors_total{source}`: a source (cpu, memory, ...) that could not be read.
    pub sample_errors: IntCounterVec,
    pub persistence_errors: IntCounter,
    /// Containers that could not be added to the eBPF maps (for instance the map is full).
    pub ebpf_watch_errors: IntCounter,
    /// Containers in the eBPF maps now, and how many they can hold.
    pub ebpf_containers: IntGauge,
    ebpf_containers_max: IntGauge,
    ebpf_up: IntGauge,
    ebpf_attached: IntGaugeVec,
}

impl Telemetry {
    pub fn new() -> prometheus::Result<Telemetry> {
        let registry = Registry::new();
        let build_info = IntGauge::with_opts(
            Opts::new("apptheus_build_info", "A metric with a constant '1' value labeled by version and rustc target.")
                .const_label("version", env!("CARGO_PKG_VERSION"))
                .const_label("goos", std::env::consts::OS)
                .const_label("goarch", std::env::consts::ARCH),
        )?;
        build_info.set(1);
        let connections = IntCounterVec::new(
            Opts::new(
                "apptheus_connections_total",
                "Launcher connections by result: accepted (placed), refused, failed (placement error); reason of a refusal: untrusted, unverifiable, gone, unplaceable, per_user_limit, global_limit.",
            ),
            &["result", "reason"],
        )?;
        let containers = IntGauge::new("apptheus_containers", "Containers monitored now.")?;
        let retained_dropped = IntCounter::new(
            "apptheus_retained_containers_dropped_total",
            "Ended containers whose final sample was dropped before --metrics.retention passed, the oldest first, because --limits.retained-containers were kept.",
        )?;
        let containers_max = IntGauge::new(
            "apptheus_containers_max",
            "Containers all users together may run at once (--limits.containers); 0 when there is no limit.",
        )?;
        let containers_per_user_max = IntGauge::new(
            "apptheus_containers_per_user_max",
            "Containers one user may run at once (--limits.containers-per-user); 0 when there is no limit.",
        )?;
        registry.register(Box::new(retained_dropped.clone()))?;
        registry.register(Box::new(containers_max.clone()))?;
        registry.register(Box::new(containers_per_user_max.clone()))?;
        let sample_duration = Histogram::with_opts(
            HistogramOpts::new("apptheus_sample_duration_seconds", "Time taken to sample one container's cgroup.")
                .buckets(vec![0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05]),
        )?;
        let sample_errors = IntCounterVec::new(
            Opts::new("apptheus_sample_errors_total", "Cgroup sources that could not be read or parsed while sampling, by source."),
            &["source"],
        )?;
        let persistence_errors =
            IntCounter::new("apptheus_persistence_errors_total", "Failed writes of the persistence file.")?;
        registry.register(Box::new(persistence_errors.clone()))?;
        let ebpf_up = IntGauge::new("apptheus_ebpf_up", "1 when the eBPF counters work (core programs attached), 0 when only cgroup metrics are served.")?;
        let ebpf_attached = IntGaugeVec::new(
            Opts::new("apptheus_ebpf_program_attached", "1 when the eBPF program is loaded and attached (cgroup_skb: loaded, attached per container)."),
            &["program"],
        )?;
        let ebpf_watch_errors = IntCounter::new(
            "apptheus_ebpf_watch_errors_total",
            "Containers that could not be added to the eBPF maps (map full, attach failure): they have cgroup metrics only.",
        )?;
        registry.register(Box::new(ebpf_watch_errors.clone()))?;
        let ebpf_containers = IntGauge::new("apptheus_ebpf_containers", "Containers counted by the eBPF programs now.")?;
        let ebpf_containers_max = IntGauge::new(
            "apptheus_ebpf_containers_max",
            "Containers the eBPF maps can hold (--ebpf.max-containers); 0 when eBPF is not loaded.",
        )?;
        registry.register(Box::new(ebpf_containers.clone()))?;
        registry.register(Box::new(ebpf_containers_max.clone()))?;
        registry.register(Box::new(ebpf_up.clone()))?;
        registry.register(Box::new(ebpf_attached.clone()))?;
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(containers.clone()))?;
        registry.register(Box::new(sample_duration.clone()))?;
        registry.register(Box::new(sample_errors.clone()))?;
        registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        register_machine(&registry)?;
        Ok(Telemetry {
            registry,
            connections,
            containers,
            retained_dropped,
            containers_max,
            containers_per_user_max,
            sample_duration,
            sample_errors,
            persistence_errors,
            ebpf_watch_errors,
            ebpf_containers,
            ebpf_containers_max,
            ebpf_up,
            ebpf_attached,
        })
    }

    /// The container caps in force (0: no limit).
    pub fn set_container_caps(&self, total: usize, per_user: usize) {
        self.containers_max.set(i64::try_from(total).unwrap_or(i64::MAX));
        self.containers_per_user_max.set(i64::try_from(per_user).unwrap_or(i64::MAX));
    }

    pub fn set_ebpf_status(&self, up: bool, programs: &[(&'static str, bool)], max_containers: u32) {
        self.ebpf_up.set(i64::from(up));
        let loaded = programs.iter().any(|(_, attached)| *attached);
        self.ebpf_containers_max.set(if loaded { i64::from(max_containers) } else { 0 });
        for (name, attached) in programs {
            self.ebpf_attached.with_label_values(&[name]).set(i64::from(*attached));
        }
    }
}

/// cAdvisor's machine gauges, which its dashboards divide container figures by (memory used in
/// percent of the machine's). Read once: neither changes while the agent runs, but for memory
/// or CPU hot-plug, which a restart picks up.
fn register_machine(registry: &Registry) -> prometheus::Result<()> {
    let info = rustix::system::sysinfo();
    let memory = info.totalram as u64 * u64::from(info.mem_unit.max(1));
    let machine_memory = prometheus::Gauge::new("machine_memory_bytes", "Amount of memory installed on the machine.")?;
    machine_memory.set(memory as f64);
    registry.register(Box::new(machine_memory))?;
    let online = "/sys/devices/system/cpu/online";
    match std::fs::read_to_string(online).map_err(|e| e.to_string()).and_then(|t| crate::kernfs::cpu_list_count(&t).map_err(|e| e.to_string())) {
        Ok(cores) => {
            let machine_cores = prometheus::Gauge::new("machine_cpu_cores", "Number of logical CPU cores.")?;
            machine_cores.set(cores as f64);
            registry.register(Box::new(machine_cores))?;
        }
        Err(err) => tracing::warn!(path = online, %err, "cannot count the online CPUs: machine_cpu_cores is not exported"),
    }
    Ok(())
}
