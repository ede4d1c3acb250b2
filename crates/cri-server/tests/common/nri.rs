//! A test NRI plugin speaking the real protocol (crius_nri's plugin stub
//! over the daemon's NRI socket): records what it is told and, on
//! CreateContainer, adds an env var, an annotation and a tmpfs mount, or
//! never answers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crius_nri::api;
use crius_nri::api_ttrpc;
use crius_nri::runtime::event_bit;
use crius_nri::stub::Stub;
use ttrpc::asynchronous::TtrpcContext;

/// What the plugin saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// The Configure request.
    pub configured: Option<api::ConfigureRequest>,
    /// Pod ids and container ids of the Synchronize request.
    pub synced: Option<(Vec<String>, Vec<String>)>,
    /// (pod name, container name) of each CreateContainer.
    pub created: Vec<(String, String)>,
}

/// How the plugin answers CreateContainer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Adds `NRI_TEST_ENV=<pod name>`, the annotation `nri.test/plugin=<name>`
    /// and a tmpfs at `/nri-test`.
    Adjust,
    /// Never answers.
    Hang,
}

struct Plugin {
    name: String,
    behaviour: Behaviour,
    seen: Arc<Mutex<Seen>>,
}

#[async_trait::async_trait]
impl api_ttrpc::Plugin for Plugin {
    async fn configure(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConfigureRequest,
    ) -> ttrpc::Result<api::ConfigureResponse> {
        self.seen.lock().unwrap().configured = Some(req);
        Ok(api::ConfigureResponse {
            events: event_bit(api::Event::CREATE_CONTAINER),
            ..Default::default()
        })
    }

    async fn synchronize(
        &self,
        _ctx: &TtrpcContext,
        req: api::SynchronizeRequest,
    ) -> ttrpc::Result<api::SynchronizeResponse> {
        self.seen.lock().unwrap().synced = Some((
            req.pods.iter().map(|p| p.id.clone()).collect(),
            req.containers.iter().map(|c| c.id.clone()).collect(),
        ));
        Ok(api::SynchronizeResponse::default())
    }

    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateContainerRequest,
    ) -> ttrpc::Result<api::CreateContainerResponse> {
        self.seen
            .lock()
            .unwrap()
            .created
            .push((req.pod.name.clone(), req.container.name.clone()));
        if self.behaviour == Behaviour::Hang {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        let mut adjust = api::ContainerAdjustment::new();
        adjust.env.push(api::KeyValue {
            key: "NRI_TEST_ENV".into(),
            value: req.pod.name.clone(),
            ..Default::default()
        });
        adjust
            .annotations
            .insert("nri.test/plugin".into(), self.name.clone());
        adjust.mounts.push(api::Mount {
            destination: "/nri-test".into(),
            type_: "tmpfs".into(),
            source: "tmpfs".into(),
            options: vec!["nosuid".into(), "nodev".into(), "size=1m".into()],
            ..Default::default()
        });
        Ok(api::CreateContainerResponse {
            adjust: Some(adjust).into(),
            ..Default::default()
        })
    }
}

/// A connected test plugin.
pub struct TestPlugin {
    pub stub: Stub,
    pub seen: Arc<Mutex<Seen>>,
}

impl TestPlugin {
    /// Connects to `daemon`'s NRI socket (waiting up to 10 s for it to
    /// appear) and registers as `index-name`; returns once the daemon has
    /// synchronized it and logged it as registered.
    pub async fn connect(
        daemon: &super::Daemon,
        name: &str,
        index: &str,
        behaviour: Behaviour,
    ) -> TestPlugin {
        let socket = daemon.nri_socket();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "{} never appeared",
                socket.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seen = Arc::new(Mutex::new(Seen::default()));
        let plugin = Arc::new(Plugin {
            name: name.into(),
            behaviour,
            seen: seen.clone(),
        });
        let stub = Stub::connect(&socket, name, index, plugin)
            .await
            .unwrap_or_else(|e| panic!("NRI plugin {index}-{name}: {e}"));
        // (the label alone: the log may colour "plugin=")
        let label = format!("{index}-{name}");
        loop {
            let log = daemon.log_text();
            if log
                .lines()
                .any(|l| l.contains("NRI plugin registered") && l.contains(&label))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{label} never registered; log:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        TestPlugin { stub, seen }
    }
}

/// The test plugin criusd pre-starts (tests/nri_plugin/plugin.rs): sets
/// `NRI_PRESTART_PLUGIN=<index>-<name>` and its configuration's `KEY=VALUE`
/// lines in each created container's environment.
pub const TEST_PLUGIN: &str = env!("CARGO_BIN_EXE_crius-nri-test-plugin");

/// Copies the test plugin into `daemon`'s NRI plugin directory as `file`
/// (a copy: a later build cannot replace it under a running test) and
/// writes `configs` (file name, text) into its configuration directory.
/// Returns the installed plugin's path.
pub fn install_test_plugin(
    daemon: &super::Daemon,
    file: &str,
    configs: &[(&str, &str)],
) -> std::path::PathBuf {
    let dir = daemon.nri_plugin_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(file);
    std::fs::copy(TEST_PLUGIN, &path).unwrap();
    let conf = daemon.nri_config_dir();
    std::fs::create_dir_all(&conf).unwrap();
    for (name, text) in configs {
        std::fs::write(conf.join(name), text).unwrap();
    }
    path
}

/// The live processes running the executable `path`.
pub fn processes_of(path: &std::path::Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == path))
        .collect();
    pids.sort();
    pids
}

/// Waits (at most `timeout`) until no process runs `path`; kills what is
/// left and fails if any did.
pub fn assert_no_process_of(path: &std::path::Path, timeout: Duration, why: &str) {
    let deadline = Instant::now() + timeout;
    loop {
        let left = processes_of(path);
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            for pid in &left {
                // SAFETY: kill(2) of a test plugin's process.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            panic!("{} still runs as {left:?}: {why}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
