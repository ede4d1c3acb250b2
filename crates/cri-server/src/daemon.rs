//! The daemon's shared state, handed to every RPC handler.

use crate::config::Config;
use crius_image::ImageManager;
use crius_store::Store;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// Store key of the runtime configuration that kubelet pushes.
pub const RUNTIME_CONFIG_KEY: &str = "runtime-config";

/// What `UpdateRuntimeConfig` recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuntimeConfigState {
    /// The node's pod CIDR(s), comma separated as kubelet sends them.
    #[serde(default)]
    pub pod_cidr: String,
}

/// State shared by all handlers.
pub struct Daemon {
    /// The effective configuration.
    pub config: Arc<Config>,
    /// Records of sandboxes, containers and images.
    pub store: Arc<Store>,
    /// The runtime configuration kubelet pushed, persisted in the store.
    pub runtime_config: Mutex<RuntimeConfigState>,
    /// Images: pulls, records, container root filesystems.
    pub images: ImageManager,
}

/// Errors of building the daemon state.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The store cannot be read.
    #[error(transparent)]
    Store(#[from] crius_store::StoreError),
    /// The image data cannot be opened.
    #[error(transparent)]
    Images(#[from] crius_image::ImageError),
}

impl Daemon {
    /// Builds the daemon state over an opened store.
    pub fn new(config: Config, store: Store) -> Result<Self, DaemonError> {
        let runtime_config = store
            .get_state::<RuntimeConfigState>(RUNTIME_CONFIG_KEY)?
            .unwrap_or_default();
        let store = Arc::new(store);
        let images = ImageManager::open(
            &config.root,
            store.clone(),
            &config.registry.config_path,
            &config.pause_image,
        )?;
        Ok(Daemon {
            config: Arc::new(config),
            store,
            runtime_config: Mutex::new(runtime_config),
            images,
        })
    }

    /// The recorded pod CIDR.
    pub fn pod_cidr(&self) -> String {
        self.runtime_config
            .lock()
            .map(|s| s.pod_cidr.clone())
            .unwrap_or_default()
    }
}
