//! Where things are served: `--web.external-url` and `--web.route-prefix` as Pushgateway (and
//! Prometheus) use them. The route prefix defaults to the external URL's path; every route lives
//! under it: `<prefix>/` (landing page), `<prefix><telemetry path>`, `<prefix>/-/healthy`,
//! `<prefix>/-/ready`. With a prefix, `/` redirects to `<prefix>/`. Links on the landing page
//! use the external URL's path when one is given (a proxy may strip the prefix), else the prefix.

use anyhow::{bail, Context, Result};
use axum::http::Uri;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes {
    /// "" or "/a/b" (no trailing slash).
    pub prefix: String,
    /// Full path of the metrics endpoint.
    pub metrics: String,
    pub healthy: String,
    pub ready: String,
    /// Full path of the landing page (`<prefix>/`).
    pub landing: String,
    /// Path prefix for links in pages ("" or "/a/b").
    pub link_base: String,
    /// The telemetry path alone (for links).
    pub telemetry: String,
    /// The external URL, for logs ("" when not given).
    pub external_url: String,
}

impl Routes {
    pub fn new(external_url: &str, route_prefix: &str, telemetry_path: &str) -> Result<Routes> {
        let external_path = if external_url.is_empty() { None } else { Some(external_path(external_url)?) };
        let prefix = if route_prefix.is_empty() {
            external_path.clone().unwrap_or_default()
        } else {
            let p = format!("/{}", route_prefix.trim_matches('/'));
            check_path(&p).with_context(|| format!("--web.route-prefix {route_prefix:?}"))?;
            p
        };
        let prefix = prefix.trim_end_matches('/').to_string();
        check_path(telemetry_path).with_context(|| format!("--web.telemetry-path {telemetry_path:?}"))?;
        if !telemetry_path.starts_with('/') {
            bail!("--web.telemetry-path {telemetry_path:?} must start with '/'");
        }
        let metrics = format!("{prefix}{telemetry_path}");
        let healthy = format!("{prefix}/-/healthy");
        let ready = format!("{prefix}/-/ready");
        let landing = format!("{prefix}/");
        if metrics == healthy || metrics == ready {
            bail!("--web.telemetry-path {telemetry_path:?} collides with the health endpoints");
        }
        Ok(Routes {
            link_base: external_path.unwrap_or_else(|| prefix.clone()),
            prefix,
            metrics,
            healthy,
            ready,
            landing,
            telemetry: telemetry_path.to_string(),
            external_url: external_url.to_string(),
        })
    }
}

/// The path of an absolute http(s) URL, without its trailing slash ("" for the root).
fn external_path(url: &str) -> Result<String> {
    let ctx = || format!("--web.external-url {url:?}");
    if url.starts_with(['"', '\'']) || url.ends_with(['"', '\'']) {
        bail!("{}: URL must not begin or end with quotes", ctx());
    }
    let uri: Uri = url.parse().with_context(ctx)?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => bail!("{}: must be an absolute http:// or https:// URL", ctx()),
    }
    if uri.host().is_none_or(str::is_empty) {
        bail!("{}: has no host", ctx());
    }
    let path = uri.path().trim_end_matches('/');
    check_path(if path.is_empty() { "/" } else { path }).with_context(ctx)?;
    Ok(path.to_string())
}

/// A path we serve under: absolute, no `.`/`..` segments, nothing that is decoded or
/// interpreted differently by clients or proxies (`%`, `\`, `?`, `#`, control characters,
/// whitespace), no empty segments.
fn check_path(path: &str) -> Result<()> {
    if !path.starts_with('/') {
        bail!("must start with '/'");
    }
    if let Some(c) = path.chars().find(|c| c.is_control() || c.is_whitespace() || matches!(c, '%' | '\\' | '?' | '#' | '"' | '<' | '>')) {
        bail!("must not contain {c:?}");
    }
    let inner = path.trim_start_matches('/');
    if inner.is_empty() {
        return Ok(());
    }
    for segment in inner.trim_end_matches('/').split('/') {
        match segment {
            "" => bail!("must not contain '//'"),
            "." | ".." => bail!("must not contain '.' or '..' segments"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_root() {
        let r = Routes::new("", "", "/metrics").unwrap();
        assert_eq!((r.prefix.as_str(), r.metrics.as_str(), r.landing.as_str()), ("", "/metrics", "/"));
        assert_eq!((r.healthy.as_str(), r.ready.as_str(), r.link_base.as_str()), ("/-/healthy", "/-/ready", ""));
    }

    #[test]
    fn prefix_comes_from_the_external_url_or_the_flag() {
        let r = Routes::new("https://example.org:8443/apptheus/", "", "/metrics").unwrap();
        assert_eq!((r.prefix.as_str(), r.metrics.as_str(), r.link_base.as_str()), ("/apptheus", "/apptheus/metrics", "/apptheus"));
        // A proxy that strips the path: routes at the root, links with the external path.
        let r = Routes::new("https://example.org/apptheus", "/", "/metrics").unwrap();
        assert_eq!((r.prefix.as_str(), r.metrics.as_str(), r.link_base.as_str()), ("", "/metrics", "/apptheus"));
        let r = Routes::new("", "x/y/", "/m").unwrap();
        assert_eq!((r.prefix.as_str(), r.metrics.as_str(), r.landing.as_str()), ("/x/y", "/x/y/m", "/x/y/"));
        assert_eq!(r.healthy, "/x/y/-/healthy");
        let r = Routes::new("http://h", "", "/metrics").unwrap();
        assert_eq!(r.prefix, "");
    }

    #[test]
    fn traversal_and_odd_paths_are_refused() {
        for prefix in ["/a/../b", "..", "/./x", "/a//b", "/a%2e%2e", "/a\\b", "/a b", "/a?x", "/a#x"] {
            assert!(Routes::new("", prefix, "/metrics").is_err(), "{prefix}");
        }
        for url in ["http://h/a/../b", "ftp://h/x", "/relative", "\"http://h/\"", "http:///x", "not a url"] {
            assert!(Routes::new(url, "", "/metrics").is_err(), "{url}");
        }
        assert!(Routes::new("", "", "/../metrics").is_err());
        assert!(Routes::new("", "", "/-/healthy").is_err());
        let e = format!("{:#}", Routes::new("", "/a/../b", "/metrics").unwrap_err());
        assert!(e.contains("--web.route-prefix") && e.contains(".."), "{e}");
    }
}
