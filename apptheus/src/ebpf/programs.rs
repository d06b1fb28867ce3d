//! The programs of the object, their hooks, and loading them one by one.
use anyhow::{anyhow, Context as _, Result};
use apptheus_common::KernelOffsets;
use aya::{
    programs::{BtfTracePoint, CgroupSkb, ProgramError},
    Btf, Ebpf, EbpfLoader, Endianness,
};

use super::btf;

pub enum Hook {
    /// BTF-enabled tracepoint (`tp_btf/<name>`).
    TpBtf(&'static str),
    /// cgroup_skb, attached per watched cgroup by `Ebpf::watch`.
    CgroupSkb,
}

pub struct Program {
    /// Function name in the object, also the name reported by `Ebpf::programs`.
    pub name: &'static str,
    pub hook: Hook,
    /// `Ebpf::up` requires it.
    pub core: bool,
    /// Reads fields of tasks other than `current` (see `KernelOffsets`).
    pub needs_offsets: bool,
    /// Function in the object to load for the same hook when the kernel rejects `name` (an
    /// older tracepoint signature).
    pub fallback: Option<&'static str>,
}

impl Program {
    pub fn hook_description(&self) -> String {
        match self.hook {
            Hook::TpBtf(tp) => format!("tp_btf/{tp}"),
            Hook::CgroupSkb => "cgroup_skb".to_owned(),
        }
    }
}

const fn tp(name: &'static str, tp: &'static str, core: bool, needs_offsets: bool) -> Program {
    Program {
        name,
        hook: Hook::TpBtf(tp),
        core,
        needs_offsets,
        fallback: None,
    }
}

pub const PROGRAMS: &[Program] = &[
    tp("sched_switch", "sched_switch", true, false),
    tp("sched_wakeup", "sched_wakeup", false, true),
    tp("sched_wakeup_new", "sched_wakeup_new", false, true),
    tp("sched_process_fork", "sched_process_fork", true, true),
    tp("sched_process_exec", "sched_process_exec", true, false),
    Program {
        fallback: Some("sched_process_exit_leader"),
        ..tp("sched_process_exit", "sched_process_exit", true, false)
    },
    tp("oom_mark_victim", "mark_victim", false, true),
    Program {
        name: "cgroup_skb_ingress",
        hook: Hook::CgroupSkb,
        core: false,
        needs_offsets: false,
        fallback: None,
    },
    Program {
        name: "cgroup_skb_egress",
        hook: Hook::CgroupSkb,
        core: false,
        needs_offsets: false,
        fallback: None,
    },
];

/// What the running kernel tells about itself through BTF.
pub struct Kernel {
    btf: Option<Btf>,
    offsets: Result<KernelOffsets, String>,
}

/// Creates the maps and parses the object; programs are loaded separately so that one
/// rejected program does not take the others down.
/// Loads the object's maps, `MONITORED` and `COUNTERS` sized for `max_containers`.
pub fn load_object(object: &[u8], max_containers: u32) -> Result<(Ebpf, Kernel)> {
    let (btf, offsets) = match std::fs::read(btf::VMLINUX) {
        Ok(raw) => (
            Btf::parse(&raw, Endianness::default()).ok(),
            btf::kernel_offsets(&raw).map_err(|e| format!("kernel struct offsets unknown: {e:#}")),
        ),
        Err(e) => (None, Err(format!("no kernel BTF ({}: {e})", btf::VMLINUX))),
    };
    // Without offsets the programs that need them are not loaded, so zeros are never read.
    let global = offsets.clone().unwrap_or_default();
    let bpf = EbpfLoader::new()
        .btf(btf.as_ref())
        .override_global("OFFSETS", &global, true)
        .map_max_entries("MONITORED", max_containers)
        .map_max_entries("COUNTERS", max_containers)
        .load(object)
        .context("loading the eBPF object (maps need CAP_BPF or root)")?;
    Ok((bpf, Kernel { btf, offsets }))
}

/// Loads one program into the kernel and, for tracepoints, attaches it; when the kernel rejects
/// it and the program has a fallback for older kernels, loads that instead.
pub fn load_program(bpf: &mut Ebpf, kernel: &Kernel, program: &Program) -> Result<()> {
    match load_function(bpf, kernel, program, program.name) {
        Err(err) if program.fallback.is_some() => {
            let fallback = program.fallback.unwrap_or_default();
            load_function(bpf, kernel, program, fallback).map_err(|e| err.context(format!("fallback {fallback}: {e:#}")))?;
            tracing::info!(program = program.name, fallback, "older tracepoint signature: loaded the fallback program");
            Ok(())
        }
        other => other,
    }
}

fn load_function(bpf: &mut Ebpf, kernel: &Kernel, program: &Program, function: &str) -> Result<()> {
    let prog = bpf
        .program_mut(function)
        .ok_or_else(|| anyhow!("not in the eBPF object"))?;
    match program.hook {
        Hook::TpBtf(tracepoint) => {
            let btf = kernel.btf.as_ref().ok_or_else(|| match &kernel.offsets {
                Err(e) => anyhow!("{e}"),
                Ok(_) => anyhow!("kernel BTF unreadable"),
            })?;
            if program.needs_offsets {
                kernel.offsets.as_ref().map_err(|e| anyhow!("{e}"))?;
            }
            let prog: &mut BtfTracePoint = prog.try_into()?;
            prog.load(tracepoint, btf)
                .map_err(|e| load_error(program.name, e))?;
            prog.attach().context("attach")?;
        }
        Hook::CgroupSkb => {
            let prog: &mut CgroupSkb = prog.try_into()?;
            prog.load().map_err(|e| load_error(program.name, e))?;
        }
    }
    Ok(())
}

/// One line for the log; the verifier's full output goes to debug.
fn load_error(name: &str, e: ProgramError) -> anyhow::Error {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            tracing::debug!(program = name, "verifier output:\n{log}");
            let reason = log
                .lines()
                .rev()
                .find(|l| {
                    !l.trim().is_empty()
                        && !l.starts_with("processed ")
                        && !l.starts_with("verification time")
                })
                .unwrap_or("")
                .to_owned();
            if reason.is_empty() {
                anyhow!("rejected by the kernel: {io_error}")
            } else {
                anyhow!("rejected by the kernel ({io_error}): {reason}")
            }
        }
        e => anyhow::Error::new(e),
    }
}
