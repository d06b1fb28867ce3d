//! Reads from `task_struct`s and cgroups, with offsets from the kernel's BTF.
//!
//! The pointers are tp_btf arguments (BTF-typed), so plain loads work: the verifier knows the
//! offsets as constants (`OFFSETS` lives in the frozen, read-only `.rodata` map), checks each
//! load against the kernel's BTF and turns it into a fault-safe load. That is ~4x cheaper than
//! `bpf_probe_read_kernel` per field (sched_wakeup: ~80 ns instead of ~200 ns per event here).
use apptheus_common::TaskFilter;

use crate::maps::offset;

/// Reads a `T` at `offset` bytes into the kernel object at `base` (`None` for a null `base`).
#[inline(always)]
unsafe fn read<T: Copy>(base: *const u8, offset: u32) -> Option<T> {
    if base.is_null() {
        return None;
    }
    // Volatile keeps each load a single, separately verified instruction.
    Some(unsafe { core::ptr::read_volatile(base.add(offset as usize).cast::<T>()) })
}

/// `task->cgroups`: the task's css_set, shared by every task with the same cgroups. Null when
/// it cannot be read.
#[inline(always)]
pub fn css_set(task: *const u8) -> *const u8 {
    unsafe { read(task, offset!(task_cgroups)) }.unwrap_or(core::ptr::null())
}

/// `cgrp->kn->id`: the cgroup's id, the inode of its directory.
#[inline(always)]
fn id_of(cgrp: *const u8) -> Option<u64> {
    unsafe {
        let kn: *const u8 = read(cgrp, offset!(cgroup_kn))?;
        read(kn, offset!(kernfs_node_id))
    }
}

/// `task->cgroups->dfl_cgrp->kn->id`: the task's cgroup v2 id, as `bpf_get_current_cgroup_id()`
/// would return it if the task were `current`.
#[inline(always)]
pub fn cgroup_id(task: *const u8) -> Option<u64> {
    id_of(unsafe { read(css_set(task), offset!(css_set_dfl_cgrp))? })
}

/// The task's cgroup v2 id if that cgroup can be a watched one: at the filter's level, with the
/// filter's parent. Tasks elsewhere (most of them: perf bench's, the system's) are dismissed
/// after three loads, or six when their cgroup is at the watched level, instead of a hash
/// lookup. Without a filter (or without the offsets) this is [`cgroup_id`].
#[inline(always)]
pub fn watchable_cgroup_id(task: *const u8, filter: &TaskFilter) -> Option<u64> {
    watchable_cgroup_id_of_set(css_set(task), filter)
}

/// [`watchable_cgroup_id`] of the tasks whose css_set is `cset` (null: `None`).
#[inline(always)]
pub fn watchable_cgroup_id_of_set(cset: *const u8, filter: &TaskFilter) -> Option<u64> {
    let cgrp: *const u8 = unsafe { read(cset, offset!(css_set_dfl_cgrp))? };
    if offset!(has_task_filter) != 0 && filter.parent_id != 0 {
        unsafe {
            if filter.level != 0 && read::<u32>(cgrp, offset!(cgroup_level))? != filter.level {
                return None;
            }
            let parent_css: *const u8 = read(cgrp, offset!(cgroup_parent_css))?;
            let parent: *const u8 = read(parent_css, offset!(css_cgroup))?;
            if id_of(parent)? != filter.parent_id {
                return None;
            }
        }
    }
    id_of(cgrp)
}

/// How long `task`, about to run, waited on this CPU's run queue: `rq->clock` (which
/// `__schedule` updated before picking it) minus `task->sched_info.last_queued` (stamped by the
/// kernel at enqueue from the same clock), the delta the kernel adds to the task's run_delay
/// right after the switch. `None` when the task was not queued (`last_queued` 0).
/// Only with `OFFSETS.runq_from_sched_info`.
#[inline(always)]
pub fn runq_wait(task: *const u8) -> Option<u64> {
    unsafe {
        let queued: u64 = read(task, offset!(task_last_queued))?;
        if queued == 0 {
            return None;
        }
        let cfs_rq: *const u8 = read(task, offset!(task_cfs_rq))?;
        let rq: *const u8 = read(cfs_rq, offset!(cfs_rq_rq))?;
        let now: u64 = read(rq, offset!(rq_clock))?;
        Some(now.saturating_sub(queued))
    }
}

/// `task->tgid`.
#[inline(always)]
pub fn tgid(task: *const u8) -> Option<u32> {
    unsafe { read(task, offset!(task_tgid)) }
}
