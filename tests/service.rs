//! The packaged service (issue 15), checked on the host: the unit file verifies, its
//! `systemd-analyze security` exposure is within the goal and below Debian's
//! prometheus-node-exporter unit measured in the same run, and `cargo xtask dist --lint` builds
//! a .deb, an .rpm and a tar.gz with the same files that lintian and rpmlint pass. The service
//! itself runs under systemd in the VM test (`systemd_service_vm` in tests/vm/host_test.rs).
//!
//! The tools come from Debian's packages (systemd, lintian, rpmlint, rpm); without them the
//! tests skip with a message, or fail under APPTHEUS_REQUIRE_PRIVILEGED=1.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The goal for `systemd-analyze security` (lower is better; 10 is no hardening).
const EXPOSURE_GOAL: f64 = 4.0;

fn workspace() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn unit() -> PathBuf {
    workspace().join("packaging/systemd/apptheus.service")
}

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    cmd.output().unwrap_or_else(|e| panic!("cannot run {shown}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A root as the package leaves it: this host's system units (the targets the unit orders
/// itself against), the unit in /usr/lib/systemd/system and the agent where ExecStart expects
/// it, so that `verify` checks the real ExecStart.
fn root_with_agent() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("temp dir");
    let units = root.path().join("usr/lib/systemd");
    fs::create_dir_all(&units).expect("usr/lib/systemd");
    let out = run(Command::new("cp").args(["-a", "/usr/lib/systemd/system"]).arg(&units));
    assert!(out.status.success(), "copying this host's units: {}", text(&out.stderr));
    fs::copy(unit(), units.join("system/apptheus.service")).expect("copy the unit");
    let bin = root.path().join("usr/bin");
    fs::create_dir_all(&bin).expect("usr/bin");
    fs::copy(common::BIN, bin.join("apptheus")).expect("copy the agent");
    root
}

#[test]
fn unit_file_verifies_clean() {
    if common::tool("systemd-analyze", "unit_file_verifies_clean").is_none() {
        return;
    }
    let root = root_with_agent();
    // Man pages are checked in the package (packages_build_and_lint_clean), not on this host.
    let out = run(Command::new("systemd-analyze").arg("verify").arg("--man=no").arg(format!("--root={}", root.path().display())).arg("apptheus.service"));
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify is not clean ({}):\n{said}", out.status);
}

/// Exposure of a unit file: the number of the "Overall exposure level" line.
fn exposure(unit: &Path, root: Option<&Path>) -> f64 {
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(["security", "--offline=true", "--no-pager"]);
    if let Some(root) = root {
        cmd.arg(format!("--root={}", root.display()));
    }
    let out = run(cmd.arg(unit));
    let said = text(&out.stdout);
    said.lines()
        .find_map(|l| l.split("Overall exposure level for ").nth(1))
        .and_then(|rest| rest.split(':').nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level for {} ({}):\n{said}{}", unit.display(), out.status, text(&out.stderr)))
}

/// Debian's prometheus-node-exporter unit: installed, or downloaded and unpacked (not installed).
fn node_exporter_unit(dir: &Path) -> Option<PathBuf> {
    for installed in ["/usr/lib/systemd/system/prometheus-node-exporter.service", "/lib/systemd/system/prometheus-node-exporter.service"] {
        if Path::new(installed).is_file() {
            return Some(PathBuf::from(installed));
        }
    }
    let out = run(Command::new("apt-get").args(["download", "prometheus-node-exporter"]).current_dir(dir));
    if !out.status.success() {
        eprintln!("apt-get download prometheus-node-exporter: {}", text(&out.stderr));
        return None;
    }
    let deb = fs::read_dir(dir).ok()?.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| p.extension().is_some_and(|x| x == "deb"))?;
    let unpacked = dir.join("unpacked");
    let out = run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked));
    assert!(out.status.success(), "dpkg-deb -x {}: {}", deb.display(), text(&out.stderr));
    ["usr/lib/systemd/system", "lib/systemd/system"].iter().map(|d| unpacked.join(d).join("prometheus-node-exporter.service")).find(|p| p.is_file())
}

#[test]
fn unit_exposure_is_within_goal_and_below_node_exporter() {
    let test = "unit_exposure_is_within_goal_and_below_node_exporter";
    if common::tool("systemd-analyze", test).is_none() || common::tool("apt-get", test).is_none() {
        return;
    }
    let root = root_with_agent();
    let ours = exposure(Path::new("apptheus.service"), Some(root.path()));
    let download = tempfile::tempdir().expect("temp dir");
    let Some(peer) = node_exporter_unit(download.path()) else {
        assert!(std::env::var("APPTHEUS_REQUIRE_PRIVILEGED").as_deref() != Ok("1"), "{test}: cannot get Debian's prometheus-node-exporter unit");
        eprintln!("SKIP {test}: cannot get Debian's prometheus-node-exporter unit");
        return;
    };
    let theirs = exposure(&peer, None);
    println!("systemd-analyze security --offline=true: apptheus.service {ours:.1}, prometheus-node-exporter.service {theirs:.1}");
    assert!(ours <= EXPOSURE_GOAL, "apptheus.service exposure {ours} is above the goal {EXPOSURE_GOAL} (node-exporter: {theirs})");
    assert!(ours < theirs, "apptheus.service exposure {ours} is not below node-exporter's {theirs}");
}

/// Paths of the files (not directories) a tar listing names, without the leading `./`.
fn tar_files(listing: &str) -> BTreeSet<String> {
    listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').to_string())
        .collect()
}

#[test]
fn packages_build_and_lint_clean() {
    let test = "packages_build_and_lint_clean";
    for t in ["lintian", "rpmlint", "rpm", "dpkg-deb", "man"] {
        if common::tool(t, test).is_none() {
            return;
        }
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = run(Command::new(&cargo).args(["xtask", "dist", "--lint"]).current_dir(workspace()));
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    println!("{said}");
    assert!(out.status.success(), "cargo xtask dist --lint failed ({}); its output is above", out.status);
    let built = |suffix: &str| -> PathBuf {
        said.lines()
            .filter_map(|l| l.strip_prefix("dist: "))
            .map(PathBuf::from)
            .find(|p| p.to_string_lossy().ends_with(suffix))
            .unwrap_or_else(|| panic!("dist named no {suffix}"))
    };
    let (deb, rpm, tarball) = (built(".deb"), built(".rpm"), built(".tar.gz"));

    // What each package must hold (the list), in the .deb ...
    let deb_files = tar_files(&text(&run(Command::new("dpkg-deb").arg("-c").arg(&deb)).stdout));
    for path in [
        "/usr/bin/apptheus",
        "/usr/lib/systemd/system/apptheus.service",
        "/etc/default/apptheus",
        "/usr/share/man/man8/apptheus.8.gz",
        "/usr/share/man/man1/apptheus-exec.1.gz",
        "/usr/share/bash-completion/completions/apptheus",
        "/usr/share/zsh/vendor-completions/_apptheus",
        "/usr/share/fish/vendor_completions.d/apptheus.fish",
        "/usr/share/doc/apptheus/examples/prometheus.yml",
        "/usr/share/doc/apptheus/examples/apptainer.conf",
    ] {
        assert!(deb_files.contains(path), "the .deb lacks {path}: {deb_files:?}");
    }
    let control = tempfile::tempdir().expect("temp dir");
    assert!(run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(control.path())).status.success());
    let conffiles = fs::read_to_string(control.path().join("conffiles")).unwrap_or_default();
    assert!(conffiles.lines().any(|l| l == "/etc/default/apptheus"), "/etc/default/apptheus is not a conffile: {conffiles:?}");
    let postrm = fs::read_to_string(control.path().join("postrm")).unwrap_or_default();
    assert!(postrm.contains("rm -rf /var/lib/apptheus") && postrm.contains("deb-systemd-helper purge"), "postrm does not purge the state and the unit:\n{postrm}");
    let postinst = fs::read_to_string(control.path().join("postinst")).unwrap_or_default();
    assert!(postinst.contains("deb-systemd-helper enable") && postinst.contains("restart"), "postinst does not enable, or restart on upgrade:\n{postinst}");

    // ... the tarball holds the same files ...
    let tar_listing = text(&run(Command::new("tar").arg("-tvzf").arg(&tarball)).stdout);
    assert_eq!(tar_files(&tar_listing), deb_files, "the tarball and the .deb differ");

    // ... and the .rpm, with /etc/sysconfig instead of /etc/default.
    let rpm_files: BTreeSet<String> = text(&run(Command::new("rpm").args(["-qlp"]).arg(&rpm)).stdout).lines().map(str::to_string).collect();
    for path in [
        "/usr/bin/apptheus",
        "/usr/lib/systemd/system/apptheus.service",
        "/etc/sysconfig/apptheus",
        "/usr/share/man/man8/apptheus.8.gz",
        "/usr/share/man/man1/apptheus-exec.1.gz",
        "/usr/share/bash-completion/completions/apptheus",
        "/usr/share/zsh/site-functions/_apptheus",
        "/usr/share/fish/vendor_completions.d/apptheus.fish",
        "/usr/share/doc/apptheus/examples/prometheus.yml",
    ] {
        assert!(rpm_files.contains(path), "the .rpm lacks {path}: {rpm_files:?}");
    }
    let config = text(&run(Command::new("rpm").args(["-qcp"]).arg(&rpm)).stdout);
    assert!(config.lines().any(|l| l == "/etc/sysconfig/apptheus"), "/etc/sysconfig/apptheus is not a config file: {config:?}");
    let scripts = text(&run(Command::new("rpm").args(["-qp", "--scripts"]).arg(&rpm)).stdout);
    for wanted in ["systemctl --no-reload preset apptheus.service", "systemctl try-restart apptheus.service", "disable --now apptheus.service"] {
        assert!(scripts.contains(wanted), "the .rpm scriptlets lack {wanted:?}:\n{scripts}");
    }

    // The man pages render without a warning and document every flag of --help.
    let pages = tempfile::tempdir().expect("temp dir");
    assert!(run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(pages.path())).status.success());
    let help = text(&run(Command::new(common::BIN).arg("--help")).stdout);
    for (page, help) in [("usr/share/man/man8/apptheus.8.gz", help), ("usr/share/man/man1/apptheus-exec.1.gz", text(&run(Command::new(common::BIN).args(["exec", "--help"])).stdout))] {
        let out = run(Command::new("man").args(["--warnings", "-E", "ascii", "-l"]).arg(pages.path().join(page)).env("MANWIDTH", "100").env("MAN_KEEP_STDERR", "1"));
        let rendered = text(&out.stdout);
        assert!(out.status.success() && out.stderr.is_empty(), "man {page}: {}", text(&out.stderr));
        let flags: BTreeSet<&str> = help.split_whitespace().filter(|w| w.starts_with("--")).map(|w| w.trim_end_matches([',', '=', '.'])).map(|w| w.split(['=', '<', '[']).next().unwrap_or(w)).collect();
        for flag in flags {
            assert!(rendered.contains(flag), "{page} does not document {flag}");
        }
    }
}

/// What the agent sent to a NOTIFY_SOCKET of the test's own, in order.
fn notifications(socket: &std::os::unix::net::UnixDatagram) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    got
}

fn count(messages: &[String], line: &str) -> usize {
    messages.iter().filter(|m| m.lines().any(|l| l == line)).count()
}

/// Type=notify and WatchdogSec= as systemd drives them, with the real agent: READY=1 once the
/// launcher socket and `/metrics` answer, WATCHDOG=1 every half period while the sampling thread
/// answers, none while it is stuck (a fault point stalls it), STOPPING=1 at shutdown.
#[test]
fn notifies_ready_and_feeds_the_watchdog_only_while_sampling_answers() {
    let test = "notifies_ready_and_feeds_the_watchdog_only_while_sampling_answers";
    if !common::privileged(test) || !common::failpoints(test) {
        return;
    }
    for stalled in [false, true] {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind the notify socket");
        socket.set_read_timeout(Some(std::time::Duration::from_millis(100))).expect("timeout");
        let mut env = vec![("NOTIFY_SOCKET".to_string(), path.display().to_string()), ("WATCHDOG_USEC".to_string(), "400000".to_string())];
        if stalled {
            env.push(("FAILPOINTS".to_string(), "monitor::pass=sleep(1500)".to_string()));
        }
        let mut agent = common::Agent::start_with(common::AgentOptions { env, ..Default::default() });
        // start_with returned once /metrics answered; READY=1 must be there already, and the
        // socket must have been bound before it was sent.
        let early = notifications(&socket);
        assert!(count(&early, "READY=1") == 1, "no READY=1 by the time /metrics answered: {early:?}");
        assert!(agent.socket.exists(), "READY=1 sent but {} does not exist", agent.socket.display());
        std::thread::sleep(std::time::Duration::from_secs(3));
        let later = notifications(&socket);
        let pings = count(&early, "WATCHDOG=1") + count(&later, "WATCHDOG=1");
        println!("stalled={stalled}: {pings} watchdog pings in 3 s");
        agent.stop();
        let last = notifications(&socket);
        assert!(count(&last, "STOPPING=1") == 1, "no STOPPING=1 at shutdown: {last:?}");
        if stalled {
            // The first ping is answered before the first stalled pass; after that each pass
            // takes 1.5 s, far past the 0.2 s a ping may wait.
            assert!(pings <= 3, "{pings} watchdog pings while the sampling thread was stuck");
            assert!(agent.log_text().contains("watchdog pings withheld"), "no log line for the withheld pings:\n{}", agent.log_text());
        } else {
            // 3 s at one ping per 0.2 s: 15 expected; allow a loaded machine half.
            assert!(pings >= 7, "only {pings} watchdog pings in 3 s with a 0.4 s watchdog");
        }
    }
}
