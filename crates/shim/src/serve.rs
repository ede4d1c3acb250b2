//! The serving shim: ttrpc server with the task service (under both the v2
//! and v3 names), the sandbox service and crius's own `crius.shim.v1.Shim`
//! service.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::mpsc::channel;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim_protos::ttrpc::{self, MethodHandler, TtrpcContext};

use crius_shim_api::args::Args;
use crius_shim_api::launch::{LISTEN_FD, LISTEN_FD_ENV, TTRPC_ADDRESS_ENV};
use crius_shim_api::paths::{Layout, PodDir};
use crius_shim_api::proto::shim as pb;
use crius_shim_api::proto::shim_ttrpc;

use crate::events::Publisher;
use crate::reaper::Reaper;
use crate::sandbox::SandboxService;
use crate::task::{Config, TaskService};

/// How often an otherwise idle shim gives back the file pages it faulted in.
const TRIM_INTERVAL: Duration = Duration::from_secs(60);
/// When it does so first.
const FIRST_TRIM: Duration = Duration::from_secs(1);

/// Default runtime `--root` (the namespace is appended).
pub const DEFAULT_RUNTIME_ROOT: &str = "/run/crius/runc";
/// The crius-specific service name (proto/crius/shim/v1/shim.proto).
pub const CRIUS_SERVICE: &str = "crius.shim.v1.Shim";

/// Errors of the serving shim.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Setting up failed.
    #[error("{what}: {msg}")]
    Setup {
        /// What was done.
        what: &'static str,
        /// The cause.
        msg: String,
    },
}

fn setup(what: &'static str) -> impl FnOnce(String) -> ServeError {
    move |msg| ServeError::Setup { what, msg }
}

struct CriusShim {
    tasks: TaskService,
}

impl shim_ttrpc::Shim for CriusShim {
    fn reopen_log(&self, _: &TtrpcContext, req: pb::ReopenLogRequest) -> ttrpc::Result<pb::Empty> {
        self.tasks.inner.reopen_log(&req.id, &req.exec_id)?;
        Ok(pb::Empty::new())
    }

    fn attach(&self, _: &TtrpcContext, req: pb::AttachRequest) -> ttrpc::Result<pb::Empty> {
        self.tasks
            .inner
            .attach(&req.id, &req.exec_id, &req.socket, req.stdin)?;
        Ok(pb::Empty::new())
    }
}

type Methods = HashMap<String, Box<dyn MethodHandler + Send + Sync>>;

/// Registers the v3 task methods a second time under the v2 service name.
fn task_methods(tasks: &TaskService) -> Methods {
    let mut all = containerd_shim_protos::create_task(Arc::new(tasks.clone()));
    let v2 = containerd_shim_protos::create_task(Arc::new(tasks.clone()));
    for (k, v) in v2 {
        all.insert(k.replace("containerd.task.v3.", "containerd.task.v2."), v);
    }
    all
}

fn init_logging(dir: &PodDir, debug: bool) {
    // The pod's shim directory (its parents too): private.
    let _ = crius_store::private::dir(dir.path());
    let file = OpenOptions::new()
        .mode(crius_store::private::FILE)
        .create(true)
        .append(true)
        .open(dir.log());
    let level = if debug {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    if let Ok(f) = file {
        let _ = tracing::subscriber::set_global_default(crate::log::FileLogger::new(f, level));
    }
}

/// Serves until shutdown; returns when the shim should exit.
pub fn serve(args: &Args) -> Result<(), ServeError> {
    crate::mem::single_arena();
    let layout = Layout::from_env();
    let pod_dir = layout.pod_dir(&args.namespace, &args.id);
    init_logging(&pod_dir, args.debug);
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(setup("set child subreaper")(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    let sock_dir = layout.socket_dir.clone();
    let own_socket = layout.socket(&args.address, &args.namespace, &args.id);
    let reaper = Reaper::start().map_err(|e| setup("reaper")(e.to_string()))?;
    // The namespace holders of idmapped mounts are the reaper's children too.
    crate::idmap::use_reaper(reaper.clone());
    let events_addr = std::env::var(TTRPC_ADDRESS_ENV).unwrap_or_default();
    let publisher = Publisher::start(&events_addr, &args.namespace);
    let (tx, rx) = channel();
    let cfg = Config {
        namespace: args.namespace.clone(),
        socket_dir: sock_dir.clone(),
        runtime: "runc".into(),
        runtime_root: PathBuf::from(DEFAULT_RUNTIME_ROOT),
    };
    let tasks = TaskService::new(cfg, reaper, publisher, tx)
        .map_err(|e| setup("task service")(e.to_string()))?;
    let sandbox = Arc::new(SandboxService::new(tasks.clone(), layout.clone()));
    let crius = Arc::new(CriusShim {
        tasks: tasks.clone(),
    });
    let server = ttrpc::Server::new();
    let server = if std::env::var(LISTEN_FD_ENV).is_ok() {
        server
            .add_listener(LISTEN_FD)
            .map_err(|e| setup("listener")(e.to_string()))?
    } else {
        let _ = crius_store::private::dir(&sock_dir);
        let _ = std::fs::remove_file(&own_socket);
        let server = server
            .bind(&format!("unix://{}", own_socket.display()))
            .map_err(|e| setup("bind")(e.to_string()))?;
        // Only the shim's callers (root) connect.
        std::fs::set_permissions(
            &own_socket,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .map_err(|e| setup("chmod socket")(e.to_string()))?;
        server
    };
    let mut server = server
        .set_thread_count_default(2)
        .set_thread_count_min(1)
        .set_thread_count_max(4)
        .register_service(task_methods(&tasks))
        .register_service(containerd_shim_protos::sandbox_sync::create_sandbox(
            sandbox,
        ))
        .register_service(shim_ttrpc::create_shim(crius));
    server
        .start()
        .map_err(|e| setup("start server")(e.to_string()))?;
    tracing::info!(id = %args.id, namespace = %args.namespace, "shim serving");
    // Wait for shutdown, trimming the resident set now and then: first
    // once the pod's start-up is over (not during it: the pages given back
    // would be faulted in again by the first requests), then every
    // TRIM_INTERVAL.
    let mut wait = FIRST_TRIM;
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(wait) {
        crate::mem::trim();
        wait = TRIM_INTERVAL;
    }
    tracing::info!("shim shutting down");
    let _ = std::fs::remove_file(&own_socket);
    let (done_tx, done_rx) = channel();
    let _ = std::thread::Builder::new().spawn(move || {
        server.shutdown();
        let _ = done_tx.send(());
    });
    let _ = done_rx.recv_timeout(Duration::from_secs(2));
    if std::fs::read_dir(pod_dir.path())
        .map(|mut d| d.all(|e| e.map(|e| e.file_name() == PodDir::LOG).unwrap_or(false)))
        .unwrap_or(false)
    {
        let _ = std::fs::remove_dir_all(pod_dir.path());
    }
    Ok(())
}
