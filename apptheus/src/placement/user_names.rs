//! User names for the `user` label, from the system's user database (NSS, through `uzers`).
//! A lookup reads `/etc/passwd` (or asks another NSS source) each time, which is a good part of
//! a placement's user-space time in a burst of launchers from the same users; names are kept
//! for a few minutes, so a renamed user shows up soon enough.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const KEEP: Duration = Duration::from_secs(300);

static CACHE: Mutex<Option<HashMap<u32, (Instant, String)>>> = Mutex::new(None);

/// The name of `uid`, or the number itself when it has no entry.
pub fn name_of(uid: u32) -> String {
    let now = Instant::now();
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some((at, name)) = cache.get(&uid) {
        if now.duration_since(*at) < KEEP {
            return name.clone();
        }
    }
    // Bounded: forget everything rather than grow without limit on a host with many users.
    if cache.len() >= 4096 {
        cache.clear();
    }
    let name = uzers::get_user_by_uid(uid)
        .map(|u| u.name().to_string_lossy().into_owned())
        .unwrap_or_else(|| uid.to_string());
    cache.insert(uid, (now, name.clone()));
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_user_database() {
        assert_eq!(name_of(0), "root");
        assert_eq!(name_of(0), "root", "cached");
        // No entry: the number.
        assert_eq!(name_of(4_000_000_000), "4000000000");
    }
}
