//! Shared harness for the privileged integration tests: start the real agent on a temporary
//! socket and loopback port with a relative `--cgroup.parent` (so every cgroup it makes is below
//! this test process's own cgroups), launch containers, scrape, and clean up what was made.

#![allow(dead_code)]

pub mod prom_server;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_apptheus");

/// Whether privileged tests may run here. Without root they skip with a message, unless
/// APPTHEUS_REQUIRE_PRIVILEGED=1 (CI), where skipping is a failure.
pub fn privileged(test: &str) -> bool {
    let euid = unsafe { libc::geteuid() };
    let reason = if euid != 0 {
        Some(format!("not root (euid {euid})"))
    } else if !Path::new("/proc/self/cgroup").exists() {
        Some("no /proc/self/cgroup".to_string())
    } else {
        None
    };
    match reason {
        None => true,
        Some(r) if std::env::var("APPTHEUS_REQUIRE_PRIVILEGED").as_deref() == Ok("1") => {
            panic!("{test}: privileged test cannot run ({r}) but APPTHEUS_REQUIRE_PRIVILEGED=1")
        }
        Some(r) => {
            eprintln!("SKIP {test}: {r}");
            false
        }
    }
}

/// Whether this test binary has the named fault points (`cargo xtask test` builds it with the
/// `failpoints` feature). Without them the test skips with a message, or fails under
/// APPTHEUS_REQUIRE_PRIVILEGED=1.
pub fn failpoints(test: &str) -> bool {
    if cfg!(feature = "failpoints") {
        return true;
    }
    let why = "the test binary was built without the `failpoints` feature (run `cargo xtask test`)";
    assert!(std::env::var("APPTHEUS_REQUIRE_PRIVILEGED").as_deref() != Ok("1"), "{test}: {why}");
    eprintln!("SKIP {test}: {why}");
    false
}

/// Fail (not skip) when a tool the test needs is missing and privileged tests are required.
pub fn tool(name: &str, test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()))
        .unwrap_or(None);
    if found.is_none() {
        if std::env::var("APPTHEUS_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("{test}: {name} is not installed but APPTHEUS_REQUIRE_PRIVILEGED=1");
        }
        eprintln!("SKIP {test}: {name} is not installed");
    }
    found
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running agent. Dropping it stops it and removes every cgroup it left below its parent.
pub struct Agent {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// The loopback address it listens on (127.0.0.1 unless a test gives each agent its own).
    pub host: &'static str,
    pub port: u16,
    pub parent: String,
    pub log: PathBuf,
    /// Processes the test started inside containers, killed by pid on drop.
    pub started: Vec<u32>,
    /// The agent's command line, for restarts.
    pub args: Vec<String>,
    /// Extra environment of the agent process (e.g. `FAILPOINTS`), for restarts too.
    pub env: Vec<(String, String)>,
}

pub struct AgentOptions {
    pub trust: Vec<PathBuf>,
    pub interval: &'static str,
    pub extra: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Loopback address to listen on, as a "node" of its own in a cluster test (127.0.0.2, ...).
    pub host: &'static str,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions { trust: vec![PathBuf::from(BIN)], interval: "200ms", extra: Vec::new(), env: Vec::new(), host: "127.0.0.1" }
    }
}

impl Agent {
    pub fn start() -> Agent {
        Agent::start_with(AgentOptions::default())
    }

    pub fn start_with(opts: AgentOptions) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/gateway.sock");
        let port = free_port();
        let parent = unique("apptheus-test");
        let log = dir.path().join("agent.log");
        let trust: Vec<String> = opts.trust.iter().map(|p| p.display().to_string()).collect();
        let mut args = vec![
            format!("--socket.path={}", socket.display()),
            format!("--trust.path={}", trust.join(";")),
            format!("--web.listen-address={}:{port}", opts.host),
            format!("--cgroup.parent={parent}"),
            format!("--monitor.interval={}", opts.interval),
            "--log.level=debug".to_string(),
        ];
        args.extend(opts.extra.iter().map(|a| a.replace("{dir}", &dir.path().display().to_string())));
        let mut agent = Agent { child: None, dir, socket, host: opts.host, port, parent, log, started: Vec::new(), args, env: opts.env };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(BIN)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn agent");
        self.child = Some(child);
        self.wait_ready();
    }

    /// SIGKILL the agent (no clean-up of its own), then start it again with the same flags.
    pub fn kill9_and_restart(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        self.spawn();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.socket.exists() && http_get_at(self.host, self.port, "/metrics").is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("agent exited early ({status}): {}", self.log_text());
            }
            assert!(Instant::now() < deadline, "agent not ready: {}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn scrape(&self) -> Metrics {
        Metrics::parse(&http_get_at(self.host, self.port, "/metrics").expect("scrape").1)
    }

    pub fn scrape_text(&self) -> String {
        http_get_at(self.host, self.port, "/metrics").expect("scrape").1
    }

    /// `apptheus exec` (this build, trusted by default) running `cmd`.
    pub fn exec(&mut self, cmd: &[&str]) -> Child {
        self.exec_with(Path::new(BIN), cmd)
    }

    pub fn exec_with(&mut self, launcher: &Path, cmd: &[&str]) -> Child {
        self.exec_env(launcher, &[], cmd)
    }

    /// `launcher exec -- CMD` with extra environment (e.g. SLURM_JOB_ID for env labels).
    pub fn exec_env(&mut self, launcher: &Path, env: &[(&str, &str)], cmd: &[&str]) -> Child {
        let child = Command::new(launcher)
            .envs(env.iter().copied())
            .arg("exec")
            .arg(format!("--socket.path={}", self.socket.display()))
            .arg("--")
            .args(cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn launcher");
        self.started.push(child.id());
        child
    }

    /// `apptheus exec -- cmd` as user `uid` (through `setpriv`; root: directly), telling on
    /// stderr which container it got ([`answer`] reads it).
    pub fn exec_as(&mut self, uid: u32, cmd: &[&str]) -> Child {
        let mut c = if uid == 0 {
            Command::new(BIN)
        } else {
            let mut c = Command::new("setpriv");
            c.args([format!("--reuid={uid}"), format!("--regid={uid}"), "--clear-groups".into(), BIN.into()]);
            c
        };
        let child = c
            .arg("exec")
            .arg(format!("--socket.path={}", self.socket.display()))
            .arg("--")
            .args(cmd)
            .env("APPTHEUS_EXEC_VERBOSE", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn launcher");
        self.started.push(child.id());
        child
    }

    /// Let every user reach the socket and look into the agent's directory (the harness's
    /// directory is private).
    pub fn open_to_all_users(&self) {
        use std::os::unix::fs::PermissionsExt;
        for d in [self.dir.path(), self.socket.parent().unwrap()] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    /// The container's directory in every hierarchy the agent uses (existing or not).
    pub fn container_dirs(&self, id: &str) -> Vec<PathBuf> {
        self.parent_dirs().into_iter().map(|d| d.join(id)).collect()
    }

    /// `--cgroup.parent` in every hierarchy: below this process's own cgroup in each.
    pub fn parent_dirs(&self) -> Vec<PathBuf> {
        own_cgroup_dirs().into_iter().map(|d| d.join(&self.parent)).collect()
    }

    /// Container cgroups that exist under the parent now.
    pub fn live_container_dirs(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for p in self.parent_dirs() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                for e in rd.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        out.push(e.path());
                    }
                }
            }
        }
        out
    }

    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        for pid in &self.started {
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
        self.stop();
        cleanup_parent(&self.parent_dirs());
        // Containers nested in their caller's cgroup (--placement) lie outside the parent: in
        // this process's own cgroups, named after the launchers the test started.
        let own = own_cgroup_dirs();
        for pid in &self.started {
            let nested: Vec<PathBuf> = own.iter().map(|d| d.join(format!("apptheus_{pid}"))).collect();
            cleanup_parent(&nested);
        }
    }
}

/// Kill what remains in the given parents' cgroups (only processes we started end up there)
/// and remove them, children first.
pub fn cleanup_parent(parents: &[PathBuf]) {
    for p in parents {
        if !p.exists() {
            continue;
        }
        for d in walk_dirs(p).into_iter().rev() {
            if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            for _ in 0..100 {
                if std::fs::remove_dir(&d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn walk_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(rd) = std::fs::read_dir(&out[i]) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

/// This process's cgroup directory in each hierarchy the agent uses
/// (v1 cpu, cpuacct, memory, pids, blkio and the unified one).
pub fn own_cgroup_dirs() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut out = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        let wanted = ctrls.is_empty() || ctrls.split(',').any(|c| ["cpu", "cpuacct", "memory", "pids", "blkio"].contains(&c));
        if !wanted {
            continue;
        }
        for m in mounts.lines() {
            let (left, right) = m.split_once(" - ").unwrap();
            let fields: Vec<&str> = left.split(' ').collect();
            let rfields: Vec<&str> = right.split(' ').collect();
            let fstype = rfields[0];
            let opts = rfields.get(2).copied().unwrap_or("");
            let matches = if ctrls.is_empty() {
                fstype == "cgroup2"
            } else {
                fstype == "cgroup" && ctrls.split(',').all(|c| opts.split(',').any(|o| o == c))
            };
            if matches {
                let dir = PathBuf::from(fields[4]).join(path.trim_start_matches('/'));
                if !out.contains(&dir) {
                    out.push(dir);
                }
                break;
            }
        }
    }
    out
}

/// Minimal HTTP/1.0 GET on loopback: (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_request(port, "GET", path, &[])
}

/// GET from an agent listening on another loopback address.
pub fn http_get_at(host: &str, port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_request_at(host, port, "GET", path, &[])
}

pub fn http_request(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> std::io::Result<(u16, String)> {
    http_request_at("127.0.0.1", port, method, path, headers)
}

fn http_request_at(host: &str, port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect((host, port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {host}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, body.to_string()))
}

/// A scrape, as samples keyed by name with their labels.
#[derive(Debug, Default)]
pub struct Metrics {
    pub samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value.parse().unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n.to_string(), parse_labels(rest.trim_end_matches('}'))),
                None => (series.to_string(), BTreeMap::new()),
            };
            samples.push((name, labels, value));
        }
        Metrics { samples }
    }

    /// Values of `name` whose labels include all of `want`.
    pub fn get(&self, name: &str, want: &[(&str, &str)]) -> Vec<f64> {
        self.samples
            .iter()
            .filter(|(n, l, _)| n == name && want.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
            .map(|(_, _, v)| *v)
            .collect()
    }

    pub fn one(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let v = self.get(name, want);
        assert!(v.len() <= 1, "{name} {want:?}: {} samples", v.len());
        v.first().copied()
    }

    /// The sum of `name` over the samples whose labels include all of `want` (None: no such
    /// sample), as PromQL's `sum(name{want})`: e.g. refusals over every reason.
    pub fn sum(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let v = self.get(name, want);
        (!v.is_empty()).then(|| v.iter().sum())
    }

    /// Values of `label` over the samples of `name`.
    pub fn label_values(&self, name: &str, label: &str) -> Vec<String> {
        self.samples.iter().filter(|(n, _, _)| n == name).filter_map(|(_, l, _)| l.get(label).cloned()).collect()
    }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some((k, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(k.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    out
}

/// Poll `f` until it returns Some, or panic with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Read the launcher's ack id from a container that is running: `<exe>_<launcher pid>`.
pub fn id_of(launcher: &Child) -> String {
    format!("apptheus_{}", launcher.id())
}

pub fn pids_in(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The real python executable (not a wrapper such as a pyenv shim), as /proc/<pid>/exe shows it.
pub fn real_python() -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import os, sys; print(os.path.realpath(sys.executable))"])
        .output()
        .expect("python3");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Wait until `pid` holds a unix socket (it has connected to the agent).
pub fn wait_connected(pid: u32) {
    wait_for(Duration::from_secs(5), "launcher connected", || {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
        fds.flatten()
            .any(|e| std::fs::read_link(e.path()).map(|l| l.to_string_lossy().starts_with("socket:")).unwrap_or(false))
            .then_some(())
    });
}

/// SIGSTOP `pid` and wait until every thread of it has stopped: the signal takes effect as each
/// thread next checks for signals, which on a loaded machine can be after the test's next step.
pub fn freeze(pid: u32) {
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    let stopped = |stat: &str| stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with(['T', 't']));
    wait_for(Duration::from_secs(10), "every thread stopped", || {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
        tasks
            .flatten()
            .all(|t| std::fs::read_to_string(t.path().join("stat")).map_or(true, |s| stopped(&s)))
            .then_some(())
    });
}

pub fn thaw(pid: u32) {
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
}

/// What the agent answered an [`Agent::exec_as`] launcher, from the first line it writes on
/// stderr: Ok(container id), or Err(the reason) once the launcher has exited 125.
pub fn answer(child: &mut Child) -> Result<String, String> {
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stderr.as_mut().unwrap()), &mut line).unwrap();
    if let Some(rest) = line.strip_prefix("apptheus exec: container ") {
        return Ok(rest.split_whitespace().next().unwrap_or_default().to_string());
    }
    let reason = line.strip_prefix("apptheus exec: the agent refused: ").unwrap_or_else(|| panic!("unexpected answer: {line:?}"));
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(125), "exit status of a refused launcher ({reason})");
    Err(reason.trim().to_string())
}

/// Open sockets of a process.
pub fn socket_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.flatten().filter(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))).count())
        .unwrap_or(0)
}

/// Resident memory of a process in bytes (VmRSS).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap();
    kib * 1024
}

/// Number of open descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// Spawn a scripted launcher (the caller sets its program, arguments and environment; it prints
/// the agent's answer line) and read that answer: the child and the parsed answer.
pub fn spawn_and_read_answer(cmd: &mut Command) -> (std::process::Child, serde_json::Value) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn the launcher");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
    let ack = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    (child, ack)
}
