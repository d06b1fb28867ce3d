//! `cargo xtask vm-test`: boot a stock Debian kernel with a pure cgroup v2 hierarchy in qemu and run
//! the agent's end-to-end test (`tests/vm/guest-test.sh`) there. With `--systemd`, the same kernel
//! boots Debian's systemd and the agent's Debian package is tested as a service
//! (`tests/vm/systemd-test.sh`, [`systemd`]). See tests/vm/README.md.
//!
//! Exit status: 0 when every guest check passed, 1 on failure (the reason is printed), and
//! [`SKIP_EXIT`] when this machine cannot provide qemu or the Debian packages.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

mod cpio;
mod initramfs;
mod lockup;
mod packages;
mod qemu;
mod report;
mod systemd;

use packages::Unavailable;
use qemu::{Accel, TcgThread};
use report::{Console, Failure, Tally};

/// Exit status for "prerequisites unavailable here" (the automake convention for a skipped test).
pub const SKIP_EXIT: i32 = 77;

const GUEST_MEMORY_MIB: u32 = 1024;
const GUEST_CPUS: u32 = 2;
const RAMDISK_MIB: u32 = 64;

#[derive(clap::Args)]
pub struct VmArgs {
    /// Agent binary to test. Default: run `cargo build --release -p apptheus` and use
    /// target/release/apptheus.
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
    /// Wall-clock limit for the whole VM run (boot included), in seconds. Default: 300, with
    /// `--systemd` 600.
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// qemu accelerator; auto picks KVM only when the CPU advertises vmx/svm.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    accel: Accel,
    /// TCG only: run the vCPUs on one host thread (`single`), or one thread each (`multi`, where
    /// qemu 7.2 can execute stale kernel code after text patching: tests/vm/README.md, "Lockups").
    #[arg(long, value_enum, default_value_t = TcgThread::Single)]
    tcg_thread: TcgThread,
    /// The guest's cgroup hierarchies: `v2` (one cgroup2 mount with every controller, as systemd
    /// sets up) or `v1` (each controller mounted on its own, no unified hierarchy, as RHEL 8).
    #[arg(long, value_enum, default_value_t = Cgroup::V2)]
    cgroup: Cgroup,
    /// Stream the guest console (kernel and init messages) and the agent's log.
    #[arg(long, short)]
    verbose: bool,
    /// Keep the work directory (initramfs, console log) even on success.
    #[arg(long)]
    keep: bool,
    /// Test the harness itself: stall the guest kernel on purpose (tests/vm/rt-hog.c) and check
    /// that the lockup is recognised, explained with backtraces, and ends the run early.
    #[arg(long, conflicts_with_all = ["binary", "command"])]
    lockup_selftest: bool,
    /// Boot Debian's systemd (a bookworm root filesystem built once with mmdebstrap) and test the
    /// agent's Debian package there: install, service, restarts, upgrade, purge
    /// (tests/vm/systemd-test.sh). Pure cgroup v2 only.
    #[arg(long, conflicts_with_all = ["binary", "command", "lockup_selftest"])]
    systemd: bool,
    /// With `--systemd`: the package to test (`apptheus_<version>_amd64.deb`).
    #[arg(long, value_name = "PATH", requires = "systemd")]
    deb: Option<PathBuf>,
    /// Run this command in the guest instead of the test script, e.g.
    /// `cargo xtask vm-test -- cat /sys/fs/cgroup/cgroup.controllers`.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cgroup {
    V1,
    V2,
}

impl Cgroup {
    fn as_str(self) -> &'static str {
        match self {
            Cgroup::V1 => "v1",
            Cgroup::V2 => "v2",
        }
    }
}

pub fn run(args: VmArgs) -> Result<()> {
    match vm_test(args) {
        Err(e) if e.chain().any(|c| c.is::<Unavailable>()) => {
            eprintln!("vm-test: cannot run on this machine: {e:#}");
            println!("vm-test: skipped");
            std::process::exit(SKIP_EXIT)
        }
        result => result,
    }
}

fn vm_test(args: VmArgs) -> Result<()> {
    if args.systemd && args.cgroup == Cgroup::V1 {
        bail!("--systemd boots systemd on pure cgroup v2: it does not go with --cgroup v1");
    }
    let timeout = args.timeout.unwrap_or(if args.systemd {
        systemd::DEFAULT_TIMEOUT_SECS
    } else {
        300
    });
    let workspace = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| {
            if t.is_absolute() {
                t
            } else {
                workspace.join(t)
            }
        })
        .unwrap_or_else(|| workspace.join("target"));
    let cache = target.join("vm-cache");

    let qemu_bin = packages::ensure_qemu()?;
    let kernel = packages::kernel(&cache)?;
    let busybox = packages::busybox(&cache)?;
    let agent = match (
        &args.binary,
        args.command.is_empty() && !args.lockup_selftest && !args.systemd,
    ) {
        (Some(path), _) => Some(
            fs::canonicalize(path).with_context(|| format!("agent binary {}", path.display()))?,
        ),
        (None, true) => Some(build_agent(&workspace, &target)?),
        (None, false) => None,
    };

    let work = target.join("vm-test").join(std::process::id().to_string());
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let token = format!(
        "{:x}{:x}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    let is_test = args.command.is_empty() && !args.lockup_selftest;
    let initrd = work.join("initramfs.cpio");
    // --systemd: the root filesystem and the package under test (named in the first line)
    let systemd_guest = if args.systemd {
        let deb = match &args.deb {
            Some(path) => {
                fs::canonicalize(path).with_context(|| format!("package {}", path.display()))?
            }
            None => build_deb()?,
        };
        let rootfs = systemd::rootfs(&cache)?;
        systemd::initrd(
            &rootfs,
            &systemd::Overlay {
                deb: &deb,
                tests_dir: &workspace.join("tests/vm"),
                readme: &workspace.join("README.md"),
                token: &token,
                verbose: args.verbose,
            },
            &initrd,
        )?;
        Some(format!("{}, package {}", rootfs.summary, deb.display()))
    } else {
        let hog = work.join("rt-hog");
        let devdeny = work.join("devdeny");
        let binaries: &[(&Path, &str)] = if args.lockup_selftest {
            compile_static(&workspace.join("tests/vm/rt-hog.c"), &hog)?;
            &[(&hog, "/usr/local/bin/rt-hog")]
        } else if is_test {
            // the job's device rule of phase 3 (a cgroup device program, as Slurm and systemd set)
            compile_static(&workspace.join("tests/vm/devdeny.c"), &devdeny)?;
            &[(&devdeny, "/usr/local/bin/devdeny")]
        } else {
            &[]
        };
        let command = if args.lockup_selftest {
            "exec /usr/local/bin/rt-hog".to_string()
        } else if is_test {
            let script = match args.cgroup {
                Cgroup::V2 => "guest-test.sh",
                Cgroup::V1 => "guest-test-v1.sh",
            };
            format!("exec sh {}/{script}", initramfs::GUEST_TESTS)
        } else {
            format!(
                "exec {}",
                args.command
                    .iter()
                    .map(|a| shell_quote(a))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        };
        initramfs::build(
            &initramfs::Spec {
                busybox: &busybox,
                agent: agent.as_deref(),
                binaries,
                tests_dir: &workspace.join("tests/vm"),
                brd_module: kernel.brd_module.as_deref(),
                command,
                token: token.clone(),
                ramdisk_mib: RAMDISK_MIB,
                verbose: args.verbose,
                cgroup: args.cgroup.as_str(),
            },
            &initrd,
        )?;
        None
    };

    let guest = format!("{} {}", kernel.package, kernel.package_version);
    let machine = qemu::Machine {
        qemu: &qemu_bin,
        kernel: &kernel.vmlinuz,
        initrd: &initrd,
        accel: args.accel.resolve(),
        tcg_thread: args.tcg_thread,
        memory_mib: if args.systemd {
            systemd::MEMORY_MIB
        } else {
            GUEST_MEMORY_MIB
        },
        cpus: GUEST_CPUS,
        cgroup_v1: args.cgroup == Cgroup::V1,
        extra_args: if args.systemd {
            systemd::KERNEL_ARGS
        } else {
            ""
        },
    };
    eprintln!(
        "vm-test: guest kernel {guest} ({}), cgroup {}, {}, accel {}, {} MiB, {} CPUs, initramfs {} KiB, {}",
        kernel.version,
        args.cgroup.as_str(),
        packages::qemu_version(&qemu_bin),
        match machine.accel {
            Accel::Kvm => "kvm".to_string(),
            _ => format!("tcg (thread={:?})", machine.tcg_thread).to_lowercase(),
        },
        machine.memory_mib,
        machine.cpus,
        fs::metadata(&initrd).map(|m| m.len() / 1024).unwrap_or(0),
        match (&systemd_guest, &agent) {
            (Some(systemd), _) => format!("systemd: {systemd}"),
            (None, Some(agent)) => format!("agent {}", agent.display()),
            (None, None) => "agent none".to_string(),
        },
    );
    if kernel.brd_module.is_none() {
        eprintln!(
            "vm-test: warning: the kernel package has no brd module: no /dev/ram0 in the guest"
        );
    }

    let console_log = work.join("console.log");
    let alarm = Arc::new(lockup::Alarm::default());
    let console = Arc::new(Mutex::new(Console::new(
        &token,
        &console_log,
        args.verbose,
        alarm.clone(),
    )?));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let ports = qemu::Ports {
        console: report::console_sink(console.clone()),
        stdout: report::stdout_sink(tally.clone()),
        stderr: report::stderr_sink(),
    };
    let launched = Instant::now();
    let outcome = qemu::run(&machine, ports, &alarm, Duration::from_secs(timeout))?;

    let console = console.lock().unwrap_or_else(PoisonError::into_inner);
    let tally = tally.lock().unwrap_or_else(PoisonError::into_inner);
    let failure = if args.lockup_selftest {
        lockup_selftest_failure(&outcome, &console_log)
    } else {
        report::judge(&outcome, &console, &tally, is_test, timeout)
    };
    let evidence = match (&outcome.lockup, &outcome.at_timeout) {
        (Some((_, _, evidence)), _) => Some(evidence),
        (None, Some(evidence)) => Some(evidence),
        _ => None,
    };
    if let Some(evidence) = evidence {
        if !args.verbose {
            eprint!("{}", lockup_console(&console_log));
        }
        let symbols = kernel_symbols(&machine, &kernel, &busybox, &work)
            .map_err(|e| eprintln!("vm-test: kernel addresses stay unnamed: {e:#}"))
            .ok();
        eprint!(
            "vm-test: qemu's view of each vCPU {}:\n{}",
            if outcome.lockup.is_some() { "at the lockup" } else { "when time was up" },
            lockup::render(evidence, symbols.as_ref(), console.stext)
        );
    } else if let Some(Failure { vm: true, .. }) = &failure {
        if !args.verbose {
            eprint!(
                "vm-test: last console lines ({}):\n{}",
                console_log.display(),
                console.tail()
            );
        }
    }
    if let Some((started, uptime)) = console.started {
        let guest = console
            .exited
            .map(|(_, end)| format!("{:.1}s", end - uptime));
        eprintln!(
            "vm-test: boot {:.1}s (guest uptime {uptime:.1}s), guest command {}, total {:.1}s",
            started.duration_since(launched).as_secs_f64(),
            guest.as_deref().unwrap_or("unfinished"),
            outcome.elapsed.as_secs_f64()
        );
    }
    if args.keep || failure.is_some() {
        eprintln!("vm-test: work directory kept: {}", work.display());
    } else {
        let _ = fs::remove_dir_all(&work);
    }
    if is_test {
        println!("vm-test: {} passed, {} failed", tally.passed, tally.failed);
    } else if args.lockup_selftest {
        println!("vm-test: lockup self-test {}", if failure.is_some() { "failed" } else { "passed" });
    }
    match failure {
        // Every failure names the guest kernel: a new Debian kernel is a new suspect.
        Some(f) => bail!("{} (guest kernel {guest})", f.reason),
        None => Ok(()),
    }
}

/// Why the lockup self-test failed, if it did: the stall must be seen, qemu must show every vCPU,
/// the guest must print backtraces, and the run must end at the end of the grace.
fn lockup_selftest_failure(outcome: &qemu::Outcome, console_log: &Path) -> Option<Failure> {
    let fail = |reason: String| Some(Failure { reason, vm: false });
    let Some((at, line, evidence)) = &outcome.lockup else {
        return fail("the stall the guest was driven into was not recognised".to_string());
    };
    eprintln!("vm-test: lockup self-test: recognised {:.1}s after qemu started: {line}", at.as_secs_f64());
    if evidence.vcpus.len() != GUEST_CPUS as usize || evidence.vcpus.iter().any(|v| v.samples.is_empty()) {
        return fail(format!("qemu's view misses a vCPU: {evidence:?}"));
    }
    let console = fs::read_to_string(console_log).unwrap_or_default();
    let backtraces = console.matches("NMI backtrace for cpu").count();
    if backtraces < GUEST_CPUS as usize {
        return fail(format!(
            "the guest printed {backtraces} NMI backtraces (sysrq l), not one per CPU"
        ));
    }
    let overrun = outcome.elapsed.saturating_sub(*at + lockup::GRACE);
    if overrun > Duration::from_secs(15) {
        return fail(format!(
            "the run went on {:.0}s past the grace after the lockup",
            overrun.as_secs_f64()
        ));
    }
    None
}

/// Builds a C helper for the guest, statically linked (the guest has no libc).
fn compile_static(source: &Path, out: &Path) -> Result<()> {
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let status = Command::new(&cc)
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(out)
        .arg(source)
        .status()
        .with_context(|| format!("running {} for {}", cc.to_string_lossy(), source.display()))?;
    if !status.success() {
        bail!("{} -static {} failed ({status})", cc.to_string_lossy(), source.display());
    }
    Ok(())
}

/// The console from a little before the first lockup line on (the guest's own backtraces), at
/// most a few hundred lines; the whole log stays in the work directory.
fn lockup_console(console_log: &Path) -> String {
    const BEFORE: usize = 5;
    const MAX: usize = 600;
    let text = fs::read_to_string(console_log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let first = lines.iter().position(|l| lockup::is_alarm(l)).unwrap_or(0);
    let shown = &lines[first.saturating_sub(BEFORE)..];
    let mut out = format!(
        "vm-test: guest console{} ({}):\n",
        if first > 0 { " from the lockup on" } else { "" },
        console_log.display()
    );
    for l in shown.iter().take(MAX) {
        out.push_str("console| ");
        out.push_str(l);
        out.push('\n');
    }
    if shown.len() > MAX {
        out.push_str(&format!("console| ... {} more lines in the log\n", shown.len() - MAX));
    }
    out
}

/// The guest kernel's text symbols: Debian's `System.map` is a stub, so a VM of the same kernel
/// prints its `/proc/kallsyms` once; the list is cached beside the unpacked kernel.
fn kernel_symbols(
    machine: &qemu::Machine,
    kernel: &packages::Kernel,
    busybox: &Path,
    work: &Path,
) -> Result<lockup::Symbols> {
    let cached = kernel.root.join("kallsyms.text");
    if let Ok(text) = fs::read_to_string(&cached) {
        return lockup::Symbols::from_kallsyms(&text);
    }
    eprintln!("vm-test: booting the guest kernel once more to read its symbols");
    let dir = work.join("symbols");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let initrd = dir.join("initramfs.cpio");
    initramfs::build(
        &initramfs::Spec {
            busybox,
            agent: None,
            binaries: &[],
            tests_dir: &workspace_root().join("tests/vm"),
            brd_module: None,
            command: "exec grep -E '^[0-9a-f]+ [tT] ' /proc/kallsyms".to_string(),
            token: format!("symbols{}", std::process::id()),
            ramdisk_mib: 0,
            verbose: false,
            cgroup: "v2",
        },
        &initrd,
    )?;
    let lines = Arc::new(Mutex::new(String::new()));
    let collected = lines.clone();
    let ports = qemu::Ports {
        console: Box::new(|_| {}),
        stdout: Box::new(move |l| {
            let mut text = collected.lock().unwrap_or_else(PoisonError::into_inner);
            text.push_str(l);
            text.push('\n');
        }),
        stderr: report::stderr_sink(),
    };
    let symbols_machine = qemu::Machine {
        initrd: &initrd,
        memory_mib: GUEST_MEMORY_MIB,
        extra_args: "",
        ..*machine
    };
    qemu::run(
        &symbols_machine,
        ports,
        &lockup::Alarm::default(),
        Duration::from_secs(120),
    )?;
    let text = std::mem::take(&mut *lines.lock().unwrap_or_else(PoisonError::into_inner));
    let symbols = lockup::Symbols::from_kallsyms(&text)?;
    fs::write(&cached, &text).with_context(|| format!("writing {}", cached.display()))?;
    Ok(symbols)
}

fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn build_agent(workspace: &Path, target: &Path) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("vm-test: cargo build --release -p apptheus");
    let status = Command::new(&cargo)
        .args(["build", "--release", "-p", "apptheus"])
        .current_dir(workspace)
        .status()
        .with_context(|| format!("running {} build", cargo.to_string_lossy()))?;
    if !status.success() {
        bail!("cargo build --release -p apptheus failed ({status})");
    }
    let binary = target.join("release/apptheus");
    if !binary.is_file() {
        bail!("{} was not built", binary.display());
    }
    Ok(binary)
}

/// The agent's Debian package, when `--deb` does not name one: built as `cargo xtask dist` does.
fn build_deb() -> Result<PathBuf> {
    Ok(crate::dist::build().context("building the package for the systemd VM (cargo xtask dist)")?.deb)
}

/// Single-quotes `arg` for the guest's busybox sh.
fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}
