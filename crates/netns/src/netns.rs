//! Persistent network namespaces, bind-mounted on a file.
//!
//! A namespace is created by a short-lived helper thread that calls
//! `unshare(CLONE_NEWNET)` and bind-mounts its own namespace file
//! (`/proc/thread-self/ns/net`) onto the target path. The mount keeps the
//! namespace alive after the thread exits; the calling thread never changes
//! namespace. Code that must run inside a namespace goes through [`run_in`],
//! which uses another throw-away thread that `setns()`s into it.
//!
//! The bind mount is made in the caller's mount namespace. The shim and criusd
//! share the host mount namespace, so a namespace created by one is visible to
//! the other even though `/` is a private mount.

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The namespace file of the calling thread.
const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// How many stacked mounts [`remove`] unmounts at most before giving up.
const MAX_STACKED_MOUNTS: usize = 16;

/// Errors of network namespace handling.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The target path already holds a network namespace.
    #[error("{path} is already a network namespace")]
    AlreadyExists {
        /// The path.
        path: PathBuf,
    },
    /// The path is not a mounted network namespace.
    #[error("{path} is not a network namespace")]
    NotNetns {
        /// The path.
        path: PathBuf,
    },
    /// A file system operation failed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A system call failed.
    #[error("{op} failed for {path}: {source}")]
    Sys {
        /// The system call, e.g. `unshare(CLONE_NEWNET)`.
        op: &'static str,
        /// The namespace path concerned.
        path: PathBuf,
        /// The errno.
        source: Errno,
    },
    /// The helper thread could not be spawned.
    #[error("cannot spawn namespace thread: {0}")]
    Thread(io::Error),
}

/// A network namespace bind-mounted on a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetNs {
    path: PathBuf,
}

impl NetNs {
    /// Opens an existing namespace: checks that `path` is a mounted netns.
    pub fn open(path: &Path) -> Result<NetNs, NetnsError> {
        if is_netns(path) {
            Ok(NetNs {
                path: path.to_path_buf(),
            })
        } else {
            Err(NetnsError::NotNetns {
                path: path.to_path_buf(),
            })
        }
    }

    /// The path the namespace is mounted on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` inside the namespace, see [`run_in`].
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        run_in(&self.path, f)
    }

    /// Unmounts and deletes the namespace file, see [`remove`].
    pub fn remove(self) -> Result<(), NetnsError> {
        remove(&self.path)
    }
}

/// Creates a new network namespace bind-mounted at `path`. Parent
/// directories and the mount point file are created as needed. On failure
/// nothing is left behind (the file is removed if this call created it).
pub fn create(path: &Path) -> Result<NetNs, NetnsError> {
    let path_buf = path.to_path_buf();
    if is_netns(path) {
        return Err(NetnsError::AlreadyExists { path: path_buf });
    }
    let created = mount_point(path)?;

    let result = std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("netns-create".into())
            .spawn_scoped(s, || -> Result<(), NetnsError> {
                unshare(CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Sys {
                    op: "unshare(CLONE_NEWNET)",
                    path: path.to_path_buf(),
                    source,
                })?;
                // This thread now lives in the new namespace and exits right
                // after the mount, so no other code ever runs in it here.
                // `lo` comes up whatever the CNI configuration says, as
                // containerd and CRI-O do: localhost in a pod (sidecars,
                // port-forward) must not depend on a `loopback` plugin.
                crate::cni::loopback::set_lo_up(true).map_err(|source| NetnsError::Io {
                    op: "set lo up",
                    path: path.to_path_buf(),
                    source,
                })?;
                mount(
                    Some(THREAD_NETNS),
                    path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|source| NetnsError::Sys {
                    op: "bind mount of the namespace",
                    path: path.to_path_buf(),
                    source,
                })
            })
            .map_err(NetnsError::Thread)?;
        handle.join().unwrap_or_else(|_| {
            Err(NetnsError::Thread(io::Error::other(
                "namespace thread panicked",
            )))
        })
    });

    let result = result.and_then(|()| {
        if is_netns(path) {
            Ok(())
        } else {
            Err(NetnsError::NotNetns {
                path: path.to_path_buf(),
            })
        }
    });
    match result {
        Ok(()) => {
            tracing::debug!(path = %path.display(), "created network namespace");
            Ok(NetNs { path: path_buf })
        }
        Err(e) => {
            // Roll back: a mount may exist if the final check failed.
            let _ = umount2(path, MntFlags::MNT_DETACH);
            if created {
                let _ = std::fs::remove_file(path);
            }
            Err(e)
        }
    }
}

/// Sets `lo` up in the network namespace at `path` (for namespaces made
/// elsewhere than [`create`], e.g. together with a user namespace).
pub fn loopback_up(path: &Path) -> Result<(), NetnsError> {
    run_in(path, || crate::cni::loopback::set_lo_up(true))?.map_err(|source| NetnsError::Io {
        op: "set lo up",
        path: path.to_path_buf(),
        source,
    })
}

/// Creates the file a namespace is bind-mounted on (and its parent
/// directories); true when this call created it. A plain file left behind
/// (e.g. by a crash between create and mount) is reused.
pub(crate) fn mount_point(path: &Path) -> Result<bool, NetnsError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        // The pod's directory: private.
        crius_store::private::dir(parent).map_err(|source| NetnsError::Io {
            op: "create directory",
            path: parent.to_path_buf(),
            source,
        })?;
    }
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(path)
    {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(NetnsError::Io {
            op: "create",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Unmounts (lazily) and deletes a network namespace file. Succeeds when
/// the path is already gone or is not mounted any more.
pub fn remove(path: &Path) -> Result<(), NetnsError> {
    unmount_and_remove(path, is_netns)?;
    tracing::debug!(path = %path.display(), "removed network namespace");
    Ok(())
}

/// Unmounts `path` (lazily, each stacked mount) while `mounted` says a
/// namespace is mounted there, then deletes the file. Succeeds when the
/// path is already gone or is not mounted any more.
pub(crate) fn unmount_and_remove(
    path: &Path,
    mounted: impl Fn(&Path) -> bool,
) -> Result<(), NetnsError> {
    for _ in 0..MAX_STACKED_MOUNTS {
        if !mounted(path) {
            break;
        }
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            // EINVAL: not a mount point; ENOENT: already gone.
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => break,
            Err(source) => {
                return Err(NetnsError::Sys {
                    op: "umount",
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetnsError::Io {
            op: "remove",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Runs `f` in a fresh thread that has joined the network namespace at
/// `path`; the calling thread's namespace is untouched. Processes that `f`
/// spawns inherit the namespace. A panic in `f` is propagated.
pub fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let file = open_netns(path)?;
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("netns-run".into())
            .spawn_scoped(s, move || -> Result<T, NetnsError> {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Sys {
                    op: "setns(CLONE_NEWNET)",
                    path: path.to_path_buf(),
                    source,
                })?;
                drop(file);
                Ok(f())
            })
            .map_err(NetnsError::Thread)?;
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Whether `path` is a mounted network namespace file.
pub fn is_netns(path: &Path) -> bool {
    match nix::sys::statfs::statfs(path) {
        Ok(st) if st.filesystem_type() == nix::sys::statfs::NSFS_MAGIC => {}
        _ => return false,
    }
    let Ok(file) = File::open(path) else {
        return false;
    };
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd, which
    // stays open for the duration of the call.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE as _) };
    kind == libc::CLONE_NEWNET
}

fn open_netns(path: &Path) -> Result<File, NetnsError> {
    if !is_netns(path) {
        return Err(NetnsError::NotNetns {
            path: path.to_path_buf(),
        });
    }
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| NetnsError::Io {
            op: "open",
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_are_not_netns() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        assert!(!is_netns(&file));
        assert!(!is_netns(dir.path()));
        assert!(!is_netns(&dir.path().join("missing")));
        assert!(matches!(
            run_in(&file, || ()),
            Err(NetnsError::NotNetns { .. })
        ));
        assert!(NetNs::open(&file).is_err());
    }

    #[test]
    fn remove_is_idempotent_on_plain_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"").unwrap();
        remove(&file).unwrap();
        assert!(!file.exists());
        remove(&file).unwrap();
    }
}
