//! sysfs uevent files (/sys/dev/block/MAJ:MIN/uevent): `uevent_devname`, `uevent_value`.
//! The device name ends up in a label and in a /dev path, so it is checked to be a substring
//! of one line of the file.
#![no_main]
use apptheus::kernfs::{uevent_devname, uevent_value};
use apptheus_fuzz::text;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = text(data);
    if let Some(name) = uevent_devname(&text) {
        assert!(!name.is_empty() && !name.contains('\n'));
        assert_eq!(uevent_value(&text, "DEVNAME"), Some(name));
    }
    // Look up every key the file has (the first few), plus odd ones.
    for line in text.lines().take(8) {
        if let Some((key, _)) = line.trim_ascii().split_once('=') {
            if let Some(value) = uevent_value(&text, key) {
                assert!(!value.is_empty() && !value.contains('\n'));
            }
        }
    }
    for key in ["", "=", "MAJOR", "MINOR", "DEVTYPE"] {
        let _ = uevent_value(&text, key);
    }
});
