//! The cluster, end to end (issue 16): three "nodes" (three real agents, each with its own
//! socket, cgroup parent and listen address), a two-node job with the same `slurm_job_id`, a
//! container that is OOM-killed, and the shipped mixin (`monitoring/`) on a central Prometheus
//! in the two topologies sites run:
//!
//! - A: one Prometheus scrapes the three through `file_sd_configs`, with a `node` label;
//! - B: a Prometheus in agent mode on each node `remote_write`s to a central Prometheus with the
//!   remote-write receiver (the path Thanos, Mimir and VictoriaMetrics take).
//!
//! In both, every query of every dashboard panel and every recording rule returns data on the
//! central Prometheus, the job's CPU sums across nodes and equals the sum of its containers, and
//! the OOM alert fires. A dashboard query that no longer matches a metric fails here.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use common::prom_server::Prometheus;
use common::*;

const JOB: &str = "42";
/// What the dashboards' `$__rate_interval` and friends become: several scrapes at 1 s.
const RANGE: &str = "20s";

fn workspace() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

struct Node {
    name: String,
    /// The node's own loopback address (127.0.0.2-4), as its agent listens on it.
    agent: Agent,
    launchers: Vec<Child>,
}

impl Node {
    fn start(name: &str, host: &'static str) -> Node {
        let agent = Agent::start_with(AgentOptions {
            extra: vec!["--metrics.env-labels=SLURM_JOB_ID".into()],
            host,
            ..Default::default()
        });
        Node { name: name.to_string(), agent, launchers: Vec::new() }
    }

    /// A container of job 42 burning one CPU, with a CFS quota of 1.5 CPUs (its allocation) and
    /// a memory limit of 1 GiB, as `apptainer run --cpus 1.5 --memory 1G` sets them.
    fn job_step(&mut self) -> String {
        let launcher = self.agent.exec_env(Path::new(BIN), &[("SLURM_JOB_ID", JOB)], &["timeout", "300", "sha256sum", "/dev/zero"]);
        let id = id_of(&launcher);
        self.launchers.push(launcher);
        self.limit(&id, &[("cpu.max", "150000 100000"), ("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "150000")]);
        self.limit(&id, &[("memory.max", "1G"), ("memory.limit_in_bytes", "1G")]);
        id
    }

    /// A container of job 42 that ran a moment and ended (retained, with its end time).
    fn ended_job_step(&mut self) -> String {
        let mut launcher = self.agent.exec_env(Path::new(BIN), &[("SLURM_JOB_ID", JOB)], &["sh", "-c", "sleep 1; head -c 50000000 /dev/zero | sha256sum > /dev/null"]);
        let id = id_of(&launcher);
        assert!(launcher.wait().unwrap().success(), "the short job step {id} failed");
        wait_for(Duration::from_secs(30), &format!("{id} ended"), || {
            (!self.agent.scrape().get("container_end_time_seconds", &[("name", &id)]).is_empty()).then_some(())
        });
        id
    }

    /// A container that allocates 400 MiB under a 64 MiB limit, set once it is placed.
    fn oom_victim(&mut self) -> String {
        let launcher = self.agent.exec(&["sh", "-c", "sleep 3; head -c 400M /dev/zero | tail -n 1 > /dev/null; sleep 300"]);
        let id = id_of(&launcher);
        self.launchers.push(launcher);
        self.limit(&id, &[("memory.max", "64M"), ("memory.limit_in_bytes", "64M")]);
        id
    }

    /// Once the container is placed, write each setting its cgroups have (v2 or v1 files, in
    /// this order), as `apptainer run --cpus/--memory` does; at least one must be written.
    fn limit(&self, id: &str, settings: &[(&str, &str)]) {
        wait_for(Duration::from_secs(30), &format!("{id} placed"), || {
            (!self.agent.scrape().get("container_start_time_seconds", &[("name", id)]).is_empty()).then_some(())
        });
        let mut written = Vec::new();
        for dir in self.agent.container_dirs(id) {
            for (file, value) in settings {
                let path = dir.join(file);
                if path.exists() {
                    std::fs::write(&path, value).unwrap_or_else(|e| panic!("writing {value} to {}: {e}", path.display()));
                    written.push(path);
                }
            }
        }
        assert!(!written.is_empty(), "none of {settings:?} in the cgroups of {id}: {:?}", self.agent.container_dirs(id));
    }

    /// Waits until this node's agent counts an OOM kill in container `id` (eBPF or memory.events).
    fn wait_oom_counted(&self, id: &str) {
        let counted = || {
            let m = self.agent.scrape();
            ["container_oom_kills_total", "container_oom_events_total"]
                .iter()
                .any(|f| m.get(f, &[("name", id)]).iter().any(|v| *v > 0.0))
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !counted() {
            assert!(
                Instant::now() < deadline,
                "{}: no OOM kill counted for {id}: {}",
                self.name,
                self.agent.scrape_text().lines().filter(|l| l.contains("oom")).collect::<Vec<_>>().join("\n")
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn target(&self) -> String {
        format!("{}:{}", self.agent.host, self.agent.port)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for l in &mut self.launchers {
            let _ = l.kill();
            let _ = l.wait();
        }
    }
}

/// The mixin's rule files, as absolute paths.
fn rule_files() -> Vec<PathBuf> {
    let dir = workspace().join("monitoring/rules");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no rule files in {}", dir.display());
    files
}

fn rule_files_yaml() -> String {
    rule_files().iter().map(|p| format!("  - {}\n", p.display())).collect()
}

/// Every `expr` of every panel (rows and nested panels included) of every dashboard, with the
/// dashboard's file name.
fn dashboard_queries() -> Vec<(String, String)> {
    fn walk(v: &serde_json::Value, file: &str, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(expr)) = map.get("expr") {
                    if !expr.trim().is_empty() {
                        out.push((file.to_string(), expr.clone()));
                    }
                }
                for (k, child) in map {
                    // Variable queries are checked through the panels that use them.
                    if k != "templating" {
                        walk(child, file, out);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, file, out)),
            _ => {}
        }
    }
    let dir = workspace().join("monitoring/dashboards");
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for path in files.iter().filter(|p| p.extension().is_some_and(|x| x == "json")) {
        let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        walk(&json, &path.file_name().unwrap().to_string_lossy(), &mut out);
    }
    assert!(out.len() > 10, "only {} panel queries found in {}", out.len(), dir.display());
    out
}

/// The recording rules' names, from the rule files.
fn recorded_names() -> Vec<String> {
    let mut out = Vec::new();
    for file in rule_files() {
        for line in std::fs::read_to_string(&file).unwrap().lines() {
            if let Some(name) = line.trim().strip_prefix("- record:").or_else(|| line.trim().strip_prefix("record:")) {
                out.push(name.trim().trim_matches(['"', '\'']).to_string());
            }
        }
    }
    out
}

/// A panel query with the dashboard's variables set: the ranges to [`RANGE`], and each
/// template variable to one of its values here. Every combination of node is tried, since a
/// panel may show data for one node only (the OOM kill is on node 3).
fn instantiate(expr: &str, vars: &BTreeMap<&str, String>) -> String {
    let mut q = expr.to_string();
    for interval in ["$__rate_interval", "${__rate_interval}", "$__interval_ms", "$__interval", "${__interval}", "$__range", "${__range}"] {
        q = q.replace(interval, if interval.ends_with("_ms") { "1000" } else { RANGE });
    }
    // Longest names first, so that `$node` does not eat the start of `$nodes`.
    let mut names: Vec<&&str> = vars.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in names {
        let value = &vars[*name];
        q = q.replace(&format!("${{{name}:regex}}"), value).replace(&format!("${{{name}}}"), value).replace(&format!("${name}"), value);
    }
    assert!(!q.contains('$'), "a dashboard variable this test does not know is left in: {q}");
    q
}

fn wait_until(prom: &Prometheus, what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s; targets: {}; log: {}", prom.targets(), prom.log());
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Every node's series arrive on the central Prometheus, with its node label.
/// Returns when (Unix seconds): the central's data for them starts about then.
fn wait_for_nodes(topology: &str, central: &Prometheus, nodes: &[Node]) -> f64 {
    wait_until(central, &format!("{topology}: series of the three nodes"), 60, || {
        central.query("count by (node) (apptheus_build_info)").is_some_and(|r| r.len() == nodes.len())
    });
    unix_now()
}

fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// A container OOM-killed on node 3 while the central Prometheus watches: the alert's
/// `increase()` needs the counter's 0 before the kill, as a Prometheus that runs all along has.
fn oom_kill(nodes: &mut [Node]) -> String {
    let id = nodes[2].oom_victim();
    nodes[2].wait_oom_counted(&id);
    id
}

/// What both topologies must show on the central Prometheus.
/// `job_ids`: the job's two running containers (on node 1 and 2); `ended_id`: its ended one.
/// `data_since`: when the central Prometheus started receiving the nodes' series.
fn check_central(topology: &str, central: &Prometheus, nodes: &[Node], data_since: f64, job_ids: &[String], ended_id: &str, oom_id: &str) {
    // The job's CPU, summed across nodes by the mixin's recording rule, against the sum of its
    // containers' rates (each from its own node), evaluated at one instant: within 5 %.
    let job_rule = format!("slurm_job:container_cpu_usage_seconds:rate5m{{slurm_job_id=\"{JOB}\"}}");
    let busy = |id: &String| format!("rate(container_cpu_usage_seconds_total{{name=\"{id}\",cpu=\"total\"}}[{RANGE}])");
    wait_until(central, &format!("{topology}: the job's rule and both its containers busy"), 60, || {
        central.value(&job_rule).is_some() && job_ids.iter().all(|id| central.value(&busy(id)).is_some_and(|v| v > 0.1))
    });
    // A rule evaluated at t may miss a sample with a timestamp just before t that was stored just
    // after it (a scrape in progress; through remote_write, the batch in flight). Over a [5m]
    // range of young data that sample is 1/age of the value: compare once the central has 60 s
    // of the job's data (a 2 s lag is then 3 %), at an instant a few seconds back, by which time
    // every node's samples up to it have arrived.
    let started = central
        .value(&format!("max(container_start_time_seconds{{slurm_job_id=\"{JOB}\"}})"))
        .unwrap_or_else(|| panic!("{topology}: no start time for job {JOB}"));
    std::thread::sleep(Duration::from_secs_f64((started.max(data_since) + 63.0 - unix_now()).max(3.0)));
    let at = unix_now() - 3.0;
    // the rule's sample at that instant was evaluated at its own time: compare at that time
    let evaluated = central
        .value_at(&format!("timestamp({job_rule})"), Some(at))
        .unwrap_or_else(|| panic!("{topology}: no {job_rule} at {at}"));
    let whole = central.value_at(&job_rule, Some(at)).unwrap();
    let parts: f64 = job_ids
        .iter()
        .map(String::as_str)
        .chain([ended_id])
        .map(|id| {
            let q = format!("sum without (cpu) (rate(container_cpu_usage_seconds_total{{name=\"{id}\",cpu=\"total\"}}[5m]))");
            central.value_at(&q, Some(evaluated)).unwrap_or_else(|| panic!("{topology}: no CPU rate for {id} at {evaluated}"))
        })
        .sum();
    // (a [5m] rate over the test's first seconds is small: rate() divides by the whole range)
    assert!(parts > 0.0, "{topology}: no CPU for the job's containers at {at}");
    assert!((whole - parts).abs() <= 0.05 * parts, "{topology}: job CPU {whole} (the recording rule) against its containers' sum {parts}");
    let nodes_of_job = central.query(&format!("count by (node) (container_start_time_seconds{{slurm_job_id=\"{JOB}\"}})")).unwrap_or_default();
    assert_eq!(nodes_of_job.len(), 2, "{topology}: job {JOB} should span two nodes: {nodes_of_job:?}");

    // Every recording rule has data.
    for name in recorded_names() {
        wait_until(central, &format!("{topology}: recording rule {name}"), 60, || central.query(&name).is_some_and(|r| !r.is_empty()));
    }

    // Every dashboard panel query returns data for at least one node.
    for (file, expr) in dashboard_queries() {
        let mut found = false;
        let mut tried = Vec::new();
        for node in nodes {
            let vars: BTreeMap<&str, String> = [
                ("node", node.name.clone()),
                ("instance", node.target()),
                // the node dashboard's container variable is multi-valued with "All"
                ("container", ".+".to_string()),
                ("slurm_job_id", JOB.to_string()),
                ("job", "apptheus".to_string()),
                ("datasource", "prometheus".to_string()),
            ]
            .into_iter()
            .collect();
            let q = instantiate(&expr, &vars);
            if central.query(&q).is_some_and(|r| !r.is_empty()) {
                found = true;
                break;
            }
            tried.push(q);
        }
        assert!(found, "{topology}: {file}: the panel query returns no data on any node: {tried:?}");
    }

    // The OOM alert fires for the container that was OOM-killed.
    wait_until(central, &format!("{topology}: an OOM alert firing for {oom_id}"), 90, || {
        let (_, body) = http_get(central.port, "/api/v1/alerts").unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["data"]["alerts"].as_array().is_some_and(|alerts| {
            alerts.iter().any(|a| {
                a["state"] == "firing"
                    && a["labels"]["alertname"].as_str().is_some_and(|n| n.to_lowercase().contains("oom"))
                    && a["labels"]["name"] == oom_id
            })
        })
    });
}

#[test]
fn a_three_node_cluster_through_file_sd_and_through_remote_write() {
    let test = "a_three_node_cluster_through_file_sd_and_through_remote_write";
    if !privileged(test) {
        return;
    }
    let Some(prometheus) = tool("prometheus", test) else { return };
    let mut nodes: Vec<Node> =
        [("node1", "127.0.0.2"), ("node2", "127.0.0.3"), ("node3", "127.0.0.4")].iter().map(|(n, host)| Node::start(n, host)).collect();
    let job_ids = vec![nodes[0].job_step(), nodes[1].job_step()];
    let ended_id = nodes[1].ended_job_step();
    // A: one Prometheus, file_sd with a node label per target.
    let sd_dir = tempfile::tempdir().unwrap();
    let sd_file = sd_dir.path().join("apptheus.json");
    let groups: Vec<serde_json::Value> =
        nodes.iter().map(|n| serde_json::json!({ "targets": [n.target()], "labels": { "node": n.name } })).collect();
    std::fs::write(&sd_file, serde_json::to_string_pretty(&groups).unwrap()).unwrap();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{}scrape_configs:\n  - job_name: apptheus\n    file_sd_configs:\n      - files: ['{}']\n        refresh_interval: 1s\n",
        rule_files_yaml(),
        sd_file.display()
    );
    let central = Prometheus::start_with_config(&prometheus, &config, &[]);
    let since = wait_for_nodes("file_sd", &central, &nodes);
    let oom_id = oom_kill(&mut nodes);
    check_central("file_sd", &central, &nodes, since, &job_ids, &ended_id, &oom_id);
    drop(central);

    // B: an agent-mode Prometheus per node remote_writes to a central receiver.
    let config = format!("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{}", rule_files_yaml());
    let central = Prometheus::start_with_config(&prometheus, &config, &["--web.enable-remote-write-receiver"]);
    let forwarders: Vec<Prometheus> = nodes
        .iter()
        .map(|n| {
            let config = format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: apptheus\n    static_configs:\n      - targets: ['{}']\n        labels:\n          node: {}\nremote_write:\n  - url: http://127.0.0.1:{}/api/v1/write\n    queue_config:\n      batch_send_deadline: 1s\n",
                n.target(),
                n.name,
                central.port
            );
            Prometheus::start_with_config(&prometheus, &config, &["--enable-feature=agent"])
        })
        .collect();
    let since = wait_for_nodes("remote_write", &central, &nodes);
    let oom_id = oom_kill(&mut nodes);
    check_central("remote_write", &central, &nodes, since, &job_ids, &ended_id, &oom_id);
    drop(forwarders);
    nodes.clear();
}
