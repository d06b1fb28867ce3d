//! `--web.config.file`: the web configuration file of Prometheus' exporter-toolkit, read as
//! strictly as exporter-toolkit reads it (unknown or duplicate keys are errors, with the line).
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt        # or `cert:` with the PEM inline
//!   key_file: server.key         # or `key:`
//!   client_auth_type: RequireAndVerifyClientCert
//!   client_ca_file: clients.crt  # or `client_ca:`
//!   min_version: TLS12
//!   max_version: TLS13
//!   cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]
//!   curve_preferences: [X25519, CurveP256]
//!   prefer_server_cipher_suites: true
//! http_server_config:
//!   http2: true                  # accepted; only HTTP/1.1 is served
//!   headers:
//!     Strict-Transport-Security: max-age=31536000
//! rate_limit:
//!   interval: 1s
//!   burst: 10
//! basic_auth_users:
//!   prometheus: $2y$10$...        # bcrypt hash
//! ```
//!
//! Relative file names are taken from the configuration file's directory, as exporter-toolkit
//! does. Differences from exporter-toolkit, each refused with a clear error rather than ignored:
//! `client_allowed_sans` is not supported; `CurveP521` and cipher suites other than the ECDHE
//! AEAD ones do not exist in rustls; `max_version` below TLS12 cannot be served (a `min_version`
//! of TLS10/TLS11 is accepted and means TLS 1.2, rustls' floor); the `Verify*` client auth types
//! need a client CA (Go would fall back to the system roots); `rate_limit.interval` needs a
//! `burst` of at least 1 (Go would refuse every request).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::http::{HeaderName, HeaderValue};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::support::duration::parse_duration;

/// A validated configuration, with file names resolved.
#[derive(Debug, Default)]
pub struct WebConfig {
    pub tls: Option<TlsSettings>,
    /// user → bcrypt hash; empty = no authentication.
    pub users: BTreeMap<String, String>,
    /// Extra response headers, from exporter-toolkit's allow-list.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub rate_limit: Option<RateLimit>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub interval: Duration,
    pub burst: u32,
}

#[derive(Debug, PartialEq)]
pub struct TlsSettings {
    pub cert: Pem,
    pub key: Pem,
    pub client_ca: Option<Pem>,
    pub client_auth: ClientAuth,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// Empty: rustls' defaults.
    pub cipher_suites: Vec<CipherSuite>,
    /// Empty: rustls' defaults.
    pub curves: Vec<Curve>,
    pub prefer_server_cipher_suites: bool,
}

impl TlsSettings {
    /// Files the TLS settings read (to notice a rotated certificate).
    pub fn files(&self) -> Vec<&Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|p| match p {
                Pem::File(f) => Some(f.as_path()),
                Pem::Inline(_) => None,
            })
            .collect()
    }
}

/// PEM data, from a file or inline. Inline data may be a private key: never printed.
#[derive(PartialEq)]
pub enum Pem {
    File(PathBuf),
    Inline(String),
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pem::File(p) => write!(f, "File({})", p.display()),
            Pem::Inline(_) => f.write_str("Inline(<secret>)"),
        }
    }
}

impl Pem {
    pub fn read(&self, what: &str) -> Result<Vec<u8>> {
        match self {
            Pem::File(p) => std::fs::read(p).with_context(|| format!("reading {what} {}", p.display())),
            Pem::Inline(text) => Ok(text.as_bytes().to_vec()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum ClientAuth {
    #[default]
    NoClientCert,
    RequestClientCert,
    /// `RequireClientCert` is exporter-toolkit's old name for it.
    #[serde(alias = "RequireClientCert")]
    RequireAnyClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "TLS10")]
    Tls10,
    #[serde(rename = "TLS11")]
    Tls11,
    #[serde(rename = "TLS12")]
    Tls12,
    #[serde(rename = "TLS13")]
    Tls13,
}

/// The TLS 1.2 suites rustls implements, by their Go names (`cipher_suites` applies to TLS 1.2
/// only, as in Go; TLS 1.3 suites are not configurable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[allow(clippy::enum_variant_names)]
pub enum CipherSuite {
    #[serde(rename = "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256")]
    EcdsaAes128Gcm,
    #[serde(rename = "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384")]
    EcdsaAes256Gcm,
    #[serde(rename = "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", alias = "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305")]
    EcdsaChacha20,
    #[serde(rename = "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256")]
    RsaAes128Gcm,
    #[serde(rename = "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384")]
    RsaAes256Gcm,
    #[serde(rename = "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", alias = "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305")]
    RsaChacha20,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Curve {
    X25519,
    CurveP256,
    CurveP384,
}

/// exporter-toolkit's `extraHTTPHeaders`: the headers that may be set, and the values allowed
/// where they form an enumeration.
const EXTRA_HEADERS: &[(&str, &[&str])] = &[
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

// ---- the file as written ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    tls_server_config: Option<RawTls>,
    http_server_config: Option<RawHttp>,
    rate_limit: Option<RawRateLimit>,
    basic_auth_users: Option<StrictMap>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    client_auth_type: Option<ClientAuth>,
    client_ca_file: Option<String>,
    cipher_suites: Option<Vec<CipherSuite>>,
    curve_preferences: Option<Vec<Curve>>,
    min_version: Option<TlsVersion>,
    max_version: Option<TlsVersion>,
    prefer_server_cipher_suites: Option<bool>,
    client_allowed_sans: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHttp {
    http2: Option<bool>,
    headers: Option<StrictMap>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRateLimit {
    burst: Option<u32>,
    interval: Option<String>,
}

/// A string → string map that refuses a key given twice (yaml.v2's UnmarshalStrict does).
#[derive(Debug, Default)]
struct StrictMap(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for StrictMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrictMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_unit<E: de::Error>(self) -> Result<StrictMap, E> {
                Ok(StrictMap::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StrictMap, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, Option<String>>()? {
                    if out.contains_key(&k) {
                        return Err(de::Error::custom(format!("key {k:?} is given twice")));
                    }
                    out.insert(k, v.unwrap_or_default());
                }
                Ok(StrictMap(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// Largest configuration file accepted.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;

/// Read and check the file. The error is one line: the file, what is wrong and where.
pub fn load(path: &Path) -> Result<WebConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading --web.config.file {}", path.display()))?;
    // The YAML parser slows down quadratically with nesting depth (found by fuzzing); a real
    // configuration is a few hundred bytes.
    if text.len() > MAX_CONFIG_BYTES {
        bail!("--web.config.file {}: {} bytes, more than the {MAX_CONFIG_BYTES} allowed", path.display(), text.len());
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    parse(&text, dir).with_context(|| format!("--web.config.file {}", path.display()))
}

/// Parse the YAML of a configuration; relative file names are joined to `dir`.
pub fn parse(text: &str, dir: &Path) -> Result<WebConfig> {
    // An empty file (or one with comments only) is an empty configuration, as in Go.
    let raw: RawConfig = match serde_norway::from_str::<RawConfig>(text) {
        Ok(raw) => raw,
        Err(err) => {
            let mut text = one_line(&err.to_string());
            // The error at the very start of the document comes without its place.
            if let Some(at) = err.location().filter(|_| !text.contains(" at line ")) {
                text = format!("{text} at line {} column {}", at.line(), at.column());
            }
            bail!("{text}")
        }
    };
    let mut config = WebConfig::default();

    if let Some(users) = raw.basic_auth_users {
        for (user, hash) in users.0 {
            if let Err(err) = hash.parse::<bcrypt::HashParts>() {
                bail!("basic_auth_users: the password of {user:?} is not a bcrypt hash ({err})");
            }
            config.users.insert(user, hash);
        }
    }

    let http = raw.http_server_config.unwrap_or_default();
    for (name, value) in http.headers.unwrap_or_default().0 {
        let Some((_, allowed)) = EXTRA_HEADERS.iter().find(|(n, _)| *n == name) else {
            bail!("http_server_config: HTTP header {name:?} can not be configured");
        };
        if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
            bail!("http_server_config: invalid value for {name}. Expected one of: {allowed:?}, but got: {value:?}");
        }
        let value = HeaderValue::from_str(&value)
            .with_context(|| format!("http_server_config: header {name}: value {value:?} is not a valid header value"))?;
        let name = HeaderName::from_bytes(name.as_bytes()).with_context(|| format!("http_server_config: header {name:?}"))?;
        config.headers.push((name, value));
    }

    if let Some(rl) = raw.rate_limit {
        let interval = match rl.interval.as_deref() {
            None | Some("") => Duration::ZERO,
            Some(text) => parse_duration(text).map_err(|e| anyhow::anyhow!("rate_limit: interval: {e}"))?,
        };
        if !interval.is_zero() {
            let burst = rl.burst.unwrap_or(0);
            if burst == 0 {
                bail!("rate_limit: burst must be at least 1 when interval is set");
            }
            config.rate_limit = Some(RateLimit { interval, burst });
        }
    }

    if let Some(tls) = raw.tls_server_config {
        config.tls = tls_settings(tls, dir)?;
    }
    Ok(config)
}

fn tls_settings(raw: RawTls, dir: &Path) -> Result<Option<TlsSettings>> {
    let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty());
    let cert = pem(nonempty(raw.cert_file), nonempty(raw.cert), dir);
    let key = pem(nonempty(raw.key_file), nonempty(raw.key), dir);
    let client_ca = pem(nonempty(raw.client_ca_file), nonempty(raw.client_ca), dir);
    if raw.client_allowed_sans.is_some_and(|s| !s.is_empty()) {
        bail!("tls_server_config: client_allowed_sans is not supported by apptheus (use a client CA of its own for the allowed clients)");
    }
    // exporter-toolkit's IsEnabled: any of these turns TLS on.
    if cert.is_none() && key.is_none() && client_ca.is_none() && raw.client_auth_type.is_none() {
        return Ok(None);
    }
    let Some(cert) = cert else { bail!("tls_server_config: missing one of cert or cert_file") };
    let Some(key) = key else { bail!("tls_server_config: missing one of key or key_file") };
    let client_auth = raw.client_auth_type.unwrap_or_default();
    match (client_auth, &client_ca) {
        (ClientAuth::NoClientCert, Some(_)) => {
            bail!("tls_server_config: client CA's have been configured without a Client Auth Policy")
        }
        (ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert, None) => {
            bail!("tls_server_config: client_auth_type {client_auth:?} needs client_ca_file or client_ca")
        }
        _ => {}
    }
    let min_version = raw.min_version.unwrap_or(TlsVersion::Tls12);
    let max_version = raw.max_version.unwrap_or(TlsVersion::Tls13);
    if max_version < TlsVersion::Tls12 {
        bail!("tls_server_config: max_version {max_version:?} is not supported (TLS 1.2 and 1.3 only)");
    }
    if min_version > max_version {
        bail!("tls_server_config: min_version {min_version:?} is above max_version {max_version:?}");
    }
    Ok(Some(TlsSettings {
        cert,
        key,
        client_ca,
        client_auth,
        min_version,
        max_version,
        cipher_suites: raw.cipher_suites.unwrap_or_default(),
        curves: raw.curve_preferences.unwrap_or_default(),
        prefer_server_cipher_suites: raw.prefer_server_cipher_suites.unwrap_or(true),
    }))
}

fn pem(file: Option<String>, inline: Option<String>, dir: &Path) -> Option<Pem> {
    match (file, inline) {
        (Some(f), _) => Some(Pem::File(dir.join(f))),
        (None, Some(text)) => Some(Pem::Inline(text)),
        (None, None) => None,
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";

    fn err(text: &str) -> String {
        format!("{:#}", parse(text, Path::new("/etc/apptheus")).unwrap_err())
    }

    #[test]
    fn empty_means_nothing_configured() {
        for text in ["", "# comment only\n", "{}", "tls_server_config:\nbasic_auth_users:\n"] {
            let c = parse(text, Path::new("/d")).unwrap();
            assert!(c.tls.is_none() && c.users.is_empty() && c.headers.is_empty() && c.rate_limit.is_none(), "{text:?}");
        }
    }

    #[test]
    fn full_config_with_relative_paths() {
        let text = format!(
            "tls_server_config:\n  cert_file: tls/server.crt\n  key_file: /abs/server.key\n  client_auth_type: RequireAndVerifyClientCert\n  \
             client_ca_file: ca.crt\n  min_version: TLS13\n  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]\n  curve_preferences: [X25519]\n\
             http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n    Strict-Transport-Security: max-age=31536000\n\
             rate_limit:\n  interval: 100ms\n  burst: 5\n\
             basic_auth_users:\n  alice: {HASH}\n  bob: '{HASH}'\n"
        );
        let c = parse(&text, Path::new("/etc/apptheus")).unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(tls.cert, Pem::File(PathBuf::from("/etc/apptheus/tls/server.crt")));
        assert_eq!(tls.key, Pem::File(PathBuf::from("/abs/server.key")));
        assert_eq!(tls.client_ca, Some(Pem::File(PathBuf::from("/etc/apptheus/ca.crt"))));
        assert_eq!(tls.client_auth, ClientAuth::RequireAndVerifyClientCert);
        assert_eq!((tls.min_version, tls.max_version), (TlsVersion::Tls13, TlsVersion::Tls13));
        assert_eq!(tls.cipher_suites, vec![CipherSuite::RsaAes128Gcm]);
        assert_eq!(tls.curves, vec![Curve::X25519]);
        assert_eq!(c.users.len(), 2);
        assert_eq!(c.headers.len(), 2);
        assert_eq!(c.rate_limit, Some(RateLimit { interval: Duration::from_millis(100), burst: 5 }));
    }

    #[test]
    fn inline_pem_and_old_client_auth_name() {
        let c = parse("tls_server_config:\n  cert: |\n    -----BEGIN CERTIFICATE-----\n  key: k\n  client_auth_type: RequireClientCert\n", Path::new("/d"))
            .unwrap();
        let tls = c.tls.unwrap();
        assert!(matches!(tls.cert, Pem::Inline(ref t) if t.starts_with("-----BEGIN")));
        assert_eq!(tls.client_auth, ClientAuth::RequireAnyClientCert);
        assert_eq!(format!("{:?}", tls.key), "Inline(<secret>)");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_line() {
        let e = err("tls_server_config:\n  cert_file: a\n  key_file: b\n  bogus: 1\n");
        assert!(e.contains("unknown field `bogus`") && e.contains("line 4"), "{e}");
        let e = err("basic_auth_user:\n  a: b\n");
        assert!(e.contains("unknown field `basic_auth_user`") && e.contains("line 1"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn yaml_syntax_errors_carry_the_line() {
        let e = err("tls_server_config:\n  cert_file: a\n key_file: [b\n");
        assert!(e.contains("line 3"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(err("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: Maybe\n").contains("unknown variant `Maybe`"));
        assert!(err("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS14\n").contains("line 4"));
        assert!(err("tls_server_config:\n  cert_file: a\n").contains("missing one of key or key_file"));
        assert!(err("tls_server_config:\n  key_file: a\n").contains("missing one of cert or cert_file"));
        assert!(err("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: c\n").contains("without a Client Auth Policy"));
        assert!(err("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: VerifyClientCertIfGiven\n").contains("needs client_ca_file"));
        assert!(err("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS13\n  max_version: TLS12\n").contains("above max_version"));
        assert!(err("tls_server_config:\n  cert_file: a\n  key_file: b\n  max_version: TLS11\n").contains("not supported"));
        assert!(err("tls_server_config:\n  cert_file: a\n  key_file: b\n  curve_preferences: [CurveP521]\n").contains("CurveP521"));
        assert!(err("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n").contains("unknown variant"));
        assert!(err("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_allowed_sans: [x]\n").contains("client_allowed_sans is not supported"));
        assert!(err("basic_auth_users:\n  alice: plaintext\n").contains("not a bcrypt hash"));
        assert!(!err("basic_auth_users:\n  alice: plaintext\n").contains("plaintext"), "the secret is not echoed");
        let dup = err(&format!("basic_auth_users:\n  alice: {HASH}\n  alice: {HASH}\n"));
        assert!(dup.contains("given twice") || dup.contains("duplicate"), "{dup}");
        assert!(err("http_server_config:\n  headers:\n    Content-Type: text/html\n").contains("can not be configured"));
        assert!(err("http_server_config:\n  headers:\n    X-Frame-Options: allow\n").contains("Expected one of"));
        assert!(err("rate_limit:\n  interval: 1s\n").contains("burst"));
        assert!(err("rate_limit:\n  interval: 1x\n  burst: 1\n").contains("interval"));
        assert!(err("tls_server_config: 3\n").contains("line 1"));
    }

    #[test]
    fn old_tls_minimum_means_tls12() {
        let c = parse("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS10\n", Path::new("/d")).unwrap();
        assert_eq!(c.tls.unwrap().min_version, TlsVersion::Tls10);
    }
}
