//! Process forks, execs and exits. All three fire in the context of the task concerned (the
//! parent for fork), so `current`'s cgroup is the one to count.
use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};

use crate::{
    maps::{add, counters, offset, RUNQ_START},
    task,
};

/// Drops any run-queue stamp of the exiting thread (kept only where the sched_wakeup programs
/// stamp waits).
#[inline(always)]
fn forget_runq_start(p: u64) {
    if offset!(runq_from_sched_info) == 0 {
        let _ = RUNQ_START.remove(p);
    }
}

#[inline(always)]
fn count(field: impl FnOnce(*mut apptheus_common::CgroupCounters) -> *mut u64) {
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if let Some(c) = counters(cgroup_id) {
        add(field(c), 1);
    }
}

/// `sched_process_fork(task_struct *parent, task_struct *child)`: counts new processes only;
/// a new thread shares the parent's tgid.
#[btf_tracepoint(function = "sched_process_fork")]
pub fn sched_process_fork(ctx: BtfTracePointContext) -> i32 {
    let child: *const u8 = ctx.arg(1);
    let parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if task::tgid(child).is_some_and(|tgid| tgid != parent_tgid) {
        count(|c| unsafe { &raw mut (*c).forks });
    }
    0
}

/// `sched_process_exec(task_struct *p, pid_t old_pid, linux_binprm *bprm)`, `p` is `current`.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(_ctx: BtfTracePointContext) -> i32 {
    count(|c| unsafe { &raw mut (*c).execs });
    0
}

/// `sched_process_exit(task_struct *p, bool group_dead)`, `p` is `current`: counts a process
/// when its last thread exits, and drops any run-queue sample of the exiting thread.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    let p: u64 = ctx.arg(0);
    let group_dead: u64 = ctx.arg(1);
    forget_runq_start(p);
    if group_dead & 1 != 0 {
        count(|c| unsafe { &raw mut (*c).exits });
    }
    0
}

/// The same hook on kernels whose `sched_process_exit(task_struct *p)` has no `group_dead`
/// (before 6.10): the thread-group leader's exit is counted instead. Every process has exactly
/// one leader, so each process is still counted once; only a leader that exits before its other
/// threads is counted early. The agent loads this one when the kernel rejects the other.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit_leader(ctx: BtfTracePointContext) -> i32 {
    let p: u64 = ctx.arg(0);
    forget_runq_start(p);
    let pid_tgid = bpf_get_current_pid_tgid();
    if (pid_tgid >> 32) as u32 == pid_tgid as u32 {
        count(|c| unsafe { &raw mut (*c).exits });
    }
    0
}
