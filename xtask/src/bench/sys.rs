//! What the harness reads from the machine: /proc accounting of a process, the cgroup
//! hierarchies and where a process sits in them, load, machine and commit descriptions, and
//! the process-group/signal plumbing every started process goes through.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The hierarchies the agent reads in hybrid / v1 mode, and the unified one.
pub const V1_CONTROLLERS: [&str; 5] = ["cpu", "cpuacct", "memory", "pids", "blkio"];
pub const UNIFIED: &str = "unified";

/// The files the agent samples per container per interval (hybrid mode), by hierarchy.
/// The floor reads exactly these.
pub const SAMPLED_FILES: &[(&str, &str)] = &[
    (UNIFIED, "cpu.stat"),
    ("cpu", "cpu.stat"),
    ("memory", "memory.usage_in_bytes"),
    ("memory", "memory.stat"),
    ("memory", "memory.failcnt"),
    ("memory", "memory.limit_in_bytes"),
    ("memory", "memory.memsw.limit_in_bytes"),
    ("memory", "memory.oom_control"),
    ("pids", "pids.current"),
    ("pids", "pids.max"),
    ("blkio", "blkio.throttle.io_service_bytes_recursive"),
    ("blkio", "blkio.throttle.io_serviced_recursive"),
    (UNIFIED, "cgroup.events"),
    (UNIFIED, "cgroup.procs"),
    (UNIFIED, "cpu.pressure"),
    (UNIFIED, "memory.pressure"),
    (UNIFIED, "io.pressure"),
];

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C / SIGTERM: stop at the next check and clean up (children run in their own process
/// groups, so a terminal's SIGINT reaches only the harness).
pub fn install_interrupt_handler() {
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleep in short steps so that an interrupt is noticed.
pub fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        check_interrupt()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(100)));
    }
}

pub fn kill(pid: u32, sig: libc::c_int) {
    if pid > 1 {
        unsafe {
            libc::kill(pid as libc::pid_t, sig);
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds (system-wide, so comparable between processes).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn clk_tck() -> u64 {
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Fields of /proc/<pid>/stat after the command name: [0] = state (field 3).
fn stat_fields(s: &str) -> Vec<&str> {
    match s.rfind(')') {
        Some(i) => s[i + 1..].split_whitespace().collect(),
        None => Vec::new(),
    }
}

/// CPU, memory, threads and descriptors of one process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSnapshot {
    /// utime + stime, in seconds (clock-tick resolution).
    pub cpu_s: f64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub threads: u64,
    pub fds: u64,
}

pub fn snapshot(pid: u32) -> Result<ProcSnapshot> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
    let f = stat_fields(&stat);
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the state (field 3 at 0).
    let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).context("utime")?;
    let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).context("stime")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0);
    Ok(ProcSnapshot {
        cpu_s: (utime + stime) as f64 / clk_tck() as f64,
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        threads: field("Threads:"),
        fds,
    })
}

/// Children of the given parents, found by scanning /proc (this kernel has no
/// /proc/<pid>/task/<tid>/children).
pub fn children_of(parents: &HashSet<u32>) -> HashMap<u32, Vec<u32>> {
    let mut out: HashMap<u32, Vec<u32>> = HashMap::new();
    let Ok(rd) = std::fs::read_dir("/proc") else { return out };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let f = stat_fields(&stat);
        if let Some(ppid) = f.get(1).and_then(|v| v.parse::<u32>().ok()) {
            if parents.contains(&ppid) {
                out.entry(ppid).or_default().push(pid);
            }
        }
    }
    out
}

/// Mount point and mount root of each hierarchy the agent uses.
#[derive(Debug, Clone)]
pub struct Hierarchies {
    /// name (`cpu`, ..., `unified`) → (mount point, root of the mount)
    pub mounts: BTreeMap<String, (PathBuf, String)>,
}

impl Hierarchies {
    pub fn detect() -> Result<Hierarchies> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").context("/proc/self/mountinfo")?;
        let mut mounts = BTreeMap::new();
        for line in info.lines() {
            let Some((left, right)) = line.split_once(" - ") else { continue };
            let l: Vec<&str> = left.split_whitespace().collect();
            let r: Vec<&str> = right.split_whitespace().collect();
            if l.len() < 5 || r.len() < 3 {
                continue;
            }
            let (root, point) = (l[3].to_string(), PathBuf::from(l[4]));
            match r[0] {
                "cgroup2" => {
                    mounts.entry(UNIFIED.to_string()).or_insert((point, root));
                }
                "cgroup" => {
                    for opt in r[2].split(',') {
                        if V1_CONTROLLERS.contains(&opt) {
                            mounts.entry(opt.to_string()).or_insert((point.clone(), root.clone()));
                        }
                    }
                }
                _ => {}
            }
        }
        for c in V1_CONTROLLERS.iter().chain([UNIFIED].iter()) {
            if !mounts.contains_key(*c) {
                bail!("this harness measures the hybrid layout (v1 cpu,cpuacct,memory,pids,blkio + unified); {c} is not mounted here");
            }
        }
        Ok(Hierarchies { mounts })
    }

    /// Directory of `pid`'s own cgroup in every hierarchy.
    pub fn own_dirs(&self, pid: u32) -> Result<BTreeMap<String, PathBuf>> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).with_context(|| format!("/proc/{pid}/cgroup"))?;
        let mut out = BTreeMap::new();
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, ctrls, path) = match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), Some(c)) => (a, b, c),
                _ => continue,
            };
            let names: Vec<&str> = if ctrls.is_empty() { vec![UNIFIED] } else { ctrls.split(',').collect() };
            for name in names {
                if let Some((point, root)) = self.mounts.get(name) {
                    let rel = path.strip_prefix(root.as_str()).unwrap_or(path).trim_start_matches('/');
                    out.insert(name.to_string(), if rel.is_empty() { point.clone() } else { point.join(rel) });
                }
            }
        }
        Ok(out)
    }
}

/// Remove a directory tree of (empty) cgroups, deepest first. Cgroup directories hold only
/// kernel files, which rmdir ignores; a cgroup that still has processes is left and reported.
pub fn rmdir_cgroup_tree(dir: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    if !dir.is_dir() {
        return problems;
    }
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                problems.extend(rmdir_cgroup_tree(&e.path()));
            }
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        problems.push(format!("{}: {e}", dir.display()));
    }
    problems
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn cmd_out(prog: &str, args: &[&str]) -> String {
    Command::new(prog)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub struct Machine {
    pub date: String,
    pub commit: String,
    pub cores: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub mem_gib: f64,
}

pub fn machine(repo: &Path) -> Machine {
    let repo_s = repo.display().to_string();
    let mut commit = cmd_out("git", &["-C", &repo_s, "rev-parse", "--short", "HEAD"]);
    if !cmd_out("git", &["-C", &repo_s, "status", "--porcelain", "--untracked-files=no"]).is_empty() {
        commit.push_str(" (+ uncommitted changes in the work tree)");
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Machine {
        date: cmd_out("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        commit,
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        cpu_model,
        kernel: cmd_out("uname", &["-r"]),
        mem_gib: mem_kib / 1024.0 / 1024.0,
    }
}

pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}
