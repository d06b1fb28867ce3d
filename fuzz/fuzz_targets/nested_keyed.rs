//! Nested-keyed files: the generic `kernfs::nested_keyed` and v2 `io.stat` (`io_stat`), and the
//! `MAJ:MIN` device numbers they hold (`Device::parse`).
#![no_main]
use apptheus::kernfs::{io_stat, nested_keyed, Device};
use apptheus_fuzz::{check_error, line_count, text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = text(data);
    let lines = line_count(&text);
    for line in nested_keyed(&text) {
        assert!(line.line >= 1);
        assert!(!line.key.is_empty());
        if let Some(device) = Device::parse(line.key) {
            assert_eq!(Device::parse(&device.to_string()), Some(device));
        }
        for pair in line.pairs() {
            match pair {
                Ok((key, _value)) => assert!(!key.is_empty()),
                Err(err) => check_error(&err, lines),
            }
        }
    }
    for stat in io_stat(&text) {
        match stat {
            Ok(stat) => assert_eq!(Device::parse(&stat.device.to_string()), Some(stat.device)),
            Err(err) => check_error(&err, lines),
        }
    }
});
