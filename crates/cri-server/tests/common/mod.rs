//! Shared helpers of the integration tests: run the real criusd binary on
//! temporary directories and talk to it with a Rust CRI client.

#![allow(dead_code)]

pub mod images;
pub mod kube;
pub mod net;
pub mod nri;
pub mod pod;
pub mod registry;
pub mod rng;
pub mod stream_client;
pub mod systemd;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint, Uri};

/// Configuration text (top-level keys: put it before any table) that
/// brings the pause container back for pods whose containers share a PID
/// namespace, which criusd by default gives the shim's PID-namespace
/// holder instead: for the tests of the pause itself (its image, bundle,
/// spec, overlay), so that `pid_holder = false` stays covered.
pub const WITH_PAUSE: &str = "pid_holder = false\n";

/// The criusd binary cargo built for these tests.
pub const CRIUSD: &str = env!("CARGO_BIN_EXE_criusd");

/// The criusd binary the daemon tests run: `$CRIUS_TEST_CRIUSD` (with the
/// shim next to it), else [`CRIUSD`]. For a target directory that other
/// builds share: a copy of one's own binaries cannot be overwritten by
/// theirs in the middle of a run.
pub fn criusd() -> PathBuf {
    std::env::var_os("CRIUS_TEST_CRIUSD")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CRIUSD))
}

/// A criusd process on temporary directories; killed on drop if still running.
pub struct Daemon {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    /// Environment variables given to the daemon from the next `restart` on.
    pub env: Vec<(String, String)>,
    /// `--log-level` on the command line (debug), or none: the file's.
    pub log_level_flag: bool,
}

impl Daemon {
    /// Starts criusd with the given config file text under `dir` and waits
    /// until its socket accepts connections.
    pub fn start(dir: &Path, config_text: &str) -> Daemon {
        Daemon::start_with(dir, config_text, Vec::new(), true)
    }

    /// Like `start`, with environment variables and, when `log_level_flag`
    /// is false, the log level the config file sets.
    pub fn start_with(
        dir: &Path,
        config_text: &str,
        env: Vec<(String, String)>,
        log_level_flag: bool,
    ) -> Daemon {
        let config = dir.join("config.toml");
        std::fs::write(&config, with_test_nri(dir, config_text)).expect("write config");
        let socket = dir.join("state/crius.sock");
        let log = dir.join("criusd.log");
        std::fs::File::create(&log).expect("create log");
        let child = spawn_criusd(dir, &config, &socket, &log, &env, log_level_flag);
        let mut d = Daemon {
            child: Some(child),
            dir: dir.to_path_buf(),
            socket,
            config,
            log,
            env,
            log_level_flag,
        };
        d.wait_ready();
        d
    }

    /// Starts criusd again on the same directories and config (after it
    /// was stopped or killed), appending to the same log.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "criusd is still running");
        self.child = Some(spawn_criusd(
            &self.dir,
            &self.config,
            &self.socket,
            &self.log,
            &self.env,
            self.log_level_flag,
        ));
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "criusd exited early with {status}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "criusd did not open {} in time; log:\n{}",
            self.socket.display(),
            self.log_text()
        );
    }

    /// Replaces the config file (for a SIGHUP), with the test's NRI socket
    /// as `start` gives it.
    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config, with_test_nri(&self.dir, text)).expect("write config");
    }

    /// The NRI socket of a daemon started without an `[nri]` table.
    pub fn nri_socket(&self) -> PathBuf {
        self.dir.join("nri/nri.sock")
    }

    /// The NRI `plugin_path` of a daemon started without an `[nri]` table
    /// (not created: no pre-started plugins until a test puts some there).
    pub fn nri_plugin_dir(&self) -> PathBuf {
        self.dir.join("nri/plugins")
    }

    /// The NRI `plugin_config_path` of a daemon started without an
    /// `[nri]` table.
    pub fn nri_config_dir(&self) -> PathBuf {
        self.dir.join("nri/conf.d")
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A runtime service client on the daemon's socket.
    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(connect(&self.socket).await)
    }

    /// An image service client on the daemon's socket.
    pub async fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(connect(&self.socket).await)
    }

    /// Sends a signal and waits (bounded) for the process to exit.
    pub fn signal_and_wait(&mut self, sig: i32) -> ExitStatus {
        let mut child = self.child.take().expect("daemon already stopped");
        // SAFETY: kill(2) on the pid of a child this process spawned and has not reaped.
        unsafe { libc::kill(child.id() as i32, sig) };
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Some(status) = child.try_wait().expect("wait criusd") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "criusd did not exit after signal {sig}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Spawns criusd on `dir`'s root and state directories, logging to `log`
/// (appended).
/// `text` with an `[nri]` table, unless it has one, that puts the NRI
/// socket (NRI is on by default) and the pre-started plugins and their
/// configurations below the test's directory, never on the host's
/// /var/run/nri/nri.sock, /opt/nri/plugins or /etc/nri/conf.d.
fn with_test_nri(dir: &Path, text: &str) -> String {
    if text.contains("[nri]") {
        text.to_string()
    } else {
        format!(
            "{text}\n[nri]\nsocket_path = \"{}\"\nplugin_path = \"{}\"\nplugin_config_path = \"{}\"\n",
            dir.join("nri/nri.sock").display(),
            dir.join("nri/plugins").display(),
            dir.join("nri/conf.d").display()
        )
    }
}

fn spawn_criusd(
    dir: &Path,
    config: &Path,
    socket: &Path,
    log: &Path,
    env: &[(String, String)],
    log_level_flag: bool,
) -> Child {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open log");
    let mut cmd = Command::new(criusd());
    cmd.arg("--config")
        .arg(config)
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--state")
        .arg(dir.join("state"))
        .arg("--socket")
        .arg(socket);
    if log_level_flag {
        cmd.arg("--log-level").arg("debug");
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("spawn criusd")
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A gRPC channel over a unix socket.
pub async fn connect(socket: &Path) -> Channel {
    let path = socket.to_path_buf();
    Endpoint::try_from("http://[::]:50051")
        .expect("endpoint")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .expect("connect to criusd")
}

/// A config for daemons that never start a container: the runtime
/// `{dir}/bin/fake-runtime` (for tests to write) as the default, cgroupfs,
/// and CNI configs and plugins under `dir`.
pub fn fake_runtime_config(dir: &Path) -> String {
    format!(
        r#"
default_runtime = "fake"
cgroup_driver = "cgroupfs"
[runtimes.fake]
path = "{dir}/bin/fake-runtime"
[cni]
conf_dir = "{dir}/net.d"
bin_dirs = ["{dir}/cni-bin"]
"#,
        dir = dir.display()
    )
}

/// [`fake_runtime_config`] with the directories it names made (the
/// runtime's and the CNI ones, empty).
pub fn fake_runtime_dirs(dir: &Path) -> String {
    for d in ["bin", "net.d", "cni-bin"] {
        std::fs::create_dir_all(dir.join(d)).expect("create a fake runtime directory");
    }
    fake_runtime_config(dir)
}

/// Writes an executable shell script.
pub fn script(path: &Path, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, body).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod script");
}

/// A loopback TCP port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a loopback port")
        .port()
}

/// A free loopback address for a daemon's `[metrics] address`.
pub fn free_metrics_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// One GET /metrics on `addr` (reads time out after `timeout`): the whole
/// response, or what went wrong.
pub fn scrape_metrics(addr: &str, timeout: std::time::Duration) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = crius_testkit::registry::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: crius\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}
