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
mod stats;
pub(crate) mod sys;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use agent::{Agent, Launchers};
use http::{Conn, Format};
use pushgw::Pushgateway;
use stats::{bytes, max, median, num, pct, ratio, Table};

const INTERVAL: Duration = Duration::from_millis(500);
/// The reference floor that keeps its descriptors open (pread), beside the issue's floor.
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

impl SamplingRow {
    fn us_per_sample(&self) -> f64 {
        median(&self.cpu_windows) / self.samples_per_s * 1e6
    }
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

    let report = render(&cfg, &args, &scenarios, &res, &machine, &command, &load_before, &load_after, started.elapsed());
    let out = args.out.clone().unwrap_or_else(|| {
        if args.quick {
            repo.join("target/bench/RESULTS.quick.md")
        } else {
            repo.join("bench/RESULTS.md")
        }
    });
    let old = std::fs::read_to_string(&out).unwrap_or_default();
    let frame = format!("{INTERPRETATION_BEGIN}\n(not written yet)\n{INTERPRETATION_END}");
    let mut text = report.replace(INTERPRETATION_PLACEHOLDER, interpretation(&old).as_deref().unwrap_or(&frame));
    // `cargo xtask soak` owns the "## Soak" section: carry it over.
    if let Some(soak) = soak_section(&old) {
        text = format!("{}\n\n{soak}", text.trim_end());
    }
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

// ---------------------------------------------------------------------------------------------
// Report

const INTERPRETATION_BEGIN: &str = "<!-- interpretation: kept across runs; edit by hand -->";
const INTERPRETATION_END: &str = "<!-- end of interpretation -->";
const INTERPRETATION_PLACEHOLDER: &str = "@@INTERPRETATION@@";

/// The hand-written interpretation of an earlier results file, markers included.
fn interpretation(old: &str) -> Option<String> {
    let a = old.find(INTERPRETATION_BEGIN)?;
    let b = old[a..].find(INTERPRETATION_END)? + a + INTERPRETATION_END.len();
    Some(old[a..b].to_string())
}

/// The "## Soak" section of an earlier results file (written by `cargo xtask soak`), to its end.
fn soak_section(old: &str) -> Option<&str> {
    let at = old.find("\n## Soak")? + 1;
    Some(&old[at..])
}

/// Median over rounds of attached/detached − 1 (perf's wall time): each round's two runs are
/// back to back, so the machine's load drifts less within a pair than across the run.
fn paired_slowdown(e: &ebpf::EbpfResult) -> f64 {
    paired(e, |r| r.wall_us)
}

fn paired(e: &ebpf::EbpfResult, f: impl Fn(&ebpf::PipeRun) -> f64) -> f64 {
    median(&e.attached.iter().zip(&e.detached).map(|(a, d)| f(a) / f(d) - 1.0).collect::<Vec<_>>())
}

fn goal(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

#[allow(clippy::too_many_arguments)]
fn render(
    cfg: &Config,
    args: &BenchArgs,
    scen: &BTreeSet<Scenario>,
    res: &Results,
    m: &sys::Machine,
    command: &str,
    load_before: &str,
    load_after: &str,
    took: Duration,
) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# Benchmarks{}\n", if args.quick { " (--quick: harness check, not results)" } else { "" });
    let _ = writeln!(o, "Written by `cargo xtask bench` (xtask/src/bench/); rerun it after any change to a hot path.\n");
    let _ = writeln!(o, "| | |\n|---|---|");
    let _ = writeln!(o, "| date | {} |", m.date);
    let _ = writeln!(o, "| commit | {} |", m.commit);
    let _ = writeln!(o, "| machine | {} cores ({}), {:.0} GiB, kernel {}, hybrid cgroups (v1 controllers + unified) |", m.cores, m.cpu_model, m.mem_gib, m.kernel);
    let _ = writeln!(o, "| load average (1/5/15 min) | {load_before} before, {load_after} after |");
    let _ = writeln!(o, "| command | `{command}` |");
    let _ = writeln!(o, "| duration | {:.0} s |", took.as_secs_f64());
    let _ = writeln!(o, "| agent | release build, `--monitor.interval=0.5s --log.level=warn`, relative `--cgroup.parent` |\n");

    // Goals
    let agent_row = |n: usize| res.sampling.iter().find(|r| r.n == n && r.who == "apptheus");
    let floor_row = |n: usize| res.sampling.iter().find(|r| r.n == n && r.who == "floor");
    let largest = cfg.sampling_ns.iter().copied().max().unwrap_or(0);
    let scrape_largest = cfg.scrape_ns.iter().copied().max().unwrap_or(0);
    let us_large = agent_row(largest).map(|r| r.us_per_sample());
    let floor_ratio = match (agent_row(largest), floor_row(largest)) {
        (Some(a), Some(f)) => Some(median(&a.cpu_windows) / median(&f.cpu_windows)),
        _ => None,
    };
    let rss = res.rss.iter().filter(|(w, _)| w.starts_with("N=")).map(|(_, s)| s.rss_kib).max();
    let p50 = |target: &str, n: usize| res.scrape.iter().find(|r| r.target == target && r.n == n && r.format == Format::Text).map(|r| pct(&r.ms, 50.0));
    let scrape_ratio = match (p50("apptheus", scrape_largest), p50("pushgateway", scrape_largest)) {
        (Some(a), Some(p)) => Some(a / p),
        _ => None,
    };
    let place = res.placement.as_ref();
    let ack_p99 = place.map(|p| pct(&p.placed.iter().filter(|x| !x.polled).map(|x| x.connect_to_ack_ns as f64 / 1e6).collect::<Vec<_>>(), 99.0));
    let vis_p99 = place.map(|p| pct(&p.placed.iter().filter_map(|x| x.ack_to_visible_ns).map(|v| v as f64 / 1e6).collect::<Vec<_>>(), 99.0));
    let eb = res.ebpf.as_ref().filter(|e| e.unavailable.is_none());
    let switch_ns = eb.and_then(|e| e.programs.iter().find(|(k, _)| k.contains("switch")).map(|(_, v)| median(&v.1)));
    let slowdown = eb.map(paired_slowdown);

    let _ = writeln!(o, "## Goals (issue 6)\n");
    let mut g = Table::new(&["goal", "target", "measured", "status"]);
    let lg = format!("N={largest}");
    g.row(vec![format!("sampling CPU per container-sample, {lg}"), "≤ 50 µs".into(), us_large.map(|v| format!("{} µs", num(v))).unwrap_or("–".into()), goal(us_large.map(|v| v <= 50.0)).into()]);
    g.row(vec![format!("sampling CPU vs the floor, {lg}"), "≤ 2×".into(), floor_ratio.map(|v| format!("{v:.2}×")).unwrap_or("–".into()), goal(floor_ratio.map(|v| v <= 2.0)).into()]);
    g.row(vec![format!("agent RSS, N={}", cfg.rss_n), "≤ 15 MiB".into(), rss.map(|k| bytes(k as f64 * 1024.0)).unwrap_or("–".into()), goal(rss.map(|k| k as f64 <= 15.0 * 1024.0)).into()]);
    g.row(vec![format!("scrape p50 (text) vs Pushgateway, N={scrape_largest}"), "≤ 1/3 (0.33×)".into(), scrape_ratio.map(|v| format!("{v:.2}×")).unwrap_or("–".into()), goal(scrape_ratio.map(|v| v <= 1.0 / 3.0)).into()]);
    let floors = place.filter(|p| !p.floor_ms.is_empty()).map(|p| format!(" (kernel floor of a burst: {} ms; {} ms in cgroup2 alone)", num(median(&p.floor_ms)), num(median(&p.floor_unified_ms))));
    g.row(vec![
        format!("placement connect → ack p99, bursts of {}", cfg.burst),
        "≤ 10 ms".into(),
        ack_p99.map(|v| format!("{} ms{}", num(v), floors.unwrap_or_default())).unwrap_or("–".into()),
        goal(ack_p99.map(|v| v <= 10.0)).into(),
    ]);
    g.row(vec!["first series after the ack, p99".into(), "≤ 500 ms (one interval)".into(), vis_p99.map(|v| format!("{} ms", num(v))).unwrap_or("–".into()), goal(vis_p99.filter(|v| v.is_finite()).map(|v| v <= 500.0)).into()]);
    g.row(vec!["eBPF sched_switch cost".into(), "≤ 150 ns/event".into(), switch_ns.map(|v| format!("{} ns", num(v))).unwrap_or("–".into()), goal(switch_ns.map(|v| v <= 150.0)).into()]);
    g.row(vec!["`perf bench sched pipe` slowdown, attached vs detached".into(), "≤ 5 %".into(), slowdown.map(|v| format!("{:+.1} %", v * 100.0)).unwrap_or("–".into()), goal(slowdown.map(|v| v <= 0.05)).into()]);
    o.push_str(&g.markdown());
    o.push('\n');

    // Goals of issue 14: the default placement nests launchers that run in a job, and costs no
    // more than twice the kernel's own work for it; keeping files open keeps sampling at the
    // pread floor.
    let pread_ratio = match (agent_row(largest), res.sampling.iter().find(|r| r.n == largest && r.who == FLOOR_OPEN)) {
        (Some(a), Some(f)) => Some(median(&a.cpu_windows) / median(&f.cpu_windows)),
        _ => None,
    };
    let place_ratio = place.filter(|p| !p.floor_ms.is_empty()).and_then(|p| ack_p99.map(|a| a / median(&p.floor_ms)));
    let _ = writeln!(o, "## Goals (issue 14: default placement, launchers in a job cgroup)\n");
    let mut g = Table::new(&["goal", "target", "measured", "status"]);
    g.row(vec![
        format!("placement connect → ack p99 vs the kernel floor of a burst (nested mkdirs and moves), bursts of {}", cfg.burst),
        "≤ 2×".into(),
        match (ack_p99, place.filter(|p| !p.floor_ms.is_empty())) {
            (Some(a), Some(p)) => format!("{:.2}× ({} ms against {} ms)", a / median(&p.floor_ms), num(a), num(median(&p.floor_ms))),
            _ => "–".into(),
        },
        goal(place_ratio.map(|v| v <= 2.0)).into(),
    ]);
    g.row(vec![
        format!("sampling CPU vs the pread floor, {lg}"),
        "≤ 1.2×".into(),
        pread_ratio.map(|v| format!("{v:.2}×")).unwrap_or("–".into()),
        goal(pread_ratio.map(|v| v <= 1.2)).into(),
    ]);
    o.push_str(&g.markdown());
    o.push('\n');

    // 1. Sampling
    let _ = writeln!(o, "## 1. Sampling cost\n");
    if scen.contains(&Scenario::Sampling) {
        let _ = writeln!(
            o,
            "N containers = `apptheus exec -- sleep 3600`, interval 0.5 s. CPU = utime+stime from /proc/<pid>/stat over {} s of steady state, in {} s windows; the figure is the median window (in brackets: the mean over the whole time). µs/sample = CPU ÷ samples actually taken (the agent's `apptheus_sample_duration_seconds_count`; the floor's own count). The floor reads the same {} files of the same N cgroups with open/read/close once per interval, while the agent is paused (SIGSTOP), so the two never compete for the cores; the ratio is against it. The second floor keeps every descriptor open and re-reads with one pread per file: it shows what the kernel's path lookup and open/close cost. RSS, threads and fds at the end of the window.\n",
            cfg.steady.as_secs(),
            cfg.window.as_secs(),
            sys::SAMPLED_FILES.len()
        );
        let mut t = Table::new(&["N", "process", "CPU s/s: median window (whole-run mean)", "% of a core", "µs CPU / container-sample", "RSS", "threads", "fds", "agent / floor CPU", "notes"]);
        for r in &res.sampling {
            let med = median(&r.cpu_windows);
            let vs = if r.who == "apptheus" { floor_row(r.n).map(|f| ratio(med, median(&f.cpu_windows))).unwrap_or("–".into()) } else { String::new() };
            t.row(vec![
                r.n.to_string(),
                r.who.to_string(),
                format!("{} ({})", num(med), num(r.cpu_mean)),
                format!("{:.1} %", med * 100.0),
                num(r.us_per_sample()),
                bytes(r.snap.rss_kib as f64 * 1024.0),
                r.snap.threads.to_string(),
                r.snap.fds.to_string(),
                vs,
                r.note.clone(),
            ]);
        }
        o.push_str(&t.markdown());
        let floors: Vec<&SamplingRow> = res.sampling.iter().filter(|r| r.who != "apptheus" && !r.per_file_us.is_empty()).collect();
        if !floors.is_empty() {
            let _ = writeln!(o, "\nWhere the floor's time goes: wall µs per file read (open+read+close, or one pread with the descriptor kept open); this is the kernel's cost of producing the file, nearly all system time:\n");
            let mut head = vec!["file".to_string()];
            head.extend(floors.iter().map(|f| format!("µs at N={}{}", f.n, if f.who == FLOOR_OPEN { ", pread" } else { ", open/read/close" })));
            let mut t = Table { head, rows: Vec::new() };
            for (i, (h, f)) in sys::SAMPLED_FILES.iter().enumerate() {
                let mut row = vec![format!("{h}/{f}")];
                row.extend(floors.iter().map(|r| num(r.per_file_us[i])));
                t.row(row);
            }
            let mut total = vec![format!("all {} (one container-sample)", sys::SAMPLED_FILES.len())];
            total.extend(floors.iter().map(|r| num(r.per_file_us.iter().sum())));
            t.row(total);
            o.push_str(&t.markdown());
        }
        if !res.rss.is_empty() {
            let _ = writeln!(o, "\nAgent memory (the goal is judged on the larger of the two N={} rows):\n", cfg.rss_n);
            let mut t = Table::new(&["when", "RSS", "peak RSS (VmHWM)", "threads", "fds"]);
            for (when, s) in &res.rss {
                t.row(vec![when.clone(), bytes(s.rss_kib as f64 * 1024.0), bytes(s.hwm_kib as f64 * 1024.0), s.threads.to_string(), s.fds.to_string()]);
            }
            o.push_str(&t.markdown());
        }
        if let Some((n, p)) = &res.profile {
            let _ = writeln!(o, "\nWhere the agent's CPU goes at N={n} (`perf record -F 999 -p <agent>` for {} s after the measurement; self time):\n\n```\n{p}\n```", cfg.profile.map(|d| d.as_secs()).unwrap_or(0));
        }
        if let Some(e) = &res.sampling_error {
            let _ = writeln!(o, "\n**Not completed:** {e}");
        }
    } else {
        let _ = writeln!(o, "Not run (`--scenarios`).");
    }
    o.push('\n');

    // 2. Scrape
    let _ = writeln!(o, "## 2. Scrape cost\n");
    if scen.contains(&Scenario::Scrape) {
        let _ = writeln!(
            o,
            "{} sequential scrapes of `/metrics` per format on one keep-alive connection per target, the agent's and the Pushgateway's interleaved (alternating which goes first); latency = request written → last body byte read. The Pushgateway ({}) runs on loopback and holds the agent's own exposition pushed as one group per container (`PUT /metrics/job/<container>`{}), plus one group for the agent's `apptheus_*` series; it adds `push_time_seconds`/`push_failure_time_seconds` per group and its own `go_*`/`process_*`, the agent's `push_time_seconds` and `process_*` are not pushed (the Pushgateway reserves or describes them itself). Bytes = body on the wire (compressed for gzip; decompressed size in brackets).\n",
            cfg.scrapes,
            if res.pushgateway_version.is_empty() { "not available".to_string() } else { res.pushgateway_version.clone() },
            res.groups.iter().map(|(n, g)| format!("; {g} groups at N={n}")).collect::<String>()
        );
        let mut t = Table::new(&["N", "target", "format", "answered with", "series", "p50 ms", "p99 ms", "bytes", "p50 apptheus / pushgateway"]);
        for r in &res.scrape {
            let vs = if r.target == "apptheus" {
                res.scrape
                    .iter()
                    .find(|p| p.target == "pushgateway" && p.n == r.n && p.format == r.format)
                    .map(|p| ratio(pct(&r.ms, 50.0), pct(&p.ms, 50.0)))
                    .unwrap_or("–".into())
            } else {
                String::new()
            };
            let b = median(&r.body);
            t.row(vec![
                r.n.to_string(),
                r.target.to_string(),
                r.format.name().to_string(),
                format!("{}{}", r.answered, if r.honoured { "" } else { " (**not what was asked**)" }),
                r.series.to_string(),
                num(pct(&r.ms, 50.0)),
                num(pct(&r.ms, 99.0)),
                if r.format == Format::Gzip { format!("{} ({})", bytes(b), bytes(r.decoded)) } else { bytes(b) },
                vs,
            ]);
        }
        o.push_str(&t.markdown());
        if let Some(e) = &res.scrape_error {
            let _ = writeln!(o, "\n**Not completed:** {e}");
        }
    } else {
        let _ = writeln!(o, "Not run (`--scenarios`).");
    }
    o.push('\n');

    // 3. Placement
    let _ = writeln!(o, "## 3. Placement latency\n");
    if let Some(p) = &res.placement {
        let ack_of = |f: &dyn Fn(&placement::Placed) -> bool| -> Vec<f64> { p.placed.iter().filter(|x| f(x)).map(|x| x.connect_to_ack_ns as f64 / 1e6).collect() };
        let ack_quiet = ack_of(&|x| !x.polled);
        let ack_polled = ack_of(&|x| x.polled);
        let vis: Vec<f64> = p.placed.iter().filter_map(|x| x.ack_to_visible_ns).map(|v| v as f64 / 1e6).collect();
        let vis_lo: Vec<f64> = p.placed.iter().filter_map(|x| x.ack_to_visible_lower_ns).map(|v| v as f64 / 1e6).collect();
        let unseen = p.placed.iter().filter(|x| x.polled && x.ack_to_visible_ns.is_none()).count();
        let _ = writeln!(
            o,
            "{} bursts of {} launchers released together (each is started first, then all are told to connect at once), each started in a Slurm-like job cgroup (`job_<pid>` below the harness's cgroup in every hierarchy), so that the default placement (`auto`) nests its container there; containers are kept, so the agent holds up to {} by the end. A launcher is a copy of the harness binary listed in `--trust.path`: it does what `apptheus exec` does before running its command (connect, read the ack line, hold the connection) and times connect() → ack with CLOCK_MONOTONIC, so no process start-up is in the figure. Odd bursts run alone; during even bursts /metrics is polled back to back to see when each container's first series (`container_cpu_usage_seconds_total`) appears: the end of the first scrape that has it, and its start as a lower bound (negative when the first sample was stored before the launcher read its ack); {} ms median per scrape. The goal is judged on the unpolled bursts. {} of {} launchers refused; {} never visible within 10 s.\n",
            p.bursts,
            p.burst,
            (p.bursts + p.extra_bursts) * p.burst,
            num(median(&p.scrape_ms)),
            p.refused.len(),
            p.bursts * p.burst,
            unseen
        );
        let mut t = Table::new(&["measure", "p50 ms", "p99 ms", "max ms", "count"]);
        let mut row = |name: &str, v: &[f64]| t.row(vec![name.into(), num(pct(v, 50.0)), num(pct(v, 99.0)), num(max(v)), v.len().to_string()]);
        row("connect → ack, unpolled bursts", &ack_quiet);
        row("connect → ack, bursts with /metrics polled", &ack_polled);
        row("ack → first series in /metrics (end of scrape)", &vis);
        row("ack → first series (start of scrape, lower bound)", &vis_lo);
        o.push_str(&t.markdown());
        if !p.floor_ms.is_empty() {
            let ack_max_per_burst = p.bursts.div_ceil(2).max(1);
            let _ = writeln!(
                o,
                "\nKernel floor, same run, agent stopped: for {} sleeping processes, `mkdir` of each one's cgroup in the job's cgroup (where the agent nests) and the write of its pid to `cgroup.procs`, back to back in one thread, and nothing else (`placement::kernel_floor`). The kernel serialises these (`cgroup_mutex`, the thread-group rwsem), so no placer acks the last launcher of a burst sooner. Median of {} bursts: **{} ms** in the {} hierarchies the agent uses on this host ({} ms per placement), **{} ms** in the unified hierarchy alone (the work of a pure cgroup v2 host). The agent's slowest ack per unpolled burst is {} ms (median of {ack_max_per_burst}), {} the six-hierarchy floor.\n",
                p.burst,
                p.floor_ms.len(),
                num(median(&p.floor_ms)),
                sys::Hierarchies::detect().map(|h| {
                    let mut m: Vec<_> = h.mounts.values().map(|v| v.0.clone()).collect();
                    m.sort();
                    m.dedup();
                    m.len()
                }).unwrap_or(0),
                num(median(&p.floor_ms) / p.burst as f64),
                num(median(&p.floor_unified_ms)),
                num(median(&p.burst_cpu_wall.iter().map(|x| x.1 * 1e3).collect::<Vec<_>>())),
                ratio(median(&p.burst_cpu_wall.iter().map(|x| x.1 * 1e3).collect::<Vec<_>>()), median(&p.floor_ms)),
            );
        }
        if !p.burst_cpu_wall.is_empty() {
            let cpu: f64 = p.burst_cpu_wall.iter().map(|x| x.0).sum();
            let wall: Vec<f64> = p.burst_cpu_wall.iter().map(|x| x.1 * 1e3).collect();
            let _ = writeln!(
                o,
                "\nUnpolled bursts: agent CPU {} ms per placement (utime+stime from release to the last ack ÷ launchers), release → last ack {} ms median per burst ({} of a core busy on average).",
                num(cpu * 1e3 / (p.burst_cpu_wall.len() * p.burst) as f64),
                num(median(&wall)),
                format!("{:.0} %", cpu / (wall.iter().sum::<f64>() / 1e3) * 100.0)
            );
        }
        if let Some(prof) = &p.profile {
            let _ = writeln!(o, "\nWhere the agent's CPU goes placing an extra first burst, not counted above (`perf record -g -F 999 -p <agent>` from release to the last ack):\n\n```\n{prof}\n```");
        }
        for r in p.refused.iter().take(5) {
            let _ = writeln!(o, "- refused: {r}");
        }
    } else if let Some(e) = &res.placement_error {
        let _ = writeln!(o, "**Not completed:** {e}");
    } else {
        let _ = writeln!(o, "Not run (`--scenarios`).");
    }
    o.push('\n');

    // 4. eBPF
    let _ = writeln!(o, "## 4. eBPF overhead\n");
    match (&res.ebpf, &res.ebpf_error) {
        (Some(e), _) if e.unavailable.is_some() => {
            let _ = writeln!(
                o,
                "**Not measurable yet:** {}. The harness has the measurement ready: with the programs up it enables `kernel.bpf_stats_enabled` (restored afterwards), reads run_time_ns/run_cnt of the agent's programs from `bpftool -j prog show` around each attached run, and times `taskset -c 0 perf bench sched pipe -l {}` with the agent running (1 container) with programs attached vs. with `--ebpf.disable`, {} alternating rounds, medians.",
                e.unavailable.as_deref().unwrap_or(""),
                e.loops,
                cfg.ebpf_rounds
            );
        }
        (Some(e), _) => {
            let _ = writeln!(o, "`taskset -c 0 perf bench sched pipe -l {}` (both tasks on one CPU: two context switches per round trip, no cross-CPU wake-up, whose cost in this VM swings with the host's load), {} rounds of one attached (agent with 1 container) and one detached (`--ebpf.disable`) run, in alternating order. Timed runs have `kernel.bpf_stats_enabled=0` (forced, restored afterwards) and start once no other tracing BPF program is loaded on the machine (another agent's programs would slow both sides); a run during which other processes took CPU 0 (perf's wall time > 1.02 × the CPU time of its two tasks) is repeated, up to 5 times. Per-program cost from a second run in each attached round with `kernel.bpf_stats_enabled=1`; those figures include the statistics' own two clock reads per run (an empty program measures ~50 ns/event here). perf bench's tasks are not in a container, so this is the cost every task on the node pays.\n", e.loops, e.attached.len());
            let mut t = Table::new(&["program", "type", "ns/event (median of runs)", "events per run (median)"]);
            for (name, (kind, ns, cnt)) in &e.programs {
                t.row(vec![name.clone(), kind.clone(), num(median(ns)), format!("{:.0}", median(&cnt.iter().map(|c| *c as f64).collect::<Vec<_>>()))]);
            }
            o.push_str(&t.markdown());
            o.push('\n');
            let wall = |v: &[ebpf::PipeRun]| v.iter().map(|r| r.wall_us).collect::<Vec<_>>();
            let cpu = |v: &[ebpf::PipeRun]| v.iter().map(|r| r.cpu_us).collect::<Vec<_>>();
            let all = |v: &[f64]| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ");
            let mut t = Table::new(&["sched pipe", "µs/op median (perf, wall)", "CPU µs/op median", "runs", "all runs (wall)"]);
            for (label, runs) in [("attached", &e.attached), ("detached", &e.detached)] {
                t.row(vec![label.into(), num(median(&wall(runs))), num(median(&cpu(runs))), runs.len().to_string(), all(&wall(runs))]);
            }
            let per_round: Vec<String> = e.attached.iter().zip(&e.detached).map(|(a, d)| format!("{:+.1} %", (a.wall_us / d.wall_us - 1.0) * 100.0)).collect();
            let per_round_cpu: Vec<String> = e.attached.iter().zip(&e.detached).map(|(a, d)| format!("{:+.1} %", (a.cpu_us / d.cpu_us - 1.0) * 100.0)).collect();
            t.row(vec!["slowdown, ratio of the medians".into(), format!("{:+.1} %", (median(&wall(&e.attached)) / median(&wall(&e.detached)) - 1.0) * 100.0), format!("{:+.1} %", (median(&cpu(&e.attached)) / median(&cpu(&e.detached)) - 1.0) * 100.0), String::new(), String::new()]);
            t.row(vec!["slowdown, median of the per-round ratios (the goal's figure: wall)".into(), format!("{:+.1} %", paired_slowdown(e) * 100.0), format!("{:+.1} %", paired(e, |r| r.cpu_us) * 100.0), per_round.len().to_string(), per_round.join(", ")]);
            t.row(vec!["per-round ratios of CPU time".into(), String::new(), String::new(), per_round_cpu.len().to_string(), per_round_cpu.join(", ")]);
            o.push_str(&t.markdown());
            let runs: Vec<&ebpf::PipeRun> = e.attached.iter().chain(&e.detached).collect();
            let repeated = runs.iter().filter(|r| r.tries > 1).count();
            let shared = runs.iter().filter(|r| r.shared).count();
            let waited: f64 = runs.iter().map(|r| r.waited_s).sum();
            let foreign = runs.iter().filter(|r| r.foreign > 0).count();
            let _ = writeln!(o, "\nOf {} timed runs, {repeated} were repeated because other processes shared CPU 0 ({shared} still shared after 5 tries); {waited:.0} s were spent waiting for other tracing BPF programs to be unloaded, and {foreign} ran with such programs loaded.", runs.len());
        }
        (None, Some(err)) => {
            let _ = writeln!(o, "**Not completed:** {err}");
        }
        (None, None) => {
            let _ = writeln!(o, "Not run (`--scenarios`).");
        }
    }
    o.push('\n');
    let _ = writeln!(o, "## 5. Series per container and a cluster's cardinality\n");
    match &res.cardinality {
        Some(Ok(variants)) => cardinality::render(&mut o, variants),
        Some(Err(err)) => {
            let _ = writeln!(o, "**Not completed:** {err}");
        }
        None => {
            let _ = writeln!(o, "Not run (`--scenarios`).");
        }
    }
    o.push('\n');
    if !res.cleanup.is_empty() {
        let _ = writeln!(o, "Clean-up problems: {}\n", res.cleanup.join("; "));
    }
    let _ = writeln!(o, "## Interpretation\n\n{INTERPRETATION_PLACEHOLDER}");
    o
}
