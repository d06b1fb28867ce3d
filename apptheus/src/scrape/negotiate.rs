//! Content negotiation on the metrics path, as Prometheus' `expfmt.NegotiateIncludingOpenMetrics`
//! does it: the `Accept` entries are taken by falling q-value (then specificity); the first one
//! naming a format we write wins, and the text format 0.0.4 is the fallback. `Accept-Encoding`
//! decides gzip.
//!
//! Deviation from Go, on purpose: an entry with `q=0` means "not acceptable" (RFC 9110) and is
//! skipped; goautoneg keeps it at the end of the list.

/// `text/plain; version=0.0.4`, exactly what the prometheus crate's text encoder announces.
pub const TEXT: &str = "text/plain; version=0.0.4";
pub const OPENMETRICS_1_0_0: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const OPENMETRICS_0_0_1: &str = "application/openmetrics-text; version=0.0.1; charset=utf-8";
pub const PROTOBUF: &str = "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text format 0.0.4.
    Text,
    /// OpenMetrics text; `V1` for `version=1.0.0`, `V0` for `0.0.1` or no version (same body).
    OpenMetrics(OpenMetricsVersion),
    /// Length-delimited `io.prometheus.client.MetricFamily` messages.
    Protobuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMetricsVersion {
    V0,
    V1,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => TEXT,
            Format::OpenMetrics(OpenMetricsVersion::V1) => OPENMETRICS_1_0_0,
            Format::OpenMetrics(OpenMetricsVersion::V0) => OPENMETRICS_0_0_1,
            Format::Protobuf => PROTOBUF,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::OpenMetrics(_) => "openmetrics",
            Format::Protobuf => "protobuf",
        }
    }
}

/// One media range of an `Accept` header.
#[derive(Debug, PartialEq)]
struct MediaRange<'a> {
    kind: &'a str,
    subtype: &'a str,
    q: f32,
    params: Vec<(String, &'a str)>,
}

impl MediaRange<'_> {
    fn param(&self, name: &str) -> &str {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| *v).unwrap_or("")
    }

    fn is(&self, kind: &str, subtype: &str) -> bool {
        self.kind.eq_ignore_ascii_case(kind) && self.subtype.eq_ignore_ascii_case(subtype)
    }

    /// Wildcards sort after concrete types of the same q (goautoneg's order).
    fn specificity(&self) -> u8 {
        u8::from(self.kind != "*") + u8::from(self.subtype != "*")
    }
}

/// Parse an `Accept` header into media ranges, best first. Malformed entries are ignored.
fn parse_accept(header: &str) -> Vec<MediaRange<'_>> {
    let mut out = Vec::new();
    for entry in header.split(',') {
        let mut parts = entry.split(';');
        let Some((kind, subtype)) = parts.next().map(str::trim).and_then(|t| t.split_once('/')) else { continue };
        let (kind, subtype) = (kind.trim(), subtype.trim());
        if kind.is_empty() || subtype.is_empty() {
            continue;
        }
        let mut q = 1.0f32;
        let mut params = Vec::new();
        for p in parts {
            let Some((k, v)) = p.split_once('=') else { continue };
            let k = k.trim().to_ascii_lowercase();
            let v = v.trim().trim_matches('"');
            if k == "q" {
                q = v.parse::<f32>().ok().filter(|q| q.is_finite()).unwrap_or(0.0).clamp(0.0, 1.0);
            } else {
                params.push((k, v));
            }
        }
        out.push(MediaRange { kind, subtype, q, params });
    }
    // Stable: equal entries keep the client's order.
    out.sort_by(|a, b| b.q.total_cmp(&a.q).then(b.specificity().cmp(&a.specificity())));
    out
}

/// The format to answer an `Accept` header with.
pub fn negotiate(accept: Option<&str>) -> Format {
    for range in parse_accept(accept.unwrap_or("")) {
        if range.q <= 0.0 {
            continue;
        }
        let version = range.param("version");
        if range.is("application", "vnd.google.protobuf")
            && range.param("proto") == "io.prometheus.client.MetricFamily"
            && range.param("encoding") == "delimited"
        {
            // The text and compact-text protobuf encodings are deprecated and not offered.
            return Format::Protobuf;
        }
        if range.is("text", "plain") && (version.is_empty() || version == "0.0.4") {
            return Format::Text;
        }
        if range.is("application", "openmetrics-text") {
            match version {
                "1.0.0" => return Format::OpenMetrics(OpenMetricsVersion::V1),
                "" | "0.0.1" => return Format::OpenMetrics(OpenMetricsVersion::V0),
                _ => {}
            }
        }
    }
    Format::Text
}

/// Whether `Accept-Encoding` accepts gzip (`gzip` or `x-gzip` with q > 0, or `*` with q > 0 when
/// gzip is not refused explicitly).
pub fn wants_gzip(accept_encoding: Option<&str>) -> bool {
    let mut star = false;
    for entry in accept_encoding.unwrap_or("").split(',') {
        let mut parts = entry.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map(|(_, v)| v.trim().parse::<f32>().unwrap_or(0.0))
            .unwrap_or(1.0);
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            return q > 0.0;
        }
        if coding == "*" {
            star = q > 0.0;
        }
    }
    star
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROTO: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited";

    #[test]
    fn default_and_plain_text() {
        assert_eq!(negotiate(None), Format::Text);
        assert_eq!(negotiate(Some("")), Format::Text);
        assert_eq!(negotiate(Some("*/*")), Format::Text);
        assert_eq!(negotiate(Some("text/plain")), Format::Text);
        assert_eq!(negotiate(Some("text/plain; version=0.0.4")), Format::Text);
        assert_eq!(negotiate(Some("text/html")), Format::Text);
        assert_eq!(negotiate(Some("garbage;;;,,/")), Format::Text);
    }

    #[test]
    fn openmetrics_versions() {
        let v1 = Format::OpenMetrics(OpenMetricsVersion::V1);
        let v0 = Format::OpenMetrics(OpenMetricsVersion::V0);
        assert_eq!(negotiate(Some("application/openmetrics-text; version=1.0.0")), v1);
        assert_eq!(negotiate(Some("application/openmetrics-text;version=0.0.1")), v0);
        assert_eq!(negotiate(Some("application/openmetrics-text")), v0);
        assert_eq!(negotiate(Some("application/openmetrics-text; version=9.9.9")), Format::Text);
        assert_eq!(v1.content_type(), "application/openmetrics-text; version=1.0.0; charset=utf-8");
    }

    #[test]
    fn protobuf_needs_proto_and_delimited() {
        assert_eq!(negotiate(Some(PROTO)), Format::Protobuf);
        assert_eq!(negotiate(Some("application/vnd.google.protobuf")), Format::Text);
        assert_eq!(
            negotiate(Some("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text")),
            Format::Text
        );
    }

    #[test]
    fn q_values_order_the_choices() {
        // Prometheus 2.x default header: OpenMetrics first.
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(negotiate(Some(prom)), Format::OpenMetrics(OpenMetricsVersion::V1));
        // Prometheus with protobuf first.
        let proto_first = format!("{PROTO};q=0.8,application/openmetrics-text;version=1.0.0;q=0.7,text/plain;version=0.0.4;q=0.6,*/*;q=0.5");
        assert_eq!(negotiate(Some(&proto_first)), Format::Protobuf);
        // Order in the header does not matter, q does.
        let reordered = format!("text/plain;q=0.2, {PROTO};q=0.9");
        assert_eq!(negotiate(Some(&reordered)), Format::Protobuf);
        // q=0: refused.
        assert_eq!(negotiate(Some(&format!("{PROTO};q=0, application/openmetrics-text;version=1.0.0;q=0.1"))),
            Format::OpenMetrics(OpenMetricsVersion::V1));
        // Equal q: header order.
        assert_eq!(negotiate(Some(&format!("text/plain, {PROTO}"))), Format::Text);
        // A concrete type beats a wildcard of equal q.
        assert_eq!(negotiate(Some("*/*, application/openmetrics-text; version=1.0.0")), Format::OpenMetrics(OpenMetricsVersion::V1));
    }

    #[test]
    fn gzip() {
        assert!(!wants_gzip(None));
        assert!(wants_gzip(Some("gzip")));
        assert!(wants_gzip(Some("deflate, gzip;q=0.5")));
        assert!(wants_gzip(Some("GZIP")));
        assert!(!wants_gzip(Some("gzip;q=0")));
        assert!(!wants_gzip(Some("identity")));
        assert!(wants_gzip(Some("*")));
        assert!(!wants_gzip(Some("*, gzip;q=0")));
        assert!(!wants_gzip(Some("gzipx")));
    }
}
