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
//! Limits against hostile layers (the publisher controls every byte; the
//! digests only prove that the bytes are the ones published):
//! - GNU long name and long link headers and PAX extended and global
//!   headers may hold at most [`MAX_SPECIAL_HEADER_SIZE`] (1 MiB, as Go's
//!   `archive/tar`): the `tar` crate would read such a header whole into
//!   memory, so the stream is checked by [`TarGuard`] before the crate sees
//!   a header, and one declaring more fails the unpack at once
//!   ([`TarLimitError`]); an entry may have at most
//!   [`MAX_SPARSE_EXTENSION_HEADERS`] GNU sparse extension headers;
//! - directory modification times (set once all entries exist) are kept in
//!   a tree of names, each stored once, not as one path per directory;
//! - skipped entries are counted per reason with a few example paths
//!   ([`Skipped`]) and logged once per reason at the end;
//! - directories are removed (an entry replacing one) with
//!   [`crate::tree::remove_tree_at`], whatever their depth.
//!
//! OCI whiteouts become overlayfs whiteouts: `.wh.NAME` a 0:0 character
//! device `NAME`, `.wh..wh..opq` the `trusted.overlay.opaque=y` xattr on its
//! directory. Ownership, permissions (including set-id bits), modification
//! times, PAX `SCHILY.xattr.*` extended attributes and hardlinks are kept.

use sha2::{Digest, Sha256};
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Largest body of a GNU long name or long link header and of a PAX
/// extended or global header (Go's `archive/tar` limit).
pub const MAX_SPECIAL_HEADER_SIZE: u64 = 1 << 20;
/// Most GNU sparse extension headers (512 bytes each) one entry may have.
pub const MAX_SPARSE_EXTENSION_HEADERS: u64 = 2048;
/// Distinct skip reasons kept in a report; further ones are counted under
/// [`OTHER_REASONS`].
pub const MAX_SKIP_REASONS: usize = 32;
/// Example paths kept per skip reason.
pub const MAX_SKIP_EXAMPLES: usize = 5;
/// Bytes of an example path kept (longer ones are cut, marked with `...`).
pub const MAX_EXAMPLE_LEN: usize = 256;
/// The reason under which skips beyond [`MAX_SKIP_REASONS`] are counted.
pub const OTHER_REASONS: &str = "other reasons";

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
    /// The tar stream breaks one of the limits on headers.
    #[error("refusing layer: {0}")]
    Limit(#[from] TarLimitError),
    /// The uncompressed layer does not have the digest the config lists.
    #[error("layer content digest mismatch: expected {expected}, got {actual}")]
    DiffIdMismatch {
        /// The config's diff id.
        expected: String,
        /// What the layer hashed to.
        actual: String,
    },
}

/// A limit of [`TarGuard`] that a layer's tar stream broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TarLimitError {
    /// A GNU long name/link or PAX header declares a body over the limit.
    #[error(
        "the {kind} header at offset {offset} declares {size} bytes, more than the {limit} allowed"
    )]
    SpecialHeaderTooLarge {
        /// `GNU long name`, `GNU long link name`, `PAX extended` or `PAX global`.
        kind: &'static str,
        /// Byte offset of the header in the uncompressed stream.
        offset: u64,
        /// The size the header declares.
        size: u64,
        /// [`MAX_SPECIAL_HEADER_SIZE`].
        limit: u64,
    },
    /// An entry has too many GNU sparse extension headers.
    #[error("the sparse entry at offset {offset} has more than {limit} extension headers")]
    TooManySparseHeaders {
        /// Byte offset of the entry's header.
        offset: u64,
        /// [`MAX_SPARSE_EXTENSION_HEADERS`].
        limit: u64,
    },
    /// The `tar` crate read an entry where the guard expected none (a bug).
    #[error("tar entry at offset {found} is not where the header checks expected it ({expected})")]
    OutOfStep {
        /// Where the guard saw the last entry header.
        expected: u64,
        /// Where the `tar` crate read it.
        found: u64,
    },
}

/// One reason entries were skipped for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SkipReason {
    /// Entries skipped for it.
    pub count: u64,
    /// The first few of their paths (at most [`MAX_SKIP_EXAMPLES`]).
    pub examples: Vec<String>,
}

/// Entries an unpack refused, counted per reason: bounded whatever the
/// number of entries.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Entries skipped in all.
    pub total: u64,
    /// Per reason (at most [`MAX_SKIP_REASONS`] plus [`OTHER_REASONS`]).
    pub reasons: BTreeMap<String, SkipReason>,
}

fn shorten(path: &[u8]) -> String {
    if path.len() <= MAX_EXAMPLE_LEN {
        return String::from_utf8_lossy(path).into_owned();
    }
    format!("{}...", String::from_utf8_lossy(&path[..MAX_EXAMPLE_LEN]))
}

impl Skipped {
    /// Counts one skipped entry.
    pub fn add(&mut self, path: &[u8], reason: String) {
        self.total += 1;
        let key = if self.reasons.contains_key(&reason) || self.reasons.len() < MAX_SKIP_REASONS {
            reason
        } else {
            OTHER_REASONS.to_string()
        };
        let r = self.reasons.entry(key).or_default();
        r.count += 1;
        if r.examples.len() < MAX_SKIP_EXAMPLES {
            r.examples.push(shorten(path));
        }
    }

    /// Whether nothing was skipped.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The example paths kept, with their reason.
    pub fn examples(&self) -> impl Iterator<Item = (&str, &str)> {
        self.reasons.iter().flat_map(|(reason, r)| {
            r.examples
                .iter()
                .map(move |p| (p.as_str(), reason.as_str()))
        })
    }

    /// One warning per reason.
    fn log(&self, root: &Path) {
        for (reason, r) in &self.reasons {
            tracing::warn!(
                root = %root.display(),
                reason = %reason,
                count = r.count,
                examples = ?r.examples,
                "layer entries skipped"
            );
        }
    }
}

/// What an unpack did besides creating entries.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnpackReport {
    /// Entries created or changed.
    pub entries: u64,
    /// Entries refused, counted per reason.
    pub skipped: Skipped,
    /// sha256 digest of the uncompressed tar stream.
    pub diff_id: String,
    /// Directories created only as parents of other entries: see
    /// [`inherit_implied`].
    pub implied: ImpliedDirs,
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

const BLOCK: u64 = 512;

enum Phase {
    /// Collecting the 512-byte header block that starts at `at`.
    Header { at: u64, filled: usize },
    /// Collecting a GNU sparse extension block (`count` read so far) of
    /// the entry whose header is at `entry`; `body` bytes follow them.
    SparseExt {
        entry: u64,
        filled: usize,
        count: u64,
        body: u64,
    },
    /// `left` bytes of an entry's data and padding pass through.
    Body { left: u64 },
    /// After the end of the archive, or a header the `tar` crate refuses
    /// (it stops there): everything passes through.
    Done,
    /// A limit was broken: every read fails.
    Failed(TarLimitError),
}

/// A reader that follows the block structure of a tar stream the way the
/// `tar` crate reads it, and fails the read that completes a header
/// breaking a limit ([`MAX_SPECIAL_HEADER_SIZE`],
/// [`MAX_SPARSE_EXTENSION_HEADERS`]) before the crate can act on it. It
/// mirrors what moves the crate's position: header sizes (octal or
/// base-256), a PAX `size` record overriding the next entry's size, and
/// sparse extension headers.
pub struct TarGuard<R> {
    inner: R,
    pos: u64,
    phase: Phase,
    block: Box<[u8; 512]>,
    /// Body of the pending PAX extended header, collected while `Body`,
    /// and its declared size.
    pax: Option<(Vec<u8>, usize)>,
    /// The pending PAX header's `size`, for the next entry.
    pax_size: Option<u64>,
    /// Whether the entry being read has a PAX extended header already.
    pax_seen: bool,
    /// Offset of the last entry header (not an extension header).
    last_entry: Rc<Cell<u64>>,
}

fn special_kind(t: u8) -> Option<&'static str> {
    match t {
        b'L' => Some("GNU long name"),
        b'K' => Some("GNU long link name"),
        b'x' => Some("PAX extended"),
        b'g' => Some("PAX global"),
        _ => None,
    }
}

/// The PAX `size` record, read exactly as the `tar` crate reads it.
fn pax_size(body: &[u8]) -> Option<u64> {
    for ext in tar::PaxExtensions::new(body) {
        let ext = ext.ok()?;
        if ext.key() != Ok("size") {
            continue;
        }
        return ext.value().ok()?.parse::<u64>().ok();
    }
    None
}

fn round_up(size: u64) -> Option<u64> {
    size.checked_add(BLOCK - 1).map(|s| s & !(BLOCK - 1))
}

impl<R: Read> TarGuard<R> {
    /// Wraps the uncompressed tar stream `inner`.
    pub fn new(inner: R) -> Self {
        TarGuard {
            inner,
            pos: 0,
            phase: Phase::Header { at: 0, filled: 0 },
            block: Box::new([0; 512]),
            pax: None,
            pax_size: None,
            pax_seen: false,
            last_entry: Rc::new(Cell::new(0)),
        }
    }

    /// The wrapped reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Offset of the last entry header seen (shared, for checking that the
    /// guard and the `tar` crate are in step).
    fn last_entry(&self) -> Rc<Cell<u64>> {
        self.last_entry.clone()
    }

    /// Takes a complete header block at `at` and picks the next phase.
    fn header(&mut self, at: u64) -> Result<Phase, TarLimitError> {
        let b = &*self.block;
        if b.iter().all(|&x| x == 0) {
            return Ok(Phase::Done);
        }
        let h = tar::Header::from_byte_slice(b);
        let sum: u32 = b[..148]
            .iter()
            .chain(&b[156..])
            .map(|&x| u32::from(x))
            .sum::<u32>()
            + 8 * 32;
        if h.cksum().ok() != Some(sum) {
            return Ok(Phase::Done);
        }
        let t = b[156];
        let Ok(mut size) = h.entry_size() else {
            return Ok(Phase::Done);
        };
        if let Some(kind) = special_kind(t) {
            if size > MAX_SPECIAL_HEADER_SIZE {
                return Err(TarLimitError::SpecialHeaderTooLarge {
                    kind,
                    offset: at,
                    size,
                    limit: MAX_SPECIAL_HEADER_SIZE,
                });
            }
        } else if let Some(s) = self.pax_size {
            size = s;
        }
        let recognized = h.as_gnu().is_some() || h.as_ustar().is_some();
        let Some(padded) = round_up(size) else {
            return Ok(Phase::Done);
        };
        if recognized && matches!(t, b'L' | b'K' | b'x') {
            // The crate reads these and goes on to the entry they describe.
            if t == b'x' {
                if self.pax_seen {
                    return Ok(Phase::Done);
                }
                self.pax_seen = true;
                self.pax = Some((Vec::with_capacity(size as usize), size as usize));
            }
            return Ok(Phase::Body { left: padded });
        }
        // An entry: the pending extensions were its own.
        self.last_entry.set(at);
        self.pax_size = None;
        self.pax_seen = false;
        if t == b'S' {
            let Some(gnu) = h.as_gnu() else {
                return Ok(Phase::Done);
            };
            if gnu.is_extended() {
                return Ok(Phase::SparseExt {
                    entry: at,
                    filled: 0,
                    count: 0,
                    body: padded,
                });
            }
        }
        Ok(Phase::Body { left: padded })
    }

    /// Follows `n` bytes just read into `buf[..n]`; an error fails the read.
    fn follow(&mut self, buf: &[u8]) -> Result<(), TarLimitError> {
        let mut i = 0;
        while i < buf.len() {
            match &mut self.phase {
                Phase::Done => return Ok(()),
                Phase::Failed(e) => return Err(e.clone()),
                Phase::Body { left } => {
                    let take = (*left).min((buf.len() - i) as u64) as usize;
                    *left -= take as u64;
                    if let Some((p, size)) = self.pax.as_mut() {
                        // Only the declared size is the body (not padding).
                        let want = *size - p.len();
                        p.extend_from_slice(&buf[i..i + take.min(want)]);
                    }
                    i += take;
                    self.pos += take as u64;
                }
                Phase::Header { at, filled } => {
                    let take = (512 - *filled).min(buf.len() - i);
                    self.block[*filled..*filled + take].copy_from_slice(&buf[i..i + take]);
                    *filled += take;
                    let (at, complete) = (*at, *filled == 512);
                    i += take;
                    self.pos += take as u64;
                    if complete {
                        self.phase = match self.header(at) {
                            Ok(p) => p,
                            Err(e) => {
                                self.phase = Phase::Failed(e.clone());
                                return Err(e);
                            }
                        };
                    }
                }
                Phase::SparseExt {
                    entry,
                    filled,
                    count,
                    body,
                } => {
                    let take = (512 - *filled).min(buf.len() - i);
                    self.block[*filled..*filled + take].copy_from_slice(&buf[i..i + take]);
                    *filled += take;
                    i += take;
                    self.pos += take as u64;
                    if *filled == 512 {
                        *count += 1;
                        *filled = 0;
                        if *count > MAX_SPARSE_EXTENSION_HEADERS {
                            let e = TarLimitError::TooManySparseHeaders {
                                offset: *entry,
                                limit: MAX_SPARSE_EXTENSION_HEADERS,
                            };
                            self.phase = Phase::Failed(e.clone());
                            return Err(e);
                        }
                        // Byte 504 of an extension block: another follows.
                        if self.block[504] != 1 {
                            self.phase = Phase::Body { left: *body };
                        }
                    }
                }
            }
            // A body of size 0 ends at once.
            if let Phase::Body { left: 0 } = self.phase {
                if let Some((p, _)) = self.pax.take() {
                    self.pax_size = pax_size(&p);
                }
                self.phase = Phase::Header {
                    at: self.pos,
                    filled: 0,
                };
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Phase::Failed(e) = &self.phase {
            return Err(io::Error::new(io::ErrorKind::InvalidData, e.clone()));
        }
        let n = self.inner.read(buf)?;
        self.follow(&buf[..n])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
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
    open_or_create_dir(parent, name, create).map(|(fd, _)| fd)
}

/// [`open_child_dir`], also saying whether this call created the directory.
fn open_or_create_dir(
    parent: BorrowedFd<'_>,
    name: &[u8],
    create: bool,
) -> io::Result<(OwnedFd, bool)> {
    let c = cstring(name)?;
    let mut created = false;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    for attempt in 0..2 {
        // SAFETY: valid dir fd and NUL-terminated name.
        let fd = unsafe { libc::openat(parent.as_raw_fd(), c.as_ptr(), flags) };
        if fd >= 0 {
            // SAFETY: fd was just returned by openat.
            return Ok((unsafe { OwnedFd::from_raw_fd(fd) }, created));
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
                } else {
                    created = true;
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

/// Opens (creating what is missing) the directory `comps` under root,
/// recording the directories it had to create in `implied`.
fn walk_creating(
    root: &OwnedFd,
    comps: &[&[u8]],
    implied: &mut ImpliedDirs,
) -> io::Result<OwnedFd> {
    let mut dir = root.try_clone()?;
    for (i, c) in comps.iter().enumerate() {
        let (next, created) = open_or_create_dir(dir.as_fd(), c, true)?;
        if created {
            implied.mark(&comps[..=i], true);
        }
        dir = next;
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
        // Any depth, with few descriptors, never following a symlink.
        crate::tree::remove_tree_at(parent, name)?;
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

/// Modification times of directories, set once every entry exists (their
/// contents change them): a tree of names where each name is stored once,
/// so memory grows with the directories, not with their path lengths.
#[derive(Default)]
struct DirTimes {
    /// Per node (0 is the layer root): its time, if a tar entry gave one.
    times: Vec<Option<u64>>,
    /// (parent node as 4 little-endian bytes, then the name) to node.
    children: HashMap<Box<[u8]>, u32>,
    key: Vec<u8>,
}

impl DirTimes {
    fn set(&mut self, comps: &[&[u8]], mtime: u64) {
        if self.times.is_empty() {
            self.times.push(None);
        }
        let mut node = 0u32;
        for c in comps {
            self.key.clear();
            self.key.extend_from_slice(&node.to_le_bytes());
            self.key.extend_from_slice(c);
            node = match self.children.get(self.key.as_slice()) {
                Some(&n) => n,
                None => {
                    let n = self.times.len() as u32;
                    self.times.push(None);
                    self.children.insert(self.key.as_slice().into(), n);
                    n
                }
            };
        }
        self.times[node as usize] = Some(mtime);
    }

    /// Sets the times, walking the tree depth first with one directory
    /// open at a time (up through `..`, checked to be the directory left).
    fn apply(self, root: &OwnedFd) {
        if self.times.is_empty() {
            return;
        }
        let n = self.times.len();
        let mut kids: Vec<Vec<(&[u8], u32)>> = vec![Vec::new(); n];
        for (k, &child) in &self.children {
            let parent = u32::from_le_bytes([k[0], k[1], k[2], k[3]]);
            kids[parent as usize].push((&k[4..], child));
        }
        // Whether a node or anything below it has a time (children are
        // always numbered after their parents).
        let mut needed: Vec<bool> = self.times.iter().map(Option::is_some).collect();
        for parent in (0..n).rev() {
            if kids[parent].iter().any(|&(_, c)| needed[c as usize]) {
                needed[parent] = true;
            }
        }
        let id = |fd: &OwnedFd| -> io::Result<(u64, u64)> {
            // SAFETY: zeroed stat is a valid out buffer; fd is open.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
            Ok((st.st_dev, st.st_ino))
        };
        let Ok(mut cur) = root.try_clone() else {
            return;
        };
        let Ok(root_id) = id(&cur) else { return };
        // (node, next child to visit, its directory's identity)
        let mut stack = vec![(0u32, 0usize, root_id)];
        while let Some(top) = stack.last_mut() {
            let (node, next) = (top.0 as usize, top.1);
            if let Some(&(name, child)) = kids[node].get(next) {
                top.1 += 1;
                if !needed[child as usize] {
                    continue;
                }
                match open_child_dir(cur.as_fd(), name, false) {
                    Ok(fd) => match id(&fd) {
                        Ok(cid) => {
                            cur = fd;
                            stack.push((child, 0, cid));
                        }
                        Err(e) => tracing::debug!(error = %e, "cannot stat a directory"),
                    },
                    Err(e) => {
                        tracing::debug!(error = %e, "directory vanished before its time was set")
                    }
                }
                continue;
            }
            if let Some(m) = self.times[node] {
                let ts = times(m);
                // SAFETY: cur is an open directory.
                if let Err(e) = cvt(unsafe { libc::futimens(cur.as_raw_fd(), ts.as_ptr()) }) {
                    tracing::debug!(error = %e, "cannot set directory time");
                }
            }
            stack.pop();
            let Some(&(_, _, want)) = stack.last() else {
                break;
            };
            match open_child_dir(cur.as_fd(), b"..", false) {
                Ok(up) if id(&up).ok() == Some(want) => cur = up,
                _ => {
                    tracing::warn!(
                        "layer directory tree changed while directory times were set; stopped"
                    );
                    return;
                }
            }
        }
    }
}

/// Directories an unpack created only because a deeper entry needed them
/// (a layer holding `a/b/c` but no `a/` or `a/b/` entries): made 0755
/// during the unpack, they take their attributes from the lower layers
/// afterwards ([`inherit_implied`]). Kept as a tree of names like
/// [`DirTimes`], so memory grows with the directories, not their paths.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImpliedDirs {
    /// Per node (0 is the layer root): whether it is implied.
    implied: Vec<bool>,
    /// (parent node as 4 little-endian bytes, then the name) to node.
    children: HashMap<Box<[u8]>, u32>,
    /// Implied nodes.
    count: u64,
}

impl ImpliedDirs {
    /// Directories still implied (not given by an entry of their own).
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether no directory is implied.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn node(&mut self, comps: &[&[u8]], create: bool) -> Option<u32> {
        if self.implied.is_empty() {
            if !create {
                return None;
            }
            self.implied.push(false);
        }
        let mut node = 0u32;
        let mut key = Vec::new();
        for c in comps {
            key.clear();
            key.extend_from_slice(&node.to_le_bytes());
            key.extend_from_slice(c);
            node = match self.children.get(key.as_slice()) {
                Some(&n) => n,
                None if create => {
                    let n = self.implied.len() as u32;
                    self.implied.push(false);
                    self.children.insert(key.as_slice().into(), n);
                    n
                }
                None => return None,
            };
        }
        Some(node)
    }

    /// Marks `comps` implied, or (an entry of its own came) not.
    fn mark(&mut self, comps: &[&[u8]], implied: bool) {
        if comps.is_empty() {
            return;
        }
        if let Some(n) = self.node(comps, implied) {
            let slot = &mut self.implied[n as usize];
            match (*slot, implied) {
                (false, true) => self.count += 1,
                (true, false) => self.count -= 1,
                _ => {}
            }
            *slot = implied;
        }
    }
}

fn fstat_fd(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    // SAFETY: zeroed stat is a valid out buffer; fd is open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

fn is_opaque(fd: BorrowedFd<'_>) -> bool {
    let Ok(name) = cstring(OPAQUE_XATTR.as_bytes()) else {
        return false;
    };
    let mut v = [0u8; 4];
    // SAFETY: valid fd, name and buffer of the given length.
    let n = unsafe { libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), v.as_mut_ptr().cast(), 4) };
    n == 1 && v[0] == b'y'
}

/// One lower layer's view of the path being visited.
struct LowerView {
    /// The deepest directory of the path that exists in this layer.
    fd: OwnedFd,
    /// Its depth (0: the layer's root).
    depth: usize,
    /// Per level 0..=depth: whether that directory is opaque.
    opaque: Vec<bool>,
    opaque_count: usize,
    /// The component below `depth` exists but is not a directory (a file,
    /// a symlink, a whiteout): it hides the layers further down.
    replaced: bool,
}

/// Gives every implied directory of the layer unpacked at `root` the mode,
/// owner and times of the same directory in the nearest lower layer that
/// shows it (`lowers`: the layers' roots, nearest first), as containerd
/// does; a directory that no lower layer shows (or that one replaces with
/// a non-directory, or hides below an opaque directory) keeps 0755
/// root:root. Walks the implied tree depth first with one open directory
/// per layer, whatever the depth. Returns how many directories took
/// attributes from a lower layer.
pub fn inherit_implied(root: &Path, implied: &ImpliedDirs, lowers: &[PathBuf]) -> io::Result<u64> {
    if implied.is_empty() {
        return Ok(0);
    }
    let n = implied.implied.len();
    let mut kids: Vec<Vec<(&[u8], u32)>> = vec![Vec::new(); n];
    for (k, &child) in &implied.children {
        let parent = u32::from_le_bytes([k[0], k[1], k[2], k[3]]);
        kids[parent as usize].push((&k[4..], child));
    }
    // Children are always numbered after their parents.
    let mut needed = implied.implied.clone();
    for parent in (0..n).rev() {
        if kids[parent].iter().any(|&(_, c)| needed[c as usize]) {
            needed[parent] = true;
        }
    }
    let mut views = Vec::with_capacity(lowers.len());
    for l in lowers {
        let fd = open_dir(l)?;
        let opaque = is_opaque(fd.as_fd());
        views.push(LowerView {
            fd,
            depth: 0,
            opaque: vec![opaque],
            opaque_count: opaque as usize,
            replaced: false,
        });
    }
    let id = |fd: &OwnedFd| fstat_fd(fd.as_fd()).map(|st| (st.st_dev, st.st_ino));
    let mut cur = open_dir(root)?;
    let mut inherited = 0;
    // (node, next child to visit, its directory's identity)
    let mut stack = vec![(0u32, 0usize, id(&cur)?)];
    while !stack.is_empty() {
        let depth = stack.len() - 1;
        let top = &mut stack[depth];
        let (node, next) = (top.0 as usize, top.1);
        if let Some(&(name, child)) = kids[node].get(next) {
            top.1 += 1;
            if !needed[child as usize] {
                continue;
            }
            // A directory replaced by a later entry of this layer is gone.
            let Ok(fd) = open_child_dir(cur.as_fd(), name, false) else {
                continue;
            };
            let cid = id(&fd)?;
            for v in views.iter_mut().filter(|v| v.depth == depth) {
                match open_child_dir(v.fd.as_fd(), name, false) {
                    Ok(down) => {
                        let opaque = is_opaque(down.as_fd());
                        v.fd = down;
                        v.depth += 1;
                        v.opaque.push(opaque);
                        v.opaque_count += opaque as usize;
                        v.replaced = false;
                    }
                    Err(e) if e.kind() == io::ErrorKind::InvalidInput => v.replaced = true,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => v.replaced = false,
                    Err(e) => return Err(e),
                }
            }
            cur = fd;
            stack.push((child, 0, cid));
            if implied.implied[child as usize] {
                let from = views
                    .iter()
                    .map_while(|v| {
                        if v.depth == depth + 1 {
                            Some(Some(v))
                        } else if v.replaced || v.opaque_count > 0 {
                            // Hidden from the layers below: stop there.
                            None
                        } else {
                            Some(None)
                        }
                    })
                    .flatten()
                    .next();
                match from {
                    Some(v) => {
                        let st = fstat_fd(v.fd.as_fd())?;
                        let raw = cur.as_raw_fd();
                        // SAFETY: raw is an open directory for all calls below.
                        ignore_eperm_unless_root(cvt(unsafe {
                            libc::fchown(raw, st.st_uid, st.st_gid)
                        }))?;
                        cvt(unsafe { libc::fchmod(raw, st.st_mode & 0o7777) })?;
                        let ts = [
                            libc::timespec {
                                tv_sec: st.st_atime,
                                tv_nsec: st.st_atime_nsec,
                            },
                            libc::timespec {
                                tv_sec: st.st_mtime,
                                tv_nsec: st.st_mtime_nsec,
                            },
                        ];
                        cvt(unsafe { libc::futimens(raw, ts.as_ptr()) })?;
                        inherited += 1;
                    }
                    // Explicitly, whatever the umask was.
                    // SAFETY: cur is an open directory.
                    None => {
                        cvt(unsafe { libc::fchmod(cur.as_raw_fd(), 0o755) })?;
                    }
                }
            }
            continue;
        }
        stack.pop();
        let Some(&(_, _, want)) = stack.last() else {
            break;
        };
        for v in views.iter_mut() {
            if v.depth == depth {
                v.fd = open_child_dir(v.fd.as_fd(), b"..", false)?;
                v.depth -= 1;
                if v.opaque.pop() == Some(true) {
                    v.opaque_count -= 1;
                }
                v.replaced = false;
            } else if v.depth + 1 == depth {
                // It went missing just below the level we return to.
                v.replaced = false;
            }
        }
        match open_child_dir(cur.as_fd(), b"..", false) {
            Ok(up) if id(&up).ok() == Some(want) => cur = up,
            _ => {
                return Err(io::Error::other(
                    "layer directory tree changed while implied directories were set",
                ))
            }
        }
    }
    Ok(inherited)
}

struct Unpacker {
    root: OwnedFd,
    report: UnpackReport,
    dir_times: DirTimes,
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
                    self.dir_times.set(&[], m);
                }
                return Ok(Outcome::Done);
            }
            return Ok(Outcome::Skip("a non-directory entry for the root".into()));
        };
        let parent = match walk_creating(&self.root, parents, &mut self.report.implied) {
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
                // Its own entry: no longer an implied directory.
                self.report.implied.mark(&comps, false);
                if let Some(m) = mtime {
                    self.dir_times.set(&comps, m);
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
}

/// Unpacks the uncompressed tar stream `reader` into the existing directory
/// `root`, applying the rules in the module documentation. The returned
/// report carries the sha256 of the whole stream (its diff id).
pub fn unpack(reader: impl Read, root: &Path) -> Result<UnpackReport, UnpackError> {
    // A broken limit surfaces as an io::Error of the guard: give it its own variant.
    let limit = |e: &io::Error| {
        e.get_ref()
            .and_then(|i| i.downcast_ref::<TarLimitError>())
            .cloned()
    };
    let io_err = |source: io::Error| match limit(&source) {
        Some(l) => UnpackError::Limit(l),
        None => UnpackError::Io {
            root: root.to_path_buf(),
            source,
        },
    };
    let root_fd = open_dir(root).map_err(io_err)?;
    let mut u = Unpacker {
        root: root_fd,
        report: UnpackReport::default(),
        dir_times: DirTimes::default(),
    };
    let guard = TarGuard::new(HashingReader::new(reader));
    let last_entry = guard.last_entry();
    let mut archive = tar::Archive::new(guard);
    {
        let entries = archive.entries().map_err(io_err)?;
        for entry in entries {
            let mut entry = entry.map_err(io_err)?;
            let found = entry.raw_header_position();
            if found != last_entry.get() {
                debug_assert_eq!(found, last_entry.get(), "tar guard out of step");
                return Err(UnpackError::Limit(TarLimitError::OutOfStep {
                    expected: last_entry.get(),
                    found,
                }));
            }
            match u.entry(&mut entry) {
                Ok(Outcome::Done) => u.report.entries += 1,
                // Counted, logged once per reason at the end.
                Ok(Outcome::Skip(why)) => u.report.skipped.add(&entry.path_bytes(), why),
                Err(source) => {
                    if let Some(l) = limit(&source) {
                        return Err(UnpackError::Limit(l));
                    }
                    return Err(UnpackError::Entry {
                        entry: shorten(&entry.path_bytes()),
                        source,
                    });
                }
            }
        }
    }
    u.dir_times.apply(&u.root);
    u.report.skipped.log(root);
    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(io_err)?;
    u.report.diff_id = rest.into_inner().digest();
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
    use std::rc::Rc;

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
        let skipped: Vec<&str> = report.skipped.examples().map(|(p, _)| p).collect();
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

    /// A source of `len` bytes: `head`, then zeros; counts what was read.
    struct Endless {
        head: Vec<u8>,
        len: u64,
        read: Rc<Cell<u64>>,
    }

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let pos = self.read.get();
            if pos >= self.len {
                return Ok(0);
            }
            let n = (buf.len() as u64).min(self.len - pos) as usize;
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = self.head.get(pos as usize + i).copied().unwrap_or(0);
            }
            self.read.set(pos + n as u64);
            Ok(n)
        }
    }

    fn special_header(kind: u8, size: u64) -> Vec<u8> {
        let mut h = if kind == b'L' || kind == b'K' {
            tar::Header::new_gnu()
        } else {
            tar::Header::new_ustar()
        };
        h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_mode(0o644);
        h.set_size(size);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    #[test]
    fn special_headers_over_the_limit_fail_fast() {
        const HUGE: u64 = 8 << 30;
        for kind in [b'L', b'K', b'x', b'g'] {
            let tmp = tempfile::tempdir().unwrap();
            let read = Rc::new(Cell::new(0));
            // 8 GiB of "name" would follow; the unpack must not read it.
            let src = Endless {
                head: special_header(kind, HUGE),
                len: HUGE + 512,
                read: read.clone(),
            };
            let err = unpack(src, tmp.path()).unwrap_err();
            match &err {
                UnpackError::Limit(TarLimitError::SpecialHeaderTooLarge {
                    offset,
                    size,
                    limit,
                    ..
                }) => {
                    assert_eq!((*offset, *size, *limit), (0, HUGE, MAX_SPECIAL_HEADER_SIZE));
                }
                other => panic!("{}: {other:?}", kind as char),
            }
            assert!(
                err.to_string().contains("more than the 1048576 allowed"),
                "{err}"
            );
            assert!(
                read.get() <= 64 << 10,
                "{}: read {} bytes before failing",
                kind as char,
                read.get()
            );
        }
        // Through the blob path: a compressed layer of a few KiB whose
        // first entry is a long name claiming 8 GiB (64 MiB of it present).
        let tmp = tempfile::tempdir().unwrap();
        let mut plain = special_header(b'L', HUGE);
        plain.resize(64 << 20, 0);
        let zs = zstd::encode_all(&plain[..], 3).unwrap();
        assert!(zs.len() < 64 << 10);
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            io::Write::write_all(&mut e, &plain).unwrap();
            e.finish().unwrap()
        };
        for (label, bytes) in [("zstd", zs), ("gzip", gz)] {
            let blob = tmp.path().join(label);
            std::fs::write(&blob, bytes).unwrap();
            let root = tmp.path().join(format!("{label}-root"));
            std::fs::create_dir(&root).unwrap();
            let err = unpack_blob(&blob, &root, "sha256:x").unwrap_err();
            assert!(
                matches!(
                    err,
                    UnpackError::Limit(TarLimitError::SpecialHeaderTooLarge {
                        kind: "GNU long name",
                        ..
                    })
                ),
                "{label}: {err:?}"
            );
        }
    }

    fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
        // "<len> key=value\n" where len counts itself.
        let rest = key.len() + value.len() + 3;
        let mut len = rest + 1;
        while len.to_string().len() + rest != len {
            len += 1;
        }
        let mut r = format!("{len} {key}=").into_bytes();
        r.extend_from_slice(value);
        r.push(b'\n');
        r
    }

    #[test]
    fn headers_at_the_limit_and_pax_sizes_stay_in_step() {
        let tmp = tempfile::tempdir().unwrap();
        let mut t = Tar::new();
        // A PAX header of exactly the limit (a big comment) is fine.
        // 7 digits, " comment=", the value and "\n".
        let body = pax_record(
            "comment",
            &vec![b'c'; MAX_SPECIAL_HEADER_SIZE as usize - 17],
        );
        assert_eq!(body.len() as u64, MAX_SPECIAL_HEADER_SIZE);
        t.raw(b"pax", tar::EntryType::XHeader, b"", 0o644, &body);
        t.file("big-pax-file", b"one");
        // A PAX size record overrides the header's size field (0 here).
        let size_rec = pax_record("size", b"5");
        t.raw(b"pax", tar::EntryType::XHeader, b"", 0o644, &size_rec);
        {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..9].copy_from_slice(b"pax-sized");
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(0);
            h.set_cksum();
            t.0.extend_from_slice(h.as_bytes());
            t.0.extend_from_slice(b"hello");
            t.0.extend(std::iter::repeat_n(0u8, 512 - 5));
        }
        // A long name through a GNU `L` header, and a global PAX header.
        let long = format!("{}/{}/file", "n".repeat(200), "m".repeat(200));
        t.raw(
            b"././@LongLink",
            tar::EntryType::GNULongName,
            b"",
            0o644,
            format!("{long}\0").as_bytes(),
        );
        t.file("ignored-short-name", b"long");
        t.raw(
            b"global",
            tar::EntryType::XGlobalHeader,
            b"",
            0o644,
            &pax_record("comment", b"g"),
        );
        // A GNU sparse entry with one extension header (skipped as an
        // unsupported type), then a file that must still be found.
        {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..6].copy_from_slice(b"sparse");
            h.set_entry_type(tar::EntryType::GNUSparse);
            h.set_mode(0o644);
            h.set_size(1024);
            let octal = |f: &mut [u8], v: u64| {
                let s = format!("{:0w$o}", v, w = f.len() - 1);
                f[..s.len()].copy_from_slice(s.as_bytes());
            };
            {
                let g = h.as_gnu_mut().unwrap();
                octal(&mut g.sparse[0].offset, 0);
                octal(&mut g.sparse[0].numbytes, 512);
                g.isextended[0] = 1;
                octal(&mut g.realsize, 2048);
            }
            h.set_cksum();
            t.0.extend_from_slice(h.as_bytes());
            let mut ext = [0u8; 512];
            octal(&mut ext[0..12], 1536);
            octal(&mut ext[12..24], 512);
            t.0.extend_from_slice(&ext);
            t.0.extend(std::iter::repeat_n(7u8, 1024));
        }
        t.file("after-sparse", b"after");
        let data = t.finish();
        let report = unpack(&data[..], tmp.path()).unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("big-pax-file")).unwrap(),
            b"one"
        );
        assert_eq!(
            std::fs::read(tmp.path().join("pax-sized")).unwrap(),
            b"hello"
        );
        assert_eq!(std::fs::read(tmp.path().join(&long)).unwrap(), b"long");
        assert_eq!(
            std::fs::read(tmp.path().join("after-sparse")).unwrap(),
            b"after"
        );
        assert_eq!(report.skipped.total, 1, "{report:?}");
        assert!(report.skipped.examples().any(|(p, _)| p == "sparse"));

        // One byte more than the limit is refused.
        let mut t = Tar::new();
        let mut over = body.clone();
        over.push(b'\n');
        t.raw(b"pax", tar::EntryType::XHeader, b"", 0o644, &over);
        t.file("f", b"x");
        let tmp = tempfile::tempdir().unwrap();
        assert!(matches!(
            unpack(&t.finish()[..], tmp.path()),
            Err(UnpackError::Limit(TarLimitError::SpecialHeaderTooLarge { size, .. })) if size == MAX_SPECIAL_HEADER_SIZE + 1
        ));
    }

    #[test]
    fn endless_sparse_extension_headers_are_refused() {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..6].copy_from_slice(b"sparse");
        h.set_entry_type(tar::EntryType::GNUSparse);
        h.set_size(0);
        h.as_gnu_mut().unwrap().isextended[0] = 1;
        h.set_cksum();
        let mut head = h.as_bytes().to_vec();
        // Extension headers that all say "another follows", 1 GiB of them.
        let mut ext = [0u8; 512];
        ext[504] = 1;
        for _ in 0..(MAX_SPARSE_EXTENSION_HEADERS + 10) {
            head.extend_from_slice(&ext);
        }
        let read = Rc::new(Cell::new(0));
        let src = Endless {
            head,
            len: 1 << 30,
            read: read.clone(),
        };
        let tmp = tempfile::tempdir().unwrap();
        let err = unpack(src, tmp.path()).unwrap_err();
        assert!(
            matches!(
                err,
                UnpackError::Limit(TarLimitError::TooManySparseHeaders { offset: 0, .. })
            ),
            "{err:?}"
        );
        assert!(read.get() < 4 << 20, "read {}", read.get());
    }

    #[test]
    fn skipped_entries_are_counted_not_listed() {
        let mut t = Tar::new();
        for i in 0..2000 {
            t.raw(
                format!("dev{i}").as_bytes(),
                tar::EntryType::Char,
                b"",
                0o666,
                b"",
            );
        }
        for b in 0x80u8..0x80 + 40 {
            t.raw(
                format!("odd{b}").as_bytes(),
                tar::EntryType::new(b),
                b"",
                0o644,
                b"",
            );
        }
        let tmp = tempfile::tempdir().unwrap();
        let report = unpack(&t.finish()[..], tmp.path()).unwrap();
        assert_eq!(report.skipped.total, 2040);
        assert_eq!(report.skipped.reasons.len(), MAX_SKIP_REASONS + 1);
        let dev = &report.skipped.reasons["device nodes are not allowed in layers"];
        assert_eq!(dev.count, 2000);
        assert_eq!(dev.examples, ["dev0", "dev1", "dev2", "dev3", "dev4"]);
        assert_eq!(
            report.skipped.reasons[OTHER_REASONS].count,
            40 - (MAX_SKIP_REASONS as u64 - 1)
        );
        let mut s = Skipped::default();
        s.add(&vec![b'a'; 5000], "long".into());
        assert_eq!(s.reasons["long"].examples[0].len(), MAX_EXAMPLE_LEN + 3);
    }

    #[test]
    fn deep_layer_times_and_replacement() {
        const DEPTH: usize = 1500;
        let mut b = tar::Builder::new(Vec::new());
        let mut path = String::new();
        for i in 0..DEPTH {
            if i > 0 {
                path.push('/');
            }
            path.push('d');
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_mtime(1_000_000 + i as u64);
            h.set_size(0);
            b.append_data(&mut h, &path, &[][..]).unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(1);
        b.append_data(&mut h, format!("{path}/leaf"), &b"x"[..])
            .unwrap();
        let deep = b.into_inner().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let report = unpack(&deep[..], tmp.path()).unwrap();
        assert!(report.skipped.is_empty(), "{report:?}");
        assert_eq!(report.entries, DEPTH as u64 + 1);
        // Times reach the deepest directory and the top one.
        let root = open_dir(tmp.path()).unwrap();
        let comps: Vec<&[u8]> = vec![&b"d"[..]; DEPTH];
        let bottom = walk(&root, &comps, false).unwrap();
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::fstat(bottom.as_raw_fd(), &mut st) }, 0);
        assert_eq!(st.st_mtime as u64, 1_000_000 + DEPTH as u64 - 1);
        assert_eq!(
            std::fs::metadata(tmp.path().join("d")).unwrap().mtime(),
            1_000_000
        );
        // A later layer entry replacing the top directory removes the
        // whole deep tree.
        let mut t = Tar::new();
        t.file("d", b"now a file");
        unpack(&t.finish()[..], tmp.path()).unwrap();
        assert_eq!(std::fs::read(tmp.path().join("d")).unwrap(), b"now a file");
    }

    /// The committed fuzz seeds for these limits do what they are for.
    #[test]
    fn fuzz_seeds_for_the_limits() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/unpack");
        for (seed, kind) in [
            ("seed-longname-huge.tar", "GNU long name"),
            ("seed-pax-huge.tar.gz", "PAX extended"),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let r = decompress(File::open(dir.join(seed)).unwrap()).unwrap();
            match unpack(r, tmp.path()) {
                Err(UnpackError::Limit(TarLimitError::SpecialHeaderTooLarge {
                    kind: k,
                    size,
                    ..
                })) => assert_eq!((k, size), (kind, 8 << 30), "{seed}"),
                other => panic!("{seed}: {other:?}"),
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let r = decompress(File::open(dir.join("seed-deep.tar.zst")).unwrap()).unwrap();
        let report = unpack(r, tmp.path()).unwrap();
        assert_eq!(report.entries, 3);
        assert_eq!(std::fs::read(tmp.path().join("d")).unwrap(), b"top");
    }

    /// Directories a layer only implies take mode, owner and times from
    /// the nearest lower layer showing them; 0755 when none does.
    #[test]
    fn implied_directories_inherit_from_lower_layers() {
        use std::os::unix::fs::{chown, symlink};
        let root_user = is_root();
        let tmp = tempfile::tempdir().unwrap();
        let near = tmp.path().join("near");
        let bottom = tmp.path().join("bottom");
        let mkdir = |p: &Path, mode: u32, mtime: i64| {
            std::fs::create_dir_all(p).unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
            let t = filetime(mtime);
            let c = CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: valid path and times.
            assert_eq!(
                unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), t.as_ptr(), 0) },
                0
            );
        };
        fn filetime(s: i64) -> [libc::timespec; 2] {
            let t = libc::timespec {
                tv_sec: s as libc::time_t,
                tv_nsec: 0,
            };
            [t, t]
        }
        std::fs::create_dir_all(&near).unwrap();
        std::fs::create_dir_all(&bottom).unwrap();
        mkdir(&bottom.join("tmp"), 0o1777, 1_000);
        mkdir(&bottom.join("root"), 0o700, 1_001);
        mkdir(&near.join("a"), 0o750, 1_002);
        mkdir(&bottom.join("a"), 0o711, 1_003);
        mkdir(&bottom.join("c/sub"), 0o701, 1_004);
        std::fs::write(near.join("d"), b"replaced").unwrap();
        mkdir(&bottom.join("d"), 0o700, 1_005);
        symlink("/etc", near.join("s")).unwrap();
        mkdir(&bottom.join("s"), 0o700, 1_006);
        mkdir(&bottom.join("j"), 0o711, 1_007);
        mkdir(&bottom.join("m"), 0o711, 1_008);
        mkdir(&bottom.join("o"), 0o750, 1_009);
        if root_user {
            chown(bottom.join("o"), Some(1000), Some(1001)).unwrap();
            // An opaque directory in the nearer layer hides what is below.
            mkdir(&near.join("e"), 0o755, 1_010);
            let n = CString::new(OPAQUE_XATTR).unwrap();
            let p = CString::new(near.join("e").as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: valid strings.
            let r = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
            assert_eq!(r, 0, "{}", io::Error::last_os_error());
            mkdir(&bottom.join("e/f"), 0o700, 1_011);
        }
        let mut t = Tar::new();
        for f in [
            "tmp/x",
            "root/.profile",
            "a/b/file",
            "c/sub/file",
            "d/file",
            "s/file",
            "g/h/i/file",
            "m/n",
            "o/file",
            "e/f/file",
        ] {
            t.file(f, b"");
        }
        t.raw(b"j/", tar::EntryType::Directory, b"", 0o700, b"");
        t.file("j/k", b"");
        t.raw(b"m/", tar::EntryType::Directory, b"", 0o704, b"");
        let layer = tmp.path().join("layer");
        std::fs::create_dir(&layer).unwrap();
        let report = unpack(&t.finish()[..], &layer).unwrap();
        assert!(report.skipped.is_empty(), "{report:?}");
        let inherited =
            inherit_implied(&layer, &report.implied, &[near.clone(), bottom.clone()]).unwrap();
        // (directory, mode, mtime when taken from a lower layer, owner)
        type Want = (&'static str, u32, Option<i64>, (u32, u32));
        let mut cases: Vec<Want> = vec![
            ("tmp", 0o1777, Some(1_000), (0, 0)),
            ("root", 0o700, Some(1_001), (0, 0)),
            ("a", 0o750, Some(1_002), (0, 0)),
            ("a/b", 0o755, None, (0, 0)),
            ("c", 0o755, Some(0), (0, 0)), // its time is not set here
            ("c/sub", 0o701, Some(1_004), (0, 0)),
            ("d", 0o755, None, (0, 0)),
            ("s", 0o755, None, (0, 0)),
            ("g", 0o755, None, (0, 0)),
            ("g/h/i", 0o755, None, (0, 0)),
            ("j", 0o700, None, (0, 0)),
            ("m", 0o704, None, (0, 0)),
            ("o", 0o750, Some(1_009), (1000, 1001)),
        ];
        if root_user {
            cases.push(("e", 0o755, Some(1_010), (0, 0)));
            cases.push(("e/f", 0o755, None, (0, 0)));
        }
        for (dir, mode, mtime, owner) in &cases {
            let m = std::fs::symlink_metadata(layer.join(dir)).unwrap();
            assert!(m.is_dir(), "{dir}");
            assert_eq!(m.mode() & 0o7777, *mode, "{dir}: mode {:o}", m.mode());
            if let Some(t) = mtime.filter(|t| *t > 0) {
                assert_eq!(m.mtime(), t, "{dir}: mtime");
            }
            if root_user {
                assert_eq!((m.uid(), m.gid()), *owner, "{dir}: owner");
            }
        }
        // `c` exists (0755) in the bottom layer only: it inherits too.
        assert_eq!(
            inherited,
            cases.iter().filter(|c| c.2.is_some()).count() as u64,
            "{cases:?}"
        );
    }

    /// Inheriting over a deep implied tree keeps one directory open per
    /// layer and reaches the top and the bottom.
    #[test]
    fn deep_implied_tree_inherits() {
        const DEPTH: usize = 2000;
        let tmp = tempfile::tempdir().unwrap();
        let lower = tmp.path().join("lower");
        std::fs::create_dir_all(lower.join("d/d")).unwrap();
        std::fs::set_permissions(lower.join("d"), std::fs::Permissions::from_mode(0o711)).unwrap();
        std::fs::set_permissions(lower.join("d/d"), std::fs::Permissions::from_mode(0o750))
            .unwrap();
        let path = vec!["d"; DEPTH].join("/");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(1);
        b.append_data(&mut h, format!("{path}/leaf"), &b"x"[..])
            .unwrap();
        let layer = tmp.path().join("layer");
        std::fs::create_dir(&layer).unwrap();
        let report = unpack(&b.into_inner().unwrap()[..], &layer).unwrap();
        assert_eq!(report.implied.len(), DEPTH as u64);
        assert_eq!(
            inherit_implied(&layer, &report.implied, &[lower]).unwrap(),
            2
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&layer.join("d")), 0o711);
        assert_eq!(mode(&layer.join("d/d")), 0o750);
        assert_eq!(mode(&layer.join("d/d/d")), 0o755);
        let root = open_dir(&layer).unwrap();
        let comps: Vec<&[u8]> = vec![&b"d"[..]; DEPTH];
        let bottom = walk(&root, &comps, false).unwrap();
        let st = fstat_fd(bottom.as_fd()).unwrap();
        assert_eq!(st.st_mode & 0o7777, 0o755);
    }

    /// The fuzz seeds for long headers, implied directories and layer
    /// stacks do what they are for.
    #[test]
    fn fuzz_seeds_for_long_headers_and_implied_directories() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/unpack");
        let open = |seed: &str| decompress(File::open(dir.join(seed)).unwrap()).unwrap();
        let long_dir = vec!["l".repeat(100); 30].join("/");
        let tmp = tempfile::tempdir().unwrap();
        let report = unpack(open("seed-longname-ok.tar"), tmp.path()).unwrap();
        assert!(report.skipped.is_empty(), "{report:?}");
        let file = tmp.path().join(&long_dir).join("file");
        let link = tmp.path().join(&long_dir).join("hardlink");
        // Paths over PATH_MAX: walk them by descriptor.
        let root = open_dir(tmp.path()).unwrap();
        let comps: Vec<&[u8]> = long_dir.split('/').map(str::as_bytes).collect();
        let d = walk(&root, &comps, false).unwrap();
        let st = lstat_at(d.as_fd(), &cstring(b"hardlink").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(st.st_nlink, 2, "{} and {}", file.display(), link.display());
        assert_eq!(report.implied.len(), 30);

        let tmp = tempfile::tempdir().unwrap();
        let report = unpack(open("seed-pax-long.tar"), tmp.path()).unwrap();
        assert!(report.skipped.is_empty(), "{report:?}");
        let pdir = vec!["p".repeat(120); 20].join("/");
        let comps: Vec<&[u8]> = pdir.split('/').map(str::as_bytes).collect();
        let root = open_dir(tmp.path()).unwrap();
        let d = walk(&root, &comps, false).unwrap();
        let st = lstat_at(d.as_fd(), &cstring(b"file").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!((st.st_mode & 0o7777, st.st_size), (0o640, 4));
        let st = lstat_at(d.as_fd(), &cstring(b"sub").unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(st.st_mode & 0o7777, 0o700);
        let target = std::fs::read_link(tmp.path().join("pax-symlink")).unwrap();
        assert_eq!(target, Path::new("/").join(&pdir).join("file"));

        if is_root() {
            // Whiteout devices and opaque xattrs need root.
            let tmp = tempfile::tempdir().unwrap();
            let report = unpack(open("seed-deep-implied.tar.zst"), tmp.path()).unwrap();
            assert!(report.skipped.is_empty(), "{report:?}");
            assert_eq!(report.implied.len(), 4999, "one of 5000 has its own entry");
        }

        // The layer stack: 40 layers, bottom first, each inheriting.
        let data = std::fs::read(dir.join("seed-layers.bin")).unwrap();
        let mut rest = data.strip_prefix(b"CRIUSLAYERS").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let mut done: Vec<PathBuf> = Vec::new();
        while rest.len() >= 4 {
            let n = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
            let layer = &rest[4..4 + n];
            rest = &rest[4 + n..];
            let d = tmp.path().join(done.len().to_string());
            std::fs::create_dir(&d).unwrap();
            let report = unpack(layer, &d).unwrap();
            let lowers: Vec<PathBuf> = done.iter().rev().cloned().collect();
            inherit_implied(&d, &report.implied, &lowers).unwrap();
            done.push(d);
        }
        assert_eq!(done.len(), 40);
        let mode = |p: PathBuf| std::fs::symlink_metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(done[1].join("tmp")), 0o1777);
        assert_eq!(mode(done[39].join("tmp")), 0o1777);
        assert_eq!(mode(done[3].join("root")), 0o700);
        // Layer 10 replaced /root with a file: layer 11's /root is 0755.
        assert_eq!(mode(done[11].join("root")), 0o755);
        // A symlink below is no directory to inherit from.
        assert_eq!(mode(done[7].join("link")), 0o755);
    }
}
