//! Layer snapshots: one directory per chain id, `<root>/<hex>/fs`, holding
//! that layer's unpacked diff. A snapshot is unpacked into `<root>/tmp-*`
//! and renamed into place once complete and synced, so a present directory
//! is always a whole snapshot.
//!
//! Snapshots and leftovers are removed with [`crate::tree::remove_tree`]
//! (any depth, few descriptors). A `tmp-*` directory that cannot be removed
//! (an unpack or removal cut short) is logged and retried on the next
//! garbage collection; it never stops [`Snapshotter::open`].

use crate::content::KeyedLocks;
use crate::reference::is_digest;
use crate::unpack::{self, UnpackError};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Errors of the snapshotter.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Not a `sha256:<hex>` chain id.
    #[error("invalid snapshot id {0:?}")]
    InvalidId(String),
    /// Unpacking failed.
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    /// The layer below was not unpacked (its pull failed).
    #[error("lower snapshot {0} is missing")]
    LowerMissing(String),
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Chain ids of a layer stack: `chain(0) = diff(0)`,
/// `chain(n) = sha256(chain(n-1) + " " + diff(n))`.
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{prev} {d}").as_bytes()))
            ),
        };
        out.push(next);
    }
    out
}

/// The snapshot directories.
pub struct Snapshotter {
    root: PathBuf,
    locks: KeyedLocks,
    /// Names of the `tmp-*` directories of unpacks still running or not
    /// yet committed (which may outlive a cancelled caller): leftovers
    /// removal skips them.
    active: Arc<Mutex<HashSet<String>>>,
}

/// A `tmp-*` directory in use: registered in [`Snapshotter::active`]
/// while any clone lives.
struct ActiveTemp {
    set: Arc<Mutex<HashSet<String>>>,
    name: String,
}

impl Drop for ActiveTemp {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name);
    }
}

/// An unpacked layer waiting to be committed. Dropped uncommitted (the
/// unpack failed, or its caller gave up), it removes its directory on the
/// blocking pool; the directory stays registered as active until then.
struct Staged {
    path: PathBuf,
    active: Arc<ActiveTemp>,
    committed: bool,
}

impl Staged {
    /// Removes the directory now (call on the blocking pool).
    fn discard(&mut self) {
        Staged::remove(&self.path);
        self.committed = true;
    }

    fn remove(path: &Path) {
        if let Err(e) = crate::tree::remove_tree_if_exists(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove an unfinished unpack; retried at the next garbage collection");
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let (path, active) = (self.path.clone(), self.active.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(move || {
                    Staged::remove(&path);
                    drop(active);
                });
            }
            Err(_) => Staged::remove(&path),
        }
    }
}

impl Snapshotter {
    /// Opens (creating) the snapshot root, removing unfinished unpacks and
    /// removals (failures to remove them are only logged).
    pub fn open(root: &Path) -> Result<Snapshotter, SnapshotError> {
        // Private: layers of private images, and setuid files or device
        // nodes of any image, are nobody else's to reach.
        crius_store::private::dir(root).map_err(io_err(root))?;
        let s = Snapshotter {
            root: root.to_path_buf(),
            locks: KeyedLocks::default(),
            active: Default::default(),
        };
        s.remove_leftovers();
        Ok(s)
    }

    /// The `tmp-*` directories of unpacks and removals that did not
    /// finish, without those of unpacks still in progress.
    pub fn leftovers(&self) -> Vec<PathBuf> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(path = %self.root.display(), error = %e, "cannot list snapshots for leftovers");
                return Vec::new();
            }
        };
        entries
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("tmp-") && !self.is_active(&name)
            })
            .map(|e| e.path())
            .collect()
    }

    /// Removes the [`Snapshotter::leftovers`]. Failures are logged, not
    /// returned. Returns how many are left.
    pub fn remove_leftovers(&self) -> usize {
        let mut left = 0;
        for p in self.leftovers() {
            tracing::info!(path = %p.display(), "removing unfinished snapshot");
            if let Err(err) = crate::tree::remove_tree_if_exists(&p) {
                left += 1;
                tracing::warn!(path = %p.display(), error = %err, "cannot remove unfinished snapshot; retried at the next garbage collection");
            }
        }
        left
    }

    fn is_active(&self, name: &str) -> bool {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(name)
    }

    /// Unpacks in progress (their `tmp-*` directories).
    pub fn unpacks_in_progress(&self) -> usize {
        self.active.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn dir(&self, chain_id: &str) -> Result<PathBuf, SnapshotError> {
        if !is_digest(chain_id) {
            return Err(SnapshotError::InvalidId(chain_id.to_string()));
        }
        Ok(self.root.join(&chain_id["sha256:".len()..]))
    }

    /// The unpacked directory of a snapshot (an overlay lower dir).
    pub fn fs_path(&self, chain_id: &str) -> Result<PathBuf, SnapshotError> {
        Ok(self.dir(chain_id)?.join("fs"))
    }

    /// Whether the snapshot exists.
    pub fn exists(&self, chain_id: &str) -> bool {
        self.fs_path(chain_id).is_ok_and(|p| p.is_dir())
    }

    /// Unpacks `blob` as snapshot `chain_id` (a bottom layer, or one whose
    /// implied directories keep 0755) unless it exists; see
    /// [`Snapshotter::ensure_layer`].
    pub async fn ensure(
        &self,
        chain_id: &str,
        blob: PathBuf,
        diff_id: &str,
    ) -> Result<bool, SnapshotError> {
        self.ensure_layer(chain_id, blob, diff_id, &[], std::future::ready(Ok(())))
            .await
    }

    /// Unpacks `blob` as snapshot `chain_id` unless it exists; the layer's
    /// uncompressed digest must be `diff_id`. Concurrent callers for one
    /// chain id unpack once. `lowers` are the chain ids of the layers
    /// below, nearest first: the unpack runs at once (in parallel with the
    /// other layers of a pull), then waits for `lowers_ready` (the lower
    /// snapshots exist), gives the directories the layer only implies the
    /// attributes they have in the lower layers
    /// ([`unpack::inherit_implied`]) and commits. Returns whether it
    /// unpacked, once `lowers_ready` resolved in either case. On failure, or when the caller gives up, the unpack's
    /// directory is removed.
    pub async fn ensure_layer(
        &self,
        chain_id: &str,
        blob: PathBuf,
        diff_id: &str,
        lowers: &[String],
        lowers_ready: impl std::future::Future<Output = Result<(), SnapshotError>>,
    ) -> Result<bool, SnapshotError> {
        let final_dir = self.dir(chain_id)?;
        let lower_dirs = lowers
            .iter()
            .map(|l| self.fs_path(l))
            .collect::<Result<Vec<_>, _>>()?;
        let guard = self.locks.lock(chain_id).await;
        if final_dir.join("fs").is_dir() {
            // Present, but the caller is told it is done only once the
            // layers below are too (one of them may be unpacked again).
            drop(guard);
            lowers_ready.await?;
            return Ok(false);
        }
        let name = format!("tmp-{:016x}", rand::random::<u64>());
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone());
        let active = Arc::new(ActiveTemp {
            set: self.active.clone(),
            name: name.clone(),
        });
        let temp = self.root.join(&name);
        let diff = diff_id.to_string();
        let failed = |what: &str, path: &Path, e: tokio::task::JoinError| SnapshotError::Io {
            path: path.to_path_buf(),
            source: io::Error::other(format!("{what} task failed: {e}")),
        };
        let t = temp.clone();
        let (staged, implied) = tokio::task::spawn_blocking(move || {
            // Owns the directory from here on: dropped, it is removed.
            let mut staged = Staged {
                path: t,
                active,
                committed: false,
            };
            match unpack_into(&staged.path, &blob, &diff) {
                Ok(implied) => Ok((staged, implied)),
                Err(e) => {
                    staged.discard();
                    Err(e)
                }
            }
        })
        .await
        .map_err(|e| failed("unpack", &temp, e))??;
        lowers_ready.await?;
        let f = final_dir.clone();
        tokio::task::spawn_blocking(move || {
            let mut staged = staged;
            match commit(&staged.path, &f, &implied, &lower_dirs) {
                Ok(()) => {
                    staged.committed = true;
                    Ok(())
                }
                Err(e) => {
                    staged.discard();
                    Err(e)
                }
            }
        })
        .await
        .map_err(|e| failed("commit", &temp, e))??;
        Ok(true)
    }

    /// Chain ids of every snapshot on disk.
    pub fn list(&self) -> Result<Vec<String>, SnapshotError> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.root).map_err(io_err(&self.root))? {
            let e = e.map_err(io_err(&self.root))?;
            if let Some(name) = e.file_name().to_str() {
                let id = format!("sha256:{name}");
                if is_digest(&id) {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    /// Renames a snapshot into the trash (deleted later, in the
    /// background); returns its directory and its name in the trash, or
    /// `None` when it does not exist.
    pub fn move_to_trash(
        &self,
        chain_id: &str,
        trash: &crate::trash::Trash,
    ) -> Result<Option<(PathBuf, String)>, SnapshotError> {
        let dir = self.dir(chain_id)?;
        match trash.move_in(&dir, "snapshot") {
            Ok(Some(name)) => Ok(Some((dir, name))),
            Ok(None) => Ok(None),
            Err(e) => Err(io_err(&dir)(e)),
        }
    }

    /// Deletes a snapshot; deleting an absent one succeeds.
    pub fn remove(&self, chain_id: &str) -> Result<(), SnapshotError> {
        let dir = self.dir(chain_id)?;
        // Rename first so a crash never leaves a half-deleted snapshot that
        // looks whole.
        let doomed = self
            .root
            .join(format!("tmp-{:016x}", rand::random::<u64>()));
        match std::fs::rename(&dir, &doomed) {
            Ok(()) => crate::tree::remove_tree(&doomed).map_err(io_err(&doomed)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&dir)(e)),
        }
    }
}

/// Unpacks the layer into `temp/fs`; returns the directories it implies.
fn unpack_into(
    temp: &Path,
    blob: &Path,
    diff_id: &str,
) -> Result<unpack::ImpliedDirs, SnapshotError> {
    let fs = temp.join("fs");
    crius_store::private::dir(temp).map_err(io_err(temp))?;
    // The layer's root directory (the layer's own "./" entry may change
    // it): seen by the container, inside the private snapshot directory.
    crius_store::private::dir_with_mode(&fs, crius_store::private::CONTAINER_VISIBLE_DIR)
        .map_err(io_err(&fs))?;
    let report = unpack::unpack_blob(blob, &fs, diff_id)?;
    tracing::debug!(
        snapshot = %temp.display(),
        entries = report.entries,
        skipped = report.skipped.total,
        implied = report.implied.len(),
        "layer unpacked"
    );
    Ok(report.implied)
}

/// Sets the implied directories from the lower layers, makes everything
/// durable and renames the unpack into place.
fn commit(
    temp: &Path,
    final_dir: &Path,
    implied: &unpack::ImpliedDirs,
    lowers: &[PathBuf],
) -> Result<(), SnapshotError> {
    let fs = temp.join("fs");
    let inherited = unpack::inherit_implied(&fs, implied, lowers).map_err(io_err(&fs))?;
    if inherited > 0 {
        tracing::debug!(snapshot = %final_dir.display(), inherited, "implied directories took their lower layers' attributes");
    }
    // One syncfs makes every unpacked file durable before the rename.
    let dir = std::fs::File::open(temp).map_err(io_err(temp))?;
    // SAFETY: the fd is open for the duration of the call.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } < 0 {
        return Err(io_err(temp)(io::Error::last_os_error()));
    }
    std::fs::rename(temp, final_dir).map_err(io_err(final_dir))?;
    if let Some(parent) = final_dir.parent() {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io_err(parent))?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    #[test]
    fn chain_id_rule() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let ids = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(ids[0], a);
        let want = format!("sha256:{}", hex::encode(Sha256::digest(format!("{a} {b}"))));
        assert_eq!(ids[1], want);
        assert!(chain_ids(&[]).is_empty());
    }

    #[tokio::test]
    async fn ensure_once_and_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(2);
        h.set_mode(0o644);
        b.append_data(&mut h, "f", &b"hi"[..]).unwrap();
        let data = b.into_inner().unwrap();
        let diff = crate::content::digest_of(&data);
        let blob = tmp.path().join("blob");
        std::fs::write(&blob, &data).unwrap();
        std::fs::create_dir_all(tmp.path().join("snaps/tmp-leftover")).unwrap();
        let s = Snapshotter::open(&tmp.path().join("snaps")).unwrap();
        assert!(!tmp.path().join("snaps/tmp-leftover").exists());
        let id = chain_ids(std::slice::from_ref(&diff)).remove(0);
        assert!(s.ensure(&id, blob.clone(), &diff).await.unwrap());
        assert!(
            !s.ensure(&id, blob.clone(), &diff).await.unwrap(),
            "second ensure is a no-op"
        );
        assert_eq!(
            std::fs::read(s.fs_path(&id).unwrap().join("f")).unwrap(),
            b"hi"
        );
        assert_eq!(s.list().unwrap(), vec![id.clone()]);
        // A wrong diff id leaves nothing behind.
        let other = format!("sha256:{}", "c".repeat(64));
        assert!(s.ensure(&other, blob, &other).await.is_err());
        assert!(!s.exists(&other));
        assert_eq!(
            std::fs::read_dir(tmp.path().join("snaps")).unwrap().count(),
            1
        );
        s.remove(&id).unwrap();
        s.remove(&id).unwrap();
        assert!(s.list().unwrap().is_empty());
        assert!(s.fs_path("../x").is_err());
    }

    /// Makes `dir/sub` impossible to remove: a tmpfs mounted on it as root
    /// (the removal does not cross filesystems), a read-only parent otherwise.
    /// The returned closure undoes it, given where `dir` is by then.
    pub(crate) fn unremovable(dir: &Path) -> impl FnOnce(&Path) {
        use std::os::unix::fs::PermissionsExt;
        let sub = dir.join("sub");
        std::fs::create_dir_all(&sub).unwrap();
        let c = std::ffi::CString::new(sub.to_str().unwrap()).unwrap();
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            let fs = std::ffi::CString::new("tmpfs").unwrap();
            // SAFETY: valid NUL-terminated strings.
            let r =
                unsafe { libc::mount(fs.as_ptr(), c.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
            assert_eq!(r, 0, "mount: {}", io::Error::last_os_error());
            std::fs::write(sub.join("f"), b"x").unwrap();
        } else {
            std::fs::write(sub.join("f"), b"x").unwrap();
            std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o500)).unwrap();
        }
        move |now: &Path| {
            let sub = now.join("sub");
            if root {
                let c = std::ffi::CString::new(sub.to_str().unwrap()).unwrap();
                // SAFETY: valid path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            } else {
                let _ = std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755));
            }
        }
    }

    #[test]
    fn open_survives_leftovers_it_cannot_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let snaps = tmp.path().join("snaps");
        // A leftover 5000 levels deep (more than remove_dir_all manages
        // with a low descriptor limit) and one that cannot be removed.
        let deep = snaps.join("tmp-deep");
        std::fs::create_dir_all(&deep).unwrap();
        let mut dir = std::fs::File::open(&deep).unwrap();
        for _ in 0..5000 {
            let name = std::ffi::CString::new("d").unwrap();
            // SAFETY: valid fd and name.
            unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) };
            // SAFETY: valid fd and name; the fd is owned on success.
            let fd = unsafe {
                libc::openat(
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY,
                )
            };
            assert!(fd >= 0);
            dir = unsafe { std::fs::File::from_raw_fd(fd) };
        }
        drop(dir);
        let stuck = snaps.join("tmp-stuck");
        let undo = unremovable(&stuck);
        let s = Snapshotter::open(&snaps).expect("open must not fail on leftovers");
        assert!(!deep.exists(), "the deep leftover is removed");
        assert!(stuck.exists(), "the stuck one is left with a warning");
        assert_eq!(s.remove_leftovers(), 1);
        // Once it can be removed, the next pass does it.
        undo(&stuck);
        assert_eq!(s.remove_leftovers(), 0);
        assert!(!stuck.exists());
    }
}
