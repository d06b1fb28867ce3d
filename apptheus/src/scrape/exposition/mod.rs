//! The container series at scrape time, written straight from the store in the encoding asked
//! for: cAdvisor's names, types and units, plus the Go Apptheus legacy series. One concern per
//! file:
//!
//! - `families`: one row per family (name, help, type, unit, group, value getter);
//! - `groups`: the `--metrics.disable` groups;
//! - `series`: the series a container has in a family, from its row;
//! - `text` (text format 0.0.4 and OpenMetrics) and `protobuf`: the writers;
//! - `number`: numbers as the text formats spell them.
//!
//! The bytes are those that building the series as `prometheus` protos, gathering them with the
//! registry's own and encoding the lot gave (the `reference` test module keeps that path and
//! the tests compare against it), without a proto per series, a sort, or a label escaped more
//! than once per container and scrape.

mod families;
mod groups;
pub use groups::{Disabled, Group};
pub(crate) mod number;
mod protobuf;
mod series;
mod text;

#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus::proto::MetricFamily;

use crate::cgroup::DeviceIo;
use crate::store::{Entry, Store};
use families::{Family, MachineTotals};
use text::Dialect;

// Shared with the OpenMetrics encoder of the registry's own families.
pub(crate) use text::{escape, openmetrics_header};

/// The encodings a scrape can be answered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Text format 0.0.4.
    Text,
    OpenMetrics,
    /// Length-delimited `MetricFamily` messages.
    Protobuf,
}

impl Encoding {
    const COUNT: usize = 3;

    fn index(self) -> usize {
        match self {
            Encoding::Text => 0,
            Encoding::OpenMetrics => 1,
            Encoding::Protobuf => 2,
        }
    }
}

/// Every container's series, ready to be written at each scrape.
pub struct Exposition {
    store: Arc<Store>,
    legacy: bool,
    machine: MachineTotals,
    /// The families exported, in name order, with what each encoding writes before the series.
    families: Vec<Prepared>,
    /// `le` label values of the run-queue histogram, per text dialect.
    text_bounds: Vec<Vec<u8>>,
    openmetrics_bounds: Vec<Vec<u8>>,
    /// Body size of the last scrape per encoding: the next body is allocated once at about that
    /// size instead of growing through a dozen copies.
    last_len: [AtomicUsize; Encoding::COUNT],
}

struct Prepared {
    family: &'static Family,
    text_header: Vec<u8>,
    openmetrics_header: Vec<u8>,
    protobuf_header: Vec<u8>,
}

/// One container as a scrape writes it.
struct Row<'a> {
    entry: &'a Entry,
    /// `name`, `id`, `pid`, `user`, then the environment labels, encoded for the scrape's format.
    labels: Vec<u8>,
    /// `job`, `instance` (empty), then the environment labels; empty without legacy series.
    legacy_labels: Vec<u8>,
    /// The sample's devices by name.
    io: Vec<&'a DeviceIo>,
}

impl Exposition {
    pub fn new(store: Arc<Store>, legacy: bool) -> Exposition {
        Exposition::without(store, legacy, &Disabled::default())
    }

    /// The exposition without the families of the `disabled` groups.
    pub fn without(store: Arc<Store>, legacy: bool, disabled: &Disabled) -> Exposition {
        let legacy = legacy && !disabled.has(Group::Legacy);
        let families = families::in_name_order(legacy)
            .into_iter()
            .filter(|family| disabled.exports(family.group))
            .map(|family| Prepared {
                family,
                text_header: text::header(Dialect::Text, family),
                openmetrics_header: text::header(Dialect::OpenMetrics, family),
                protobuf_header: protobuf::header(family),
            })
            .collect();
        Exposition {
            store,
            legacy,
            machine: MachineTotals::read(),
            families,
            text_bounds: text::bucket_bounds(Dialect::Text),
            openmetrics_bounds: text::bucket_bounds(Dialect::OpenMetrics),
            last_len: Default::default(),
        }
    }

    /// Names of the families exported (in name order).
    pub fn family_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.families.iter().map(|p| p.family.name)
    }

    /// The body of a scrape: the registry's families `own` (sorted by name, as `gather` returns
    /// them), each written by `write_own`, and the container families, in name order as one
    /// gather of both would give them.
    pub fn render(
        &self,
        encoding: Encoding,
        own: &[MetricFamily],
        mut write_own: impl FnMut(&MetricFamily, &mut Vec<u8>) -> anyhow::Result<()>,
    ) -> anyhow::Result<Vec<u8>> {
        let entries = self.store.snapshot();
        let rows = self.rows(&entries, encoding);
        let last = self.last_len[encoding.index()].load(Ordering::Relaxed);
        let mut out = Vec::with_capacity(last + last / 8 + 64 * 1024);
        let mut own = own.iter().peekable();
        for p in &self.families {
            let name = p.family.name;
            while let Some(mf) = own.next_if(|mf| mf.name() < name) {
                write_own(mf, &mut out)?;
            }
            let (dialect, header, bounds) = match encoding {
                Encoding::Text => (Dialect::Text, &p.text_header, &self.text_bounds),
                Encoding::OpenMetrics => (Dialect::OpenMetrics, &p.openmetrics_header, &self.openmetrics_bounds),
                Encoding::Protobuf => {
                    protobuf::write_family(&mut out, p.family, &p.protobuf_header, &rows, self.machine);
                    continue;
                }
            };
            let parts = text::Parts { dialect, header, bounds, machine: self.machine };
            text::write_family(&mut out, p.family, &parts, &rows);
        }
        for mf in own {
            write_own(mf, &mut out)?;
        }
        self.last_len[encoding.index()].store(out.len(), Ordering::Relaxed);
        Ok(out)
    }

    /// The containers in the order `Registry::gather` sorted a family's series: by number of
    /// labels (so by number of environment labels), then by label values, the first of which
    /// (`name`, or `job`) is the container's unique id.
    fn rows<'a>(&self, entries: &'a [Entry], encoding: Encoding) -> Vec<Row<'a>> {
        let label: fn(&str, &str, &mut Vec<u8>) = match encoding {
            Encoding::Text | Encoding::OpenMetrics => text::label,
            Encoding::Protobuf => protobuf::label,
        };
        let mut rows: Vec<Row<'a>> = entries
            .iter()
            .map(|entry| {
                let info = &entry.info;
                let mut labels = Vec::with_capacity(256);
                label("name", &info.id, &mut labels);
                label("id", &info.cgroup_path, &mut labels);
                label("pid", itoa::Buffer::new().format(info.pid), &mut labels);
                label("user", &info.user, &mut labels);
                label("image", &info.image, &mut labels);
                let mut legacy_labels = Vec::new();
                if self.legacy {
                    label("job", &info.id, &mut legacy_labels);
                    label("instance", "", &mut legacy_labels);
                }
                for (k, v) in &info.labels {
                    label(k, v, &mut labels);
                    if self.legacy {
                        label(k, v, &mut legacy_labels);
                    }
                }
                Row { entry, labels, legacy_labels, io: series::devices_in_order(entry) }
            })
            .collect();
        rows.sort_by(|a, b| {
            let (a, b) = (&a.entry.info, &b.entry.info);
            a.labels.len().cmp(&b.labels.len()).then_with(|| a.id.cmp(&b.id))
        });
        rows
    }
}
