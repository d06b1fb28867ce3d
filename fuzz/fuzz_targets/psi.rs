//! Pressure stall information: v2 cpu.pressure, memory.pressure, io.pressure, /proc/pressure/*.
#![no_main]
use apptheus::kernfs::psi;
use apptheus_fuzz::{check_error, line_count, text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = text(data);
    let lines = line_count(&text);
    match psi(&text) {
        Ok(pressure) => {
            // The averages are exported as gauges: they must be real numbers.
            for line in std::iter::once(pressure.some).chain(pressure.full) {
                for avg in [line.avg10, line.avg60, line.avg300] {
                    assert!(avg.is_finite() && avg >= 0.0, "average {avg} from {text:?}");
                }
            }
        }
        Err(err) => check_error(&err, lines),
    }
});
