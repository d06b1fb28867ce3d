//! Property tests: no parser panics on any input; flat-keyed round-trips.

use proptest::prelude::*;

use super::*;

/// Runs every parser of the module over `text`, consuming all iterators.
fn exercise_all(text: &str) {
    for item in flat_keyed(text) {
        let _ = item.map(|(k, v)| (k.len(), v));
    }
    let _ = flat_keyed_get(text, &["a", "max", "anon"]);
    let _ = parse_u64(text);
    let _ = parse_limit(text);
    let _ = parse_cfs_quota(text);
    let _ = parse_cpu_max(text);
    for line in nested_keyed(text) {
        let _ = Device::parse(line.key);
        for pair in line.pairs() {
            let _ = pair;
        }
    }
    for item in io_stat(text) {
        let _ = item;
    }
    let _ = psi(text);
    for item in blkio_v1(text) {
        let _ = item;
    }
    for item in pids(text) {
        let _ = item;
    }
    let _ = pid_count(text);
    for item in child_pids(text) {
        let _ = item;
    }
    let _ = uevent_devname(text);
    let _ = uevent_value(text, "MAJOR");
    // Error messages must render too.
    if let Err(e) = parse_u64(text) {
        let _ = e.to_string();
    }
    if let Err(e) = psi(text) {
        let _ = e.to_string();
    }
}

/// Strings over the alphabet the formats are made of, so that inputs reach
/// past the first field more often than fully random text does.
fn format_like() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("some".to_string()),
        Just("full".to_string()),
        Just("Total".to_string()),
        Just("Read".to_string()),
        Just("max".to_string()),
        Just("-1".to_string()),
        Just("avg10=".to_string()),
        Just("avg60=".to_string()),
        Just("avg300=".to_string()),
        Just("total=".to_string()),
        Just("rbytes=".to_string()),
        Just("DEVNAME=".to_string()),
        Just("18446744073709551616".to_string()),
        Just("9223372036854771712".to_string()),
        "[0-9]{1,21}",
        "[0-9]{1,3}:[0-9]{1,3}",
        "[0-9]{1,3}\\.[0-9]{2}",
        "[a-z_=.:]{1,8}",
        "[ \t\n\r]{1,3}",
        ".{0,3}",
    ];
    prop::collection::vec(token, 0..40).prop_map(|tokens| tokens.concat())
}

proptest! {
    #[test]
    fn no_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        exercise_all(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn no_panic_on_arbitrary_strings(text in ".{0,256}") {
        exercise_all(&text);
    }

    #[test]
    fn no_panic_on_format_like_strings(text in format_like()) {
        exercise_all(&text);
    }

    #[test]
    fn flat_keyed_round_trip(
        pairs in prop::collection::vec(("[a-z_][a-z0-9_.]{0,24}", any::<u64>()), 0..64),
        trailing_newline in any::<bool>(),
    ) {
        let mut text = pairs
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join("\n");
        if trailing_newline {
            text.push('\n');
        }
        let parsed: Vec<(String, u64)> = flat_keyed(&text)
            .map(|item| item.map(|(k, v)| (k.to_string(), v)))
            .collect::<Result<_, _>>()
            .unwrap();
        prop_assert_eq!(&parsed, &pairs);

        if let Some((first_key, _)) = pairs.first() {
            let expected = pairs.iter().rev().find(|(k, _)| k == first_key).map(|(_, v)| *v);
            let [got] = flat_keyed_get(&text, &[first_key.as_str()]).unwrap();
            prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn flat_keyed_get_agrees_with_the_line_iterator(text in format_like(), keys in prop::collection::vec("[a-z_]{1,6}", 3)) {
        let keys = [keys[0].as_str(), keys[1].as_str(), keys[2].as_str()];
        prop_assert_eq!(flat_keyed_get(&text, &keys), flat_keyed::flat_keyed_get_by_lines(&text, &keys));
    }

    #[test]
    fn flat_keyed_get_agrees_on_flat_files(
        lines in prop::collection::vec(("[a-c]{1,2}", "[ \t]{0,2}", "[0-9]{0,21}|[0-9 x+-]{1,4}"), 0..12),
        key in "[a-c]{1,2}",
    ) {
        let text: String = lines.iter().map(|(k, sp, v)| format!("{k} {sp}{v}\n")).collect();
        let keys = [key.as_str(), "a", "zz"];
        prop_assert_eq!(flat_keyed_get(&text, &keys), flat_keyed::flat_keyed_get_by_lines(&text, &keys));
    }

    #[test]
    fn single_value_and_limit_round_trip(v in any::<u64>()) {
        prop_assert_eq!(parse_u64(&format!("{v}\n")), Ok(v));
        let expected = if v >= Limit::UNLIMITED_THRESHOLD { Limit::Unlimited } else { Limit::Value(v) };
        prop_assert_eq!(parse_limit(&format!("{v}\n")), Ok(expected));
    }

    #[test]
    fn pid_list_round_trip(list in prop::collection::vec(0i32..=i32::MAX, 0..64)) {
        let text: String = list.iter().map(|p| format!("{p}\n")).collect();
        prop_assert_eq!(pid_count(&text), Ok(list.len()));
        prop_assert_eq!(pids(&text).collect::<Result<Vec<_>, _>>(), Ok(list.clone()));
        let children: String = list.iter().map(|p| format!("{p} ")).collect();
        prop_assert_eq!(child_pids(&children).collect::<Result<Vec<_>, _>>(), Ok(list));
    }

    #[test]
    fn io_stat_round_trip(
        major in any::<u32>(), minor in any::<u32>(),
        values in prop::array::uniform6(any::<u64>()),
    ) {
        let [rbytes, wbytes, rios, wios, dbytes, dios] = values;
        let text = format!(
            "{major}:{minor} rbytes={rbytes} wbytes={wbytes} rios={rios} wios={wios} dbytes={dbytes} dios={dios}\n"
        );
        let stats: Vec<_> = io_stat(&text).collect::<Result<_, _>>().unwrap();
        prop_assert_eq!(stats, vec![IoStat {
            device: Device { major, minor },
            rbytes, wbytes, rios, wios, dbytes, dios,
        }]);
    }
}
