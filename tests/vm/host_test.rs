//! The VM end-to-end tests as normal `cargo test` results: run `cargo xtask vm-test`, which boots
//! a stock Debian kernel with a pure cgroup v2 hierarchy (or, with `--cgroup v1`, pure v1) in qemu
//! and runs the real agent's end-to-end test there (tests/vm/README.md).
//!
//! `systemd_service_vm` boots Debian's systemd on the same kernel and tests the agent's Debian
//! package as a service (`--systemd`). A last test checks that the harness explains a lockup of
//! the guest kernel.
//!
//! Skipped, with a message, when not root or when this machine cannot provide qemu or the Debian
//! packages; with APPTHEUS_REQUIRE_PRIVILEGED=1 those cases fail instead.
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Mutex, PoisonError};

/// `cargo xtask vm-test`'s exit status for "prerequisites unavailable here" (xtask/src/vm.rs).
const SKIP_EXIT: i32 = 77;

/// The VMs of this file run one at a time: two at once would each slow the other.
static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn pure_cgroup_v2_vm() {
    vm_test_passes(&[]);
}

/// The same scenario on pure cgroup v1 (each controller mounted on its own, as RHEL 8 does), plus
/// Slurm's v1 job tree with its freezer (`guest-test-v1.sh`).
#[test]
fn pure_cgroup_v1_vm() {
    vm_test_passes(&["--cgroup", "v1"]);
}

/// The agent's Debian package under systemd (`--systemd`, `systemd-test.sh`): a Debian bookworm
/// guest booting systemd on the same kernel; install (ready when apt-get returns), containers of
/// an unprivileged user, restarts and stops with a container running, upgrade, bad configuration,
/// purge. The package is the file named by APPTHEUS_VM_DEB when it is set; otherwise
/// `cargo xtask vm-test --systemd` builds it as `cargo xtask dist` does.
#[test]
fn systemd_service_vm() {
    let deb = std::env::var("APPTHEUS_VM_DEB").ok();
    let mut args = vec!["--systemd"];
    if let Some(deb) = deb.as_deref() {
        args.extend(["--deb", deb]);
    }
    vm_test_passes(&args);
}

fn vm_test_passes(args: &[&str]) {
    let Some(out) = xtask_vm_test(args) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("vm-test: "))
        .unwrap_or("no summary line");
    assert!(
        out.status.success(),
        "cargo xtask vm-test {} failed ({}): {summary}; {}; its output is above",
        args.join(" "),
        out.status,
        error_line(&out.stderr)
    );
}

/// The harness explains a lockup of the guest kernel (issue of 2026-12-04): a guest driven into an
/// RCU stall on purpose is recognised, every CPU's backtrace is gathered, and the run ends within
/// the grace instead of at the time limit. `--lockup-selftest` checks that and exits 0.
#[test]
fn vm_harness_explains_a_lockup() {
    let Some(out) = xtask_vm_test(&["--lockup-selftest", "--timeout", "150"]) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cargo xtask vm-test --lockup-selftest failed ({}): {}; its output is above",
        out.status,
        error_line(&out.stderr)
    );
    // What a reader of a real lockup gets: the guest's own backtraces and qemu's view of each vCPU.
    for shown in ["rcu_preempt kthread starved", "NMI backtrace for cpu", "vCPU 0 (host thread", "vCPU 1 (host thread"] {
        assert!(stderr.contains(shown), "the lockup report lacks {shown:?}");
    }
}

/// Runs `cargo xtask vm-test ARGS`, its output echoed for the test harness to show on failure.
/// `None` (with a message) when the VM cannot run here and privileged tests are not required.
fn xtask_vm_test(args: &[&str]) -> Option<Output> {
    let required = std::env::var("APPTHEUS_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1");
    if !is_root() {
        assert!(
            !required,
            "APPTHEUS_REQUIRE_PRIVILEGED=1 but not running as root: the VM test cannot run"
        );
        skip("needs root (to install qemu); run `cargo xtask vm-test` as root");
        return None;
    }
    let _one = ONE_VM_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest.parent().unwrap_or(manifest);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .args(["xtask", "vm-test"])
        .args(args)
        .current_dir(workspace)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} xtask vm-test in {}: {e}",
                cargo.to_string_lossy(),
                workspace.display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Captured by the test harness: shown on failure or with --nocapture.
    println!("{stdout}");
    eprintln!("{stderr}");
    if out.status.code() == Some(SKIP_EXIT) && !required {
        skip(
            stdout
                .lines()
                .chain(stderr.lines())
                .find(|l| l.contains("cannot run"))
                .unwrap_or("the VM cannot run here"),
        );
        return None;
    }
    Some(out)
}

/// The harness's own error line (it names the guest kernel).
fn error_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .find(|l| l.starts_with("Error: "))
        .unwrap_or("no error line")
        .to_string()
}

/// Written to the real stderr, past the harness's capture, so that a skip is never silent.
fn skip(why: &str) {
    let _ = writeln!(std::io::stderr(), "pure_cgroup_v2_vm: SKIPPED: {why}");
}

/// Effective uid 0, from /proc/self/status.
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            .is_some_and(|euid| euid == "0")
    })
}
