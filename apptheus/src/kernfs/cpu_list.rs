//! CPU lists (`cpulist` format): comma-separated CPU numbers and inclusive ranges, e.g.
//! `0-3,8,10-11`, as in v2 `cpuset.cpus.effective` and v1 `cpuset.effective_cpus`.

use super::{dec_u64, error::snippet, ErrorKind, Format, Lines, ParseError};

/// The number of CPUs a CPU list names (an empty list, which a cpuset may have, is 0).
pub fn cpu_list_count(text: &str) -> Result<u64, ParseError> {
    let err = |line, kind| ParseError::new(Format::CpuList, line, kind);
    let mut lines = Lines::new(text);
    let Some((line, list)) = lines.next() else { return Ok(0) };
    if let Some((extra_line, extra)) = lines.next() {
        return Err(err(extra_line, ErrorKind::TrailingField(snippet(extra))));
    }
    let mut count: u64 = 0;
    for item in list.split(',') {
        let n = match item.split_once('-') {
            None => {
                dec_u64(item).map_err(|kind| err(line, kind))?;
                1
            }
            Some((first, last)) => {
                let first = dec_u64(first).map_err(|kind| err(line, kind))?;
                let last = dec_u64(last).map_err(|kind| err(line, kind))?;
                if last < first {
                    return Err(err(line, ErrorKind::OutOfRange(snippet(item))));
                }
                last - first + 1
            }
        };
        count = count.checked_add(n).ok_or_else(|| err(line, ErrorKind::OutOfRange(snippet(list))))?;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_cpus_of_real_and_documented_lists() {
        // this machine's v1 cpuset.effective_cpus (2 CPUs)
        assert_eq!(cpu_list_count(include_str!("../../tests/fixtures/v1/root.cpuset.effective_cpus")), Ok(2));
        // cgroup-v2.rst's example
        assert_eq!(cpu_list_count(include_str!("../../tests/fixtures/v2/cpuset.cpus.effective")), Ok(7));
        assert_eq!(cpu_list_count("0\n"), Ok(1));
        assert_eq!(cpu_list_count(""), Ok(0));
        assert_eq!(cpu_list_count("\n"), Ok(0));
        assert_eq!(cpu_list_count("0-3,8,10-11\n"), Ok(7));
    }

    #[test]
    fn rejects_what_is_not_a_cpu_list() {
        for bad in ["a", "1-", "-1", "3-1", "1,,2", "0-3 4", "1\n2"] {
            assert!(cpu_list_count(bad).is_err(), "{bad:?} accepted");
        }
    }
}
