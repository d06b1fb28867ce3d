//! Short-lived jobs, retention, persistence and restart recovery, end to end on real cgroups.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
fn a_100ms_job_is_accounted_and_kept_for_the_retention() {
    if !privileged("a_100ms_job_is_accounted_and_kept_for_the_retention") {
        return;
    }
    let mut agent = Agent::start_with(AgentOptions {
        interval: "500ms",
        extra: vec!["--metrics.retention=3s".into()],
        ..Default::default()
    });
    // ~100 ms of CPU, well inside one interval.
    let script = "import time\nt=time.time()\nwhile time.time()-t<0.1: pass";
    let mut launcher = agent.exec(&["python3", "-c", script]);
    let id = id_of(&launcher);
    assert!(launcher.wait().unwrap().success());
    // Two intervals later the final sample is there, with the job's CPU time.
    std::thread::sleep(Duration::from_millis(1000));
    let m = agent.scrape();
    let cpu = m.one("container_cpu_usage_seconds_total", &[("name", &id), ("cpu", "total")]).expect("final sample");
    assert!(cpu > 0.05, "cpu {cpu}");
    assert!(m.one("container_end_time_seconds", &[("name", &id)]).is_some());
    assert!(m.one("push_time_seconds", &[("job", &id)]).is_some());
    assert_eq!(m.one("apptheus_containers", &[]), Some(0.0), "an ended container is not live");
    assert!(agent.live_container_dirs().is_empty(), "the cgroup is removed at once");
    // Frozen: the value does not change while retained.
    std::thread::sleep(Duration::from_millis(700));
    let again = agent.scrape().one("container_cpu_usage_seconds_total", &[("name", &id), ("cpu", "total")]);
    assert_eq!(again, Some(cpu));
    // Gone after the retention.
    wait_for(Duration::from_secs(6), "series dropped after the retention", || {
        agent.scrape().get("container_cpu_usage_seconds_total", &[("name", &id)]).is_empty().then_some(())
    });
}

#[test]
fn kept_cgroup_files_are_closed_when_containers_end() {
    if !privileged("kept_cgroup_files_are_closed_when_containers_end") {
        return;
    }
    let mut agent = Agent::start();
    let pid = agent.pid();
    let idle = fd_count(pid);
    let mut launchers: Vec<_> = (0..5).map(|_| agent.exec(&["sleep", "2"])).collect();
    // Once sampled, each container keeps 11 (cgroup v2) to 16 (hybrid) files open, besides its
    // launcher's connection.
    wait_for(Duration::from_secs(5), "kept files open", || (fd_count(pid) >= idle + 5 * 10).then_some(()));
    for l in &mut launchers {
        assert!(l.wait().unwrap().success());
    }
    // When the containers end, every kept file is closed, and so are the connections.
    wait_for(Duration::from_secs(5), "descriptors back to idle", || (fd_count(pid) <= idle).then_some(()));
    assert!(agent.live_container_dirs().is_empty(), "cgroups removed");
}

#[test]
fn throttling_that_starts_mid_life_is_seen_within_the_refresh_and_then_every_sample() {
    if !privileged("throttling_that_starts_mid_life_is_seen_within_the_refresh_and_then_every_sample") {
        return;
    }
    let mut agent = Agent::start(); // 200 ms interval: the refresh of still counters is 2 s
    let script = "import time\nt=time.time()\nwhile time.time()-t<6: pass";
    let mut launcher = agent.exec(&["python3", "-c", script]);
    let id = id_of(&launcher);
    let throttled = |agent: &Agent| agent.scrape().one("container_cpu_cfs_throttled_periods_total", &[("name", &id)]);
    assert_eq!(wait_for(Duration::from_secs(5), "first sample", || throttled(&agent)), 0.0, "no quota yet");
    // A quota of 10 % of a CPU, set by someone else while the container runs.
    let quota_set = agent.container_dirs(&id).iter().any(|d| {
        std::fs::write(d.join("cpu.cfs_quota_us"), "10000").is_ok() || std::fs::write(d.join("cpu.max"), "10000 100000").is_ok()
    });
    assert!(quota_set, "no cpu.cfs_quota_us or cpu.max in {:?}", agent.container_dirs(&id));
    // Seen within the refresh (10 samples) plus a margin...
    let first = wait_for(Duration::from_millis(3000), "throttled periods counted", || throttled(&agent).filter(|v| *v > 0.0));
    // ...and from then on in every sample: the busy loop is throttled in each 100 ms period,
    // and scrapes 250 ms apart straddle a sample each.
    let mut seen = vec![first];
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(250));
        seen.push(throttled(&agent).expect("still exported"));
    }
    assert!(seen.windows(2).all(|w| w[1] > w[0]), "throttled periods, 250 ms apart: {seen:?}");
    assert!(launcher.wait().unwrap().success());
}

#[test]
fn zero_retention_drops_series_at_once() {
    if !privileged("zero_retention_drops_series_at_once") {
        return;
    }
    let mut agent = Agent::start_with(AgentOptions { extra: vec!["--metrics.retention=0s".into()], ..Default::default() });
    let mut launcher = agent.exec(&["true"]);
    let id = id_of(&launcher);
    assert!(launcher.wait().unwrap().success());
    wait_for(Duration::from_secs(5), "cgroup removed", || agent.live_container_dirs().is_empty().then_some(()));
    assert!(agent.scrape().get("container_start_time_seconds", &[("name", &id)]).is_empty());
}

#[test]
fn sigkilled_agent_readopts_running_containers() {
    if !privileged("sigkilled_agent_readopts_running_containers") {
        return;
    }
    let mut agent = Agent::start_with(AgentOptions {
        extra: vec!["--persistence.file={dir}/store.json".into(), "--persistence.interval=200ms".into()],
        ..Default::default()
    });
    // Five containers that burn a little CPU and then sleep, long enough to outlive the restart.
    let mut launchers: Vec<_> = (0..5)
        .map(|_| agent.exec(&["sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; sleep 4"]))
        .collect();
    let ids: Vec<String> = launchers.iter().map(id_of).collect();
    let before = wait_for(Duration::from_secs(10), "5 containers with CPU time", || {
        let m = agent.scrape();
        let cpu: Option<Vec<f64>> =
            ids.iter().map(|id| m.one("container_cpu_usage_seconds_total", &[("name", id), ("cpu", "total")])).collect();
        cpu.filter(|c| c.iter().all(|v| *v > 0.0))
    });
    std::thread::sleep(Duration::from_millis(500)); // let the persistence file catch up

    agent.kill9_and_restart();

    let m = wait_for(Duration::from_secs(10), "5 containers re-adopted", || {
        let m = agent.scrape();
        (m.one("apptheus_containers", &[]) == Some(5.0)).then_some(m)
    });
    for (id, cpu_before) in ids.iter().zip(&before) {
        let cpu_after = m.one("container_cpu_usage_seconds_total", &[("name", id), ("cpu", "total")]).expect(id);
        assert!(cpu_after >= *cpu_before, "{id}: CPU went backwards {cpu_before} -> {cpu_after}");
        let pid = m.one("container_start_time_seconds", &[("name", id)]);
        assert!(pid.is_some(), "{id} not exported");
        // The labels survived (from the persistence file).
        assert_eq!(m.label_values("container_start_time_seconds", "pid").iter().filter(|p| id.ends_with(&format!("_{p}"))).count(), 1);
    }
    // No cgroup leaked: exactly the five, in every hierarchy.
    let dirs = agent.live_container_dirs();
    assert_eq!(dirs.len(), 5 * agent.parent_dirs().len(), "{dirs:?}");
    // They are removed when they end (the launchers outlived the old agent's connection).
    for l in &mut launchers {
        let _ = l.wait();
    }
    wait_for(Duration::from_secs(10), "cgroups removed after the jobs end", || {
        agent.live_container_dirs().is_empty().then_some(())
    });
    assert_eq!(agent.scrape().one("apptheus_containers", &[]), Some(0.0));
}

#[test]
fn an_empty_leftover_cgroup_is_removed_at_start() {
    if !privileged("an_empty_leftover_cgroup_is_removed_at_start") {
        return;
    }
    let mut agent = Agent::start();
    let stale: Vec<_> = agent.parent_dirs().into_iter().map(|p| p.join("starter_99999")).collect();
    for d in &stale {
        std::fs::create_dir(d).unwrap();
    }
    agent.kill9_and_restart();
    assert!(stale.iter().all(|d| !d.exists()), "leftover not removed");
}

#[test]
fn a_corrupt_persistence_file_is_set_aside() {
    if !privileged("a_corrupt_persistence_file_is_set_aside") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("store.json");
    std::fs::write(&file, b"{\"format\":\"apptheus-store\",\"version\":1,\"containers\":[{\"trunc").unwrap();
    let agent = Agent::start_with(AgentOptions {
        extra: vec![format!("--persistence.file={}", file.display())],
        ..Default::default()
    });
    assert!(!file.exists());
    let aside: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert_eq!(aside.len(), 1);
    assert!(aside[0].file_name().to_string_lossy().starts_with("store.json.corrupt-"));
    let log = agent.log_text();
    assert_eq!(log.lines().filter(|l| l.contains("persistence file unusable")).count(), 1, "{log}");
    assert_eq!(agent.scrape().one("apptheus_containers", &[]), Some(0.0));
}

#[test]
fn env_labels_come_from_the_launcher_environment() {
    if !privileged("env_labels_come_from_the_launcher_environment") {
        return;
    }
    let mut agent = Agent::start_with(AgentOptions {
        extra: vec!["--metrics.env-labels=SLURM_JOB_ID,SLURM_JOB_USER,NOT_SET".into()],
        ..Default::default()
    });
    let mut launcher = Command::new(BIN)
        .args(["exec", &format!("--socket.path={}", agent.socket.display()), "--", "sleep", "10"])
        .env("SLURM_JOB_ID", "4242")
        .env("SLURM_JOB_USER", "alice")
        .env_remove("NOT_SET")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    agent.started.push(launcher.id());
    let id = id_of(&launcher);
    let m = wait_for(Duration::from_secs(10), "container series", || {
        let m = agent.scrape();
        m.one("container_memory_usage_bytes", &[("name", &id)]).map(|_| m)
    });
    let labels = &m.samples.iter().find(|(n, l, _)| n == "container_memory_usage_bytes" && l["name"] == id).unwrap().1;
    assert_eq!(labels.get("slurm_job_id").map(String::as_str), Some("4242"));
    assert_eq!(labels.get("slurm_job_user").map(String::as_str), Some("alice"));
    assert!(!labels.contains_key("not_set"));
    assert!(m.one("memory_usage", &[("job", &id), ("slurm_job_id", "4242")]).is_some());
    launcher.kill().unwrap();
    launcher.wait().unwrap();
}
