//! Struct field offsets from the running kernel's BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF programs get no CO-RE relocations yet, so the few fields they read from tasks other
//! than `current` are located here and handed to them in the `OFFSETS` global. aya's `Btf` type
//! does not expose struct members, hence this small reader of the BTF format
//! (<https://docs.kernel.org/bpf/btf.html>): only what finding a member offset needs.
use anyhow::{anyhow, bail, ensure, Result};
use apptheus_common::KernelOffsets;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Reads the offsets the eBPF programs need from raw BTF data. The task filter and the run-queue
/// waits from `sched_info` are optional: when their fields are missing, their flag stays 0 and
/// `missing` says why (the programs then look every task up, and stamp waits themselves).
pub fn kernel_offsets(data: &[u8]) -> Result<Offsets> {
    let btf = Btf::parse(data)?;
    let mut offsets = KernelOffsets {
        task_tgid: btf.member("task_struct", "tgid", Want::Int(4))?,
        task_cgroups: btf.member("task_struct", "cgroups", Want::Ptr)?,
        css_set_dfl_cgrp: btf.member("css_set", "dfl_cgrp", Want::Ptr)?,
        cgroup_kn: btf.member("cgroup", "kn", Want::Ptr)?,
        // A u64 since Linux 5.5; before, a union that this reader rejects.
        kernfs_node_id: btf.member("kernfs_node", "id", Want::Int(8))?,
        ..KernelOffsets::default()
    };
    let mut missing = Vec::new();
    let filter = || -> Result<(u32, u32, u32)> {
        Ok((
            btf.member("cgroup", "level", Want::Int(4))?,
            btf.member("cgroup", "self", Want::Struct("cgroup_subsys_state"))?
                + btf.member("cgroup_subsys_state", "parent", Want::Ptr)?,
            btf.member("cgroup_subsys_state", "cgroup", Want::Ptr)?,
        ))
    };
    match filter() {
        Ok((level, parent_css, css_cgroup)) => {
            offsets.cgroup_level = level;
            offsets.cgroup_parent_css = parent_css;
            offsets.css_cgroup = css_cgroup;
            offsets.has_task_filter = 1;
        }
        Err(e) => missing.push(format!("no task filter: {e:#}")),
    }
    // CONFIG_SCHED_INFO (selected by TASK_DELAY_ACCT or SCHEDSTATS) and CONFIG_FAIR_GROUP_SCHED.
    let runq = || -> Result<(u32, u32, u32, u32)> {
        Ok((
            btf.member("task_struct", "sched_info", Want::Struct("sched_info"))?
                + btf.member("sched_info", "last_queued", Want::Int(8))?,
            btf.member("task_struct", "se", Want::Struct("sched_entity"))?
                + btf.member("sched_entity", "cfs_rq", Want::Ptr)?,
            btf.member("cfs_rq", "rq", Want::Ptr)?,
            btf.member("rq", "clock", Want::Int(8))?,
        ))
    };
    match runq() {
        Ok((last_queued, cfs_rq, rq, clock)) => {
            offsets.task_last_queued = last_queued;
            offsets.task_cfs_rq = cfs_rq;
            offsets.cfs_rq_rq = rq;
            offsets.rq_clock = clock;
            offsets.runq_from_sched_info = 1;
        }
        Err(e) => missing.push(format!(
            "run-queue waits stamped by sched_wakeup programs: {e:#}"
        )),
    }
    Ok(Offsets { offsets, missing })
}

/// What [`kernel_offsets`] found.
#[derive(Clone, Debug)]
pub struct Offsets {
    pub offsets: KernelOffsets,
    /// One line per optional feature this kernel's BTF does not allow.
    pub missing: Vec<String>,
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

/// What a member's type must resolve to, so a changed kernel struct fails loudly here instead
/// of making the programs read the wrong bytes.
#[derive(Clone, Copy)]
enum Want {
    Ptr,
    Int(u32),
    /// An embedded struct of this name.
    Struct(&'static str),
}

#[derive(Clone, Copy)]
struct Type {
    name_off: u32,
    info: u32,
    size_or_type: u32,
    /// Offset in the type section of the kind-specific data after the common header.
    extra: usize,
}

impl Type {
    fn kind(&self) -> u32 {
        (self.info >> 24) & 0x1f
    }
    fn vlen(&self) -> usize {
        (self.info & 0xffff) as usize
    }
    fn kind_flag(&self) -> bool {
        self.info >> 31 == 1
    }
}

struct Btf<'a> {
    /// Index = type id; id 0 is `void`.
    types: Vec<Type>,
    type_data: &'a [u8],
    strings: &'a [u8],
}

fn u32_at(data: &[u8], off: usize) -> Result<u32> {
    let bytes = data
        .get(off..off + 4)
        .ok_or_else(|| anyhow!("BTF truncated at byte {off}"))?;
    Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

impl<'a> Btf<'a> {
    fn parse(data: &'a [u8]) -> Result<Self> {
        ensure!(data.len() >= 24, "BTF shorter than its header");
        ensure!(
            data[0..2] == [0x9f, 0xeb],
            "not little-endian BTF (bad magic)"
        );
        let hdr_len = u32_at(data, 4)? as usize;
        let section = |off: usize, len: usize| {
            let start = hdr_len + u32_at(data, off)? as usize;
            let len = u32_at(data, len)? as usize;
            data.get(start..start + len)
                .ok_or_else(|| anyhow!("BTF section out of bounds"))
        };
        let type_data = section(8, 12)?;
        let strings = section(16, 20)?;

        let mut types = vec![Type {
            name_off: 0,
            info: 0,
            size_or_type: 0,
            extra: 0,
        }];
        let mut off = 0;
        while off < type_data.len() {
            let ty = Type {
                name_off: u32_at(type_data, off)?,
                info: u32_at(type_data, off + 4)?,
                size_or_type: u32_at(type_data, off + 8)?,
                extra: off + 12,
            };
            let vlen = ty.vlen();
            let extra = match ty.kind() {
                2 | 7..=12 | 16 | 18 => 0,    // PTR, FWD, TYPEDEF..FUNC, FLOAT, TYPE_TAG
                1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
                3 => 12,                      // ARRAY
                4 | 5 | 15 | 19 => 12 * vlen, // STRUCT, UNION, DATASEC, ENUM64
                6 | 13 => 8 * vlen,           // ENUM, FUNC_PROTO
                kind => bail!("unknown BTF kind {kind} at type {}", types.len()),
            };
            off = ty.extra + extra;
            types.push(ty);
        }
        Ok(Self {
            types,
            type_data,
            strings,
        })
    }

    fn name(&self, ty: &Type) -> &'a [u8] {
        let start = ty.name_off as usize;
        let rest = self.strings.get(start..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    fn ty(&self, id: u32) -> Result<Type> {
        self.types
            .get(id as usize)
            .copied()
            .ok_or_else(|| anyhow!("BTF type id {id} out of range"))
    }

    /// Follows typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Result<Type> {
        for _ in 0..32 {
            let ty = self.ty(id)?;
            match ty.kind() {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_type
                }
                _ => return Ok(ty),
            }
        }
        bail!("BTF type chain too deep at id {id}")
    }

    /// Byte offset of `member` in `struct name`, looking into anonymous struct/union members.
    fn member(&self, name: &str, member: &str, want: Want) -> Result<u32> {
        let strukt = self
            .types
            .iter()
            .find(|t| t.kind() == KIND_STRUCT && t.vlen() > 0 && self.name(t) == name.as_bytes())
            .ok_or_else(|| anyhow!("kernel BTF has no struct {name}"))?;
        let (bits, type_id) = self
            .find_member(strukt, member.as_bytes(), 0)?
            .ok_or_else(|| anyhow!("kernel BTF has no {name}.{member}"))?;
        ensure!(bits % 8 == 0, "{name}.{member} is a bitfield");
        let ty = self.resolve(type_id)?;
        let ok = match want {
            Want::Ptr => ty.kind() == KIND_PTR,
            Want::Int(size) => ty.kind() == KIND_INT && ty.size_or_type == size,
            Want::Struct(name) => ty.kind() == KIND_STRUCT && self.name(&ty) == name.as_bytes(),
        };
        ensure!(
            ok,
            "{name}.{member} has an unexpected type (BTF kind {})",
            ty.kind()
        );
        Ok(bits / 8)
    }

    /// (bit offset, type id) of the member, `base` bits into the outermost struct.
    fn find_member(&self, ty: &Type, member: &[u8], base: u32) -> Result<Option<(u32, u32)>> {
        for i in 0..ty.vlen() {
            let at = ty.extra + 12 * i;
            let name_off = u32_at(self.type_data, at)?;
            let type_id = u32_at(self.type_data, at + 4)?;
            let raw = u32_at(self.type_data, at + 8)?;
            // With kind_flag the high byte holds a bitfield size.
            let bits = base
                + if ty.kind_flag() {
                    raw & 0x00ff_ffff
                } else {
                    raw
                };
            let name = self.name(&Type {
                name_off,
                info: 0,
                size_or_type: 0,
                extra: 0,
            });
            if name == member {
                return Ok(Some((bits, type_id)));
            }
            if name.is_empty() {
                let inner = self.resolve(type_id)?;
                if matches!(inner.kind(), KIND_STRUCT | KIND_UNION) {
                    if let Some(found) = self.find_member(&inner, member, bits)? {
                        return Ok(Some(found));
                    }
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF: `struct outer { int a; union { long pad; u64 id; }; void *p; }`,
    /// `typedef unsigned long long u64` and `struct wrap { int a; struct outer o; }`.
    fn synthetic() -> Vec<u8> {
        let strings = b"\0outer\0a\0pad\0id\0p\0int\0u64\0ull\0long\0wrap\0o\0";
        let s = |name: &str| {
            let needle = [b"\0", name.as_bytes(), b"\0"].concat();
            strings
                .windows(needle.len())
                .position(|w| w == needle)
                .unwrap() as u32
                + 1
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| types.extend(w.to_le_bytes()));
        let info = |kind: u32, vlen: u32, flag: u32| (flag << 31) | (kind << 24) | vlen;
        push(&[s("int"), info(KIND_INT, 0, 0), 4, 32]); // 1
        push(&[s("ull"), info(KIND_INT, 0, 0), 8, 64]); // 2
        push(&[s("u64"), info(KIND_TYPEDEF, 0, 0), 2]); // 3
        push(&[s("long"), info(KIND_INT, 0, 0), 8, 64]); // 4
        push(&[0, info(KIND_PTR, 0, 0), 0]); // 5: void *
        push(&[0, info(KIND_UNION, 2, 0), 8, s("pad"), 4, 0, s("id"), 3, 0]); // 6
        push(&[
            s("outer"),
            info(KIND_STRUCT, 3, 0),
            24,
            s("a"),
            1,
            0,
            0,
            6,
            64,
            s("p"),
            5,
            128,
        ]); // 7
        push(&[
            s("wrap"),
            info(KIND_STRUCT, 2, 0),
            32,
            s("a"),
            1,
            0,
            s("o"),
            7,
            64,
        ]); // 8
        let mut blob = Vec::new();
        blob.extend([0x9f, 0xeb, 1, 0]);
        blob.extend(24u32.to_le_bytes());
        blob.extend(0u32.to_le_bytes());
        blob.extend((types.len() as u32).to_le_bytes());
        blob.extend((types.len() as u32).to_le_bytes());
        blob.extend((strings.len() as u32).to_le_bytes());
        blob.extend(&types);
        blob.extend(strings);
        blob
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_typedefs() {
        let data = synthetic();
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(btf.member("outer", "a", Want::Int(4)).unwrap(), 0);
        assert_eq!(btf.member("outer", "id", Want::Int(8)).unwrap(), 8);
        assert_eq!(btf.member("outer", "p", Want::Ptr).unwrap(), 16);
        assert!(
            btf.member("outer", "a", Want::Ptr).is_err(),
            "type is checked"
        );
        assert!(btf.member("outer", "nope", Want::Ptr).is_err());
        assert_eq!(btf.member("wrap", "o", Want::Struct("outer")).unwrap(), 8);
        assert!(btf.member("wrap", "o", Want::Struct("other")).is_err());
        assert!(btf.member("wrap", "a", Want::Struct("outer")).is_err());
        assert!(btf.member("inner", "a", Want::Ptr).is_err());
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"short").is_err());
        assert!(Btf::parse(&[0u8; 64]).is_err());
        let mut data = synthetic();
        data.truncate(40);
        assert!(Btf::parse(&data).is_err());
    }

    #[test]
    fn reads_the_running_kernel() {
        let Ok(data) = std::fs::read(VMLINUX) else {
            eprintln!("SKIP: no {VMLINUX}");
            return;
        };
        let found = kernel_offsets(&data).unwrap();
        let off = found.offsets;
        assert!(
            off.task_tgid > 0 && off.task_cgroups > off.task_tgid,
            "{off:?}"
        );
        assert!(
            off.css_set_dfl_cgrp > 0 && off.cgroup_kn > 0 && off.kernfs_node_id > 0,
            "{off:?}"
        );
        eprintln!("{found:?}");
        if off.has_task_filter != 0 {
            // `self` is the first member of struct cgroup, so its parent pointer comes early.
            assert!(off.cgroup_level > 0, "{off:?}");
            assert!(
                off.cgroup_parent_css > 0 && off.cgroup_parent_css < off.cgroup_kn,
                "{off:?}"
            );
        }
        if off.runq_from_sched_info != 0 {
            assert!(off.task_last_queued > 0 && off.task_cfs_rq > 0, "{off:?}");
            assert!(off.cfs_rq_rq > 0 && off.rq_clock > 0, "{off:?}");
        }
    }
}
