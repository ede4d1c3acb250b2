//! The request cache: CRI Exec/Attach/PortForward requests waiting for their
//! client to connect, each under a single-use random token that expires.

use base64::Engine;
use rand::RngCore;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bytes of randomness in a token (encoded as URL-safe base64 without padding).
pub const TOKEN_BYTES: usize = 16;

/// A new random URL-safe token.
pub fn new_token() -> String {
    let mut raw = [0u8; TOKEN_BYTES];
    rand::thread_rng().fill_bytes(&mut raw);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

/// The cache is full of unexpired requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("maximum number of in-flight streaming requests ({0}) exceeded")]
pub struct CacheFull(pub usize);

struct Inner<T> {
    entries: HashMap<String, (T, Instant)>,
    /// Tokens in insertion order, which is expiry order (fixed TTL).
    order: VecDeque<(String, Instant)>,
}

/// Requests by token; each is taken at most once and only before it expires.
pub struct RequestCache<T> {
    ttl: Duration,
    max: usize,
    inner: Mutex<Inner<T>>,
}

impl<T> RequestCache<T> {
    /// A cache whose entries live `ttl` and which holds at most `max`.
    pub fn new(ttl: Duration, max: usize) -> Self {
        RequestCache {
            ttl,
            max: max.max(1),
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        // A panic while holding the lock cannot leave the maps inconsistent
        // in a way that matters here: keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `value` and returns its new token.
    pub fn insert(&self, value: T) -> Result<String, CacheFull> {
        self.insert_at(value, Instant::now())
    }

    /// [`Self::insert`] at a given time (for tests).
    pub fn insert_at(&self, value: T, now: Instant) -> Result<String, CacheFull> {
        let mut inner = self.lock();
        // Drop expired (and already consumed) entries from the front.
        while let Some((token, expiry)) = inner.order.front().cloned() {
            if expiry <= now || !inner.entries.contains_key(&token) {
                inner.order.pop_front();
                if expiry <= now {
                    inner.entries.remove(&token);
                }
            } else {
                break;
            }
        }
        if inner.entries.len() >= self.max {
            return Err(CacheFull(self.max));
        }
        let mut token = new_token();
        while inner.entries.contains_key(&token) {
            token = new_token();
        }
        let expiry = now + self.ttl;
        inner.entries.insert(token.clone(), (value, expiry));
        inner.order.push_back((token.clone(), expiry));
        Ok(token)
    }

    /// Takes the request stored under `token`, if any and not expired.
    pub fn consume(&self, token: &str) -> Option<T> {
        self.consume_at(token, Instant::now())
    }

    /// [`Self::consume`] at a given time (for tests).
    pub fn consume_at(&self, token: &str, now: Instant) -> Option<T> {
        let mut inner = self.lock();
        let (value, expiry) = inner.entries.remove(token)?;
        if expiry <= now {
            return None;
        }
        Some(value)
    }

    /// Number of stored entries (expired ones included until pruned).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_url_safe_and_distinct() {
        let a = new_token();
        let b = new_token();
        assert_ne!(a, b);
        assert!(a.len() >= 16);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }

    #[test]
    fn single_use_expiry_and_bound() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        let cache = RequestCache::new(ttl, 2);
        let a = cache.insert_at("a", t0).unwrap();
        let b = cache.insert_at("b", t0).unwrap();
        // Full of live entries.
        assert_eq!(cache.insert_at("c", t0), Err(CacheFull(2)));

        // (token, time offset, expected)
        let cases: Vec<(&str, Duration, Option<&str>)> = vec![
            (&a, Duration::from_secs(1), Some("a")),
            (&a, Duration::from_secs(2), None),     // reused
            ("nope", Duration::from_secs(1), None), // unknown
            (&b, ttl, None),                        // expired at the deadline
            (&b, Duration::from_secs(1), None),     // and gone after
        ];
        for (i, (token, at, want)) in cases.into_iter().enumerate() {
            assert_eq!(cache.consume_at(token, t0 + at), want, "case {i}");
        }
        // Room again.
        let c = cache.insert_at("c", t0 + Duration::from_secs(2)).unwrap();
        assert_eq!(cache.consume_at(&c, t0 + Duration::from_secs(3)), Some("c"));
    }

    #[test]
    fn expired_entries_make_room() {
        let t0 = Instant::now();
        let cache = RequestCache::new(Duration::from_millis(10), 1);
        let old = cache.insert_at(1, t0).unwrap();
        let new = cache.insert_at(2, t0 + Duration::from_millis(10)).unwrap();
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.consume_at(&old, t0), None);
        assert_eq!(
            cache.consume_at(&new, t0 + Duration::from_millis(11)),
            Some(2)
        );
        assert!(cache.is_empty());
    }
}
