//! Container updates: UpdateContainerResources (and ContainerStatus.user
//! and the resources surviving a criusd restart), ReopenContainerLog and
//! GetContainerEvents.

mod common;

use common::pod::*;
use common::registry::is_root;
use k8s_cri::v1::{
    ContainerEventType, GetEventsRequest, LinuxContainerResources, RemoveContainerRequest,
    ReopenContainerLogRequest, StatusRequest, StopContainerRequest,
    UpdateContainerResourcesRequest,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The tests of this file run one at a time: an environment's leftovers
/// guard kills every process in the test cgroup tree, which the other
/// test's containers share.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn memory_cgroup(uid: &str, id: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup/memory")
        .join(common::pod::cg_root())
        .join(format!("pod{uid}"))
        .join(id)
}

/// ContainerStatus.user (run_as_user, run_as_group, supplemental groups)
/// and the resources after UpdateContainerResources, before and after a
/// criusd restart.
#[tokio::test(flavor = "multi_thread")]
async fn status_user_and_updated_resources_survive_a_restart() {
    let Some(case) = Case::start(&SERIAL, "crius-ctr-stu", "stu").await else {
        return;
    };
    let (_guards, mut env, image, mut rt, pod_config, uid) = case.split();
    let uid = uid.as_str();
    let pod_id = run_pod(&env, &mut rt, &pod_config).await;

    let mut c = container("user", &image, &["/bin/busybox", "sleep", "4242"]);
    let sc = security(&mut c);
    sc.run_as_user = Some(k8s_cri::v1::Int64Value { value: 1234 });
    sc.run_as_group = Some(k8s_cri::v1::Int64Value { value: 5678 });
    sc.supplemental_groups = vec![3000, 4000];
    let initial = LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        cpu_shares: 256,
        ..Default::default()
    };
    c.linux.as_mut().unwrap().resources = Some(initial.clone());
    let id = run(&env, &mut rt, &pod_id, &pod_config, c).await;
    // A container whose process has exited still reports its user.
    let mut idle = container("idle", &image, &["/bin/busybox", "true"]);
    security(&mut idle).run_as_user = Some(k8s_cri::v1::Int64Value { value: 42 });
    let idle = run(&env, &mut rt, &pod_id, &pod_config, idle).await;

    let user = assert_status_user_is_id(&mut rt, &id).await;
    assert_eq!(user, (1234, 5678, vec![5678, 3000, 4000]));
    let idle_user = status_of(&mut rt, &idle).await.user.and_then(|u| u.linux);
    assert_eq!(
        idle_user.map(|u| (u.uid, u.gid, u.supplemental_groups)),
        Some((42, 0, vec![0]))
    );
    let resources = |s: k8s_cri::v1::ContainerStatus| s.resources.and_then(|r| r.linux);
    assert_eq!(
        resources(status_of(&mut rt, &id).await),
        Some(initial.clone())
    );

    // The update shows in ContainerStatus; what it leaves out stays.
    rt.update_container_resources(UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(LinuxContainerResources {
            memory_limit_in_bytes: 96 << 20,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("UpdateContainerResources: {e:?}\n{}", env.daemon.log_text()));
    let updated = LinuxContainerResources {
        memory_limit_in_bytes: 96 << 20,
        ..initial.clone()
    };
    assert_eq!(
        resources(status_of(&mut rt, &id).await),
        Some(updated.clone())
    );
    // A refused update changes nothing.
    let err = rt
        .update_container_resources(UpdateContainerResourcesRequest {
            container_id: id.clone(),
            linux: Some(LinuxContainerResources {
                cpu_shares: -1,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert_eq!(
        resources(status_of(&mut rt, &id).await),
        Some(updated.clone())
    );

    // After a criusd crash and restart, both are still reported.
    drop(rt);
    env.daemon.signal_and_wait(libc::SIGKILL);
    env.daemon.restart();
    let mut rt = env.daemon.runtime().await;
    assert_eq!(assert_status_user_is_id(&mut rt, &id).await, user);
    assert_eq!(
        resources(status_of(&mut rt, &id).await),
        Some(updated.clone())
    );
    // An update after the restart reaches the cgroup and the status.
    rt.update_container_resources(UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(LinuxContainerResources {
            cpu_shares: 1024,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("UpdateContainerResources: {e:?}\n{}", env.daemon.log_text()));
    assert_eq!(
        resources(status_of(&mut rt, &id).await),
        Some(LinuxContainerResources {
            cpu_shares: 1024,
            ..updated.clone()
        })
    );
    let limit = memory_cgroup(uid, &id).join("memory.limit_in_bytes");
    assert_eq!(
        std::fs::read_to_string(&limit).unwrap().trim(),
        (96u64 << 20).to_string()
    );
    // An exited container's record is updated too.
    rt.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    rt.update_container_resources(UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(LinuxContainerResources {
            cpu_quota: 50_000,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        resources(status_of(&mut rt, &id).await).map(|r| (r.cpu_quota, r.cpu_shares)),
        Some((50_000, 1024))
    );
    teardown(&env, &mut rt, &pod_id, uid).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn update_reopen_log_and_events() {
    if !is_root() {
        eprintln!("containers_update: skipped (needs root)");
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = Env::start("crius-ctr-rpc");
    let image = format!("{}/busybox:test", env.registry.addr);
    pull(&env, &image).await;
    let mut rt = env.daemon.runtime().await;

    // The handlers' features: rro is what the runtime's `features` says.
    let status = rt
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert!(
        status
            .features
            .as_ref()
            .is_some_and(|f| f.supplemental_groups_policy),
        "{status:?}"
    );
    let runc_rro = Command::new("runc")
        .arg("features")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|d| {
            d["mountOptions"]
                .as_array()
                .map(|a| a.iter().any(|v| v == "rro"))
        })
        .unwrap_or(false);
    let default = status
        .runtime_handlers
        .iter()
        .find(|h| h.name.is_empty())
        .and_then(|h| h.features)
        .expect("the default handler is listed");
    assert_eq!(default.recursive_read_only_mounts, runc_rro);
    // user_namespaces: see user_namespace_pods.

    // Subscribe before anything happens.
    let mut events = rt
        .get_container_events(GetEventsRequest {})
        .await
        .unwrap()
        .into_inner();

    let uid = "uid-ctr-rpc";
    let pod_config = pod("rpc", uid);
    let _logs = LogDir(PathBuf::from(&pod_config.log_directory));
    let pod_id = run_pod(&env, &mut rt, &pod_config).await;

    let mut c = container(
        "ticker",
        &image,
        &[
            "/bin/sh",
            "-c",
            "i=0; while true; do i=$((i+1)); echo tick $i; /bin/busybox sleep 0.1; done",
        ],
    );
    c.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: 64 << 20,
        ..Default::default()
    });
    let id = run(&env, &mut rt, &pod_id, &pod_config, c).await;
    let limit = memory_cgroup(uid, &id).join("memory.limit_in_bytes");
    let read_limit = || {
        std::fs::read_to_string(&limit)
            .unwrap_or_else(|e| panic!("{}: {e}", limit.display()))
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    assert_eq!(read_limit(), 64 << 20);

    // UpdateContainerResources reaches the cgroup.
    rt.update_container_resources(UpdateContainerResourcesRequest {
        container_id: id.clone(),
        linux: Some(LinuxContainerResources {
            memory_limit_in_bytes: 96 << 20,
            cpu_shares: 512,
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("UpdateContainerResources: {e:?}\n{}", env.daemon.log_text()));
    assert_eq!(read_limit(), 96 << 20);
    let shares = Path::new("/sys/fs/cgroup/cpu")
        .join(common::pod::cg_root())
        .join(format!("pod{uid}"))
        .join(&id)
        .join("cpu.shares");
    if shares.exists() {
        assert_eq!(
            std::fs::read_to_string(&shares).unwrap().trim(),
            "512",
            "{}",
            shares.display()
        );
    }
    for (req, code) in [
        (
            UpdateContainerResourcesRequest {
                container_id: id.clone(),
                linux: Some(LinuxContainerResources {
                    memory_limit_in_bytes: -1,
                    ..Default::default()
                }),
                ..Default::default()
            },
            tonic::Code::InvalidArgument,
        ),
        (
            UpdateContainerResourcesRequest {
                container_id: id.clone(),
                linux: None,
                ..Default::default()
            },
            tonic::Code::InvalidArgument,
        ),
        (
            UpdateContainerResourcesRequest {
                container_id: "no-such-container".into(),
                linux: Some(LinuxContainerResources::default()),
                ..Default::default()
            },
            tonic::Code::NotFound,
        ),
    ] {
        let err = rt.update_container_resources(req).await.unwrap_err();
        assert_eq!(err.code(), code, "{err:?}");
    }
    assert_eq!(
        read_limit(),
        96 << 20,
        "a refused update changed the cgroup"
    );

    // ReopenContainerLog after rotating the log: new lines go to the new file.
    let log = PathBuf::from(&pod_config.log_directory).join("ticker/0.log");
    wait_for("ticks in the log", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains(" stdout F tick"))
    })
    .await;
    let rotated = log.with_file_name("0.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    rt.reopen_container_log(ReopenContainerLogRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("ReopenContainerLog: {e:?}\n{}", env.daemon.log_text()));
    wait_for("ticks in the new log", || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains(" stdout F tick"))
    })
    .await;
    let last_tick = |p: &Path| -> u64 {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .max()
            .unwrap_or(0)
    };
    // Once the reopen is done, the rotated file stops growing while the
    // new one keeps receiving newer lines.
    let rotated_last = last_tick(&rotated);
    wait_for("newer ticks in the new log", || {
        last_tick(&log) > rotated_last + 5
    })
    .await;
    assert_eq!(
        last_tick(&rotated),
        rotated_last,
        "lines went to the rotated file after the reopen"
    );
    assert!(std::fs::read_to_string(&rotated)
        .unwrap()
        .contains(" stdout F tick 1\n"));

    rt.stop_container(StopContainerRequest {
        container_id: id.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    let err = rt
        .reopen_container_log(ReopenContainerLogRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    rt.remove_container(RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();

    // GetContainerEvents saw the whole life of the container, in order,
    // each event with the pod's status.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.contains(&ContainerEventType::ContainerDeletedEvent) {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = tokio::time::timeout(left, events.message())
            .await
            .expect("timed out waiting for container events")
            .unwrap()
            .expect("the event stream ended");
        if ev.container_id != id {
            continue;
        }
        let pod_status = ev.pod_sandbox_status.as_ref().expect("pod status");
        assert_eq!(pod_status.id, pod_id);
        assert!(ev.created_at > 0);
        let kind = ContainerEventType::try_from(ev.container_event_type).unwrap();
        if kind != ContainerEventType::ContainerDeletedEvent {
            assert!(
                ev.containers_statuses.iter().any(|s| s.id == id),
                "{kind:?} without the container's status"
            );
        }
        seen.push(kind);
    }
    assert_eq!(
        seen,
        vec![
            ContainerEventType::ContainerCreatedEvent,
            ContainerEventType::ContainerStartedEvent,
            ContainerEventType::ContainerStoppedEvent,
            ContainerEventType::ContainerDeletedEvent,
        ]
    );
    drop(events);
    teardown(&env, &mut rt, &pod_id, uid).await;
}
