//! Context switches (voluntary / involuntary) and run-queue latency.
//!
//! Run-queue waits come from the kernel's own stamp where the offsets are known
//! (`OFFSETS.runq_from_sched_info`): `sched_switch` alone measures them, for the task it
//! switches in. Elsewhere `sched_wakeup` / `sched_wakeup_new` (loaded only then) and preemption
//! in `sched_switch` stamp a wait's start in `RUNQ_START`, and `sched_switch` closes it.
//!
//! Every task is first checked against the task filter ([`watched`]), so tasks outside the
//! watched cgroups' level cost three loads and no map lookup: sched_switch runs for every task
//! on the machine.
use apptheus_common::{runq_slot, CgroupCounters, RunqStart, TaskFilter, RUNQ_SLOTS};
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::{
    maps::{add_in_switch, counters, fast_counters, hashed_counters, offset, task_filter, RUNQ_START},
    task,
};

/// `sched_switch(bool preempt, task_struct *prev, task_struct *next, unsigned int prev_state)`.
/// It fires before the switch, so `current` is `prev`.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    let prev_state: u32 = ctx.arg(3);
    let from_sched_info = offset!(runq_from_sched_info) != 0;
    let filter = task_filter();
    // The clock is read only where needed: most switches are of unwatched tasks.
    let mut now = 0;

    // prev's counters, kept for `next`: a switch between two tasks of one container (threads
    // or ranks of one job sharing a CPU) then costs one lookup, not two. A plain pointer with
    // null for "none", not an Option: LLVM may copy or compare an Option's unset
    // payload, an uninitialised register that older verifiers (6.1) reject.
    let mut prev_counters: *mut CgroupCounters = core::ptr::null_mut();
    let prev_set = task::css_set(prev);
    if let Some((cgroup_id, c)) = watched(prev_set, &filter) {
        prev_counters = c;
        // As /proc/<pid>/status counts it: voluntary when the task blocked (not preempted
        // and not TASK_RUNNING); a preempted or yielding task stays runnable.
        let voluntary = preempt == 0 && prev_state != 0;
        unsafe {
            if voluntary {
                add_in_switch(&raw mut (*c).voluntary_switches, 1);
            } else {
                add_in_switch(&raw mut (*c).involuntary_switches, 1);
            }
        }
        if !voluntary && !from_sched_info {
            // Still runnable: its run-queue wait starts now.
            now = unsafe { bpf_ktime_get_ns() };
            let start = RunqStart {
                ts_ns: now,
                cgroup_id,
            };
            let _ = RUNQ_START.insert(prev as u64, start, 0);
        }
    }

    // `next` leaves the run queue. Only tasks of watched cgroups can have been stamped in
    // RUNQ_START (a task moved to an unwatched cgroup meanwhile loses that one sample; its
    // entry goes at exit or by LRU).
    let next_set = task::css_set(next);
    let same_set = !next_set.is_null() && next_set == prev_set;
    let c = if same_set {
        // The same cgroups as prev (its css_set is pinned while it runs, so the pointer cannot
        // have been reused): prev's verdict, without the filter's loads.
        if prev_counters.is_null() {
            return 0;
        }
        prev_counters
    } else {
        let Some((_, c)) = watched(next_set, &filter) else {
            return 0;
        };
        c
    };
    if from_sched_info {
        if let Some(waited) = task::runq_wait(next) {
            record_wait(c, waited);
        }
    } else if let Some(start) = RUNQ_START.get_ptr(next as u64) {
        // Closed whichever cgroup the wait was counted for.
        let start = unsafe { *start };
        let _ = RUNQ_START.remove(next as u64);
        if let Some(c) = counters(start.cgroup_id) {
            if now == 0 {
                now = unsafe { bpf_ktime_get_ns() };
            }
            record_wait(c, now.saturating_sub(start.ts_ns));
        }
    }
    0
}

/// The watched cgroup of the tasks whose css_set is `cset`, with this CPU's counters of it
/// (`None` for any other cgroup, and for a null `cset`). A fast slot's owner is watched by
/// definition, so the filter's parent test (five dependent loads) is asked only before the hash
/// lookup, and a host task at the watched level pays the fast slots' probes (inlined loads).
#[inline(always)]
fn watched(cset: *const u8, filter: &TaskFilter) -> Option<(u64, *mut CgroupCounters)> {
    let cgrp = task::cgroup_at_watched_level(cset, filter)?;
    let cgroup_id = task::id_of(cgrp)?;
    if let Some(c) = fast_counters(cgroup_id) {
        return Some((cgroup_id, c));
    }
    if !task::under_watched_parent(cgrp, filter) {
        return None;
    }
    Some((cgroup_id, hashed_counters(cgroup_id)?))
}

#[inline(always)]
fn record_wait(c: *mut CgroupCounters, waited: u64) {
    let slot = runq_slot(waited) & (RUNQ_SLOTS - 1);
    unsafe {
        add_in_switch(&raw mut (*c).runq_latency_log2_ns[slot], 1);
        add_in_switch(&raw mut (*c).runq_latency_sum_ns, waited);
    }
}

/// Loaded only where `OFFSETS.runq_from_sched_info` is 0.
#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> i32 {
    runq_enter(ctx.arg(0));
    0
}

/// Loaded only where `OFFSETS.runq_from_sched_info` is 0.
#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: BtfTracePointContext) -> i32 {
    runq_enter(ctx.arg(0));
    0
}

/// A woken task (not `current`) enters a run queue.
#[inline(always)]
fn runq_enter(p: *const u8) {
    if let Some((cgroup_id, _)) = watched(task::css_set(p), &task_filter()) {
        let start = RunqStart {
            ts_ns: unsafe { bpf_ktime_get_ns() },
            cgroup_id,
        };
        let _ = RUNQ_START.insert(p as u64, start, 0);
    }
}
