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

/// Bound of `RUNQ_START`: tasks of monitored cgroups that are waiting on a run queue at the same
/// moment. An LRU map, so a full map drops the oldest sample instead of failing.
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

/// When a task of a monitored cgroup became runnable, and which cgroup it belonged to then.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunqStart {
    pub ts_ns: u64,
    pub cgroup_id: u64,
}

/// Byte offsets of the kernel struct fields the programs read from tasks other than `current`.
///
/// Rust eBPF has no CO-RE relocations yet, so user space reads these from the running kernel's
/// BTF (`/sys/kernel/btf/vmlinux`) and writes them into the `OFFSETS` global before loading.
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
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all three are #[repr(C)], made of integers only, with no padding.
    unsafe impl aya::Pod for super::CgroupCounters {}
    unsafe impl aya::Pod for super::RunqStart {}
    unsafe impl aya::Pod for super::KernelOffsets {}
}

/// Histogram slot of a latency in nanoseconds: `floor(log2(ns))`, clamped to the last slot.
#[inline(always)]
pub fn runq_slot(ns: u64) -> usize {
    let log2 = if ns == 0 {
        0
    } else {
        63 - ns.leading_zeros() as usize
    };
    if log2 < RUNQ_SLOTS {
        log2
    } else {
        RUNQ_SLOTS - 1
    }
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
    }

    #[test]
    fn layouts_have_no_padding() {
        use core::mem::size_of;
        assert_eq!(size_of::<CgroupCounters>(), 8 * (11 + RUNQ_SLOTS));
        assert_eq!(size_of::<RunqStart>(), 16);
        assert_eq!(size_of::<KernelOffsets>(), 4 * 5);
    }
}
