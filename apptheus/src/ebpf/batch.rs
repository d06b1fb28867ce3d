//! Reading every entry of the per-CPU `COUNTERS` map with `bpf(BPF_MAP_LOOKUP_BATCH)`: a few
//! syscalls for all containers instead of one per container and sample. Written by hand
//! because aya 0.14 has no batch operations; it is the agent's only raw bpf syscall.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd as _, BorrowedFd};

use apptheus_common::CgroupCounters;

/// `enum bpf_cmd` value (uapi/linux/bpf.h), in the kernel since 5.6.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Entries asked for per call. A hash map answers ENOSPC when one bucket holds more entries
/// than this, which needs hundreds of colliding keys.
const CHUNK: usize = 256;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of the map: `index` maps each cgroup id to its position `i`, and its per-CPU
/// values are `values[i * cpus..(i + 1) * cpus]` (both cleared first). `cpus` is the number of
/// possible CPUs: the kernel writes one value per possible CPU. Fails (EINVAL) on kernels
/// without batch lookups; the caller then reads entry by entry.
pub fn read_all(
    map: BorrowedFd<'_>,
    cpus: usize,
    index: &mut HashMap<u64, usize>,
    values: &mut Vec<CgroupCounters>,
) -> io::Result<()> {
    index.clear();
    values.clear();
    let cpus = cpus.max(1);
    let mut keys = vec![0u64; CHUNK];
    // CgroupCounters is all u64: its size is already the 8-byte multiple the kernel uses.
    let mut chunk = vec![CgroupCounters::default(); CHUNK * cpus];
    // The hash map's position token is a u32 bucket index; a u64 leaves room.
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { &token_in as *const u64 as u64 },
            out_batch: &mut token_out as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: chunk.as_mut_ptr() as u64,
            count: CHUNK as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: attr points at buffers of `count` keys and `count * cpus` values, which the
        // kernel fills, and at the two tokens; all outlive the call.
        let ret = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &mut attr as *mut BatchAttr, std::mem::size_of::<BatchAttr>())
        };
        let err = (ret < 0).then(io::Error::last_os_error);
        // The kernel sets count to the entries copied, also on the last (ENOENT) call.
        let copied = (attr.count as usize).min(CHUNK);
        for (i, key) in keys.iter().take(copied).enumerate() {
            index.insert(*key, values.len() / cpus);
            values.extend_from_slice(&chunk[i * cpus..(i + 1) * cpus]);
        }
        match err {
            None => {
                token_in = token_out;
                first = false;
            }
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Some(e) => {
                index.clear();
                values.clear();
                return Err(e);
            }
        }
    }
}
