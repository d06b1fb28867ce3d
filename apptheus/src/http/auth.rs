//! HTTP basic authentication against the bcrypt hashes of `basic_auth_users`, as exporter-toolkit
//! does it: an unknown user is checked against a fixed hash (so timing does not tell which users
//! exist), one bcrypt runs at a time (it is slow on purpose), and outcomes are cached so that
//! scrapes with the right password cost a hash lookup.
//!
//! The cache is keyed by SHA-256 of (user, stored hash, password), not by the password itself,
//! and remembers failures too (a repeated wrong password costs no bcrypt). It holds at most
//! [`CACHE_SIZE`] entries; when full, an arbitrary entry is evicted (Go evicts at random).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use axum::http::HeaderValue;
use base64::Engine as _;

/// exporter-toolkit's size.
pub const CACHE_SIZE: usize = 100;

/// bcrypt of "fakepassword" (exporter-toolkit's), checked for unknown users.
const FAKE_HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";

#[derive(Default)]
pub struct Authenticator {
    cache: Mutex<HashMap<[u8; 32], bool>>,
    /// Serialises bcrypt runs (exporter-toolkit's bcryptMtx).
    bcrypt: tokio::sync::Mutex<()>,
}

impl Authenticator {
    /// Whether the `Authorization` header names one of `users` with its password.
    pub async fn check(&self, users: &BTreeMap<String, String>, authorization: Option<&HeaderValue>) -> bool {
        let Some((user, password)) = authorization.and_then(parse_basic) else { return false };
        let (hash, known) = match users.get(&user) {
            Some(h) => (h.clone(), true),
            None => (FAKE_HASH.to_string(), false),
        };
        let key = cache_key(&user, &hash, &password);
        if let Some(ok) = self.cached(&key) {
            return ok && known;
        }
        let _one_at_a_time = self.bcrypt.lock().await;
        // Another request may have done this very check while we waited.
        if let Some(ok) = self.cached(&key) {
            return ok && known;
        }
        let verified = tokio::task::spawn_blocking(move || bcrypt::verify(password.as_bytes(), &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        let ok = verified && known;
        self.remember(key, ok);
        ok
    }

    fn cached(&self, key: &[u8; 32]) -> Option<bool> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(key).copied()
    }

    fn remember(&self, key: [u8; 32], ok: bool) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_SIZE && !cache.contains_key(&key) {
            if let Some(evict) = cache.keys().next().copied() {
                cache.remove(&evict);
            }
        }
        cache.insert(key, ok);
    }

    #[cfg(test)]
    fn cache_len(&self) -> usize {
        self.cache.lock().unwrap().len()
    }
}

fn cache_key(user: &str, hash: &str, password: &str) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [user, hash, password] {
        // Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

/// `Basic base64(user:password)`, as Go's `Request.BasicAuth` reads it (scheme case-insensitive,
/// standard base64, split at the first ':').
pub fn parse_basic(value: &HeaderValue) -> Option<(String, String)> {
    let value = value.to_str().ok()?;
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case("basic ") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> HeaderValue {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {token}")).unwrap()
    }

    fn users() -> BTreeMap<String, String> {
        // Cost 4 keeps the test fast.
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        BTreeMap::from([("alice".to_string(), hash)])
    }

    #[test]
    fn parses_basic_headers_like_go() {
        assert_eq!(parse_basic(&basic("a", "b:c")), Some(("a".into(), "b:c".into())));
        assert_eq!(parse_basic(&HeaderValue::from_static("basic YTpi")), Some(("a".into(), "b".into())));
        assert_eq!(parse_basic(&HeaderValue::from_static("Bearer YTpi")), None);
        assert_eq!(parse_basic(&HeaderValue::from_static("Basic !!!")), None);
        assert_eq!(parse_basic(&HeaderValue::from_static("Basic bm9jb2xvbg==")), None, "no colon");
        assert_eq!(parse_basic(&HeaderValue::from_static("Basic")), None);
    }

    #[tokio::test]
    async fn right_wrong_unknown_and_missing() {
        let auth = Authenticator::default();
        let users = users();
        assert!(auth.check(&users, Some(&basic("alice", "s3cret"))).await);
        assert!(!auth.check(&users, Some(&basic("alice", "wrong"))).await);
        assert!(!auth.check(&users, Some(&basic("mallory", "fakepassword"))).await, "the fake hash never lets anyone in");
        assert!(!auth.check(&users, None).await);
        // Cached: the same answers without bcrypt.
        assert_eq!(auth.cache_len(), 3);
        assert!(auth.check(&users, Some(&basic("alice", "s3cret"))).await);
        assert!(!auth.check(&users, Some(&basic("alice", "wrong"))).await);
        assert_eq!(auth.cache_len(), 3);
        // A changed hash (reloaded configuration) is a different key: the old password fails.
        let changed = BTreeMap::from([("alice".to_string(), bcrypt::hash("new", 4).unwrap())]);
        assert!(!auth.check(&changed, Some(&basic("alice", "s3cret"))).await);
        assert!(auth.check(&changed, Some(&basic("alice", "new"))).await);
    }

    #[tokio::test]
    async fn cache_is_bounded() {
        let auth = Authenticator::default();
        let users = users();
        for i in 0..CACHE_SIZE + 20 {
            auth.remember(cache_key("u", "h", &i.to_string()), false);
        }
        assert_eq!(auth.cache_len(), CACHE_SIZE);
        assert!(auth.check(&users, Some(&basic("alice", "s3cret"))).await);
        assert_eq!(auth.cache_len(), CACHE_SIZE);
    }

    #[test]
    fn cache_keys_do_not_collide_on_concatenation() {
        assert_ne!(cache_key("ab", "c", "d"), cache_key("a", "bc", "d"));
    }
}
