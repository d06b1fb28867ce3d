//! cgroup v1 blkio per-device read/write statistics.

use super::{dec_u64, error::snippet, Device, ErrorKind, Format, Lines, ParseError};

/// The operation column of a v1 blkio statistics line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlkioOp {
    /// `Read`
    Read,
    /// `Write`
    Write,
    /// `Sync`
    Sync,
    /// `Async`
    Async,
    /// `Discard` (Linux 4.19+)
    Discard,
    /// `Total` (Read + Write + Discard, per device)
    Total,
}

impl BlkioOp {
    /// Parses the kernel's spelling (`Read`, `Write`, ...).
    pub fn parse(text: &str) -> Option<BlkioOp> {
        Some(match text {
            "Read" => BlkioOp::Read,
            "Write" => BlkioOp::Write,
            "Sync" => BlkioOp::Sync,
            "Async" => BlkioOp::Async,
            "Discard" => BlkioOp::Discard,
            "Total" => BlkioOp::Total,
            _ => return None,
        })
    }

    /// The kernel's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BlkioOp::Read => "Read",
            BlkioOp::Write => "Write",
            BlkioOp::Sync => "Sync",
            BlkioOp::Async => "Async",
            BlkioOp::Discard => "Discard",
            BlkioOp::Total => "Total",
        }
    }
}

/// One `MAJ:MIN Op VALUE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlkioEntry {
    /// The block device.
    pub device: Device,
    /// The operation.
    pub op: BlkioOp,
    /// Bytes or IO count, depending on the file.
    pub value: u64,
}

/// Iterates the per-device lines of a v1 blkio statistics file.
///
/// Used for v1 `blkio.throttle.io_service_bytes[_recursive]`,
/// `blkio.throttle.io_serviced[_recursive]`, and the CFQ/BFQ variants
/// `blkio.io_service_bytes[_recursive]`, `blkio.io_serviced[_recursive]`,
/// `blkio.bfq.io_service_bytes[_recursive]`, `blkio.bfq.io_serviced[_recursive]`.
///
/// Lines are `MAJ:MIN Op VALUE`; the final device-less `Total VALUE` line is
/// validated but not yielded (a cgroup without IO has only `Total 0`). A bad
/// line yields an error; iteration continues with the next line.
pub fn blkio_v1(text: &str) -> BlkioV1<'_> {
    BlkioV1 {
        lines: Lines::new(text),
    }
}

/// Iterator returned by [`blkio_v1`].
#[derive(Debug, Clone)]
pub struct BlkioV1<'a> {
    lines: Lines<'a>,
}

impl Iterator for BlkioV1<'_> {
    type Item = Result<BlkioEntry, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (line, text) = self.lines.next()?;
            match parse_line(text) {
                Ok(Some(entry)) => return Some(Ok(entry)),
                Ok(None) => continue,
                Err(kind) => return Some(Err(ParseError::new(Format::BlkioV1, line, kind))),
            }
        }
    }
}

impl std::iter::FusedIterator for BlkioV1<'_> {}

/// `Ok(None)` for the bare `Total VALUE` line.
fn parse_line(text: &str) -> Result<Option<BlkioEntry>, ErrorKind> {
    let mut fields = text.split_ascii_whitespace();
    let first = fields.next().unwrap_or_default();
    if first == "Total" {
        let value = fields.next().ok_or(ErrorKind::MissingValue)?;
        if let Some(extra) = fields.next() {
            return Err(ErrorKind::TrailingField(snippet(extra)));
        }
        dec_u64(value)?;
        return Ok(None);
    }
    let device = Device::parse(first).ok_or_else(|| ErrorKind::BadDevice(snippet(first)))?;
    let op = fields.next().ok_or(ErrorKind::MissingValue)?;
    let op = BlkioOp::parse(op).ok_or_else(|| ErrorKind::UnknownOp(snippet(op)))?;
    let value = fields.next().ok_or(ErrorKind::MissingValue)?;
    if let Some(extra) = fields.next() {
        return Err(ErrorKind::TrailingField(snippet(extra)));
    }
    Ok(Some(BlkioEntry {
        device,
        op,
        value: dec_u64(value)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! fixture {
        ($path:literal) => {
            include_str!(concat!("../../tests/fixtures/v1/", $path))
        };
    }

    fn all(text: &str) -> Vec<BlkioEntry> {
        blkio_v1(text).collect::<Result<_, _>>().unwrap()
    }

    #[test]
    fn real_total_only_files() {
        assert!(all(fixture!("root.blkio.throttle.io_service_bytes_recursive")).is_empty());
        assert!(all(fixture!("root.blkio.throttle.io_serviced_recursive")).is_empty());
        assert!(all(fixture!("root.blkio.bfq.io_service_bytes_recursive")).is_empty());
    }

    #[test]
    fn per_device_lines() {
        let entries = all(fixture!(
            "written.blkio.throttle.io_service_bytes_recursive"
        ));
        assert_eq!(entries.len(), 12);
        let vda = Device {
            major: 254,
            minor: 0,
        };
        assert_eq!(
            entries[0],
            BlkioEntry {
                device: vda,
                op: BlkioOp::Read,
                value: 228356096
            }
        );
        let get = |dev: Device, op| {
            entries
                .iter()
                .find(|e| e.device == dev && e.op == op)
                .map(|e| e.value)
        };
        assert_eq!(get(vda, BlkioOp::Write), Some(1067421696));
        assert_eq!(get(vda, BlkioOp::Discard), Some(4096));
        assert_eq!(get(vda, BlkioOp::Total), Some(1295781888));
        assert_eq!(
            get(
                Device {
                    major: 253,
                    minor: 0
                },
                BlkioOp::Read
            ),
            Some(4096)
        );

        let serviced = all(fixture!("written.blkio.throttle.io_serviced_recursive"));
        assert_eq!(serviced.len(), 6);
        assert_eq!(serviced[1].op, BlkioOp::Write);
        assert_eq!(serviced[1].value, 21133);
    }

    #[test]
    fn op_names_round_trip() {
        for op in [
            BlkioOp::Read,
            BlkioOp::Write,
            BlkioOp::Sync,
            BlkioOp::Async,
            BlkioOp::Discard,
            BlkioOp::Total,
        ] {
            assert_eq!(BlkioOp::parse(op.as_str()), Some(op));
        }
    }

    #[test]
    fn edge_cases_and_errors() {
        assert!(all("").is_empty());
        assert!(all("Total 0").is_empty());
        assert_eq!(all("8:0 Read 5").len(), 1);
        let items: Vec<_> = blkio_v1(
            "8:0 Read 1\nsda Read 1\n8:0 Frob 1\n8:0 Read\n8:0 Read x\nTotal\nTotal 1 2\nTotal y\n8:0 Write 2 3\n8:0 Write 7\n",
        )
        .collect();
        assert_eq!(items.len(), 10);
        let errs: Vec<_> = items.iter().filter_map(|i| i.clone().err()).collect();
        let lines: Vec<_> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(
            errs[0].to_string(),
            "blkio line 2: \"sda\" is not a MAJ:MIN device number"
        );
        assert_eq!(errs[1].kind, ErrorKind::UnknownOp("Frob".into()));
        assert_eq!(errs[2].kind, ErrorKind::MissingValue);
        assert_eq!(items[9].as_ref().unwrap().value, 7);
    }
}
