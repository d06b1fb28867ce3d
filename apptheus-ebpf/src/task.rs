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
pub fn id_of(cgrp: *const u8) -> Option<u64> {
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

/// Whether the filter applies (offsets known and a parent set).
#[inline(always)]
fn filtering(filter: &TaskFilter) -> bool {
    offset!(has_task_filter) != 0 && filter.parent_id != 0
}

/// `cset->dfl_cgrp` if that cgroup is at the watched cgroups' level (any without a filter):
/// the first test of the task filter, three loads that dismiss most tasks (perf bench's, the
/// system's) before any map is looked at. `None` for a null `cset`.
#[inline(always)]
pub fn cgroup_at_watched_level(cset: *const u8, filter: &TaskFilter) -> Option<*const u8> {
    let cgrp: *const u8 = unsafe { read(cset, offset!(css_set_dfl_cgrp))? };
    if filtering(filter) && filter.level != 0 && unsafe { read::<u32>(cgrp, offset!(cgroup_level))? } != filter.level {
        return None;
    }
    Some(cgrp)
}

/// Whether `cgrp`'s parent is the watched cgroups' parent (true without a filter): the second
/// test of the task filter, five dependent loads, asked only before a hash lookup.
#[inline(always)]
pub fn under_watched_parent(cgrp: *const u8, filter: &TaskFilter) -> bool {
    if !filtering(filter) {
        return true;
    }
    let parent_id = unsafe {
        read::<*const u8>(cgrp, offset!(cgroup_parent_css))
            .and_then(|css| read::<*const u8>(css, offset!(css_cgroup)))
            .and_then(id_of)
    };
    parent_id == Some(filter.parent_id)
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
