//! Maps shared by all programs, and the counter helpers.
use core::intrinsics::{atomic_xadd, AtomicOrdering};

use apptheus_common::{
    fast_slot_home, CgroupCounters, KernelOffsets, RunqStart, SlotCounters, TaskFilter,
    FAST_SLOT_PROBES, MAX_CGROUPS, MAX_FAST_SLOTS, MAX_QUEUED_TASKS,
};
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, PerCpuHashMap},
};

/// The first watched cgroups' counters, one copy per CPU, at an index user space chooses near
/// the cgroup's [`fast_slot_home`]. An array lookup is inlined by the verifier; a hash lookup is
/// a helper call, which costs most of a monitored `sched_switch` (issue 20). Preallocated:
/// entries x CPUs x 352 bytes, so user space sizes it (at most MAX_FAST_SLOTS) and tells the
/// programs with `FAST_SLOT_MASK`.
#[map]
pub static FAST_COUNTERS: PerCpuArray<SlotCounters> = PerCpuArray::with_max_entries(MAX_FAST_SLOTS, 0);

/// `FAST_COUNTERS` entries minus one (a power of two minus one), set by user space before load.
#[unsafe(no_mangle)]
pub static FAST_SLOT_MASK: u32 = 0;

/// cgroup id -> counters, one copy per CPU so hot paths never share a cache line across CPUs,
/// for watched cgroups that got no fast slot (`FAST_COUNTERS`). A cgroup is watched exactly
/// while it owns a fast slot or has an entry here: user space inserts the zeroed entry
/// when it watches a cgroup and deletes it at unwatch; the programs only look up, never insert.
/// (A separate "monitored" set would cost a second hash lookup per task and event.) Not preallocated (BPF_F_NO_PREALLOC), so the memory is
/// watched cgroups x CPUs x 344 bytes, at most MAX_CGROUPS (4096) entries.
#[map]
pub static COUNTERS: PerCpuHashMap<u64, CgroupCounters> =
    PerCpuHashMap::with_max_entries(MAX_CGROUPS, BPF_F_NO_PREALLOC);

/// task_struct address -> when it went onto a run queue (woken, or preempted while runnable).
/// Used only where `OFFSETS.runq_from_sched_info` is 0 (the agent creates it with one entry
/// elsewhere). Only tasks of monitored cgroups get entries; switch-in and exit delete them. LRU
/// with MAX_QUEUED_TASKS (16384) entries, ~1.5 MiB: a full map evicts the oldest sample.
#[map]
pub static RUNQ_START: LruHashMap<u64, RunqStart> =
    LruHashMap::with_max_entries(MAX_QUEUED_TASKS, 0);

/// One `TaskFilter`, written by user space: the parent and level of the watched cgroups. Zero
/// (the map's initial value) is no filter.
#[map]
pub static TASK_FILTER: Array<TaskFilter> = Array::with_max_entries(1, 0);

/// Kernel struct field offsets, written by user space from the kernel's BTF before load. Read
/// one field at a time with [`offset!`]: loading the whole struct would be one load per field.
#[unsafe(no_mangle)]
pub static OFFSETS: KernelOffsets = KernelOffsets {
    task_tgid: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    cgroup_level: 0,
    cgroup_parent_css: 0,
    css_cgroup: 0,
    task_last_queued: 0,
    task_cfs_rq: 0,
    cfs_rq_rq: 0,
    rq_clock: 0,
    has_task_filter: 0,
    runq_from_sched_info: 0,
};

/// One field of `OFFSETS`. Volatile, or the compiler would fold in the zeros above; the
/// verifier knows the value (frozen `.rodata`) and prunes what a zero flag disables.
macro_rules! offset {
    ($field:ident) => {{
        // SAFETY: a plain read of a static (the macro may expand inside another unsafe block).
        #[allow(unused_unsafe)]
        let value = unsafe { core::ptr::read_volatile(&raw const $crate::maps::OFFSETS.$field) };
        value
    }};
}
pub(crate) use offset;

/// The current task filter (no filter if the map cannot be read).
#[inline(always)]
pub fn task_filter() -> TaskFilter {
    match TASK_FILTER.get(0) {
        // SAFETY: a map value, read once; user space may rewrite it meanwhile, which only
        // changes which filter this run applies.
        Some(f) => unsafe { core::ptr::read_volatile(f) },
        None => TaskFilter::OFF,
    }
}

/// This CPU's counters of a watched cgroup (`None` for any other cgroup): its fast slot, found
/// within FAST_SLOT_PROBES entries of its home, or else its `COUNTERS` entry.
#[inline(always)]
pub fn counters(cgroup_id: u64) -> Option<*mut CgroupCounters> {
    fast_counters(cgroup_id).or_else(|| hashed_counters(cgroup_id))
}

/// This CPU's counters of `cgroup_id` if it owns a fast slot: a few inlined array loads, no call.
#[inline(always)]
pub fn fast_counters(cgroup_id: u64) -> Option<*mut CgroupCounters> {
    // SAFETY: a plain read of a frozen global.
    let mask = unsafe { core::ptr::read_volatile(&raw const FAST_SLOT_MASK) };
    let home = fast_slot_home(cgroup_id, mask);
    for probe in 0..FAST_SLOT_PROBES {
        if let Some(slot) = FAST_COUNTERS.get_ptr_mut(home.wrapping_add(probe) & mask) {
            // SAFETY: a map value of this CPU, live while the program runs.
            if unsafe { (*slot).owner } == cgroup_id {
                return Some(unsafe { &raw mut (*slot).counters });
            }
        }
    }
    None
}

/// This CPU's counters of `cgroup_id` in the `COUNTERS` hash (a helper call).
#[inline(always)]
pub fn hashed_counters(cgroup_id: u64) -> Option<*mut CgroupCounters> {
    COUNTERS.get_ptr_mut(cgroup_id)
}

/// Adds to a counter field that only `sched_switch` writes: a plain load, add and store. It runs
/// inside `__schedule` with interrupts off, so no other run of it can interleave on this CPU,
/// and no other program writes these fields; a locked add would also drain the store buffer
/// the scheduler has just filled.
#[inline(always)]
pub fn add_in_switch(field: *mut u64, value: u64) {
    // SAFETY: as for `add`; the only writer of this CPU's copy is this CPU's sched_switch.
    unsafe { core::ptr::write_volatile(field, core::ptr::read_volatile(field).wrapping_add(value)) };
}

/// Adds to one counter field. Atomic although per-CPU: programs in process context can be
/// preempted by another run of the same program on this CPU, and cgroup_skb runs in softirq.
/// The BPF target has no `AtomicU64::fetch_add` (no CAS), but the intrinsic with an unused
/// result is the plain BPF atomic add that every BPF CPU version has. (A plain load-add-store
/// where only one program writes a field measured no faster: issue 20.)
#[inline(always)]
pub fn add(field: *mut u64, value: u64) {
    // SAFETY: `field` points into a map value, which is 8-byte aligned and lives as long as the
    // program runs.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(field, value) };
}
