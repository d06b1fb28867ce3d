//! The direct writers against the reference path (the container series built as protos by the
//! collector of earlier releases, gathered with the registry's own, then encoded): the same
//! bytes in the text format, OpenMetrics and protobuf.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, ProtobufEncoder, Registry, TextEncoder};
use proptest::prelude::*;

use super::families;
use super::reference::ContainerCollector;
use super::Exposition;
use crate::cgroup::{DeviceIo, Sample, Timed};
use crate::ebpf::EbpfCounters;
use crate::scrape::negotiate::{Format, OpenMetricsVersion};
use crate::scrape::{self as render, openmetrics};
use crate::kernfs::{Limit, Pressure, PressureLine};
use crate::store::{ContainerInfo, Record, Store};

const FORMATS: [Format; 3] = [Format::Text, Format::OpenMetrics(OpenMetricsVersion::V1), Format::Protobuf];

/// Agent-like families whose names fall before, between and after the container families.
fn own_registry() -> Registry {
    let r = Registry::new();
    let containers = IntGauge::new("apptheus_containers", "Containers monitored now.").unwrap();
    containers.set(3);
    let connections = IntCounterVec::new(Opts::new("apptheus_connections_total", "Launcher connections."), &["result"]).unwrap();
    connections.with_label_values(&["accepted"]).inc_by(5);
    connections.with_label_values(&["refused"]).inc();
    let duration = Histogram::with_opts(
        HistogramOpts::new("apptheus_sample_duration_seconds", "Time taken.").buckets(vec![0.00001, 0.001, 1.0]),
    )
    .unwrap();
    duration.observe(0.0005);
    duration.observe(2.0);
    // Between `pid_usage_per` and `push_time_seconds`, and between two container families.
    let fds = IntGauge::new("process_open_fds", "Number of open file descriptors.").unwrap();
    fds.set(42);
    let between = IntGauge::new("container_memory_swap_own", "Sorts between two container families.").unwrap();
    between.set(1);
    let last = IntGauge::new("zz_last", "After everything.").unwrap();
    last.set(-7);
    for c in [
        Box::new(containers) as Box<dyn prometheus::core::Collector>,
        Box::new(connections),
        Box::new(duration),
        Box::new(fds),
        Box::new(between),
        Box::new(last),
    ] {
        r.register(c).unwrap();
    }
    r
}

/// What the scrape served before the direct writers.
fn reference(store: &Arc<Store>, legacy: bool, format: Format) -> Vec<u8> {
    let r = own_registry();
    r.register(Box::new(ContainerCollector::new(store.clone(), legacy))).unwrap();
    let families = r.gather();
    let mut out = Vec::new();
    match format {
        Format::Text => TextEncoder::new().encode(&families, &mut out).unwrap(),
        Format::Protobuf => ProtobufEncoder::new().encode(&families, &mut out).unwrap(),
        Format::OpenMetrics(_) => out = openmetrics::encode(&families),
    }
    out
}

fn direct(exposition: &Exposition, format: Format) -> Vec<u8> {
    render::encode_with(&own_registry().gather(), exposition, format).unwrap()
}

/// Equal bytes; on a difference, the first differing line (text) or offset (protobuf).
fn assert_same(direct: &[u8], reference: &[u8], what: &str) {
    if direct == reference {
        return;
    }
    let at = direct.iter().zip(reference).position(|(a, b)| a != b).unwrap_or(direct.len().min(reference.len()));
    let line = |b: &[u8]| {
        let start = b[..at.min(b.len())].iter().rposition(|&c| c == b'\n').map_or(0, |p| p + 1);
        let end = b[start..].iter().position(|&c| c == b'\n').map_or(b.len(), |p| start + p);
        String::from_utf8_lossy(&b[start..end]).into_owned()
    };
    panic!(
        "{what}: differs at byte {at} (lengths {} and {})\n direct:    {:?}\n reference: {:?}",
        direct.len(),
        reference.len(),
        line(direct),
        line(reference)
    );
}

fn check_all_formats(store: &Arc<Store>, what: &str) {
    for legacy in [false, true] {
        let exposition = Exposition::new(store.clone(), legacy);
        for format in FORMATS {
            let expected = reference(store, legacy, format);
            let what = format!("{what}, {} format, legacy {legacy}", format.name());
            assert_same(&direct(&exposition, format), &expected, &what);
            // Again, now with the body size of the last scrape known.
            assert_same(&direct(&exposition, format), &expected, &format!("{what}, second scrape"));
        }
    }
}

fn at(secs: f64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs_f64(secs)
}

fn info(id: &str, pid: i32, user: &str, labels: &[(&str, &str)]) -> ContainerInfo {
    ContainerInfo {
        id: id.into(),
        cgroup_path: format!("/metric_gateway/{id}"),
        pid,
        user: user.into(),
        exe: "/usr/bin/apptainer".into(),
        image: format!("/images/{id} \"q\"\\.sif"),
        started: at(1_700_000_000.123_456_7),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

fn line(total_us: u64) -> PressureLine {
    PressureLine { avg10: 0.5, avg60: 0.25, avg300: 0.125, total_us }
}

fn device(name: &str, n: u64) -> DeviceIo {
    DeviceIo { device: name.into(), read_bytes: n * 4096, write_bytes: n * 512 + 1, reads: n, writes: n + 3 }
}

fn ebpf(scale: u64) -> EbpfCounters {
    let mut c = EbpfCounters {
        voluntary_switches: scale.saturating_mul(1000),
        involuntary_switches: scale.saturating_mul(17),
        runqueue_latency_sum_ns: scale.saturating_mul(123_456_789),
        forks: 3,
        execs: 4,
        exits: 2,
        oom_kills: 0,
        rx_bytes: 1 << 40,
        tx_bytes: 12_345,
        rx_packets: 99,
        tx_packets: 98,
        ..Default::default()
    };
    for (i, slot) in c.runqueue_latency_log2_ns.iter_mut().enumerate() {
        *slot = (i as u64 * 7 + 1) * scale;
    }
    c
}

/// Every field present.
fn full_sample() -> Sample {
    let mut s = Sample::default();
    s.cpu.usage_ns = Some(123_456_789_012);
    s.cpu.user_ns = Some(100_000_000_001);
    s.cpu.system_ns = Some(23_456_789_011);
    s.cpu.periods = Some(1000);
    s.cpu.throttled_periods = Some(7);
    s.cpu.throttled_ns = Some(1_500_000);
    s.cpu.quota_us = Some(Limit::Value(150_000));
    s.cpu.period_us = Some(100_000);
    s.cpu.shares = Some(1024);
    s.cpu.cpuset_cpus = Some(4);
    s.memory.usage_bytes = Some(300 << 20);
    s.memory.max_usage_bytes = Some(400 << 20);
    s.memory.working_set_bytes = Some(200 << 20);
    s.memory.rss_bytes = Some(150 << 20);
    s.memory.cache_bytes = Some(100 << 20);
    s.memory.swap_bytes = Some(1 << 20);
    s.memory.failcnt = Some(2);
    s.memory.limit = Some(Limit::Value(1 << 30));
    s.memory.swap_limit = Some(Limit::Value(1 << 28));
    s.memory.reservation = Some(Limit::Value(1 << 26));
    s.memory.oom_kills = Some(1);
    s.pids.current = Some(12);
    s.pids.limit = Some(Limit::Value(100));
    s.processes = Some(3);
    // Out of name order, with a device twice (its entries keep their order).
    s.io = vec![device("/dev/sdb", 5), device("8:0", 2), device("/dev/sda", 9), device("/dev/sdb", 1)];
    s.pressure.cpu = Some(Pressure { some: line(1_234_567), full: Some(line(234_567)) });
    s.pressure.memory = Some(Pressure { some: line(10), full: Some(line(0)) });
    s.pressure.io = Some(Pressure { some: line(999_999_999), full: Some(line(1)) });
    s.ebpf = Some(ebpf(1));
    s
}

fn record(info: ContainerInfo, sample: Option<Sample>, sampled_at: f64, cpu_percent: Option<f64>, ended: Option<f64>) -> Record {
    Record {
        info,
        latest: sample.map(|sample| Timed { at: at(sampled_at), sample }),
        cpu_percent,
        ended: ended.map(at),
    }
}

fn varied_store() -> Arc<Store> {
    let store = Arc::new(Store::new());
    // Everything present, two environment labels.
    store.restore(record(
        info("train_100", 100, "alice", &[("job_name", "resnet"), ("slurm_job_id", "42")]),
        Some(full_sample()),
        1_700_000_100.5,
        Some(12.5),
        None,
    ));
    // Labels needing escapes (also in the id, which orders the containers), no eBPF, limits
    // unlimited, partial pressure, no devices, legacy percentages of unlimited limits.
    let mut weird = info("we\"ird\\name\n_7", 7, "bob \"the\" \\ builder\n", &[("note", "a\\b\"c\nd"), ("empty", "")]);
    weird.cgroup_path = "/metric_gateway/back\\slash/\"quoted\"/new\nline".into();
    let mut s = full_sample();
    s.ebpf = None;
    s.memory.limit = Some(Limit::Unlimited);
    s.memory.swap_limit = Some(Limit::Unlimited);
    s.memory.reservation = Some(Limit::Unlimited);
    s.pids.limit = Some(Limit::Unlimited);
    s.pressure.cpu = Some(Pressure { some: line(5), full: None });
    s.pressure.memory = None;
    s.io.clear();
    store.restore(record(weird, Some(s), 1_700_000_101.25, Some(0.0), None));
    // Placed, never sampled, ended: start and end time only. No environment labels, so it sorts
    // first whatever its id.
    store.restore(record(info("zzz_sleep_3", 3, "root", &[]), None, 0.0, None, Some(1_700_000_200.75)));
    // Huge and odd values: beyond 2^53, infinite and NaN percentages, sampled and ended.
    let mut s = full_sample();
    s.cpu.usage_ns = Some(u64::MAX);
    s.memory.usage_bytes = Some(u64::MAX);
    s.memory.limit = Some(Limit::Value(u64::MAX - 1));
    s.memory.swap_limit = None;
    s.memory.swap_bytes = None;
    s.pids.current = None;
    s.ebpf = Some(ebpf(1 << 50));
    s.ebpf.as_mut().unwrap().runqueue_latency_sum_ns = u64::MAX;
    s.io = vec![device("nvme0n1", 1 << 45)];
    store.restore(record(info("big_4", 4, "carol", &[("x", "1")]), Some(s), 1_700_000_102.0, Some(f64::INFINITY), Some(1_700_000_103.0)));
    store.restore(record(info("nan_5", 5, "dave", &[("x", "2")]), Some(full_sample()), 1_700_000_102.0, Some(f64::NAN), None));
    // Zeros and an empty sample; non-ASCII text.
    let mut s = Sample::default();
    s.cpu.usage_ns = Some(0);
    s.memory.usage_bytes = Some(0);
    s.memory.limit = Some(Limit::Value(0));
    s.memory.swap_bytes = Some(0);
    s.memory.swap_limit = Some(Limit::Value(0));
    s.pids.current = Some(0);
    s.pids.limit = Some(Limit::Value(0));
    s.ebpf = Some(EbpfCounters::default());
    store.restore(record(info("zéro_6", 6, "łukasz", &[("x", "ü")]), Some(s), 1_700_000_104.0, Some(-0.0), None));
    store.restore(record(info("empty_8", 8, "eve", &[("x", "3")]), Some(Sample::default()), 1_700_000_105.0, None, None));
    store
}

#[test]
fn direct_writers_match_the_reference_path() {
    let store = varied_store();
    check_all_formats(&store, "varied store");
    // The store exercises every family.
    let text = String::from_utf8(direct(&Exposition::new(store, true), Format::Text)).unwrap();
    for family in families::CONTAINER.iter().chain(families::LEGACY) {
        assert!(text.contains(&format!("\n# TYPE {} ", family.name)), "no series in {}", family.name);
    }
}

#[test]
fn empty_store_writes_the_registry_families_only() {
    check_all_formats(&Arc::new(Store::new()), "empty store");
}

#[test]
fn own_families_never_share_a_name_with_container_families() {
    let store = Arc::new(Store::new());
    let telemetry = crate::scrape::telemetry::Telemetry::new().unwrap();
    let own: Vec<String> = telemetry.registry.gather().iter().map(|mf| mf.name().to_string()).collect();
    for name in Exposition::new(store, true).family_names() {
        assert!(!own.iter().any(|o| o == name), "{name} is both an agent and a container family");
    }
}

#[test]
fn text_sample_passes_promtool_when_installed() {
    let Some(promtool) = which("promtool") else { return };
    let store = varied_store();
    let text = direct(&Exposition::new(store, true), Format::Text);
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &text).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool check metrics: {}\n{report}", out.status);
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

/// A small deterministic generator (splitmix64), so that one proptest seed is one store.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
    /// Any magnitude, small numbers often.
    fn number(&mut self) -> u64 {
        let bits = self.below(65) as u32;
        self.next().checked_shr(64 - bits).unwrap_or(0)
    }
    fn maybe(&mut self) -> Option<u64> {
        self.coin().then(|| self.number())
    }
    fn limit(&mut self) -> Option<Limit> {
        match self.below(3) {
            0 => None,
            1 => Some(Limit::Unlimited),
            _ => Some(Limit::Value(self.number())),
        }
    }
    fn text(&mut self) -> String {
        const PIECES: &[&str] = &["a", "b", "_", "\\", "\"", "\n", "é", "0", " ", "ß"];
        (0..self.below(6)).map(|_| PIECES[self.below(PIECES.len() as u64) as usize]).collect()
    }
    fn pressure(&mut self) -> Option<Pressure> {
        self.coin().then(|| Pressure { some: line(self.number()), full: self.coin().then(|| line(self.number())) })
    }
    fn seconds(&mut self) -> f64 {
        self.below(2_000_000_000) as f64 + self.below(1_000_000_000) as f64 * 1e-9
    }
}

fn random_store(seed: u64) -> Arc<Store> {
    let mut g = Gen(seed);
    let store = Arc::new(Store::new());
    for n in 0..g.below(6) {
        let labels: Vec<(String, String)> = (0..g.below(3)).map(|i| (format!("env{i}"), g.text())).collect();
        let mut info = info(&format!("{}_{n}", g.text()), g.below(1 << 22) as i32, &g.text(), &[]);
        info.cgroup_path = g.text();
        info.labels = labels;
        info.started = at(g.seconds());
        let sample = g.coin().then(|| {
            let mut s = Sample::default();
            s.cpu.usage_ns = g.maybe();
            s.cpu.user_ns = g.maybe();
            s.cpu.system_ns = g.maybe();
            s.cpu.periods = g.maybe();
            s.cpu.throttled_periods = g.maybe();
            s.cpu.throttled_ns = g.maybe();
            s.cpu.quota_us = g.limit();
            s.cpu.period_us = g.maybe();
            s.cpu.shares = g.maybe();
            s.cpu.cpuset_cpus = g.maybe();
            s.memory.usage_bytes = g.maybe();
            s.memory.max_usage_bytes = g.maybe();
            s.memory.working_set_bytes = g.maybe();
            s.memory.rss_bytes = g.maybe();
            s.memory.cache_bytes = g.maybe();
            s.memory.swap_bytes = g.maybe();
            s.memory.failcnt = g.maybe();
            s.memory.limit = g.limit();
            s.memory.swap_limit = g.limit();
            s.memory.reservation = g.limit();
            s.memory.oom_kills = g.maybe();
            s.pids.current = g.maybe();
            s.pids.limit = g.limit();
            s.processes = g.maybe();
            // Small counts, so that the devices' sums cannot overflow.
            s.io = (0..g.below(4))
                .map(|_| DeviceIo { device: g.text(), read_bytes: g.below(1 << 40), write_bytes: g.below(1 << 40), reads: g.number(), writes: g.number() })
                .collect();
            s.pressure.cpu = g.pressure();
            s.pressure.memory = g.pressure();
            s.pressure.io = g.pressure();
            s.ebpf = g.coin().then(|| {
                let mut c = ebpf(1);
                c.voluntary_switches = g.number();
                c.involuntary_switches = g.number();
                c.runqueue_latency_sum_ns = g.number();
                c.runqueue_latency_log2_ns = std::array::from_fn(|_| g.below(1 << 50));
                c
            });
            s
        });
        let cpu_percent = g.coin().then(|| f64::from_bits(g.next()));
        let ended = g.coin().then(|| g.seconds());
        let sampled_at = g.seconds();
        store.restore(record(info, sample, sampled_at, cpu_percent, ended));
    }
    store
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn random_stores_match_the_reference_path(seed in any::<u64>()) {
        check_all_formats(&random_store(seed), &format!("random store {seed}"));
    }
}

