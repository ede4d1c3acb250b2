//! Content-addressed blob store: `<root>/sha256/<hex>`, written through
//! `<root>/ingest/` and verified (digest and size) before it becomes visible.

use crate::reference::is_digest;
use futures_util::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

/// Errors of the content store.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// Not a `sha256:<hex>` digest.
    #[error("invalid digest {0:?}")]
    InvalidDigest(String),
    /// The content hashed to something else.
    #[error("digest mismatch for {expected}: the content hashes to {actual}")]
    DigestMismatch {
        /// The digest asked for.
        expected: String,
        /// What the bytes hashed to.
        actual: String,
    },
    /// The content has the wrong length.
    #[error("size mismatch for {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The digest asked for.
        digest: String,
        /// The descriptor's size.
        expected: u64,
        /// Bytes received (so far).
        actual: u64,
    },
    /// Receiving the content failed.
    #[error("transfer of {digest} failed: {source}")]
    Transfer {
        /// The blob.
        digest: String,
        /// The HTTP error.
        source: reqwest::Error,
    },
    /// The registry sent nothing for longer than the pull progress timeout.
    #[error("transfer of {digest} stalled: no data received for {timeout:?} after {received} of {size} bytes (pull_progress_timeout)")]
    Stalled {
        /// The blob.
        digest: String,
        /// Bytes received before the stall.
        received: u64,
        /// Its size.
        size: u64,
        /// The progress timeout.
        timeout: std::time::Duration,
    },
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ContentError + '_ {
    move |source| ContentError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Async locks by key, dropped when nobody holds them.
#[derive(Default)]
pub struct KeyedLocks {
    map: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    /// Waits for and takes the lock of `key`.
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, w| w.strong_count() > 0);
            match map.get(key).and_then(Weak::upgrade) {
                Some(m) => m,
                None => {
                    let m = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key.to_string(), Arc::downgrade(&m));
                    m
                }
            }
        };
        m.lock_owned().await
    }
}

/// Deletes a file when dropped, if it still exists.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The blob store.
pub struct ContentStore {
    root: PathBuf,
    locks: KeyedLocks,
}

/// sha256 of `bytes` as `sha256:<hex>`.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl ContentStore {
    /// Opens (creating) the store under `root`, discarding unfinished writes.
    pub fn open(root: &Path) -> Result<ContentStore, ContentError> {
        // Private: blobs of images pulled with credentials are secrets.
        crius_store::private::dir(root).map_err(io_err(root))?;
        let blobs = root.join("sha256");
        crius_store::private::dir(&blobs).map_err(io_err(&blobs))?;
        let ingest = root.join("ingest");
        // Unfinished writes have random names: one that cannot be removed
        // is left behind with a warning, never a reason not to start.
        if let Err(e) = crate::tree::remove_tree_if_exists(&ingest) {
            tracing::warn!(path = %ingest.display(), error = %e, "cannot remove unfinished blob writes");
        }
        crius_store::private::dir(&ingest).map_err(io_err(&ingest))?;
        Ok(ContentStore {
            root: root.to_path_buf(),
            locks: KeyedLocks::default(),
        })
    }

    /// The file of blob `digest`.
    pub fn path(&self, digest: &str) -> Result<PathBuf, ContentError> {
        if !is_digest(digest) {
            return Err(ContentError::InvalidDigest(digest.to_string()));
        }
        Ok(self.root.join("sha256").join(&digest["sha256:".len()..]))
    }

    /// Whether blob `digest` of `size` bytes is present.
    pub fn has(&self, digest: &str, size: u64) -> bool {
        self.path(digest)
            .ok()
            .and_then(|p| std::fs::metadata(p).ok())
            .is_some_and(|m| m.is_file() && m.len() == size)
    }

    /// Takes the per-blob lock: concurrent writers of one blob wait for
    /// the first, then find the blob present.
    pub async fn lock(&self, digest: &str) -> tokio::sync::OwnedMutexGuard<()> {
        self.locks.lock(digest).await
    }

    /// Reads a (small) blob whole.
    pub fn read(&self, digest: &str) -> Result<Vec<u8>, ContentError> {
        let p = self.path(digest)?;
        std::fs::read(&p).map_err(io_err(&p))
    }

    fn temp_path(&self) -> PathBuf {
        self.root
            .join("ingest")
            .join(format!("{:016x}", rand::random::<u64>()))
    }

    fn commit(&self, temp: &Path, digest: &str) -> Result<(), ContentError> {
        let dest = self.path(digest)?;
        std::fs::rename(temp, &dest).map_err(io_err(&dest))?;
        let dir = self.root.join("sha256");
        fsync_dir(&dir).map_err(io_err(&dir))
    }

    /// Stores `bytes` as blob `digest` after checking it.
    pub fn write_bytes(&self, digest: &str, bytes: &[u8]) -> Result<(), ContentError> {
        self.path(digest)?;
        let actual = digest_of(bytes);
        if actual != digest {
            return Err(ContentError::DigestMismatch {
                expected: digest.to_string(),
                actual,
            });
        }
        if self.has(digest, bytes.len() as u64) {
            return Ok(());
        }
        let temp = self.temp_path();
        let result = (|| {
            let mut f = crius_store::private::create_file(&temp).map_err(io_err(&temp))?;
            f.write_all(bytes).map_err(io_err(&temp))?;
            f.sync_all().map_err(io_err(&temp))?;
            self.commit(&temp, digest)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result
    }

    /// Streams blob `digest` of `size` bytes into the store, verifying both
    /// while receiving; nothing is stored unless both match. With
    /// `progress_timeout`, a stream that yields no data for that long fails
    /// with [`ContentError::Stalled`].
    pub async fn write_stream<S>(
        &self,
        digest: &str,
        size: u64,
        stream: S,
        progress_timeout: Option<std::time::Duration>,
    ) -> Result<(), ContentError>
    where
        S: Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Unpin,
    {
        self.path(digest)?;
        let temp = self.temp_path();
        // Removes the partial file even when this future is dropped midway.
        let _cleanup = RemoveOnDrop(temp.clone());
        self.receive(&temp, digest, size, stream, progress_timeout)
            .await?;
        let dest = self.path(digest)?;
        let dir = self.root.join("sha256");
        tokio::fs::rename(&temp, &dest)
            .await
            .map_err(io_err(&dest))?;
        let d = tokio::fs::File::open(&dir).await.map_err(io_err(&dir))?;
        d.sync_all().await.map_err(io_err(&dir))
    }

    async fn receive<S>(
        &self,
        temp: &Path,
        digest: &str,
        size: u64,
        mut stream: S,
        progress_timeout: Option<std::time::Duration>,
    ) -> Result<(), ContentError>
    where
        S: Stream<Item = Result<bytes::Bytes, reqwest::Error>> + Unpin,
    {
        use tokio::io::AsyncWriteExt;
        let mut file = tokio::fs::OpenOptions::from(crius_store::private::file_options())
            .write(true)
            .create(true)
            .truncate(true)
            .open(temp)
            .await
            .map_err(io_err(temp))?;
        let mut hasher = Sha256::new();
        let mut got: u64 = 0;
        loop {
            let next = match progress_timeout {
                Some(t) => tokio::time::timeout(t, stream.next()).await.map_err(|_| {
                    ContentError::Stalled {
                        digest: digest.to_string(),
                        received: got,
                        size,
                        timeout: t,
                    }
                })?,
                None => stream.next().await,
            };
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|source| ContentError::Transfer {
                digest: digest.to_string(),
                source,
            })?;
            got += chunk.len() as u64;
            if got > size {
                return Err(ContentError::SizeMismatch {
                    digest: digest.to_string(),
                    expected: size,
                    actual: got,
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io_err(temp))?;
        }
        if got != size {
            return Err(ContentError::SizeMismatch {
                digest: digest.to_string(),
                expected: size,
                actual: got,
            });
        }
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != digest {
            return Err(ContentError::DigestMismatch {
                expected: digest.to_string(),
                actual,
            });
        }
        file.sync_all().await.map_err(io_err(temp))?;
        Ok(())
    }

    /// Digests of every stored blob.
    pub fn list(&self) -> Result<Vec<String>, ContentError> {
        let dir = self.root.join("sha256");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let e = e.map_err(io_err(&dir))?;
            if let Some(name) = e.file_name().to_str() {
                let d = format!("sha256:{name}");
                if is_digest(&d) {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Deletes a blob; deleting an absent blob succeeds.
    pub fn delete(&self, digest: &str) -> Result<(), ContentError> {
        let p = self.path(digest)?;
        match std::fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&p)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn verified_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::open(dir.path()).unwrap();
        let data = b"hello world".to_vec();
        let d = digest_of(&data);
        let chunks = |v: Vec<&'static [u8]>| {
            futures_util::stream::iter(
                v.into_iter()
                    .map(|c| Ok::<_, reqwest::Error>(bytes::Bytes::from_static(c))),
            )
        };
        // Wrong content, short content, long content: nothing stored.
        let cases: Vec<(Vec<&'static [u8]>, u64, &str)> = vec![
            (vec![b"hello", b" worlD"], 11, "digest mismatch"),
            (vec![b"hello"], 11, "size mismatch"),
            (vec![b"hello world", b"!"], 11, "size mismatch"),
        ];
        for (parts, size, want) in cases {
            let err = store
                .write_stream(&d, size, chunks(parts), None)
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err}");
            assert!(!store.has(&d, 11));
            assert_eq!(
                std::fs::read_dir(dir.path().join("ingest"))
                    .unwrap()
                    .count(),
                0
            );
        }
        store
            .write_stream(&d, 11, chunks(vec![b"hello", b" world"]), None)
            .await
            .unwrap();
        assert!(store.has(&d, 11));
        assert_eq!(store.read(&d).unwrap(), data);
        assert_eq!(store.list().unwrap(), vec![d.clone()]);
        assert!(store.write_bytes(&digest_of(b"x"), b"y").is_err());
        store.write_bytes(&digest_of(b"x"), b"x").unwrap();
        assert!(store.path("sha256:../../etc").is_err());
        store.delete(&d).unwrap();
        store.delete(&d).unwrap();
        assert!(!store.has(&d, 11));
    }
}
