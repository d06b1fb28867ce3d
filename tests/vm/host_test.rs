//! The VM end-to-end test as a normal `cargo test` result: runs `cargo xtask vm-test`, which boots
//! a stock Debian kernel with a pure cgroup v2 hierarchy in qemu and runs the real agent's
//! end-to-end test there (tests/vm/README.md).
//!
//! Skipped, with a message, when not root or when this machine cannot provide qemu or the Debian
//! packages; with APPTHEUS_REQUIRE_PRIVILEGED=1 those cases fail instead.
use std::io::Write;
use std::path::Path;
use std::process::Command;

/// `cargo xtask vm-test`'s exit status for "prerequisites unavailable here" (xtask/src/vm.rs).
const SKIP_EXIT: i32 = 77;

#[test]
fn pure_cgroup_v2_vm() {
    let required = std::env::var("APPTHEUS_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1");
    if !is_root() {
        assert!(
            !required,
            "APPTHEUS_REQUIRE_PRIVILEGED=1 but not running as root: the VM test cannot run"
        );
        skip("needs root (to install qemu); run `cargo xtask vm-test` as root");
        return;
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let workspace = manifest.parent().unwrap_or(manifest);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .args(["xtask", "vm-test"])
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
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with("vm-test: "))
        .unwrap_or("no summary line");
    match out.status.code() {
        Some(0) => {}
        Some(SKIP_EXIT) if !required => {
            skip(
                stdout
                    .lines()
                    .chain(stderr.lines())
                    .find(|l| l.contains("cannot run"))
                    .unwrap_or("the VM cannot run here"),
            );
        }
        _ => panic!(
            "cargo xtask vm-test failed ({}): {summary}; its output is above",
            out.status
        ),
    }
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
