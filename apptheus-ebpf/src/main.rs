//! eBPF programs of the apptheus agent: per-container scheduler, process-lifecycle, OOM and
//! network counters. Built by `cargo xtask build-ebpf` for `bpfel-unknown-none`; the object is
//! shipped in `apptheus/src/ebpf/prebuilt/` and embedded in the agent.
//!
//! Only cgroups with an entry in `COUNTERS` (filled by the agent) are counted. A cgroup id is the inode
//! of the container's cgroup v2 directory, i.e. what `bpf_get_current_cgroup_id()` returns.
#![no_std]
#![no_main]
// Only for `core::intrinsics::atomic_xadd` (see maps::add); the build uses a pinned nightly.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod maps;
mod net;
mod oom;
mod process;
mod sched;
mod task;

// GPL-compatible, as the kernel demands of programs using its GPL-only tracing helpers.
#[unsafe(no_mangle)]
#[unsafe(link_section = "license")]
pub static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never reached at run time.
    loop {}
}
