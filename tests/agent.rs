//! Privileged end-to-end tests of the real agent binary on this machine's real cgroups.
//! Each test starts its own agent (temp socket, loopback port, relative --cgroup.parent) and
//! cleans up every cgroup and process it made, also when it fails.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::prom_server::Prometheus;
use common::*;

const MIB: f64 = 1024.0 * 1024.0;

/// A python workload: allocate and touch `mib` MiB, then burn CPU for `secs` seconds.
fn burn_and_allocate(mib: u32, secs: f32) -> Vec<String> {
    let script = format!(
        "import time\nx = bytearray({mib} * 1024 * 1024)\nfor i in range(0, len(x), 4096): x[i] = 1\n\
         t = time.time()\nwhile time.time() - t < {secs}: pass\n"
    );
    vec!["python3".into(), "-c".into(), script]
}

#[test]
fn trusted_launcher_is_placed_sampled_and_cleaned_up() {
    if !privileged("trusted_launcher_is_placed_sampled_and_cleaned_up") {
        return;
    }
    let mut agent = Agent::start();
    let cmd = burn_and_allocate(64, 4.0);
    let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let mut launcher = agent.exec(&refs);
    let id = id_of(&launcher);

    // A cgroup in every hierarchy, holding the launcher and its child.
    let dirs = agent.container_dirs(&id);
    assert!(dirs.len() >= 2, "expected several hierarchies, got {dirs:?}");
    wait_for(Duration::from_secs(10), "launcher and child in every hierarchy", || {
        dirs.iter().all(|d| pids_in(d).len() >= 2).then_some(())
    });
    for d in &dirs {
        assert!(pids_in(d).contains(&(launcher.id() as i32)), "launcher not in {}", d.display());
    }

    // Memory at least what the child allocated; CPU seconds grow.
    let first = wait_for(Duration::from_secs(10), "64 MiB in container_memory_usage_bytes", || {
        let m = agent.scrape();
        let mem = m.one("container_memory_usage_bytes", &[("name", &id)])?;
        (mem >= 64.0 * MIB).then_some(m)
    });
    let cpu1 = first.one("container_cpu_usage_seconds_total", &[("name", &id), ("cpu", "total")]).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let second = agent.scrape();
    let cpu2 = second.one("container_cpu_usage_seconds_total", &[("name", &id), ("cpu", "total")]).unwrap();
    assert!(cpu2 > cpu1 + 0.3, "CPU seconds did not grow: {cpu1} -> {cpu2}");

    // Labels: name, id (cgroup path), pid, user.
    let (_, labels, _) = second
        .samples
        .iter()
        .find(|(n, l, _)| n == "container_memory_usage_bytes" && l.get("name") == Some(&id))
        .unwrap();
    assert_eq!(labels.get("pid").unwrap(), &launcher.id().to_string());
    assert_eq!(labels.get("user").unwrap(), "root");
    assert!(labels.get("id").unwrap().ends_with(&format!("/{}/{id}", agent.parent)), "{labels:?}");

    // Legacy names next to the new ones.
    let legacy = [("job", id.as_str()), ("instance", "")];
    assert!(second.one("memory_usage", &legacy).unwrap() >= 64.0 * MIB);
    let per = second.one("cpu_usage_per", &legacy).expect("cpu_usage_per");
    assert!(per > 30.0 && per <= 200.0 * 2.0, "cpu_usage_per {per}");
    for name in ["memory_limit", "memory_usage_per", "pid_usage", "pid_limit", "blkio_read", "push_time_seconds"] {
        assert!(second.one(name, &legacy).is_some(), "legacy {name} missing");
    }
    assert!(second.one("container_processes", &[("name", &id)]).unwrap() >= 2.0);
    assert_eq!(second.one("apptheus_containers", &[]), Some(1.0));
    assert_eq!(second.one("apptheus_connections_total", &[("result", "accepted")]), Some(1.0));

    // After the workload ends, its cgroups go; its final sample stays for the retention
    // (default 5m; see tests/lifecycle.rs), marked with its end time.
    let status = launcher.wait().unwrap();
    assert!(status.success(), "launcher exited with {status}");
    wait_for(Duration::from_secs(10), "container cgroups removed", || dirs.iter().all(|d| !d.exists()).then_some(()));
    let after = agent.scrape();
    assert!(after.one("container_end_time_seconds", &[("name", &id)]).is_some());
    assert_eq!(after.one("apptheus_containers", &[]), Some(0.0));
}

#[test]
fn launcher_exit_status_is_passed_through() {
    if !privileged("launcher_exit_status_is_passed_through") {
        return;
    }
    let mut agent = Agent::start();
    let out = agent.exec(&["sh", "-c", "echo hello; exit 7"]).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");
}

fn assert_refused(agent: &Agent, refused_before: f64) {
    let m = agent.scrape();
    assert_eq!(m.sum("apptheus_connections_total", &[("result", "refused")]), Some(refused_before + 1.0));
    assert_eq!(m.one("apptheus_connections_total", &[("result", "accepted")]), Some(0.0));
    assert!(agent.live_container_dirs().is_empty(), "a cgroup was created: {:?}", agent.live_container_dirs());
}

#[test]
fn a_copy_of_the_trusted_binary_is_refused() {
    if !privileged("a_copy_of_the_trusted_binary_is_refused") {
        return;
    }
    let mut agent = Agent::start();
    let copy = agent.dir.path().join("apptheus-copy");
    std::fs::copy(BIN, &copy).unwrap();
    let out = agent.exec_with(&copy, &["true"]).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused") && err.contains("not a trusted launcher"), "{err}");
    assert_refused(&agent, 0.0);
    assert_eq!(agent.scrape().one("apptheus_connections_total", &[("result", "refused"), ("reason", "untrusted")]), Some(1.0));
}

#[test]
fn an_untrusted_binary_is_refused_with_a_json_reason() {
    if !privileged("an_untrusted_binary_is_refused_with_a_json_reason") {
        return;
    }
    let agent = Agent::start();
    let script = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\nprint(s.makefile().readline().strip())";
    let out = Command::new("python3").args(["-c", script]).arg(&agent.socket).output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_eq!(v["status"], "refused");
    assert!(v["reason"].as_str().unwrap().contains("is not a trusted launcher"), "{v}");
    assert_refused(&agent, 0.0);
}

#[test]
fn a_caller_that_exits_before_the_check_is_refused() {
    if !privileged("a_caller_that_exits_before_the_check_is_refused") {
        return;
    }
    let mut agent = Agent::start();
    // Freeze the agent so that the launcher connects, then dies, before the agent looks at it.
    freeze(agent.pid());
    let mut launcher = agent.exec(&["sleep", "30"]);
    wait_connected(launcher.id());
    std::thread::sleep(Duration::from_millis(100));
    launcher.kill().unwrap();
    launcher.wait().unwrap();
    thaw(agent.pid());
    wait_for(Duration::from_secs(5), "refusal counted", || {
        (agent.scrape().sum("apptheus_connections_total", &[("result", "refused")]) == Some(1.0)).then_some(())
    });
    assert_refused(&agent, 0.0);
    assert_eq!(agent.scrape().one("apptheus_connections_total", &[("result", "refused"), ("reason", "gone")]), Some(1.0));
}

#[test]
fn twenty_launchers_at_once_each_get_their_own_cgroup_and_timer() {
    if !privileged("twenty_launchers_at_once_each_get_their_own_cgroup_and_timer") {
        return;
    }
    let mut agent = Agent::start();
    let launchers: Vec<_> = (0..20).map(|_| agent.exec(&["sleep", "6"])).collect();
    let ids: Vec<String> = launchers.iter().map(id_of).collect();
    wait_for(Duration::from_secs(15), "20 containers", || {
        let m = agent.scrape();
        ids.iter().all(|id| m.one("container_start_time_seconds", &[("name", id)]).is_some()).then_some(())
    });
    for id in &ids {
        for d in agent.container_dirs(id) {
            assert!(d.is_dir(), "{} missing", d.display());
        }
    }
    // Every container is sampled at the interval on its own timer: over 2 s at 200 ms, 20
    // containers give ~200 samples. A shared ticker (the Go original) would give ~10.
    let count = |m: &Metrics| m.one("apptheus_sample_duration_seconds_count", &[]).unwrap();
    let before = count(&agent.scrape());
    let seen_before: Vec<f64> = ids.iter().map(|id| agent.scrape().one("container_last_seen", &[("name", id)]).unwrap()).collect();
    std::thread::sleep(Duration::from_secs(2));
    let m = agent.scrape();
    let samples = count(&m) - before;
    assert!(samples >= 20.0 * 10.0 * 0.6, "only {samples} samples in 2 s for 20 containers");
    for (id, seen) in ids.iter().zip(seen_before) {
        let now = m.one("container_last_seen", &[("name", id)]).unwrap();
        assert!(now >= seen + 1.0, "{id} sampled only {seen} -> {now}");
    }
    for mut l in launchers {
        assert!(l.wait().unwrap().success());
    }
    wait_for(Duration::from_secs(10), "all cgroups removed", || agent.live_container_dirs().is_empty().then_some(()));
}

#[test]
fn descendants_forked_before_connecting_are_moved_too() {
    if !privileged("descendants_forked_before_connecting_are_moved_too") {
        return;
    }
    // Like Apptainer's starter: fork the container first, then connect. Here python3 itself is
    // the trusted launcher.
    let python = real_python();
    let mut agent = Agent::start_with(AgentOptions { trust: vec![python.clone()], ..Default::default() });
    let script = r#"
import os, socket, sys, time
kids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
        if os.fork() == 0:
            time.sleep(30); os._exit(0)
        time.sleep(30); os._exit(0)
    kids.append(pid)
time.sleep(0.3)
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
print(s.makefile().readline().strip(), flush=True)
time.sleep(30)
"#;
    let (mut launcher, ack) = spawn_and_read_answer(Command::new(&python).args(["-c", script]).arg(&agent.socket));
    agent.started.push(launcher.id());
    assert_eq!(ack["status"], "ok", "{ack}");
    let id = ack["id"].as_str().unwrap().to_string();
    let exe_name = python.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(id, format!("{exe_name}_{}", launcher.id()));
    assert!(ack["cgroup"].as_str().unwrap().ends_with(&format!("/{id}")));
    // launcher + 2 children + 2 grandchildren, in every hierarchy.
    for d in agent.container_dirs(&id) {
        let pids = pids_in(&d);
        assert_eq!(pids.len(), 5, "{}: {pids:?}", d.display());
    }
    // Threads move with their process.
    let threads = std::fs::read_to_string(agent.container_dirs(&id)[0].join("tasks").as_path())
        .or_else(|_| std::fs::read_to_string(agent.container_dirs(&id)[0].join("cgroup.threads")))
        .unwrap();
    assert!(threads.lines().count() >= 5);
    launcher.kill().unwrap();
    launcher.wait().unwrap();
}

#[test]
fn connecting_twice_from_one_process_gives_one_container() {
    if !privileged("connecting_twice_from_one_process_gives_one_container") {
        return;
    }
    let python = real_python();
    let mut agent = Agent::start_with(AgentOptions { trust: vec![python.clone()], ..Default::default() });
    let script = "import socket,sys,json\nids=[]\nkeep=[]\nfor _ in range(2):\n    s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); keep.append(s)\n    ids.append(json.loads(s.makefile().readline())['id'])\nprint(ids[0], ids[1])";
    let child = Command::new(&python).args(["-c", script]).arg(&agent.socket).stdout(Stdio::piped()).spawn().unwrap();
    agent.started.push(child.id());
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let ids: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(ids.len(), 2, "{text}");
    assert_eq!(ids[0], ids[1]);
    let m = agent.scrape();
    assert_eq!(m.one("apptheus_connections_total", &[("result", "accepted")]), Some(2.0));
}

#[test]
fn sigterm_removes_the_socket_and_leaves_containers_running() {
    if !privileged("sigterm_removes_the_socket_and_leaves_containers_running") {
        return;
    }
    let mut agent = Agent::start();
    let mut launcher = agent.exec(&["sleep", "30"]);
    let id = id_of(&launcher);
    wait_for(Duration::from_secs(10), "container placed", || {
        agent.scrape().one("container_start_time_seconds", &[("name", &id)]).map(|_| ())
    });
    let status = agent.stop().unwrap();
    assert!(status.success(), "agent exit: {status}");
    assert!(!agent.socket.exists(), "socket file left behind");
    assert!(launcher.try_wait().unwrap().is_none(), "the container was disturbed");
    assert!(agent.container_dirs(&id).iter().all(|d| d.is_dir()));
    // Drop kills the launcher and removes the cgroups.
}

#[test]
fn start_up_errors_are_one_line_and_leave_nothing() {
    if !privileged("start_up_errors_are_one_line_and_leave_nothing") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sub/gw.sock");
    let run = |args: &[String]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let base = |extra: &str| {
        vec![
            format!("--socket.path={}", sock.display()),
            format!("--web.listen-address=127.0.0.1:{}", free_port()),
            "--cgroup.parent=apptheus-never-made".to_string(),
            extra.to_string(),
        ]
    };
    for (extra, expect) in [
        ("--monitor.interval=5x", "5x"),
        ("--monitor.interval=1ns", "\"1ns\" is below the floor of 100ms"),
        ("--trust.path=/nonexistent/starter", "/nonexistent/starter"),
        ("--log.level=loud", "loud"),
        ("--metrics.disable=pressure,cpus", "known groups: cpu, memory, io, pressure, processes, network, sched, legacy"),
    ] {
        let (code, err) = run(&base(extra));
        assert_ne!(code, Some(0), "{extra}");
        assert_eq!(err.trim().lines().count(), 1, "{extra}: {err}");
        assert!(err.contains(expect), "{extra}: {err}");
        assert!(!sock.exists() && !dir.path().join("sub").exists(), "{extra}: socket dir left behind");
    }
    for d in own_cgroup_dirs() {
        assert!(!d.join("apptheus-never-made").exists());
    }
    // Not root: run as nobody.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN, "--socket.path=/tmp/x/y.sock"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("must run as root"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // Root without a capability it needs.
    let out = Command::new("setpriv")
        .args(["--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace", BIN])
        .arg(format!("--socket.path={}", sock.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("missing capabilities: CAP_SYS_PTRACE"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!dir.path().join("sub").exists());

    // A socket served by a live agent is not stolen.
    let agent = Agent::start();
    let out = Command::new(BIN)
        .arg(format!("--socket.path={}", agent.socket.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{}", free_port()))
        .arg("--cgroup.parent=apptheus-never-made")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("already served by a running agent"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(agent.socket.exists());
    assert!(agent.scrape().one("apptheus_containers", &[]).is_some());
}

#[test]
fn exec_without_an_agent_fails_clearly() {
    let out = Command::new(BIN).args(["exec", "--socket.path=/nonexistent/gw.sock", "--", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot connect to the agent at /nonexistent/gw.sock"), "{err}");
}

#[test]
fn http_paths_and_methods() {
    if !privileged("http_paths_and_methods") {
        return;
    }
    let agent = Agent::start();
    let (status, body) = http_get(agent.port, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("# HELP apptheus_containers") && body.contains("# TYPE apptheus_containers gauge"));
    assert!(body.contains("process_resident_memory_bytes"));
    let (status, landing) = http_get(agent.port, "/").unwrap();
    assert_eq!(status, 200, "landing page");
    assert!(landing.contains("/metrics"), "{landing}");
    assert_eq!(http_get(agent.port, "/metricsx").unwrap().0, 404);
    assert_eq!(http_request(agent.port, "POST", "/metrics", &[("Content-Length", "0")]).unwrap().0, 405);
    assert_eq!(http_request(agent.port, "HEAD", "/metrics", &[]).unwrap().0, 200);
}

#[test]
fn promtool_check_metrics_is_clean_on_a_live_scrape() {
    if !privileged("promtool_check_metrics_is_clean_on_a_live_scrape") {
        return;
    }
    let Some(promtool) = tool("promtool", "promtool_check_metrics_is_clean_on_a_live_scrape") else { return };
    let mut agent = Agent::start();
    let mut launcher = agent.exec(&["sh", "-c", "dd if=/dev/zero of=/dev/null bs=1M count=200 2>/dev/null; sleep 3"]);
    let id = id_of(&launcher);
    wait_for(Duration::from_secs(10), "legacy and container series", || {
        let m = agent.scrape();
        (m.one("cpu_usage_per", &[("job", &id)]).is_some() && m.one("container_threads", &[("name", &id)]).is_some())
            .then_some(())
    });
    let text = agent.scrape_text();
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && report.trim().is_empty(), "promtool: {report}");
    launcher.kill().unwrap();
    let _ = launcher.wait();
}

#[test]
fn a_real_prometheus_scrapes_container_series() {
    if !privileged("a_real_prometheus_scrapes_container_series") {
        return;
    }
    let Some(prometheus) = tool("prometheus", "a_real_prometheus_scrapes_container_series") else { return };
    let mut agent = Agent::start();
    let mut launcher = agent.exec(&["sleep", "60"]);
    let id = id_of(&launcher);
    let job = format!("    static_configs:\n      - targets: ['127.0.0.1:{}']\n", agent.port);
    let prom = Prometheus::start(&prometheus, &job, &[]);
    let query = format!("container_memory_usage_bytes{{name=\"{id}\"}}");
    let result = wait_for(Duration::from_secs(40), "Prometheus to have the container series", || {
        prom.query(&query)?.first().cloned()
    });
    let labels = &result["metric"];
    assert_eq!(labels["name"], id.as_str());
    assert_eq!(labels["pid"], launcher.id().to_string().as_str());
    assert_eq!(labels["user"], "root");
    assert!(labels["id"].as_str().unwrap().ends_with(&format!("/{}/{id}", agent.parent)));
    assert_eq!(labels["job"], "apptheus");
    let value: f64 = result["value"][1].as_str().unwrap().parse().unwrap();
    assert!(value > 0.0);
    launcher.kill().unwrap();
    let _ = launcher.wait();
}

/// Start `launcher exec -- sleep 30` while the agent is frozen, change the launcher binary on
/// disk with `change`, then let the agent check the caller.
fn refused_after_binary_change(change: impl FnOnce(&Path)) {
    let dir = tempfile::tempdir().unwrap();
    let launcher_path = dir.path().join("launcher");
    std::fs::copy(BIN, &launcher_path).unwrap();
    let mut agent = Agent::start_with(AgentOptions { trust: vec![launcher_path.clone()], ..Default::default() });
    freeze(agent.pid());
    let launcher = agent.exec_with(&launcher_path, &["sleep", "30"]);
    wait_connected(launcher.id());
    change(&launcher_path);
    thaw(agent.pid());
    let out = launcher.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("deleted or replaced"), "{err}");
    assert_refused(&agent, 0.0);
}

#[test]
fn a_deleted_trusted_binary_is_refused() {
    if !privileged("a_deleted_trusted_binary_is_refused") {
        return;
    }
    refused_after_binary_change(|p| std::fs::remove_file(p).unwrap());
}

#[test]
fn a_trusted_binary_replaced_at_its_path_is_refused() {
    if !privileged("a_trusted_binary_replaced_at_its_path_is_refused") {
        return;
    }
    // An upgrade-style replacement: a new file renamed over the trusted path (new inode).
    refused_after_binary_change(|p| {
        let new = p.with_extension("new");
        std::fs::copy(BIN, &new).unwrap();
        std::fs::rename(&new, p).unwrap();
    });
}

/// `--metrics.disable`: the families of the named groups are gone from the scrape (HELP and
/// TYPE too), every other group stays, and the series the new spec and peak families carry are
/// the kernel's (this host: hybrid, so v1 files).
#[test]
fn disabled_metric_groups_are_not_exported() {
    if !privileged("disabled_metric_groups_are_not_exported") {
        return;
    }
    let names = |text: &str| -> std::collections::BTreeSet<String> {
        text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).map(str::to_string).collect()
    };
    let mut all = Agent::start();
    let mut launcher = all.exec(&["sleep", "30"]);
    let id = id_of(&launcher);
    let full = wait_for(Duration::from_secs(10), "the container's first sample", || {
        let text = all.scrape_text();
        text.contains(&format!("container_processes{{name=\"{id}\"")).then_some(text)
    });
    // The peak is read like a rare counter (every sample only while it moves, else every 10th):
    // its first reading, at placement, may predate the launcher's first page.
    for family in ["container_memory_max_usage_bytes", "container_spec_cpu_period", "container_spec_cpu_shares"] {
        wait_for(Duration::from_secs(10), &format!("{family} > 0 for {id}"), || {
            all.scrape().one(family, &[("name", &id)]).is_some_and(|v| v > 0.0).then_some(())
        });
    }
    launcher.kill().unwrap();
    launcher.wait().unwrap();

    let mut some = Agent::start_with(AgentOptions { extra: vec!["--metrics.disable=pressure,sched,legacy".into()], ..Default::default() });
    let mut launcher = some.exec(&["sleep", "30"]);
    let id = id_of(&launcher);
    let text = wait_for(Duration::from_secs(10), "the container's first sample", || {
        let text = some.scrape_text();
        text.contains(&format!("container_processes{{name=\"{id}\"")).then_some(text)
    });
    let (before, after) = (names(&full), names(&text));
    let gone: Vec<&String> = before.difference(&after).collect();
    assert!(!gone.is_empty());
    for name in &gone {
        assert!(
            name.starts_with("container_pressure_")
                || ["container_context_switches_total", "container_runqueue_latency_seconds"].contains(&name.as_str())
                || !name.starts_with("container_") && !name.starts_with("apptheus_") && !name.starts_with("process_"),
            "{name} disappeared but is in no disabled group"
        );
    }
    for kept in ["container_cpu_usage_seconds_total", "container_memory_usage_bytes", "container_processes", "container_start_time_seconds"] {
        assert!(after.contains(kept), "{kept} missing with pressure,sched,legacy disabled");
    }
    for dropped in ["cpu_usage_per", "memory_usage", "container_pressure_cpu_waiting_seconds_total"] {
        assert!(before.contains(dropped) && !after.contains(dropped), "{dropped}: before {}, after {}", before.contains(dropped), after.contains(dropped));
    }
    launcher.kill().unwrap();
    launcher.wait().unwrap();
}

/// The `image` label (issue 18): an Apptainer starter's image from the engine configuration in
/// its environment (python3 stands in for the starter, with the environment Apptainer's Go side
/// gives it); bad configurations still get placed, labelled with the executable, and the log
/// says why; `apptheus exec` is labelled with the absolute path of its command.
#[test]
fn image_label_names_what_the_container_runs() {
    if !privileged("image_label_names_what_the_container_runs") {
        return;
    }
    let python = real_python();
    let mut agent = Agent::start_with(AgentOptions { trust: vec![python.clone(), BIN.into()], ..Default::default() });
    let fixture = |name: &str| std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/apptainer").join(name)).unwrap();
    // Apptainer's cut: chunks of 131056 bytes numbered from 1, then the count.
    let chunked = |json: &str, count: Option<usize>| -> Vec<(String, String)> {
        let bytes = json.as_bytes();
        let mut env = vec![("APPTAINER_MESSAGELEVEL".to_string(), "1".to_string())];
        let chunks: Vec<&[u8]> = bytes.chunks(131_056).collect();
        for (i, c) in chunks.iter().enumerate() {
            env.push((format!("ENGINE_CONFIG{}", i + 1), String::from_utf8(c.to_vec()).unwrap()));
        }
        env.push(("ENGINE_CONFIG_CHUNKS".to_string(), count.unwrap_or(chunks.len()).to_string()));
        env
    };
    let sif = fixture("engine-config-sif.json");
    let huge = sif.replace("\"image\":\"/home/alice/images/lolcow_latest.sif\"", &format!("\"image\":\"/{}\"", "x".repeat(900_000)));
    assert!(huge.len() > 900_000);
    let python_exe = python.display().to_string();
    type Case = (&'static str, Vec<(String, String)>, String);
    let cases: Vec<Case> = vec![
        ("sif", chunked(&sif, None), "/home/alice/images/lolcow_latest.sif".into()),
        ("uri", chunked(&fixture("engine-config-docker-uri.json"), None), "docker://alpine:3.20".into()),
        ("no config", vec![("APPTAINER_MESSAGELEVEL".into(), "1".into())], python_exe.clone()),
        ("a chunk missing", chunked(&sif, Some(2)), python_exe.clone()),
        ("not JSON", chunked("{\"engineName\":\"apptainer\",", None), python_exe.clone()),
        ("an image of 900 kB", chunked(&huge, None), python_exe.clone()),
    ];
    let script = "import socket, sys, time\ns = socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n\
                  print(s.makefile().readline().strip(), flush=True)\ntime.sleep(30)\n";
    let mut expected = Vec::new();
    let mut children = Vec::new();
    for (what, env, image) in cases {
        let (launcher, ack) = spawn_and_read_answer(Command::new(&python).args(["-c", script]).arg(&agent.socket).env_clear().envs(env));
        agent.started.push(launcher.id());
        assert_eq!(ack["status"], "ok", "{what}: {ack}");
        expected.push((what, ack["id"].as_str().unwrap().to_string(), image));
        children.push(launcher);
    }
    // `apptheus exec` with a command found along PATH, and one given relative to its directory.
    // The path as found along PATH (like Apptainer's image path, a symlink is not resolved).
    let sh = std::fs::canonicalize("/bin/sh").unwrap().parent().unwrap().join("sh");
    let mut exec = Command::new(BIN);
    exec.arg("exec").arg(format!("--socket.path={}", agent.socket.display())).args(["--", "sh", "-c", "sleep 30"]);
    exec.env("PATH", sh.parent().unwrap()).stdout(Stdio::null());
    let child = exec.spawn().unwrap();
    agent.started.push(child.id());
    expected.push(("exec along PATH", id_of(&child), sh.display().to_string()));
    children.push(child);
    let dir = tempfile::tempdir().unwrap();
    let script_path = dir.path().join("run me.sh");
    std::fs::write(&script_path, "#!/bin/sh\nsleep 30\n").unwrap();
    std::fs::set_permissions(&script_path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let child = Command::new(BIN)
        .arg("exec")
        .arg(format!("--socket.path={}", agent.socket.display()))
        .args(["--", "./run me.sh"])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    agent.started.push(child.id());
    expected.push(("exec of ./run me.sh", id_of(&child), script_path.display().to_string()));
    children.push(child);

    let m = wait_for(Duration::from_secs(15), "every container sampled", || {
        let m = agent.scrape();
        expected.iter().all(|(_, id, _)| m.one("container_memory_usage_bytes", &[("name", id)]).is_some()).then_some(m)
    });
    for (what, id, image) in &expected {
        for (name, labels, _) in m.samples.iter().filter(|(n, l, _)| n.starts_with("container_") && l.get("name") == Some(id)) {
            assert_eq!(labels.get("image"), Some(image), "{what}: {name} {labels:?}");
        }
        assert!(m.one("container_cpu_usage_seconds_total", &[("name", id), ("image", image)]).is_some(), "{what}");
    }
    // Legacy series keep their own labels.
    assert!(m.samples.iter().filter(|(n, _, _)| n == "memory_usage").all(|(_, l, _)| !l.contains_key("image")));
    let log = agent.log_text();
    for why in ["chunk ENGINE_CONFIG2 is missing", "not valid JSON", "image name longer than the cap"] {
        assert!(log.contains(why), "no debug line saying {why:?}:\n{log}");
    }
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}
