//! The sandbox service (`containerd.runtime.sandbox.v1.Sandbox`): the pod's
//! network namespace, its /dev/shm and the pause container.
//!
//! criusd passes the pod's options as annotations of CreateSandboxRequest
//! (their keys and encoding: `crius_shim_api::options`). When `netns_path`
//! is set in the request, that namespace is used as is and not owned (not
//! removed) by the shim, unless the options say it is handed over. For a
//! pod without an infra (pause) process the shim also creates the pod's
//! IPC namespace (unless host IPC) and UTS namespace (unless host
//! network), pinned at `<state>/ipc` and `<state>/uts`, sets the hostname
//! and writes the (namespaced) sysctls in the pod's namespaces; StartSandbox
//! runs nothing: the pod is READY until StopSandbox.
//!
//! The netns is bind-mounted at `<state>/netns` and the tmpfs at
//! `<state>/shm` (`<state>` = `$CRIUS_SHIM_STATE_DIR/<ns>/<sandbox id>`,
//! default `/run/crius/shim/<ns>/<sandbox id>`: `crius_shim_api::paths`);
//! SandboxStatus reports both in `info` (`netns`, `shm`). StartSandbox
//! runs the pause bundle as the task `<sandbox id>` as it is: like the
//! CRI side of any shim, the caller writes its config.json complete,
//! pointing at those paths (network namespace path, `/dev/shm` bind); the
//! shim edits no spec (criusd builds the pause's with crius-spec).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::sandbox_api as sb;
use containerd_shim_protos::ttrpc::{self, TtrpcContext};
use containerd_shim_protos::types::platform::Platform;
use nix::mount::MsFlags;

use crius_shim_api::options::{
    PodOptions as ApiOptions, NETNS_OWNED_ANNOTATION, SYSCTLS_ANNOTATION,
};
use crius_shim_api::paths::{Layout, PodDir};

use crate::events::timestamp;
use crate::task::{check_sandbox_id, Inner, TaskError, TaskService};

type Result<T> = std::result::Result<T, TaskError>;

/// What the pod's options ask of the shim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodOptions {
    /// Create a netns (false: host network or caller-provided).
    pub own_netns: bool,
    /// Mount a /dev/shm tmpfs with this size (None: host IPC).
    pub shm_size: Option<u64>,
    /// Run an infra (pause) process; false: the shim pins the namespaces.
    pub infra: bool,
    /// Host network (no UTS namespace of the pod's own).
    pub host_network: bool,
    /// The hostname (pods without an infra process).
    pub hostname: String,
    /// The sysctls (pods without an infra process), sorted by name.
    pub sysctls: Vec<(String, String)>,
    /// A pod without an infra container whose containers share a PID
    /// namespace: the shim's holder process keeps it (see `holder`).
    pub pid_holder: bool,
    /// The pod's own user namespace, with these mappings: the shim makes
    /// it and the netns (owned by it).
    pub userns: Option<crius_shim_api::idmap::IdMaps>,
}

/// Reads the pod options from the request: the annotations' options (see
/// `crius_shim_api::options`), then what the shim makes of them with the
/// request's `netns_path`.
pub fn pod_options(
    annotations: &std::collections::HashMap<String, String>,
    netns_path: &str,
) -> Result<PodOptions> {
    let o = ApiOptions::decode(annotations).map_err(|e| TaskError::Invalid(e.to_string()))?;
    let (infra, hostname, sysctls, pid_holder) = match o.no_infra {
        None => (true, String::new(), Vec::new(), false),
        Some(n) => (
            false,
            n.hostname,
            n.sysctls.into_iter().collect::<Vec<_>>(),
            n.pid_holder,
        ),
    };
    if pid_holder && o.userns.is_some() {
        return Err(TaskError::Invalid(
            "a pod with its own user namespace runs a pause container, not a pid holder".into(),
        ));
    }
    for (k, _) in &sysctls {
        if crius_netns::podns::sysctl_ns(k).is_none()
            || crius_netns::podns::sysctl_path(k).is_none()
        {
            return Err(TaskError::Invalid(format!(
                "{SYSCTLS_ANNOTATION}: {k:?} is not a namespaced sysctl"
            )));
        }
    }
    if o.userns.is_some() && !netns_path.is_empty() {
        return Err(TaskError::Invalid(format!(
            "a pod with its own user namespace gets its netns from the shim, not netns_path {netns_path:?}"
        )));
    }
    if o.netns_owned && netns_path.is_empty() {
        return Err(TaskError::Invalid(format!(
            "{NETNS_OWNED_ANNOTATION} without a netns_path"
        )));
    }
    Ok(PodOptions {
        own_netns: !o.host_network
            && (netns_path.is_empty() || o.netns_owned || o.userns.is_some()),
        shm_size: (!o.host_ipc).then_some(o.shm_size),
        infra,
        host_network: o.host_network,
        hostname,
        sysctls,
        pid_holder,
        userns: o.userns,
    })
}

/// What StartSandbox starts.
enum Start {
    /// The pause container of this bundle and rootfs mounts.
    Pause(PathBuf, Vec<containerd_shim_protos::types::mount::Mount>),
    /// The PID-namespace holder (see `holder`).
    Holder,
    /// Nothing: the pod's namespaces are pinned.
    Nothing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Created,
    Ready,
    NotReady,
}

struct Pod {
    id: String,
    bundle: PathBuf,
    rootfs: Vec<containerd_shim_protos::types::mount::Mount>,
    state_dir: PodDir,
    netns: Option<PathBuf>,
    own_netns: bool,
    /// The pinned user namespace of a pod with one of its own.
    userns: Option<PathBuf>,
    shm: Option<PathBuf>,
    /// Pinned IPC and UTS namespaces (pods without an infra process).
    ipc: Option<PathBuf>,
    uts: Option<PathBuf>,
    infra: bool,
    /// Start a PID-namespace holder at StartSandbox (see `holder`).
    pid_holder: bool,
    /// The running holder: its pid and exit.
    holder: Option<(i32, Arc<crate::task::ExitCell>)>,
    phase: Phase,
    pid: u32,
    created_at: SystemTime,
    /// When a pod without an infra process was stopped.
    stopped_at: Option<SystemTime>,
}

/// The sandbox service.
pub struct SandboxService {
    tasks: TaskService,
    layout: Layout,
    pod: Mutex<Option<Pod>>,
    /// Signalled when a pod without an infra process stops or goes away.
    changed: std::sync::Condvar,
}

fn mount_shm(dir: &Path, size: u64) -> Result<()> {
    // A private mount point: the tmpfs root is 1777, but only below the
    // pod's private directory.
    crius_store::private::dir(dir)
        .map_err(|e| TaskError::Internal(format!("create {}: {e}", dir.display())))?;
    nix::mount::mount(
        Some("shm"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(format!("mode=1777,size={size}").as_str()),
    )
    .map_err(|e| TaskError::Internal(format!("mount shm on {}: {e}", dir.display())))
}

fn unmount_dir(dir: &Path) -> Result<()> {
    crate::mount::unmount_all(dir)?;
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(TaskError::Internal(format!(
            "remove {}: {e}",
            dir.display()
        ))),
    }
}

impl SandboxService {
    /// The service over the task service's state. Pod state lives in the
    /// layout's pod directories, `<state root>/<namespace>/<sandbox id>`.
    pub fn new(tasks: TaskService, layout: Layout) -> SandboxService {
        SandboxService {
            tasks,
            layout,
            pod: Mutex::new(None),
            changed: std::sync::Condvar::new(),
        }
    }

    fn inner(&self) -> &Inner {
        &self.tasks.inner
    }

    fn pod(&self) -> std::sync::MutexGuard<'_, Option<Pod>> {
        self.pod.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks until the pod `id` (without an infra process) is stopped or
    /// shut down; its "exit" status 0 and the time it stopped.
    fn wait_stopped(&self, id: &str) -> (u32, SystemTime) {
        let mut g = self.pod();
        loop {
            match g.as_ref() {
                Some(p) if p.id == id => {
                    if let Some(at) = p.stopped_at {
                        return (0, at);
                    }
                }
                _ => return (0, SystemTime::now()),
            }
            g = self.changed.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// CreateSandbox: netns and shm, rolled back on failure.
    pub fn create(&self, req: &sb::CreateSandboxRequest) -> Result<()> {
        check_sandbox_id(&req.sandbox_id)?;
        let mut g = self.pod();
        if let Some(p) = g.as_ref() {
            return Err(TaskError::AlreadyExists(format!("sandbox {}", p.id)));
        }
        let opts = pod_options(&req.annotations, &req.netns_path)?;
        let pod_dir = self
            .layout
            .pod_dir(self.inner().namespace(), &req.sandbox_id);
        let state_dir = pod_dir.path();
        // Private, with its parents (the shim state root and the
        // namespace's directory): netns and IPC/UTS pins, /dev/shm.
        for d in [
            self.layout.state_root.clone(),
            self.layout.state_root.join(self.inner().namespace()),
            state_dir.to_path_buf(),
        ] {
            crius_store::private::dir(&d)
                .map_err(|e| TaskError::Internal(format!("create {}: {e}", d.display())))?;
        }
        let userns = opts.userns.as_ref().map(|_| pod_dir.userns());
        let netns = if let (Some(maps), Some(at)) = (&opts.userns, &userns) {
            let p = pod_dir.netns();
            if let Err(e) = crate::idmap::pin_pod_namespaces(maps, at, &p) {
                let _ = std::fs::remove_dir(state_dir);
                return Err(TaskError::Internal(format!(
                    "cannot make the pod's user namespace: {e}"
                )));
            }
            Some(p)
        } else if !req.netns_path.is_empty() {
            let p = PathBuf::from(&req.netns_path);
            if !crius_netns::netns::is_netns(&p) {
                let _ = std::fs::remove_dir(state_dir);
                return Err(TaskError::Invalid(format!(
                    "netns_path {} is not a network namespace",
                    p.display()
                )));
            }
            Some(p)
        } else if opts.own_netns {
            let p = pod_dir.netns();
            if let Err(e) = crius_netns::netns::create(&p) {
                let _ = std::fs::remove_dir(state_dir);
                return Err(TaskError::Internal(format!("create netns: {e}")));
            }
            Some(p)
        } else {
            None
        };
        let undo_netns = |netns: &Option<PathBuf>| {
            if opts.own_netns {
                if let Some(n) = netns {
                    let _ = crius_netns::netns::remove(n);
                }
            }
            if let Some(u) = &userns {
                let _ = crius_netns::podns::unpin(u);
            }
        };
        let (ipc, uts) = if opts.infra {
            (None, None)
        } else {
            match pin_namespaces(&pod_dir, &opts, netns.as_deref()) {
                Ok(p) => p,
                Err(e) => {
                    undo_netns(&netns);
                    let _ = std::fs::remove_dir(state_dir);
                    return Err(e);
                }
            }
        };
        let shm = match opts.shm_size {
            None => None,
            Some(size) => {
                let dir = pod_dir.shm();
                if let Err(e) = mount_shm(&dir, size) {
                    let _ = std::fs::remove_dir(&dir);
                    for p in ipc.iter().chain(uts.iter()) {
                        let _ = crius_netns::podns::unpin(p);
                    }
                    undo_netns(&netns);
                    let _ = std::fs::remove_dir(state_dir);
                    return Err(e);
                }
                Some(dir)
            }
        };
        tracing::info!(sandbox = %req.sandbox_id, ?netns, ?shm, ?ipc, ?uts, infra = opts.infra, "sandbox created");
        *g = Some(Pod {
            id: req.sandbox_id.clone(),
            bundle: PathBuf::from(&req.bundle_path),
            rootfs: req.rootfs.clone(),
            state_dir: pod_dir,
            netns,
            own_netns: opts.own_netns,
            userns,
            shm,
            ipc,
            uts,
            infra: opts.infra,
            pid_holder: opts.pid_holder,
            holder: None,
            phase: Phase::Created,
            pid: 0,
            created_at: SystemTime::now(),
            stopped_at: None,
        });
        Ok(())
    }

    fn with_pod<T>(&self, id: &str, f: impl FnOnce(&mut Pod) -> Result<T>) -> Result<T> {
        let mut g = self.pod();
        match g.as_mut() {
            Some(p) if p.id == id => f(p),
            _ => Err(TaskError::NotFound(format!("sandbox {id}"))),
        }
    }

    /// StartSandbox: runs the pause container in the pod's namespaces (or
    /// the pod's PID-namespace holder); a pod without an infra process just
    /// becomes READY.
    pub fn start(&self, id: &str) -> Result<(u32, SystemTime)> {
        let (created_at, pause) = self.with_pod(id, |p| {
            if p.phase != Phase::Created {
                return Err(TaskError::Precondition(format!(
                    "sandbox {id} already started"
                )));
            }
            if p.pid_holder {
                return Ok((p.created_at, Start::Holder));
            }
            if !p.infra {
                p.phase = Phase::Ready;
                return Ok((p.created_at, Start::Nothing));
            }
            Ok((
                p.created_at,
                Start::Pause(p.bundle.clone(), p.rootfs.clone()),
            ))
        })?;
        let (bundle, rootfs) = match pause {
            Start::Holder => return self.start_holder(id),
            Start::Nothing => return Ok((0, created_at)),
            Start::Pause(bundle, rootfs) => (bundle, rootfs),
        };
        if bundle.as_os_str().is_empty() || !bundle.is_absolute() {
            return Err(TaskError::Invalid(format!(
                "sandbox {id}: bundle_path {:?} is not absolute",
                bundle
            )));
        }
        let mut req = api::CreateTaskRequest::new();
        req.id = id.to_string();
        req.bundle = bundle.to_string_lossy().into_owned();
        req.rootfs = rootfs;
        let pid = self.inner().create_and_start(&req)?;
        self.with_pod(id, |p| {
            p.phase = Phase::Ready;
            p.pid = pid;
            Ok((pid, p.created_at))
        })
    }

    /// StartSandbox of a pod with a PID-namespace holder: the holder
    /// starts in the pod's network, IPC and UTS namespaces (those pinned at
    /// CreateSandbox) and a PID namespace of its own, which the pod's
    /// containers then join.
    fn start_holder(&self, id: &str) -> Result<(u32, SystemTime)> {
        use std::os::unix::process::CommandExt;
        let (dir, nss) = self.with_pod(id, |p| {
            let nss: Vec<(PathBuf, libc::c_int)> = [
                (p.netns.clone(), libc::CLONE_NEWNET),
                (p.ipc.clone(), libc::CLONE_NEWIPC),
                (p.uts.clone(), libc::CLONE_NEWUTS),
            ]
            .into_iter()
            .filter_map(|(path, kind)| path.map(|p| (p, kind)))
            .collect();
            Ok((p.state_dir.path().to_path_buf(), nss))
        })?;
        // Open here: the child may only make system calls.
        let mut files = Vec::with_capacity(nss.len());
        for (path, kind) in &nss {
            let f = std::fs::File::open(path)
                .map_err(|e| TaskError::Internal(format!("open {}: {e}", path.display())))?;
            files.push((f, *kind));
        }
        let joins: Vec<(libc::c_int, libc::c_int)> = files
            .iter()
            .map(|(f, kind)| (std::os::fd::AsRawFd::as_raw_fd(f), *kind))
            .collect();
        let root = self.layout.state_root.join("holder-root");
        crius_store::private::dir(&root)
            .map_err(|e| TaskError::Internal(format!("create {}: {e}", root.display())))?;
        // The shim's own binary, the one running (also after the file was
        // replaced by an upgrade), under its own name: `crius-pid-holder
        // <root>` (see `holder::ARGV0`).
        let mut cmd = std::process::Command::new("/proc/self/exe");
        cmd.arg0(crate::holder::ARGV0).arg(&root);
        // SAFETY: the closure makes system calls only (no allocation).
        unsafe {
            cmd.pre_exec(move || {
                for (fd, kind) in &joins {
                    if libc::setns(*fd, *kind) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::unshare(libc::CLONE_NEWPID) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (pid, cell) = self.inner().spawn_holder(&mut cmd)?;
        drop(files);
        if let Err(e) = crate::holder::write_record(&dir, pid) {
            self.inner()
                .kill_holder(pid, &cell, Duration::from_secs(10));
            return Err(TaskError::Internal(format!("pid holder record: {e}")));
        }
        tracing::info!(sandbox = id, pid, "pid holder started");
        self.with_pod(id, |p| {
            p.phase = Phase::Ready;
            p.pid = pid as u32;
            p.holder = Some((pid, cell));
            Ok((pid as u32, p.created_at))
        })
    }

    /// Kills the pod's holder, if it has one running; an error if it did
    /// not exit.
    fn stop_holder(&self, id: &str) -> Result<()> {
        let holder = self.with_pod(id, |p| Ok(p.holder.clone()))?;
        if let Some((pid, cell)) = holder {
            if !self
                .inner()
                .kill_holder(pid, &cell, Duration::from_secs(10))
            {
                return Err(TaskError::Internal(format!(
                    "sandbox {id}: the pid holder {pid} did not exit"
                )));
            }
        }
        Ok(())
    }

    /// StopSandbox: SIGTERM, then SIGKILL after `timeout` (0: at once) to
    /// the pause; a pod without one has its containers killed and deleted
    /// (and its PID-namespace holder killed).
    pub fn stop(&self, id: &str, timeout: u32) -> Result<()> {
        let infra = self.with_pod(id, |p| Ok(p.infra))?;
        if !infra {
            let held = self.stop_holder(id);
            // No pause to stop: stopping the pod is stopping (and deleting
            // from the runtime) every container in it, now rather than at
            // shutdown, so that it overlaps with the caller's network
            // teardown.
            let mut errors = self.inner().kill_and_delete_all();
            errors.extend(held.err().map(|e| e.to_string()));
            self.with_pod(id, |p| {
                p.phase = Phase::NotReady;
                p.stopped_at.get_or_insert_with(SystemTime::now);
                Ok(())
            })?;
            self.changed.notify_all();
            if !errors.is_empty() {
                return Err(TaskError::Internal(errors.join("; ")));
            }
            return Ok(());
        }
        if let Ok(cell) = self.inner().exit_cell(id, "") {
            if timeout > 0 && self.inner().kill(id, "", 15, false).is_ok() {
                let _ = cell_wait(&cell, Duration::from_secs(timeout as u64));
            }
            let _ = self.inner().kill(id, "", 9, true);
            if cell_wait(&cell, Duration::from_secs(10)).is_none() {
                return Err(TaskError::Internal(format!(
                    "sandbox {id}: pause did not exit"
                )));
            }
        }
        self.with_pod(id, |p| {
            p.phase = Phase::NotReady;
            Ok(())
        })
    }

    /// ShutdownSandbox: kills and deletes every task, unmounts shm, removes
    /// the netns and the state directory, then asks the shim to exit.
    pub fn shutdown(&self, id: &str) -> Result<()> {
        self.with_pod(id, |_| Ok(()))?;
        let held = self.stop_holder(id);
        let mut errors = self.inner().kill_and_delete_all();
        errors.extend(held.err().map(|e| e.to_string()));
        let mut g = self.pod();
        if let Some(p) = g.as_mut() {
            if let Some(shm) = p.shm.take() {
                if let Err(e) = unmount_dir(&shm) {
                    errors.push(e.to_string());
                    p.shm = Some(shm);
                }
            }
            for slot in [&mut p.ipc, &mut p.uts] {
                if let Some(path) = slot.take() {
                    if let Err(e) = crius_netns::podns::unpin(&path) {
                        errors.push(format!("unpin {}: {e}", path.display()));
                        *slot = Some(path);
                    }
                }
            }
            if p.own_netns {
                if let Some(n) = p.netns.take() {
                    if let Err(e) = crius_netns::netns::remove(&n) {
                        errors.push(format!("remove netns: {e}"));
                        p.netns = Some(n);
                    }
                }
            }
            // After the netns, which belongs to it.
            if let Some(u) = p.userns.take() {
                if let Err(e) = crius_netns::podns::unpin(&u) {
                    errors.push(format!("unpin {}: {e}", u.display()));
                    p.userns = Some(u);
                }
            }
            if errors.is_empty() {
                let _ = std::fs::remove_file(p.state_dir.path().join(crate::holder::RECORD));
                let _ = std::fs::remove_dir(p.state_dir.path());
                *g = None;
            }
        }
        drop(g);
        self.changed.notify_all();
        if !errors.is_empty() {
            return Err(TaskError::Internal(errors.join("; ")));
        }
        tracing::info!(sandbox = id, "sandbox shut down");
        self.inner().request_shutdown();
        Ok(())
    }
}

/// Pins the IPC and UTS namespaces of a pod without an infra process and
/// writes its sysctls; returns the pinned paths. Undoes itself on failure.
fn pin_namespaces(
    pod_dir: &PodDir,
    opts: &PodOptions,
    netns: Option<&Path>,
) -> Result<(Option<PathBuf>, Option<PathBuf>)> {
    use crius_netns::podns::{self, SysctlNs};
    let ipc = opts.shm_size.is_some().then(|| pod_dir.ipc());
    let uts = (!opts.host_network).then(|| pod_dir.uts());
    let (net, other): (Vec<_>, Vec<_>) = opts
        .sysctls
        .iter()
        .cloned()
        .partition(|(k, _)| podns::sysctl_ns(k) == Some(SysctlNs::Net));
    podns::create(&podns::PodNamespaces {
        ipc: ipc.as_deref(),
        uts: uts.as_deref(),
        hostname: &opts.hostname,
        sysctls: &other,
    })
    .map_err(|e| TaskError::Invalid(format!("pod namespaces: {e}")))?;
    let net_done = match (net.is_empty(), netns) {
        (true, _) => Ok(()),
        (false, Some(ns)) => podns::write_net_sysctls(ns, &net)
            .map_err(|e| TaskError::Invalid(format!("pod sysctls: {e}"))),
        (false, None) => Err(TaskError::Invalid(
            "network sysctls need a pod network namespace".into(),
        )),
    };
    if let Err(e) = net_done {
        for p in ipc.iter().chain(uts.iter()) {
            let _ = podns::unpin(p);
        }
        return Err(e);
    }
    Ok((ipc, uts))
}

fn cell_wait(cell: &crate::task::ExitCell, t: Duration) -> Option<(u32, SystemTime)> {
    cell.wait_for(t)
}

fn platform() -> Platform {
    let mut p = Platform::new();
    p.os = "linux".into();
    p.architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
    .into();
    p
}

impl containerd_shim_protos::sandbox_sync::Sandbox for SandboxService {
    fn create_sandbox(
        &self,
        _: &TtrpcContext,
        req: sb::CreateSandboxRequest,
    ) -> ttrpc::Result<sb::CreateSandboxResponse> {
        self.create(&req)?;
        Ok(sb::CreateSandboxResponse::new())
    }

    fn start_sandbox(
        &self,
        _: &TtrpcContext,
        req: sb::StartSandboxRequest,
    ) -> ttrpc::Result<sb::StartSandboxResponse> {
        let (pid, at) = self.start(&req.sandbox_id)?;
        let mut r = sb::StartSandboxResponse::new();
        r.pid = pid;
        r.created_at = MessageField::some(timestamp(at));
        Ok(r)
    }

    fn platform(
        &self,
        _: &TtrpcContext,
        _: sb::PlatformRequest,
    ) -> ttrpc::Result<sb::PlatformResponse> {
        let mut r = sb::PlatformResponse::new();
        r.platform = MessageField::some(platform());
        Ok(r)
    }

    fn stop_sandbox(
        &self,
        _: &TtrpcContext,
        req: sb::StopSandboxRequest,
    ) -> ttrpc::Result<sb::StopSandboxResponse> {
        self.stop(&req.sandbox_id, req.timeout_secs)?;
        Ok(sb::StopSandboxResponse::new())
    }

    fn wait_sandbox(
        &self,
        _: &TtrpcContext,
        req: sb::WaitSandboxRequest,
    ) -> ttrpc::Result<sb::WaitSandboxResponse> {
        let (infra, holder) =
            self.with_pod(&req.sandbox_id, |p| Ok((p.infra, p.holder.clone())))?;
        let (code, at) = if infra {
            self.inner().exit_cell(&req.sandbox_id, "")?.wait()
        } else if let Some((_, cell)) = holder {
            // The holder's exit (StopSandbox kills it) ends the pod.
            cell.wait()
        } else {
            self.wait_stopped(&req.sandbox_id)
        };
        let mut r = sb::WaitSandboxResponse::new();
        r.exit_status = code;
        r.exited_at = MessageField::some(timestamp(at));
        Ok(r)
    }

    fn sandbox_status(
        &self,
        _: &TtrpcContext,
        req: sb::SandboxStatusRequest,
    ) -> ttrpc::Result<sb::SandboxStatusResponse> {
        let id = req.sandbox_id.clone();
        let r = self.with_pod(&id, |p| {
            let mut r = sb::SandboxStatusResponse::new();
            r.sandbox_id = p.id.clone();
            r.pid = p.pid;
            r.created_at = MessageField::some(timestamp(p.created_at));
            if let Some(n) = &p.netns {
                r.info
                    .insert("netns".into(), n.to_string_lossy().into_owned());
            }
            for (key, path) in [("shm", &p.shm), ("ipc", &p.ipc), ("uts", &p.uts)] {
                if let Some(path) = path {
                    r.info
                        .insert(key.into(), path.to_string_lossy().into_owned());
                }
            }
            // None: an infra process; Some(stopped_at): none.
            let no_infra = (!p.infra).then_some(p.stopped_at);
            Ok((r, p.phase, no_infra))
        });
        let (mut r, phase, no_infra) = r?;
        let exit = match no_infra {
            None => self
                .inner()
                .exit_cell(&id, "")
                .ok()
                .and_then(|c| c.wait_for(Duration::ZERO)),
            Some(stopped) => stopped.map(|at| (0, at)),
        };
        r.state = match (phase, exit) {
            (Phase::Created, _) => "SANDBOX_CREATED",
            (Phase::Ready, None) => "SANDBOX_READY",
            _ => "SANDBOX_NOTREADY",
        }
        .into();
        if let Some((_, at)) = exit {
            r.exited_at = MessageField::some(timestamp(at));
        }
        Ok(r)
    }

    fn ping_sandbox(
        &self,
        _: &TtrpcContext,
        req: sb::PingRequest,
    ) -> ttrpc::Result<sb::PingResponse> {
        self.with_pod(&req.sandbox_id, |_| Ok(()))?;
        Ok(sb::PingResponse::new())
    }

    fn sandbox_metrics(
        &self,
        _: &TtrpcContext,
        req: sb::SandboxMetricsRequest,
    ) -> ttrpc::Result<sb::SandboxMetricsResponse> {
        let infra = self.with_pod(&req.sandbox_id, |p| Ok(p.infra))?;
        if !infra {
            return Err(TaskError::NotFound(format!(
                "sandbox {}: no infra process to measure (its containers are measured one by one)",
                req.sandbox_id
            ))
            .into());
        }
        let data = self.inner().stats(&req.sandbox_id)?;
        let mut r = sb::SandboxMetricsResponse::new();
        let m = r.metrics.mut_or_insert_default();
        m.id = req.sandbox_id.clone();
        m.timestamp = MessageField::some(timestamp(SystemTime::now()));
        m.data = MessageField::some(data);
        Ok(r)
    }

    fn shutdown_sandbox(
        &self,
        _: &TtrpcContext,
        req: sb::ShutdownSandboxRequest,
    ) -> ttrpc::Result<sb::ShutdownSandboxResponse> {
        self.shutdown(&req.sandbox_id)?;
        Ok(sb::ShutdownSandboxResponse::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crius_shim_api::options::*;
    use std::collections::HashMap;

    #[test]
    fn options_table() {
        let a = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        let cases = [
            (a(&[]), "", Some((true, Some(DEFAULT_SHM_SIZE)))),
            (
                a(&[(NETWORK_ANNOTATION, "host")]),
                "",
                Some((false, Some(DEFAULT_SHM_SIZE))),
            ),
            (
                a(&[]),
                "/var/run/netns/x",
                Some((false, Some(DEFAULT_SHM_SIZE))),
            ),
            (a(&[(IPC_ANNOTATION, "host")]), "", Some((true, None))),
            (
                a(&[(SHM_SIZE_ANNOTATION, "1048576")]),
                "",
                Some((true, Some(1048576))),
            ),
            (a(&[(SHM_SIZE_ANNOTATION, "0")]), "", None),
            (
                a(&[(NETNS_OWNED_ANNOTATION, "true")]),
                "/run/x/netns",
                Some((true, Some(DEFAULT_SHM_SIZE))),
            ),
            (a(&[(NETNS_OWNED_ANNOTATION, "true")]), "", None),
            (a(&[(NETNS_OWNED_ANNOTATION, "yes")]), "/run/x/netns", None),
            (a(&[(SHM_SIZE_ANNOTATION, "big")]), "", None),
        ];
        for (ann, ns, want) in cases {
            let got = pod_options(&ann, ns)
                .ok()
                .map(|o| (o.own_netns, o.shm_size));
            assert_eq!(got, want, "{ann:?} {ns}");
        }
    }

    #[test]
    fn infra_options_table() {
        let a = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        let sysctls = r#"{"net.ipv4.ip_unprivileged_port_start":"0","kernel.shmmni":"100"}"#;
        let cases = [
            (a(&[]), Some((true, String::new(), 0))),
            (
                a(&[(INFRA_ANNOTATION, "none")]),
                Some((false, String::new(), 0)),
            ),
            (
                a(&[
                    (INFRA_ANNOTATION, "none"),
                    (HOSTNAME_ANNOTATION, "web-0"),
                    (SYSCTLS_ANNOTATION, sysctls),
                ]),
                Some((false, "web-0".to_string(), 2)),
            ),
            (a(&[(INFRA_ANNOTATION, "yes")]), None),
            // The pause's spec carries the sysctls of a pod with one.
            (a(&[(SYSCTLS_ANNOTATION, sysctls)]), None),
            (
                a(&[
                    (INFRA_ANNOTATION, "none"),
                    (SYSCTLS_ANNOTATION, r#"{"vm.swappiness":"1"}"#),
                ]),
                None,
            ),
            (
                a(&[
                    (INFRA_ANNOTATION, "none"),
                    (SYSCTLS_ANNOTATION, r#"{"net/../../x":"1"}"#),
                ]),
                None,
            ),
            (
                a(&[(INFRA_ANNOTATION, "none"), (SYSCTLS_ANNOTATION, "[1]")]),
                None,
            ),
        ];
        for (ann, want) in cases {
            let got = pod_options(&ann, "")
                .ok()
                .map(|o| (o.infra, o.hostname, o.sysctls.len()));
            assert_eq!(got, want, "{ann:?}");
        }
    }
}
