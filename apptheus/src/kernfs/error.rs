//! The error type shared by all parsers of this module.

use std::fmt;

/// A kernel file could not be parsed.
///
/// Displays as e.g. `flat-keyed line 3: value "abc" is not an integer`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{format} line {line}: {kind}")]
pub struct ParseError {
    /// Which file format was being parsed.
    pub format: Format,
    /// 1-based line number of the offending line (blank lines count).
    pub line: usize,
    /// What was wrong with it.
    pub kind: ErrorKind,
}

impl ParseError {
    pub(crate) fn new(format: Format, line: usize, kind: ErrorKind) -> Self {
        ParseError { format, line, kind }
    }
}

/// The file formats of this module, as named in error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// `KEY VALUE` lines ([`super::flat_keyed`]).
    FlatKeyed,
    /// One value ([`super::parse_u64`], [`super::parse_limit`], [`super::parse_cfs_quota`]).
    SingleValue,
    /// v2 `cpu.max` ([`super::parse_cpu_max`]).
    CpuMax,
    /// Generic nested-keyed lines ([`super::nested_keyed`]).
    NestedKeyed,
    /// v2 `io.stat` ([`super::io_stat`]).
    IoStat,
    /// Pressure stall information ([`super::psi`]).
    Psi,
    /// v1 blkio per-device statistics ([`super::blkio_v1`]).
    BlkioV1,
    /// One pid per line ([`super::pids`]).
    PidList,
    /// CPU numbers and ranges ([`super::cpu_list_count`]).
    CpuList,
}

impl Format {
    /// Short human-readable name of the format.
    pub fn name(self) -> &'static str {
        match self {
            Format::FlatKeyed => "flat-keyed",
            Format::SingleValue => "single-value",
            Format::CpuMax => "cpu.max",
            Format::NestedKeyed => "nested-keyed",
            Format::IoStat => "io.stat",
            Format::Psi => "psi",
            Format::BlkioV1 => "blkio",
            Format::PidList => "pid-list",
            Format::CpuList => "cpu-list",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What was wrong with a line. Quoted texts are shortened and escaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The file holds no value at all.
    #[error("empty input")]
    Empty,
    /// A key without a value.
    #[error("missing value")]
    MissingValue,
    /// A field that should be a plain decimal integer is not one.
    #[error("value \"{0}\" is not an integer")]
    NotAnInteger(String),
    /// An integer too large for its type.
    #[error("value \"{0}\" is out of range")]
    OutOfRange(String),
    /// A field that should be a decimal number (e.g. `1.25`) is not one.
    #[error("value \"{0}\" is not a decimal number")]
    NotANumber(String),
    /// More fields than the format allows.
    #[error("unexpected trailing field \"{0}\"")]
    TrailingField(String),
    /// A field that should be `MAJ:MIN` is not one.
    #[error("\"{0}\" is not a MAJ:MIN device number")]
    BadDevice(String),
    /// A nested-keyed field that is not `key=value`.
    #[error("\"{0}\" is not a key=value pair")]
    BadPair(String),
    /// An unknown v1 blkio operation.
    #[error("unknown operation \"{0}\"")]
    UnknownOp(String),
    /// A line whose leading key is not allowed in this file.
    #[error("unexpected line key \"{0}\"")]
    UnexpectedLine(String),
    /// A required key or line is absent.
    #[error("missing \"{0}\"")]
    Missing(&'static str),
}

/// Longest quoted excerpt kept in an error, in characters.
const SNIPPET_CHARS: usize = 32;

/// A short, escaped copy of `text` for error messages.
pub(crate) fn snippet(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    for c in chars.by_ref().take(SNIPPET_CHARS) {
        out.extend(c.escape_debug());
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_matches_documented_shape() {
        let e = ParseError::new(
            Format::FlatKeyed,
            3,
            ErrorKind::NotAnInteger(snippet("abc")),
        );
        assert_eq!(
            e.to_string(),
            "flat-keyed line 3: value \"abc\" is not an integer"
        );
    }

    #[test]
    fn snippet_truncates_and_escapes() {
        assert_eq!(snippet("a\"b\0"), "a\\\"b\\0");
        let long = "x".repeat(100);
        assert_eq!(snippet(&long).chars().count(), SNIPPET_CHARS + 1);
    }
}
