//! The accept loop: at most `--web.max-connections` connections (further ones wait in the
//! listen backlog, as with Prometheus' `--web.max-connections`), TLS when configured (the
//! handshake bounded by `--web.request-timeout`), HTTP/1.1 by hyper with bounded request heads
//! ([`MAX_HEADER_BYTES`], [`MAX_HEADERS`]; more is 431) and `--web.request-timeout` to receive
//! them (it also closes idle keep-alive connections). On shutdown the listener closes, requests
//! in flight finish (for at most [`DRAIN`]), and idle connections are closed.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::service::{router, Shared};
use super::tls;

/// Largest request head (request line and headers). Scrapes send well under 1 KiB.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most request headers.
pub const MAX_HEADERS: usize = 64;
/// How long shutdown waits for requests in flight.
pub const DRAIN: Duration = Duration::from_secs(5);

pub async fn run(listener: TcpListener, shared: Arc<Shared>, max_connections: usize, shutdown: CancellationToken) {
    let app = router(shared.clone());
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(shared.timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .max_headers(MAX_HEADERS);
    let http = Arc::new(http);
    let connections = Arc::new(Semaphore::new(max_connections));
    let graceful = GracefulShutdown::new();

    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = connections.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(%err, "accepting a web connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let tls = shared.live.current().tls.clone();
        let service = TowerToHyperService::new(app.clone());
        let watcher = graceful.watcher();
        let http = http.clone();
        let shutdown = shutdown.clone();
        let timeout = shared.timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let result = match tls {
                None => watcher.watch(http.serve_connection(TokioIo::new(stream), service)).await,
                Some(config) => {
                    let handshake = async {
                        if tls::is_plain_http(&stream).await {
                            tls::answer_plain_http(stream).await;
                            return None;
                        }
                        match TlsAcceptor::from(config).accept(stream).await {
                            Ok(s) => Some(s),
                            Err(err) => {
                                tracing::debug!(%peer, %err, "TLS handshake failed");
                                None
                            }
                        }
                    };
                    let stream = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        s = tokio::time::timeout(timeout, handshake) => match s {
                            Ok(Some(s)) => s,
                            Ok(None) => return,
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        },
                    };
                    watcher.watch(http.serve_connection(TokioIo::new(stream), service)).await
                }
            };
            if let Err(err) = result {
                tracing::debug!(%peer, %err, "web connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN) => tracing::debug!("web connections still open at shutdown"),
    }
}
