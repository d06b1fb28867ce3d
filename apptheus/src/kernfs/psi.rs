//! Pressure stall information (`*.pressure`).

use super::{dec_u64, error::snippet, nested_keyed::NestedLine, ErrorKind, Format, ParseError};

/// One line (`some` or `full`) of a pressure file.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct PressureLine {
    /// Percentage of time stalled, averaged over 10 s.
    pub avg10: f64,
    /// Percentage of time stalled, averaged over 60 s.
    pub avg60: f64,
    /// Percentage of time stalled, averaged over 300 s.
    pub avg300: f64,
    /// Total stall time in microseconds (`total=`).
    pub total_us: u64,
}

/// A parsed pressure file.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Pressure {
    /// Time some tasks were stalled.
    pub some: PressureLine,
    /// Time all non-idle tasks were stalled at once; absent from
    /// `cpu.pressure` before Linux 5.13.
    pub full: Option<PressureLine>,
}

/// Parses a PSI file:
/// `some avg10=0.00 avg60=0.00 avg300=0.00 total=12345` and an optional
/// `full ...` line of the same shape.
///
/// Used for v2 `cpu.pressure`, `memory.pressure`, `io.pressure`,
/// `irq.pressure` and the system-wide `/proc/pressure/{cpu,memory,io,irq}`.
/// Each line must carry `avg10`, `avg60`, `avg300` and `total`; other keys
/// are ignored. The `some` line is required; a line keyed other than
/// `some`/`full` is an error.
pub fn psi(text: &str) -> Result<Pressure, ParseError> {
    let mut some = None;
    let mut full = None;
    for line in super::nested_keyed::nested_keyed_as(text, Format::Psi) {
        match line.key {
            "some" => some = Some(parse_line(&line)?),
            "full" => full = Some(parse_line(&line)?),
            other => {
                return Err(ParseError::new(
                    Format::Psi,
                    line.line,
                    ErrorKind::UnexpectedLine(snippet(other)),
                ))
            }
        }
    }
    let some = some.ok_or_else(|| ParseError::new(Format::Psi, 1, ErrorKind::Missing("some")))?;
    Ok(Pressure { some, full })
}

fn parse_line(line: &NestedLine<'_>) -> Result<PressureLine, ParseError> {
    let err = |kind| ParseError::new(Format::Psi, line.line, kind);
    let (mut avg10, mut avg60, mut avg300, mut total) = (None, None, None, None);
    for pair in line.pairs() {
        let (key, value) = pair?;
        match key {
            "avg10" => avg10 = Some(percent(value).map_err(err)?),
            "avg60" => avg60 = Some(percent(value).map_err(err)?),
            "avg300" => avg300 = Some(percent(value).map_err(err)?),
            "total" => total = Some(dec_u64(value).map_err(err)?),
            _ => {}
        }
    }
    Ok(PressureLine {
        avg10: avg10.ok_or_else(|| err(ErrorKind::Missing("avg10")))?,
        avg60: avg60.ok_or_else(|| err(ErrorKind::Missing("avg60")))?,
        avg300: avg300.ok_or_else(|| err(ErrorKind::Missing("avg300")))?,
        total_us: total.ok_or_else(|| err(ErrorKind::Missing("total")))?,
    })
}

/// Parses a plain decimal like `12.34`: digits with at most one dot, no
/// sign, exponent, `inf` or `nan`. A number too long to be a finite `f64`
/// (over 308 digits) is out of range, not infinity.
fn percent(token: &str) -> Result<f64, ErrorKind> {
    let bad = || ErrorKind::NotANumber(snippet(token));
    let mut digits = 0usize;
    let mut dots = 0usize;
    for byte in token.bytes() {
        match byte {
            b'0'..=b'9' => digits = digits.saturating_add(1),
            b'.' => dots = dots.saturating_add(1),
            _ => return Err(bad()),
        }
    }
    if digits == 0 || dots > 1 {
        return Err(bad());
    }
    match token.parse::<f64>() {
        Ok(value) if value.is_finite() => Ok(value),
        Ok(_) => Err(ErrorKind::OutOfRange(snippet(token))),
        Err(_) => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU: &str = include_str!("../../tests/fixtures/unified/root.cpu.pressure");
    const MEMORY: &str = include_str!("../../tests/fixtures/unified/root.memory.pressure");
    const IO: &str = include_str!("../../tests/fixtures/unified/root.io.pressure");

    #[test]
    fn fixtures() {
        let cpu = psi(CPU).unwrap();
        assert_eq!(
            cpu.some,
            PressureLine {
                avg10: 0.03,
                avg60: 1.59,
                avg300: 1.85,
                total_us: 10385390
            }
        );
        assert_eq!(cpu.full, Some(PressureLine::default()));

        let memory = psi(MEMORY).unwrap();
        assert_eq!(memory.some, PressureLine::default());
        assert_eq!(memory.full, Some(PressureLine::default()));

        let io = psi(IO).unwrap();
        assert_eq!(io.some.total_us, 3702035);
        assert_eq!(io.some.avg10, 0.13);
        let full = io.full.unwrap();
        assert_eq!((full.avg10, full.avg60, full.avg300), (0.11, 0.56, 0.43));
        assert_eq!(full.total_us, 2809200);
    }

    #[test]
    fn some_only_and_unknown_keys() {
        let p = psi("some avg10=100.00 avg60=5 avg300=0.5 total=1 extra=x").unwrap();
        assert_eq!(p.some.avg10, 100.0);
        assert_eq!(p.some.avg60, 5.0);
        assert_eq!(p.full, None);
    }

    #[test]
    fn errors() {
        let e = psi("").unwrap_err();
        assert_eq!(
            (e.format, e.line, e.kind),
            (Format::Psi, 1, ErrorKind::Missing("some"))
        );
        let e = psi("full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n").unwrap_err();
        assert_eq!(e.kind, ErrorKind::Missing("some"));
        let e =
            psi("some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nhalf avg10=0.00\n").unwrap_err();
        assert_eq!(e.to_string(), "psi line 2: unexpected line key \"half\"");
        let e = psi("some avg10=0.00 avg60=0.00 total=0\n").unwrap_err();
        assert_eq!((e.line, e.kind), (1, ErrorKind::Missing("avg300")));
        let e = psi("\nsome avg10=nan avg60=0.00 avg300=0.00 total=0\n").unwrap_err();
        assert_eq!((e.line, e.kind), (2, ErrorKind::NotANumber("nan".into())));
        for bad in ["", ".", "1.2.3", "-1.0", "+1", "1e3", "inf"] {
            assert!(percent(bad).is_err(), "{bad:?}");
        }
        let e = psi("some avg10=0.00 avg60=0.00 avg300=0.00 total=-1\n").unwrap_err();
        assert!(matches!(e.kind, ErrorKind::NotAnInteger(_)));
        let e = psi("some avg10\n").unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadPair("avg10".into()));
    }

    /// Regression input of the `psi` fuzz target (its check that averages are finite): 309
    /// digits or more parse as an `f64` infinity, which would be exported as a `+Inf` gauge.
    #[test]
    fn an_average_too_long_for_f64_is_out_of_range() {
        let huge = format!("1{}", "0".repeat(400));
        let e = psi(&format!(
            "some avg10={huge} avg60=0.00 avg300=0.00 total=0\n"
        ))
        .unwrap_err();
        assert_eq!(e.line, 1);
        assert!(matches!(e.kind, ErrorKind::OutOfRange(_)), "{e:?}");
        assert!(e.to_string().len() < 200, "{e}");
        let largest = format!("{}.5", "9".repeat(308));
        assert!(percent(&largest).is_ok_and(f64::is_finite));
        assert!(percent(&format!("0.{}1", "0".repeat(400))).is_ok_and(|v| v == 0.0));
    }
}
