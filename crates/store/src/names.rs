//! Unique name reservation for sandboxes and containers.
//!
//! The CRI requires sandbox and container names to be unique; a name is
//! reserved for an id before the object is created and released when the
//! object is removed.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Errors of the name index.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is already held by another id.
    #[error("name {name:?} is reserved for {holder_id:?}")]
    Reserved {
        /// The requested name.
        name: String,
        /// The id currently holding the name.
        holder_id: String,
    },
}

/// Thread-safe map from reserved names to the ids holding them.
#[derive(Debug, Default)]
pub struct NameIndex {
    names: Mutex<HashMap<String, String>>,
}

impl NameIndex {
    /// Creates an empty index.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, String>> {
        self.names.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserves `name` for `id`.
    ///
    /// Succeeds if the name is free or already reserved for the same id
    /// (idempotent); fails with [`NameError::Reserved`] naming the holder if
    /// another id holds it.
    pub fn reserve(&self, name: &str, id: &str) -> Result<(), NameError> {
        self.reserve_new(name, id).map(|_| ())
    }

    /// Like [`NameIndex::reserve`], but tells whether this call created the
    /// reservation (`true`) or it already existed for `id` (`false`).
    pub(crate) fn reserve_new(&self, name: &str, id: &str) -> Result<bool, NameError> {
        let mut names = self.lock();
        match names.get(name) {
            Some(holder) if holder == id => Ok(false),
            Some(holder) => Err(NameError::Reserved {
                name: name.to_owned(),
                holder_id: holder.clone(),
            }),
            None => {
                names.insert(name.to_owned(), id.to_owned());
                tracing::debug!(name, id, "reserved name");
                Ok(true)
            }
        }
    }

    /// Releases `name`, whoever holds it. Releasing a free name is a no-op.
    pub fn release(&self, name: &str) {
        if let Some(id) = self.lock().remove(name) {
            tracing::debug!(name, id, "released name");
        }
    }

    /// Releases every name held by `id`.
    pub fn release_by_id(&self, id: &str) {
        self.lock().retain(|name, holder| {
            let keep = holder != id;
            if !keep {
                tracing::debug!(name, id, "released name");
            }
            keep
        });
    }

    /// Returns the id holding `name`, if any.
    pub fn get(&self, name: &str) -> Option<String> {
        self.lock().get(name).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};
    use std::thread;

    #[test]
    fn reserve_is_idempotent_and_exclusive() {
        let idx = NameIndex::new();
        idx.reserve("n", "a").unwrap();
        idx.reserve("n", "a").unwrap();
        let err = idx.reserve("n", "b").unwrap_err();
        assert_eq!(
            err,
            NameError::Reserved {
                name: "n".into(),
                holder_id: "a".into()
            }
        );
        assert_eq!(idx.get("n").as_deref(), Some("a"));
        assert!(idx.reserve_new("n", "a").map(|new| !new).unwrap());
    }

    #[test]
    fn release_and_release_by_id() {
        let idx = NameIndex::new();
        idx.reserve("n1", "a").unwrap();
        idx.reserve("n2", "a").unwrap();
        idx.reserve("n3", "b").unwrap();
        idx.release("n1");
        assert_eq!(idx.get("n1"), None);
        idx.release("n1");
        idx.release_by_id("a");
        assert_eq!(idx.get("n2"), None);
        assert_eq!(idx.get("n3").as_deref(), Some("b"));
        idx.reserve("n2", "c").unwrap();
    }

    #[test]
    fn display_names_the_holder() {
        let idx = NameIndex::new();
        idx.reserve("k8s_POD_a_b_c_0", "abcd").unwrap();
        let msg = idx
            .reserve("k8s_POD_a_b_c_0", "ef01")
            .unwrap_err()
            .to_string();
        assert_eq!(msg, r#"name "k8s_POD_a_b_c_0" is reserved for "abcd""#);
    }

    #[test]
    fn reservation_race_has_exactly_one_winner() {
        const THREADS: usize = 16;
        for _round in 0..20 {
            let idx = Arc::new(NameIndex::new());
            let barrier = Arc::new(Barrier::new(THREADS));
            let handles: Vec<_> = (0..THREADS)
                .map(|i| {
                    let idx = Arc::clone(&idx);
                    let barrier = Arc::clone(&barrier);
                    thread::spawn(move || {
                        let id = format!("{i:064x}");
                        barrier.wait();
                        (id.clone(), idx.reserve("k8s_POD_race", &id))
                    })
                })
                .collect();
            let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            let winners: Vec<_> = results.iter().filter(|(_, r)| r.is_ok()).collect();
            assert_eq!(winners.len(), 1, "exactly one thread must win");
            let winner = winners[0].0.clone();
            assert_eq!(idx.get("k8s_POD_race"), Some(winner.clone()));
            for (id, res) in &results {
                if id == &winner {
                    continue;
                }
                let err = res.as_ref().unwrap_err();
                let NameError::Reserved { name, holder_id } = err;
                assert_eq!(name, "k8s_POD_race");
                assert_eq!(holder_id, &winner);
                assert!(err.to_string().contains(&winner));
            }
        }
    }
}
