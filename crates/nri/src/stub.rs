//! The plugin side of an NRI connection, for plugins written in Rust (and
//! the project's tests): connects to a runtime's NRI socket, serves the
//! given `Plugin` service and registers.

use std::path::Path;
use std::sync::{Arc, Mutex};

use ttrpc::asynchronous::transport::{Listener, Socket};
use ttrpc::asynchronous::{Client, Server};

use crate::api;
use crate::api_ttrpc;
use crate::mux::{self, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN};

/// A connected, registered plugin. Dropping it does not disconnect a
/// plugin whose calls are still running; [`Stub::close`] does.
pub struct Stub {
    server: Mutex<Option<Server>>,
    /// The runtime's service (UpdateContainers).
    pub runtime: api_ttrpc::RuntimeClient,
}

impl Stub {
    /// Connects to `socket`, serves `plugin` and registers as `index-name`.
    pub async fn connect(
        socket: &Path,
        name: &str,
        index: &str,
        plugin: Arc<dyn api_ttrpc::Plugin + Send + Sync>,
    ) -> Result<Stub, String> {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| format!("connect {}: {e}", socket.display()))?;
        let mut conns = mux::multiplex(stream, &[PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN])
            .map_err(|e| e.to_string())?;
        let runtime_conn = conns.pop().expect("two connections");
        let plugin_conn = conns.pop().expect("two connections");
        let one = tokio_stream::once(Ok::<_, std::io::Error>(plugin_conn));
        let mut server = Server::new()
            .register_service(api_ttrpc::create_plugin(plugin))
            .add_listener(Listener::new(one));
        server.start().await.map_err(|e| e.to_string())?;
        let runtime = api_ttrpc::RuntimeClient::new(Client::new(Socket::new(runtime_conn)));
        let req = api::RegisterPluginRequest {
            plugin_name: name.into(),
            plugin_idx: index.into(),
            NRI_version: crate::runtime::NRI_VERSION.into(),
            ..Default::default()
        };
        runtime
            .register_plugin(ttrpc::context::with_timeout(5_000_000_000), &req)
            .await
            .map_err(|e| format!("RegisterPlugin: {e}"))?;
        Ok(Stub {
            server: Mutex::new(Some(server)),
            runtime,
        })
    }

    /// Disconnects: the runtime sees the plugin's connection close.
    pub async fn close(self) {
        let server = self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut s) = server {
            // (Not shutdown(): its listener, a single connection, has ended.)
            s.disconnect().await;
        }
    }
}
