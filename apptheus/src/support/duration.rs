//! Durations as Prometheus and the Go original write them: `200ms`, `0.5s`, `5m`, `1h30m`.
//!
//! Go's `time.ParseDuration` (what the original's flags used) accepts fractions such as `0.5s`;
//! Prometheus' `model.Duration` adds `d`, `w` and `y`. We accept the union of both.

use std::time::Duration;

const UNITS: &[(&str, f64)] = &[
    ("ns", 1e-9),
    ("us", 1e-6),
    ("µs", 1e-6),
    ("ms", 1e-3),
    ("s", 1.0),
    ("m", 60.0),
    ("h", 3600.0),
    ("d", 86_400.0),
    ("w", 604_800.0),
    ("y", 31_536_000.0),
];

/// Parse a duration such as `0.5s` or `1h30m`. A bare `0` is accepted (as in Go).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err("empty duration".into());
    }
    let mut rest = text;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("duration {text:?} is missing a unit (ms, s, m, h, d, w, y)"))?;
        if number_len == 0 {
            return Err(format!("duration {text:?} is not of the form 1h30m, 0.5s, 200ms"));
        }
        let value: f64 = rest[..number_len]
            .parse()
            .map_err(|_| format!("duration {text:?} has a bad number {:?}", &rest[..number_len]))?;
        rest = &rest[number_len..];
        // Longest unit first so that "ms" is not read as "m" followed by garbage.
        let (unit, scale) = UNITS
            .iter()
            .filter(|(u, _)| rest.starts_with(u))
            .max_by_key(|(u, _)| u.len())
            .ok_or_else(|| format!("duration {text:?} has an unknown unit (use ns, us, ms, s, m, h, d, w, y)"))?;
        rest = &rest[unit.len()..];
        total += value * scale;
    }
    Duration::try_from_secs_f64(total).map_err(|_| format!("duration {text:?} is out of range"))
}

/// Format a duration the way Go prints it, for logs (`500ms`, `5m0s` is printed as `300s`).
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_nanos() % 1_000_000 == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_go_and_prometheus_forms() {
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
    }

    #[test]
    fn rejects_garbage_with_a_message() {
        for bad in ["", "5", "s", "5x", "1.2.3s", "-1s", "5 m", "ms5"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("duration"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn formats_for_logs() {
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_duration(Duration::from_secs(300)), "300s");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC*") { let _ = parse_duration(&s); }
    }
}
