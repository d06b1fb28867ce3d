//! Nested-keyed files: `KEY sub=value sub=value ...` lines (cgroup v2).

use std::fmt;
use std::str::SplitAsciiWhitespace;

use super::{dec_u32, dec_u64, error::snippet, ErrorKind, Format, Lines, ParseError};

/// A block device number, as printed `MAJ:MIN` by the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Device {
    /// Major number.
    pub major: u32,
    /// Minor number.
    pub minor: u32,
}

impl Device {
    /// Parses `MAJ:MIN` (e.g. `8:16`); `None` if malformed.
    pub fn parse(text: &str) -> Option<Device> {
        let (major, minor) = text.split_once(':')?;
        Some(Device {
            major: dec_u32(major)?,
            minor: dec_u32(minor)?,
        })
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// Iterates the lines of any v2 nested-keyed file, values left as text.
///
/// Each non-blank line is `KEY sub=value sub=value ...`; the sub-keyed
/// fields are read with [`NestedLine::pairs`]. Used as the base of
/// [`io_stat`] and [`super::psi`]; callers may use it directly for other
/// nested-keyed files (`io.max`, `rdma.current`, `memory.numa_stat`, ...).
pub fn nested_keyed(text: &str) -> NestedKeyed<'_> {
    NestedKeyed {
        lines: Lines::new(text),
        format: Format::NestedKeyed,
    }
}

pub(super) fn nested_keyed_as(text: &str, format: Format) -> NestedKeyed<'_> {
    NestedKeyed {
        lines: Lines::new(text),
        format,
    }
}

/// Iterator returned by [`nested_keyed`].
#[derive(Debug, Clone)]
pub struct NestedKeyed<'a> {
    lines: Lines<'a>,
    format: Format,
}

impl<'a> Iterator for NestedKeyed<'a> {
    type Item = NestedLine<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        let (line, text) = self.lines.next()?;
        let (key, rest) = match text.split_once(|c: char| c.is_ascii_whitespace()) {
            Some((key, rest)) => (key, rest),
            None => (text, ""),
        };
        Some(NestedLine {
            line,
            key,
            rest,
            format: self.format,
        })
    }
}

impl std::iter::FusedIterator for NestedKeyed<'_> {}

/// One line of a nested-keyed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NestedLine<'a> {
    /// 1-based line number in the file.
    pub line: usize,
    /// The leading key (a `MAJ:MIN` device, `some`/`full`, a device name, ...).
    pub key: &'a str,
    rest: &'a str,
    format: Format,
}

impl<'a> NestedLine<'a> {
    /// The `sub=value` fields of the line, values unparsed. A field without
    /// `=` or with an empty name yields an error.
    pub fn pairs(&self) -> NestedPairs<'a> {
        NestedPairs {
            fields: self.rest.split_ascii_whitespace(),
            line: self.line,
            format: self.format,
        }
    }

    fn error(&self, kind: ErrorKind) -> ParseError {
        ParseError::new(self.format, self.line, kind)
    }
}

/// Iterator returned by [`NestedLine::pairs`].
#[derive(Debug, Clone)]
pub struct NestedPairs<'a> {
    fields: SplitAsciiWhitespace<'a>,
    line: usize,
    format: Format,
}

impl<'a> Iterator for NestedPairs<'a> {
    type Item = Result<(&'a str, &'a str), ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        let field = self.fields.next()?;
        Some(match field.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok((key, value)),
            _ => Err(ParseError::new(
                self.format,
                self.line,
                ErrorKind::BadPair(snippet(field)),
            )),
        })
    }
}

impl std::iter::FusedIterator for NestedPairs<'_> {}

/// Per-device counters of v2 `io.stat`. Keys absent from the line are 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct IoStat {
    /// The block device.
    pub device: Device,
    /// Bytes read.
    pub rbytes: u64,
    /// Bytes written.
    pub wbytes: u64,
    /// Read IOs.
    pub rios: u64,
    /// Write IOs.
    pub wios: u64,
    /// Bytes discarded.
    pub dbytes: u64,
    /// Discard IOs.
    pub dios: u64,
}

/// Iterates the device lines of v2 `io.stat`
/// (`8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0`).
///
/// Unknown keys (e.g. the iocost/iolatency debug fields `cost.vrate=100.00`,
/// `depth=max`, `avg_lat=...`) are skipped without being parsed. A line whose
/// key is not `MAJ:MIN`, a field that is not `key=value`, or a known key
/// whose value is not a `u64` yields an error for that line; iteration
/// continues with the next line.
pub fn io_stat(text: &str) -> IoStats<'_> {
    IoStats {
        lines: nested_keyed_as(text, Format::IoStat),
    }
}

/// Iterator returned by [`io_stat`].
#[derive(Debug, Clone)]
pub struct IoStats<'a> {
    lines: NestedKeyed<'a>,
}

impl Iterator for IoStats<'_> {
    type Item = Result<IoStat, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        let line = self.lines.next()?;
        Some(parse_io_line(&line))
    }
}

impl std::iter::FusedIterator for IoStats<'_> {}

fn parse_io_line(line: &NestedLine<'_>) -> Result<IoStat, ParseError> {
    let device = Device::parse(line.key)
        .ok_or_else(|| line.error(ErrorKind::BadDevice(snippet(line.key))))?;
    let mut stat = IoStat {
        device,
        ..IoStat::default()
    };
    for pair in line.pairs() {
        let (key, value) = pair?;
        let slot = match key {
            "rbytes" => &mut stat.rbytes,
            "wbytes" => &mut stat.wbytes,
            "rios" => &mut stat.rios,
            "wios" => &mut stat.wios,
            "dbytes" => &mut stat.dbytes,
            "dios" => &mut stat.dios,
            _ => continue,
        };
        *slot = dec_u64(value).map_err(|kind| line.error(kind))?;
    }
    Ok(stat)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2_IO_STAT: &str = include_str!("../../tests/fixtures/v2/io.stat");

    #[test]
    fn device_parse_and_display() {
        assert_eq!(
            Device::parse("8:16"),
            Some(Device {
                major: 8,
                minor: 16
            })
        );
        assert_eq!(Device::parse("254:0").unwrap().to_string(), "254:0");
        for bad in [
            "",
            ":",
            "8:",
            ":1",
            "8",
            "8:1:2",
            "a:b",
            "4294967296:0",
            "-1:0",
        ] {
            assert_eq!(Device::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn io_stat_fixture() {
        let stats: Vec<_> = io_stat(V2_IO_STAT).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            stats,
            vec![
                IoStat {
                    device: Device {
                        major: 8,
                        minor: 16
                    },
                    rbytes: 1459200,
                    wbytes: 314773504,
                    rios: 192,
                    wios: 353,
                    dbytes: 0,
                    dios: 0
                },
                IoStat {
                    device: Device { major: 8, minor: 0 },
                    rbytes: 90430464,
                    wbytes: 299008000,
                    rios: 8950,
                    wios: 1252,
                    dbytes: 50331648,
                    dios: 3021
                },
            ]
        );
    }

    #[test]
    fn io_stat_debug_fields_and_missing_keys() {
        let text = "259:0 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0 cost.vrate=100.00 \
                    cost.usage=0 use_delay=0 delay_nsec=0 depth=max avg_lat=2245 win=100\n\
                    7:0\n\
                    7:1 wbytes=8\n";
        let stats: Vec<_> = io_stat(text).collect::<Result<_, _>>().unwrap();
        assert_eq!(stats.len(), 3);
        assert_eq!(stats[0].rbytes, 4096);
        assert_eq!(stats[0].rios, 1);
        assert_eq!(
            stats[1],
            IoStat {
                device: Device { major: 7, minor: 0 },
                ..IoStat::default()
            }
        );
        assert_eq!(stats[2].wbytes, 8);
    }

    #[test]
    fn io_stat_errors() {
        assert_eq!(io_stat("").count(), 0);
        let items: Vec<_> =
            io_stat("8:0 rbytes=1\nsda rbytes=1\n8:1 rbytes=x\n8:2 rbytes\n8:3 wios=2").collect();
        assert_eq!(items[0].as_ref().unwrap().rbytes, 1);
        let e = items[1].clone().unwrap_err();
        assert_eq!(
            e.to_string(),
            "io.stat line 2: \"sda\" is not a MAJ:MIN device number"
        );
        let e = items[2].clone().unwrap_err();
        assert_eq!((e.line, e.kind), (3, ErrorKind::NotAnInteger("x".into())));
        let e = items[3].clone().unwrap_err();
        assert_eq!((e.line, e.kind), (4, ErrorKind::BadPair("rbytes".into())));
        assert_eq!(items[4].as_ref().unwrap().wios, 2);
    }

    #[test]
    fn generic_nested_keyed() {
        let text =
            "mlx4_0 hca_handle=2 hca_object=2000\n\nocrdma1 hca_handle=3 hca_object=max\nbare\n";
        let lines: Vec<_> = nested_keyed(text).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!((lines[0].line, lines[0].key), (1, "mlx4_0"));
        assert_eq!((lines[1].line, lines[1].key), (3, "ocrdma1"));
        let pairs: Vec<_> = lines[1].pairs().collect::<Result<_, _>>().unwrap();
        assert_eq!(pairs, vec![("hca_handle", "3"), ("hca_object", "max")]);
        assert_eq!(lines[2].key, "bare");
        assert_eq!(lines[2].pairs().count(), 0);
        let e = nested_keyed("k =1")
            .next()
            .unwrap()
            .pairs()
            .next()
            .unwrap()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "nested-keyed line 1: \"=1\" is not a key=value pair"
        );
        let pairs: Vec<_> = nested_keyed("k a= b=c=d").next().unwrap().pairs().collect();
        assert_eq!(pairs, vec![Ok(("a", "")), Ok(("b", "c=d"))]);
    }
}
