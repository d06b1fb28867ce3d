//! The web configuration in force. exporter-toolkit re-reads its file on every request and TLS
//! handshake, so a rotated certificate or a changed password needs no restart; here the file
//! and the certificate, key and CA files it names are checked for a change (mtime, size, inode)
//! at most once a second, and re-read when one changed. A bad new version is logged and the one
//! in force is kept (Go fails the requests instead). Whether TLS is on is fixed at start:
//! a reload that would turn it on or off is refused (turning it off would silently serve
//! plain text).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use axum::http::{HeaderName, HeaderValue};
use rustls::ServerConfig;

use super::web_config::{self, RateLimit};

const CHECK_EVERY: Duration = Duration::from_secs(1);

/// One version of the configuration, ready to use.
#[derive(Default)]
pub struct Loaded {
    pub tls: Option<Arc<ServerConfig>>,
    pub users: BTreeMap<String, String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub limiter: Option<RateLimiter>,
}

pub struct LiveConfig {
    path: Option<PathBuf>,
    tls: bool,
    state: Mutex<State>,
}

struct State {
    loaded: Arc<Loaded>,
    /// The configuration file and the files it named when last read.
    files: Vec<PathBuf>,
    stamp: Stamp,
    checked: Instant,
}

/// (mtime, size, inode) of each file, None where it cannot be read.
type Stamp = Vec<Option<(SystemTime, u64, u64)>>;

impl LiveConfig {
    /// Load `--web.config.file` (empty: no configuration), building the TLS configuration now so
    /// that a bad certificate or key is a start-up error.
    pub fn load(path: &str) -> Result<LiveConfig> {
        if path.is_empty() {
            let state = State { loaded: Arc::new(Loaded::default()), files: Vec::new(), stamp: Vec::new(), checked: Instant::now() };
            return Ok(LiveConfig { path: None, tls: false, state: Mutex::new(state) });
        }
        let path = PathBuf::from(path);
        let (loaded, files, stamp) = read(&path)?;
        let tls = loaded.tls.is_some();
        let state = State { loaded: Arc::new(loaded), files, stamp, checked: Instant::now() };
        Ok(LiveConfig { path: Some(path), tls, state: Mutex::new(state) })
    }

    pub fn tls(&self) -> bool {
        self.tls
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The configuration in force, re-read first if a file changed.
    pub fn current(&self) -> Arc<Loaded> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let Some(path) = &self.path else { return state.loaded.clone() };
        if state.checked.elapsed() < CHECK_EVERY {
            return state.loaded.clone();
        }
        state.checked = Instant::now();
        if stamp_of(&state.files) == state.stamp {
            return state.loaded.clone();
        }
        match read(path) {
            Ok((loaded, files, stamp)) if loaded.tls.is_some() == self.tls => {
                tracing::info!(file = %path.display(), "web configuration reloaded");
                state.loaded = Arc::new(loaded);
                state.files = files;
                state.stamp = stamp;
            }
            Ok((_, files, stamp)) => {
                tracing::error!(file = %path.display(), "web configuration not reloaded: turning TLS on or off needs a restart");
                state.files = files;
                state.stamp = stamp;
            }
            Err(err) => {
                tracing::error!(file = %path.display(), err = %format!("{err:#}"), "web configuration not reloaded, the previous one stays in force");
                // Not retried until a file changes again.
                state.stamp = stamp_of(&state.files);
            }
        }
        state.loaded.clone()
    }
}

fn stamp_of(files: &[PathBuf]) -> Stamp {
    files
        .iter()
        .map(|f| std::fs::metadata(f).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), m.ino())))
        .collect()
}

/// Read the configuration and everything it names: (configuration, files read, their stamp).
/// The stamp is taken before reading, so a change while reading is seen at the next check.
fn read(path: &Path) -> Result<(Loaded, Vec<PathBuf>, Stamp)> {
    let before = stamp_of(&[path.to_path_buf()]);
    let config = web_config::load(path)?;
    let mut files = vec![path.to_path_buf()];
    files.extend(config.tls.iter().flat_map(|t| t.files()).map(Path::to_path_buf));
    let mut stamp = before;
    stamp.extend(stamp_of(&files[1..]));
    let tls = match &config.tls {
        Some(settings) => {
            Some(super::tls::server_config(settings).map_err(|e| anyhow::anyhow!("--web.config.file {}: {e:#}", path.display()))?)
        }
        None => None,
    };
    let loaded = Loaded {
        tls,
        users: config.users,
        headers: config.headers,
        limiter: config.rate_limit.map(RateLimiter::new),
    };
    Ok((loaded, files, stamp))
}

/// exporter-toolkit's `rate_limit`: a token bucket holding `burst` tokens, one more every
/// `interval`, starting full. A request without a token gets 429.
pub struct RateLimiter {
    limit: RateLimit,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> RateLimiter {
        RateLimiter { limit, state: Mutex::new((f64::from(limit.burst), Instant::now())) }
    }

    pub fn allow(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = &mut *state;
        let now = Instant::now();
        let refill = now.duration_since(*last).as_secs_f64() / self.limit.interval.as_secs_f64();
        *tokens = (*tokens + refill).min(f64::from(self.limit.burst));
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_allows_a_burst_then_one_per_interval() {
        let l = RateLimiter::new(RateLimit { interval: Duration::from_millis(200), burst: 2 });
        assert!(l.allow() && l.allow());
        assert!(!l.allow());
        std::thread::sleep(Duration::from_millis(220));
        assert!(l.allow());
        assert!(!l.allow());
    }
}
