//! Single-value files: one integer, or a limit that may be "unlimited".

use super::{dec_u64, error::snippet, ErrorKind, Format, Lines, ParseError};

/// A resource limit as read from a cgroup limit file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Limit {
    /// No limit: v2 `max`, v1 "PAGE_COUNTER_MAX" bytes, v1 `cpu.cfs_quota_us` `-1`.
    Unlimited,
    /// A finite limit, in the file's unit (bytes, pids, microseconds).
    Value(u64),
}

impl Limit {
    /// Smallest raw value treated as unlimited.
    ///
    /// cgroup v1 memory files print "no limit" as `PAGE_COUNTER_MAX * PAGE_SIZE`,
    /// i.e. `i64::MAX` rounded down to the page size: `9223372036854771712` with
    /// 4 KiB pages, `9223372036854710272` with 64 KiB pages (arm64, ppc64).
    /// This threshold is `i64::MAX` rounded down to 64 KiB, so it covers every
    /// page size up to 64 KiB; no real limit comes within 64 KiB of 8 EiB.
    pub const UNLIMITED_THRESHOLD: u64 = 0x7FFF_FFFF_FFFF_0000;

    /// Interprets a raw numeric limit (e.g. v1 `memory.limit_in_bytes`, or
    /// `hierarchical_memory_limit` from v1 `memory.stat`).
    pub fn from_raw(value: u64) -> Limit {
        if value >= Self::UNLIMITED_THRESHOLD {
            Limit::Unlimited
        } else {
            Limit::Value(value)
        }
    }

    /// The finite value, or `None` when unlimited.
    pub fn value(self) -> Option<u64> {
        match self {
            Limit::Unlimited => None,
            Limit::Value(v) => Some(v),
        }
    }
}

/// Returns the only whitespace-separated token of a file and its line number.
fn single_token(text: &str, format: Format) -> Result<(usize, &str), ParseError> {
    let mut lines = Lines::new(text);
    let (line, first) = lines
        .next()
        .ok_or_else(|| ParseError::new(format, 1, ErrorKind::Empty))?;
    let mut fields = first.split_ascii_whitespace();
    let token = fields.next().unwrap_or_default();
    if let Some(extra) = fields.next() {
        return Err(ParseError::new(
            format,
            line,
            ErrorKind::TrailingField(snippet(extra)),
        ));
    }
    if let Some((extra_line, extra)) = lines.next() {
        return Err(ParseError::new(
            format,
            extra_line,
            ErrorKind::TrailingField(snippet(extra)),
        ));
    }
    Ok((line, token))
}

/// Parses a file holding one unsigned integer.
///
/// Used for v2 `memory.current`, `memory.swap.current`, `memory.peak`,
/// `pids.current`, `pids.peak`; v1 `memory.usage_in_bytes`,
/// `memory.max_usage_in_bytes`, `memory.failcnt`, `cpuacct.usage`,
/// `pids.current`, `cpu.cfs_period_us`. Surrounding whitespace and the
/// trailing newline are ignored.
pub fn parse_u64(text: &str) -> Result<u64, ParseError> {
    let (line, token) = single_token(text, Format::SingleValue)?;
    dec_u64(token).map_err(|kind| ParseError::new(Format::SingleValue, line, kind))
}

/// Parses a limit file: `max`, or an integer where v1's "no limit" value
/// (see [`Limit::UNLIMITED_THRESHOLD`]) also means unlimited.
///
/// Used for v2 `memory.max`, `memory.high`, `memory.low`, `memory.min`,
/// `memory.swap.max`, `memory.swap.high`, `pids.max`; v1
/// `memory.limit_in_bytes`, `memory.soft_limit_in_bytes`,
/// `memory.memsw.limit_in_bytes`, `memory.kmem.limit_in_bytes`, `pids.max`.
pub fn parse_limit(text: &str) -> Result<Limit, ParseError> {
    let (line, token) = single_token(text, Format::SingleValue)?;
    limit_token(token).map_err(|kind| ParseError::new(Format::SingleValue, line, kind))
}

fn limit_token(token: &str) -> Result<Limit, ErrorKind> {
    if token == "max" {
        Ok(Limit::Unlimited)
    } else {
        dec_u64(token).map(Limit::from_raw)
    }
}

/// Parses v1 `cpu.cfs_quota_us`: `-1` for no quota, else microseconds per
/// period (`cpu.cfs_period_us`, read with [`parse_u64`]).
pub fn parse_cfs_quota(text: &str) -> Result<Limit, ParseError> {
    let (line, token) = single_token(text, Format::SingleValue)?;
    if token == "-1" {
        return Ok(Limit::Unlimited);
    }
    dec_u64(token)
        .map(Limit::Value)
        .map_err(|kind| ParseError::new(Format::SingleValue, line, kind))
}

/// The CPU bandwidth limit of v2 `cpu.max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CpuMax {
    /// Microseconds of CPU time allowed per period, or unlimited (`max`).
    pub quota_us: Limit,
    /// Length of the period in microseconds.
    pub period_us: u64,
}

/// Parses v2 `cpu.max`: `$MAX $PERIOD`, e.g. `max 100000` or `50000 100000`.
pub fn parse_cpu_max(text: &str) -> Result<CpuMax, ParseError> {
    let err = |line, kind| ParseError::new(Format::CpuMax, line, kind);
    let mut lines = Lines::new(text);
    let (line, first) = lines.next().ok_or_else(|| err(1, ErrorKind::Empty))?;
    let mut fields = first.split_ascii_whitespace();
    let quota = fields.next().unwrap_or_default();
    let period = fields
        .next()
        .ok_or_else(|| err(line, ErrorKind::MissingValue))?;
    if let Some(extra) = fields.next() {
        return Err(err(line, ErrorKind::TrailingField(snippet(extra))));
    }
    if let Some((extra_line, extra)) = lines.next() {
        return Err(err(extra_line, ErrorKind::TrailingField(snippet(extra))));
    }
    let quota_us = if quota == "max" {
        Limit::Unlimited
    } else {
        Limit::Value(dec_u64(quota).map_err(|kind| err(line, kind))?)
    };
    let period_us = dec_u64(period).map_err(|kind| err(line, kind))?;
    Ok(CpuMax {
        quota_us,
        period_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! fixture {
        ($path:literal) => {
            include_str!(concat!("../../tests/fixtures/", $path))
        };
    }

    #[test]
    fn single_values_from_fixtures() {
        assert_eq!(
            parse_u64(fixture!("v1/container.memory.usage_in_bytes")),
            Ok(364220416)
        );
        assert_eq!(
            parse_u64(fixture!("v1/root.memory.usage_in_bytes")),
            Ok(1467346944)
        );
        assert_eq!(parse_u64(fixture!("v1/container.memory.failcnt")), Ok(0));
        assert_eq!(
            parse_u64(fixture!("v1/root.cpuacct.usage")),
            Ok(118529100965)
        );
        assert_eq!(parse_u64(fixture!("v1/root.cpu.cfs_period_us")), Ok(100000));
        assert_eq!(parse_u64(fixture!("v1/written.pids.current")), Ok(3));
        assert_eq!(parse_u64(fixture!("v2/memory.current")), Ok(157286400));
        assert_eq!(parse_u64(fixture!("v2/memory.swap.current")), Ok(0));
        assert_eq!(parse_u64(fixture!("v2/pids.current")), Ok(7));
    }

    #[test]
    fn limits_from_fixtures() {
        for unlimited in [
            fixture!("v1/container.memory.limit_in_bytes"),
            fixture!("v1/container.memory.memsw.limit_in_bytes"),
            fixture!("v1/root.memory.limit_in_bytes"),
            fixture!("v1/root.memory.soft_limit_in_bytes"),
            fixture!("v1/written.pids.max"),
            fixture!("v2/memory.max"),
            fixture!("v2/memory.swap.max"),
            fixture!("v2/pids.max"),
        ] {
            assert_eq!(
                parse_limit(unlimited),
                Ok(Limit::Unlimited),
                "{unlimited:?}"
            );
        }
        assert_eq!(
            parse_limit(fixture!("v2/memory.high")),
            Ok(Limit::Value(536870912))
        );
        assert_eq!(
            parse_cfs_quota(fixture!("v1/root.cpu.cfs_quota_us")),
            Ok(Limit::Unlimited)
        );
    }

    #[test]
    fn limit_thresholds() {
        assert_eq!(parse_limit("max"), Ok(Limit::Unlimited));
        assert_eq!(parse_limit("9223372036854771712\n"), Ok(Limit::Unlimited));
        assert_eq!(parse_limit("9223372036854710272\n"), Ok(Limit::Unlimited)); // 64 KiB pages
        assert_eq!(parse_limit(&u64::MAX.to_string()), Ok(Limit::Unlimited));
        assert_eq!(
            parse_limit("9223372036854644736"),
            Ok(Limit::Value(9223372036854644736))
        );
        assert_eq!(parse_limit("268435456"), Ok(Limit::Value(268435456)));
        assert_eq!(parse_limit("0\n"), Ok(Limit::Value(0)));
        assert_eq!(Limit::from_raw(4096).value(), Some(4096));
        assert_eq!(Limit::Unlimited.value(), None);
        assert!(parse_limit("Max").is_err());
        assert!(parse_limit("-1").is_err());
    }

    #[test]
    fn cfs_quota() {
        assert_eq!(parse_cfs_quota("-1\n"), Ok(Limit::Unlimited));
        assert_eq!(parse_cfs_quota("50000\n"), Ok(Limit::Value(50000)));
        assert!(parse_cfs_quota("-2").is_err());
    }

    #[test]
    fn cpu_max() {
        assert_eq!(
            parse_cpu_max(fixture!("v2/cpu.max")),
            Ok(CpuMax {
                quota_us: Limit::Unlimited,
                period_us: 100000
            })
        );
        assert_eq!(
            parse_cpu_max(fixture!("v2/cpu.max.limited")),
            Ok(CpuMax {
                quota_us: Limit::Value(50000),
                period_us: 100000
            })
        );
        let e = parse_cpu_max("max\n").unwrap_err();
        assert_eq!(
            (e.format, e.line, e.kind),
            (Format::CpuMax, 1, ErrorKind::MissingValue)
        );
        assert!(parse_cpu_max("").is_err());
        assert!(parse_cpu_max("max 100000 1").is_err());
        assert!(parse_cpu_max("max max").is_err());
    }

    #[test]
    fn whitespace_and_errors() {
        assert_eq!(parse_u64("42"), Ok(42));
        assert_eq!(parse_u64("  42 \n\n"), Ok(42));
        assert_eq!(parse_u64("\n42\n"), Ok(42));
        let e = parse_u64("").unwrap_err();
        assert_eq!(
            (e.format, e.line, e.kind),
            (Format::SingleValue, 1, ErrorKind::Empty)
        );
        assert_eq!(parse_u64(" \n").unwrap_err().kind, ErrorKind::Empty);
        let e = parse_u64("\nabc\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "single-value line 2: value \"abc\" is not an integer"
        );
        let e = parse_u64("1 2").unwrap_err();
        assert_eq!((e.line, e.kind), (1, ErrorKind::TrailingField("2".into())));
        let e = parse_u64("1\n\n2\n").unwrap_err();
        assert_eq!((e.line, e.kind), (3, ErrorKind::TrailingField("2".into())));
        assert!(matches!(
            parse_u64("18446744073709551616").unwrap_err().kind,
            ErrorKind::OutOfRange(_)
        ));
        assert!(parse_limit("").is_err());
    }
}
