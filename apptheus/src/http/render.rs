//! The body of a scrape: the registry's own families through the prometheus crate's encoders
//! (or ours for OpenMetrics), the container families written straight from the store, in name
//! order, then gzip when asked for.

use std::io::Write as _;
use std::slice;

use prometheus::{Encoder, ProtobufEncoder, TextEncoder};

use super::negotiate::Format;
use super::openmetrics;
use crate::agent::Agent;
use crate::exposition::{Encoding, Exposition};
use crate::telemetry::Telemetry;

/// Gzip level 1 (flate2's miniz_oxide). Measured on 1000 containers (9.8 MB of text): level 1
/// takes 7 ms for 560 KB, level 2 25 ms for 465 KB, level 6 65 ms for 497 KB. Scrapes cross a
/// LAN: the agent's CPU matters more than a hundred kilobytes.
const GZIP_LEVEL: u32 = 1;

/// Every series of the agent in `format`, gzipped if asked.
pub fn render(agent: &Agent, format: Format, gzip: bool) -> anyhow::Result<Vec<u8>> {
    let body = encode(&agent.telemetry, format)?;
    // A scrape of thousands of series allocates megabytes for a moment: hand them back.
    crate::heap::release_free_memory();
    if !gzip {
        return Ok(body);
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 8), flate2::Compression::new(GZIP_LEVEL));
    gz.write_all(&body)?;
    Ok(gz.finish()?)
}

/// The uncompressed body.
pub fn encode(telemetry: &Telemetry, format: Format) -> anyhow::Result<Vec<u8>> {
    encode_with(&telemetry.registry.gather(), &telemetry.exposition, format)
}

/// `own` (a registry's gathered families) with the container families of `exposition`.
pub fn encode_with(own: &[prometheus::proto::MetricFamily], exposition: &Exposition, format: Format) -> anyhow::Result<Vec<u8>> {
    match format {
        Format::Text => exposition.render(Encoding::Text, own, |mf, out| Ok(TextEncoder::new().encode(slice::from_ref(mf), out)?)),
        Format::Protobuf => {
            exposition.render(Encoding::Protobuf, own, |mf, out| Ok(ProtobufEncoder::new().encode(slice::from_ref(mf), out)?))
        }
        Format::OpenMetrics(_) => {
            let mut body = exposition.render(Encoding::OpenMetrics, own, |mf, out| {
                openmetrics::encode_family(mf, out);
                Ok(())
            })?;
            body.extend_from_slice(openmetrics::EOF);
            Ok(body)
        }
    }
}
