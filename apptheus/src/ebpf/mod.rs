//! Per-container counters measured in the kernel by the aya eBPF programs of `apptheus-ebpf`:
//! context switches, run-queue latency, forks/execs/exits, OOM kills and network traffic.
//!
//! The object is built by `cargo xtask build-ebpf` and shipped in `prebuilt/`, so a stable-only
//! toolchain builds the agent with eBPF working. Loading never fails: whatever is missing (BTF,
//! CAP_BPF, a verifier that rejects a program, `--ebpf.disable`) is logged, one line per
//! program, and reported by [`Ebpf::up`] and [`Ebpf::programs`].
//!
//! A container is counted once [`Ebpf::watch`] gives its cgroup id (the inode of its cgroup v2
//! directory, see [`cgroup_id`]) a fast slot in the per-CPU array `FAST_COUNTERS` (the first
//! containers, see [`slots`]) or an entry in the per-CPU hash `COUNTERS`. Only tasks and sockets in that exact
//! cgroup count, not in cgroups below it. Before that lookup the programs dismiss, with a few
//! loads, every task whose cgroup has another parent or level than the watched ones (the
//! `TASK_FILTER` map, which `watch` widens as needed; see [`TaskFilter`]): `sched_switch` runs
//! for every task on the machine, and most are in no container.
use std::{
    collections::HashMap,
    fs::File,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, Context as _, Result};
use apptheus_common::{CgroupCounters, SlotCounters, TaskFilter, RUNQ_SLOTS};
use aya::{
    maps::{PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{cgroup_skb::CgroupSkbLink, CgroupAttachMode, CgroupSkb, CgroupSkbAttachType},
};

mod batch;
mod btf;
mod counting;
mod logs;
mod programs;
pub mod query;
mod slots;
#[cfg(test)]
mod tests;

pub use counting::Counting;

use programs::{Fallbacks, PROGRAMS};

/// The eBPF object, aligned for aya's ELF parser.
static OBJECT: &[u8] = aya::include_bytes_aligned!("prebuilt/apptheus-ebpf.o");

/// Number of run-queue latency histogram slots in [`EbpfCounters`].
pub const RUNQ_LATENCY_SLOTS: usize = RUNQ_SLOTS;

#[derive(Clone, Debug)]
pub struct EbpfOptions {
    /// `--ebpf.disable`: load nothing.
    pub disable: bool,
    /// `--ebpf.max-containers`: entries of the per-container map (`COUNTERS`).
    pub max_containers: u32,
}

impl Default for EbpfOptions {
    fn default() -> Self {
        EbpfOptions {
            disable: false,
            max_containers: apptheus_common::MAX_CGROUPS,
        }
    }
}

/// Counters of one watched cgroup, summed over CPUs, since [`Ebpf::watch`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EbpfCounters {
    /// The task blocked (it was not preempted and not runnable when switched out).
    pub voluntary_switches: u64,
    /// The task was preempted or yielded while runnable.
    pub involuntary_switches: u64,
    /// Slot `i` counts waits on a run queue (wakeup or preemption to running) in
    /// `[2^i, 2^(i+1))` ns; the last slot also takes everything longer.
    pub runqueue_latency_log2_ns: [u64; RUNQ_LATENCY_SLOTS],
    /// Sum of all those waits in ns.
    pub runqueue_latency_sum_ns: u64,
    /// New processes (not threads) forked by tasks of the cgroup.
    pub forks: u64,
    pub execs: u64,
    /// Processes whose last thread exited.
    pub exits: u64,
    /// Tasks of the cgroup chosen as OOM victims.
    pub oom_kills: u64,
    /// IP bytes (headers included) and skbs received / sent by sockets of the cgroup.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

impl EbpfCounters {
    fn add(&mut self, c: &CgroupCounters) {
        self.voluntary_switches += c.voluntary_switches;
        self.involuntary_switches += c.involuntary_switches;
        for (sum, v) in self
            .runqueue_latency_log2_ns
            .iter_mut()
            .zip(c.runq_latency_log2_ns)
        {
            *sum += v;
        }
        self.runqueue_latency_sum_ns += c.runq_latency_sum_ns;
        self.forks += c.forks;
        self.execs += c.execs;
        self.exits += c.exits;
        self.oom_kills += c.oom_kills;
        self.rx_bytes += c.rx_bytes;
        self.tx_bytes += c.tx_bytes;
        self.rx_packets += c.rx_packets;
        self.tx_packets += c.tx_packets;
    }
}

/// The loaded programs and maps (or the record of why they are not there).
pub struct Ebpf {
    loaded: Option<Loaded>,
    /// Attach status per program, in [`PROGRAMS`] order.
    attached: Vec<(&'static str, bool)>,
    /// The last batch read of all containers' counters ([`Ebpf::read_recent`]).
    recent: RecentCounters,
}

/// Counters of every watched cgroup from one batch read ([`batch::read_all`]), and when it was
/// taken.
#[derive(Default)]
struct RecentCounters {
    taken: Option<std::time::Instant>,
    index: HashMap<u64, usize>,
    /// `cpus` values per cgroup, in `index` order.
    per_cpu: Vec<CgroupCounters>,
    cpus: usize,
    /// The kernel refused the batch read (before 5.6): read entry by entry.
    unsupported: bool,
}

struct Loaded {
    bpf: aya::Ebpf,
    /// Which watched cgroups own which `FAST_COUNTERS` entries.
    fast: slots::FastSlots,
    /// `--ebpf.max-containers`: cgroups counted at once, fast or not.
    max_containers: u32,
    /// Watched cgroups, each with its own cgroup_skb links (empty when the parent's cover it);
    /// dropping them detaches.
    skb_links: HashMap<u64, Vec<CgroupSkbLink>>,
    /// cgroup_skb links on the containers' parent and its path: they run for every socket below
    /// it, and the programs count only monitored cgroups, so one attachment serves all
    /// containers ([`Ebpf::attach_network_programs_to`]).
    skb_parent: Option<(PathBuf, Vec<CgroupSkbLink>)>,
    /// What `TASK_FILTER` holds, when the programs apply it.
    task_filter: Option<TaskFilter>,
    _logs: Option<logs::LogPump>,
}

// The agent keeps `Ebpf` in a mutex shared by tokio tasks.
const _: fn() = || {
    fn assert_send<T: Send>() {}
    assert_send::<Ebpf>();
};

impl Ebpf {
    /// Loads and attaches what this kernel allows. Never fails: each program that cannot be
    /// loaded or attached gets one warning line, and the rest go on.
    pub fn load(opts: &EbpfOptions) -> Ebpf {
        Self::load_object(opts, OBJECT, Fallbacks::default())
    }

    fn load_object(opts: &EbpfOptions, object: &[u8], fallbacks: Fallbacks) -> Ebpf {
        if opts.disable {
            tracing::info!("eBPF disabled (--ebpf.disable): no kernel counters");
            return Ebpf {
                loaded: None,
                attached: PROGRAMS.iter().map(|p| (p.name, false)).collect(),
                recent: RecentCounters::default(),
            };
        }
        let mut attached = Vec::new();
        let cpus = aya::util::nr_cpus().unwrap_or(1);
        let fast_slots = fallbacks.fast_slots.unwrap_or_else(|| slots::entries_for(cpus, opts.max_containers));
        let loaded = match programs::load_object(object, opts.max_containers, fast_slots, fallbacks) {
            Ok((mut bpf, kernel)) => {
                for program in PROGRAMS.iter().filter(|p| kernel.needs(p)) {
                    let ok = programs::load_program(&mut bpf, &kernel, program)
                        .map_err(|e| {
                            tracing::warn!(
                                program = program.name,
                                "eBPF program {} ({}) not attached: {e:#}",
                                program.name,
                                program.hook_description()
                            )
                        })
                        .is_ok();
                    attached.push((program.name, ok));
                }
                let logs = logs::LogPump::start(&mut bpf)
                    .map_err(|e| tracing::debug!("eBPF log forwarding unavailable: {e:#}"))
                    .ok();
                tracing::debug!(fast_slots, cpus, "eBPF: the first {fast_slots} containers get fast slots");
                Some(Loaded {
                    bpf,
                    fast: slots::FastSlots::new(fast_slots),
                    max_containers: opts.max_containers,
                    skb_links: HashMap::new(),
                    skb_parent: None,
                    task_filter: kernel.has_task_filter().then_some(TaskFilter::NOTHING),
                    _logs: logs,
                })
            }
            Err(e) => {
                tracing::warn!("eBPF not loaded, kernel counters unavailable: {e:#}");
                attached = PROGRAMS.iter().map(|p| (p.name, false)).collect();
                None
            }
        };
        let ebpf = Ebpf { loaded, attached, recent: RecentCounters::default() };
        if ebpf.loaded.is_some() {
            let ok: Vec<_> = ebpf.attached.iter().filter(|p| p.1).map(|p| p.0).collect();
            tracing::info!(up = ebpf.up(), "eBPF programs attached: {}", ok.join(", "));
        }
        ebpf
    }

    /// True when the core programs (context switches and process lifecycle) are attached.
    pub fn up(&self) -> bool {
        PROGRAMS
            .iter()
            .filter(|program| program.core)
            .all(|program| self.is_attached(program.name))
            && self.loaded.is_some()
    }

    /// Each program this kernel needs and whether it is attached (for the cgroup_skb programs:
    /// loaded and ready to be attached to each watched cgroup). Where `sched_switch` reads
    /// run-queue waits from the kernel's `sched_info`, the sched_wakeup programs are not needed
    /// and not listed.
    pub fn programs(&self) -> Vec<(&'static str, bool)> {
        self.attached.clone()
    }

    /// Starts counting the cgroup: gives it zeroed counters (a fast slot or a `COUNTERS` entry)
    /// and attaches the
    /// cgroup_skb programs to its cgroup v2 directory. On error nothing of it stays watched.
    /// Watching an already watched cgroup changes nothing.
    pub fn watch(&mut self, cgroup_id: u64, unified_cgroup_dir: &Path) -> Result<()> {
        let skb_ready = self.skb_ready();
        let loaded = self
            .loaded
            .as_mut()
            .ok_or_else(|| anyhow!("eBPF is not loaded"))?;
        if loaded.skb_links.contains_key(&cgroup_id) {
            return Ok(());
        }
        let result = loaded.watch(cgroup_id, unified_cgroup_dir, skb_ready);
        if result.is_err() {
            loaded.unwatch(cgroup_id);
        }
        result
    }

    /// Stops counting the cgroup: frees its fast slot or `COUNTERS` entry and detaches
    /// its cgroup_skb links.
    pub fn unwatch(&mut self, cgroup_id: u64) {
        if let Some(loaded) = self.loaded.as_mut() {
            loaded.unwatch(cgroup_id);
        }
    }

    /// The cgroup's counters summed over CPUs, or `None` when it is not watched.
    pub fn read(&self, cgroup_id: u64) -> Option<EbpfCounters> {
        self.read_continuing(cgroup_id, &EbpfCounters::default())
    }

    /// `base` plus what the maps hold: counters that continue what an earlier agent run had
    /// counted for the cgroup (so they stay monotonic across a restart).
    pub fn read_continuing(&self, cgroup_id: u64, base: &EbpfCounters) -> Option<EbpfCounters> {
        let loaded = self.loaded.as_ref()?;
        let mut sum = base.clone();
        if let Some(index) = loaded.fast.index_of(cgroup_id) {
            loaded.read_fast(index, cgroup_id)?.iter().for_each(|c| sum.add(c));
            return Some(sum);
        }
        let map = loaded.bpf.map("COUNTERS")?;
        let counters = PerCpuHashMap::<_, u64, CgroupCounters>::try_from(map).ok()?;
        let per_cpu = counters.get(&cgroup_id, 0).ok()?;
        per_cpu.iter().for_each(|c| sum.add(c));
        Some(sum)
    }

    /// Like [`Ebpf::read_continuing`], from one batch read of every container's counters taken
    /// at most `max_age` ago: a few syscalls per `max_age` for all containers instead of one per
    /// container and sample. The figures trail the map by up to `max_age`; a container's final
    /// sample uses [`Ebpf::read_continuing`], which is exact.
    pub fn read_recent(&mut self, cgroup_id: u64, base: &EbpfCounters, max_age: std::time::Duration) -> Option<EbpfCounters> {
        let loaded = self.loaded.as_ref()?;
        let now = std::time::Instant::now();
        let recent = &mut self.recent;
        if !recent.unsupported && recent.taken.is_none_or(|t| now.duration_since(t) > max_age) {
            recent.taken = None;
            if let Some(aya::maps::Map::PerCpuHashMap(map)) = loaded.bpf.map("COUNTERS") {
                use std::os::fd::AsFd as _;
                recent.cpus = aya::util::nr_cpus().unwrap_or(1).max(1);
                match batch::read_all(map.fd().as_fd(), recent.cpus, &mut recent.index, &mut recent.per_cpu) {
                    Ok(()) => {
                        // The fast slots: one lookup each (an array's batch read would copy
                        // every entry, owned or not).
                        for (cgroup_id, index) in loaded.fast.owned() {
                            if let Some(per_cpu) = loaded.read_fast(index, cgroup_id).filter(|v| v.len() == recent.cpus) {
                                recent.index.insert(cgroup_id, recent.per_cpu.len() / recent.cpus);
                                recent.per_cpu.extend(per_cpu);
                            }
                        }
                        recent.taken = Some(now);
                    }
                    Err(e) => {
                        tracing::info!("eBPF counters read one container at a time (no batch lookup in this kernel: {e})");
                        recent.unsupported = true;
                    }
                }
            }
        }
        match recent.taken.and(recent.index.get(&cgroup_id)) {
            Some(&i) => {
                let mut sum = base.clone();
                recent.per_cpu[i * recent.cpus..(i + 1) * recent.cpus].iter().for_each(|c| sum.add(c));
                Some(sum)
            }
            // Watched after the batch read (or no batch read): its own lookup.
            None => self.read_continuing(cgroup_id, base),
        }
    }

    /// Attaches the cgroup_skb programs once, to the containers' parent directory (at start,
    /// so the agent's descriptor count does not change as containers come and go). Without
    /// this, or when it fails, each watched cgroup gets links of its own.
    pub fn attach_network_programs_to(&mut self, parent_dir: &Path) {
        if !self.skb_ready() {
            return;
        }
        let Some(loaded) = self.loaded.as_mut() else { return };
        match loaded.attach_skb(parent_dir) {
            Ok(links) => loaded.skb_parent = Some((parent_dir.to_path_buf(), links)),
            Err(e) => tracing::warn!(
                "cgroup_skb programs not attached to {}, attaching them per container: {e:#}",
                parent_dir.display()
            ),
        }
    }

    /// Descriptors a watched container holds of its own (its cgroup_skb links): none when the
    /// containers' parent carries them.
    pub fn descriptors_per_container(&self) -> usize {
        match self.loaded.as_ref() {
            Some(loaded) if self.skb_ready() && loaded.skb_parent.is_none() => 2,
            _ => 0,
        }
    }

    fn skb_ready(&self) -> bool {
        self.is_attached("cgroup_skb_ingress") && self.is_attached("cgroup_skb_egress")
    }

    /// Containers counted now (with a fast slot or a `COUNTERS` entry).
    pub fn watched(&self) -> usize {
        self.loaded.as_ref().map_or(0, |l| l.skb_links.len())
    }

    fn is_attached(&self, name: &str) -> bool {
        self.attached.iter().any(|(n, ok)| *n == name && *ok)
    }

    /// What `TASK_FILTER` holds, when the programs apply it.
    #[cfg(test)]
    fn task_filter(&self) -> Option<TaskFilter> {
        self.loaded.as_ref()?.task_filter
    }
}

impl Loaded {
    fn watch(&mut self, cgroup_id: u64, dir: &Path, skb_ready: bool) -> Result<()> {
        // --ebpf.max-containers bounds fast slots and hash entries together.
        if self.skb_links.len() >= self.max_containers as usize {
            anyhow::bail!("the eBPF maps are full ({} containers counted, --ebpf.max-containers)", self.max_containers);
        }
        self.admit_to_task_filter(dir)?;
        let nr_cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow!("{what}: {e}"))?;
        // The owned slot or the entry is what makes the programs count the cgroup.
        if let Some(index) = self.fast.take(cgroup_id) {
            self.write_fast(index, cgroup_id, nr_cpus)?;
        } else {
            let zero = PerCpuValues::try_from(vec![CgroupCounters::default(); nr_cpus])?;
            let mut counters: PerCpuHashMap<_, u64, CgroupCounters> =
                PerCpuHashMap::try_from(self.map_mut("COUNTERS")?)?;
            counters
                .insert(cgroup_id, zero, 0)
                .context("adding to COUNTERS")?;
        }

        let links = if skb_ready { self.skb_links_for(dir)? } else { Vec::new() };
        self.skb_links.insert(cgroup_id, links);
        Ok(())
    }

    /// The links `dir` needs of its own: none when the parent's links cover it.
    fn skb_links_for(&mut self, dir: &Path) -> Result<Vec<CgroupSkbLink>> {
        let covered = self.skb_parent.as_ref().is_some_and(|(parent, _)| dir.parent() == Some(parent.as_path()));
        if covered {
            return Ok(Vec::new());
        }
        // Outside the containers' parent (a container nested in its caller's cgroup): a program
        // of ours there would switch off one an ancestor attached without BPF_F_ALLOW_MULTI.
        for attach_type in [query::INGRESS, query::EGRESS] {
            if let Some(ancestor) = query::overridable_ancestor(dir, attach_type) {
                anyhow::bail!(
                    "{} has a cgroup_skb program that one attached below it would override; not counting there",
                    ancestor.display()
                );
            }
        }
        self.attach_skb(dir)
    }

    fn attach_skb(&mut self, dir: &Path) -> Result<Vec<CgroupSkbLink>> {
        let cgroup = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        let mut links = Vec::new();
        for (name, attach_type) in [
            ("cgroup_skb_ingress", CgroupSkbAttachType::Ingress),
            ("cgroup_skb_egress", CgroupSkbAttachType::Egress),
        ] {
            let program: &mut CgroupSkb = self
                .bpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("no program {name}"))?
                .try_into()?;
            // On kernels >= 5.7 aya attaches through a bpf_link, which coexists with other
            // programs on the cgroup anyway and takes no flags (AllowMultiple is EINVAL).
            let id = program
                .attach(&cgroup, attach_type, CgroupAttachMode::Single)
                .with_context(|| format!("attaching {name} to {}", dir.display()))?;
            links.push(program.take_link(id)?);
        }
        Ok(links)
    }

    fn unwatch(&mut self, cgroup_id: u64) {
        // Without its slot or entry the programs skip the cgroup.
        if let Some(index) = self.fast.index_of(cgroup_id) {
            let cleared = aya::util::nr_cpus()
                .map_err(|(what, e)| anyhow!("{what}: {e}"))
                .and_then(|cpus| self.write_fast(index, 0, cpus));
            match cleared {
                Ok(()) => {
                    self.fast.give_back(cgroup_id);
                }
                // Still owned in the map: kept out of use, so that no other cgroup inherits
                // these counts.
                Err(e) => tracing::warn!(cgroup_id, "eBPF fast slot {index} not freed: {e:#}"),
            }
        } else if let Ok(map) = self.map_mut("COUNTERS") {
            if let Ok(mut counters) = PerCpuHashMap::<_, u64, CgroupCounters>::try_from(map) {
                let _ = counters.remove(&cgroup_id);
            }
        }
        self.skb_links.remove(&cgroup_id);
    }

    /// Widens the task filter, before anything of `dir` is counted, so that it lets the tasks
    /// of `dir` through: the first watched cgroup sets the parent and level, a cgroup with
    /// another parent turns the filter off for good (every task is then looked up), another
    /// level makes it any level. The agent's containers all share `--cgroup.parent`.
    fn admit_to_task_filter(&mut self, dir: &Path) -> Result<()> {
        let Some(current) = self.task_filter else {
            return Ok(());
        };
        let wanted = task_filter_for(dir);
        let next = if current == TaskFilter::NOTHING {
            wanted
        } else if current.parent_id == wanted.parent_id {
            TaskFilter {
                level: if current.level == wanted.level {
                    current.level
                } else {
                    0
                },
                ..current
            }
        } else {
            TaskFilter::OFF
        };
        if next != current {
            programs::set_task_filter(&mut self.bpf, next)?;
            self.task_filter = Some(next);
            if next == TaskFilter::OFF {
                tracing::info!(
                    cgroup = %dir.display(),
                    "eBPF task filter off: watched cgroups under different parents, every task's cgroup is looked up"
                );
            } else {
                tracing::debug!(filter = ?next, "eBPF task filter");
            }
        }
        Ok(())
    }

    /// Makes `FAST_COUNTERS[index]` count for `owner` (0: nobody), zeroed, on every CPU.
    fn write_fast(&mut self, index: u32, owner: u64, cpus: usize) -> Result<()> {
        let value = SlotCounters { owner, counters: CgroupCounters::default() };
        let values = PerCpuValues::try_from(vec![value; cpus])?;
        let mut fast: PerCpuArray<_, SlotCounters> = PerCpuArray::try_from(self.map_mut("FAST_COUNTERS")?)?;
        fast.set(index, values, 0)
            .with_context(|| format!("writing FAST_COUNTERS[{index}]"))
    }

    /// `FAST_COUNTERS[index]` per CPU, where it counts for `owner`.
    fn read_fast(&self, index: u32, owner: u64) -> Option<Vec<CgroupCounters>> {
        let fast = PerCpuArray::<_, SlotCounters>::try_from(self.bpf.map("FAST_COUNTERS")?).ok()?;
        let per_cpu = fast.get(&index, 0).ok()?;
        Some(per_cpu.iter().filter(|s| s.owner == owner).map(|s| s.counters).collect())
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.bpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("eBPF object has no map {name}"))
    }
}

/// The task filter that lets exactly the cgroups beside `dir` through: its parent's id and its
/// level where that is known. No filter when `dir` has no parent cgroup (the root) or cannot be
/// read.
fn task_filter_for(dir: &Path) -> TaskFilter {
    let (Some(parent), Ok(meta)) = (dir.parent(), std::fs::metadata(dir)) else {
        return TaskFilter::OFF;
    };
    match std::fs::metadata(parent) {
        Ok(p) if p.dev() == meta.dev() && p.ino() != 0 => TaskFilter {
            parent_id: p.ino(),
            level: cgroup_level(dir).unwrap_or(0),
            _pad: 0,
        },
        _ => TaskFilter::OFF,
    }
}

/// The kernel's `cgroup.level` of a cgroup v2 directory: its depth below the top of its mount,
/// provided that top is the hierarchy's root cgroup (id 1). A mount of a cgroup namespace or of
/// a subtree starts lower; its levels are unknown (`None`), which only costs the filter its
/// cheapest test.
fn cgroup_level(dir: &Path) -> Option<u32> {
    let dev = std::fs::metadata(dir).ok()?.dev();
    let mut top = dir;
    let mut level = 0;
    while let Some(parent) = top.parent() {
        if std::fs::metadata(parent).ok()?.dev() != dev {
            break;
        }
        top = parent;
        level += 1;
    }
    (cgroup_id(top).ok()? == 1).then_some(level)
}

/// The cgroup id of a cgroup v2 directory: its inode number, which is what
/// `bpf_get_current_cgroup_id()` returns for tasks in it.
pub fn cgroup_id(unified_cgroup_dir: &Path) -> std::io::Result<u64> {
    Ok(std::fs::metadata(unified_cgroup_dir)?.ino())
}
