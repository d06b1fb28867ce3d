//! Helpers shared by the fuzz targets: the properties every `kernfs` parser promises
//! (no panic, errors that name an existing line and quote a short excerpt).

use apptheus::kernfs::ParseError;

/// The input as text. Kernel files reach the parsers through `read_to_string`, so only UTF-8
/// matters; lossy conversion keeps every fuzzer input useful.
pub fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// The number of lines of `text` as the parsers count them (every `\n` starts one).
pub fn line_count(text: &str) -> usize {
    text.bytes().filter(|b| *b == b'\n').count() + 1
}

/// A parse error must point at a line of the input (1-based, blank lines counted) and display
/// as one short line: quoted excerpts are shortened, so a huge hostile file cannot make a huge
/// log line.
pub fn check_error(err: &ParseError, lines: usize) {
    assert!(
        err.line >= 1 && err.line <= lines.max(1),
        "error line {} outside 1..={lines}: {err:?}",
        err.line
    );
    let shown = err.to_string();
    assert!(!shown.is_empty());
    assert!(!shown.contains('\n'), "multi-line error: {shown:?}");
    assert!(
        shown.len() <= 512,
        "error message of {} bytes: {shown:?}",
        shown.len()
    );
}
