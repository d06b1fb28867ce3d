//! `cargo xtask soak`: many short container lifecycles through `apptheus exec`, then proof
//! that nothing leaked: no cgroup left in any hierarchy, the agent's descriptors back to their
//! idle count, its RSS within 10 % of its value after the first 1000 jobs (read once the store
//! is full, and compared at the same store size), no entry left in
//! the eBPF maps, and every job's final sample seen in /metrics. The figures go to
//! bench/RESULTS.md (section "Soak").

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::bench::agent::Agent;
use crate::bench::sys;

#[derive(clap::Args)]
pub struct SoakArgs {
    /// Container lifecycles in all.
    #[arg(long, default_value_t = 10_000)]
    pub jobs: usize,
    /// Lifecycles running at once.
    #[arg(long, default_value_t = 50)]
    pub parallel: usize,
    /// How long each job runs (`sleep`; 0: `true`). At 0.4 s, 50 jobs at a time make ~110
    /// lifecycles/s, so the first 1000 take longer than the retention: the store is full when
    /// the first RSS reading is taken at job 1000.
    #[arg(long, default_value_t = 0.4)]
    pub job_secs: f64,
    /// Lifecycles started per second (0: as fast as `--parallel` allows). A steady rate keeps
    /// the store at one size (rate × retention ended containers) at both RSS readings; an
    /// unpaced run's rate, and so its store, follows the machine's load.
    #[arg(long, default_value_t = 0)]
    pub rate: u32,
    /// Write the figures into bench/RESULTS.md.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub write: bool,
}

pub fn run(args: SoakArgs) -> Result<()> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("cargo xtask soak must run as root (the agent creates cgroups)");
    }
    sys::install_interrupt_handler();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?.to_path_buf();
    let bin = crate::bench::build_agent(&repo)?;
    let tmp = PathBuf::from(format!("/tmp/apptheus-soak-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let load_before = sys::loadavg();
    let started = Instant::now();
    // A short retention keeps the scrapes small; every job is still scraped at least once in it.
    let mut agent =
        Agent::start(&bin, &[bin.as_path()], &tmp, "soak", &[format!("--metrics.retention={}s", RETENTION.as_secs())])?;
    std::thread::sleep(Duration::from_secs(1));
    let idle = sys::snapshot(agent.pid)?;

    // Every container name that showed up with container_end_time_seconds: its final sample.
    let seen_final: Arc<Mutex<HashSet<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let scraper = {
        let (seen, stop, port) = (seen_final.clone(), stop.clone(), agent.port);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(r) = crate::bench::http::get(port, "/metrics") {
                    let text = r.text();
                    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                    for line in text.lines().filter(|l| l.starts_with("container_end_time_seconds{")) {
                        if let Some(name) = label(line, "name") {
                            seen.insert(name.to_string());
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(1000));
            }
        })
    };

    let mut running: Vec<Child> = Vec::new();
    let mut ids: Vec<String> = Vec::with_capacity(args.jobs);
    let mut failed = 0usize;
    let mut rss_after_1000 = None;
    let mut launched = 0usize;
    let jobs_started = Instant::now();
    // When job `k` may start: k / rate seconds after the first.
    let due = |k: usize| match args.rate {
        0 => jobs_started,
        r => jobs_started + Duration::from_secs_f64(k as f64 / r as f64),
    };
    let job: Vec<String> = if args.job_secs > 0.0 { vec!["sleep".into(), args.job_secs.to_string()] } else { vec!["true".into()] };
    while launched < args.jobs || !running.is_empty() {
        sys::check_interrupt()?;
        while launched < args.jobs && running.len() < args.parallel && Instant::now() >= due(launched) {
            let child = Command::new(&bin)
                .args(["exec", &format!("--socket.path={}", agent.socket.display()), "--"])
                .args(&job)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("spawning apptheus exec")?;
            ids.push(format!("apptheus_{}", child.id()));
            running.push(child);
            launched += 1;
        }
        let mut i = 0;
        while i < running.len() {
            match running[i].try_wait()? {
                Some(status) => {
                    if !status.success() {
                        failed += 1;
                    }
                    running.swap_remove(i);
                }
                None => i += 1,
            }
        }
        let done = launched - running.len();
        // The store holds every job that ended within the retention: it reaches its steady size
        // only one retention after the start, so the first RSS is taken no earlier than that.
        // Expiry runs once a second, so the store is full (steady) one retention and two
        // seconds after the first job.
        if rss_after_1000.is_none()
            && done >= 1000.min(args.jobs)
            && jobs_started.elapsed() >= RETENTION + Duration::from_secs(2)
        {
            rss_after_1000 = Some((steady_rss(agent.pid)?, retained_now(agent.port), done));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let jobs_wall = started.elapsed();
    // Same steady state as at the 1000 mark (as many retained containers in the store).
    let rss_steady_end = (steady_rss(agent.pid)?, retained_now(agent.port));

    // Let the last containers end, their final samples be scraped, and their cgroups go.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !agent.live_container_dirs().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(6));
    stop.store(true, Ordering::Relaxed);
    let _ = scraper.join();
    let mut fds_end = sys::snapshot(agent.pid)?.fds;
    let deadline = Instant::now() + Duration::from_secs(10);
    while fds_end > idle.fds && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        fds_end = sys::snapshot(agent.pid)?.fds;
    }
    let end = sys::snapshot(agent.pid)?;
    let leaked = agent.live_container_dirs();
    let map_entries = ebpf_map_entries(agent.pid);
    let seen = seen_final.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let missing: Vec<&String> = ids.iter().filter(|id| !seen.contains(*id)).collect();
    let problems = agent.stop();
    let _ = std::fs::remove_dir_all(&tmp);

    let (rss_1000, retained_1000, jobs_at_first) = rss_after_1000.unwrap_or((end.rss_kib, 0, args.jobs));
    let (rss_end, retained_end) = rss_steady_end;
    let rss_change = (rss_end as f64 - rss_1000 as f64) / rss_1000.max(1) as f64 * 100.0;
    // The readings compare like with like only when the store held about as many containers.
    let same_load = retained_1000.abs_diff(retained_end) * 10 <= retained_1000.max(retained_end);
    let mut checks: Vec<(String, String, bool)> = vec![
        ("launchers that failed".into(), failed.to_string(), failed == 0),
        ("leaked container cgroups (all hierarchies)".into(), leaked.len().to_string(), leaked.is_empty()),
        ("agent fds: idle → after".into(), format!("{} → {}", idle.fds, end.fds), end.fds <= idle.fds),
        (
            format!("agent RSS: after the first {jobs_at_first} jobs (store full) → after the last job"),
            format!("{rss_1000} KiB → {rss_end} KiB ({rss_change:+.1} %)"),
            rss_change.abs() <= 10.0,
        ),
        (
            "ended containers in the store at those two readings (within 10 %: same load)".into(),
            format!("{retained_1000} → {retained_end}"),
            same_load,
        ),
        ("agent RSS once every job's series expired (idle: {} KiB)".replace("{}", &idle.rss_kib.to_string()), format!("{} KiB", end.rss_kib), true),
        ("jobs whose final sample was not seen in /metrics".into(), missing.len().to_string(), missing.is_empty()),
    ];
    match &map_entries {
        Ok(entries) => {
            let total: usize = entries.iter().map(|(_, n)| n).sum();
            let text = entries.iter().map(|(m, n)| format!("{m} {n}")).collect::<Vec<_>>().join(", ");
            checks.push(("entries left in the agent's eBPF maps".into(), text, total == 0));
        }
        Err(e) => checks.push(("entries left in the agent's eBPF maps".into(), format!("not read: {e:#}"), false)),
    }
    for p in &problems {
        checks.push(("clean-up".into(), p.clone(), false));
    }

    let mut report = String::new();
    let _ = writeln!(report, "## Soak\n");
    let _ = writeln!(
        report,
        "`cargo xtask soak` ({} lifecycles of `apptheus exec -- {}`, {} at a time, {}, release build, `--monitor.interval=0.5s --metrics.retention=5s`; RSS readings are medians of five 20 ms apart), {} UTC, commit {}, load average {} before / {} after. The jobs took {:.1} s ({:.0} lifecycles/s).\n",
        args.jobs,
        job.join(" "),
        args.parallel,
        match args.rate {
            0 => "unpaced".to_string(),
            r => format!("started at {r}/s"),
        },
        utc_now(),
        git_head(&repo),
        load_before,
        sys::loadavg(),
        jobs_wall.as_secs_f64(),
        args.jobs as f64 / jobs_wall.as_secs_f64()
    );
    let _ = writeln!(report, "| check | measured | ok |\n|---|---|---|");
    for (what, value, ok) in &checks {
        let _ = writeln!(report, "| {what} | {value} | {} |", if *ok { "yes" } else { "**no**" });
    }
    println!("{report}");
    if args.write {
        write_section(&repo.join("bench/RESULTS.md"), &report)?;
    }
    let bad: Vec<&String> = checks.iter().filter(|c| !c.2).map(|c| &c.0).collect();
    if !bad.is_empty() {
        bail!("soak: failed checks: {bad:?}");
    }
    Ok(())
}

/// The value of `name="..."` in an exposition line.
fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("{name}=\""))? + name.len() + 2;
    let end = line[start..].find('"')? + start;
    Some(&line[start..end])
}

/// Entries in the agent's per-container eBPF maps (COUNTERS, the owned FAST_COUNTERS slots;
/// MONITORED too for agents built before it went): the map ids come from the agent's own
/// descriptors (/proc/<pid>/fdinfo `map_id:`), the names and entries from bpftool.
fn ebpf_map_entries(pid: u32) -> Result<Vec<(String, usize)>> {
    let mut ids = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))?.flatten() {
        let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
        if let Some(id) = info.lines().find_map(|l| l.strip_prefix("map_id:")).and_then(|v| v.trim().parse::<u64>().ok()) {
            ids.push(id);
        }
    }
    let mut found = Vec::new();
    for id in ids {
        let show = Command::new("bpftool").args(["-j", "map", "show", "id", &id.to_string()]).output().context("running bpftool (apt install bpftool)")?;
        let meta: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap_or(serde_json::Value::Null);
        let name = meta["name"].as_str().unwrap_or_default().to_string();
        if name == "MONITORED" || name == "COUNTERS" || name == "FAST_COUNTERS" {
            let dump = Command::new("bpftool").args(["-j", "map", "dump", "id", &id.to_string()]).output()?;
            let entries: serde_json::Value = serde_json::from_slice(&dump.stdout).unwrap_or(serde_json::Value::Null);
            let entries = entries.as_array().map(Vec::as_slice).unwrap_or_default();
            let count = if name == "FAST_COUNTERS" {
                // An array has every entry: count the owned ones (a non-zero owner, the value's
                // first 8 bytes, on CPU 0).
                entries.iter().filter(|e| fast_slot_owned(e)).count()
            } else {
                entries.len()
            };
            found.push((name, count));
        }
    }
    if found.is_empty() {
        bail!("the agent (pid {pid}) holds no COUNTERS map: eBPF not loaded?");
    }
    found.sort();
    Ok(found)
}

/// Whether a `FAST_COUNTERS` entry of `bpftool -j map dump` (raw bytes, no BTF) has an owner.
fn fast_slot_owned(entry: &serde_json::Value) -> bool {
    let bytes = entry["values"][0]["value"].as_array().map(Vec::as_slice).unwrap_or_default();
    bytes.iter().take(8).any(|b| b.as_str().is_some_and(|b| b != "0x00"))
}

/// The retention the soak's agent runs with.
const RETENTION: Duration = Duration::from_secs(5);

/// The median of five RSS readings 20 ms apart: a scrape body in flight (megabytes, for a
/// moment) would otherwise decide a single reading.
fn steady_rss(pid: u32) -> Result<u64> {
    let mut readings = Vec::new();
    for _ in 0..5 {
        readings.push(sys::snapshot(pid)?.rss_kib);
        std::thread::sleep(Duration::from_millis(20));
    }
    readings.sort_unstable();
    Ok(readings[2])
}

/// Ended containers the store holds now (their `container_end_time_seconds` series), to say
/// what an RSS reading was taken against; scraped just after the reading, so it does not count.
fn retained_now(port: u16) -> usize {
    crate::bench::http::get(port, "/metrics")
        .map(|r| r.text().lines().filter(|l| l.starts_with("container_end_time_seconds{")).count())
        .unwrap_or(0)
}

/// Replace the "## Soak" section of RESULTS.md (or append it).
fn write_section(path: &Path, section: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let new = match old.find("## Soak") {
        Some(start) => {
            let rest = &old[start + 1..];
            let end = rest.find("\n## ").map(|i| start + 1 + i + 1).unwrap_or(old.len());
            format!("{}{}{}", &old[..start], section, &old[end..])
        }
        None => format!("{}\n{}", old.trim_end(), section),
    };
    std::fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

fn git_head(repo: &Path) -> String {
    Command::new("git")
        .current_dir(repo)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
