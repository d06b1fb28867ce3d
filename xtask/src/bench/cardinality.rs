//! Series and bytes per container (issue 16): one "node" of `PER_NODE` containers, scraped with
//! every group exported and with the heavy groups off (`--metrics.disable`), and what that
//! makes for a cluster of `NODES` nodes.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::agent::{Agent, Launchers};
use super::{sys, wait_containers};

/// The cluster the projection is for: the 1000 nodes × 64 containers.
pub const NODES: u64 = 1000;
pub const PER_NODE: usize = 64;
/// The scrape interval of the projection's ingest rate.
const SCRAPE_INTERVAL_S: f64 = 15.0;

/// The `--metrics.disable` values measured, everything on first.
const VARIANTS: &[&str] = &["", "sched,legacy", "sched,legacy,pressure"];

pub struct Variant {
    pub disabled: &'static str,
    pub containers: usize,
    /// Every series of the scrape, the agent's own included.
    pub series: usize,
    pub container_series: usize,
    pub bytes: usize,
    pub container_bytes: usize,
}

impl Variant {
    fn per_container(&self, v: usize) -> f64 {
        v as f64 / self.containers as f64
    }
}

/// One agent per variant over `containers` idle containers (`apptheus exec -- sleep`), scraped
/// once their first samples are in.
pub fn run(bin: &Path, tmp: &Path, containers: usize) -> Result<Vec<Variant>> {
    let mut out = Vec::new();
    for &disabled in VARIANTS {
        sys::check_interrupt()?;
        eprintln!("bench: cardinality with --metrics.disable={disabled:?}, {containers} containers");
        let extra = if disabled.is_empty() { vec![] } else { vec![format!("--metrics.disable={disabled}")] };
        let mut agent = Agent::start(bin, &[bin], tmp, "cardinality", &extra)?;
        let mut launchers = Launchers::new(tmp);
        let measured = (|| {
            launchers.grow_to(&agent, containers)?;
            wait_containers(&agent, containers)?;
            // A few samples, so that every series a container has is there (the eBPF ones
            // after their first batch read, the legacy CPU percentage after two samples).
            sys::sleep(Duration::from_secs(2))?;
            let text = agent.scrape_text()?;
            let ids = launchers.ids();
            Ok::<_, anyhow::Error>(count(&text, &ids, disabled))
        })();
        launchers.stop_all();
        for p in agent.stop() {
            eprintln!("bench: clean-up: {p}");
        }
        out.push(measured?);
    }
    Ok(out)
}

/// Series and bytes of a text scrape, and the part that belongs to the containers `ids`
/// (`name="<id>"` on container families, `job="<id>"` on the legacy ones).
fn count(text: &str, ids: &[String], disabled: &'static str) -> Variant {
    let marks: Vec<(String, String)> = ids.iter().map(|id| (format!("name=\"{id}\""), format!("job=\"{id}\""))).collect();
    let mut v = Variant { disabled, containers: ids.len(), series: 0, container_series: 0, bytes: text.len(), container_bytes: 0 };
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        v.series += 1;
        if marks.iter().any(|(name, job)| line.contains(name.as_str()) || line.contains(job.as_str())) {
            v.container_series += 1;
            v.container_bytes += line.len() + 1;
        }
    }
    v
}

pub fn render(o: &mut String, variants: &[Variant]) {
    let _ = writeln!(
        o,
        "One node of {PER_NODE} idle containers (`apptheus exec -- sleep 3600`), one agent per row, scraped (text format) after its containers' first samples. Per container: the scrape's lines that carry a container's `name` (or, for the legacy series, `job`) label, divided by the containers.\n"
    );
    let mut t = super::stats::Table::new(&["--metrics.disable", "series per container", "bytes per container", "series in the scrape", "bytes in the scrape"]);
    for v in variants {
        t.row(vec![
            if v.disabled.is_empty() { "(none)".into() } else { format!("`{}`", v.disabled) },
            format!("{:.1}", v.per_container(v.container_series)),
            format!("{:.0}", v.per_container(v.container_bytes)),
            v.series.to_string(),
            v.bytes.to_string(),
        ]);
    }
    o.push_str(&t.markdown());
    let _ = writeln!(o, "\nProjection for {NODES} nodes × {PER_NODE} containers, from the scrapes above (each node's scrape = the measured one):\n");
    let mut t = super::stats::Table::new(&["--metrics.disable", "active series", "arithmetic", "samples/s at a 15 s scrape", "bytes per cluster-wide scrape"]);
    for v in variants {
        let active = NODES * v.series as u64 * PER_NODE as u64 / v.containers as u64;
        t.row(vec![
            if v.disabled.is_empty() { "(none)".into() } else { format!("`{}`", v.disabled) },
            format!("{:.2} M", active as f64 / 1e6),
            format!("{NODES} × {} series", v.series),
            format!("{:.0}", active as f64 / SCRAPE_INTERVAL_S),
            format!("{:.0} MB", (NODES * v.bytes as u64 * PER_NODE as u64 / v.containers as u64) as f64 / 1e6),
        ]);
    }
    o.push_str(&t.markdown());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_containers_series_and_bytes() {
        let text = "# HELP a x\n# TYPE a gauge\na{name=\"c1\",id=\"/c1\"} 1\na{name=\"c2\",id=\"/c2\"} 2\ncpu_usage_per{job=\"c1\",instance=\"\"} 3\napptheus_containers 2\n";
        let v = count(text, &["c1".to_string(), "c2".to_string()], "");
        assert_eq!((v.series, v.container_series), (4, 3));
        assert_eq!(v.container_bytes, "a{name=\"c1\",id=\"/c1\"} 1\n".len() * 2 + "cpu_usage_per{job=\"c1\",instance=\"\"} 3\n".len());
        assert_eq!(v.bytes, text.len());
    }
}
