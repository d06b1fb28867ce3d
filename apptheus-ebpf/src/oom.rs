//! OOM kills, counted for the victim's cgroup.
//!
//! Hook: the `oom:mark_victim(task_struct *task, uid_t uid)` tracepoint. The OOM killer calls it
//! once per victim it selects (a thread flag guards repeats), for memcg and global OOM alike,
//! and it fires in the context of the task that hit the limit, which may be another process:
//! so the victim's cgroup is read from the `task` argument, not from `current`.
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use aya_log_ebpf::debug;

use crate::{
    maps::{add, counters},
    task,
};

#[btf_tracepoint(function = "mark_victim")]
pub fn oom_mark_victim(ctx: BtfTracePointContext) -> i32 {
    let victim: *const u8 = ctx.arg(0);
    let Some(cgroup_id) = task::cgroup_id(victim) else {
        return 0;
    };
    if let Some(c) = counters(cgroup_id) {
        add(unsafe { &raw mut (*c).oom_kills }, 1);
        let tgid = task::tgid(victim).unwrap_or(0);
        debug!(
            &ctx,
            "oom kill: victim tgid {} in cgroup {}", tgid, cgroup_id
        );
    }
    0
}
