//! `cargo xtask vm-test`: boot a stock Debian kernel with a pure cgroup v2 hierarchy in qemu and run
//! the agent's end-to-end test (`tests/vm/guest-test.sh`) there. See tests/vm/README.md.
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
mod packages;
mod qemu;
mod report;

use packages::Unavailable;
use qemu::Accel;
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
    /// Wall-clock limit for the whole VM run (boot included), in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    timeout: u64,
    /// qemu accelerator; auto picks KVM only when the CPU advertises vmx/svm.
    #[arg(long, value_enum, default_value_t = Accel::Auto)]
    accel: Accel,
    /// Stream the guest console (kernel and init messages) and the agent's log.
    #[arg(long, short)]
    verbose: bool,
    /// Keep the work directory (initramfs, console log) even on success.
    #[arg(long)]
    keep: bool,
    /// Run this command in the guest instead of the test script, e.g.
    /// `cargo xtask vm-test -- cat /sys/fs/cgroup/cgroup.controllers`.
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
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
    let agent = match (&args.binary, args.command.is_empty()) {
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
    let is_test = args.command.is_empty();
    let command = if is_test {
        format!("exec sh {}/guest-test.sh", initramfs::GUEST_TESTS)
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
    let initrd = work.join("initramfs.cpio");
    initramfs::build(
        &initramfs::Spec {
            busybox: &busybox,
            agent: agent.as_deref(),
            tests_dir: &workspace.join("tests/vm"),
            brd_module: kernel.brd_module.as_deref(),
            command,
            token: token.clone(),
            ramdisk_mib: RAMDISK_MIB,
            verbose: args.verbose,
        },
        &initrd,
    )?;

    let machine = qemu::Machine {
        qemu: &qemu_bin,
        kernel: &kernel.vmlinuz,
        initrd: &initrd,
        accel: args.accel.resolve(),
        memory_mib: GUEST_MEMORY_MIB,
        cpus: GUEST_CPUS,
    };
    eprintln!(
        "vm-test: kernel {}, accel {:?}, {} MiB, {} CPUs, initramfs {} KiB, agent {}",
        kernel.version,
        machine.accel,
        machine.memory_mib,
        machine.cpus,
        fs::metadata(&initrd).map(|m| m.len() / 1024).unwrap_or(0),
        agent
            .as_deref()
            .map_or_else(|| "none".to_string(), |a| a.display().to_string()),
    );
    if kernel.brd_module.is_none() {
        eprintln!(
            "vm-test: warning: the kernel package has no brd module: no /dev/ram0 in the guest"
        );
    }

    let console_log = work.join("console.log");
    let console = Arc::new(Mutex::new(Console::new(
        &token,
        &console_log,
        args.verbose,
    )?));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let ports = qemu::Ports {
        console: report::console_sink(console.clone()),
        stdout: report::stdout_sink(tally.clone()),
        stderr: report::stderr_sink(),
    };
    let launched = Instant::now();
    let outcome = qemu::run(&machine, ports, Duration::from_secs(args.timeout))?;

    let console = console.lock().unwrap_or_else(PoisonError::into_inner);
    let tally = tally.lock().unwrap_or_else(PoisonError::into_inner);
    let failure = report::judge(&outcome, &console, &tally, is_test, args.timeout);
    if let Some(Failure { vm: true, .. }) = &failure {
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
    }
    match failure {
        Some(f) => bail!(f.reason),
        None => Ok(()),
    }
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

/// Single-quotes `arg` for the guest's busybox sh.
fn shell_quote(arg: &str) -> String {
    format!("'{}'", arg.replace('\'', r"'\''"))
}
