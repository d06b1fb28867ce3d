//! Running qemu: accelerator choice, the kernel command line, the three serial ports relayed line by
//! line to the host, and the wall-clock limit.
//!
//! Each serial port is a qemu socket chardev that connects to a listening abstract unix socket of
//! ours (bound before qemu starts, so no output is lost and nothing touches the filesystem).
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

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

    fn args(self) -> &'static [&'static str] {
        match self {
            Accel::Kvm => &["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg | Accel::Auto => &["-accel", "tcg", "-cpu", "max"],
        }
    }
}

/// Pure cgroup v2 (no v1 controller can be bound anywhere), PSI on, quiet console, no reboot loop.
const KERNEL_ARGS: &str =
    "console=ttyS0 earlyprintk=serial,ttyS0 quiet loglevel=4 panic=-1 oops=panic \
     cgroup_no_v1=all psi=1 rdinit=/init random.trust_cpu=on tsc=reliable no_timer_check \
     i8042.noaux i8042.nokbd mitigations=off";

pub struct Machine<'a> {
    pub qemu: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub accel: Accel,
    pub memory_mib: u32,
    pub cpus: u32,
}

/// Receives the lines of one serial port (without the line end), on its own thread.
pub type Sink = Box<dyn FnMut(&str) + Send>;

pub struct Ports {
    pub console: Sink,
    pub stdout: Sink,
    pub stderr: Sink,
}

pub struct Outcome {
    /// `None` when qemu was killed at the deadline.
    pub status: Option<ExitStatus>,
    pub elapsed: Duration,
    /// What qemu itself printed (errors such as a missing accelerator).
    pub qemu_stderr: String,
}

pub fn run(machine: &Machine, ports: Ports, timeout: Duration) -> Result<Outcome> {
    let start = Instant::now();
    let deadline = start + timeout;
    let tag = format!("apptheus-vm-{}", std::process::id());
    let names = ["console", "out", "err"].map(|p| format!("{tag}-{p}"));
    let listeners = names
        .iter()
        .map(|n| listen(n))
        .collect::<Result<Vec<_>>>()?;

    let mut cmd = Command::new(machine.qemu);
    cmd.args(machine.accel.args())
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
        .args(["-append", KERNEL_ARGS]);
    for (i, name) in names.iter().enumerate() {
        cmd.arg("-chardev")
            .arg(format!("socket,id=s{i},path={name},abstract=on,server=off"))
            .arg("-serial")
            .arg(format!("chardev:s{i}"));
    }
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

    let result = relay(&mut child, listeners, ports, deadline);
    let timed_out = matches!(result, Ok((_, true)));
    if timed_out || result.is_err() {
        let _ = child.kill();
    }
    let status = child.wait().context("waiting for qemu")?;
    let qemu_stderr = qemu_stderr.and_then(|h| h.join().ok()).unwrap_or_default();
    let (relays, _) =
        result.map_err(|e| e.context(format!("qemu said: {}", qemu_stderr.trim())))?;
    // qemu is gone, so the sockets are closed and the relays finish with the last line.
    for r in relays {
        let _ = r.join();
    }
    Ok(Outcome {
        status: (!timed_out).then_some(status),
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

/// Accepts qemu's three serial connections, relays them on threads and waits for qemu to exit.
/// Returns the relay threads and whether the deadline passed.
fn relay(
    child: &mut Child,
    listeners: Vec<UnixListener>,
    ports: Ports,
    deadline: Instant,
) -> Result<(Vec<JoinHandle<()>>, bool)> {
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
                        return Ok((Vec::new(), true));
                    }
                    thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(anyhow!(e).context("accepting qemu's serial connection")),
            }
        }
    }
    let sinks = [ports.console, ports.stdout, ports.stderr];
    let relays = streams
        .into_iter()
        .zip(sinks)
        .map(|(s, mut sink)| thread::spawn(move || for_each_line(s, &mut sink)))
        .collect();
    loop {
        if child.try_wait().context("polling qemu")?.is_some() {
            return Ok((relays, false));
        }
        if Instant::now() >= deadline {
            return Ok((relays, true));
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
