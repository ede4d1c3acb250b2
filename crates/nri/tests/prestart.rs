//! Pre-started plugins' processes: what they are started with, and that
//! one that does not register is killed and reaped, and one that exits is
//! not waited for. (A pre-started plugin that registers and adjusts
//! containers is tested against the daemon, crates/cri-server/tests/nri.rs.)

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crius_nri::api;
use crius_nri::runtime::{Nri, Options, StateSource};

struct NoState;

impl StateSource for NoState {
    fn snapshot(&self) -> (Vec<api::PodSandbox>, Vec<api::Container>) {
        (Vec::new(), Vec::new())
    }
}

fn nri(dir: &Path, registration_timeout: Duration) -> Arc<Nri> {
    Nri::new(Options {
        socket_path: dir.join("unused.sock"),
        registration_timeout,
        request_timeout: Duration::from_secs(1),
        runtime_name: "crius".into(),
        runtime_version: "test".into(),
    })
}

fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[tokio::test]
async fn a_plugin_that_never_registers_is_started_as_nri_says_then_killed() {
    let dir = tempfile::tempdir().unwrap();
    let (plugins, out) = (dir.path().join("plugins"), dir.path().join("out"));
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    // Records its environment, its descriptor 3 and its pid, then waits
    // without ever registering.
    script(
        &plugins.join("10-silent"),
        &format!(
            "/usr/bin/env > {o}/env\n/bin/readlink /proc/$$/fd/3 > {o}/fd3\necho $$ > {o}/pid.tmp\n\
             /bin/mv {o}/pid.tmp {o}/pid\nexec /bin/sleep 1000\n",
            o = out.display()
        ),
    );
    // (Time enough for the script to write its files on a busy machine.)
    let nri = nri(dir.path(), Duration::from_secs(2));
    let t = Instant::now();
    let started = nri
        .start_preinstalled(&plugins, &dir.path().join("conf.d"), Arc::new(NoState))
        .await;
    assert!(started.is_empty(), "{started:?}");
    assert!(t.elapsed() >= Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    assert!(!nri.has_plugins());

    let env = std::fs::read_to_string(out.join("env")).unwrap();
    let mut env: Vec<&str> = env.lines().filter(|l| !l.starts_with("PWD=")).collect();
    env.sort();
    assert_eq!(
        env,
        [
            "NRI_PLUGIN_IDX=10",
            "NRI_PLUGIN_NAME=silent",
            "NRI_PLUGIN_SOCKET=3"
        ]
    );
    let fd3 = std::fs::read_to_string(out.join("fd3")).unwrap();
    assert!(fd3.starts_with("socket:["), "{fd3}");

    // Killed (it would sleep 1000 s) and reaped: no zombie either.
    let pid: i32 = std::fs::read_to_string(out.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "plugin {pid} still there");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_plugin_that_exits_is_not_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    script(&plugins.join("10-quitter"), "exit 3\n");
    let nri = nri(dir.path(), Duration::from_secs(30));
    let t = Instant::now();
    let started = nri
        .start_preinstalled(&plugins, &dir.path().join("conf.d"), Arc::new(NoState))
        .await;
    assert!(started.is_empty(), "{started:?}");
    // Its connection closed with it: not the 30 s registration timeout.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[tokio::test]
async fn no_plugin_directory_no_plugins() {
    let dir = tempfile::tempdir().unwrap();
    let nri = nri(dir.path(), Duration::from_secs(1));
    let started = nri
        .start_preinstalled(
            &dir.path().join("missing"),
            &dir.path().join("conf.d"),
            Arc::new(NoState),
        )
        .await;
    assert!(started.is_empty());
    assert!(nri.plugin_names().is_empty());
}
