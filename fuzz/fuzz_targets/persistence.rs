//! `persistence::decode`: the --persistence.file read at start. A file that decodes must also be
//! writable again (the agent saves what it loaded on its next persistence interval).
#![no_main]
use std::path::Path;

use apptheus::store::persistence::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("/var/lib/apptheus/store.json");
    match decode(path, data) {
        Ok(records) => {
            let containers = serde_json::to_string(&records).expect("decoded records serialise");
            let again = format!(
                r#"{{"format":"apptheus-store","version":1,"written":{{"secs_since_epoch":0,"nanos_since_epoch":0}},"containers":{containers}}}"#
            );
            let back = decode(path, again.as_bytes()).expect("re-encoded records decode");
            assert_eq!(back.len(), records.len());
            for (a, b) in records.iter().zip(&back) {
                assert_eq!(a.info, b.info);
            }
        }
        Err(err) => {
            let shown = err.to_string();
            assert!(!shown.is_empty());
        }
    }
});
