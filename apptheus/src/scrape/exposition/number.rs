//! Numbers as the two text formats spell them, appended to a byte buffer without allocating.
//! Nearly every exported value is a whole number (bytes, counts), written with `itoa`; the
//! rest go through the standard library's shortest round-trip formatting.

use std::io::Write as _;

/// Below 2^53 every whole f64 is an exact integer and its neighbours are at most 1 apart, so the
/// shortest digits that round-trip are the integer's own: `{}` and `{:?}` print exactly them.
const EXACT: f64 = 9_007_199_254_740_992.0;

/// `v` as an i64 when that prints the same digits as the float formatting would.
fn whole(v: f64) -> Option<i64> {
    // -0.0 is left to the float formatting, which keeps its sign.
    let negative_zero = v == 0.0 && v.is_sign_negative();
    (v.fract() == 0.0 && v.abs() < EXACT && !negative_zero).then_some(v as i64)
}

/// The text format 0.0.4 as the prometheus crate writes it (`f64::to_string`): shortest
/// round-trip digits without exponent (`1`, `0.25`, `0.000001024`), `inf`, `-inf`, `NaN`.
pub fn text(v: f64, out: &mut Vec<u8>) {
    match whole(v) {
        Some(i) => out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes()),
        None => {
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{v}");
        }
    }
}

/// OpenMetrics: `+Inf`, `-Inf`, `NaN`, otherwise the shortest round-trip form with a `.` or an
/// exponent (`1.0`, `0.25`, `1e-5`, `1e21`: Rust's `Debug` for f64).
pub fn openmetrics(v: f64, out: &mut Vec<u8>) {
    if v.is_nan() {
        out.extend_from_slice(b"NaN");
    } else if v == f64::INFINITY {
        out.extend_from_slice(b"+Inf");
    } else if v == f64::NEG_INFINITY {
        out.extend_from_slice(b"-Inf");
    } else if let Some(i) = whole(v) {
        out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
        out.extend_from_slice(b".0");
    } else {
        let _ = write!(out, "{v:?}");
    }
}

/// An integer (OpenMetrics histogram counts).
pub fn unsigned(v: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// A bucket bound or quantile as an OpenMetrics label value: the digits the text format writes,
/// so that `le` series are the same whichever format Prometheus negotiated, plus `.0` on whole
/// numbers as OpenMetrics wants (`le="1.0"`, as Go writes it).
pub fn openmetrics_bound(v: f64, out: &mut Vec<u8>) {
    if v.is_nan() || v.is_infinite() {
        return openmetrics(v, out);
    }
    let start = out.len();
    text(v, out);
    if !out[start..].iter().any(|&b| b == b'.' || b == b'e') {
        out.extend_from_slice(b".0");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spelled(f: fn(f64, &mut Vec<u8>), v: f64) -> String {
        let mut out = Vec::new();
        f(v, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// What the OpenMetrics encoder wrote before whole numbers took the `itoa` path.
    fn openmetrics_reference(v: f64) -> String {
        if v.is_nan() {
            "NaN".into()
        } else if v == f64::INFINITY {
            "+Inf".into()
        } else if v == f64::NEG_INFINITY {
            "-Inf".into()
        } else {
            format!("{v:?}")
        }
    }

    fn check(v: f64) {
        assert_eq!(spelled(text, v), v.to_string(), "text, {v:e}");
        assert_eq!(spelled(openmetrics, v), openmetrics_reference(v), "openmetrics, {v:e}");
    }

    #[test]
    fn edges_match_the_standard_formatting() {
        let edges = [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.5,
            1e-9,
            EXACT - 1.0,
            EXACT,
            -EXACT + 1.0,
            EXACT + 2.0,
            1e16,
            1e21,
            u64::MAX as f64,
            i64::MIN as f64,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            1700000000.123456,
        ];
        for v in edges {
            check(v);
        }
        assert_eq!(spelled(text, f64::INFINITY), "inf");
        assert_eq!(spelled(openmetrics, 3.0), "3.0");
        assert_eq!(spelled(openmetrics_bound, 1.024e-6), "0.000001024");
        assert_eq!(spelled(openmetrics_bound, 10.0), "10.0");
        assert_eq!(spelled(openmetrics_bound, f64::INFINITY), "+Inf");
    }

    proptest! {
        #[test]
        fn any_float_matches_the_standard_formatting(bits in any::<u64>()) {
            check(f64::from_bits(bits));
        }

        #[test]
        fn whole_numbers_match_the_standard_formatting(v in any::<u64>(), shift in 0u32..64) {
            check((v >> shift) as f64);
            check(-((v >> shift) as f64));
        }
    }
}
