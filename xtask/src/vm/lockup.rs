//! When the guest kernel locks up: recognise it on the console, gather the evidence while the VM
//! still runs, and end the run soon after instead of at the wall-clock limit.
//!
//! The evidence comes from both sides, so that it exists whoever is at fault:
//! - the guest kernel's own backtraces of every CPU: `softlockup_all_cpu_backtrace=1` (kernel
//!   command line) and sysrq `l` and `w` sent as a break on the serial console;
//! - qemu's view of each vCPU, through QMP: a few samples of its registers (where it spins, at which
//!   privilege level, with interrupts on or off), the words on its kernel stack, and how much host
//!   CPU its thread burns. That still speaks when the guest cannot (an emulator fault, or CPUs
//!   spinning with interrupts off).
//!
//! Addresses are symbolised after the run with the guest kernel's own `/proc/kallsyms`
//! ([`Symbols`]), fetched once per kernel package and cached: Debian's `System.map` is a stub.
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

/// Console lines that mean the guest kernel is stuck (or has given up).
const ALARMS: &[&str] = &[
    "soft lockup - CPU#",
    "detected stalls on CPUs",
    "self-detected stall on CPU",
    "kthread starved for",
    "Watchdog detected hard LOCKUP",
    "BUG: workqueue lockup",
    "Kernel panic - not syncing",
];

/// How long the run goes on after the first alarm: the guest's backtraces (NMI and sysrq) and a
/// second round of stall reports arrive within it.
pub const GRACE: Duration = Duration::from_secs(25);

/// Kernel arguments that make a lockup speak: the soft-lockup detector fires after 2 × 5 s and then
/// dumps every CPU, and sysrq works from the serial console.
pub const KERNEL_ARGS: &str =
    "watchdog_thresh=5 softlockup_all_cpu_backtrace=1 sysrq_always_enabled=1";

pub fn is_alarm(line: &str) -> bool {
    ALARMS.iter().any(|a| line.contains(a))
}

/// The first alarm line and when it was seen; raised by the console relay, read by the run loop.
#[derive(Default)]
pub struct Alarm(Mutex<Option<(Instant, String)>>);

impl Alarm {
    pub fn raise(&self, line: &str) {
        let mut first = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if first.is_none() {
            *first = Some((Instant::now(), line.to_string()));
        }
    }

    pub fn raised(&self) -> Option<(Instant, String)> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// What qemu showed of one vCPU.
#[derive(Debug, Default)]
pub struct Vcpu {
    pub index: u64,
    pub thread_id: Option<u32>,
    /// Share of one host core the vCPU thread used while the samples were taken.
    pub host_cpu_percent: Option<f64>,
    pub samples: Vec<Registers>,
    /// 8-byte words from the stack pointer up (last sample), for a probable call chain.
    pub stack: Vec<u64>,
}

#[derive(Debug, Default, PartialEq)]
pub struct Registers {
    pub rip: u64,
    pub rsp: u64,
    pub rflags: u64,
    /// Privilege level: 0 kernel, 3 user.
    pub cpl: u8,
    pub halted: bool,
}

impl Registers {
    /// From `info registers` as qemu prints it for x86-64.
    pub fn parse(text: &str) -> Option<Registers> {
        let field = |name: &str| {
            text.split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        };
        let hex = |name: &str| field(name).and_then(|v| u64::from_str_radix(v, 16).ok());
        Some(Registers {
            rip: hex("RIP")?,
            rsp: hex("RSP")?,
            rflags: hex("RFL")?,
            cpl: field("CPL")?.parse().ok()?,
            halted: field("HLT") == Some("1"),
        })
    }

    fn interrupts_on(&self) -> bool {
        self.rflags & 0x200 != 0
    }
}

/// Everything gathered at the alarm, addresses still raw.
#[derive(Debug, Default)]
pub struct Evidence {
    pub vcpus: Vec<Vcpu>,
    /// What could not be gathered, and why.
    pub problems: Vec<String>,
}

/// The host's handles on the running VM.
pub struct Probe {
    pub qmp: Option<Qmp>,
    /// The console's socket, to send sysrq (qemu's mux turns `Ctrl-A b` into a serial break).
    pub console: Option<UnixStream>,
    pub qemu_pid: u32,
}

const SAMPLES: usize = 4;
const SAMPLE_GAP: Duration = Duration::from_millis(300);
const STACK_WORDS: usize = 96;

impl Probe {
    /// Asks the guest for its backtraces and reads each vCPU's state from qemu.
    pub fn gather(&mut self) -> Evidence {
        let mut evidence = Evidence::default();
        if let Some(console) = &mut self.console {
            // `l`: backtrace of every active CPU (NMI); `w`: tasks blocked uninterruptibly.
            for key in [b'l', b'w'] {
                if let Err(e) = sysrq(console, key) {
                    evidence
                        .problems
                        .push(format!("sysrq {}: {e:#}", key as char));
                }
            }
        }
        let Some(qmp) = &mut self.qmp else {
            evidence.problems.push("no QMP connection to qemu".into());
            return evidence;
        };
        match vcpus(qmp, self.qemu_pid) {
            Ok(v) => evidence.vcpus = v,
            Err(e) => evidence.problems.push(format!("qemu's vCPU state: {e:#}")),
        }
        evidence
    }
}

fn sysrq(console: &mut UnixStream, key: u8) -> Result<()> {
    console.write_all(b"\x01b").context("sending a break")?;
    thread::sleep(Duration::from_millis(200));
    console.write_all(&[key]).context("sending the sysrq key")?;
    // Let the guest print before the next request.
    thread::sleep(Duration::from_millis(1500));
    Ok(())
}

fn vcpus(qmp: &mut Qmp, qemu_pid: u32) -> Result<Vec<Vcpu>> {
    let list = qmp.execute("query-cpus-fast", json!({}))?;
    let mut vcpus: Vec<Vcpu> = list
        .as_array()
        .ok_or_else(|| anyhow!("query-cpus-fast: not a list: {list}"))?
        .iter()
        .map(|c| Vcpu {
            index: c["cpu-index"].as_u64().unwrap_or(0),
            thread_id: c["thread-id"].as_u64().and_then(|t| u32::try_from(t).ok()),
            ..Vcpu::default()
        })
        .collect();
    let cpu_time = |v: &Vcpu| v.thread_id.and_then(|t| thread_cpu_ticks(qemu_pid, t));
    let before: Vec<_> = vcpus.iter().map(cpu_time).collect();
    let started = Instant::now();
    for round in 0..SAMPLES {
        if round > 0 {
            thread::sleep(SAMPLE_GAP);
        }
        for v in &mut vcpus {
            let text = qmp.hmp("info registers", Some(v.index))?;
            match Registers::parse(&text) {
                Some(r) => v.samples.push(r),
                None => bail!("cannot read the registers of vCPU {}: {text}", v.index),
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ticks_per_s = clock_ticks_per_second();
    for (v, before) in vcpus.iter_mut().zip(before) {
        if let (Some(b), Some(a)) = (before, cpu_time(v)) {
            v.host_cpu_percent = Some((a - b) as f64 / ticks_per_s / elapsed * 100.0);
        }
        if let Some(last) = v.samples.last() {
            let text = qmp.hmp(
                &format!("x/{STACK_WORDS}gx 0x{:x}", last.rsp),
                Some(v.index),
            )?;
            v.stack = parse_memory_dump(&text);
        }
    }
    Ok(vcpus)
}

/// utime + stime of one thread of qemu, in clock ticks.
fn thread_cpu_ticks(pid: u32, tid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// The values of qemu's `x/Ngx ADDR` output (`ADDR: 0x... 0x...` lines).
pub fn parse_memory_dump(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .flat_map(|(_, words)| words.split_whitespace())
        .filter_map(|w| u64::from_str_radix(w.strip_prefix("0x")?, 16).ok())
        .collect()
}

/// A minimal QMP client: the greeting and capability negotiation on first use, then one command at
/// a time (asynchronous events in between are skipped).
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    negotiated: bool,
}

impl Qmp {
    pub fn new(stream: UnixStream) -> Result<Qmp> {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .context("QMP socket: read timeout")?;
        let writer = stream.try_clone().context("QMP socket: clone")?;
        Ok(Qmp {
            reader: BufReader::new(stream),
            writer,
            negotiated: false,
        })
    }

    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        if !self.negotiated {
            self.read_message().context("QMP greeting")?;
            self.negotiated = true;
            self.execute("qmp_capabilities", json!({}))?;
        }
        let request = json!({ "execute": command, "arguments": arguments });
        writeln!(self.writer, "{request}").with_context(|| format!("QMP {command}: sending"))?;
        loop {
            let reply = self
                .read_message()
                .with_context(|| format!("QMP {command}: reading the reply"))?;
            if let Some(r) = reply.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = reply.get("error") {
                bail!("QMP {command}: {e}");
            }
        }
    }

    /// A human monitor command (`info registers`, `x/...`), on one vCPU if given.
    pub fn hmp(&mut self, line: &str, cpu: Option<u64>) -> Result<String> {
        let mut args = json!({ "command-line": line });
        if let Some(cpu) = cpu {
            args["cpu-index"] = json!(cpu);
        }
        let out = self.execute("human-monitor-command", args)?;
        Ok(out.as_str().unwrap_or_default().to_string())
    }

    fn read_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("qemu closed the QMP socket");
        }
        serde_json::from_str(&line).with_context(|| format!("not QMP: {}", line.trim()))
    }
}

/// Text symbols of the guest kernel, as offsets from `_stext`, so that one list serves every boot
/// whatever its KASLR slide.
pub struct Symbols {
    by_offset: Vec<(u64, String)>,
    /// Length of the kernel text: addresses past it are not named.
    text_len: u64,
}

impl Symbols {
    /// From `/proc/kallsyms` lines (`ffffffff81000000 T _stext`); module symbols are ignored.
    pub fn from_kallsyms(text: &str) -> Result<Symbols> {
        let mut symbols: Vec<(u64, String)> = text
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let addr = u64::from_str_radix(f.next()?, 16).ok()?;
                let kind = f.next()?;
                let name = f.next()?;
                (matches!(kind, "t" | "T") && f.next().is_none()).then(|| (addr, name.to_string()))
            })
            .collect();
        let find = |name: &str| symbols.iter().find(|(_, n)| n == name).map(|(a, _)| *a);
        let stext = find("_stext").ok_or_else(|| anyhow!("no _stext in the symbol list"))?;
        let etext = find("_etext").ok_or_else(|| anyhow!("no _etext in the symbol list"))?;
        if etext <= stext {
            bail!("_etext {etext:x} is not past _stext {stext:x}");
        }
        symbols.retain(|(a, _)| (stext..etext).contains(a));
        let mut by_offset: Vec<(u64, String)> =
            symbols.into_iter().map(|(a, n)| (a - stext, n)).collect();
        by_offset.sort();
        Ok(Symbols {
            by_offset,
            text_len: etext - stext,
        })
    }

    /// `function+0xoffset` for an address of the boot whose `_stext` is `stext`.
    pub fn name(&self, addr: u64, stext: u64) -> Option<String> {
        let off = addr.checked_sub(stext).filter(|o| *o < self.text_len)?;
        let i = self.by_offset.partition_point(|(o, _)| *o <= off);
        let (start, name) = self.by_offset.get(i.checked_sub(1)?)?;
        Some(format!("{name}+0x{:x}", off - start))
    }
}

/// The evidence as text: one block per vCPU. `stext` is this boot's `_stext` (printed by the
/// init), needed with `symbols` to name kernel addresses.
pub fn render(evidence: &Evidence, symbols: Option<&Symbols>, stext: Option<u64>) -> String {
    let name = |addr: u64| match (symbols, stext) {
        (Some(s), Some(t)) => s.name(addr, t),
        _ => None,
    };
    let at = |addr: u64| match name(addr) {
        Some(n) => format!("{addr:016x} {n}"),
        None => format!("{addr:016x}"),
    };
    let mut out = String::new();
    for v in &evidence.vcpus {
        let host = v
            .host_cpu_percent
            .map_or("?".to_string(), |p| format!("{p:.0}"));
        let _ = writeln!(
            out,
            "vCPU {} (host thread {}, {host}% of a host core):",
            v.index,
            v.thread_id.map_or("?".to_string(), |t| t.to_string()),
        );
        for r in &v.samples {
            let _ = writeln!(
                out,
                "  RIP {}  {}  interrupts {}{}",
                at(r.rip),
                if r.cpl == 0 { "kernel" } else { "user" },
                if r.interrupts_on() { "on" } else { "off" },
                if r.halted { "  halted" } else { "" },
            );
        }
        let chain: Vec<String> = v
            .stack
            .iter()
            .filter_map(|w| name(*w).map(|n| format!("    {n}")))
            .collect();
        if !chain.is_empty() {
            let _ = writeln!(out, "  kernel text addresses on its stack, innermost first:");
            for line in chain {
                let _ = writeln!(out, "{line}");
            }
        } else if symbols.is_none() && !v.stack.is_empty() {
            let _ = writeln!(out, "  stack words (no symbols):");
            for chunk in v.stack.chunks(4).take(8) {
                let words: Vec<String> = chunk.iter().map(|w| format!("{w:016x}")).collect();
                let _ = writeln!(out, "    {}", words.join(" "));
            }
        }
    }
    for p in &evidence.problems {
        let _ = writeln!(out, "not gathered: {p}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alarms_are_the_lockup_lines_of_the_failed_run() {
        // The console of the lockup of 2026-12-04 (shared/reference/vm-lockup-*), abridged.
        let console = "VM-TEST-START-710b2b6b6a1c uptime=2.80\n\
            [   24.205151] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:\n\
            [   24.207305] rcu: All QSes seen, last rcu_preempt kthread activity 5252\n\
            [   24.208622] rcu: rcu_preempt kthread starved for 5252 jiffies! g-671 f0x2\n";
        let first = console.lines().map(str::trim).find(|l| is_alarm(l));
        assert_eq!(
            first,
            Some("[   24.205151] rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:")
        );
        assert!(is_alarm(
            "[   28.686320] watchdog: BUG: soft lockup - CPU#0 stuck for 26s! [timeout:126]"
        ));
        for quiet in [
            "VM-TEST-START-710b2b6b6a1c uptime=2.80",
            "[    0.000000] Linux version 6.1.0-57-cloud-amd64",
            "init: kernel _stext=ffffffffb2a00000",
        ] {
            assert!(!is_alarm(quiet), "{quiet}");
        }
    }

    #[test]
    fn registers_from_info_registers() {
        let text = "RAX=0000000000000000 RBX=ffff888003a3c000 RCX=0000000000000001 RDX=0000000000000000\n\
                    RSI=0000000000000000 RDI=ffffffffb4a1e4c0 RBP=ffffc900004b3d38 RSP=ffffc900004b3d10\n\
                    R8 =0000000000000000 R9 =0000000000000000 R10=0000000000000000 R11=0000000000000000\n\
                    RIP=ffffffffb2b3c5a2 RFL=00000202 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0\n";
        assert_eq!(
            Registers::parse(text),
            Some(Registers {
                rip: 0xffffffffb2b3c5a2,
                rsp: 0xffffc900004b3d10,
                rflags: 0x202,
                cpl: 0,
                halted: false,
            })
        );
        assert!(Registers::parse(text).is_some_and(|r| r.interrupts_on()));
        assert_eq!(Registers::parse("RIP=zz"), None);
    }

    #[test]
    fn memory_dump_words() {
        let text = "ffffc900004b3d10: 0xffffffffb2b3c5a2 0x0000000000000001\n\
                    ffffc900004b3d20: 0xffff888003a3c000 0x0000000000000000\n";
        assert_eq!(
            parse_memory_dump(text),
            vec![0xffffffffb2b3c5a2, 1, 0xffff888003a3c000, 0]
        );
    }

    #[test]
    fn symbols_name_addresses_of_any_kaslr_slide() {
        let kallsyms = "ffffffff81000000 T _stext\n\
                        ffffffff81000100 t helper\n\
                        ffffffff81000200 T smp_call_function_many_cond\n\
                        ffffffff81000300 D some_data\n\
                        ffffffff81000400 T _etext\n\
                        ffffffffc0000000 t brd_probe\t[brd]\n";
        let s = Symbols::from_kallsyms(kallsyms).expect("symbols");
        let stext = 0xffffffffb2a00000;
        assert_eq!(s.name(stext + 0x210, stext).as_deref(), Some("smp_call_function_many_cond+0x10"));
        assert_eq!(s.name(stext + 0x100, stext).as_deref(), Some("helper+0x0"));
        // data, past the text, before it
        assert_eq!(s.name(stext + 0x400, stext), None);
        assert_eq!(s.name(stext - 8, stext), None);
        assert!(Symbols::from_kallsyms("ffffffff81000000 T _stext\n").is_err());
    }
}
