//! A test NRI plugin speaking the real protocol over the daemon's NRI
//! socket: crius_nri's [`Recorder`], which records what it is told and
//! answers by a script; [`Behaviour`] makes the CreateContainer scripts
//! (adds an env var, an annotation and a tmpfs mount, answers with a given
//! adjustment, or never answers).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crius_nri::api;
use crius_nri::runtime::event_bit;
use crius_nri::stub::{Recorder, Script, Stub};

/// How the plugin answers CreateContainer.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    /// Adds `NRI_TEST_ENV=<pod name>`, the annotation `nri.test/plugin=<name>`
    /// and a tmpfs at `/nri-test`.
    Adjust,
    /// Never answers.
    Hang,
    /// Answers with this adjustment.
    Answer(Box<api::ContainerAdjustment>),
}

impl Behaviour {
    /// The script of a plugin named `name` subscribed to CreateContainer.
    pub fn script(self, name: &str) -> Script {
        let name = name.to_string();
        Script {
            events: event_bit(api::Event::CREATE_CONTAINER),
            hang: if self == Behaviour::Hang {
                vec!["CreateContainer"]
            } else {
                vec![]
            },
            adjust: Some(Box::new(move |req: &api::CreateContainerRequest| {
                if let Behaviour::Answer(adjust) = &self {
                    return (**adjust).clone();
                }
                let mut adjust = api::ContainerAdjustment::new();
                adjust.env.push(api::KeyValue {
                    key: "NRI_TEST_ENV".into(),
                    value: req.pod.name.clone(),
                    ..Default::default()
                });
                adjust
                    .annotations
                    .insert("nri.test/plugin".into(), name.clone());
                adjust.mounts.push(api::Mount {
                    destination: "/nri-test".into(),
                    type_: "tmpfs".into(),
                    source: "tmpfs".into(),
                    options: vec!["nosuid".into(), "nodev".into(), "size=1m".into()],
                    ..Default::default()
                });
                adjust
            })),
            ..Default::default()
        }
    }
}

/// A connected test plugin.
pub struct TestPlugin {
    pub stub: Stub,
    /// The plugin: what it saw (`plugin.seen()`), its script.
    pub plugin: Arc<Recorder>,
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
        Self::scripted(daemon, name, index, behaviour.script(name)).await
    }

    /// [`TestPlugin::connect`] with a plugin answering as `script` says.
    pub async fn scripted(
        daemon: &super::Daemon,
        name: &str,
        index: &str,
        script: Script,
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
        let plugin = Recorder::new(script);
        let stub = plugin
            .connect(&socket, name, index)
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
        TestPlugin { stub, plugin }
    }

    /// Disconnects.
    pub async fn close(self) {
        self.plugin.close(self.stub).await;
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
