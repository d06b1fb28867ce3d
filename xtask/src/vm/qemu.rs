//! Running qemu: accelerator choice, the kernel command line, the three serial ports relayed line by
//! line to the host, the wall-clock limit, and the early end of a run whose guest kernel locked up
//! (after gathering the evidence, see [`super::lockup`]).
//!
//! Each serial port, and qemu's QMP monitor, is a qemu socket chardev that connects to a listening
//! abstract unix socket of ours (bound before qemu starts, so no output is lost and nothing touches
//! the filesystem).
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::lockup::{self, Alarm, Evidence, Probe, Qmp};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM only when the CPU advertises vmx/svm, TCG otherwise.
    Auto,
    Kvm,
    Tcg,
}

impl Accel {
    /// A /dev/kvm without vmx/svm (a nested paravirtual host) opens fine but cannot run a stock
    /// kernel, so the CPU flags decide, not the device.
    pub fn resolve(self) -> Accel {
        match self {
            Accel::Auto => {
                let hw_virt = fs::read_to_string("/proc/cpuinfo").is_ok_and(|c| {
                    c.lines()
                        .filter(|l| l.starts_with("flags"))
                        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
                });
                let kvm = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/kvm")
                    .is_ok();
                if hw_virt && kvm {
                    Accel::Kvm
                } else {
                    Accel::Tcg
                }
            }
            other => other,
        }
    }

    fn args(self, tcg_thread: TcgThread) -> Vec<&'static str> {
        match (self, tcg_thread) {
            (Accel::Kvm, _) => vec!["-accel", "kvm", "-cpu", "host"],
            (Accel::Tcg | Accel::Auto, TcgThread::Single) => vec!["-accel", "tcg,thread=single", "-cpu", "max"],
            (Accel::Tcg | Accel::Auto, TcgThread::Multi) => vec!["-accel", "tcg,thread=multi", "-cpu", "max"],
        }
    }
}

/// How qemu's TCG runs the vCPUs.
///
/// `single` (the default) runs them round-robin on one host thread. With `multi` (one host thread
/// per vCPU, qemu's default), qemu 7.2 can go on executing a stale translation of kernel code
/// that another vCPU has just patched: the guest kernel's static-key patching (every tracepoint
/// attach or detach) then leaves a vCPU looping on an `int3` that memory no longer holds, a
/// soft lockup of every CPU that passes there (tests/vm/README.md, "Lockups").
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TcgThread {
    Single,
    Multi,
}

/// Pure cgroup v2 (no v1 controller can be bound anywhere), PSI on, a quiet boot (the init raises
/// the console log level before the command, so that backtraces reach the console), no reboot loop.
const KERNEL_ARGS: &str =
    "console=ttyS0 earlyprintk=serial,ttyS0 quiet loglevel=4 panic=-1 oops=panic \
     psi=1 rdinit=/init random.trust_cpu=on tsc=reliable no_timer_check \
     i8042.noaux i8042.nokbd mitigations=off";

pub struct Machine<'a> {
    pub qemu: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub accel: Accel,
    pub tcg_thread: TcgThread,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Leave the v1 controllers mountable (the guest's init mounts them instead of cgroup2).
    pub cgroup_v1: bool,
    /// More kernel arguments (the systemd guest's).
    pub extra_args: &'a str,
}

/// Receives the lines of one serial port (without the line end), on its own thread.
pub type Sink = Box<dyn FnMut(&str) + Send>;

pub struct Ports {
    pub console: Sink,
    pub stdout: Sink,
    pub stderr: Sink,
}

pub struct Outcome {
    /// `None` when qemu was killed at the deadline or after a lockup.
    pub status: Option<ExitStatus>,
    /// The guest kernel's first lockup line, when it came (since qemu started), and what was
    /// gathered then; the run was ended [`lockup::GRACE`] after it.
    pub lockup: Option<(Duration, String, Evidence)>,
    /// What qemu showed of each vCPU when the wall-clock limit ended a run with no lockup alarm
    /// (a guest can hang where its watchdogs cannot see it, e.g. with interrupts off on every CPU).
    pub at_timeout: Option<Evidence>,
    pub elapsed: Duration,
    /// What qemu itself printed (errors such as a missing accelerator).
    pub qemu_stderr: String,
}

/// Runs the VM until it powers off, the deadline passes, or [`lockup::GRACE`] after `alarm` is
/// raised (by the console sink).
pub fn run(machine: &Machine, ports: Ports, alarm: &Alarm, timeout: Duration) -> Result<Outcome> {
    let start = Instant::now();
    let deadline = start + timeout;
    // Unique per run, also when several runs share a process (and so a pid).
    static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tag = format!("apptheus-vm-{}-{run}", std::process::id());
    let names = ["console", "out", "err", "qmp"].map(|p| format!("{tag}-{p}"));
    let listeners = names
        .iter()
        .map(|n| listen(n))
        .collect::<Result<Vec<_>>>()?;

    let mut cmd = Command::new(machine.qemu);
    cmd.args(machine.accel.args(machine.tcg_thread))
        .args([
            "-machine",
            "pc",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-m")
        .arg(machine.memory_mib.to_string())
        .arg("-smp")
        .arg(machine.cpus.to_string())
        .arg("-kernel")
        .arg(machine.kernel)
        .arg("-initrd")
        .arg(machine.initrd)
        .arg("-append")
        .arg(format!(
            "{KERNEL_ARGS} {} {} {}",
            // pure v2 keeps the v1 controllers from being mounted at all, as systemd distributions do
            if machine.cgroup_v1 {
                ""
            } else {
                "cgroup_no_v1=all"
            },
            lockup::KERNEL_ARGS,
            machine.extra_args
        ));
    for (i, name) in names[..3].iter().enumerate() {
        // The console (s0) is muxed so that `Ctrl-A b` sent to it is a serial break (sysrq).
        let mux = if i == 0 { ",mux=on" } else { "" };
        cmd.arg("-chardev")
            .arg(format!("socket,id=s{i},path={name},abstract=on,server=off{mux}"))
            .arg("-serial")
            .arg(format!("chardev:s{i}"));
    }
    cmd.arg("-chardev")
        .arg(format!("socket,id=qmp,path={},abstract=on,server=off", names[3]))
        .args(["-mon", "chardev=qmp,mode=control"]);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", machine.qemu.display()))?;
    let qemu_stderr = child.stderr.take().map(|mut s| {
        thread::spawn(move || {
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            text
        })
    });

    let result = relay(&mut child, listeners, ports, alarm, deadline);
    let killed = match &result {
        Ok(r) => r.timed_out || r.lockup.is_some(),
        Err(_) => true,
    };
    if killed {
        let _ = child.kill();
    }
    let status = child.wait().context("waiting for qemu")?;
    let qemu_stderr = qemu_stderr.and_then(|h| h.join().ok()).unwrap_or_default();
    let relayed = result.map_err(|e| e.context(format!("qemu said: {}", qemu_stderr.trim())))?;
    // qemu is gone, so the sockets are closed and the relays finish with the last line.
    for r in relayed.threads {
        let _ = r.join();
    }
    Ok(Outcome {
        status: (!killed).then_some(status),
        lockup: relayed
            .lockup
            .map(|(at, line, evidence)| (at.duration_since(start), line, evidence)),
        at_timeout: relayed.at_timeout,
        elapsed: start.elapsed(),
        qemu_stderr,
    })
}

fn listen(name: &str) -> Result<UnixListener> {
    let addr = SocketAddr::from_abstract_name(name.as_bytes())
        .with_context(|| format!("abstract socket name {name}"))?;
    let l = UnixListener::bind_addr(&addr)
        .with_context(|| format!("binding abstract socket @{name}"))?;
    l.set_nonblocking(true)
        .with_context(|| format!("@{name}: set non-blocking"))?;
    Ok(l)
}

struct Relayed {
    threads: Vec<JoinHandle<()>>,
    timed_out: bool,
    /// When the alarm was raised, its line, and the evidence gathered then.
    lockup: Option<(Instant, String, Evidence)>,
    at_timeout: Option<Evidence>,
}

/// Accepts qemu's three serial connections and its QMP connection, relays the serial ports on
/// threads and waits for qemu to exit, the deadline, or the end of the grace after a lockup alarm.
fn relay(
    child: &mut Child,
    listeners: Vec<UnixListener>,
    ports: Ports,
    alarm: &Alarm,
    mut deadline: Instant,
) -> Result<Relayed> {
    let not_started = |timed_out| Relayed {
        threads: Vec::new(),
        timed_out,
        lockup: None,
        at_timeout: None,
    };
    let mut streams: Vec<UnixStream> = Vec::new();
    for l in &listeners {
        loop {
            match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false)
                        .context("serial socket: set blocking")?;
                    streams.push(s);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if let Some(status) = child.try_wait().context("polling qemu")? {
                        bail!("qemu exited ({status}) before connecting its serial ports");
                    }
                    if Instant::now() >= deadline {
                        return Ok(not_started(true));
                    }
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(anyhow!(e).context("accepting qemu's serial connection")),
            }
        }
    }
    let qmp = streams.pop().context("no QMP connection")?;
    let mut probe = Probe {
        qmp: Qmp::new(qmp)
            .map_err(|e| eprintln!("vm-test: QMP unavailable: {e:#}"))
            .ok(),
        console: streams[0].try_clone().ok(),
        qemu_pid: child.id(),
    };
    let sinks = [ports.console, ports.stdout, ports.stderr];
    let threads = streams
        .into_iter()
        .zip(sinks)
        .map(|(s, mut sink)| thread::spawn(move || for_each_line(s, &mut sink)))
        .collect();
    let mut relayed = Relayed {
        threads,
        timed_out: false,
        lockup: None,
        at_timeout: None,
    };
    loop {
        if child.try_wait().context("polling qemu")?.is_some() {
            return Ok(relayed);
        }
        if relayed.lockup.is_none() {
            if let Some((at, line)) = alarm.raised() {
                eprintln!("vm-test: the guest kernel reports a lockup: {line}");
                eprintln!("vm-test: gathering backtraces; the run ends in {}s", lockup::GRACE.as_secs());
                let evidence = probe.gather();
                deadline = deadline.min(at + lockup::GRACE);
                relayed.lockup = Some((at, line, evidence));
            }
        }
        if Instant::now() >= deadline {
            relayed.timed_out = relayed.lockup.is_none();
            if relayed.timed_out {
                eprintln!("vm-test: time is up; reading qemu's view of each vCPU before ending the run");
                relayed.at_timeout = Some(probe.gather());
            }
            return Ok(relayed);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn for_each_line(stream: UnixStream, sink: &mut Sink) {
    let mut r = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                sink(line.trim_end_matches(['\n', '\r']));
            }
        }
    }
}
