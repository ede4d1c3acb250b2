//! The runtime side of NRI: listens on the NRI socket, registers the
//! plugins that connect, configures and synchronizes them, and calls the
//! subscribed ones, in index order, when a container is created.
//!
//! A plugin that fails a call, answers late or disconnects is dropped (and
//! logged); no call waits longer than the request timeout. With no plugin
//! connected, [`Nri::has_plugins`] is one atomic load, so callers skip NRI
//! entirely on their hot path.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// The NRI protocol version criusd speaks (that of the vendored api.proto).
pub const NRI_VERSION: &str = "v0.10.0";

/// The bit of `event` in a plugin's subscription mask.
pub fn event_bit(event: api::Event) -> i32 {
    1 << (event as i32 - 1)
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

/// What the runtime currently runs, for a plugin's Synchronize.
pub trait StateSource: Send + Sync {
    /// The pods and containers the runtime knows.
    fn snapshot(&self) -> (Vec<api::PodSandbox>, Vec<api::Container>);
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
}

/// The NRI runtime side of one daemon.
pub struct Nri {
    opts: Options,
    plugins: Mutex<Vec<Arc<Plugin>>>,
    active: AtomicUsize,
}

/// A plugin's answer to CreateContainer: its adjustment.
#[derive(Debug, Clone)]
pub struct PluginAdjustment {
    /// `<index>-<name>` of the plugin.
    pub plugin: String,
    /// What it asked for.
    pub adjust: api::ContainerAdjustment,
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
        let nri = Nri::new(opts);
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
                let state = state.clone();
                tokio::spawn(async move {
                    if let Err(e) = nri.connect_plugin(stream, state, None).await {
                        tracing::warn!(error = %e, "NRI plugin not admitted");
                    }
                });
            }
        });
        Ok(nri)
    }

    /// The runtime side without a socket: only pre-started plugins
    /// ([`Nri::start_preinstalled`]) can register (`disable_connections`).
    pub fn new(opts: Options) -> Arc<Nri> {
        Arc::new(Nri {
            opts,
            plugins: Mutex::new(Vec::new()),
            active: AtomicUsize::new(0),
        })
    }

    /// Whether any plugin is connected (one atomic load).
    pub fn has_plugins(&self) -> bool {
        self.active.load(Ordering::Acquire) > 0
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

    fn drop_plugin(&self, plugin: &Arc<Plugin>, why: &str) {
        let mut list = self.plugins.lock().unwrap_or_else(|e| e.into_inner());
        let before = list.len();
        list.retain(|p| !Arc::ptr_eq(p, plugin));
        if list.len() < before {
            self.active.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(plugin = %plugin.label(), reason = why, "NRI plugin dropped");
            // Its connection is closed once its calls are done.
            let server = plugin
                .server
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some(mut server) = server {
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
        state: Arc<dyn StateSource>,
        launched: Option<prestart::Identity>,
    ) -> Result<(), String> {
        let (mut conns, closed) =
            mux::multiplex_watched(stream, &[PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN])
                .map_err(|e| e.to_string())?;
        let runtime_conn = conns.pop().expect("two connections");
        let plugin_conn = conns.pop().expect("two connections");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let service = Registrar {
            tx: Mutex::new(Some(tx)),
        };
        let one = tokio_stream::once(Ok::<_, std::io::Error>(runtime_conn));
        let mut server = Server::new()
            .register_service(api_ttrpc::create_runtime(Arc::new(service)))
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
        let label = format!("{index}-{name}");
        let configured = self
            .call(client.configure(self.ctx(), &configure))
            .await
            .map_err(|e| format!("{label}: Configure: {e}"))?;
        let (pods, containers) = state.snapshot();
        let sync = api::SynchronizeRequest {
            pods,
            containers,
            ..Default::default()
        };
        self.call(client.synchronize(self.ctx(), &sync))
            .await
            .map_err(|e| format!("{label}: Synchronize: {e}"))?;
        let plugin = Arc::new(Plugin {
            name,
            index,
            events: configured.events,
            client,
            server: Mutex::new(Some(server)),
            process,
        });
        {
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
            list.insert(at, plugin.clone());
            self.active.fetch_add(1, Ordering::AcqRel);
        }
        tracing::info!(plugin = %label, events = configured.events, "NRI plugin registered");
        Ok(())
    }

    /// One call bounded by the request timeout (the ttrpc deadline is the
    /// same; this also covers a peer that never reads).
    async fn call<T>(
        &self,
        fut: impl std::future::Future<Output = ttrpc::Result<T>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.opts.request_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.opts.request_timeout)),
        }
    }

    /// CreateContainer to each subscribed plugin, in index order; their
    /// adjustments in that order. A failing plugin is dropped.
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
                .call(plugin.client.create_container(self.ctx(), &req))
                .await
            {
                Ok(resp) => {
                    if let Some(adjust) = resp.adjust.into_option() {
                        out.push(PluginAdjustment {
                            plugin: plugin.label(),
                            adjust,
                        });
                    }
                }
                Err(e) => self.drop_plugin(&plugin, &format!("CreateContainer: {e}")),
            }
        }
        out
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

/// The runtime's service on a plugin's connection: takes its registration.
struct Registrar {
    tx: Mutex<Option<tokio::sync::oneshot::Sender<api::RegisterPluginRequest>>>,
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
}

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
