//! NRI against the real daemon: a plugin speaking the real protocol over
//! criusd's NRI socket registers, is synchronized with the pods that exist,
//! and adjusts a container as it is created (env, annotation, mount); a
//! plugin that never answers delays CreateContainer by at most the request
//! timeout and is dropped; a plugin criusd starts from its plugin
//! directory gets its configuration, adjusts containers, and is stopped
//! with the daemon.

mod common;

use common::nri::{assert_no_process_of, install_test_plugin, processes_of, Behaviour, TestPlugin};
use common::pod::*;
use common::registry::is_root;
use std::time::{Duration, Instant};

/// The tests of this file run one at a time: the `Leftovers` guard of one
/// kills what is in the shared test cgroup, the other's containers too.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The `nri` entry of a verbose Status (what `crictl info` shows).
async fn nri_info(rt: &mut Rt) -> serde_json::Value {
    verbose_info(rt).await.remove("nri").expect("an nri entry")
}

fn spec_of(env: &Env, id: &str) -> serde_json::Value {
    let path = env
        .dir
        .join("state/containers")
        .join(id)
        .join("bundle/config.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_adjusts_the_containers_it_sees_created() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = Env::start("nri-adjust");
    let image = env.pull_busybox().await;
    let mut rt = env.daemon.runtime().await;
    let uid = "nri-adjust-uid";
    let pod = pod("nri-adjust", uid);
    let pod_id = run_pod(&env, &mut rt, &pod).await;

    // NRI is on by default; the socket is private to root.
    {
        use std::os::unix::fs::PermissionsExt;
        let socket = env.daemon.nri_socket();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&socket), 0o600);
        assert_eq!(mode(socket.parent().unwrap()), 0o700);
    }

    // Before any plugin: created as asked, no NRI trace.
    let plain = run(
        &env,
        &mut rt,
        &pod_id,
        &pod,
        container("plain", &image, &["/bin/busybox", "sleep", "3600"]),
    )
    .await;
    assert!(spec_of(&env, &plain)["annotations"]["nri.test/plugin"].is_null());

    let before = nri_info(&mut rt).await;
    assert_eq!(before["enable"], true);
    assert_eq!(before["listening"], true);
    assert_eq!(
        before["socketPath"],
        env.daemon.nri_socket().display().to_string()
    );
    assert_eq!(before["plugins"], serde_json::json!([]));

    let plugin = TestPlugin::connect(&env.daemon, "adjuster", "10", Behaviour::Adjust).await;
    // crictl info lists the plugin.
    assert_eq!(
        nri_info(&mut rt).await["plugins"],
        serde_json::json!(["10-adjuster"])
    );
    {
        let seen = plugin.seen.lock().unwrap();
        let conf = seen.configured.as_ref().unwrap();
        assert_eq!(conf.runtime_name, "crius");
        assert_eq!(conf.request_timeout, 2000);
        assert_eq!(conf.registration_timeout, 5000);
        let (pods, containers) = seen.synced.clone().unwrap();
        assert_eq!(pods, vec![pod_id.clone()]);
        assert_eq!(containers, vec![plain.clone()]);
    }

    let id = run(
        &env,
        &mut rt,
        &pod_id,
        &pod,
        container("adjusted", &image, &["/bin/busybox", "sleep", "3600"]),
    )
    .await;
    assert_eq!(
        plugin.seen.lock().unwrap().created,
        [("nri-adjust".to_string(), "adjusted".to_string())]
    );
    // In the spec ...
    let spec = spec_of(&env, &id);
    assert_eq!(spec["annotations"]["nri.test/plugin"], "adjuster");
    assert!(
        spec["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "NRI_TEST_ENV=nri-adjust"),
        "{}",
        spec["process"]["env"]
    );
    // ... and inside the container.
    let (code, out, err) = exec(
        &mut rt,
        &id,
        &["/bin/busybox", "sh", "-c", "echo $NRI_TEST_ENV"],
    )
    .await;
    assert_eq!((code, out.trim()), (0, "nri-adjust"), "{err}");
    let (code, out, err) = exec(&mut rt, &id, &["/bin/busybox", "cat", "/proc/self/mounts"]).await;
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("/nri-test"))
        .unwrap_or_else(|| panic!("no /nri-test mount:\n{out}"));
    assert!(line.starts_with("tmpfs /nri-test tmpfs "), "{line}");
    assert!(line.contains("nosuid") && line.contains("nodev"), "{line}");

    plugin.stub.close().await;
    teardown(&env, &mut rt, &pod_id, uid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_plugin_delays_creation_by_at_most_the_request_timeout() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = Env::start("nri-silent");
    let image = env.pull_busybox().await;
    let mut rt = env.daemon.runtime().await;
    let uid = "nri-silent-uid";
    let pod = pod("nri-silent", uid);
    let pod_id = run_pod(&env, &mut rt, &pod).await;
    let plugin = TestPlugin::connect(&env.daemon, "silent", "05", Behaviour::Hang).await;

    let t = Instant::now();
    let id = run(
        &env,
        &mut rt,
        &pod_id,
        &pod,
        container("waited", &image, &["/bin/busybox", "sleep", "3600"]),
    )
    .await;
    let took = t.elapsed();
    assert_eq!(plugin.seen.lock().unwrap().created.len(), 1);
    // Waited for the plugin (2 s, the default) and no longer.
    assert!(took >= Duration::from_secs(2), "{took:?}");
    assert!(
        took < Duration::from_secs(2) + Duration::from_secs(3),
        "{took:?}"
    );
    assert!(spec_of(&env, &id)["annotations"]["nri.test/plugin"].is_null());
    assert!(
        env.daemon
            .log_text()
            .lines()
            .any(|l| l.contains("NRI plugin dropped") && l.contains("05-silent")),
        "{}",
        env.daemon.log_text()
    );
    // Dropped: not asked about the next container.
    run(
        &env,
        &mut rt,
        &pod_id,
        &pod,
        container("unwaited", &image, &["/bin/busybox", "sleep", "3600"]),
    )
    .await;
    assert_eq!(plugin.seen.lock().unwrap().created.len(), 1);

    teardown(&env, &mut rt, &pod_id, uid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_started_plugin_is_configured_adjusts_containers_and_stops_with_criusd() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut env = Env::start("nri-prestart");
    let image = env.pull_busybox().await;

    // The plugin, its configuration (by name; the indexed file of another
    // index is not its), and what is not a plugin or not startable.
    let plugin = install_test_plugin(
        &env.daemon,
        "10-prestarted",
        &[
            ("prestarted.conf", "NRI_PRESTART_ENV = from-config\n"),
            ("20-prestarted.conf", "NRI_PRESTART_ENV = wrong-file\n"),
        ],
    );
    let dir = env.daemon.nri_plugin_dir();
    std::fs::write(dir.join("README"), "not a plugin").unwrap();
    std::fs::copy(&plugin, dir.join("helper")).unwrap();
    std::fs::copy(&plugin, dir.join("30-oversized")).unwrap();
    std::fs::write(
        env.daemon.nri_config_dir().join("30-oversized.conf"),
        vec![b'x'; (1 << 20) + 1],
    )
    .unwrap();
    // Started at the next start-up, which waits for it to register.
    env.daemon.signal_and_wait(libc::SIGTERM);
    env.daemon.restart();
    let mut rt = env.daemon.runtime().await;
    let info = nri_info(&mut rt).await;
    assert_eq!(
        info["plugins"],
        serde_json::json!(["10-prestarted"]),
        "{info}"
    );
    assert_eq!(info["listening"], true);
    assert_eq!(
        info["pluginPath"],
        env.daemon.nri_plugin_dir().display().to_string()
    );
    let pids = processes_of(&plugin);
    assert_eq!(pids.len(), 1, "{pids:?}");
    assert!(processes_of(&dir.join("30-oversized")).is_empty());
    assert!(processes_of(&dir.join("helper")).is_empty());
    // Its environment is NRI's: name, index, descriptor; nothing else.
    let mut environ: Vec<String> = std::fs::read(format!("/proc/{}/environ", pids[0]))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    environ.sort();
    assert_eq!(
        environ,
        [
            "NRI_PLUGIN_IDX=10",
            "NRI_PLUGIN_NAME=prestarted",
            "NRI_PLUGIN_SOCKET=3"
        ]
    );
    let log = env.daemon.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("configured by crius with 31 bytes of configuration")),
        "the plugin's output is logged; log:\n{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("30-oversized") && l.contains("larger than")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("NRI plugin skipped") && l.contains("helper")),
        "{log}"
    );

    let uid = "nri-prestart-uid";
    let pod = pod("nri-prestart", uid);
    let pod_id = run_pod(&env, &mut rt, &pod).await;
    let id = run(
        &env,
        &mut rt,
        &pod_id,
        &pod,
        container("adjusted", &image, &["/bin/busybox", "sleep", "3600"]),
    )
    .await;
    let (code, out, err) = exec(
        &mut rt,
        &id,
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "echo $NRI_PRESTART_PLUGIN $NRI_PRESTART_ENV",
        ],
    )
    .await;
    assert_eq!(
        (code, out.trim()),
        (0, "10-prestarted from-config"),
        "{err}"
    );
    teardown(&env, &mut rt, &pod_id, uid).await;

    // A clean stop kills and reaps it ...
    env.daemon.signal_and_wait(libc::SIGTERM);
    assert!(
        processes_of(&plugin).is_empty(),
        "{:?}",
        processes_of(&plugin)
    );
    let log = env.daemon.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("NRI plugin process stopped") && l.contains("10-prestarted")),
        "{log}"
    );
    // ... and when criusd dies, the plugin sees its connection close and
    // exits by itself.
    env.daemon.restart();
    assert_eq!(processes_of(&plugin).len(), 1);
    env.daemon.signal_and_wait(libc::SIGKILL);
    assert_no_process_of(&plugin, Duration::from_secs(10), "criusd was killed");
}
