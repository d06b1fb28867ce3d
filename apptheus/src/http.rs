//! The HTTP side: `GET <telemetry path>` renders every series; other paths are 404 and other
//! methods 405.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, TextEncoder};
use tokio::net::TcpListener;

use crate::agent::Agent;

/// Bind `--web.listen-address`. `:9091` means every interface, IPv6 and IPv4 (as in Go).
pub async fn bind(address: &str) -> Result<TcpListener> {
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

pub async fn serve(listener: TcpListener, agent: Arc<Agent>, telemetry_path: String) {
    let shutdown = agent.shutdown.clone();
    let app = router(agent, &telemetry_path);
    let served = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
    if let Err(err) = served {
        tracing::error!(%err, "HTTP server failed");
    }
}

pub fn router(agent: Arc<Agent>, telemetry_path: &str) -> Router {
    Router::new()
        .route(telemetry_path, get(metrics))
        .fallback(|| async { (StatusCode::NOT_FOUND, "404 page not found\n") })
        .with_state(agent)
}

async fn metrics(State(agent): State<Arc<Agent>>) -> Response {
    let families = agent.telemetry.registry.gather();
    let encoder = TextEncoder::new();
    let mut body = Vec::with_capacity(64 * 1024);
    match encoder.encode(&families, &mut body) {
        Ok(()) => ([(header::CONTENT_TYPE, encoder.format_type().to_string())], body).into_response(),
        Err(err) => {
            tracing::error!(%err, "encoding metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics failed: {err}\n")).into_response()
        }
    }
}
