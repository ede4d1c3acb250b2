//! criusd's side of the per-pod shims. The client, the launcher, the pod
//! options and the socket and state layout are crius-shim-api's (shared
//! with the shim, `crates/shim/README.md` describes the protocol); here
//! they are gathered under one name for criusd, with the conversion of
//! criusd's own types into the shim API's.

pub use crius_shim_api::client::{
    ShimClient, ShimError, Stdio, ATTACH_TIMEOUT, CALL_TIMEOUT, CONNECT_TIMEOUT,
};
pub use crius_shim_api::launch::{find_binary, Launched, Launcher, SHIM_BINARY};
pub use crius_shim_api::options::{NoInfra, PodOptions};
pub use crius_shim_api::paths::{Layout, PodDir};
pub use crius_shim_api::NAMESPACE;

use containerd_shim_protos::api;
use containerd_shim_protos::sandbox_api as sb;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The calls criusd makes on a pod's shim: what [`ShimClient`] does over
/// ttrpc, as a trait so that the lifecycle can be driven against an
/// in-memory shim in unit tests (`crate::testing`).
#[async_trait::async_trait]
pub trait ShimApi: Send + Sync {
    /// The shim's address.
    fn address(&self) -> &str;
    /// CreateSandbox.
    async fn create_sandbox(&self, req: sb::CreateSandboxRequest) -> Result<(), ShimError>;
    /// StartSandbox; returns the pause pid.
    async fn start_sandbox(&self, id: &str) -> Result<u32, ShimError>;
    /// SandboxStatus.
    async fn sandbox_status(&self, id: &str) -> Result<sb::SandboxStatusResponse, ShimError>;
    /// StopSandbox: SIGTERM, then SIGKILL after `timeout`.
    async fn stop_sandbox(&self, id: &str, timeout: Duration) -> Result<(), ShimError>;
    /// WaitSandbox: resolves when the pause exits (or `timeout` passes).
    async fn wait_sandbox(&self, id: &str, timeout: Duration) -> Result<(), ShimError>;
    /// ShutdownSandbox: everything of the pod goes and the shim exits.
    async fn shutdown_sandbox(&self, id: &str) -> Result<(), ShimError>;
    /// Task Shutdown with `now`, for a shim that holds no pod.
    async fn shutdown_now(&self) -> Result<(), ShimError>;
    /// Task Create; returns the init pid.
    async fn create_task(&self, req: api::CreateTaskRequest) -> Result<u32, ShimError>;
    /// Task Start (of the init, or of an exec); returns the pid.
    async fn start_task(&self, id: &str, exec_id: &str) -> Result<u32, ShimError>;
    /// Task Kill.
    async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<(), ShimError>;
    /// Task Wait; returns the exit status.
    async fn wait(&self, id: &str, exec_id: &str, timeout: Duration) -> Result<u32, ShimError>;
    /// Task Delete.
    async fn delete_task(&self, id: &str, exec_id: &str) -> Result<(), ShimError>;
    /// Task Exec of an OCI process JSON with its stdio.
    async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: Vec<u8>,
        stdio: Stdio,
    ) -> Result<(), ShimError>;
    /// Task CloseIO of stdin.
    async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), ShimError>;
    /// Task ResizePty.
    async fn resize_pty(
        &self,
        id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<(), ShimError>;
    /// Task Update with an OCI `LinuxResources` JSON object.
    async fn update(&self, id: &str, resources_json: Vec<u8>) -> Result<(), ShimError>;
    /// ReopenLog of a process's CRI log.
    async fn reopen_log(&self, id: &str, exec_id: &str) -> Result<(), ShimError>;
    /// Attach: the shim connects to `socket`.
    async fn attach(&self, id: &str, socket: &str, stdin: bool) -> Result<(), ShimError>;
    /// Task State.
    async fn state(&self, id: &str, exec_id: &str) -> Result<api::StateResponse, ShimError>;
}

/// A connection to a pod's shim, as the daemon holds it.
pub type Shim = Arc<dyn ShimApi>;

#[async_trait::async_trait]
impl ShimApi for ShimClient {
    fn address(&self) -> &str {
        ShimClient::address(self)
    }
    async fn create_sandbox(&self, req: sb::CreateSandboxRequest) -> Result<(), ShimError> {
        ShimClient::create_sandbox(self, req).await
    }
    async fn start_sandbox(&self, id: &str) -> Result<u32, ShimError> {
        ShimClient::start_sandbox(self, id).await
    }
    async fn sandbox_status(&self, id: &str) -> Result<sb::SandboxStatusResponse, ShimError> {
        ShimClient::sandbox_status(self, id).await
    }
    async fn stop_sandbox(&self, id: &str, timeout: Duration) -> Result<(), ShimError> {
        ShimClient::stop_sandbox(self, id, timeout).await
    }
    async fn wait_sandbox(&self, id: &str, timeout: Duration) -> Result<(), ShimError> {
        ShimClient::wait_sandbox(self, id, timeout).await
    }
    async fn shutdown_sandbox(&self, id: &str) -> Result<(), ShimError> {
        ShimClient::shutdown_sandbox(self, id).await
    }
    async fn shutdown_now(&self) -> Result<(), ShimError> {
        ShimClient::shutdown_now(self).await
    }
    async fn create_task(&self, req: api::CreateTaskRequest) -> Result<u32, ShimError> {
        ShimClient::create_task(self, req).await
    }
    async fn start_task(&self, id: &str, exec_id: &str) -> Result<u32, ShimError> {
        ShimClient::start_task(self, id, exec_id).await
    }
    async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<(), ShimError> {
        ShimClient::kill(self, id, exec_id, signal, all).await
    }
    async fn wait(&self, id: &str, exec_id: &str, timeout: Duration) -> Result<u32, ShimError> {
        ShimClient::wait(self, id, exec_id, timeout).await
    }
    async fn delete_task(&self, id: &str, exec_id: &str) -> Result<(), ShimError> {
        ShimClient::delete_task(self, id, exec_id).await
    }
    async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: Vec<u8>,
        stdio: Stdio,
    ) -> Result<(), ShimError> {
        ShimClient::exec(self, id, exec_id, process_json, stdio).await
    }
    async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), ShimError> {
        ShimClient::close_stdin(self, id, exec_id).await
    }
    async fn resize_pty(
        &self,
        id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<(), ShimError> {
        ShimClient::resize_pty(self, id, exec_id, width, height).await
    }
    async fn update(&self, id: &str, resources_json: Vec<u8>) -> Result<(), ShimError> {
        ShimClient::update(self, id, resources_json).await
    }
    async fn reopen_log(&self, id: &str, exec_id: &str) -> Result<(), ShimError> {
        ShimClient::reopen_log(self, id, exec_id).await
    }
    async fn attach(&self, id: &str, socket: &str, stdin: bool) -> Result<(), ShimError> {
        ShimClient::attach(self, id, socket, stdin).await
    }
    async fn state(&self, id: &str, exec_id: &str) -> Result<api::StateResponse, ShimError> {
        ShimClient::state(self, id, exec_id).await
    }
}

/// Launching a shim and cleaning up after a dead one: what [`Launcher`]
/// does with the shim binary.
#[async_trait::async_trait]
pub trait ShimLaunch: Send + Sync {
    /// Launches the shim serving sandbox `id` (see [`Launcher::start`]).
    async fn start(
        &self,
        id: &str,
        bundle: &Path,
        runtime: &str,
        runtime_root: &Path,
    ) -> Result<Launched, ShimError>;
    /// The shim binary's `delete` action for task or pod `id` (see
    /// [`Launcher::delete`]).
    async fn delete(
        &self,
        id: &str,
        bundle: &Path,
        runtime: &str,
        runtime_root: &Path,
        pod: bool,
    ) -> Result<(), ShimError>;
}

#[async_trait::async_trait]
impl ShimLaunch for Launcher {
    async fn start(
        &self,
        id: &str,
        bundle: &Path,
        runtime: &str,
        runtime_root: &Path,
    ) -> Result<Launched, ShimError> {
        Launcher::start(self, id, bundle, runtime, runtime_root).await
    }
    async fn delete(
        &self,
        id: &str,
        bundle: &Path,
        runtime: &str,
        runtime_root: &Path,
        pod: bool,
    ) -> Result<(), ShimError> {
        Launcher::delete(self, id, bundle, runtime, runtime_root, pod).await
    }
}

/// How the daemon reaches shims: connecting to one at an address, and the
/// launcher for the running configuration. Chosen when the daemon is
/// built ([`RealShims`] in criusd, a fake in unit tests).
#[async_trait::async_trait]
pub trait ShimHost: Send + Sync {
    /// Connects to the shim at `address` (`unix:///...`).
    async fn connect(&self, address: &str) -> Result<Shim, ShimError>;
    /// The launcher of shims under `config` (its shim binary, socket and
    /// layout); fails when the shim binary cannot be found.
    fn launcher(&self, config: &crate::config::Config) -> Result<Arc<dyn ShimLaunch>, ShimError>;
}

/// The shims criusd runs: [`ShimClient`] over ttrpc, [`Launcher`] with the
/// shim binary.
pub struct RealShims;

#[async_trait::async_trait]
impl ShimHost for RealShims {
    async fn connect(&self, address: &str) -> Result<Shim, ShimError> {
        Ok(ShimClient::connect(address).await? as Shim)
    }

    fn launcher(&self, config: &crate::config::Config) -> Result<Arc<dyn ShimLaunch>, ShimError> {
        Ok(Arc::new(Launcher {
            binary: find_binary(&config.shim_path)?,
            address: config.socket.display().to_string(),
            layout: Layout::under(&config.state),
            events_address: String::new(),
        }))
    }
}

/// A mount a task's shim makes at Create: the rootfs (an empty target,
/// the bundle's `rootfs`) or another one at a target relative to the
/// bundle (`crius_shim_api::idmap`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMount {
    /// What to mount.
    pub mount: crius_image::Mount,
    /// Where, relative to the bundle (empty: the rootfs).
    pub target: String,
}

impl TaskMount {
    /// A rootfs mount.
    pub fn rootfs(mount: crius_image::Mount) -> TaskMount {
        TaskMount {
            mount,
            target: String::new(),
        }
    }
}

/// Task mounts in the shim API's form.
pub fn proto_task_mounts(mounts: &[TaskMount]) -> Vec<containerd_shim_protos::types::mount::Mount> {
    mounts
        .iter()
        .zip(proto_mounts(
            &mounts.iter().map(|m| m.mount.clone()).collect::<Vec<_>>(),
        ))
        .map(|(m, mut pm)| {
            pm.target = m.target.clone();
            pm
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
