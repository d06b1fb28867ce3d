//! A root daemon that never writes through a path someone else controls (issue 19). An
//! unprivileged user (`nobody`, through `setpriv`) plants symlinks at every name the agent
//! writes; `fs.protected_symlinks` is 0 on the test machines, so nothing but the agent protects
//! the files they point at. Each test checks that those files keep their content and mode.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use common::*;

const NOBODY: u32 = 65534;

/// Run `args` as nobody.
fn as_nobody(args: &[&str]) {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(args)
        .output()
        .expect("setpriv");
    assert!(out.status.success(), "as nobody: {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A directory like /tmp: world-writable and sticky.
fn sticky_dir(base: &Path, name: &str) -> PathBuf {
    let dir = base.join(name);
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    dir
}

/// A root-owned file elsewhere that an attacker would like the agent to overwrite or chmod.
struct Victim(PathBuf);

impl Victim {
    fn new(base: &Path) -> Victim {
        let dir = base.join("root-only");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.join("precious");
        std::fs::write(&path, "precious\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Victim(path)
    }

    fn assert_untouched(&self, what: &str) {
        let meta = std::fs::metadata(&self.0).unwrap();
        assert_eq!(std::fs::read_to_string(&self.0).unwrap(), "precious\n", "{what}: the victim's content changed");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600, "{what}: the victim's mode changed");
        assert_eq!(meta.uid(), 0, "{what}: the victim's owner changed");
    }
}

fn protected_symlinks() -> String {
    std::fs::read_to_string("/proc/sys/fs/protected_symlinks").unwrap_or_default().trim().to_string()
}

/// The test's base directory, reachable by nobody (a tempdir is 0700).
fn base() -> tempfile::TempDir {
    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    base
}

fn start_error(args: &[String]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert_ne!(out.status.code(), Some(0), "{args:?} started");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim().lines().count(), 1, "{args:?}: not one line: {err}");
    err
}

fn flags(socket: &Path, extra: &[String]) -> Vec<String> {
    let mut args = vec![
        format!("--socket.path={}", socket.display()),
        format!("--web.listen-address=127.0.0.1:{}", free_port()),
        "--cgroup.parent=apptheus-never-made".to_string(),
        format!("--trust.path={BIN}"),
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn symlinks_planted_at_the_persistence_names_change_no_other_file() {
    if !privileged("symlinks_planted_at_the_persistence_names_change_no_other_file") {
        return;
    }
    eprintln!("fs.protected_symlinks = {}", protected_symlinks());
    let base = base();
    let victim = Victim::new(base.path());
    let state = sticky_dir(base.path(), "state");
    let store = state.join("store.json");

    // A corrupt store of the agent's, and nobody's symlinks at the names it would be set aside to.
    std::fs::write(&store, "not json").unwrap();
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    for t in now.saturating_sub(2)..now + 30 {
        as_nobody(&["ln", "-s", &victim.0.display().to_string(), &state.join(format!("store.json.corrupt-{t}")).display().to_string()]);
    }
    let mut agent = Agent::start_with(AgentOptions {
        extra: vec![format!("--persistence.file={}", store.display()), "--persistence.interval=100ms".into()],
        ..Default::default()
    });
    victim.assert_untouched("set aside past nobody's .corrupt symlinks");
    let aside: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the corrupt store was not set aside beside the symlinks: {aside:?}\n{}", agent.log_text());
    assert_eq!(std::fs::read_to_string(state.join(&aside[0])).unwrap(), "not json", "the corrupt store's content was not kept");

    // The temp file's old, predictable name (and a few guesses) planted after the start.
    let pid = agent.pid();
    for name in [format!(".store.json.tmp-{pid}"), ".store.json.tmp".into(), "store.json.tmp".into()] {
        as_nobody(&["ln", "-s", &victim.0.display().to_string(), &state.join(name).display().to_string()]);
    }
    let mut launcher = agent.exec(&["sleep", "30"]);
    let id = id_of(&launcher);
    wait_for(Duration::from_secs(10), "the container in the store file", || {
        std::fs::read_to_string(&store).ok().filter(|t| t.contains(&id)).map(|_| ())
    });
    std::thread::sleep(Duration::from_millis(500)); // a few more writes
    victim.assert_untouched("persistence writes past nobody's temp-name symlinks");
    let meta = std::fs::symlink_metadata(&store).unwrap();
    assert!(meta.file_type().is_file() && meta.uid() == 0, "store.json is not root's regular file");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    launcher.kill().unwrap();
    launcher.wait().unwrap();
    drop(agent);

    // nobody's symlink at the store's own name: the agent refuses to start, in one line.
    std::fs::remove_file(&store).unwrap();
    as_nobody(&["ln", "-s", &victim.0.display().to_string(), &store.display().to_string()]);
    let socket = base.path().join("run/gw.sock");
    let err = start_error(&flags(&socket, &[format!("--persistence.file={}", store.display())]));
    assert!(err.contains("--persistence.file") && err.contains("belongs to uid 65534"), "{err}");
    victim.assert_untouched("a start with nobody's symlink at the store's name");
    assert!(!socket.exists(), "a refused start left the socket");
}

#[test]
fn unsafe_directories_are_refused_in_one_line() {
    if !privileged("unsafe_directories_are_refused_in_one_line") {
        return;
    }
    let base = base();
    let victim = Victim::new(base.path());
    // World-writable without the sticky bit: anyone could rename the agent's files.
    let open = base.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = start_error(&flags(&open.join("gw.sock"), &[]));
    assert!(err.contains("--socket.path") && err.contains("writable by other users"), "{err}");
    let err = start_error(&flags(&base.path().join("run/gw.sock"), &[format!("--persistence.file={}", open.join("s.json").display())]));
    assert!(err.contains("--persistence.file") && err.contains("writable by other users"), "{err}");
    // A directory of nobody's, and a symlink of nobody's to a directory.
    let theirs = base.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    let err = start_error(&flags(&theirs.join("gw.sock"), &[]));
    assert!(err.contains("owned by uid 65534"), "{err}");
    let sticky = sticky_dir(base.path(), "sticky");
    as_nobody(&["ln", "-s", &base.path().join("root-only").display().to_string(), &sticky.join("link").display().to_string()]);
    let err = start_error(&flags(&sticky.join("link/gw.sock"), &[]));
    assert!(err.contains("symlink owned by uid 65534"), "{err}");
    // nobody's symlink at the socket's name in a sticky directory.
    as_nobody(&["ln", "-s", &victim.0.display().to_string(), &sticky.join("gw.sock").display().to_string()]);
    let err = start_error(&flags(&sticky.join("gw.sock"), &[]));
    assert!(err.contains("belongs to uid 65534"), "{err}");
    victim.assert_untouched("refused starts");
    assert!(std::fs::symlink_metadata(sticky.join("gw.sock")).unwrap().file_type().is_symlink(), "nobody's symlink was removed");
}

/// The old code bound the socket, then chmod'ed its path to 0777: swapping the path for a
/// symlink in between made any file 0777. A fault point holds the agent right after `bind`.
#[test]
fn the_socket_path_swapped_after_bind_changes_no_mode() {
    if !privileged("the_socket_path_swapped_after_bind_changes_no_mode") {
        return;
    }
    if !failpoints("the_socket_path_swapped_after_bind_changes_no_mode") {
        return;
    }
    let base = base();
    let victim = Victim::new(base.path());
    let socket = base.path().join("run/gw.sock");
    let log_path = base.path().join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let port = free_port();
    let mut args = flags(&socket, &["--log.level=debug".into()]);
    args[1] = format!("--web.listen-address=127.0.0.1:{port}");
    let parent = unique("apptheus-paths");
    args[2] = format!("--cgroup.parent={parent}");
    let mut agent = Stopped(
        parent,
        Command::new(BIN)
            .args(&args)
            .env("FAILPOINTS", "launcher::socket_bound=sleep(2000)")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_for(Duration::from_secs(10), "the agent held right after bind", || {
        std::fs::read_to_string(&log_path).unwrap().contains("point=launcher::socket_bound").then_some(())
    });
    let mode = std::fs::symlink_metadata(&socket).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o777, "the socket node is not 0777 from its creation");
    std::fs::rename(&socket, base.path().join("run/moved.sock")).unwrap();
    std::os::unix::fs::symlink(&victim.0, &socket).unwrap();
    wait_for(Duration::from_secs(10), "the agent serving", || http_get(port, "/metrics").ok().map(|_| ()));
    victim.assert_untouched("the socket path swapped for a symlink after bind");
    // The socket it bound still takes launchers (through its moved name).
    let out = Command::new(BIN).args(["exec", &format!("--socket.path={}", base.path().join("run/moved.sock").display()), "--", "true"]).output().unwrap();
    assert!(out.status.success(), "exec through the bound socket: {}", String::from_utf8_lossy(&out.stderr));
    agent.stop();
    // At exit it removes only its own socket: the symlink stays, the victim too.
    assert!(std::fs::symlink_metadata(&socket).unwrap().file_type().is_symlink());
    victim.assert_untouched("the agent's exit");
}

/// An agent started by hand (with its `--cgroup.parent`), stopped with SIGTERM (by its recorded
/// pid) also when the test fails; its cgroups are removed after it.
struct Stopped(String, std::process::Child);

impl Stopped {
    fn stop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.1.id().to_string()]).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.1.try_wait().unwrap().is_none() {
            assert!(std::time::Instant::now() < deadline, "the agent did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if matches!(self.1.try_wait(), Ok(None)) {
            let _ = Command::new("kill").args(["-TERM", &self.1.id().to_string()]).status();
            let _ = self.1.wait();
        }
        // A container that ended just before the stop may still have its (empty) cgroup.
        cleanup_parent(&own_cgroup_dirs().iter().map(|d| d.join(&self.0)).collect::<Vec<_>>());
    }
}

/// A launcher with the largest environment the kernel lets a process start with (execve takes
/// at most 6 MiB of arguments and environment, whatever the stack limit: 3/4 of _STK_LIM; a
/// 100 MiB one cannot exist without CAP_SYS_RESOURCE, which the agent does not grant). Its
/// labels come from the capped prefix, the agent's memory stays bounded, and a debug line
/// says the environment was cut.
#[test]
fn a_launcher_with_a_huge_environment_is_placed_and_the_agent_stays_small() {
    if !privileged("a_launcher_with_a_huge_environment_is_placed_and_the_agent_stays_small") {
        return;
    }
    let python = real_python();
    let mut agent = Agent::start_with(AgentOptions {
        trust: vec![python.clone()],
        extra: vec!["--metrics.env-labels=APPTHEUS_A_EARLY,APPTHEUS_Z_LATE".into()],
        ..Default::default()
    });
    let hwm = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok()).unwrap()
    };
    let before = hwm(agent.pid());
    let big = "x".repeat(120 * 1024);
    let script = "import socket, sys, time\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n\
                  print(s.makefile().readline().strip(), flush=True)\ntime.sleep(30)\n";
    let mut ids = Vec::new();
    for _ in 0..5 {
        let mut cmd = Command::new(&python);
        cmd.args(["-c", script]).arg(&agent.socket).env_clear().env("APPTHEUS_A_EARLY", "seen");
        // 44 × 120 KiB = 5.2 MiB, then a variable past the agent's 256 KiB cap (Command passes
        // the environment sorted by name).
        cmd.envs((0..44).map(|i| (format!("APPTHEUS_BIG_{i}"), big.clone()))).env("APPTHEUS_Z_LATE", "beyond-the-cap");
        // execve's room for the environment is a quarter of the stack limit (at most 6 MiB).
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
                if libc::setrlimit(libc::RLIMIT_STACK, &unlimited) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (child, ack) = spawn_and_read_answer(&mut cmd);
        agent.started.push(child.id());
        let size = std::fs::read(format!("/proc/{}/environ", child.id())).map(|e| e.len()).unwrap_or(0);
        assert_eq!(ack["status"], "ok", "{ack}");
        assert!(size > 5 * 1024 * 1024, "the environment is only {size} bytes");
        ids.push((ack["id"].as_str().unwrap().to_string(), child));
    }
    let m = wait_for(Duration::from_secs(10), "the containers sampled", || {
        let m = agent.scrape();
        ids.iter().all(|(id, _)| m.one("container_memory_usage_bytes", &[("name", id)]).is_some()).then_some(m)
    });
    for (id, _) in &ids {
        let labels = &m.samples.iter().find(|(n, l, _)| n == "container_memory_usage_bytes" && l.get("name") == Some(id)).unwrap().1;
        assert_eq!(labels.get("apptheus_a_early").map(String::as_str), Some("seen"), "{labels:?}");
        assert!(!labels.contains_key("apptheus_z_late"), "a label from past the cap: {labels:?}");
    }
    let grown = hwm(agent.pid()).saturating_sub(before);
    eprintln!("agent peak RSS grew by {grown} kB placing 5 launchers with 5.2 MiB environments");
    assert!(grown < 8 * 1024, "the agent's peak RSS grew by {grown} kB");
    assert!(agent.log_text().contains("environment larger than the cap"), "no debug line about the cut");
    for (_, mut child) in ids {
        let _ = child.kill();
        let _ = child.wait();
    }
}
