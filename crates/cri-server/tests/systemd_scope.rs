//! Shims in systemd scopes of their own (`shimscope.rs`): the real criusd
//! with `cgroup_driver = "systemd"` asks a fake systemd manager (zbus, peer
//! to peer on a unix socket, what `systemd_address` points at) to put each
//! new pod's shim into `crius-shim-<pod id>.scope`. This host has no
//! systemd, so the scope itself is not made; what criusd asks for is
//! checked. A pod without a pause runs no runc at RunPodSandbox, so the
//! systemd driver's `slice:prefix:name` cgroup paths are never needed.

mod common;

use common::pod::*;
use common::registry::is_root;
use common::systemd::{FakeSystemd, Prop};
use k8s_cri::v1::{PodSandboxConfig, PodSandboxStatusRequest};
use std::time::{Duration, Instant};

type Rt = k8s_cri::v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>;

/// A test pod the systemd driver takes: no cgroupfs parent, and no pause
/// (containers with PID namespaces of their own), so RunPodSandbox runs no
/// runc, which would need systemd for the driver's cgroups.
fn systemd_pod(name: &str, uid: &str) -> PodSandboxConfig {
    let mut config = pod(name, uid);
    let linux = config.linux.get_or_insert_with(Default::default);
    linux.cgroup_parent = String::new();
    linux
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options = Some(k8s_cri::v1::NamespaceOption {
        pid: k8s_cri::v1::NamespaceMode::Container as i32,
        ..Default::default()
    });
    config
}

async fn ready(rt: &mut Rt, id: &str) -> bool {
    let s = rt
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    s.status.unwrap().state == k8s_cri::v1::PodSandboxState::SandboxReady as i32
}

/// The pid of the pod's shim, from the process list.
fn shim_pid(pod_id: &str) -> u32 {
    let found: Vec<u32> = processes_mentioning(&format!("-id {pod_id}"))
        .into_iter()
        .filter(|p| p.contains("containerd-shim-crius-v2"))
        .filter_map(|p| p.split(':').next().and_then(|s| s.parse().ok()))
        .collect();
    assert_eq!(found.len(), 1, "shims of {pod_id}: {found:?}");
    found[0]
}

fn wait_for_log(env: &Env, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = env.daemon.log_text();
        if log.lines().any(|l| l.contains(needle)) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shims_go_into_scopes_of_their_own() {
    if !is_root() {
        eprintln!("systemd_scope: skipped (needs root)");
        return;
    }
    let fake_dir = tempfile::tempdir().unwrap();
    let fake = FakeSystemd::start(fake_dir.path(), false);
    let mut env = Env::start_with(
        "crius-sdscope",
        &format!(
            "cgroup_driver = \"systemd\"\nshim_slice = \"crius-shims.slice\"\nsystemd_address = \"{}\"\n",
            fake.address()
        ),
    );
    let mut rt = env.daemon.runtime().await;
    let t = Instant::now();
    let id = run_pod(&env, &mut rt, &systemd_pod("scoped", "uid-sds-a")).await;
    let run_time = t.elapsed();
    let unit = format!("crius-shim-{id}.scope");
    let call = fake
        .wait_for(&unit, Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "no StartTransientUnit for {unit}: {:?}\n{}",
                fake.calls(),
                env.daemon.log_text()
            )
        });
    let pid = shim_pid(&id);
    assert_eq!(call.mode, "fail");
    assert_eq!(call.aux_units, 0);
    assert_eq!(call.properties.get("PIDs"), Some(&Prop::U32s(vec![pid])));
    assert_eq!(
        call.properties.get("Slice"),
        Some(&Prop::Str("crius-shims.slice".into()))
    );
    assert_eq!(call.properties.get("Delegate"), Some(&Prop::Bool(true)));
    assert_eq!(
        call.properties.get("CollectMode"),
        Some(&Prop::Str("inactive-or-failed".into()))
    );
    match call.properties.get("Description") {
        Some(Prop::Str(d)) => assert!(d.contains(&id), "{d}"),
        other => panic!("Description: {other:?}"),
    }
    assert!(ready(&mut rt, &id).await);
    let log = wait_for_log(&env, "shim moved into its own scope");
    eprintln!("RunPodSandbox with the scope move: {run_time:?}");
    for l in log.lines().filter(|l| l.contains("shim moved into")) {
        eprintln!("{l}");
    }

    // A second pod: its own unit, over the same connection.
    let second = run_pod(&env, &mut rt, &systemd_pod("scoped2", "uid-sds-b")).await;
    let call = fake
        .wait_for(
            &format!("crius-shim-{second}.scope"),
            Duration::from_secs(10),
        )
        .expect("a call for the second pod");
    assert_eq!(
        call.properties.get("PIDs"),
        Some(&Prop::U32s(vec![shim_pid(&second)]))
    );
    assert_eq!(fake.calls().len(), 2, "{:?}", fake.calls());

    // systemd goes away and comes back (daemon-reexec): the kept connection
    // is dead, the next shim's move connects again.
    drop(fake);
    let fake = FakeSystemd::start(fake_dir.path(), false);
    let third = run_pod(&env, &mut rt, &systemd_pod("scoped3", "uid-sds-f")).await;
    let call = fake
        .wait_for(
            &format!("crius-shim-{third}.scope"),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("no call for the third pod\n{}", env.daemon.log_text()));
    assert_eq!(
        call.properties.get("PIDs"),
        Some(&Prop::U32s(vec![shim_pid(&third)]))
    );
    assert_eq!(fake.calls().len(), 1, "{:?}", fake.calls());
    wait_for_log(&env, "connection to systemd lost; connecting again");

    // After a restart criusd adopts the shims again: no new scopes.
    drop(rt);
    env.daemon.signal_and_wait(libc::SIGTERM);
    env.daemon.restart();
    let mut rt = env.daemon.runtime().await;
    assert!(ready(&mut rt, &id).await);
    assert!(ready(&mut rt, &second).await);
    assert!(ready(&mut rt, &third).await);
    assert_eq!(shim_pid(&id), pid);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(fake.calls().len(), 1, "{:?}", fake.calls());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refusing_systemd_leaves_the_pod_running() {
    if !is_root() {
        eprintln!("systemd_scope: skipped (needs root)");
        return;
    }
    let fake_dir = tempfile::tempdir().unwrap();
    let fake = FakeSystemd::start(fake_dir.path(), true);
    let env = Env::start_with(
        "crius-sdscope-refused",
        &format!(
            "cgroup_driver = \"systemd\"\nsystemd_address = \"{}\"\n",
            fake.address()
        ),
    );
    let mut rt = env.daemon.runtime().await;
    let id = run_pod(&env, &mut rt, &systemd_pod("refused", "uid-sds-c")).await;
    let call = fake
        .wait_for(&format!("crius-shim-{id}.scope"), Duration::from_secs(10))
        .expect("a call");
    // The default slice.
    assert_eq!(
        call.properties.get("Slice"),
        Some(&Prop::Str("system.slice".into()))
    );
    let log = wait_for_log(&env, "cannot move the pod's shim into a systemd scope");
    let line = log
        .lines()
        .find(|l| l.contains("cannot move the pod's shim"))
        .unwrap();
    assert!(line.contains(&id), "{line}");
    assert!(line.contains("AccessDenied"), "{line}");
    assert!(line.contains("WARN"), "{line}");
    assert!(ready(&mut rt, &id).await);
    shim_pid(&id);

    // An unreachable systemd (the fake gone, its socket too): the same.
    drop(fake);
    let id = run_pod(&env, &mut rt, &systemd_pod("unreachable", "uid-sds-d")).await;
    assert!(ready(&mut rt, &id).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = env.daemon.log_text();
        if log
            .lines()
            .any(|l| l.contains("cannot move the pod's shim") && l.contains(&id))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no warning for {id}:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cgroupfs_driver_asks_systemd_nothing() {
    if !is_root() {
        eprintln!("systemd_scope: skipped (needs root)");
        return;
    }
    let fake_dir = tempfile::tempdir().unwrap();
    let fake = FakeSystemd::start(fake_dir.path(), false);
    let env = Env::start_with(
        "crius-sdscope-cgroupfs",
        &format!("systemd_address = \"{}\"\n", fake.address()),
    );
    let mut rt = env.daemon.runtime().await;
    let id = run_pod(&env, &mut rt, &pod("plain", "uid-sds-e")).await;
    assert!(ready(&mut rt, &id).await);
    shim_pid(&id);
    std::thread::sleep(Duration::from_millis(500));
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    let log = env.daemon.log_text();
    assert!(!log.contains("scopes of their own"), "{log}");
    assert!(!log.contains("into a systemd scope"), "{log}");
}
