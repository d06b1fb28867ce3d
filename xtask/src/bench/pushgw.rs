//! The peer: Debian's `prometheus-pushgateway`, run as a plain process on loopback and filled
//! with the agent's own exposition, one group per container (as the Go Apptheus pushed them).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::http::{self, Conn};
use super::sys;

pub const BINARY: &str = "prometheus-pushgateway";

pub struct Pushgateway {
    child: Option<Child>,
    pub port: u16,
    pub version: String,
}

pub fn find() -> Option<PathBuf> {
    sys::which(BINARY)
}

impl Pushgateway {
    pub fn start(bin: &Path, tmp: &Path) -> Result<Pushgateway> {
        let port = super::agent::free_port()?;
        let version = Command::new(bin)
            .arg("--version")
            .output()
            .ok()
            .map(|o| {
                let s = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
                s.lines().next().unwrap_or("").to_string()
            })
            .unwrap_or_default();
        let child = Command::new(bin)
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(tmp.join("pushgateway.log"))?)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut pg = Pushgateway { child: Some(child), port, version };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            sys::check_interrupt()?;
            if http::get(port, "/-/ready").map(|r| r.status == 200).unwrap_or(false) {
                return Ok(pg);
            }
            if let Some(st) = pg.child.as_mut().unwrap().try_wait()? {
                pg.child = None;
                bail!("pushgateway exited at start ({st}): {}", std::fs::read_to_string(tmp.join("pushgateway.log")).unwrap_or_default());
            }
            if Instant::now() > deadline {
                bail!("pushgateway not ready after 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Replace its content with `exposition` split into one group per container (and one for
    /// the agent's own `apptheus_*` series). Returns the number of groups pushed.
    pub fn load(&self, exposition: &str) -> Result<usize> {
        // Start from empty: delete the groups of an earlier load.
        let mut conn = Conn::open(self.port)?;
        let groups = split_groups(exposition);
        let old = http::get(self.port, "/api/v1/metrics").map(|r| r.text()).unwrap_or_default();
        for job in old_jobs(&old) {
            conn.request("DELETE", &format!("/metrics/job/{job}"), &[], &[])?;
        }
        for (job, body) in &groups {
            sys::check_interrupt()?;
            let r = conn.request("PUT", &format!("/metrics/job/{job}"), &[("Content-Type", "text/plain; version=0.0.4")], body.as_bytes())?;
            if !(200..300).contains(&r.status) {
                bail!("pushgateway refused group {job}: HTTP {} {}", r.status, r.text());
            }
        }
        Ok(groups.len())
    }
}

impl Drop for Pushgateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            sys::kill(c.id(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while c.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    sys::kill(c.id(), libc::SIGKILL);
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn old_jobs(api_json: &str) -> Vec<String> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(api_json) else { return Vec::new() };
    v.get("data")
        .and_then(|d| d.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|g| g.get("labels").and_then(|l| l.get("job")).and_then(|j| j.as_str()).map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Value of label `name` in a sample line, if present.
fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find('{')?;
    let end = line.rfind('}')?;
    let labels = &line[start + 1..end];
    let key = format!("{name}=\"");
    let mut at = 0;
    while let Some(i) = labels[at..].find(&key) {
        let i = at + i;
        if i == 0 || labels.as_bytes()[i - 1] == b',' {
            let v = &labels[i + key.len()..];
            return v.find('"').map(|e| &v[..e]);
        }
        at = i + key.len();
    }
    None
}

/// Series the Pushgateway makes itself or describes differently: left out of the push.
fn reserved(family: &str) -> bool {
    family == "push_time_seconds" || family == "push_failure_time_seconds" || family.starts_with("process_") || family.starts_with("go_")
}

/// Split a text exposition into (job, body) groups: a container's series (label `name` or,
/// for the legacy series, `job`) go to its own group, the rest to `apptheus_agent`. Each
/// group repeats the HELP/TYPE lines of the families it holds; timestamps are dropped (the
/// Pushgateway refuses them).
pub fn split_groups(text: &str) -> BTreeMap<String, String> {
    let mut family = String::new();
    let mut header = String::new();
    // group → (family → (header, samples))
    let mut groups: BTreeMap<String, BTreeMap<String, (String, String)>> = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut w = rest.split_whitespace();
            let kind = w.next().unwrap_or("");
            let name = w.next().unwrap_or("").to_string();
            if kind == "HELP" || kind == "TYPE" {
                if name != family {
                    family = name;
                    header.clear();
                }
                header.push_str(line);
                header.push('\n');
            }
            continue;
        }
        if reserved(&family) {
            continue;
        }
        let group = label(line, "name").or_else(|| label(line, "job")).unwrap_or("apptheus_agent").to_string();
        // Drop a timestamp: the sample is `name{labels} value [timestamp]`.
        let after_labels = line.rfind('}').map(|i| i + 1).unwrap_or_else(|| line.find(' ').unwrap_or(line.len()));
        let (head, tail) = line.split_at(after_labels);
        let value = tail.split_whitespace().next().unwrap_or("");
        let entry = groups.entry(group).or_default().entry(family.clone()).or_insert_with(|| (header.clone(), String::new()));
        entry.1.push_str(head.trim_end());
        entry.1.push(' ');
        entry.1.push_str(value);
        entry.1.push('\n');
    }
    groups
        .into_iter()
        .map(|(g, fams)| {
            let mut body = String::new();
            for (_, (h, s)) in fams {
                body.push_str(&h);
                body.push_str(&s);
            }
            (g, body)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_by_container() {
        let text = "# HELP a_total A.\n# TYPE a_total counter\na_total{name=\"c_1\",id=\"/p/c_1\"} 1\na_total{name=\"c_2\",id=\"/p/c_2\"} 2 1700000000000\n\
                    # HELP cpu_usage_per L.\n# TYPE cpu_usage_per gauge\ncpu_usage_per{job=\"c_1\",instance=\"\"} 0.5\n\
                    # HELP push_time_seconds P.\n# TYPE push_time_seconds gauge\npush_time_seconds{job=\"c_1\",instance=\"\"} 5\n\
                    # HELP apptheus_containers C.\n# TYPE apptheus_containers gauge\napptheus_containers 2\n";
        let g = split_groups(text);
        assert_eq!(g.len(), 3);
        assert_eq!(
            g["c_1"],
            "# HELP a_total A.\n# TYPE a_total counter\na_total{name=\"c_1\",id=\"/p/c_1\"} 1\n# HELP cpu_usage_per L.\n# TYPE cpu_usage_per gauge\ncpu_usage_per{job=\"c_1\",instance=\"\"} 0.5\n"
        );
        assert_eq!(g["c_2"], "# HELP a_total A.\n# TYPE a_total counter\na_total{name=\"c_2\",id=\"/p/c_2\"} 2\n");
        assert!(g["apptheus_agent"].contains("apptheus_containers 2\n"));
    }

    #[test]
    fn label_lookup_is_exact() {
        assert_eq!(label("x{hostname=\"h\",name=\"n\"} 1", "name"), Some("n"));
        assert_eq!(label("x{job=\"j\"} 1", "name"), None);
    }
}
