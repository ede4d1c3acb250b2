//! NRI against the real daemon: a plugin speaking the real protocol over
//! criusd's NRI socket registers, is synchronized with the pods that exist,
//! and adjusts a container as it is created (env, annotation, mount); a
//! plugin that never answers delays CreateContainer by at most the request
//! timeout and is dropped.

mod common;

use common::nri::{Behaviour, TestPlugin};
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
        let seen = plugin.plugin.seen();
        let conf = seen.configured.as_ref().unwrap();
        assert_eq!(conf.runtime_name, "crius");
        assert_eq!(conf.request_timeout, 2000);
        assert_eq!(conf.registration_timeout, 5000);
        let sync = &seen.syncs[0];
        let pods: Vec<&str> = sync.pods.iter().map(|p| p.id.as_str()).collect();
        let containers: Vec<&str> = sync.containers.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(pods, [pod_id.as_str()]);
        assert_eq!(containers, [plain.as_str()]);
    }

    let id = run(
        &env,
        &mut rt,
        &pod_id,
        &pod,
        container("adjusted", &image, &["/bin/busybox", "sleep", "3600"]),
    )
    .await;
    assert_eq!(plugin.plugin.seen().trail(), ["CreateContainer adjusted"]);
    assert_eq!(plugin.plugin.seen().events[0].pod.name, "nri-adjust");
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

    plugin.close().await;
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
    assert_eq!(plugin.plugin.seen().events.len(), 1);
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
    assert_eq!(plugin.plugin.seen().events.len(), 1);

    teardown(&env, &mut rt, &pod_id, uid).await;
}
