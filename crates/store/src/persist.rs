//! Crash-safe on-disk persistence of records.
//!
//! # File format
//!
//! Every record file is a JSON envelope:
//!
//! ```json
//! {"format":1,"kind":"sandbox","checksum":"<sha256 hex>","data":{...}}
//! ```
//!
//! `checksum` is the SHA-256 of the exact bytes of the `data` value as they
//! appear in the file, so any truncation or bit flip is detected on load. A
//! `format` other than [`FORMAT_VERSION`] is reported as unsupported rather
//! than misread.
//!
//! # Atomic writes
//!
//! [`write_atomic`] writes a temporary file (name starting with
//! [`TEMP_PREFIX`]) in the target's directory, fsyncs it, renames it over the
//! target and fsyncs the directory. A crash at any point leaves either the
//! complete old file or the complete new one, plus possibly a stray temporary
//! file that [`load_dir`] removes.
//!
//! # Loading
//!
//! [`load_dir`] loads every `*.json` file of a directory. Files that cannot
//! be read, parsed or verified are moved into a [`QUARANTINE_DIR`]
//! subdirectory (never deleted) and reported in the [`LoadReport`].

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// The envelope format version written by this build.
pub const FORMAT_VERSION: u64 = 1;
/// File-name prefix of temporary files created by [`write_atomic`].
pub const TEMP_PREFIX: &str = ".tmp-";
/// Name of the subdirectory receiving unreadable record files.
pub const QUARANTINE_DIR: &str = "quarantine";
/// Largest record file that is loaded; bigger files are quarantined. The
/// same limit applies on write ([`encode`] refuses a bigger record), so a
/// record that was stored is one that loads again after a restart.
pub const MAX_RECORD_SIZE: u64 = 16 << 20;

/// Errors of the persistence layer.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// An I/O operation on `path` failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// File or directory concerned.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// The file is not a well-formed envelope (e.g. truncated).
    #[error("malformed record envelope: {0}")]
    Malformed(#[source] serde_json::Error),
    /// The envelope has a format number this build does not understand.
    #[error("unsupported record format {found} (this build understands format {supported})")]
    UnsupportedFormat {
        /// Format number found in the file.
        found: u64,
        /// Format number this build reads and writes.
        supported: u64,
    },
    /// The envelope holds another kind of record.
    #[error("record kind is {found:?}, expected {expected:?}")]
    WrongKind {
        /// Kind that was expected.
        expected: String,
        /// Kind found in the file.
        found: String,
    },
    /// The data does not hash to the stored checksum.
    #[error("checksum mismatch: envelope says {expected:?}, data hashes to {actual:?}")]
    ChecksumMismatch {
        /// Checksum stored in the envelope.
        expected: String,
        /// Checksum of the data actually present.
        actual: String,
    },
    /// The verified data does not deserialize into the requested type.
    #[error("record data does not match the expected type: {0}")]
    Data(#[source] serde_json::Error),
    /// The value could not be serialized.
    #[error("cannot encode record: {0}")]
    Encode(#[source] serde_json::Error),
    /// The file (or the record being written) exceeds [`MAX_RECORD_SIZE`].
    #[error("file is too large ({size} bytes, limit {limit})")]
    TooLarge {
        /// Size of the file.
        size: u64,
        /// The limit.
        limit: u64,
    },
}

impl PersistError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> PersistError + '_ {
        move |source| PersistError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// Outcome of loading one or more record directories.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Number of records loaded successfully.
    pub loaded: usize,
    /// Files moved aside into quarantine: original path and reason.
    pub quarantined: Vec<(PathBuf, String)>,
}

impl LoadReport {
    /// Adds the counts and entries of `other` to `self`.
    pub fn merge(&mut self, other: LoadReport) {
        self.loaded += other.loaded;
        self.quarantined.extend(other.quarantined);
    }

    /// Tells whether nothing was quarantined.
    pub fn is_clean(&self) -> bool {
        self.quarantined.is_empty()
    }
}

#[derive(Deserialize)]
struct Header {
    format: u64,
}

#[derive(Deserialize)]
struct EnvelopeV1 {
    kind: String,
    checksum: String,
    data: Box<RawValue>,
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    format: u64,
    kind: &'a str,
    checksum: &'a str,
    data: &'a RawValue,
}

fn checksum_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Serializes `value` into an envelope of the given kind. An envelope over
/// [`MAX_RECORD_SIZE`] is refused ([`PersistError::TooLarge`]): loading
/// would quarantine it.
pub fn encode<T: Serialize + ?Sized>(kind: &str, value: &T) -> Result<Vec<u8>, PersistError> {
    let data = serde_json::to_string(value).map_err(PersistError::Encode)?;
    let data = RawValue::from_string(data).map_err(PersistError::Encode)?;
    let checksum = checksum_hex(data.get().as_bytes());
    let bytes = serde_json::to_vec(&EnvelopeOut {
        format: FORMAT_VERSION,
        kind,
        checksum: &checksum,
        data: &data,
    })
    .map_err(PersistError::Encode)?;
    if bytes.len() as u64 > MAX_RECORD_SIZE {
        return Err(PersistError::TooLarge {
            size: bytes.len() as u64,
            limit: MAX_RECORD_SIZE,
        });
    }
    Ok(bytes)
}

/// Parses and verifies an envelope of kind `expected_kind` and deserializes
/// its data.
pub fn decode<T: DeserializeOwned>(expected_kind: &str, bytes: &[u8]) -> Result<T, PersistError> {
    let header: Header = serde_json::from_slice(bytes).map_err(PersistError::Malformed)?;
    if header.format != FORMAT_VERSION {
        return Err(PersistError::UnsupportedFormat {
            found: header.format,
            supported: FORMAT_VERSION,
        });
    }
    let env: EnvelopeV1 = serde_json::from_slice(bytes).map_err(PersistError::Malformed)?;
    if env.kind != expected_kind {
        return Err(PersistError::WrongKind {
            expected: expected_kind.to_owned(),
            found: env.kind,
        });
    }
    let actual = checksum_hex(env.data.get().as_bytes());
    if actual != env.checksum {
        return Err(PersistError::ChecksumMismatch {
            expected: env.checksum,
            actual,
        });
    }
    serde_json::from_str(env.data.get()).map_err(PersistError::Data)
}

/// Reads, verifies and decodes the record file at `path`.
pub fn read_record<T: DeserializeOwned>(path: &Path, kind: &str) -> Result<T, PersistError> {
    let file = File::open(path).map_err(PersistError::io(path))?;
    let size = file.metadata().map_err(PersistError::io(path))?.len();
    if size > MAX_RECORD_SIZE {
        return Err(PersistError::TooLarge {
            size,
            limit: MAX_RECORD_SIZE,
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_RECORD_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(PersistError::io(path))?;
    if bytes.len() as u64 > MAX_RECORD_SIZE {
        return Err(PersistError::TooLarge {
            size: bytes.len() as u64,
            limit: MAX_RECORD_SIZE,
        });
    }
    decode(kind, &bytes)
}

/// Encodes `value` and writes it atomically to `path`.
pub fn save<T: Serialize + ?Sized>(path: &Path, kind: &str, value: &T) -> Result<(), PersistError> {
    let bytes = encode(kind, value)?;
    write_atomic(path, &bytes).map_err(PersistError::io(path))
}

/// The steps of [`write_atomic`], in order. Used to simulate crashes.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStep {
    /// The temporary file has been created, nothing written yet.
    TempCreated,
    /// Half of the bytes have been written to the temporary file.
    TempPartial,
    /// All bytes written to the temporary file, not yet fsynced.
    TempWritten,
    /// The temporary file has been fsynced and closed.
    TempSynced,
    /// The temporary file has been renamed over the target.
    Renamed,
    /// The directory has been fsynced: the write is complete.
    DirSynced,
}

impl WriteStep {
    /// All steps, in execution order.
    pub const ALL: [WriteStep; 6] = [
        WriteStep::TempCreated,
        WriteStep::TempPartial,
        WriteStep::TempWritten,
        WriteStep::TempSynced,
        WriteStep::Renamed,
        WriteStep::DirSynced,
    ];
}

/// Encodes `value` and atomically replaces the existing record at `path`
/// ([`replace_atomic`]: durable contents, no directory fsync).
pub fn save_replace<T: Serialize + ?Sized>(
    path: &Path,
    kind: &str,
    value: &T,
) -> Result<(), PersistError> {
    let bytes = encode(kind, value)?;
    replace_atomic(path, &bytes).map_err(PersistError::io(path))
}

/// Atomically replaces an existing file: like [`write_atomic`] (temporary
/// file, `fdatasync`, rename) but without fsyncing the directory.
///
/// For updates of a file whose directory entry is already durable: a crash,
/// even a power loss, leaves the complete old or the complete new contents,
/// so the directory fsync only decides which of the two survives a power
/// loss. Saves one of the two fsyncs of [`write_atomic`].
pub fn replace_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_mode(path, bytes, Sync::Data, 0o600)
}

/// Atomically writes run-time state that does not outlive the host's boot
/// (OCI bundles, a pod's resolv.conf/hosts/hostname, caches that are rebuilt):
/// temporary file and rename, no fsync. A crashed process leaves the old or
/// the new file, never a torn one; after a power loss the containers these
/// files describe are gone anyway. The file gets permission bits `mode`.
pub fn write_volatile(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    write_mode(path, bytes, Sync::None, mode)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sync {
    None,
    Data,
}

fn write_mode(path: &Path, bytes: &[u8], sync: Sync, mode: u32) -> io::Result<()> {
    let (dir, name) = split_path(path)?;
    let tmp = temp_path(&dir, name);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask must not narrow what the caller asked for.
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(bytes)?;
        if sync == Sync::Data {
            file.sync_data()?;
        }
        drop(file);
        fs::rename(&tmp, path)
    })();
    if let Err(err) = &result {
        tracing::warn!(path = %path.display(), error = %err, "atomic write failed");
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Atomically replaces the file at `path` with `bytes`.
///
/// Writes a temporary file in the same directory, fsyncs it, renames it over
/// `path` and fsyncs the directory. On error the temporary file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_steps(path, bytes, None)
}

/// Runs [`write_atomic`] but stops right after `step`, leaving the file
/// system exactly as a crash at that point would (including the stray
/// temporary file). For crash-safety tests only.
#[doc(hidden)]
pub fn write_atomic_crash_at(path: &Path, bytes: &[u8], step: WriteStep) -> io::Result<()> {
    write_steps(path, bytes, Some(step))
}

fn split_path(path: &Path) -> io::Result<(PathBuf, &OsStr)> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has no file name", path.display()),
        )
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name))
}

fn temp_path(dir: &Path, name: &OsStr) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(
        "{TEMP_PREFIX}{}-{}-{n}",
        name.to_string_lossy(),
        std::process::id()
    ))
}

fn write_steps(path: &Path, bytes: &[u8], crash: Option<WriteStep>) -> io::Result<()> {
    let (dir, name) = split_path(path)?;
    let tmp = temp_path(&dir, name);
    let result = write_steps_inner(&dir, &tmp, path, bytes, crash);
    if let Err(err) = &result {
        tracing::warn!(path = %path.display(), error = %err, "atomic write failed");
        // Best effort: the temporary file may not exist or be gone already.
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn write_steps_inner(
    dir: &Path,
    tmp: &Path,
    target: &Path,
    bytes: &[u8],
    crash: Option<WriteStep>,
) -> io::Result<()> {
    let stop = |step: WriteStep| crash == Some(step);

    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)?;
    if stop(WriteStep::TempCreated) {
        return Ok(());
    }
    if stop(WriteStep::TempPartial) {
        return file.write_all(&bytes[..bytes.len() / 2]);
    }
    file.write_all(bytes)?;
    if stop(WriteStep::TempWritten) {
        return Ok(());
    }
    file.sync_all()?;
    drop(file);
    if stop(WriteStep::TempSynced) {
        return Ok(());
    }
    fs::rename(tmp, target)?;
    if stop(WriteStep::Renamed) {
        return Ok(());
    }
    fsync_dir(dir)
}

/// Fsyncs a directory so that renames and unlinks in it are durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes the file at `path` and fsyncs its directory.
///
/// Returns `Ok(false)` if the file did not exist.
pub fn remove_durable(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(err) => return Err(err),
    }
    let (dir, _) = split_path(path)?;
    fsync_dir(&dir)?;
    Ok(true)
}

/// Moves `path` into the `quarantine/` subdirectory of its directory,
/// choosing a free name there. Returns the new path.
pub fn quarantine_file(path: &Path) -> io::Result<PathBuf> {
    let (dir, name) = split_path(path)?;
    let qdir = dir.join(QUARANTINE_DIR);
    crate::private::dir(&qdir)?;
    let mut dest = qdir.join(name);
    let mut n: u32 = 0;
    while fs::symlink_metadata(&dest).is_ok() {
        n += 1;
        if n > 100_000 {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "no free name in the quarantine directory",
            ));
        }
        dest = qdir.join(format!("{}.{n}", name.to_string_lossy()));
    }
    fs::rename(path, &dest)?;
    // Best effort: the move already happened; durability is a bonus here.
    let _ = fsync_dir(&qdir);
    let _ = fsync_dir(&dir);
    Ok(dest)
}

/// Logs `reason`, moves `path` into quarantine and records it in `report`.
///
/// Never fails: if the file cannot be moved it is left in place (and the
/// failure is logged and appended to the reason).
pub fn quarantine_and_report(path: &Path, reason: String, report: &mut LoadReport) {
    match quarantine_file(path) {
        Ok(dest) => {
            tracing::warn!(
                path = %path.display(),
                moved_to = %dest.display(),
                %reason,
                "quarantined unreadable record file"
            );
            report.quarantined.push((path.to_owned(), reason));
        }
        Err(err) => {
            tracing::warn!(
                path = %path.display(),
                %reason,
                error = %err,
                "unreadable record file could not be moved to quarantine; skipping it"
            );
            let reason = format!("{reason} (could not move to quarantine: {err})");
            report.quarantined.push((path.to_owned(), reason));
        }
    }
}

fn is_temp_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(TEMP_PREFIX.as_bytes())
}

/// Loads every `*.json` record of kind `kind` in `dir` (created if missing).
///
/// Leftover temporary files are removed; files that fail to load are moved
/// into quarantine and reported. Only a failure to create or list the
/// directory itself is an error.
pub fn load_dir<T: DeserializeOwned>(
    dir: &Path,
    kind: &str,
) -> Result<(Vec<(PathBuf, T)>, LoadReport), PersistError> {
    crate::private::dir(dir).map_err(PersistError::io(dir))?;
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(PersistError::io(dir))? {
        match entry {
            Ok(entry) => paths.push(entry.path()),
            Err(err) => {
                tracing::warn!(dir = %dir.display(), error = %err, "cannot read directory entry")
            }
        }
    }
    paths.sort();

    let mut items = Vec::new();
    let mut report = LoadReport::default();
    for path in paths {
        let Some(name) = path.file_name() else {
            continue;
        };
        if is_temp_name(name) {
            match fs::remove_file(&path) {
                Ok(()) => tracing::info!(
                    path = %path.display(),
                    "removed leftover temporary file of an interrupted write"
                ),
                Err(err) => tracing::warn!(
                    path = %path.display(),
                    error = %err,
                    "cannot remove leftover temporary file"
                ),
            }
            continue;
        }
        if path.extension() != Some(OsStr::new("json")) {
            continue;
        }
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => {
                quarantine_and_report(&path, "not a regular file".to_owned(), &mut report);
                continue;
            }
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "cannot stat record file");
                continue;
            }
        }
        match read_record::<T>(&path, kind) {
            Ok(value) => {
                items.push((path, value));
                report.loaded += 1;
            }
            Err(err) => quarantine_and_report(&path, err.to_string(), &mut report),
        }
    }
    Ok((items, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Rec {
        id: String,
        value: String,
        n: f64,
    }

    fn rec(id: &str, value: &str) -> Rec {
        Rec {
            id: id.into(),
            value: value.into(),
            n: 0.1 + 0.2,
        }
    }

    fn dir_names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn encode_decode_round_trip() {
        let r = rec("a", "hello \"world\" \u{1F600}");
        let bytes = encode("thing", &r).unwrap();
        let back: Rec = decode("thing", &bytes).unwrap();
        assert_eq!(back, r);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["format"], 1);
        assert_eq!(v["kind"], "thing");
        assert_eq!(v["data"]["id"], "a");
    }

    #[test]
    fn decode_rejects_wrong_kind_format_and_checksum() {
        let bytes = encode("thing", &rec("a", "b")).unwrap();
        assert!(matches!(
            decode::<Rec>("other", &bytes),
            Err(PersistError::WrongKind { .. })
        ));

        let text = String::from_utf8(bytes.clone()).unwrap();
        let future = text.replace("\"format\":1", "\"format\":2");
        let err = decode::<Rec>("thing", future.as_bytes()).unwrap_err();
        assert!(matches!(
            err,
            PersistError::UnsupportedFormat {
                found: 2,
                supported: 1
            }
        ));
        assert!(err.to_string().contains("unsupported record format 2"));

        // A future format with a completely different layout is still
        // reported as an unsupported format, not as garbage.
        let err = decode::<Rec>("thing", br#"{"format":7,"payload":[1,2,3]}"#).unwrap_err();
        assert!(matches!(
            err,
            PersistError::UnsupportedFormat { found: 7, .. }
        ));

        let tampered = text.replace("\"value\":\"b\"", "\"value\":\"c\"");
        assert!(matches!(
            decode::<Rec>("thing", tampered.as_bytes()),
            Err(PersistError::ChecksumMismatch { .. })
        ));

        assert!(matches!(
            decode::<Rec>("thing", b""),
            Err(PersistError::Malformed(_))
        ));
        let wrong_type = encode("thing", &42u32).unwrap();
        assert!(matches!(
            decode::<Rec>("thing", &wrong_type),
            Err(PersistError::Data(_))
        ));
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(dir_names(dir.path()), vec!["a.json"]);
    }

    #[test]
    fn write_atomic_failure_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        // Renaming a file over a non-empty directory fails.
        let target = dir.path().join("d.json");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("x"), b"x").unwrap();
        assert!(write_atomic(&target, b"data").is_err());
        assert_eq!(dir_names(dir.path()), vec!["d.json"]);
        // A missing directory is an error, not a panic.
        assert!(write_atomic(&dir.path().join("missing/a.json"), b"x").is_err());
    }

    #[test]
    fn remove_durable_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, b"x").unwrap();
        assert!(remove_durable(&path).unwrap());
        assert!(!remove_durable(&path).unwrap());
    }

    /// Simulates a crash after every step of a write, with and without a
    /// previous version, and checks that reloading always yields the complete
    /// old or the complete new record.
    #[test]
    fn reload_after_crash_at_every_step() {
        let old = rec("a", "old");
        let new = rec("a", &"new".repeat(100));
        for had_old in [true, false] {
            for step in WriteStep::ALL {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("a.json");
                if had_old {
                    save(&path, "thing", &old).unwrap();
                }
                let bytes = encode("thing", &new).unwrap();
                write_atomic_crash_at(&path, &bytes, step).unwrap();

                let (items, report) = load_dir::<Rec>(dir.path(), "thing").unwrap();
                assert!(report.is_clean(), "step {step:?}: {report:?}");
                let after_rename = matches!(step, WriteStep::Renamed | WriteStep::DirSynced);
                match (had_old, after_rename) {
                    (_, true) => assert_eq!(items, vec![(path.clone(), new.clone())]),
                    (true, false) => assert_eq!(items, vec![(path.clone(), old.clone())]),
                    (false, false) => assert!(items.is_empty(), "step {step:?}"),
                }
                assert_eq!(report.loaded, items.len());
                // Leftover temporary files are gone.
                let names = dir_names(dir.path());
                assert!(
                    names.iter().all(|n| !n.starts_with(TEMP_PREFIX)),
                    "step {step:?}: {names:?}"
                );
                // A following normal write succeeds and wins.
                save(&path, "thing", &new).unwrap();
                let (items, _) = load_dir::<Rec>(dir.path(), "thing").unwrap();
                assert_eq!(items, vec![(path.clone(), new.clone())]);
            }
        }
    }

    #[test]
    fn truncated_file_at_every_offset_is_quarantined() {
        let good = rec("b", "good");
        let bad = rec("a", "victim");
        let bytes = encode("thing", &bad).unwrap();
        for len in 0..bytes.len() {
            let dir = tempfile::tempdir().unwrap();
            save(&dir.path().join("b.json"), "thing", &good).unwrap();
            let bad_path = dir.path().join("a.json");
            fs::write(&bad_path, &bytes[..len]).unwrap();

            let (items, report) = load_dir::<Rec>(dir.path(), "thing").unwrap();
            assert_eq!(
                items,
                vec![(dir.path().join("b.json"), good.clone())],
                "truncated at {len}"
            );
            assert_eq!(report.loaded, 1);
            assert_eq!(report.quarantined.len(), 1, "truncated at {len}");
            assert_eq!(report.quarantined[0].0, bad_path);
            assert!(!bad_path.exists());
            let moved = dir.path().join(QUARANTINE_DIR).join("a.json");
            assert_eq!(fs::read(moved).unwrap(), &bytes[..len]);
        }
    }

    #[test]
    fn flipped_byte_at_every_offset_is_quarantined() {
        let good = rec("b", "good");
        let bad = rec("a", "victim");
        let bytes = encode("thing", &bad).unwrap();
        for pos in 0..bytes.len() {
            let dir = tempfile::tempdir().unwrap();
            save(&dir.path().join("b.json"), "thing", &good).unwrap();
            let mut corrupt = bytes.clone();
            corrupt[pos] ^= 0x01;
            let bad_path = dir.path().join("a.json");
            fs::write(&bad_path, &corrupt).unwrap();

            let (items, report) = load_dir::<Rec>(dir.path(), "thing").unwrap();
            assert_eq!(items.len(), 1, "flip at {pos}");
            assert_eq!(items[0].1, good);
            assert_eq!(report.quarantined.len(), 1, "flip at {pos}");
            assert_eq!(report.quarantined[0].0, bad_path);
            assert!(dir.path().join(QUARANTINE_DIR).join("a.json").exists());
        }
    }

    #[test]
    fn quarantine_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..3 {
            fs::write(dir.path().join("a.json"), format!("garbage {round}")).unwrap();
            let (_, report) = load_dir::<Rec>(dir.path(), "thing").unwrap();
            assert_eq!(report.quarantined.len(), 1);
        }
        let names = dir_names(&dir.path().join(QUARANTINE_DIR));
        assert_eq!(names, vec!["a.json", "a.json.1", "a.json.2"]);
    }

    #[test]
    fn load_dir_ignores_other_files_and_reports_reasons() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("README"), "hi").unwrap();
        fs::create_dir(dir.path().join("sub.json")).unwrap();
        save(&dir.path().join("ok.json"), "thing", &rec("ok", "x")).unwrap();
        save(&dir.path().join("kind.json"), "other", &rec("k", "x")).unwrap();
        let (items, report) = load_dir::<Rec>(dir.path(), "thing").unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(report.loaded, 1);
        let reasons: Vec<_> = report.quarantined.iter().map(|(_, r)| r.clone()).collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons.iter().any(|r| r.contains("kind")));
        assert!(reasons.iter().any(|r| r.contains("not a regular file")));
        assert!(dir.path().join("README").exists());
    }

    #[test]
    fn load_dir_creates_missing_dir() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("new");
        let (items, report) = load_dir::<Rec>(&sub, "thing").unwrap();
        assert!(items.is_empty());
        assert_eq!(report, LoadReport::default());
        assert!(sub.is_dir());
    }

    #[test]
    fn oversized_records_are_refused_on_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.json");
        let big = "x".repeat(MAX_RECORD_SIZE as usize);
        match save(&path, "thing", &big) {
            Err(PersistError::TooLarge { size, limit }) => {
                assert!(size > MAX_RECORD_SIZE);
                assert_eq!(limit, MAX_RECORD_SIZE);
            }
            other => panic!("{other:?}"),
        }
        assert!(!path.exists(), "nothing written");
        // Just under the limit is written and loads again.
        let fits = "x".repeat(MAX_RECORD_SIZE as usize - 200);
        save(&path, "thing", &fits).unwrap();
        assert_eq!(read_record::<String>(&path, "thing").unwrap(), fits);
    }
}
