//! Sampling a container's cgroup: one collector per source (as node_exporter does), each
//! reading only the files it needs and parsing them with `crate::kernfs`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use super::layout::{Layout, Mode};
use super::container::ContainerCgroup;
use super::files::CgroupFiles;
use super::sample::{DeviceIo, Sample};
use crate::kernfs::{self, Limit, ParseError};

/// A source of figures for a container sample.
pub trait Collector: Send + Sync {
    /// Short name of the source, used in logs and the `source` label of sample errors.
    fn name(&self) -> &'static str;
    /// Fill in this source's part of `out`. Files the kernel does not have are skipped.
    fn collect(&self, cg: &ContainerCgroup, files: &mut CgroupFiles, out: &mut Sample) -> Result<(), CollectError>;
}

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("reading {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("parsing {path}: {err}")]
    Parse { path: PathBuf, err: ParseError },
}

/// Optional sources, off when nothing exported needs them (`--metrics.disable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sources {
    pub pressure: bool,
    pub io: bool,
    pub cpuset: bool,
}

impl Default for Sources {
    fn default() -> Self {
        Sources { pressure: true, io: true, cpuset: true }
    }
}

/// The collectors that apply to this machine's cgroup layout, less the sources not wanted.
pub fn collectors_for(layout: &Layout, wanted: &Sources) -> Vec<Box<dyn Collector>> {
    let mut out: Vec<Box<dyn Collector>> = Vec::new();
    match layout.mode {
        Mode::V2 => {
            out.push(Box::new(CpuV2));
            out.push(Box::new(MemoryV2));
            out.push(Box::new(Pids { v1: false }));
            if wanted.io {
                out.push(Box::new(IoV2));
            }
            if wanted.cpuset {
                out.push(Box::new(CpusetV2));
            }
        }
        Mode::V1 | Mode::Hybrid => {
            out.push(Box::new(CpuV1));
            out.push(Box::new(MemoryV1));
            out.push(Box::new(Pids { v1: true }));
            if wanted.io {
                out.push(Box::new(BlkioV1));
            }
        }
    }
    out.push(Box::new(Processes));
    if layout.unified().is_some() && wanted.pressure {
        out.push(Box::new(Psi));
    }
    out
}

/// Run every collector; a failing source is reported and the others still fill their part.
pub fn sample(
    collectors: &[Box<dyn Collector>],
    cg: &ContainerCgroup,
    files: &mut CgroupFiles,
) -> (Sample, Vec<(&'static str, CollectError)>) {
    let mut sample = Sample::default();
    let mut errors = Vec::new();
    files.start_sample();
    for c in collectors {
        if let Err(e) = c.collect(cg, files, &mut sample) {
            errors.push((c.name(), e));
        }
    }
    (sample, errors)
}

/// Read a cgroup file; `None` when this kernel does not provide it.
fn read<'f>(files: &'f mut CgroupFiles, dir: &Path, file: &'static str) -> Result<Option<&'f str>, CollectError> {
    files.read(dir, file).map_err(|err| CollectError::Read { path: dir.join(file), err })
}

/// Read and parse one file; `None` when absent.
fn read_with<T>(
    files: &mut CgroupFiles,
    dir: &Path,
    file: &'static str,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> Result<Option<T>, CollectError> {
    parsed(dir, file, files.read(dir, file), parse)
}

/// Read and parse a setting (a limit), which is re-read only every few samples
/// ([`CgroupFiles::read_setting`]); `None` when absent.
fn read_setting<T>(
    files: &mut CgroupFiles,
    dir: &Path,
    file: &'static str,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> Result<Option<T>, CollectError> {
    parsed(dir, file, files.read_setting(dir, file), parse)
}

/// Read and parse a counter of rare events, which is re-read every sample only while it moves
/// ([`CgroupFiles::read_rare_counter`]); `None` when absent.
fn read_rare<T>(
    files: &mut CgroupFiles,
    dir: &Path,
    file: &'static str,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> Result<Option<T>, CollectError> {
    parsed(dir, file, files.read_rare_counter(dir, file), parse)
}

/// [`flat`] for a file of rare-event counters ([`read_rare`]).
fn flat_rare<const N: usize>(
    files: &mut CgroupFiles,
    dir: &Path,
    file: &'static str,
    keys: &[&str; N],
) -> Result<[Option<u64>; N], CollectError> {
    Ok(read_rare(files, dir, file, |t| kernfs::flat_keyed_get(t, keys))?.unwrap_or([None; N]))
}

fn parsed<T>(
    dir: &Path,
    file: &str,
    text: std::io::Result<Option<&str>>,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> Result<Option<T>, CollectError> {
    let text = text.map_err(|err| CollectError::Read { path: dir.join(file), err })?;
    text.map(parse).transpose().map_err(|err| CollectError::Parse { path: dir.join(file), err })
}

fn flat<const N: usize>(
    files: &mut CgroupFiles,
    dir: &Path,
    file: &'static str,
    keys: &[&str; N],
) -> Result<[Option<u64>; N], CollectError> {
    Ok(read_with(files, dir, file, |t| kernfs::flat_keyed_get(t, keys))?.unwrap_or([None; N]))
}

fn usec_to_ns(v: Option<u64>) -> Option<u64> {
    v.map(|us| us.saturating_mul(1000))
}

/// cgroup v1 `cpu` (CFS throttling) with usage and user/system time from the unified
/// hierarchy's core `cpu.stat` when there is one (hybrid mode: one file instead of `cpuacct`'s
/// two, and exact user/system split instead of ticks), else from `cpuacct`.
struct CpuV1;
impl Collector for CpuV1 {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn collect(&self, cg: &ContainerCgroup, files: &mut CgroupFiles, out: &mut Sample) -> Result<(), CollectError> {
        if let Some(dir) = cg.unified_dir() {
            let [usage, user, system] = flat(files, dir, "cpu.stat", &["usage_usec", "user_usec", "system_usec"])?;
            out.cpu.usage_ns = usec_to_ns(usage);
            out.cpu.user_ns = usec_to_ns(user);
            out.cpu.system_ns = usec_to_ns(system);
        }
        // Kernels before 4.15 have no core cpu.stat in the unified hierarchy.
        if out.cpu.usage_ns.is_none() {
            if let Some(dir) = cg.v1_dir("cpuacct") {
                out.cpu.usage_ns = read_with(files, dir, "cpuacct.usage", kernfs::parse_u64)?;
                // cpuacct.stat counts USER_HZ ticks.
                let [user, system] = flat(files, dir, "cpuacct.stat", &["user", "system"])?;
                let tick_ns = 1_000_000_000 / rustix::param::clock_ticks_per_second();
                out.cpu.user_ns = user.map(|t| t.saturating_mul(tick_ns));
                out.cpu.system_ns = system.map(|t| t.saturating_mul(tick_ns));
            }
        }
        // v1 cpu.stat counts only under a CFS quota.
        if let Some(dir) = cg.v1_dir("cpu") {
            out.cpu.quota_us = read_setting(files, dir, "cpu.cfs_quota_us", kernfs::parse_cfs_quota)?;
            out.cpu.period_us = read_setting(files, dir, "cpu.cfs_period_us", kernfs::parse_u64)?;
            out.cpu.shares = read_setting(files, dir, "cpu.shares", kernfs::parse_u64)?;
            let [periods, throttled, throttled_ns] =
                flat_rare(files, dir, "cpu.stat", &["nr_periods", "nr_throttled", "throttled_time"])?;
            out.cpu.periods = periods;
            out.cpu.throttled_periods = throttled;
            out.cpu.throttled_ns = throttled_ns;
        }
        Ok(())
    }
}

/// cgroup v2 `cpu.stat`.
struct CpuV2;
impl Collector for CpuV2 {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn collect(&self, cg: &ContainerCgroup, files: &mut CgroupFiles, out: &mut Sample) -> Result<(), CollectError> {
        let Some(dir) = cg.unified_dir() else { return Ok(()) };
        let [usage, user, system, periods, throttled, throttled_us] = flat(
            files,
            dir,
            "cpu.stat",
            &["usage_usec", "user_usec", "system_usec", "nr_periods", "nr_throttled", "throttled_usec"],
        )?;
        out.cpu.usage_ns = usec_to_ns(usage);
        out.cpu.user_ns = usec_to_ns(user);
        out.cpu.system_ns = usec_to_ns(system);
        out.cpu.periods = periods;
        out.cpu.throttled_periods = throttled;
        out.cpu.throttled_ns = usec_to_ns(throttled_us);
        if let Some(max) = read_setting(files, dir, "cpu.max", kernfs::parse_cpu_max)? {
            out.cpu.quota_us = Some(max.quota_us);
            out.cpu.period_us = Some(max.period_us);
        }
        out.cpu.shares = read_setting(files, dir, "cpu.weight", kernfs::parse_u64)?.map(weight_to_shares);
        Ok(())
    }
}

/// cAdvisor's (and runc's) mapping of v2 `cpu.weight` [1, 10000] onto v1 shares [2, 262144].
fn weight_to_shares(weight: u64) -> u64 {
    2 + (weight.clamp(1, 10_000) - 1) * 262_142 / 9_999
}

/// v2 `cpuset.cpus.effective`: of the container's cgroup, or, where the cpuset controller is not
/// enabled for it, of the nearest ancestor that has the file (a Slurm job's cpuset, or the root,
/// all CPUs). Read on the settings' cadence, so the walk costs nothing between refreshes.
struct CpusetV2;
impl Collector for CpusetV2 {
    fn name(&self) -> &'static str {
        "cpuset"
    }
    fn collect(&self, cg: &ContainerCgroup, files: &mut CgroupFiles, out: &mut Sample) -> Result<(), CollectError> {
        let Some(dir) = cg.unified_dir() else { return Ok(()) };
        for dir in dir.ancestors().take(MAX_CGROUP_DEPTH) {
            if let Some(count) = read_setting(files, dir, "cpuset.cpus.effective", kernfs::cpu_list_count)? {
                out.cpu.cpuset_cpus = Some(count);
                break;
            }
        }
        Ok(())
    }
}

/// How far up [`CpusetV2`] looks: deeper than any real cgroup tree (Slurm's is about 8).
const MAX_CGROUP_DEPTH: usize = 32;

/// cgroup v1 `memory` controller.
struct MemoryV1;
impl Collector for MemoryV1 {
    fn name(&self) -> &'static str {
        "memory"
    }
    fn collect(&self, cg: &ContainerCgroup, files: &mut CgroupFiles, out: &mut Sample) -> Result<(), CollectError> {
        let Some(dir) = cg.v1_dir("memory") else { return Ok(()) };
        let m = &mut out.memory;
        m.usage_bytes = read_with(files, dir, "memory.usage_in_bytes", kernfs::parse_u64)?;
        // A peak moves only while usage climbs to a new high.
        m.max_usage_bytes = read_rare(files, dir, "memory.max_usage_in_bytes", kernfs::parse_u64)?;
        // total_swap is there when swap is accounted (the memsw files exist): it saves reading
        // memory.memsw.usage_in_bytes (memory + swap) every sample.
        let [rss, cache, inactive_file, swap] =
            flat(files, dir, "memory.stat", &["total_rss", "total_cache", "total_inactive_file", "total_swap"])?;
        m.rss_bytes = rss;
        m.cache_bytes = cache;
        m.swap_bytes = swap;
        m.working_set_bytes = m.usage_bytes.map(|u| u.saturating_sub(inactive_file.unwrap_or(0)));
        m.failcnt = read_rare(files, dir, "memory.failcnt", kernfs::parse_u64)?;
        m.limit = read_setting(files, dir, "memory.limit_in_bytes", kernfs::parse_limit)?;
        m.reservation = read_setting(files, dir, "memory.soft_limit_in_bytes", kernfs::parse_limit)?;
        let memsw_limit = read_setting(files, dir, "memory.memsw.limit_in_bytes", kernfs::parse_limit)?;
        m.swap_limit = match (memsw_limit, m.limit) {
            (Some(Limit::Value(both)), Some(Limit::Value(mem))) => Some(Limit::Value(both.saturating_sub(mem))),
            (Some(_), _) => Some(Limit::Unlimited),
            (None, _) => None,
        };
        let [oom_kill] = flat_rare(files, dir, "memory.oom_control", &["oom_kill"])?;
        m.oom_kills = oom_kill;
        Ok(())
    }
}

/// cgroup v2 `memory` controller.
struct MemoryV2;
impl Collector for MemoryV2 {
    fn name(&self) -> &'static str {
        "memory"
    }
    fn collect(&self, cg: &ContainerCgroup, files: &mut CgroupFiles, out: &mut Sample) -> Result<(), CollectError> {
        let Some(dir) = cg.unified_dir() else { return Ok(()) };
        let m = &mut out.memory;
        m.usage_bytes = read_with(files, dir, "memory.current", kernfs::parse_u64)?;
        // memory.peak (Linux 5.19): moves only while usage climbs to a new high.
        m.max_usage_bytes = read_rare(files, dir, "memory.peak", kernfs::parse_u64)?;
        let [anon, file, inactive_file] = flat(files, dir, "memory.stat", &["anon", "file", "inactive_file"])?;
        m.rss_bytes = anon;
        m.cache_bytes = file;
        m.working_set_bytes = m.usage_bytes.map(|u| u.saturating_sub(inactive_file.unwrap_or(0)));
        m.swap_bytes = read_with(files, dir, "memory.swap.current", kernfs::parse_u64)?;
        m.limit = read_setting(files, dir, "memory.max", kernfs::parse_limit)?;
        m.swap_limit = read_setting(files, dir, "memory.swap.max", kernfs::parse_limit)?;
        m.reservation = read_setting(files, dir, "memory.min", kernfs::parse_limit)?;
        // v2 has no failcnt; runc and cAdvisor report memory.events "max" (times the limit was hit).
        let [max_hits, oom_kill] = flat_rare(files, dir, "memory.events", &["max", "oom_kill"])?;
        m.failcnt = max_hits;
        m.oom_kills = oom_kill;
        Ok(())
    }
}

/// `pids` controller (same files in v1 and v2).
struct Pids {
    v1: bool,
}
impl Collector for Pids {
    fn name(&self) -> &'static str {
        "pids"
    }
    fn collect(&self, cg: &ContainerCgroup, files: &mut CgroupFiles, out: &mut Sample) -> Result<(), CollectError> {
        let dir = if self.v1 { cg.v1_dir("pids") } else { cg.unified_dir() };
        let Some(dir) = dir else { return Ok(()) };
        out.pids.current = read_with(files, dir, "pids.current", kernfs::parse_u64)?;
        out.pids.limit = read_setting(files, dir, "pids.max", kernfs::parse_limit)?;
        Ok(())
    }
}

/// `cgroup.procs` of the container's main directory.
struct Processes;
impl Collector for Processes {
    fn name(&self) -> &'static str {
        "processes"
    }
    fn collect(&self, cg: &ContainerCgroup, files: &mut CgroupFiles, out: &mut Sample) -> Result<(), CollectError> {
        let count = |t: &str| kernfs::pid_count(t).map(|n| n as u64);
        if let Some(dir) = cg.unified_dir() {
            out.processes = read_with(files, dir, "cgroup.procs", count)?;
        } else if let Some(dir) = cg.v1_dir("memory") {
            // v1 keeps the pid list it built for an open descriptor and serves it again to
            // every read from offset 0 that comes within a second of the last one
            // (CGROUP_PIDLIST_DESTROY_DELAY): a kept descriptor re-read every sample would see
            // the first list forever. So v1's is opened afresh each time.
            out.processes = parsed(dir, "cgroup.procs", files.read_rarely(dir, "cgroup.procs"), count)?;
        }
        Ok(())
    }
}

/// cgroup v1 `blkio` (throttle files: present whatever the I/O scheduler).
struct BlkioV1;
impl Collector for BlkioV1 {
    fn name(&self) -> &'static str {
        "blkio"
    }
    fn collect(&self, cg: &ContainerCgroup, files: &mut CgroupFiles, out: &mut Sample) -> Result<(), CollectError> {
        let Some(dir) = cg.v1_dir("blkio") else { return Ok(()) };
        let mut by_dev: Vec<((u32, u32), DeviceIo)> = Vec::new();
        for (file, bytes) in
            [("blkio.throttle.io_service_bytes_recursive", true), ("blkio.throttle.io_serviced_recursive", false)]
        {
            let Some(text) = read(files, dir, file)? else { continue };
            for entry in kernfs::blkio_v1(text) {
                let e = entry.map_err(|err| CollectError::Parse { path: dir.join(file), err })?;
                let key = (e.device.major, e.device.minor);
                let slot = match by_dev.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, io)) => io,
                    None => {
                        by_dev.push((key, empty_io(key)));
                        &mut by_dev.last_mut().expect("just pushed").1
                    }
                };
                match (e.op, bytes) {
                    (kernfs::BlkioOp::Read, true) => slot.read_bytes = e.value,
                    (kernfs::BlkioOp::Write, true) => slot.write_bytes = e.value,
                    (kernfs::BlkioOp::Read, false) => slot.reads = e.value,
                    (kernfs::BlkioOp::Write, false) => slot.writes = e.value,
                    _ => {}
                }
            }
        }
        out.io = by_dev.into_iter().map(|(_, io)| io).collect();
        Ok(())
    }
}

/// cgroup v2 `io.stat`.
struct IoV2;
impl Collector for IoV2 {
    fn name(&self) -> &'static str {
        "io"
    }
    fn collect(&self, cg: &ContainerCgroup, files: &mut CgroupFiles, out: &mut Sample) -> Result<(), CollectError> {
        let Some(dir) = cg.unified_dir() else { return Ok(()) };
        let Some(text) = read(files, dir, "io.stat")? else { return Ok(()) };
        for line in kernfs::io_stat(text) {
            let s = line.map_err(|err| CollectError::Parse { path: dir.join("io.stat"), err })?;
            let mut io = empty_io((s.device.major, s.device.minor));
            io.read_bytes = s.rbytes;
            io.write_bytes = s.wbytes;
            io.reads = s.rios;
            io.writes = s.wios;
            out.io.push(io);
        }
        Ok(())
    }
}

/// Pressure stall information (cgroup2 core files, also in hybrid mode).
struct Psi;
impl Collector for Psi {
    fn name(&self) -> &'static str {
        "pressure"
    }
    fn collect(&self, cg: &ContainerCgroup, files: &mut CgroupFiles, out: &mut Sample) -> Result<(), CollectError> {
        let Some(dir) = cg.unified_dir() else { return Ok(()) };
        out.pressure.cpu = read_with(files, dir, "cpu.pressure", kernfs::psi)?;
        out.pressure.memory = read_with(files, dir, "memory.pressure", kernfs::psi)?;
        out.pressure.io = read_with(files, dir, "io.pressure", kernfs::psi)?;
        Ok(())
    }
}

fn empty_io(dev: (u32, u32)) -> DeviceIo {
    DeviceIo { device: device_name(dev), read_bytes: 0, write_bytes: 0, reads: 0, writes: 0 }
}

/// `/dev/<name>` from sysfs, as cAdvisor labels devices; cached since devices rarely change.
fn device_name((major, minor): (u32, u32)) -> String {
    static CACHE: OnceLock<Mutex<HashMap<(u32, u32), String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(name) = cache.lock().ok().and_then(|c| c.get(&(major, minor)).cloned()) {
        return name;
    }
    let name = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
        .ok()
        .and_then(|t| kernfs::uevent_devname(&t).map(|n| format!("/dev/{n}")))
        .unwrap_or_else(|| format!("{major}:{minor}"));
    if let Ok(mut c) = cache.lock() {
        c.insert((major, minor), name.clone());
    }
    name
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::layout::{Hierarchy, Version};

    /// A pure-v2 layout whose parent is the fixtures directory, so `<parent>/v2` is the fixture
    /// tree written from cgroup-v2.rst.
    fn v2_fixture_tree() -> (Layout, ContainerCgroup) {
        let fixtures = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"));
        let layout = Layout {
            mode: Mode::V2,
            hierarchies: vec![Hierarchy {
                version: Version::V2,
                controllers: vec![],
                mount: fixtures.clone(),
                own_dir: fixtures.clone(),
                parent_dir: fixtures,
                parent_path: "/fixtures".into(),
            }],
        };
        let cg = ContainerCgroup::at(&layout, "v2");
        (layout, cg)
    }

    #[test]
    fn pure_v2_fixture_tree_samples_every_source() {
        let (layout, cg) = v2_fixture_tree();
        let collectors = collectors_for(&layout, &Sources::default());
        let (s, errors) = sample(&collectors, &cg, &mut CgroupFiles::new());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(cg.path, "/fixtures/v2");
        assert_eq!(s.cpu.usage_ns, Some(2_412_345_000));
        assert_eq!(s.cpu.user_ns, Some(1_802_345_000));
        assert_eq!(s.cpu.system_ns, Some(610_000_000));
        assert_eq!(s.cpu.periods, Some(1200));
        assert_eq!(s.cpu.throttled_periods, Some(37));
        assert_eq!(s.cpu.throttled_ns, Some(845_123_000));
        assert_eq!(s.memory.usage_bytes, Some(157_286_400));
        assert_eq!(s.memory.working_set_bytes, Some(157_286_400 - 36_864_000));
        assert_eq!(s.memory.rss_bytes, Some(104_857_600));
        assert_eq!(s.memory.cache_bytes, Some(52_428_800));
        assert_eq!(s.memory.limit, Some(Limit::Unlimited));
        assert_eq!(s.memory.max_usage_bytes, Some(209_715_200));
        assert_eq!(s.cpu.quota_us, Some(Limit::Unlimited));
        assert_eq!(s.cpu.period_us, Some(100_000));
        assert_eq!(s.cpu.shares, Some(weight_to_shares(100)));
        assert_eq!(s.cpu.cpuset_cpus, Some(7));
        assert_eq!(s.memory.failcnt, Some(12));
        assert_eq!(s.memory.oom_kills, Some(1));
        assert!(s.memory.swap_bytes.is_some());
        assert_eq!(s.pids.limit, Some(Limit::Unlimited));
        assert!(s.pids.current.is_some());
        assert!(s.processes.is_some());
        assert_eq!(s.io.len(), 2);
        let sdb = s.io.iter().find(|d| d.device.ends_with("8:16") || d.device == "/dev/sdb").unwrap();
        assert_eq!((sdb.read_bytes, sdb.write_bytes, sdb.reads, sdb.writes), (1_459_200, 314_773_504, 192, 353));
    }

    /// A hybrid layout (v1 controllers plus the unified hierarchy) under `root`, its container
    /// `c` filled with files captured from real kernels.
    fn hybrid_fixture_tree(root: &Path) -> (Layout, ContainerCgroup) {
        let fixtures = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"));
        let mut hierarchies = Vec::new();
        let files: &[(&str, &[(&str, &str)])] = &[
            ("cpu", &[("cpu.stat", "v1/root.cpu.stat")]),
            ("cpuacct", &[("cpuacct.usage", "v1/root.cpuacct.usage"), ("cpuacct.stat", "v1/root.cpuacct.stat")]),
            ("memory", &[
                ("memory.stat", "v1/container.memory.stat"),
                ("memory.usage_in_bytes", "v1/container.memory.usage_in_bytes"),
                ("memory.oom_control", "v1/container.memory.oom_control"),
                ("cgroup.procs", "v1/container.cgroup.procs"),
            ]),
            ("unified", &[("cpu.stat", "unified/root.cpu.stat"), ("cpu.pressure", "unified/root.cpu.pressure")]),
        ];
        for (name, list) in files {
            let dir = root.join(name);
            std::fs::create_dir_all(dir.join("c")).unwrap();
            for (file, fixture) in *list {
                std::fs::copy(fixtures.join(fixture), dir.join("c").join(file)).unwrap();
            }
            let (version, controllers) =
                if *name == "unified" { (Version::V2, vec![]) } else { (Version::V1, vec![name.to_string()]) };
            hierarchies.push(Hierarchy {
                version,
                controllers,
                mount: dir.clone(),
                own_dir: dir.clone(),
                parent_dir: dir,
                parent_path: "/".into(),
            });
        }
        let layout = Layout { mode: Mode::Hybrid, hierarchies };
        let cg = ContainerCgroup::at(&layout, "c");
        (layout, cg)
    }

    #[test]
    fn hybrid_takes_cpu_time_from_the_unified_cpu_stat_and_swap_from_memory_stat() {
        let root = tempfile::tempdir().unwrap();
        let (layout, cg) = hybrid_fixture_tree(root.path());
        let collectors = collectors_for(&layout, &Sources::default());
        // Files kept open, and sampled twice: the unified and the v1 `cpu.stat` stay apart.
        static BUDGET: super::super::files::DescriptorBudget = super::super::files::DescriptorBudget::new(100);
        let mut files = CgroupFiles::with_budget(&BUDGET);
        let _ = sample(&collectors, &cg, &mut files);
        let (s, errors) = sample(&collectors, &cg, &mut files);
        assert!(errors.is_empty(), "{errors:?}");
        // unified/root.cpu.stat, not cpuacct.usage (118529100965 ns).
        assert_eq!(s.cpu.usage_ns, Some(116_824_527_000));
        assert_eq!(s.cpu.user_ns, Some(83_299_459_000));
        assert_eq!(s.cpu.system_ns, Some(33_525_067_000));
        assert_eq!(s.cpu.periods, Some(0), "throttling still comes from the v1 cpu controller");
        assert_eq!(s.memory.usage_bytes, Some(364_220_416));
        assert_eq!(s.memory.working_set_bytes, Some(364_220_416 - 216_039_424));
        assert_eq!(s.memory.swap_bytes, Some(0), "total_swap of memory.stat");
        assert!(s.pressure.cpu.is_some());

        // A kernel without the core cpu.stat in the unified hierarchy: cpuacct instead.
        std::fs::remove_file(root.path().join("unified/c/cpu.stat")).unwrap();
        let (s, errors) = sample(&collectors, &cg, &mut CgroupFiles::new());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(s.cpu.usage_ns, Some(118_529_100_965));
        let tick_ns = 1_000_000_000 / rustix::param::clock_ticks_per_second();
        assert_eq!(s.cpu.user_ns, Some(8451 * tick_ns));
        assert_eq!(s.cpu.system_ns, Some(3401 * tick_ns));
    }

    /// A pure-v2 layout whose parent is `dir`.
    fn v2_layout_at(dir: &Path) -> Layout {
        Layout {
            mode: Mode::V2,
            hierarchies: vec![Hierarchy {
                version: Version::V2,
                controllers: vec![],
                mount: dir.into(),
                own_dir: dir.into(),
                parent_dir: dir.into(),
                parent_path: "/".into(),
            }],
        }
    }

    #[test]
    fn missing_files_are_omitted_not_zero() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("c")).unwrap();
        std::fs::write(dir.path().join("c/memory.current"), "4096\n").unwrap();
        let layout = v2_layout_at(dir.path());
        let cg = ContainerCgroup::at(&layout, "c");
        let (s, errors) = sample(&collectors_for(&layout, &Sources::default()), &cg, &mut CgroupFiles::new());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(s.memory.usage_bytes, Some(4096));
        assert_eq!(s.cpu.usage_ns, None);
        assert_eq!(s.memory.swap_bytes, None);
        assert!(s.io.is_empty());
    }

    #[test]
    fn a_corrupt_file_is_an_error_of_its_source_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("c")).unwrap();
        std::fs::write(dir.path().join("c/cpu.stat"), "usage_usec lots\n").unwrap();
        std::fs::write(dir.path().join("c/pids.current"), "3\n").unwrap();
        let layout = v2_layout_at(dir.path());
        let cg = ContainerCgroup::at(&layout, "c");
        let (s, errors) = sample(&collectors_for(&layout, &Sources::default()), &cg, &mut CgroupFiles::new());
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, "cpu");
        assert!(errors[0].1.to_string().contains("cpu.stat"), "{}", errors[0].1);
        assert_eq!(s.pids.current, Some(3));
    }

    /// On a real v1 hierarchy, a process that exits leaves the count at once, however often the
    /// cgroup is sampled (a kept descriptor would serve the first pid list again: pure-v1 VM
    /// test, 2026-12-04). The cgroup is made below this process's own; skipped without root or
    /// a v1 memory hierarchy, unless APPTHEUS_REQUIRE_PRIVILEGED=1.
    #[test]
    fn v1_process_count_follows_exits_between_close_samples() {
        let required = std::env::var("APPTHEUS_REQUIRE_PRIVILEGED").as_deref() == Ok("1");
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let own = own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            ctrls.split(',').any(|c| c == "memory").then(|| path.to_string())
        });
        let mount = Path::new("/sys/fs/cgroup/memory");
        let (true, Some(own)) = (rustix::process::geteuid().is_root() && mount.join("cgroup.procs").exists(), own) else {
            assert!(!required, "needs root and a v1 memory hierarchy, and APPTHEUS_REQUIRE_PRIVILEGED=1");
            eprintln!("SKIP v1_process_count_follows_exits_between_close_samples: not root or no v1 memory hierarchy");
            return;
        };
        let dir = mount.join(own.trim_start_matches('/')).join(format!("procs-count-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let layout = Layout {
            mode: Mode::V1,
            hierarchies: vec![Hierarchy {
                version: Version::V1,
                controllers: vec!["memory".into()],
                mount: mount.to_path_buf(),
                own_dir: dir.parent().unwrap().to_path_buf(),
                parent_dir: dir.parent().unwrap().to_path_buf(),
                parent_path: own.clone(),
            }],
        };
        let cg = ContainerCgroup::from_dirs(&layout, &[(0, dir.clone())]);
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let moved = std::fs::write(dir.join("cgroup.procs"), child.id().to_string());
        // descriptors to keep, as the agent has: every file read each sample may stay open
        static BUDGET: crate::cgroup::files::DescriptorBudget = crate::cgroup::files::DescriptorBudget::new(16);
        let mut files = CgroupFiles::with_budget(&BUDGET);
        let collectors: Vec<Box<dyn Collector>> = vec![Box::new(Processes)];
        let before = sample(&collectors, &cg, &mut files).0.processes;
        let _ = child.kill();
        let _ = child.wait();
        let after = sample(&collectors, &cg, &mut files).0.processes;
        let _ = std::fs::remove_dir(&dir);
        moved.unwrap();
        assert_eq!(before, Some(1));
        assert_eq!(after, Some(0), "the count still lists the exited sleep");
    }
}
