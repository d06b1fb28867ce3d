//! Context switches (voluntary / involuntary) and run-queue latency.
//!
//! Run-queue waits come from the kernel's own stamp where the offsets are known
//! (`OFFSETS.runq_from_sched_info`): `sched_switch` alone measures them, for the task it
//! switches in. Elsewhere `sched_wakeup` / `sched_wakeup_new` (loaded only then) and preemption
//! in `sched_switch` stamp a wait's start in `RUNQ_START`, and `sched_switch` closes it.
//!
//! Every task is first checked against the task filter (`task::watchable_cgroup_id`), so tasks
//! outside the watched cgroups' parent cost a few loads and no map lookup: sched_switch runs for
//! every task on the machine.
use apptheus_common::{runq_slot, CgroupCounters, RunqStart, RUNQ_SLOTS};
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::{
    maps::{add, counters, offset, task_filter, RUNQ_START},
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

    // prev's cgroup and counters, kept for `next`: a switch between two tasks of one container
    // (threads or ranks of one job sharing a CPU) then costs one map lookup, not two. Plain
    // values with 0 / null for "none", not Options: LLVM may copy or compare an Option's unset
    // payload, an uninitialised register that older verifiers (6.1) reject.
    let mut prev_cgroup_id: u64 = 0;
    let mut prev_counters: *mut CgroupCounters = core::ptr::null_mut();
    let prev_set = task::css_set(prev);
    if let Some(cgroup_id) = task::watchable_cgroup_id_of_set(prev_set, &filter) {
        if let Some(c) = counters(cgroup_id) {
            prev_cgroup_id = cgroup_id;
            prev_counters = c;
            // As /proc/<pid>/status counts it: voluntary when the task blocked (not preempted
            // and not TASK_RUNNING); a preempted or yielding task stays runnable.
            let voluntary = preempt == 0 && prev_state != 0;
            unsafe {
                if voluntary {
                    add(&raw mut (*c).voluntary_switches, 1);
                } else {
                    add(&raw mut (*c).involuntary_switches, 1);
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
    }

    // `next` leaves the run queue. Only tasks that pass the filter can have been stamped in
    // RUNQ_START (a task moved out of the watched tree meanwhile loses that one sample; its
    // entry goes at exit or by LRU).
    let next_set = task::css_set(next);
    let same_set = !next_set.is_null() && next_set == prev_set;
    let cgroup_id = if same_set {
        // The same cgroups as prev (its css_set is pinned while it runs, so the pointer cannot
        // have been reused): prev's verdict, without the filter's loads.
        if prev_counters.is_null() {
            return 0;
        }
        prev_cgroup_id
    } else {
        let Some(cgroup_id) = task::watchable_cgroup_id_of_set(next_set, &filter) else {
            return 0;
        };
        cgroup_id
    };
    if from_sched_info {
        let c = if cgroup_id == prev_cgroup_id && !prev_counters.is_null() {
            Some(prev_counters)
        } else {
            counters(cgroup_id)
        };
        if let (Some(c), Some(waited)) = (c, task::runq_wait(next)) {
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

#[inline(always)]
fn record_wait(c: *mut CgroupCounters, waited: u64) {
    let slot = runq_slot(waited) & (RUNQ_SLOTS - 1);
    unsafe {
        add(&raw mut (*c).runq_latency_log2_ns[slot], 1);
        add(&raw mut (*c).runq_latency_sum_ns, waited);
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
    let Some(cgroup_id) = task::watchable_cgroup_id(p, &task_filter()) else {
        return;
    };
    if counters(cgroup_id).is_some() {
        let start = RunqStart {
            ts_ns: unsafe { bpf_ktime_get_ns() },
            cgroup_id,
        };
        let _ = RUNQ_START.insert(p as u64, start, 0);
    }
}
