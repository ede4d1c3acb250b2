//! Fakes of the daemon's seams, for unit tests of the orchestration
//! (RunPodSandbox and CreateContainer rollback, hand-back, recovery) that
//! need neither root nor a shim binary: an in-memory shim ([`FakeShim`]),
//! its launcher and connector ([`FakeShims`]), the pod network
//! ([`FakeNet`]), and [`TestDaemon`], a daemon over them with its store and
//! image directories in a temporary directory and two local images.
//!
//! Every fake writes what it is asked into one ordered [`Fakes::journal`]
//! (`"Method id"`), and any call can be scripted ([`Fakes::script`]) to
//! fail or to wait for a gate, by method name: the shim's ttrpc method
//! names (`CreateSandbox`, `Create`, `Start`, ...), `Launch`, `Connect`,
//! `ShimDelete` (the launcher), `NetnsCreate`, `NetnsRemove`, `CniAdd`,
//! `CniDel` (the network).

use crate::config::Config;
use crate::daemon::Daemon;
use crate::domain::sandbox::network::PodNet;
use crate::shimclient::{
    Launched, Layout, Shim, ShimApi, ShimError, ShimHost, ShimLaunch, Stdio, NAMESPACE,
};
use containerd_shim_protos::api;
use containerd_shim_protos::sandbox_api as sb;
use containerd_shim_protos::types::task::Status as TaskStatus;
use crius_netns::cni::{CniError, CniNetwork, CniResult, PodNetwork};
use crius_netns::netns::NetnsError;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use ttrpc::Code;

/// The image CreateContainer tests use (present in every [`TestDaemon`]).
pub const TEST_IMAGE: &str = "docker.io/library/busybox:latest";

/// What a scripted call does instead of (or before) its work.
#[derive(Clone)]
pub enum Scripted {
    /// The call fails: the shim answers with this status code (the
    /// network's and the launcher's calls fail with an error of theirs).
    Fail(Code),
    /// The call does not complete: the shim is unreachable (a transport
    /// error; for `Connect`, no connection).
    Unreachable,
    /// The call waits until the gate has a permit (taken), then does its
    /// work. Only for asynchronous calls (not the network's).
    Hold(Arc<tokio::sync::Semaphore>),
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// State shared by all the fakes of one daemon: the journal, the script
/// and the shims launched so far.
#[derive(Default)]
pub struct Fakes {
    journal: Mutex<Vec<String>>,
    script: Mutex<HashMap<&'static str, Scripted>>,
    /// Shims by address.
    shims: Mutex<HashMap<String, Arc<FakeShim>>>,
    /// Network namespaces created and not removed.
    netns: Mutex<BTreeSet<PathBuf>>,
    /// Pods (sandbox ids) CNI ADD ran for and no DEL since.
    attached: Mutex<BTreeSet<String>>,
}

impl Fakes {
    /// Scripts every later call of `method`.
    pub fn script(&self, method: &'static str, what: Scripted) {
        lock(&self.script).insert(method, what);
    }

    /// Lets `method` do its work again.
    pub fn unscript(&self, method: &str) {
        lock(&self.script).remove(method);
    }

    /// Makes `method` wait for the returned gate (add permits to let calls
    /// through).
    pub fn hold(&self, method: &'static str) -> Arc<tokio::sync::Semaphore> {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        self.script(method, Scripted::Hold(gate.clone()));
        gate
    }

    /// Everything the fakes were asked so far, in order.
    pub fn journal(&self) -> Vec<String> {
        lock(&self.journal).clone()
    }

    /// The journal's entries that start with one of `methods` (followed by
    /// a space), in order.
    pub fn calls(&self, methods: &[&str]) -> Vec<String> {
        self.journal()
            .into_iter()
            .filter(|e| methods.iter().any(|m| e.split(' ').next() == Some(*m)))
            .collect()
    }

    /// Empties the journal.
    pub fn clear_journal(&self) {
        lock(&self.journal).clear();
    }

    /// The shim launched for sandbox `id`, if any.
    pub fn shim_of(&self, id: &str) -> Option<Arc<FakeShim>> {
        lock(&self.shims)
            .values()
            .find(|s| s.sandbox == id)
            .cloned()
    }

    /// Adds a running shim for sandbox `id` at `address` (as one left by
    /// an earlier criusd).
    pub fn add_shim(self: &Arc<Self>, id: &str, address: &str) -> Arc<FakeShim> {
        let shim = Arc::new(FakeShim {
            fakes: self.clone(),
            address: address.to_string(),
            sandbox: id.to_string(),
            state: Mutex::default(),
            changed: tokio::sync::Notify::new(),
        });
        lock(&self.shims).insert(address.to_string(), shim.clone());
        shim
    }

    /// Network namespaces created and not removed.
    pub fn netns_held(&self) -> Vec<PathBuf> {
        lock(&self.netns).iter().cloned().collect()
    }

    /// Sandboxes attached to the network (ADD without a DEL since).
    pub fn attached(&self) -> Vec<String> {
        lock(&self.attached).iter().cloned().collect()
    }

    fn record(&self, method: &str, id: &str) {
        lock(&self.journal).push(format!("{method} {id}"));
    }

    fn scripted(&self, method: &str) -> Option<Scripted> {
        lock(&self.script).get(method).cloned()
    }

    /// Records a call and applies its script (waiting at a gate).
    async fn enter(&self, method: &'static str, id: &str) -> Result<(), ShimError> {
        self.record(method, id);
        match self.scripted(method) {
            None => Ok(()),
            Some(Scripted::Fail(code)) => Err(ShimError::Rpc {
                method,
                code,
                message: format!("scripted failure of {method}"),
            }),
            Some(Scripted::Unreachable) => Err(ShimError::Transport {
                method,
                message: "scripted: the shim is gone".into(),
            }),
            Some(Scripted::Hold(gate)) => {
                if let Ok(p) = gate.acquire().await {
                    p.forget();
                }
                Ok(())
            }
        }
    }

    /// Records a synchronous call and tells whether it is scripted to fail.
    fn enter_sync(&self, method: &'static str, id: &str) -> Option<String> {
        self.record(method, id);
        match self.scripted(method) {
            Some(Scripted::Fail(_) | Scripted::Unreachable) => {
                Some(format!("scripted failure of {method}"))
            }
            _ => None,
        }
    }
}

/// The state of a fake task or exec process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Exited with this status.
    Stopped(u32),
}

#[derive(Debug, Clone)]
struct Task {
    pid: u32,
    state: TaskState,
}

#[derive(Default)]
struct ShimState {
    /// The shim process has exited (ShutdownSandbox, Shutdown, or
    /// [`FakeShim::die`]): every call fails as unreachable.
    gone: bool,
    /// The sandbox was created; (started, stopped).
    sandbox: Option<(bool, bool)>,
    /// The netns CreateSandbox handed over (the shim removes it at
    /// shutdown).
    netns: Option<PathBuf>,
    tasks: HashMap<(String, String), Task>,
    next_pid: u32,
}

/// An in-memory shim of one pod: sandbox and tasks with their states,
/// exits that wake waiters.
pub struct FakeShim {
    fakes: Arc<Fakes>,
    address: String,
    sandbox: String,
    state: Mutex<ShimState>,
    changed: tokio::sync::Notify,
}

fn not_found(method: &'static str, what: &str) -> ShimError {
    ShimError::Rpc {
        method,
        code: Code::NOT_FOUND,
        message: format!("{what}: not found"),
    }
}

impl FakeShim {
    fn inner(&self) -> MutexGuard<'_, ShimState> {
        lock(&self.state)
    }

    /// Records the call, fails it when the shim is gone, applies the
    /// script.
    async fn enter(&self, method: &'static str, id: &str) -> Result<(), ShimError> {
        self.fakes.enter(method, id).await?;
        if self.inner().gone {
            return Err(ShimError::Transport {
                method,
                message: "connection closed: the shim exited".into(),
            });
        }
        Ok(())
    }

    fn pid(s: &mut ShimState) -> u32 {
        s.next_pid += 1;
        1000 + s.next_pid
    }

    fn stop_all(s: &mut ShimState, status: u32) {
        for t in s.tasks.values_mut() {
            if !matches!(t.state, TaskState::Stopped(_)) {
                t.state = TaskState::Stopped(status);
            }
        }
    }

    /// Whether the shim process is still there.
    pub fn alive(&self) -> bool {
        !self.inner().gone
    }

    /// Whether the shim holds a sandbox (created, not shut down).
    pub fn has_sandbox(&self) -> bool {
        let s = self.inner();
        !s.gone && s.sandbox.is_some()
    }

    /// The state of task `id`'s init process, if the shim has the task.
    pub fn task(&self, id: &str) -> Option<TaskState> {
        self.inner()
            .tasks
            .get(&(id.to_string(), String::new()))
            .map(|t| t.state)
    }

    /// The task's init process exits on its own with `status`.
    pub fn exit(&self, id: &str, status: u32) {
        if let Some(t) = self.inner().tasks.get_mut(&(id.to_string(), String::new())) {
            t.state = TaskState::Stopped(status);
        }
        self.changed.notify_waiters();
    }

    /// The shim process dies: every call from now on fails as
    /// unreachable, waiters get a transport error.
    pub fn die(&self) {
        self.inner().gone = true;
        self.changed.notify_waiters();
    }

    /// Waits until `done` holds of the state (woken by every change), at
    /// most `timeout`.
    async fn wait_until<T>(
        &self,
        method: &'static str,
        timeout: Duration,
        mut done: impl FnMut(&ShimState) -> Option<Result<T, ShimError>>,
    ) -> Result<T, ShimError> {
        let waited = tokio::time::timeout(timeout, async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                {
                    let s = self.inner();
                    if s.gone {
                        return Err(ShimError::Transport {
                            method,
                            message: "connection closed: the shim exited".into(),
                        });
                    }
                    if let Some(r) = done(&s) {
                        return r;
                    }
                }
                changed.await;
            }
        })
        .await;
        waited.unwrap_or_else(|_| {
            Err(ShimError::Transport {
                method,
                message: format!("no answer within {timeout:?}"),
            })
        })
    }
}

#[async_trait::async_trait]
impl ShimApi for FakeShim {
    fn address(&self) -> &str {
        &self.address
    }

    async fn create_sandbox(&self, req: sb::CreateSandboxRequest) -> Result<(), ShimError> {
        self.enter("CreateSandbox", &req.sandbox_id).await?;
        let mut s = self.inner();
        s.sandbox = Some((false, false));
        s.netns = Some(PathBuf::from(&req.netns_path)).filter(|_| !req.netns_path.is_empty());
        Ok(())
    }

    async fn start_sandbox(&self, id: &str) -> Result<u32, ShimError> {
        self.enter("StartSandbox", id).await?;
        let mut s = self.inner();
        match s.sandbox.as_mut() {
            Some(sb) => {
                sb.0 = true;
                Ok(Self::pid(&mut s))
            }
            None => Err(not_found("StartSandbox", id)),
        }
    }

    async fn sandbox_status(&self, id: &str) -> Result<sb::SandboxStatusResponse, ShimError> {
        self.enter("SandboxStatus", id).await?;
        let s = self.inner();
        let Some((started, stopped)) = s.sandbox else {
            return Err(not_found("SandboxStatus", id));
        };
        let mut r = sb::SandboxStatusResponse::new();
        r.sandbox_id = id.to_string();
        r.state = match (started, stopped) {
            (_, true) => "SANDBOX_NOTREADY",
            (true, false) => "SANDBOX_READY",
            (false, false) => "SANDBOX_CREATED",
        }
        .to_string();
        Ok(r)
    }

    async fn stop_sandbox(&self, id: &str, _timeout: Duration) -> Result<(), ShimError> {
        self.enter("StopSandbox", id).await?;
        {
            let mut s = self.inner();
            let Some(sb) = s.sandbox.as_mut() else {
                return Err(not_found("StopSandbox", id));
            };
            sb.1 = true;
            Self::stop_all(&mut s, 137);
        }
        self.changed.notify_waiters();
        Ok(())
    }

    async fn wait_sandbox(&self, id: &str, timeout: Duration) -> Result<(), ShimError> {
        self.enter("WaitSandbox", id).await?;
        self.wait_until("WaitSandbox", timeout, |s| match s.sandbox {
            None => Some(Err(not_found("WaitSandbox", id))),
            Some((_, true)) => Some(Ok(())),
            Some(_) => None,
        })
        .await
    }

    async fn shutdown_sandbox(&self, id: &str) -> Result<(), ShimError> {
        self.enter("ShutdownSandbox", id).await?;
        {
            let mut s = self.inner();
            if s.sandbox.is_none() {
                return Err(not_found("ShutdownSandbox", id));
            }
            Self::stop_all(&mut s, 137);
            s.gone = true;
            // Everything of the pod goes with the shim, the netns too.
            if let Some(ns) = s.netns.take() {
                lock(&self.fakes.netns).remove(&ns);
            }
        }
        self.changed.notify_waiters();
        Ok(())
    }

    async fn shutdown_now(&self) -> Result<(), ShimError> {
        self.enter("Shutdown", &self.sandbox).await?;
        self.die();
        Ok(())
    }

    async fn create_task(&self, req: api::CreateTaskRequest) -> Result<u32, ShimError> {
        self.enter("Create", &req.id).await?;
        let mut s = self.inner();
        let key = (req.id.clone(), String::new());
        if s.tasks.contains_key(&key) {
            return Err(ShimError::Rpc {
                method: "Create",
                code: Code::ALREADY_EXISTS,
                message: format!("task {} exists", req.id),
            });
        }
        let pid = Self::pid(&mut s);
        s.tasks.insert(
            key,
            Task {
                pid,
                state: TaskState::Created,
            },
        );
        Ok(pid)
    }

    async fn start_task(&self, id: &str, exec_id: &str) -> Result<u32, ShimError> {
        self.enter("Start", id).await?;
        let mut s = self.inner();
        let Some(t) = s.tasks.get_mut(&(id.to_string(), exec_id.to_string())) else {
            return Err(not_found("Start", id));
        };
        if t.state != TaskState::Created {
            return Err(ShimError::Rpc {
                method: "Start",
                code: Code::FAILED_PRECONDITION,
                message: format!("{id} is {:?}", t.state),
            });
        }
        // An exec process runs to completion at once.
        t.state = if exec_id.is_empty() {
            TaskState::Running
        } else {
            TaskState::Stopped(0)
        };
        let pid = t.pid;
        drop(s);
        self.changed.notify_waiters();
        Ok(pid)
    }

    async fn kill(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        _all: bool,
    ) -> Result<(), ShimError> {
        self.enter("Kill", id).await?;
        {
            let mut s = self.inner();
            let Some(t) = s.tasks.get_mut(&(id.to_string(), exec_id.to_string())) else {
                return Err(not_found("Kill", id));
            };
            // As the real shim: a finished process is NotFound.
            if matches!(t.state, TaskState::Stopped(_)) {
                return Err(not_found("Kill", id));
            }
            t.state = TaskState::Stopped(128 + signal);
        }
        self.changed.notify_waiters();
        Ok(())
    }

    async fn wait(&self, id: &str, exec_id: &str, timeout: Duration) -> Result<u32, ShimError> {
        self.enter("Wait", id).await?;
        let key = (id.to_string(), exec_id.to_string());
        self.wait_until("Wait", timeout, |s| match s.tasks.get(&key) {
            None => Some(Err(not_found("Wait", id))),
            Some(Task {
                state: TaskState::Stopped(status),
                ..
            }) => Some(Ok(*status)),
            Some(_) => None,
        })
        .await
    }

    async fn delete_task(&self, id: &str, exec_id: &str) -> Result<(), ShimError> {
        self.enter("Delete", id).await?;
        let mut s = self.inner();
        let key = (id.to_string(), exec_id.to_string());
        match s.tasks.get(&key).map(|t| t.state) {
            None => Err(not_found("Delete", id)),
            Some(TaskState::Running) => Err(ShimError::Rpc {
                method: "Delete",
                code: Code::FAILED_PRECONDITION,
                message: format!("{id} is running"),
            }),
            Some(_) => {
                s.tasks.remove(&key);
                Ok(())
            }
        }
    }

    async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        _process_json: Vec<u8>,
        _stdio: Stdio,
    ) -> Result<(), ShimError> {
        self.enter("Exec", id).await?;
        let mut s = self.inner();
        if !s.tasks.contains_key(&(id.to_string(), String::new())) {
            return Err(not_found("Exec", id));
        }
        let pid = Self::pid(&mut s);
        s.tasks.insert(
            (id.to_string(), exec_id.to_string()),
            Task {
                pid,
                state: TaskState::Created,
            },
        );
        Ok(())
    }

    async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), ShimError> {
        self.enter("CloseIO", id).await?;
        self.known("CloseIO", id, exec_id)
    }

    async fn resize_pty(
        &self,
        id: &str,
        exec_id: &str,
        _width: u32,
        _height: u32,
    ) -> Result<(), ShimError> {
        self.enter("ResizePty", id).await?;
        self.known("ResizePty", id, exec_id)
    }

    async fn update(&self, id: &str, _resources_json: Vec<u8>) -> Result<(), ShimError> {
        self.enter("Update", id).await?;
        self.known("Update", id, "")
    }

    async fn reopen_log(&self, id: &str, exec_id: &str) -> Result<(), ShimError> {
        self.enter("ReopenLog", id).await?;
        self.known("ReopenLog", id, exec_id)
    }

    async fn attach(&self, id: &str, _socket: &str, _stdin: bool) -> Result<(), ShimError> {
        self.enter("Attach", id).await?;
        self.known("Attach", id, "")
    }

    async fn state(&self, id: &str, exec_id: &str) -> Result<api::StateResponse, ShimError> {
        self.enter("State", id).await?;
        let s = self.inner();
        let Some(t) = s.tasks.get(&(id.to_string(), exec_id.to_string())) else {
            return Err(not_found("State", id));
        };
        let mut r = api::StateResponse::new();
        r.id = id.to_string();
        r.exec_id = exec_id.to_string();
        r.pid = t.pid;
        let (status, exit) = match t.state {
            TaskState::Created => (TaskStatus::CREATED, 0),
            TaskState::Running => (TaskStatus::RUNNING, 0),
            TaskState::Stopped(code) => (TaskStatus::STOPPED, code),
        };
        r.status = status.into();
        r.exit_status = exit;
        Ok(r)
    }
}

impl FakeShim {
    fn known(&self, method: &'static str, id: &str, exec_id: &str) -> Result<(), ShimError> {
        if self
            .inner()
            .tasks
            .contains_key(&(id.to_string(), exec_id.to_string()))
        {
            Ok(())
        } else {
            Err(not_found(method, id))
        }
    }
}

/// Connects to fake shims and launches them ([`ShimHost`]).
pub struct FakeShims(pub Arc<Fakes>);

#[async_trait::async_trait]
impl ShimHost for FakeShims {
    async fn connect(&self, address: &str) -> Result<Shim, ShimError> {
        let shim = lock(&self.0.shims).get(address).cloned();
        let id = shim.as_ref().map(|s| s.sandbox.clone()).unwrap_or_default();
        let refused = |message: &str| ShimError::Connect {
            address: address.to_string(),
            message: message.to_string(),
        };
        match self.0.enter("Connect", &id).await {
            Ok(()) => {}
            Err(_) => return Err(refused("scripted: connection refused")),
        }
        match shim {
            Some(s) if s.alive() => Ok(s as Shim),
            Some(_) => Err(refused("connection refused: the shim exited")),
            None => Err(refused("no such socket")),
        }
    }

    fn launcher(&self, config: &Config) -> Result<Arc<dyn ShimLaunch>, ShimError> {
        Ok(Arc::new(FakeLauncher {
            fakes: self.0.clone(),
            layout: Layout::under(&config.state),
            address: config.socket.display().to_string(),
        }))
    }
}

/// Launches fake shims at the address a real launch would give them, and
/// records the `delete` actions asked for.
pub struct FakeLauncher {
    fakes: Arc<Fakes>,
    layout: Layout,
    address: String,
}

#[async_trait::async_trait]
impl ShimLaunch for FakeLauncher {
    async fn start(
        &self,
        id: &str,
        _bundle: &Path,
        _runtime: &str,
        _runtime_root: &Path,
    ) -> Result<Launched, ShimError> {
        self.fakes
            .enter("Launch", id)
            .await
            .map_err(|e| ShimError::Launch(e.to_string()))?;
        let address = format!(
            "unix://{}",
            self.layout.socket(&self.address, NAMESPACE, id).display()
        );
        self.fakes.add_shim(id, &address);
        Ok(Launched { address, pid: None })
    }

    async fn delete(
        &self,
        id: &str,
        _bundle: &Path,
        _runtime: &str,
        _runtime_root: &Path,
        pod: bool,
    ) -> Result<(), ShimError> {
        let what = if pod { "ShimDeletePod" } else { "ShimDelete" };
        self.fakes
            .enter(what, id)
            .await
            .map_err(|e| ShimError::Launch(e.to_string()))?;
        if pod {
            // The pod's private directory goes, with its netns.
            lock(&self.fakes.netns).retain(|p| pod_of(p) != id);
        }
        Ok(())
    }
}

/// The pod network: namespaces and CNI attachments in memory.
pub struct FakeNet(pub Arc<Fakes>);

/// The sandbox id a pod directory path belongs to (`.../<id>/netns`).
fn pod_of(path: &Path) -> String {
    path.parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl PodNet for FakeNet {
    fn create_netns(&self, path: &Path) -> Result<(), NetnsError> {
        if let Some(why) = self.0.enter_sync("NetnsCreate", &pod_of(path)) {
            return Err(NetnsError::Io {
                op: "create",
                path: path.to_path_buf(),
                source: std::io::Error::other(why),
            });
        }
        lock(&self.0.netns).insert(path.to_path_buf());
        Ok(())
    }

    fn remove_netns(&self, path: &Path) -> Result<(), NetnsError> {
        if let Some(why) = self.0.enter_sync("NetnsRemove", &pod_of(path)) {
            return Err(NetnsError::Io {
                op: "remove",
                path: path.to_path_buf(),
                source: std::io::Error::other(why),
            });
        }
        lock(&self.0.netns).remove(path);
        Ok(())
    }

    fn cni_add(&self, _network: &CniNetwork, pod: &PodNetwork) -> Result<CniResult, CniError> {
        if let Some(why) = self.0.enter_sync("CniAdd", &pod.container_id) {
            return Err(CniError::InvalidArgument(why));
        }
        let n = {
            let mut a = lock(&self.0.attached);
            a.insert(pod.container_id.clone());
            a.len()
        };
        let result = serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": pod.netns_path.display().to_string()}],
            "ips": [{"address": format!("10.88.0.{}/16", 1 + n), "interface": 0}],
        });
        Ok(CniResult::from_value(result).expect("a valid CNI result"))
    }

    fn cni_del(&self, _network: &CniNetwork, pod: &PodNetwork) -> Result<(), CniError> {
        if let Some(why) = self.0.enter_sync("CniDel", &pod.container_id) {
            return Err(CniError::InvalidArgument(why));
        }
        lock(&self.0.attached).remove(&pod.container_id);
        Ok(())
    }
}

/// A daemon over the fakes, its directories in a temporary directory, with
/// the pause image and [`TEST_IMAGE`] present.
pub struct TestDaemon {
    /// The daemon.
    pub daemon: Arc<Daemon>,
    /// Its fakes' journal, script and state.
    pub fakes: Arc<Fakes>,
    /// Holds the directories.
    _dir: tempfile::TempDir,
}

/// Adds a local image called `reference` with one (empty) layer.
fn add_image(daemon: &Daemon, id_char: char, reference: &str) {
    let chain = format!("sha256:{}", id_char.to_string().repeat(64));
    let fs = daemon
        .config()
        .root
        .join("images/snapshots")
        .join(&chain["sha256:".len()..])
        .join("fs");
    std::fs::create_dir_all(&fs).unwrap();
    let reference = crius_image::reference::Reference::parse(reference)
        .unwrap()
        .to_string();
    let record = crius_store::Record::new(
        crius_store::ImageMetadata {
            id: format!("sha256:{}", id_char.to_string().repeat(64)),
            repo_tags: vec![reference],
            snapshots: vec![chain],
            config: serde_json::json!({"config": {"Cmd": ["/pause"]}}),
            ..Default::default()
        },
        crius_store::ImageStatus::default(),
    );
    daemon.store.put_image(record).unwrap();
}

impl TestDaemon {
    /// A new daemon over fresh fakes (to be called in a tokio runtime).
    pub fn start() -> TestDaemon {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let mut config = Config {
            root: p.join("root"),
            state: p.join("state"),
            socket: p.join("crius.sock"),
            ..Config::default()
        };
        config.registry.config_path = p.join("certs.d");
        // A network of the built-in loopback only: loads without plugin
        // binaries (the fake network never runs one anyway).
        let conf_dir = p.join("net.d");
        std::fs::create_dir_all(&conf_dir).unwrap();
        std::fs::write(
            conf_dir.join("10-test.conflist"),
            r#"{"cniVersion": "1.0.0", "name": "test", "plugins": [{"type": "loopback"}]}"#,
        )
        .unwrap();
        config.cni.conf_dir = conf_dir;
        config.cni.bin_dirs = vec![p.join("cni-bin")];
        config.cni.builtin_loopback = true;
        let (store, _) = crius_store::Store::open(&p.join("store")).unwrap();
        let fakes = Arc::new(Fakes::default());
        let daemon = Daemon::with_seams(
            config,
            store,
            crius_spec::HostFacts::default(),
            Arc::new(FakeShims(fakes.clone())),
            Arc::new(FakeNet(fakes.clone())),
        )
        .unwrap();
        let pause = daemon.config().pause_image.clone();
        add_image(&daemon, 'a', &pause);
        add_image(&daemon, 'b', TEST_IMAGE);
        TestDaemon {
            daemon: Arc::new(daemon),
            fakes,
            _dir: dir,
        }
    }
}

/// A pod's config: `name` in namespace `default`, its own network.
pub fn pod_config(name: &str) -> k8s_cri::v1::PodSandboxConfig {
    k8s_cri::v1::PodSandboxConfig {
        metadata: Some(k8s_cri::v1::PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("uid-{name}"),
            namespace: "default".to_string(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        ..Default::default()
    }
}

/// A RunPodSandbox request for [`pod_config`].
pub fn run_request(name: &str) -> k8s_cri::v1::RunPodSandboxRequest {
    k8s_cri::v1::RunPodSandboxRequest {
        config: Some(pod_config(name)),
        ..Default::default()
    }
}

/// A CreateContainer request for container `name` of [`TEST_IMAGE`] in
/// pod `sandbox_id` (made from [`pod_config`] of `pod`).
pub fn create_request(
    sandbox_id: &str,
    pod: &str,
    name: &str,
) -> k8s_cri::v1::CreateContainerRequest {
    k8s_cri::v1::CreateContainerRequest {
        pod_sandbox_id: sandbox_id.to_string(),
        config: Some(k8s_cri::v1::ContainerConfig {
            metadata: Some(k8s_cri::v1::ContainerMetadata {
                name: name.to_string(),
                attempt: 0,
            }),
            image: Some(k8s_cri::v1::ImageSpec {
                image: TEST_IMAGE.to_string(),
                ..Default::default()
            }),
            command: vec!["sleep".into(), "1000".into()],
            ..Default::default()
        }),
        sandbox_config: Some(pod_config(pod)),
    }
}

/// Waits (at most 10 s) until `done` holds.
pub async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The id in the first journal entry of `method` (`"Method id"`).
pub fn id_of(fakes: &Fakes, method: &str) -> String {
    fakes
        .calls(&[method])
        .first()
        .and_then(|e| e.split(' ').nth(1))
        .unwrap_or_else(|| panic!("no {method} call in {:?}", fakes.journal()))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fake shim answers as the real one does where the lifecycle
    /// depends on it: states, exits waking waiters, NotFound for unknown
    /// tasks, unreachable once shut down.
    #[tokio::test]
    async fn the_fake_shim_follows_the_task_lifecycle() {
        let fakes = Arc::new(Fakes::default());
        let shim = fakes.add_shim("p", "unix:///fake");
        let code = |r: Result<(), ShimError>| match r {
            Ok(()) => None,
            Err(ShimError::Rpc { code, .. }) => Some(format!("{code:?}")),
            Err(e) => Some(if e.is_unreachable() {
                "UNREACHABLE".to_string()
            } else {
                e.to_string()
            }),
        };
        let mut create = api::CreateTaskRequest::new();
        create.id = "c".into();
        assert_eq!(
            code(shim.start_task("c", "").await.map(drop)),
            Some("NOT_FOUND".into())
        );
        shim.create_task(create.clone()).await.unwrap();
        assert_eq!(
            code(shim.create_task(create).await.map(drop)),
            Some("ALREADY_EXISTS".into())
        );
        shim.start_task("c", "").await.unwrap();
        assert_eq!(shim.task("c"), Some(TaskState::Running));
        assert_eq!(
            code(shim.delete_task("c", "").await),
            Some("FAILED_PRECONDITION".into())
        );
        // A waiter is woken by the kill, with the signal's status.
        let waiter = {
            let shim = shim.clone();
            tokio::spawn(async move { shim.wait("c", "", Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        shim.kill("c", "", 15, false).await.unwrap();
        assert_eq!(waiter.await.unwrap().unwrap(), 143);
        assert_eq!(
            code(shim.kill("c", "", 15, false).await),
            Some("NOT_FOUND".into())
        );
        shim.delete_task("c", "").await.unwrap();
        assert_eq!(
            code(shim.delete_task("c", "").await),
            Some("NOT_FOUND".into())
        );
        // Shutting down a pod it does not hold fails; once it held one,
        // the shim exits and nothing reaches it any more.
        assert_eq!(
            code(shim.shutdown_sandbox("p").await),
            Some("NOT_FOUND".into())
        );
        let mut sandbox = sb::CreateSandboxRequest::new();
        sandbox.sandbox_id = "p".into();
        shim.create_sandbox(sandbox).await.unwrap();
        shim.shutdown_sandbox("p").await.unwrap();
        assert!(!shim.alive());
        assert_eq!(
            code(shim.start_sandbox("p").await.map(drop)),
            Some("UNREACHABLE".into())
        );
        let host = FakeShims(fakes.clone());
        assert!(host.connect("unix:///fake").await.is_err());
        // Every call is in the journal, in order.
        assert_eq!(
            fakes.calls(&["Create", "Kill", "ShutdownSandbox"]),
            [
                "Create c",
                "Create c",
                "Kill c",
                "Kill c",
                "ShutdownSandbox p",
                "ShutdownSandbox p"
            ]
        );
    }
}
