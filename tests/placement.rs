//! Scheduler-safe placement on this machine's cgroups (hybrid: v1 controllers and a cgroup2
//! mount): a launcher started under a limit stays under it, whatever the agent does to monitor
//! it, and `--placement=move` says what it drops. Every cgroup made here lies below this test
//! process's own cgroups; only processes the test started are moved or killed.
//!
//! On a machine without v1 memory and pids hierarchies these tests have nothing to set limits in
//! (the pure cgroup v2 case is the VM test's), and say so.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use apptheus::ebpf::query::{programs_at, INGRESS};
use common::{cleanup_parent, own_cgroup_dirs, privileged, wait_for, Agent, AgentOptions, BIN};

const MIB: u64 = 1 << 20;

/// A cgroup below this process's own in one v1 hierarchy, with limits set; removed (with what
/// the agent nested in it, once empty) when dropped.
struct Limited {
    dir: PathBuf,
}

impl Limited {
    fn new(controller: &str, settings: &[(&str, String)]) -> Option<Limited> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let own = own_cgroup_dirs().into_iter().find(|d| d.starts_with(format!("/sys/fs/cgroup/{controller}")))?;
        let dir = own.join(format!("limits-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
        std::fs::create_dir(&dir).unwrap();
        for (file, value) in settings {
            std::fs::write(dir.join(file), value).unwrap_or_else(|e| panic!("{}/{file}: {e}", dir.display()));
        }
        Some(Limited { dir })
    }
}

/// A cgroup this test made, removed (with what runs in it) when dropped, also on a panic.
struct Removed(PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        cleanup_parent(std::slice::from_ref(&self.0));
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        cleanup_parent(std::slice::from_ref(&self.dir));
    }
}

fn v1_available(test: &str, controller: &str) -> bool {
    let here = Path::new("/sys/fs/cgroup").join(controller).join("cgroup.procs").exists();
    if !here {
        eprintln!("{test}: no v1 {controller} hierarchy here; the pure cgroup v2 case is covered by `cargo xtask vm-test`");
    }
    here
}

/// `apptheus exec -- CMD` started inside `dir` (moved there by a root shell before the exec),
/// as `uid` when given. Recorded for clean-up by the agent harness.
fn launch_in(agent: &mut Agent, dir: &Path, uid: Option<u32>, cmd: &[&str]) -> Child {
    let mut c = Command::new("sh");
    c.arg("-c").arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#).arg(dir);
    if let Some(uid) = uid {
        c.arg("setpriv").args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into()]);
    }
    let child = c
        .arg(BIN)
        .arg("exec")
        .arg(format!("--socket.path={}", agent.socket.display()))
        .arg("--")
        .args(cmd)
        .env("APPTHEUS_EXEC_VERBOSE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn launcher");
    agent.started.push(child.id());
    child
}

/// Kill a launcher the test no longer needs and collect it (its command, in the container, is
/// killed with the container's cgroup at the end).
fn reap(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn finish(child: Child) -> (Option<i32>, String, String) {
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn memory_limit_100m() -> Vec<(&'static str, String)> {
    let mut s = vec![("memory.limit_in_bytes", (100 * MIB).to_string())];
    // Without a memory+swap limit the excess could go to swap where there is swap.
    if Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists() {
        s.push(("memory.memsw.limit_in_bytes", (100 * MIB).to_string()));
    }
    s
}

/// The reproduction of the scheduler-safe placement issue: a launcher in a cgroup limited to
/// 100 MiB, placed with the default placement, touches 300 MiB and is OOM-killed, as it would
/// be without the agent. Its container is nested in that cgroup and has memory series.
#[test]
fn a_memory_limit_still_applies_after_placement() {
    if !privileged("a_memory_limit_still_applies_after_placement") || !v1_available("a_memory_limit_still_applies_after_placement", "memory") {
        return;
    }
    let limited = Limited::new("memory", &memory_limit_100m()).unwrap();
    let mut agent = Agent::start();
    let hog = launch_in(&mut agent, &limited.dir, None, &["python3", "-c", "b = bytearray(300 << 20); print('survived')"]);
    let hog_pid = hog.id();
    let (status, stdout, stderr) = finish(hog);
    assert_eq!(status, Some(137), "the 300 MiB workload must be OOM-killed (SIGKILL: 137); stdout {stdout:?} stderr {stderr}");
    assert!(stderr.contains("apptheus exec: container "), "not placed: {stderr}");
    let log = agent.log_text();
    assert!(
        log.contains("nesting the container in the cgroup of its caller") && log.contains("memory.limit_in_bytes=104857600"),
        "auto placement must nest, naming the limit: {log}"
    );

    // A container that stays: nested in the limited cgroup, with its own memory series.
    let sleeper = launch_in(&mut agent, &limited.dir, None, &["sleep", "30"]);
    let id = format!("apptheus_{}", sleeper.id());
    let nested = limited.dir.join(&id);
    wait_for(Duration::from_secs(10), "the nested container cgroup", || nested.is_dir().then_some(()));
    let usage = wait_for(Duration::from_secs(10), "memory usage of the nested container", || {
        agent.scrape().one("container_memory_usage_bytes", &[("name", &id)]).filter(|v| *v > 0.0)
    });
    assert!(usage > 0.0);
    assert_ne!(hog_pid, 0);
    reap(sleeper);
    drop(agent);
}

/// `--placement=move` keeps the Go Apptheus layout and names, in one log line, the limit the
/// container left.
#[test]
fn move_names_the_limits_it_drops() {
    if !privileged("move_names_the_limits_it_drops") || !v1_available("move_names_the_limits_it_drops", "memory") {
        return;
    }
    let limited = Limited::new("memory", &memory_limit_100m()).unwrap();
    let mut agent = Agent::start_with(AgentOptions { extra: vec!["--placement=move".into()], ..AgentOptions::default() });
    let launcher = launch_in(&mut agent, &limited.dir, None, &["sleep", "2"]);
    let id = format!("apptheus_{}", launcher.id());
    let moved = agent.container_dirs(&id);
    wait_for(Duration::from_secs(10), "the container under --cgroup.parent", || moved.iter().any(|d| d.is_dir()).then_some(()));
    assert!(!limited.dir.join(&id).exists(), "move must not nest");
    let warning = wait_for(Duration::from_secs(5), "the warning", || {
        agent.log_text().lines().find(|l| l.contains("drops what its caller was under")).map(str::to_string)
    });
    assert!(warning.contains(&id) && warning.contains("memory.limit_in_bytes=104857600"), "{warning}");
    let (status, _, stderr) = finish(launcher);
    assert_eq!(status, Some(0), "{stderr}");
}

/// Hostile: a user for whom `apptheus exec` is trusted cannot use it to leave their pids limit.
#[test]
fn a_user_cannot_leave_their_pids_limit() {
    if !privileged("a_user_cannot_leave_their_pids_limit") || !v1_available("a_user_cannot_leave_their_pids_limit", "pids") {
        return;
    }
    let limited = Limited::new("pids", &[("pids.max", "6".to_string())]).unwrap();
    let mut agent = Agent::start();
    // nobody must reach the socket: the harness's directory is private.
    for d in [agent.dir.path().to_path_buf(), agent.socket.parent().unwrap().to_path_buf()] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let forker = launch_in(
        &mut agent,
        &limited.dir,
        Some(65534),
        &["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 20 & done; echo all-forked"],
    );
    let id = format!("apptheus_{}", forker.id());
    let (status, stdout, stderr) = finish(forker);
    assert!(stderr.contains("apptheus exec: container "), "not placed: {stderr}");
    assert!(!stdout.contains("all-forked"), "12 forks under pids.max=6 must fail: status {status:?}, {stderr}");
    assert!(limited.dir.join(&id).is_dir(), "the container must be nested below the limit: {}", agent.log_text());
    let in_limit: usize = std::fs::read_to_string(limited.dir.join("pids.current")).unwrap().trim().parse().unwrap();
    assert!(in_limit <= 6, "pids.current {in_limit} above the limit");
}

/// Job labels from the caller's cgroup path: a Slurm-like tree below this process's cgroup
/// gives `slurm_job_id`, and it wins over the same label from the environment.
#[test]
fn slurm_job_labels_come_from_the_cgroup_path() {
    if !privileged("slurm_job_labels_come_from_the_cgroup_path") || !v1_available("slurm_job_labels_come_from_the_cgroup_path", "memory") {
        return;
    }
    let limited = Limited::new("memory", &[]).unwrap();
    let task = limited.dir.join("job_42/step_0/task_0");
    std::fs::create_dir_all(&task).unwrap();
    let mut agent = Agent::start_with(AgentOptions {
        extra: vec!["--metrics.env-labels=SLURM_JOB_ID".into(), "--placement=nest".into()],
        ..AgentOptions::default()
    });
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
        .arg(&task)
        .arg(BIN)
        .arg("exec")
        .arg(format!("--socket.path={}", agent.socket.display()))
        .args(["--", "sleep", "20"])
        .env("SLURM_JOB_ID", "666")
        .stderr(Stdio::null());
    let launcher = c.spawn().unwrap();
    agent.started.push(launcher.id());
    let id = format!("apptheus_{}", launcher.id());
    let labels = wait_for(Duration::from_secs(10), "the container's series", || {
        let m = agent.scrape();
        let v = m.label_values("container_start_time_seconds", "slurm_job_id");
        let s = m.label_values("container_start_time_seconds", "slurm_step_id");
        (!v.is_empty()).then_some((v, s))
    });
    reap(launcher);
    assert_eq!(labels, (vec!["42".to_string()], vec!["0".to_string()]), "{id}");
}

/// A caller whose cgroup goes away between the decision and the mkdir is refused, and nothing of
/// the container is left in any hierarchy.
#[test]
fn a_caller_whose_cgroup_vanishes_mid_placement_is_refused() {
    let test = "a_caller_whose_cgroup_vanishes_mid_placement_is_refused";
    if !privileged(test) || !v1_available(test, "memory") || !common::failpoints(test) {
        return;
    }
    let limited = Limited::new("memory", &memory_limit_100m()).unwrap();
    let mut agent = Agent::start_with(AgentOptions {
        env: vec![("FAILPOINTS".into(), "placement::decided=sleep(4000)".into())],
        ..AgentOptions::default()
    });
    let launcher = launch_in(&mut agent, &limited.dir, None, &["true"]);
    let id = format!("apptheus_{}", launcher.id());
    wait_for(Duration::from_secs(10), "the placement held after its decision", || {
        agent.log_text().contains("point=placement::decided").then_some(())
    });
    // Someone else moves the caller out and removes its cgroup meanwhile.
    let own_memory = limited.dir.parent().unwrap().to_path_buf();
    std::fs::write(own_memory.join("cgroup.procs"), launcher.id().to_string()).unwrap();
    std::fs::remove_dir(&limited.dir).unwrap();
    let (status, _, stderr) = finish(launcher);
    assert_eq!(status, Some(125), "{stderr}");
    assert!(stderr.contains("went away during placement"), "{stderr}");
    let left: Vec<PathBuf> = own_cgroup_dirs()
        .into_iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten().map(|e| e.path()))
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy() == id))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A caller whose cgroup takes no more children (`cgroup.max.descendants`) is refused with that
/// reason, and nothing is left behind.
#[test]
fn a_caller_at_cgroup_max_descendants_is_refused() {
    let test = "a_caller_at_cgroup_max_descendants_is_refused";
    if !privileged(test) {
        return;
    }
    // cgroup.max.descendants is a cgroup v2 file: here, the unified hierarchy.
    let Some(unified_own) = own_cgroup_dirs().into_iter().find(|d| {
        std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
            m.lines().any(|l| l.contains(" - cgroup2 ") && d.starts_with(l.split(' ').nth(4).unwrap_or("/nonexistent")))
        })
    }) else {
        eprintln!("{test}: no cgroup2 hierarchy");
        return;
    };
    let full = unified_own.join(format!("full-{}", std::process::id()));
    std::fs::create_dir(&full).unwrap();
    let _remove = Removed(full.clone());
    std::fs::write(full.join("cgroup.max.descendants"), "0").unwrap();
    let mut agent = Agent::start_with(AgentOptions { extra: vec!["--placement=nest".into()], ..AgentOptions::default() });
    let launcher = launch_in(&mut agent, &full, None, &["true"]);
    let id = format!("apptheus_{}", launcher.id());
    let (status, _, stderr) = finish(launcher);
    let mut left: Vec<PathBuf> = std::fs::read_dir(&full).unwrap().flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    // nor in the other hierarchies, where the nested directories were made first
    left.extend(own_cgroup_dirs().into_iter().map(|d| d.join(&id)).filter(|p| p.exists()));
    assert_eq!(status, Some(125), "{stderr}");
    assert!(stderr.contains("cgroup.max.descendants"), "{stderr}");
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// A nested container outlives an agent killed with SIGKILL: the restarted agent finds it by its
/// mark, wherever it is, and monitors it again.
#[test]
fn a_restarted_agent_adopts_its_nested_containers() {
    let test = "a_restarted_agent_adopts_its_nested_containers";
    if !privileged(test) || !v1_available(test, "memory") {
        return;
    }
    let limited = Limited::new("memory", &memory_limit_100m()).unwrap();
    let mut agent = Agent::start();
    let sleeper = launch_in(&mut agent, &limited.dir, None, &["sleep", "30"]);
    let id = format!("apptheus_{}", sleeper.id());
    let nested = limited.dir.join(&id);
    wait_for(Duration::from_secs(10), "the nested container", || nested.is_dir().then_some(()));
    agent.kill9_and_restart();
    wait_for(Duration::from_secs(10), "the container adopted again", || {
        agent.log_text().lines().any(|l| l.contains("re-adopted a running container") && l.contains(&id)).then_some(())
    });
    wait_for(Duration::from_secs(10), "its series after the restart", || {
        agent.scrape().one("container_memory_usage_bytes", &[("name", &id)]).filter(|v| *v > 0.0)
    });
    assert!(nested.is_dir(), "the nested cgroup must stay where it was");
    reap(sleeper);
}

/// A cgroup_skb program attached to the caller's cgroup without `BPF_F_ALLOW_MULTI` (say, a
/// site's network policy) would stop applying to a cgroup below it that gets a program of its
/// own: the agent then attaches none to the nested container, and the policy stays in force.
#[test]
fn a_network_policy_above_a_nested_container_stays_in_force() {
    let test = "a_network_policy_above_a_nested_container_stays_in_force";
    if !privileged(test) {
        return;
    }
    let Some(unified) = own_cgroup_dirs().into_iter().find(|d| d.starts_with("/sys/fs/cgroup/unified") || d == Path::new("/sys/fs/cgroup")) else {
        eprintln!("{test}: no cgroup2 hierarchy");
        return;
    };
    let policy_dir = unified.join(format!("policy-{}", std::process::id()));
    std::fs::create_dir(&policy_dir).unwrap();
    let _remove = Removed(policy_dir.clone());
    let prog = bpf::load_allow_all_skb().expect("loading a cgroup_skb program");
    let policy = std::fs::File::open(&policy_dir).unwrap();
    bpf::attach(&policy, &prog, INGRESS, bpf::ALLOW_OVERRIDE).expect("attaching it with BPF_F_ALLOW_OVERRIDE");
    let mut agent = Agent::start_with(AgentOptions { extra: vec!["--placement=nest".into()], ..AgentOptions::default() });
    let sleeper = launch_in(&mut agent, &policy_dir, None, &["sleep", "20"]);
    let id = format!("apptheus_{}", sleeper.id());
    let nested = policy_dir.join(&id);
    wait_for(Duration::from_secs(10), "the nested container", || nested.is_dir().then_some(()));
    let warned = wait_for(Duration::from_secs(10), "the warning", || {
        agent.log_text().lines().find(|l| l.contains(&id) && l.contains("would override")).map(str::to_string)
    });
    reap(sleeper);
    // Programs in force, as the agent itself queries them.
    let in_force = programs_at(&nested, INGRESS, true).expect("BPF_PROG_QUERY").ids;
    let the_policy = programs_at(&policy_dir, INGRESS, true).expect("BPF_PROG_QUERY").ids;
    drop(agent);
    assert_eq!(the_policy.len(), 1);
    assert_eq!(in_force, the_policy, "the policy, and nothing of ours, in force at the container; {warned}");
}

/// Loading and attaching a cgroup BPF program for the test above (aya loads programs from ELF
/// objects only; queries use the agent's own `programs_at`).
mod bpf {
    use std::fs::File;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    pub const ALLOW_OVERRIDE: u32 = 1;
    const PROG_LOAD: libc::c_long = 5;
    const PROG_ATTACH: libc::c_long = 8;
    const CGROUP_SKB: u32 = 8;

    fn bpf(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<i64> {
        // SAFETY: attr is a zero-padded bpf_attr of the size passed.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as libc::c_uint) };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    fn put(attr: &mut [u8; 128], offset: usize, bytes: &[u8]) {
        attr[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    /// `r0 = 1; exit`: lets every packet through.
    pub fn load_allow_all_skb() -> std::io::Result<OwnedFd> {
        let insns: [u8; 16] = [0xb7, 0, 0, 0, 1, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0];
        let license = b"GPL\0";
        let mut attr = [0u8; 128];
        put(&mut attr, 0, &CGROUP_SKB.to_ne_bytes());
        put(&mut attr, 4, &2u32.to_ne_bytes());
        put(&mut attr, 8, &(insns.as_ptr() as u64).to_ne_bytes());
        put(&mut attr, 16, &(license.as_ptr() as u64).to_ne_bytes());
        let fd = bpf(PROG_LOAD, &mut attr)?;
        // SAFETY: the kernel returned a new descriptor we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    pub fn attach(cgroup: &File, prog: &OwnedFd, attach_type: u32, flags: u32) -> std::io::Result<()> {
        let mut attr = [0u8; 128];
        put(&mut attr, 0, &(cgroup.as_raw_fd() as u32).to_ne_bytes());
        put(&mut attr, 4, &(prog.as_raw_fd() as u32).to_ne_bytes());
        put(&mut attr, 8, &attach_type.to_ne_bytes());
        put(&mut attr, 12, &flags.to_ne_bytes());
        bpf(PROG_ATTACH, &mut attr).map(|_| ())
    }
}

/// Bad placement input stops the start with one line and a non-zero status, having made nothing.
#[test]
fn bad_placement_input_stops_the_start_with_one_line() {
    let test = "bad_placement_input_stops_the_start_with_one_line";
    if !privileged(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("gateway.sock");
    for (flag, says) in [
        ("--placement=elsewhere", "elsewhere"),
        ("--metrics.cgroup-labels=job_(?P<id>[0-9]+", "does not compile"),
        ("--metrics.cgroup-labels=job_[0-9]+", "no named group"),
    ] {
        let out = Command::new(BIN)
            .arg(flag)
            .arg(format!("--socket.path={}", socket.display()))
            .arg("--web.listen-address=127.0.0.1:0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag}: started");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{flag}: not one line: {stderr}");
        assert!(stderr.contains(says), "{flag}: {stderr}");
        assert!(!socket.exists(), "{flag}: the socket was made");
    }
}
