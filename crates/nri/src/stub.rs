//! The plugin side of an NRI connection, for plugins written in Rust (and
//! the project's tests): connects to a runtime's NRI socket, serves the
//! given `Plugin` service and registers.

use std::path::Path;
use std::sync::{Arc, Mutex};

use ttrpc::asynchronous::transport::{Listener, Socket};
use ttrpc::asynchronous::{Client, Server};

use crate::api;
use crate::api_ttrpc;
use crate::mux::{self, TrunkClosed, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN};

/// A connected, registered plugin. Dropping it does not disconnect a
/// plugin whose calls are still running; [`Stub::close`] does.
pub struct Stub {
    server: Mutex<Option<Server>>,
    closed: Mutex<Option<TrunkClosed>>,
    /// The runtime's service (UpdateContainers).
    pub runtime: api_ttrpc::RuntimeClient,
}

/// The identity and connection a runtime gives a plugin it starts itself
/// (NRI's pre-started plugins), read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launched {
    /// `NRI_PLUGIN_NAME`.
    pub name: String,
    /// `NRI_PLUGIN_IDX`.
    pub index: String,
    /// `NRI_PLUGIN_SOCKET`: the descriptor of the plugin's end of the
    /// runtime's socketpair.
    pub fd: i32,
}

impl Launched {
    /// Reads the launch variables through `var`; `None` when
    /// `NRI_PLUGIN_SOCKET` is unset (the plugin was not started by a
    /// runtime), an error when one is malformed.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launched>, String> {
        let Some(fd) = var(crate::runtime::PLUGIN_SOCKET_ENV) else {
            return Ok(None);
        };
        let fd = fd.parse::<i32>().ok().filter(|fd| *fd > 2).ok_or_else(|| {
            format!(
                "{}={fd:?}: not a descriptor",
                crate::runtime::PLUGIN_SOCKET_ENV
            )
        })?;
        let get = |key: &str| {
            var(key)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("{key} is not set"))
        };
        Ok(Some(Launched {
            name: get(crate::runtime::PLUGIN_NAME_ENV)?,
            index: get(crate::runtime::PLUGIN_IDX_ENV)?,
            fd,
        }))
    }
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
        Stub::on_stream(stream, name, index, plugin).await
    }

    /// For a plugin the runtime started: takes the connection it was given
    /// (see [`Launched`]; the process's environment), serves `plugin` and
    /// registers under the name and index the runtime chose.
    ///
    /// Takes ownership of the descriptor `NRI_PLUGIN_SOCKET` names: call
    /// it once, before anything else may have used that descriptor.
    pub async fn launched(
        plugin: Arc<dyn api_ttrpc::Plugin + Send + Sync>,
    ) -> Result<Stub, String> {
        use std::os::fd::FromRawFd;
        let launched = Launched::from_vars(|k| std::env::var(k).ok())?
            .ok_or_else(|| format!("{} is not set", crate::runtime::PLUGIN_SOCKET_ENV))?;
        // The runtime's socketpair end, passed down at exec; checked to be a
        // unix stream socket before it is owned here.
        let kind =
            socket_type(launched.fd).map_err(|e| format!("descriptor {}: {e}", launched.fd))?;
        if kind != libc::SOCK_STREAM {
            return Err(format!("descriptor {} is not a stream socket", launched.fd));
        }
        // SAFETY: the descriptor is an open stream socket (getsockopt above),
        // is the runtime's handed-down socket and is owned by nothing else
        // in this process (see the doc comment).
        let std_stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(launched.fd) };
        std_stream
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        let stream = tokio::net::UnixStream::from_std(std_stream).map_err(|e| e.to_string())?;
        Stub::on_stream(stream, &launched.name, &launched.index, plugin).await
    }

    /// Serves `plugin` on an established connection to the runtime and
    /// registers as `index-name`.
    pub async fn on_stream(
        stream: tokio::net::UnixStream,
        name: &str,
        index: &str,
        plugin: Arc<dyn api_ttrpc::Plugin + Send + Sync>,
    ) -> Result<Stub, String> {
        let (mut conns, closed) =
            mux::multiplex_watched(stream, &[PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN])
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
            closed: Mutex::new(Some(closed)),
            runtime,
        })
    }

    /// Resolves when the runtime has closed the connection (at once if
    /// this was already awaited).
    pub async fn closed(&self) {
        let closed = self.closed.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(c) = closed {
            c.wait().await;
        }
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

/// The `SO_TYPE` of descriptor `fd`.
fn socket_type(fd: i32) -> std::io::Result<i32> {
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `kind`, a c_int.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_variables_are_read() {
        let full = [
            ("NRI_PLUGIN_SOCKET", "3"),
            ("NRI_PLUGIN_NAME", "logger"),
            ("NRI_PLUGIN_IDX", "10"),
        ];
        type Want = Result<Option<(&'static str, &'static str, i32)>, &'static str>;
        let cases: &[(&[(&str, &str)], Want)] = &[
            (&full, Ok(Some(("logger", "10", 3)))),
            (&[], Ok(None)),
            // The name and index mean nothing without the socket.
            (&full[1..], Ok(None)),
            (&[full[0], full[1]], Err("NRI_PLUGIN_IDX")),
            (&[full[0], full[2]], Err("NRI_PLUGIN_NAME")),
            (
                &[("NRI_PLUGIN_SOCKET", "x"), full[1], full[2]],
                Err("not a descriptor"),
            ),
            (
                &[("NRI_PLUGIN_SOCKET", "1"), full[1], full[2]],
                Err("not a descriptor"),
            ),
            (
                &[full[0], ("NRI_PLUGIN_NAME", ""), full[2]],
                Err("NRI_PLUGIN_NAME"),
            ),
        ];
        for (vars, want) in cases {
            let got = Launched::from_vars(|k| {
                vars.iter()
                    .find(|(key, _)| *key == k)
                    .map(|(_, v)| v.to_string())
            });
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(
                    got.map(|l| (l.name, l.index, l.fd)),
                    want.map(|(n, i, f)| (n.to_string(), i.to_string(), f)),
                    "{vars:?}"
                ),
                (Err(e), Err(w)) => assert!(e.contains(w), "{vars:?}: {e}"),
                (got, want) => panic!("{vars:?}: {got:?}, want {want:?}"),
            }
        }
    }
}
