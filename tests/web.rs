//! The web endpoint end to end, on the real agent binary: TLS and basic auth (curl and a real
//! Prometheus), client certificates, each content type asked for explicitly (text, OpenMetrics,
//! protobuf, gzip) and checked strictly, a real Prometheus scraping in protobuf, route prefix,
//! health and landing pages, methods, request limits, configuration reload, and a bad
//! `--web.config.file` refusing the start with the YAML error and its line.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::prom_server::Prometheus;
use common::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A certificate authority, a server certificate for 127.0.0.1/localhost signed by it, and a
/// client certificate signed by it, made with the openssl CLI in `dir`.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn make(dir: &Path, test: &str) -> Option<Pki> {
        let openssl = tool("openssl", test)?;
        let run = |args: &[&str]| {
            let out = Command::new(&openssl).args(args).current_dir(dir).output().expect("openssl");
            assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let req = |name: &str, subject: &str| {
            let mut a = vec!["req", "-new"];
            a.extend(ec);
            let key = format!("{name}.key");
            let csr = format!("{name}.csr");
            a.extend(["-keyout", &key, "-out", &csr, "-subj", subject]);
            run(&a);
        };
        let mut ca = vec!["req", "-x509", "-days", "2"];
        ca.extend(ec);
        ca.extend(["-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=apptheus test CA"]);
        run(&ca);
        std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for (name, subject) in [("server", "/CN=localhost"), ("client", "/CN=prometheus")] {
            req(name, subject);
            let (csr, crt, ext) = (format!("{name}.csr"), format!("{name}.crt"), format!("{name}.ext"));
            run(&[
                "x509", "-req", "-in", &csr, "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-out", &crt,
                "-extfile", &ext,
            ]);
        }
        // A client certificate from nobody the agent trusts.
        let mut rogue = vec!["req", "-x509", "-days", "2"];
        rogue.extend(ec);
        rogue.extend(["-keyout", "rogue.key", "-out", "rogue.crt", "-subj", "/CN=rogue"]);
        run(&rogue);
        Some(Pki { dir: dir.to_path_buf() })
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// A bcrypt hash (cost 10, what htpasswd -B gives) made with the agent's own bcrypt crate.
fn bcrypt_hash(password: &str) -> String {
    bcrypt::hash(password, 10).unwrap()
}

/// A reply read off the wire: status, headers (lower-case names), raw body.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }

    /// The body, gunzipped when `Content-Encoding: gzip`.
    fn decoded(&self) -> Vec<u8> {
        if self.header("content-encoding") == Some("gzip") {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&self.body[..]).read_to_end(&mut out).expect("gunzip");
            out
        } else {
            self.body.clone()
        }
    }
}

fn parse_head(head: &str) -> (u16, Vec<(String, String)>) {
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

/// A plain HTTP/1.0 request on loopback, binary-safe.
fn raw(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut data = Vec::new();
    s.read_to_end(&mut data).unwrap();
    let split = data.windows(4).position(|w| w == b"\r\n\r\n").expect("no end of head");
    let (status, headers) = parse_head(&String::from_utf8_lossy(&data[..split]));
    Reply { status, headers, body: data[split + 4..].to_vec() }
}

/// curl with `args` (the URL among them); None when curl could not connect or the handshake
/// failed (with curl's exit code).
fn curl(args: &[&str]) -> Result<Reply, i32> {
    let dir = tempfile::tempdir().unwrap();
    let (head, body) = (dir.path().join("head"), dir.path().join("body"));
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-D"])
        .arg(&head)
        .arg("-o")
        .arg(&body)
        .args(args)
        .output()
        .expect("curl");
    if !out.status.success() {
        return Err(out.status.code().unwrap_or(-1));
    }
    let head = std::fs::read_to_string(&head).unwrap();
    // The last response's head (after any 100 Continue).
    let last = head.trim_end().rsplit("\r\n\r\n").next().unwrap_or("").to_string();
    let (status, headers) = parse_head(&last);
    Ok(Reply { status, headers, body: std::fs::read(&body).unwrap_or_default() })
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("web.yml");
    // Write then rename: a new inode, as editors and config management do.
    let tmp = dir.join("web.yml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// An agent with `--web.config.file` and any more flags, and a container running `sleep 60`.
fn agent_with(config: Option<&Path>, extra: &[&str]) -> (Agent, String) {
    let mut flags: Vec<String> = config.iter().map(|c| format!("--web.config.file={}", c.display())).collect();
    flags.extend(extra.iter().map(|s| s.to_string()));
    let mut agent = Agent::start_with(AgentOptions { extra: flags, ..Default::default() });
    // Killed by pid when the agent is dropped.
    let id = id_of(&agent.exec(&["sleep", "60"]));
    (agent, id)
}

fn prometheus_version(binary: &Path) -> (u32, u32) {
    let out = Command::new(binary).arg("--version").output().expect("prometheus --version");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let v = text.split("version ").nth(1).unwrap_or("0.0").split(['.', '+', ' ']).take(2).map(|n| n.parse().unwrap_or(0)).collect::<Vec<u32>>();
    (v[0], v.get(1).copied().unwrap_or(0))
}

/// Formats the agent logged for the scrapes Prometheus made (`served a scrape format=...`).
fn served_formats(agent: &Agent) -> BTreeSet<String> {
    agent
        .log_text()
        .lines()
        .filter(|l| l.contains("served a scrape") && l.contains("Prometheus/"))
        .filter_map(|l| l.split("format=").nth(1)?.split(' ').next().map(str::to_string))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A strict OpenMetrics 1.0 checker (promtool reads only the text format 0.0.4)
// ---------------------------------------------------------------------------------------------

type Sample = (String, BTreeMap<String, String>, f64);

fn valid_metric_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn valid_label_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_') && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

fn om_float(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        t if t.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-')) => {
            t.parse().map_err(|_| format!("bad number {t:?}"))
        }
        t => Err(format!("bad number {t:?}")),
    }
}

/// Parse `name{labels} value [timestamp]` with OpenMetrics escaping.
fn om_sample(line: &str) -> Result<(Sample, Option<f64>), String> {
    let name_end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..name_end];
    if !valid_metric_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        let end;
        loop {
            // label name
            let start = chars.peek().map(|(i, _)| *i).ok_or("unterminated labels")?;
            if after[start..].starts_with('}') {
                end = start + 1;
                break;
            }
            let eq = after[start..].find("=\"").ok_or("label without =\"")? + start;
            let lname = &after[start..eq];
            if !valid_label_name(lname) {
                return Err(format!("bad label name {lname:?}"));
            }
            while chars.peek().is_some_and(|(i, _)| *i < eq + 2) {
                chars.next();
            }
            let mut value = String::new();
            loop {
                let (_, c) = chars.next().ok_or("unterminated label value")?;
                match c {
                    '\\' => match chars.next().ok_or("dangling escape")?.1 {
                        'n' => value.push('\n'),
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        other => return Err(format!("bad escape \\{other}")),
                    },
                    '"' => break,
                    '\n' => return Err("newline in label value".into()),
                    c => value.push(c),
                }
            }
            if labels.insert(lname.to_string(), value).is_some() {
                return Err(format!("label {lname} twice"));
            }
            match chars.next().ok_or("unterminated labels")? {
                (_, ',') => {}
                (i, '}') => {
                    end = i + 1;
                    break;
                }
                (_, c) => return Err(format!("unexpected {c:?} after a label")),
            }
        }
        rest = &after[end..];
    }
    let rest = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let mut parts = rest.split(' ');
    let value = om_float(parts.next().ok_or("no value")?)?;
    let ts = parts.next().map(om_float).transpose()?;
    if parts.next().is_some() {
        return Err("trailing fields (exemplars are not expected)".into());
    }
    Ok(((name.to_string(), labels, value), ts))
}

/// Of one histogram series: (le, cumulative count) of its buckets, its _count, whether _sum came.
type HistogramSeen = (Vec<(f64, f64)>, Option<f64>, bool);

/// Check an OpenMetrics exposition the way the spec (and Prometheus' parser) does, and return
/// its samples.
fn check_openmetrics(text: &str) -> Result<Vec<Sample>, String> {
    let body = text.strip_suffix("# EOF\n").ok_or("does not end with \"# EOF\\n\"")?;
    let mut samples = Vec::new();
    let mut families_seen = BTreeSet::new();
    let mut family: Option<(String, String)> = None; // (name, type)
    let mut help_seen = false;
    let mut type_seen = false;
    let mut started = false;
    // Per family and label set (without le): histogram buckets and counts.
    let mut hist: BTreeMap<String, HistogramSeen> = BTreeMap::new();
    let mut series_seen = BTreeSet::new();
    let finish_family = |hist: &mut BTreeMap<String, HistogramSeen>| -> Result<(), String> {
        for (key, (buckets, count, has_sum)) in std::mem::take(hist) {
            let last = buckets.last().ok_or(format!("{key}: no buckets"))?;
            if last.0 != f64::INFINITY {
                return Err(format!("{key}: no +Inf bucket"));
            }
            if buckets.windows(2).any(|w| w[0].0 >= w[1].0 || w[0].1 > w[1].1) {
                return Err(format!("{key}: buckets not ascending and cumulative"));
            }
            if count != Some(last.1) {
                return Err(format!("{key}: _count {count:?} differs from the +Inf bucket {}", last.1));
            }
            if !has_sum {
                return Err(format!("{key}: no _sum"));
            }
        }
        Ok(())
    };
    for (n, line) in body.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            return Err(at("empty line".into()));
        }
        if line == "# EOF" {
            return Err(at("# EOF before the end".into()));
        }
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let arg = parts.next();
            if !valid_metric_name(name) {
                return Err(at(format!("bad family name {name:?}")));
            }
            let same = family.as_ref().is_some_and(|(f, _)| f == name);
            if !same {
                finish_family(&mut hist).map_err(at)?;
                if !families_seen.insert(name.to_string()) {
                    return Err(at(format!("family {name} appears twice")));
                }
                family = Some((name.to_string(), "unknown".into()));
                help_seen = false;
                type_seen = false;
                started = false;
            }
            if started {
                return Err(at("metadata after samples".into()));
            }
            match kind {
                "HELP" => {
                    if help_seen {
                        return Err(at("second HELP".into()));
                    }
                    help_seen = true;
                    let help = arg.unwrap_or("");
                    let mut chars = help.chars();
                    while let Some(c) = chars.next() {
                        if c == '\\' && !matches!(chars.next(), Some('n' | '\\' | '"')) {
                            return Err(at("bad escape in HELP".into()));
                        }
                    }
                }
                "TYPE" => {
                    if type_seen {
                        return Err(at("second TYPE".into()));
                    }
                    type_seen = true;
                    let t = arg.unwrap_or("");
                    if !["counter", "gauge", "histogram", "gaugehistogram", "stateset", "info", "summary", "unknown"].contains(&t) {
                        return Err(at(format!("bad type {t:?}")));
                    }
                    if let Some(f) = family.as_mut() {
                        f.1 = t.to_string();
                    }
                }
                "UNIT" => {}
                other => return Err(at(format!("unknown metadata {other:?}"))),
            }
            continue;
        }
        if line.starts_with('#') {
            return Err(at("comment lines are not OpenMetrics".into()));
        }
        let ((name, labels, value), _ts) = om_sample(line).map_err(at)?;
        let (fam, kind) = family.clone().ok_or_else(|| at("sample without family".into()))?;
        started = true;
        let suffix = name.strip_prefix(fam.as_str()).ok_or_else(|| at(format!("sample outside family {fam}")))?;
        let allowed: &[&str] = match kind.as_str() {
            "counter" => &["_total", "_created"],
            "gauge" | "unknown" => &[""],
            "histogram" => &["_bucket", "_count", "_sum", "_created"],
            "summary" => &["", "_count", "_sum", "_created"],
            _ => &[""],
        };
        if !allowed.contains(&suffix) {
            return Err(at(format!("{name} is not a sample name of {kind} {fam}")));
        }
        if kind == "counter" && suffix == "_total" && (value.is_nan() || value < 0.0) {
            return Err(at("counter value negative or NaN".into()));
        }
        let mut base = labels.clone();
        let le = base.remove("le");
        if !series_seen.insert((name.clone(), labels.clone())) {
            return Err(at("the same series twice".into()));
        }
        if kind == "histogram" {
            let key = format!("{fam}{base:?}");
            let entry = hist.entry(key).or_insert((Vec::new(), None, false));
            match suffix {
                "_bucket" => {
                    let le = le.ok_or_else(|| at("bucket without le".into()))?;
                    if !(le == "+Inf" || le.contains('.') || le.contains('e')) {
                        return Err(at(format!("le {le:?} is not a canonical float")));
                    }
                    entry.0.push((om_float(&le).map_err(at)?, value));
                }
                "_count" => {
                    if value.fract() != 0.0 || value < 0.0 {
                        return Err(at("_count not a whole number".into()));
                    }
                    entry.1 = Some(value);
                }
                "_sum" => entry.2 = true,
                _ => {}
            }
        }
        samples.push((name, labels, value));
    }
    finish_family(&mut hist).map_err(|e| format!("at the end: {e}"))?;
    Ok(samples)
}

/// Length-delimited `MetricFamily` messages.
fn decode_protobuf(mut body: &[u8]) -> Vec<prometheus::proto::MetricFamily> {
    use protobuf::Message;
    let mut out = Vec::new();
    while !body.is_empty() {
        let (mut len, mut shift, mut i) = (0usize, 0, 0);
        loop {
            let b = body[i];
            len |= ((b & 0x7f) as usize) << shift;
            i += 1;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        out.push(prometheus::proto::MetricFamily::parse_from_bytes(&body[i..i + len]).expect("a MetricFamily"));
        body = &body[i + len..];
    }
    out
}

fn keys(samples: &[Sample]) -> BTreeSet<(String, BTreeMap<String, String>)> {
    samples.iter().map(|(n, l, _)| (n.clone(), l.clone())).collect()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn tls_and_basic_auth_with_curl() {
    let test = "tls_and_basic_auth_with_curl";
    if !privileged(test) {
        return;
    }
    let Some(_) = tool("curl", test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(pki) = Pki::make(dir.path(), test) else { return };
    // Relative names: taken from the config file's directory.
    let config = write_config(
        dir.path(),
        &format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             http_server_config:\n  headers:\n    X-Frame-Options: deny\n    Strict-Transport-Security: max-age=31536000\n\
             basic_auth_users:\n  prometheus: {}\n",
            bcrypt_hash("s3cret")
        ),
    );
    let (agent, id) = agent_with(Some(&config), &[]);
    let url = format!("https://127.0.0.1:{}/metrics", agent.port);
    let ca = pki.path("ca.crt");
    let tls = ["--cacert", ca.as_str()];

    let none = curl(&[&tls[..], &[url.as_str()]].concat()).unwrap();
    assert_eq!(none.status, 401);
    assert_eq!(none.header("www-authenticate"), Some("Basic"));
    assert_eq!(none.header("x-frame-options"), Some("deny"), "configured headers on every answer");
    let wrong = curl(&[&tls[..], &["-u", "prometheus:wrong", url.as_str()]].concat()).unwrap();
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.header("www-authenticate"), Some("Basic"));
    let unknown = curl(&[&tls[..], &["-u", "nobody:s3cret", url.as_str()]].concat()).unwrap();
    assert_eq!(unknown.status, 401);

    let right = wait_for(Duration::from_secs(10), "the container in a TLS scrape", || {
        let r = curl(&[&tls[..], &["-u", "prometheus:s3cret", url.as_str()]].concat()).ok()?;
        assert_eq!(r.status, 200, "{}", r.text());
        Metrics::parse(&r.text()).one("container_memory_usage_bytes", &[("name", &id)]).map(|_| r)
    });
    assert_eq!(right.header("content-type"), Some("text/plain; version=0.0.4"));
    assert_eq!(right.header("strict-transport-security"), Some("max-age=31536000"));
    // The bcrypt result is cached: repeated scrapes with the password stay fast.
    let t = Instant::now();
    for _ in 0..5 {
        assert_eq!(curl(&[&tls[..], &["-u", "prometheus:s3cret", "-H", "Accept-Encoding: gzip", url.as_str()]].concat()).unwrap().status, 200);
    }
    assert!(t.elapsed() < Duration::from_secs(5), "5 authenticated scrapes took {:?}", t.elapsed());
    // Every route needs the password.
    let healthy = format!("https://127.0.0.1:{}/-/healthy", agent.port);
    assert_eq!(curl(&[&tls[..], &[healthy.as_str()]].concat()).unwrap().status, 401);
    assert_eq!(curl(&[&tls[..], &["-u", "prometheus:s3cret", healthy.as_str()]].concat()).unwrap().status, 200);

    // The certificate is verified for real: an unknown CA fails the handshake.
    let rogue = pki.path("rogue.crt");
    assert!(curl(&["--cacert", rogue.as_str(), url.as_str()]).is_err());
    // Plain HTTP on the TLS port gets Go's answer, not a hang.
    let plain = raw(agent.port, "GET", "/metrics", &[]);
    assert_eq!(plain.status, 400);
    assert!(plain.text().contains("HTTP request to an HTTPS server"));

    // A rotated certificate (another CA's) is served from the next connections on, no restart.
    let new_dir = dir.path().join("new");
    std::fs::create_dir(&new_dir).unwrap();
    let new_pki = Pki::make(&new_dir, test).unwrap();
    for f in ["server.key", "server.crt"] {
        std::fs::copy(new_pki.path(f), dir.path().join(format!("{f}.tmp"))).unwrap();
        std::fs::rename(dir.path().join(format!("{f}.tmp")), dir.path().join(f)).unwrap();
    }
    let new_ca = new_pki.path("ca.crt");
    wait_for(Duration::from_secs(10), "the rotated certificate", || {
        curl(&["--cacert", new_ca.as_str(), "-u", "prometheus:s3cret", url.as_str()]).ok().filter(|r| r.status == 200)
    });
    assert!(curl(&[&tls[..], &[url.as_str()]].concat()).is_err(), "the old certificate is still served");
}

#[test]
fn client_certificates_are_required_and_verified() {
    let test = "client_certificates_are_required_and_verified";
    if !privileged(test) {
        return;
    }
    let Some(_) = tool("curl", test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(pki) = Pki::make(dir.path(), test) else { return };
    let config = write_config(
        dir.path(),
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n  \
         client_ca_file: ca.crt\n  min_version: TLS13\n",
    );
    let (agent, _) = agent_with(Some(&config), &[]);
    let url = format!("https://127.0.0.1:{}/metrics", agent.port);
    let (ca, cert, key) = (pki.path("ca.crt"), pki.path("client.crt"), pki.path("client.key"));
    let ok = curl(&["--cacert", &ca, "--cert", &cert, "--key", &key, &url]).unwrap();
    assert_eq!(ok.status, 200);
    assert!(curl(&["--cacert", &ca, &url]).is_err(), "no client certificate");
    let (rc, rk) = (pki.path("rogue.crt"), pki.path("rogue.key"));
    assert!(curl(&["--cacert", &ca, "--cert", &rc, "--key", &rk, &url]).is_err(), "a client certificate of another CA");
    assert!(curl(&["--cacert", &ca, "--cert", &cert, "--key", &key, "--tls-max", "1.2", &url]).is_err(), "min_version TLS13");
}

#[test]
fn a_real_prometheus_scrapes_over_tls_with_basic_auth() {
    let test = "a_real_prometheus_scrapes_over_tls_with_basic_auth";
    if !privileged(test) {
        return;
    }
    let Some(prometheus) = tool("prometheus", test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let Some(pki) = Pki::make(dir.path(), test) else { return };
    let config = write_config(
        dir.path(),
        &format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  prometheus: {}\n", bcrypt_hash("s3cret")),
    );
    let (agent, id) = agent_with(Some(&config), &[]);
    let job = format!(
        "    scheme: https\n    tls_config:\n      ca_file: {}\n    basic_auth:\n      username: prometheus\n      password: s3cret\n    \
         static_configs:\n      - targets: ['127.0.0.1:{}']\n",
        pki.path("ca.crt"),
        agent.port
    );
    let prom = Prometheus::start(&prometheus, &job, &[]);
    prom.wait_for_container(&id);
    // Prometheus asks for OpenMetrics first: its strict parser accepted ours.
    assert!(served_formats(&agent).contains("openmetrics"), "formats served: {:?}", served_formats(&agent));
    assert_eq!(prom.value("up{job=\"apptheus\"}"), Some(1.0));
    // Counters arrive under their full names, histograms with their buckets.
    assert!(prom.value("apptheus_connections_total{result=\"accepted\"}").is_some_and(|v| v >= 1.0));
    assert!(prom.value("apptheus_sample_duration_seconds_bucket{le=\"+Inf\"}").is_some_and(|v| v >= 1.0));

    // A wrong password: the target goes down with 401.
    drop(prom);
    let job_wrong = job.replace("password: s3cret", "password: wrong");
    let prom = Prometheus::start(&prometheus, &job_wrong, &[]);
    wait_for(Duration::from_secs(60), "the target down with 401", || {
        let targets = prom.targets();
        (targets.contains("\"health\":\"down\"") && targets.contains("401")).then_some(())
    });
}

#[test]
fn a_real_prometheus_scrapes_protobuf() {
    let test = "a_real_prometheus_scrapes_protobuf";
    if !privileged(test) {
        return;
    }
    let Some(prometheus) = tool("prometheus", test) else { return };
    let (agent, id) = agent_with(None, &[]);
    let (major, minor) = prometheus_version(&prometheus);
    // Prometheus 2.49+ chooses with scrape_protocols; older ones (Debian 12 has 2.42) ask for
    // protobuf first when native histograms are on.
    let new = (major, minor) >= (2, 49);
    let mut job = String::new();
    if new {
        job.push_str("    scrape_protocols: [PrometheusProto]\n");
    }
    job.push_str(&format!("    static_configs:\n      - targets: ['127.0.0.1:{}']\n", agent.port));
    let flags: &[&str] = if new { &[] } else { &["--enable-feature=native-histograms"] };
    let prom = Prometheus::start(&prometheus, &job, flags);
    prom.wait_for_container(&id);
    let formats = served_formats(&agent);
    assert!(formats.contains("protobuf"), "formats served: {formats:?}");
    assert!(!formats.contains("openmetrics") && !formats.contains("text"), "formats served: {formats:?}");
    assert!(prom.value(&format!("container_cpu_usage_seconds_total{{name=\"{id}\",cpu=\"total\"}}")).is_some());
    assert!(prom.value("apptheus_containers").is_some_and(|v| v >= 1.0));
}

#[test]
fn each_content_type_asked_for_explicitly() {
    let test = "each_content_type_asked_for_explicitly";
    if !privileged(test) {
        return;
    }
    let (agent, id) = agent_with(None, &[]);
    let port = agent.port;
    // The container's series are in.
    wait_for(Duration::from_secs(10), "container series", || agent.scrape().one("container_cpu_usage_seconds_total", &[("name", &id), ("cpu", "total")]));
    const OM: &str = "application/openmetrics-text; version=1.0.0";
    const PB: &str = "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

    for gzip in [false, true] {
        let enc: &[(&str, &str)] = if gzip { &[("Accept-Encoding", "gzip")] } else { &[] };
        let get = |accept: Option<&str>| {
            let mut h = enc.to_vec();
            if let Some(a) = accept {
                h.push(("Accept", a));
            }
            let r = raw(port, "GET", "/metrics", &h);
            assert_eq!(r.status, 200);
            assert_eq!(r.header("content-encoding"), gzip.then_some("gzip"), "gzip={gzip} accept={accept:?}");
            r
        };

        // Text 0.0.4: the default, and when asked for.
        for accept in [None, Some("text/plain; version=0.0.4"), Some("text/plain")] {
            let r = get(accept);
            assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4"));
            let text = String::from_utf8(r.decoded()).unwrap();
            assert!(text.contains("# TYPE container_cpu_usage_seconds_total counter"), "{accept:?}");
        }
        let text = String::from_utf8(get(Some("text/plain")).decoded()).unwrap();
        let text_samples = Metrics::parse(&text).samples;

        // OpenMetrics 1.0.0, strictly checked, the same series as the text format.
        let r = get(Some(OM));
        assert_eq!(r.header("content-type"), Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
        let om = String::from_utf8(r.decoded()).unwrap();
        let om_samples = check_openmetrics(&om).unwrap_or_else(|e| panic!("OpenMetrics: {e}\n{om}"));
        assert!(om.contains("# TYPE container_cpu_usage_seconds counter\n"), "counter family without _total");
        assert!(om.contains("container_cpu_usage_seconds_total{"), "counter samples with _total");
        assert!(om.contains("# TYPE apptheus_sample_duration_seconds histogram\n"));
        let without_le = |s: &[Sample]| {
            keys(s)
                .into_iter()
                .map(|(n, mut l)| {
                    l.remove("le");
                    (n, l)
                })
                .collect::<BTreeSet<_>>()
        };
        let (t, o) = (without_le(&text_samples), without_le(&om_samples));
        // Series may come and go between two scrapes (none should here, but only the agent's
        // and container's stable ones are compared).
        let stable = |k: &&(String, BTreeMap<String, String>)| k.0.starts_with("container_") || k.0.starts_with("apptheus_");
        assert_eq!(t.iter().filter(stable).collect::<Vec<_>>(), o.iter().filter(stable).collect::<Vec<_>>(), "series differ");
        // Older OpenMetrics version and no version: same body, its own content type.
        let r = get(Some("application/openmetrics-text; version=0.0.1"));
        assert_eq!(r.header("content-type"), Some("application/openmetrics-text; version=0.0.1; charset=utf-8"));
        check_openmetrics(&String::from_utf8(r.decoded()).unwrap()).unwrap();

        // Protobuf, delimited.
        let r = get(Some(PB));
        assert_eq!(r.header("content-type"), Some(PB));
        let families = decode_protobuf(&r.decoded());
        let cpu = families.iter().find(|f| f.name() == "container_cpu_usage_seconds_total").expect("container CPU family");
        assert_eq!(cpu.get_field_type(), prometheus::proto::MetricType::COUNTER);
        assert!(cpu.get_metric().iter().any(|m| m.get_label().iter().any(|l| l.name() == "name" && l.value() == id)));
        let hist = families.iter().find(|f| f.name() == "apptheus_sample_duration_seconds").expect("histogram");
        assert_eq!(hist.get_field_type(), prometheus::proto::MetricType::HISTOGRAM);
        let names: BTreeSet<&str> = families.iter().map(|f| f.name()).collect();
        for (n, _, _) in &text_samples {
            let base = ["_bucket", "_sum", "_count"].iter().fold(n.as_str(), |n, s| n.strip_suffix(s).filter(|b| names.contains(b)).unwrap_or(n));
            assert!(names.contains(base), "{n} missing from the protobuf families");
        }

        // q-values decide, as Prometheus' Negotiate does.
        let r = get(Some(&format!("text/plain;q=0.5, {PB};q=0.9, {OM};q=0.7")));
        assert_eq!(r.header("content-type"), Some(PB));
        let r = get(Some(&format!("{PB};q=0, {OM};q=0.2, text/plain;q=0.1")));
        assert_eq!(r.header("content-type"), Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
        let r = get(Some("application/json"));
        assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4"), "unknown types fall back to text");
    }
    // gzip is really smaller.
    let plain = raw(port, "GET", "/metrics", &[]);
    let gz = raw(port, "GET", "/metrics", &[("Accept-Encoding", "gzip")]);
    assert!(gz.body.len() * 2 < plain.body.len(), "{} vs {}", gz.body.len(), plain.body.len());
}

#[test]
fn a_bad_config_file_refuses_the_start_with_the_yaml_error_and_its_line() {
    let test = "a_bad_config_file_refuses_the_start_with_the_yaml_error_and_its_line";
    if !privileged(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("sub/gw.sock");
    let parent = format!("apptheus-web-never-made-{}", std::process::id());
    let run = |extra: &[String]| {
        let out = Command::new(BIN)
            .arg(format!("--socket.path={}", sock.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{}", free_port()))
            .arg(format!("--cgroup.parent={parent}"))
            .arg("--trust.path=")
            .args(extra)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let hash = bcrypt_hash("x");
    let cases: Vec<(String, &[&str])> = vec![
        // Unknown key, line 4.
        (format!("basic_auth_users:\n  a: {hash}\ntls_server_config:\n  certfile: x.crt\n"), &["unknown field `certfile`", "line 4"]),
        // Unknown top-level key, line 2.
        ("# web\nbasic_auth_user:\n  a: b\n".to_string(), &["unknown field `basic_auth_user`", "line 2"]),
        // Not YAML, line 3.
        ("tls_server_config:\n  cert_file: a\n key_file: [b\n".to_string(), &["line 3"]),
        // A bad value, line 4.
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: Sometimes\n".to_string(), &["unknown variant `Sometimes`", "line 4"]),
        // Valid YAML naming files that are not there.
        ("tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n".to_string(), &["missing.crt"]),
        ("basic_auth_users:\n  a: not-a-hash\n".to_string(), &["bcrypt"]),
        ("http_server_config:\n  headers:\n    Authorization: x\n".to_string(), &["can not be configured"]),
    ];
    for (yaml, expect) in &cases {
        let config = write_config(dir.path(), yaml);
        let (code, err) = run(&[format!("--web.config.file={}", config.display())]);
        assert_ne!(code, Some(0), "{yaml}");
        assert_eq!(err.trim().lines().count(), 1, "one line for {yaml:?}: {err}");
        for e in *expect {
            assert!(err.contains(e), "{yaml:?}: expected {e:?} in {err}");
        }
        assert!(err.contains("web.yml"), "names the file: {err}");
    }
    for (flags, expect) in [
        (vec![format!("--web.config.file={}", dir.path().join("nope.yml").display())], "nope.yml"),
        (vec!["--web.route-prefix=/a/../b".to_string()], "--web.route-prefix"),
        (vec!["--web.external-url=http://h/x/../../y".to_string()], "--web.external-url"),
        (vec!["--web.max-connections=0".to_string()], "max-connections"),
    ] {
        let (code, err) = run(&flags);
        assert_ne!(code, Some(0), "{flags:?}");
        assert_eq!(err.trim().lines().count(), 1, "{flags:?}: {err}");
        assert!(err.contains(expect), "{flags:?}: {err}");
    }
    // Nothing was created.
    assert!(!dir.path().join("sub").exists(), "socket directory made");
    for d in own_cgroup_dirs() {
        assert!(!d.join(&parent).exists(), "cgroup parent made in {}", d.display());
    }
}

#[test]
fn route_prefix_health_ready_landing_page_and_methods() {
    let test = "route_prefix_health_ready_landing_page_and_methods";
    if !privileged(test) {
        return;
    }
    // No prefix: the landing page at /.
    let (agent, _) = agent_with(None, &[]);
    let landing = raw(agent.port, "GET", "/", &[]);
    assert_eq!(landing.status, 200);
    assert_eq!(landing.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(landing.text().contains("<a href=\"/metrics\">"), "{}", landing.text());
    assert_eq!(raw(agent.port, "GET", "/-/healthy", &[]).status, 200);
    assert_eq!(raw(agent.port, "GET", "/-/ready", &[]).status, 200);
    assert_eq!(raw(agent.port, "GET", "/metricsx", &[]).status, 404);
    drop(agent);

    // A prefix given by the flag.
    let (agent, id) = agent_with(None, &["--web.route-prefix=/apptheus/", "--web.telemetry-path=/m"]);
    let p = agent.port;
    let metrics = wait_for(Duration::from_secs(10), "container series under the prefix", || {
        let r = raw(p, "GET", "/apptheus/m", &[]);
        assert_eq!(r.status, 200);
        Metrics::parse(&r.text()).one("container_memory_usage_bytes", &[("name", &id)]).map(|_| r)
    });
    assert_eq!(metrics.header("content-type"), Some("text/plain; version=0.0.4"));
    for path in ["/m", "/metrics", "/apptheus/metrics", "/-/healthy", "/apptheus/m/", "/apptheus/x"] {
        assert_eq!(raw(p, "GET", path, &[]).status, 404, "{path}");
    }
    let healthy = raw(p, "GET", "/apptheus/-/healthy", &[]);
    assert_eq!((healthy.status, healthy.text().contains("Healthy")), (200, true));
    let ready = raw(p, "GET", "/apptheus/-/ready", &[]);
    assert_eq!((ready.status, ready.text().contains("Ready")), (200, true));
    let landing = raw(p, "GET", "/apptheus/", &[]);
    assert_eq!(landing.status, 200);
    assert!(landing.text().contains("<a href=\"/apptheus/m\">"), "{}", landing.text());
    assert_eq!(raw(p, "GET", "/apptheus", &[]).status, 200);
    let root = raw(p, "GET", "/", &[]);
    assert_eq!((root.status, root.header("location")), (302, Some("/apptheus/")));
    // Only GET and HEAD.
    for method in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"] {
        for path in ["/apptheus/m", "/apptheus/-/healthy", "/apptheus/"] {
            let r = raw(p, method, path, &[("Content-Length", "0")]);
            assert_eq!(r.status, 405, "{method} {path}");
            assert_eq!(r.header("allow"), Some("GET, HEAD"), "{method} {path}");
        }
    }
    let head = raw(p, "HEAD", "/apptheus/m", &[]);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert!(head.header("content-length").is_some_and(|l| l.parse::<usize>().unwrap() > 1000));
    drop(agent);

    // The prefix from --web.external-url; links use it.
    let (agent, _) = agent_with(None, &["--web.external-url=https://monitor.example.org/gpu-nodes/apptheus"]);
    assert_eq!(raw(agent.port, "GET", "/gpu-nodes/apptheus/metrics", &[]).status, 200);
    assert_eq!(raw(agent.port, "GET", "/metrics", &[]).status, 404);
    drop(agent);
    // Behind a proxy that strips the path: routes at the root, links with the external path.
    let (agent, _) = agent_with(None, &["--web.external-url=https://monitor.example.org/x/", "--web.route-prefix=/"]);
    assert_eq!(raw(agent.port, "GET", "/metrics", &[]).status, 200);
    assert!(raw(agent.port, "GET", "/", &[]).text().contains("<a href=\"/x/metrics\">"));
}

#[test]
fn request_limits() {
    let test = "request_limits";
    if !privileged(test) {
        return;
    }
    let (agent, _) = agent_with(None, &["--web.request-timeout=3s", "--web.max-connections=3", "--web.max-requests=1"]);
    let p = agent.port;

    // A request head over the limit: 431.
    let big = "x".repeat(20 * 1024);
    assert_eq!(raw(p, "GET", "/metrics", &[("X-Big", &big)]).status, 431);

    // Headers not sent within --web.request-timeout: the connection is closed.
    let mut slow = TcpStream::connect(("127.0.0.1", p)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    assert!(t.elapsed() < Duration::from_secs(8), "slow client held for {:?}", t.elapsed());
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"), "{}", String::from_utf8_lossy(&buf));

    // An idle keep-alive connection is closed after --web.request-timeout too.
    let mut kept = TcpStream::connect(("127.0.0.1", p)).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    kept.write_all(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 4096];
    let n = kept.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    let t = Instant::now();
    let mut rest = Vec::new();
    kept.read_to_end(&mut rest).unwrap();
    assert!(t.elapsed() >= Duration::from_secs(2) && t.elapsed() < Duration::from_secs(8), "idle connection closed after {:?}", t.elapsed());

    // --web.max-connections=3: with 3 idle connections open, a 4th waits until one closes.
    let idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(("127.0.0.1", p)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut fourth = TcpStream::connect(("127.0.0.1", p)).unwrap();
    fourth.write_all(b"GET /-/healthy HTTP/1.0\r\n\r\n").unwrap();
    fourth.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut first = [0u8; 1];
    assert!(fourth.read(&mut first).is_err(), "a 4th connection was served while 3 were open");
    drop(idle);
    fourth.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = Vec::new();
    fourth.read_to_end(&mut answer).unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.0 200"), "{}", String::from_utf8_lossy(&answer));

    // --web.max-requests=1: concurrent scrapes beyond one get 503 at once, never a hang.
    let mut saw_503 = false;
    for _ in 0..20 {
        let handles: Vec<_> = (0..8).map(|_| std::thread::spawn(move || raw(p, "GET", "/metrics", &[]))).collect();
        for h in handles {
            let r = h.join().unwrap();
            match r.status {
                200 => {}
                503 => {
                    assert!(r.text().contains("Limit of concurrent requests reached (1)"), "{}", r.text());
                    saw_503 = true;
                }
                s => panic!("status {s}"),
            }
        }
        if saw_503 {
            break;
        }
    }
    assert!(saw_503, "no scrape was refused with --web.max-requests=1");
}

#[test]
fn rate_limit_and_configuration_reload() {
    let test = "rate_limit_and_configuration_reload";
    if !privileged(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let user = |password: &str| format!("basic_auth_users:\n  prometheus: {}\n", bcrypt_hash(password));
    let config = write_config(dir.path(), &(user("old") + "rate_limit:\n  interval: 1h\n  burst: 3\n"));
    let (agent, _) = agent_with(Some(&config), &[]);
    let p = agent.port;
    let auth = |password: &str| format!("Basic {}", base64_encode(&format!("prometheus:{password}")));
    // Three tokens, and the harness's start-up probe took at least one: some 200s, then 429s.
    let statuses: Vec<u16> = (0..4).map(|_| raw(p, "GET", "/metrics", &[("Authorization", &auth("old"))]).status).collect();
    let first_429 = statuses.iter().position(|s| *s == 429).unwrap_or_else(|| panic!("no 429: {statuses:?}"));
    assert!(statuses[..first_429].iter().all(|s| *s == 200) && statuses[first_429..].iter().all(|s| *s == 429), "{statuses:?}");
    assert!(first_429 <= 2, "{statuses:?}");

    // A new password, no rate limit: in force within a few seconds, no restart.
    write_config(dir.path(), &user("new"));
    wait_for(Duration::from_secs(10), "the new password", || {
        (raw(p, "GET", "/metrics", &[("Authorization", &auth("new"))]).status == 200).then_some(())
    });
    assert_eq!(raw(p, "GET", "/metrics", &[("Authorization", &auth("old"))]).status, 401);
    // A broken new version is refused and logged; the one in force stays.
    write_config(dir.path(), "basic_auth_users: [\n");
    wait_for(Duration::from_secs(10), "the reload error in the log", || {
        // The files are looked at when requests come.
        assert_eq!(raw(p, "GET", "/metrics", &[("Authorization", &auth("new"))]).status, 200);
        agent.log_text().contains("web configuration not reloaded").then_some(())
    });
    assert_eq!(raw(p, "GET", "/metrics", &[("Authorization", &auth("new"))]).status, 200);
}

fn base64_encode(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}
