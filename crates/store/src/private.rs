//! Private directories and files under criusd's `root` and `state`.
//!
//! Policy (README, "Layout"): every directory criusd or the shim makes under
//! `root` and `state` is 0700 unless a reason for another mode is written
//! next to the call; files holding records, content or process output are
//! 0600. Modes are set explicitly, not left to the umask: [`dir`] creates
//! with the mode and then `fchmod`s, so a directory that existed before
//! (made by an older version, or with a looser umask) is narrowed too.
//!
//! This lives in crius-store, the lowest crius crate, so that the image
//! code, the network namespace code, the shim and criusd share one helper
//! (none of them depends on anything that depends on them).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// Mode of a private directory.
pub const DIR: u32 = 0o700;
/// Mode of a private file (records, blobs, process output).
pub const FILE: u32 = 0o600;
/// Mode of a directory that the processes of a container see as a
/// directory of their own (a writable layer's root, which becomes the
/// container's `/`, an image volume): readable by any user of the
/// container. It lies inside a private directory, so host users cannot
/// reach it.
pub const CONTAINER_VISIBLE_DIR: u32 = 0o755;

fn fchmod(f: &File, mode: u32) -> io::Result<()> {
    // SAFETY: fchmod(2) on a descriptor `f` owns.
    if unsafe { libc::fchmod(f.as_raw_fd(), mode as libc::mode_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Makes `path` a directory with permission bits `mode`: missing parents
/// are created 0700, `path` itself with `mode`, and `path` then gets
/// `mode` explicitly (whether it was just made or existed; the umask does
/// not apply). `path` must not be a symbolic link.
pub fn dir_with_mode(path: &Path, mode: u32) -> io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            missing_parents(parent)?;
        }
    }
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(with_path(e, path)),
    }
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| with_path(e, path))?;
    fchmod(&f, mode).map_err(|e| with_path(e, path))
}

/// Makes `path` a private (0700) directory; see [`dir_with_mode`].
pub fn dir(path: &Path) -> io::Result<()> {
    dir_with_mode(path, DIR)
}

/// Creates the missing directories of `path` 0700 (outermost first);
/// directories that exist are left as they are.
fn missing_parents(path: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = path.ancestors().take_while(|a| !a.is_dir()).collect();
    for d in missing.into_iter().rev() {
        if d.as_os_str().is_empty() {
            continue;
        }
        match std::fs::DirBuilder::new().mode(DIR).create(d) {
            Ok(()) => {
                std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(DIR))
                    .map_err(|e| with_path(e, d))?
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(with_path(e, d)),
        }
    }
    Ok(())
}

/// Creates (or truncates) `path` as a private (0600) file for writing.
pub fn create_file(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)?;
    fchmod(&f, FILE)?;
    Ok(f)
}

/// Open options that create files 0600 (the umask can only narrow that).
pub fn file_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE);
    o
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    /// Sets the umask for the test's duration (tests in this module run
    /// their umask checks in one test, so no other test races with it).
    struct Umask(libc::mode_t);
    impl Umask {
        fn set(m: libc::mode_t) -> Umask {
            // SAFETY: umask(2) has no preconditions.
            Umask(unsafe { libc::umask(m) })
        }
    }
    impl Drop for Umask {
        fn drop(&mut self) {
            // SAFETY: as above.
            unsafe { libc::umask(self.0) };
        }
    }

    #[test]
    fn modes_are_explicit() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        {
            // A permissive umask does not widen, a strict one does not
            // narrow what was asked for.
            let _u = Umask::set(0o000);
            dir(&t.join("a/b/c")).unwrap();
            for p in ["a", "a/b", "a/b/c"] {
                assert_eq!(mode(&t.join(p)), 0o700, "{p}");
            }
            let f = create_file(&t.join("a/f")).unwrap();
            drop(f);
            assert_eq!(mode(&t.join("a/f")), 0o600);
            let _u = Umask::set(0o077);
            dir_with_mode(&t.join("a/visible"), CONTAINER_VISIBLE_DIR).unwrap();
            assert_eq!(mode(&t.join("a/visible")), 0o755);
        }
        // An existing, looser directory is narrowed; its parents are not
        // touched.
        std::fs::create_dir(t.join("old")).unwrap();
        std::fs::set_permissions(t.join("old"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(t, std::fs::Permissions::from_mode(0o751)).unwrap();
        dir(&t.join("old")).unwrap();
        assert_eq!(mode(&t.join("old")), 0o700);
        assert_eq!(mode(t), 0o751);
        // An existing file is truncated and narrowed.
        std::fs::write(t.join("g"), b"old").unwrap();
        std::fs::set_permissions(t.join("g"), std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(create_file(&t.join("g")).unwrap());
        assert_eq!(mode(&t.join("g")), 0o600);
        assert_eq!(std::fs::read(t.join("g")).unwrap(), b"");
        // Files through file_options() are 0600.
        drop(
            file_options()
                .write(true)
                .create(true)
                .open(t.join("h"))
                .unwrap(),
        );
        assert_eq!(mode(&t.join("h")), 0o600);
    }

    #[test]
    fn refuses_symlinks_and_files() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        std::fs::create_dir(t.join("real")).unwrap();
        std::fs::set_permissions(t.join("real"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(t.join("real"), t.join("link")).unwrap();
        assert!(dir(&t.join("link")).is_err());
        // The link's target keeps its mode.
        assert_eq!(mode(&t.join("real")), 0o755);
        std::fs::write(t.join("file"), b"").unwrap();
        assert!(dir(&t.join("file")).is_err());
        std::os::unix::fs::symlink(t.join("x"), t.join("flink")).unwrap();
        assert!(create_file(&t.join("flink")).is_err());
        assert!(!t.join("x").exists());
    }
}
