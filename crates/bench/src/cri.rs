//! The two CRI runtimes under test (criusd and containerd 1.6's CRI plugin),
//! each on fresh directories, and the pod work done on them with the same
//! Rust CRI client.

use anyhow::{bail, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ExecSyncRequest, ImageSpec,
    LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, PullImageRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    SecurityProfile, StartContainerRequest, StopPodSandboxRequest,
};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint, Uri};

/// Bound of every CRI call.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A daemon process on temporary directories; stopped on drop.
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// criusd (release build) with the bench registry's pause image and
    /// conflist, its Prometheus endpoint on `metrics` (host:port).
    pub fn crius(
        dir: &Path,
        criusd: &Path,
        registry: &str,
        conf_dir: &Path,
        metrics: &str,
        nri: bool,
        pid_holder: bool,
    ) -> Result<Daemon> {
        std::fs::create_dir_all(dir)?;
        let config = dir.join("config.toml");
        // NRI as deployed (on, no plugin connected) on a socket of the
        // bench's own, or off, to measure what listening costs.
        std::fs::write(
            &config,
            format!(
                "pid_holder = {pid_holder}\npause_image = \"{registry}/pause:bench\"\n[cni]\nconf_dir = \"{}\"\nbin_dirs = [\"/usr/lib/cni\"]\n[metrics]\naddress = \"{metrics}\"\n[nri]\nenable = {nri}\nsocket_path = \"{}\"\n",
                conf_dir.display(),
                dir.join("nri/nri.sock").display()
            ),
        )?;
        let socket = dir.join("state/crius.sock");
        let mut cmd = Command::new(criusd);
        cmd.arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(dir.join("root"))
            .arg("--state")
            .arg(dir.join("state"))
            .arg("--socket")
            .arg(&socket)
            .arg("--log-level")
            .arg("warn");
        Daemon::spawn(cmd, socket, dir.join("criusd.log"))
    }

    /// containerd 1.6 with only what its CRI plugin needs, runc with cgroupfs,
    /// the bench registry as a plain-HTTP mirror.
    pub fn containerd(dir: &Path, registry: &str, conf_dir: &Path) -> Result<Daemon> {
        std::fs::create_dir_all(dir)?;
        let config = dir.join("config.toml");
        let cri = "plugins.\"io.containerd.grpc.v1.cri\"";
        std::fs::write(
            &config,
            format!(
                r#"{head}[{cri}]
  sandbox_image = "{registry}/pause:bench"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  restrict_oom_score_adj = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{conf}"
  [{cri}.registry.mirrors."{registry}"]
    endpoint = ["http://{registry}"]
"#,
                head = crius_testkit::containerd_config_head(dir),
                conf = conf_dir.display(),
            ),
        )?;
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&config);
        Daemon::spawn(cmd, dir.join("containerd.sock"), dir.join("containerd.log"))
    }

    fn spawn(mut cmd: Command, socket: PathBuf, log: PathBuf) -> Result<Daemon> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("spawn {cmd:?}"))?;
        let mut d = Daemon {
            child: Some(child),
            socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&d.socket).is_err() {
            if let Some(c) = d.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    bail!("daemon exited with {status}: {}", d.log_tail());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "daemon did not open {}: {}",
                    d.socket.display(),
                    d.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// The end of the daemon's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM first, SIGKILL after 20 s.
            crius_testkit::terminate(&mut c, Duration::from_secs(20));
        }
    }
}

/// A gRPC channel over a unix socket.
pub async fn connect(socket: &Path) -> Result<Channel> {
    let path = socket.to_path_buf();
    Ok(Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await?)
}

/// A CRI call bounded by [`CALL_TIMEOUT`], its error naming `what`.
pub async fn bounded<T, F>(what: &str, f: F) -> Result<T>
where
    F: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
{
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => bail!("{what}: {:?}: {}", s.code(), s.message()),
        Err(_) => bail!("{what}: no answer in {CALL_TIMEOUT:?}"),
    }
}

/// The pod work on one CRI runtime.
#[derive(Clone)]
pub struct Cri {
    rt: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    registry: String,
    logs: PathBuf,
    /// Distinguishes the runtimes' cgroup parents.
    tag: String,
    /// The seccomp profile type pods and containers ask for.
    seccomp: i32,
    /// One PID namespace per pod instead of per container.
    share_pid: bool,
    /// Latencies (ms) of each CRI call by name, since the last `take_steps`.
    steps: Arc<Mutex<BTreeMap<&'static str, Vec<f64>>>>,
}

impl Cri {
    pub async fn new(
        socket: &Path,
        registry: &str,
        logs: &Path,
        tag: &str,
        seccomp: i32,
        share_pid: bool,
    ) -> Result<Cri> {
        let ch = connect(socket).await?;
        Ok(Cri {
            rt: RuntimeServiceClient::new(ch.clone()),
            images: ImageServiceClient::new(ch),
            registry: registry.to_string(),
            logs: logs.to_path_buf(),
            tag: tag.to_string(),
            seccomp,
            share_pid,
            steps: Arc::default(),
        })
    }

    /// A bounded CRI call whose latency is recorded under `what`.
    async fn call<T, F>(&self, what: &'static str, f: F) -> Result<T>
    where
        F: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let t0 = Instant::now();
        let r = bounded(what, f).await;
        if r.is_ok() {
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            let mut steps = self.steps.lock().unwrap_or_else(|p| p.into_inner());
            steps.entry(what).or_default().push(ms);
        }
        r
    }

    /// A client of the runtime service.
    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        self.rt.clone()
    }

    /// A client of the image service.
    pub fn images(&self) -> ImageServiceClient<Channel> {
        self.images.clone()
    }

    /// The per-call latencies recorded so far; starts a new recording.
    pub fn take_steps(&self) -> BTreeMap<&'static str, Vec<f64>> {
        std::mem::take(&mut *self.steps.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Pulls the pause and busybox images so that pod starts find them.
    pub async fn pull(&self) -> Result<()> {
        for name in ["pause", "busybox"] {
            let mut images = self.images.clone();
            let req = PullImageRequest {
                image: Some(ImageSpec {
                    image: format!("{}/{name}:bench", self.registry),
                    ..Default::default()
                }),
                ..Default::default()
            };
            bounded("PullImage", images.pull_image(req)).await?;
        }
        Ok(())
    }

    fn profile(&self) -> SecurityProfile {
        SecurityProfile {
            profile_type: self.seccomp,
            localhost_ref: String::new(),
        }
    }

    fn pod_config(&self, name: &str) -> PodSandboxConfig {
        let uid = format!("{}-{name}", self.tag);
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                namespace: "bench".into(),
                uid: uid.clone(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: self.logs.join(name).display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("/crius-bench/{}/pod{uid}", self.tag),
                security_context: Some(LinuxSandboxSecurityContext {
                    seccomp: Some(self.profile()),
                    namespace_options: Some(kubelet_namespaces(self.share_pid)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox, CreateContainer, StartContainer; returns (pod id, container id).
    pub async fn start_pod(&self, name: &str) -> Result<(String, String)> {
        let mut rt = self.rt.clone();
        let pod = self.pod_config(name);
        let run = RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: String::new(),
        };
        let pod_id = self
            .call("RunPodSandbox", rt.run_pod_sandbox(run))
            .await?
            .pod_sandbox_id;
        let create = CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: "c".into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: format!("{}/busybox:bench", self.registry),
                    ..Default::default()
                }),
                command: vec!["/bin/sh".into()],
                args: vec![
                    "-c".into(),
                    "trap 'exit 0' TERM; /bin/busybox sleep 3600 & wait".into(),
                ],
                log_path: "c.log".into(),
                linux: Some(LinuxContainerConfig {
                    security_context: Some(LinuxContainerSecurityContext {
                        seccomp: Some(self.profile()),
                        namespace_options: Some(kubelet_namespaces(self.share_pid)),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            sandbox_config: Some(pod),
        };
        let created = self
            .call("CreateContainer", rt.create_container(create))
            .await;
        let ctr_id = match created {
            Ok(r) => r.container_id,
            Err(e) => {
                let _ = self.remove_pod(&pod_id).await;
                return Err(e);
            }
        };
        let start = StartContainerRequest {
            container_id: ctr_id.clone(),
        };
        if let Err(e) = self.call("StartContainer", rt.start_container(start)).await {
            let _ = self.remove_pod(&pod_id).await;
            return Err(e);
        }
        Ok((pod_id, ctr_id))
    }

    /// StopPodSandbox then RemovePodSandbox.
    pub async fn remove_pod(&self, pod_id: &str) -> Result<()> {
        let mut rt = self.rt.clone();
        let stop = StopPodSandboxRequest {
            pod_sandbox_id: pod_id.to_string(),
        };
        self.call("StopPodSandbox", rt.stop_pod_sandbox(stop))
            .await?;
        let remove = RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.to_string(),
        };
        self.call("RemovePodSandbox", rt.remove_pod_sandbox(remove))
            .await?;
        Ok(())
    }

    /// One ExecSync of a trivial command.
    pub async fn exec(&self, container_id: &str) -> Result<()> {
        let mut rt = self.rt.clone();
        let req = ExecSyncRequest {
            container_id: container_id.to_string(),
            cmd: vec!["/bin/busybox".into(), "true".into()],
            timeout: 10,
        };
        let r = bounded("ExecSync", rt.exec_sync(req)).await?;
        if r.exit_code != 0 {
            bail!(
                "ExecSync exit code {}: {}",
                r.exit_code,
                String::from_utf8_lossy(&r.stderr)
            );
        }
        Ok(())
    }
}

/// The namespace options kubelet sends for a pod without hostNetwork,
/// hostPID or hostIPC (and for its containers): the pod's network and IPC
/// namespaces, a PID namespace per container, or per pod with
/// shareProcessNamespace.
fn kubelet_namespaces(share_pid: bool) -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: if share_pid {
            NamespaceMode::Pod as i32
        } else {
            NamespaceMode::Container as i32
        },
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// The `_sum` and `_count` series of criusd's duration histograms (start-up
/// phases, shim spawn, CNI), keyed by name and labels.
pub fn scrape_phases(addr: &str) -> Result<BTreeMap<String, (f64, f64)>> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(parse_phases(&body))
}

/// Parses the histogram `_sum`/`_count` lines of interest out of a
/// Prometheus text exposition.
fn parse_phases(body: &str) -> BTreeMap<String, (f64, f64)> {
    let mut out: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        if !(name.contains("phase") || name.contains("shim_spawn") || name.contains("cni_duration"))
        {
            continue;
        }
        let key = |base: &str| match labels {
            "" => base.to_string(),
            l => format!("{base}{{{l}"),
        };
        if let Some(base) = name.strip_suffix("_sum") {
            out.entry(key(base)).or_default().0 = value;
        } else if let Some(base) = name.strip_suffix("_count") {
            out.entry(key(base)).or_default().1 = value;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::parse_phases;

    #[test]
    fn phases_are_parsed_by_name_and_labels() {
        let body = "HTTP/1.1 200 OK\r\n\r\n# HELP crius_cni_duration_seconds x\n\
crius_cni_duration_seconds_bucket{op=\"add\",le=\"0.1\"} 3\n\
crius_cni_duration_seconds_sum{op=\"add\"} 0.25\n\
crius_cni_duration_seconds_count{op=\"add\"} 5\n\
crius_shim_spawn_duration_seconds_sum 0.5\n\
crius_shim_spawn_duration_seconds_count 2\n\
crius_cri_requests_total{method=\"Version\"} 7\n";
        let p = parse_phases(body);
        assert_eq!(
            p.get("crius_cni_duration_seconds{op=\"add\"}"),
            Some(&(0.25, 5.0))
        );
        assert_eq!(
            p.get("crius_shim_spawn_duration_seconds"),
            Some(&(0.5, 2.0))
        );
        assert_eq!(p.len(), 2, "{p:?}");
    }
}
