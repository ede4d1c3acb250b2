//! Helpers of the pod and container tests.

use super::net::TestNetwork;
use super::registry::{busybox_entries, image_with_config, layer, Compression, Registry};
use super::Daemon;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, DnsConfig, ExecSyncRequest,
    ImageSpec, LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    ListContainersRequest, PodSandboxConfig, PodSandboxMetadata, PullImageRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopPodSandboxRequest,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A running criusd with a test pod network and a local registry holding a
/// pause image (`<addr>/pause:test`) and a busybox image
/// (`<addr>/busybox:test`). Fields drop in reverse order: the daemon first,
/// the leftovers guard last.
pub struct Env {
    pub daemon: Daemon,
    pub registry: Registry,
    pub net: TestNetwork,
    pub dir: PathBuf,
    _leftovers: Leftovers,
    _tmp: tempfile::TempDir,
}

impl Env {
    /// Sets everything up under a fresh directory in /tmp.
    pub fn start(prefix: &str) -> Env {
        Env::start_with(prefix, "")
    }

    /// Pulls the registry's busybox image through criusd; returns its name.
    pub async fn pull_busybox(&self) -> String {
        let image = format!("{}/busybox:test", self.registry.addr);
        self.daemon
            .images()
            .await
            .pull_image(k8s_cri::v1::PullImageRequest {
                image: Some(k8s_cri::v1::ImageSpec {
                    image: image.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("pull busybox");
        image
    }

    /// Like [`Env::start`], with more configuration text (top-level keys
    /// or tables) appended.
    pub fn start_with(prefix: &str, extra_config: &str) -> Env {
        Self::start_with_cni(prefix, "", extra_config)
    }

    /// Like [`Env::start_with`], with more keys for the `[cni]` table
    /// (`key = value, ...`).
    pub fn start_with_cni(prefix: &str, cni_keys: &str, extra_config: &str) -> Env {
        Self::start_full(prefix, cni_keys, extra_config, true, None)
    }

    /// Like [`Env::start`] on a pod network whose conflist has no
    /// `loopback` plugin.
    pub fn start_without_loopback(prefix: &str) -> Env {
        Self::start_full(prefix, "", "", false, None)
    }

    /// Like [`Env::start_with`] with a registry that requires basic auth
    /// (`user`, `password`); criusd knows them only from its node
    /// credentials file (`[registry] auth_file`, `<dir>/auth.json`).
    pub fn start_with_registry_auth(
        prefix: &str,
        user: &str,
        password: &str,
        extra_config: &str,
    ) -> Env {
        Self::start_full(prefix, "", extra_config, true, Some((user, password)))
    }

    fn start_full(
        prefix: &str,
        cni_keys: &str,
        extra_config: &str,
        loopback: bool,
        registry_auth: Option<(&str, &str)>,
    ) -> Env {
        super::registry::ensure_binary("runc", "runc");
        let shim = super::criusd().with_file_name("containerd-shim-crius-v2");
        assert!(
            shim.exists(),
            "{} missing: run `cargo build -p crius-shim` (cargo xtask test does)",
            shim.display()
        );
        let tmp = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/tmp")
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let leftovers = Leftovers(dir.clone());
        let net = TestNetwork::with_loopback(&dir, loopback);
        let registry = Registry::start(&dir.join("registry"), registry_auth);
        let base = || vec![layer(&busybox_entries(), Compression::Gzip)];
        let pause = image_with_config(
            base(),
            serde_json::json!({"Entrypoint": ["/bin/busybox", "sleep", "2147483647"], "User": "65535:65535", "WorkingDir": "/"}),
        );
        registry.push_image("pause", "test", &pause);
        let busybox = image_with_config(
            base(),
            serde_json::json!({"Env": ["PATH=/bin", "FROM_IMAGE=1"], "Cmd": ["/bin/sh"], "WorkingDir": "/"}),
        );
        registry.push_image("busybox", "test", &busybox);
        std::fs::create_dir_all(dir.join("cni-bin")).unwrap();
        // Only top-level keys (cni as an inline table): the extra text may
        // add keys as well as tables.
        let cni_keys = if cni_keys.is_empty() {
            String::new()
        } else {
            format!(", {cni_keys}")
        };
        let config = format!(
            "pause_image = \"{}/pause:test\"\ncni = {{ conf_dir = \"{}\", bin_dirs = [\"{}\", \"/usr/lib/cni\"]{cni_keys} }}\n",
            registry.addr,
            net.conf_dir.display(),
            dir.join("cni-bin").display()
        );
        let mut config = format!("{config}{extra_config}");
        if let Some((user, password)) = registry_auth {
            use base64::Engine;
            let auth_file = dir.join("auth.json");
            let auth =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            std::fs::write(
                &auth_file,
                format!(
                    r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#,
                    registry.addr
                ),
            )
            .unwrap();
            config.push_str(&format!(
                "\n[registry]\nauth_file = \"{}\"\n",
                auth_file.display()
            ));
        }
        let daemon = Daemon::start(&dir, &config);
        Env {
            daemon,
            registry,
            net,
            dir,
            _leftovers: leftovers,
            _tmp: tmp,
        }
    }
}

/// Like [`pod`], privileged (privileged containers need a privileged pod).
pub fn privileged_pod(name: &str, uid: &str) -> PodSandboxConfig {
    let mut config = pod(name, uid);
    if let Some(l) = config.linux.as_mut() {
        l.security_context
            .get_or_insert_with(Default::default)
            .privileged = true;
    }
    config
}

pub fn pod(name: &str, uid: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            namespace: "default".into(),
            uid: uid.into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: format!("/var/log/pods/default_{name}_{uid}"),
        dns_config: Some(DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("/{}/pod{uid}", cg_root()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn mounts_below(dir: &Path) -> Vec<String> {
    let d = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&d)))
        .map(String::from)
        .collect()
}

pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .chars()
            .all(|c| c.is_ascii_digit())
        {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(e.path().join("environ")).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if text.contains(needle) || String::from_utf8_lossy(&environ).contains(needle) {
            out.push(format!("{}: {text}", e.file_name().to_string_lossy()));
        }
    }
    out
}

/// The pids of the shims of the test environment in `dir`.
pub fn shim_pids(dir: &Path) -> Vec<String> {
    processes_mentioning(&dir.display().to_string())
        .into_iter()
        .filter(|p| p.contains("containerd-shim-crius-v2"))
        .filter_map(|p| p.split(':').next().map(String::from))
        .collect()
}

/// The pids of the PID-namespace holders of the test environment in `dir`:
/// the processes its shims run as `crius-pid-holder <state>/shim/holder-root`
/// (not shims: [`shim_pids`] does not list them). They outlive a killed
/// shim until the pod is stopped.
pub fn holder_pids(dir: &Path) -> Vec<String> {
    processes_mentioning(&dir.display().to_string())
        .into_iter()
        .filter_map(|p| {
            let (pid, cmd) = p.split_once(':')?;
            cmd.trim_start()
                .starts_with("crius-pid-holder ")
                .then(|| pid.to_string())
        })
        .collect()
}

/// The pid of the shim of pod `pod_id` of the test environment in `dir`
/// (its command line names the pod).
pub fn shim_pid_of(dir: &Path, pod_id: &str) -> Option<i32> {
    processes_mentioning(&dir.display().to_string())
        .into_iter()
        .filter(|p| p.contains("containerd-shim-crius-v2") && p.contains(pod_id))
        .find_map(|p| p.split(':').next().and_then(|pid| pid.parse().ok()))
}

/// The cgroup (below every hierarchy's root) that test pods go into:
/// `crius-test`, or `$CRIUS_TEST_CGROUP` so that two test runs on one
/// machine do not kill each other's containers.
pub fn cg_root() -> String {
    std::env::var("CRIUS_TEST_CGROUP")
        .ok()
        .filter(|s| !s.is_empty() && !s.contains('/'))
        .unwrap_or_else(|| "crius-test".to_string())
}

/// Kills every process that still refers to the test dir (a failed test's
/// shims and pause containers) and unmounts what is left under it.
pub struct Leftovers(pub PathBuf);

impl Drop for Leftovers {
    fn drop(&mut self) {
        // Log directories of the test pods (`pod()` puts them under
        // /var/log/pods with uids that start with "uid-").
        if let Ok(entries) = std::fs::read_dir("/var/log/pods") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("default_") && name.contains("_uid-") {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let needle = self.0.display().to_string();
        for p in processes_mentioning(&needle) {
            if let Some(pid) = p.split(':').next().and_then(|s| s.parse::<i32>().ok()) {
                if pid as u32 != std::process::id() {
                    // SAFETY: kill(2) on a pid read from /proc.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut m = mounts_below(&self.0);
        m.reverse();
        for line in m {
            if let Some(target) = line.split(' ').nth(4) {
                let _ = Command::new("umount").args(["-l", target]).status();
            }
        }
        // Container processes do not mention the test dir: find them by
        // their cgroup.
        let mut procs = Vec::new();
        collect_cgroup_procs(
            &Path::new("/sys/fs/cgroup/memory").join(cg_root()),
            &mut procs,
        );
        for pid in procs {
            // SAFETY: kill(2) on a pid read from the test's own cgroups.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        // cgroups of the test pods (children first; rmdir only works on
        // empty cgroups, which they are once their processes are gone).
        if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in controllers.flatten() {
                remove_cgroup_tree(&c.path().join(cg_root()));
            }
        }
    }
}

/// The cgroup (v1) of a test pod's container under one controller
/// (`memory`, `cpu`, ...), with the cgroupfs driver.
pub fn container_cgroup(controller: &str, uid: &str, id: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(cg_root())
        .join(format!("pod{uid}"))
        .join(id)
}

pub fn cgroup_dirs(uid: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in entries.flatten() {
            let p = e.path().join(cg_root()).join(format!("pod{uid}"));
            if p.exists() {
                // Only container cgroups (children) count as leaks.
                if let Ok(children) = std::fs::read_dir(&p) {
                    for c in children.flatten() {
                        if c.path().is_dir() {
                            found.push(c.path());
                        }
                    }
                }
            }
        }
    }
    found
}

pub fn remove_cgroup_parents(uid: &str) {
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in entries.flatten() {
            let p = e.path().join(cg_root()).join(format!("pod{uid}"));
            let _ = std::fs::remove_dir(&p);
            let _ = std::fs::remove_dir(e.path().join(cg_root()));
        }
    }
}

/// Removes a cgroup directory and its child cgroups, deepest first.
pub fn remove_cgroup_tree(dir: &Path) {
    if let Ok(children) = std::fs::read_dir(dir) {
        for c in children.flatten() {
            if c.path().is_dir() {
                remove_cgroup_tree(&c.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// The pids in a cgroup tree.
pub fn collect_cgroup_procs(dir: &Path, out: &mut Vec<i32>) {
    if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        out.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
    }
    if let Ok(children) = std::fs::read_dir(dir) {
        for c in children.flatten() {
            if c.path().is_dir() {
                collect_cgroup_procs(&c.path(), out);
            }
        }
    }
}

// The CRI steps most pod and container tests share.

pub type Rt = k8s_cri::v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>;

/// A busybox-style container running `cmd`, logging to `<name>/0.log`.
pub fn container(name: &str, image: &str, cmd: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        linux: Some(LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// The runtime's Status (with its `info` map when `verbose`).
pub async fn runtime_status(rt: &mut Rt, verbose: bool) -> k8s_cri::v1::StatusResponse {
    rt.status(k8s_cri::v1::StatusRequest { verbose })
        .await
        .unwrap_or_else(|e| panic!("Status: {e:?}"))
        .into_inner()
}

/// The `info` map of a verbose Status (what `crictl info` shows), each
/// entry parsed as JSON.
pub async fn verbose_info(rt: &mut Rt) -> std::collections::HashMap<String, serde_json::Value> {
    runtime_status(rt, true)
        .await
        .info
        .into_iter()
        .map(|(k, v)| {
            let parsed = serde_json::from_str(&v).unwrap_or_else(|e| panic!("{k}: {e}: {v}"));
            (k, parsed)
        })
        .collect()
}

pub fn security(c: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
    c.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

/// The pod's Linux security context, created when missing.
pub fn pod_security(p: &mut PodSandboxConfig) -> &mut k8s_cri::v1::LinuxSandboxSecurityContext {
    p.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
}

pub async fn wait_for<F: FnMut() -> bool>(what: &str, mut f: F) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn pull(env: &Env, image: &str) {
    env.daemon
        .images()
        .await
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("pull {image}: {e:?}"));
}

/// The id of a local image (what kubelet sends after a pull), or None.
pub async fn image_id(env: &Env, image: &str) -> Option<String> {
    env.daemon
        .images()
        .await
        .image_status(k8s_cri::v1::ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap_or_else(|e| panic!("ImageStatus {image}: {e:?}"))
        .into_inner()
        .image
        .map(|i| i.id)
}

pub async fn run_pod(env: &Env, rt: &mut Rt, config: &PodSandboxConfig) -> String {
    rt.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: String::new(),
    })
    .await
    .unwrap_or_else(|e| panic!("RunPodSandbox: {e:?}\n{}", env.daemon.log_text()))
    .into_inner()
    .pod_sandbox_id
}

/// Creates and starts a container; returns its id.
pub async fn run(
    env: &Env,
    rt: &mut Rt,
    pod_id: &str,
    pod: &PodSandboxConfig,
    c: ContainerConfig,
) -> String {
    let id = create(rt, pod_id, pod, c)
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e:?}\n{}", env.daemon.log_text()));
    rt.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer: {e:?}\n{}", env.daemon.log_text()));
    id
}

pub async fn create(
    rt: &mut Rt,
    pod_id: &str,
    pod: &PodSandboxConfig,
    c: ContainerConfig,
) -> Result<String, tonic::Status> {
    rt.create_container(CreateContainerRequest {
        pod_sandbox_id: pod_id.into(),
        config: Some(c),
        sandbox_config: Some(pod.clone()),
    })
    .await
    .map(|r| r.into_inner().container_id)
}

pub async fn exec(rt: &mut Rt, id: &str, cmd: &[&str]) -> (i32, String, String) {
    let r = match rt
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 20,
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(e) => {
            let st = rt
                .container_status(k8s_cri::v1::ContainerStatusRequest {
                    container_id: id.into(),
                    verbose: false,
                })
                .await
                .map(|s| s.into_inner().status);
            panic!("ExecSync {cmd:?}: {e:?}\ncontainer: {st:?}");
        }
    };
    (
        r.exit_code,
        String::from_utf8_lossy(&r.stdout).into_owned(),
        String::from_utf8_lossy(&r.stderr).into_owned(),
    )
}

/// Stops and removes the pod and checks that nothing of it is left.
pub async fn teardown(env: &Env, rt: &mut Rt, pod_id: &str, uid: &str) {
    stop_and_remove_pod(rt, pod_id).await;
    let list = rt
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner();
    assert!(list.containers.is_empty(), "{:?}", list.containers);
    let overlay_mounts: Vec<String> = mounts_below(&env.dir.join("root"))
        .into_iter()
        .chain(mounts_below(&env.dir.join("state")))
        .collect();
    assert!(overlay_mounts.is_empty(), "mounts left: {overlay_mounts:?}");
    assert!(
        cgroup_dirs(uid).is_empty(),
        "cgroups left: {:?}",
        cgroup_dirs(uid)
    );
    remove_cgroup_parents(uid);
}

/// Stops and removes the pod (no checks; see [`teardown`]).
pub async fn stop_and_remove_pod(rt: &mut Rt, pod_id: &str) {
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod_id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("StopPodSandbox {pod_id}: {e:?}"));
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod_id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("RemovePodSandbox {pod_id}: {e:?}"));
}

/// Removes a pod's log directory (kubelet's job, so criusd leaves it) when
/// the test ends, however it ends.
pub struct LogDir(pub PathBuf);

impl Drop for LogDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes several pods' log directories when the test ends.
pub struct LogDirs(pub Vec<PathBuf>);

impl LogDirs {
    /// The log directories of these pods.
    pub fn of(pods: &[PodSandboxConfig]) -> LogDirs {
        LogDirs(
            pods.iter()
                .map(|p| PathBuf::from(&p.log_directory))
                .collect(),
        )
    }
}

/// `n` pod configurations `<name><i>` (uid `uid-<name><i>`), and the guard
/// of their log directories.
pub fn pods(name: &str, n: usize) -> (Vec<PodSandboxConfig>, LogDirs) {
    let configs: Vec<PodSandboxConfig> = (0..n)
        .map(|i| pod(&format!("{name}{i}"), &format!("uid-{name}{i}")))
        .collect();
    let logs = LogDirs::of(&configs);
    (configs, logs)
}

impl Drop for LogDirs {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// What a [`Case`] holds until the test ends: the pod's log directory and
/// the test file's lock (dropped in that order).
pub struct CaseGuards {
    _logs: LogDir,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

/// What most pod tests begin with: root checked, the file's tests
/// serialised, an [`Env`] with busybox pulled, a runtime client and a pod
/// configuration (`name`, uid `uid-<name>`) whose log directory goes when
/// the test ends. Fields drop in order: the log directory, the
/// environment, then the file's lock.
pub struct Case {
    pub logs: LogDir,
    pub env: Env,
    pub image: String,
    pub rt: Rt,
    pub pod: PodSandboxConfig,
    /// The pod's uid.
    pub uid: String,
    pub serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Case {
    /// `None` (with a note) when not root. `serial` is the test file's
    /// lock: an environment's leftovers guard kills every process in the
    /// shared test cgroups, so a file's tests run one at a time.
    pub async fn start(
        serial: &'static tokio::sync::Mutex<()>,
        prefix: &str,
        name: &str,
    ) -> Option<Case> {
        Self::start_with(serial, prefix, name, "").await
    }

    /// Like [`Case::start`] with more daemon configuration text.
    pub async fn start_with(
        serial: &'static tokio::sync::Mutex<()>,
        prefix: &str,
        name: &str,
        extra_config: &str,
    ) -> Option<Case> {
        if !super::registry::is_root() {
            eprintln!("{prefix}: skipped (needs root)");
            return None;
        }
        let serial = serial.lock().await;
        let env = Env::start_with(prefix, extra_config);
        let image = env.pull_busybox().await;
        let rt = env.daemon.runtime().await;
        let uid = format!("uid-{name}");
        let pod = pod(name, &uid);
        Some(Case {
            logs: LogDir(PathBuf::from(&pod.log_directory)),
            env,
            image,
            rt,
            pod,
            uid,
            serial,
        })
    }

    /// The parts, the guards first (so that they drop last: a tuple's
    /// bindings drop in reverse order): `let (_guards, env, image, mut rt,
    /// pod, uid) = case.split();`.
    pub fn split(self) -> (CaseGuards, Env, String, Rt, PodSandboxConfig, String) {
        let guards = CaseGuards {
            _logs: self.logs,
            _serial: self.serial,
        };
        (guards, self.env, self.image, self.rt, self.pod, self.uid)
    }

    /// Runs the case's pod; returns its id.
    pub async fn run_pod(&mut self) -> String {
        run_pod(&self.env, &mut self.rt, &self.pod).await
    }

    /// Runs the case's pod, then [`Case::split`] with the pod's id last:
    /// `let (_guards, env, image, mut rt, pod, uid, pod_id) =
    /// case.split_running().await;`.
    #[allow(clippy::type_complexity)]
    pub async fn split_running(
        mut self,
    ) -> (
        CaseGuards,
        Env,
        String,
        Rt,
        PodSandboxConfig,
        String,
        String,
    ) {
        let pod_id = self.run_pod().await;
        let (guards, env, image, rt, pod, uid) = self.split();
        (guards, env, image, rt, pod, uid, pod_id)
    }
}

/// The container's status.
pub async fn status_of(rt: &mut Rt, id: &str) -> k8s_cri::v1::ContainerStatus {
    rt.container_status(k8s_cri::v1::ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e:?}"))
    .into_inner()
    .status
    .expect("a status")
}

/// A pod with a user namespace of its own (mode POD), mapping
/// `(container_id, host_id, length)` for both uids and gids.
pub fn userns_pod(name: &str, uid: &str, maps: (u32, u32, u32)) -> PodSandboxConfig {
    let mut p = pod(name, uid);
    let (container_id, host_id, length) = maps;
    let idm = k8s_cri::v1::IdMapping {
        host_id,
        container_id,
        length,
    };
    pod_security(&mut p).namespace_options = Some(k8s_cri::v1::NamespaceOption {
        userns_options: Some(k8s_cri::v1::UserNamespace {
            mode: k8s_cri::v1::NamespaceMode::Pod as i32,
            uids: vec![idm],
            gids: vec![idm],
        }),
        ..Default::default()
    });
    p
}

/// ContainerStatus.user is exactly what `id` prints inside the container.
pub async fn assert_status_user_is_id(rt: &mut Rt, id: &str) -> (i64, i64, Vec<i64>) {
    let user = status_of(rt, id)
        .await
        .user
        .and_then(|u| u.linux)
        .unwrap_or_else(|| panic!("no user in the status of {id}"));
    let num = |s: &str| s.trim().parse::<i64>().unwrap();
    let (_, uid, _) = exec(rt, id, &["/bin/busybox", "id", "-u"]).await;
    let (_, gid, _) = exec(rt, id, &["/bin/busybox", "id", "-g"]).await;
    let (_, groups, _) = exec(rt, id, &["/bin/busybox", "id", "-G"]).await;
    let mut inside: Vec<i64> = groups.split_whitespace().map(num).collect();
    inside.sort_unstable();
    inside.dedup();
    let mut reported = user.supplemental_groups.clone();
    reported.sort_unstable();
    reported.dedup();
    assert_eq!(
        (user.uid, user.gid, reported),
        (num(&uid), num(&gid), inside),
        "ContainerStatus.user of {id} differs from `id` inside"
    );
    (user.uid, user.gid, user.supplemental_groups)
}

/// Every pod sandbox the daemon lists.
pub async fn list_pods(rt: &mut Rt) -> Vec<k8s_cri::v1::PodSandbox> {
    rt.list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest { filter: None })
        .await
        .unwrap_or_else(|e| panic!("ListPodSandbox: {e:?}"))
        .into_inner()
        .items
}

/// Every container the daemon lists.
pub async fn list_containers(rt: &mut Rt) -> Vec<k8s_cri::v1::Container> {
    rt.list_containers(k8s_cri::v1::ListContainersRequest { filter: None })
        .await
        .unwrap_or_else(|e| panic!("ListContainers: {e:?}"))
        .into_inner()
        .containers
}

/// The pod's stats (PodSandboxStats).
pub async fn pod_stats(rt: &mut Rt, id: &str) -> k8s_cri::v1::PodSandboxStats {
    rt.pod_sandbox_stats(k8s_cri::v1::PodSandboxStatsRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("PodSandboxStats {id}: {e:?}"))
    .into_inner()
    .stats
    .expect("stats")
}

/// The features Status reports for the default runtime handler (`None`
/// when it is not listed).
pub async fn default_handler_features(rt: &mut Rt) -> Option<k8s_cri::v1::RuntimeHandlerFeatures> {
    runtime_status(rt, false)
        .await
        .runtime_handlers
        .iter()
        .find(|h| h.name.is_empty())
        .and_then(|h| h.features)
}

/// The pod's status.
pub async fn pod_status(rt: &mut Rt, id: &str) -> k8s_cri::v1::PodSandboxStatus {
    rt.pod_sandbox_status(k8s_cri::v1::PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose: false,
    })
    .await
    .unwrap_or_else(|e| panic!("PodSandboxStatus {id}: {e:?}"))
    .into_inner()
    .status
    .expect("a status")
}

/// The pod's verbose status: the status and its `info` entry as JSON.
pub async fn pod_status_info(
    rt: &mut Rt,
    id: &str,
) -> (k8s_cri::v1::PodSandboxStatus, serde_json::Value) {
    let r = rt
        .pod_sandbox_status(k8s_cri::v1::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
        .unwrap_or_else(|e| panic!("PodSandboxStatus {id}: {e:?}"))
        .into_inner();
    let info =
        serde_json::from_str(r.info.get("info").expect("an info entry")).expect("info is JSON");
    (r.status.expect("a status"), info)
}
