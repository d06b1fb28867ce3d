//! What a request gets, as an axum router with one route per endpoint and middleware layers, in
//! order: the configured extra headers (on every answer, as exporter-toolkit sets them), the
//! request timeout (503 after `--web.request-timeout`), the rate limit (429), basic auth (401
//! with `WWW-Authenticate: Basic`), then the route. Only GET and HEAD are served (405 with
//! `Allow: GET, HEAD`); unknown paths are 404.
//!
//! Scrapes: at most `--web.max-requests` at once (more get 503 at once, as client_golang's
//! `MaxRequestsInFlight` does; Prometheus retries at the next interval). Gathering and encoding
//! run on the blocking pool, so a slow scrape never stalls the runtime; the scrape slot is held
//! until that work is done, even if the request timed out. That is why the slot is a semaphore
//! permit moved into the blocking task and not tower's `ConcurrencyLimit`, which queues instead
//! of refusing and frees its slot when the request future is dropped.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use tokio::sync::Semaphore;

use super::auth::Authenticator;
use super::live::{LiveConfig, Loaded};
use super::routes::Routes;
use crate::scrape::{negotiate, Scrape};

pub struct Shared {
    pub scrape: Arc<Scrape>,
    pub routes: Routes,
    pub live: LiveConfig,
    pub auth: Authenticator,
    /// None: no limit.
    pub scrapes: Option<Arc<Semaphore>>,
    pub max_requests: usize,
    pub timeout: Duration,
}

/// The router: routes from `--web.route-prefix` and `--web.telemetry-path`, then the layers.
pub fn router(shared: Arc<Shared>) -> Router {
    let r = &shared.routes;
    // Paths are checked when the flags are read (no `?`, `%`, `//`, `..`); braces are escaped,
    // and a segment may start with `:` or `*` (literal in axum 0.8).
    let mut router = Router::new()
        .without_v07_checks()
        .route(&literal(&r.metrics), get(metrics))
        .route(&literal(&r.healthy), get(|| async { text(StatusCode::OK, "apptheus is Healthy.\n") }))
        .route(&literal(&r.ready), get(|| async { text(StatusCode::OK, "apptheus is Ready.\n") }));
    // `--web.telemetry-path=/` serves the metrics at the landing page's path.
    if r.landing != r.metrics {
        router = router.route(&literal(&r.landing), get(landing));
    }
    if !r.prefix.is_empty() {
        router = router.route(&literal(&r.prefix), get(landing)).route("/", get(to_landing));
    }
    router
        .fallback(|| async { text(StatusCode::NOT_FOUND, "404 page not found\n") })
        .method_not_allowed_fallback(|| async {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
            resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            resp
        })
        .layer(middleware::from_fn_with_state(shared.clone(), basic_auth))
        .layer(middleware::from_fn(rate_limit))
        .layer(middleware::from_fn_with_state(shared.clone(), timeout))
        .layer(middleware::from_fn_with_state(shared.clone(), extra_headers))
        .with_state(shared)
}

/// A path as an axum route matching exactly that path.
fn literal(path: &str) -> String {
    path.replace('{', "{{").replace('}', "}}")
}

/// The outermost layer: reads the web configuration in force once per request (the inner
/// layers find it in the request's extensions) and sets its extra headers on the answer.
async fn extra_headers(State(shared): State<Arc<Shared>>, mut req: Request, next: Next) -> Response {
    let config = shared.live.current();
    req.extensions_mut().insert(config.clone());
    let mut response = next.run(req).await;
    for (name, value) in &config.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

async fn timeout(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(shared.timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "request timed out\n"),
    }
}

async fn rate_limit(Extension(config): Extension<Arc<Loaded>>, req: Request, next: Next) -> Response {
    if let Some(limiter) = &config.limiter {
        if !limiter.allow() {
            return text(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests\n");
        }
    }
    next.run(req).await
}

async fn basic_auth(State(shared): State<Arc<Shared>>, Extension(config): Extension<Arc<Loaded>>, req: Request, next: Next) -> Response {
    if !config.users.is_empty() && !shared.auth.check(&config.users, req.headers().get(header::AUTHORIZATION)).await {
        let mut r = text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
        return r;
    }
    next.run(req).await
}

async fn to_landing(State(shared): State<Arc<Shared>>) -> Response {
    match HeaderValue::from_str(&shared.routes.landing) {
        Ok(location) => (StatusCode::FOUND, [(header::LOCATION, location)]).into_response(),
        Err(_) => text(StatusCode::NOT_FOUND, "404 page not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::X_CONTENT_TYPE_OPTIONS, "nosniff")], body).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let permit = match &shared.scrapes {
        Some(sem) => match sem.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                tracing::warn!(limit = shared.max_requests, "scrape refused: --web.max-requests reached");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                    format!("Limit of concurrent requests reached ({}), try again later.\n", shared.max_requests),
                )
                    .into_response();
            }
        },
        None => None,
    };
    let header_str = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    let format = negotiate::negotiate(header_str(header::ACCEPT));
    let user_agent = header_str(header::USER_AGENT).unwrap_or("").to_string();
    let gzip = negotiate::wants_gzip(header_str(header::ACCEPT_ENCODING));
    let scrape = shared.scrape.clone();
    let work = tokio::task::spawn_blocking(move || {
        let _slot = permit;
        scrape.render(format, gzip)
    });
    match work.await {
        Ok(Ok(body)) => {
            tracing::debug!(format = format.name(), gzip, bytes = body.len(), %user_agent, "served a scrape");
            let mut resp = Response::new(Body::from(body));
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
            if gzip {
                h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
            resp
        }
        Ok(Err(err)) => {
            tracing::error!(err = %format!("{err:#}"), "encoding metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("encoding metrics failed: {err}\n")).into_response()
        }
        Err(err) => {
            tracing::error!(%err, "encoding metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed\n").into_response()
        }
    }
}

async fn landing(State(shared): State<Arc<Shared>>) -> Response {
    let r = &shared.routes;
    let link = |p: &str| html_escape(&format!("{}{p}", r.link_base));
    let page = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>apptheus</title></head>\n<body>\n\
         <h1>apptheus</h1>\n<p>Per-container metrics for Apptainer (version {version}).</p>\n<ul>\n\
         <li><a href=\"{metrics}\">Metrics</a></li>\n<li><a href=\"{healthy}\">Health</a></li>\n<li><a href=\"{ready}\">Readiness</a></li>\n\
         </ul>\n</body>\n</html>\n",
        version = env!("CARGO_PKG_VERSION"),
        metrics = link(&r.telemetry),
        healthy = link("/-/healthy"),
        ready = link("/-/ready"),
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}
