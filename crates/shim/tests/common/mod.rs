//! Helpers shared by the shim's integration tests: root check, installing
//! missing Debian packages, busybox bundles, a started shim with cleanup, and
//! an events sink.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use containerd_shim_protos::api;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::ttrpc::{self, context, Client, TtrpcContext};
use containerd_shim_protos::TaskClient;

pub const SHIM: &str = env!("CARGO_BIN_EXE_containerd-shim-crius-v2");

/// True when running as root; otherwise prints why the test is skipped.
pub fn root_or_skip(name: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        true
    } else {
        eprintln!("skipping {name}: needs root");
        false
    }
}

static APT: Mutex<()> = Mutex::new(());

/// Installs `package` with apt-get when `binary` is not found.
pub fn ensure(binary: &str, package: &str) {
    let _g = APT.lock().unwrap_or_else(|e| e.into_inner());
    if which(binary).is_some() {
        return;
    }
    let ok = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        let _ = Command::new("apt-get").arg("update").status();
        let st = Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .expect("apt-get");
        assert!(st.success(), "apt-get install {package} failed");
    }
    assert!(
        which(binary).is_some(),
        "{binary} missing after installing {package}"
    );
}

pub fn which(binary: &str) -> Option<PathBuf> {
    if binary.starts_with('/') {
        return Path::new(binary).exists().then(|| PathBuf::from(binary));
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(binary))
        .find(|p| p.exists());
    found
}

/// Makes sure runc and a static busybox are there; returns the busybox path.
pub fn prerequisites() -> PathBuf {
    ensure("runc", "runc");
    ensure("/bin/busybox", "busybox-static");
    let out = Command::new("file").arg("-L").arg("/bin/busybox").output();
    if let Ok(o) = out {
        if !String::from_utf8_lossy(&o.stdout).contains("statically linked") {
            ensure("/usr/share/doc/busybox-static", "busybox-static");
        }
    }
    PathBuf::from("/bin/busybox")
}

const APPLETS: &[&str] = &[
    "sh", "sleep", "echo", "true", "false", "cat", "stty", "tty", "ls", "read", "kill",
];

/// The default capability set, as criusd grants it.
const CAPS: &[&str] = &crius_spec::caps::DEFAULT_CAPABILITIES;

/// Writes a rootfs with busybox under `dir/rootfs`.
pub fn write_rootfs(dir: &Path) {
    let bin = dir.join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    for d in ["proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(dir.join("rootfs").join(d)).unwrap();
    }
    std::fs::copy(prerequisites(), bin.join("busybox")).unwrap();
    for a in APPLETS {
        let _ = std::os::unix::fs::symlink("busybox", bin.join(a));
    }
}

/// The cgroup path used for container `id` (relative to each hierarchy).
pub fn cgroup_path(id: &str) -> String {
    format!("/crius-test-{id}")
}

/// The OCI process of the test containers and execs: root, the default
/// capabilities, no new privileges.
pub fn process(args: &[&str], terminal: bool) -> serde_json::Value {
    serde_json::json!({
        "terminal": terminal,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/bin", "TERM=xterm"],
        "cwd": "/",
        "capabilities": {"bounding": CAPS, "effective": CAPS, "permitted": CAPS},
        "noNewPrivileges": true
    })
}

/// An OCI spec for a busybox container.
pub fn spec(id: &str, args: &[&str], terminal: bool) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": process(args, terminal),
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "crius-test",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]}
        ],
        "linux": {
            "cgroupsPath": cgroup_path(id),
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                {"type": "mount"}, {"type": "network"}
            ],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// Creates a bundle directory `base/id` with rootfs and config.json.
pub fn bundle(base: &Path, id: &str, spec: &serde_json::Value) -> PathBuf {
    let dir = base.join(id);
    write_rootfs(&dir);
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec_pretty(spec).unwrap(),
    )
    .unwrap();
    dir
}

/// A shim started with `start`, with everything it made cleaned up on drop.
pub struct Shim {
    pub tmp: tempfile::TempDir,
    pub address: String,
    pub namespace: String,
    pub client: TaskClient,
    pub raw: Client,
    pub runc_root: PathBuf,
    pub ids: Mutex<Vec<String>>,
    pub pid: u32,
}

pub fn ctx() -> context::Context {
    context::with_timeout(Duration::from_secs(60).as_nanos() as i64)
}

impl Shim {
    /// Starts a shim for group `id` with its sockets and state under a temp
    /// dir. `events` is the TTRPC_ADDRESS to publish to.
    pub fn start(id: &str, events: Option<&Path>) -> Shim {
        let tmp = tempfile::Builder::new()
            .prefix("cs")
            .tempdir_in("/tmp")
            .unwrap();
        let bundle = tmp.path().join("start-bundle");
        std::fs::create_dir_all(&bundle).unwrap();
        let namespace = format!("t{}", std::process::id());
        let mut cmd = Command::new(SHIM);
        cmd.args([
            "-namespace",
            &namespace,
            "-id",
            id,
            "-address",
            "/run/crius-test.sock",
            "start",
        ])
        .current_dir(&bundle)
        .env("CRIUS_SHIM_SOCKET_DIR", tmp.path().join("s"))
        .env("CRIUS_SHIM_STATE_DIR", tmp.path().join("state"))
        .env("CRIUS_SHIM_RUNTIME_ROOT", tmp.path().join("runc"));
        match events {
            Some(p) => cmd.env("TTRPC_ADDRESS", p),
            None => cmd.env_remove("TTRPC_ADDRESS"),
        };
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let address = String::from_utf8(out.stdout).unwrap();
        assert!(address.starts_with("unix:///"), "{address}");
        let raw = Client::connect(&address).unwrap();
        let client = TaskClient::new(raw.clone());
        let mut req = api::ConnectRequest::new();
        req.id = id.to_string();
        let pid = client.connect(ctx(), &req).unwrap().shim_pid;
        let runc_root = tmp.path().join("runc").join(&namespace);
        Shim {
            tmp,
            address,
            namespace,
            client,
            raw,
            runc_root,
            ids: Mutex::new(Vec::new()),
            pid,
        }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Create request for a bundle.
    pub fn create(
        &self,
        id: &str,
        bundle: &Path,
        stdout: &str,
        stderr: &str,
        terminal: bool,
    ) -> u32 {
        self.ids.lock().unwrap().push(id.to_string());
        let mut req = api::CreateTaskRequest::new();
        req.id = id.into();
        req.bundle = bundle.to_string_lossy().into_owned();
        req.stdout = stdout.into();
        req.stderr = stderr.into();
        req.terminal = terminal;
        self.client.create(ctx(), &req).unwrap().pid
    }

    pub fn start_task(&self, id: &str, exec_id: &str) -> ttrpc::Result<u32> {
        let mut req = api::StartRequest::new();
        req.id = id.into();
        req.exec_id = exec_id.into();
        self.client.start(ctx(), &req).map(|r| r.pid)
    }

    pub fn wait(&self, id: &str, exec_id: &str) -> u32 {
        let mut req = api::WaitRequest::new();
        req.id = id.into();
        req.exec_id = exec_id.into();
        self.client.wait(ctx(), &req).unwrap().exit_status
    }

    pub fn kill(&self, id: &str, exec_id: &str, sig: u32, all: bool) -> ttrpc::Result<Empty> {
        let mut req = api::KillRequest::new();
        req.id = id.into();
        req.exec_id = exec_id.into();
        req.signal = sig;
        req.all = all;
        self.client.kill(ctx(), &req)
    }

    pub fn delete(&self, id: &str, exec_id: &str) -> ttrpc::Result<api::DeleteResponse> {
        let mut req = api::DeleteRequest::new();
        req.id = id.into();
        req.exec_id = exec_id.into();
        self.client.delete(ctx(), &req)
    }

    pub fn state(&self, id: &str, exec_id: &str) -> api::StateResponse {
        let mut req = api::StateRequest::new();
        req.id = id.into();
        req.exec_id = exec_id.into();
        self.client.state(ctx(), &req).unwrap()
    }

    pub fn exec(
        &self,
        id: &str,
        exec_id: &str,
        args: &[&str],
        terminal: bool,
        stdin: &str,
        stdout: &str,
    ) {
        let process = process(args, terminal);
        let mut any = containerd_shim_protos::protobuf::well_known_types::any::Any::new();
        any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Process".into();
        any.value = serde_json::to_vec(&process).unwrap();
        let mut req = api::ExecProcessRequest::new();
        req.id = id.into();
        req.exec_id = exec_id.into();
        req.terminal = terminal;
        req.stdin = stdin.into();
        req.stdout = stdout.into();
        req.spec = Some(any).into();
        self.client.exec(ctx(), &req).unwrap();
    }

    pub fn shutdown(&self) {
        let mut req = api::ShutdownRequest::new();
        req.id = "x".into();
        // The shim may exit before it answers.
        let _ = self.client.shutdown(ctx(), &req);
    }

    /// Whether the shim process is still there.
    pub fn alive(&self) -> bool {
        Path::new(&format!("/proc/{}", self.pid)).exists()
            && !std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
                .unwrap_or_default()
                .contains(") Z")
    }
}

/// Waits up to `t` for `f` to hold.
pub fn eventually(t: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + t;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

fn runc_cleanup(root: &Path, id: &str) {
    let _ = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["kill", "--all", id, "9"])
        .output();
    let _ = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["delete", "--force", id])
        .output();
    for entry in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        let _ = std::fs::remove_dir(entry.path().join(cgroup_path(id).trim_start_matches('/')));
    }
}

/// Unmounts every mount below `dir` (deepest first).
pub fn unmount_below(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Mount points below `dir`.
pub fn mounts_below(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect()
}

impl Drop for Shim {
    fn drop(&mut self) {
        for id in self.ids.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            runc_cleanup(&self.runc_root, id);
        }
        if self.pid > 0 && self.alive() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        unmount_below(self.tmp.path());
    }
}

/// A ttrpc events service recording what the shim publishes.
#[derive(Default)]
pub struct Sink {
    pub events: Mutex<Vec<(String, String, Vec<u8>)>>,
    cv: Condvar,
}

struct SinkSvc(Arc<Sink>);

impl containerd_shim_protos::Events for SinkSvc {
    fn forward(&self, _: &TtrpcContext, req: ForwardRequest) -> ttrpc::Result<Empty> {
        let env = req.envelope;
        let ev = env.event.clone().unwrap_or_default();
        self.0
            .events
            .lock()
            .unwrap()
            .push((env.topic.clone(), ev.type_url, ev.value));
        self.0.cv.notify_all();
        Ok(Empty::new())
    }
}

impl Sink {
    /// Topics (with container ids) received so far.
    pub fn topics_for(&self, container: &str) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, url, v)| event_container(url, v).as_deref() == Some(container))
            .map(|(t, _, _)| t.clone())
            .collect()
    }

    /// Waits until `f` holds for the event list.
    pub fn wait_until(
        &self,
        t: Duration,
        f: impl Fn(&[(String, String, Vec<u8>)]) -> bool,
    ) -> bool {
        let g = self.events.lock().unwrap();
        let (g, _) = self.cv.wait_timeout_while(g, t, |v| !f(v)).unwrap();
        f(&g)
    }
}

/// The container id of an event payload.
pub fn event_container(url: &str, v: &[u8]) -> Option<String> {
    Some(match url {
        "containerd.events.TaskCreate" => ev::TaskCreate::parse_from_bytes(v).ok()?.container_id,
        "containerd.events.TaskStart" => ev::TaskStart::parse_from_bytes(v).ok()?.container_id,
        "containerd.events.TaskExit" => ev::TaskExit::parse_from_bytes(v).ok()?.container_id,
        "containerd.events.TaskDelete" => ev::TaskDelete::parse_from_bytes(v).ok()?.container_id,
        "containerd.events.TaskOOM" => ev::TaskOOM::parse_from_bytes(v).ok()?.container_id,
        "containerd.events.TaskExecAdded" => {
            ev::TaskExecAdded::parse_from_bytes(v).ok()?.container_id
        }
        "containerd.events.TaskExecStarted" => {
            ev::TaskExecStarted::parse_from_bytes(v).ok()?.container_id
        }
        _ => return None,
    })
}

/// Serves a [`Sink`] at `path`.
pub fn events_server(path: &Path) -> (Arc<Sink>, ttrpc::Server) {
    let sink = Arc::new(Sink::default());
    let svc = containerd_shim_protos::create_events(Arc::new(SinkSvc(sink.clone())));
    let mut server = ttrpc::Server::new()
        .bind(&format!("unix://{}", path.display()))
        .unwrap()
        .register_service(svc);
    server.start().unwrap();
    (sink, server)
}

/// Reads a file, empty when absent.
pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

pub type Annotations = HashMap<String, String>;
