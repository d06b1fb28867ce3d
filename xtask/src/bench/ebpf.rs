//! eBPF overhead: per-program ns/event from the kernel's own BPF statistics
//! (`kernel.bpf_stats_enabled=1`, `bpftool prog show` run_time_ns / run_cnt), and the
//! slowdown of `perf bench sched pipe` (a context-switch storm: sched_switch fires twice per
//! round trip) with the agent's programs attached vs. detached, in alternating runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::agent::{Agent, Launchers};
use super::http;
use super::sys;

pub const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Restores `kernel.bpf_stats_enabled` when dropped.
pub struct StatsEnabled(String);

impl StatsEnabled {
    pub fn enable() -> Result<StatsEnabled> {
        let old = std::fs::read_to_string(STATS_SYSCTL).context(STATS_SYSCTL)?.trim().to_string();
        std::fs::write(STATS_SYSCTL, "1").context("enabling kernel.bpf_stats_enabled")?;
        Ok(StatsEnabled(old))
    }
}

impl Drop for StatsEnabled {
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

/// `taskset -c 0 perf bench sched pipe -l LOOPS`: microseconds per round trip. Both tasks
/// share one CPU, so every round trip is two context switches on it and no cross-CPU wake-up:
/// in a VM, waking an idle vCPU costs tens of µs and makes unpinned runs swing 8× with the
/// host's load.
pub fn sched_pipe(perf: &Path, loops: u64) -> Result<f64> {
    let out = Command::new("taskset")
        .args(["-c", "0"])
        .arg(perf)
        .args(["bench", "sched", "pipe", "-l", &loops.to_string()])
        .output()
        .context("running perf bench sched pipe")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.contains("usecs/op"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no usecs/op in perf output: {text}{}", String::from_utf8_lossy(&out.stderr)))
}

pub struct EbpfResult {
    /// Why nothing was measured, if so.
    pub unavailable: Option<String>,
    /// Per program: (type, ns/event per attached run, events per run).
    pub programs: BTreeMap<String, (String, Vec<f64>, Vec<u64>)>,
    pub attached_us: Vec<f64>,
    pub detached_us: Vec<f64>,
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
    let mut res = EbpfResult { unavailable: None, programs: BTreeMap::new(), attached_us: Vec::new(), detached_us: Vec::new(), loops };
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
    for r in 0..rounds {
        // Alternate the order so that drift in the machine's load cancels.
        let order = if r % 2 == 0 { [true, false] } else { [false, true] };
        for attached in order {
            sys::check_interrupt()?;
            with_agent(bin, tmp, attached, |agent| {
                if attached {
                    // Timed with the statistics off (they add two clock reads per program
                    // run), then run again with them on for the per-program figures.
                    let us = sched_pipe(&perf, loops)?;
                    let stats = StatsEnabled::enable()?;
                    let before = programs_of(&bpftool, agent.pid)?;
                    if before.is_empty() {
                        bail!("bpftool shows no program held by the agent (pid {})", agent.pid);
                    }
                    sched_pipe(&perf, loops)?;
                    let after = programs_of(&bpftool, agent.pid)?;
                    drop(stats);
                    for (id, a) in &after {
                        let Some(b) = before.get(id) else { continue };
                        let cnt = a.run_cnt.saturating_sub(b.run_cnt);
                        let ns = a.run_time_ns.saturating_sub(b.run_time_ns);
                        let e = res.programs.entry(a.name.clone()).or_insert_with(|| (a.kind.clone(), Vec::new(), Vec::new()));
                        if cnt > 0 {
                            e.1.push(ns as f64 / cnt as f64);
                        }
                        e.2.push(cnt);
                    }
                    res.attached_us.push(us);
                } else {
                    res.detached_us.push(sched_pipe(&perf, loops)?);
                }
                Ok(())
            })?;
            eprintln!("bench: ebpf round {}/{rounds} ({})", r + 1, if attached { "attached" } else { "detached" });
        }
    }
    Ok(res)
}
