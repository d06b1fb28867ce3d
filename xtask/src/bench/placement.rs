//! Placement latency: launchers connect in bursts; connect → ack is timed inside each launcher,
//! and the harness polls /metrics for each new container's first series.
//!
//! The launcher is a copy of this binary re-executed with a hidden flag and listed in the
//! agent's `--trust.path` (the agent trusts by executable identity, so a copy placed for the
//! bench is as trusted as `apptheus exec`). It does exactly what a launcher does (connect,
//! read the ack line, hold the connection) with CLOCK_MONOTONIC readings around it, so no
//! process start-up cost is mixed into the figure. To make a burst simultaneous, each launcher
//! starts, says "ready", and connects only when the harness writes a byte to its stdin; it
//! then holds the connection until its stdin closes.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::agent::Agent;
use super::http::{self, Conn};
use super::sys;

/// Entry point of a re-executed launcher.
pub fn client_main(socket: &Path, cgroups: Option<&str>) -> Result<()> {
    for dir in cgroups.into_iter().flat_map(|d| d.split(':')).filter(|d| !d.is_empty()) {
        let procs = Path::new(dir).join("cgroup.procs");
        std::fs::write(&procs, std::process::id().to_string()).with_context(|| format!("moving into {}", procs.display()))?;
    }
    let mut stdin = std::io::stdin().lock();
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut go = [0u8; 1];
    if stdin.read(&mut go)? == 0 {
        return Ok(());
    }
    let t0 = sys::mono_ns();
    let stream = UnixStream::connect(socket);
    let t1 = sys::mono_ns();
    let stream = match stream {
        Ok(s) => s,
        Err(e) => {
            writeln!(out, "{t0} {t1} 0 connect-error {e}")?;
            return Ok(());
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = String::new();
    let mut reader = BufReader::new(&stream);
    let got = reader.read_line(&mut line);
    let t2 = sys::mono_ns();
    match got {
        Ok(_) => writeln!(out, "{t0} {t1} {t2} {}", line.trim())?,
        Err(e) => writeln!(out, "{t0} {t1} 0 read-error {e}")?,
    }
    out.flush()?;
    drop(out);
    // Hold the connection (and so the container) until the harness closes our stdin.
    let mut rest = Vec::new();
    let _ = stdin.read_to_end(&mut rest);
    drop(stream);
    Ok(())
}

struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    id: String,
}

/// Launchers of the placement scenario; dropping closes their stdin, then kills any left.
pub struct Clients(Vec<Client>);

impl Drop for Clients {
    fn drop(&mut self) {
        for c in &mut self.0 {
            drop(c.stdin.take());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in &mut self.0 {
            while c.child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    sys::kill(c.child.id(), libc::SIGKILL);
                    let _ = c.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

/// One launcher's figures, in nanoseconds.
#[derive(Debug, Clone)]
pub struct Placed {
    /// Whether /metrics was being polled during this launcher's burst.
    pub polled: bool,
    pub connect_to_ack_ns: u64,
    /// From the ack to the end of the first scrape that had a series of the container.
    pub ack_to_visible_ns: Option<i64>,
    /// From the ack to the start of that scrape (lower bound of the same).
    pub ack_to_visible_lower_ns: Option<i64>,
}

pub struct PlacementRun {
    pub placed: Vec<Placed>,
    pub refused: Vec<String>,
    pub scrape_ms: Vec<f64>,
    pub bursts: usize,
    pub burst: usize,
    /// Bursts placed before the counted ones (the profiled one).
    pub extra_bursts: usize,
    /// Per burst: agent CPU seconds from release to the last ack, and that wall time.
    pub burst_cpu_wall: Vec<(f64, f64)>,
    pub profile: Option<String>,
    /// [`kernel_floor`] per burst, in every hierarchy and in the unified one alone (ms).
    pub floor_ms: Vec<f64>,
    pub floor_unified_ms: Vec<f64>,
}

/// A Slurm-like job cgroup (`job_<pid>`) below the harness's own cgroup in each hierarchy the
/// agent uses: its name makes the default placement nest containers started in it.
pub struct JobCgroups {
    /// One directory per mount, hierarchy name first (cpu and cpuacct may share one).
    pub dirs: Vec<(String, std::path::PathBuf)>,
}

impl JobCgroups {
    pub fn create() -> Result<JobCgroups> {
        let hier = sys::Hierarchies::detect()?;
        let mut dirs: Vec<(String, std::path::PathBuf)> = Vec::new();
        for (name, own) in hier.own_dirs(std::process::id())? {
            let dir = own.join(format!("job_{}", std::process::id()));
            if dirs.iter().any(|(_, d)| *d == dir) {
                continue;
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
            dirs.push((name, dir));
        }
        Ok(JobCgroups { dirs })
    }

    fn joined(&self) -> String {
        self.dirs.iter().map(|(_, d)| d.to_string_lossy().into_owned()).collect::<Vec<_>>().join(":")
    }

    /// Removes the job cgroups (what the agent nested in them is gone by now); problems, if any.
    pub fn remove(&self) -> Vec<String> {
        self.dirs.iter().flat_map(|(_, d)| sys::rmdir_cgroup_tree(d)).collect()
    }
}

pub fn run(agent: &Agent, client_bin: &Path, job: &JobCgroups, bursts: usize, burst: usize, profile: bool, tmp: &Path) -> Result<PlacementRun> {
    let mut profile_text = None;
    let exe_name = client_bin.file_name().unwrap().to_string_lossy().into_owned();
    let mut clients = Clients(Vec::new());
    let mut placed = Vec::new();
    let mut refused = Vec::new();
    let mut scrape_ms = Vec::new();
    let mut burst_cpu_wall = Vec::new();
    // When a profile is asked for, an extra burst comes first and is profiled: `perf record`
    // slows the agent, so that burst is left out of every figure.
    let extra = usize::from(profile);
    for b in 0..bursts + extra {
        sys::check_interrupt()?;
        let first = clients.0.len();
        let profiled = b < extra;
        let profiler = if profiled { super::Profiler::start(agent.pid, tmp, "placement", true).ok() } else { None };
        for _ in 0..burst {
            let mut child = Command::new(client_bin)
                .arg("bench")
                .arg(format!("--internal-client={}", agent.socket.display()))
                .arg(format!("--internal-client-cgroups={}", job.joined()))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .process_group(0)
                .spawn()
                .context("starting a placement launcher")?;
            let id = format!("{exe_name}_{}", child.id());
            let stdin = child.stdin.take();
            let stdout = BufReader::new(child.stdout.take().unwrap());
            clients.0.push(Client { child, stdin, stdout, id });
        }
        // Every launcher of the burst is started; release them together.
        for c in &mut clients.0[first..] {
            let mut l = String::new();
            c.stdout.read_line(&mut l)?;
            if l.trim() != "ready" {
                bail!("launcher {} said {l:?}", c.id);
            }
        }
        let cpu0 = sys::snapshot(agent.pid)?.cpu_s;
        let released = sys::mono_ns();
        for c in &mut clients.0[first..] {
            c.stdin.as_mut().unwrap().write_all(b"g")?;
        }
        // Every other burst, poll /metrics back to back (in a thread, while the acks are read)
        // until every container of the burst has a series (or 10 s). The other bursts are not
        // polled, so their connect → ack has no scrape competing with placement.
        let polled = !profiled && (b - extra) % 2 == 1;
        let ids: Vec<String> = clients.0[first..].iter().map(|c| c.id.clone()).collect();
        let port = agent.port;
        let poller = polled.then(|| std::thread::spawn(move || poll_visible(port, &ids)));
        let mut lines = Vec::new();
        for c in clients.0[first..].iter_mut() {
            let mut l = String::new();
            c.stdout.read_line(&mut l)?;
            lines.push(l);
        }
        let last_ack = lines.iter().filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()).max().unwrap_or(released);
        let cpu1 = sys::snapshot(agent.pid)?.cpu_s;
        if let Some(p) = profiler {
            profile_text = Some(p.finish().unwrap_or_else(|e| format!("(no profile: {e:#})")));
        }
        if !polled && !profiled {
            burst_cpu_wall.push((cpu1 - cpu0, last_ack.saturating_sub(released) as f64 / 1e9));
        }
        let seen = match poller {
            Some(t) => {
                let (seen, ms) = t.join().map_err(|_| anyhow::anyhow!("poller panicked"))??;
                scrape_ms.extend(ms);
                seen
            }
            None => vec![None; burst],
        };
        for (i, (c, l)) in clients.0[first..].iter().zip(lines).enumerate() {
            let mut w = l.trim().splitn(4, ' ');
            let t0: u64 = w.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let _t1: u64 = w.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let t2: u64 = w.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            let ack = w.next().unwrap_or("");
            if t2 == 0 || !ack.contains("\"status\":\"ok\"") {
                refused.push(format!("{}: {}", c.id, l.trim()));
                continue;
            }
            if profiled {
                continue;
            }
            placed.push(Placed {
                polled,
                connect_to_ack_ns: t2 - t0,
                ack_to_visible_ns: seen[i].map(|(_, e)| e as i64 - t2 as i64),
                ack_to_visible_lower_ns: seen[i].map(|(s, _)| s as i64 - t2 as i64),
            });
        }
        eprintln!("bench: placement burst {}/{}: {} containers{}", b + 1, bursts + extra, clients.0.len(), if profiled { " (profiled, not counted)" } else { "" });
        // Let the burst settle before the next one.
        sys::sleep(Duration::from_millis(1000))?;
    }
    let run = PlacementRun {
        placed,
        refused,
        scrape_ms,
        bursts,
        burst,
        extra_bursts: extra,
        burst_cpu_wall,
        profile: profile_text,
        floor_ms: Vec::new(),
        floor_unified_ms: Vec::new(),
    };
    drop(clients);
    Ok(run)
}

/// Scrape back to back until each of `ids` has a sampled series: per id, (start, end) of the
/// first scrape that had it; and every scrape's duration in ms.
fn poll_visible(port: u16, ids: &[String]) -> Result<(Vec<Option<(u64, u64)>>, Vec<f64>)> {
    let mut conn = Conn::open(port)?;
    let mut seen: Vec<Option<(u64, u64)>> = vec![None; ids.len()];
    let mut ms = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.iter().any(|s| s.is_none()) && Instant::now() < deadline {
        sys::check_interrupt()?;
        let start = sys::mono_ns();
        let r = conn.get("/metrics", &[("Accept", http::ACCEPT_TEXT)])?;
        let end = sys::mono_ns();
        ms.push((end - start) as f64 / 1e6);
        let names = sampled_names(&r.text());
        for (i, id) in ids.iter().enumerate() {
            if seen[i].is_none() && names.contains(id.as_str()) {
                seen[i] = Some((start, end));
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok((seen, ms))
}

/// Containers that have a sampled series (`container_cpu_usage_seconds_total`, present once
/// the first sample of the container is stored) in a text exposition.
fn sampled_names(text: &str) -> std::collections::HashSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("container_cpu_usage_seconds_total{"))
        .filter_map(|l| {
            let i = l.find("name=\"")?;
            let v = &l[i + 6..];
            Some(v[..v.find('"')?].to_string())
        })
        .collect()
}

/// The kernel's part of a placement, alone: for each of `burst` sleeping processes (started
/// first), `mkdir` its cgroup in every hierarchy and write its pid to each `cgroup.procs`, one
/// after the other in one thread, as a minimal placer would. The kernel serialises these on
/// `cgroup_mutex` and the thread-group rwsem whoever makes them, so a burst's last launcher
/// cannot be acked before this much time. Returns each burst's total in ms; `unified_only`
/// does it in the cgroup2 hierarchy alone (what a pure-v2 host needs).
pub fn kernel_floor(job: &JobCgroups, bursts: usize, burst: usize, unified_only: bool) -> Result<Vec<f64>> {
    // The job's directories, as the agent nests in them: one per mount.
    let parents: Vec<std::path::PathBuf> = job
        .dirs
        .iter()
        .filter(|(name, _)| !unified_only || name == sys::UNIFIED)
        .map(|(_, d)| d.clone())
        .collect();
    let mut totals = Vec::new();
    let result = (|| -> Result<()> {
        for _ in 0..bursts {
            sys::check_interrupt()?;
            let mut sleepers = Sleepers(Vec::new());
            for _ in 0..burst {
                sleepers.0.push(Command::new("sleep").arg("3600").stdin(Stdio::null()).spawn().context("starting sleep")?);
            }
            let pids: Vec<u32> = sleepers.0.iter().map(Child::id).collect();
            let start = Instant::now();
            for pid in &pids {
                for p in &parents {
                    std::fs::create_dir(p.join(pid.to_string())).with_context(|| format!("mkdir in {}", p.display()))?;
                }
                for p in &parents {
                    std::fs::write(p.join(pid.to_string()).join("cgroup.procs"), pid.to_string())
                        .with_context(|| format!("moving {pid} in {}", p.display()))?;
                }
            }
            totals.push(start.elapsed().as_secs_f64() * 1e3);
            drop(sleepers);
            for pid in &pids {
                for p in &parents {
                    let _ = sys::rmdir_cgroup_tree(&p.join(pid.to_string()));
                }
            }
        }
        Ok(())
    })();
    result.map(|()| totals)
}

/// Sleeping processes of the floor, killed by recorded pid and reaped when dropped.
struct Sleepers(Vec<Child>);

impl Drop for Sleepers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_sampled_containers() {
        let t = "container_start_time_seconds{name=\"a_1\"} 1\ncontainer_cpu_usage_seconds_total{name=\"b_2\",id=\"/x\",cpu=\"total\"} 0\n";
        let n = super::sampled_names(t);
        assert!(n.contains("b_2") && !n.contains("a_1"));
    }
}
