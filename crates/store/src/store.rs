//! The metadata store: sandboxes, containers, images and small state values,
//! persisted under one root directory.
//!
//! Layout below the root:
//!
//! ```text
//! root/.lock                 exclusive flock held while the store is open
//! root/sandboxes/<id>.json   sandbox records
//! root/containers/<id>.json  container records
//! root/images/<id>.json      image records
//! root/state/<key>.json      key/value state
//! root/*/quarantine/         files that failed to load
//! ```
//!
//! Every mutation is written to disk (atomically) before it becomes visible
//! in memory; a failed write leaves memory unchanged. Readers never wait for
//! disk I/O: mutations of one kind are serialized by a writer mutex and only
//! take the in-memory write lock to swap the new value in.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ids::{is_valid_id, IdError, IdIndex};
use crate::model::{ContainerMetadata, ContainerRecord, ContainerStatus, ImageRecord, RecordKind};
use crate::model::{SandboxRecord, SandboxStatus};
use crate::names::{NameError, NameIndex};
use crate::persist::{self, LoadReport, PersistError};

/// Name of the lock file in the store root.
pub const LOCK_FILE: &str = ".lock";
/// Prefix of image ids that may be omitted in image lookups.
const IMAGE_ID_PREFIX: &str = "sha256:";
/// Longest accepted image id or state key (leaves room for `.json` and the
/// temporary-file decoration within the 255-byte file-name limit).
const MAX_KEY_LEN: usize = 200;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No record of this kind has the given id (or prefix).
    #[error("{kind} {id:?} not found")]
    NotFound {
        /// Kind of record looked up.
        kind: RecordKind,
        /// Id or prefix looked up.
        id: String,
    },
    /// A record with this id already exists.
    #[error("{kind} {id:?} already exists")]
    AlreadyExists {
        /// Kind of record being added.
        kind: RecordKind,
        /// The conflicting id.
        id: String,
    },
    /// The name is reserved for another id.
    #[error("name {name:?} is reserved for {holder_id:?}")]
    NameReserved {
        /// The requested name.
        name: String,
        /// The id holding it.
        holder_id: String,
    },
    /// The id prefix matches several ids.
    #[error("id prefix {prefix:?} is ambiguous: it matches {count} ids")]
    AmbiguousId {
        /// The prefix looked up.
        prefix: String,
        /// Number of matching ids.
        count: usize,
    },
    /// The id (or prefix) is malformed.
    #[error("invalid id {0:?}")]
    InvalidId(String),
    /// The reserved name is empty.
    #[error("invalid name {0:?}: a reserved name must not be empty")]
    InvalidName(String),
    /// The state key is not a plain file name.
    #[error("invalid state key {0:?}: must be a non-empty plain file name")]
    InvalidKey(String),
    /// Another `Store` (in this or another process) has the root open.
    #[error("store at {} is locked by another user", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// An I/O operation failed.
    #[error("I/O error on {}: {source}", path.display())]
    Io {
        /// File or directory concerned.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// A value could not be serialized or deserialized.
    #[error("serialization error: {0}")]
    Serde(#[from] serde_json::Error),
    /// A record is larger than a record may be
    /// ([`crate::persist::MAX_RECORD_SIZE`]); nothing was written.
    #[error("record {} would be {size} bytes, more than the {limit} a record may have", path.display())]
    TooLarge {
        /// The record's file.
        path: PathBuf,
        /// Its encoded size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A stored file is corrupt (bad envelope, checksum, kind or format).
    #[error("corrupt record file {}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl StoreError {
    /// Whether the error says that nothing has the id looked up: it is
    /// unknown, or not even shaped like an id this store hands out.
    pub fn is_absent(&self) -> bool {
        matches!(self, StoreError::NotFound { .. } | StoreError::InvalidId(_))
    }

    fn io(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
        move |source| StoreError::Io {
            path: path.to_owned(),
            source,
        }
    }

    fn from_persist(path: &Path, err: PersistError) -> StoreError {
        match err {
            PersistError::Io { path, source } => StoreError::Io { path, source },
            PersistError::Encode(e) | PersistError::Data(e) => StoreError::Serde(e),
            PersistError::TooLarge { size, limit } => StoreError::TooLarge {
                path: path.to_owned(),
                size,
                limit,
            },
            other => StoreError::Corrupt {
                path: path.to_owned(),
                reason: other.to_string(),
            },
        }
    }

    fn from_id(kind: RecordKind, err: IdError) -> StoreError {
        match err {
            IdError::Invalid(id) | IdError::InvalidPrefix(id) => StoreError::InvalidId(id),
            IdError::EmptyPrefix => StoreError::InvalidId(String::new()),
            IdError::Duplicate(id) => StoreError::AlreadyExists { kind, id },
            IdError::NotFound(id) => StoreError::NotFound { kind, id },
            IdError::Ambiguous { prefix, count } => StoreError::AmbiguousId { prefix, count },
        }
    }
}

impl From<NameError> for StoreError {
    fn from(err: NameError) -> Self {
        match err {
            NameError::Reserved { name, holder_id } => StoreError::NameReserved { name, holder_id },
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// In-memory table of one record kind.
#[derive(Debug)]
struct Table<M> {
    /// Serializes mutations (held across disk writes).
    writer: Mutex<()>,
    /// The records; write-locked only briefly to swap values.
    map: RwLock<M>,
}

impl<M: Default> Default for Table<M> {
    fn default() -> Self {
        Table {
            writer: Mutex::new(()),
            map: RwLock::new(M::default()),
        }
    }
}

/// Sandbox and container records share id and name handling.
trait Indexed: Clone + PartialEq + Serialize + DeserializeOwned {
    const KIND: RecordKind;
    fn id(&self) -> &str;
    fn reserved_name(&self) -> &str;
    fn created_at(&self) -> i64;
}

impl Indexed for SandboxRecord {
    const KIND: RecordKind = RecordKind::Sandbox;
    fn id(&self) -> &str {
        &self.metadata.id
    }
    fn reserved_name(&self) -> &str {
        &self.metadata.name
    }
    fn created_at(&self) -> i64 {
        self.metadata.created_at
    }
}

impl Indexed for ContainerRecord {
    const KIND: RecordKind = RecordKind::Container;
    fn id(&self) -> &str {
        &self.metadata.id
    }
    fn reserved_name(&self) -> &str {
        &self.metadata.name
    }
    fn created_at(&self) -> i64 {
        self.metadata.created_at
    }
}

/// Tells whether `key` can be used as a file name (image ids, state keys).
fn is_plain_file_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && !key.starts_with('.')
        && !key.contains("..")
        && !key.contains(['/', '\0'])
}

/// Persistent, thread-safe metadata store of the CRI daemon.
///
/// `Store` is `Send + Sync`; share it with `Arc<Store>`. Only one `Store`
/// may have a given root open at a time (enforced with an exclusive `flock`
/// on `root/.lock`). All methods do blocking file I/O for mutations; call
/// them from `spawn_blocking` in async code if latency matters.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    _lock: File,
    names: NameIndex,
    /// Shared by sandboxes and containers, so a prefix resolves across both.
    ids: IdIndex,
    sandboxes: Table<HashMap<String, SandboxRecord>>,
    containers: Table<HashMap<String, ContainerRecord>>,
    images: Table<BTreeMap<String, ImageRecord>>,
    state_writer: Mutex<()>,
}

impl Store {
    /// Opens (creating if needed) the store at `root` and loads all records.
    ///
    /// Files that cannot be loaded are quarantined and listed in the returned
    /// [`LoadReport`]; they never make `open` fail. Names of loaded sandboxes
    /// and containers are reserved again and their ids indexed.
    pub fn open(root: &Path) -> Result<(Store, LoadReport), StoreError> {
        for kind in [
            RecordKind::Sandbox,
            RecordKind::Container,
            RecordKind::Image,
            RecordKind::State,
        ] {
            let dir = root.join(kind.dir_name());
            crate::private::dir(&dir).map_err(StoreError::io(&dir))?;
        }
        crate::private::dir(root).map_err(StoreError::io(root))?;
        let lock_file = lock_root(root)?;
        let store = Store {
            root: root.to_owned(),
            _lock: lock_file,
            names: NameIndex::new(),
            ids: IdIndex::new(),
            sandboxes: Table::default(),
            containers: Table::default(),
            images: Table::default(),
            state_writer: Mutex::new(()),
        };
        let mut report = LoadReport::default();
        store.load_indexed(&store.sandboxes, &mut report)?;
        store.load_indexed(&store.containers, &mut report)?;
        store.load_images(&mut report)?;
        store.check_state(&mut report)?;
        tracing::info!(
            root = %root.display(),
            loaded = report.loaded,
            quarantined = report.quarantined.len(),
            "opened metadata store"
        );
        Ok((store, report))
    }

    /// The root directory of the store.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, kind: RecordKind) -> PathBuf {
        self.root.join(kind.dir_name())
    }

    fn record_path(&self, kind: RecordKind, id: &str) -> PathBuf {
        self.dir(kind).join(format!("{id}.json"))
    }

    fn load_indexed<R: Indexed>(
        &self,
        table: &Table<HashMap<String, R>>,
        report: &mut LoadReport,
    ) -> Result<(), StoreError> {
        let dir = self.dir(R::KIND);
        let (items, sub) = persist::load_dir::<R>(&dir, R::KIND.as_str())
            .map_err(|e| StoreError::from_persist(&dir, e))?;
        report.quarantined.extend(sub.quarantined);
        let mut map = write(&table.map);
        for (path, rec) in items {
            let id = rec.id();
            if path.file_stem().and_then(|s| s.to_str()) != Some(id) {
                let reason = format!("file name does not match record id {id:?}");
                persist::quarantine_and_report(&path, reason, report);
                continue;
            }
            if let Err(err) = self.ids.add(id) {
                persist::quarantine_and_report(&path, err.to_string(), report);
                continue;
            }
            let name = rec.reserved_name();
            if name.is_empty() {
                tracing::warn!(kind = %R::KIND, id, "loaded record has an empty name");
            } else if let Err(err) = self.names.reserve(name, id) {
                tracing::warn!(kind = %R::KIND, id, error = %err, "cannot reserve name of loaded record");
            }
            map.insert(id.to_owned(), rec);
            report.loaded += 1;
        }
        Ok(())
    }

    fn load_images(&self, report: &mut LoadReport) -> Result<(), StoreError> {
        let dir = self.dir(RecordKind::Image);
        let (items, sub) = persist::load_dir::<ImageRecord>(&dir, RecordKind::Image.as_str())
            .map_err(|e| StoreError::from_persist(&dir, e))?;
        report.quarantined.extend(sub.quarantined);
        let mut map = write(&self.images.map);
        for (path, rec) in items {
            let id = rec.metadata.id.as_str();
            if !is_plain_file_key(id) || path.file_stem().and_then(|s| s.to_str()) != Some(id) {
                let reason = format!("file name does not match image id {id:?}");
                persist::quarantine_and_report(&path, reason, report);
                continue;
            }
            map.insert(id.to_owned(), rec);
            report.loaded += 1;
        }
        Ok(())
    }

    /// Verifies state files at start-up (quarantining corrupt ones and
    /// removing leftovers of interrupted writes).
    fn check_state(&self, report: &mut LoadReport) -> Result<(), StoreError> {
        let dir = self.dir(RecordKind::State);
        let (_, sub) = persist::load_dir::<serde_json::Value>(&dir, RecordKind::State.as_str())
            .map_err(|e| StoreError::from_persist(&dir, e))?;
        report.merge(sub);
        Ok(())
    }

    // ----- names -----------------------------------------------------------

    /// Reserves `name` for `id` (idempotent for the same id).
    pub fn reserve_name(&self, name: &str, id: &str) -> Result<(), StoreError> {
        if name.is_empty() {
            return Err(StoreError::InvalidName(name.to_owned()));
        }
        Ok(self.names.reserve(name, id)?)
    }

    /// Releases `name`, whoever holds it.
    pub fn release_name(&self, name: &str) {
        self.names.release(name);
    }

    /// Returns the id holding `name`, if any.
    pub fn name_holder(&self, name: &str) -> Option<String> {
        self.names.get(name)
    }

    // ----- generic sandbox/container operations ----------------------------

    fn add_indexed<R: Indexed>(
        &self,
        table: &Table<HashMap<String, R>>,
        rec: R,
    ) -> Result<R, StoreError> {
        let kind = R::KIND;
        let id = rec.id().to_owned();
        let name = rec.reserved_name().to_owned();
        if !is_valid_id(&id) {
            return Err(StoreError::InvalidId(id));
        }
        if name.is_empty() {
            return Err(StoreError::InvalidName(name));
        }
        let _writer = lock(&table.writer);
        // Claim the id first: this atomically rejects duplicates across kinds.
        self.ids
            .add(&id)
            .map_err(|e| StoreError::from_id(kind, e))?;
        let newly_reserved = match self.names.reserve_new(&name, &id) {
            Ok(new) => new,
            Err(err) => {
                self.ids.delete(&id);
                return Err(err.into());
            }
        };
        let path = self.record_path(kind, &id);
        if let Err(err) = persist::save(&path, kind.as_str(), &rec) {
            self.ids.delete(&id);
            if newly_reserved {
                self.names.release(&name);
            }
            return Err(StoreError::from_persist(&path, err));
        }
        write(&table.map).insert(id.clone(), rec.clone());
        tracing::debug!(%kind, id, name, "added record");
        Ok(rec)
    }

    fn get_indexed<R: Indexed>(
        &self,
        table: &Table<HashMap<String, R>>,
        id_or_prefix: &str,
    ) -> Result<R, StoreError> {
        let kind = R::KIND;
        let id = self
            .ids
            .get(id_or_prefix)
            .map_err(|e| StoreError::from_id(kind, e))?;
        read(&table.map)
            .get(&id)
            .cloned()
            .ok_or_else(|| StoreError::NotFound {
                kind,
                id: id_or_prefix.to_owned(),
            })
    }

    fn list_indexed<R: Indexed>(&self, table: &Table<HashMap<String, R>>) -> Vec<R> {
        let mut all: Vec<R> = read(&table.map).values().cloned().collect();
        all.sort_by(|a, b| {
            a.created_at()
                .cmp(&b.created_at())
                .then_with(|| a.id().cmp(b.id()))
        });
        all
    }

    fn visit_indexed<R: Indexed, T>(
        &self,
        table: &Table<HashMap<String, R>>,
        f: impl FnMut(&R) -> Option<T>,
    ) -> Vec<T> {
        let map = read(&table.map);
        let mut all: Vec<&R> = map.values().collect();
        all.sort_by(|a, b| {
            a.created_at()
                .cmp(&b.created_at())
                .then_with(|| a.id().cmp(b.id()))
        });
        all.into_iter().filter_map(f).collect()
    }

    fn update_indexed<R: Indexed>(
        &self,
        table: &Table<HashMap<String, R>>,
        id: &str,
        f: impl FnOnce(&mut R),
    ) -> Result<R, StoreError> {
        let kind = R::KIND;
        let _writer = lock(&table.writer);
        let current = read(&table.map)
            .get(id)
            .cloned()
            .ok_or_else(|| StoreError::NotFound {
                kind,
                id: id.to_owned(),
            })?;
        let mut updated = current.clone();
        f(&mut updated);
        if updated == current {
            return Ok(updated);
        }
        let path = self.record_path(kind, id);
        // The record's directory entry is durable since it was added: an
        // update only needs durable contents.
        persist::save_replace(&path, kind.as_str(), &updated)
            .map_err(|e| StoreError::from_persist(&path, e))?;
        write(&table.map).insert(id.to_owned(), updated.clone());
        tracing::debug!(%kind, id, "updated record status");
        Ok(updated)
    }

    fn remove_indexed<R: Indexed>(
        &self,
        table: &Table<HashMap<String, R>>,
        id: &str,
    ) -> Result<bool, StoreError> {
        let kind = R::KIND;
        let _writer = lock(&table.writer);
        if !read(&table.map).contains_key(id) {
            return Ok(false);
        }
        let path = self.record_path(kind, id);
        persist::remove_durable(&path).map_err(StoreError::io(&path))?;
        write(&table.map).remove(id);
        self.ids.delete(id);
        self.names.release_by_id(id);
        tracing::debug!(%kind, id, "removed record");
        Ok(true)
    }

    // ----- sandboxes -------------------------------------------------------

    /// Persists and indexes a new sandbox; reserves its name for its id.
    ///
    /// Fails with `InvalidId` unless the id is 64 lowercase hex characters,
    /// `AlreadyExists` if a sandbox or container has the id, and
    /// `NameReserved` if the name is held by another id. The name may have
    /// been reserved for this id beforehand with [`Store::reserve_name`].
    pub fn add_sandbox(&self, record: SandboxRecord) -> Result<SandboxRecord, StoreError> {
        self.add_indexed(&self.sandboxes, record)
    }

    /// Returns the sandbox with this id or unique id prefix.
    ///
    /// Prefixes resolve over sandbox and container ids together; a prefix
    /// naming a container gives `NotFound`.
    pub fn get_sandbox(&self, id_or_prefix: &str) -> Result<SandboxRecord, StoreError> {
        self.get_indexed(&self.sandboxes, id_or_prefix)
    }

    /// All sandboxes, ordered by creation time then id.
    pub fn list_sandboxes(&self) -> Vec<SandboxRecord> {
        self.list_indexed(&self.sandboxes)
    }

    /// `f` of every sandbox, ordered as [`Store::list_sandboxes`], without
    /// copying the records: for callers that need a few fields of many
    /// records. `f` runs under the table's read lock, so it must not block
    /// or call back into the store.
    pub fn visit_sandboxes<T>(&self, f: impl FnMut(&SandboxRecord) -> Option<T>) -> Vec<T> {
        self.visit_indexed(&self.sandboxes, f)
    }

    /// Applies `f` to a copy of the status of sandbox `id` (full id),
    /// persists the result and then makes it visible. Returns the new record.
    /// If the write fails, the stored record is unchanged.
    pub fn update_sandbox_status(
        &self,
        id: &str,
        f: impl FnOnce(&mut SandboxStatus),
    ) -> Result<SandboxRecord, StoreError> {
        self.update_indexed(&self.sandboxes, id, |r| f(&mut r.status))
    }

    /// Removes sandbox `id` (full id): deletes its file durably, drops it
    /// from the indexes and releases its name. Returns whether it existed;
    /// removing a missing sandbox is not an error.
    pub fn remove_sandbox(&self, id: &str) -> Result<bool, StoreError> {
        self.remove_indexed(&self.sandboxes, id)
    }

    // ----- containers ------------------------------------------------------

    /// Persists and indexes a new container; reserves its name for its id.
    /// Same rules as [`Store::add_sandbox`]. The sandbox is not checked.
    pub fn add_container(&self, record: ContainerRecord) -> Result<ContainerRecord, StoreError> {
        self.add_indexed(&self.containers, record)
    }

    /// Returns the container with this id or unique id prefix; a prefix
    /// naming a sandbox gives `NotFound`.
    pub fn get_container(&self, id_or_prefix: &str) -> Result<ContainerRecord, StoreError> {
        self.get_indexed(&self.containers, id_or_prefix)
    }

    /// All containers, ordered by creation time then id.
    pub fn list_containers(&self) -> Vec<ContainerRecord> {
        self.list_indexed(&self.containers)
    }

    /// `f` of every container, ordered as [`Store::list_containers`],
    /// without copying the records (see [`Store::visit_sandboxes`]).
    pub fn visit_containers<T>(&self, f: impl FnMut(&ContainerRecord) -> Option<T>) -> Vec<T> {
        self.visit_indexed(&self.containers, f)
    }

    /// Containers belonging to sandbox `sandbox_id` (full id), ordered by
    /// creation time then id.
    pub fn list_sandbox_containers(&self, sandbox_id: &str) -> Vec<ContainerRecord> {
        // Copies only the sandbox's records, not every container's.
        self.visit_containers(|c| (c.metadata.sandbox_id == sandbox_id).then(|| c.clone()))
    }

    /// Applies `f` to a copy of the status of container `id` (full id),
    /// persists the result and then makes it visible. Returns the new record.
    pub fn update_container_status(
        &self,
        id: &str,
        f: impl FnOnce(&mut ContainerStatus),
    ) -> Result<ContainerRecord, StoreError> {
        self.update_indexed(&self.containers, id, |r| f(&mut r.status))
    }

    /// Applies `f` to a copy of the metadata of container `id` (full id),
    /// persists the result atomically and then makes it visible. Returns the
    /// new record; if the write fails, the stored record is unchanged.
    ///
    /// The identity of the record (id, reserved name, sandbox id) cannot be
    /// changed this way: an `f` that changes it is refused with
    /// `InvalidId`/`InvalidName` and nothing is written.
    pub fn update_container_metadata(
        &self,
        id: &str,
        f: impl FnOnce(&mut ContainerMetadata),
    ) -> Result<ContainerRecord, StoreError> {
        let mut refused: Option<StoreError> = None;
        let result = self.update_indexed(&self.containers, id, |r| {
            let mut m = r.metadata.clone();
            f(&mut m);
            if m.id != r.metadata.id || m.sandbox_id != r.metadata.sandbox_id {
                refused = Some(StoreError::InvalidId(m.id));
            } else if m.name != r.metadata.name {
                refused = Some(StoreError::InvalidName(m.name));
            } else {
                r.metadata = m;
            }
        });
        match refused {
            Some(err) => Err(err),
            None => result,
        }
    }

    /// Removes container `id` (full id); see [`Store::remove_sandbox`].
    pub fn remove_container(&self, id: &str) -> Result<bool, StoreError> {
        self.remove_indexed(&self.containers, id)
    }

    // ----- images ----------------------------------------------------------

    /// Inserts or replaces an image record (keyed by `metadata.id`).
    ///
    /// The id must be a plain file name (e.g. `sha256:<hex>`). Tags held by
    /// other images are not touched: moving a tag is up to the caller.
    pub fn put_image(&self, record: ImageRecord) -> Result<ImageRecord, StoreError> {
        let id = record.metadata.id.clone();
        if !is_plain_file_key(&id) {
            return Err(StoreError::InvalidId(id));
        }
        let _writer = lock(&self.images.writer);
        let path = self.record_path(RecordKind::Image, &id);
        persist::save(&path, RecordKind::Image.as_str(), &record)
            .map_err(|e| StoreError::from_persist(&path, e))?;
        write(&self.images.map).insert(id.clone(), record.clone());
        tracing::debug!(id, "stored image");
        Ok(record)
    }

    /// Returns the image with this id, or whose id starts with the given
    /// prefix (the `sha256:` part may be omitted).
    pub fn get_image(&self, id_or_prefix: &str) -> Result<ImageRecord, StoreError> {
        let map = read(&self.images.map);
        if let Some(rec) = map.get(id_or_prefix) {
            return Ok(rec.clone());
        }
        if id_or_prefix.is_empty() {
            return Err(StoreError::InvalidId(String::new()));
        }
        let mut prefixes = vec![id_or_prefix.to_owned()];
        if !id_or_prefix.starts_with(IMAGE_ID_PREFIX) {
            prefixes.push(format!("{IMAGE_ID_PREFIX}{id_or_prefix}"));
        }
        let mut found: Vec<&ImageRecord> = Vec::new();
        for prefix in &prefixes {
            let range = map
                .range::<str, _>((Bound::Included(prefix.as_str()), Bound::Unbounded))
                .take_while(|(id, _)| id.starts_with(prefix.as_str()));
            for (_, rec) in range {
                if !found.iter().any(|r| r.metadata.id == rec.metadata.id) {
                    found.push(rec);
                }
            }
        }
        match found.as_slice() {
            [] => Err(StoreError::NotFound {
                kind: RecordKind::Image,
                id: id_or_prefix.to_owned(),
            }),
            [one] => Ok((*one).clone()),
            many => Err(StoreError::AmbiguousId {
                prefix: id_or_prefix.to_owned(),
                count: many.len(),
            }),
        }
    }

    /// Finds an image by exact id, repo tag or repo digest.
    pub fn find_image(&self, reference: &str) -> Option<ImageRecord> {
        let map = read(&self.images.map);
        if let Some(rec) = map.get(reference) {
            return Some(rec.clone());
        }
        map.values()
            .find(|r| {
                r.metadata.repo_tags.iter().any(|t| t == reference)
                    || r.metadata.repo_digests.iter().any(|d| d == reference)
            })
            .cloned()
    }

    /// All images, ordered by id.
    pub fn list_images(&self) -> Vec<ImageRecord> {
        read(&self.images.map).values().cloned().collect()
    }

    /// Removes image `id` (exact id). Returns whether it existed.
    pub fn remove_image(&self, id: &str) -> Result<bool, StoreError> {
        let _writer = lock(&self.images.writer);
        if !read(&self.images.map).contains_key(id) {
            return Ok(false);
        }
        let path = self.record_path(RecordKind::Image, id);
        persist::remove_durable(&path).map_err(StoreError::io(&path))?;
        write(&self.images.map).remove(id);
        tracing::debug!(id, "removed image");
        Ok(true)
    }

    // ----- key/value state -------------------------------------------------

    fn state_path(&self, key: &str) -> Result<PathBuf, StoreError> {
        if !is_plain_file_key(key) {
            return Err(StoreError::InvalidKey(key.to_owned()));
        }
        Ok(self.record_path(RecordKind::State, key))
    }

    /// Stores `value` atomically under `key` (`root/state/<key>.json`).
    ///
    /// `key` must be a plain file name: non-empty, no `/`, no `..`, not
    /// starting with `.`.
    pub fn put_state<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let path = self.state_path(key)?;
        let _writer = lock(&self.state_writer);
        persist::save(&path, RecordKind::State.as_str(), value)
            .map_err(|e| StoreError::from_persist(&path, e))
    }

    /// Reads the value stored under `key`; `Ok(None)` if there is none.
    ///
    /// A corrupt file gives `Corrupt`, a value of another type `Serde`.
    pub fn get_state<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let path = self.state_path(key)?;
        match persist::read_record(&path, RecordKind::State.as_str()) {
            Ok(value) => Ok(Some(value)),
            Err(PersistError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(err) => Err(StoreError::from_persist(&path, err)),
        }
    }

    /// Deletes the value stored under `key`. Returns whether it existed.
    pub fn remove_state(&self, key: &str) -> Result<bool, StoreError> {
        let path = self.state_path(key)?;
        let _writer = lock(&self.state_writer);
        persist::remove_durable(&path).map_err(StoreError::io(&path))
    }
}

/// Takes an exclusive, non-blocking `flock` on `root/.lock`.
fn lock_root(root: &Path) -> Result<File, StoreError> {
    let path = root.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(StoreError::io(&path))?;
    loop {
        // SAFETY: `file` owns a valid open descriptor for the whole call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(file);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Err(StoreError::Locked { path }),
            _ => return Err(StoreError::Io { path, source: err }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::generate_id;
    use crate::model::*;
    use crate::persist::QUARANTINE_DIR;
    use std::fs;
    use std::sync::Arc;

    fn sandbox(id: &str, name: &str) -> SandboxRecord {
        Record::new(
            SandboxMetadata {
                id: id.into(),
                name: name.into(),
                namespace: "default".into(),
                pod_name: "pod".into(),
                uid: "uid-1".into(),
                runtime_handler: "runc".into(),
                labels: [("app".to_string(), "web".to_string())].into(),
                created_at: 1_700_000_000_000_000_000,
                config: serde_json::json!({"hostname": "pod"}),
                ..Default::default()
            },
            SandboxStatus::default(),
        )
    }

    fn container(id: &str, name: &str, sandbox_id: &str) -> ContainerRecord {
        Record::new(
            ContainerMetadata {
                id: id.into(),
                name: name.into(),
                sandbox_id: sandbox_id.into(),
                container_name: "app".into(),
                image_ref: "nginx:latest".into(),
                image_id: "sha256:aa".into(),
                log_path: Some("/var/log/app.log".into()),
                created_at: 1_700_000_000_000_000_001,
                config: serde_json::json!({"args": ["x"]}),
                ..Default::default()
            },
            ContainerStatus {
                state: ContainerState::Created,
                ..Default::default()
            },
        )
    }

    fn image(id: &str, tag: &str) -> ImageRecord {
        Record::new(
            ImageMetadata {
                id: id.into(),
                repo_tags: vec![tag.into()],
                repo_digests: vec![format!("docker.io/library/x@{id}")],
                size: 1234,
                ..Default::default()
            },
            ImageStatus::default(),
        )
    }

    fn hex_id(prefix: &str) -> String {
        format!("{prefix:0<64}")
    }

    #[test]
    fn store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Store>();
        check::<Arc<Store>>();
    }

    #[test]
    fn sandbox_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (store, report) = Store::open(dir.path()).unwrap();
        assert_eq!(report, LoadReport::default());

        let id = generate_id();
        let sb = sandbox(&id, "k8s_POD_pod_default_uid-1_0");
        store.add_sandbox(sb.clone()).unwrap();
        assert_eq!(store.get_sandbox(&id).unwrap(), sb);
        assert_eq!(store.get_sandbox(&id[..8]).unwrap(), sb);
        assert_eq!(store.list_sandboxes(), vec![sb.clone()]);
        assert_eq!(
            store.name_holder("k8s_POD_pod_default_uid-1_0"),
            Some(id.clone())
        );

        let updated = store
            .update_sandbox_status(&id, |s| {
                s.state = SandboxState::Ready;
                s.pid = Some(42);
                s.ip = Some("10.0.0.2".into());
            })
            .unwrap();
        assert_eq!(updated.status.pid, Some(42));
        assert_eq!(store.get_sandbox(&id).unwrap(), updated);

        assert!(matches!(
            store.add_sandbox(sb.clone()),
            Err(StoreError::AlreadyExists {
                kind: RecordKind::Sandbox,
                ..
            })
        ));

        assert!(store.remove_sandbox(&id).unwrap());
        assert!(!store.remove_sandbox(&id).unwrap());
        assert!(matches!(
            store.get_sandbox(&id),
            Err(StoreError::NotFound { .. })
        ));
        assert_eq!(store.name_holder("k8s_POD_pod_default_uid-1_0"), None);
        assert!(!dir
            .path()
            .join("sandboxes")
            .join(format!("{id}.json"))
            .exists());
        assert!(matches!(
            store.update_sandbox_status(&id, |_| {}),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn container_round_trip_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let sb_id = hex_id("5b");
        let c_id = hex_id("c0");
        let img_id = format!("sha256:{}", hex_id("1a"));
        let expected_c;
        {
            let (store, _) = Store::open(dir.path()).unwrap();
            store.add_sandbox(sandbox(&sb_id, "sb-name")).unwrap();
            // Reserving first, then adding, is the normal CRI flow.
            store.reserve_name("c-name", &c_id).unwrap();
            store
                .add_container(container(&c_id, "c-name", &sb_id))
                .unwrap();
            expected_c = store
                .update_container_status(&c_id, |s| {
                    s.state = ContainerState::Exited;
                    s.exit_code = Some(137);
                    s.reason = Some("OOMKilled".into());
                })
                .unwrap();
            store.put_image(image(&img_id, "nginx:latest")).unwrap();
            store.put_state("pod-cidr", "10.88.0.0/16").unwrap();
            assert_eq!(
                store.list_sandbox_containers(&sb_id),
                vec![expected_c.clone()]
            );
        }
        let (store, report) = Store::open(dir.path()).unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.loaded, 4);
        assert_eq!(store.get_container(&c_id).unwrap(), expected_c);
        assert_eq!(store.get_sandbox("5b").unwrap().metadata.id, sb_id);
        assert_eq!(store.list_containers(), vec![expected_c.clone()]);
        assert_eq!(store.get_image(&img_id).unwrap().metadata.size, 1234);
        assert_eq!(
            store.get_state::<String>("pod-cidr").unwrap().as_deref(),
            Some("10.88.0.0/16")
        );
        // Names are reserved again after reopening.
        let other = hex_id("ff");
        match store.reserve_name("c-name", &other) {
            Err(StoreError::NameReserved { name, holder_id }) => {
                assert_eq!(name, "c-name");
                assert_eq!(holder_id, c_id);
            }
            other => panic!("unexpected {other:?}"),
        }
        let err = store.reserve_name("sb-name", &other).unwrap_err();
        assert!(err.to_string().contains(&sb_id), "{err}");
        store.reserve_name("sb-name", &sb_id).unwrap();

        assert!(store.remove_container(&c_id).unwrap());
        assert!(!store.remove_container(&c_id).unwrap());
        store.reserve_name("c-name", &other).unwrap();
    }

    #[test]
    fn container_metadata_updates_persist_and_keep_identity() {
        let dir = tempfile::tempdir().unwrap();
        let sb_id = hex_id("5b");
        let c_id = hex_id("c1");
        let before;
        {
            let (store, _) = Store::open(dir.path()).unwrap();
            store.add_sandbox(sandbox(&sb_id, "sb")).unwrap();
            before = store.add_container(container(&c_id, "c", &sb_id)).unwrap();
            let updated = store
                .update_container_metadata(&c_id, |m| {
                    m.config = serde_json::json!({"linux": {"resources": {"cpu_shares": 512}}});
                })
                .unwrap();
            assert_eq!(
                updated.metadata.config["linux"]["resources"]["cpu_shares"],
                512
            );
            assert_eq!(updated.status, before.status);
            assert_eq!(store.get_container(&c_id).unwrap(), updated);
            // A change to the identity is refused and changes nothing.
            type Change = fn(&mut ContainerMetadata);
            let refused: [(Change, &str); 3] = [
                (|m| m.id = format!("{:0<64}", "d"), "id"),
                (|m| m.name = "other".into(), "name"),
                (|m| m.sandbox_id = format!("{:0<64}", "e"), "sandbox_id"),
            ];
            for (change, what) in refused {
                let err = store
                    .update_container_metadata(&c_id, |m| {
                        change(m);
                        m.labels.insert("x".into(), "y".into());
                    })
                    .unwrap_err();
                assert!(
                    matches!(err, StoreError::InvalidId(_) | StoreError::InvalidName(_)),
                    "{what}: {err}"
                );
                assert_eq!(store.get_container(&c_id).unwrap(), updated, "{what}");
            }
            assert!(matches!(
                store.update_container_metadata(&hex_id("f"), |_| {}),
                Err(StoreError::NotFound {
                    kind: RecordKind::Container,
                    ..
                })
            ));
        }
        // The update survives a reopen; the name stays reserved.
        let (store, report) = Store::open(dir.path()).unwrap();
        assert!(report.is_clean(), "{report:?}");
        let rec = store.get_container(&c_id).unwrap();
        assert_eq!(rec.metadata.config["linux"]["resources"]["cpu_shares"], 512);
        assert!(rec.metadata.labels.is_empty());
        assert_eq!(store.name_holder("c"), Some(c_id.clone()));

        // A failed write leaves the stored record as it was.
        let path = dir.path().join("containers").join(format!("{c_id}.json"));
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        fs::write(path.join("x"), b"x").unwrap();
        let res = store.update_container_metadata(&c_id, |m| m.log_path = None);
        assert!(matches!(res, Err(StoreError::Io { .. })), "{res:?}");
        assert_eq!(store.get_container(&c_id).unwrap(), rec);
    }

    #[test]
    fn container_metadata_update_interrupted_at_every_step() {
        use crate::persist::{encode, write_atomic_crash_at, WriteStep};
        let sb_id = hex_id("5b");
        let c_id = hex_id("c1");
        for step in WriteStep::ALL {
            let dir = tempfile::tempdir().unwrap();
            let (old, new) = {
                let (store, _) = Store::open(dir.path()).unwrap();
                let old = store.add_container(container(&c_id, "c", &sb_id)).unwrap();
                let mut new = old.clone();
                new.metadata.config = serde_json::json!({"resources": {"memory": 1}});
                (old, new)
            };
            // The write the update makes, cut short at `step`.
            let path = dir.path().join("containers").join(format!("{c_id}.json"));
            let bytes = encode(RecordKind::Container.as_str(), &new).unwrap();
            write_atomic_crash_at(&path, &bytes, step).unwrap();
            let (store, report) = Store::open(dir.path()).unwrap();
            assert!(report.is_clean(), "{step:?}: {report:?}");
            let got = store.get_container(&c_id).unwrap();
            let renamed = matches!(step, WriteStep::Renamed | WriteStep::DirSynced);
            assert_eq!(got, if renamed { new.clone() } else { old }, "{step:?}");
            // The next update goes through.
            let again = store
                .update_container_metadata(&c_id, |m| m.attempt = 3)
                .unwrap();
            assert_eq!(again.metadata.attempt, 3);
        }
    }

    #[test]
    fn add_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let a = hex_id("a");
        let b = hex_id("b");
        store.add_sandbox(sandbox(&a, "n")).unwrap();
        // Same name, other id.
        let err = store.add_sandbox(sandbox(&b, "n")).unwrap_err();
        assert!(
            matches!(&err, StoreError::NameReserved { holder_id, .. } if holder_id == &a),
            "{err}"
        );
        // The failed add left nothing behind.
        assert!(matches!(
            store.get_sandbox(&b),
            Err(StoreError::NotFound { .. })
        ));
        // Same id as a sandbox, used for a container.
        assert!(matches!(
            store.add_container(container(&a, "other", &a)),
            Err(StoreError::AlreadyExists {
                kind: RecordKind::Container,
                ..
            })
        ));
        assert_eq!(store.name_holder("other"), None);
        // Bad ids and names.
        assert!(matches!(
            store.add_sandbox(sandbox("ABC", "x")),
            Err(StoreError::InvalidId(_))
        ));
        assert!(matches!(
            store.add_sandbox(sandbox(&b, "")),
            Err(StoreError::InvalidName(_))
        ));
        assert!(matches!(
            store.add_sandbox(sandbox("../../etc/passwd", "x")),
            Err(StoreError::InvalidId(_))
        ));
    }

    #[test]
    fn failed_write_leaves_memory_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let a = hex_id("a");
        let sb = store.add_sandbox(sandbox(&a, "n")).unwrap();
        // Make the record path impossible to replace: a non-empty directory.
        let path = dir.path().join("sandboxes").join(format!("{a}.json"));
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        fs::write(path.join("x"), b"x").unwrap();
        let res = store.update_sandbox_status(&a, |s| s.pid = Some(1));
        assert!(matches!(res, Err(StoreError::Io { .. })), "{res:?}");
        assert_eq!(store.get_sandbox(&a).unwrap(), sb);
        // A failed add releases what it reserved.
        let b = hex_id("b");
        let path_b = dir.path().join("sandboxes").join(format!("{b}.json"));
        fs::create_dir(&path_b).unwrap();
        fs::write(path_b.join("x"), b"x").unwrap();
        assert!(store.add_sandbox(sandbox(&b, "nb")).is_err());
        assert_eq!(store.name_holder("nb"), None);
        assert!(matches!(
            store.get_sandbox(&b),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn prefix_lookups_across_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let sb = hex_id("abc1");
        let c1 = hex_id("abc2");
        let c2 = hex_id("d1");
        store.add_sandbox(sandbox(&sb, "sb")).unwrap();
        store.add_container(container(&c1, "c1", &sb)).unwrap();
        store.add_container(container(&c2, "c2", &sb)).unwrap();

        assert_eq!(store.get_sandbox("abc1").unwrap().metadata.id, sb);
        assert_eq!(store.get_container("abc2").unwrap().metadata.id, c1);
        assert_eq!(store.get_container("d").unwrap().metadata.id, c2);
        // The prefix names a sandbox: not a container.
        assert!(matches!(
            store.get_container("abc1"),
            Err(StoreError::NotFound {
                kind: RecordKind::Container,
                ..
            })
        ));
        assert!(matches!(
            store.get_sandbox("d1"),
            Err(StoreError::NotFound {
                kind: RecordKind::Sandbox,
                ..
            })
        ));
        // Shared index: "abc" matches a sandbox and a container.
        let err = store.get_container("abc").unwrap_err();
        assert!(
            matches!(&err, StoreError::AmbiguousId { count: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("ambiguous"));
        assert!(matches!(
            store.get_sandbox("e"),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            store.get_sandbox(""),
            Err(StoreError::InvalidId(_))
        ));
        assert!(matches!(
            store.get_sandbox("not-hex"),
            Err(StoreError::InvalidId(_))
        ));
        // After removal the prefix becomes unique.
        store.remove_sandbox(&sb).unwrap();
        assert_eq!(store.get_container("abc").unwrap().metadata.id, c1);
    }

    #[test]
    fn images() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let a = format!("sha256:{}", hex_id("aa"));
        let b = format!("sha256:{}", hex_id("ab"));
        store.put_image(image(&a, "x:1")).unwrap();
        store.put_image(image(&b, "x:2")).unwrap();
        let mut replaced = image(&a, "x:3");
        replaced.status.pinned = true;
        store.put_image(replaced.clone()).unwrap();
        assert_eq!(store.get_image(&a).unwrap(), replaced);
        assert_eq!(store.get_image("aa").unwrap(), replaced);
        assert_eq!(store.get_image("sha256:ab").unwrap().metadata.id, b);
        assert!(matches!(
            store.get_image("a"),
            Err(StoreError::AmbiguousId { count: 2, .. })
        ));
        assert!(matches!(
            store.get_image("c"),
            Err(StoreError::NotFound {
                kind: RecordKind::Image,
                ..
            })
        ));
        assert_eq!(store.find_image("x:3").unwrap().metadata.id, a);
        assert_eq!(
            store
                .find_image(&format!("docker.io/library/x@{b}"))
                .unwrap()
                .metadata
                .id,
            b
        );
        assert!(store.find_image("x:1").is_none());
        assert_eq!(store.list_images().len(), 2);
        assert!(store.remove_image(&a).unwrap());
        assert!(!store.remove_image(&a).unwrap());
        assert!(matches!(
            store.put_image(image("../evil", "y")),
            Err(StoreError::InvalidId(_))
        ));
        drop(store);
        let (store, report) = Store::open(dir.path()).unwrap();
        assert!(report.is_clean());
        assert_eq!(store.list_images().len(), 1);
    }

    #[test]
    fn state_values() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        assert_eq!(store.get_state::<u32>("missing").unwrap(), None);
        store.put_state("n", &7u32).unwrap();
        store.put_state("n", &8u32).unwrap();
        assert_eq!(store.get_state::<u32>("n").unwrap(), Some(8));
        assert!(matches!(
            store.get_state::<String>("n"),
            Err(StoreError::Serde(_))
        ));
        for bad in ["", "a/b", "..", "../x", ".hidden", "a\0b"] {
            assert!(
                matches!(store.put_state(bad, &1u8), Err(StoreError::InvalidKey(_))),
                "{bad:?}"
            );
            assert!(matches!(
                store.get_state::<u8>(bad),
                Err(StoreError::InvalidKey(_))
            ));
        }
        fs::write(dir.path().join("state/broken.json"), b"{\"format\":1").unwrap();
        assert!(matches!(
            store.get_state::<u8>("broken"),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(store.remove_state("n").unwrap());
        assert!(!store.remove_state("n").unwrap());
        assert_eq!(store.get_state::<u32>("n").unwrap(), None);
    }

    #[test]
    fn corrupt_files_do_not_stop_open() {
        let dir = tempfile::tempdir().unwrap();
        let good = hex_id("a");
        let bad = hex_id("b");
        {
            let (store, _) = Store::open(dir.path()).unwrap();
            store.add_sandbox(sandbox(&good, "good")).unwrap();
            store.add_sandbox(sandbox(&bad, "bad")).unwrap();
        }
        let bad_path = dir.path().join("sandboxes").join(format!("{bad}.json"));
        let bytes = fs::read(&bad_path).unwrap();
        fs::write(&bad_path, &bytes[..bytes.len() / 2]).unwrap();
        // A record whose file name does not match its id.
        let renamed = dir
            .path()
            .join("sandboxes")
            .join(format!("{}.json", hex_id("c")));
        fs::write(&renamed, &bytes).unwrap();
        // A sandbox file in the containers directory (wrong kind).
        let wrong_kind = dir.path().join("containers").join(format!("{good}.json"));
        fs::copy(
            dir.path().join("sandboxes").join(format!("{good}.json")),
            &wrong_kind,
        )
        .unwrap();
        // A leftover temporary file and a corrupt state file.
        fs::write(dir.path().join("sandboxes/.tmp-x-1-2"), b"half").unwrap();
        fs::write(dir.path().join("state/cidr.json"), b"garbage").unwrap();

        let (store, report) = Store::open(dir.path()).unwrap();
        assert_eq!(report.loaded, 1);
        let mut paths: Vec<_> = report.quarantined.iter().map(|(p, _)| p.clone()).collect();
        paths.sort();
        let mut want = vec![
            bad_path.clone(),
            renamed.clone(),
            wrong_kind.clone(),
            dir.path().join("state/cidr.json"),
        ];
        want.sort();
        assert_eq!(paths, want, "{report:?}");
        assert_eq!(store.list_sandboxes().len(), 1);
        assert_eq!(store.get_sandbox(&good).unwrap().metadata.name, "good");
        assert!(!dir.path().join("sandboxes/.tmp-x-1-2").exists());
        assert!(dir
            .path()
            .join("sandboxes")
            .join(QUARANTINE_DIR)
            .join(format!("{bad}.json"))
            .exists());
        assert_eq!(store.name_holder("bad"), None);
        // The lost sandbox's id can be used again.
        store.add_sandbox(sandbox(&bad, "bad")).unwrap();
    }

    #[test]
    fn second_open_of_same_root_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::Locked { .. })
        ));
        drop(store);
        Store::open(dir.path()).unwrap();
    }

    #[test]
    fn concurrent_adds_and_updates() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let store = Arc::new(store);
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..10 {
                        let id = generate_id();
                        let name = format!("c-{t}-{i}");
                        store.add_container(container(&id, &name, "sb")).unwrap();
                        store
                            .update_container_status(&id, |s| s.state = ContainerState::Running)
                            .unwrap();
                        if i % 2 == 0 {
                            store.remove_container(&id).unwrap();
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(store.list_containers().len(), 40);
        drop(store);
        let (store, report) = Store::open(dir.path()).unwrap();
        assert!(report.is_clean());
        assert_eq!(store.list_containers().len(), 40);
        assert!(store
            .list_containers()
            .iter()
            .all(|c| c.status.state == ContainerState::Running));
    }

    #[test]
    fn visits_see_records_in_list_order_without_copying_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        // Two pods, three containers; creation times out of id order.
        let (p1, p2) = (hex_id("a1"), hex_id("a2"));
        let mut s1 = sandbox(&p1, "pod-1");
        s1.metadata.created_at = 20;
        let mut s2 = sandbox(&p2, "pod-2");
        s2.metadata.created_at = 10;
        store.add_sandbox(s1).unwrap();
        store.add_sandbox(s2).unwrap();
        for (id, name, pod, at) in [
            (hex_id("c1"), "c-1", &p1, 3),
            (hex_id("c2"), "c-2", &p2, 1),
            (hex_id("c3"), "c-3", &p1, 2),
        ] {
            let mut c = container(&id, name, pod);
            c.metadata.created_at = at;
            store.add_container(c).unwrap();
        }
        let names = |v: Vec<ContainerRecord>| -> Vec<String> {
            v.into_iter().map(|c| c.metadata.name).collect()
        };
        for (filter, want) in [
            (None, vec!["c-2", "c-3", "c-1"]),
            (Some(&p1), vec!["c-3", "c-1"]),
            (Some(&p2), vec!["c-2"]),
        ] {
            let visited = store.visit_containers(|c| {
                filter
                    .is_none_or(|p| &c.metadata.sandbox_id == p)
                    .then(|| c.metadata.name.clone())
            });
            assert_eq!(visited, want, "{filter:?}");
            if let Some(p) = filter {
                assert_eq!(names(store.list_sandbox_containers(p)), want);
            }
        }
        assert_eq!(names(store.list_containers()), vec!["c-2", "c-3", "c-1"]);
        assert_eq!(
            store.visit_sandboxes(|s| Some(s.metadata.name.clone())),
            vec!["pod-2", "pod-1"]
        );
        assert!(names(store.list_sandbox_containers(&hex_id("ff"))).is_empty());
    }

    #[test]
    fn oversized_image_record_fails_instead_of_vanishing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let id = format!("sha256:{}", hex_id("bb"));
        store.put_image(image(&id, "x:1")).unwrap();
        let mut big = image(&id, "x:2");
        big.metadata.config =
            serde_json::json!({ "junk": "y".repeat(crate::persist::MAX_RECORD_SIZE as usize) });
        let err = store.put_image(big).unwrap_err();
        assert!(matches!(err, StoreError::TooLarge { .. }), "{err:?}");
        assert!(err.to_string().contains("more than the"), "{err}");
        // The old record is untouched, in memory and after a restart.
        assert_eq!(store.get_image(&id).unwrap().metadata.repo_tags, ["x:1"]);
        drop(store);
        let (store, report) = Store::open(dir.path()).unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(store.get_image(&id).unwrap().metadata.repo_tags, ["x:1"]);
    }
}
