//! `environ::pick` and `environ::label_name`: a launcher's /proc/<pid>/environ (written by the
//! unprivileged user who starts the container) turned into labels. Input: the wanted variable
//! names, one per line, then a NUL byte, then the environ block.
#![no_main]
use apptheus::placement::environ::{label_name, pick};
use libfuzzer_sys::fuzz_target;

fn assert_label_name(name: &str, from: &str) {
    // A valid Prometheus label name, never one the agent sets itself, never reserved (`__`).
    assert!(!name.is_empty(), "empty label name from {from:?}");
    assert!(
        name.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "label {name:?} from {from:?}"
    );
    assert!(
        !name.starts_with(|c: char| c.is_ascii_digit()),
        "label {name:?} from {from:?}"
    );
    assert!(!name.starts_with("__"), "label {name:?} from {from:?}");
    let own = [
        "name", "id", "pid", "user", "job", "instance", "device", "cpu", "kind", "le", "quantile",
    ];
    assert!(
        !own.contains(&name),
        "label {name:?} from {from:?} overrides the agent's own"
    );
}

fuzz_target!(|data: &[u8]| {
    let (names, environ) = match data.iter().position(|b| *b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &[][..]),
    };
    let wanted: Vec<String> = String::from_utf8_lossy(names)
        .lines()
        .take(16)
        .map(str::to_string)
        .collect();
    for var in &wanted {
        assert_label_name(&label_name(var), var);
    }
    let labels = pick(environ, &wanted);
    assert!(labels.len() <= wanted.len());
    for (name, _value) in &labels {
        assert_label_name(name, "pick");
    }
});
