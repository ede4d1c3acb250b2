//! crius-store: persistent metadata of pod sandboxes, containers and images
//! for the crius CRI daemon.
//!
//! The store knows nothing about gRPC or the CRI protobuf types: CRI configs
//! are carried as opaque [`serde_json::Value`]s. Records are persisted as
//! checksummed JSON envelopes written atomically (see [`persist`]); files
//! that fail to load at start-up are quarantined and reported, never fatal.
//!
//! ```no_run
//! use crius_store::{generate_id, Record, SandboxMetadata, SandboxStatus, Store};
//!
//! let (store, report) = Store::open("/var/lib/crius".as_ref())?;
//! for (path, reason) in &report.quarantined {
//!     eprintln!("quarantined {}: {reason}", path.display());
//! }
//! let id = generate_id();
//! store.reserve_name("k8s_POD_web_default_uid_0", &id)?;
//! store.add_sandbox(Record::new(
//!     SandboxMetadata {
//!         id: id.clone(),
//!         name: "k8s_POD_web_default_uid_0".into(),
//!         ..Default::default()
//!     },
//!     SandboxStatus::default(),
//! ))?;
//! let sandbox = store.get_sandbox(&id[..12])?;
//! # Ok::<(), crius_store::StoreError>(())
//! ```

pub mod ids;
pub mod model;
pub mod names;
pub mod overlay;
pub mod persist;
pub mod private;
pub mod store;

pub use ids::{generate_id, is_valid_id, IdError, IdIndex};
pub use model::{
    ContainerMetadata, ContainerRecord, ContainerState, ContainerStatus, ContainerUser,
    ImageMetadata, ImageRecord, ImageStatus, Phase, Record, RecordKind, SandboxMetadata,
    SandboxRecord, SandboxState, SandboxStatus,
};
pub use names::{NameError, NameIndex};
pub use persist::{LoadReport, PersistError};
pub use store::{Store, StoreError};
