//! Kernel file formats, parsed in one place each.
//!
//! Every cgroup (v1 and v2) and sysfs file the agent reads is parsed by
//! exactly one function in this module. The module does no I/O: callers read
//! the file and pass its contents as `&str`. Parsers never panic, whatever the
//! input, and avoid allocating on the success path (iterators borrow from the
//! input; only errors own a short copy of the offending text).
//!
//! | Format (function)                 | Kernel files |
//! |-----------------------------------|--------------|
//! | [`flat_keyed`], [`flat_keyed_get`] | v2 `cpu.stat`, `memory.stat`, `memory.events`, `memory.swap.events`, `cgroup.events`, `cgroup.stat`, `pids.events`; v1 `cpu.stat`, `cpuacct.stat`, `memory.stat`, `memory.oom_control` |
//! | [`parse_u64`]                     | v2 `memory.current`, `memory.peak`, `memory.swap.current`, `pids.current`, `cpu.weight`; v1 `memory.usage_in_bytes`, `memory.max_usage_in_bytes`, `memory.failcnt`, `cpuacct.usage`, `pids.current`, `cpu.cfs_period_us`, `cpu.shares` |
//! | [`parse_limit`]                   | v2 `memory.max`, `memory.high`, `memory.swap.max`, `pids.max`; v1 `memory.limit_in_bytes`, `memory.memsw.limit_in_bytes`, `memory.soft_limit_in_bytes`, `pids.max` |
//! | [`parse_cfs_quota`]               | v1 `cpu.cfs_quota_us` |
//! | [`parse_cpu_max`]                 | v2 `cpu.max` |
//! | [`cpu_list_count`]                | v2 `cpuset.cpus.effective`, v1 `cpuset.effective_cpus` |
//! | [`nested_keyed`]                  | any v2 nested-keyed file (generic, raw values) |
//! | [`io_stat`]                       | v2 `io.stat` |
//! | [`psi`]                           | v2 `cpu.pressure`, `memory.pressure`, `io.pressure` (and `/proc/pressure/*`) |
//! | [`blkio_v1`]                      | v1 `blkio.throttle.io_service_bytes[_recursive]`, `blkio.throttle.io_serviced[_recursive]`, `blkio.io_service_bytes[_recursive]`, `blkio.io_serviced[_recursive]`, `blkio.bfq.*` of the same shape |
//! | [`pids`], [`pid_count`]           | v1/v2 `cgroup.procs`, `cgroup.threads`, v1 `tasks` |
//! | [`child_pids`]                    | `/proc/<pid>/task/<tid>/children` |
//! | [`uevent_devname`], [`uevent_value`] | `/sys/dev/block/MAJ:MIN/uevent` |
//!
//! Conventions shared by all parsers: lines are separated by `\n`; blank
//! lines and leading/trailing ASCII whitespace are ignored; fields are
//! separated by runs of ASCII whitespace; integers are plain decimal digits
//! (no sign) that must fit in the target type. Line numbers in errors are
//! 1-based and count every line, blank ones included.

mod blkio_v1;
mod cpu_list;
mod error;
mod flat_keyed;
mod nested_keyed;
mod pid_list;
mod psi;
mod single_value;
mod uevent;

#[cfg(test)]
mod proptests;

pub use blkio_v1::{blkio_v1, BlkioEntry, BlkioOp, BlkioV1};
pub use cpu_list::cpu_list_count;
pub use error::{ErrorKind, Format, ParseError};
pub use flat_keyed::{flat_keyed, flat_keyed_get, FlatKeyed};
pub use nested_keyed::{
    io_stat, nested_keyed, Device, IoStat, IoStats, NestedKeyed, NestedLine, NestedPairs,
};
pub use pid_list::{child_pids, pid_count, pids, Pids};
pub use psi::{psi, Pressure, PressureLine};
pub use single_value::{parse_cfs_quota, parse_cpu_max, parse_limit, parse_u64, CpuMax, Limit};
pub use uevent::{uevent_devname, uevent_value};

/// Iterator over the non-blank lines of a file, yielding the 1-based line
/// number and the line with surrounding ASCII whitespace removed.
#[derive(Debug, Clone)]
struct Lines<'a> {
    rest: Option<&'a str>,
    line: usize,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        Lines {
            rest: Some(text),
            line: 0,
        }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = (usize, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let rest = self.rest?;
            let (current, next) = match memchr::memchr(b'\n', rest.as_bytes()) {
                Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                None => (rest, None),
            };
            self.rest = next;
            self.line = self.line.saturating_add(1);
            let trimmed = current.trim_ascii();
            if !trimmed.is_empty() {
                return Some((self.line, trimmed));
            }
        }
    }
}

impl std::iter::FusedIterator for Lines<'_> {}

/// Parses a plain decimal `u64` token (digits only, no sign, no whitespace).
fn dec_u64(token: &str) -> Result<u64, ErrorKind> {
    if token.is_empty() {
        return Err(ErrorKind::NotAnInteger(String::new()));
    }
    let mut value: u64 = 0;
    for byte in token.bytes() {
        let digit = byte.wrapping_sub(b'0');
        if digit > 9 {
            return Err(ErrorKind::NotAnInteger(error::snippet(token)));
        }
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(digit)))
            .ok_or_else(|| ErrorKind::OutOfRange(error::snippet(token)))?;
    }
    Ok(value)
}

/// Parses a `MAJ:MIN` device number as printed by the block layer.
fn dec_u32(token: &str) -> Option<u32> {
    dec_u64(token).ok().and_then(|v| u32::try_from(v).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_skips_blank_and_counts_all() {
        let got: Vec<_> = Lines::new("a\n\n  \n b \r\nc").collect();
        assert_eq!(got, vec![(1, "a"), (4, "b"), (5, "c")]);
        assert_eq!(Lines::new("").count(), 0);
        assert_eq!(Lines::new("\n\n").count(), 0);
    }

    #[test]
    fn dec_u64_edges() {
        assert_eq!(dec_u64("0"), Ok(0));
        assert_eq!(dec_u64("18446744073709551615"), Ok(u64::MAX));
        assert!(matches!(
            dec_u64("18446744073709551616"),
            Err(ErrorKind::OutOfRange(_))
        ));
        assert!(matches!(dec_u64("+1"), Err(ErrorKind::NotAnInteger(_))));
        assert!(matches!(dec_u64("-1"), Err(ErrorKind::NotAnInteger(_))));
        assert!(matches!(dec_u64(""), Err(ErrorKind::NotAnInteger(_))));
        assert!(matches!(dec_u64("1.5"), Err(ErrorKind::NotAnInteger(_))));
    }
}
