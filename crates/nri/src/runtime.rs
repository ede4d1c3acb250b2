//! The runtime side of NRI: listens on the NRI socket, registers the
//! plugins that connect, configures and synchronizes them, and calls the
//! subscribed ones, in index order, when a container is created.
//!
//! A plugin that answers late or disconnects is dropped (and logged); no
//! call waits longer than the request timeout. With no plugin connected,
//! [`Nri::has_plugins`] is one atomic load, so callers skip NRI entirely on
//! their hot path. The other events are in [`events`]; plugins' container
//! updates and evictions go to the runtime through [`StateSource`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ttrpc::asynchronous::transport::{Listener, Socket};
use ttrpc::asynchronous::{Client, Server, TtrpcContext};

use crate::api;
use crate::api_ttrpc;
use crate::mux::{self, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN};

mod prestart;
pub use prestart::{
    check_plugin_name, config_candidates, discover, launch_env, parse_plugin_file_name,
    read_plugin_config, Discovered, MAX_PLUGIN_CONFIG, PLUGIN_IDX_ENV, PLUGIN_NAME_ENV,
    PLUGIN_SOCKET_ENV, PLUGIN_SOCKET_FD,
};
mod events;
pub use events::{PluginUpdates, Refusal};

/// The NRI protocol version criusd speaks (that of the vendored api.proto).
pub const NRI_VERSION: &str = "v0.10.0";

/// The bit of `event` in a plugin's subscription mask.
pub fn event_bit(event: api::Event) -> i32 {
    1 << (event as i32 - 1)
}

/// Every event of the vendored API version (the bits below `LAST`'s).
pub const ALL_EVENTS: i32 = (1 << (api::Event::LAST as i32 - 1)) - 1;

/// A plugin's subscription from its Configure answer: none asked for
/// means every event (as NRI has it); bits of events this API version does
/// not have are refused.
pub fn subscription(mask: i32) -> Result<i32, String> {
    match mask {
        0 => Ok(ALL_EVENTS),
        m if m & !ALL_EVENTS != 0 => Err(format!("invalid plugin events: {:#x}", m & !ALL_EVENTS)),
        m => Ok(m),
    }
}

/// Settings of the NRI runtime side.
#[derive(Debug, Clone)]
pub struct Options {
    /// The socket plugins connect to.
    pub socket_path: PathBuf,
    /// How long a connected plugin has to register.
    pub registration_timeout: Duration,
    /// How long a plugin has to answer any call.
    pub request_timeout: Duration,
    /// Name of the runtime, sent to plugins in Configure.
    pub runtime_name: String,
    /// Version of the runtime, sent to plugins in Configure.
    pub runtime_version: String,
}

/// Errors of the NRI runtime side.
#[derive(Debug, thiserror::Error)]
pub enum NriError {
    /// The socket or its directory could not be set up.
    #[error("NRI socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// A boxed future of [`StateSource::update_containers`].
pub type UpdateFuture = Pin<Box<dyn Future<Output = Vec<api::ContainerUpdate>> + Send>>;

/// What the runtime currently runs, for a plugin's Synchronize, and where
/// plugins' container updates and evictions go.
pub trait StateSource: Send + Sync {
    /// The pods and containers the runtime knows (called on the blocking
    /// pool: it may read files).
    fn snapshot(&self) -> (Vec<api::PodSandbox>, Vec<api::Container>);

    /// Applies updates to containers' resources and stops the evicted
    /// containers, on behalf of `plugin`; returns the updates that failed
    /// and were not marked `ignore_failure`. Must not send NRI events for
    /// what it does (a plugin's update is not an UpdateContainer). The
    /// default refuses every update.
    fn update_containers(
        &self,
        plugin: String,
        update: Vec<api::ContainerUpdate>,
        evict: Vec<api::ContainerEviction>,
    ) -> UpdateFuture {
        let _ = (plugin, evict);
        Box::pin(async move { update.into_iter().filter(|u| !u.ignore_failure).collect() })
    }
}

/// Receives the duration and outcome of every call to a plugin, for metrics.
pub trait Observer: Send + Sync {
    /// `plugin` (`<index>-<name>`) answered `event` (`RunPodSandbox`, ...)
    /// after `took`; `ok` is false for an error, a late answer or none.
    fn observe(&self, plugin: &str, event: &str, took: Duration, ok: bool);
}

/// How a call to a plugin failed.
#[derive(Debug)]
enum CallError {
    /// No answer in time, a closed or broken connection: the plugin goes.
    Fatal(String),
    /// The plugin answered with an error.
    Refused(String),
    /// The plugin does not have this call (UNIMPLEMENTED): an older
    /// plugin, which may take the event as a StateChange.
    Unimplemented(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Fatal(m) | CallError::Refused(m) | CallError::Unimplemented(m) => {
                f.write_str(m)
            }
        }
    }
}

struct Plugin {
    name: String,
    index: String,
    events: i32,
    client: api_ttrpc::PluginClient,
    // Serves the plugin's calls to the runtime; kept for the plugin's life.
    server: Mutex<Option<Server>>,
    // A pre-started plugin's process: killed when the plugin is dropped.
    process: Option<prestart::Process>,
}

impl Plugin {
    fn label(&self) -> String {
        format!("{}-{}", self.index, self.name)
    }

    /// Takes the plugin's server out (once), to disconnect it.
    fn take_server(&self) -> Option<Server> {
        self.server.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// The NRI runtime side of one daemon.
pub struct Nri {
    opts: Options,
    plugins: Mutex<Vec<Arc<Plugin>>>,
    /// Registered plugins plus registrations past Configure: while it is
    /// not zero, operations take the sync block ([`Nri::block_sync`]).
    active: AtomicUsize,
    /// Shared by operations in flight ([`SyncBlock`]), exclusive while a
    /// plugin is synchronized and added to the list.
    sync_lock: Arc<tokio::sync::RwLock<()>>,
    state: Arc<dyn StateSource>,
    observer: OnceLock<Arc<dyn Observer>>,
    /// Per container, whether its StopContainer was sent (or is being
    /// sent): it is sent once, until RemoveContainer.
    stops: Mutex<std::collections::HashMap<String, Arc<tokio::sync::OnceCell<()>>>>,
}

/// A plugin's answer to CreateContainer: its adjustment of the new
/// container, and its updates and evictions of others.
#[derive(Debug, Clone, Default)]
pub struct PluginAdjustment {
    /// `<index>-<name>` of the plugin.
    pub plugin: String,
    /// What it asked for (empty when it asked for nothing).
    pub adjust: api::ContainerAdjustment,
    /// Updates of other containers' resources, to apply once the
    /// container is created.
    pub update: Vec<api::ContainerUpdate>,
    /// Containers to stop, once the container is created.
    pub evict: Vec<api::ContainerEviction>,
}

impl PluginAdjustment {
    /// Its updates and evictions, for [`Nri::apply_updates`].
    pub fn updates(&self) -> PluginUpdates {
        PluginUpdates {
            plugin: self.plugin.clone(),
            update: self.update.clone(),
            evict: self.evict.clone(),
        }
    }
}

impl Nri {
    /// Sets up the socket (its directory 0700, the socket 0600, a stale
    /// socket replaced, a live one refused) and accepts plugins on a spawned task.
    pub async fn listen(opts: Options, state: Arc<dyn StateSource>) -> Result<Arc<Nri>, NriError> {
        let path = opts.socket_path.clone();
        let sock_err = |source| NriError::Socket {
            path: path.clone(),
            source,
        };
        let listener = bind(&path).map_err(sock_err)?;
        let nri = Nri::new(opts, state.clone());
        let weak = Arc::downgrade(&nri);
        tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "NRI accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(nri) = weak.upgrade() else { return };
                tokio::spawn(async move {
                    if let Err(e) = nri.connect_plugin(stream, None).await {
                        tracing::warn!(error = %e, "NRI plugin not admitted");
                    }
                });
            }
        });
        Ok(nri)
    }

    /// The runtime side without a socket: only pre-started plugins
    /// ([`Nri::start_preinstalled`]) can register (`disable_connections`).
    pub fn new(opts: Options, state: Arc<dyn StateSource>) -> Arc<Nri> {
        Arc::new(Nri {
            opts,
            plugins: Mutex::new(Vec::new()),
            active: AtomicUsize::new(0),
            sync_lock: Arc::new(tokio::sync::RwLock::new(())),
            state,
            observer: OnceLock::new(),
            stops: Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// Sets where the duration of each plugin call is reported (once).
    pub fn set_observer(&self, observer: Arc<dyn Observer>) {
        let _ = self.observer.set(observer);
    }

    /// Whether any plugin is connected or being synchronized (one atomic
    /// load).
    pub fn has_plugins(&self) -> bool {
        self.active.load(Ordering::Acquire) > 0
    }

    /// Blocks plugin synchronization while an operation is in flight (NRI's
    /// "block plugin sync"): a plugin that registers meanwhile is
    /// synchronized once the block is dropped, so it sees the operation's
    /// object either in its Synchronize (the operation done) or through the
    /// operation's events (it registered before the operation began),
    /// never both nor neither. Take it before any lock of the operation's
    /// object and before its first event; never take a second one while
    /// holding one (a waiting synchronization would stall it).
    ///
    /// `None`, at the cost of one atomic load, when no plugin is connected
    /// or registering: an operation that began then and is still in flight
    /// when the first plugin registers is not waited for.
    pub async fn block_sync(&self) -> Option<SyncBlock> {
        if !self.has_plugins() {
            return None;
        }
        Some(SyncBlock {
            _guard: self.sync_lock.clone().read_owned().await,
        })
    }

    /// The connected plugins, `<index>-<name>`, in call order.
    pub fn plugin_names(&self) -> Vec<String> {
        self.list().iter().map(|p| p.label()).collect()
    }

    fn list(&self) -> Vec<Arc<Plugin>> {
        self.plugins
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn ctx(&self) -> ttrpc::context::Context {
        ttrpc::context::with_timeout(self.opts.request_timeout.as_nanos() as i64)
    }

    /// Synchronizes a configured plugin and adds it to the list, with
    /// operations in flight done and new ones held back ([`Nri::block_sync`]).
    /// Returns the updates its Synchronize answer asked for.
    async fn synchronize_and_add(
        &self,
        label: &str,
        plugin: Arc<Plugin>,
    ) -> Result<Vec<api::ContainerUpdate>, String> {
        // Counted before the lock is asked for: operations starting from now
        // take the block (and wait behind this synchronization).
        self.active.fetch_add(1, Ordering::AcqRel);
        let registering = Registering(&self.active);
        let _sync = self.sync_lock.write().await;
        let source = self.state.clone();
        let (pods, containers) = tokio::task::spawn_blocking(move || source.snapshot())
            .await
            .map_err(|e| format!("{label}: state: {e}"))?;
        let updates = self
            .synchronize(label, &plugin.client, pods, containers)
            .await
            .map_err(|e| format!("{label}: Synchronize: {e}"))?;
        let mut list = self.plugins.lock().unwrap_or_else(|e| e.into_inner());
        if list
            .iter()
            .any(|p| p.name == plugin.name && p.index == plugin.index)
        {
            return Err(format!("{label}: already registered"));
        }
        let at = list
            .iter()
            .position(|p| (&p.index, &p.name) > (&plugin.index, &plugin.name))
            .unwrap_or(list.len());
        list.insert(at, plugin);
        // Counted as registered now.
        std::mem::forget(registering);
        Ok(updates)
    }

    fn drop_plugin(&self, plugin: &Arc<Plugin>, why: &str) {
        let mut list = self.plugins.lock().unwrap_or_else(|e| e.into_inner());
        let before = list.len();
        list.retain(|p| !Arc::ptr_eq(p, plugin));
        if list.len() < before {
            self.active.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(plugin = %plugin.label(), reason = why, "NRI plugin dropped");
            // Its connection is closed once its calls are done.
            if let Some(mut server) = plugin.take_server() {
                tokio::spawn(async move { server.disconnect().await });
            }
            if let Some(process) = &plugin.process {
                // Reaped on its watcher's task.
                drop(process.stop());
            }
        }
    }

    /// Admits a plugin on `stream`: one that connected to the socket, or,
    /// with its `launched` identity, one started from the plugin directory
    /// (named by its file, whatever it registers as, and configured with
    /// its configuration file, as NRI does).
    async fn connect_plugin(
        self: &Arc<Self>,
        stream: tokio::net::UnixStream,
        launched: Option<prestart::Identity>,
    ) -> Result<(), String> {
        let state = self.state.clone();
        let (mut conns, closed) =
            mux::multiplex_watched(stream, &[PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN])
                .map_err(|e| e.to_string())?;
        let runtime_conn = conns.pop().expect("two connections");
        let plugin_conn = conns.pop().expect("two connections");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let service = Registrar {
            tx: Mutex::new(Some(tx)),
            label: OnceLock::new(),
            state: state.clone(),
        };
        let service = Arc::new(service);
        let one = tokio_stream::once(Ok::<_, std::io::Error>(runtime_conn));
        let mut server = Server::new()
            .register_service(api_ttrpc::create_runtime(service.clone()))
            .add_listener(Listener::new(one));
        server.start().await.map_err(|e| e.to_string())?;
        let registered = async {
            tokio::select! {
                reg = rx => reg.map_err(|_| "disconnected before registering".to_string()),
                () = closed.wait() => Err("disconnected before registering".to_string()),
            }
        };
        let reg = tokio::time::timeout(self.opts.registration_timeout, registered)
            .await
            .map_err(|_| "no registration in time".to_string())??;
        let (index, name, config, process) = match launched {
            Some(l) => (l.index, l.name, l.config, Some(l.process)),
            None => {
                let index = valid_index(&reg.plugin_idx)
                    .ok_or_else(|| format!("invalid plugin index {:?}", reg.plugin_idx))?;
                check_plugin_name(&reg.plugin_name)?;
                (index, reg.plugin_name, String::new(), None)
            }
        };
        let label = format!("{index}-{name}");
        let _ = service.label.set(label.clone());
        let client = api_ttrpc::PluginClient::new(Client::new(Socket::new(plugin_conn)));
        let configure = api::ConfigureRequest {
            runtime_name: self.opts.runtime_name.clone(),
            runtime_version: self.opts.runtime_version.clone(),
            registration_timeout: self.opts.registration_timeout.as_millis() as i64,
            request_timeout: self.opts.request_timeout.as_millis() as i64,
            NRI_version: NRI_VERSION.into(),
            config,
            ..Default::default()
        };
        let configured = self
            .invoke(
                &label,
                "Configure",
                client.configure(self.ctx(), &configure),
            )
            .await
            .map_err(|e| format!("{label}: Configure: {e}"))?;
        let events = subscription(configured.events).map_err(|e| format!("{label}: {e}"))?;
        let plugin = Arc::new(Plugin {
            name,
            index,
            events,
            client,
            server: Mutex::new(Some(server)),
            process,
        });
        let updates = self.synchronize_and_add(&label, plugin).await?;
        if !updates.is_empty() {
            let failed = state
                .update_containers(label.clone(), updates, Vec::new())
                .await;
            if !failed.is_empty() {
                tracing::warn!(plugin = %label, failed = failed.len(), "NRI: updates asked for in Synchronize failed");
            }
        }
        tracing::info!(plugin = %label, events, "NRI plugin registered");
        Ok(())
    }

    /// One call to `plugin` bounded by the request timeout (the ttrpc
    /// deadline is the same; this also covers a peer that never reads),
    /// reported to the observer.
    async fn invoke<T>(
        &self,
        plugin: &str,
        event: &str,
        fut: impl Future<Output = ttrpc::Result<T>>,
    ) -> Result<T, CallError> {
        let started = Instant::now();
        let out = match tokio::time::timeout(self.opts.request_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(ttrpc::Error::RpcStatus(s))) if s.code() == ttrpc::Code::UNIMPLEMENTED => {
                Err(CallError::Unimplemented(s.message().to_string()))
            }
            Ok(Err(ttrpc::Error::RpcStatus(s)))
                if !matches!(
                    s.code(),
                    ttrpc::Code::DEADLINE_EXCEEDED
                        | ttrpc::Code::UNAVAILABLE
                        | ttrpc::Code::CANCELLED
                ) =>
            {
                Err(CallError::Refused(s.message().to_string()))
            }
            Ok(Err(e)) => Err(CallError::Fatal(e.to_string())),
            Err(_) => Err(CallError::Fatal(format!(
                "no answer within {:?}",
                self.opts.request_timeout
            ))),
        };
        if let Some(o) = self.observer.get() {
            o.observe(plugin, event, started.elapsed(), out.is_ok());
        }
        out
    }

    /// CreateContainer to each subscribed plugin, in index order; their
    /// answers (adjustments, updates and evictions) in that order, those
    /// that asked for nothing left out. A failing plugin is dropped.
    pub async fn create_container(
        &self,
        pod: &api::PodSandbox,
        container: &api::Container,
    ) -> Vec<PluginAdjustment> {
        let bit = event_bit(api::Event::CREATE_CONTAINER);
        let req = api::CreateContainerRequest {
            pod: Some(pod.clone()).into(),
            container: Some(container.clone()).into(),
            ..Default::default()
        };
        let mut out = Vec::new();
        for plugin in self.list() {
            if plugin.events & bit == 0 {
                continue;
            }
            match self
                .invoke(
                    &plugin.label(),
                    "CreateContainer",
                    plugin.client.create_container(self.ctx(), &req),
                )
                .await
            {
                Ok(resp) => {
                    let answer = PluginAdjustment {
                        plugin: plugin.label(),
                        adjust: resp.adjust.unwrap_or_default(),
                        update: resp.update,
                        evict: resp.evict,
                    };
                    if answer.adjust != api::ContainerAdjustment::default()
                        || !answer.update.is_empty()
                        || !answer.evict.is_empty()
                    {
                        out.push(answer);
                    }
                }
                Err(e) => self.drop_plugin(&plugin, &format!("CreateContainer: {e}")),
            }
        }
        out
    }
}

impl Nri {
    /// Whether a connected plugin validates container adjustments (is
    /// subscribed to ValidateContainerAdjustment).
    pub fn has_validators(&self) -> bool {
        let bit = event_bit(api::Event::VALIDATE_CONTAINER_ADJUSTMENT);
        self.has_plugins() && self.list().iter().any(|p| p.events & bit != 0)
    }

    /// The connected plugins, in call order, as ValidateContainerAdjustment
    /// names them.
    pub fn plugin_instances(&self) -> Vec<api::PluginInstance> {
        self.list()
            .iter()
            .map(|p| api::PluginInstance {
                name: p.name.clone(),
                index: p.index.clone(),
                ..Default::default()
            })
            .collect()
    }

    /// ValidateContainerAdjustment to each validating plugin, in index
    /// order: the first rejection or error fails the creation, and so does
    /// a validator that does not answer in time or whose connection
    /// breaks (it is dropped): an adjustment nobody could validate is not
    /// let through, as in NRI.
    pub async fn validate_container_adjustment(
        &self,
        req: &api::ValidateContainerAdjustmentRequest,
    ) -> Result<(), Refusal> {
        const EVENT: &str = "ValidateContainerAdjustment";
        let bit = event_bit(api::Event::VALIDATE_CONTAINER_ADJUSTMENT);
        for plugin in self.list() {
            if plugin.events & bit == 0 {
                continue;
            }
            let label = plugin.label();
            let refusal = |message: String| Refusal {
                plugin: label.clone(),
                event: EVENT,
                message,
            };
            match self
                .invoke(
                    &label,
                    EVENT,
                    plugin.client.validate_container_adjustment(self.ctx(), req),
                )
                .await
            {
                Ok(r) if r.reject => {
                    tracing::warn!(plugin = %label, reason = %r.reason, "NRI validator rejected an adjustment");
                    return Err(refusal(format!("rejected: {}", r.reason)));
                }
                Ok(_) => {}
                Err(CallError::Refused(m) | CallError::Unimplemented(m)) => {
                    return Err(refusal(format!("failed: {m}")))
                }
                Err(CallError::Fatal(m)) => {
                    self.drop_plugin(&plugin, &format!("{EVENT}: {m}"));
                    return Err(refusal(format!("failed: {m}")));
                }
            }
        }
        Ok(())
    }
}

/// The plugins' CreateContainer adjustments merged into one, as a
/// validator sees them: maps merged (a later plugin's key replacing an
/// earlier's), lists appended, set fields of a later plugin replacing an
/// earlier's, and the args of the last plugin that set any. (Two plugins
/// setting the same thing never get this far: that is a conflict.)
pub fn merge_adjustments<'a>(
    adjustments: impl IntoIterator<Item = &'a api::ContainerAdjustment>,
) -> api::ContainerAdjustment {
    use protobuf::Message;
    let mut merged = api::ContainerAdjustment::new();
    for a in adjustments {
        let args = std::mem::take(&mut merged.args);
        // Protobuf's own merge: a message merged from its encoding.
        if let Ok(bytes) = a.write_to_bytes() {
            let _ = merged.merge_from_bytes(&bytes);
        }
        merged.args = if a.args.is_empty() {
            args
        } else {
            a.args.clone()
        };
    }
    merged
}

/// Held by an operation in flight: plugins are not synchronized meanwhile
/// ([`Nri::block_sync`]).
pub struct SyncBlock {
    _guard: tokio::sync::OwnedRwLockReadGuard<()>,
}

/// A registration being synchronized, counted in `active` until it is
/// added (forgotten) or fails (dropped).
struct Registering<'a>(&'a AtomicUsize);

impl Drop for Registering<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A plugin index: two decimal digits.
fn valid_index(idx: &str) -> Option<String> {
    (idx.len() == 2 && idx.bytes().all(|b| b.is_ascii_digit())).then(|| idx.to_string())
}

fn bind(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    // A socket someone answers on is another runtime's: not taken over.
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "another process is listening on it",
        ));
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// The runtime's service on a plugin's connection: takes its
/// registration, then its unsolicited container updates.
struct Registrar {
    tx: Mutex<Option<tokio::sync::oneshot::Sender<api::RegisterPluginRequest>>>,
    /// `<index>-<name>`, once registered.
    label: OnceLock<String>,
    state: Arc<dyn StateSource>,
}

#[async_trait::async_trait]
impl api_ttrpc::Runtime for Registrar {
    async fn register_plugin(
        &self,
        _ctx: &TtrpcContext,
        req: api::RegisterPluginRequest,
    ) -> ttrpc::Result<api::Empty> {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        match tx {
            Some(tx) => {
                let _ = tx.send(req);
                Ok(api::Empty::default())
            }
            None => Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::FAILED_PRECONDITION,
                "plugin already registered",
            ))),
        }
    }

    /// A plugin's unsolicited updates and evictions: applied through the
    /// runtime's own update path (not sent back to plugins as events).
    async fn update_containers(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateContainersRequest,
    ) -> ttrpc::Result<api::UpdateContainersResponse> {
        let Some(label) = self.label.get().cloned() else {
            return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::FAILED_PRECONDITION,
                "plugin not registered",
            )));
        };
        if req.update.len() + req.evict.len() > MAX_UPDATES {
            return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::INVALID_ARGUMENT,
                format!("more than {MAX_UPDATES} updates and evictions"),
            )));
        }
        tracing::info!(plugin = %label, updates = req.update.len(), evictions = req.evict.len(), "NRI: UpdateContainers");
        let failed = self
            .state
            .update_containers(label, req.update, req.evict)
            .await;
        Ok(api::UpdateContainersResponse {
            failed,
            ..Default::default()
        })
    }
}

/// The most updates and evictions one UpdateContainers may carry.
const MAX_UPDATES: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_bits() {
        for (e, bit) in [
            (api::Event::RUN_POD_SANDBOX, 1),
            (api::Event::CREATE_CONTAINER, 8),
            (api::Event::REMOVE_CONTAINER, 1 << 10),
        ] {
            assert_eq!(event_bit(e), bit, "{e:?}");
        }
    }

    #[test]
    fn subscriptions() {
        let create = event_bit(api::Event::CREATE_CONTAINER);
        for (mask, want) in [
            (0, Ok(0x3fff)),
            (create, Ok(create)),
            (0x3fff, Ok(0x3fff)),
            (0x4000 | create, Err("0x4000")),
            (-1, Err("invalid plugin events")),
        ] {
            match (subscription(mask), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{mask:#x}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{mask:#x}: {e}"),
                (got, want) => panic!("{mask:#x}: {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn adjustments_merge_as_a_validator_sees_them() {
        let adj = |env: &[(&str, &str)], ann: &[(&str, &str)], args: &[&str], mem: Option<i64>| {
            let mut a = api::ContainerAdjustment::new();
            a.env = env
                .iter()
                .map(|(k, v)| api::KeyValue {
                    key: k.to_string(),
                    value: v.to_string(),
                    ..Default::default()
                })
                .collect();
            a.annotations = ann
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            a.args = args.iter().map(|s| s.to_string()).collect();
            if let Some(m) = mem {
                a.linux
                    .mut_or_insert_default()
                    .resources
                    .mut_or_insert_default()
                    .memory
                    .mut_or_insert_default()
                    .limit = Some(api::OptionalInt64 {
                    value: m,
                    ..Default::default()
                })
                .into();
            }
            a
        };
        // (adjustments in order, the merged one)
        let cases = vec![
            (vec![], adj(&[], &[], &[], None)),
            (
                vec![adj(&[("A", "1")], &[("x", "1")], &["sh"], Some(64))],
                adj(&[("A", "1")], &[("x", "1")], &["sh"], Some(64)),
            ),
            (
                vec![
                    adj(&[("A", "1")], &[("x", "1")], &["sh", "-c"], Some(64)),
                    adj(&[("B", "2")], &[("x", "2"), ("y", "3")], &[], None),
                ],
                adj(
                    &[("A", "1"), ("B", "2")],
                    &[("x", "2"), ("y", "3")],
                    &["sh", "-c"],
                    Some(64),
                ),
            ),
            (
                vec![
                    adj(&[], &[], &["a", "b"], None),
                    adj(&[], &[], &["c"], Some(32)),
                ],
                adj(&[], &[], &["c"], Some(32)),
            ),
        ];
        for (i, (input, want)) in cases.into_iter().enumerate() {
            assert_eq!(merge_adjustments(&input), want, "case {i}");
        }
    }

    #[test]
    fn plugin_indices() {
        for (idx, ok) in [
            ("00", true),
            ("10", true),
            ("99", true),
            ("1", false),
            ("a1", false),
            ("100", false),
            ("", false),
        ] {
            assert_eq!(valid_index(idx).is_some(), ok, "{idx:?}");
        }
    }
}
