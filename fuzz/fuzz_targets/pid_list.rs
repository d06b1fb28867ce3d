//! Pid lists: cgroup.procs, cgroup.threads, v1 tasks (`kernfs::pids`, `pid_count`), and
//! /proc/<pid>/task/<tid>/children (`kernfs::child_pids`).
#![no_main]
use apptheus::kernfs::{child_pids, pid_count, pids};
use apptheus_fuzz::{check_error, line_count, text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = text(data);
    let lines = line_count(&text);
    let mut count = 0usize;
    let mut first_err = None;
    for pid in pids(&text) {
        match pid {
            Ok(pid) => {
                assert!(pid >= 0, "negative pid {pid}");
                count += 1;
            }
            Err(err) => {
                check_error(&err, lines);
                first_err.get_or_insert(err);
            }
        }
    }
    for pid in child_pids(&text) {
        match pid {
            Ok(pid) => assert!(pid >= 0, "negative pid {pid}"),
            Err(err) => check_error(&err, lines.max(1)),
        }
    }
    match first_err {
        None => assert_eq!(pid_count(&text), Ok(count)),
        Some(err) => assert_eq!(pid_count(&text), Err(err)),
    }
});
