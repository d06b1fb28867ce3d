//! Pid lists: one decimal pid per line.

use super::{dec_u64, error::snippet, ErrorKind, Format, Lines, ParseError};

/// Iterates the pids of a pid-list file.
///
/// Used for v1/v2 `cgroup.procs`, `cgroup.threads` and v1 `tasks`. An empty
/// file has no pids. A pid is `0..=i32::MAX`; `0` is kept because v2
/// `cgroup.procs` prints 0 for a process outside the reader's pid namespace.
/// A bad line yields an error; iteration continues with the next line.
pub fn pids(text: &str) -> Pids<'_> {
    Pids {
        lines: Lines::new(text),
    }
}

/// Iterates the pids of `/proc/<pid>/task/<tid>/children`: the task's children on one line,
/// each followed by a space (no newline); empty when it has none. A bad field yields an error
/// (line 1) and iteration continues.
pub fn child_pids(text: &str) -> impl Iterator<Item = Result<i32, ParseError>> + '_ {
    text.split_ascii_whitespace()
        .map(|field| parse_pid(field).map_err(|kind| ParseError::new(Format::PidList, 1, kind)))
}

/// Counts the pids of a pid-list file (see [`pids`]), validating every line.
pub fn pid_count(text: &str) -> Result<usize, ParseError> {
    pids(text).try_fold(0usize, |count, pid| pid.map(|_| count.saturating_add(1)))
}

/// Iterator returned by [`pids`].
#[derive(Debug, Clone)]
pub struct Pids<'a> {
    lines: Lines<'a>,
}

impl Iterator for Pids<'_> {
    type Item = Result<i32, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (line, text) = self.lines.next()?;
        Some(parse_pid(text).map_err(|kind| ParseError::new(Format::PidList, line, kind)))
    }
}

impl std::iter::FusedIterator for Pids<'_> {}

fn parse_pid(text: &str) -> Result<i32, ErrorKind> {
    let mut fields = text.split_ascii_whitespace();
    let pid = fields.next().unwrap_or_default();
    if let Some(extra) = fields.next() {
        return Err(ErrorKind::TrailingField(snippet(extra)));
    }
    let value = dec_u64(pid)?;
    i32::try_from(value).map_err(|_| ErrorKind::OutOfRange(snippet(pid)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_PROCS: &str = include_str!("../../tests/fixtures/v1/container.cgroup.procs");
    const V1_TASKS: &str = include_str!("../../tests/fixtures/v1/container.tasks");
    const V2_PROCS: &str = include_str!("../../tests/fixtures/v2/cgroup.procs");
    const CHILDREN: &str = include_str!("../../tests/fixtures/proc/task.children");

    #[test]
    fn children_list() {
        assert_eq!(child_pids(CHILDREN).collect::<Result<Vec<_>, _>>(), Ok(vec![7957, 7959, 7960]));
        assert_eq!(child_pids("").count(), 0);
        let mixed: Vec<_> = child_pids("12 x 13 ").collect();
        assert_eq!(mixed.len(), 3);
        assert!(mixed[1].is_err());
        assert_eq!((mixed[0].clone(), mixed[2].clone()), (Ok(12), Ok(13)));
    }

    #[test]
    fn fixtures() {
        assert_eq!(pid_count(V1_PROCS), Ok(2));
        assert_eq!(
            pids(V1_PROCS).collect::<Result<Vec<_>, _>>(),
            Ok(vec![4483, 4484])
        );
        assert_eq!(
            pids(V1_TASKS).collect::<Result<Vec<_>, _>>(),
            Ok(vec![4483, 4484])
        );
        assert_eq!(
            pids(V2_PROCS).collect::<Result<Vec<_>, _>>(),
            Ok(vec![4483, 4484, 4490])
        );
    }

    #[test]
    fn edge_cases() {
        assert_eq!(pid_count(""), Ok(0));
        assert_eq!(pid_count("\n"), Ok(0));
        assert_eq!(pid_count("1"), Ok(1));
        assert_eq!(pid_count("0\n1\n2147483647\n"), Ok(3));
        let e = pid_count("1\n2147483648\n").unwrap_err();
        assert_eq!(
            (e.line, e.kind),
            (2, ErrorKind::OutOfRange("2147483648".into()))
        );
        let e = pid_count("1\n\n-3\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "pid-list line 3: value \"-3\" is not an integer"
        );
        let e = pid_count("1 2\n").unwrap_err();
        assert_eq!(e.kind, ErrorKind::TrailingField("2".into()));
        let items: Vec<_> = pids("1\nx\n3\n").collect();
        assert_eq!(items.len(), 3);
        assert!(items[1].is_err());
        assert_eq!(items[2], Ok(3));
    }
}
