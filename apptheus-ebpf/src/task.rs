//! Reads from `task_struct`s other than `current`, with offsets from the kernel's BTF.
use aya_ebpf::helpers::bpf_probe_read_kernel;

use crate::maps::OFFSETS;

#[inline(always)]
unsafe fn read<T>(base: *const u8, offset: u32) -> Option<T> {
    unsafe { bpf_probe_read_kernel(base.add(offset as usize).cast::<T>()) }.ok()
}

/// `task->cgroups->dfl_cgrp->kn->id`: the task's cgroup v2 id, as `bpf_get_current_cgroup_id()`
/// would return it if the task were `current`.
#[inline(always)]
pub fn cgroup_id(task: *const u8) -> Option<u64> {
    let off = OFFSETS.load();
    unsafe {
        let cset: *const u8 = read(task, off.task_cgroups)?;
        let cgrp: *const u8 = read(cset, off.css_set_dfl_cgrp)?;
        let kn: *const u8 = read(cgrp, off.cgroup_kn)?;
        read(kn, off.kernfs_node_id)
    }
}

/// `task->tgid`.
#[inline(always)]
pub fn tgid(task: *const u8) -> Option<u32> {
    unsafe { read(task, OFFSETS.load().task_tgid) }
}
