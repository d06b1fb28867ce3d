//! Flat-keyed files: one `KEY VALUE` pair per line, `VALUE` a `u64`.

use super::{dec_u64, error::snippet, ErrorKind, Format, Lines, ParseError};

/// Iterates the `KEY VALUE` lines of a flat-keyed file.
///
/// Used for v2 `cpu.stat`, `memory.stat`, `memory.events`,
/// `memory.events.local`, `memory.swap.events`, `cgroup.events`,
/// `cgroup.stat`, `pids.events`, and v1 `cpu.stat`, `cpuacct.stat`,
/// `memory.stat`, `memory.oom_control`.
///
/// Blank lines are skipped. A line with no value, a value that is not a
/// decimal `u64`, or a third field yields an error for that line; iteration
/// then continues with the next line, so callers may either stop at the
/// first error (`collect::<Result<Vec<_>, _>>()`) or skip bad lines.
pub fn flat_keyed(text: &str) -> FlatKeyed<'_> {
    FlatKeyed {
        lines: Lines::new(text),
    }
}

/// Iterator returned by [`flat_keyed`].
#[derive(Debug, Clone)]
pub struct FlatKeyed<'a> {
    lines: Lines<'a>,
}

impl<'a> Iterator for FlatKeyed<'a> {
    type Item = Result<(&'a str, u64), ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (line, text) = self.lines.next()?;
        Some(parse_line(text).map_err(|kind| ParseError::new(Format::FlatKeyed, line, kind)))
    }
}

impl std::iter::FusedIterator for FlatKeyed<'_> {}

fn parse_line(text: &str) -> Result<(&str, u64), ErrorKind> {
    let mut fields = text.split_ascii_whitespace();
    // `Lines` never yields a blank line, so there is always a key.
    let key = fields.next().unwrap_or_default();
    let value = fields.next().ok_or(ErrorKind::MissingValue)?;
    if let Some(extra) = fields.next() {
        return Err(ErrorKind::TrailingField(snippet(extra)));
    }
    Ok((key, dec_u64(value)?))
}

/// Looks up several keys of a flat-keyed file in one pass.
///
/// Returns the value of each of `keys` (in the same order), `None` for keys
/// absent from the file; if a key occurs more than once the last one wins.
/// Every line is validated as by [`flat_keyed`]; the first bad line is
/// returned as an error.
///
/// ```text
/// let [usage, user, system] = flat_keyed_get(text, &["usage_usec", "user_usec", "system_usec"])?;
/// ```
pub fn flat_keyed_get<const N: usize>(
    text: &str,
    keys: &[&str; N],
) -> Result<[Option<u64>; N], ParseError> {
    // The sampler calls this for every container sample (v1 memory.stat has ~75 lines), so
    // the usual case is a byte loop; any malformed line goes to the iterator, which says why.
    match get_fast(text.as_bytes(), keys) {
        Some(out) => Ok(out),
        None => flat_keyed_get_by_lines(text, keys),
    }
}

/// [`flat_keyed_get`] through [`flat_keyed`]: the reference, and the error path.
pub(super) fn flat_keyed_get_by_lines<const N: usize>(
    text: &str,
    keys: &[&str; N],
) -> Result<[Option<u64>; N], ParseError> {
    let mut out = [None; N];
    for item in flat_keyed(text) {
        let (key, value) = item?;
        for (wanted, slot) in keys.iter().zip(out.iter_mut()) {
            if *wanted == key {
                *slot = Some(value);
            }
        }
    }
    Ok(out)
}

/// The same lines, fields and values as [`flat_keyed`] (lines split at `\n` and trimmed of
/// ASCII whitespace, blank ones skipped, a key and one decimal `u64`), without the iterator
/// layers; `None` at the first line that is not well-formed.
fn get_fast<const N: usize>(text: &[u8], keys: &[&str; N]) -> Option<[Option<u64>; N]> {
    let mut out = [None; N];
    let mut rest = text;
    while !rest.is_empty() {
        let (raw, next) = match memchr::memchr(b'\n', rest) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        let line = raw.trim_ascii();
        if line.is_empty() {
            continue;
        }
        let key_end = line.iter().position(u8::is_ascii_whitespace)?;
        let value = line[key_end..].trim_ascii_start();
        let mut v: u64 = 0;
        for &b in value {
            let digit = b.wrapping_sub(b'0');
            if digit > 9 {
                return None; // a second field, or not a number
            }
            v = v.checked_mul(10)?.checked_add(u64::from(digit))?;
        }
        let key = &line[..key_end];
        for (wanted, slot) in keys.iter().zip(out.iter_mut()) {
            // From the end: keys such as memory.stat's `total_*` differ there. (A plain `==`
            // is a memcmp call per key of the same length, a visible cost in a profile.)
            if wanted.len() == key.len() && wanted.bytes().rev().zip(key.iter().rev()).all(|(a, b)| a == *b) {
                *slot = Some(v);
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_ROOT_MEMORY_STAT: &str = include_str!("../../tests/fixtures/v1/root.memory.stat");
    const V1_MEMORY_STAT: &str = include_str!("../../tests/fixtures/v1/container.memory.stat");
    const V1_OOM_CONTROL: &str =
        include_str!("../../tests/fixtures/v1/container.memory.oom_control");
    const V1_CPUACCT_STAT: &str = include_str!("../../tests/fixtures/v1/root.cpuacct.stat");
    const V1_CPU_STAT: &str = include_str!("../../tests/fixtures/v1/root.cpu.stat");
    const UNIFIED_CPU_STAT: &str = include_str!("../../tests/fixtures/unified/root.cpu.stat");
    const UNIFIED_CGROUP_STAT: &str = include_str!("../../tests/fixtures/unified/root.cgroup.stat");
    const V2_MEMORY_STAT: &str = include_str!("../../tests/fixtures/v2/memory.stat");
    const V2_MEMORY_EVENTS: &str = include_str!("../../tests/fixtures/v2/memory.events");
    const V2_CPU_STAT: &str = include_str!("../../tests/fixtures/v2/cpu.stat");
    const V2_CGROUP_EVENTS: &str = include_str!("../../tests/fixtures/v2/cgroup.events");
    const V2_PIDS_EVENTS: &str = include_str!("../../tests/fixtures/v2/pids.events");
    const V2_SWAP_EVENTS: &str = include_str!("../../tests/fixtures/v2/memory.swap.events");

    fn all(text: &str) -> Vec<(&str, u64)> {
        flat_keyed(text)
            .collect::<Result<Vec<_>, _>>()
            .expect("fixture parses")
    }

    #[test]
    fn v1_memory_stat_container() {
        let pairs = all(V1_MEMORY_STAT);
        assert_eq!(pairs.len(), 42);
        assert_eq!(pairs[0], ("cache", 350560256));
        let [cache, rss, limit, total_rss, pgmajfault] = flat_keyed_get(
            V1_MEMORY_STAT,
            &[
                "cache",
                "rss",
                "hierarchical_memory_limit",
                "total_rss",
                "total_pgmajfault",
            ],
        )
        .unwrap();
        assert_eq!(cache, Some(350560256));
        assert_eq!(rss, Some(1122304));
        assert_eq!(limit, Some(9223372036854771712));
        assert_eq!(total_rss, Some(1122304));
        assert_eq!(pgmajfault, Some(186));
    }

    #[test]
    fn v1_memory_stat_root() {
        let [total_cache, total_inactive_file, unevictable] = flat_keyed_get(
            V1_ROOT_MEMORY_STAT,
            &["total_cache", "total_inactive_file", "unevictable"],
        )
        .unwrap();
        assert_eq!(total_cache, Some(1456201728));
        assert_eq!(total_inactive_file, Some(1023893504));
        assert_eq!(unevictable, Some(13611008));
    }

    #[test]
    fn v1_memory_oom_control() {
        assert_eq!(
            all(V1_OOM_CONTROL),
            vec![("oom_kill_disable", 0), ("under_oom", 0), ("oom_kill", 0)]
        );
        let [oom_kill] = flat_keyed_get(
            "oom_kill_disable 0\nunder_oom 1\noom_kill 4\n",
            &["oom_kill"],
        )
        .unwrap();
        assert_eq!(oom_kill, Some(4));
    }

    #[test]
    fn v1_cpuacct_and_cpu_stat() {
        assert_eq!(all(V1_CPUACCT_STAT), vec![("user", 8451), ("system", 3401)]);
        assert_eq!(
            all(V1_CPU_STAT),
            vec![
                ("nr_periods", 0),
                ("nr_throttled", 0),
                ("throttled_time", 0),
                ("nr_bursts", 0),
                ("burst_time", 0)
            ]
        );
    }

    #[test]
    fn unified_root_files() {
        assert_eq!(
            all(UNIFIED_CPU_STAT),
            vec![
                ("usage_usec", 116824527),
                ("user_usec", 83299459),
                ("system_usec", 33525067),
                ("nice_usec", 0)
            ]
        );
        let [hugetlb] = flat_keyed_get(UNIFIED_CGROUP_STAT, &["nr_subsys_hugetlb"]).unwrap();
        assert_eq!(hugetlb, Some(1));
    }

    #[test]
    fn v2_memory_stat() {
        let pairs = all(V2_MEMORY_STAT);
        assert_eq!(pairs.len(), 70);
        let [anon, file, kernel, slab, slab_r, slab_u, pgmajfault, missing] = flat_keyed_get(
            V2_MEMORY_STAT,
            &[
                "anon",
                "file",
                "kernel",
                "slab",
                "slab_reclaimable",
                "slab_unreclaimable",
                "pgmajfault",
                "hugetlb",
            ],
        )
        .unwrap();
        assert_eq!(anon, Some(104857600));
        assert_eq!(file, Some(52428800));
        assert_eq!(kernel, Some(6590464));
        assert_eq!(slab, Some(5429952));
        assert_eq!(slab_r.zip(slab_u).map(|(r, u)| r + u), slab);
        assert_eq!(pgmajfault, Some(312));
        assert_eq!(missing, None);
    }

    #[test]
    fn v2_memory_events() {
        assert_eq!(
            all(V2_MEMORY_EVENTS),
            vec![
                ("low", 0),
                ("high", 0),
                ("max", 12),
                ("oom", 1),
                ("oom_kill", 1),
                ("oom_group_kill", 0),
                ("sock_throttled", 0)
            ]
        );
    }

    #[test]
    fn v2_other_flat_files() {
        let [periods, throttled, throttled_usec] = flat_keyed_get(
            V2_CPU_STAT,
            &["nr_periods", "nr_throttled", "throttled_usec"],
        )
        .unwrap();
        assert_eq!(
            (periods, throttled, throttled_usec),
            (Some(1200), Some(37), Some(845123))
        );
        assert_eq!(all(V2_CGROUP_EVENTS), vec![("populated", 1), ("frozen", 0)]);
        assert_eq!(all(V2_PIDS_EVENTS), vec![("max", 0)]);
        assert_eq!(
            all(V2_SWAP_EVENTS),
            vec![("high", 0), ("max", 0), ("fail", 0)]
        );
    }

    #[test]
    fn edge_cases() {
        assert_eq!(flat_keyed("").count(), 0);
        assert_eq!(flat_keyed("\n\n").count(), 0);
        assert_eq!(all("a 1"), vec![("a", 1)]);
        assert_eq!(all("\n a\t 1 \n\nb 2\n"), vec![("a", 1), ("b", 2)]);
        assert_eq!(flat_keyed_get("", &["a"]).unwrap(), [None]);
        assert_eq!(flat_keyed_get("a 1\na 2\n", &["a"]).unwrap(), [Some(2)]);
    }

    #[test]
    fn errors_carry_line_numbers() {
        let items: Vec<_> =
            flat_keyed("a 1\n\nb abc\nc\nd 1 2\ne 99999999999999999999\nf 3\n").collect();
        assert_eq!(items.len(), 6);
        assert_eq!(items[0], Ok(("a", 1)));
        let e = items[1].clone().unwrap_err();
        assert_eq!(e.line, 3);
        assert_eq!(
            e.to_string(),
            "flat-keyed line 3: value \"abc\" is not an integer"
        );
        let e = items[2].clone().unwrap_err();
        assert_eq!((e.line, e.kind), (4, ErrorKind::MissingValue));
        let e = items[3].clone().unwrap_err();
        assert_eq!((e.line, e.kind), (5, ErrorKind::TrailingField("2".into())));
        let e = items[4].clone().unwrap_err();
        assert_eq!(e.line, 6);
        assert!(matches!(e.kind, ErrorKind::OutOfRange(_)));
        assert_eq!(items[5], Ok(("f", 3)));

        let e = flat_keyed_get("a 1\nb -1\n", &["a"]).unwrap_err();
        assert_eq!((e.format, e.line), (Format::FlatKeyed, 2));
    }
}
