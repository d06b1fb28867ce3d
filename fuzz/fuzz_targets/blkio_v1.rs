//! cgroup v1 blkio per-device files (blkio.throttle.io_service_bytes[_recursive],
//! blkio.throttle.io_serviced[_recursive], blkio.bfq.*, ...).
#![no_main]
use apptheus::kernfs::{blkio_v1, BlkioOp, Device};
use apptheus_fuzz::{check_error, line_count, text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = text(data);
    let lines = line_count(&text);
    for entry in blkio_v1(&text) {
        match entry {
            Ok(entry) => {
                assert_eq!(BlkioOp::parse(entry.op.as_str()), Some(entry.op));
                assert_eq!(Device::parse(&entry.device.to_string()), Some(entry.device));
            }
            Err(err) => check_error(&err, lines),
        }
    }
    for word in text.split_ascii_whitespace().take(8) {
        if let Some(op) = BlkioOp::parse(word) {
            assert_eq!(BlkioOp::parse(op.as_str()), Some(op));
        }
    }
});
