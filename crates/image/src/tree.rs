//! Removal of directory trees of any depth with a bounded number of open
//! file descriptors.
//!
//! `std::fs::remove_dir_all` keeps one directory open per level, so a tree
//! nested deeper than the open-file limit (a hostile layer, or what a
//! container wrote into its writable layer) cannot be removed with it.
//! [`remove_tree`] walks down with `openat(O_NOFOLLOW)` and `unlinkat`,
//! keeping at most [`MAX_OPEN_DIRS`] directories open: the top one and a
//! window of the deepest levels. A level whose descriptor was dropped is
//! re-opened through its child's `..` on the way up, and only when it is
//! the very directory (device and inode) that was left: nothing outside the
//! tree is ever touched. Symlinks are removed, never followed, and the walk
//! does not descend into another filesystem mounted inside the tree.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Directories a removal holds open at most (besides the parent of the
/// tree's top and a short-lived duplicate while a directory is listed).
pub const MAX_OPEN_DIRS: usize = 16;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn fstat(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    // SAFETY: zeroed stat is a valid out buffer; fd is open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok((st.st_dev, st.st_ino))
}

fn lstat_at(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: zeroed stat is a valid out buffer; fd and name are valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe {
        libc::fstatat(
            parent.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    Ok(st)
}

fn open_dir_at(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: valid dir fd and NUL-terminated name; the fd is owned on success.
    let fd = cvt(unsafe {
        libc::openat(
            parent.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fd was just returned by openat.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn unlink_at(parent: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: valid dir fd and NUL-terminated name.
    cvt(unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), flags) }).map(|_| ())
}

fn is_errno(e: &io::Error, codes: &[libc::c_int]) -> bool {
    e.raw_os_error().is_some_and(|c| codes.contains(&c))
}

/// Unlinks every non-directory in `dir` and returns the names of its
/// subdirectories.
fn scan(dir: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    // fdopendir takes the descriptor over: give it a duplicate.
    // SAFETY: dir is an open fd; the duplicate is owned by the stream.
    let dup = cvt(unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: dup is a directory fd we own; on failure we close it.
    let stream = unsafe { libc::fdopendir(dup) };
    if stream.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: dup is still ours when fdopendir failed.
        unsafe { libc::close(dup) };
        return Err(e);
    }
    struct Stream(*mut libc::DIR);
    impl Drop for Stream {
        fn drop(&mut self) {
            // SAFETY: the stream is open and closed once.
            unsafe { libc::closedir(self.0) };
        }
    }
    let stream = Stream(stream);
    let mut dirs = Vec::new();
    loop {
        // SAFETY: errno is thread-local; readdir64 on an open stream.
        unsafe { *libc::__errno_location() = 0 };
        let ent = unsafe { libc::readdir64(stream.0) };
        if ent.is_null() {
            let e = io::Error::last_os_error();
            if e.raw_os_error().unwrap_or(0) != 0 {
                return Err(e);
            }
            break;
        }
        // SAFETY: d_name is NUL-terminated and valid until the next readdir.
        let (name, kind) = unsafe { (CStr::from_ptr((*ent).d_name.as_ptr()), (*ent).d_type) };
        let bytes = name.to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        let is_dir = match kind {
            libc::DT_DIR => true,
            libc::DT_UNKNOWN => match lstat_at(dir, name) {
                Ok(st) => st.st_mode & libc::S_IFMT == libc::S_IFDIR,
                Err(e) if is_errno(&e, &[libc::ENOENT]) => continue,
                Err(e) => return Err(e),
            },
            _ => false,
        };
        if is_dir {
            dirs.push(name.to_owned());
            continue;
        }
        match unlink_at(dir, name, 0) {
            Ok(()) => {}
            Err(e) if is_errno(&e, &[libc::ENOENT]) => {}
            // It became a directory meanwhile.
            Err(e) if is_errno(&e, &[libc::EISDIR]) => dirs.push(name.to_owned()),
            Err(e) => return Err(e),
        }
    }
    Ok(dirs)
}

struct Level {
    /// Name in the parent level.
    name: CString,
    dev: u64,
    ino: u64,
    /// Dropped for middle levels of a deep walk.
    fd: Option<OwnedFd>,
    /// Subdirectories still to remove; `None` until listed.
    pending: Option<Vec<CString>>,
}

fn tree_error(what: String) -> io::Error {
    io::Error::other(what)
}

/// Removes directory `name` of `parent` and everything below it (or the
/// entry, when it is not a directory). A missing entry is a `NotFound`
/// error, as with `std::fs::remove_dir_all`.
pub fn remove_tree_at(parent: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let st = lstat_at(parent, name)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return unlink_at(parent, name, 0);
    }
    let top = open_dir_at(parent, name)?;
    let (dev, ino) = fstat(top.as_fd())?;
    if (dev, ino) != (st.st_dev, st.st_ino) {
        return Err(tree_error(format!(
            "{} changed while it was being removed",
            name.to_string_lossy()
        )));
    }
    let mut stack = vec![Level {
        name: name.to_owned(),
        dev,
        ino,
        fd: Some(top),
        pending: None,
    }];
    // Levels [open_from, len) hold their fd (and level 0 always does).
    let mut open_from = 0usize;
    loop {
        let depth = stack.len();
        let level = stack.last_mut().expect("the stack is never empty here");
        let fd = level.fd.as_ref().expect("the deepest level is open");
        if level.pending.is_none() {
            level.pending = Some(scan(fd.as_fd())?);
        }
        let next = level.pending.as_mut().and_then(Vec::pop);
        if let Some(child) = next {
            match unlink_at(fd.as_fd(), &child, libc::AT_REMOVEDIR) {
                Ok(()) => continue,
                Err(e) if is_errno(&e, &[libc::ENOENT]) => continue,
                Err(e) if is_errno(&e, &[libc::ENOTDIR]) => {
                    match unlink_at(fd.as_fd(), &child, 0) {
                        Err(e) if !is_errno(&e, &[libc::ENOENT]) => return Err(e),
                        _ => continue,
                    }
                }
                Err(e) if is_errno(&e, &[libc::ENOTEMPTY, libc::EEXIST]) => {}
                Err(e) => return Err(e),
            }
            let child_fd = match open_dir_at(fd.as_fd(), &child) {
                Ok(f) => f,
                Err(e) if is_errno(&e, &[libc::ENOENT]) => continue,
                Err(e) => return Err(e),
            };
            let (cdev, cino) = fstat(child_fd.as_fd())?;
            if cdev != stack[0].dev {
                return Err(tree_error(format!(
                    "{} holds another filesystem (a mount point); not removed",
                    child.to_string_lossy()
                )));
            }
            stack.push(Level {
                name: child,
                dev: cdev,
                ino: cino,
                fd: Some(child_fd),
                pending: None,
            });
            // Keep the window of open levels bounded (level 0 stays open).
            let keep_from = stack.len().saturating_sub(MAX_OPEN_DIRS - 1).max(1);
            while open_from < keep_from {
                if open_from > 0 {
                    stack[open_from].fd = None;
                }
                open_from += 1;
            }
            continue;
        }
        // Everything below this level is gone: remove it from its parent.
        let done = stack.pop().expect("the stack is never empty here");
        if depth == 1 {
            drop(done.fd);
            return unlink_at(parent, &done.name, libc::AT_REMOVEDIR);
        }
        open_from = open_from.min(stack.len() - 1);
        let parent_level = stack.last_mut().expect("depth > 1");
        if parent_level.fd.is_none() {
            let child_fd = done.fd.as_ref().expect("the deepest level is open");
            let up = open_dir_at(child_fd.as_fd(), c"..")?;
            if fstat(up.as_fd())? != (parent_level.dev, parent_level.ino) {
                return Err(tree_error(format!(
                    "{} was moved while it was being removed",
                    done.name.to_string_lossy()
                )));
            }
            parent_level.fd = Some(up);
        }
        drop(done.fd);
        let pfd = parent_level.fd.as_ref().expect("just opened");
        match unlink_at(pfd.as_fd(), &done.name, libc::AT_REMOVEDIR) {
            Ok(()) => {}
            Err(e) if is_errno(&e, &[libc::ENOENT]) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Removes `path` and everything below it; see the module documentation.
/// The path's parent directories are trusted (they are resolved normally),
/// its last component is not followed when it is a symlink.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let name = match path.file_name() {
        Some(n) => n,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} names no directory entry", path.display()),
            ))
        }
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let c = |b: &[u8]| {
        CString::new(b)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
    };
    let pc = c(parent.as_os_str().as_bytes())?;
    // SAFETY: valid NUL-terminated path; the fd is owned on success.
    let pfd = cvt(unsafe {
        libc::open(
            pc.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: pfd was just returned by open.
    let pfd = unsafe { OwnedFd::from_raw_fd(pfd) };
    remove_tree_at(pfd.as_fd(), &c(name.as_bytes())?)
}

/// [`remove_tree`] where a missing path counts as removed.
pub fn remove_tree_if_exists(path: &Path) -> io::Result<()> {
    match remove_tree(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Makes `depth` nested directories below `top` with relative paths,
    /// one level at a time, so no path is ever longer than one name.
    fn deep(top: &Path, depth: usize) {
        std::fs::create_dir_all(top).unwrap();
        let mut dir = std::fs::File::open(top).unwrap();
        for i in 0..depth {
            let name = CString::new(format!("d{}", i % 10)).unwrap();
            // SAFETY: valid fd and name.
            assert_eq!(
                unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755) },
                0
            );
            if i % 100 == 0 {
                let f = CString::new("file").unwrap();
                // SAFETY: valid fd and name; the fd is closed at once.
                let fd = unsafe {
                    libc::openat(
                        dir.as_raw_fd(),
                        f.as_ptr(),
                        libc::O_CREAT | libc::O_WRONLY,
                        0o644,
                    )
                };
                assert!(fd >= 0);
                unsafe { libc::close(fd) };
                let l = CString::new("link").unwrap();
                let t = CString::new("/").unwrap();
                unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), l.as_ptr()) };
            }
            let fd = open_dir_at(dir.as_fd(), &name).unwrap();
            dir = std::fs::File::from(fd);
        }
    }

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    #[test]
    fn removes_a_tree_deeper_than_the_fd_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("top");
        deep(&top, 5000);
        // A wide part too, and a symlink to the outside that must survive.
        std::fs::create_dir(top.join("wide")).unwrap();
        for i in 0..300 {
            let d = top.join(format!("wide/{i}"));
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("f"), b"x").unwrap();
        }
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"k").unwrap();
        std::os::unix::fs::symlink(&outside, top.join("wide/0/out")).unwrap();
        remove_tree(&top).unwrap();
        assert!(!top.exists());
        assert_eq!(std::fs::read(outside.join("keep")).unwrap(), b"k");
        // Absent: NotFound, and fine for the _if_exists form.
        assert_eq!(
            remove_tree(&top).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        remove_tree_if_exists(&top).unwrap();
        // A file or a symlink at the top is just unlinked.
        std::fs::write(tmp.path().join("f"), b"").unwrap();
        remove_tree(&tmp.path().join("f")).unwrap();
        std::os::unix::fs::symlink(&outside, tmp.path().join("l")).unwrap();
        remove_tree(&tmp.path().join("l")).unwrap();
        assert!(outside.join("keep").exists());
    }

    #[test]
    fn deep_tree_with_a_low_fd_limit() {
        // Run in a child process so the lowered limit does not touch the
        // other tests: the removal must work with 64 descriptors.
        if std::env::var_os("CRIUS_TREE_CHILD").is_some() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("top");
        deep(&top, 3000);
        let exe = std::env::current_exe().unwrap();
        let status = {
            let mut cmd = std::process::Command::new(exe);
            cmd.args(["--exact", "tree::tests::child_remove", "--nocapture"])
                .env("CRIUS_TREE_CHILD", &top);
            cmd.status().unwrap()
        };
        assert!(status.success());
        assert!(!top.exists(), "the child removed the tree");
    }

    #[test]
    fn child_remove() {
        let Some(top) = std::env::var_os("CRIUS_TREE_CHILD") else {
            return;
        };
        let lim = libc::rlimit {
            rlim_cur: 64,
            rlim_max: 64,
        };
        // SAFETY: plain setrlimit in this (child) process.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
        let before = open_fds();
        remove_tree(Path::new(&top)).unwrap();
        assert_eq!(open_fds(), before, "no descriptor leaked");
    }

    #[test]
    fn unremovable_entries_fail_cleanly() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            eprintln!("skipping unremovable_entries_fail_cleanly: root ignores permissions");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().join("top");
        std::fs::create_dir_all(top.join("locked/sub")).unwrap();
        std::fs::set_permissions(top.join("locked"), std::fs::Permissions::from_mode(0o500))
            .unwrap();
        assert!(remove_tree(&top).is_err());
        std::fs::set_permissions(top.join("locked"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        remove_tree(&top).unwrap();
    }
}
