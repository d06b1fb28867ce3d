//! `cargo xtask bench` (issue 6): the agent's costs measured against peers in the same run,
//! on real processes, real cgroups and the real kernel, with a release build.
//!
//! 1. Sampling: N containers (`apptheus exec -- sleep`), 0.5 s interval, steady state: agent
//!    CPU per wall second and per container-sample, RSS, threads, fds; the same for the
//!    floor (`floor.rs`: the same files of the same cgroups read with plain syscalls at the
//!    same rate, while the agent is paused with SIGSTOP).
//! 2. Scrape: text / protobuf / gzip, sequential keep-alive scrapes of the agent and of a
//!    Pushgateway holding the same series (`pushgw.rs`), interleaved.
//! 3. Placement: bursts of launchers; connect → ack and ack → first series (`placement.rs`).
//! 4. eBPF: ns/event per program and `perf bench sched pipe` slowdown (`ebpf.rs`).
//!
//! Benchmarks never fail on a timing: they print tables and write bench/RESULTS.md. A
//! scenario that cannot run says why in its section and the others still run.

pub(crate) mod agent;
mod cardinality;
mod ebpf;
mod floor;
pub(crate) mod http;
mod placement;
mod pushgw;
mod report;
mod stats;
pub(crate) mod sys;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use agent::{Agent, Launchers};
use http::{Conn, Format};
use pushgw::Pushgateway;

const INTERVAL: Duration = Duration::from_millis(500);
/// The reference floor that keeps its descriptors open (pread), beside the floor.
const FLOOR_OPEN: &str = "floor, fds kept open (pread)";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Scenario {
    Sampling,
    Scrape,
    Placement,
    Ebpf,
    Cardinality,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Small N and short durations, to try the harness (writes target/bench/RESULTS.quick.md, not bench/RESULTS.md).
    #[arg(long)]
    pub quick: bool,
    /// Scenarios to run.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "sampling,scrape,placement,ebpf,cardinality")]
    pub scenarios: Vec<Scenario>,
    /// Agent binary to measure instead of building target/release/apptheus.
    #[arg(long, value_name = "PATH")]
    pub agent_bin: Option<PathBuf>,
    /// Where to write the results (default bench/RESULTS.md; target/bench/RESULTS.quick.md with --quick).
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// Steady-state measuring time of the sampling scenario, seconds (default 30; 6 with --quick).
    #[arg(long, value_name = "SECS")]
    pub steady: Option<u64>,
    /// Placement: number of bursts (default 10; 2 with --quick).
    #[arg(long, value_name = "COUNT")]
    pub bursts: Option<usize>,
    /// Placement: launchers per burst (default 100; 10 with --quick).
    #[arg(long, value_name = "COUNT")]
    pub burst: Option<usize>,
    /// Skip the `perf record` profile of the agent at the largest N.
    #[arg(long)]
    pub no_profile: bool,
    /// eBPF: rounds of one attached and one detached `perf bench sched pipe` run (default 15; 1 with --quick).
    #[arg(long, value_name = "COUNT")]
    pub ebpf_rounds: Option<usize>,
    /// (internal) run as the floor reader over the paths listed in this file.
    #[arg(long, hide = true, value_name = "FILE")]
    pub internal_floor: Option<PathBuf>,
    /// (internal) run as a placement launcher on this socket.
    #[arg(long, hide = true, value_name = "SOCKET")]
    pub internal_client: Option<PathBuf>,
    /// (internal) the placement launcher first moves itself into these cgroup directories
    /// (separated by ':'), as a scheduler starts a job's task in the job's cgroup.
    #[arg(long, hide = true, value_name = "DIRS")]
    pub internal_client_cgroups: Option<String>,
    /// (internal) the floor keeps its files open and re-reads them with pread.
    #[arg(long, hide = true)]
    pub internal_keep_open: bool,
    /// (internal) the floor's interval.
    #[arg(long, hide = true, default_value_t = 500)]
    pub interval_ms: u64,
}

struct Config {
    sampling_ns: Vec<usize>,
    rss_n: usize,
    scrape_ns: Vec<usize>,
    warmup: Duration,
    steady: Duration,
    window: Duration,
    scrapes: usize,
    bursts: usize,
    burst: usize,
    ebpf_rounds: usize,
    pipe_loops: u64,
    profile: Option<Duration>,
}

impl Config {
    fn new(a: &BenchArgs) -> Config {
        let mut c = if a.quick {
            Config {
                sampling_ns: vec![10, 40],
                rss_n: 20,
                scrape_ns: vec![20, 40],
                warmup: Duration::from_secs(2),
                steady: Duration::from_secs(6),
                window: Duration::from_secs(2),
                scrapes: 20,
                bursts: 2,
                burst: 10,
                ebpf_rounds: 1,
                pipe_loops: 20_000,
                profile: Some(Duration::from_secs(3)),
            }
        } else {
            Config {
                sampling_ns: vec![100, 1000],
                rss_n: 200,
                scrape_ns: vec![200, 1000],
                warmup: Duration::from_secs(5),
                steady: Duration::from_secs(30),
                window: Duration::from_secs(5),
                scrapes: 200,
                bursts: 10,
                burst: 100,
                ebpf_rounds: 15,
                pipe_loops: 200_000,
                profile: Some(Duration::from_secs(15)),
            }
        };
        if let Some(s) = a.steady {
            c.steady = Duration::from_secs(s.max(1));
            c.window = c.window.min(c.steady);
        }
        if let Some(b) = a.bursts {
            c.bursts = b.max(1);
        }
        if let Some(b) = a.burst {
            c.burst = b.max(1);
        }
        if a.no_profile {
            c.profile = None;
        }
        if let Some(r) = a.ebpf_rounds {
            c.ebpf_rounds = r.max(1);
        }
        c
    }
}

/// The binaries of a run, copied into the run's directory so that a rebuild during the run
/// cannot replace them (the agent trusts launchers by device and inode).
struct Bins {
    agent: PathBuf,
    client: PathBuf,
    pushgateway: Option<PathBuf>,
}

#[derive(Default)]
struct SamplingRow {
    n: usize,
    who: &'static str,
    /// CPU seconds per wall second, one per window.
    cpu_windows: Vec<f64>,
    cpu_mean: f64,
    samples_per_s: f64,
    snap: sys::ProcSnapshot,
    note: String,
    /// Floor only: wall µs per read of each sampled file.
    per_file_us: Vec<f64>,
}

struct ScrapeRow {
    n: usize,
    target: &'static str,
    format: Format,
    honoured: bool,
    answered: String,
    ms: Vec<f64>,
    body: Vec<f64>,
    decoded: f64,
    series: usize,
}

#[derive(Default)]
struct Results {
    sampling: Vec<SamplingRow>,
    sampling_error: Option<String>,
    rss: Vec<(String, sys::ProcSnapshot)>,
    scrape: Vec<ScrapeRow>,
    scrape_error: Option<String>,
    pushgateway_version: String,
    groups: Vec<(usize, usize)>,
    profile: Option<(usize, String)>,
    placement: Option<placement::PlacementRun>,
    placement_error: Option<String>,
    ebpf: Option<ebpf::EbpfResult>,
    ebpf_error: Option<String>,
    cardinality: Option<Result<Vec<cardinality::Variant>, String>>,
    cleanup: Vec<String>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if let Some(spec) = &args.internal_floor {
        return floor::floor_main(spec, Duration::from_millis(args.interval_ms), args.internal_keep_open);
    }
    if let Some(socket) = &args.internal_client {
        return placement::client_main(socket, args.internal_client_cgroups.as_deref());
    }
    if unsafe { libc::geteuid() } != 0 {
        bail!("cargo xtask bench must run as root (it starts the agent, which creates cgroups)");
    }
    sys::install_interrupt_handler();
    let cfg = Config::new(&args);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?.to_path_buf();
    let scenarios: BTreeSet<Scenario> = args.scenarios.iter().copied().collect();
    let command = std::iter::once("cargo xtask bench".to_string()).chain(std::env::args().skip(2)).collect::<Vec<_>>().join(" ");

    let built = match &args.agent_bin {
        Some(p) => p.clone(),
        None => build_agent(&repo)?,
    };
    let tmp = PathBuf::from(format!("/tmp/apptheus-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let bins = Bins {
        agent: copy_exec(&built, &tmp.join("apptheus"))?,
        client: copy_exec(&std::env::current_exe()?, &tmp.join("bench-client"))?,
        pushgateway: pushgw::find(),
    };
    let machine = sys::machine(&repo);
    let load_before = sys::loadavg();
    eprintln!("bench: load average {load_before} on {} cores; agent {}", machine.cores, built.display());
    let started = Instant::now();
    let mut res = Results::default();

    if scenarios.contains(&Scenario::Sampling) || scenarios.contains(&Scenario::Scrape) {
        if let Err(e) = steady_phases(&cfg, &scenarios, &bins, &tmp, &mut res) {
            let msg = format!("{e:#}");
            eprintln!("bench: sampling/scrape phase failed: {msg}");
            res.sampling_error.get_or_insert(msg.clone());
            res.scrape_error.get_or_insert(msg);
        }
    }
    if scenarios.contains(&Scenario::Placement) && sys::check_interrupt().is_ok() {
        match placement_phase(&cfg, &bins, &tmp, &mut res.cleanup) {
            Ok(p) => res.placement = Some(p),
            Err(e) => res.placement_error = Some(format!("{e:#}")),
        }
    }
    if scenarios.contains(&Scenario::Ebpf) && sys::check_interrupt().is_ok() {
        match ebpf::run(&bins.agent, &tmp, cfg.ebpf_rounds, cfg.pipe_loops) {
            Ok(r) => res.ebpf = Some(r),
            Err(e) => res.ebpf_error = Some(format!("{e:#}")),
        }
    }
    if scenarios.contains(&Scenario::Cardinality) && sys::check_interrupt().is_ok() {
        let containers = if args.quick { 8 } else { cardinality::PER_NODE };
        res.cardinality = Some(cardinality::run(&bins.agent, &tmp, containers).map_err(|e| format!("{e:#}")));
    }
    let load_after = sys::loadavg();
    let _ = std::fs::remove_dir_all(&tmp);
    sys::check_interrupt()?;

    let report = report::render(&cfg, &args, &scenarios, &res, &machine, &command, &load_before, &load_after, started.elapsed());
    let out = args.out.clone().unwrap_or_else(|| {
        if args.quick {
            repo.join("target/bench/RESULTS.quick.md")
        } else {
            repo.join("bench/RESULTS.md")
        }
    });
    let old = std::fs::read_to_string(&out).unwrap_or_default();
    let text = report::carry_over(&report, &old);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, &text).with_context(|| format!("writing {}", out.display()))?;
    println!("{text}");
    eprintln!("bench: wrote {}", out.display());
    Ok(())
}

pub(crate) fn build_agent(repo: &Path) -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("bench: cargo build --release -p apptheus");
    let st = Command::new(&cargo).current_dir(repo).args(["build", "--release", "-p", "apptheus"]).status()?;
    if !st.success() {
        bail!("cargo build --release -p apptheus failed ({st})");
    }
    Ok(repo.join("target/release/apptheus"))
}

fn copy_exec(from: &Path, to: &Path) -> Result<PathBuf> {
    std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(to.to_path_buf())
}

/// Wait until the agent counts `n` live containers.
fn wait_containers(agent: &Agent, n: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        sys::check_interrupt()?;
        let have = http::sample_value(&agent.scrape_text()?, "apptheus_containers").unwrap_or(-1.0);
        if have as usize == n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("agent counts {have} containers, expected {n}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Scenarios 1 and 2 on one agent whose containers grow through every N of either.
fn steady_phases(cfg: &Config, scen: &BTreeSet<Scenario>, bins: &Bins, tmp: &Path, res: &mut Results) -> Result<()> {
    let sampling = scen.contains(&Scenario::Sampling);
    let scrape = scen.contains(&Scenario::Scrape);
    let mut levels: BTreeSet<usize> = BTreeSet::new();
    if sampling {
        levels.extend(&cfg.sampling_ns);
        levels.insert(cfg.rss_n);
    }
    if scrape {
        levels.extend(&cfg.scrape_ns);
    }
    if sampling {
        // The agent's memory with no container, with and without its eBPF programs.
        for (label, extra) in [("idle (0 containers), eBPF on", vec![]), ("idle (0 containers), --ebpf.disable", vec!["--ebpf.disable".to_string()])] {
            let mut a = Agent::start(&bins.agent, &[&bins.agent], tmp, "idle", &extra)?;
            sys::sleep(Duration::from_secs(2))?;
            res.rss.push((label.to_string(), sys::snapshot(a.pid)?));
            res.cleanup.extend(a.stop());
        }
    }
    let mut agent = Agent::start(&bins.agent, &[&bins.agent], tmp, "main", &[])?;
    let pg = if scrape {
        match &bins.pushgateway {
            Some(b) => match Pushgateway::start(b, tmp) {
                Ok(p) => {
                    res.pushgateway_version = p.version.clone();
                    Some(p)
                }
                Err(e) => {
                    res.scrape_error = Some(format!("Pushgateway did not start: {e:#}"));
                    None
                }
            },
            None => {
                res.scrape_error = Some("prometheus-pushgateway is not installed (apt-get install prometheus-pushgateway): agent measured alone".into());
                None
            }
        }
    } else {
        None
    };
    let mut launchers = Launchers::new(tmp);
    let largest = cfg.sampling_ns.iter().copied().max().unwrap_or(0);
    for &n in &levels {
        eprintln!("bench: growing to {n} containers");
        launchers.grow_to(&agent, n)?;
        wait_containers(&agent, n)?;
        sys::sleep(cfg.warmup)?;
        if sampling && cfg.sampling_ns.contains(&n) {
            eprintln!("bench: sampling cost at N={n}: agent");
            res.sampling.push(measure_agent(&agent, n, cfg)?);
            eprintln!("bench: sampling cost at N={n}: floor (agent paused)");
            res.sampling.push(measure_floor(&agent, &launchers, n, cfg, &bins.client, tmp, false)?);
            eprintln!("bench: sampling cost at N={n}: floor with descriptors kept open (agent paused)");
            res.sampling.push(measure_floor(&agent, &launchers, n, cfg, &bins.client, tmp, true)?);
            sys::sleep(cfg.warmup)?;
            if n == largest {
                if let Some(d) = cfg.profile {
                    eprintln!("bench: perf record of the agent for {}s at N={n}", d.as_secs());
                    match profile(agent.pid, d, tmp) {
                        Ok(p) => res.profile = Some((n, p)),
                        Err(e) => res.profile = Some((n, format!("(no profile: {e:#})"))),
                    }
                }
            }
        }
        if sampling && n == cfg.rss_n {
            res.rss.push((format!("N={n}, before any scrape at this N"), sys::snapshot(agent.pid)?));
        }
        if scrape && cfg.scrape_ns.contains(&n) {
            eprintln!("bench: scrape cost at N={n}");
            res.scrape.extend(scrape_compare(&agent, pg.as_ref(), n, cfg, &mut res.groups)?);
        }
        if sampling && n == cfg.rss_n {
            res.rss.push((format!("N={n}, after {} scrapes of each format", if scrape && cfg.scrape_ns.contains(&n) { cfg.scrapes } else { 0 }), sys::snapshot(agent.pid)?));
        }
    }
    drop(pg);
    launchers.stop_all();
    res.cleanup.extend(agent.stop());
    Ok(())
}

/// Histogram count of the agent's per-container samples.
fn samples_taken(agent: &Agent) -> Result<f64> {
    http::sample_value(&agent.scrape_text()?, "apptheus_sample_duration_seconds_count").context("no apptheus_sample_duration_seconds_count on /metrics")
}

fn windows(pid: u32, cfg: &Config) -> Result<(Vec<f64>, f64, sys::ProcSnapshot)> {
    let s0 = sys::snapshot(pid)?;
    let t0 = Instant::now();
    let mut prev = (s0, t0);
    let mut rates = Vec::new();
    let mut elapsed = Duration::ZERO;
    while elapsed + cfg.window <= cfg.steady {
        sys::sleep(cfg.window)?;
        let s = sys::snapshot(pid)?;
        let t = Instant::now();
        rates.push((s.cpu_s - prev.0.cpu_s) / (t - prev.1).as_secs_f64());
        prev = (s, t);
        elapsed += cfg.window;
    }
    let mean = (prev.0.cpu_s - s0.cpu_s) / (prev.1 - t0).as_secs_f64();
    Ok((rates, mean, prev.0))
}

fn measure_agent(agent: &Agent, n: usize, cfg: &Config) -> Result<SamplingRow> {
    let c0 = samples_taken(agent)?;
    let t0 = Instant::now();
    // Let the scrape's own work finish before the measured windows.
    std::thread::sleep(Duration::from_millis(200));
    let (cpu_windows, cpu_mean, snap) = windows(agent.pid, cfg)?;
    std::thread::sleep(Duration::from_millis(200));
    let c1 = samples_taken(agent)?;
    let samples_per_s = (c1 - c0) / t0.elapsed().as_secs_f64();
    Ok(SamplingRow {
        n,
        who: "apptheus",
        cpu_windows,
        cpu_mean,
        samples_per_s,
        snap,
        note: format!("{:.0} samples/s ({:.0} expected)", samples_per_s, n as f64 / INTERVAL.as_secs_f64()),
        per_file_us: Vec::new(),
    })
}

fn measure_floor(agent: &Agent, launchers: &Launchers, n: usize, cfg: &Config, bin: &Path, tmp: &Path, keep_open: bool) -> Result<SamplingRow> {
    let mut spec = String::new();
    let mut missing = 0;
    for id in launchers.ids() {
        let dirs = agent.container_dirs(&id);
        for (h, f) in sys::SAMPLED_FILES {
            let p = dirs.get(*h).with_context(|| format!("no {h} hierarchy"))?.join(f);
            if !p.exists() {
                missing += 1;
            }
            spec.push_str(&p.display().to_string());
            spec.push('\n');
        }
    }
    let spec_path = tmp.join(format!("floor-{n}.txt"));
    std::fs::write(&spec_path, spec)?;
    agent.pause();
    let result = (|| {
        let fl = floor::Floor::start(bin, &spec_path, INTERVAL, keep_open)?;
        let started = Instant::now();
        sys::sleep(Duration::from_secs(1))?;
        let (cpu_windows, cpu_mean, snap) = windows(fl.pid, cfg)?;
        let pid = fl.pid;
        let totals = fl.stop()?;
        let lifetime = started.elapsed().as_secs_f64();
        let samples_per_s = totals.passes as f64 * n as f64 / lifetime;
        let _ = pid;
        let per_read = (totals.passes.max(1) * n as u64) as f64;
        let per_file_us = totals.ns_per_file.iter().map(|ns| *ns as f64 / per_read / 1e3).collect();
        Ok::<_, anyhow::Error>(SamplingRow {
            n,
            who: if keep_open { FLOOR_OPEN } else { "floor" },
            cpu_windows,
            cpu_mean,
            samples_per_s,
            snap,
            note: format!(
                "{:.0} samples/s; {} files × {n} cgroups, {:.0} B/sample read; {} missing, {} read errors, {} late passes",
                samples_per_s,
                sys::SAMPLED_FILES.len(),
                totals.bytes as f64 / (totals.passes.max(1) as f64 * n as f64),
                missing,
                totals.errors,
                totals.late
            ),
            per_file_us,
        })
    })();
    agent.resume();
    result
}

/// `perf record` of one process until [`Profiler::finish`].
pub struct Profiler {
    child: Option<std::process::Child>,
    data: PathBuf,
    callgraph: bool,
}

impl Profiler {
    /// With `callgraph`, kernel call chains are recorded too (user space has no frame
    /// pointers in a release build, so its chains stop at the first frame).
    pub fn start(pid: u32, tmp: &Path, name: &str, callgraph: bool) -> Result<Profiler> {
        let perf = sys::which("perf").context("perf is not installed (apt-get install linux-perf)")?;
        let data = tmp.join(format!("perf-{name}.data"));
        let mut cmd = Command::new(&perf);
        cmd.args(["record", "-q", "-F", "999"]);
        if callgraph {
            cmd.arg("-g");
        }
        let child = cmd
            .arg("-o")
            .arg(&data)
            .args(["-p", &pid.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()?;
        // perf needs a moment to attach (longer on a busy machine).
        std::thread::sleep(Duration::from_millis(1500));
        Ok(Profiler { child: Some(child), data, callgraph })
    }

    pub fn finish(mut self) -> Result<String> {
        let mut child = self.child.take().unwrap();
        sys::kill(child.id(), libc::SIGINT);
        child.wait()?;
        let perf = sys::which("perf").context("perf")?;
        let report = |extra: &[&str], limit: &str, take: usize| -> Result<Vec<String>> {
            let out = Command::new(&perf)
                .args(["report", "--stdio", "-g", "none", "--percent-limit", limit])
                .args(extra)
                .arg("-i")
                .arg(&self.data)
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            let lines: Vec<String> = text
                .lines()
                .filter(|l| l.trim_start().chars().next().is_some_and(|c| c.is_ascii_digit()))
                .take(take)
                .map(|l| l.trim_end().trim_end_matches(['-', ' ']).to_string())
                .collect();
            if lines.is_empty() {
                bail!("perf report printed nothing: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(lines)
        };
        let mut lines = vec!["by object (self):".to_string()];
        lines.extend(report(&["--no-children", "--sort", "dso"], "0.5", 10)?);
        lines.push(String::new());
        lines.push("by symbol (self, ≥ 1 %):".to_string());
        lines.extend(report(&["--no-children", "--sort", "dso,symbol"], "1", 30)?);
        if self.callgraph {
            lines.push(String::new());
            lines.push("functions including what they call (children, ≥ 2 %; user-space chains are partial without frame pointers):".to_string());
            lines.extend(
                report(&["--children", "--sort", "symbol"], "2", 80)?
                    .into_iter()
                    .filter(|l| !l.contains("] 0x") && !l.contains("[unknown]"))
                    .take(45),
            );
        }
        Ok(lines.join("\n"))
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            sys::kill(c.id(), libc::SIGINT);
            let _ = c.wait();
        }
    }
}

fn profile(pid: u32, d: Duration, tmp: &Path) -> Result<String> {
    let p = Profiler::start(pid, tmp, "steady", false)?;
    sys::sleep(d)?;
    p.finish()
}

fn scrape_compare(agent: &Agent, pg: Option<&Pushgateway>, n: usize, cfg: &Config, groups: &mut Vec<(usize, usize)>) -> Result<Vec<ScrapeRow>> {
    let text = agent.scrape_text()?;
    let agent_series = http::count_series(&text);
    let mut targets: Vec<(&'static str, u16, usize)> = vec![("apptheus", agent.port, agent_series)];
    if let Some(pg) = pg {
        let g = pg.load(&text)?;
        groups.push((n, g));
        let pg_series = http::count_series(&http::get(pg.port, "/metrics")?.text());
        targets.push(("pushgateway", pg.port, pg_series));
    }
    let mut rows = Vec::new();
    for format in Format::ALL {
        sys::check_interrupt()?;
        let headers = format.headers();
        let mut conns: Vec<Conn> = targets.iter().map(|t| Conn::open(t.1)).collect::<Result<_>>()?;
        let mut acc: Vec<(Vec<f64>, Vec<f64>, bool, String, f64)> = targets.iter().map(|_| (Vec::new(), Vec::new(), true, String::new(), 0.0)).collect();
        // Two unmeasured scrapes each, then interleaved measured ones (alternating who goes first).
        for c in conns.iter_mut() {
            for _ in 0..2 {
                c.get("/metrics", &headers)?;
            }
        }
        for i in 0..cfg.scrapes {
            let order: Vec<usize> = if i % 2 == 0 { (0..conns.len()).collect() } else { (0..conns.len()).rev().collect() };
            for k in order {
                let r = conns[k].get("/metrics", &headers)?;
                if r.status != 200 {
                    bail!("{} answered HTTP {} to a {} scrape", targets[k].0, r.status, format.name());
                }
                let a = &mut acc[k];
                a.0.push(r.elapsed.as_secs_f64() * 1e3);
                a.1.push(r.body.len() as f64);
                a.2 &= format.honoured(&r);
                if i == 0 {
                    a.3 = format!(
                        "{}{}",
                        r.header("content-type").unwrap_or("?"),
                        r.header("content-encoding").map(|e| format!(", {e}")).unwrap_or_default()
                    );
                    a.4 = if r.header("content-encoding").is_some_and(|e| e.eq_ignore_ascii_case("gzip")) {
                        http::gunzip(&r.body).map(|b| b.len() as f64).unwrap_or(f64::NAN)
                    } else {
                        r.body.len() as f64
                    };
                }
            }
        }
        for (k, (ms, body, honoured, answered, decoded)) in acc.into_iter().enumerate() {
            rows.push(ScrapeRow { n, target: targets[k].0, format, honoured, answered, ms, body, decoded, series: targets[k].2 });
        }
    }
    Ok(rows)
}

fn placement_phase(cfg: &Config, bins: &Bins, tmp: &Path, cleanup: &mut Vec<String>) -> Result<placement::PlacementRun> {
    // The launchers start in a Slurm-like job cgroup, where the default placement (auto) nests
    // each container in its caller's cgroup rather than moving it out from under the job.
    let job = placement::JobCgroups::create()?;
    let mut agent = Agent::start(&bins.agent, &[&bins.agent, &bins.client], tmp, "placement", &[])?;
    let r = placement::run(&agent, &bins.client, &job, cfg.bursts, cfg.burst, cfg.profile.is_some(), tmp);
    cleanup.extend(agent.stop());
    let mut r = r?;
    // The kernel floor, with the agent gone so that nothing competes with it: the same mkdirs
    // and moves, in the same job cgroups.
    eprintln!("bench: placement kernel floor ({} bursts of {})", cfg.bursts, cfg.burst);
    r.floor_ms = placement::kernel_floor(&job, cfg.bursts, cfg.burst, false)?;
    r.floor_unified_ms = placement::kernel_floor(&job, cfg.bursts, cfg.burst, true)?;
    cleanup.extend(job.remove());
    Ok(r)
}
