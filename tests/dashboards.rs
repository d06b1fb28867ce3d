//! Public cAdvisor dashboards, unchanged, against the real agent (issue 18).
//!
//! `tests/data/dashboards/` holds the queries of six public Grafana dashboards written for
//! cAdvisor, copied byte for byte (sources and licenses in its README). The README's table
//! "Existing cAdvisor dashboards" says, for every one of those queries, whether it shows data on
//! apptheus and, where not, why. This test parses that table and checks it against reality: the
//! real agent (eBPF on) with three busy containers under `apptheus exec` (a CPU loop, an HTTP
//! client, direct block I/O), a real Prometheus scraping it in a job named `cadvisor` next to a
//! node_exporter (as those dashboards' own stacks do), and every query evaluated with the
//! dashboard's variables resolved as Grafana resolves them. A query the table marks "data" must
//! return data and one marked "no data" must return none, and every query has exactly one row:
//! the table cannot go stale.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::prom_server::Prometheus;
use common::Agent;
use serde_json::Value as Json;

/// The lines around the table in README.md.
const TABLE_BEGIN: &str = "<!-- dashboards: checked by tests/dashboards.rs -->";
const TABLE_END: &str = "<!-- /dashboards -->";

/// Columns of the table, in order.
const COLUMNS: [&str; 5] = ["dashboard", "#", "panel", "status", "why"];

/// Grafana's `$__rate_interval` for a Prometheus data source at Grafana's default scrape
/// interval (15 s): max(4 × 15 s, `$__interval` + 15 s), 1m at the time ranges these dashboards
/// open with.
const RATE_INTERVAL: &str = "1m";

/// Memory reservation the test gives every container (v2 `memory.min`, v1
/// `memory.soft_limit_in_bytes`), for the docker-mixin's "Memory reserved".
const RESERVATION: u64 = 64 << 20;

/// How long the containers, the exporters and Prometheus may take to give every rate two samples.
const DATA_DEADLINE: Duration = Duration::from_secs(120);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// -------------------------------------------------------------------------------------------
// The test data: dashboards and their queries

/// One query of a dashboard (a panel with two queries has two, with the same title).
#[derive(Debug)]
struct Panel {
    /// 1-based position in the file's `panels`.
    index: usize,
    title: String,
    expr: String,
}

#[derive(Debug)]
struct Dashboard {
    /// File name without `.json`.
    file: String,
    /// Template variables: name to its description in the test data (`type=query; query=...`).
    variables: BTreeMap<String, String>,
    panels: Vec<Panel>,
}

fn dashboards() -> Vec<Dashboard> {
    let dir = repo().join("tests/data/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards in {}", dir.display());
    let mut out = Vec::new();
    for path in files {
        let file = path.file_stem().unwrap().to_string_lossy().into_owned();
        let doc: Json = serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for key in ["source", "title", "license"] {
            assert!(doc[key].as_str().is_some_and(|s| !s.is_empty()), "{file}: no `{key}`");
        }
        let variables = doc["variables"]
            .as_object()
            .unwrap_or_else(|| panic!("{file}: no `variables` object"))
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_else(|| panic!("{file}: variable {k} is not a string")).to_string()))
            .collect();
        let panels: Vec<Panel> = doc["panels"]
            .as_array()
            .unwrap_or_else(|| panic!("{file}: no `panels` array"))
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let field = |k: &str| p[k].as_str().unwrap_or_else(|| panic!("{file}: panel {}: no `{k}`", i + 1)).to_string();
                Panel { index: i + 1, title: field("title"), expr: field("expr") }
            })
            .collect();
        assert!(!panels.is_empty(), "{file}: no panels");
        out.push(Dashboard { file, variables, panels });
    }
    out
}

// -------------------------------------------------------------------------------------------
// The README table

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Data,
    NoData,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(match self {
            Status::Data => "data",
            Status::NoData => "no data",
        })
    }
}

/// One row of the table.
#[derive(Debug)]
struct Row {
    /// Line number in the Markdown text (1-based).
    line: usize,
    /// Data file (without `.json`): the first `code` span of the dashboard cell; an empty cell
    /// repeats the row above's.
    file: String,
    index: usize,
    panel: String,
    status: Status,
    why: String,
}

/// Cells of a Markdown table row: split at `|` not escaped as `\|`, outer pipes dropped,
/// trimmed, `\|` unescaped.
fn cells(line: &str) -> Option<Vec<String>> {
    let inner = line.trim().strip_prefix('|')?;
    let mut out = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                out.last_mut().unwrap().push('|');
                chars.next();
            }
            '|' => out.push(String::new()),
            c => out.last_mut().unwrap().push(c),
        }
    }
    // The closing pipe leaves an empty last cell.
    if out.last().is_some_and(|c| c.trim().is_empty()) && inner.trim_end().ends_with('|') {
        out.pop();
    }
    Some(out.into_iter().map(|c| c.trim().to_string()).collect())
}

/// The first `code` span of a cell.
fn code_span(cell: &str) -> Option<&str> {
    let (_, rest) = cell.split_once('`')?;
    let (code, _) = rest.split_once('`')?;
    Some(code)
}

/// The rows of the table between `TABLE_BEGIN` and `TABLE_END`.
fn table_rows(markdown: &str) -> Result<Vec<Row>, String> {
    let lines: Vec<&str> = markdown.lines().collect();
    let find = |marker: &str| {
        let at: Vec<usize> = lines.iter().enumerate().filter(|(_, l)| l.trim() == marker).map(|(i, _)| i).collect();
        match at.as_slice() {
            [one] => Ok(*one),
            [] => Err(format!("no line `{marker}`")),
            _ => Err(format!("`{marker}` is on {} lines", at.len())),
        }
    };
    let (begin, end) = (find(TABLE_BEGIN)?, find(TABLE_END)?);
    if end <= begin {
        return Err(format!("`{TABLE_END}` (line {}) is before `{TABLE_BEGIN}` (line {})", end + 1, begin + 1));
    }
    let mut body = lines[begin + 1..end].iter().enumerate().map(|(i, l)| (begin + 2 + i, *l)).filter(|(_, l)| !l.trim().is_empty());
    let (n, header) = body.next().ok_or("the table is empty")?;
    let header = cells(header).ok_or(format!("line {n}: not a table row"))?;
    if header != COLUMNS {
        return Err(format!("line {n}: columns {header:?}, expected {COLUMNS:?}"));
    }
    let (n, rule) = body.next().ok_or("the table has no rows")?;
    if !cells(rule).is_some_and(|c| c.len() == COLUMNS.len() && c.iter().all(|c| !c.is_empty() && c.chars().all(|c| c == '-' || c == ':')))
    {
        return Err(format!("line {n}: not the table's delimiter row: {rule}"));
    }
    let mut rows: Vec<Row> = Vec::new();
    for (n, line) in body {
        let c = cells(line).ok_or(format!("line {n}: not a table row: {line}"))?;
        if c.len() != COLUMNS.len() {
            return Err(format!("line {n}: {} cells, expected {}: {line}", c.len(), COLUMNS.len()));
        }
        let file = if c[0].is_empty() {
            rows.last().map(|r| r.file.clone()).ok_or(format!("line {n}: the first row names no dashboard"))?
        } else {
            code_span(&c[0]).ok_or(format!("line {n}: the dashboard cell has no `file` name: {}", c[0]))?.to_string()
        };
        let index = c[1].parse().map_err(|_| format!("line {n}: `#` is not a number: {}", c[1]))?;
        let status = match c[3].as_str() {
            "data" => Status::Data,
            "no data" => Status::NoData,
            other => return Err(format!("line {n}: status `{other}`, expected `data` or `no data`")),
        };
        rows.push(Row { line: n, file, index, panel: c[2].clone(), status, why: c[4].clone() });
    }
    Ok(rows)
}

/// What is wrong between the table and the test data: rows naming no query or another title,
/// queries without a row or with two, "no data" without a reason.
fn coverage(dashboards: &[Dashboard], rows: &[Row]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen: BTreeMap<(String, usize), usize> = BTreeMap::new();
    for r in rows {
        let Some(d) = dashboards.iter().find(|d| d.file == r.file) else {
            problems.push(format!("README line {}: no tests/data/dashboards/{}.json", r.line, r.file));
            continue;
        };
        let Some(p) = d.panels.iter().find(|p| p.index == r.index) else {
            problems.push(format!("README line {}: {} has no query #{} (it has {})", r.line, r.file, r.index, d.panels.len()));
            continue;
        };
        if p.title != r.panel {
            problems.push(format!("README line {}: {} #{} is \"{}\", the row says \"{}\"", r.line, r.file, r.index, p.title, r.panel));
        }
        if r.status == Status::NoData && r.why.is_empty() {
            problems.push(format!("README line {}: {} #{} has no data but no reason", r.line, r.file, r.index));
        }
        if let Some(first) = seen.insert((r.file.clone(), r.index), r.line) {
            problems.push(format!("README lines {first} and {}: two rows for {} #{}", r.line, r.file, r.index));
        }
    }
    for d in dashboards {
        for p in &d.panels {
            if !seen.contains_key(&(d.file.clone(), p.index)) {
                problems.push(format!("README: no row for {} #{} \"{}\": {}", d.file, p.index, p.title, p.expr));
            }
        }
    }
    problems
}

fn readme_rows() -> Vec<Row> {
    let path = repo().join("README.md");
    table_rows(&read(&path)).unwrap_or_else(|e| panic!("{}: the table of existing cAdvisor dashboards: {e}", path.display()))
}

#[test]
fn readme_table_has_one_row_per_dashboard_query() {
    let dashboards = dashboards();
    let rows = readme_rows();
    let problems = coverage(&dashboards, &rows);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let queries: usize = dashboards.iter().map(|d| d.panels.len()).sum();
    assert_eq!(rows.len(), queries);
}

#[test]
fn readme_table_parsing() {
    let md = format!(
        "text\n{TABLE_BEGIN}\n\n| dashboard | # | panel | status | why |\n|---|--:|---|---|---|\n\
         | dockprom (`a-b`) | 1 | CPU \\| load | data | |\n| | 2 | Disk | no data | `x{{a=\"\\|\"}}` no |\n{TABLE_END}\n"
    );
    let rows = table_rows(&md).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].file.as_str(), rows[0].index, rows[0].panel.as_str(), rows[0].status), ("a-b", 1, "CPU | load", Status::Data));
    assert_eq!((rows[0].line, rows[0].why.as_str()), (6, ""));
    // An empty dashboard cell repeats the one above; `\|` is a pipe in a cell.
    assert_eq!((rows[1].file.as_str(), rows[1].status, rows[1].why.as_str()), ("a-b", Status::NoData, "`x{a=\"|\"}` no"));
    // A pipe not escaped makes a cell too many.
    assert!(table_rows(&md.replace("\\|\"}` no", "|\"}` no")).unwrap_err().contains("6 cells"));
    assert!(table_rows(&md.replace("| data |", "| yes |")).unwrap_err().contains("status `yes`"));
    assert!(table_rows(&md.replace("| # |", "| n |")).unwrap_err().contains("columns"));
    assert!(table_rows(&md.replace("|---|--:|", "| x |--:|")).unwrap_err().contains("delimiter"));
    assert!(table_rows(&md.replace(TABLE_END, "")).unwrap_err().contains("no line"));
    assert!(table_rows(&md.replace("| dockprom (`a-b`) |", "| dockprom |")).unwrap_err().contains("no `file` name"));
    assert!(table_rows(&md.replace("| 2 |", "| two |")).unwrap_err().contains("not a number"));
    // Coverage: a missing row, a wrong title, a duplicate, and a "no data" without a reason.
    let data = vec![Dashboard {
        file: "a-b".into(),
        variables: BTreeMap::new(),
        panels: ["CPU | load", "Disk", "Net"]
            .iter()
            .enumerate()
            .map(|(i, t)| Panel { index: i + 1, title: t.to_string(), expr: "up".into() })
            .collect(),
    }];
    let mut rows = table_rows(&md).unwrap();
    let problems = coverage(&data, &rows);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("no row for a-b #3"), "{problems:?}");
    rows[1].why.clear();
    rows[0].panel = "CPU".into();
    rows.push(Row { line: 99, file: "a-b".into(), index: 1, panel: "CPU | load".into(), status: Status::Data, why: String::new() });
    let problems = coverage(&data, &rows).join("\n");
    for want in ["the row says \"CPU\"", "no data but no reason", "two rows for a-b #1", "no row for a-b #3"] {
        assert!(problems.contains(want), "{want}: {problems}");
    }
}

// -------------------------------------------------------------------------------------------
// Grafana variables

/// A `type=query` variable of the test data: `label_values(SELECTOR, LABEL)`, its All option.
#[derive(Debug)]
struct QueryVariable {
    selector: String,
    label: String,
    /// `Some(all value)` when the variable has an All option (`None` inside: Grafana's default,
    /// every value as a regex alternation).
    all: Option<Option<String>>,
}

fn query_variable(description: &str) -> Option<QueryVariable> {
    let rest = description.strip_prefix("type=query; query=label_values(")?;
    let (call, options) = rest.split_once("); includeAll=")?;
    let (selector, label) = call.rsplit_once(',')?;
    let include_all = options.starts_with("True");
    let all_value = options.split_once("allValue=").map(|(_, v)| v.split([',', ' ']).next().unwrap_or(""))?;
    let all_value = all_value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).map(str::to_string);
    Some(QueryVariable { selector: selector.trim().into(), label: label.trim().into(), all: include_all.then_some(all_value) })
}

/// Variables referenced as `$name` or `${name}` in a query.
fn references(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(p) = rest.find('$') {
        rest = &rest[p + 1..];
        let body = rest.strip_prefix('{').unwrap_or(rest);
        let name: String = body.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            out.insert(name);
        }
    }
    out
}

/// The query with the variables replaced by their values (longest names first).
fn substitute(expr: &str, values: &BTreeMap<String, String>) -> String {
    let mut names: Vec<&String> = values.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let mut out = expr.to_string();
    for n in names {
        out = out.replace(&format!("${{{n}}}"), &values[n]).replace(&format!("${n}"), &values[n]);
    }
    out
}

fn encode(q: &str) -> String {
    q.bytes().map(|b| if b.is_ascii_alphanumeric() || b == b'_' { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// A Prometheus API call's `data`, or why not.
fn api(prom: &Prometheus, path: &str) -> Result<Json, String> {
    let (status, body) = common::http_get(prom.port, path).map_err(|e| format!("{path}: {e}"))?;
    let v: Json = serde_json::from_str(&body).map_err(|e| format!("{path}: {status} {e}: {body}"))?;
    if status != 200 || v["status"] != "success" {
        return Err(format!("{path}: {status} {}: {}", v["errorType"], v["error"]));
    }
    Ok(v["data"].clone())
}

/// `label_values(selector, label)` as Grafana asks Prometheus for it, over the hour before `at`.
fn label_values(prom: &Prometheus, selector: &str, label: &str, at: f64) -> Result<Vec<String>, String> {
    let data = api(prom, &format!("/api/v1/label/{label}/values?match[]={}&start={:.3}&end={at:.3}", encode(selector), at - 3600.0))?;
    Ok(data.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_string)).collect())
}

/// Values of the variables a dashboard's queries use, resolved against Prometheus as Grafana
/// would on opening it: All where the variable has it, else its first value. Also every query
/// variable's own values, for the log and the checks.
fn resolve(prom: &Prometheus, d: &Dashboard, at: f64) -> (BTreeMap<String, String>, BTreeMap<String, Vec<String>>) {
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    let mut options: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // Needed: referenced by a query, or by a needed variable's query.
    let mut needed: BTreeSet<String> = d.panels.iter().flat_map(|p| references(&p.expr)).collect();
    loop {
        let more: BTreeSet<String> = needed
            .iter()
            .filter_map(|n| d.variables.get(n).and_then(|v| query_variable(v)))
            .flat_map(|q| references(&q.selector))
            .collect();
        if more.is_subset(&needed) {
            break;
        }
        needed.extend(more);
    }
    let mut pending: Vec<String> = needed.into_iter().collect();
    while !pending.is_empty() {
        let before = pending.len();
        pending.retain(|name| {
            let description = d.variables.get(name).unwrap_or_else(|| panic!("{}: uses ${name}, which it does not define", d.file));
            if name == "__rate_interval" {
                values.insert(name.clone(), RATE_INTERVAL.into());
            } else if let Some(q) = query_variable(description) {
                if !references(&q.selector).iter().all(|r| values.contains_key(r)) {
                    return true;
                }
                let selector = substitute(&q.selector, &values);
                let found = label_values(prom, &selector, &q.label, at).unwrap_or_else(|e| panic!("{}: variable {name}: {e}", d.file));
                assert!(!found.is_empty(), "{}: variable {name}: label_values({selector}, {}) is empty", d.file, q.label);
                let value = match &q.all {
                    Some(Some(all)) => all.clone(),
                    Some(None) => format!("({})", found.iter().map(|v| regex_escape(v)).collect::<Vec<_>>().join("|")),
                    None => found[0].clone(),
                };
                values.insert(name.clone(), value);
                options.insert(name.clone(), found);
            } else if let Some((_, current)) = description.split_once("(current ") {
                // A custom variable: its current value.
                values.insert(name.clone(), current.split(')').next().unwrap().trim().to_string());
            } else {
                panic!("{}: variable {name}: cannot resolve `{description}`", d.file);
            }
            false
        });
        assert!(pending.len() < before, "{}: variables {pending:?} depend on each other", d.file);
    }
    (values, options)
}

fn regex_escape(v: &str) -> String {
    v.chars().map(|c| if "\\.+*?()|[]{}^$".contains(c) { format!("\\{c}") } else { c.to_string() }).collect()
}

#[test]
fn grafana_variables() {
    let q = query_variable("type=query; query=label_values(container_last_seen{job!=\"kubelet\",job=~\"$job\"}, instance); includeAll=False, allValue='.+', multi=False -- x").unwrap();
    assert_eq!((q.selector.as_str(), q.label.as_str(), q.all), ("container_last_seen{job!=\"kubelet\",job=~\"$job\"}", "instance", None));
    let q = query_variable("type=query; query=label_values(a, job); includeAll=True, allValue='.+', multi=True").unwrap();
    assert_eq!(q.all, Some(Some(".+".to_string())));
    let q = query_variable(
        "type=query; query=label_values(node_exporter_build_info{name=~'$name'},instance); includeAll=True, allValue=None, multi=True",
    )
    .unwrap();
    assert_eq!((q.label.as_str(), q.all), ("instance", Some(None)));
    assert_eq!(
        references("rate(x{a=~\"$job\",b=\"${name}\"}[$__rate_interval])"),
        ["__rate_interval", "job", "name"].map(String::from).into()
    );
    let values: BTreeMap<String, String> =
        [("job", ".+"), ("__rate_interval", "1m"), ("name", "n")].map(|(k, v)| (k.to_string(), v.to_string())).into();
    assert_eq!(substitute("x{a=~\"$job\",b=\"${name}\"}[$__rate_interval]", &values), "x{a=~\".+\",b=\"n\"}[1m]");
    assert_eq!(regex_escape("127.0.0.1:9091"), "127\\.0\\.0\\.1:9091");
}

// -------------------------------------------------------------------------------------------
// Evaluation

/// An instant query's samples at `at` (a scalar is one sample without labels; NaN, which
/// Grafana shows as no value, is no sample).
fn evaluate(prom: &Prometheus, expr: &str, at: f64) -> Result<Samples, String> {
    let data = api(prom, &format!("/api/v1/query?query={}&time={at:.3}", encode(expr)))?;
    let parse = |v: &Json| v[1].as_str().and_then(|s| s.parse::<f64>().ok()).ok_or(format!("bad value {v}"));
    let mut out = Vec::new();
    match data["resultType"].as_str() {
        Some("vector") => {
            for s in data["result"].as_array().into_iter().flatten() {
                let labels =
                    s["metric"].as_object().into_iter().flatten().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string())).collect();
                out.push((labels, parse(&s["value"])?));
            }
        }
        Some("scalar") => out.push((BTreeMap::new(), parse(&data["result"])?)),
        other => return Err(format!("result type {other:?}: {data}")),
    }
    out.retain(|(_, v)| !v.is_nan());
    Ok(out)
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Debian's prometheus-node-exporter on a free loopback port, CPU and memory collectors only.
struct NodeExporter {
    child: Child,
    port: u16,
}

impl NodeExporter {
    fn start(binary: &Path, log: &Path) -> NodeExporter {
        let port = common::free_port();
        let child = Command::new(binary)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(["--collector.disable-defaults", "--collector.cpu", "--collector.meminfo"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
        let mut node = NodeExporter { child, port };
        common::wait_for(Duration::from_secs(20), "node_exporter answering", || {
            if let Ok(Some(status)) = node.child.try_wait() {
                panic!("node_exporter exited ({status}): {}", std::fs::read_to_string(log).unwrap_or_default());
            }
            common::http_get(port, "/metrics").ok().filter(|(_, body)| body.contains("node_cpu_seconds_total")).map(|_| ())
        });
        node
    }
}

impl Drop for NodeExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The block device (major:minor of the whole disk) the filesystem holding `dir` is on, for a
/// cgroup v1 throttle rule; None on a filesystem without one (tmpfs, overlay).
fn whole_disk_of(dir: &Path) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // The mount holding `dir`: the longest mount point above it (the last one mounted there).
    let mut best: Option<(usize, String)> = None;
    for m in mounts.lines() {
        let Some((left, right)) = m.split_once(" - ") else { continue };
        let (Some(point), Some(source)) = (left.split(' ').nth(4), right.split(' ').nth(1)) else { continue };
        let (point, source) = (point.replace("\\040", " "), source.to_string());
        if dir.starts_with(&point) && best.as_ref().is_none_or(|(len, _)| point.len() >= *len) {
            best = Some((point.len(), source));
        }
    }
    let source = best?.1;
    // The device node the mount names (btrfs gives its files an anonymous st_dev), else the
    // files' own device.
    let rdev = match std::fs::metadata(&source) {
        Ok(m) if source.starts_with("/dev/") => m.rdev(),
        _ => std::fs::metadata(&dir).ok()?.dev(),
    };
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if !sys.exists() {
        return None;
    }
    // A partition's rule goes on its disk.
    let disk = if sys.join("partition").exists() { sys.canonicalize().ok()?.parent()?.to_path_buf() } else { sys };
    Some(read(&disk.join("dev")).trim().to_string())
}

/// Write `value` to `file` in every one of the container's cgroup directories that has it;
/// whether one had it.
fn write_cgroup_file(agent: &Agent, id: &str, file: &str, value: &str) -> bool {
    let mut wrote = false;
    for dir in agent.container_dirs(id) {
        let path = dir.join(file);
        if path.exists() {
            std::fs::write(&path, value).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            wrote = true;
        }
    }
    wrote
}

/// HTTP client for the network container: the agent's own /metrics, five times a second.
const FETCH: &str = r#"import sys, time, urllib.request
while True:
    try:
        urllib.request.urlopen(sys.argv[1], timeout=5).read()
    except Exception:
        pass
    time.sleep(0.2)
"#;

#[test]
fn public_dashboards_show_what_the_readme_says() {
    const TEST: &str = "public_dashboards_show_what_the_readme_says";
    let dashboards = dashboards();
    let rows = readme_rows();
    let problems = coverage(&dashboards, &rows);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    if !common::privileged(TEST) {
        return;
    }
    let Some(prometheus) = common::tool("prometheus", TEST) else { return };
    let Some(node_exporter) = common::tool("prometheus-node-exporter", TEST) else { return };
    let Some(_) = common::tool("python3", TEST) else { return };
    let begun = Instant::now();

    let mut agent = Agent::start();
    // On the build's disk: the I/O container's file must be on a block device.
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let io_file = work.path().join("io");
    let url = format!("http://127.0.0.1:{}/metrics", agent.port);
    let io_script = format!(
        "while :; do dd if=/dev/zero of='{0}' bs=64k count=16 oflag=direct conv=notrunc 2>/dev/null; \
         dd if='{0}' of=/dev/null bs=64k iflag=direct 2>/dev/null; sleep 0.5; done",
        io_file.display()
    );
    // The launchers, waited for once the agent's drop has killed them.
    let launchers = [
        agent.exec(&["sh", "-c", "while :; do :; done"]),
        agent.exec(&["python3", "-c", FETCH, &url]),
        agent.exec(&["sh", "-c", &io_script]),
    ];
    let [cpu, net, io] = launchers.each_ref().map(common::id_of);
    let ids = [cpu.clone(), net.clone(), io.clone()];
    common::wait_for(Duration::from_secs(30), "the three containers placed", || {
        let m = agent.scrape();
        ids.iter().all(|id| !m.get("container_last_seen", &[("name", id)]).is_empty()).then_some(())
    });
    assert_eq!(
        agent.scrape().one("apptheus_ebpf_up", &[]),
        Some(1.0),
        "the eBPF programs are not attached, so the network panels cannot be checked: {}",
        agent.log_text()
    );
    // A memory reservation on each (below this test's own cgroup), as the docker-mixin's
    // "Memory reserved" reads it.
    for id in &ids {
        let wrote = write_cgroup_file(&agent, id, "memory.min", &RESERVATION.to_string())
            | write_cgroup_file(&agent, id, "memory.soft_limit_in_bytes", &RESERVATION.to_string());
        assert!(wrote, "{id}: neither memory.min nor memory.soft_limit_in_bytes in {:?}", agent.container_dirs(id));
    }
    // cgroup v1 blkio counts block I/O only while a throttle rule applies (README, "Cgroup
    // layouts"): one that never throttles (1 TiB/s) on the I/O container's disk. v2's io.stat
    // counts without one.
    if agent.container_dirs(&io).iter().any(|d| d.join("blkio.throttle.read_bps_device").exists()) {
        let disk = whole_disk_of(work.path())
            .unwrap_or_else(|| panic!("{}: not on a block device, so the Disk I/O panels cannot be checked", work.path().display()));
        for file in ["blkio.throttle.read_bps_device", "blkio.throttle.write_bps_device"] {
            write_cgroup_file(&agent, &io, file, &format!("{disk} {}", 1u64 << 40));
        }
    }

    let node = NodeExporter::start(&node_exporter, &work.path().join("node-exporter.log"));
    // Job names as in both stacks' prometheus.yml (tests/data/dashboards/README.md).
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
         - job_name: cadvisor\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n  \
         - job_name: node-exporter\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
        agent.port, node.port
    );
    let prom = Prometheus::start_with_config(&prometheus, &config, &[]);

    // Every rate has two samples, and every workload shows in them.
    let mut conditions = vec![
        "up{job=\"cadvisor\"} == 1".to_string(),
        "up{job=\"node-exporter\"} == 1".to_string(),
        "count_over_time(node_cpu_seconds_total{mode=\"user\"}[1m]) >= 2".to_string(),
        format!("rate(container_cpu_usage_seconds_total{{name=\"{cpu}\"}}[1m]) > 0"),
        format!("rate(container_network_receive_bytes_total{{name=\"{net}\"}}[1m]) > 0"),
        format!("rate(container_network_transmit_bytes_total{{name=\"{net}\"}}[1m]) > 0"),
        format!("sum(rate(container_fs_reads_total{{name=\"{io}\"}}[1m])) > 0"),
        format!("sum(rate(container_fs_writes_total{{name=\"{io}\"}}[1m])) > 0"),
    ];
    for id in &ids {
        conditions.push(format!("count_over_time(container_last_seen{{name=\"{id}\"}}[1m]) >= 2"));
        conditions.push(format!("container_spec_memory_reservation_limit_bytes{{name=\"{id}\"}} == {RESERVATION}"));
    }
    let deadline = Instant::now() + DATA_DEADLINE;
    loop {
        let unmet: Vec<&String> = conditions.iter().filter(|q| evaluate(&prom, q, now()).map_or(true, |r| r.is_empty())).collect();
        if unmet.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after {DATA_DEADLINE:?}, still not true:\n  {}\ntargets: {}\nPrometheus log: {}\nagent log (end): {}",
            unmet.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "),
            prom.targets(),
            prom.log(),
            tail(&agent.log_text(), 40)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let waited = begun.elapsed();

    // Every query, at one instant, with the dashboard's variables.
    let at = now();
    let mut results: Results = BTreeMap::new();
    let mut problems = Vec::new();
    let mut report = Vec::new();
    let mut options_of: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for d in &dashboards {
        let (values, options) = resolve(&prom, d, at);
        if !values.is_empty() {
            report.push(format!("{}: {values:?} (from {options:?})", d.file));
        }
        let mut counts = (0, 0);
        for p in &d.panels {
            let row = rows.iter().find(|r| r.file == d.file && r.index == p.index).unwrap();
            let expr = substitute(&p.expr, &values);
            let samples = match evaluate(&prom, &expr, at) {
                Ok(s) => s,
                Err(e) => {
                    problems.push(format!("{} #{} \"{}\": {e}", d.file, p.index, p.title));
                    continue;
                }
            };
            let got = if samples.is_empty() { Status::NoData } else { Status::Data };
            if got == Status::Data {
                counts.0 += 1;
            } else {
                counts.1 += 1;
            }
            if got != row.status {
                problems.push(format!(
                    "{} #{} \"{}\": README line {} says {}, Prometheus gives {}: {expr}\n    -> {samples:?}",
                    d.file, p.index, p.title, row.line, row.status, got
                ));
            }
            if let Some((labels, v)) = samples.iter().find(|(_, v)| !v.is_finite()) {
                problems.push(format!("{} #{} \"{}\": {v} for {labels:?}: {expr}", d.file, p.index, p.title));
            }
            results.insert((d.file.clone(), p.index), samples);
        }
        report.push(format!("{}: {} data, {} no data", d.file, counts.0, counts.1));
        options_of.insert(d.file.clone(), options);
    }

    // The data is the containers' own, not just any series.
    let panel = |file: &str, title: &str, nth: usize| panel_samples(&results, &dashboards, file, title, nth);
    let single = |file: &str, title: &str| panel(file, title, 0).first().map(|(_, v)| *v);
    // The sum of a container's series (one per device for Disk I/O).
    let of = |samples: &Samples, id: &str| {
        let mine: Vec<f64> = samples.iter().filter(|(l, _)| l.get("name").map(String::as_str) == Some(id)).map(|(_, v)| *v).collect();
        (!mine.is_empty()).then(|| mine.iter().sum::<f64>())
    };
    let mut check = |ok: bool, what: String| {
        if !ok {
            problems.push(what)
        }
    };
    let value = |q: &str| evaluate(&prom, q, at).ok().and_then(|r| r.first().map(|(_, v)| *v));
    let (mixin, dockprom, g179) =
        ("grafana-docker-mixin-overview", "dockprom-docker-containers", "vegasbrianc-docker-prometheus-monitoring");
    // The containers the docker-mixin's $name offers: this test's, unless another agent on this
    // host nests containers, which an agent adopts at start wherever it finds them (then the
    // counts below are lower bounds).
    let ours: BTreeSet<String> = ids.iter().cloned().collect();
    let names: BTreeSet<String> = options_of[mixin].get("name").cloned().unwrap_or_default().into_iter().collect();
    check(names.is_superset(&ours), format!("{mixin}: $name offers {names:?}, not all of {ids:?}"));
    let alone = names == ours;
    if !alone {
        eprintln!(
            "NOTE: the agent also exports {} containers this test did not start; counts are checked as lower bounds",
            names.len() - 3
        );
    }
    let count_ok = |got: Option<f64>, want: f64| got.is_some_and(|g| if alone { g == want } else { g >= want });
    for (file, title) in [(mixin, "Containers"), (dockprom, "Running Containers"), (g179, "Running Containers")] {
        let got = single(file, title);
        check(count_ok(got, 3.0), format!("{file} \"{title}\": {got:?}, expected the 3 containers"));
    }
    // `sh` (the CPU and I/O loops) and `python3`.
    let images = single(mixin, "Images");
    check(count_ok(images, 2.0), format!("{mixin} \"Images\": {images:?}, expected 2 (sh and python3)"));
    let cores = value("count(node_cpu_seconds_total{mode=\"user\"})");
    check(
        single(dockprom, "CPU Cores") == cores,
        format!("{dockprom} \"CPU Cores\": {:?}, node_exporter counts {cores:?}", single(dockprom, "CPU Cores")),
    );
    let (machine, mem_total) = (value("machine_memory_bytes"), value("node_memory_MemTotal_bytes"));
    check(machine.is_some() && machine == mem_total, format!("machine_memory_bytes {machine:?}, node_exporter's MemTotal {mem_total:?}"));
    let reserved = single(mixin, "Memory reserved");
    let want = mem_total.map(|m| 3.0 * RESERVATION as f64 / m * 100.0);
    check(
        matches!((reserved, want), (Some(r), Some(w)) if (r - w).abs() <= w * 1e-9 || !alone && r > w),
        format!("{mixin} \"Memory reserved\": {reserved:?} %, expected {want:?} (3 × {RESERVATION} B of MemTotal)"),
    );
    let cpu_usage = panel(dockprom, "Container CPU Usage", 0);
    let busiest = cpu_usage.iter().max_by(|a, b| a.1.total_cmp(&b.1)).and_then(|(l, _)| l.get("name").cloned());
    check(
        busiest.as_ref() == Some(&cpu) || !alone,
        format!("{dockprom} \"Container CPU Usage\": the busiest is {busiest:?}, not the CPU loop {cpu}: {cpu_usage:?}"),
    );
    for (file, title, nth, id) in [
        (dockprom, "Container Network Input", 0, &net),
        (dockprom, "Container Network Output", 0, &net),
        (g179, "Container Network Input", 0, &net),
        (g179, "Container Network Output", 0, &net),
        (mixin, "Network traffic", 0, &net),
        (mixin, "Network traffic", 1, &net),
        (mixin, "CPU usage", 1, &cpu),
        (mixin, "Disk I/O", 0, &io),
        (mixin, "Disk I/O", 1, &io),
    ] {
        let got = of(panel(file, title, nth), id);
        check(got.is_some_and(|v| v > 0.0), format!("{file} \"{title}\" ({}): {id} shows {got:?}, expected more than 0", nth + 1));
    }

    eprintln!(
        "{} queries of {} dashboards evaluated at {at:.3}; data after {:.1} s, test ran {:.1} s\n{}",
        rows.len(),
        dashboards.len(),
        waited.as_secs_f64(),
        begun.elapsed().as_secs_f64(),
        report.join("\n")
    );
    assert!(problems.is_empty(), "{}\n\nPrometheus log:\n{}", problems.join("\n"), prom.log());
    drop(agent);
    for mut launcher in launchers {
        let _ = launcher.wait();
    }
}

/// Samples of a query: labels and value.
type Samples = Vec<(BTreeMap<String, String>, f64)>;

/// Samples of every query, by dashboard file and query number.
type Results = BTreeMap<(String, usize), Samples>;

/// The samples of the `nth` query titled `title` (0-based) of a dashboard.
fn panel_samples<'a>(results: &'a Results, dashboards: &[Dashboard], file: &str, title: &str, nth: usize) -> &'a Samples {
    let d = dashboards.iter().find(|d| d.file == file).unwrap_or_else(|| panic!("no dashboard {file}"));
    let p = d.panels.iter().filter(|p| p.title == title).nth(nth).unwrap_or_else(|| panic!("{file}: no query \"{title}\" ({})", nth + 1));
    &results[&(file.to_string(), p.index)]
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
