//! The image manager: pulls, records, removal with garbage collection,
//! container root filesystems and image filesystem usage.

use crate::content::{ContentError, ContentStore};
use crate::manifest::{self, ImageConfig, Manifest, ManifestError, Platform};
use crate::reference::{is_digest, is_hex64, Reference, ReferenceError};
use crate::registry::{Auth, RegistryError, Resolver};
use crate::snapshot::{self, SnapshotError, Snapshotter};
use crius_store::{ImageMetadata, ImageRecord, ImageStatus, Record, Store, StoreError};
use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Layers downloaded at the same time by one pull, by default
/// (containerd's `max_concurrent_downloads`).
pub const DEFAULT_MAX_CONCURRENT_DOWNLOADS: usize = 3;
/// The file in a container's directory naming the snapshots it uses.
const ROOTFS_RECORD: &str = "rootfs.json";
/// The image volumes of a container (a list of [`RootfsRecord`]s), in its
/// directory beside [`ROOTFS_RECORD`]: collection keeps their snapshots.
const IMAGE_MOUNTS_RECORD: &str = "image-mounts.json";
/// The directory in a container's directory with one short link per lower
/// layer (`l/0` the topmost): lower dirs that share a parent and have short
/// names, so that an overlay of many layers fits in mount(2)'s one page of
/// options (see `crius_store::overlay`).
const LAYER_LINKS: &str = "l";
/// How long a pull may receive nothing before it fails (containerd's
/// `image_pull_progress_timeout` default).
pub const DEFAULT_PULL_PROGRESS_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Settings of the image manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageOptions {
    /// A pull that receives no data from the registry for this long fails
    /// with [`ErrorKind::DeadlineExceeded`]; `None` waits forever (the
    /// HTTP client's own read timeout aside).
    pub pull_progress_timeout: Option<Duration>,
    /// Layers one pull downloads at the same time (at least 1).
    pub max_concurrent_downloads: usize,
    /// Node credentials for pulls that carry none (`registry.auth_file`),
    /// read at each such pull.
    pub auth_file: Option<PathBuf>,
    /// Images reported as pinned besides the pause image.
    pub pinned: crate::pinning::Pinned,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            pull_progress_timeout: Some(DEFAULT_PULL_PROGRESS_TIMEOUT),
            max_concurrent_downloads: DEFAULT_MAX_CONCURRENT_DOWNLOADS,
            auth_file: None,
            pinned: Default::default(),
        }
    }
}

/// Errors of image operations.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The reference is malformed.
    #[error(transparent)]
    InvalidReference(#[from] ReferenceError),
    /// Talking to the registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A manifest or config is unusable.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Storing content failed (including digest and size mismatches).
    #[error(transparent)]
    Content(#[from] ContentError),
    /// Unpacking a layer failed.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The record store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such local image.
    #[error("image {0:?} not found")]
    NotFound(String),
    /// A container id that cannot name a directory.
    #[error("invalid container id {0:?}")]
    InvalidContainerId(String),
    /// The config and manifest disagree.
    #[error("image {reference}: {message}")]
    Inconsistent {
        /// The image.
        reference: String,
        /// What disagrees.
        message: String,
    },
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// The registry sent nothing for longer than the pull progress timeout.
    #[error("pull of {what} stalled: no data received from the registry for {timeout:?} (pull_progress_timeout)")]
    Stalled {
        /// What was being fetched.
        what: String,
        /// The progress timeout.
        timeout: Duration,
    },
    /// A background task died.
    #[error("internal error: {0}")]
    Task(String),
}

/// The class of an error, for mapping onto RPC status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller's input is wrong.
    InvalidArgument,
    /// The image (locally or in the registry) does not exist.
    NotFound,
    /// Credentials are missing or refused.
    Unauthenticated,
    /// Content did not match its digest or size.
    DataLoss,
    /// The registry could not be reached or failed.
    Unavailable,
    /// The registry stopped sending data (the pull progress timeout).
    DeadlineExceeded,
    /// Anything else.
    Internal,
}

impl ImageError {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ImageError::InvalidReference(_) | ImageError::InvalidContainerId(_) => {
                ErrorKind::InvalidArgument
            }
            ImageError::NotFound(_) => ErrorKind::NotFound,
            ImageError::Registry(r) => match r {
                RegistryError::NotFound { .. } => ErrorKind::NotFound,
                RegistryError::Unauthorized { .. } => ErrorKind::Unauthenticated,
                RegistryError::InvalidAuth(_) => ErrorKind::InvalidArgument,
                RegistryError::DigestMismatch { .. } => ErrorKind::DataLoss,
                RegistryError::Http { .. }
                | RegistryError::Status { .. }
                | RegistryError::NoHost { .. }
                | RegistryError::Token { .. } => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
            ImageError::Content(
                ContentError::DigestMismatch { .. } | ContentError::SizeMismatch { .. },
            ) => ErrorKind::DataLoss,
            ImageError::Content(ContentError::Transfer { .. }) => ErrorKind::Unavailable,
            ImageError::Content(ContentError::Stalled { .. }) | ImageError::Stalled { .. } => {
                ErrorKind::DeadlineExceeded
            }
            ImageError::Snapshot(SnapshotError::Unpack(
                crate::unpack::UnpackError::DiffIdMismatch { .. },
            )) => ErrorKind::DataLoss,
            ImageError::Manifest(ManifestError::NoMatchingPlatform(_)) => ErrorKind::NotFound,
            ImageError::Store(StoreError::AmbiguousId { .. }) => ErrorKind::InvalidArgument,
            _ => ErrorKind::Internal,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One mount of a container's root filesystem, for the shim to perform.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mount {
    /// Filesystem type (`overlay`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Mount source.
    pub source: String,
    /// Mount options.
    pub options: Vec<String>,
}

/// Usage of the image filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    /// Bytes allocated on disk.
    pub used_bytes: u64,
    /// Inodes used (hardlinks counted once).
    pub inodes_used: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct RootfsRecord {
    image_id: String,
    snapshots: Vec<String>,
}

struct Inner {
    dir: PathBuf,
    store: Arc<Store>,
    content: ContentStore,
    snapshots: Snapshotter,
    /// What a reload may change (see [`ImageManager::set_registry`]); each
    /// pull takes it once at its start.
    settings: std::sync::RwLock<Arc<RegistrySettings>>,
    pause_image: Option<String>,
    platform: Platform,
    /// Garbage collection and removal hold it exclusively; rootfs
    /// preparation and a pull registering what it is about to fetch
    /// ([`Lease`]) hold it shared. Every holder does only local work under
    /// it, never network I/O: a stalled registry cannot hold up a
    /// collection, nor a collection queued behind it everything else.
    gc: tokio::sync::RwLock<()>,
    /// What pulls in progress protect from collection.
    leases: Arc<LeaseTable>,
    /// Serialises read-modify-write of image records.
    records: tokio::sync::Mutex<()>,
    /// Disk usage measured off the request path.
    usage: crate::usage::UsageCache,
    /// Whether [`ImageManager::run_usage_refresher`] runs.
    refresher: std::sync::atomic::AtomicBool,
    /// What collection renamed out of the way, deleted in the background.
    trash: crate::trash::Trash,
}

/// The registry settings of the running configuration.
#[derive(Debug, Clone)]
struct RegistrySettings {
    /// The hosts.toml directory (`registry.config_path`).
    hosts_dir: PathBuf,
    options: ImageOptions,
}

impl Inner {
    fn settings(&self) -> Arc<RegistrySettings> {
        self.settings
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// Blobs and snapshots that pulls in progress are fetching, or have
/// fetched but not yet recorded in an image: garbage collection keeps
/// them. Counted, since concurrent pulls may share content.
#[derive(Default)]
struct LeaseTable {
    held: std::sync::Mutex<LeaseCounts>,
}

#[derive(Default, Debug, Clone, PartialEq, Eq)]
struct LeaseCounts {
    blobs: HashMap<String, usize>,
    snapshots: HashMap<String, usize>,
}

impl LeaseTable {
    fn counts(&self) -> std::sync::MutexGuard<'_, LeaseCounts> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One pull's protection: what it added to the [`LeaseTable`], released
/// when dropped (after the pull recorded its image, or failed).
struct Lease {
    table: Arc<LeaseTable>,
    blobs: Vec<String>,
    snapshots: Vec<String>,
}

impl Lease {
    fn new(table: Arc<LeaseTable>) -> Lease {
        Lease {
            table,
            blobs: Vec::new(),
            snapshots: Vec::new(),
        }
    }

    fn add(&mut self, blobs: &[String], snapshots: &[String]) {
        let mut held = self.table.counts();
        for b in blobs {
            *held.blobs.entry(b.clone()).or_default() += 1;
            self.blobs.push(b.clone());
        }
        for s in snapshots {
            *held.snapshots.entry(s.clone()).or_default() += 1;
            self.snapshots.push(s.clone());
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut held = self.table.counts();
        let release = |map: &mut HashMap<String, usize>, keys: &[String]| {
            for k in keys {
                if let Some(n) = map.get_mut(k) {
                    *n -= 1;
                    if *n == 0 {
                        map.remove(k);
                    }
                }
            }
        };
        release(&mut held.blobs, &self.blobs);
        release(&mut held.snapshots, &self.snapshots);
    }
}

/// The image manager. Cheap to clone.
#[derive(Clone)]
pub struct ImageManager {
    inner: Arc<Inner>,
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
        .unwrap_or(0)
}

/// A container's snapshot record at `path`: `Some(None)` when there is
/// none, `None` when it cannot be read or decoded (logged; collection then
/// keeps every snapshot).
fn read_snapshot_record<T: serde::de::DeserializeOwned>(path: &Path) -> Option<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<T>(&bytes) {
            Ok(r) => Some(Some(r)),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "unreadable snapshot record; snapshots are kept");
                None
            }
        },
        Err(err) if err.kind() == io::ErrorKind::NotFound => Some(None),
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "cannot read snapshot record; snapshots are kept");
            None
        }
    }
}

/// The `lowerdir=` option of an overlay over `lower` (topmost first).
fn lowerdir_option(lower: &[String]) -> String {
    format!("lowerdir={}", lower.join(":"))
}

/// Makes `links/<n>` a symbolic link to `targets[n]` for every n (replacing
/// one that points elsewhere) and returns the links' paths (blocking).
fn link_layers(links: &Path, targets: &[String]) -> Result<Vec<String>, ImageError> {
    crius_store::private::dir(links).map_err(io_err(links))?;
    let mut out = Vec::with_capacity(targets.len());
    for (n, target) in targets.iter().enumerate() {
        let link = links.join(n.to_string());
        match std::fs::read_link(&link) {
            Ok(t) if t == Path::new(target) => {}
            Ok(_) => {
                std::fs::remove_file(&link).map_err(io_err(&link))?;
                std::os::unix::fs::symlink(target, &link).map_err(io_err(&link))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::os::unix::fs::symlink(target, &link).map_err(io_err(&link))?;
            }
            Err(e) => return Err(io_err(&link)(e)),
        }
        out.push(link.display().to_string());
    }
    Ok(out)
}

fn valid_container_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ImageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ImageError::Task(e.to_string()))
}

impl ImageManager {
    /// Opens the image data under `<root>/images` (content store, snapshots,
    /// container layers) over the record store. `registry_config_path` is a
    /// containerd-style `certs.d` directory; `pause_image` is reported as
    /// pinned.
    pub fn open(
        root: &Path,
        store: Arc<Store>,
        registry_config_path: &Path,
        pause_image: &str,
    ) -> Result<ImageManager, ImageError> {
        Self::open_with(
            root,
            store,
            registry_config_path,
            pause_image,
            ImageOptions::default(),
        )
    }

    /// [`ImageManager::open`] with explicit settings.
    pub fn open_with(
        root: &Path,
        store: Arc<Store>,
        registry_config_path: &Path,
        pause_image: &str,
        options: ImageOptions,
    ) -> Result<ImageManager, ImageError> {
        let dir = root.join("images");
        // Private: container layers, content (private images too) and
        // snapshots are nobody else's to read.
        for d in [dir.clone(), dir.join("containers")] {
            crius_store::private::dir(&d).map_err(io_err(&d))?;
        }
        let content = ContentStore::open(&dir.join("content"))?;
        let snapshots = Snapshotter::open(&dir.join("snapshots"))?;
        let trash_dir = dir.join(crate::trash::TRASH_DIR);
        let trash = crate::trash::Trash::open(&trash_dir).map_err(io_err(&trash_dir))?;
        let pause_image = match Reference::parse(pause_image) {
            Ok(r) => Some(r.to_string()),
            Err(e) => {
                tracing::warn!(pause_image, error = %e, "pause image reference is invalid; nothing is pinned");
                None
            }
        };
        let manager = ImageManager {
            inner: Arc::new(Inner {
                dir,
                store,
                content,
                snapshots,
                settings: std::sync::RwLock::new(Arc::new(RegistrySettings {
                    hosts_dir: registry_config_path.to_path_buf(),
                    options,
                })),
                pause_image,
                platform: Platform::host(),
                gc: tokio::sync::RwLock::new(()),
                leases: Default::default(),
                records: tokio::sync::Mutex::new(()),
                usage: Default::default(),
                refresher: Default::default(),
                trash,
            }),
        };
        // Content of pulls that a crash interrupted belongs to no image.
        if let Err(e) = manager.collect() {
            tracing::warn!(error = %e, "cannot collect unused image content at start-up");
        }
        // What a crash left in the trash goes too (in the background when
        // there is a runtime to run it on).
        manager.start_sweeper();
        Ok(manager)
    }

    /// The directory holding all image data (the image filesystem).
    pub fn image_dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Whether the image is pinned: it is the configured pause image, or
    /// one of its repo tags or digests matches `[images] pinned` (decided
    /// by the configuration now, not by what was recorded at pull time).
    pub fn is_pinned(&self, image: &ImageRecord) -> bool {
        let m = &image.metadata;
        self.inner
            .pause_image
            .as_ref()
            .is_some_and(|p| m.repo_tags.contains(p))
            || self
                .inner
                .settings()
                .options
                .pinned
                .matches(m.repo_tags.iter().chain(&m.repo_digests))
    }

    /// Replaces the registry settings (a configuration reload): pulls that
    /// start afterwards use them, pulls in progress finish with the old.
    pub fn set_registry(&self, hosts_dir: &Path, options: ImageOptions) {
        *self
            .inner
            .settings
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(RegistrySettings {
            hosts_dir: hosts_dir.to_path_buf(),
            options,
        });
    }

    /// Pulls `reference` from its registry and records it; returns the
    /// image record (its id is the config digest).
    /// A failed pull leaves nothing behind: content it stored that no image
    /// uses is collected before the error is returned.
    pub async fn pull(
        &self,
        reference: &str,
        auth: Option<Auth>,
    ) -> Result<ImageRecord, ImageError> {
        let r = Reference::parse(reference)?;
        let pulled = self.pull_inner(r, auth).await;
        // The image filesystem grew (or a failed pull left and collected
        // content): measure it again soon.
        self.inner.usage.request_refresh();
        match pulled {
            Ok(rec) => Ok(rec),
            Err(e) => {
                tracing::warn!(reference, error = %e, "pull failed");
                if let Err(gc) = self.garbage_collect().await {
                    tracing::warn!(error = %gc, "cannot collect the content of a failed pull");
                }
                Err(e)
            }
        }
    }

    async fn pull_inner(
        &self,
        r: Reference,
        auth: Option<Auth>,
    ) -> Result<ImageRecord, ImageError> {
        let inner = &self.inner;
        // No lock is held across network I/O: what this pull fetches is
        // protected by its lease, registered before it is fetched and
        // released once the image is recorded (or the pull failed).
        let mut lease = Lease::new(inner.leases.clone());
        let settings = inner.settings();
        let resolver = {
            let (cfg, rr) = (settings.hosts_dir.clone(), r.clone());
            let auth_file = settings.options.auth_file.clone();
            blocking(move || Resolver::new(&cfg, &rr, auth, auth_file.as_deref())).await??
        };
        tracing::info!(reference = %r, "pulling image");
        let top = self
            .within(|| format!("the manifest of {r}"), resolver.resolve(&r))
            .await?;
        let mut content = vec![top.digest.clone()];
        let mut size = top.body.len() as u64;
        self.protect(&mut lease, std::slice::from_ref(&top.digest), &[])
            .await;
        self.store_bytes(&top.digest, top.body.clone()).await?;
        let image_manifest = match Manifest::parse(&top.content_type, &top.body)? {
            Manifest::Image(m) => m,
            Manifest::Index(index) => {
                let desc = manifest::select_platform(&index, &inner.platform)?;
                desc.check_manifest_size()?;
                let m = self
                    .within(
                        || format!("manifest {} of {r}", desc.digest),
                        resolver.fetch_manifest(&desc.digest),
                    )
                    .await?;
                content.push(m.digest.clone());
                size += m.body.len() as u64;
                self.protect(&mut lease, std::slice::from_ref(&m.digest), &[])
                    .await;
                self.store_bytes(&m.digest, m.body.clone()).await?;
                match Manifest::parse(&desc.media_type, &m.body)? {
                    Manifest::Image(im) => im,
                    Manifest::Index(_) => {
                        return Err(ImageError::Inconsistent {
                            reference: r.to_string(),
                            message: "an index entry for this platform is itself an index".into(),
                        })
                    }
                }
            }
        };

        // The config, then every layer in parallel.
        let cfg_desc = image_manifest.config.clone();
        cfg_desc.check_size("image config", manifest::MAX_CONFIG_SIZE)?;
        self.protect(&mut lease, std::slice::from_ref(&cfg_desc.digest), &[])
            .await;
        self.fetch_blob(&resolver, &cfg_desc.digest, cfg_desc.size)
            .await?;
        let config_bytes = inner.content.read(&cfg_desc.digest)?;
        let config = manifest::parse_config(&config_bytes)?;
        let config_json: serde_json::Value =
            serde_json::from_slice(&config_bytes).map_err(|e| ManifestError::Decode {
                what: "image config",
                source: e,
            })?;
        content.push(cfg_desc.digest.clone());
        size += cfg_desc.size;
        if config.rootfs.diff_ids.len() != image_manifest.layers.len() {
            return Err(ImageError::Inconsistent {
                reference: r.to_string(),
                message: format!(
                    "the manifest has {} layers but the config lists {} diff ids",
                    image_manifest.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            });
        }
        // Every layer is downloaded and unpacked in its own task: snapshots
        // are independent diff directories, so a layer is unpacked as soon
        // as it has arrived. Layers are committed bottom up: the
        // directories a layer only implies take their attributes from the
        // layers below, which must exist by then.
        let chain = snapshot::chain_ids(&config.rootfs.diff_ids);
        let layer_digests: Vec<String> = image_manifest
            .layers
            .iter()
            .map(|l| l.digest.clone())
            .collect();
        self.protect(&mut lease, &layer_digests, &chain).await;
        let resolver = Arc::new(resolver);
        let limit = Arc::new(tokio::sync::Semaphore::new(
            settings.options.max_concurrent_downloads.max(1),
        ));
        let mut tasks = tokio::task::JoinSet::new();
        let mut below_done: Option<tokio::sync::oneshot::Receiver<()>> = None;
        for (i, ((layer, diff_id), chain_id)) in image_manifest
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .zip(&chain)
            .enumerate()
        {
            content.push(layer.digest.clone());
            size += layer.size;
            let (me, res, lim) = (self.clone(), resolver.clone(), limit.clone());
            let (digest, layer_size) = (layer.digest.clone(), layer.size);
            let (diff_id, chain_id) = (diff_id.clone(), chain_id.clone());
            let lowers: Vec<String> = chain[..i].iter().rev().cloned().collect();
            let (done, next) = tokio::sync::oneshot::channel::<()>();
            let below = below_done.replace(next);
            tasks.spawn(async move {
                {
                    let _permit = lim.acquire_owned().await;
                    me.fetch_blob(&res, &digest, layer_size).await?;
                }
                let blob = me.inner.content.path(&digest)?;
                let lower = lowers.first().cloned().unwrap_or_default();
                let ready = async move {
                    match below {
                        None => Ok(()),
                        Some(rx) => rx.await.map_err(|_| SnapshotError::LowerMissing(lower)),
                    }
                };
                me.inner
                    .snapshots
                    .ensure_layer(&chain_id, blob, &diff_id, &lowers, ready)
                    .await?;
                // The receiver is gone only when the pull already failed.
                let _ = done.send(());
                Ok::<(), ImageError>(())
            });
        }
        let mut first_err = None;
        while let Some(res) = tasks.join_next().await {
            let res = res
                .map_err(|e| ImageError::Task(e.to_string()))
                .and_then(|r| r);
            if let Err(e) = res {
                if first_err.is_none() {
                    first_err = Some(e);
                    tasks.abort_all();
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }

        // Record it.
        let id = cfg_desc.digest.clone();
        let repo_tag = r.repo_tag();
        let repo_digest = r.repo_digest(&top.digest);
        let _records = inner.records.lock().await;
        let mut updates = Vec::new();
        if let Some(tag) = &repo_tag {
            // A tag names one image: take it from any other.
            for mut other in inner.store.list_images() {
                if other.metadata.id != id && other.metadata.repo_tags.contains(tag) {
                    other.metadata.repo_tags.retain(|t| t != tag);
                    updates.push(other);
                }
            }
        }
        let mut record = match inner.store.get_image(&id) {
            Ok(existing) if existing.metadata.id == id => existing,
            _ => Record::new(
                ImageMetadata {
                    id: id.clone(),
                    created_at: now_nanos(),
                    ..Default::default()
                },
                ImageStatus::default(),
            ),
        };
        if let Some(tag) = repo_tag {
            if !record.metadata.repo_tags.contains(&tag) {
                record.metadata.repo_tags.push(tag);
            }
        }
        if !record.metadata.repo_digests.contains(&repo_digest) {
            record.metadata.repo_digests.push(repo_digest);
        }
        for c in content {
            if !record.metadata.content.contains(&c) {
                record.metadata.content.push(c);
            }
        }
        record.metadata.snapshots = chain;
        record.metadata.size = size;
        record.metadata.config = config_json;
        record.status.pinned = self.is_pinned(&record);
        updates.push(record);
        let store = inner.store.clone();
        let saved = blocking(move || -> Result<ImageRecord, StoreError> {
            let mut last = None;
            for u in updates {
                last = Some(store.put_image(u)?);
            }
            last.ok_or(StoreError::InvalidId(String::new()))
        })
        .await??;
        tracing::info!(reference = %r, id = %saved.metadata.id, "image pulled");
        // Recorded: the image itself keeps its content from here on.
        drop(lease);
        Ok(saved)
    }

    /// Adds blobs and snapshots to a pull's lease. Under the shared side
    /// of the collection lock (briefly: no I/O), so a collection either
    /// finished before (and whatever it deleted is fetched again) or sees
    /// the lease.
    async fn protect(&self, lease: &mut Lease, blobs: &[String], snapshots: &[String]) {
        let _shared = self.inner.gc.read().await;
        lease.add(blobs, snapshots);
    }

    /// Runs a registry request under the pull progress timeout.
    async fn within<T, E: Into<ImageError>>(
        &self,
        what: impl FnOnce() -> String,
        request: impl std::future::Future<Output = Result<T, E>>,
    ) -> Result<T, ImageError> {
        match self.inner.settings().options.pull_progress_timeout {
            None => request.await.map_err(Into::into),
            Some(timeout) => match tokio::time::timeout(timeout, request).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Err(ImageError::Stalled {
                    what: what(),
                    timeout,
                }),
            },
        }
    }

    async fn store_bytes(&self, digest: &str, body: Vec<u8>) -> Result<(), ImageError> {
        let _lock = self.inner.content.lock(digest).await;
        let me = self.clone();
        let d = digest.to_string();
        blocking(move || me.inner.content.write_bytes(&d, &body)).await??;
        Ok(())
    }

    /// Downloads a blob unless present; concurrent pulls of one blob share
    /// the first download.
    async fn fetch_blob(
        &self,
        resolver: &Resolver,
        digest: &str,
        size: u64,
    ) -> Result<(), ImageError> {
        let content = &self.inner.content;
        content.path(digest)?;
        let _lock = content.lock(digest).await;
        if content.has(digest, size) {
            tracing::debug!(digest, "blob already present");
            return Ok(());
        }
        let resp = self
            .within(|| format!("blob {digest}"), resolver.fetch_blob(digest))
            .await?;
        content
            .write_stream(
                digest,
                size,
                resp.bytes_stream(),
                self.inner.settings().options.pull_progress_timeout,
            )
            .await?;
        tracing::debug!(digest, size, "blob stored");
        Ok(())
    }

    /// Finds a local image by id (full, or a unique hex prefix of at least
    /// 12 digits), repo tag or repo digest, in any reference form.
    pub fn resolve(&self, reference: &str) -> Result<Option<ImageRecord>, ImageError> {
        let store = &self.inner.store;
        if is_digest(reference) || is_hex64(reference) {
            return match store.get_image(reference) {
                Ok(r) => Ok(Some(r)),
                Err(StoreError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            };
        }
        let parsed = Reference::parse(reference);
        if let Ok(r) = &parsed {
            let key = match &r.digest {
                Some(d) => r.repo_digest(d),
                None => r.to_string(),
            };
            if let Some(rec) = store.find_image(&key) {
                return Ok(Some(rec));
            }
        }
        let hex_prefix = reference.strip_prefix("sha256:").unwrap_or(reference);
        if hex_prefix.len() >= 12
            && hex_prefix
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return match store.get_image(reference) {
                Ok(r) => Ok(Some(r)),
                Err(StoreError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            };
        }
        match parsed {
            Ok(_) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// All local images.
    pub fn list(&self) -> Vec<ImageRecord> {
        self.inner.store.list_images()
    }

    /// Removes an image by id, tag or digest. Removing by one tag of an
    /// image with several tags only drops that tag. Content and snapshots
    /// no longer used by any image or container are deleted. Returns whether
    /// anything was removed; an absent image is not an error.
    pub async fn remove(&self, reference: &str) -> Result<bool, ImageError> {
        let _exclusive = self.inner.gc.write().await;
        let _records = self.inner.records.lock().await;
        let Some(mut image) = self.resolve(reference)? else {
            return Ok(false);
        };
        let tag = Reference::parse(reference)
            .ok()
            .filter(|r| r.digest.is_none())
            .map(|r| r.to_string())
            .filter(|t| image.metadata.repo_tags.contains(t));
        let store = self.inner.store.clone();
        if let Some(tag) = tag {
            if image.metadata.repo_tags.len() > 1 {
                image.metadata.repo_tags.retain(|t| *t != tag);
                blocking(move || store.put_image(image)).await??;
                return Ok(true);
            }
        }
        let id = image.metadata.id.clone();
        blocking(move || store.remove_image(&id)).await??;
        tracing::info!(id = %image.metadata.id, "image removed");
        self.collect_locked().await?;
        Ok(true)
    }

    /// Deletes content and snapshots no image or container uses.
    pub async fn garbage_collect(&self) -> Result<(), ImageError> {
        let _exclusive = self.inner.gc.write().await;
        self.collect_locked().await
    }

    async fn collect_locked(&self) -> Result<(), ImageError> {
        self.inner.usage.request_refresh();
        let me = self.clone();
        let collected = blocking(move || me.collect()).await?;
        self.start_sweeper();
        collected
    }

    /// Starts deleting what is in the trash on the blocking pool (or here
    /// and now, outside a runtime), unless a sweeper runs already (it then
    /// sweeps again). The usage is measured again after each sweep that
    /// deleted something.
    fn start_sweeper(&self) {
        if !self.inner.trash.start_sweep() {
            return;
        }
        let me = self.clone();
        let run = move || {
            me.inner.trash.sweep_loop(|report| {
                if !report.removed.is_empty() {
                    tracing::debug!(
                        removed = report.removed.len(),
                        failed = report.failed,
                        "trash swept"
                    );
                    me.inner.usage.request_refresh();
                }
            })
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(run);
            }
            Err(_) => run(),
        }
    }

    /// Waits (at most `timeout`) until the trash's sweeper has finished;
    /// whether it has. For tests and benchmarks: nothing else needs to
    /// wait for the background deletion.
    pub async fn wait_trash_swept(&self, timeout: Duration) -> Result<bool, ImageError> {
        let me = self.clone();
        blocking(move || me.inner.trash.wait_idle(timeout)).await
    }

    /// Renames `path` into the trash, or deletes it here when that fails
    /// (another filesystem mounted at `snapshots/`, say). Blocking.
    fn discard(&self, path: &Path, kind: &str) {
        match self.inner.trash.move_in(path, kind) {
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "cannot move into the trash; deleting in place");
                if let Err(e) = crate::tree::remove_tree_if_exists(path) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot delete; retried at the next garbage collection");
                }
            }
        }
    }

    /// Moves blobs and snapshots that no image, container or pull in
    /// progress uses into the trash (blocking but quick: renames; call
    /// under the exclusive collection lock; [`ImageManager::start_sweeper`]
    /// deletes them). One failure never stops the pass: it is logged and
    /// the rest goes on (the next pass retries). Snapshots are kept when a
    /// container's record cannot be read.
    fn collect(&self) -> Result<(), ImageError> {
        let inner = &self.inner;
        // Leases before records: a pull records its image before it drops
        // its lease, so its content is in one or the other.
        let leased = inner.leases.counts().clone();
        let mut blobs: HashSet<String> = leased.blobs.into_keys().collect();
        let mut snaps: HashSet<String> = leased.snapshots.into_keys().collect();
        for img in inner.store.list_images() {
            blobs.extend(img.metadata.content);
            snaps.extend(img.metadata.snapshots);
        }
        let mut snaps_known = true;
        let cdir = inner.dir.join("containers");
        match std::fs::read_dir(&cdir) {
            Ok(entries) => {
                for e in entries {
                    let dir = match e {
                        Ok(e) => e.path(),
                        Err(err) => {
                            tracing::warn!(path = %cdir.display(), error = %err, "cannot list containers; snapshots are kept");
                            snaps_known = false;
                            break;
                        }
                    };
                    let rootfs = read_snapshot_record::<RootfsRecord>(&dir.join(ROOTFS_RECORD));
                    let volumes =
                        read_snapshot_record::<Vec<RootfsRecord>>(&dir.join(IMAGE_MOUNTS_RECORD));
                    match (rootfs, volumes) {
                        (Some(r), Some(v)) => {
                            for rec in r.into_iter().chain(v.into_iter().flatten()) {
                                snaps.extend(rec.snapshots);
                            }
                        }
                        // Keep every snapshot rather than delete what a container may use.
                        _ => snaps_known = false,
                    }
                }
            }
            Err(err) => {
                tracing::warn!(path = %cdir.display(), error = %err, "cannot list containers; snapshots are kept");
                snaps_known = false;
            }
        }
        // Blobs are used by images only.
        match inner.content.list() {
            Ok(all) => {
                for d in all.into_iter().filter(|d| !blobs.contains(d)) {
                    tracing::debug!(digest = %d, "deleting unused blob");
                    match inner.content.path(&d) {
                        Ok(p) => self.discard(&p, "blob"),
                        Err(e) => {
                            tracing::warn!(digest = %d, error = %e, "cannot delete unused blob")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list blobs for garbage collection"),
        }
        // Leftovers of unpacks and removals that failed before (unpacks
        // still running, of pulls in progress or given up, are skipped).
        for p in inner.snapshots.leftovers() {
            tracing::info!(path = %p.display(), "removing unfinished snapshot");
            self.discard(&p, "unpack");
        }
        if !snaps_known {
            return Ok(());
        }
        match inner.snapshots.list() {
            Ok(all) => {
                for s in all.into_iter().filter(|s| !snaps.contains(s)) {
                    tracing::debug!(snapshot = %s, "deleting unused snapshot");
                    match inner.snapshots.move_to_trash(&s, &inner.trash) {
                        Ok(Some((from, name))) => {
                            // Its measurement goes with it: the trash counts
                            // until deleted, without another walk.
                            inner.usage.moved(&from, &inner.trash.dir().join(name));
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::debug!(snapshot = %s, error = %e, "cannot move into the trash; deleting in place");
                            if let Err(e) = inner.snapshots.remove(&s) {
                                tracing::warn!(snapshot = %s, error = %e, "cannot delete unused snapshot; retried at the next garbage collection");
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list snapshots for garbage collection"),
        }
        Ok(())
    }

    /// The OCI image config of a local image.
    pub fn image_config(&self, image_id: &str) -> Result<ImageConfig, ImageError> {
        let rec = self
            .resolve(image_id)?
            .ok_or_else(|| ImageError::NotFound(image_id.to_string()))?;
        let bytes =
            serde_json::to_vec(&rec.metadata.config).map_err(|e| ManifestError::Decode {
                what: "image config",
                source: e,
            })?;
        Ok(manifest::parse_config(&bytes)?)
    }

    /// The snapshot directories of an image's layers, topmost first; a
    /// missing snapshot, or none at all, makes the image inconsistent.
    fn layer_dirs(&self, image: &ImageRecord) -> Result<Vec<String>, ImageError> {
        let inconsistent = |message: String| ImageError::Inconsistent {
            reference: image.metadata.id.clone(),
            message,
        };
        let mut lower = Vec::new();
        for s in image.metadata.snapshots.iter().rev() {
            let p = self.inner.snapshots.fs_path(s)?;
            if !p.is_dir() {
                return Err(inconsistent(format!(
                    "snapshot {s} is missing; pull the image again"
                )));
            }
            lower.push(p.display().to_string());
        }
        if lower.is_empty() {
            return Err(inconsistent("the image has no layers".into()));
        }
        Ok(lower)
    }

    /// Creates container `container_id`'s writable layer over image
    /// `image_id` and returns the overlay mount of its root filesystem
    /// (lower dirs topmost first). Calling it again returns the same mount.
    pub async fn prepare_rootfs(
        &self,
        image_id: &str,
        container_id: &str,
    ) -> Result<Vec<Mount>, ImageError> {
        if !valid_container_id(container_id) {
            return Err(ImageError::InvalidContainerId(container_id.to_string()));
        }
        let _shared = self.inner.gc.read().await;
        let image = self
            .resolve(image_id)?
            .ok_or_else(|| ImageError::NotFound(image_id.to_string()))?;
        let lower = self.layer_dirs(&image)?;
        let dir = self.inner.dir.join("containers").join(container_id);
        let record = RootfsRecord {
            image_id: image.metadata.id.clone(),
            snapshots: image.metadata.snapshots.clone(),
        };
        let (d, targets) = (dir.clone(), lower);
        let lower = blocking(move || -> Result<Vec<String>, ImageError> {
            let fresh = !d.exists();
            let r = (|| {
                crius_store::private::dir(&d).map_err(io_err(&d))?;
                // The upper dir's root is the container's `/` (overlayfs
                // gives the merged root its mode), which every user in the
                // container must traverse; the private `d` keeps host users
                // out. The work dir is the kernel's only.
                let upper = d.join("upper");
                crius_store::private::dir_with_mode(
                    &upper,
                    crius_store::private::CONTAINER_VISIBLE_DIR,
                )
                .map_err(io_err(&upper))?;
                let work = d.join("work");
                crius_store::private::dir(&work).map_err(io_err(&work))?;
                let p = d.join(ROOTFS_RECORD);
                let bytes =
                    serde_json::to_vec(&record).map_err(|e| io_err(&p)(io::Error::other(e)))?;
                // Atomic but not synced: it only has to outlive criusd, not
                // the machine (after a power loss the container is dead and
                // its layer is removed with it; a torn record stops
                // collection rather than letting it delete a snapshot).
                crius_store::persist::write_volatile(&p, &bytes, 0o600).map_err(io_err(&p))?;
                link_layers(&d.join(LAYER_LINKS), &targets)
            })();
            if r.is_err() && fresh {
                if let Err(e) = crate::tree::remove_tree_if_exists(&d) {
                    tracing::warn!(path = %d.display(), error = %e, "cannot remove a half-made writable layer");
                }
            }
            r
        })
        .await??;
        Ok(vec![Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                lowerdir_option(&lower),
                format!("upperdir={}", dir.join("upper").display()),
                format!("workdir={}", dir.join("work").display()),
            ],
        }])
    }

    /// The layers of the images a container mounts as image volumes
    /// (`images`: references, in order), recorded with the container's
    /// writable layer so that collection keeps them until
    /// [`ImageManager::remove_rootfs`] (the volumes must be unmounted by
    /// then): for each, the image id and its snapshot directories, topmost
    /// first. An image that is not present is NotFound. Calling it again
    /// records the same.
    pub async fn prepare_image_mounts(
        &self,
        container_id: &str,
        images: &[String],
    ) -> Result<Vec<(String, Vec<String>)>, ImageError> {
        if !valid_container_id(container_id) {
            return Err(ImageError::InvalidContainerId(container_id.to_string()));
        }
        // Shared: a removal cannot collect the snapshots between the look-up
        // and the record.
        let _shared = self.inner.gc.read().await;
        let mut records = Vec::with_capacity(images.len());
        let mut out = Vec::with_capacity(images.len());
        for reference in images {
            let image = self.resolve(reference)?.ok_or_else(|| {
                ImageError::NotFound(format!("image {reference:?} is not present: pull it first"))
            })?;
            out.push((image.metadata.id.clone(), self.layer_dirs(&image)?));
            records.push(RootfsRecord {
                image_id: image.metadata.id.clone(),
                snapshots: image.metadata.snapshots.clone(),
            });
        }
        let d = self.inner.dir.join("containers").join(container_id);
        blocking(move || -> Result<(), ImageError> {
            crius_store::private::dir(&d).map_err(io_err(&d))?;
            let p = d.join(IMAGE_MOUNTS_RECORD);
            let bytes =
                serde_json::to_vec(&records).map_err(|e| io_err(&p)(io::Error::other(e)))?;
            // Volatile, as the rootfs record: it has to outlive criusd only.
            crius_store::persist::write_volatile(&p, &bytes, 0o600).map_err(io_err(&p))
        })
        .await??;
        Ok(out)
    }

    /// Removes a container's writable layer (it must be unmounted) and the
    /// snapshots only it still used: gone from its place when this returns,
    /// deleted in the background (the trash). Removing an absent one
    /// succeeds.
    pub async fn remove_rootfs(&self, container_id: &str) -> Result<(), ImageError> {
        if !valid_container_id(container_id) {
            return Err(ImageError::InvalidContainerId(container_id.to_string()));
        }
        self.inner.usage.forget(container_id);
        let _exclusive = self.inner.gc.write().await;
        let dir = self.inner.dir.join("containers").join(container_id);
        // Whatever the container wrote, at any depth, can take seconds to
        // delete: it is renamed into the trash (one rename; deleted in
        // place only when that fails) and the sweeper started by the
        // collection deletes it.
        let me = self.clone();
        blocking(move || me.discard(&dir, "container")).await?;
        self.collect_locked().await
    }

    /// Bytes and inodes used under the image directory (the trash
    /// included until its entries are deleted), as last measured (see
    /// [`ImageManager::run_usage_refresher`]): never a walk on the caller's
    /// path. Before the refresher's first measurement it waits for that;
    /// without a refresher it measures now.
    pub async fn fs_info(&self) -> Result<FsUsage, ImageError> {
        use std::sync::atomic::Ordering;
        let u = match self.inner.usage.image_fs() {
            Some(u) => u,
            None if self.inner.refresher.load(Ordering::Acquire) => {
                self.inner.usage.first_refresh().await;
                self.inner.usage.image_fs().unwrap_or_default()
            }
            None => {
                let m = self.clone();
                blocking(move || m.inner.usage.refresh(&m.inner.dir)).await?;
                self.inner.usage.image_fs().unwrap_or_default()
            }
        };
        Ok(FsUsage {
            used_bytes: u.bytes,
            inodes_used: u.inodes,
        })
    }

    /// A container's writable layer as last measured; `None` until the
    /// refresher has seen it (the miss asks it to run).
    pub fn writable_usage(&self, container_id: &str) -> Option<crate::usage::Usage> {
        self.inner.usage.layer(container_id)
    }

    /// Measures the image filesystem and the writable layers every
    /// `period`, and soon after a pull, a collection or a reader finding a
    /// layer not measured yet;
    /// runs until the runtime ends. The walks run on the blocking pool.
    pub async fn run_usage_refresher(self, period: std::time::Duration) {
        self.inner
            .refresher
            .store(true, std::sync::atomic::Ordering::Release);
        loop {
            let m = self.clone();
            if blocking(move || m.inner.usage.refresh(&m.inner.dir))
                .await
                .is_err()
            {
                tracing::warn!("disk usage refresh failed");
            }
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = self.inner.usage.refresh_requested() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds() {
        let url = || "http://r/v2/x".to_string();
        let cases: Vec<(ImageError, ErrorKind)> = vec![
            (
                Reference::parse("A").unwrap_err().into(),
                ErrorKind::InvalidArgument,
            ),
            (
                ImageError::InvalidContainerId("..".into()),
                ErrorKind::InvalidArgument,
            ),
            (ImageError::NotFound("x".into()), ErrorKind::NotFound),
            (
                RegistryError::NotFound {
                    what: "m".into(),
                    url: url(),
                }
                .into(),
                ErrorKind::NotFound,
            ),
            (
                RegistryError::Unauthorized {
                    url: url(),
                    message: "no".into(),
                }
                .into(),
                ErrorKind::Unauthenticated,
            ),
            (
                RegistryError::InvalidAuth("bad".into()).into(),
                ErrorKind::InvalidArgument,
            ),
            (
                RegistryError::DigestMismatch {
                    url: url(),
                    expected: "a".into(),
                    actual: "b".into(),
                }
                .into(),
                ErrorKind::DataLoss,
            ),
            (
                RegistryError::Status {
                    url: url(),
                    status: 500,
                    body: String::new(),
                }
                .into(),
                ErrorKind::Unavailable,
            ),
            (
                ContentError::DigestMismatch {
                    expected: "a".into(),
                    actual: "b".into(),
                }
                .into(),
                ErrorKind::DataLoss,
            ),
            (
                ContentError::SizeMismatch {
                    digest: "a".into(),
                    expected: 1,
                    actual: 2,
                }
                .into(),
                ErrorKind::DataLoss,
            ),
            (
                ManifestError::NoMatchingPlatform("linux/amd64".into()).into(),
                ErrorKind::NotFound,
            ),
            (
                ManifestError::UnsupportedMediaType("x".into()).into(),
                ErrorKind::Internal,
            ),
            (ImageError::Task("boom".into()), ErrorKind::Internal),
            (
                ImageError::Stalled {
                    what: "the manifest of x".into(),
                    timeout: Duration::from_secs(1),
                },
                ErrorKind::DeadlineExceeded,
            ),
            (
                ContentError::Stalled {
                    digest: "a".into(),
                    received: 1,
                    size: 2,
                    timeout: Duration::from_secs(1),
                }
                .into(),
                ErrorKind::DeadlineExceeded,
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.kind(), want, "{err}");
        }
    }

    #[tokio::test]
    async fn start_up_collects_orphans() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&tmp.path().join("store")).unwrap();
        let store = Arc::new(store);
        let open = || {
            ImageManager::open(tmp.path(), store.clone(), &tmp.path().join("c"), "pause").unwrap()
        };
        let m = open();
        m.inner
            .content
            .write_bytes(&crate::content::digest_of(b"kept"), b"kept")
            .unwrap();
        m.inner
            .content
            .write_bytes(&crate::content::digest_of(b"orphan"), b"orphan")
            .unwrap();
        let mut rec = record('a', &["docker.io/library/a:1"], &[]);
        rec.metadata.content = vec![crate::content::digest_of(b"kept")];
        store.put_image(rec).unwrap();
        drop(m);
        let m = open();
        assert_eq!(
            m.inner.content.list().unwrap(),
            vec![crate::content::digest_of(b"kept")]
        );
    }

    /// The mount handed to the shim really mounts: lower layers topmost
    /// first, whiteouts applied, writes land in the container's upper dir.
    #[tokio::test]
    async fn rootfs_mount_works() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping rootfs_mount_works: needs root (mount)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&tmp.path().join("store")).unwrap();
        let store = Arc::new(store);
        let m = ImageManager::open(tmp.path(), store.clone(), &tmp.path().join("c"), "p").unwrap();
        let tar_of = |files: &[(&str, &[u8])]| {
            let mut b = tar::Builder::new(Vec::new());
            for (name, data) in files {
                let mut h = tar::Header::new_gnu();
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, name, *data).unwrap();
            }
            b.into_inner().unwrap()
        };
        let layers = [
            tar_of(&[("base", b"0"), ("gone", b"x"), ("over", b"old")]),
            tar_of(&[(".wh.gone", b""), ("over", b"new"), ("top", b"1")]),
        ];
        let chain = unpack_layers(&m, tmp.path(), &layers).await;
        let snaps: Vec<&str> = chain.iter().map(String::as_str).collect();
        let rec = record('b', &["docker.io/library/b:1"], &snaps);
        store.put_image(rec.clone()).unwrap();
        let mounts = m.prepare_rootfs(&rec.metadata.id, "ctr").await.unwrap();
        let target = tmp.path().join("rootfs");
        std::fs::create_dir(&target).unwrap();
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        let (src, tgt, fs, data) = (
            c(&mounts[0].source),
            c(target.to_str().unwrap()),
            c(&mounts[0].kind),
            c(&mounts[0].options.join(",")),
        );
        // SAFETY: valid NUL-terminated strings.
        let r = unsafe {
            libc::mount(
                src.as_ptr(),
                tgt.as_ptr(),
                fs.as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        assert_eq!(r, 0, "mount: {}", io::Error::last_os_error());
        struct Unmount(std::ffi::CString);
        impl Drop for Unmount {
            fn drop(&mut self) {
                // SAFETY: valid path string.
                unsafe { libc::umount2(self.0.as_ptr(), libc::MNT_DETACH) };
            }
        }
        let guard = Unmount(c(target.to_str().unwrap()));
        assert_eq!(std::fs::read(target.join("base")).unwrap(), b"0");
        assert_eq!(std::fs::read(target.join("over")).unwrap(), b"new");
        assert_eq!(std::fs::read(target.join("top")).unwrap(), b"1");
        assert!(!target.join("gone").exists());
        std::fs::write(target.join("written"), b"w").unwrap();
        drop(guard);
        let upper = m.inner.dir.join("containers/ctr/upper");
        assert_eq!(std::fs::read(upper.join("written")).unwrap(), b"w");
        assert!(!m
            .inner
            .snapshots
            .fs_path(&chain[1])
            .unwrap()
            .join("written")
            .exists());
        m.remove_rootfs("ctr").await.unwrap();
        assert!(!upper.exists());
    }

    /// The layers of an image volume outlive RemoveImage for as long as the
    /// container that mounts them lives; an absent image is NotFound.
    #[tokio::test]
    async fn image_mounts_keep_their_layers_until_the_container_goes() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&tmp.path().join("store")).unwrap();
        let store = Arc::new(store);
        let m = ImageManager::open(tmp.path(), store.clone(), &tmp.path().join("c"), "p").unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(4);
        b.append_data(&mut h, "data", &b"data"[..]).unwrap();
        let chain = unpack_layers(&m, tmp.path(), &[b.into_inner().unwrap()]).await;
        let rec = record('v', &["docker.io/library/v:1"], &[chain[0].as_str()]);
        store.put_image(rec.clone()).unwrap();

        let err = m
            .prepare_image_mounts("ctr", &["docker.io/library/absent:1".into()])
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
        let got = m
            .prepare_image_mounts("ctr", &["docker.io/library/v:1".into()])
            .await
            .unwrap();
        let layer = m.inner.snapshots.fs_path(&chain[0]).unwrap();
        assert_eq!(
            got,
            vec![(rec.metadata.id.clone(), vec![layer.display().to_string()])]
        );
        assert!(m.remove("docker.io/library/v:1").await.unwrap());
        assert!(m.resolve(&rec.metadata.id).unwrap().is_none());
        assert!(layer.join("data").is_file(), "kept while mounted");
        m.remove_rootfs("ctr").await.unwrap();
        assert!(!layer.exists(), "collected with the container");
    }

    /// An image of 128 layers: its rootfs mount's options are far over a
    /// page with absolute lower dirs, yet it mounts, the lowest and the
    /// highest layer both visible.
    #[tokio::test]
    async fn rootfs_of_128_layers_mounts() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping rootfs_of_128_layers_mounts: needs root (mount)");
            return;
        }
        const LAYERS: usize = 128;
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&tmp.path().join("store")).unwrap();
        let store = Arc::new(store);
        let m = ImageManager::open(tmp.path(), store.clone(), &tmp.path().join("c"), "p").unwrap();
        let layers: Vec<Vec<u8>> = (0..LAYERS)
            .map(|i| {
                let name = format!("layer{i}");
                layer_tar(&[
                    (name.as_str(), i.to_string().as_bytes()),
                    ("which", i.to_string().as_bytes()),
                ])
            })
            .collect();
        let chain = unpack_layers(&m, tmp.path(), &layers).await;
        let snaps: Vec<&str> = chain.iter().map(String::as_str).collect();
        let rec = record('b', &["docker.io/library/many:1"], &snaps);
        store.put_image(rec.clone()).unwrap();
        let id = "f".repeat(64);
        let mounts = m.prepare_rootfs(&rec.metadata.id, &id).await.unwrap();
        let data = mounts[0].options.join(",");
        let absolute: usize = chain
            .iter()
            .map(|c| m.inner.snapshots.fs_path(c).unwrap().as_os_str().len() + 1)
            .sum();
        assert!(
            absolute > 4096,
            "absolute lower dirs alone take {absolute} bytes"
        );
        let target = tmp.path().join("rootfs");
        std::fs::create_dir(&target).unwrap();
        crius_store::overlay::mount_overlay(&mounts[0].source, &target, 0, &data).unwrap();
        let read = |n: &str| std::fs::read_to_string(target.join(n));
        let (low, high, which) = (read("layer0"), read("layer127"), read("which"));
        let c = std::ffi::CString::new(target.to_str().unwrap()).unwrap();
        // SAFETY: valid path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        assert_eq!(low.unwrap(), "0");
        assert_eq!(high.unwrap(), "127");
        assert_eq!(which.unwrap(), "127", "the topmost layer wins");
        m.remove_rootfs(&id).await.unwrap();
        assert!(!m.inner.dir.join("containers").join(&id).exists());
    }

    #[test]
    fn container_ids() {
        for ok in ["abc", "a-b_c.d", &"f".repeat(64)] {
            assert!(valid_container_id(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "a b",
            &"f".repeat(129),
        ] {
            assert!(!valid_container_id(bad), "{bad}");
        }
    }

    /// Unpacks `layers` (tar bytes, lowest first) as snapshots; their chain ids.
    async fn unpack_layers(m: &ImageManager, tmp: &Path, layers: &[Vec<u8>]) -> Vec<String> {
        let diffs: Vec<String> = layers
            .iter()
            .map(|l| crate::content::digest_of(l))
            .collect();
        let chain = snapshot::chain_ids(&diffs);
        for (i, l) in layers.iter().enumerate() {
            let blob = tmp.join(format!("l{i}"));
            std::fs::write(&blob, l).unwrap();
            m.inner
                .snapshots
                .ensure(&chain[i], blob, &diffs[i])
                .await
                .unwrap();
        }
        chain
    }

    /// Reads an HTTP request head from `conn` (for the fake registries of
    /// these tests); its path, or None if the client went away first.
    async fn request_path(conn: &mut tokio::net::TcpStream) -> Option<String> {
        use tokio::io::AsyncReadExt;
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(&req);
        Some(text.split(' ').nth(1).unwrap_or("").to_string())
    }

    fn record(id_char: char, tags: &[&str], snaps: &[&str]) -> ImageRecord {
        Record::new(
            ImageMetadata {
                id: format!("sha256:{}", id_char.to_string().repeat(64)),
                repo_tags: tags.iter().map(|s| s.to_string()).collect(),
                repo_digests: vec![format!("docker.io/library/x@sha256:{}", "d".repeat(64))],
                snapshots: snaps.iter().map(|s| s.to_string()).collect(),
                config: serde_json::json!({"config": {"User": "7", "Cmd": ["sh"]}}),
                ..Default::default()
            },
            ImageStatus::default(),
        )
    }

    #[tokio::test]
    async fn local_records_rootfs_and_removal() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&tmp.path().join("store")).unwrap();
        let store = Arc::new(store);
        let m = ImageManager::open(
            tmp.path(),
            store.clone(),
            &tmp.path().join("certs.d"),
            "busybox:pause",
        )
        .unwrap();
        // Two snapshots on disk, made by unpacking empty layers.
        let empty_tar = vec![0u8; 1024];
        let diff = crate::content::digest_of(&empty_tar);
        let blob = tmp.path().join("empty.tar");
        std::fs::write(&blob, &empty_tar).unwrap();
        let chain = snapshot::chain_ids(&[diff.clone(), diff.clone()]);
        for c in &chain {
            m.inner
                .snapshots
                .ensure(c, blob.clone(), &diff)
                .await
                .unwrap();
        }
        let snaps: Vec<&str> = chain.iter().map(String::as_str).collect();
        let a = record(
            'a',
            &[
                "docker.io/library/busybox:pause",
                "docker.io/library/busybox:two",
            ],
            &snaps,
        );
        store.put_image(a.clone()).unwrap();

        // Lookups in every form.
        let id = a.metadata.id.clone();
        for r in [
            id.as_str(),
            &id[7..],
            &id[..19],
            "busybox:pause",
            "docker.io/library/busybox:two",
            &a.metadata.repo_digests[0],
        ] {
            assert_eq!(
                m.resolve(r).unwrap().map(|x| x.metadata.id),
                Some(id.clone()),
                "{r}"
            );
        }
        assert_eq!(m.resolve("busybox:other").unwrap(), None);
        assert!(m.resolve("Bad Ref").is_err());
        assert!(m.is_pinned(&a));
        assert_eq!(m.image_config(&id).unwrap().config.user, "7");

        // A container rootfs keeps the snapshots alive after image removal.
        let mounts = m.prepare_rootfs(&id, "c1").await.unwrap();
        assert_eq!(mounts.len(), 1);
        // Short links, topmost first, to the snapshots.
        let links = m.inner.dir.join("containers/c1/l");
        let lower = format!(
            "lowerdir={}:{}",
            links.join("0").display(),
            links.join("1").display()
        );
        assert_eq!(mounts[0].options[0], lower);
        for (n, c) in [(0, &chain[1]), (1, &chain[0])] {
            assert_eq!(
                std::fs::read_link(links.join(n.to_string())).unwrap(),
                m.inner.snapshots.fs_path(c).unwrap()
            );
        }
        assert!(m.inner.dir.join("containers/c1/upper").is_dir());
        // What the container wrote, nested.
        let deep = m.inner.dir.join("containers/c1/upper/a/b/c");
        std::fs::create_dir_all(&deep).unwrap();
        for n in 0..50 {
            std::fs::write(deep.join(n.to_string()), b"x").unwrap();
        }
        assert_eq!(
            m.prepare_rootfs(&id, "c1").await.unwrap(),
            mounts,
            "idempotent"
        );
        assert!(m.prepare_rootfs(&id, "../escape").await.is_err());

        // Removing one of two tags keeps the image.
        assert!(m.remove("busybox:two").await.unwrap());
        let left = m.resolve(&id).unwrap().unwrap();
        assert_eq!(
            left.metadata.repo_tags,
            vec!["docker.io/library/busybox:pause"]
        );
        // Removing the last tag removes the image; snapshots stay for c1.
        assert!(m.remove("busybox:pause").await.unwrap());
        assert!(m.resolve(&id).unwrap().is_none());
        assert!(!m.remove(&id).await.unwrap(), "absent image: nothing to do");
        assert_eq!(m.inner.snapshots.list().unwrap().len(), 2);
        m.remove_rootfs("c1").await.unwrap();
        // Gone from its place at once; deleted from the trash after.
        assert!(!m.inner.dir.join("containers/c1").exists());
        m.remove_rootfs("c1").await.unwrap();
        assert!(m.inner.snapshots.list().unwrap().is_empty());
        assert!(m.wait_trash_swept(Duration::from_secs(20)).await.unwrap());
        assert_eq!(m.inner.trash.entries().unwrap(), Vec::<String>::new());

        let u = m.fs_info().await.unwrap();
        assert!(u.inodes_used >= 4, "{u:?}");
        assert!(u.used_bytes > 0);
    }

    #[tokio::test]
    async fn collection_goes_on_after_a_failure() {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&tmp.path().join("store")).unwrap();
        let m =
            ImageManager::open(tmp.path(), Arc::new(store), &tmp.path().join("c"), "p").unwrap();
        let empty_tar = vec![0u8; 1024];
        let diff = crate::content::digest_of(&empty_tar);
        let blob = tmp.path().join("empty.tar");
        std::fs::write(&blob, &empty_tar).unwrap();
        let chain = snapshot::chain_ids(&[diff.clone(), diff.clone(), diff.clone()]);
        for c in &chain {
            m.inner
                .snapshots
                .ensure(c, blob.clone(), &diff)
                .await
                .unwrap();
        }
        // The middle snapshot cannot be removed; no image uses any of them.
        let stuck = m.inner.snapshots.fs_path(&chain[1]).unwrap();
        let undo = crate::snapshot::tests::unremovable(&stuck);
        m.garbage_collect()
            .await
            .expect("one failure does not fail the pass");
        assert!(
            m.inner.snapshots.list().unwrap().is_empty(),
            "the others went"
        );
        let leftovers = || m.inner.trash.entries().unwrap();
        assert!(m.wait_trash_swept(Duration::from_secs(20)).await.unwrap());
        let left = leftovers();
        assert_eq!(left.len(), 1, "the stuck one is left in the trash");
        assert!(left[0].starts_with("snapshot-"), "{left:?}");
        undo(&m.inner.trash.dir().join(&left[0]).join("fs"));
        m.garbage_collect().await.unwrap();
        assert!(m.wait_trash_swept(Duration::from_secs(20)).await.unwrap());
        assert!(leftovers().is_empty(), "and removed by the next pass");
    }

    /// A registry on 127.0.0.1 that serves fixed manifests by path and
    /// records every request.
    async fn fake_registry(
        routes: Vec<(String, &'static str, String)>,
    ) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let (routes, log) = (routes.clone(), log.clone());
                tokio::spawn(async move {
                    let Some(path) = request_path(&mut conn).await else {
                        return;
                    };
                    log.lock().unwrap().push(path.clone());
                    let resp = match routes.iter().find(|(p, _, _)| *p == path) {
                        Some((_, ct, body)) => format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                        None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
                    };
                    let _ = conn.write_all(resp.as_bytes()).await;
                });
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn oversized_config_and_manifest_descriptors_are_refused_before_fetching() {
        let big = manifest::MAX_CONFIG_SIZE + 1;
        let cfg = format!("sha256:{}", "c".repeat(64));
        let man = format!("sha256:{}", "e".repeat(64));
        let image = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{cfg}","size":{big}}},"layers":[]}}"#,
            manifest::OCI_MANIFEST,
            manifest::OCI_CONFIG
        );
        let platform = serde_json::to_string(&Platform::host()).unwrap();
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","digest":"{man}","size":{big},"platform":{platform}}}]}}"#,
            manifest::OCI_INDEX,
            manifest::OCI_MANIFEST
        );
        let (addr, seen) = fake_registry(vec![
            ("/v2/cfg/manifests/t".into(), manifest::OCI_MANIFEST, image),
            ("/v2/idx/manifests/t".into(), manifest::OCI_INDEX, index),
        ])
        .await;
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&tmp.path().join("store")).unwrap();
        let m =
            ImageManager::open(tmp.path(), Arc::new(store), &tmp.path().join("c"), "p").unwrap();

        let err = m.pull(&format!("{addr}/cfg:t"), None).await.unwrap_err();
        match &err {
            ImageError::Manifest(ManifestError::TooLarge {
                what,
                digest,
                size,
                limit,
            }) => {
                assert_eq!((*what, digest.as_str()), ("image config", cfg.as_str()));
                assert_eq!((*size, *limit), (big, 4 << 20));
            }
            other => panic!("{other:?}"),
        }
        assert!(err.to_string().contains(&cfg), "{err}");
        let err = m.pull(&format!("{addr}/idx:t"), None).await.unwrap_err();
        assert!(
            matches!(
                &err,
                ImageError::Manifest(ManifestError::TooLarge { what: "image manifest", digest, .. }) if *digest == man
            ),
            "{err:?}"
        );
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec!["/v2/cfg/manifests/t", "/v2/idx/manifests/t"],
            "nothing was fetched for the oversized descriptors"
        );
    }

    /// A test registry on 127.0.0.1 serving blobs and manifests by path;
    /// a route may stop after some bytes until its gate gets a permit
    /// (forever without a gate).
    struct Route {
        path: String,
        content_type: &'static str,
        body: Vec<u8>,
        stall_after: Option<usize>,
        gate: Option<Arc<tokio::sync::Semaphore>>,
    }

    fn route(path: String, content_type: &'static str, body: Vec<u8>) -> Route {
        Route {
            path,
            content_type,
            body,
            stall_after: None,
            gate: None,
        }
    }

    async fn serve(routes: Vec<Route>) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (log, routes) = (seen.clone(), Arc::new(routes));
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (routes, log) = (routes.clone(), log.clone());
                tokio::spawn(async move {
                    let Some(path) = request_path(&mut conn).await else {
                        return;
                    };
                    log.lock().unwrap().push(path.clone());
                    let Some(r) = routes.iter().find(|r| r.path == path) else {
                        let _ = conn
                            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                            .await;
                        return;
                    };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        r.content_type,
                        r.body.len()
                    );
                    if conn.write_all(head.as_bytes()).await.is_err() {
                        return;
                    }
                    let cut = r.stall_after.unwrap_or(r.body.len()).min(r.body.len());
                    if conn.write_all(&r.body[..cut]).await.is_err() || conn.flush().await.is_err()
                    {
                        return;
                    }
                    if cut < r.body.len() {
                        match &r.gate {
                            Some(g) => {
                                let _ = g.acquire().await.map(|p| p.forget());
                            }
                            None => std::future::pending::<()>().await,
                        }
                        let _ = conn.write_all(&r.body[cut..]).await;
                    }
                });
            }
        });
        (addr, seen)
    }

    fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// The routes of image `repo:t` made of `layers` (uncompressed tars);
    /// returns them with the digests of the manifest, config and layers.
    fn image_routes(repo: &str, layers: &[Vec<u8>]) -> (Vec<Route>, Vec<String>) {
        let digests: Vec<String> = layers
            .iter()
            .map(|l| crate::content::digest_of(l))
            .collect();
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": digests},
        });
        let config = serde_json::to_vec(&config).unwrap();
        let cfg_digest = crate::content::digest_of(&config);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_MANIFEST,
            "config": {"mediaType": manifest::OCI_CONFIG, "digest": cfg_digest, "size": config.len()},
            "layers": layers.iter().zip(&digests).map(|(l, d)| serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": d,
                "size": l.len(),
            })).collect::<Vec<_>>(),
        });
        let manifest = serde_json::to_vec(&manifest).unwrap();
        let man_digest = crate::content::digest_of(&manifest);
        let mut routes = vec![
            route(
                format!("/v2/{repo}/manifests/t"),
                manifest::OCI_MANIFEST,
                manifest,
            ),
            route(
                format!("/v2/{repo}/blobs/{cfg_digest}"),
                manifest::OCI_CONFIG,
                config,
            ),
        ];
        for (l, d) in layers.iter().zip(&digests) {
            routes.push(route(
                format!("/v2/{repo}/blobs/{d}"),
                "application/octet-stream",
                l.clone(),
            ));
        }
        let mut all = vec![man_digest, cfg_digest];
        all.extend(digests);
        (routes, all)
    }

    fn open_with_timeout(tmp: &Path, timeout: Option<Duration>) -> ImageManager {
        open_with_options(
            tmp,
            ImageOptions {
                pull_progress_timeout: timeout,
                ..Default::default()
            },
        )
    }

    fn open_with_options(tmp: &Path, options: ImageOptions) -> ImageManager {
        let (store, _) = Store::open(&tmp.join("store")).unwrap();
        ImageManager::open_with(tmp, Arc::new(store), &tmp.join("certs.d"), "p", options).unwrap()
    }

    /// Pinned: the pause image, and images with a tag or digest matching a
    /// pattern; a flag recorded earlier does not outlive its pattern.
    #[test]
    fn pinned_by_pause_image_and_patterns() {
        let tmp = tempfile::tempdir().unwrap();
        let patterns = ["busybox:1.36".to_string(), "quay.io/team/*".to_string()];
        let m = open_with_options(
            tmp.path(),
            ImageOptions {
                pinned: crate::pinning::Pinned::new(&patterns).unwrap(),
                ..Default::default()
            },
        );
        let mut stale = record('c', &["docker.io/library/other:1"], &[]);
        stale.status.pinned = true;
        let mut by_digest = record('d', &[], &[]);
        by_digest.metadata.repo_digests =
            vec![format!("quay.io/team/app@sha256:{}", "d".repeat(64))];
        // (record, pinned)
        let cases = [
            (record('a', &["docker.io/library/p:latest"], &[]), true),
            (
                record('b', &["x.io/a:1", "docker.io/library/busybox:1.36"], &[]),
                true,
            ),
            (record('e', &["docker.io/library/busybox:1.37"], &[]), false),
            (by_digest, true),
            (stale, false),
        ];
        for (rec, want) in cases {
            assert_eq!(m.is_pinned(&rec), want, "{:?}", rec.metadata.repo_tags);
        }
    }

    /// `max_concurrent_downloads` bounds the layers one pull has in flight.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn layer_downloads_are_bounded() {
        for limit in [1usize, 2] {
            let layers: Vec<Vec<u8>> = (0..4)
                .map(|i| layer_tar(&[(format!("f{i}").as_str(), &[i as u8; 2048])]))
                .collect();
            let repo = format!("many{limit}");
            let (mut routes, digests) = image_routes(&repo, &layers);
            let gate = Arc::new(tokio::sync::Semaphore::new(0));
            for r in &mut routes[2..] {
                r.stall_after = Some(10);
                r.gate = Some(gate.clone());
            }
            let (addr, seen) = serve(routes).await;
            let tmp = tempfile::tempdir().unwrap();
            let m = open_with_options(
                tmp.path(),
                ImageOptions {
                    max_concurrent_downloads: limit,
                    ..Default::default()
                },
            );
            let pulling = {
                let (m, r) = (m.clone(), format!("{addr}/{repo}:t"));
                tokio::spawn(async move { m.pull(&r, None).await })
            };
            let layer_requests = || {
                let seen = seen.lock().unwrap();
                digests[2..]
                    .iter()
                    .filter(|d| seen.iter().any(|p| p.ends_with(d.as_str())))
                    .count()
            };
            wait_for("the first layer requests", || layer_requests() >= limit).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(layer_requests(), limit, "layers in flight at once");
            gate.add_permits(layers.len());
            let rec = tokio::time::timeout(Duration::from_secs(20), pulling)
                .await
                .expect("the pull finishes")
                .unwrap()
                .unwrap();
            assert_eq!(rec.metadata.id, digests[1]);
            assert_eq!(layer_requests(), layers.len());
        }
    }

    fn leftovers(m: &ImageManager) -> (Vec<String>, Vec<String>, Vec<String>) {
        let names = |d: PathBuf| -> Vec<String> {
            std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        };
        (
            names(m.inner.dir.join("content/ingest")),
            m.inner.content.list().unwrap(),
            names(m.inner.dir.join("snapshots")),
        )
    }

    async fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A registry that stops sending fails the pull after the progress
    /// timeout, with a clear DeadlineExceeded error, and the pull leaves no
    /// partial blob, no content, no snapshot and no lease behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stalled_pull_times_out_and_leaves_nothing() {
        let base = layer_tar(&[("base", b"0")]);
        let big = layer_tar(&[("big", &[7u8; 64 << 10])]);
        let (mut routes, digests) = image_routes("stall", &[base, big]);
        routes[3].stall_after = Some(1000);
        // A manifest that stops half-way, too.
        let (mut more, _) = image_routes("stallman", &[layer_tar(&[("x", b"x")])]);
        more[0].stall_after = Some(10);
        routes.extend(more);
        let (addr, seen) = serve(routes).await;
        let tmp = tempfile::tempdir().unwrap();
        let m = open_with_timeout(tmp.path(), Some(Duration::from_millis(500)));

        let started = std::time::Instant::now();
        let err = m.pull(&format!("{addr}/stall:t"), None).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10), "{err}");
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("stalled")
                && msg.contains(&digests[3])
                && msg.contains("pull_progress_timeout"),
            "{msg}"
        );
        assert!(seen
            .lock()
            .unwrap()
            .iter()
            .any(|p| p.ends_with(&digests[3])));
        assert!(m.resolve(&format!("{addr}/stall:t")).unwrap().is_none());
        // The unpack of the first layer may still be finishing.
        wait_for("no unpack in progress", || {
            m.inner.snapshots.unpacks_in_progress() == 0
        })
        .await;
        m.garbage_collect().await.unwrap();
        assert_eq!(
            leftovers(&m),
            (vec![], vec![], vec![]),
            "no partial blob, content or snapshot"
        );
        assert_eq!(*m.inner.leases.counts(), LeaseCounts::default());

        let err = m
            .pull(&format!("{addr}/stallman:t"), None)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::DeadlineExceeded, "{err:?}");
        assert!(matches!(err, ImageError::Stalled { .. }), "{err:?}");
        assert!(err.to_string().contains("the manifest of"), "{err}");
        assert_eq!(leftovers(&m), (vec![], vec![], vec![]));
        assert_eq!(*m.inner.leases.counts(), LeaseCounts::default());
    }

    /// While a pull waits on a registry that stopped sending, removing
    /// another image, collecting garbage and preparing and removing a
    /// container's rootfs all complete at once; and content the pull has
    /// fetched (or is fetching) survives a collection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_pull_holds_up_nothing_and_keeps_its_content() {
        let base = layer_tar(&[("base", b"0")]);
        let top = layer_tar(&[("top", &[1u8; 32 << 10])]);
        let (mut routes, digests) = image_routes("slow", &[base.clone(), top.clone()]);
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        routes[3].stall_after = Some(100);
        routes[3].gate = Some(gate.clone());
        let (addr, seen) = serve(routes).await;
        let tmp = tempfile::tempdir().unwrap();
        // No progress timeout: the pull waits as long as the gate is shut.
        let m = open_with_timeout(tmp.path(), None);

        // A local image with a snapshot, to remove and to run.
        let empty_tar = vec![0u8; 1024];
        let diff = crate::content::digest_of(&empty_tar);
        let blob = tmp.path().join("empty.tar");
        std::fs::write(&blob, &empty_tar).unwrap();
        let other_chain = snapshot::chain_ids(std::slice::from_ref(&diff));
        m.inner
            .snapshots
            .ensure(&other_chain[0], blob, &diff)
            .await
            .unwrap();
        let other = record(
            'a',
            &["docker.io/library/other:1", "docker.io/library/other:2"],
            &[&other_chain[0]],
        );
        m.inner.store.put_image(other.clone()).unwrap();

        let pulling = {
            let (m, r) = (m.clone(), format!("{addr}/slow:t"));
            tokio::spawn(async move { m.pull(&r, None).await })
        };
        let chain = snapshot::chain_ids(&digests[2..]);
        wait_for("the stalled blob request and the lower layer", || {
            seen.lock()
                .unwrap()
                .iter()
                .any(|p| p.ends_with(&digests[3]))
                && m.inner.snapshots.exists(&chain[0])
        })
        .await;

        fn t<F: std::future::Future>(f: F) -> tokio::time::Timeout<F> {
            tokio::time::timeout(Duration::from_secs(5), f)
        }
        t(m.garbage_collect())
            .await
            .expect("GC is not held up")
            .unwrap();
        // What the pull fetched so far is still there.
        let content = m.inner.content.list().unwrap();
        for d in &digests[..3] {
            assert!(content.contains(d), "{d} collected: {content:?}");
        }
        assert!(
            m.inner.snapshots.exists(&chain[0]),
            "the lower layer's snapshot was collected"
        );
        // A queued removal and container rootfs operations, all at once.
        let (a, b, c) = tokio::join!(
            t(m.remove("other:2")),
            t(m.prepare_rootfs(&other.metadata.id, "c1")),
            t(m.garbage_collect()),
        );
        assert!(a.expect("RemoveImage is not held up").unwrap());
        c.expect("GC is not held up").unwrap();
        let mounts = b.expect("rootfs preparation is not held up").unwrap();
        assert_eq!(mounts.len(), 1);
        t(m.remove_rootfs("c1"))
            .await
            .expect("not held up")
            .unwrap();
        assert!(t(m.remove("other:1")).await.expect("not held up").unwrap());
        assert!(
            !m.inner.snapshots.exists(&other_chain[0]),
            "the other image's snapshot went"
        );
        assert!(!pulling.is_finished());

        // The registry goes on: the pull completes with everything it kept.
        gate.add_permits(1);
        let rec = tokio::time::timeout(Duration::from_secs(20), pulling)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(rec.metadata.snapshots, chain);
        assert_eq!(*m.inner.leases.counts(), LeaseCounts::default());
        m.garbage_collect().await.unwrap();
        let mounts = m.prepare_rootfs(&rec.metadata.id, "c2").await.unwrap();
        assert!(mounts[0].options[0].starts_with("lowerdir="));
        m.remove_rootfs("c2").await.unwrap();
        let content = m.inner.content.list().unwrap();
        for d in &digests {
            assert!(
                content.contains(d),
                "{d} collected after the pull: {content:?}"
            );
        }
    }
}
