//! eBPF overhead: per-program ns/event from the kernel's own BPF statistics
//! (`kernel.bpf_stats_enabled=1`, `bpftool prog show` run_time_ns / run_cnt), and the
//! slowdown of `perf bench sched pipe` (a context-switch storm: sched_switch fires twice per
//! round trip) with the agent's programs attached vs. detached, in alternating runs: once with
//! perf's tasks on the host (what every task on the node pays) and once inside an `apptheus
//! exec` container (what the monitored jobs pay: the programs' full path). An empty program on
//! `sched_switch` measures the statistics' own cost per event, to be subtracted.
//!
//! What keeps the timing honest on a shared machine:
//! - `kernel.bpf_stats_enabled` is forced to 0 for every timed run (the statistics add two clock
//!   reads per program run) and restored at the end;
//! - an agent is started for a run only once no other tracing BPF program is loaded (another
//!   agent's programs would tax both sides), waiting up to [`FOREIGN_WAIT`]; runs with such
//!   programs loaded anyway are counted in the results;
//! - a run during which other processes took CPU 0 (perf's wall time more than 2 % over the
//!   CPU time of its two tasks) is repeated, up to [`TRIES`] times: the CPU time is recorded
//!   too, as a figure that such sharing does not move.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::agent::{Agent, Launchers};
use super::http;
use super::sys;

pub const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Timed runs repeated at most this often while other processes share CPU 0.
const TRIES: u32 = 5;
/// How long a run waits for other tracing BPF programs to be unloaded.
const FOREIGN_WAIT: Duration = Duration::from_secs(600);

/// Owns `kernel.bpf_stats_enabled` for the scenario: off unless a statistics run turns it on;
/// the value found is restored when dropped.
pub struct Stats(String);

impl Stats {
    pub fn take() -> Result<Stats> {
        let old = std::fs::read_to_string(STATS_SYSCTL).context(STATS_SYSCTL)?.trim().to_string();
        let stats = Stats(old);
        stats.set(false)?;
        Ok(stats)
    }

    pub fn set(&self, on: bool) -> Result<()> {
        std::fs::write(STATS_SYSCTL, if on { "1" } else { "0" }).context("writing kernel.bpf_stats_enabled")
    }
}

impl Drop for Stats {
    fn drop(&mut self) {
        let _ = std::fs::write(STATS_SYSCTL, &self.0);
    }
}

#[derive(Debug, Clone, Default)]
pub struct ProgStat {
    pub name: String,
    pub kind: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// Ids of the BPF programs `pid` holds a descriptor of (`prog_id:` in /proc/<pid>/fdinfo).
fn prog_ids_from_fds(pid: u32) -> Vec<u64> {
    let mut ids = Vec::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return ids };
    for e in rd.flatten() {
        if !std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("bpf-prog")) {
            continue;
        }
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", e.file_name().to_string_lossy())).unwrap_or_default();
        if let Some(id) = info.lines().find_map(|l| l.strip_prefix("prog_id:")).and_then(|v| v.trim().parse().ok()) {
            ids.push(id);
        }
    }
    ids
}

/// BPF programs held by `pid`, by program id: bpftool's `pids` field where bpftool has it,
/// else the program ids of the process's descriptors.
pub fn programs_of(bpftool: &Path, pid: u32) -> Result<BTreeMap<u64, ProgStat>> {
    let fd_ids = prog_ids_from_fds(pid);
    let out = Command::new(bpftool).args(["-j", "prog", "show"]).output().context("running bpftool")?;
    if !out.status.success() {
        bail!("bpftool prog show: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("bpftool JSON")?;
    let mut map = BTreeMap::new();
    for p in v.as_array().into_iter().flatten() {
        let id = p.get("id").and_then(|v| v.as_u64()).unwrap_or(0);
        let owned = p
            .get("pids")
            .and_then(|a| a.as_array())
            .is_some_and(|a| a.iter().any(|x| x.get("pid").and_then(|v| v.as_u64()) == Some(pid as u64)))
            || fd_ids.contains(&id);
        if !owned {
            continue;
        }
        map.insert(
            id,
            ProgStat {
                name: p.get("name").and_then(|v| v.as_str()).unwrap_or("?").to_string(),
                kind: p.get("type").and_then(|v| v.as_str()).unwrap_or("?").to_string(),
                run_time_ns: p.get("run_time_ns").and_then(|v| v.as_u64()).unwrap_or(0),
                run_cnt: p.get("run_cnt").and_then(|v| v.as_u64()).unwrap_or(0),
            },
        );
    }
    Ok(map)
}

/// Where the pipe benchmark's two tasks run.
#[derive(Clone, Copy)]
pub enum Tasks<'a> {
    /// On the host, in no container: the cost every task on the node pays.
    Host,
    /// In a container of the agent, through `apptheus exec` on its socket.
    Monitored { bin: &'a Path, socket: &'a Path },
}

impl Tasks<'_> {
    /// `program`, run there (its arguments to be added).
    fn command(self, program: &str) -> Command {
        match self {
            Tasks::Host => Command::new(program),
            Tasks::Monitored { bin, socket } => {
                let mut c = Command::new(bin);
                c.arg("exec").arg(format!("--socket.path={}", socket.display())).args(["--", program]);
                c
            }
        }
    }
}

/// `taskset -c 0 perf bench sched pipe -l LOOPS`: (wall, CPU) microseconds per round trip.
/// Wall is perf's own figure; CPU is the user+system time of perf and its forked partner (from
/// wait4), which includes perf's set-up (~1 %) but not the time other processes ran on the CPU.
/// Both tasks share one CPU, so every round trip is two context switches on it and no
/// cross-CPU wake-up: in a VM, waking an idle vCPU costs tens of µs and makes unpinned runs
/// swing 8× with the host's load.
/// Monitored, the CPU time includes `apptheus exec`'s own (it waits for its child, so wait4
/// gives the whole tree's): a few ms over the run, well below 0.1 %.
pub fn sched_pipe(perf: &Path, tasks: Tasks, loops: u64) -> Result<(f64, f64)> {
    use std::io::Read as _;
    let mut child = tasks
        .command("taskset")
        .args(["-c", "0"])
        .arg(perf)
        .args(["bench", "sched", "pipe", "-l", &loops.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running perf bench sched pipe")?;
    let (mut text, mut err) = (String::new(), String::new());
    child.stdout.take().map(|mut o| o.read_to_string(&mut text));
    child.stderr.take().map(|mut e| e.read_to_string(&mut err));
    // SAFETY: wait4 on our own child, with a zeroed rusage to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut status = 0;
    if unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) } < 0 {
        bail!("wait4 on perf: {}", std::io::Error::last_os_error());
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    let cpu_us = (secs(usage.ru_utime) + secs(usage.ru_stime)) * 1e6 / loops as f64;
    let wall_us = text
        .lines()
        .find(|l| l.contains("usecs/op"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no usecs/op in perf output: {text}{err}"))?;
    Ok((wall_us, cpu_us))
}

/// Names of the tracing BPF programs loaded on the machine that `pid` (the agent under test,
/// if any) does not hold: another agent's or tool's, which would slow both sides of the
/// comparison.
fn foreign_tracing_programs(bpftool: &Path, pid: Option<u32>) -> Result<Vec<String>> {
    let ours: Vec<u64> = pid.map(prog_ids_from_fds).unwrap_or_default();
    let out = Command::new(bpftool).args(["-j", "prog", "show"]).output().context("running bpftool")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("bpftool JSON")?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            let kind = p.get("type").and_then(|t| t.as_str()).unwrap_or("");
            matches!(kind, "tracing" | "raw_tracepoint" | "tracepoint" | "kprobe" | "perf_event")
                && !ours.contains(&p.get("id").and_then(|i| i.as_u64()).unwrap_or(0))
        })
        .map(|p| p.get("name").and_then(|n| n.as_str()).unwrap_or("?").to_string())
        .collect())
}

/// One timed run of the pipe benchmark.
#[derive(Debug, Clone, Copy)]
pub struct PipeRun {
    /// perf's µs/op (wall).
    pub wall_us: f64,
    /// CPU µs/op of perf's two tasks.
    pub cpu_us: f64,
    /// Runs it took (more than 1: others shared CPU 0).
    pub tries: u32,
    /// Still shared after [`TRIES`] runs.
    pub shared: bool,
    /// Seconds waited for other tracing programs to go before the agent was started.
    pub waited_s: f64,
    /// Other tracing programs loaded when it ran.
    pub foreign: usize,
}

/// Waits (before an agent is started) until no tracing BPF program is loaded on the machine,
/// at most [`FOREIGN_WAIT`]; returns the seconds waited.
fn wait_for_no_tracing_programs(bpftool: &Path) -> Result<f64> {
    let start = std::time::Instant::now();
    let mut foreign = foreign_tracing_programs(bpftool, None)?;
    while !foreign.is_empty() && start.elapsed() < FOREIGN_WAIT {
        sys::sleep(Duration::from_secs(2))?;
        foreign = foreign_tracing_programs(bpftool, None)?;
    }
    let waited_s = start.elapsed().as_secs_f64();
    if waited_s > 3.0 {
        eprintln!("bench: waited {waited_s:.0} s for other tracing BPF programs to go ({} left)", foreign.len());
    }
    Ok(waited_s)
}

/// A timed run with statistics off, repeated while other processes share CPU 0.
fn timed_pipe(perf: &Path, tasks: Tasks, bpftool: &Path, agent: Option<u32>, stats: &Stats, loops: u64, waited_s: f64) -> Result<PipeRun> {
    stats.set(false)?;
    let foreign = foreign_tracing_programs(bpftool, agent)?.len();
    let mut run = PipeRun { wall_us: 0.0, cpu_us: 0.0, tries: 0, shared: true, waited_s, foreign };
    while run.tries < TRIES && run.shared {
        sys::check_interrupt()?;
        let (wall_us, cpu_us) = sched_pipe(perf, tasks, loops)?;
        run = PipeRun { wall_us, cpu_us, tries: run.tries + 1, shared: wall_us > cpu_us * 1.02, ..run };
    }
    Ok(run)
}

/// Per program: (type, ns/event per attached run, events per run).
pub type ProgramRuns = BTreeMap<String, (String, Vec<f64>, Vec<u64>)>;

pub struct EbpfResult {
    /// Why nothing was measured, if so.
    pub unavailable: Option<String>,
    /// perf's tasks on the host.
    pub programs: ProgramRuns,
    pub attached: Vec<PipeRun>,
    pub detached: Vec<PipeRun>,
    /// perf's tasks in a monitored container.
    pub programs_monitored: ProgramRuns,
    pub attached_monitored: Vec<PipeRun>,
    pub detached_monitored: Vec<PipeRun>,
    /// Detached rounds again with only an empty program on `sched_switch`: what any program
    /// there costs the pipe benchmark (the hook's dispatch), host tasks and monitored ones.
    pub empty_attached: Vec<PipeRun>,
    pub empty_attached_monitored: Vec<PipeRun>,
    /// The same from a spawn storm ([`spawn_storm`]): the fork, exec and exit programs' figures.
    pub spawn_programs: ProgramRuns,
    pub spawn_programs_monitored: ProgramRuns,
    /// ns/event of an empty program on `sched_switch` with the statistics on, per round: their
    /// own cost, included in every program's figure.
    pub empty_ns: Vec<f64>,
    pub loops: u64,
}

/// Whether the agent says its eBPF programs are up.
pub fn ebpf_up(agent: &Agent) -> Result<Option<f64>> {
    Ok(http::sample_value(&agent.scrape_text()?, "apptheus_ebpf_up"))
}

/// An agent with one container running: eBPF on (programs attached) or off.
fn with_agent<T>(bin: &Path, tmp: &Path, ebpf: bool, f: impl FnOnce(&Agent) -> Result<T>) -> Result<T> {
    let extra: Vec<String> = if ebpf { Vec::new() } else { vec!["--ebpf.disable".into()] };
    let mut agent = Agent::start(bin, &[bin], tmp, if ebpf { "ebpf-on" } else { "ebpf-off" }, &extra)?;
    let result = {
        let mut l = Launchers::new(tmp);
        l.grow_to(&agent, 1)?;
        sys::sleep(Duration::from_millis(1500))?;
        let r = f(&agent);
        l.stop_all();
        r
    };
    for p in agent.stop() {
        eprintln!("bench: clean-up: {p}");
    }
    result
}

pub fn run(bin: &Path, tmp: &Path, rounds: usize, loops: u64) -> Result<EbpfResult> {
    let mut res = EbpfResult {
        unavailable: None,
        programs: BTreeMap::new(),
        attached: Vec::new(),
        detached: Vec::new(),
        programs_monitored: BTreeMap::new(),
        attached_monitored: Vec::new(),
        detached_monitored: Vec::new(),
        empty_attached: Vec::new(),
        empty_attached_monitored: Vec::new(),
        spawn_programs: BTreeMap::new(),
        spawn_programs_monitored: BTreeMap::new(),
        empty_ns: Vec::new(),
        loops,
    };
    let tools: Vec<(&str, Option<PathBuf>)> = vec![("bpftool", sys::which("bpftool")), ("perf", sys::which("perf"))];
    // First: does this agent load its programs at all?
    let up = with_agent(bin, tmp, true, ebpf_up)?;
    if up != Some(1.0) {
        res.unavailable = Some(match up {
            None => "the agent exports no `apptheus_ebpf_up` (its eBPF programs are not wired in yet)".to_string(),
            Some(v) => format!("the agent reports `apptheus_ebpf_up {v}` (programs not loaded; see its log)"),
        });
        return Ok(res);
    }
    if let Some((name, _)) = tools.iter().find(|(_, p)| p.is_none()) {
        res.unavailable = Some(format!("{name} is not installed (apt-get install bpftool linux-perf)"));
        return Ok(res);
    }
    let bpftool = tools[0].1.clone().unwrap();
    let perf = tools[1].1.clone().unwrap();
    let stats = Stats::take()?;
    for r in 0..rounds {
        // Alternate the order so that drift in the machine's load cancels.
        let order = if r % 2 == 0 { [true, false] } else { [false, true] };
        for attached in order {
            sys::check_interrupt()?;
            // Another agent's programs would tax both sides: wait for them to go before ours
            // are loaded (so that nobody waits for ours meanwhile).
            let waited = wait_for_no_tracing_programs(&bpftool)?;
            with_agent(bin, tmp, attached, |agent| {
                let monitored = Tasks::Monitored { bin, socket: &agent.socket };
                if attached {
                    // Timed with the statistics off, then run again with them on for the
                    // per-program figures; host tasks, then monitored ones.
                    res.attached.push(timed_pipe(&perf, Tasks::Host, &bpftool, Some(agent.pid), &stats, loops, waited)?);
                    res.attached_monitored.push(timed_pipe(&perf, monitored, &bpftool, Some(agent.pid), &stats, loops, waited)?);
                    let pipe = |tasks| sched_pipe(&perf, tasks, loops).map(|_| ());
                    program_costs(&bpftool, agent.pid, &stats, &mut res.programs, || pipe(Tasks::Host))?;
                    program_costs(&bpftool, agent.pid, &stats, &mut res.programs_monitored, || pipe(monitored))?;
                    program_costs(&bpftool, agent.pid, &stats, &mut res.spawn_programs, || spawn_storm(Tasks::Host))?;
                    program_costs(&bpftool, agent.pid, &stats, &mut res.spawn_programs_monitored, || spawn_storm(monitored))?;
                } else {
                    res.detached.push(timed_pipe(&perf, Tasks::Host, &bpftool, None, &stats, loops, waited)?);
                    res.detached_monitored.push(timed_pipe(&perf, monitored, &bpftool, None, &stats, loops, waited)?);
                    let empty = load_empty_sched_switch()?;
                    let me = Some(std::process::id());
                    res.empty_attached.push(timed_pipe(&perf, Tasks::Host, &bpftool, me, &stats, loops, waited)?);
                    res.empty_attached_monitored.push(timed_pipe(&perf, monitored, &bpftool, me, &stats, loops, waited)?);
                    drop(empty);
                }
                Ok(())
            })?;
            eprintln!("bench: ebpf round {}/{rounds} ({})", r + 1, if attached { "attached" } else { "detached" });
        }
        res.empty_ns.push(empty_program_ns(&perf, &bpftool, &stats, loops)?);
    }
    Ok(res)
}

/// Processes a spawn storm starts, one after the other (each a fork, an exec and an exit).
pub const SPAWNS: u32 = 1000;

/// A shell that starts `/bin/true` [`SPAWNS`] times, on the host or in a monitored container:
/// what a job script of short commands does.
fn spawn_storm(tasks: Tasks) -> Result<()> {
    let script = format!("i=0; while [ $i -lt {SPAWNS} ]; do /bin/true; i=$((i+1)); done");
    let status = tasks
        .command("sh")
        .args(["-c", &script]).stdout(Stdio::null()).status().context("running the spawn storm")?;
    if !status.success() {
        bail!("the spawn storm failed: {status}");
    }
    Ok(())
}

/// One workload run with the statistics on: each of the agent's programs' ns/event and events.
fn program_costs(bpftool: &Path, agent: u32, stats: &Stats, out: &mut ProgramRuns, workload: impl FnOnce() -> Result<()>) -> Result<()> {
    stats.set(true)?;
    let before = programs_of(bpftool, agent)?;
    if before.is_empty() {
        bail!("bpftool shows no program held by the agent (pid {agent})");
    }
    workload()?;
    let after = programs_of(bpftool, agent)?;
    stats.set(false)?;
    for (id, a) in &after {
        let Some(b) = before.get(id) else { continue };
        let cnt = a.run_cnt.saturating_sub(b.run_cnt);
        let ns = a.run_time_ns.saturating_sub(b.run_time_ns);
        let e = out.entry(a.name.clone()).or_insert_with(|| (a.kind.clone(), Vec::new(), Vec::new()));
        if cnt > 0 {
            e.1.push(ns as f64 / cnt as f64);
        }
        e.2.push(cnt);
    }
    Ok(())
}

/// The statistics' own cost per event: an empty raw tracepoint program (`r0 = 0; exit`) on
/// `sched_switch`, loaded by this process with the `bpf` syscall, with the statistics on during a
/// host pipe run. The same dispatch (`bpf_trace_run`) and the same two clock reads as the agent's
/// `tp_btf` programs; nothing else.
fn empty_program_ns(perf: &Path, bpftool: &Path, stats: &Stats, loops: u64) -> Result<f64> {
    let (prog, link) = load_empty_sched_switch()?;
    let me = std::process::id();
    stats.set(true)?;
    let before = programs_of(bpftool, me)?;
    sched_pipe(perf, Tasks::Host, loops)?;
    let after = programs_of(bpftool, me)?;
    stats.set(false)?;
    drop((link, prog));
    let (id, a) = after.iter().next().context("bpftool does not show the empty program")?;
    let b = before.get(id).cloned().unwrap_or_default();
    let cnt = a.run_cnt.saturating_sub(b.run_cnt);
    if cnt == 0 {
        bail!("the empty program on sched_switch never ran");
    }
    Ok(a.run_time_ns.saturating_sub(b.run_time_ns) as f64 / cnt as f64)
}

/// Load `r0 = 0; exit` as a raw tracepoint program and attach it to `sched_switch`: (program,
/// link) descriptors; closing both detaches and unloads it.
fn load_empty_sched_switch() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_RAW_TRACEPOINT_OPEN: libc::c_long = 17;
    const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
    // mov64 r0, 0; exit
    let insns: [u64; 2] = [u64::from_le_bytes([0xb7, 0, 0, 0, 0, 0, 0, 0]), u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0])];
    let license = c"GPL";
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&BPF_PROG_TYPE_RAW_TRACEPOINT.to_ne_bytes());
    attr[4..8].copy_from_slice(&2u32.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    attr[48..54].copy_from_slice(b"empty\0");
    // SAFETY: bpf(BPF_PROG_LOAD) reads `attr` (its size given) and the instructions and license
    // it points to, all alive for the call.
    let prog = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, attr.as_ptr(), attr.len() as u32) };
    if prog < 0 {
        bail!("loading the empty program: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just returned to us, owned from here.
    let prog = unsafe { std::os::fd::OwnedFd::from_raw_fd(prog as i32) };
    let name = c"sched_switch";
    let mut open = [0u8; 16];
    open[0..8].copy_from_slice(&(name.as_ptr() as u64).to_ne_bytes());
    open[8..12].copy_from_slice(&(std::os::fd::AsRawFd::as_raw_fd(&prog) as u32).to_ne_bytes());
    // SAFETY: as above, for BPF_RAW_TRACEPOINT_OPEN.
    let link = unsafe { libc::syscall(libc::SYS_bpf, BPF_RAW_TRACEPOINT_OPEN, open.as_ptr(), open.len() as u32) };
    if link < 0 {
        bail!("attaching the empty program to sched_switch: {}", std::io::Error::last_os_error());
    }
    // SAFETY: as above.
    Ok((prog, unsafe { std::os::fd::OwnedFd::from_raw_fd(link as i32) }))
}
