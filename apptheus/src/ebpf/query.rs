//! Which cgroup BPF programs are attached to a cgroup, and with which flags (`BPF_PROG_QUERY`).
//! Placement asks it so that it neither takes a process away from a device or socket rule, nor
//! attaches a program of ours where that would override one (a program attached without
//! `BPF_F_ALLOW_MULTI` stops applying below a cgroup that gets a program of its own).
//!
//! Written against the syscall: aya 0.14 exposes queries only for device programs, without the
//! effective flag and without the attach flags.

use std::os::fd::AsRawFd as _;
use std::path::Path;

/// Cgroup BPF attach points whose programs govern what a process may do (devices, sockets,
/// sysctls), from `enum bpf_attach_type` (include/uapi/linux/bpf.h).
pub const BPF_ATTACH_TYPES: &[(u32, &str)] = &[
    (INGRESS, "cgroup_skb ingress"),
    (EGRESS, "cgroup_skb egress"),
    (2, "cgroup_sock create"),
    (3, "sock_ops"),
    (6, "device"),
    (8, "inet4 bind"),
    (9, "inet6 bind"),
    (10, "inet4 connect"),
    (11, "inet6 connect"),
    (12, "inet4 post_bind"),
    (13, "inet6 post_bind"),
    (14, "udp4 sendmsg"),
    (15, "udp6 sendmsg"),
    (18, "sysctl"),
    (19, "udp4 recvmsg"),
    (20, "udp6 recvmsg"),
    (21, "getsockopt"),
    (22, "setsockopt"),
    (34, "cgroup_sock release"),
];
pub const INGRESS: u32 = 0;
pub const EGRESS: u32 = 1;

const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_F_QUERY_EFFECTIVE: u32 = 1;
pub const BPF_F_ALLOW_MULTI: u32 = 2;

/// Programs at one cgroup for one attach type.
#[derive(Debug, Default)]
pub struct Attached {
    pub ids: Vec<u32>,
    /// How the programs attached directly here were attached (`BPF_F_ALLOW_*`); 0 for an
    /// effective query.
    pub flags: u32,
}

/// The `query` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgQueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// The programs in force at `dir` (`effective`) or attached to it directly, `None` when the
/// kernel cannot say (no BPF, an attach type it does not know).
pub fn programs_at(dir: &Path, attach_type: u32, effective: bool) -> Option<Attached> {
    let cgroup = std::fs::File::open(dir).ok()?;
    let mut ids = [0u32; 64];
    let mut attr = ProgQueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        query_flags: if effective { BPF_F_QUERY_EFFECTIVE } else { 0 },
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..ProgQueryAttr::default()
    };
    // SAFETY: attr is a valid bpf_attr prefix of the size passed; prog_ids points to prog_cnt
    // u32s that live until the call returns.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &mut attr as *mut ProgQueryAttr,
            std::mem::size_of::<ProgQueryAttr>() as libc::c_uint,
        )
    };
    if rc != 0 {
        return None;
    }
    let n = (attr.prog_cnt as usize).min(ids.len());
    Some(Attached { ids: ids[..n].to_vec(), flags: attr.attach_flags })
}

/// An ancestor of `dir` with a program of `attach_type` that a program attached at `dir` would
/// override: one attached without `BPF_F_ALLOW_MULTI`.
pub fn overridable_ancestor(dir: &Path, attach_type: u32) -> Option<std::path::PathBuf> {
    // The walk ends at the root of the hierarchy: above it, the query fails (not a cgroup).
    dir.ancestors()
        .skip(1)
        .map_while(|d| Some((d, programs_at(d, attach_type, false)?)))
        .find(|(_, at)| !at.ids.is_empty() && at.flags & BPF_F_ALLOW_MULTI == 0)
        .map(|(d, _)| d.to_path_buf())
}
