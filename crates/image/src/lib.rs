//! crius images: registry pulls, a content-addressed blob store, layer
//! snapshots unpacked safely, and the root filesystems of containers.
//!
//! # Layout on disk (`<root>/images/`)
//! - `content/sha256/<hex>`: blobs (manifests, configs, compressed layers),
//!   written through `content/ingest/` and verified before they appear.
//! - `snapshots/<chain hex>/fs`: one unpacked layer per chain id, shared by
//!   every image with that layer stack; OCI whiteouts are overlayfs
//!   whiteouts there.
//! - `containers/<id>/{upper,work,rootfs.json}`: a container's writable
//!   layer and the snapshots it uses.
//! - `trash/`: snapshots, blobs and unfinished unpacks that garbage
//!   collection (RemoveImage) renamed out of the way, deleted in the
//!   background ([`trash`]); emptied at start-up too.
//!
//! Image records (tags, digests, size, config, blobs and snapshots used)
//! live in the [`crius_store::Store`] and survive restarts.
//!
//! # API
//! ```no_run
//! # async fn demo(store: std::sync::Arc<crius_store::Store>) -> Result<(), crius_image::ImageError> {
//! use crius_image::{Auth, ImageManager};
//! use std::path::Path;
//! let images = ImageManager::open(
//!     Path::new("/var/lib/crius"),      // images live under <root>/images
//!     store,
//!     Path::new("/etc/crius/certs.d"),  // containerd-style hosts.toml dirs
//!     "registry.k8s.io/pause:3.10",     // reported as pinned
//! )?;
//! let image = images.pull("busybox:1.36", None::<Auth>).await?;      // ImageRecord
//! let same = images.resolve("busybox:1.36")?;                         // by id, tag or digest
//! let config = images.image_config(&image.metadata.id)?;               // User, Env, Cmd...
//! let mounts = images.prepare_rootfs(&image.metadata.id, "ctr1").await?; // overlay for the shim
//! images.remove_rootfs("ctr1").await?;
//! images.remove("busybox:1.36").await?;
//! let usage = images.fs_info().await?;
//! # let _ = (same, config, mounts, usage); Ok(()) }
//! ```
//!
//! # Limits (hostile publishers)
//! - manifests, indexes and configs: 4 MiB ([`manifest::MAX_MANIFEST_SIZE`],
//!   [`manifest::MAX_CONFIG_SIZE`]), refused by descriptor before fetching;
//! - layer tar extension headers (GNU long name/link, PAX): 1 MiB
//!   ([`unpack::MAX_SPECIAL_HEADER_SIZE`]), checked before the header is
//!   read; GNU sparse extension headers: 2048 per entry;
//! - skipped entries: counted per reason ([`unpack::Skipped`]);
//! - removal of snapshots and writable layers: any depth with at most
//!   [`tree::MAX_OPEN_DIRS`] directories open ([`tree::remove_tree`]);
//!   leftovers that cannot be removed are warnings, retried by every
//!   garbage collection, which never stops at one failure;
//! - image records: the store's 16 MiB record limit, checked on write.
//!
//! Errors carry an [`ErrorKind`] (`ImageError::kind`) for mapping onto RPC
//! status codes.

pub mod auth_file;
pub mod content;
pub mod hosts;
pub mod manager;
pub mod manifest;
pub mod pinning;
pub mod reference;
pub mod registry;
pub mod snapshot;
pub mod trash;
pub mod tree;
pub mod unpack;
pub mod usage;

pub use manager::{
    ErrorKind, FsUsage, ImageError, ImageManager, ImageOptions, Mount,
    DEFAULT_MAX_CONCURRENT_DOWNLOADS, DEFAULT_PULL_PROGRESS_TIMEOUT,
};
pub use manifest::{ImageConfig, Platform, RuntimeConfig};
pub use reference::{Reference, ReferenceError};
pub use registry::Auth;
