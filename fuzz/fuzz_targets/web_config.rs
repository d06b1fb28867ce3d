//! `http::web_config::parse`: the --web.config.file YAML of exporter-toolkit (TLS, basic auth,
//! headers, rate limit). The file is the administrator's, but a parser that panics or hangs on
//! some YAML would take the agent down at start or on a reload.
#![no_main]
use std::path::Path;

use apptheus::http::web_config::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse(text, Path::new("/etc/apptheus")) {
        Ok(config) => {
            if let Some(tls) = &config.tls {
                for file in tls.files() {
                    assert!(file.is_absolute(), "relative file {file:?}");
                }
                assert!(tls.min_version <= tls.max_version);
            }
            if let Some(rl) = config.rate_limit {
                assert!(!rl.interval.is_zero() && rl.burst >= 1);
            }
        }
        Err(err) => {
            // One line: it is logged, and printed as the start-up error.
            let shown = format!("{err:#}");
            assert!(!shown.is_empty());
            assert!(!shown.contains('\n'), "multi-line error: {shown:?}");
        }
    }
});
