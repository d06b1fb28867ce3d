//! `kernfs::flat_keyed` and `flat_keyed_get` (v2 cpu.stat, memory.stat, memory.events, ...;
//! v1 cpu.stat, cpuacct.stat, memory.stat, memory.oom_control).
#![no_main]
use apptheus::kernfs::{flat_keyed, flat_keyed_get};
use apptheus_fuzz::{check_error, line_count, text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = text(data);
    let lines = line_count(&text);
    let mut pairs = Vec::new();
    let mut first_err = None;
    for item in flat_keyed(&text) {
        match item {
            Ok((key, value)) => {
                assert!(
                    !key.is_empty() && !key.contains(|c: char| c.is_ascii_whitespace()),
                    "key {key:?}"
                );
                pairs.push((key, value));
            }
            Err(err) => {
                check_error(&err, lines);
                first_err.get_or_insert(err);
            }
        }
    }
    // `flat_keyed_get` must agree with the iterator: the first bad line is its error, else
    // each key's last value.
    let keys = [
        pairs.first().map_or("usage_usec", |p| p.0),
        pairs.last().map_or("nr_throttled", |p| p.0),
        "oom_kill",
    ];
    match flat_keyed_get(&text, &keys) {
        Ok(values) => {
            assert!(
                first_err.is_none(),
                "flat_keyed_get accepted a file with a bad line: {first_err:?}"
            );
            for (key, value) in keys.iter().zip(values) {
                let expected = pairs.iter().rev().find(|p| p.0 == *key).map(|p| p.1);
                assert_eq!(value, expected, "key {key:?}");
            }
        }
        Err(err) => assert_eq!(Some(err), first_err),
    }
});
