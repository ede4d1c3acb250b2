//! Disk usage of directory trees (the image filesystem, containers'
//! writable layers), and a cache of it refreshed off the request path.
//!
//! The walk goes relative to directory descriptors (`openat`, `fstatat`)
//! instead of building paths, so a tree deeper than PATH_MAX (which any
//! container can make in its writable layer) is measured like any other,
//! and it keeps a bounded number of descriptors open whatever the depth:
//! only the deepest [`MAX_OPEN`] directories of the current branch stay
//! open, and an ancestor that was closed is reached again through `..` of
//! its child (checked against the device and inode recorded on the way
//! down, so a directory moved meanwhile ends the walk instead of leading
//! it astray). Symlinks are never followed. What cannot be opened or
//! stat'ed is counted in [`Usage::errors`], not skipped silently, and never
//! fails the whole walk. No crate does fd-relative, bounded-descriptor
//! walks (walkdir builds paths), hence this module.
//!
//! [`UsageCache`] holds the last measurement of the image filesystem and
//! of each writable layer; criusd refreshes it in the background (as
//! containerd's snapshot syncer does), so ImageFsInfo and the stats calls
//! read a number instead of walking trees on the request path.

use nix::dir::Dir;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

/// Most directory descriptors one walk keeps open.
pub const MAX_OPEN: usize = 16;

/// What a walk found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of the blocks allocated.
    pub bytes: u64,
    /// Inodes (hard links counted once where asked).
    pub inodes: u64,
    /// Entries that could not be opened or stat'ed (not counted above).
    pub errors: u64,
}

/// How to walk.
#[derive(Debug, Clone, Copy, Default)]
pub struct WalkOptions {
    /// Count the root directory itself.
    pub count_root: bool,
    /// Stay on the root's filesystem (mounts below it are not counted).
    pub one_filesystem: bool,
    /// Count a file with several hard links in the tree once.
    pub dedup_hardlinks: bool,
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

fn open_at(dir: &OwnedFd, name: &std::ffi::OsStr) -> nix::Result<OwnedFd> {
    let fd = nix::fcntl::openat(Some(dir.as_raw_fd()), name, DIR_FLAGS, Mode::empty())?;
    // SAFETY: openat returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One directory of the current branch.
struct Frame {
    /// Open while among the deepest [`MAX_OPEN`] of the branch.
    fd: Option<OwnedFd>,
    dev: u64,
    ino: u64,
    /// Subdirectories still to visit.
    pending: Vec<OsString>,
}

fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

/// Measures the tree at `root`. A missing root is empty; a root that is not
/// a directory counts as one error.
pub fn walk(root: &Path, opts: WalkOptions) -> Usage {
    let mut u = Usage::default();
    let root_fd = match nix::fcntl::open(root, DIR_FLAGS, Mode::empty()) {
        // SAFETY: a new descriptor that nothing else owns.
        Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
        Err(nix::errno::Errno::ENOENT) => return u,
        Err(_) => {
            u.errors += 1;
            return u;
        }
    };
    let Ok(st) = fstat(root_fd.as_raw_fd()) else {
        u.errors += 1;
        return u;
    };
    if opts.count_root {
        u.inodes += 1;
        u.bytes += st.st_blocks as u64 * 512;
    }
    let root_dev = st.st_dev;
    let mut seen: HashSet<(u64, u64)> = HashSet::new();
    let mut stack = vec![Frame {
        fd: Some(root_fd),
        dev: st.st_dev,
        ino: st.st_ino,
        pending: Vec::new(),
    }];
    scan(&mut stack[0], root_dev, opts, &mut seen, &mut u);
    let mut open = 1usize;
    while let Some(top) = stack.last_mut() {
        let Some(name) = top.pending.pop() else {
            // Done with this directory: back to its parent, reopened
            // through `..` when it was closed to bound the descriptors.
            let done = stack.pop().expect("a frame");
            open -= done.fd.is_some() as usize;
            let Some(parent) = stack.last_mut() else {
                break;
            };
            if parent.fd.is_none() {
                let Some(child_fd) = done.fd.as_ref() else {
                    u.errors += 1;
                    break;
                };
                match open_at(child_fd, std::ffi::OsStr::new("..")) {
                    Ok(fd) => match fstat(fd.as_raw_fd()) {
                        Ok(st) if st.st_dev == parent.dev && st.st_ino == parent.ino => {
                            parent.fd = Some(fd);
                            open += 1;
                        }
                        // Moved while walked: stop rather than measure
                        // somewhere else.
                        _ => {
                            u.errors += 1;
                            break;
                        }
                    },
                    Err(_) => {
                        u.errors += 1;
                        break;
                    }
                }
            }
            continue;
        };
        let parent_fd = top.fd.as_ref().expect("the deepest frame is open");
        let fd = match open_at(parent_fd, &name) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ENOENT) => continue,
            Err(_) => {
                u.errors += 1;
                continue;
            }
        };
        let Ok(st) = fstat(fd.as_raw_fd()) else {
            u.errors += 1;
            continue;
        };
        stack.push(Frame {
            fd: Some(fd),
            dev: st.st_dev,
            ino: st.st_ino,
            pending: Vec::new(),
        });
        open += 1;
        if open > MAX_OPEN {
            // Close the shallowest open one: the open frames stay the
            // deepest part of the branch.
            if let Some(f) = stack.iter_mut().find(|f| f.fd.is_some()) {
                f.fd = None;
                open -= 1;
            }
        }
        let last = stack.len() - 1;
        scan(&mut stack[last], root_dev, opts, &mut seen, &mut u);
    }
    u
}

/// Counts the entries of the directory of `frame` and queues its
/// subdirectories.
fn scan(
    frame: &mut Frame,
    root_dev: u64,
    opts: WalkOptions,
    seen: &mut HashSet<(u64, u64)>,
    u: &mut Usage,
) {
    let Some(fd) = frame.fd.as_ref() else {
        u.errors += 1;
        return;
    };
    let mut dir = match Dir::openat(Some(fd.as_fd().as_raw_fd()), ".", DIR_FLAGS, Mode::empty()) {
        Ok(d) => d,
        Err(_) => {
            u.errors += 1;
            return;
        }
    };
    let names: Vec<OsString> = dir
        .iter()
        .filter_map(|e| e.ok())
        .map(|e| std::ffi::OsStr::from_bytes(e.file_name().to_bytes()).to_os_string())
        .filter(|n| n != "." && n != "..")
        .collect();
    drop(dir);
    for name in names {
        let st = match fstatat(
            Some(fd.as_raw_fd()),
            name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => st,
            // Gone meanwhile: nothing to count.
            Err(nix::errno::Errno::ENOENT) => continue,
            Err(_) => {
                u.errors += 1;
                continue;
            }
        };
        if opts.one_filesystem && st.st_dev != root_dev {
            continue;
        }
        let dir = is_dir(&st);
        if opts.dedup_hardlinks && !dir && st.st_nlink > 1 && !seen.insert((st.st_dev, st.st_ino)) {
            continue;
        }
        u.inodes += 1;
        u.bytes += st.st_blocks as u64 * 512;
        if dir {
            frame.pending.push(name);
        }
    }
}

/// Identity of a measured directory: device, inode and change time. A
/// directory renamed, or deleted and made again under the same name (even
/// on a reused inode), has another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DirKey {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}

impl DirKey {
    fn of(st: &FileStat) -> DirKey {
        DirKey {
            dev: st.st_dev,
            ino: st.st_ino,
            ctime: (st.st_ctime, st.st_ctime_nsec),
        }
    }
}

fn lstat(path: &Path) -> nix::Result<FileStat> {
    nix::sys::stat::lstat(path)
}

/// The usage of one entry: a directory tree walked, anything else its own
/// inode.
fn measure(path: &Path, st: &FileStat, opts: WalkOptions) -> Usage {
    if is_dir(st) {
        walk(
            path,
            WalkOptions {
                count_root: true,
                ..opts
            },
        )
    } else {
        Usage {
            bytes: st.st_blocks as u64 * 512,
            inodes: 1,
            errors: 0,
        }
    }
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, o: Usage) {
        self.bytes += o.bytes;
        self.inodes += o.inodes;
        self.errors += o.errors;
    }
}

/// The directories of the image directory whose entries are measured once
/// and remembered while they stay the same directory: committed snapshots
/// never change, and what is in the trash only shrinks until it is gone.
const MEASURED_ONCE: [&str; 2] = ["snapshots", crate::trash::TRASH_DIR];

/// Whether an entry of a [`MEASURED_ONCE`] directory is remembered: a
/// committed snapshot (64 hex digits) or a trash entry. Unpacks in
/// progress (`tmp-*`) are measured at every refresh.
fn remembered(parent: &str, name: &str) -> bool {
    match parent {
        "snapshots" => name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()),
        crate::trash::TRASH_DIR => true,
        _ => false,
    }
}

/// The last measurements of the image filesystem and of the writable
/// layers, by container id.
///
/// A refresh measures the image directory piece by piece: its own inode,
/// each top-level entry, and, in `snapshots/` and `trash/`, each entry on
/// its own, remembered by [`DirKey`] so that an unchanged snapshot is
/// never walked again (a layer of 20,000 files is walked once, after its
/// pull). Containers' writable layers and everything else are walked at
/// every refresh. Hard links are counted once within each piece (a link
/// never crosses pieces: layers, blobs and writable layers are separate
/// trees). What is in the trash counts until it is deleted: it still takes
/// the space (as containerd's snapshots count until removed).
#[derive(Default)]
pub struct UsageCache {
    image_fs: Mutex<Option<(Usage, Instant)>>,
    layers: Mutex<HashMap<String, Usage>>,
    /// Remembered pieces, by path.
    pieces: Mutex<HashMap<std::path::PathBuf, (DirKey, Usage)>>,
    /// Woken when a measurement is out of date or missing.
    wanted: tokio::sync::Notify,
    /// Told of every finished refresh (its count).
    refreshed: std::sync::OnceLock<tokio::sync::watch::Sender<u64>>,
}

impl UsageCache {
    fn refreshed(&self) -> &tokio::sync::watch::Sender<u64> {
        self.refreshed
            .get_or_init(|| tokio::sync::watch::channel(0).0)
    }

    /// The image filesystem's last measurement.
    pub fn image_fs(&self) -> Option<Usage> {
        self.image_fs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|(u, _)| u)
    }

    /// Waits until a refresh has finished (at once when one has).
    pub async fn first_refresh(&self) {
        let mut rx = self.refreshed().subscribe();
        let _ = rx.wait_for(|n| *n > 0).await;
    }

    /// A writable layer's last measurement; none yet asks the refresher to
    /// run now.
    pub fn layer(&self, container_id: &str) -> Option<Usage> {
        let got = self
            .layers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(container_id)
            .copied();
        if got.is_none() {
            self.request_refresh();
        }
        got
    }

    /// Asks the refresher to measure again now (what it measured changed).
    pub fn request_refresh(&self) {
        self.wanted.notify_one();
    }

    /// Resolves when a new measurement was asked for.
    pub async fn refresh_requested(&self) {
        self.wanted.notified().await
    }

    /// A remembered piece moved from `from` to `to` (a snapshot renamed
    /// into the trash): its measurement goes with it (blocking: one lstat).
    pub fn moved(&self, from: &Path, to: &Path) {
        let mut pieces = self.pieces.lock().unwrap_or_else(|e| e.into_inner());
        let Some((_, u)) = pieces.remove(from) else {
            return;
        };
        // rename(2) changes the change time: the key is the new one.
        if let Ok(st) = lstat(to) {
            pieces.insert(to.to_path_buf(), (DirKey::of(&st), u));
        }
    }

    /// Measures the image directory and every writable layer below
    /// `<images>/containers/<id>/upper` (blocking: run it off the async
    /// workers), and replaces what was cached.
    pub fn refresh(&self, images: &Path) {
        let started = Instant::now();
        let opts = WalkOptions {
            count_root: true,
            one_filesystem: false,
            dedup_hardlinks: true,
        };
        let mut total = Usage::default();
        let mut seen = HashSet::new();
        let mut walked = 0usize;
        match lstat(images) {
            Ok(st) if is_dir(&st) => {
                total.inodes += 1;
                total.bytes += st.st_blocks as u64 * 512;
                match std::fs::read_dir(images) {
                    Ok(rd) => {
                        for e in rd.flatten() {
                            let name = e.file_name().to_string_lossy().into_owned();
                            let p = e.path();
                            let Ok(st) = lstat(&p) else {
                                continue;
                            };
                            if MEASURED_ONCE.contains(&name.as_str()) && is_dir(&st) {
                                total += self.measure_dir_of_pieces(
                                    &name,
                                    &p,
                                    &st,
                                    opts,
                                    &mut seen,
                                    &mut walked,
                                );
                            } else {
                                total += measure(&p, &st, opts);
                            }
                        }
                    }
                    Err(_) => total.errors += 1,
                }
            }
            Ok(_) => total.errors += 1,
            Err(nix::errno::Errno::ENOENT) => {}
            Err(_) => total.errors += 1,
        }
        // What is no longer there is forgotten.
        self.pieces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p, _| seen.contains(p));
        let mut layers = HashMap::new();
        let mut errors = total.errors;
        if let Ok(rd) = std::fs::read_dir(images.join("containers")) {
            for e in rd.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let u = walk(
                    &e.path().join("upper"),
                    WalkOptions {
                        count_root: false,
                        one_filesystem: true,
                        dedup_hardlinks: false,
                    },
                );
                errors += u.errors;
                layers.insert(id, u);
            }
        }
        if errors > 0 {
            tracing::debug!(errors, "disk usage: entries that could not be measured");
        }
        *self.image_fs.lock().unwrap_or_else(|e| e.into_inner()) = Some((total, Instant::now()));
        *self.layers.lock().unwrap_or_else(|e| e.into_inner()) = layers;
        self.refreshed().send_modify(|n| *n += 1);
        tracing::trace!(took = ?started.elapsed(), walked, "disk usage refreshed");
    }

    /// `dir` (one of [`MEASURED_ONCE`]) itself and its entries, remembered
    /// ones from the cache when they are still the same.
    fn measure_dir_of_pieces(
        &self,
        name: &str,
        dir: &Path,
        st: &FileStat,
        opts: WalkOptions,
        seen: &mut HashSet<std::path::PathBuf>,
        walked: &mut usize,
    ) -> Usage {
        let mut u = Usage {
            bytes: st.st_blocks as u64 * 512,
            inodes: 1,
            errors: 0,
        };
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(_) => {
                u.errors += 1;
                return u;
            }
        };
        for e in rd.flatten() {
            let entry = e.file_name().to_string_lossy().into_owned();
            let p = e.path();
            let Ok(st) = lstat(&p) else {
                // Gone meanwhile (deleted from the trash).
                continue;
            };
            if !(is_dir(&st) && remembered(name, &entry)) {
                u += measure(&p, &st, opts);
                continue;
            }
            let key = DirKey::of(&st);
            let cached = self
                .pieces
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&p)
                .filter(|(k, _)| *k == key)
                .map(|(_, u)| *u);
            let piece = match cached {
                Some(c) => c,
                None => {
                    *walked += 1;
                    let m = measure(&p, &st, opts);
                    // Remembered only when whole, and still the same
                    // directory afterwards.
                    if m.errors == 0 && lstat(&p).is_ok_and(|after| DirKey::of(&after) == key) {
                        self.pieces
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .insert(p.clone(), (key, m));
                    }
                    m
                }
            };
            seen.insert(p);
            u += piece;
        }
        u
    }

    /// Forgets a removed container's layer.
    pub fn forget(&self, container_id: &str) {
        self.layers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(container_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn opts(count_root: bool, dedup: bool) -> WalkOptions {
        WalkOptions {
            count_root,
            one_filesystem: true,
            dedup_hardlinks: dedup,
        }
    }

    #[test]
    fn counts_files_dirs_links_once() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        std::fs::write(r.join("a/b/f"), vec![7u8; 10_000]).unwrap();
        std::fs::hard_link(r.join("a/b/f"), r.join("a/g")).unwrap();
        std::os::unix::fs::symlink("/etc", r.join("link")).unwrap();
        let blocks = |p: &Path| {
            use std::os::unix::fs::MetadataExt;
            std::fs::symlink_metadata(p).unwrap().blocks() * 512
        };
        // a, a/b, a/b/f, a/g, link
        let u = walk(r, opts(false, false));
        assert_eq!(u.inodes, 5);
        assert_eq!(u.errors, 0);
        assert!(u.bytes >= 2 * blocks(&r.join("a/b/f")), "{u:?}");
        let once = walk(r, opts(true, true));
        assert_eq!(once.inodes, 5, "root counted, f and g once");
        assert_eq!(
            once.bytes,
            u.bytes - blocks(&r.join("a/g")) + blocks(r),
            "{once:?} {u:?}"
        );
        // The symlink was not followed into /etc.
        assert!(u.inodes < 10);
        assert_eq!(walk(&r.join("missing"), opts(true, true)), Usage::default());
        let file = walk(&r.join("a/b/f"), opts(true, true));
        assert_eq!(file.errors, 1);
    }

    #[test]
    fn deeper_than_path_max_with_bounded_descriptors() {
        let d = tempfile::tempdir().unwrap();
        // 40 levels of 250-byte names: ~10 KB of path, past PATH_MAX (4096);
        // made with relative mkdirs, as a container does.
        let name = "d".repeat(250);
        let levels = 40;
        let base = d.path().to_path_buf();
        let mut cur = nix::fcntl::open(&base, DIR_FLAGS, Mode::empty()).unwrap();
        for i in 0..levels {
            nix::sys::stat::mkdirat(Some(cur), name.as_str(), Mode::from_bits_truncate(0o755))
                .unwrap();
            let f = nix::fcntl::openat(Some(cur), name.as_str(), DIR_FLAGS, Mode::empty()).unwrap();
            if i == levels - 1 {
                let file = nix::fcntl::openat(
                    Some(f),
                    "leaf",
                    OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o644),
                )
                .unwrap();
                nix::unistd::write(
                    unsafe { std::os::fd::BorrowedFd::borrow_raw(file) },
                    &[1u8; 5000],
                )
                .unwrap();
                nix::unistd::close(file).unwrap();
            }
            nix::unistd::close(cur).unwrap();
            cur = f;
        }
        nix::unistd::close(cur).unwrap();
        // A sibling branch at the top, visited after the deep one.
        std::fs::create_dir(base.join("z")).unwrap();
        // Descriptors into the tree (other tests run in this process too,
        // so only those can tell a leak).
        let fds_into = |dir: &Path| {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .flatten()
                .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(dir)))
                .count()
        };
        let u = walk(&base, opts(false, false));
        assert_eq!(u.errors, 0, "{u:?}");
        assert_eq!(u.inodes, levels + 2, "{u:?}");
        assert!(u.bytes >= 5000);
        assert_eq!(fds_into(&base), 0, "descriptors leaked");
        // Removing it needs the same care: rm -rf handles long paths.
        assert!(std::process::Command::new("rm")
            .arg("-rf")
            .arg(&base)
            .status()
            .unwrap()
            .success());
    }

    #[test]
    fn unreadable_entries_are_counted_as_errors() {
        if nix::unistd::geteuid().is_root() {
            // root reads everything; the permission check needs a user.
            return;
        }
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("closed/inner")).unwrap();
        std::fs::set_permissions(
            d.path().join("closed"),
            std::fs::Permissions::from_mode(0o000),
        )
        .unwrap();
        let u = walk(d.path(), opts(false, false));
        assert_eq!(u.inodes, 1);
        assert_eq!(u.errors, 1);
        std::fs::set_permissions(
            d.path().join("closed"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }

    #[test]
    fn cache_serves_last_refresh_and_asks_for_missing_layers() {
        let d = tempfile::tempdir().unwrap();
        let images = d.path();
        std::fs::create_dir_all(images.join("containers/c1/upper/etc")).unwrap();
        std::fs::write(images.join("containers/c1/upper/etc/x"), b"hello").unwrap();
        let cache = UsageCache::default();
        assert_eq!(cache.image_fs(), None);
        assert_eq!(cache.layer("c1"), None);
        cache.refresh(images);
        let l = cache.layer("c1").unwrap();
        assert_eq!(l.inodes, 2);
        assert!(cache.image_fs().unwrap().inodes >= 5);
        cache.forget("c1");
        assert_eq!(cache.layer("c1"), None);
        // The miss above woke a refresher (one pending permit).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(1), cache.refresh_requested())
                .await
                .expect("a pending wake-up");
        });
    }

    #[test]
    fn which_entries_are_remembered() {
        let hex = "a".repeat(64);
        let not_hex = "g".repeat(64);
        // (parent, name, remembered)
        let cases = [
            ("snapshots", hex.as_str(), true),
            ("snapshots", "tmp-0123456789abcdef", false),
            ("snapshots", &hex[1..], false),
            ("snapshots", not_hex.as_str(), false),
            ("trash", "snapshot-0011-3", true),
            ("trash", "blob-0011-4", true),
            ("content", hex.as_str(), false),
            ("containers", hex.as_str(), false),
        ];
        for (parent, name, want) in cases {
            assert_eq!(remembered(parent, name), want, "{parent}/{name}");
        }
    }

    /// An image directory with a committed snapshot, an unpack in
    /// progress, a blob, a writable layer and something in the trash.
    fn image_dir(root: &Path) -> std::path::PathBuf {
        let images = root.join("images");
        let snap = images.join("snapshots").join("b".repeat(64)).join("fs");
        std::fs::create_dir_all(snap.join("usr/bin")).unwrap();
        for i in 0..50 {
            std::fs::write(snap.join(format!("usr/bin/f{i}")), vec![1u8; 5000]).unwrap();
        }
        std::fs::hard_link(snap.join("usr/bin/f0"), snap.join("usr/link")).unwrap();
        std::fs::create_dir_all(images.join("snapshots/tmp-1/fs")).unwrap();
        std::fs::write(images.join("snapshots/tmp-1/fs/x"), b"x").unwrap();
        std::fs::create_dir_all(images.join("content/sha256")).unwrap();
        std::fs::write(
            images.join("content/sha256").join("c".repeat(64)),
            vec![2u8; 9000],
        )
        .unwrap();
        std::fs::create_dir_all(images.join("containers/c1/upper/etc")).unwrap();
        std::fs::write(images.join("containers/c1/upper/etc/y"), b"y").unwrap();
        std::fs::create_dir_all(images.join("trash/blob-1-0")).unwrap();
        std::fs::write(images.join("trash/blob-1-1"), vec![3u8; 7000]).unwrap();
        images
    }

    fn whole(images: &Path) -> Usage {
        walk(
            images,
            WalkOptions {
                count_root: true,
                one_filesystem: false,
                dedup_hardlinks: true,
            },
        )
    }

    /// The total, put together piece by piece, is what one walk of the
    /// whole tree finds.
    #[test]
    fn pieces_add_up_to_the_whole_walk() {
        let d = tempfile::tempdir().unwrap();
        let images = image_dir(d.path());
        let cache = UsageCache::default();
        cache.refresh(&images);
        let got = cache.image_fs().unwrap();
        assert_eq!(got, whole(&images));
        // The same from the remembered pieces.
        cache.refresh(&images);
        assert_eq!(cache.image_fs().unwrap(), got);
        assert_eq!(cache.layer("c1").unwrap().inodes, 2);
    }

    /// A committed snapshot is walked once: a change deep inside it (which
    /// nothing does to a real one) is not seen. Moved into the trash its
    /// measurement goes with it; deleted, it is no longer counted; a new
    /// directory under the old name is measured anew.
    #[test]
    fn snapshots_are_measured_once_and_follow_into_the_trash() {
        let d = tempfile::tempdir().unwrap();
        let images = image_dir(d.path());
        let snap = images.join("snapshots").join("b".repeat(64));
        let cache = UsageCache::default();
        cache.refresh(&images);
        let first = cache.image_fs().unwrap();
        std::fs::write(snap.join("fs/usr/bin/f1"), vec![1u8; 500_000]).unwrap();
        cache.refresh(&images);
        assert_eq!(cache.image_fs().unwrap(), first, "not walked again");
        let grown = whole(&images);
        assert!(grown.bytes > first.bytes);

        // Into the trash (as collection does): still counted, not walked.
        let to = images.join("trash/snapshot-1-2");
        std::fs::rename(&snap, &to).unwrap();
        cache.moved(&snap, &to);
        cache.refresh(&images);
        assert_eq!(cache.image_fs().unwrap(), first, "carried into the trash");

        // Deleted: gone from the total.
        let snap_usage = walk(&to, opts(true, true));
        std::fs::remove_dir_all(&to).unwrap();
        cache.refresh(&images);
        let after = cache.image_fs().unwrap();
        assert_eq!(after.inodes, first.inodes - snap_usage.inodes);
        assert_eq!(after, whole(&images));

        // A new snapshot under the old name: measured, not the old value.
        std::fs::create_dir_all(snap.join("fs")).unwrap();
        std::fs::write(snap.join("fs/only"), b"1").unwrap();
        cache.refresh(&images);
        assert_eq!(cache.image_fs().unwrap(), whole(&images));
        assert_eq!(
            cache.pieces.lock().unwrap().len(),
            2,
            "the new snapshot and the directory in the trash"
        );
    }

    #[test]
    fn first_refresh_is_told() {
        let d = tempfile::tempdir().unwrap();
        let cache = std::sync::Arc::new(UsageCache::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let waiting = {
                let c = cache.clone();
                tokio::spawn(async move { c.first_refresh().await })
            };
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            assert!(!waiting.is_finished());
            cache.refresh(d.path());
            tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
                .await
                .expect("told")
                .unwrap();
            // After the first, at once.
            tokio::time::timeout(std::time::Duration::from_secs(1), cache.first_refresh())
                .await
                .expect("at once");
        });
    }
}
