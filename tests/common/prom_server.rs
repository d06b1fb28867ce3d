//! A real Prometheus server (Debian's `prometheus`) on loopback, scraping the agent every
//! second, for the end-to-end tests.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, http_get};

/// A real Prometheus on loopback scraping the agent every second.
pub struct Prometheus {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// `job` is the body of one scrape config (after `- job_name: apptheus`), indented by 4.
    pub fn start(binary: &Path, job: &str, flags: &[&str]) -> Prometheus {
        let config = format!("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: apptheus\n{job}");
        Prometheus::start_with_config(binary, &config, flags)
    }

    /// A Prometheus with this whole configuration file. In agent mode (`--enable-feature=agent`
    /// in `flags`) its storage flag is the agent's.
    pub fn start_with_config(binary: &Path, config_text: &str, flags: &[&str]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_text).unwrap();
        let port = free_port();
        let storage = if flags.contains(&"--enable-feature=agent") { "storage.agent.path" } else { "storage.tsdb.path" };
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--{storage}={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(flags)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .unwrap();
        Prometheus { child, port, dir }
    }

    /// The result vector of an instant query, once the API answers.
    pub fn query(&self, q: &str) -> Option<Vec<serde_json::Value>> {
        self.query_at(q, None)
    }

    /// An instant query evaluated at `time` (Unix seconds), or now.
    pub fn query_at(&self, q: &str, time: Option<f64>) -> Option<Vec<serde_json::Value>> {
        let encoded: String = q
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() || b == b'_' { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        let at = time.map(|t| format!("&time={t:.3}")).unwrap_or_default();
        let (status, body) = http_get(self.port, &format!("/api/v1/query?query={encoded}{at}")).ok()?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"].as_array().cloned()
    }

    pub fn value(&self, q: &str) -> Option<f64> {
        self.value_at(q, None)
    }

    pub fn value_at(&self, q: &str, time: Option<f64>) -> Option<f64> {
        let r = self.query_at(q, time)?;
        r.first()?["value"][1].as_str()?.parse().ok()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Wait until the target is up and the container's series is stored.
    pub fn wait_for_container(&self, id: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let up = self.value("up{job=\"apptheus\"}");
            let series = self.query(&format!("container_memory_usage_bytes{{name=\"{id}\"}}")).unwrap_or_default();
            if up == Some(1.0) && !series.is_empty() {
                assert_eq!(series[0]["metric"]["name"], id);
                assert_eq!(series[0]["metric"]["job"], "apptheus");
                return;
            }
            assert!(Instant::now() < deadline, "Prometheus: up={up:?}, series {series:?}; targets: {:?}; log: {}", self.targets(), self.log());
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn targets(&self) -> String {
        http_get(self.port, "/api/v1/targets").map(|(_, b)| b).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}
