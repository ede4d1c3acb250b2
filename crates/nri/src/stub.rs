//! The plugin side of an NRI connection, for plugins written in Rust (and
//! the project's tests): connects to a runtime's NRI socket, serves the
//! given `Plugin` service and registers; [`Recorder`], a plugin that
//! records what it is told and answers by a script (the test plugin).

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

/// An update setting container `id`'s CPU shares (for test plugins).
pub fn cpu_shares_update(id: &str, shares: u64) -> api::ContainerUpdate {
    let mut u = api::ContainerUpdate {
        container_id: id.into(),
        ..Default::default()
    };
    u.linux
        .mut_or_insert_default()
        .resources
        .mut_or_insert_default()
        .cpu
        .mut_or_insert_default()
        .shares = Some(api::OptionalUInt64 {
        value: shares,
        ..Default::default()
    })
    .into();
    u
}

/// Makes a plugin's CreateContainer adjustment from the request.
pub type AdjustFn =
    Box<dyn Fn(&api::CreateContainerRequest) -> api::ContainerAdjustment + Send + Sync>;

/// How a [`Recorder`] answers.
pub struct Script {
    /// The subscription mask sent in Configure (default: every event).
    pub events: i32,
    /// The CreateContainer adjustment (default: none).
    pub adjust: Option<AdjustFn>,
    /// Events (`"CreateContainer"`, ...) never answered.
    pub hang: Vec<&'static str>,
    /// Events answered with an error.
    pub fail: Vec<&'static str>,
    /// Events answered UNIMPLEMENTED, as a plugin of an older NRI that
    /// takes them as StateChange.
    pub unimplemented: Vec<&'static str>,
    /// The updates answered to UpdateContainer and StopContainer.
    pub updates: Vec<api::ContainerUpdate>,
    /// The evictions answered to UpdateContainer.
    pub evictions: Vec<api::ContainerEviction>,
    /// The updates answered to CreateContainer.
    pub create_updates: Vec<api::ContainerUpdate>,
    /// The evictions answered to CreateContainer.
    pub create_evictions: Vec<api::ContainerEviction>,
    /// ValidateContainerAdjustment is answered with a rejection for this
    /// reason (default: accepted).
    pub reject: Option<String>,
    /// The updates answered to the (last page of) Synchronize.
    pub sync_updates: Vec<api::ContainerUpdate>,
    /// Whether the plugin takes a Synchronize in pages (default: yes).
    pub paged_sync: bool,
    /// Sent as an unsolicited UpdateContainers from within the
    /// UpdateContainer handler, before answering (its answer recorded).
    pub call_back_on_update: Vec<api::ContainerUpdate>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            events: (1..api::Event::LAST as i32).fold(0, |m, e| m | 1 << (e - 1)),
            adjust: None,
            hang: Vec::new(),
            fail: Vec::new(),
            unimplemented: Vec::new(),
            updates: Vec::new(),
            evictions: Vec::new(),
            create_updates: Vec::new(),
            create_evictions: Vec::new(),
            reject: None,
            sync_updates: Vec::new(),
            paged_sync: true,
            call_back_on_update: Vec::new(),
        }
    }
}

/// One event a [`Recorder`] was told about.
#[derive(Debug, Clone)]
pub struct SeenEvent {
    /// `RunPodSandbox`, `CreateContainer`, ...
    pub event: &'static str,
    /// The pod.
    pub pod: api::PodSandbox,
    /// The container, for container events.
    pub container: Option<api::Container>,
    /// The new resources of UpdateContainer.
    pub resources: Option<api::LinuxResources>,
}

/// What a [`Recorder`] was told.
#[derive(Debug, Default)]
pub struct Seen {
    /// The Configure request.
    pub configured: Option<api::ConfigureRequest>,
    /// Each Synchronize request (one per page).
    pub syncs: Vec<api::SynchronizeRequest>,
    /// The events, in arrival order.
    pub events: Vec<SeenEvent>,
    /// The answers to its own UpdateContainers calls (the failed updates,
    /// or the error).
    pub call_backs: Vec<Result<Vec<api::ContainerUpdate>, String>>,
    /// Each ValidateContainerAdjustment request (not in `events`).
    pub validations: Vec<api::ValidateContainerAdjustmentRequest>,
    /// Each StateChange (not in `events`).
    pub state_changes: Vec<api::StateChangeEvent>,
}

impl Seen {
    /// The events named `event`.
    pub fn of(&self, event: &str) -> Vec<&SeenEvent> {
        self.events.iter().filter(|e| e.event == event).collect()
    }

    /// `event container-name` (or `event pod-name`) of every event.
    pub fn trail(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|e| match &e.container {
                Some(c) => format!("{} {}", e.event, c.name),
                None => format!("{} {}", e.event, e.pod.name),
            })
            .collect()
    }
}

/// A plugin that records what it is told and answers as its [`Script`]
/// says: the test plugin of crius' tests, and an example of a plugin.
pub struct Recorder {
    script: Mutex<Script>,
    seen: Mutex<Seen>,
    // Taken out by close(): while held, the connection stays open.
    runtime: Mutex<Option<api_ttrpc::RuntimeClient>>,
}

impl Recorder {
    /// A recorder answering as `script` says.
    pub fn new(script: Script) -> Arc<Recorder> {
        Arc::new(Recorder {
            script: Mutex::new(script),
            seen: Mutex::new(Seen::default()),
            runtime: Mutex::new(None),
        })
    }

    /// What it was told so far.
    pub fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Its script, to change how it answers from now on.
    pub fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connects to the runtime at `socket` as `index-name`.
    pub async fn connect(
        self: &Arc<Self>,
        socket: &Path,
        name: &str,
        index: &str,
    ) -> Result<Stub, String> {
        let stub = Stub::connect(socket, name, index, self.clone()).await?;
        *self.runtime.lock().unwrap_or_else(|e| e.into_inner()) = Some(stub.runtime.clone());
        Ok(stub)
    }

    /// Disconnects `stub`, the connection [`Recorder::connect`] made.
    pub async fn close(&self, stub: Stub) {
        self.runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        stub.close().await;
    }

    fn record(
        &self,
        event: &'static str,
        pod: &protobuf::MessageField<api::PodSandbox>,
        container: Option<&protobuf::MessageField<api::Container>>,
        resources: Option<api::LinuxResources>,
    ) {
        self.seen().events.push(SeenEvent {
            event,
            pod: pod.clone().unwrap_or_default(),
            container: container.map(|c| c.clone().unwrap_or_default()),
            resources,
        });
    }

    /// Hangs or fails as the script says for `event`.
    async fn behave(&self, event: &'static str) -> ttrpc::Result<()> {
        let (hang, fail, unimplemented) = {
            let s = self.script();
            (
                s.hang.contains(&event),
                s.fail.contains(&event),
                s.unimplemented.contains(&event),
            )
        };
        if unimplemented {
            return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::UNIMPLEMENTED,
                format!("{event} is not implemented by the test plugin"),
            )));
        }
        if hang {
            std::future::pending::<()>().await;
        }
        if fail {
            return Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::UNKNOWN,
                format!("{event} refused by the test plugin"),
            )));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl api_ttrpc::Plugin for Recorder {
    async fn configure(
        &self,
        _ctx: &ttrpc::asynchronous::TtrpcContext,
        req: api::ConfigureRequest,
    ) -> ttrpc::Result<api::ConfigureResponse> {
        self.seen().configured = Some(req);
        Ok(api::ConfigureResponse {
            events: self.script().events,
            ..Default::default()
        })
    }

    async fn synchronize(
        &self,
        _ctx: &ttrpc::asynchronous::TtrpcContext,
        req: api::SynchronizeRequest,
    ) -> ttrpc::Result<api::SynchronizeResponse> {
        let more = req.more;
        self.seen().syncs.push(req);
        let s = self.script();
        Ok(api::SynchronizeResponse {
            more: more && s.paged_sync,
            update: if more {
                Vec::new()
            } else {
                s.sync_updates.clone()
            },
            ..Default::default()
        })
    }

    async fn run_pod_sandbox(
        &self,
        _ctx: &ttrpc::asynchronous::TtrpcContext,
        req: api::RunPodSandboxRequest,
    ) -> ttrpc::Result<api::RunPodSandboxResponse> {
        self.record("RunPodSandbox", &req.pod, None, None);
        self.behave("RunPodSandbox").await?;
        Ok(Default::default())
    }

    async fn update_pod_sandbox(
        &self,
        _ctx: &ttrpc::asynchronous::TtrpcContext,
        req: api::UpdatePodSandboxRequest,
    ) -> ttrpc::Result<api::UpdatePodSandboxResponse> {
        self.record(
            "UpdatePodSandbox",
            &req.pod,
            None,
            req.linux_resources.clone().into_option(),
        );
        self.behave("UpdatePodSandbox").await?;
        Ok(Default::default())
    }

    async fn post_update_pod_sandbox(
        &self,
        _ctx: &ttrpc::asynchronous::TtrpcContext,
        req: api::PostUpdatePodSandboxRequest,
    ) -> ttrpc::Result<api::PostUpdatePodSandboxResponse> {
        self.record("PostUpdatePodSandbox", &req.pod, None, None);
        self.behave("PostUpdatePodSandbox").await?;
        Ok(Default::default())
    }

    async fn stop_pod_sandbox(
        &self,
        _ctx: &ttrpc::asynchronous::TtrpcContext,
        req: api::StopPodSandboxRequest,
    ) -> ttrpc::Result<api::StopPodSandboxResponse> {
        self.record("StopPodSandbox", &req.pod, None, None);
        self.behave("StopPodSandbox").await?;
        Ok(Default::default())
    }

    async fn remove_pod_sandbox(
        &self,
        _ctx: &ttrpc::asynchronous::TtrpcContext,
        req: api::RemovePodSandboxRequest,
    ) -> ttrpc::Result<api::RemovePodSandboxResponse> {
        self.record("RemovePodSandbox", &req.pod, None, None);
        self.behave("RemovePodSandbox").await?;
        Ok(Default::default())
    }

    async fn create_container(
        &self,
        _ctx: &ttrpc::asynchronous::TtrpcContext,
        req: api::CreateContainerRequest,
    ) -> ttrpc::Result<api::CreateContainerResponse> {
        self.record("CreateContainer", &req.pod, Some(&req.container), None);
        self.behave("CreateContainer").await?;
        let s = self.script();
        let adjust = s.adjust.as_ref().map(|f| f(&req));
        Ok(api::CreateContainerResponse {
            adjust: adjust.into(),
            update: s.create_updates.clone(),
            evict: s.create_evictions.clone(),
            ..Default::default()
        })
    }

    async fn state_change(
        &self,
        _ctx: &ttrpc::asynchronous::TtrpcContext,
        req: api::StateChangeEvent,
    ) -> ttrpc::Result<api::Empty> {
        self.seen().state_changes.push(req);
        self.behave("StateChange").await?;
        Ok(api::Empty::default())
    }

    async fn validate_container_adjustment(
        &self,
        _ctx: &ttrpc::asynchronous::TtrpcContext,
        req: api::ValidateContainerAdjustmentRequest,
    ) -> ttrpc::Result<api::ValidateContainerAdjustmentResponse> {
        self.seen().validations.push(req);
        self.behave("ValidateContainerAdjustment").await?;
        let reject = self.script().reject.clone();
        Ok(api::ValidateContainerAdjustmentResponse {
            reject: reject.is_some(),
            reason: reject.unwrap_or_default(),
            ..Default::default()
        })
    }

    async fn post_create_container(
        &self,
        _ctx: &ttrpc::asynchronous::TtrpcContext,
        req: api::PostCreateContainerRequest,
    ) -> ttrpc::Result<api::PostCreateContainerResponse> {
        self.record("PostCreateContainer", &req.pod, Some(&req.container), None);
        self.behave("PostCreateContainer").await?;
        Ok(Default::default())
    }

    async fn start_container(
        &self,
        _ctx: &ttrpc::asynchronous::TtrpcContext,
        req: api::StartContainerRequest,
    ) -> ttrpc::Result<api::StartContainerResponse> {
        self.record("StartContainer", &req.pod, Some(&req.container), None);
        self.behave("StartContainer").await?;
        Ok(Default::default())
    }

    async fn post_start_container(
        &self,
        _ctx: &ttrpc::asynchronous::TtrpcContext,
        req: api::PostStartContainerRequest,
    ) -> ttrpc::Result<api::PostStartContainerResponse> {
        self.record("PostStartContainer", &req.pod, Some(&req.container), None);
        self.behave("PostStartContainer").await?;
        Ok(Default::default())
    }

    async fn update_container(
        &self,
        _ctx: &ttrpc::asynchronous::TtrpcContext,
        req: api::UpdateContainerRequest,
    ) -> ttrpc::Result<api::UpdateContainerResponse> {
        self.record(
            "UpdateContainer",
            &req.pod,
            Some(&req.container),
            req.linux_resources.clone().into_option(),
        );
        self.behave("UpdateContainer").await?;
        let call_back = self.script().call_back_on_update.clone();
        if !call_back.is_empty() {
            let runtime = self
                .runtime
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let result = match runtime {
                Some(rt) => rt
                    .update_containers(
                        ttrpc::context::with_timeout(10_000_000_000),
                        &api::UpdateContainersRequest {
                            update: call_back,
                            ..Default::default()
                        },
                    )
                    .await
                    .map(|r| r.failed)
                    .map_err(|e| e.to_string()),
                None => Err("not connected through Recorder::connect".into()),
            };
            self.seen().call_backs.push(result);
        }
        let s = self.script();
        Ok(api::UpdateContainerResponse {
            update: s.updates.clone(),
            evict: s.evictions.clone(),
            ..Default::default()
        })
    }

    async fn post_update_container(
        &self,
        _ctx: &ttrpc::asynchronous::TtrpcContext,
        req: api::PostUpdateContainerRequest,
    ) -> ttrpc::Result<api::PostUpdateContainerResponse> {
        self.record("PostUpdateContainer", &req.pod, Some(&req.container), None);
        self.behave("PostUpdateContainer").await?;
        Ok(Default::default())
    }

    async fn stop_container(
        &self,
        _ctx: &ttrpc::asynchronous::TtrpcContext,
        req: api::StopContainerRequest,
    ) -> ttrpc::Result<api::StopContainerResponse> {
        self.record("StopContainer", &req.pod, Some(&req.container), None);
        self.behave("StopContainer").await?;
        Ok(api::StopContainerResponse {
            update: self.script().updates.clone(),
            ..Default::default()
        })
    }

    async fn remove_container(
        &self,
        _ctx: &ttrpc::asynchronous::TtrpcContext,
        req: api::RemoveContainerRequest,
    ) -> ttrpc::Result<api::RemoveContainerResponse> {
        self.record("RemoveContainer", &req.pod, Some(&req.container), None);
        self.behave("RemoveContainer").await?;
        Ok(Default::default())
    }
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
