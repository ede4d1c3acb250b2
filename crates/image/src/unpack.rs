//! Safe layer extraction.
//!
//! Every entry is created relative to a directory file descriptor of the
//! snapshot root, one path component at a time with `O_NOFOLLOW`, so no entry
//! can create or change anything outside the snapshot:
//! - paths with `..` and absolute paths are skipped;
//! - a path whose parent is a symlink (or not a directory) is skipped;
//! - hardlink targets are resolved the same way, so they stay inside the layer;
//! - character and block devices are skipped (the only device nodes created
//!   are the overlayfs whiteouts made from `.wh.` entries);
//! - regular files are created with `O_EXCL | O_NOFOLLOW` after any existing
//!   entry of that name was removed.
//!
//! OCI whiteouts become overlayfs whiteouts: `.wh.NAME` a 0:0 character
//! device `NAME`, `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on its
//! directory. Ownership, permissions (including set-id bits), modification
//! times, PAX `SCHILY.xattr.*` extended attributes and hardlinks are kept.

use sha2::{Digest, Sha256};
use std::ffi::CString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The xattr that marks an overlayfs opaque directory.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Errors of unpacking a layer.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// Opening the snapshot root or reading the stream failed.
    #[error("cannot unpack into {root}: {source}")]
    Io {
        /// The snapshot root.
        root: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Creating one entry failed.
    #[error("cannot create layer entry {entry:?}: {source}")]
    Entry {
        /// The entry's path in the tar.
        entry: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The uncompressed layer does not have the digest the config lists.
    #[error("layer content digest mismatch: expected {expected}, got {actual}")]
    DiffIdMismatch {
        /// The config's diff id.
        expected: String,
        /// What the layer hashed to.
        actual: String,
    },
}

/// What an unpack did besides creating entries.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnpackReport {
    /// Entries created or changed.
    pub entries: u64,
    /// Entries refused, with the reason.
    pub skipped: Vec<(String, String)>,
    /// sha256 digest of the uncompressed tar stream.
    pub diff_id: String,
}

/// What an entry name means for overlayfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Whiteout<'a> {
    /// An ordinary entry.
    None,
    /// `.wh..wh..opq`: the parent directory hides everything below it.
    Opaque,
    /// `.wh.NAME`: NAME is deleted.
    Delete(&'a [u8]),
    /// A whiteout that names nothing valid.
    Invalid,
}

/// Classifies the last component of an entry path.
pub fn classify(name: &[u8]) -> Whiteout<'_> {
    if name == OPAQUE_MARKER.as_bytes() {
        return Whiteout::Opaque;
    }
    match name.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        None => Whiteout::None,
        Some(b"") | Some(b".") | Some(b"..") => Whiteout::Invalid,
        Some(rest) if rest.starts_with(WHITEOUT_PREFIX.as_bytes()) => Whiteout::Invalid,
        Some(rest) => Whiteout::Delete(rest),
    }
}

/// Splits a tar path into components, refusing absolute paths and `..`.
/// `.` and empty components are dropped; an empty result is the root.
pub fn split_path(raw: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("absolute path");
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path contains `..`"),
            c if c.contains(&0) => return Err("path contains NUL"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// A reader that hashes and counts what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// `sha256:<hex>` of what was read.
    pub fn digest(self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.finalize()))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Opens a layer blob as an uncompressed tar stream, recognising gzip and
/// zstd by their magic numbers.
pub fn decompress(file: File) -> io::Result<Box<dyn Read + Send>> {
    let mut buf = BufReader::with_capacity(256 * 1024, file);
    let head = buf.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(buf)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(buf)?))
    } else {
        Ok(Box::new(buf))
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cstring(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains NUL"))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = cstring(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: c is a valid NUL-terminated string; the fd is owned on success.
    let fd = cvt(unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fd was just returned by open and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens directory `name` under `parent` without following symlinks;
/// creates it (0755) first when `create` and it is missing.
fn open_child_dir(parent: BorrowedFd<'_>, name: &[u8], create: bool) -> io::Result<OwnedFd> {
    let c = cstring(name)?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    for attempt in 0..2 {
        // SAFETY: valid dir fd and NUL-terminated name.
        let fd = unsafe { libc::openat(parent.as_raw_fd(), c.as_ptr(), flags) };
        if fd >= 0 {
            // SAFETY: fd was just returned by openat.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::ENOENT) if create && attempt == 0 => {
                // SAFETY: valid dir fd and name.
                let r = unsafe { libc::mkdirat(parent.as_raw_fd(), c.as_ptr(), 0o755) };
                if r < 0 {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EEXIST) {
                        return Err(e);
                    }
                }
            }
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a parent is a symlink or not a directory",
                ))
            }
            _ => return Err(err),
        }
    }
    Err(io::Error::from_raw_os_error(libc::ENOENT))
}

/// Opens the directory of `comps` (all but the last are walked) under root.
fn walk(root: &OwnedFd, comps: &[&[u8]], create: bool) -> io::Result<OwnedFd> {
    let mut dir = root.try_clone()?;
    for c in comps {
        dir = open_child_dir(dir.as_fd(), c, create)?;
    }
    Ok(dir)
}

fn lstat_at(parent: BorrowedFd<'_>, name: &CString) -> io::Result<Option<libc::stat>> {
    // SAFETY: zeroed stat is a valid out buffer; fd and name are valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::fstatat(
            parent.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(Some(st))
    } else {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOENT) {
            Ok(None)
        } else {
            Err(e)
        }
    }
}

/// Removes whatever is at `name` under `parent`; a directory is kept when
/// `keep_dir` (a directory entry over an existing directory merges).
/// Returns whether an existing directory was kept.
fn clear(parent: BorrowedFd<'_>, name: &CString, keep_dir: bool) -> io::Result<bool> {
    let Some(st) = lstat_at(parent, name)? else {
        return Ok(false);
    };
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        if keep_dir {
            return Ok(true);
        }
        // std's remove_dir_all never follows symlinks; the path goes through
        // our own directory fd.
        let path = PathBuf::from(format!("/proc/self/fd/{}", parent.as_raw_fd()))
            .join(std::ffi::OsStr::from_bytes(name.as_bytes()));
        std::fs::remove_dir_all(path)?;
    } else {
        // SAFETY: valid fd and name.
        cvt(unsafe { libc::unlinkat(parent.as_raw_fd(), name.as_ptr(), 0) })?;
    }
    Ok(false)
}

fn ignore_eperm_unless_root(r: io::Result<libc::c_int>) -> io::Result<()> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && !is_root() => Ok(()),
        Err(e) => Err(e),
    }
}

fn times(mtime: u64) -> [libc::timespec; 2] {
    let t = libc::timespec {
        tv_sec: mtime.min(i64::MAX as u64) as libc::time_t,
        tv_nsec: 0,
    };
    [t, t]
}

/// Owner, mode, xattrs and times of an entry opened as `fd`.
fn set_attrs_fd(
    fd: BorrowedFd<'_>,
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: Option<u64>,
    xattrs: &[(CString, Vec<u8>)],
) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: raw is a valid open fd for all calls below.
    ignore_eperm_unless_root(cvt(unsafe { libc::fchown(raw, uid, gid) }))?;
    cvt(unsafe { libc::fchmod(raw, (mode & 0o7777) as libc::mode_t) })?;
    for (name, value) in xattrs {
        let r = cvt(unsafe {
            libc::fsetxattr(raw, name.as_ptr(), value.as_ptr().cast(), value.len(), 0)
        });
        if let Err(e) = r {
            tracing::warn!(xattr = ?name, error = %e, "cannot set extended attribute; skipped");
        }
    }
    if let Some(m) = mtime {
        let ts = times(m);
        cvt(unsafe { libc::futimens(raw, ts.as_ptr()) })?;
    }
    Ok(())
}

fn entry_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Vec<(CString, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                if let Ok(c) = cstring(name) {
                    out.push((c, ext.value_bytes().to_vec()));
                }
            }
        }
    }
    Ok(out)
}

struct Unpacker {
    root: OwnedFd,
    report: UnpackReport,
    /// Directories whose mtime is set at the end (their contents change it).
    dir_times: Vec<(Vec<Vec<u8>>, u64)>,
}

enum Outcome {
    Done,
    Skip(String),
}

impl Unpacker {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> io::Result<Outcome> {
        let header = entry.header().clone();
        let kind = header.entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            return Ok(Outcome::Done);
        }
        let raw_path = entry.path_bytes().into_owned();
        let comps = match split_path(&raw_path) {
            Ok(c) => c,
            Err(why) => return Ok(Outcome::Skip(why.into())),
        };
        let uid = header.uid().unwrap_or(0).min(u32::MAX as u64) as u32;
        let gid = header.gid().unwrap_or(0).min(u32::MAX as u64) as u32;
        let mode = header.mode().unwrap_or(0o644);
        let mtime = header.mtime().ok();
        let xattrs = entry_xattrs(entry)?;

        let Some((last, parents)) = comps.split_last() else {
            // The root directory itself.
            if kind.is_dir() {
                set_attrs_fd(self.root.as_fd(), uid, gid, mode, None, &xattrs)?;
                if let Some(m) = mtime {
                    self.dir_times.push((Vec::new(), m));
                }
                return Ok(Outcome::Done);
            }
            return Ok(Outcome::Skip("a non-directory entry for the root".into()));
        };
        let parent = match walk(&self.root, parents, true) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                return Ok(Outcome::Skip(e.to_string()))
            }
            Err(e) => return Err(e),
        };
        let pfd = parent.as_raw_fd();

        match classify(last) {
            Whiteout::Opaque => {
                let name = cstring(OPAQUE_XATTR.as_bytes())?;
                // SAFETY: pfd is an open directory fd; name and value are valid.
                cvt(unsafe { libc::fsetxattr(pfd, name.as_ptr(), b"y".as_ptr().cast(), 1, 0) })?;
                return Ok(Outcome::Done);
            }
            Whiteout::Delete(target) => {
                let t = cstring(target)?;
                clear(parent.as_fd(), &t, false)?;
                // SAFETY: valid fd and name; 0:0 character device.
                cvt(unsafe { libc::mknodat(pfd, t.as_ptr(), libc::S_IFCHR, 0) })?;
                ignore_eperm_unless_root(cvt(unsafe {
                    libc::fchownat(pfd, t.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW)
                }))?;
                return Ok(Outcome::Done);
            }
            Whiteout::Invalid => return Ok(Outcome::Skip("invalid whiteout name".into())),
            Whiteout::None => {}
        }

        let name = cstring(last)?;
        match kind {
            tar::EntryType::Directory => {
                if !clear(parent.as_fd(), &name, true)? {
                    // SAFETY: valid fd and name.
                    cvt(unsafe { libc::mkdirat(pfd, name.as_ptr(), 0o700) })?;
                }
                let dir = open_child_dir(parent.as_fd(), last, false)?;
                set_attrs_fd(dir.as_fd(), uid, gid, mode, None, &xattrs)?;
                if let Some(m) = mtime {
                    self.dir_times
                        .push((comps.iter().map(|c| c.to_vec()).collect(), m));
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                clear(parent.as_fd(), &name, false)?;
                // SAFETY: valid fd and name; the fd is owned on success.
                let fd = cvt(unsafe {
                    libc::openat(
                        pfd,
                        name.as_ptr(),
                        libc::O_WRONLY
                            | libc::O_CREAT
                            | libc::O_EXCL
                            | libc::O_NOFOLLOW
                            | libc::O_CLOEXEC,
                        0o600 as libc::c_uint,
                    )
                })?;
                // SAFETY: fd was just returned by openat.
                let mut file = unsafe { File::from_raw_fd(fd) };
                io::copy(entry, &mut file)?;
                set_attrs_fd(file.as_fd(), uid, gid, mode, mtime, &xattrs)?;
            }
            tar::EntryType::Symlink => {
                let Some(target) = entry.link_name_bytes() else {
                    return Ok(Outcome::Skip("symlink without target".into()));
                };
                let target = match cstring(&target) {
                    Ok(t) => t,
                    Err(_) => return Ok(Outcome::Skip("symlink target contains NUL".into())),
                };
                clear(parent.as_fd(), &name, false)?;
                // SAFETY: valid fd and strings. The target is only stored.
                cvt(unsafe { libc::symlinkat(target.as_ptr(), pfd, name.as_ptr()) })?;
                ignore_eperm_unless_root(cvt(unsafe {
                    libc::fchownat(pfd, name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW)
                }))?;
                if let Some(m) = mtime {
                    let ts = times(m);
                    cvt(unsafe {
                        libc::utimensat(pfd, name.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
                    })?;
                }
            }
            tar::EntryType::Link => {
                let Some(target) = entry.link_name_bytes() else {
                    return Ok(Outcome::Skip("hardlink without target".into()));
                };
                let tcomps = match split_path(&target) {
                    Ok(c) => c,
                    Err(why) => return Ok(Outcome::Skip(format!("hardlink target: {why}"))),
                };
                let Some((tlast, tparents)) = tcomps.split_last() else {
                    return Ok(Outcome::Skip("hardlink to the root".into()));
                };
                let tparent = match walk(&self.root, tparents, false) {
                    Ok(p) => p,
                    Err(e) => return Ok(Outcome::Skip(format!("hardlink target: {e}"))),
                };
                let tname = cstring(tlast)?;
                match lstat_at(tparent.as_fd(), &tname)? {
                    None => {
                        return Ok(Outcome::Skip("hardlink target is not in this layer".into()))
                    }
                    Some(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                        return Ok(Outcome::Skip("hardlink to a directory".into()))
                    }
                    Some(_) => {}
                }
                if tparents == parents && tlast == last {
                    return Ok(Outcome::Skip("hardlink to itself".into()));
                }
                clear(parent.as_fd(), &name, false)?;
                // SAFETY: valid fds and names; flags 0 never follows a symlink target.
                cvt(unsafe {
                    libc::linkat(tparent.as_raw_fd(), tname.as_ptr(), pfd, name.as_ptr(), 0)
                })?;
            }
            tar::EntryType::Fifo => {
                clear(parent.as_fd(), &name, false)?;
                // SAFETY: valid fd and name.
                cvt(unsafe {
                    libc::mknodat(
                        pfd,
                        name.as_ptr(),
                        libc::S_IFIFO | (mode & 0o7777) as libc::mode_t,
                        0,
                    )
                })?;
                ignore_eperm_unless_root(cvt(unsafe {
                    libc::fchownat(pfd, name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW)
                }))?;
                cvt(unsafe {
                    libc::fchmodat(pfd, name.as_ptr(), (mode & 0o7777) as libc::mode_t, 0)
                })?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Ok(Outcome::Skip(
                    "device nodes are not allowed in layers".into(),
                ));
            }
            other => return Ok(Outcome::Skip(format!("unsupported entry type {other:?}"))),
        }
        Ok(Outcome::Done)
    }

    fn finish_dir_times(&mut self) {
        for (comps, m) in self.dir_times.iter().rev() {
            let refs: Vec<&[u8]> = comps.iter().map(|c| c.as_slice()).collect();
            let ts = times(*m);
            match walk(&self.root, &refs, false) {
                // SAFETY: the fd is an open directory.
                Ok(dir) => {
                    if let Err(e) = cvt(unsafe { libc::futimens(dir.as_raw_fd(), ts.as_ptr()) }) {
                        tracing::debug!(error = %e, "cannot set directory time");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "directory vanished before its time was set"),
            }
        }
    }
}

/// Unpacks the uncompressed tar stream `reader` into the existing directory
/// `root`, applying the rules in the module documentation. The returned
/// report carries the sha256 of the whole stream (its diff id).
pub fn unpack(reader: impl Read, root: &Path) -> Result<UnpackReport, UnpackError> {
    let io_err = |source| UnpackError::Io {
        root: root.to_path_buf(),
        source,
    };
    let root_fd = open_dir(root).map_err(io_err)?;
    let mut u = Unpacker {
        root: root_fd,
        report: UnpackReport::default(),
        dir_times: Vec::new(),
    };
    let mut archive = tar::Archive::new(HashingReader::new(reader));
    {
        let entries = archive.entries().map_err(io_err)?;
        for entry in entries {
            let mut entry = entry.map_err(io_err)?;
            let shown = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            match u.entry(&mut entry) {
                Ok(Outcome::Done) => u.report.entries += 1,
                Ok(Outcome::Skip(why)) => {
                    tracing::warn!(entry = %shown, reason = %why, "layer entry skipped");
                    u.report.skipped.push((shown, why));
                }
                Err(source) => {
                    return Err(UnpackError::Entry {
                        entry: shown,
                        source,
                    })
                }
            }
        }
    }
    u.finish_dir_times();
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(io_err)?;
    u.report.diff_id = rest.digest();
    Ok(u.report)
}

/// Unpacks a layer blob file (any supported compression) into `root` and
/// checks that its uncompressed content has digest `diff_id`.
pub fn unpack_blob(blob: &Path, root: &Path, diff_id: &str) -> Result<UnpackReport, UnpackError> {
    let io_err = |source| UnpackError::Io {
        root: root.to_path_buf(),
        source,
    };
    let file = File::open(blob).map_err(io_err)?;
    let reader = decompress(file).map_err(io_err)?;
    let report = unpack(reader, root)?;
    if report.diff_id != diff_id {
        return Err(UnpackError::DiffIdMismatch {
            expected: diff_id.to_string(),
            actual: report.diff_id,
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn whiteout_names() {
        let cases: [(&[u8], Whiteout<'_>); 8] = [
            (b"file", Whiteout::None),
            (b".wh..wh..opq", Whiteout::Opaque),
            (b".wh.file", Whiteout::Delete(b"file")),
            (b".wh..hidden", Whiteout::Delete(b".hidden")),
            (b".wh.", Whiteout::Invalid),
            (b".wh..", Whiteout::Invalid),
            (b".wh...", Whiteout::Invalid),
            (b".wh..wh.x", Whiteout::Invalid),
        ];
        for (name, want) in cases {
            assert_eq!(classify(name), want, "{}", String::from_utf8_lossy(name));
        }
    }

    #[test]
    fn path_splitting() {
        let ok: [(&[u8], Vec<&[u8]>); 5] = [
            (b"a/b", vec![b"a", b"b"]),
            (b"./a//b/", vec![b"a", b"b"]),
            (b"./", vec![]),
            (b"a/./b", vec![b"a", b"b"]),
            (b"...", vec![b"..."]),
        ];
        for (raw, want) in ok {
            assert_eq!(split_path(raw).unwrap(), want);
        }
        for bad in [&b"/etc/passwd"[..], b"../x", b"a/../../x", b"a/.."] {
            assert!(split_path(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    /// A tar builder that writes raw headers so hostile names get through.
    struct Tar(Vec<u8>);

    impl Tar {
        fn new() -> Self {
            Tar(Vec::new())
        }

        fn raw(&mut self, name: &[u8], kind: tar::EntryType, link: &[u8], mode: u32, data: &[u8]) {
            let mut h = tar::Header::new_gnu();
            {
                let old = h.as_old_mut();
                old.name[..name.len()].copy_from_slice(name);
                old.linkname[..link.len()].copy_from_slice(link);
            }
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(data.len() as u64);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_600_000_000);
            h.set_cksum();
            self.0.extend_from_slice(h.as_bytes());
            self.0.extend_from_slice(data);
            let pad = (512 - data.len() % 512) % 512;
            self.0.extend(std::iter::repeat_n(0u8, pad));
        }

        fn file(&mut self, name: &str, data: &[u8]) {
            self.raw(name.as_bytes(), tar::EntryType::Regular, b"", 0o644, data);
        }

        fn dir(&mut self, name: &str) {
            self.raw(name.as_bytes(), tar::EntryType::Directory, b"", 0o755, b"");
        }

        fn finish(mut self) -> Vec<u8> {
            self.0.extend(std::iter::repeat_n(0u8, 1024));
            self.0
        }
    }

    fn tree(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        fn rec(base: &Path, d: &Path, out: &mut Vec<String>) {
            let mut entries: Vec<_> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            entries.sort();
            for p in entries {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
                if p.symlink_metadata().unwrap().is_dir() {
                    rec(base, &p, out);
                }
            }
        }
        rec(dir, dir, &mut out);
        out
    }

    #[test]
    fn hostile_layers_stay_inside() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"original").unwrap();
        let snap = tmp.path().join("a/b/snap");
        std::fs::create_dir_all(&snap).unwrap();
        let victim = outside.join("victim");
        let abs_victim = victim.to_str().unwrap().as_bytes().to_vec();
        let rel_outside = b"../../../outside";

        let mut t = Tar::new();
        t.dir("ok");
        t.file("ok/file", b"hello");
        // `..` in paths.
        t.raw(
            b"../../../outside/dotdot",
            tar::EntryType::Regular,
            b"",
            0o644,
            b"x",
        );
        t.raw(
            b"ok/../../../../outside/victim",
            tar::EntryType::Regular,
            b"",
            0o644,
            b"pwned",
        );
        // Absolute path.
        t.raw(&abs_victim, tar::EntryType::Regular, b"", 0o644, b"pwned");
        // Symlink to the outside, then writes through it.
        t.raw(b"esc", tar::EntryType::Symlink, rel_outside, 0o777, b"");
        t.raw(b"esc/victim", tar::EntryType::Regular, b"", 0o644, b"pwned");
        t.raw(b"esc/newdir", tar::EntryType::Directory, b"", 0o755, b"");
        t.raw(
            b"absesc",
            tar::EntryType::Symlink,
            outside.to_str().unwrap().as_bytes(),
            0o777,
            b"",
        );
        t.raw(
            b"absesc/victim",
            tar::EntryType::Regular,
            b"",
            0o644,
            b"pwned",
        );
        t.raw(
            b"absesc/.wh.victim",
            tar::EntryType::Regular,
            b"",
            0o644,
            b"",
        );
        // A symlink named like a file, then a file of that name: the file
        // replaces the link instead of writing through it.
        t.raw(
            b"link-to-victim",
            tar::EntryType::Symlink,
            &abs_victim,
            0o777,
            b"",
        );
        t.raw(
            b"link-to-victim",
            tar::EntryType::Regular,
            b"",
            0o644,
            b"inside",
        );
        // Hardlinks out of the layer.
        t.raw(b"hl1", tar::EntryType::Link, &abs_victim, 0o644, b"");
        t.raw(
            b"hl2",
            tar::EntryType::Link,
            b"../../../outside/victim",
            0o644,
            b"",
        );
        t.raw(b"hl3", tar::EntryType::Link, b"esc/victim", 0o644, b"");
        // A hardlink inside the layer is fine.
        t.raw(b"ok/hard", tar::EntryType::Link, b"ok/file", 0o644, b"");
        // Device nodes.
        t.raw(b"dev-null", tar::EntryType::Char, b"", 0o666, b"");
        t.raw(b"disk", tar::EntryType::Block, b"", 0o666, b"");
        let data = t.finish();

        let report = unpack(&data[..], &snap).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"original");
        assert_eq!(
            tree(&outside),
            vec!["victim".to_string()],
            "nothing new outside"
        );
        assert_eq!(
            tree(tmp.path().join("a").as_path()),
            vec![
                "b",
                "b/snap",
                "b/snap/absesc",
                "b/snap/esc",
                "b/snap/link-to-victim",
                "b/snap/ok",
                "b/snap/ok/file",
                "b/snap/ok/hard"
            ]
        );
        assert_eq!(
            std::fs::read(snap.join("link-to-victim")).unwrap(),
            b"inside"
        );
        assert!(!snap
            .join("link-to-victim")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink());
        let a = std::fs::metadata(snap.join("ok/file")).unwrap();
        let b = std::fs::metadata(snap.join("ok/hard")).unwrap();
        assert_eq!(a.ino(), b.ino(), "in-layer hardlink kept");
        let skipped: Vec<&str> = report.skipped.iter().map(|(p, _)| p.as_str()).collect();
        for p in [
            "../../../outside/dotdot",
            "esc/victim",
            "esc/newdir",
            "absesc/victim",
            "hl1",
            "hl2",
            "hl3",
            "dev-null",
            "disk",
        ] {
            assert!(skipped.contains(&p), "{p} not skipped: {skipped:?}");
        }
        // The diff id is the sha256 of the whole stream.
        assert_eq!(
            report.diff_id,
            format!("sha256:{}", hex::encode(Sha256::digest(&data)))
        );
    }

    #[test]
    fn attributes_and_compression() {
        let tmp = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o750);
        h.set_mtime(1_000_000_000);
        h.set_size(0);
        b.append_data(&mut h, "d/", &[][..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o4755);
        h.set_mtime(1_234_567_890);
        h.set_size(3);
        let uid = if is_root() {
            1234
        } else {
            unsafe { libc::geteuid() }
        };
        h.set_uid(uid as u64);
        h.set_gid(if is_root() {
            4321
        } else {
            unsafe { libc::getegid() }
        } as u64);
        b.append_pax_extensions([("SCHILY.xattr.user.test", &b"v1"[..])])
            .unwrap();
        b.append_data(&mut h, "d/suid", &b"abc"[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mtime(1_111_111_111);
        h.set_size(0);
        b.append_link(&mut h, "d/sym", "/nowhere").unwrap();
        let plain = b.into_inner().unwrap();
        let want = format!("sha256:{}", hex::encode(Sha256::digest(&plain)));

        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            io::Write::write_all(&mut e, &plain).unwrap();
            e.finish().unwrap()
        };
        let zs = zstd::encode_all(&plain[..], 3).unwrap();
        for (label, bytes) in [("plain", plain.clone()), ("gzip", gz), ("zstd", zs)] {
            let blob = tmp.path().join(format!("{label}.blob"));
            std::fs::write(&blob, &bytes).unwrap();
            let root = tmp.path().join(label);
            std::fs::create_dir(&root).unwrap();
            let report = unpack_blob(&blob, &root, &want).unwrap();
            assert!(report.skipped.is_empty(), "{label}: {report:?}");
            let m = std::fs::metadata(root.join("d/suid")).unwrap();
            assert_eq!(m.permissions().mode() & 0o7777, 0o4755, "{label}");
            assert_eq!(m.mtime(), 1_234_567_890, "{label}");
            assert_eq!(m.uid(), uid, "{label}");
            let d = std::fs::metadata(root.join("d")).unwrap();
            assert_eq!(d.permissions().mode() & 0o7777, 0o750, "{label}");
            assert_eq!(
                d.mtime(),
                1_000_000_000,
                "{label}: dir mtime set after its entries"
            );
            let l = std::fs::symlink_metadata(root.join("d/sym")).unwrap();
            assert!(l.file_type().is_symlink());
            assert_eq!(l.mtime(), 1_111_111_111);
            assert_eq!(
                std::fs::read_link(root.join("d/sym")).unwrap(),
                Path::new("/nowhere")
            );
            // user.* xattrs need a filesystem that supports them (tmpfs may not).
            if let Some(v) = get_xattr(&root.join("d/suid"), "user.test") {
                assert_eq!(v, b"v1");
            }
            let err = unpack_blob(&blob, &tmp.path().join(format!("{label}2")), &want);
            assert!(err.is_err(), "missing root must fail");
            std::fs::create_dir(tmp.path().join(format!("{label}3"))).unwrap();
            let wrong = format!("sha256:{}", "0".repeat(64));
            match unpack_blob(&blob, &tmp.path().join(format!("{label}3")), &wrong) {
                Err(UnpackError::DiffIdMismatch { actual, .. }) => assert_eq!(actual, want),
                other => panic!("{label}: {other:?}"),
            }
        }
    }

    fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
        let p = cstring(path.as_os_str().as_encoded_bytes()).unwrap();
        let n = cstring(name.as_bytes()).unwrap();
        let mut buf = vec![0u8; 256];
        // SAFETY: valid strings and buffer.
        let r =
            unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if r < 0 {
            return None;
        }
        buf.truncate(r as usize);
        Some(buf)
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts() {
        if !is_root() {
            eprintln!(
                "skipping whiteouts_become_overlay_whiteouts: needs root (mknod, trusted.* xattrs)"
            );
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let mut t = Tar::new();
        t.dir("etc");
        t.file("etc/.wh.gone", b"");
        t.dir("var");
        t.file("var/.wh..wh..opq", b"");
        t.file("var/new", b"n");
        t.file(".wh.toplevel", b"");
        let data = t.finish();
        let report = unpack(&data[..], tmp.path()).unwrap();
        assert!(report.skipped.is_empty(), "{report:?}");
        for p in ["etc/gone", "toplevel"] {
            let m = std::fs::symlink_metadata(tmp.path().join(p)).unwrap();
            use std::os::unix::fs::FileTypeExt;
            assert!(m.file_type().is_char_device(), "{p}");
            assert_eq!(m.rdev(), 0, "{p}");
        }
        assert_eq!(
            get_xattr(&tmp.path().join("var"), OPAQUE_XATTR).as_deref(),
            Some(&b"y"[..])
        );
        assert!(!tmp.path().join("var/.wh..wh..opq").exists());
        assert!(!tmp.path().join("etc/.wh.gone").exists());
        assert_eq!(std::fs::read(tmp.path().join("var/new")).unwrap(), b"n");
    }
}
