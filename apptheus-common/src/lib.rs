//! Types shared by the apptheus agent and its eBPF programs (`apptheus-ebpf`).
//!
//! Everything here is `#[repr(C)]`, padding-free plain data: the eBPF object and the agent must
//! agree on the layout byte for byte. The `user` feature adds the `aya::Pod` impls the agent needs
//! to read and write these types through maps and globals.
#![no_std]

/// Number of run-queue latency histogram slots. Slot `i` counts latencies in `[2^i, 2^(i+1))`
/// nanoseconds (slot 0 also takes 0 ns); the last slot also takes everything above, so 32 slots
/// resolve up to ~2.1 s and clamp the rest.
pub const RUNQ_SLOTS: usize = 32;

/// Bound of `MONITORED` and `COUNTERS`: how many containers can be watched at once.
pub const MAX_CGROUPS: u32 = 4096;

/// Bound of `RUNQ_START`, used only on kernels where the programs cannot read run-queue waits
/// from `task_struct.sched_info` (see [`KernelOffsets::runq_from_sched_info`]): tasks of monitored
/// cgroups that are waiting on a run queue at the same moment. An LRU map, so a full map drops the
/// oldest sample instead of failing. Elsewhere the agent creates the map with one entry.
pub const MAX_QUEUED_TASKS: u32 = 16384;

/// Per-container counters, one copy per CPU (`PERCPU_HASH`), summed in user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupCounters {
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    pub forks: u64,
    pub execs: u64,
    pub exits: u64,
    pub oom_kills: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Sum of all run-queue waits in ns (the histogram's `_sum`).
    pub runq_latency_sum_ns: u64,
    pub runq_latency_log2_ns: [u64; RUNQ_SLOTS],
}

/// Most fast slots (`FAST_COUNTERS` entries): the first containers watched get one, the rest
/// stay in the `COUNTERS` hash. A power of two; user space may give the map fewer (see
/// [`fast_slot_home`]).
pub const MAX_FAST_SLOTS: u32 = 256;

/// Entries the programs probe, from a cgroup's home slot on, before they look in `COUNTERS`.
pub const FAST_SLOT_PROBES: u32 = 4;

/// A container's counters in a fast slot: `FAST_COUNTERS` is a per-CPU array, which the
/// verifier turns into a few inlined instructions where a hash lookup is a helper call (about
/// 45 ns per lookup on the bench machine, most of a monitored `sched_switch`). `owner` is the
/// cgroup id the slot counts for (0: free); user space writes it on every CPU when it gives the
/// slot out or takes it back, and the programs count only when it matches.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotCounters {
    pub owner: u64,
    pub counters: CgroupCounters,
}

/// The first `FAST_COUNTERS` index probed for a cgroup (the next ones follow it, wrapping
/// through `mask`): Fibonacci hashing, since cgroup ids (inode numbers) come in runs. `mask` is
/// the map's entries minus one, a power of two minus one.
#[inline(always)]
pub fn fast_slot_home(cgroup_id: u64, mask: u32) -> u32 {
    ((cgroup_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32) & mask
}

/// When a task of a monitored cgroup became runnable, and which cgroup it belonged to then.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunqStart {
    pub ts_ns: u64,
    pub cgroup_id: u64,
}

/// Byte offsets of the kernel struct fields the programs read from `task_struct`s and cgroups, and
/// which optional ways of reading them this kernel allows.
///
/// Rust eBPF has no CO-RE relocations yet, so user space reads these from the running kernel's
/// BTF (`/sys/kernel/btf/vmlinux`) and writes them into the `OFFSETS` global before loading.
/// `OFFSETS` is frozen, read-only data: the verifier sees every field as a constant, checks each
/// load against the kernel's BTF and drops the branches that a zero flag disables.
///
/// The cgroup id of a task is `task->cgroups->dfl_cgrp->kn->id`, the same value
/// `bpf_get_current_cgroup_id()` returns for `current` and the inode of its cgroup v2 directory.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `task_struct.tgid` (`pid_t`)
    pub task_tgid: u32,
    /// `task_struct.cgroups` (`struct css_set *`)
    pub task_cgroups: u32,
    /// `css_set.dfl_cgrp` (`struct cgroup *`)
    pub css_set_dfl_cgrp: u32,
    /// `cgroup.kn` (`struct kernfs_node *`)
    pub cgroup_kn: u32,
    /// `kernfs_node.id` (`u64`)
    pub kernfs_node_id: u32,
    /// `cgroup.level` (`int`: 0 for the root cgroup)
    pub cgroup_level: u32,
    /// `cgroup.self.parent` (`struct cgroup_subsys_state *`, null for the root cgroup)
    pub cgroup_parent_css: u32,
    /// `cgroup_subsys_state.cgroup` (`struct cgroup *`)
    pub css_cgroup: u32,
    /// `task_struct.sched_info.last_queued` (`unsigned long long`): when the task was put on a
    /// run queue (woken, or preempted while runnable) in `rq_clock` time; 0 while not queued.
    pub task_last_queued: u32,
    /// `task_struct.se.cfs_rq` (`struct cfs_rq *`: set for every task, whatever its class)
    pub task_cfs_rq: u32,
    /// `cfs_rq.rq` (`struct rq *`)
    pub cfs_rq_rq: u32,
    /// `rq.clock` (`u64`): the run queue's `rq_clock`, updated by `__schedule` before the switch.
    pub rq_clock: u32,
    /// Non-zero when `cgroup_level`, `cgroup_parent_css` and `css_cgroup` are known: the
    /// programs then apply [`TaskFilter`] before any map lookup.
    pub has_task_filter: u32,
    /// Non-zero when `task_last_queued` .. `rq_clock` are known: `sched_switch` takes a task's
    /// run-queue wait from the kernel's own `sched_info` (what `/proc/<pid>/schedstat` sums as
    /// run_delay) and the sched_wakeup programs and `RUNQ_START` are not used. Zero: the
    /// sched_wakeup programs stamp each wait's start in `RUNQ_START`.
    pub runq_from_sched_info: u32,
}

/// Where the cgroups that can be watched are, so that the programs dismiss the tasks of every
/// other cgroup with a few loads instead of a hash lookup. The one value of the `TASK_FILTER`
/// array, written by user space. The `MONITORED` map still decides; this only narrows.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// Cgroup id of the parent of every watched cgroup (0: no filter, every task is looked up).
    pub parent_id: u64,
    /// Level of every watched cgroup (`cgroup.level`, the root's children are 1); 0: any level.
    pub level: u32,
    pub _pad: u32,
}

impl TaskFilter {
    /// No filter: every task's cgroup is looked up in `MONITORED`.
    pub const OFF: TaskFilter = TaskFilter {
        parent_id: 0,
        level: 0,
        _pad: 0,
    };
    /// Nothing watched yet: no cgroup has this level.
    pub const NOTHING: TaskFilter = TaskFilter {
        parent_id: u64::MAX,
        level: u32::MAX,
        _pad: 0,
    };
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all five are #[repr(C)], made of integers only, with no padding.
    unsafe impl aya::Pod for super::CgroupCounters {}
    unsafe impl aya::Pod for super::SlotCounters {}
    unsafe impl aya::Pod for super::RunqStart {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::TaskFilter {}
}

/// Histogram slot of a latency in nanoseconds: `floor(log2(ns))`, clamped to the last slot.
#[inline(always)]
pub fn runq_slot(ns: u64) -> usize {
    // Clamped first: the rest then works on 32 bits. Branch-free steps of a binary search,
    // `(limit - x) >> 63` being 1 exactly when x > limit: BPF has no count-leading-zeros, and
    // LLVM's expansion of `leading_zeros` is ~45 instructions on the monitored sched_switch.
    if ns >> (RUNQ_SLOTS - 1) != 0 {
        return RUNQ_SLOTS - 1;
    }
    let mut x = ns;
    let mut log2 = 0;
    for (limit, bits) in [(0xFFFF_u64, 16), (0xFF, 8), (0xF, 4), (0x3, 2)] {
        let step = (limit.wrapping_sub(x) >> 63) * bits;
        x >>= step;
        log2 += step;
    }
    (log2 + (x >> 1)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_floor_log2_clamped() {
        assert_eq!(runq_slot(0), 0);
        assert_eq!(runq_slot(1), 0);
        assert_eq!(runq_slot(2), 1);
        assert_eq!(runq_slot(3), 1);
        assert_eq!(runq_slot(1023), 9);
        assert_eq!(runq_slot(1024), 10);
        assert_eq!(runq_slot(u64::MAX), RUNQ_SLOTS - 1);
        // Against the definition, around every power of two.
        for bit in 0..64 {
            for ns in [(1u64 << bit) - 1, 1u64 << bit, (1u64 << bit) + 1, (1u64 << bit) | ((1u64 << bit) - 1)] {
                let expected = if ns == 0 { 0 } else { (63 - ns.leading_zeros() as usize).min(RUNQ_SLOTS - 1) };
                assert_eq!(runq_slot(ns), expected, "{ns}");
            }
        }
    }

    #[test]
    fn fast_slot_homes_spread_runs_of_ids() {
        // Inode numbers of consecutive cgroups differ by small steps: their homes must not
        // pile up (at most 3 of 64 consecutive ids share a home among 256 slots here).
        for step in [1u64, 2, 8, 37, 64] {
            let mut per_home = [0u32; 256];
            for i in 0..64 {
                per_home[fast_slot_home(4_000 + i * step, 255) as usize] += 1;
            }
            assert!(per_home.iter().all(|&n| n <= 3), "step {step}: {:?}", per_home.iter().max());
        }
        assert_eq!(fast_slot_home(12_345, 0), 0);
    }

    #[test]
    fn layouts_have_no_padding() {
        use core::mem::size_of;
        assert_eq!(size_of::<CgroupCounters>(), 8 * (11 + RUNQ_SLOTS));
        assert_eq!(size_of::<SlotCounters>(), 8 + size_of::<CgroupCounters>());
        assert_eq!(size_of::<RunqStart>(), 16);
        assert_eq!(size_of::<KernelOffsets>(), 4 * 14);
        assert_eq!(size_of::<TaskFilter>(), 16);
    }
}
