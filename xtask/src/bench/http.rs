//! A minimal HTTP/1.1 client over one keep-alive TCP connection, as Prometheus scrapes: enough
//! for `Content-Length` and chunked bodies, and timing of one whole exchange.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

pub const ACCEPT_TEXT: &str = "text/plain;version=0.0.4;q=1.0,*/*;q=0.1";
pub const ACCEPT_PROTO: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";

/// The three ways a scrape is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Protobuf,
    Gzip,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Text, Format::Protobuf, Format::Gzip];
    pub fn name(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Protobuf => "protobuf",
            Format::Gzip => "text+gzip",
        }
    }
    pub fn headers(self) -> Vec<(&'static str, &'static str)> {
        match self {
            Format::Text => vec![("Accept", ACCEPT_TEXT)],
            Format::Protobuf => vec![("Accept", ACCEPT_PROTO)],
            Format::Gzip => vec![("Accept", ACCEPT_TEXT), ("Accept-Encoding", "gzip")],
        }
    }
    /// Whether the response is what was asked for.
    pub fn honoured(self, r: &Response) -> bool {
        match self {
            Format::Text => r.header("content-type").is_some_and(|t| t.starts_with("text/plain")) && r.header("content-encoding").is_none(),
            Format::Protobuf => r.header("content-type").is_some_and(|t| t.contains("protobuf")),
            Format::Gzip => r.header("content-encoding").is_some_and(|e| e.eq_ignore_ascii_case("gzip")),
        }
    }
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// From writing the request to reading the last byte of the body.
    pub elapsed: Duration,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub struct Conn {
    port: u16,
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(port: u16) -> Result<Conn> {
        let stream = TcpStream::connect(("127.0.0.1", port)).with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Conn { port, reader: BufReader::with_capacity(256 * 1024, stream) })
    }

    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Response> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: apptheus-bench\r\n", self.port);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method != "GET" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let start = Instant::now();
        let s = self.reader.get_mut();
        s.write_all(req.as_bytes())?;
        if !body.is_empty() {
            s.write_all(body)?;
        }
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        if line.is_empty() {
            bail!("connection closed before a response");
        }
        let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).with_context(|| format!("bad status line {line:?}"))?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let mut out = Vec::new();
        if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                line.clear();
                self.reader.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16).with_context(|| format!("bad chunk size {line:?}"))?;
                if size == 0 {
                    loop {
                        line.clear();
                        self.reader.read_line(&mut line)?;
                        if line.trim().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let at = out.len();
                out.resize(at + size, 0);
                self.reader.read_exact(&mut out[at..])?;
                let mut crlf = [0u8; 2];
                self.reader.read_exact(&mut crlf)?;
            }
        } else if let Some(n) = get("content-length") {
            let n: usize = n.parse().context("bad content-length")?;
            out.resize(n, 0);
            self.reader.read_exact(&mut out)?;
        } else if method != "HEAD" && status != 204 && status != 304 {
            self.reader.read_to_end(&mut out)?;
        }
        let elapsed = start.elapsed();
        Ok(Response { status, headers, body: out, elapsed })
    }

    pub fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
        self.request("GET", path, headers, &[])
    }
}

/// One request on a fresh connection.
pub fn get(port: u16, path: &str) -> Result<Response> {
    Conn::open(port)?.get(path, &[("Accept", ACCEPT_TEXT), ("Connection", "close")])
}

pub fn gunzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data).read_to_end(&mut out).context("gunzip")?;
    Ok(out)
}

/// Number of samples in a text exposition (non-comment, non-blank lines).
pub fn count_series(text: &str) -> usize {
    text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).count()
}

/// Value of the first sample named exactly `name` (no labels) in a text exposition.
pub fn sample_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        let rest = rest.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}
