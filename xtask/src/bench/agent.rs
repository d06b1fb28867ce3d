//! The agent under test and the containers it monitors, as real processes. Every process is
//! started in its own process group, recorded by pid and stopped by that pid; dropping an
//! [`Agent`] or [`Launchers`] cleans up what it started, including the cgroups.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::http;
use super::sys::{self, Hierarchies};

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub struct Agent {
    pub child: Option<Child>,
    pub pid: u32,
    pub socket: PathBuf,
    pub port: u16,
    pub bin: PathBuf,
    pub log: PathBuf,
    /// `<own cgroup>/<parent>` in every hierarchy the agent uses.
    pub parent_dirs: BTreeMap<String, PathBuf>,
}

impl Agent {
    /// Start `bin` as the agent with a relative `--cgroup.parent` (so everything it creates
    /// is below our own cgroup in every hierarchy) and wait until it serves /metrics.
    pub fn start(bin: &Path, trust: &[&Path], tmp: &Path, name: &str, extra: &[String]) -> Result<Agent> {
        let socket = tmp.join(format!("{name}.sock"));
        let log = tmp.join(format!("{name}.log"));
        let port = free_port()?;
        let parent = format!("bench-{}-{name}", std::process::id());
        let trust: Vec<String> = trust.iter().map(|p| p.display().to_string()).collect();
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--socket.path={}", socket.display()))
            .arg(format!("--trust.path={}", trust.join(";")))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg(format!("--cgroup.parent={parent}"))
            .arg("--monitor.interval=0.5s")
            .arg("--log.level=warn")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .process_group(0);
        let child = cmd.spawn().with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id();
        let hier = Hierarchies::detect()?;
        let parent_dirs = hier.own_dirs(pid)?.into_iter().map(|(k, d)| (k, d.join(&parent))).collect();
        let mut agent = Agent { child: Some(child), pid, socket, port, bin: bin.to_path_buf(), log, parent_dirs };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            sys::check_interrupt()?;
            if agent.socket.exists() && http::get(port, "/metrics").is_ok() {
                return Ok(agent);
            }
            if let Some(status) = agent.child.as_mut().unwrap().try_wait()? {
                agent.child = None;
                bail!("agent exited at start ({status}): {}", std::fs::read_to_string(&agent.log).unwrap_or_default());
            }
            if Instant::now() > deadline {
                bail!("agent not ready after 20 s: {}", std::fs::read_to_string(&agent.log).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn scrape_text(&self) -> Result<String> {
        let r = http::get(self.port, "/metrics")?;
        if r.status != 200 {
            bail!("GET /metrics: HTTP {}", r.status);
        }
        Ok(r.text())
    }

    /// Directory of container `id` in every hierarchy.
    pub fn container_dirs(&self, id: &str) -> BTreeMap<String, PathBuf> {
        self.parent_dirs.iter().map(|(k, d)| (k.clone(), d.join(id))).collect()
    }

    /// Container cgroups that still exist, in any hierarchy.
    pub fn live_container_dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for d in self.parent_dirs.values() {
            if let Ok(rd) = std::fs::read_dir(d) {
                out.extend(rd.flatten().filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false)).map(|e| e.path()));
            }
        }
        out
    }

    pub fn pause(&self) {
        sys::kill(self.pid, libc::SIGSTOP);
    }
    pub fn resume(&self) {
        sys::kill(self.pid, libc::SIGCONT);
    }

    /// Wait for the agent to remove every container cgroup (their processes must be gone),
    /// stop it with SIGTERM, then remove whatever cgroup directories are left.
    pub fn stop(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let Some(mut child) = self.child.take() else { return problems };
        self.resume();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.live_container_dirs().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        sys::kill(self.pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    problems.push(format!("agent {} ignored SIGTERM for 10 s; SIGKILL", self.pid));
                    sys::kill(self.pid, libc::SIGKILL);
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        for d in self.parent_dirs.values() {
            problems.extend(sys::rmdir_cgroup_tree(d));
        }
        let _ = std::fs::remove_file(&self.socket);
        problems
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        for p in self.stop() {
            eprintln!("bench: clean-up: {p}");
        }
    }
}

/// Containers started with the real launcher: `apptheus exec -- sleep 3600`.
pub struct Launchers {
    /// (exec child, the sleep it runs once the agent acked)
    pub procs: Vec<(Child, Option<u32>)>,
    log: PathBuf,
}

impl Launchers {
    pub fn new(tmp: &Path) -> Launchers {
        Launchers { procs: Vec::new(), log: tmp.join("launchers.log") }
    }

    pub fn ids(&self) -> Vec<String> {
        self.procs.iter().map(|(c, _)| format!("apptheus_{}", c.id())).collect()
    }

    /// Start launchers until there are `target`, in batches, and wait until each one's
    /// command runs (which happens after the agent's ack).
    pub fn grow_to(&mut self, agent: &Agent, target: usize) -> Result<()> {
        const BATCH: usize = 50;
        while self.procs.len() < target {
            sys::check_interrupt()?;
            let first = self.procs.len();
            let n = BATCH.min(target - first);
            for _ in 0..n {
                let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
                let child = Command::new(&agent.bin)
                    .arg("exec")
                    .arg(format!("--socket.path={}", agent.socket.display()))
                    .args(["--", "sleep", "3600"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .process_group(0)
                    .spawn()
                    .context("starting apptheus exec")?;
                self.procs.push((child, None));
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                sys::check_interrupt()?;
                let waiting: HashSet<u32> = self.procs[first..].iter().filter(|(_, s)| s.is_none()).map(|(c, _)| c.id()).collect();
                if waiting.is_empty() {
                    break;
                }
                let kids = sys::children_of(&waiting);
                for (c, s) in &mut self.procs[first..] {
                    if s.is_none() {
                        if let Some(k) = kids.get(&c.id()).and_then(|v| v.first()) {
                            *s = Some(*k);
                        } else if let Some(status) = c.try_wait()? {
                            bail!("apptheus exec {} ended ({status}) before running its command: {}", c.id(), std::fs::read_to_string(&self.log).unwrap_or_default());
                        }
                    }
                }
                if Instant::now() > deadline {
                    bail!("{} launchers not placed after 30 s", waiting.len());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Kill every container's command (by its recorded pid), then its launcher, and reap them.
    pub fn stop_all(&mut self) {
        let parents: HashSet<u32> = self.procs.iter().map(|(c, _)| c.id()).collect();
        // Commands started since we last looked (or never recorded) are found again.
        let kids = sys::children_of(&parents);
        for (c, s) in &self.procs {
            if let Some(s) = s {
                sys::kill(*s, libc::SIGKILL);
            }
            for k in kids.get(&c.id()).into_iter().flatten() {
                if Some(*k) != *s {
                    sys::kill(*k, libc::SIGKILL);
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (c, _) in &mut self.procs {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        sys::kill(c.id(), libc::SIGKILL);
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
        self.procs.clear();
    }
}

impl Drop for Launchers {
    fn drop(&mut self) {
        self.stop_all();
    }
}
