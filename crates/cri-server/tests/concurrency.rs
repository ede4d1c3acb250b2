//! Concurrency and cancellation: parallel RunPodSandbox calls with one name,
//! creations whose caller timed out handed back to a retry (or removed when
//! nobody asks), and Stop/Remove racing Create.

mod common;

use common::pod::*;
use common::registry::is_root;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, CreateContainerRequest, ListPodSandboxRequest, PodSandboxConfig,
    RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest, StopContainerRequest,
    StopPodSandboxRequest,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tonic::transport::Channel;

type Rt = RuntimeServiceClient<Channel>;

/// The tests of this file run one at a time: the `Leftovers` guard of a
/// finished test kills every process in the shared `crius-test` cgroups.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long criusd keeps an unclaimed object in these tests.
const EXPIRY: &str = "3s";

/// Every call of a test is bounded: a deadlock fails the test.
async fn bounded<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within two minutes (deadlock?)"))
}

fn start_env(prefix: &str) -> Env {
    Env::start_with(prefix, &format!("handback_expiry = \"{EXPIRY}\"\n"))
}

async fn pods_named(rt: &mut Rt, name: &str) -> Vec<k8s_cri::v1::PodSandbox> {
    rt.list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items
        .into_iter()
        .filter(|p| p.metadata.as_ref().is_some_and(|m| m.name == name))
        .collect()
}

async fn remove_all(env: &Env, rt: &mut Rt) {
    let pods = rt
        .list_pod_sandbox(ListPodSandboxRequest { filter: None })
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items;
    for p in pods {
        rt.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: p.id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e:?}\n{}", env.daemon.log_text()));
        rt.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: p.id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e:?}\n{}", env.daemon.log_text()));
    }
}

fn shims(dir: &Path) -> Vec<String> {
    processes_mentioning(&dir.display().to_string())
        .into_iter()
        .filter(|p| p.contains("containerd-shim-crius-v2"))
        .collect()
}

async fn assert_nothing_left(env: &Env, rt: &mut Rt, uids: &[&str]) {
    let pods = list_pods(rt).await;
    assert!(pods.is_empty(), "pods left: {pods:?}");
    let containers = list_containers(rt).await;
    assert!(containers.is_empty(), "containers left: {containers:?}");
    assert!(
        mounts_below(&env.dir).is_empty(),
        "mounts left: {:?}",
        mounts_below(&env.dir)
    );
    // A shim exits right after Shutdown; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !shims(&env.dir).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        shims(&env.dir).is_empty(),
        "shims left: {:?}",
        shims(&env.dir)
    );
    for uid in uids {
        assert!(
            cgroup_dirs(uid).is_empty(),
            "cgroups left: {:?}",
            cgroup_dirs(uid)
        );
        remove_cgroup_parents(uid);
    }
    let store = env.dir.join("root/store");
    for kind in ["sandboxes", "containers"] {
        let left: Vec<_> = std::fs::read_dir(store.join(kind))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{kind} records left: {left:?}");
    }
}

fn run_req(config: &PodSandboxConfig) -> RunPodSandboxRequest {
    RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: String::new(),
    }
}

fn container(name: &str, image: &str) -> ContainerConfig {
    common::pod::container(name, image, &["/bin/busybox", "sleep", "1000"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_parallel_runs_with_one_name_create_one_pod() {
    if !is_root() {
        eprintln!("skipping: pods need root");
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = start_env("crius-par");
    let config = pod("par", "uid-par");
    let _logs = LogDirs(vec![PathBuf::from(&config.log_directory)]);
    let rt = env.daemon.runtime().await;
    let calls = (0..20).map(|_| {
        let mut rt = rt.clone();
        let req = run_req(&config);
        tokio::spawn(async move { rt.run_pod_sandbox(req).await })
    });
    let results = bounded("20 parallel RunPodSandbox", async {
        futures_util::future::join_all(calls).await
    })
    .await;
    let mut rt = rt;
    let pods = pods_named(&mut rt, "par").await;
    assert_eq!(pods.len(), 1, "{pods:?}\n{}", env.daemon.log_text());
    let id = pods[0].id.clone();
    for r in results {
        match r.expect("task") {
            Ok(resp) => assert_eq!(resp.into_inner().pod_sandbox_id, id),
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
                assert!(e.message().contains(&id), "{e:?} does not name {id}");
            }
        }
    }
    assert_eq!(
        pods[0].state,
        k8s_cri::v1::PodSandboxState::SandboxReady as i32
    );
    bounded("removal", remove_all(&env, &mut rt)).await;
    assert_nothing_left(&env, &mut rt, &["uid-par"]).await;
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timed_out_creations_are_handed_back_or_removed() {
    if !is_root() {
        eprintln!("skipping: pods need root");
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = start_env("crius-hb");
    let image = env.pull_busybox().await;
    let config = pod("hb", "uid-hb");
    let lost = pod("lost", "uid-lost");
    let _logs = LogDirs(vec![
        PathBuf::from(&config.log_directory),
        PathBuf::from(&lost.log_directory),
    ]);
    let mut rt = env.daemon.runtime().await;

    // The caller gives up after a few milliseconds; the pod takes longer.
    // On a loaded machine the server may drop the call before its handler
    // ever ran (then the retry rightly makes the pod): such an attempt is
    // undone and made again; a hand-back that does not work fails every
    // attempt.
    let mut handed_back = None;
    for _attempt in 0..3 {
        let mut req = tonic::Request::new(run_req(&config));
        req.set_timeout(Duration::from_millis(5));
        let err = rt.run_pod_sandbox(req).await.unwrap_err();
        assert!(
            matches!(
                err.code(),
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            ),
            "{err:?}"
        );
        let retried_at = now_nanos();
        // kubelet retries with the same name and config: it gets the pod the
        // first call made, not "name reserved".
        let id = bounded("the retry", rt.run_pod_sandbox(run_req(&config)))
            .await
            .unwrap_or_else(|e| panic!("retry: {e:?}\n{}", env.daemon.log_text()))
            .into_inner()
            .pod_sandbox_id;
        let pods = pods_named(&mut rt, "hb").await;
        assert_eq!(pods.len(), 1, "{pods:?}");
        assert_eq!(pods[0].id, id);
        assert_eq!(
            pods[0].state,
            k8s_cri::v1::PodSandboxState::SandboxReady as i32
        );
        if pods[0].created_at < retried_at {
            handed_back = Some(id);
            break;
        }
        rt.stop_pod_sandbox(k8s_cri::v1::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        })
        .await
        .unwrap();
        rt.remove_pod_sandbox(k8s_cri::v1::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await
            .unwrap();
    }
    let id = handed_back.expect("the retry made a new pod instead of getting the first one back");
    // Once handed back, the name is taken as usual.
    let err = rt.run_pod_sandbox(run_req(&config)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");

    // The same for a container.
    let create = CreateContainerRequest {
        pod_sandbox_id: id.clone(),
        config: Some(container("c", &image)),
        sandbox_config: Some(config.clone()),
    };
    let mut req = tonic::Request::new(create.clone());
    req.set_timeout(Duration::from_millis(2));
    let first = rt.create_container(req).await;
    let retry = bounded("the container retry", rt.create_container(create.clone())).await;
    let cid = match first {
        // The first call was quick enough after all: the object went to
        // it, and the retry is a duplicate.
        Ok(r) => {
            let e = retry.unwrap_err();
            assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
            r.into_inner().container_id
        }
        Err(_) => {
            retry
                .unwrap_or_else(|e| panic!("retry: {e:?}\n{}", env.daemon.log_text()))
                .into_inner()
                .container_id
        }
    };
    let containers = list_containers(&mut rt).await;
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_eq!(containers[0].id, cid);

    // Nobody retries: after the expiry the pod is removed.
    let mut req = tonic::Request::new(run_req(&lost));
    req.set_timeout(Duration::from_millis(5));
    let _ = rt.run_pod_sandbox(req).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = pods_named(&mut rt, "lost").await;
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the unclaimed pod was not removed: {left:?}\n{}",
            env.daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ...and its name is free again.
    let again = bounded(
        "RunPodSandbox after expiry",
        rt.run_pod_sandbox(run_req(&lost)),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:?}\n{}", env.daemon.log_text()));
    assert!(!again.into_inner().pod_sandbox_id.is_empty());

    bounded("removal", remove_all(&env, &mut rt)).await;
    assert_nothing_left(&env, &mut rt, &["uid-hb", "uid-lost"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stop_and_remove_racing_create_leave_nothing() {
    if !is_root() {
        eprintln!("skipping: pods need root");
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = start_env("crius-race");
    let image = env.pull_busybox().await;
    let rounds = 4;
    let (configs, _logs) = pods("race", rounds);
    let rt = env.daemon.runtime().await;

    for (i, config) in configs.iter().enumerate() {
        let name = format!("race{i}");
        // RunPodSandbox, with Stop and Remove fired at the pod as soon as
        // its record shows up (while the creation still runs).
        let mut creator = rt.clone();
        let req = run_req(config);
        let create = tokio::spawn(async move { creator.run_pod_sandbox(req).await });
        let mut killer = rt.clone();
        let n = name.clone();
        // Odd rounds leave the pod alone, so that its container races.
        let race_pod = i % 2 == 0;
        let kill = tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while race_pod && Instant::now() < deadline {
                if let Some(p) = pods_named(&mut killer, &n).await.pop() {
                    let stop = killer
                        .stop_pod_sandbox(StopPodSandboxRequest {
                            pod_sandbox_id: p.id.clone(),
                        })
                        .await;
                    let remove = killer
                        .remove_pod_sandbox(RemovePodSandboxRequest {
                            pod_sandbox_id: p.id.clone(),
                        })
                        .await;
                    return Some((stop.map(|_| ()), remove.map(|_| ())));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            None
        });
        let (created, killed) = bounded("create racing stop/remove", async {
            (create.await.unwrap(), kill.await.unwrap())
        })
        .await;
        eprintln!(
            "round {i}: create {:?}, stop/remove {killed:?}",
            created.as_ref().map(|_| ())
        );
        // Stop and Remove wait for the creation and then do their job (or
        // find nothing): never Internal. The creation itself is not
        // disturbed.
        if let Err(e) = &created {
            panic!("round {i}: RunPodSandbox racing Stop/Remove failed: {e:?}");
        }
        if let Some((stop, remove)) = &killed {
            assert!(
                matches!(stop, Ok(()))
                    || matches!(stop, Err(e) if e.code() == tonic::Code::NotFound),
                "round {i}: StopPodSandbox racing RunPodSandbox: {stop:?}"
            );
            assert!(
                remove.is_ok(),
                "round {i}: RemovePodSandbox racing RunPodSandbox: {remove:?}"
            );
        }

        // Whatever won, a pod that is left can be used or removed, and
        // containers race their removal too.
        let mut rt2 = rt.clone();
        if let Some(p) = pods_named(&mut rt2, &name)
            .await
            .into_iter()
            .find(|p| p.state == k8s_cri::v1::PodSandboxState::SandboxReady as i32)
        {
            let req = CreateContainerRequest {
                pod_sandbox_id: p.id.clone(),
                config: Some(container("c", &image)),
                sandbox_config: Some(config.clone()),
            };
            let mut creator = rt.clone();
            let create = tokio::spawn(async move { creator.create_container(req).await });
            let mut killer = rt.clone();
            let pod_id = p.id.clone();
            let kill = tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(30);
                while Instant::now() < deadline {
                    let list = list_containers(&mut killer).await;
                    if let Some(c) = list.into_iter().find(|c| c.pod_sandbox_id == pod_id) {
                        let stop = killer
                            .stop_container(StopContainerRequest {
                                container_id: c.id.clone(),
                                timeout: 0,
                            })
                            .await
                            .map(|_| ());
                        let remove = killer
                            .remove_container(RemoveContainerRequest { container_id: c.id })
                            .await
                            .map(|_| ());
                        return Some((stop, remove));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                None
            });
            let (created, killed) = bounded("create container racing remove", async {
                (create.await.unwrap(), kill.await.unwrap())
            })
            .await;
            eprintln!(
                "round {i}: container create {:?}, stop/remove {killed:?}",
                created.as_ref().map(|_| ())
            );
            if let Err(e) = &created {
                panic!("round {i}: CreateContainer racing Stop/Remove failed: {e:?}");
            }
            let (stop, remove) = killed.expect("the container record never showed up");
            assert!(
                matches!(stop, Ok(()))
                    || matches!(&stop, Err(e) if e.code() == tonic::Code::NotFound),
                "round {i}: StopContainer racing CreateContainer: {stop:?}"
            );
            assert!(
                remove.is_ok(),
                "round {i}: RemoveContainer racing CreateContainer: {remove:?}"
            );
        }
        let mut rt3 = rt.clone();
        bounded("removal", remove_all(&env, &mut rt3)).await;
    }
    let mut rt = rt;
    let uids: Vec<String> = (0..rounds).map(|i| format!("uid-race{i}")).collect();
    let uids: Vec<&str> = uids.iter().map(String::as_str).collect();
    assert_nothing_left(&env, &mut rt, &uids).await;
}
