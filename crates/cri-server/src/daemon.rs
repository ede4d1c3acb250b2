//! The daemon's shared state, handed to every RPC handler.

use crate::config::Config;
use crius_image::ImageManager;
use crius_store::Store;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use std::sync::{Arc, Mutex};

use crate::domain::sandbox::network::{HostNet, PodNet};
use crate::shimclient::{RealShims, Shim, ShimHost, ShimLaunch};

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
    /// The running configuration: a SIGHUP reload replaces it (see
    /// `reload`); read it through [`Daemon::config`].
    config: std::sync::RwLock<Arc<Config>>,
    /// Runtime handlers a reload dropped, kept for the pods still on them.
    retired_handlers: Mutex<std::collections::BTreeMap<String, crate::config::RuntimeHandler>>,
    /// Where criusd keeps what, below `root` and `state`.
    pub paths: crate::paths::Paths,
    /// Records of sandboxes, containers and images.
    pub store: Arc<Store>,
    /// The runtime configuration kubelet pushed, persisted in the store.
    pub runtime_config: Mutex<RuntimeConfigState>,
    /// Images: pulls, records, container root filesystems.
    pub images: ImageManager,
    /// Facts about the host that shape specs.
    pub host: crius_spec::HostFacts,
    /// Connections to the pods' shims, by sandbox id.
    pub shims: tokio::sync::Mutex<HashMap<String, Shim>>,
    /// How shims are connected to and launched.
    pub shim_host: Arc<dyn ShimHost>,
    /// The pods' network namespaces and CNI.
    pub net: Arc<dyn PodNet>,
    /// One lock per sandbox or container id, serialising lifecycle calls.
    pub locks: KeyedLocks,
    /// Prometheus metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Creations run detached from their callers, and finished objects
    /// waiting to be handed back to a retry.
    pub handback: crate::domain::handback::Handback,
    /// Container lifecycle events for `GetContainerEvents` subscribers.
    pub events: tokio::sync::broadcast::Sender<k8s_cri::v1::ContainerEventResponse>,
    /// Woken whenever a container's exit has been recorded (StopContainer
    /// waits on it instead of polling the store).
    pub exited: tokio::sync::Notify,
    /// CreateContainer's start-up phases of containers not started yet:
    /// StartContainer stores them with its own, in its one store write.
    pub create_phases: Mutex<HashMap<String, Vec<crius_store::Phase>>>,
    /// Moves newly launched shims into systemd scopes of their own (the
    /// systemd cgroup driver under systemd; off otherwise).
    pub shim_scopes: Arc<crate::shimscope::ShimScopes>,
    /// CPU readings of cgroups between stats calls (`usage_nano_cores`).
    pub stats_sampler: crate::domain::stats::CpuSampler,
    /// NRI, once listening (`[nri] enable`).
    pub nri: std::sync::OnceLock<Arc<crius_nri::runtime::Nri>>,
    /// Starts the kernel's wait of a cgroup move before the runtime moves
    /// a process (off unless made by [`Daemon::new`] on a host that waits).
    pub cgroup_primer: crate::cgroup_primer::Primer,
}

/// How many container events a slow `GetContainerEvents` subscriber may
/// fall behind before it misses some.
pub const EVENT_BUFFER: usize = 1024;

/// Per-key async locks (entries are dropped when nobody holds them).
#[derive(Default)]
pub struct KeyedLocks {
    map: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    /// Locks `key` until the guard is dropped.
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, v| Arc::strong_count(v) > 1);
            map.entry(key.to_string()).or_default().clone()
        };
        m.lock_owned().await
    }
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
    /// The metrics cannot be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl Daemon {
    /// The host facts for a spec of a pod on `handler` ("" for the default
    /// one): the AppArmor profiles loaded now (a Localhost profile must be),
    /// the node's hostname now, and the handler's annotation allow-lists and
    /// `privileged_without_host_devices`.
    pub fn host_for(&self, handler: &str) -> crius_spec::HostFacts {
        let mut host =
            crate::apparmor::refresh(&self.host, std::path::Path::new("/sys")).into_owned();
        if let (_, Some(h)) = self.handler(handler) {
            host.pod_annotations = h.pod_annotations;
            host.container_annotations = h.container_annotations;
            host.privileged_without_host_devices = h.privileged_without_host_devices;
        }
        host.hostname = crate::host::node_hostname();
        host
    }

    /// The pod network as configured now (the conf dir is read at each
    /// call, so a network installed after start-up is found).
    pub fn cni_network(&self) -> Result<crius_netns::cni::CniNetwork, crius_netns::cni::CniError> {
        let config = self.config();
        let c = &config.cni;
        crius_netns::cni::CniNetwork::load(
            &c.conf_dir,
            &c.bin_dirs,
            &config.root.join("cni-cache"),
            c.builtin_loopback,
        )
    }

    /// The running configuration. A reload may replace it at any time: an
    /// operation that reads several keys takes it once and keeps the `Arc`.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces the running configuration (a reload; only the keys
    /// `reload::RELOADABLE` names may differ from the running ones). A
    /// runtime handler the new configuration drops is retired: new pods
    /// cannot use it, the pods running on it keep finding it.
    pub fn set_config(&self, config: Config) {
        let mut slot = self
            .config
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut retired = self
            .retired_handlers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (name, h) in &slot.runtimes {
            if !config.runtimes.contains_key(name) {
                retired.insert(name.clone(), h.clone());
            }
        }
        for name in config.runtimes.keys() {
            retired.remove(name);
        }
        *slot = Arc::new(config);
    }

    /// A runtime handler by name ("" for the default one): its resolved
    /// name and its settings, from the running configuration or, for pods
    /// created before a reload dropped it, from the retired handlers.
    pub fn handler(&self, name: &str) -> (String, Option<crate::config::RuntimeHandler>) {
        let config = self.config();
        let name = match name {
            "" => config.default_runtime.clone(),
            n => n.to_string(),
        };
        let found = config.runtimes.get(&name).cloned().or_else(|| {
            self.retired_handlers
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .get(&name)
                .cloned()
        });
        (name, found)
    }

    /// Builds the daemon state over an opened store.
    pub fn new(config: Config, store: Store) -> Result<Self, DaemonError> {
        let host = crate::host::gather(&config);
        // Once, at start-up: can pods have user namespaces here?
        let _ = crate::domain::userns::kernel_probe_with(&config.state, &config.shim_path);
        let cgroups = crate::cgroup_primer::cgroup_mounts(
            &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
        );
        crate::host::log_start_costs(&cgroups);
        let mut daemon =
            Self::with_seams(config, store, host, Arc::new(RealShims), Arc::new(HostNet))?;
        daemon.cgroup_primer =
            crate::cgroup_primer::Primer::for_host(cgroups, daemon.metrics.cgroup_primes.clone());
        Ok(daemon)
    }

    /// [`Daemon::new`] with the given host facts, shims and pod network
    /// (fakes in unit tests).
    pub fn with_seams(
        config: Config,
        store: Store,
        host: crius_spec::HostFacts,
        shim_host: Arc<dyn ShimHost>,
        net: Arc<dyn PodNet>,
    ) -> Result<Self, DaemonError> {
        let runtime_config = store
            .get_state::<RuntimeConfigState>(RUNTIME_CONFIG_KEY)?
            .unwrap_or_default();
        let store = Arc::new(store);
        let images = ImageManager::open_with(
            &config.root,
            store.clone(),
            &config.registry.config_path,
            &config.pause_image,
            config.image_options(),
        )?;
        let handback = crate::domain::handback::Handback::new(
            config
                .handback_expiry()
                .unwrap_or(crate::domain::handback::DEFAULT_EXPIRY),
        );
        let shim_scopes = Arc::new(crate::shimscope::ShimScopes::from_config(&config));
        Ok(Daemon {
            paths: crate::paths::Paths::new(&config.root, &config.state),
            host,
            config: std::sync::RwLock::new(Arc::new(config)),
            retired_handlers: Mutex::default(),
            store,
            runtime_config: Mutex::new(runtime_config),
            images,
            shims: tokio::sync::Mutex::new(HashMap::new()),
            shim_host,
            net,
            locks: KeyedLocks::default(),
            metrics: Arc::new(crate::metrics::Metrics::new()?),
            handback,
            events: tokio::sync::broadcast::channel(EVENT_BUFFER).0,
            exited: tokio::sync::Notify::new(),
            create_phases: Mutex::new(HashMap::new()),
            shim_scopes,
            stats_sampler: Default::default(),
            nri: std::sync::OnceLock::new(),
            cgroup_primer: crate::cgroup_primer::Primer::off(),
        })
    }

    /// Where the shims' sockets and private directories are (below
    /// `state`).
    pub fn shim_layout(&self) -> crate::shimclient::Layout {
        crate::shimclient::Layout::under(&self.config().state)
    }

    /// The shim's own private directory of a pod (netns, IPC/UTS pins, shm).
    pub fn shim_pod_dir(&self, id: &str) -> crate::shimclient::PodDir {
        self.shim_layout().pod_dir(crate::shimclient::NAMESPACE, id)
    }

    /// How shims are launched.
    pub fn launcher(&self) -> Result<Arc<dyn ShimLaunch>, crate::shimclient::ShimError> {
        self.shim_host.launcher(&self.config())
    }

    /// The connection to a pod's shim: cached, else made from the address
    /// recorded in the store.
    pub async fn shim(&self, sandbox_id: &str) -> Option<Shim> {
        let mut shims = self.shims.lock().await;
        if let Some(c) = shims.get(sandbox_id) {
            return Some(c.clone());
        }
        let address = self
            .store
            .get_sandbox(sandbox_id)
            .ok()?
            .status
            .shim_address?;
        let client = self.shim_host.connect(&address).await.ok()?;
        shims.insert(sandbox_id.to_string(), client.clone());
        Some(client)
    }

    /// The recorded pod CIDR.
    pub fn pod_cidr(&self) -> String {
        self.runtime_config
            .lock()
            .map(|s| s.pod_cidr.clone())
            .unwrap_or_default()
    }
}
