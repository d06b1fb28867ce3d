//! Context switches (voluntary / involuntary) and run-queue latency.
use apptheus_common::{runq_slot, RunqStart, RUNQ_SLOTS};
use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};

use crate::{
    maps::{add, counters, is_monitored, RUNQ_START},
    task,
};

/// `sched_switch(bool preempt, task_struct *prev, task_struct *next, unsigned int prev_state)`.
/// It fires before the switch, so `current` is `prev`.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let prev: u64 = ctx.arg(1);
    let next: u64 = ctx.arg(2);
    let prev_state: u32 = ctx.arg(3);
    // The clock is read only where needed: most switches are of unwatched tasks.
    let mut now = 0;

    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if is_monitored(cgroup_id) {
        // As /proc/<pid>/status counts it: voluntary when the task blocked (not preempted and
        // not TASK_RUNNING); a preempted or yielding task stays runnable.
        let voluntary = preempt == 0 && prev_state != 0;
        if let Some(c) = counters(cgroup_id) {
            unsafe {
                if voluntary {
                    add(&raw mut (*c).voluntary_switches, 1);
                } else {
                    add(&raw mut (*c).involuntary_switches, 1);
                }
            }
        }
        if !voluntary {
            // Still runnable: its run-queue wait starts now.
            now = unsafe { bpf_ktime_get_ns() };
            let start = RunqStart {
                ts_ns: now,
                cgroup_id,
            };
            let _ = RUNQ_START.insert(prev, start, 0);
        }
    }

    // `next` leaves the run queue: close its wait, whichever cgroup it was counted for.
    if let Some(start) = RUNQ_START.get_ptr(next) {
        let start = unsafe { *start };
        let _ = RUNQ_START.remove(next);
        if let Some(c) = counters(start.cgroup_id) {
            if now == 0 {
                now = unsafe { bpf_ktime_get_ns() };
            }
            let waited = now.saturating_sub(start.ts_ns);
            let slot = runq_slot(waited) & (RUNQ_SLOTS - 1);
            unsafe {
                add(&raw mut (*c).runq_latency_log2_ns[slot], 1);
                add(&raw mut (*c).runq_latency_sum_ns, waited);
            }
        }
    }
    0
}

#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> i32 {
    runq_enter(ctx.arg(0));
    0
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: BtfTracePointContext) -> i32 {
    runq_enter(ctx.arg(0));
    0
}

/// A woken task (not `current`) enters a run queue.
#[inline(always)]
fn runq_enter(p: *const u8) {
    let Some(cgroup_id) = task::cgroup_id(p) else {
        return;
    };
    if is_monitored(cgroup_id) {
        let start = RunqStart {
            ts_ns: unsafe { bpf_ktime_get_ns() },
            cgroup_id,
        };
        let _ = RUNQ_START.insert(p as u64, start, 0);
    }
}
