//! Index of full ids with unique-prefix lookup, and id generation.
//!
//! Full ids are exactly 64 lowercase hexadecimal characters. Any unique
//! prefix of a stored id resolves to it, like `docker`/`containerd` do.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Read;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use sha2::{Digest, Sha256};

/// Length of a full id in characters.
pub const ID_LEN: usize = 64;

/// Errors of the id index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// A full id is not 64 lowercase hex characters.
    #[error("invalid id {0:?}: an id must be exactly 64 lowercase hexadecimal characters")]
    Invalid(String),
    /// The id is already in the index.
    #[error("id {0:?} already exists")]
    Duplicate(String),
    /// An empty prefix was looked up.
    #[error("empty id prefix")]
    EmptyPrefix,
    /// The prefix cannot be part of any id.
    #[error("invalid id prefix {0:?}: must be 1 to 64 lowercase hexadecimal characters")]
    InvalidPrefix(String),
    /// No id starts with the prefix.
    #[error("no id matches {0:?}")]
    NotFound(String),
    /// More than one id starts with the prefix.
    #[error("id prefix {prefix:?} is ambiguous: it matches {count} ids")]
    Ambiguous {
        /// The prefix looked up.
        prefix: String,
        /// Number of ids it matches.
        count: usize,
    },
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Tells whether `id` is a well-formed full id (64 lowercase hex characters).
pub fn is_valid_id(id: &str) -> bool {
    id.len() == ID_LEN && is_lower_hex(id)
}

/// Generates a new random id of 64 lowercase hex characters.
///
/// Uses the kernel's `getrandom(2)`, falling back to `/dev/urandom`. If both
/// fail (practically impossible) a unique but non-random id is derived from
/// the time, pid and a counter, and a warning is logged.
pub fn generate_id() -> String {
    let mut buf = [0u8; ID_LEN / 2];
    if fill_getrandom(&mut buf) || fill_urandom(&mut buf) {
        return hex::encode(buf);
    }
    tracing::warn!("no kernel randomness available, deriving id from time and pid");
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut hasher = Sha256::new();
    hasher.update(now.to_le_bytes());
    hasher.update(std::process::id().to_le_bytes());
    hasher.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hasher.update(format!("{:?}", std::thread::current().id()).as_bytes());
    hex::encode(hasher.finalize())
}

fn fill_getrandom(buf: &mut [u8]) -> bool {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe the writable slice `rest`,
        // which stays borrowed for the duration of the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return false;
        }
        match usize::try_from(n) {
            Ok(n) if n > 0 => filled += n,
            _ => return false,
        }
    }
    true
}

fn fill_urandom(buf: &mut [u8]) -> bool {
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .is_ok()
}

/// Thread-safe set of full ids supporting unique-prefix lookup.
///
/// Lookups are a range scan of an ordered set, so they cost
/// O(log n + number of matches).
#[derive(Debug, Default)]
pub struct IdIndex {
    ids: RwLock<BTreeSet<String>>,
}

impl IdIndex {
    /// Creates an empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a full id. Fails if it is malformed or already present.
    pub fn add(&self, id: &str) -> Result<(), IdError> {
        if !is_valid_id(id) {
            return Err(IdError::Invalid(id.to_owned()));
        }
        let mut ids = self.ids.write().unwrap_or_else(PoisonError::into_inner);
        if !ids.insert(id.to_owned()) {
            return Err(IdError::Duplicate(id.to_owned()));
        }
        Ok(())
    }

    /// Resolves an exact id or a unique prefix to the full id.
    pub fn get(&self, prefix: &str) -> Result<String, IdError> {
        if prefix.is_empty() {
            return Err(IdError::EmptyPrefix);
        }
        if prefix.len() > ID_LEN || !is_lower_hex(prefix) {
            return Err(IdError::InvalidPrefix(prefix.to_owned()));
        }
        let ids = self.ids.read().unwrap_or_else(PoisonError::into_inner);
        if ids.contains(prefix) {
            return Ok(prefix.to_owned());
        }
        let mut matches = ids
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|id| id.starts_with(prefix));
        let first = matches
            .next()
            .ok_or_else(|| IdError::NotFound(prefix.to_owned()))?;
        let others = matches.count();
        if others > 0 {
            return Err(IdError::Ambiguous {
                prefix: prefix.to_owned(),
                count: others + 1,
            });
        }
        Ok(first.clone())
    }

    /// Tells whether the exact id is present.
    pub fn contains(&self, id: &str) -> bool {
        self.ids
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(id)
    }

    /// Removes an exact id; returns whether it was present.
    pub fn delete(&self, id: &str) -> bool {
        self.ids
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id)
    }

    /// Number of ids in the index.
    pub fn len(&self) -> usize {
        self.ids
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Tells whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(prefix: &str) -> String {
        format!("{prefix:0<64}")
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = generate_id();
        let b = generate_id();
        assert!(is_valid_id(&a), "{a}");
        assert!(is_valid_id(&b), "{b}");
        assert_ne!(a, b);
    }

    #[test]
    fn add_validates() {
        let idx = IdIndex::new();
        let cases: &[(&str, bool)] = &[
            (&"a".repeat(64), true),
            (&"A".repeat(64), false),
            (&"a".repeat(63), false),
            (&"a".repeat(65), false),
            (&"g".repeat(64), false),
            ("", false),
        ];
        for (id, ok) in cases {
            assert_eq!(idx.add(id).is_ok(), *ok, "id {id:?}");
            assert_eq!(is_valid_id(id), *ok);
        }
        assert_eq!(
            idx.add(&"a".repeat(64)),
            Err(IdError::Duplicate("a".repeat(64)))
        );
    }

    #[test]
    fn prefix_lookups() {
        let idx = IdIndex::new();
        let abc1 = id("abc1");
        let abc2 = id("abc2");
        let def = id("def");
        let exact_short = id("ab"); // "ab000..." is also a prefix-range neighbour
        for i in [&abc1, &abc2, &def, &exact_short] {
            idx.add(i).unwrap();
        }
        type Want = Result<String, IdError>;
        let too_long = format!("{abc1}0");
        let cases: Vec<(&str, &str, Want)> = vec![
            ("exact", &abc1, Ok(abc1.clone())),
            ("unique prefix", "abc1", Ok(abc1.clone())),
            ("unique prefix def", "de", Ok(def.clone())),
            ("single char", "d", Ok(def.clone())),
            ("exact overlapping", &exact_short, Ok(exact_short.clone())),
            (
                "ambiguous",
                "abc",
                Err(IdError::Ambiguous {
                    prefix: "abc".into(),
                    count: 2,
                }),
            ),
            (
                "ambiguous 3",
                "ab",
                Err(IdError::Ambiguous {
                    prefix: "ab".into(),
                    count: 3,
                }),
            ),
            ("not found", "123", Err(IdError::NotFound("123".into()))),
            ("not found after", "f", Err(IdError::NotFound("f".into()))),
            ("empty", "", Err(IdError::EmptyPrefix)),
            (
                "uppercase",
                "ABC",
                Err(IdError::InvalidPrefix("ABC".into())),
            ),
            ("non hex", "xyz", Err(IdError::InvalidPrefix("xyz".into()))),
            (
                "too long",
                &too_long,
                Err(IdError::InvalidPrefix(too_long.clone())),
            ),
        ];
        for (name, query, want) in cases {
            assert_eq!(idx.get(query), want, "case {name} (query {query:?})");
        }
    }

    #[test]
    fn ambiguous_display() {
        let err = IdError::Ambiguous {
            prefix: "ab".into(),
            count: 2,
        };
        assert!(err.to_string().contains("ambiguous"));
        assert!(err.to_string().contains("\"ab\""));
    }

    #[test]
    fn delete() {
        let idx = IdIndex::new();
        let a = id("a");
        idx.add(&a).unwrap();
        assert!(idx.contains(&a));
        assert_eq!(idx.len(), 1);
        assert!(idx.delete(&a));
        assert!(!idx.delete(&a));
        assert!(idx.is_empty());
        assert_eq!(idx.get("a"), Err(IdError::NotFound("a".into())));
    }
}
