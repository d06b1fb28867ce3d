//! The scrape: every series the agent exports, in the format the scraper asked for. One
//! concern per file:
//!
//! - [`exposition`]: the container series, written straight from the store;
//! - [`telemetry`]: the agent's own series (`apptheus_*`, `process_*`) in a prometheus registry;
//! - [`negotiate`]: which format and encoding a scraper asked for;
//! - [`openmetrics`]: the OpenMetrics encoder of the registry's families.
//!
//! A body is the registry's families through the prometheus crate's encoders (or ours for
//! OpenMetrics) and the container families, merged in name order, then gzip when asked for.

pub mod exposition;
pub mod negotiate;
pub mod openmetrics;
pub mod telemetry;

use std::io::Write as _;
use std::slice;

use prometheus::{Encoder, ProtobufEncoder, Registry, TextEncoder};

use exposition::{Encoding, Exposition};
use negotiate::Format;

/// Gzip level 1 (flate2's miniz_oxide). Measured on 1000 containers (9.8 MB of text): level 1
/// takes 7 ms for 560 KB, level 2 25 ms for 465 KB, level 6 65 ms for 497 KB. Scrapes cross a
/// LAN: the agent's CPU matters more than a hundred kilobytes.
const GZIP_LEVEL: u32 = 1;

/// The renderer HTTP hands scrapes to: the agent's registry and the container series.
pub struct Scrape {
    pub registry: Registry,
    pub exposition: Exposition,
}

impl Scrape {
    /// Every series of the agent in `format`, gzipped if asked.
    pub fn render(&self, format: Format, gzip: bool) -> anyhow::Result<Vec<u8>> {
        let body = self.encode(format)?;
        // A scrape of thousands of series allocates megabytes for a moment: hand them back.
        crate::support::heap::release_free_memory();
        if !gzip {
            return Ok(body);
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 8), flate2::Compression::new(GZIP_LEVEL));
        gz.write_all(&body)?;
        Ok(gz.finish()?)
    }

    /// The uncompressed body.
    pub fn encode(&self, format: Format) -> anyhow::Result<Vec<u8>> {
        encode_with(&self.registry.gather(), &self.exposition, format)
    }
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
