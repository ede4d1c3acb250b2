//! criusd's side of the per-pod shim: launching it and calling its ttrpc
//! services (task, sandbox and crius's own), as `crates/shim/README.md`
//! describes the protocol.
//!
//! The task and sandbox clients are ttrpc's asynchronous ones: a shim
//! connection is a task on criusd's runtime, not threads of its own, and a
//! `Wait` for a container's exit is a parked future. crius's own service
//! (ReopenLog, rare) is called over a short-lived synchronous connection.

use containerd_shim_protos::api;
use containerd_shim_protos::sandbox_api as sb;
use containerd_shim_protos::sandbox_async::SandboxClient;
use containerd_shim_protos::shim_async::TaskClient;
use containerd_shim_protos::ttrpc::{self, context};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// The containerd namespace crius runs its pods in.
pub const NAMESPACE: &str = "k8s.io";
/// The shim binary's file name.
pub const SHIM_BINARY: &str = "containerd-shim-crius-v2";
/// Annotation: host network (no netns).
pub const NETWORK_ANNOTATION: &str = "io.crius.shim.network";
/// The shim's annotation for a pod without an infra process (`none`).
pub const INFRA_ANNOTATION: &str = "io.crius.shim.infra";
/// The shim's annotation for the hostname of a pod without an infra process.
pub const HOSTNAME_ANNOTATION: &str = "io.crius.shim.hostname";
/// The shim's annotation for the sysctls of a pod without an infra process.
pub const SYSCTLS_ANNOTATION: &str = "io.crius.shim.sysctls";
/// The shim's annotation saying that the given netns is the shim's to
/// remove at shutdown (`true`).
pub const NETNS_OWNED_ANNOTATION: &str = "io.crius.shim.netns-owned";
/// Annotation: host IPC (no /dev/shm tmpfs).
pub const IPC_ANNOTATION: &str = "io.crius.shim.ipc";
/// Annotation: /dev/shm size in bytes.
pub const SHM_SIZE_ANNOTATION: &str = "io.crius.shim.shm-size";
/// Default deadline of a shim call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long connecting to a shim may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of talking to a shim.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The shim binary could not be run or failed.
    #[error("cannot start the shim: {0}")]
    Launch(String),
    /// Connecting to the shim failed.
    #[error("cannot connect to the shim at {address}: {message}")]
    Connect {
        /// The address.
        address: String,
        /// Why.
        message: String,
    },
    /// The shim answered with an error status.
    #[error("shim {method}: {message}")]
    Rpc {
        /// The call.
        method: &'static str,
        /// The status code the shim gave.
        code: ttrpc::Code,
        /// The shim's message.
        message: String,
    },
    /// The call did not complete (transport error, timeout, shim gone).
    #[error("shim {method} failed: {message}")]
    Transport {
        /// The call.
        method: &'static str,
        /// Why.
        message: String,
    },
}

impl ShimError {
    /// Whether the shim said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            ShimError::Rpc {
                code: ttrpc::Code::NOT_FOUND,
                ..
            }
        )
    }

    /// Whether the shim is unreachable (gone, or never came up).
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ShimError::Connect { .. } | ShimError::Transport { .. }
        )
    }
}

fn rpc_error(method: &'static str, e: ttrpc::Error) -> ShimError {
    match e {
        ttrpc::Error::RpcStatus(s) => ShimError::Rpc {
            method,
            code: s.code(),
            message: s.message().to_string(),
        },
        other => ShimError::Transport {
            method,
            message: other.to_string(),
        },
    }
}

/// How to launch shims.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The shim binary.
    pub binary: PathBuf,
    /// The address passed as `-address` (criusd's socket).
    pub address: String,
    /// `CRIUS_SHIM_SOCKET_DIR`.
    pub socket_dir: PathBuf,
    /// `CRIUS_SHIM_STATE_DIR`.
    pub state_dir: PathBuf,
    /// `TTRPC_ADDRESS`: where shims publish events (empty: nowhere).
    pub events_address: String,
}

/// Finds the shim binary: an explicit path, else next to the running
/// criusd, else in PATH.
pub fn find_binary(configured: &str) -> Result<PathBuf, ShimError> {
    if !configured.is_empty() {
        return Ok(PathBuf::from(configured));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        let candidate = dir.join(SHIM_BINARY);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(SHIM_BINARY))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            ShimError::Launch(format!(
                "{SHIM_BINARY} not found next to criusd or in PATH (set `shim_path`)"
            ))
        })
}

/// A shim criusd launched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launched {
    /// Its ttrpc address (`unix:///...`).
    pub address: String,
    /// The pid of the serving shim (the long-running process itself: it is
    /// criusd's child, not forked again).
    pub pid: Option<u32>,
}

impl Launcher {
    /// Launches the shim serving sandbox `id` with the runtime handler's
    /// binary and root; returns its ttrpc address and pid.
    ///
    /// criusd does itself what the shim's `start` would (containerd's way,
    /// which the shim still offers): it binds the socket at the address
    /// `start` would derive and runs the shim binary in serving mode on it,
    /// in a session of its own. That saves a process and a round trip per
    /// pod, and the address answers at once: connections queue on the
    /// socket until the shim serves them. A shim that dies at start-up shows
    /// as a failed first call. `bundle` is where the pod's files are; the
    /// serving shim runs in `/`.
    #[tracing::instrument(level = "debug", name = "shim_spawn", skip_all, fields(sandbox = id))]
    pub async fn start(
        &self,
        id: &str,
        bundle: &Path,
        runtime: &str,
        runtime_root: &Path,
    ) -> Result<Launched, ShimError> {
        let launch = |what: &str, e: std::io::Error| ShimError::Launch(format!("{what}: {e}"));
        if !bundle.is_dir() {
            return Err(ShimError::Launch(format!(
                "bundle {} is not a directory",
                bundle.display()
            )));
        }
        // Private: only criusd and the shims (root) use the sockets.
        crius_store::private::dir(&self.socket_dir)
            .map_err(|e| launch(&format!("create {}", self.socket_dir.display()), e))?;
        let path = crius_shim::start::socket_path(&self.socket_dir, &self.address, NAMESPACE, id);
        // Left by a shim of this id that died (ids are never reused
        // otherwise).
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path)
            .map_err(|e| launch(&format!("bind {}", path.display()), e))?;
        // Only criusd and containerd (root) connect.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| launch(&format!("chmod {}", path.display()), e))?;
        let args = crius_shim::args::Args {
            namespace: NAMESPACE.to_string(),
            id: id.to_string(),
            address: self.address.clone(),
            publish_binary: String::new(),
            bundle: None,
            debug: false,
            action: crius_shim::args::Action::Serve,
        };
        let input = crius_shim::start::StartInput {
            bootstrap: false,
            ttrpc_address: Some(self.events_address.clone()).filter(|a| !a.is_empty()),
            socket_dir: Some(self.socket_dir.clone()),
            runtime: Some(runtime.to_string()).filter(|r| !r.is_empty()),
            runtime_root: Some(runtime_root.display().to_string()),
        };
        let mut cmd = crius_shim::start::server_command(
            &self.binary,
            &args,
            id,
            std::os::fd::AsRawFd::as_raw_fd(&listener),
            &self.socket_dir,
            &input,
        );
        cmd.env("CRIUS_SHIM_STATE_DIR", &self.state_dir);
        // Not waited for: tokio reaps it when it exits (criusd is its
        // parent until criusd itself goes).
        let spawned = tokio::process::Command::from(cmd).spawn();
        drop(listener);
        let pid = match spawned {
            Ok(child) => child.id(),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(launch(&self.binary.display().to_string(), e));
            }
        };
        Ok(Launched {
            address: format!("unix://{}", path.display()),
            pid,
        })
    }
}

/// The stdio of a process, in the shim's forms (empty, FIFO path,
/// `file://`, `crilog://`).
#[derive(Debug, Clone, Default)]
pub struct Stdio {
    /// Run on a terminal.
    pub terminal: bool,
    /// stdin.
    pub stdin: String,
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
}

/// A connection to one shim.
#[derive(Clone)]
pub struct ShimClient {
    address: String,
    task: TaskClient,
    sandbox: SandboxClient,
}

fn ctx(timeout: Duration) -> context::Context {
    let mut c = context::with_timeout(timeout.as_nanos() as i64);
    c.add(
        "containerd-namespace-ttrpc".to_string(),
        NAMESPACE.to_string(),
    );
    c
}

impl ShimClient {
    /// Connects to a shim's address (`unix:///...`).
    pub async fn connect(address: &str) -> Result<Arc<Self>, ShimError> {
        let client = tokio::time::timeout(
            CONNECT_TIMEOUT,
            ttrpc::asynchronous::Client::connect(address),
        )
        .await
        .map_err(|_| ShimError::Connect {
            address: address.to_string(),
            message: format!("no answer within {CONNECT_TIMEOUT:?}"),
        })?
        .map_err(|e| ShimError::Connect {
            address: address.to_string(),
            message: e.to_string(),
        })?;
        Ok(Arc::new(ShimClient {
            address: address.to_string(),
            task: TaskClient::new(client.clone()),
            sandbox: SandboxClient::new(client),
        }))
    }

    /// The shim's address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// One ttrpc call, in a `shim` span naming the method and the task or
    /// sandbox id.
    async fn call<T, Fut>(
        self: &Arc<Self>,
        method: &'static str,
        id: &str,
        timeout: Duration,
        f: impl FnOnce(ShimClient, context::Context) -> Fut,
    ) -> Result<T, ShimError>
    where
        Fut: Future<Output = ttrpc::Result<T>>,
    {
        let call = f(ShimClient::clone(self), ctx(timeout));
        // The context's deadline travels to the shim; this one also holds
        // when the shim never answers.
        let span = tracing::debug_span!("shim", method, id);
        match tokio::time::timeout(timeout + Duration::from_secs(1), call)
            .instrument(span)
            .await
        {
            Ok(r) => r.map_err(|e| rpc_error(method, e)),
            Err(_) => Err(ShimError::Transport {
                method,
                message: format!("no answer within {timeout:?}"),
            }),
        }
    }

    /// CreateSandbox.
    pub async fn create_sandbox(
        self: &Arc<Self>,
        req: sb::CreateSandboxRequest,
    ) -> Result<(), ShimError> {
        let sandbox_id = req.sandbox_id.clone();
        self.call(
            "CreateSandbox",
            &sandbox_id,
            CALL_TIMEOUT,
            move |c, ctx| async move { c.sandbox.create_sandbox(ctx, &req).await.map(|_| ()) },
        )
        .await
    }

    /// StartSandbox; returns the pause pid.
    pub async fn start_sandbox(self: &Arc<Self>, id: &str) -> Result<u32, ShimError> {
        let mut req = sb::StartSandboxRequest::new();
        req.sandbox_id = id.to_string();
        self.call("StartSandbox", id, CALL_TIMEOUT, move |c, ctx| async move {
            c.sandbox.start_sandbox(ctx, &req).await.map(|r| r.pid)
        })
        .await
    }

    /// SandboxStatus.
    pub async fn sandbox_status(
        self: &Arc<Self>,
        id: &str,
    ) -> Result<sb::SandboxStatusResponse, ShimError> {
        let mut req = sb::SandboxStatusRequest::new();
        req.sandbox_id = id.to_string();
        self.call(
            "SandboxStatus",
            id,
            CALL_TIMEOUT,
            move |c, ctx| async move { c.sandbox.sandbox_status(ctx, &req).await },
        )
        .await
    }

    /// StopSandbox: SIGTERM, then SIGKILL after `timeout`.
    pub async fn stop_sandbox(
        self: &Arc<Self>,
        id: &str,
        timeout: Duration,
    ) -> Result<(), ShimError> {
        let mut req = sb::StopSandboxRequest::new();
        req.sandbox_id = id.to_string();
        req.timeout_secs = timeout.as_secs().min(u32::MAX as u64) as u32;
        self.call(
            "StopSandbox",
            id,
            CALL_TIMEOUT + timeout,
            move |c, ctx| async move { c.sandbox.stop_sandbox(ctx, &req).await.map(|_| ()) },
        )
        .await
    }

    /// WaitSandbox: resolves when the pause container exits (or `timeout`
    /// passes, or the shim goes away: an error).
    pub async fn wait_sandbox(
        self: &Arc<Self>,
        id: &str,
        timeout: Duration,
    ) -> Result<(), ShimError> {
        let mut req = sb::WaitSandboxRequest::new();
        req.sandbox_id = id.to_string();
        self.call("WaitSandbox", id, timeout, move |c, ctx| async move {
            c.sandbox.wait_sandbox(ctx, &req).await.map(|_| ())
        })
        .await
    }

    /// ShutdownSandbox: everything of the pod goes and the shim exits.
    pub async fn shutdown_sandbox(self: &Arc<Self>, id: &str) -> Result<(), ShimError> {
        let mut req = sb::ShutdownSandboxRequest::new();
        req.sandbox_id = id.to_string();
        self.call(
            "ShutdownSandbox",
            id,
            CALL_TIMEOUT,
            move |c, ctx| async move { c.sandbox.shutdown_sandbox(ctx, &req).await.map(|_| ()) },
        )
        .await
    }

    /// Task Shutdown with `now`: the shim exits. For a shim that holds no
    /// pod (criusd died before its CreateSandbox), which ShutdownSandbox
    /// cannot reach.
    pub async fn shutdown_now(self: &Arc<Self>) -> Result<(), ShimError> {
        let mut req = api::ShutdownRequest::new();
        req.now = true;
        self.call("Shutdown", "", CALL_TIMEOUT, move |c, ctx| async move {
            c.task.shutdown(ctx, &req).await.map(|_| ())
        })
        .await
    }

    /// Task Create; returns the init pid.
    pub async fn create_task(
        self: &Arc<Self>,
        req: api::CreateTaskRequest,
    ) -> Result<u32, ShimError> {
        let task_id = req.id.clone();
        self.call("Create", &task_id, CALL_TIMEOUT, move |c, ctx| async move {
            c.task.create(ctx, &req).await.map(|r| r.pid)
        })
        .await
    }

    /// Task Start (of the init, or of an exec with `exec_id`); returns the pid.
    pub async fn start_task(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<u32, ShimError> {
        let mut req = api::StartRequest::new();
        req.id = id.to_string();
        req.exec_id = exec_id.to_string();
        self.call("Start", id, CALL_TIMEOUT, move |c, ctx| async move {
            c.task.start(ctx, &req).await.map(|r| r.pid)
        })
        .await
    }

    /// Task Kill.
    pub async fn kill(
        self: &Arc<Self>,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), ShimError> {
        let mut req = api::KillRequest::new();
        req.id = id.to_string();
        req.exec_id = exec_id.to_string();
        req.signal = signal;
        req.all = all;
        self.call("Kill", id, CALL_TIMEOUT, move |c, ctx| async move {
            c.task.kill(ctx, &req).await.map(|_| ())
        })
        .await
    }

    /// Task Wait: blocks until the process exits (or `timeout` passes);
    /// returns the exit status.
    pub async fn wait(
        self: &Arc<Self>,
        id: &str,
        exec_id: &str,
        timeout: Duration,
    ) -> Result<u32, ShimError> {
        let mut req = api::WaitRequest::new();
        req.id = id.to_string();
        req.exec_id = exec_id.to_string();
        self.call("Wait", id, timeout, move |c, ctx| async move {
            c.task.wait(ctx, &req).await.map(|r| r.exit_status)
        })
        .await
    }

    /// Task Delete.
    pub async fn delete_task(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<(), ShimError> {
        let mut req = api::DeleteRequest::new();
        req.id = id.to_string();
        req.exec_id = exec_id.to_string();
        self.call("Delete", id, CALL_TIMEOUT, move |c, ctx| async move {
            c.task.delete(ctx, &req).await.map(|_| ())
        })
        .await
    }

    /// Task Exec: registers a process described by an OCI process JSON,
    /// with its stdio (see the shim's stdio forms).
    pub async fn exec(
        self: &Arc<Self>,
        id: &str,
        exec_id: &str,
        process_json: Vec<u8>,
        stdio: Stdio,
    ) -> Result<(), ShimError> {
        let mut req = api::ExecProcessRequest::new();
        req.id = id.to_string();
        req.exec_id = exec_id.to_string();
        req.terminal = stdio.terminal;
        req.stdin = stdio.stdin;
        req.stdout = stdio.stdout;
        req.stderr = stdio.stderr;
        let mut any = containerd_shim_protos::protobuf::well_known_types::any::Any::new();
        any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
        any.value = process_json;
        req.spec = containerd_shim_protos::protobuf::MessageField::some(any);
        self.call("Exec", id, CALL_TIMEOUT, move |c, ctx| async move {
            c.task.exec(ctx, &req).await.map(|_| ())
        })
        .await
    }

    /// Task CloseIO: closes the process's stdin.
    pub async fn close_stdin(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<(), ShimError> {
        let mut req = api::CloseIORequest::new();
        req.id = id.to_string();
        req.exec_id = exec_id.to_string();
        req.stdin = true;
        self.call("CloseIO", id, CALL_TIMEOUT, move |c, ctx| async move {
            c.task.close_io(ctx, &req).await.map(|_| ())
        })
        .await
    }

    /// Task ResizePty.
    pub async fn resize_pty(
        self: &Arc<Self>,
        id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<(), ShimError> {
        let mut req = api::ResizePtyRequest::new();
        req.id = id.to_string();
        req.exec_id = exec_id.to_string();
        req.width = width;
        req.height = height;
        self.call("ResizePty", id, CALL_TIMEOUT, move |c, ctx| async move {
            c.task.resize_pty(ctx, &req).await.map(|_| ())
        })
        .await
    }

    /// Task Update: applies an OCI `LinuxResources` JSON object to the
    /// container's cgroups (`runtime update --resources -`).
    pub async fn update(
        self: &Arc<Self>,
        id: &str,
        resources_json: Vec<u8>,
    ) -> Result<(), ShimError> {
        let mut req = api::UpdateTaskRequest::new();
        req.id = id.to_string();
        let mut any = containerd_shim_protos::protobuf::well_known_types::any::Any::new();
        any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
        any.value = resources_json;
        req.resources = containerd_shim_protos::protobuf::MessageField::some(any);
        self.call("Update", id, CALL_TIMEOUT, move |c, ctx| async move {
            c.task.update(ctx, &req).await.map(|_| ())
        })
        .await
    }

    /// `crius.shim.v1.Shim/ReopenLog`: reopens the CRI log file(s) of a
    /// process after they were rotated. (A synchronous connection of its
    /// own, for the duration of the call: crius's service has no async
    /// bindings, and log rotation is rare.)
    pub async fn reopen_log(self: &Arc<Self>, id: &str, exec_id: &str) -> Result<(), ShimError> {
        let mut req = crius_shim::proto::shim::ReopenLogRequest::new();
        req.id = id.to_string();
        req.exec_id = exec_id.to_string();
        let address = self.address.clone();
        let span = tracing::debug_span!("shim", method = "ReopenLog", id);
        tokio::task::spawn_blocking(move || {
            let client = ttrpc::Client::connect(&address).map_err(|e| ShimError::Connect {
                address: address.clone(),
                message: e.to_string(),
            })?;
            crius_shim::proto::shim_ttrpc::ShimClient::new(client)
                .reopen_log(ctx(CALL_TIMEOUT), &req)
                .map(|_| ())
                .map_err(|e| rpc_error("ReopenLog", e))
        })
        .instrument(span)
        .await
        .map_err(|e| ShimError::Transport {
            method: "ReopenLog",
            message: e.to_string(),
        })?
    }

    /// Task State.
    pub async fn state(
        self: &Arc<Self>,
        id: &str,
        exec_id: &str,
    ) -> Result<api::StateResponse, ShimError> {
        let mut req = api::StateRequest::new();
        req.id = id.to_string();
        req.exec_id = exec_id.to_string();
        self.call("State", id, CALL_TIMEOUT, move |c, ctx| async move {
            c.task.state(ctx, &req).await
        })
        .await
    }
}

/// Root filesystem mounts in the shim API's form.
pub fn proto_mounts(
    mounts: &[crius_image::Mount],
) -> Vec<containerd_shim_protos::types::mount::Mount> {
    mounts
        .iter()
        .map(|m| {
            let mut pm = containerd_shim_protos::types::mount::Mount::new();
            pm.type_ = m.kind.clone();
            pm.source = m.source.clone();
            pm.options = m.options.clone();
            pm
        })
        .collect()
}

/// How a pod without an infra (pause) process is set up by its shim.
#[derive(Debug, Clone, Default)]
pub struct NoInfra {
    /// The hostname in the pod's UTS namespace.
    pub hostname: String,
    /// The pod's sysctls.
    pub sysctls: std::collections::BTreeMap<String, String>,
}

/// The annotations telling the shim about the pod's host namespaces, shm
/// size and, for a pod without an infra process, its hostname and sysctls.
pub fn pod_annotations(
    host_network: bool,
    host_ipc: bool,
    shm_size: u64,
    no_infra: Option<&NoInfra>,
    netns_owned: bool,
) -> std::collections::HashMap<String, String> {
    let mut a = std::collections::HashMap::new();
    if netns_owned {
        a.insert(NETNS_OWNED_ANNOTATION.to_string(), "true".to_string());
    }
    if let Some(n) = no_infra {
        a.insert(INFRA_ANNOTATION.to_string(), "none".to_string());
        a.insert(HOSTNAME_ANNOTATION.to_string(), n.hostname.clone());
        if !n.sysctls.is_empty() {
            a.insert(
                SYSCTLS_ANNOTATION.to_string(),
                serde_json::to_string(&n.sysctls).unwrap_or_default(),
            );
        }
    }
    if host_network {
        a.insert(NETWORK_ANNOTATION.to_string(), "host".to_string());
    }
    if host_ipc {
        a.insert(IPC_ANNOTATION.to_string(), "host".to_string());
    }
    a.insert(SHM_SIZE_ANNOTATION.to_string(), shm_size.to_string());
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotations() {
        let a = pod_annotations(true, false, 1024, None, false);
        assert_eq!(a.get(NETWORK_ANNOTATION).map(String::as_str), Some("host"));
        assert!(!a.contains_key(IPC_ANNOTATION));
        assert_eq!(a.get(SHM_SIZE_ANNOTATION).map(String::as_str), Some("1024"));
        assert!(!a.contains_key(INFRA_ANNOTATION));
        assert!(!a.contains_key(NETNS_OWNED_ANNOTATION));
        let n = NoInfra {
            hostname: "web-0".into(),
            sysctls: [("kernel.shmmni".to_string(), "100".to_string())].into(),
        };
        let a = pod_annotations(false, false, 1024, Some(&n), true);
        assert_eq!(a.get(INFRA_ANNOTATION).map(String::as_str), Some("none"));
        assert_eq!(
            a.get(NETNS_OWNED_ANNOTATION).map(String::as_str),
            Some("true")
        );
        assert_eq!(
            a.get(HOSTNAME_ANNOTATION).map(String::as_str),
            Some("web-0")
        );
        assert_eq!(
            a.get(SYSCTLS_ANNOTATION).map(String::as_str),
            Some(r#"{"kernel.shmmni":"100"}"#)
        );
        let a = pod_annotations(false, false, 1024, Some(&NoInfra::default()), false);
        assert!(!a.contains_key(SYSCTLS_ANNOTATION));
    }

    #[test]
    fn errors_map_to_grpc_codes() {
        let rpc = |code| ShimError::Rpc {
            method: "X",
            code,
            message: "m".into(),
        };
        assert_eq!(
            crate::errors::CriError::from(rpc(ttrpc::Code::NOT_FOUND)).code(),
            tonic::Code::NotFound
        );
        assert!(rpc(ttrpc::Code::NOT_FOUND).is_not_found());
        assert_eq!(
            crate::errors::CriError::from(rpc(ttrpc::Code::INVALID_ARGUMENT)).code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            crate::errors::CriError::from(rpc(ttrpc::Code::INTERNAL)).code(),
            tonic::Code::Internal
        );
        let gone = ShimError::Transport {
            method: "X",
            message: "closed".into(),
        };
        assert!(gone.is_unreachable());
        assert_eq!(
            crate::errors::CriError::from(&gone).code(),
            tonic::Code::Unavailable
        );
    }

    #[tokio::test]
    async fn launches_the_serving_shim_on_a_bound_socket() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let seen = dir.path().join("seen");
        let fake = dir.path().join("fake-shim");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\necho \"$CRIUS_SHIM_LISTEN_FD $CRIUS_SHIM_RUNTIME $CRIUS_SHIM_RUNTIME_ROOT $CRIUS_SHIM_STATE_DIR $*\" > {p}.tmp\nreadlink /proc/self/fd/3 >> {p}.tmp\npwd >> {p}.tmp\necho $$ >> {p}.tmp\nmv {p}.tmp {p}\n",
                p = seen.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let l = Launcher {
            binary: fake,
            address: "/run/x.sock".into(),
            socket_dir: dir.path().join("s"),
            state_dir: dir.path().join("state"),
            events_address: String::new(),
        };
        let launched = l
            .start("abc", dir.path(), "runc", Path::new("/run/r"))
            .await
            .unwrap();
        let socket = crius_shim::start::socket_path(&l.socket_dir, "/run/x.sock", NAMESPACE, "abc");
        assert_eq!(launched.address, format!("unix://{}", socket.display()));
        let pid = launched.pid.expect("a pid");
        // Bound before the shim runs: a connection is accepted at once.
        assert!(std::os::unix::net::UnixStream::connect(&socket).is_ok());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !seen.exists() {
            assert!(std::time::Instant::now() < deadline, "the shim never ran");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let text = std::fs::read_to_string(&seen).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            format!(
                "3 runc /run/r {} -namespace k8s.io -id abc -address /run/x.sock",
                l.state_dir.display()
            )
        );
        assert!(lines[1].starts_with("socket:"), "{text}");
        assert_eq!(lines[2], "/");
        // The pid is the serving process's own ($$ of the fake's shell).
        assert_eq!(lines[3], pid.to_string());

        // A binary that cannot run: an error, and no socket left behind.
        let l = Launcher {
            binary: dir.path().join("missing"),
            ..l
        };
        let e = l
            .start("def", dir.path(), "runc", Path::new("/run/r"))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing"), "{e}");
        let gone = crius_shim::start::socket_path(&l.socket_dir, "/run/x.sock", NAMESPACE, "def");
        assert!(!gone.exists());
        assert!(find_binary("/explicit/path").unwrap().ends_with("path"));
    }
}
