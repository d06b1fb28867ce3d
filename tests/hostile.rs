//! Hostile callers and faults: the caller gets no cgroup, nothing is half-placed, nothing
//! leaks, and the agent keeps serving.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// python3 as the trusted launcher, so tests can script what the launcher does.
fn python_agent() -> (Agent, PathBuf) {
    let python = real_python();
    let agent = Agent::start_with(AgentOptions { trust: vec![python.clone()], ..Default::default() });
    (agent, python)
}

#[test]
fn a_reused_pid_is_not_placed() {
    if !privileged("a_reused_pid_is_not_placed") {
        return;
    }
    let (mut agent, python) = python_agent();
    // The trusted caller connects while the agent is frozen, then dies and is reaped; a new
    // trusted process is made to take its pid (ns_last_pid) before the agent looks.
    freeze(agent.pid());
    let mut caller = Command::new(&python)
        .args(["-c", "import socket,sys,time\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ntime.sleep(60)"])
        .arg(&agent.socket)
        .spawn()
        .unwrap();
    let pid = caller.id();
    wait_connected(pid);
    caller.kill().unwrap();
    caller.wait().unwrap();
    let mut imposter = None;
    for _ in 0..20 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let child = Command::new(&python).args(["-c", "import time; time.sleep(60)"]).spawn().unwrap();
        if child.id() == pid {
            imposter = Some(child);
            break;
        }
        let mut child = child;
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let mut imposter = imposter.expect("could not reuse the caller's pid");
    agent.started.push(imposter.id());
    thaw(agent.pid());
    wait_for(Duration::from_secs(5), "refusal counted", || {
        (agent.scrape().sum("apptheus_connections_total", &[("result", "refused")]) == Some(1.0)).then_some(())
    });
    assert!(agent.live_container_dirs().is_empty(), "the pid's new owner was placed");
    let own = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(!own.contains(&agent.parent), "imposter moved: {own}");
    imposter.kill().unwrap();
    imposter.wait().unwrap();
}

#[test]
fn a_caller_that_forks_and_exits_at_once_is_never_half_placed() {
    if !privileged("a_caller_that_forks_and_exits_at_once_is_never_half_placed") {
        return;
    }
    let (mut agent, python) = python_agent();
    // Each caller forks a child that sleeps 2 s, connects, and exits at once: a race with the
    // agent's check and placement. Whatever wins, a cgroup either holds the same processes in
    // every hierarchy or does not exist.
    let script = "import os,socket,sys,time\nif os.fork()==0:\n    time.sleep(2); os._exit(0)\n\
                  s=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\nos._exit(0)";
    for _ in 0..30 {
        let mut c = Command::new(&python).args(["-c", script]).arg(&agent.socket).spawn().unwrap();
        agent.started.push(c.id());
        c.wait().unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let names: std::collections::BTreeSet<String> = agent
        .live_container_dirs()
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for name in &names {
        let sets: Vec<Vec<i32>> = agent
            .container_dirs(name)
            .iter()
            .map(|d| {
                let mut p = pids_in(d);
                p.sort();
                p
            })
            .collect();
        assert!(sets.windows(2).all(|w| w[0] == w[1]), "{name} half-placed: {sets:?}");
    }
    let m = agent.scrape();
    let accepted = m.one("apptheus_connections_total", &[("result", "accepted")]).unwrap();
    let refused = m.sum("apptheus_connections_total", &[("result", "refused")]).unwrap();
    let failed = m.one("apptheus_connections_total", &[("result", "failed")]).unwrap();
    assert_eq!(accepted + refused + failed, 30.0);
    assert_eq!(failed, 0.0, "{}", agent.log_text());
    // When the orphans end, every cgroup goes.
    wait_for(Duration::from_secs(10), "all cgroups removed", || agent.live_container_dirs().is_empty().then_some(()));
}

#[test]
fn ten_thousand_idle_untrusted_connections_do_not_block_a_trusted_one() {
    if !privileged("ten_thousand_idle_untrusted_connections_do_not_block_a_trusted_one") {
        return;
    }
    let mut agent = Agent::start();
    let fds_idle = fd_count(agent.pid());
    // One untrusted process opens 10 000 connections and never reads or closes them.
    let script = r#"
import resource, socket, sys, select
resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
socks = []
for _ in range(10000):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    socks.append(s)
print("connected", flush=True)
sys.stdin.readline()
closed = 0
for s in socks:
    s.settimeout(5)
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    if b'"refused"' in data:
        closed += 1
print(closed, flush=True)
"#;
    let mut hog = Command::new("python3")
        .args(["-c", script])
        .arg(&agent.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    agent.started.push(hog.id());
    let mut out = std::io::BufReader::new(hog.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "connected");
    // A trusted launcher is still placed promptly.
    let start = Instant::now();
    let mut launcher = agent.exec(&["true"]);
    let status = launcher.wait().unwrap();
    assert!(status.success(), "trusted launcher failed: {status}");
    assert!(start.elapsed() < Duration::from_secs(10), "placement took {:?}", start.elapsed());
    // Refused connections are closed, not kept: the agent's descriptors stay near idle.
    let fds_now = fd_count(agent.pid());
    assert!(fds_now < fds_idle + 64, "agent holds {fds_now} fds (idle {fds_idle})");
    std::io::Write::write_all(hog.stdin.as_mut().unwrap(), b"\n").unwrap();
    line.clear();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert_eq!(line.trim(), "10000", "connections refused and closed");
    hog.wait().unwrap();
    let m = agent.scrape();
    assert_eq!(m.sum("apptheus_connections_total", &[("result", "refused")]), Some(10000.0));
    assert_eq!(m.one("apptheus_connections_total", &[("result", "refused"), ("reason", "untrusted")]), Some(10000.0));
    assert_eq!(m.one("apptheus_connections_total", &[("result", "accepted")]), Some(1.0));
    let rss = m.one("process_resident_memory_bytes", &[]).unwrap();
    assert!(rss < 64.0 * 1024.0 * 1024.0, "agent RSS {rss}");
}

/// Descriptors a running container may hold in the agent: its launcher's connection, two
/// cgroup_skb links when eBPF attaches per container, and its kept cgroup files: 21 on a hybrid
/// v1+v2 host, the most of any layout (README, "Limits").
const FDS_PER_CONTAINER: usize = 1 + 2 + 21;

/// An unprivileged user floods the agent at the default caps (1.2 times its cap, as fast as it
/// can): exactly the cap is placed and the rest refused, holding nothing; the agent's
/// descriptors, memory and scrape stay within what the cap allows; and a trusted launch by
/// another user is still answered at once.
#[test]
fn a_user_flood_at_the_default_caps_stays_bounded() {
    let test = "a_user_flood_at_the_default_caps_stays_bounded";
    if !privileged(test) || tool("setpriv", test).is_none() {
        return;
    }
    let mut agent = Agent::start();
    agent.open_to_all_users();
    let m = agent.scrape();
    let cap = m.one("apptheus_containers_per_user_max", &[]).unwrap() as usize;
    let node_cap = m.one("apptheus_containers_max", &[]).unwrap() as usize;
    assert!(cap > 0 && node_cap > cap + 2, "the defaults: {cap} per user, {node_cap} in all");
    let pid = agent.pid();
    let (fds_idle, sockets_idle, rss_idle, bytes_idle) = (fd_count(pid), socket_count(pid), rss_bytes(pid), agent.scrape_text().len());

    // What a container adds to a scrape, once sampled (the flood runs the same command): the
    // second one's share, the first's also brings every family's HELP and TYPE.
    let cmd = ["sleep", "300"];
    let mut sized = Vec::new();
    for _ in 0..2 {
        let mut launcher = agent.exec_as(65533, &cmd);
        let id = answer(&mut launcher).expect("another user's container");
        wait_for(Duration::from_secs(10), "the first sample", || {
            agent.scrape().one("container_memory_usage_bytes", &[("name", &id)]).map(|_| ())
        });
        sized.push(agent.scrape_text().len());
    }
    let per_container = sized[1] - sized[0];

    let n = cap + cap / 5;
    let start = Instant::now();
    let mut flood: Vec<std::process::Child> = (0..n).map(|_| agent.exec_as(65534, &cmd)).collect();
    let spawned = start.elapsed();
    let connections = |agent: &Agent| agent.scrape().sum("apptheus_connections_total", &[]).unwrap_or(0.0) as usize;
    wait_for(Duration::from_secs(120), "every launcher answered", || (connections(&agent) == n + 2).then_some(()));
    let answered = start.elapsed();
    let m = agent.scrape();
    assert_eq!(m.one("apptheus_connections_total", &[("result", "accepted")]), Some((cap + 2) as f64));
    assert_eq!(m.one("apptheus_connections_total", &[("result", "refused"), ("reason", "per_user_limit")]), Some((n - cap) as f64));
    assert_eq!(m.one("apptheus_containers", &[]), Some((cap + 2) as f64));
    // The refused launchers exit 125, naming the cap; the placed ones run.
    let mut refused = 0;
    for child in &mut flood {
        if let Err(reason) = answer(child) {
            assert!(reason.contains("--limits.containers-per-user"), "{reason}");
            refused += 1;
        }
    }
    assert_eq!(refused, n - cap);
    let names: std::collections::BTreeSet<_> = agent.live_container_dirs().iter().filter_map(|d| d.file_name().map(|n| n.to_owned())).collect();
    assert_eq!(names.len(), cap + 2, "the refused got no cgroup");

    // Another user is still placed promptly.
    let asked = Instant::now();
    let mut other = agent.exec_as(65532, &cmd);
    assert!(answer(&mut other).is_ok(), "another user refused");
    let ack = asked.elapsed();
    assert!(ack < Duration::from_secs(5), "another user's launch took {ack:?}");

    // Bounded by the cap, whatever the flood: the refused hold no descriptor, and the placed
    // no more than a container may.
    let placed = cap + 3;
    let (fds, sockets, rss, bytes) = (fd_count(pid), socket_count(pid), rss_bytes(pid), agent.scrape_text().len());
    eprintln!(
        "flood of {n} as nobody: spawned in {spawned:?}, answered in {answered:?}, another user's ack in {ack:?}; \
         agent fds {fds_idle} -> {fds}, sockets {sockets_idle} -> {sockets}, RSS {} -> {} MiB, scrape {bytes_idle} -> {bytes} bytes ({per_container} per container)",
        rss_idle >> 20,
        rss >> 20
    );
    assert!(sockets <= sockets_idle + placed + 8, "{sockets} sockets (idle {sockets_idle}) for {placed} containers");
    assert!(fds <= fds_idle + placed * FDS_PER_CONTAINER + 64, "{fds} fds (idle {fds_idle}) for {placed} containers");
    // About 20 KiB per container (its store entry and kept files), and the placement threads
    // the burst started (at most 512, of which a few stack pages each are touched).
    assert!(rss <= rss_idle + 32 * 1024 * 1024, "RSS {rss} (idle {rss_idle})");
    // The refused add no series: at most the placed containers' (10 % for label lengths).
    let most = sized[0] + (placed - 1) * per_container * 110 / 100;
    assert!(bytes <= most, "scrape of {bytes} bytes for {placed} containers of {per_container} (at most {most})");
}

#[test]
fn a_cgroup_removed_by_someone_else_ends_only_that_container() {
    if !privileged("a_cgroup_removed_by_someone_else_ends_only_that_container") {
        return;
    }
    let mut agent = Agent::start();
    let mut victim = agent.exec(&["sleep", "30"]);
    let mut survivor = agent.exec(&["sleep", "30"]);
    let (victim_id, survivor_id) = (id_of(&victim), id_of(&survivor));
    wait_for(Duration::from_secs(10), "both placed", || {
        let m = agent.scrape();
        (m.one("container_last_seen", &[("name", &victim_id)]).is_some()
            && m.one("container_last_seen", &[("name", &survivor_id)]).is_some())
        .then_some(())
    });
    // Someone else kills the victim's processes and removes its cgroup behind the agent's back.
    let dirs = agent.container_dirs(&victim_id);
    for pid in pids_in(&dirs[0]) {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    victim.wait().unwrap();
    for d in &dirs {
        for _ in 0..100 {
            if std::fs::remove_dir(d).is_ok() || !d.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    std::thread::sleep(Duration::from_millis(600));
    let seen = agent.scrape().one("container_last_seen", &[("name", &survivor_id)]).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let m = agent.scrape();
    assert!(m.one("container_last_seen", &[("name", &survivor_id)]).unwrap() > seen, "survivor no longer sampled");
    assert_eq!(m.one("apptheus_containers", &[]), Some(1.0));
    assert!(agent.child.as_mut().unwrap().try_wait().unwrap().is_none(), "agent died");
    survivor.kill().unwrap();
    survivor.wait().unwrap();
}

#[test]
fn a_half_made_placement_is_completed_on_restart() {
    if !privileged("a_half_made_placement_is_completed_on_restart") {
        return;
    }
    let mut agent = Agent::start();
    // What an agent killed between two hierarchies leaves: the cgroup in some hierarchies only,
    // the caller moved into one of them.
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    agent.started.push(sleeper.id());
    let name = format!("sleep_{}", sleeper.id());
    let dirs = agent.container_dirs(&name);
    std::fs::create_dir(&dirs[0]).unwrap();
    std::fs::write(dirs[0].join("cgroup.procs"), sleeper.id().to_string()).unwrap();
    agent.kill9_and_restart();
    for d in &dirs {
        assert_eq!(pids_in(d), vec![sleeper.id() as i32], "{} not completed", d.display());
    }
    let m = agent.scrape();
    assert!(m.one("container_start_time_seconds", &[("name", &name), ("pid", &sleeper.id().to_string())]).is_some());
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    wait_for(Duration::from_secs(10), "cgroups removed", || agent.live_container_dirs().is_empty().then_some(()));
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(options: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount").args(["-t", "tmpfs", "-o", options, "tmpfs"]).arg(dir.path()).status().unwrap();
        assert!(ok.success(), "mount tmpfs {options}");
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

fn persistence_failure_is_counted_and_serving_goes_on(fs: &Tmpfs) {
    let file = fs.0.path().join("store.json");
    let mut agent = Agent::start_with(AgentOptions {
        extra: vec![format!("--persistence.file={}", file.display()), "--persistence.interval=100ms".into()],
        ..Default::default()
    });
    let mut launcher = agent.exec(&["sleep", "5"]);
    let id = id_of(&launcher);
    wait_for(Duration::from_secs(10), "errors counted while the container is served", || {
        let m = agent.scrape();
        let errors = m.one("apptheus_persistence_errors_total", &[])?;
        (errors >= 2.0 && m.one("container_last_seen", &[("name", &id)]).is_some()).then_some(())
    });
    assert!(agent.log_text().contains("cannot write the persistence file"));
    launcher.kill().unwrap();
    launcher.wait().unwrap();
}

#[test]
fn a_read_only_persistence_directory_is_an_error_metric_not_an_outage() {
    if !privileged("a_read_only_persistence_directory_is_an_error_metric_not_an_outage") {
        return;
    }
    let fs = Tmpfs::mount("ro,size=1m");
    persistence_failure_is_counted_and_serving_goes_on(&fs);
}

#[test]
fn a_full_persistence_directory_is_an_error_metric_not_an_outage() {
    if !privileged("a_full_persistence_directory_is_an_error_metric_not_an_outage") {
        return;
    }
    let fs = Tmpfs::mount("size=64k");
    // Fill it up.
    let _ = Command::new("dd")
        .args(["if=/dev/zero", &format!("of={}", fs.0.path().join("filler").display()), "bs=4k", "count=64"])
        .stderr(Stdio::null())
        .status();
    persistence_failure_is_counted_and_serving_goes_on(&fs);
}

#[test]
fn http_abuse_is_answered_with_a_status_and_bounded() {
    if !privileged("http_abuse_is_answered_with_a_status_and_bounded") {
        return;
    }
    let mut agent = Agent::start_with(AgentOptions { extra: vec!["--web.route-prefix=/apptheus".into()], ..Default::default() });
    let mut container = agent.exec(&["sleep", "20"]);
    let port = agent.port;
    // Very long path, unknown method, path traversal out of the route prefix, NUL and junk.
    let long = format!("/apptheus/{}", "a".repeat(64 * 1024));
    let (status, _) = http_get(port, &long).unwrap();
    assert!(status == 414 || status == 431 || status == 404, "long path: {status}");
    assert_eq!(http_request(port, "BREW", "/apptheus/metrics", &[]).unwrap().0, 405);
    for path in ["/apptheus/../metrics", "/apptheus/%2e%2e/metrics", "/../apptheus/metrics", "/metrics"] {
        let (status, body) = http_get(port, path).unwrap();
        assert!(status != 200 || !body.contains("container_"), "{path} served metrics outside the prefix");
    }
    let (status, _) = http_get(port, "/apptheus/metrics").unwrap();
    assert_eq!(status, 200);
    // Garbage instead of HTTP: the connection is answered or closed, the agent stays up.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"\x00\x01\x02 garbage \r\n\r\n").unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        assert!(buf.is_empty() || buf.starts_with(b"HTTP/1.1 400"), "{:?}", String::from_utf8_lossy(&buf));
    }
    // 200 concurrent scrapes: each gets 200 or 503 (over --web.max-requests), memory stays bounded.
    let threads: Vec<_> = (0..200)
        .map(|_| std::thread::spawn(move || http_get(port, "/apptheus/metrics").map(|(s, _)| s).unwrap_or(0)))
        .collect();
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == 200 || *s == 503), "{statuses:?}");
    assert!(statuses.contains(&200));
    let m = Metrics::parse(&http_get(port, "/apptheus/metrics").unwrap().1);
    let rss = m.one("process_resident_memory_bytes", &[]).unwrap();
    assert!(rss < 64.0 * 1024.0 * 1024.0, "agent RSS {rss}");
    assert!(agent.child.as_mut().unwrap().try_wait().unwrap().is_none(), "agent died");
    container.kill().unwrap();
    container.wait().unwrap();
}

/// The agent SIGKILLed at each step of a placement (held there by a failpoint), then restarted:
/// no cgroup is left half-made, and each caller ends up either placed in every hierarchy or
/// refused. Two callers at each step: `apptheus exec`, which reads the answer (it gets none, so
/// it refuses to run its command), and an Apptainer-like one that never reads (once moved, the
/// restarted agent completes and adopts its placement; before that, it is simply not placed).
#[test]
fn the_agent_killed_at_each_step_of_a_placement_leaves_nothing_half_made() {
    if !privileged("the_agent_killed_at_each_step_of_a_placement_leaves_nothing_half_made") {
        return;
    }
    if !common::failpoints("the_agent_killed_at_each_step_of_a_placement_leaves_nothing_half_made") {
        return;
    }
    // (failpoint, whether the callers have been moved anywhere when it is reached)
    let steps = [
        ("placement::created_one", false),
        ("placement::created", false),
        ("placement::attached_one", true),
        ("placement::caller_attached", true),
        ("placement::placed", true),
    ];
    let python = real_python();
    for (point, moved) in steps {
        let mut agent = Agent::start_with(AgentOptions {
            trust: vec![PathBuf::from(BIN), python.clone()],
            env: vec![("FAILPOINTS".into(), format!("{point}=sleep(60000)"))],
            ..Default::default()
        });
        let marker = agent.dir.path().join("command-ran");
        let mut exec = agent.exec(&["sh", "-c", &format!("touch {}; sleep 30", marker.display())]);
        let mut silent = Command::new(&python)
            .args(["-c", "import socket,sys,time\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ntime.sleep(30)"])
            .arg(&agent.socket)
            .spawn()
            .unwrap();
        agent.started.push(silent.id());
        wait_for(Duration::from_secs(10), &format!("both placements held at {point}"), || {
            (agent.log_text().matches(&format!("point={point}")).count() >= 2).then_some(())
        });
        agent.env.clear();
        agent.kill9_and_restart();

        // `apptheus exec` got no answer: it refuses, without running its command.
        let out = exec.wait().unwrap();
        assert_eq!(out.code(), Some(125), "{point}: apptheus exec should refuse");
        assert!(!marker.exists(), "{point}: the command ran without a placement");
        let silent_name = format!("python3_{}", silent.id());
        let silent_name = agent
            .live_container_dirs()
            .iter()
            .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .find(|n| n.ends_with(&format!("_{}", silent.id())))
            .unwrap_or(silent_name);
        if moved {
            // Adopted: in every hierarchy, and exported.
            for d in agent.container_dirs(&silent_name) {
                assert_eq!(pids_in(&d), vec![silent.id() as i32], "{point}: {} not completed", d.display());
            }
            wait_for(Duration::from_secs(10), &format!("{point}: adopted caller exported"), || {
                agent.scrape().one("container_start_time_seconds", &[("name", &silent_name)])
            });
        } else {
            let own = std::fs::read_to_string(format!("/proc/{}/cgroup", silent.id())).unwrap();
            assert!(!own.contains(&agent.parent), "{point}: caller moved: {own}");
        }
        // Whatever the step, no cgroup is half-made: each holds the same processes everywhere,
        // and the empty ones (the refused exec's, the unmoved caller's) are gone.
        wait_for(Duration::from_secs(10), &format!("{point}: empty leftovers removed"), || {
            let names: std::collections::BTreeSet<String> = agent
                .live_container_dirs()
                .iter()
                .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect();
            let expected: std::collections::BTreeSet<String> = moved.then(|| silent_name.clone()).into_iter().collect();
            (names == expected).then_some(())
        });
        silent.kill().unwrap();
        silent.wait().unwrap();
        wait_for(Duration::from_secs(10), &format!("{point}: all removed"), || agent.live_container_dirs().is_empty().then_some(()));
    }
}
