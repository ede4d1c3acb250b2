//! criusd's client of the per-pod shims: ttrpc's asynchronous clients of
//! the task, sandbox and crius's own services over one connection per
//! shim. A connection is a task on criusd's runtime, not threads of its
//! own, and a `Wait` for a container's exit is a parked future.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::api;
use containerd_shim_protos::sandbox_api as sb;
use containerd_shim_protos::sandbox_async::SandboxClient;
use containerd_shim_protos::shim_async::TaskClient;
use containerd_shim_protos::ttrpc::{self, context};
use tracing::Instrument;

use crate::proto::shim as pb;
use crate::proto::shim_ttrpc_async::ShimClient as CriusClient;
use crate::NAMESPACE;

/// Default deadline of a shim call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Deadline of an Attach call (the shim connects back within it).
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
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

pub(crate) fn rpc_error(method: &'static str, e: ttrpc::Error) -> ShimError {
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
    crius: CriusClient,
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
            sandbox: SandboxClient::new(client.clone()),
            crius: CriusClient::new(client),
        }))
    }

    /// The shim's address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// One ttrpc call, in a `shim` span naming the method and the task or
    /// sandbox id.
    async fn call<T, Fut>(
        &self,
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
    pub async fn create_sandbox(&self, req: sb::CreateSandboxRequest) -> Result<(), ShimError> {
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
    pub async fn start_sandbox(&self, id: &str) -> Result<u32, ShimError> {
        let mut req = sb::StartSandboxRequest::new();
        req.sandbox_id = id.to_string();
        self.call("StartSandbox", id, CALL_TIMEOUT, move |c, ctx| async move {
            c.sandbox.start_sandbox(ctx, &req).await.map(|r| r.pid)
        })
        .await
    }

    /// SandboxStatus.
    pub async fn sandbox_status(&self, id: &str) -> Result<sb::SandboxStatusResponse, ShimError> {
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
    pub async fn stop_sandbox(&self, id: &str, timeout: Duration) -> Result<(), ShimError> {
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
    pub async fn wait_sandbox(&self, id: &str, timeout: Duration) -> Result<(), ShimError> {
        let mut req = sb::WaitSandboxRequest::new();
        req.sandbox_id = id.to_string();
        self.call("WaitSandbox", id, timeout, move |c, ctx| async move {
            c.sandbox.wait_sandbox(ctx, &req).await.map(|_| ())
        })
        .await
    }

    /// ShutdownSandbox: everything of the pod goes and the shim exits.
    pub async fn shutdown_sandbox(&self, id: &str) -> Result<(), ShimError> {
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
    pub async fn shutdown_now(&self) -> Result<(), ShimError> {
        let mut req = api::ShutdownRequest::new();
        req.now = true;
        self.call("Shutdown", "", CALL_TIMEOUT, move |c, ctx| async move {
            c.task.shutdown(ctx, &req).await.map(|_| ())
        })
        .await
    }

    /// Task Create; returns the init pid.
    pub async fn create_task(&self, req: api::CreateTaskRequest) -> Result<u32, ShimError> {
        let task_id = req.id.clone();
        self.call("Create", &task_id, CALL_TIMEOUT, move |c, ctx| async move {
            c.task.create(ctx, &req).await.map(|r| r.pid)
        })
        .await
    }

    /// Task Start (of the init, or of an exec with `exec_id`); returns the pid.
    pub async fn start_task(&self, id: &str, exec_id: &str) -> Result<u32, ShimError> {
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
        &self,
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
    pub async fn wait(&self, id: &str, exec_id: &str, timeout: Duration) -> Result<u32, ShimError> {
        let mut req = api::WaitRequest::new();
        req.id = id.to_string();
        req.exec_id = exec_id.to_string();
        self.call("Wait", id, timeout, move |c, ctx| async move {
            c.task.wait(ctx, &req).await.map(|r| r.exit_status)
        })
        .await
    }

    /// Task Delete.
    pub async fn delete_task(&self, id: &str, exec_id: &str) -> Result<(), ShimError> {
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
        &self,
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
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), ShimError> {
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
        &self,
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
    pub async fn update(&self, id: &str, resources_json: Vec<u8>) -> Result<(), ShimError> {
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
    /// process after they were rotated.
    pub async fn reopen_log(&self, id: &str, exec_id: &str) -> Result<(), ShimError> {
        let mut req = pb::ReopenLogRequest::new();
        req.id = id.to_string();
        req.exec_id = exec_id.to_string();
        self.call("ReopenLog", id, CALL_TIMEOUT, move |c, ctx| async move {
            c.crius.reopen_log(ctx, &req).await.map(|_| ())
        })
        .await
    }

    /// `crius.shim.v1.Shim/Attach`: the shim connects to the unix socket
    /// `socket` (which the caller listens on) and copies the init process's
    /// output to it, and with `stdin` what comes back to its stdin; see the
    /// shim's README for the framing. Returns once the shim has connected.
    pub async fn attach(&self, id: &str, socket: &str, stdin: bool) -> Result<(), ShimError> {
        let mut req = pb::AttachRequest::new();
        req.id = id.to_string();
        req.socket = socket.to_string();
        req.stdin = stdin;
        self.call("Attach", id, ATTACH_TIMEOUT, move |c, ctx| async move {
            c.crius.attach(ctx, &req).await.map(|_| ())
        })
        .await
    }

    /// Task State.
    pub async fn state(&self, id: &str, exec_id: &str) -> Result<api::StateResponse, ShimError> {
        let mut req = api::StateRequest::new();
        req.id = id.to_string();
        req.exec_id = exec_id.to_string();
        self.call("State", id, CALL_TIMEOUT, move |c, ctx| async move {
            c.task.state(ctx, &req).await
        })
        .await
    }
}
