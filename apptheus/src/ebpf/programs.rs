//! The programs of the object, their hooks, and loading them one by one.
use anyhow::{anyhow, Context as _, Result};
use apptheus_common::{KernelOffsets, TaskFilter};
use aya::{
    maps::Array,
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
    /// Only needed where `sched_switch` cannot read run-queue waits from the kernel's
    /// `sched_info` (see [`KernelOffsets::runq_from_sched_info`]); elsewhere neither loaded nor
    /// listed.
    pub stamps_runq_waits: bool,
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
        stamps_runq_waits: false,
    }
}

pub const PROGRAMS: &[Program] = &[
    tp("sched_switch", "sched_switch", true, true),
    Program {
        stamps_runq_waits: true,
        ..tp("sched_wakeup", "sched_wakeup", false, true)
    },
    Program {
        stamps_runq_waits: true,
        ..tp("sched_wakeup_new", "sched_wakeup_new", false, true)
    },
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
        stamps_runq_waits: false,
    },
    Program {
        name: "cgroup_skb_egress",
        hook: Hook::CgroupSkb,
        core: false,
        needs_offsets: false,
        fallback: None,
        stamps_runq_waits: false,
    },
];

/// What the running kernel tells about itself through BTF.
pub struct Kernel {
    btf: Option<Btf>,
    offsets: Result<KernelOffsets, String>,
}

impl Kernel {
    /// Whether `program` is needed here (the wake-up stampers are not where `sched_switch`
    /// reads run-queue waits from `sched_info`).
    pub fn needs(&self, program: &Program) -> bool {
        !(program.stamps_runq_waits && self.runq_from_sched_info())
    }

    fn runq_from_sched_info(&self) -> bool {
        self.offsets
            .as_ref()
            .is_ok_and(|o| o.runq_from_sched_info != 0)
    }

    /// Whether the programs apply the `TASK_FILTER` map.
    pub fn has_task_filter(&self) -> bool {
        self.offsets.as_ref().is_ok_and(|o| o.has_task_filter != 0)
    }
}

/// Ways of reading the kernel that can be turned off, to test the fallbacks on a kernel that
/// has everything.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fallbacks {
    /// Stamp run-queue waits with the sched_wakeup programs, as where `sched_info` is missing.
    pub runq_stamps: bool,
    /// No task filter, as where the cgroup fields are missing.
    pub no_task_filter: bool,
    /// This many fast slots (a power of two), as on a machine with many CPUs.
    pub fast_slots: Option<u32>,
}

/// Creates the maps and parses the object; programs are loaded separately so that one
/// rejected program does not take the others down.
/// `COUNTERS` is sized for `max_containers`, `FAST_COUNTERS` gets `fast_slots` entries (a power
/// of two).
pub fn load_object(object: &[u8], max_containers: u32, fast_slots: u32, fallbacks: Fallbacks) -> Result<(Ebpf, Kernel)> {
    let (btf, offsets) = match std::fs::read(btf::VMLINUX) {
        Ok(raw) => (
            Btf::parse(&raw, Endianness::default()).ok(),
            btf::kernel_offsets(&raw).map_err(|e| format!("kernel struct offsets unknown: {e:#}")),
        ),
        Err(e) => (None, Err(format!("no kernel BTF ({}: {e})", btf::VMLINUX))),
    };
    let offsets = offsets.map(|found| {
        for line in &found.missing {
            tracing::info!("eBPF: {line}");
        }
        let mut o = found.offsets;
        if fallbacks.runq_stamps {
            o.runq_from_sched_info = 0;
        }
        if fallbacks.no_task_filter {
            o.has_task_filter = 0;
        }
        o
    });
    // Without offsets the programs that need them are not loaded, so zeros are never read.
    let global = offsets.clone().unwrap_or_default();
    let mut kernel = Kernel { btf, offsets };
    let fast_slot_mask = fast_slots.max(1) - 1;
    let mut loader = EbpfLoader::new();
    loader
        .btf(kernel.btf.as_ref())
        .override_global("OFFSETS", &global, true)
        .map_max_entries("COUNTERS", max_containers)
        .map_max_entries("FAST_COUNTERS", fast_slot_mask + 1)
        .override_global("FAST_SLOT_MASK", &fast_slot_mask, true);
    if kernel.runq_from_sched_info() {
        // Not used: one entry instead of ~1.5 MiB (LRU maps are preallocated).
        loader.map_max_entries("RUNQ_START", 1);
    }
    let mut bpf = loader
        .load(object)
        .context("loading the eBPF object (maps need CAP_BPF or root)")?;
    if kernel.has_task_filter() {
        // Before any program runs: nothing is watched yet. Left at its initial zero, the map
        // means no filter.
        if let Err(e) = set_task_filter(&mut bpf, TaskFilter::NOTHING) {
            tracing::warn!("eBPF task filter unavailable, every task is looked up: {e:#}");
            if let Ok(o) = kernel.offsets.as_mut() {
                o.has_task_filter = 0;
            }
        }
    }
    Ok((bpf, kernel))
}

/// Writes the one value of `TASK_FILTER`.
pub fn set_task_filter(bpf: &mut Ebpf, filter: TaskFilter) -> Result<()> {
    let map = bpf
        .map_mut("TASK_FILTER")
        .ok_or_else(|| anyhow!("eBPF object has no map TASK_FILTER"))?;
    let mut array: Array<_, TaskFilter> = Array::try_from(map)?;
    array.set(0, filter, 0).context("writing TASK_FILTER")
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

/// One line for the log (the verifier's last line before its statistics); the verifier's full
/// output goes to debug.
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
                        && !l.starts_with("stack depth")
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
