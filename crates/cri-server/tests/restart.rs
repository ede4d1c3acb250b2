//! Restart recovery: containers keep running while criusd is down, criusd
//! reconnects to the pods' shims when it comes back and applies what it
//! missed; a cleared state directory (a reboot) leaves records that load as
//! NOTREADY/EXITED and are removed cleanly.

mod common;

use common::pod::*;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerStatsRequest, ContainerStatusRequest, ExecSyncRequest, PodSandboxConfig,
    RemovePodSandboxRequest, StopPodSandboxRequest,
};
use std::path::Path;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

type Rt = RuntimeServiceClient<Channel>;

/// The tests of this file run one at a time: the `Leftovers` guard of a
/// finished test kills every process in the shared `crius-test` cgroups,
/// which would take another test's containers with it.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Creates and starts a container running `script` under /bin/sh.
async fn run_container(
    env: &Env,
    rt: &mut Rt,
    pod_id: &str,
    pod_config: &PodSandboxConfig,
    image: &str,
    name: &str,
    script: &str,
) -> String {
    let config = container(name, image, &["/bin/sh", "-c", script]);
    run(env, rt, pod_id, pod_config, config).await
}

async fn container_status(rt: &mut Rt, id: &str) -> (k8s_cri::v1::ContainerStatus, Option<u32>) {
    let r = rt
        .container_status(ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .expect("ContainerStatus")
        .into_inner();
    let pid = r
        .info
        .get("info")
        .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
        .and_then(|v| v["pid"].as_u64())
        .map(|p| p as u32);
    (r.status.expect("status"), pid)
}

async fn pod_state(rt: &mut Rt, id: &str) -> i32 {
    pod_status(rt, id).await.state
}

/// The pids of the shim processes serving this test's daemon.
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn log_len(path: &str) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

async fn remove_pod(env: &Env, rt: &mut Rt, id: &str) {
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("StopPodSandbox: {e:?}\n{}", env.daemon.log_text()));
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("RemovePodSandbox: {e:?}\n{}", env.daemon.log_text()));
}

fn assert_nothing_left(env: &Env, uid: &str) {
    assert!(
        mounts_below(&env.dir).is_empty(),
        "mounts left: {:?}",
        mounts_below(&env.dir)
    );
    assert!(
        cgroup_dirs(uid).is_empty(),
        "cgroups left: {:?}",
        cgroup_dirs(uid)
    );
    assert!(
        shim_pids(&env.dir).is_empty(),
        "shims left: {:?}",
        shim_pids(&env.dir)
    );
    assert!(
        holder_pids(&env.dir).is_empty(),
        "PID-namespace holders left: {:?}",
        holder_pids(&env.dir)
    );
    let records = env.dir.join("root/store");
    for kind in ["sandboxes", "containers"] {
        let left: Vec<_> = std::fs::read_dir(records.join(kind))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{kind} records left: {left:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_survive_a_criusd_restart() {
    let Some(case) = Case::start(&SERIAL, "crius-rst", "rst").await else {
        return;
    };
    let (_guards, mut env, image, mut rt, pod_config, _) = case.split();
    let pod_id = run_pod(&env, &mut rt, &pod_config).await;
    let ticker = run_container(
        &env,
        &mut rt,
        &pod_id,
        &pod_config,
        &image,
        "ticker",
        "while true; do echo tick; /bin/busybox sleep 0.1; done",
    )
    .await;
    // Exits with 7 after a few seconds: criusd is down by then (the test
    // waits for its pid to vanish before restarting criusd).
    let quitter = run_container(
        &env,
        &mut rt,
        &pod_id,
        &pod_config,
        &image,
        "quitter",
        "echo started; /bin/busybox sleep 3; exit 7",
    )
    .await;
    let (ticker_status, ticker_pid) = container_status(&mut rt, &ticker).await;
    let ticker_pid = ticker_pid.expect("ticker pid");
    let (_, quitter_pid) = container_status(&mut rt, &quitter).await;
    let quitter_pid = quitter_pid.expect("quitter pid");
    let shims_before = shim_pids(&env.dir);
    assert_eq!(shims_before.len(), 1, "one shim per pod: {shims_before:?}");

    // criusd dies; the pod goes on.
    env.daemon.signal_and_wait(libc::SIGKILL);
    drop(rt);
    let log = ticker_status.log_path.clone();
    let lines = log_len(&log);
    wait_for("the ticker's log to grow while criusd is down", || {
        log_len(&log) > lines + 3
    })
    .await;
    assert!(alive(ticker_pid), "the ticker died with criusd");
    wait_for("the quitter to exit while criusd is down", || {
        !alive(quitter_pid)
    })
    .await;

    env.daemon.restart();
    let mut rt = env.daemon.runtime().await;
    assert_eq!(
        pod_state(&mut rt, &pod_id).await,
        k8s_cri::v1::PodSandboxState::SandboxReady as i32
    );
    let (s, pid) = container_status(&mut rt, &ticker).await;
    assert_eq!(
        s.state,
        k8s_cri::v1::ContainerState::ContainerRunning as i32
    );
    assert_eq!(pid, Some(ticker_pid), "the ticker has a new pid");
    let (s, _) = container_status(&mut rt, &quitter).await;
    assert_eq!(
        (s.state, s.exit_code, s.reason.as_str()),
        (
            k8s_cri::v1::ContainerState::ContainerExited as i32,
            7,
            "Error"
        ),
        "{s:?}"
    );
    assert!(s.finished_at > s.started_at, "{s:?}");
    assert_eq!(
        shim_pids(&env.dir),
        shims_before,
        "a second shim was spawned"
    );

    // Exec and stats work on the recovered container.
    let r = rt
        .exec_sync(ExecSyncRequest {
            container_id: ticker.clone(),
            cmd: vec!["/bin/sh".into(), "-c".into(), "echo recovered".into()],
            timeout: 10,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync: {e:?}\n{}", env.daemon.log_text()))
        .into_inner();
    assert_eq!((r.stdout.as_slice(), r.exit_code), (&b"recovered\n"[..], 0));
    let stats = rt
        .container_stats(ContainerStatsRequest {
            container_id: ticker.clone(),
        })
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .expect("stats");
    assert_eq!(
        stats.attributes.as_ref().map(|a| a.id.as_str()),
        Some(ticker.as_str())
    );
    // The log keeps flowing after the restart too.
    let lines = log_len(&log);
    wait_for("the ticker's log to grow after the restart", || {
        log_len(&log) > lines + 3
    })
    .await;

    // The exit watcher works again: a killed ticker is recorded.
    rt.stop_container(k8s_cri::v1::StopContainerRequest {
        container_id: ticker.clone(),
        timeout: 0,
    })
    .await
    .unwrap_or_else(|e| panic!("StopContainer: {e:?}\n{}", env.daemon.log_text()));
    let (s, _) = container_status(&mut rt, &ticker).await;
    assert_eq!(s.state, k8s_cri::v1::ContainerState::ContainerExited as i32);

    remove_pod(&env, &mut rt, &pod_id).await;
    assert_nothing_left(&env, "uid-rst");
    remove_cgroup_parents("uid-rst");
}

/// Kills every process of the test (shims, containers), unmounts and
/// removes the state directory and the pod's cgroups: what a reboot does.
fn simulate_reboot(env: &Env, uid: &str) {
    let needle = env.dir.display().to_string();
    for p in processes_mentioning(&needle) {
        if let Some(pid) = p.split(':').next().and_then(|s| s.parse::<i32>().ok()) {
            if pid as u32 != std::process::id() {
                // SAFETY: kill(2) on a pid read from /proc.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let mut procs = Vec::new();
    for controller in ["memory", "pids", "cpu,cpuacct", "freezer"] {
        collect_cgroup_procs(
            &Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(common::pod::cg_root())
                .join(format!("pod{uid}")),
            &mut procs,
        );
    }
    for pid in procs {
        // SAFETY: kill(2) on a pid read from the test pod's cgroups.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    std::thread::sleep(Duration::from_millis(300));
    let state = env.dir.join("state");
    let mut mounts = mounts_below(&state);
    mounts.reverse();
    for line in mounts {
        if let Some(target) = line.split(' ').nth(4) {
            let _ = std::process::Command::new("umount")
                .args(["-l", target])
                .status();
        }
    }
    std::fs::remove_dir_all(&state).expect("clear the state dir");
    if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
        for c in controllers.flatten() {
            remove_cgroup_tree(
                &c.path()
                    .join(common::pod::cg_root())
                    .join(format!("pod{uid}")),
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleared_state_dir_loads_not_ready_and_removes_cleanly() {
    let Some(case) = Case::start(&SERIAL, "crius-rbt", "rbt").await else {
        return;
    };
    let (_guards, mut env, image, mut rt, pod_config, _) = case.split();
    let pod_id = run_pod(&env, &mut rt, &pod_config).await;
    let sleeper = run_container(
        &env,
        &mut rt,
        &pod_id,
        &pod_config,
        &image,
        "sleeper",
        "exec /bin/busybox sleep 1000",
    )
    .await;
    env.daemon.signal_and_wait(libc::SIGKILL);
    drop(rt);
    simulate_reboot(&env, "uid-rbt");

    env.daemon.restart();
    let mut rt = env.daemon.runtime().await;
    assert_eq!(
        pod_state(&mut rt, &pod_id).await,
        k8s_cri::v1::PodSandboxState::SandboxNotready as i32
    );
    let (s, _) = container_status(&mut rt, &sleeper).await;
    assert_eq!(
        (s.state, s.reason.as_str()),
        (
            k8s_cri::v1::ContainerState::ContainerExited as i32,
            "Unknown"
        ),
        "{s:?}"
    );
    assert!(s.message.contains("shim"), "{s:?}");
    remove_pod(&env, &mut rt, &pod_id).await;
    let pods = list_pods(&mut rt).await;
    assert!(pods.is_empty(), "{pods:?}");
    assert_nothing_left(&env, "uid-rbt");
    remove_cgroup_parents("uid-rbt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_shim_makes_the_pod_not_ready() {
    let Some(case) = Case::start(&SERIAL, "crius-dsh", "dsh").await else {
        return;
    };
    let (_guards, env, image, mut rt, pod_config, _) = case.split();
    let pod_id = run_pod(&env, &mut rt, &pod_config).await;
    let sleeper = run_container(
        &env,
        &mut rt,
        &pod_id,
        &pod_config,
        &image,
        "sleeper",
        "exec /bin/busybox sleep 1000",
    )
    .await;
    let shims = shim_pids(&env.dir);
    assert_eq!(shims.len(), 1, "{shims:?}");
    let pid: i32 = shims[0].parse().unwrap();
    // SAFETY: kill(2) on the pod's shim, read from /proc.
    unsafe { libc::kill(pid, libc::SIGKILL) };

    // criusd notices without being asked to do anything.
    let deadline = Instant::now() + Duration::from_secs(30);
    while pod_state(&mut rt, &pod_id).await != k8s_cri::v1::PodSandboxState::SandboxNotready as i32
    {
        assert!(
            Instant::now() < deadline,
            "the pod stayed READY after its shim died\n{}",
            env.daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, _) = container_status(&mut rt, &sleeper).await;
    assert_eq!(
        (s.state, s.reason.as_str()),
        (
            k8s_cri::v1::ContainerState::ContainerExited as i32,
            "Unknown"
        ),
        "{s:?}"
    );
    assert!(s.message.contains("shim"), "{s:?}");
    remove_pod(&env, &mut rt, &pod_id).await;
    assert_nothing_left(&env, "uid-dsh");
    remove_cgroup_parents("uid-dsh");
}
