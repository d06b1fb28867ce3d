//! Single-value files: `parse_u64` (memory.current, pids.current, cpuacct.usage, ...),
//! `parse_limit` (memory.max, pids.max, memory.limit_in_bytes, ...), `parse_cfs_quota`
//! (v1 cpu.cfs_quota_us) and `parse_cpu_max` (v2 cpu.max).
#![no_main]
use apptheus::kernfs::{parse_cfs_quota, parse_cpu_max, parse_limit, parse_u64, Limit};
use apptheus_fuzz::{check_error, line_count, text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = text(data);
    let lines = line_count(&text);
    let number = parse_u64(&text);
    match &number {
        Ok(n) => {
            // A plain number is also a valid limit, the same one (or "unlimited" above the v1
            // threshold).
            assert_eq!(parse_limit(&text), Ok(Limit::from_raw(*n)));
        }
        Err(err) => check_error(err, lines),
    }
    match parse_limit(&text) {
        Ok(Limit::Value(v)) => assert!(v < Limit::UNLIMITED_THRESHOLD),
        Ok(Limit::Unlimited) => {}
        Err(err) => check_error(&err, lines),
    }
    if let Err(err) = parse_cfs_quota(&text) {
        check_error(&err, lines);
    }
    if let Err(err) = parse_cpu_max(&text) {
        check_error(&err, lines);
    }
});
