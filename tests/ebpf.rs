//! The eBPF counters through the real agent: merged into /metrics with the container's labels,
//! consistent with the workload, and the agent degrades to cgroup metrics without them.
//! (Kernel-level checks of each program are in apptheus/src/ebpf/tests.rs.)

mod common;

use std::time::Duration;

use common::*;

#[test]
fn execs_forks_and_loopback_bytes_reach_metrics() {
    if !privileged("execs_forks_and_loopback_bytes_reach_metrics") {
        return;
    }
    let mut agent = Agent::start();
    let m = agent.scrape();
    assert_eq!(m.one("apptheus_ebpf_up", &[]), Some(1.0), "eBPF not up: {}", agent.log_text());
    assert_eq!(m.one("apptheus_ebpf_program_attached", &[("program", "sched_switch")]), Some(1.0));

    // 50 execs of /bin/true, then exactly N bytes to itself over loopback TCP.
    const N: usize = 4 * 1024 * 1024;
    let script = format!(
        "import socket, subprocess, threading, time\n\
         for _ in range(50): subprocess.run(['/bin/true'])\n\
         srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(1)\n\
         got = []\n\
         def rx():\n    c, _ = srv.accept(); n = 0\n    while True:\n        b = c.recv(65536)\n        if not b: break\n        n += len(b)\n    got.append(n)\n\
         t = threading.Thread(target=rx); t.start()\n\
         s = socket.create_connection(srv.getsockname()); s.sendall(b'x' * {N}); s.close(); t.join()\n\
         assert got == [{N}], got\n\
         time.sleep(1.5)\n"
    );
    let mut launcher = agent.exec(&["python3", "-c", &script]);
    let id = id_of(&launcher);
    let m = wait_for(Duration::from_secs(20), "eBPF counters of the workload", || {
        let m = agent.scrape();
        let rx = m.one("container_network_receive_bytes_total", &[("name", &id)])?;
        (rx >= N as f64).then_some(m)
    });
    let get = |name: &str| m.one(name, &[("name", &id)]).unwrap_or_else(|| panic!("{name} missing"));
    assert!(get("container_execs_total") >= 50.0, "execs {}", get("container_execs_total"));
    assert!(get("container_forks_total") >= 50.0, "forks {}", get("container_forks_total"));
    let (tx, rx) = (get("container_network_transmit_bytes_total"), get("container_network_receive_bytes_total"));
    // Headers and ACKs add a little: within 10 % (plus handshake) of the payload.
    let ceiling = N as f64 * 1.10 + 64.0 * 1024.0;
    assert!(tx >= N as f64 && tx <= ceiling, "tx {tx} for {N} bytes");
    assert!(rx >= N as f64 && rx <= ceiling, "rx {rx} for {N} bytes");
    assert!(get("container_network_transmit_packets_total") > 0.0);
    assert!(m.one("container_context_switches_total", &[("name", &id), ("kind", "voluntary")]).unwrap() > 0.0);
    assert!(m.one("container_runqueue_latency_seconds_count", &[("name", &id)]).unwrap() > 0.0);
    // Same labels as the cgroup series.
    let labels = |name: &str| {
        m.samples.iter().find(|(n, l, _)| n == name && l["name"] == id).map(|(_, l, _)| l.clone()).unwrap()
    };
    let mut cg = labels("container_memory_usage_bytes");
    let mut bpf = labels("container_execs_total");
    cg.remove("kind");
    bpf.remove("kind");
    assert_eq!(cg, bpf);
    assert!(launcher.wait().unwrap().success());
}

#[test]
fn without_ebpf_the_agent_serves_cgroup_metrics() {
    if !privileged("without_ebpf_the_agent_serves_cgroup_metrics") {
        return;
    }
    let mut agent = Agent::start_with(AgentOptions { extra: vec!["--ebpf.disable".into()], ..Default::default() });
    let mut launcher = agent.exec(&["sleep", "5"]);
    let id = id_of(&launcher);
    let m = wait_for(Duration::from_secs(10), "cgroup series", || {
        let m = agent.scrape();
        m.one("container_cpu_usage_seconds_total", &[("name", &id), ("cpu", "total")]).map(|_| m)
    });
    assert_eq!(m.one("apptheus_ebpf_up", &[]), Some(0.0));
    assert!(m.get("container_execs_total", &[("name", &id)]).is_empty(), "no eBPF series without eBPF");
    launcher.kill().unwrap();
    launcher.wait().unwrap();
}

/// A full eBPF map (here `--ebpf.max-containers=2`) costs the containers beyond it their eBPF
/// series, visibly (`apptheus_ebpf_watch_errors_total`, `apptheus_ebpf_containers`), and nothing
/// else: they are placed and sampled, and a freed slot goes to the next new container.
#[test]
fn a_full_ebpf_map_degrades_visibly_and_recovers() {
    if !privileged("a_full_ebpf_map_degrades_visibly_and_recovers") {
        return;
    }
    let mut agent = Agent::start_with(AgentOptions { extra: vec!["--ebpf.max-containers=2".into()], ..Default::default() });
    let m = agent.scrape();
    assert_eq!(m.one("apptheus_ebpf_up", &[]), Some(1.0), "eBPF not up: {}", agent.log_text());
    assert_eq!(m.one("apptheus_ebpf_containers_max", &[]), Some(2.0));
    assert_eq!(m.one("apptheus_ebpf_watch_errors_total", &[]), Some(0.0));

    // Each container execs /bin/true now and then (so an eBPF series shows it is counted)
    // until its stop file appears.
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    let mut start = |agent: &mut Agent| {
        n += 1;
        let stop = dir.path().join(format!("stop-{n}"));
        let script = format!("while [ ! -e {} ]; do /bin/true; sleep 0.2; done", stop.display());
        let launcher = agent.exec(&["sh", "-c", &script]);
        let id = id_of(&launcher);
        // One at a time, so which container finds the map full is known.
        wait_for(Duration::from_secs(10), "the container placed", || {
            agent.scrape().one("container_cpu_usage_seconds_total", &[("name", &id), ("cpu", "total")])
        });
        (launcher, stop, id)
    };
    let mut counted = vec![start(&mut agent), start(&mut agent)];
    let over = start(&mut agent);
    let m = wait_for(Duration::from_secs(10), "execs of the two counted containers", || {
        let m = agent.scrape();
        counted.iter().all(|(_, _, id)| m.one("container_execs_total", &[("name", id)]).is_some_and(|v| v > 0.0)).then_some(m)
    });
    assert_eq!(m.one("apptheus_ebpf_watch_errors_total", &[]), Some(1.0), "one container beyond the map");
    assert_eq!(m.one("apptheus_ebpf_containers", &[]), Some(2.0));
    assert!(m.get("container_execs_total", &[("name", &over.2)]).is_empty(), "no eBPF series for the third");
    assert!(
        m.one("container_cpu_usage_seconds_total", &[("name", &over.2), ("cpu", "total")]).is_some(),
        "the third container still has its cgroup series"
    );
    assert!(agent.log_text().contains("cannot watch the container in the eBPF maps"), "{}", agent.log_text());

    // One counted container ends: its entries are freed and the next new container is counted.
    end(counted.remove(0));
    wait_for(Duration::from_secs(10), "the ended container leaves the eBPF maps", || {
        (agent.scrape().one("apptheus_ebpf_containers", &[]) == Some(1.0)).then_some(())
    });
    let next = start(&mut agent);
    let m = wait_for(Duration::from_secs(10), "execs of the container placed after a slot freed", || {
        let m = agent.scrape();
        m.one("container_execs_total", &[("name", &next.2)]).is_some_and(|v| v > 0.0).then_some(m)
    });
    assert_eq!(m.one("apptheus_ebpf_watch_errors_total", &[]), Some(1.0));
    assert_eq!(m.one("apptheus_ebpf_containers", &[]), Some(2.0));
    assert!(m.get("container_execs_total", &[("name", &over.2)]).is_empty(), "still uncounted");

    for container in counted.into_iter().chain([over, next]) {
        end(container);
    }
    wait_for(Duration::from_secs(10), "every container ended", || agent.live_container_dirs().is_empty().then_some(()));
    assert_eq!(agent.scrape().one("apptheus_ebpf_containers", &[]), Some(0.0));
}

/// Let a container's workload finish and wait for its launcher.
fn end((mut launcher, stop, _): (std::process::Child, std::path::PathBuf, String)) {
    std::fs::write(stop, b"").unwrap();
    assert!(launcher.wait().unwrap().success());
}
