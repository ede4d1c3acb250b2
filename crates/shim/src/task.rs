//! The task service (`containerd.task.v2.Task` / `containerd.task.v3.Task`).
//!
//! One lock guards every container of the shim. It is held across the
//! runtime calls that change a process's state (create, start, exec, kill,
//! delete, pause, resume) so that per container the events go out in order
//! and an exit is never published before the start it follows. Exits come
//! from the reaper through a channel to one "exits" thread; an exit whose
//! pid is not known yet (the pid is only known once runc returns) is kept by
//! the reaper and claimed by the create/exec path, so each exit is delivered
//! exactly once.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use containerd_shim_protos::api;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::{Message, MessageField};
use containerd_shim_protos::shim::oci::Options as RuncOptions;
use containerd_shim_protos::ttrpc::{self, TtrpcContext};
use containerd_shim_protos::types::task::{ProcessInfo, Status};
use serde::{Deserialize, Serialize};

use crius_shim_api::launch::{RUNTIME_ENV, RUNTIME_ROOT_ENV};

use crate::events::{timestamp, Event, Publisher};
use crate::io::{self as pio, ProcIo};
use crate::mount::{self, MountSpec};
use crate::reaper::{Exit, Reaper};
use crate::runc::{Runc, RuncError};

/// How long an exit waits for its output copy threads to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the output of a container whose init shared a PID namespace
/// may stay open after the init's exit before the container's remaining
/// processes are killed (see `Inner::exit_found`).
const LEFTOVER_GRACE: Duration = Duration::from_millis(50);

/// The pid of a holder from its launcher's wait status, stdout (the pid)
/// and stderr (why it failed), or what went wrong.
fn holder_pid(status: i32, out: &[u8], err: &[u8]) -> std::result::Result<i32, String> {
    let said = String::from_utf8_lossy(out);
    let pid = said.trim().parse::<i32>().ok().filter(|p| *p > 1);
    match pid.filter(|_| status == 0) {
        Some(pid) => Ok(pid),
        None => Err(format!(
            "the pid holder did not start (status {}, said {:?}, error {:?})",
            crate::reaper::exit_code(status),
            said.trim(),
            String::from_utf8_lossy(err).trim()
        )),
    }
}

/// Annotation naming the pod sandbox a container belongs to.
pub const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";
/// containerd's shim grouping annotation.
pub const GROUP_ANNOTATION: &str = "io.containerd.runc.v2.group";
/// File in the bundle recording the runtime used (for `delete`).
pub const RUNTIME_FILE: &str = "crius-shim.json";

/// Errors of the task service.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// No such container or process.
    #[error("{0}: not found")]
    NotFound(String),
    /// It exists already.
    #[error("{0}: already exists")]
    AlreadyExists(String),
    /// The request is malformed.
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// Not possible in the current state.
    #[error("{0}")]
    Precondition(String),
    /// Not implemented by this shim.
    #[error("{0}")]
    Unimplemented(String),
    /// The runtime failed.
    #[error(transparent)]
    Runc(#[from] RuncError),
    /// Mounting the rootfs failed.
    #[error(transparent)]
    Mount(#[from] mount::MountError),
    /// Setting up stdio failed.
    #[error(transparent)]
    Io(#[from] pio::IoError),
    /// Other local failure.
    #[error("{0}")]
    Internal(String),
}

impl From<TaskError> for ttrpc::Error {
    fn from(e: TaskError) -> ttrpc::Error {
        let code = match &e {
            TaskError::NotFound(_) => ttrpc::Code::NOT_FOUND,
            TaskError::AlreadyExists(_) => ttrpc::Code::ALREADY_EXISTS,
            TaskError::Invalid(_) => ttrpc::Code::INVALID_ARGUMENT,
            TaskError::Precondition(_) => ttrpc::Code::FAILED_PRECONDITION,
            TaskError::Unimplemented(_) => ttrpc::Code::UNIMPLEMENTED,
            _ => ttrpc::Code::INTERNAL,
        };
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
    }
}

type Result<T> = std::result::Result<T, TaskError>;

/// Checks an id used in file names: `[A-Za-z0-9][A-Za-z0-9_.-]*`, at most 128
/// bytes.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .enumerate()
            .all(|(i, b)| b.is_ascii_alphanumeric() || (i > 0 && matches!(b, b'_' | b'.' | b'-')))
}

/// Checks a sandbox id (same rules as [`valid_id`]).
pub fn check_sandbox_id(id: &str) -> Result<()> {
    check_id(id)
}

fn check_id(id: &str) -> Result<()> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(TaskError::Invalid(format!("bad id {id:?}")))
    }
}

/// The shim's fixed configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// containerd namespace.
    pub namespace: String,
    /// Directory for console sockets (short paths).
    pub socket_dir: PathBuf,
    /// Default runtime binary.
    pub runtime: String,
    /// Default runtime root (the namespace is appended).
    pub runtime_root: PathBuf,
}

/// The runtime a bundle was created with, persisted in the bundle.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RuntimeRecord {
    /// Binary.
    pub binary: String,
    /// `--root`.
    pub root: PathBuf,
}

/// Writes `data` to `path` atomically (write, rename). No fsync: what the
/// shim writes (bundle config, runtime record) describes processes that do
/// not survive a reboot, and a crashed process leaves the old or the new
/// file, never a torn one.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = crius_store::private::create_file(&tmp)?;
        f.write_all(data)?;
    }
    std::fs::rename(&tmp, path)
}

/// The exit of a process.
#[derive(Default)]
pub struct ExitCell {
    m: Mutex<Option<(u32, SystemTime)>>,
    cv: Condvar,
}

impl ExitCell {
    fn get(&self) -> Option<(u32, SystemTime)> {
        *self.m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the exit once; returns false when it was already set.
    fn set(&self, code: u32, at: SystemTime) -> bool {
        let mut g = self.m.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_some() {
            return false;
        }
        *g = Some((code, at));
        self.cv.notify_all();
        true
    }

    /// Blocks until the process exited.
    pub fn wait(&self) -> (u32, SystemTime) {
        let mut g = self.m.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(v) = *g {
                return v;
            }
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Waits at most `t`.
    pub fn wait_for(&self, t: Duration) -> Option<(u32, SystemTime)> {
        let g = self.m.lock().unwrap_or_else(|e| e.into_inner());
        let (g, _) = self
            .cv
            .wait_timeout_while(g, t, |v| v.is_none())
            .unwrap_or_else(|e| e.into_inner());
        *g
    }
}

struct Proc {
    pid: i32,
    status: Status,
    /// Reaped, exit being finalized (waiting for output to drain).
    exiting: bool,
    exit: Arc<ExitCell>,
    io: ProcIo,
    stdin: String,
    stdout: String,
    stderr: String,
    terminal: bool,
    /// Exec processes: the process spec until Start.
    spec: Option<Vec<u8>>,
}

impl Proc {
    fn new(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> Proc {
        Proc {
            pid: 0,
            status: Status::CREATED,
            exiting: false,
            exit: Arc::new(ExitCell::default()),
            io: ProcIo::default(),
            stdin: stdin.into(),
            stdout: stdout.into(),
            stderr: stderr.into(),
            terminal,
            spec: None,
        }
    }
}

struct Container {
    bundle: PathBuf,
    runc: Runc,
    /// The task's mounts (rootfs and others below the bundle) are made.
    mounted: bool,
    /// The init is PID 1 of a pid namespace of its own: a SIGKILL to it
    /// takes every process of the container with it.
    own_pidns: bool,
    /// The bundle's spec has no hooks.
    no_hooks: bool,
    init: Proc,
    execs: HashMap<String, Proc>,
    oom: Option<crate::oom::OomWatch>,
}

impl Container {
    fn log(&self) -> PathBuf {
        self.bundle.join("runc-log.json")
    }

    fn proc(&self, exec_id: &str) -> Result<&Proc> {
        if exec_id.is_empty() {
            Ok(&self.init)
        } else {
            self.execs
                .get(exec_id)
                .ok_or_else(|| TaskError::NotFound(format!("process {exec_id}")))
        }
    }

    fn proc_mut(&mut self, exec_id: &str) -> Result<&mut Proc> {
        if exec_id.is_empty() {
            Ok(&mut self.init)
        } else {
            self.execs
                .get_mut(exec_id)
                .ok_or_else(|| TaskError::NotFound(format!("process {exec_id}")))
        }
    }
}

/// The shared state behind the task (and sandbox) services.
pub struct Inner {
    cfg: Config,
    reaper: Arc<Reaper>,
    publisher: Publisher,
    containers: Mutex<HashMap<String, Container>>,
    shutdown: Mutex<Option<Sender<()>>>,
    counter: AtomicU64,
    /// The pod's PID-namespace holder, by pid (see `holder`).
    holders: Mutex<HashMap<i32, Arc<ExitCell>>>,
}

/// The task service.
#[derive(Clone)]
pub struct TaskService {
    /// Shared state.
    pub inner: Arc<Inner>,
}

fn now() -> SystemTime {
    SystemTime::now()
}

impl TaskService {
    /// Creates the service; exits from `reaper` are processed by a thread
    /// started here. `shutdown` is signalled when the shim should exit.
    pub fn new(
        cfg: Config,
        reaper: Arc<Reaper>,
        publisher: Publisher,
        shutdown: Sender<()>,
    ) -> std::io::Result<TaskService> {
        let inner = Arc::new(Inner {
            cfg,
            reaper: reaper.clone(),
            publisher,
            containers: Mutex::new(HashMap::new()),
            shutdown: Mutex::new(Some(shutdown)),
            counter: AtomicU64::new(0),
            holders: Mutex::new(HashMap::new()),
        });
        let (tx, rx) = channel::<Exit>();
        reaper.set_hook(Box::new(move |e| {
            let _ = tx.send(e);
        }));
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("exits".into())
            .stack_size(128 * 1024)
            .spawn(move || exits_loop(rx, weak))?;
        Ok(TaskService { inner })
    }
}

/// Container `id` of the locked table; `NotFound` when there is none.
fn container<'a>(g: &'a HashMap<String, Container>, id: &str) -> Result<&'a Container> {
    g.get(id)
        .ok_or_else(|| TaskError::NotFound(format!("container {id}")))
}

/// Container `id` of the locked table, to change; `NotFound` when there is
/// none.
fn container_mut<'a>(g: &'a mut HashMap<String, Container>, id: &str) -> Result<&'a mut Container> {
    g.get_mut(id)
        .ok_or_else(|| TaskError::NotFound(format!("container {id}")))
}

fn exits_loop(rx: Receiver<Exit>, inner: std::sync::Weak<Inner>) {
    while let Ok(e) = rx.recv() {
        let Some(inner) = inner.upgrade() else { return };
        inner.handle_exit(e);
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Container>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.cfg.namespace
    }

    fn holders(&self) -> MutexGuard<'_, HashMap<i32, Arc<ExitCell>>> {
        self.holders.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs the holder launcher `cmd` (see `holder`) to its end and
    /// registers the holder it started; returns the holder's pid and the
    /// cell its exit will be set in.
    pub fn spawn_holder(&self, cmd: &mut Command) -> Result<(i32, Arc<ExitCell>)> {
        let since = self.reaper.seq();
        let mut spawned = self
            .reaper
            .spawn(
                cmd.stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .stdin(Stdio::null()),
            )
            .map_err(|e| TaskError::Internal(e.to_string()))?;
        let stderr = spawned.child.stderr.take();
        let (status, out) = spawned
            .wait_with_output()
            .map_err(|e| TaskError::Internal(e.to_string()))?;
        // Read after the launcher's exit: it writes one line at most (why
        // it failed), which fits the pipe, and the holder has no stderr
        // once it is ready (or has exited).
        let mut err = Vec::new();
        if let Some(e) = stderr {
            use std::io::Read;
            let _ = e.take(4096).read_to_end(&mut err);
        }
        let pid = holder_pid(status, &out, &err).map_err(TaskError::Internal)?;
        let cell = Arc::new(ExitCell::default());
        let _containers = self.lock();
        self.holders().insert(pid, cell.clone());
        if let Some(e) = self.reaper.take_unclaimed(pid, since) {
            cell.set(e.code(), now());
        }
        Ok((pid, cell))
    }

    /// Kills a holder (and with it its PID namespace) and forgets it once
    /// it exited, waiting at most `t`; true if it is gone.
    pub fn kill_holder(&self, pid: i32, cell: &ExitCell, t: Duration) -> bool {
        if cell.get().is_none() {
            // SAFETY: the pid is the registered holder's, not yet reaped
            // (its exit cell is unset), so it cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let gone = cell.wait_for(t).is_some();
        if gone {
            self.holders().remove(&pid);
        }
        gone
    }

    fn handle_exit(&self, e: Exit) {
        let mut g = self.lock();
        let found = g.iter_mut().find_map(|(cid, c)| {
            if c.init.pid == e.pid && c.init.exit.get().is_none() && !c.init.exiting {
                return Some((cid.clone(), String::new()));
            }
            c.execs.iter().find_map(|(xid, p)| {
                (p.pid == e.pid && p.exit.get().is_none() && !p.exiting)
                    .then(|| (cid.clone(), xid.clone()))
            })
        });
        let Some((cid, xid)) = found else {
            let holders = self.holders();
            if let Some(cell) = holders.get(&e.pid) {
                cell.set(e.code(), now());
                tracing::info!(pid = e.pid, status = e.code(), "pid holder exited");
                return;
            }
            // Maybe a process whose pid is not registered yet: keep it while
            // holding the containers (and holders) lock, so registration
            // cannot miss it.
            self.reaper.record_unclaimed(e);
            return;
        };
        self.exit_found(g, &cid, &xid, e);
    }

    /// Marks a reaped process as exiting and finalizes it once its output
    /// drained. Consumes the lock guard.
    fn exit_found<'a>(
        &'a self,
        mut g: MutexGuard<'a, HashMap<String, Container>>,
        cid: &str,
        xid: &str,
        e: Exit,
    ) {
        let at = now();
        let (drain, leftovers) = {
            let Some(c) = g.get_mut(cid) else { return };
            // The init of a container without a PID namespace of its own
            // leaves its other processes behind when it exits (they go to
            // that namespace's PID 1), and they may hold its output open.
            let leftovers = (xid.is_empty() && !c.own_pidns).then(|| (c.runc.clone(), c.log()));
            let Ok(p) = c.proc_mut(xid) else { return };
            p.exiting = true;
            let settle = p.io.process_exited();
            (p.io.copies.then(|| (p.io.drain.clone(), settle)), leftovers)
        };
        if let Some((d, settle)) = drain {
            drop(g);
            let first = match leftovers {
                Some(_) => LEFTOVER_GRACE + settle,
                None => DRAIN_TIMEOUT,
            };
            if !d.wait(first) {
                if let Some((runc, log)) = leftovers {
                    // Output still open after the init's exit: the rest of
                    // the container goes, as it would with the init of a
                    // PID namespace of its own (containerd's shim does the
                    // same), and the exit is reported now rather than after
                    // the drain's timeout (this thread reports every exit).
                    tracing::info!(
                        container = cid,
                        "the init exited; killing the processes it left"
                    );
                    if let Err(e) = runc.kill(cid, &log, libc::SIGKILL as u32, true) {
                        tracing::warn!(container = cid, error = %e, "cannot kill the init's leftover processes");
                    }
                    d.wait(DRAIN_TIMEOUT);
                }
            }
            g = self.lock();
        }
        let Some(c) = g.get_mut(cid) else { return };
        let Ok(p) = c.proc_mut(xid) else { return };
        if !p.exit.set(e.code(), at) {
            return;
        }
        p.status = Status::STOPPED;
        p.io.close_stdin();
        // Output drained: attached clients read EOF.
        p.io.attach.close_all();
        let mut m = ev::TaskExit::new();
        m.container_id = cid.to_string();
        m.id = if xid.is_empty() {
            cid.to_string()
        } else {
            xid.to_string()
        };
        m.pid = e.pid as u32;
        m.exit_status = e.code();
        m.exited_at = MessageField::some(timestamp(at));
        self.publisher.publish(Event::Exit(m));
        if xid.is_empty() {
            c.oom = None;
            // Execs that were added but never started cannot start any more.
            for x in c.execs.values_mut() {
                if x.spec.take().is_some() {
                    x.status = Status::STOPPED;
                    x.exit.set(255, at);
                }
            }
        }
        tracing::info!(container = cid, exec = xid, status = e.code(), "exited");
    }

    /// Claims an exit that raced with the runtime call that returned `pid`.
    fn claim_early_exit<'a>(
        &'a self,
        g: MutexGuard<'a, HashMap<String, Container>>,
        cid: &str,
        xid: &str,
        pid: i32,
        since: u64,
    ) {
        if let Some(e) = self.reaper.take_unclaimed(pid, since) {
            self.exit_found(g, cid, xid, e);
        }
    }

    fn runtime_for(&self, options: &MessageField<Any>) -> Result<RuntimeRecord> {
        let mut binary = std::env::var(RUNTIME_ENV).unwrap_or_default();
        let mut root = std::env::var(RUNTIME_ROOT_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|_| self.cfg.runtime_root.clone());
        if binary.is_empty() {
            binary = self.cfg.runtime.clone();
        }
        if let Some(any) = options.as_ref() {
            if any.type_url.ends_with("containerd.runc.v1.Options") {
                let o = RuncOptions::parse_from_bytes(&any.value)
                    .map_err(|e| TaskError::Invalid(format!("runtime options: {e}")))?;
                if !o.binary_name.is_empty() {
                    binary = o.binary_name;
                }
                if !o.root.is_empty() {
                    root = PathBuf::from(o.root);
                }
            }
        }
        Ok(RuntimeRecord {
            binary,
            root: root.join(&self.cfg.namespace),
        })
    }

    fn console_path(&self) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.cfg
            .socket_dir
            .join(format!("c{}-{n}.sock", std::process::id()))
    }

    /// Create: mounts the rootfs, prepares stdio and runs `runtime create`.
    pub fn create(&self, req: &api::CreateTaskRequest) -> Result<u32> {
        self.create_with(req, false)
    }

    /// Create and start in one `runtime run --detach` (one runtime
    /// invocation fewer than create + start); used for the pause container.
    pub fn create_and_start(&self, req: &api::CreateTaskRequest) -> Result<u32> {
        self.create_with(req, true)
    }

    fn create_with(&self, req: &api::CreateTaskRequest, start_now: bool) -> Result<u32> {
        check_id(&req.id)?;
        if !req.checkpoint.is_empty() {
            return Err(TaskError::Unimplemented(
                "restoring from a checkpoint is not supported by crius".into(),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        if !bundle.is_absolute() {
            return Err(TaskError::Invalid(format!(
                "bundle {:?} is not absolute",
                req.bundle
            )));
        }
        let rt = self.runtime_for(&req.options)?;
        let mut g = self.lock();
        if g.contains_key(&req.id) {
            return Err(TaskError::AlreadyExists(format!("container {}", req.id)));
        }
        let rec = serde_json::to_vec(&rt).map_err(|e| TaskError::Internal(e.to_string()))?;
        write_atomic(&bundle.join(RUNTIME_FILE), &rec)
            .map_err(|e| TaskError::Internal(format!("write {RUNTIME_FILE}: {e}")))?;
        let runc = Runc::new(rt.binary, rt.root, self.reaper.clone());
        let mounts: Vec<MountSpec> = req
            .rootfs
            .iter()
            .map(|m| MountSpec {
                kind: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
                target: m.target.clone(),
            })
            .collect();
        let mounted = mount::mount_task(&mounts, &bundle)?;
        let undo_mount = || {
            if mounted {
                if let Err(e) = mount::unmount_task(&bundle) {
                    tracing::warn!(container = %req.id, error = %e, "cannot undo the mounts");
                }
            }
        };
        let mut prep = match pio::prepare(
            &req.stdin,
            &req.stdout,
            &req.stderr,
            req.terminal,
            self.console_path(),
        ) {
            Ok(p) => p,
            Err(e) => {
                undo_mount();
                return Err(e.into());
            }
        };
        let since = self.reaper.seq();
        let log = bundle.join("runc-log.json");
        let stdio = prep.take_stdio();
        let spec_facts = spec_facts(&bundle);
        let pid = match runc.create(
            &req.id,
            &bundle,
            &bundle.join("init.pid"),
            prep.console.as_ref().map(|c| c.path.as_path()),
            stdio,
            start_now,
            spec_facts.systemd_cgroup,
        ) {
            Ok(pid) => pid,
            Err(e) => {
                let _ = runc.delete(&req.id, &log);
                undo_mount();
                return Err(e.into());
            }
        };
        let io = match prep.finish() {
            Ok(io) => io,
            Err(e) => {
                let _ = runc.delete(&req.id, &log);
                undo_mount();
                return Err(e.into());
            }
        };
        let mut init = Proc::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        init.pid = pid;
        init.io = io;
        let oom = crate::oom::OomWatch::start(pid, req.id.clone(), self.publisher.clone());
        g.insert(
            req.id.clone(),
            Container {
                bundle: bundle.clone(),
                runc,
                mounted,
                own_pidns: spec_facts.own_pidns,
                no_hooks: spec_facts.no_hooks,
                init,
                execs: HashMap::new(),
                oom,
            },
        );
        let mut m = ev::TaskCreate::new();
        m.container_id = req.id.clone();
        m.bundle = req.bundle.clone();
        m.rootfs = req.rootfs.clone();
        let mut tio = ev::TaskIO::new();
        tio.stdin = req.stdin.clone();
        tio.stdout = req.stdout.clone();
        tio.stderr = req.stderr.clone();
        tio.terminal = req.terminal;
        m.io = MessageField::some(tio);
        m.pid = pid as u32;
        self.publisher.publish(Event::Create(m));
        tracing::info!(container = %req.id, pid, started = start_now, "created");
        if start_now {
            if let Some(c) = g.get_mut(&req.id) {
                c.init.status = Status::RUNNING;
            }
            let mut m = ev::TaskStart::new();
            m.container_id = req.id.clone();
            m.pid = pid as u32;
            self.publisher.publish(Event::Start(m));
        }
        self.claim_early_exit(g, &req.id, "", pid, since);
        Ok(pid as u32)
    }

    /// Start: `runtime start` for the init, `runtime exec` for an exec.
    pub fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        let mut g = self.lock();
        let c = container_mut(&mut g, id)?;
        if exec_id.is_empty() {
            if c.init.status != Status::CREATED {
                return Err(TaskError::Precondition(format!(
                    "container {id} is not in the created state"
                )));
            }
            let log = c.log();
            // Hooks (poststart) are the runtime's business: only a spec
            // without them is started through the exec fifo directly.
            if !(c.no_hooks && c.runc.start_via_fifo(id, c.init.pid)?) {
                c.runc.start(id, &log)?;
            }
            if c.init.exit.get().is_none() && !c.init.exiting {
                c.init.status = Status::RUNNING;
            }
            let pid = c.init.pid;
            let mut m = ev::TaskStart::new();
            m.container_id = id.to_string();
            m.pid = pid as u32;
            self.publisher.publish(Event::Start(m));
            return Ok(pid as u32);
        }
        if c.init.exit.get().is_some() {
            return Err(TaskError::Precondition(format!(
                "container {id} is not running"
            )));
        }
        let bundle = c.bundle.clone();
        let log = c.log();
        let runc = c.runc.clone();
        let console = self.console_path();
        let p = c.proc_mut(exec_id)?;
        let Some(spec) = p.spec.clone() else {
            return Err(TaskError::Precondition(format!(
                "exec {exec_id} already started"
            )));
        };
        let mut prep = pio::prepare(&p.stdin, &p.stdout, &p.stderr, p.terminal, console)?;
        let spec_path = bundle.join(format!("exec-{exec_id}.json"));
        std::fs::write(&spec_path, &spec)
            .map_err(|e| TaskError::Internal(format!("write {}: {e}", spec_path.display())))?;
        let since = self.reaper.seq();
        let stdio = prep.take_stdio();
        let res = runc.exec(
            id,
            &log,
            &spec_path,
            &bundle.join(format!("exec-{exec_id}.pid")),
            prep.console.as_ref().map(|c| c.path.as_path()),
            stdio,
        );
        let _ = std::fs::remove_file(&spec_path);
        let pid = res?;
        p.spec = None;
        match prep.finish() {
            Ok(io) => p.io = io,
            Err(e) => {
                // The process runs without its terminal: stop it; its exit
                // is still reaped and reported.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                p.pid = pid;
                p.status = Status::RUNNING;
                self.claim_early_exit(g, id, exec_id, pid, since);
                return Err(e.into());
            }
        }
        p.pid = pid;
        p.status = Status::RUNNING;
        let mut m = ev::TaskExecStarted::new();
        m.container_id = id.to_string();
        m.exec_id = exec_id.to_string();
        m.pid = pid as u32;
        self.publisher.publish(Event::ExecStarted(m));
        self.claim_early_exit(g, id, exec_id, pid, since);
        Ok(pid as u32)
    }

    /// Delete: returns the exit; for the init also `runtime delete` and
    /// unmounting the rootfs. Deleting an unknown id reports NotFound.
    pub fn delete(&self, id: &str, exec_id: &str) -> Result<(u32, u32, SystemTime)> {
        let cell = {
            let g = self.lock();
            let c = container(&g, id)?;
            let p = c.proc(exec_id)?;
            if p.exiting && p.exit.get().is_none() {
                Some(p.exit.clone())
            } else {
                None
            }
        };
        if let Some(cell) = cell {
            cell.wait_for(DRAIN_TIMEOUT * 2);
        }
        let mut g = self.lock();
        let c = container_mut(&mut g, id)?;
        if !exec_id.is_empty() {
            let p = c.proc(exec_id)?;
            if p.spec.is_none() && p.exit.get().is_none() {
                return Err(TaskError::Precondition(format!(
                    "exec {exec_id} is still running"
                )));
            }
            let (code, at) = p.exit.get().unwrap_or((0, now()));
            let pid = p.pid as u32;
            if let Some(p) = c.execs.remove(exec_id) {
                p.io.close_stdin();
            }
            return Ok((pid, code, at));
        }
        if (c.init.status == Status::RUNNING || c.init.status == Status::PAUSED)
            && c.init.exit.get().is_none()
        {
            return Err(TaskError::Precondition(format!(
                "container {id} is still running, kill it first"
            )));
        }
        let log = c.log();
        let runc = c.runc.clone();
        // The runtime's delete (~5-10 ms) runs without the task lock, so that
        // the containers of a pod are deleted side by side and other calls
        // are not held up. A second delete racing this one finds the runtime
        // state gone ("not exist") and then the entry gone (NotFound).
        drop(g);
        match runc.delete(id, &log) {
            Ok(()) => {}
            // Already gone from the runtime (e.g. removed by hand): deleting
            // is idempotent.
            Err(RuncError::Failed { msg, .. }) if msg.contains("not exist") => {}
            Err(e) => return Err(e.into()),
        }
        let mut g = self.lock();
        let c = container_mut(&mut g, id)?;
        if c.mounted {
            mount::unmount_task(&c.bundle)?;
            c.mounted = false;
        }
        let pid = c.init.pid as u32;
        let (code, at) = c.init.exit.get().unwrap_or((128 + 9, now()));
        if let Some(c) = g.remove(id) {
            c.init.io.close_stdin();
            for p in c.execs.values() {
                p.io.close_stdin();
            }
        }
        let mut m = ev::TaskDelete::new();
        m.container_id = id.to_string();
        m.id = id.to_string();
        m.pid = pid;
        m.exit_status = code;
        m.exited_at = MessageField::some(timestamp(at));
        self.publisher.publish(Event::Delete(m));
        tracing::info!(container = id, "deleted");
        Ok((pid, code, at))
    }

    /// Kill: signals the init (through the runtime, `all` for every process)
    /// or an exec process.
    pub fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let g = self.lock();
        let c = container(&g, id)?;
        let p = c.proc(exec_id)?;
        if p.exit.get().is_some() || p.exiting {
            return Err(TaskError::NotFound(format!(
                "process {id}/{exec_id} already finished"
            )));
        }
        if exec_id.is_empty() {
            // The shim is the init's parent: signal it directly rather than
            // through a runtime invocation (~5 ms each). `--all` needs the
            // runtime (it walks the cgroup), except for SIGKILL to the PID 1
            // of the container's own pid namespace, which the kernel turns
            // into a SIGKILL of the whole namespace.
            if p.pid > 0 && (!all || (signal == libc::SIGKILL as u32 && c.own_pidns)) {
                return signal_process(p.pid, signal);
            }
            return c.runc.kill(id, &c.log(), signal, all).map_err(Into::into);
        }
        if p.pid <= 0 {
            return Err(TaskError::Precondition(format!(
                "exec {exec_id} not started"
            )));
        }
        let sig = nix::sys::signal::Signal::try_from(signal as i32)
            .map_err(|_| TaskError::Invalid(format!("signal {signal}")))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), sig)
            .map_err(|e| TaskError::Internal(format!("kill {}: {e}", p.pid)))
    }

    /// Exec: registers an exec process (started by Start).
    pub fn exec(&self, req: &api::ExecProcessRequest) -> Result<()> {
        check_id(&req.exec_id)?;
        let mut g = self.lock();
        let c = g
            .get_mut(&req.id)
            .ok_or_else(|| TaskError::NotFound(format!("container {}", req.id)))?;
        if c.execs.contains_key(&req.exec_id) {
            return Err(TaskError::AlreadyExists(format!("exec {}", req.exec_id)));
        }
        if c.init.exit.get().is_some() {
            return Err(TaskError::Precondition(format!(
                "container {} is not running",
                req.id
            )));
        }
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .ok_or_else(|| TaskError::Invalid("exec without a process spec".into()))?;
        serde_json::from_slice::<serde_json::Value>(&spec)
            .map_err(|e| TaskError::Invalid(format!("process spec: {e}")))?;
        let mut p = Proc::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        p.spec = Some(spec);
        c.execs.insert(req.exec_id.clone(), p);
        let mut m = ev::TaskExecAdded::new();
        m.container_id = req.id.clone();
        m.exec_id = req.exec_id.clone();
        self.publisher.publish(Event::ExecAdded(m));
        Ok(())
    }

    /// State of a process.
    pub fn state(&self, id: &str, exec_id: &str) -> Result<api::StateResponse> {
        let g = self.lock();
        let c = container(&g, id)?;
        let p = c.proc(exec_id)?;
        let mut r = api::StateResponse::new();
        r.id = if exec_id.is_empty() {
            id.to_string()
        } else {
            exec_id.to_string()
        };
        r.exec_id = exec_id.to_string();
        r.bundle = c.bundle.to_string_lossy().into_owned();
        r.pid = p.pid.max(0) as u32;
        r.stdin = p.stdin.clone();
        r.stdout = p.stdout.clone();
        r.stderr = p.stderr.clone();
        r.terminal = p.terminal;
        if let Some((code, at)) = p.exit.get() {
            r.status = Status::STOPPED.into();
            r.exit_status = code;
            r.exited_at = MessageField::some(timestamp(at));
        } else {
            r.status = p.status.into();
        }
        Ok(r)
    }

    /// The exit cell of a process (for Wait).
    pub fn exit_cell(&self, id: &str, exec_id: &str) -> Result<Arc<ExitCell>> {
        let g = self.lock();
        let c = container(&g, id)?;
        Ok(c.proc(exec_id)?.exit.clone())
    }

    /// Pause or resume the container.
    pub fn pause(&self, id: &str, pause: bool) -> Result<()> {
        let mut g = self.lock();
        let c = container_mut(&mut g, id)?;
        let log = c.log();
        c.runc.pause(id, &log, pause)?;
        if c.init.exit.get().is_none() {
            c.init.status = if pause {
                Status::PAUSED
            } else {
                Status::RUNNING
            };
        }
        if pause {
            let mut m = ev::TaskPaused::new();
            m.container_id = id.to_string();
            self.publisher.publish(Event::Paused(m));
        } else {
            let mut m = ev::TaskResumed::new();
            m.container_id = id.to_string();
            self.publisher.publish(Event::Resumed(m));
        }
        Ok(())
    }

    fn runc_of(&self, id: &str) -> Result<(Runc, PathBuf, i32)> {
        let g = self.lock();
        let c = container(&g, id)?;
        Ok((c.runc.clone(), c.log(), c.init.pid))
    }

    /// Pids of the container.
    pub fn pids(&self, id: &str) -> Result<Vec<ProcessInfo>> {
        let (runc, log, _) = self.runc_of(id)?;
        let pids = runc.ps(id, &log)?;
        Ok(pids
            .into_iter()
            .map(|p| {
                let mut i = ProcessInfo::new();
                i.pid = p;
                i
            })
            .collect())
    }

    /// Update resources (`runtime update`), the JSON LinuxResources in `res`.
    pub fn update(&self, id: &str, res: &MessageField<Any>) -> Result<()> {
        let Some(a) = res.as_ref() else {
            return Err(TaskError::Invalid("update without resources".into()));
        };
        serde_json::from_slice::<serde_json::Value>(&a.value)
            .map_err(|e| TaskError::Invalid(format!("resources: {e}")))?;
        let (runc, log, _) = self.runc_of(id)?;
        runc.update(id, &log, &a.value).map_err(Into::into)
    }

    /// Stats: cgroup metrics of the init's cgroup.
    pub fn stats(&self, id: &str) -> Result<Any> {
        let (_, _, pid) = self.runc_of(id)?;
        crate::stats::collect(pid).map_err(|e| TaskError::Internal(format!("stats: {e}")))
    }

    /// The init pid of a container (0 when unknown).
    pub fn init_pid(&self, id: &str) -> u32 {
        self.lock()
            .get(id)
            .map(|c| c.init.pid.max(0) as u32)
            .unwrap_or(0)
    }

    /// Close stdin of a process.
    pub fn close_io(&self, id: &str, exec_id: &str) -> Result<()> {
        let g = self.lock();
        let c = container(&g, id)?;
        c.proc(exec_id)?.io.close_stdin();
        Ok(())
    }

    /// Resize the terminal of a process.
    pub fn resize(&self, id: &str, exec_id: &str, w: u32, h: u32) -> Result<()> {
        let g = self.lock();
        let c = container(&g, id)?;
        c.proc(exec_id)?
            .io
            .resize(w.min(u16::MAX as u32) as u16, h.min(u16::MAX as u32) as u16)
            .map_err(|e| TaskError::Precondition(format!("resize: {e}")))
    }

    /// Reopen the CRI log files of a process (after rotation).
    pub fn reopen_log(&self, id: &str, exec_id: &str) -> Result<()> {
        let g = self.lock();
        let c = container(&g, id)?;
        c.proc(exec_id)?
            .io
            .reopen_logs()
            .map_err(|e| TaskError::Internal(format!("reopen log: {e}")))
    }

    /// Attach: connects to the caller's unix socket `socket` and fans the
    /// process's output out to it (and its input to stdin with `stdin`).
    pub fn attach(&self, id: &str, exec_id: &str, socket: &str, stdin: bool) -> Result<()> {
        let path = Path::new(socket);
        if !path.is_absolute() || socket.split('/').any(|c| c == "..") {
            return Err(TaskError::Invalid(format!("attach socket {socket:?}")));
        }
        let g = self.lock();
        let c = container(&g, id)?;
        let p = c.proc(exec_id)?;
        if p.exit.get().is_some() || p.exiting {
            return Err(TaskError::Precondition(format!(
                "process {id}/{exec_id} has exited"
            )));
        }
        if !p.io.copies {
            return Err(TaskError::Precondition(format!(
                "process {id}/{exec_id}: output does not go through the shim (use crilog:// or a terminal)"
            )));
        }
        let conn = std::os::unix::net::UnixStream::connect(path)
            .map_err(|e| TaskError::Invalid(format!("connect {socket}: {e}")))?;
        p.io.attach(conn, stdin)
            .map_err(|e| TaskError::Precondition(format!("attach {id}/{exec_id}: {e}")))
    }

    /// The ids of the containers still present.
    pub fn container_ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Kills (SIGKILL, all) and deletes every container: used by
    /// ShutdownSandbox.
    pub fn kill_and_delete_all(&self) -> Vec<String> {
        let ids = self.container_ids();
        // Kill everything first, then wait and delete each container on a
        // thread of its own: the runtime's deletes run side by side.
        let cells: Vec<_> = ids
            .iter()
            .map(|id| {
                let cell = self.exit_cell(id, "").ok();
                let _ = self.kill(id, "", 9, true);
                cell
            })
            .collect();
        std::thread::scope(|scope| {
            let handles: Vec<_> = ids
                .iter()
                .zip(cells)
                .map(|(id, cell)| {
                    scope.spawn(move || {
                        if let Some(cell) = cell {
                            // The init was running: wait for its exit.
                            if cell.wait_for(Duration::from_secs(10)).is_none() {
                                return Some(format!("{id}: did not exit after SIGKILL"));
                            }
                        }
                        match self.delete(id, "") {
                            Ok(_) | Err(TaskError::NotFound(_)) => None,
                            Err(e) => Some(format!("{id}: {e}")),
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().unwrap_or_else(|_| Some("delete panicked".into())))
                .collect()
        })
    }

    /// Asks the shim to exit.
    pub fn request_shutdown(&self) {
        if let Some(tx) = self
            .shutdown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = tx.send(());
        }
    }
}

/// What the shim needs to know of a bundle's config.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct SpecFacts {
    /// The container gets a pid namespace of its own (a `pid` namespace
    /// without a path).
    own_pidns: bool,
    /// The spec has no hooks.
    no_hooks: bool,
    /// The cgroup is a systemd unit (`slice:prefix:name`).
    systemd_cgroup: bool,
}

/// [`SpecFacts`] from the bundle's config.json; all false when unsure.
fn spec_facts(bundle: &Path) -> SpecFacts {
    let Ok(text) = std::fs::read(bundle.join("config.json")) else {
        return SpecFacts::default();
    };
    let Ok(spec) = serde_json::from_slice::<serde_json::Value>(&text) else {
        return SpecFacts::default();
    };
    let own_pidns = spec
        .pointer("/linux/namespaces")
        .and_then(|n| n.as_array())
        .is_some_and(|ns| {
            ns.iter().any(|n| {
                n.get("type").and_then(|t| t.as_str()) == Some("pid")
                    && n.get("path")
                        .and_then(|p| p.as_str())
                        .is_none_or(|p| p.is_empty())
            })
        });
    let no_hooks = spec
        .get("hooks")
        .and_then(|h| h.as_object())
        .is_none_or(|h| {
            h.values()
                .all(|v| v.as_array().is_none_or(|a| a.is_empty()))
        });
    let systemd_cgroup = spec
        .pointer("/linux/cgroupsPath")
        .and_then(|p| p.as_str())
        .is_some_and(crate::runc::is_systemd_cgroups_path);
    SpecFacts {
        own_pidns,
        no_hooks,
        systemd_cgroup,
    }
}

/// Sends `signal` to `pid` through a pidfd (opened while the caller holds
/// the task lock, so before the exit can be recorded). A process that is
/// already gone counts as signalled: its exit is on its way.
fn signal_process(pid: i32, signal: u32) -> Result<()> {
    if nix::sys::signal::Signal::try_from(signal as i32).is_err() {
        return Err(TaskError::Invalid(format!("signal {signal}")));
    }
    // SAFETY: pidfd_open(2) with a pid and no flags; returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(TaskError::Internal(format!("pidfd_open {pid}: {e}")));
    }
    // SAFETY: `fd` was just returned by pidfd_open and is owned here.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: pidfd_send_signal(2) on our pidfd, no siginfo, no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            signal as i32,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(TaskError::Internal(format!(
            "signal {signal} to {pid}: {e}"
        )));
    }
    Ok(())
}

impl containerd_shim_protos::Task for TaskService {
    fn state(&self, _: &TtrpcContext, req: api::StateRequest) -> ttrpc::Result<api::StateResponse> {
        Ok(self.inner.state(&req.id, &req.exec_id)?)
    }

    fn create(
        &self,
        _: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> ttrpc::Result<api::CreateTaskResponse> {
        let pid = self.inner.create(&req).inspect_err(|e| {
            tracing::warn!(container = %req.id, "create failed: {e}");
        })?;
        // Create touched much code once (runtime spawn, JSON, mounts):
        // let the kernel take those pages back.
        crate::mem::trim();
        let mut r = api::CreateTaskResponse::new();
        r.pid = pid;
        Ok(r)
    }

    fn start(&self, _: &TtrpcContext, req: api::StartRequest) -> ttrpc::Result<api::StartResponse> {
        let pid = self.inner.start(&req.id, &req.exec_id)?;
        let mut r = api::StartResponse::new();
        r.pid = pid;
        Ok(r)
    }

    fn delete(
        &self,
        _: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> ttrpc::Result<api::DeleteResponse> {
        let (pid, code, at) = self.inner.delete(&req.id, &req.exec_id)?;
        let mut r = api::DeleteResponse::new();
        r.pid = pid;
        r.exit_status = code;
        r.exited_at = MessageField::some(timestamp(at));
        Ok(r)
    }

    fn pids(&self, _: &TtrpcContext, req: api::PidsRequest) -> ttrpc::Result<api::PidsResponse> {
        let mut r = api::PidsResponse::new();
        r.processes = self.inner.pids(&req.id)?;
        Ok(r)
    }

    fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> ttrpc::Result<Empty> {
        self.inner.pause(&req.id, true)?;
        Ok(Empty::new())
    }

    fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> ttrpc::Result<Empty> {
        self.inner.pause(&req.id, false)?;
        Ok(Empty::new())
    }

    fn checkpoint(&self, _: &TtrpcContext, _: api::CheckpointTaskRequest) -> ttrpc::Result<Empty> {
        Err(TaskError::Unimplemented("checkpoint is not supported by the crius shim".into()).into())
    }

    fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> ttrpc::Result<Empty> {
        self.inner
            .kill(&req.id, &req.exec_id, req.signal, req.all)?;
        Ok(Empty::new())
    }

    fn exec(&self, _: &TtrpcContext, req: api::ExecProcessRequest) -> ttrpc::Result<Empty> {
        self.inner.exec(&req)?;
        Ok(Empty::new())
    }

    fn resize_pty(&self, _: &TtrpcContext, req: api::ResizePtyRequest) -> ttrpc::Result<Empty> {
        self.inner
            .resize(&req.id, &req.exec_id, req.width, req.height)?;
        Ok(Empty::new())
    }

    fn close_io(&self, _: &TtrpcContext, req: api::CloseIORequest) -> ttrpc::Result<Empty> {
        if req.stdin {
            self.inner.close_io(&req.id, &req.exec_id)?;
        }
        Ok(Empty::new())
    }

    fn update(&self, _: &TtrpcContext, req: api::UpdateTaskRequest) -> ttrpc::Result<Empty> {
        self.inner.update(&req.id, &req.resources)?;
        Ok(Empty::new())
    }

    fn wait(&self, _: &TtrpcContext, req: api::WaitRequest) -> ttrpc::Result<api::WaitResponse> {
        let cell = self.inner.exit_cell(&req.id, &req.exec_id)?;
        let (code, at) = cell.wait();
        let mut r = api::WaitResponse::new();
        r.exit_status = code;
        r.exited_at = MessageField::some(timestamp(at));
        Ok(r)
    }

    fn stats(&self, _: &TtrpcContext, req: api::StatsRequest) -> ttrpc::Result<api::StatsResponse> {
        let mut r = api::StatsResponse::new();
        r.stats = MessageField::some(self.inner.stats(&req.id)?);
        Ok(r)
    }

    fn connect(
        &self,
        _: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> ttrpc::Result<api::ConnectResponse> {
        let mut r = api::ConnectResponse::new();
        r.shim_pid = std::process::id();
        r.task_pid = self.inner.init_pid(&req.id);
        r.version = "2".into();
        // Callers connect once, right after start: drop what start-up and
        // the first requests faulted in.
        crate::mem::trim();
        Ok(r)
    }

    fn shutdown(&self, _: &TtrpcContext, req: api::ShutdownRequest) -> ttrpc::Result<Empty> {
        if !req.now && !self.inner.container_ids().is_empty() {
            return Ok(Empty::new());
        }
        self.inner.request_shutdown();
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_facts_from_config_json() {
        // (config.json, facts)
        let cases = [
            (
                r#"{"linux":{"cgroupsPath":"system.slice:crius:c1","namespaces":[{"type":"pid"}]}}"#,
                SpecFacts {
                    own_pidns: true,
                    no_hooks: true,
                    systemd_cgroup: true,
                },
            ),
            (
                r#"{"linux":{"cgroupsPath":"/crius/c1","namespaces":[{"type":"pid","path":"/proc/1/ns/pid"}]},"hooks":{"prestart":[{"path":"/bin/true"}]}}"#,
                SpecFacts::default(),
            ),
            (
                r#"{"hooks":{"poststart":[]}}"#,
                SpecFacts {
                    no_hooks: true,
                    ..SpecFacts::default()
                },
            ),
            ("not json", SpecFacts::default()),
        ];
        for (text, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("config.json"), text).unwrap();
            assert_eq!(spec_facts(dir.path()), want, "{text}");
        }
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(spec_facts(empty.path()), SpecFacts::default());
    }

    #[test]
    fn ids() {
        let cases = [
            ("abc", true),
            ("a-b_c.d", true),
            ("0123456789abcdef", true),
            ("", false),
            ("-a", false),
            (".", false),
            ("..", false),
            ("a/b", false),
            ("a b", false),
        ];
        for (id, ok) in cases {
            assert_eq!(valid_id(id), ok, "{id:?}");
        }
        assert!(!valid_id(&"a".repeat(129)));
    }

    #[test]
    fn holder_pids() {
        let failed = |e: &str| Err(e.to_string());
        // (wait status, stdout, stderr, result)
        let cases: [(i32, &str, &str, std::result::Result<i32, String>); 5] = [
            (0, "4242\n", "", Ok(4242)),
            (
                1 << 8,
                "",
                "crius-pid-holder: fork: Resource temporarily unavailable\n",
                failed("the pid holder did not start (status 1, said \"\", error \"crius-pid-holder: fork: Resource temporarily unavailable\")"),
            ),
            // A pid but a failed exit, or a success without a usable pid.
            (
                1 << 8,
                "4242\n",
                "",
                failed("the pid holder did not start (status 1, said \"4242\", error \"\")"),
            ),
            (
                0,
                "1\n",
                "",
                failed("the pid holder did not start (status 0, said \"1\", error \"\")"),
            ),
            (
                9,
                "x",
                "",
                failed("the pid holder did not start (status 137, said \"x\", error \"\")"),
            ),
        ];
        for (status, out, err, want) in cases {
            assert_eq!(
                holder_pid(status, out.as_bytes(), err.as_bytes()),
                want,
                "{out:?} {err:?}"
            );
        }
    }

    #[test]
    fn exit_cell_once() {
        let c = ExitCell::default();
        let t = SystemTime::UNIX_EPOCH;
        assert!(c.set(3, t));
        assert!(!c.set(4, t));
        assert_eq!(c.wait(), (3, t));
        assert_eq!(c.wait_for(Duration::from_millis(1)), Some((3, t)));
    }

    #[test]
    fn atomic_write_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!d.path().join("x.tmp").exists());
    }
}
