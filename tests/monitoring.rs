//! The monitoring mixin (`monitoring/`): rule files pass `promtool check rules`, their unit tests
//! pass `promtool test rules`, dashboards are importable JSON whose queries are valid PromQL, every
//! metric name the dashboards and rules use is one the real agent exports (or a recording rule),
//! with labels it has, and a real Prometheus scraping the agent evaluates every query and rule
//! without error. Every alert has a runbook entry in monitoring/README.md and promtool cases where
//! it fires and where it stays silent.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::prom_server::Prometheus;
use common::{Agent, AgentOptions};
use serde_norway::Value as Yaml;
use serde_json::Value as Json;

/// Series the agent exports on pure cgroup v2 only (README, "Metrics"): on other layouts they
/// are allowed without being in the scrape, with the labels of the other container series.
const PURE_V2_ONLY: &[&str] = &["container_spec_cpuset_cpus"];

/// Whether this host has the cgroup v2 hierarchy alone (no v1 controller mounted).
fn pure_v2() -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let fstype = |m: &str| m.split_once(" - ").and_then(|(_, r)| r.split(' ').next().map(str::to_string)).unwrap_or_default();
    mounts.lines().any(|m| fstype(m) == "cgroup2") && !mounts.lines().any(|m| fstype(m) == "cgroup")
}

/// Series Prometheus itself writes for every target (they are not in the agent's scrape), with
/// their labels.
const PROMETHEUS_SERIES: &[&str] = &["up", "scrape_duration_seconds", "scrape_samples_scraped"];

/// Labels Prometheus adds to every series it scrapes.
const TARGET_LABELS: &[&str] = &["job", "instance"];

/// Grafana's own variables, and the values the queries are checked with.
/// `$__interval` is 1s, the scrape interval of the test's Prometheus: a subquery at that step
/// finds data within the seconds the test has scraped.
const GRAFANA_BUILTINS: &[(&str, &str)] =
    &[("__rate_interval", "1m"), ("__range", "5m"), ("__interval_ms", "1000"), ("__interval", "1s")];

fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../monitoring")
}

fn files(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(monitoring().join(dir))
        .unwrap_or_else(|e| panic!("monitoring/{dir}: {e}"))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no *.{ext} in monitoring/{dir}");
    out
}

fn rule_files() -> Vec<PathBuf> {
    let out = files("rules", "yml");
    for want in ["alerts.yml", "recording.yml"] {
        assert!(out.iter().any(|p| p.ends_with(want)), "monitoring/rules/{want} is missing");
    }
    out
}

fn test_files() -> Vec<PathBuf> {
    files("tests", "yml")
}

fn dashboard_files() -> Vec<PathBuf> {
    let out = files("dashboards", "json");
    for want in ["apptheus-node.json", "apptheus-job.json", "apptheus-agent.json"] {
        assert!(out.iter().any(|p| p.ends_with(want)), "monitoring/dashboards/{want} is missing");
    }
    out
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(path: &Path) -> Yaml {
    serde_norway::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json(path: &Path) -> Json {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn seq(v: Option<&Yaml>) -> &[Yaml] {
    v.and_then(Yaml::as_sequence).map(Vec::as_slice).unwrap_or(&[])
}

fn name_of(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// One rule of a rule file.
struct Rule {
    file: String,
    /// `alert` or `record` name.
    name: String,
    alert: bool,
    expr: String,
    annotations: BTreeMap<String, String>,
}

fn rules() -> Vec<Rule> {
    let mut out = Vec::new();
    for path in rule_files() {
        let doc = yaml(&path);
        for group in seq(doc.get("groups")) {
            for rule in seq(group.get("rules")) {
                let (name, alert) = match (rule.get("alert"), rule.get("record")) {
                    (Some(a), None) => (a.as_str().unwrap().to_string(), true),
                    (None, Some(r)) => (r.as_str().unwrap().to_string(), false),
                    _ => panic!("{}: a rule is neither an alert nor a record: {rule:?}", path.display()),
                };
                let expr = rule.get("expr").and_then(Yaml::as_str).unwrap_or_else(|| panic!("{name}: no expr")).to_string();
                let annotations = rule
                    .get("annotations")
                    .and_then(Yaml::as_mapping)
                    .map(|m| m.iter().map(|(k, v)| (k.as_str().unwrap().to_string(), v.as_str().unwrap_or("").to_string())).collect())
                    .unwrap_or_default();
                out.push(Rule { file: name_of(&path), name, alert, expr, annotations });
            }
        }
    }
    assert!(out.iter().any(|r| r.alert) && out.iter().any(|r| !r.alert), "no alerts or no recording rules found");
    out
}

fn recording_names() -> BTreeSet<String> {
    rules().into_iter().filter(|r| !r.alert).map(|r| r.name).collect()
}

/// Run a tool; its combined output, and whether it succeeded.
fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

// -------------------------------------------------------------------------------------------
// (a), (b): promtool

#[test]
fn rule_files_pass_promtool_check() {
    let Some(promtool) = common::tool("promtool", "rule_files_pass_promtool_check") else { return };
    for file in rule_files() {
        let (ok, out) = run(Command::new(&promtool).arg("check").arg("rules").arg(&file));
        eprintln!("promtool check rules {}:\n{out}", file.display());
        assert!(ok, "promtool check rules {} failed:\n{out}", file.display());
        assert!(out.contains("SUCCESS"), "{out}");
    }
}

#[test]
fn rule_unit_tests_pass_promtool_test() {
    let Some(promtool) = common::tool("promtool", "rule_unit_tests_pass_promtool_test") else { return };
    // Every rule file is under test.
    let mut covered = BTreeSet::new();
    for file in test_files() {
        for r in seq(yaml(&file).get("rule_files")) {
            covered.insert(name_of(Path::new(r.as_str().unwrap())));
        }
    }
    for file in rule_files() {
        assert!(covered.contains(&name_of(&file)), "no file in monitoring/tests/ loads {}", file.display());
    }
    for file in test_files() {
        let (ok, out) = run(Command::new(&promtool).arg("test").arg("rules").arg(&file));
        eprintln!("promtool test rules {}:\n{out}", file.display());
        assert!(ok, "promtool test rules {} failed:\n{out}", file.display());
    }
}

// -------------------------------------------------------------------------------------------
// (c): dashboards

/// A query of a dashboard: panel targets and variable queries.
struct Query {
    dashboard: String,
    panel: String,
    expr: String,
    /// A Grafana variable query (`label_values(...)`), not PromQL.
    variable: bool,
}

fn panels(dash: &Json) -> Vec<&Json> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

fn queries() -> Vec<Query> {
    let mut out = Vec::new();
    for file in dashboard_files() {
        let dash = json(&file);
        let name = name_of(&file);
        for p in panels(&dash) {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap_or_else(|| panic!("{name}: panel {}: a target without expr", p["title"]));
                out.push(Query { dashboard: name.clone(), panel: p["title"].as_str().unwrap_or("").into(), expr: expr.into(), variable: false });
            }
        }
        for v in dash["templating"]["list"].as_array().into_iter().flatten() {
            if v["type"] == "query" {
                let q = v["query"]["query"].as_str().or(v["query"].as_str()).unwrap_or("");
                assert!(!q.is_empty(), "{name}: variable {} has no query", v["name"]);
                out.push(Query { dashboard: name.clone(), panel: format!("variable {}", v["name"]), expr: q.into(), variable: true });
            }
        }
    }
    out
}

fn variables(dash: &Json) -> Vec<&Json> {
    dash["templating"]["list"].as_array().map(|l| l.iter().collect()).unwrap_or_default()
}

#[test]
fn dashboards_are_importable() {
    let mut uids = BTreeSet::new();
    for file in dashboard_files() {
        let name = name_of(&file);
        let dash = json(&file);
        assert!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 39), "{name}: schemaVersion {}", dash["schemaVersion"]);
        assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()), "{name}: no title");
        assert!(dash["id"].is_null(), "{name}: an id from one Grafana clashes in another; it must be null");
        let uid = dash["uid"].as_str().unwrap_or_else(|| panic!("{name}: no uid"));
        assert!(uids.insert(uid.to_string()), "{name}: uid {uid} used twice");

        let vars = variables(&dash);
        let ds = vars.iter().find(|v| v["name"] == "datasource").unwrap_or_else(|| panic!("{name}: no datasource variable"));
        assert_eq!(ds["type"], "datasource", "{name}: the datasource variable is not of type datasource");
        assert_eq!(ds["query"], "prometheus", "{name}: the datasource variable is not for prometheus");
        let wanted: &[&str] = match name.as_str() {
            "apptheus-node.json" => &["job", "instance", "container"],
            "apptheus-job.json" => &["job", "slurm_job_id"],
            "apptheus-agent.json" => &["job", "instance"],
            _ => &[],
        };
        let defined: BTreeSet<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();
        for w in wanted {
            assert!(defined.contains(w), "{name}: no `{w}` variable");
        }
        for v in &vars {
            if v["type"] == "query" {
                assert_eq!(v["datasource"]["uid"], "${datasource}", "{name}: variable {} does not use $datasource", v["name"]);
            }
        }

        // Every panel draws from the datasource variable, never from a Grafana's own uid.
        let mut ids = BTreeSet::new();
        for p in panels(&dash) {
            let title = p["title"].as_str().unwrap_or("");
            assert!(ids.insert(p["id"].as_u64().unwrap_or_else(|| panic!("{name}: {title}: no id"))), "{name}: panel id {} twice", p["id"]);
            let g = &p["gridPos"];
            let (x, w) = (g["x"].as_u64().unwrap(), g["w"].as_u64().unwrap());
            assert!(x + w <= 24 && g["h"].as_u64().unwrap() > 0, "{name}: {title}: gridPos {g}");
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{name}: {title}: panel datasource {}", p["datasource"]);
            let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{name}: {title}: no targets"));
            assert!(!targets.is_empty(), "{name}: {title}: no queries");
            for t in targets {
                assert_eq!(t["datasource"]["uid"], "${datasource}", "{name}: {title}: target datasource {}", t["datasource"]);
            }
        }

        // Every $variable a query uses is defined (or Grafana's own).
        for q in queries().iter().filter(|q| q.dashboard == name) {
            for var in grafana_variables(&q.expr) {
                assert!(
                    defined.contains(var.as_str()) || GRAFANA_BUILTINS.iter().any(|(b, _)| *b == var),
                    "{name}: {}: ${var} is not a variable of the dashboard",
                    q.panel
                );
            }
        }
    }
}

/// `$name` and `${name}` in a query.
fn grafana_variables(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            let braced = b.get(i + 1) == Some(&b'{');
            let start = if braced { i + 2 } else { i + 1 };
            let mut end = start;
            while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
                end += 1;
            }
            out.push(expr[start..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// The query with the dashboard variables replaced by real values.
fn substitute(expr: &str, values: &[(&str, &str)]) -> String {
    let mut out = expr.to_string();
    let mut all: Vec<(&str, &str)> = values.iter().chain(GRAFANA_BUILTINS.iter()).copied().collect();
    // Longest names first, so that `$__range` is not cut by a shorter variable's name.
    all.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
    for (name, value) in all {
        out = out.replace(&format!("${{{name}}}"), value).replace(&format!("${name}"), value);
    }
    out
}

fn check_values(instance: &str) -> Vec<(&'static str, String)> {
    vec![
        ("job", "apptheus".to_string()),
        ("instance", instance.to_string()),
        ("container", ".+".to_string()),
        ("slurm_job_id", "42".to_string()),
        ("datasource", "prometheus".to_string()),
    ]
}

#[test]
fn dashboard_queries_are_valid_promql() {
    // promtool parses each panel query (variables substituted) as the expression of a
    // recording rule.
    let Some(promtool) = common::tool("promtool", "dashboard_queries_are_valid_promql") else { return };
    let values = check_values("node001:9091");
    let values: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("groups:\n");
    let all = queries();
    for (i, q) in all.iter().enumerate().filter(|(_, q)| !q.variable) {
        let expr = substitute(&q.expr, &values);
        text.push_str(&format!("  - name: q{i}\n    rules:\n      - record: dashboard_query_{i}\n        expr: {}\n", serde_json::to_string(&expr).unwrap()));
    }
    let file = dir.path().join("dashboard-queries.yml");
    std::fs::write(&file, &text).unwrap();
    let (ok, out) = run(Command::new(&promtool).arg("check").arg("rules").arg(&file));
    if !ok {
        // Name the panels of the queries promtool names.
        let named: Vec<String> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| out.contains(&format!("dashboard_query_{i}\"")) || out.contains(&format!("group \"q{i}\"")))
            .map(|(_, q)| format!("{}: {}: {}", q.dashboard, q.panel, q.expr))
            .collect();
        panic!("dashboard queries are not valid PromQL:\n{out}\n{}", named.join("\n"));
    }
    assert!(out.contains(&format!("SUCCESS: {} rules found", all.iter().filter(|q| !q.variable).count())), "{out}");
}

/// Metric names in a PromQL expression or variable query: identifiers of the agent's and
/// Prometheus' series, and recording rule names (those with a colon). Strings and Grafana
/// variables are left out.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'"' || c == b'\'' || c == b'`' {
            i += 1;
            while i < b.len() && b[i] != c {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == b'$' {
            i += 1;
            if b.get(i) == Some(&b'{') {
                i += 1;
            }
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
        } else if c.is_ascii_alphanumeric() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let word = &expr[start..i];
            let first = word.as_bytes()[0];
            // Not `:1m` of a subquery's step.
            let is_ident = first.is_ascii_alphabetic() || first == b'_';
            let ours = ["container_", "apptheus_", "process_", "scrape_"].iter().any(|p| word.starts_with(p)) || word == "up";
            if is_ident && (ours || word.contains(':')) {
                out.insert(word.to_string());
            }
        } else {
            i += 1;
        }
    }
    out
}

/// Label names in the selectors of `metric` in an expression: `metric{a="x", b=~"y"}`.
fn selector_labels(expr: &str, metric: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(pos) = rest.find(metric) {
        let before_ok = pos == 0 || !rest.as_bytes()[pos - 1].is_ascii_alphanumeric() && rest.as_bytes()[pos - 1] != b'_';
        let after = &rest[pos + metric.len()..];
        rest = after;
        if !before_ok || after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let Some(body) = after.trim_start().strip_prefix('{') else { continue };
        // Matchers up to the closing brace, outside quotes.
        let mut depth_end = body.len();
        let mut in_quote = false;
        for (i, c) in body.char_indices() {
            match c {
                '"' => in_quote = !in_quote,
                '}' if !in_quote => {
                    depth_end = i;
                    break;
                }
                _ => {}
            }
        }
        for m in split_matchers(&body[..depth_end]) {
            let label: String = m.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if !label.is_empty() {
                out.insert(label);
            }
        }
    }
    out
}

fn split_matchers(s: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut in_quote = false;
    for c in s.chars() {
        match c {
            '"' => {
                in_quote = !in_quote;
                out.last_mut().unwrap().push(c);
            }
            ',' if !in_quote => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    out
}

/// Every expression of the mixin: (where, expression).
fn all_exprs() -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = rules().into_iter().map(|r| (format!("{}: {}", r.file, r.name), r.expr)).collect();
    out.extend(queries().into_iter().map(|q| (format!("{}: {}", q.dashboard, q.panel), q.expr)));
    out
}

/// Families of a text scrape with the label names seen on each: histogram and summary
/// families under their sample names (`_bucket`, `_sum`, `_count`) too.
fn families(scrape: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            out.entry(name.to_string()).or_default();
            let suffixes: &[&str] = match kind {
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["_sum", "_count"],
                _ => &[],
            };
            for s in suffixes {
                out.entry(format!("{name}{s}")).or_default();
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let series = line.rsplit_once(' ').map(|(s, _)| s).unwrap_or(line);
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let set = out.entry(name.to_string()).or_default();
            for m in split_matchers(labels.trim_end_matches('}')) {
                if let Some((k, _)) = m.split_once('=') {
                    set.insert(k.trim().to_string());
                }
            }
        }
    }
    out
}

/// The real agent with three containers: a running one in Slurm job 42 (the label from
/// `--metrics.env-labels=SLURM_JOB_ID`) with a CPU quota of 1.5 CPUs and a memory limit of
/// 1 GiB, one of that job that ended (its final sample retained, with
/// `container_end_time_seconds`), and a running one outside any job. Returns once the scrape
/// shows all of them with their eBPF series and the limits.
fn agent_with_containers(test: &str) -> Option<Agent> {
    if !common::privileged(test) {
        return None;
    }
    let mut agent = Agent::start_with(AgentOptions {
        extra: vec!["--metrics.env-labels=SLURM_JOB_ID".into(), "--metrics.retention=10m".into()],
        ..AgentOptions::default()
    });
    let launch = |agent: &mut Agent, job: Option<&str>, script: &str| {
        let mut cmd = Command::new(common::BIN);
        cmd.arg("exec").arg(format!("--socket.path={}", agent.socket.display())).arg("--").args(["sh", "-c", script]);
        cmd.env_remove("SLURM_JOB_ID").stdout(Stdio::null()).stderr(Stdio::null());
        if let Some(job) = job {
            cmd.env("SLURM_JOB_ID", job);
        }
        let child = cmd.spawn().expect("apptheus exec");
        agent.started.push(child.id());
        child
    };
    // Forks, execs and run-queue waits, then idle until the test ends (the agent kills it).
    let busy = "i=0; while [ $i -lt 20 ]; do /bin/true; i=$((i+1)); done; exec sleep 300";
    let running = launch(&mut agent, Some("42"), busy);
    let ended = launch(&mut agent, Some("42"), "/bin/true; /bin/true");
    let other = launch(&mut agent, None, busy);
    let (running, ended, other) = (common::id_of(&running), common::id_of(&ended), common::id_of(&other));
    common::wait_for(Duration::from_secs(30), "the running container placed", || {
        (!agent.scrape().get("container_start_time_seconds", &[("name", &running)]).is_empty()).then_some(())
    });
    // Limits, as `apptainer run --cpus 1.5 --memory 1G` sets them, in the container's own
    // cgroups (below this test's cgroup): v2 or v1 files, whichever the hierarchy has.
    let mut limited = (false, false);
    for dir in agent.container_dirs(&running) {
        for (file, value, cpu) in [
            ("cpu.max", "150000 100000", true),
            ("cpu.cfs_quota_us", "150000", true),
            ("memory.max", "1073741824", false),
            ("memory.limit_in_bytes", "1073741824", false),
        ] {
            if dir.join(file).exists() {
                std::fs::write(dir.join(file), value).unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()));
                if cpu { limited.0 = true } else { limited.1 = true }
            }
        }
    }
    assert!(limited == (true, true), "no cpu or memory controller for {running} in {:?}", agent.container_dirs(&running));
    common::wait_for(Duration::from_secs(30), "the three containers in the scrape", || {
        let m = agent.scrape();
        let has = |id: &str, name: &str| !m.get(name, &[("name", id)]).is_empty();
        (has(&running, "container_runqueue_latency_seconds_bucket")
            && m.one("container_spec_memory_limit_bytes", &[("name", &running)]) == Some(1073741824.0)
            && m.one("container_cpu_usage_seconds_total", &[("name", &running), ("slurm_job_id", "42")]).is_some()
            && has(&ended, "container_end_time_seconds")
            && m.one("container_start_time_seconds", &[("name", &ended), ("slurm_job_id", "42")]).is_some()
            && has(&other, "container_context_switches_total"))
        .then_some(())
    });
    let m = agent.scrape();
    assert_eq!(
        m.one("apptheus_ebpf_up", &[]),
        Some(1.0),
        "the eBPF programs are not attached, so the eBPF series the mixin uses cannot be checked: {}",
        agent.log_text()
    );
    Some(agent)
}

#[test]
fn every_metric_name_is_exported_or_recorded() {
    let Some(agent) = agent_with_containers("every_metric_name_is_exported_or_recorded") else { return };
    let scrape = agent.scrape_text();
    let exported = families(&scrape);
    let recorded = recording_names();
    let container_labels = exported.get("container_memory_usage_bytes").cloned().expect("container_memory_usage_bytes in the scrape");
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for (place, expr) in all_exprs() {
        for name in metric_names(&expr) {
            used.insert(name.clone());
            let labels: BTreeSet<String> = if let Some(l) = exported.get(&name) {
                l.clone()
            } else if recorded.contains(&name) {
                continue;
            } else if !pure_v2() && PURE_V2_ONLY.contains(&name.as_str()) {
                container_labels.clone()
            } else if PROMETHEUS_SERIES.contains(&name.as_str()) {
                BTreeSet::new()
            } else {
                problems.push(format!("{place}: `{name}` is neither exported by the agent nor a recording rule"));
                continue;
            };
            for label in selector_labels(&expr, &name) {
                if !labels.contains(&label) && !TARGET_LABELS.contains(&label.as_str()) {
                    problems.push(format!("{place}: `{name}` has no label `{label}` (it has {labels:?})"));
                }
            }
        }
    }
    // A name of the list that the agent has started to export belongs in the scrape check.
    eprintln!("{} metric names used; the agent exports {} families", used.len(), exported.len());
    assert!(used.contains("container_runqueue_latency_seconds_bucket") && used.contains("up"), "the name extraction found {used:?}");
    assert!(problems.is_empty(), "{}\n\nscrape:\n{scrape}", problems.join("\n"));
}

#[test]
fn queries_and_rules_evaluate_on_a_real_prometheus() {
    let Some(agent) = agent_with_containers("queries_and_rules_evaluate_on_a_real_prometheus") else { return };
    let Some(binary) = common::tool("prometheus", "queries_and_rules_evaluate_on_a_real_prometheus") else { return };
    let rule_list: String = rule_files().iter().map(|f| format!("  - {}\n", f.canonicalize().unwrap().display())).collect();
    let prom = Prometheus::start(
        &binary,
        &format!("    static_configs:\n      - targets: ['127.0.0.1:{}']\nrule_files:\n{rule_list}", agent.port),
        &[],
    );
    let instance = format!("127.0.0.1:{}", agent.port);
    let values = check_values(&instance);
    let values: Vec<(&str, &str)> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // Scraped, and the rules evaluated over a few scrapes (rates need two samples).
    let deadline = Instant::now() + Duration::from_secs(60);
    while prom.value("slurm_job:container_cpu_usage_seconds:rate5m{slurm_job_id=\"42\"}").is_none()
        || prom.value("instance:apptheus_containers:sum").is_none()
    {
        assert!(Instant::now() < deadline, "Prometheus: no recording rule results; targets {}; log {}", prom.targets(), prom.log());
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(3));

    // Rules: loaded as written, evaluated without error.
    let (_, body) = common::http_get(prom.port, "/api/v1/rules").unwrap();
    let api: Json = serde_json::from_str(&body).unwrap();
    let loaded: Vec<&Json> = api["data"]["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap()).collect();
    assert_eq!(loaded.len(), rules().len(), "Prometheus loaded {} rules: {body}", loaded.len());
    for r in &loaded {
        assert_eq!(r["health"], "ok", "rule {} evaluates with an error: {}", r["name"], r["lastError"]);
    }

    // Every dashboard query evaluates, and returns data unless it needs a series this host's
    // cgroup layout does not give (PURE_V2_ONLY).
    let recorded: BTreeMap<String, String> = rules().into_iter().filter(|r| !r.alert).map(|r| (r.name, r.expr)).collect();
    let mut problems = Vec::new();
    let (mut evaluated, mut with_data, mut allowed_empty) = (0, 0, Vec::new());
    for q in queries().iter().filter(|q| !q.variable) {
        evaluated += 1;
        let expr = substitute(&q.expr, &values);
        let (status, body) = common::http_get(prom.port, &format!("/api/v1/query?query={}", encode(&expr))).unwrap();
        let v: Json = serde_json::from_str(&body).unwrap_or(Json::Null);
        if status != 200 || v["status"] != "success" {
            problems.push(format!("{}: {}: {expr}\n  -> {status} {}", q.dashboard, q.panel, v["error"]));
            continue;
        }
        // Empty here, rightly, only where it needs a series this layout does not give.
        let may_be_empty = uses_missing_series(&q.expr, &recorded);
        let empty = v["data"]["result"].as_array().is_none_or(|r| r.is_empty());
        if !empty {
            with_data += 1;
        } else if may_be_empty {
            allowed_empty.push(format!("{}: {}", q.dashboard, q.panel));
        } else {
            problems.push(format!("{}: {}: no data: {expr}", q.dashboard, q.panel));
        }
    }
    eprintln!(
        "{evaluated} dashboard queries evaluated, {with_data} with data; empty as expected here:\n  {}",
        allowed_empty.join("\n  ")
    );
    assert!(problems.is_empty(), "{}\n\nPrometheus log:\n{}", problems.join("\n"), prom.log());
}

/// Whether the expression uses, itself or through the recording rules it uses, a series this
/// host's layout does not give (PURE_V2_ONLY off pure cgroup v2).
fn uses_missing_series(expr: &str, recorded: &BTreeMap<String, String>) -> bool {
    metric_names(expr).iter().any(|n| {
        !pure_v2() && PURE_V2_ONLY.contains(&n.as_str()) || recorded.get(n).is_some_and(|e| uses_missing_series(e, recorded))
    })
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b == b'_' { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

// -------------------------------------------------------------------------------------------
// (d): runbooks and alert test cases

/// Anchors of the Markdown headings of a file, as GitHub makes them (lower case, punctuation
/// but `-` and `_` dropped, spaces to `-`), plus explicit `<a id="...">` / `<a name="...">`.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced {
            continue;
        }
        if let Some(heading) = line.strip_prefix('#') {
            let text = heading.trim_start_matches('#').trim();
            let slug: String = text
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect();
            out.insert(slug);
        }
        for key in ["<a id=\"", "<a name=\""] {
            let mut rest = line;
            while let Some(p) = rest.find(key) {
                let tail = &rest[p + key.len()..];
                let end = tail.find('"').unwrap_or(tail.len());
                out.insert(tail[..end].to_string());
                rest = &tail[end..];
            }
        }
    }
    out
}

#[test]
fn every_alert_has_a_runbook() {
    let readme = monitoring().join("README.md");
    let known = anchors(&read(&readme));
    for r in rules().iter().filter(|r| r.alert) {
        let url = r.annotations.get("runbook_url").unwrap_or_else(|| panic!("{}: no runbook_url annotation", r.name));
        let (page, anchor) = url.split_once('#').unwrap_or_else(|| panic!("{}: runbook_url {url} has no #anchor", r.name));
        assert!(page.ends_with("monitoring/README.md"), "{}: runbook_url {url} is not in monitoring/README.md", r.name);
        assert!(known.contains(anchor), "{}: monitoring/README.md has no heading for #{anchor}", r.name);
        assert!(r.annotations.get("summary").is_some_and(|s| !s.is_empty()), "{}: no summary", r.name);
        assert!(r.annotations.get("description").is_some_and(|s| !s.is_empty()), "{}: no description", r.name);
    }
}

#[test]
fn every_alert_has_firing_and_silent_test_cases() {
    let alerts: BTreeSet<String> = rules().into_iter().filter(|r| r.alert).map(|r| r.name).collect();
    let mut firing = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for file in test_files() {
        for case in seq(yaml(&file).get("tests")) {
            // Per test case (one set of input series): whether the alert fires at any of its
            // evaluation times. An empty exp_alerts before a firing one (still pending) makes
            // no silent case: the series must be such that it never fires.
            let mut fires: BTreeMap<String, bool> = BTreeMap::new();
            for t in seq(case.get("alert_rule_test")) {
                let name = t.get("alertname").and_then(Yaml::as_str).unwrap_or_else(|| panic!("{}: alert_rule_test without alertname", file.display()));
                assert!(alerts.contains(name), "{}: tests `{name}`, which is no alert of monitoring/rules", file.display());
                *fires.entry(name.to_string()).or_default() |= !seq(t.get("exp_alerts")).is_empty();
            }
            for (name, fired) in fires {
                if fired { firing.insert(name) } else { silent.insert(name) };
            }
        }
    }
    for a in &alerts {
        assert!(firing.contains(a), "no test case where {a} fires (exp_alerts with an entry)");
        assert!(silent.contains(a), "no test case where {a} stays silent (exp_alerts empty at every eval_time)");
    }
}

#[test]
fn every_recording_rule_is_tested() {
    let mut tested = BTreeSet::new();
    for file in test_files() {
        for case in seq(yaml(&file).get("tests")) {
            for t in seq(case.get("promql_expr_test")) {
                tested.extend(metric_names(t.get("expr").and_then(Yaml::as_str).unwrap_or("")));
            }
        }
    }
    for name in recording_names() {
        assert!(tested.contains(&name), "no promql_expr_test evaluates {name}");
    }
}

#[test]
fn metric_name_extraction() {
    // The extraction the checks above rely on.
    let names = metric_names(
        r#"sum by (instance) (rate(container_cpu_usage_seconds_total{job="$job", name=~"apptheus_1|x"}[$__rate_interval])) / on (instance) slurm_job:container_cpu_efficiency:ratio or up{job="apptheus"} and ${container_bad} or max_over_time(up[5m:1m])"#,
    );
    let want: BTreeSet<String> =
        ["container_cpu_usage_seconds_total", "slurm_job:container_cpu_efficiency:ratio", "up"].iter().map(|s| s.to_string()).collect();
    assert_eq!(names, want);
    assert_eq!(
        selector_labels(r#"a{x="1,}", y=~"2"} / a_b{z="3"} + a {w!="4"}"#, "a"),
        ["w", "x", "y"].iter().map(|s| s.to_string()).collect::<BTreeSet<_>>()
    );
    assert!(anchors("# Runbooks\n\n### ApptheusAgentDown\n```\n# not a heading\n```\n<a id=\"x-y\"></a>").contains("apptheusagentdown"));
    assert!(!anchors("```\n# not a heading\n```").contains("not-a-heading"));
}
