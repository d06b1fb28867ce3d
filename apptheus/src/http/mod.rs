//! The HTTP side: the metrics endpoint, secured and bounded as exporter-toolkit and Pushgateway
//! users expect. One concern per file:
//!
//! - [`web_config`]: `--web.config.file` (exporter-toolkit YAML), parsed strictly;
//! - [`live`]: the configuration in force, re-read when its files change;
//! - [`tls`]: rustls configuration, client certificate policies, plain HTTP on the TLS port;
//! - [`auth`]: basic auth against bcrypt hashes, with a cache;
//! - [`routes`]: `--web.external-url`, `--web.route-prefix` and the paths served;
//! - [`service`]: what each request gets (limits, auth, routes, scrapes);
//! - [`server`]: the accept loop, connection limits, hyper, graceful shutdown.
//!
//! With no flags: plain HTTP on `:9091`, `GET /metrics` in the text format 0.0.4.

pub mod auth;
pub mod live;
pub mod routes;
pub mod server;
pub mod service;
pub mod tls;
pub mod web_config;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use tokio_util::sync::CancellationToken;

use crate::scrape::Scrape;
use live::LiveConfig;
use routes::Routes;

/// The web flags (`--web.*`).
pub struct WebOptions {
    pub listen_address: String,
    pub config_file: String,
    pub external_url: String,
    pub route_prefix: String,
    pub telemetry_path: String,
    pub max_requests: usize,
    pub max_connections: u32,
    pub request_timeout: Duration,
}

/// A bound, configured web endpoint, not yet serving.
pub struct Web {
    listener: TcpListener,
    live: LiveConfig,
    routes: Routes,
    max_requests: usize,
    max_connections: usize,
    request_timeout: Duration,
}

/// Check the web flags and `--web.config.file` (certificates included), then bind
/// `--web.listen-address`. Every error is one line, and nothing is served yet.
pub async fn bind(options: &WebOptions) -> Result<Web> {
    let routes = Routes::new(&options.external_url, &options.route_prefix, &options.telemetry_path)?;
    let live = LiveConfig::load(&options.config_file)?;
    let listener = listen(&options.listen_address).await?;
    Ok(Web {
        listener,
        live,
        routes,
        max_requests: options.max_requests,
        max_connections: options.max_connections as usize,
        request_timeout: options.request_timeout,
    })
}

/// Bind `--web.listen-address`. `:9091` means every interface, IPv6 and IPv4 (as in Go).
async fn listen(address: &str) -> Result<TcpListener> {
    let (host, port) = address
        .rsplit_once(':')
        .with_context(|| format!("--web.listen-address {address:?} must be host:port or :port"))?;
    let port: u16 = port.parse().with_context(|| format!("--web.listen-address {address:?} has a bad port"))?;
    if host.is_empty() {
        let any6 = SocketAddr::from(([0u16; 8], port));
        if let Ok(l) = TcpListener::bind(any6).await {
            return Ok(l);
        }
        let any4 = SocketAddr::from(([0u8; 4], port));
        return TcpListener::bind(any4).await.with_context(|| format!("listening on {address}"));
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    TcpListener::bind((host, port)).await.with_context(|| format!("listening on {address}"))
}

/// Serve scrapes of `scrape` until `shutdown`.
pub async fn serve(web: Web, scrape: Arc<Scrape>, shutdown: CancellationToken) {
    let address = web.listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let config = web.live.current();
    tracing::info!(
        %address,
        tls = web.live.tls(),
        basic_auth = !config.users.is_empty(),
        config = %web.live.path().map(|p| p.display().to_string()).unwrap_or_default(),
        metrics = %web.routes.metrics,
        external_url = %web.routes.external_url,
        "web endpoint serving"
    );
    let shared = Arc::new(service::Shared {
        scrape,
        routes: web.routes,
        live: web.live,
        auth: auth::Authenticator::default(),
        scrapes: (web.max_requests > 0).then(|| Arc::new(Semaphore::new(web.max_requests))),
        max_requests: web.max_requests,
        timeout: web.request_timeout,
    });
    server::run(web.listener, shared, web.max_connections, shutdown).await;
}
