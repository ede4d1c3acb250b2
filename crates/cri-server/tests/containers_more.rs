//! Containers, continued: UpdateContainerResources, ReopenContainerLog,
//! GetContainerEvents, the default seccomp profile, pid namespace
//! targeting, the image's user, mount propagation, runtime features and
//! bad requests that must leave nothing behind.

mod common;

use common::pod::*;
use common::registry::{busybox_entries, image_with_config, is_root, layer, Compression, Entry};
use k8s_cri::v1::{
    Capability, ContainerEventType, GetEventsRequest, LinuxContainerResources,
    ListContainersRequest, Mount, MountPropagation, NamespaceMode, NamespaceOption,
    RemoveContainerRequest, RemovePodSandboxRequest, ReopenContainerLogRequest,
    RunPodSandboxRequest, SecurityProfile, StartContainerRequest, StatusRequest,
    StopContainerRequest, StopPodSandboxRequest, UpdateContainerResourcesRequest,
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

/// ContainerStatus.user is exactly what `id` prints inside the container.
async fn assert_status_user_is_id(rt: &mut Rt, id: &str) -> (i64, i64, Vec<i64>) {
    let user = status_of(rt, id)
        .await
        .user
        .and_then(|u| u.linux)
        .unwrap_or_else(|| panic!("no user in the status of {id}"));
    let num = |s: &str| s.trim().parse::<i64>().unwrap();
    let (_, uid, _) = exec(rt, id, &["/bin/busybox", "id", "-u"]).await;
    let (_, gid, _) = exec(rt, id, &["/bin/busybox", "id", "-g"]).await;
    let (_, groups, _) = exec(rt, id, &["/bin/busybox", "id", "-G"]).await;
    let mut inside: Vec<i64> = groups.split_whitespace().map(num).collect();
    inside.sort_unstable();
    inside.dedup();
    let mut reported = user.supplemental_groups.clone();
    reported.sort_unstable();
    reported.dedup();
    assert_eq!(
        (user.uid, user.gid, reported),
        (num(&uid), num(&gid), inside),
        "ContainerStatus.user of {id} differs from `id` inside"
    );
    (user.uid, user.gid, user.supplemental_groups)
}

/// ContainerStatus.user (run_as_user, run_as_group, supplemental groups)
/// and the resources after UpdateContainerResources, before and after a
/// criusd restart.
#[tokio::test(flavor = "multi_thread")]
async fn status_user_and_updated_resources_survive_a_restart() {
    if !is_root() {
        eprintln!("containers_more: skipped (needs root)");
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut env = Env::start("crius-ctr-stu");
    let image = env.pull_busybox().await;
    let mut rt = env.daemon.runtime().await;
    let uid = "uid-ctr-stu";
    let pod_config = pod("stu", uid);
    let _logs = LogDir(PathBuf::from(&pod_config.log_directory));
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
        eprintln!("containers_more: skipped (needs root)");
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

#[tokio::test(flavor = "multi_thread")]
async fn security_namespaces_user_mounts_and_bad_requests() {
    if !is_root() {
        eprintln!("containers_more: skipped (needs root)");
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = Env::start("crius-ctr-sec");
    let image = format!("{}/busybox:test", env.registry.addr);
    // An image whose config names a user.
    let user_image = image_with_config(
        vec![layer(&busybox_entries(), Compression::Gzip)],
        serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "User": "1234:5678"}),
    );
    env.registry.push_image("userimg", "test", &user_image);
    let user_ref = format!("{}/userimg:test", env.registry.addr);
    // An image with a named user who is a member of an extra group.
    let group_image = image_with_config(
        vec![
            layer(&busybox_entries(), Compression::Gzip),
            layer(
                &[
                    Entry::Dir("etc"),
                    Entry::File(
                        "etc/passwd",
                        b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n".to_vec(),
                        0o644,
                    ),
                    Entry::File(
                        "etc/group",
                        b"root:x:0:\napp:x:1000:\nextra:x:2000:app\n".to_vec(),
                        0o644,
                    ),
                ],
                Compression::Gzip,
            ),
        ],
        serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "User": "app"}),
    );
    env.registry.push_image("groupimg", "test", &group_image);
    let group_ref = format!("{}/groupimg:test", env.registry.addr);
    pull(&env, &image).await;
    pull(&env, &user_ref).await;
    pull(&env, &group_ref).await;
    let mut rt = env.daemon.runtime().await;
    let uid = "uid-ctr-sec";
    let mut pod_config = pod("sec", uid);
    let _logs = LogDir(PathBuf::from(&pod_config.log_directory));
    // Privileged containers need a privileged pod.
    pod_config
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .get_or_insert_with(Default::default)
        .privileged = true;
    let pod_id = run_pod(&env, &mut rt, &pod_config).await;
    let sleeper = |name: &str, img: &str| container(name, img, &["/bin/busybox", "sleep", "4242"]);

    // The default seccomp profile refuses personality(ADDR_NO_RANDOMIZE);
    // the same container unconfined may do it.
    let mut confined = sleeper("confined", &image);
    security(&mut confined).seccomp = Some(SecurityProfile {
        profile_type: k8s_cri::v1::security_profile::ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    });
    // A PID namespace of its own (the TARGET check below joins it).
    security(&mut confined).namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Container as i32,
        ..Default::default()
    });
    let confined = run(&env, &mut rt, &pod_id, &pod_config, confined).await;
    let mut unconfined = sleeper("unconfined", &image);
    security(&mut unconfined).seccomp = Some(SecurityProfile {
        profile_type: k8s_cri::v1::security_profile::ProfileType::Unconfined as i32,
        localhost_ref: String::new(),
    });
    let unconfined = run(&env, &mut rt, &pod_id, &pod_config, unconfined).await;
    let probe = ["/bin/busybox", "linux64", "-R", "/bin/busybox", "true"];
    let (code, _, err) = exec(&mut rt, &confined, &probe).await;
    assert_ne!(
        code, 0,
        "personality was allowed under RuntimeDefault: {err}"
    );
    let (code, _, err) = exec(&mut rt, &unconfined, &probe).await;
    assert_eq!(code, 0, "personality failed unconfined: {err}");
    // A Seccomp-filtered container reports it in /proc/self/status.
    let (_, out, _) = exec(
        &mut rt,
        &confined,
        &["/bin/busybox", "cat", "/proc/self/status"],
    )
    .await;
    assert!(out.contains("Seccomp:\t2"), "{out}");
    let (_, out, _) = exec(
        &mut rt,
        &unconfined,
        &["/bin/busybox", "cat", "/proc/self/status"],
    )
    .await;
    assert!(out.contains("Seccomp:\t0"), "{out}");

    // Dropped capabilities are gone: NET_RAW is bit 13 of CapEff.
    let mut dropped = sleeper("dropped", &image);
    security(&mut dropped).capabilities = Some(Capability {
        drop_capabilities: vec!["NET_RAW".into(), "CHOWN".into()],
        ..Default::default()
    });
    let dropped = run(&env, &mut rt, &pod_id, &pod_config, dropped).await;
    let (_, out, _) = exec(
        &mut rt,
        &dropped,
        &["/bin/busybox", "cat", "/proc/self/status"],
    )
    .await;
    let cap_eff = out
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|m| u64::from_str_radix(m.trim(), 16).unwrap())
        .unwrap();
    assert_eq!(cap_eff & (1 << 13), 0, "NET_RAW still held: {cap_eff:x}");
    assert_eq!(cap_eff & 1, 0, "CHOWN still held: {cap_eff:x}");
    assert_ne!(cap_eff & (1 << 5), 0, "KILL should stay: {cap_eff:x}");

    // A privileged container gets the host's devices; others do not.
    if Path::new("/dev/loop0").exists() {
        let mut privileged = sleeper("privileged", &image);
        security(&mut privileged).privileged = true;
        let privileged = run(&env, &mut rt, &pod_id, &pod_config, privileged).await;
        let probe = ["/bin/busybox", "test", "-b", "/dev/loop0"];
        let (code, _, err) = exec(&mut rt, &privileged, &probe).await;
        assert_eq!(code, 0, "no /dev/loop0 in a privileged container: {err}");
        let (code, _, _) = exec(&mut rt, &dropped, &probe).await;
        assert_ne!(code, 0, "/dev/loop0 in an unprivileged container");
    }

    // A container in the pid namespace of another (TARGET) sees its
    // processes; one in the pod's (no namespace options: POD) does not.
    let mut target = sleeper("target", &image);
    target.command = vec!["/bin/busybox".into(), "sleep".into(), "5151".into()];
    security(&mut target).namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Target as i32,
        target_id: confined.clone(),
        ..Default::default()
    });
    let target = run(&env, &mut rt, &pod_id, &pod_config, target).await;
    let (_, out, _) = exec(&mut rt, &target, &["/bin/busybox", "ps"]).await;
    assert!(
        out.contains("sleep 4242") && out.contains("sleep 5151"),
        "{out}"
    );
    let (_, out, _) = exec(&mut rt, &dropped, &["/bin/busybox", "ps"]).await;
    assert!(!out.contains("sleep 5151"), "{out}");
    // ... and sees the pod's: the pause is its pid 1.
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("1 ") && l.contains("sleep 2147483647")),
        "{out}"
    );

    // The image's User takes effect; run_as_user overrides the uid.
    let img_user = run(
        &env,
        &mut rt,
        &pod_id,
        &pod_config,
        sleeper("imguser", &user_ref),
    )
    .await;
    let (_, out, _) = exec(&mut rt, &img_user, &["/bin/busybox", "id"]).await;
    assert!(
        out.contains("uid=1234") && out.contains("gid=5678"),
        "{out}"
    );
    let mut as_user = sleeper("asuser", &user_ref);
    security(&mut as_user).run_as_user = Some(k8s_cri::v1::Int64Value { value: 4321 });
    let as_user = run(&env, &mut rt, &pod_id, &pod_config, as_user).await;
    let (_, out, _) = exec(&mut rt, &as_user, &["/bin/busybox", "id", "-u"]).await;
    assert_eq!(out.trim(), "4321");

    // SupplementalGroupsPolicy: Merge adds the groups /etc/group gives the
    // user, Strict only the primary group and the requested ones.
    for (name, policy, want) in [("merge", 0, "1000 2000 3000"), ("strict", 1, "1000 3000")] {
        let mut c = sleeper(name, &group_ref);
        let sc = security(&mut c);
        sc.supplemental_groups = vec![3000];
        sc.supplemental_groups_policy = policy;
        let id = run(&env, &mut rt, &pod_id, &pod_config, c).await;
        let (_, out, _) = exec(&mut rt, &id, &["/bin/busybox", "id", "-G"]).await;
        let mut got: Vec<&str> = out.split_whitespace().collect();
        got.sort_unstable();
        assert_eq!(got.join(" "), want, "{name}");
        assert_status_user_is_id(&mut rt, &id).await;
        let (_, out, _) = exec(&mut rt, &id, &["/bin/busybox", "id", "-un"]).await;
        assert_eq!(out.trim(), "app");
    }

    // rslave (host-to-container) propagation from a shared mount made here:
    // a mount made on the host afterwards shows up inside.
    let shared = env.dir.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let sh = |args: &[&str]| {
        let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
        assert!(st.success(), "{args:?}");
    };
    let shared_s = shared.display().to_string();
    sh(&["mount", "-t", "tmpfs", "crius-test-shared", &shared_s]);
    sh(&["mount", "--make-shared", &shared_s]);
    std::fs::create_dir_all(shared.join("later")).unwrap();
    let mut slave = sleeper("slave", &image);
    slave.mounts = vec![Mount {
        container_path: "/mnt/host".into(),
        host_path: shared_s.clone(),
        propagation: MountPropagation::PropagationHostToContainer as i32,
        ..Default::default()
    }];
    let slave = run(&env, &mut rt, &pod_id, &pod_config, slave).await;
    let later = shared.join("later").display().to_string();
    sh(&["mount", "-t", "tmpfs", "crius-test-later", &later]);
    std::fs::write(shared.join("later/hello"), "from the host").unwrap();
    let (code, out, err) = exec(
        &mut rt,
        &slave,
        &["/bin/busybox", "cat", "/mnt/host/later/hello"],
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "from the host"), "{err}");
    let (_, out, _) = exec(
        &mut rt,
        &slave,
        &["/bin/busybox", "cat", "/proc/self/mountinfo"],
    )
    .await;
    assert!(
        out.lines()
            .any(|l| l.contains(" /mnt/host ") && l.contains("master:")),
        "{out}"
    );
    // Recursive read-only (where the handler reports it): a submount of
    // the bound tree is read-only too, unlike with a plain `ro` bind.
    let rro = rt
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner()
        .runtime_handlers
        .iter()
        .find(|h| h.name.is_empty())
        .and_then(|h| h.features)
        .is_some_and(|f| f.recursive_read_only_mounts);
    let ro_mount = |path: &str, recursive: bool| Mount {
        container_path: path.into(),
        host_path: shared_s.clone(),
        readonly: true,
        recursive_read_only: recursive,
        ..Default::default()
    };
    let mut ro = sleeper("readonly", &image);
    ro.mounts = vec![ro_mount("/mnt/ro", false)];
    if rro {
        ro.mounts.push(ro_mount("/mnt/rro", true));
    }
    let ro = run(&env, &mut rt, &pod_id, &pod_config, ro).await;
    let touch = |p: &'static str| ["/bin/busybox", "touch", p];
    let (code, _, _) = exec(&mut rt, &ro, &touch("/mnt/ro/top")).await;
    assert_ne!(code, 0, "a read-only bind was writable");
    let (code, _, err) = exec(&mut rt, &ro, &touch("/mnt/ro/later/plain")).await;
    assert_eq!(code, 0, "a plain ro bind keeps submounts writable: {err}");
    if rro {
        let (code, _, _) = exec(&mut rt, &ro, &touch("/mnt/rro/later/recursive")).await;
        assert_ne!(code, 0, "a submount of an rro bind was writable");
        assert!(!shared.join("later/recursive").exists());
    } else {
        let mut c = sleeper("rro", &image);
        c.mounts = vec![ro_mount("/mnt/rro", true)];
        let err = create(&mut rt, &pod_id, &pod_config, c).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    }

    // A missing host path is made as a directory.
    let made = env.dir.join("made/by/crius");
    let mut mk = sleeper("mkdir", &image);
    mk.mounts = vec![Mount {
        container_path: "/mnt/made".into(),
        host_path: made.display().to_string(),
        ..Default::default()
    }];
    let mk = run(&env, &mut rt, &pod_id, &pod_config, mk).await;
    assert!(made.is_dir());
    let (code, _, err) = exec(&mut rt, &mk, &["/bin/busybox", "touch", "/mnt/made/x"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(made.join("x").exists());

    // Bad requests: InvalidArgument naming the problem, and nothing left
    // behind (no record, no name, no host directory, no mounts).
    let containers_before = rt
        .list_containers(ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers
        .len();
    let mounts_before = mounts_below(&env.dir.join("root")).len();
    let unmade = env.dir.join("unmade");
    let mut bidirectional_private = sleeper("bad", &image);
    bidirectional_private.mounts = vec![Mount {
        container_path: "/mnt/x".into(),
        host_path: unmade.join("deep").display().to_string(),
        propagation: MountPropagation::PropagationBidirectional as i32,
        ..Default::default()
    }];
    let mut slave_private = sleeper("bad", &image);
    slave_private.mounts = vec![Mount {
        container_path: "/mnt/x".into(),
        host_path: env.dir.join("registry").display().to_string(),
        propagation: MountPropagation::PropagationHostToContainer as i32,
        ..Default::default()
    }];
    let mut escaping_log = sleeper("bad", &image);
    escaping_log.log_path = "../../etc/x.log".into();
    let mut unknown_user = sleeper("bad", &image);
    security(&mut unknown_user).run_as_username = "nobody-here".into();
    let mut bad_cap = sleeper("bad", &image);
    security(&mut bad_cap).capabilities = Some(Capability {
        add_capabilities: vec!["NOT_A_CAP".into()],
        ..Default::default()
    });
    let mut no_name = sleeper("", &image);
    no_name.log_path = "x.log".into();
    // Used to come back as Internal.
    let bad_reference = sleeper("bad", "UPPER/Case:%tag");
    for (what, c) in [
        ("bidirectional on a private mount", bidirectional_private),
        ("rslave on a private mount", slave_private),
        ("log path escaping", escaping_log),
        ("unknown user", unknown_user),
        ("unknown capability", bad_cap),
        ("empty name", no_name),
        ("invalid image reference", bad_reference),
    ] {
        let err = create(&mut rt, &pod_id, &pod_config, c)
            .await
            .expect_err(what);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err:?}");
    }
    assert!(!unmade.exists(), "a refused create left its host directory");
    assert_eq!(
        rt.list_containers(ListContainersRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .containers
            .len(),
        containers_before
    );
    assert_eq!(mounts_below(&env.dir.join("root")).len(), mounts_before);
    // The name "bad" was released by every failure.
    let good = run(&env, &mut rt, &pod_id, &pod_config, sleeper("bad", &image)).await;
    rt.remove_container(RemoveContainerRequest { container_id: good })
        .await
        .unwrap();

    teardown(&env, &mut rt, &pod_id, uid).await;
    for m in [later, shared_s] {
        let _ = Command::new("umount").arg(&m).status();
    }
}

/// The first host id of the user namespace pod's mapping.
const USERNS_BASE: u32 = 65536 * 40;

/// The pid of a running container, from the verbose ContainerStatus.
async fn container_pid(rt: &mut Rt, id: &str) -> u32 {
    let r = rt
        .container_status(k8s_cri::v1::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&r.info["info"]).unwrap();
    info["pid"].as_u64().expect("a pid") as u32
}

fn userns_inode(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/user"))
        .unwrap()
        .display()
        .to_string()
}

fn proc_ids(pid: u32, key: &str) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}

/// Pods with their own user namespace (userns_options mode POD): the
/// pause makes it, the pod's containers share it, idmapped rootfs and
/// volumes make root inside own the image's files, nothing stays mounted.
#[tokio::test(flavor = "multi_thread")]
async fn user_namespace_pods() {
    if !is_root() {
        eprintln!("containers_more: skipped (needs root)");
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut env = Env::start("crius-userns");
    let image = env.pull_busybox().await;
    let mut rt = env.daemon.runtime().await;
    let features = rt
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner()
        .runtime_handlers
        .iter()
        .find(|h| h.name.is_empty())
        .and_then(|h| h.features)
        .expect("the default handler is listed");
    let uid = "uid-userns";
    let pod_config = userns_pod("userns", uid, (0, USERNS_BASE, 65536));
    let _logs = LogDir(PathBuf::from(&pod_config.log_directory));
    if !features.user_namespaces {
        // Where the host cannot, mode POD is refused naming the field.
        let err = rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod_config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains("userns_options"), "{err:?}");
        eprintln!("user namespaces unavailable: {}", err.message());
        return;
    }

    // Bad mappings are refused and leave nothing behind.
    for (maps, part) in [
        ((0, USERNS_BASE, 0), "length must not be 0"),
        ((0, 0, 65536), "host's root"),
        ((0, u32::MAX - 5, 65536), "overflows"),
        ((5, USERNS_BASE, 65536), "container id 0"),
    ] {
        let err = rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(userns_pod("userns", uid, maps)),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{maps:?}: {err:?}"
        );
        assert!(
            err.message().contains("userns_options") && err.message().contains(part),
            "{maps:?}: {err:?}"
        );
    }
    let pods = rt
        .list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");

    let pod_id = run_pod(&env, &mut rt, &pod_config).await;
    let pause_pid = rt
        .pod_sandbox_status(k8s_cri::v1::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner()
        .info
        .get("info")
        .and_then(|i| serde_json::from_str::<serde_json::Value>(i).ok())
        .and_then(|v| v["pid"].as_u64())
        .map(|p| p as u32);

    // A volume from a host directory owned by the host's root.
    let vol = env.dir.join("userns-volume");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("from-host"), "hello").unwrap();
    let mut a = container("a", &image, &["/bin/busybox", "sleep", "4242"]);
    a.mounts = vec![Mount {
        container_path: "/data".into(),
        host_path: vol.display().to_string(),
        ..Default::default()
    }];
    let a = run(&env, &mut rt, &pod_id, &pod_config, a).await;
    let b = run(
        &env,
        &mut rt,
        &pod_id,
        &pod_config,
        container("b", &image, &["/bin/busybox", "sleep", "4343"]),
    )
    .await;

    // Inside: root, owning the image's files and the volume's.
    let (_, out, _) = exec(&mut rt, &a, &["/bin/busybox", "id"]).await;
    assert!(out.starts_with("uid=0(root) gid=0"), "{out}");
    let (_, out, _) = exec(
        &mut rt,
        &a,
        &[
            "/bin/busybox",
            "stat",
            "-c",
            "%u:%g",
            "/bin/busybox",
            "/data/from-host",
            "/etc/hosts",
        ],
    )
    .await;
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        vec!["0:0"; 3],
        "{out}"
    );
    let (code, _, err) = exec(
        &mut rt,
        &a,
        &[
            "/bin/sh",
            "-c",
            "echo x > /written && echo y > /data/from-pod",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    // A file the pod's root made in the volume is the host's root's.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(vol.join("from-pod")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    assert_eq!(assert_status_user_is_id(&mut rt, &a).await, (0, 0, vec![0]));

    // On the host: the mapped ids and the mapping.
    let pid_a = container_pid(&mut rt, &a).await;
    let pid_b = container_pid(&mut rt, &b).await;
    assert_eq!(proc_ids(pid_a, "Uid:"), vec![USERNS_BASE; 4]);
    assert_eq!(proc_ids(pid_a, "Gid:"), vec![USERNS_BASE; 4]);
    let uid_map = std::fs::read_to_string(format!("/proc/{pid_a}/uid_map")).unwrap();
    assert_eq!(
        uid_map.split_whitespace().collect::<Vec<_>>(),
        vec![
            "0".to_string(),
            USERNS_BASE.to_string(),
            "65536".to_string()
        ]
    );
    // One user namespace for the pod, not the host's.
    let ns = userns_inode(pid_a);
    assert_eq!(userns_inode(pid_b), ns);
    if let Some(p) = pause_pid {
        assert_eq!(userns_inode(p), ns);
    }
    assert_ne!(ns, userns_inode(std::process::id()));
    let idmapped: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&env.dir.display().to_string()) && l.contains("idmapped"))
        .map(String::from)
        .collect();
    assert!(idmapped.len() >= 3, "{idmapped:?}");

    // A container that fails to be created leaves no mount behind.
    let mounts_before = mounts_below(&env.dir.join("state")).len();
    let mut broken = container("broken", &image, &["/no/such/binary"]);
    broken.mounts = a_mounts(&vol);
    match create(&mut rt, &pod_id, &pod_config, broken).await {
        Err(_) => {}
        Ok(id) => {
            let _ = rt
                .start_container(StartContainerRequest {
                    container_id: id.clone(),
                })
                .await;
            rt.remove_container(RemoveContainerRequest { container_id: id })
                .await
                .unwrap();
        }
    }
    assert_eq!(mounts_below(&env.dir.join("state")).len(), mounts_before);
    // A container asking for another user namespace than its pod's.
    let mut other = container("other", &image, &["/bin/busybox", "true"]);
    security(&mut other).namespace_options = userns_pod("x", "y", (0, USERNS_BASE * 2, 65536))
        .linux
        .unwrap()
        .security_context
        .unwrap()
        .namespace_options;
    let err = create(&mut rt, &pod_id, &pod_config, other)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert_eq!(mounts_below(&env.dir.join("state")).len(), mounts_before);

    // A pod without a user namespace is unaffected.
    let plain_uid = "uid-userns-plain";
    let plain_config = pod("plain", plain_uid);
    let _plain_logs = LogDir(PathBuf::from(&plain_config.log_directory));
    let plain_pod = run_pod(&env, &mut rt, &plain_config).await;
    let plain = run(
        &env,
        &mut rt,
        &plain_pod,
        &plain_config,
        container("plain", &image, &["/bin/busybox", "sleep", "4444"]),
    )
    .await;
    let pid_plain = container_pid(&mut rt, &plain).await;
    assert_eq!(userns_inode(pid_plain), userns_inode(std::process::id()));
    assert_eq!(proc_ids(pid_plain, "Uid:"), vec![0; 4]);

    // Across a criusd restart the pod keeps working and can be removed.
    drop(rt);
    env.daemon.signal_and_wait(libc::SIGKILL);
    env.daemon.restart();
    let mut rt = env.daemon.runtime().await;
    let (_, out, _) = exec(&mut rt, &b, &["/bin/busybox", "id", "-u"]).await;
    assert_eq!(out.trim(), "0");
    let c = run(
        &env,
        &mut rt,
        &pod_id,
        &pod_config,
        container("c", &image, &["/bin/busybox", "sleep", "4545"]),
    )
    .await;
    assert_eq!(userns_inode(container_pid(&mut rt, &c).await), ns);
    rt.remove_container(RemoveContainerRequest {
        container_id: a.clone(),
    })
    .await
    .unwrap();
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: plain_pod.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: plain_pod,
    })
    .await
    .unwrap();
    assert!(
        cgroup_dirs(plain_uid).is_empty(),
        "{:?}",
        cgroup_dirs(plain_uid)
    );
    remove_cgroup_parents(plain_uid);
    teardown(&env, &mut rt, &pod_id, uid).await;
    // The volume's content is intact.
    assert_eq!(
        std::fs::read_to_string(vol.join("from-host")).unwrap(),
        "hello"
    );
}

fn a_mounts(vol: &Path) -> Vec<Mount> {
    vec![Mount {
        container_path: "/data".into(),
        host_path: vol.display().to_string(),
        ..Default::default()
    }]
}

/// A pod whose containers share no PID namespace runs no pause: its shim
/// pins the pod's network, IPC and UTS namespaces, sets the hostname and
/// the sysctls, and every container joins them; a container asking for
/// the pod's PID namespace is refused.
#[tokio::test(flavor = "multi_thread")]
async fn pods_without_a_pause() {
    if !is_root() {
        eprintln!("containers_more: skipped (needs root)");
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut env = Env::start("crius-noinfra");
    let image = env.pull_busybox().await;
    let mut rt = env.daemon.runtime().await;
    let uid = "uid-noinfra";
    let mut cfg = pod("noinfra", uid);
    let _logs = LogDir(PathBuf::from(&cfg.log_directory));
    let linux = cfg.linux.as_mut().unwrap();
    linux.sysctls = [
        ("net.ipv4.ip_unprivileged_port_start", "81"),
        ("kernel.shmmni", "1234"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    // What kubelet sends for a pod without shareProcessNamespace.
    let own_pids = || NamespaceOption {
        pid: NamespaceMode::Container as i32,
        ..Default::default()
    };
    linux.security_context = Some(k8s_cri::v1::LinuxSandboxSecurityContext {
        namespace_options: Some(own_pids()),
        ..Default::default()
    });
    let pod_id = run_pod(&env, &mut rt, &cfg).await;

    let st = rt
        .pod_sandbox_status(k8s_cri::v1::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let status = st.status.clone().unwrap();
    assert_eq!(
        status.state,
        k8s_cri::v1::PodSandboxState::SandboxReady as i32
    );
    assert!(status.network.unwrap().ip.starts_with(&env.net.prefix));
    let info: serde_json::Value = serde_json::from_str(&st.info["info"]).unwrap();
    assert!(info["pid"].is_null(), "{info}");
    // No runc container for the pod itself, no pause rootfs.
    let runc_root = env.dir.join("state/runc/k8s.io");
    assert!(!runc_root.join(&pod_id).exists());
    assert!(mounts_below(&env.dir.join("state/sandboxes")).is_empty());
    let pinned = |key: &str| {
        let p = info[key]
            .as_str()
            .unwrap_or_else(|| panic!("{key}: {info}"));
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().ino()
    };
    let (net, ipc, uts) = (pinned("netnsPath"), pinned("ipcPath"), pinned("utsPath"));

    let with_own_pids = |name: &str| {
        let mut c = container(name, &image, &["/bin/busybox", "sleep", "3600"]);
        security(&mut c).namespace_options = Some(own_pids());
        c
    };
    let a = run(&env, &mut rt, &pod_id, &cfg, with_own_pids("a")).await;
    let b = run(&env, &mut rt, &pod_id, &cfg, with_own_pids("b")).await;
    let out = |r: (i32, String, String)| {
        assert_eq!(r.0, 0, "{r:?}");
        r.1.trim().to_string()
    };
    assert_eq!(
        out(exec(&mut rt, &a, &["/bin/busybox", "hostname"]).await),
        "noinfra"
    );
    assert_eq!(
        out(exec(
            &mut rt,
            &a,
            &[
                "/bin/busybox",
                "cat",
                "/proc/sys/net/ipv4/ip_unprivileged_port_start"
            ]
        )
        .await),
        "81"
    );
    assert_eq!(
        out(exec(
            &mut rt,
            &b,
            &["/bin/busybox", "cat", "/proc/sys/kernel/shmmni"]
        )
        .await),
        "1234"
    );
    for (kind, ino) in [("net", net), ("ipc", ipc), ("uts", uts)] {
        let link = format!("/proc/self/ns/{kind}");
        let want = format!("{kind}:[{ino}]");
        for c in [&a, &b] {
            assert_eq!(
                out(exec(&mut rt, c, &["/bin/busybox", "readlink", &link]).await),
                want,
                "{kind} of {c}"
            );
        }
    }
    // Each container has a PID namespace of its own.
    let pid_ns = ["/bin/busybox", "readlink", "/proc/self/ns/pid"];
    assert_ne!(
        out(exec(&mut rt, &a, &pid_ns).await),
        out(exec(&mut rt, &b, &pid_ns).await)
    );

    // The pod's PID namespace does not exist.
    let mut shared = container("c", &image, &["/bin/busybox", "sleep", "3600"]);
    security(&mut shared).namespace_options = Some(NamespaceOption {
        pid: NamespaceMode::Pod as i32,
        ..Default::default()
    });
    let err = create(&mut rt, &pod_id, &cfg, shared).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("namespace_options.pid"), "{err:?}");

    // The pod's network counters come from its netns.
    let stats = rt
        .pod_sandbox_stats(k8s_cri::v1::PodSandboxStatsRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let iface = stats
        .linux
        .and_then(|l| l.network)
        .and_then(|n| n.default_interface)
        .expect("eth0 counters");
    assert_eq!(iface.name, "eth0");

    // After a criusd crash and restart the pod is still READY and takes
    // containers.
    drop(rt);
    env.daemon.signal_and_wait(libc::SIGKILL);
    env.daemon.restart();
    let mut rt = env.daemon.runtime().await;
    let st = rt
        .pod_sandbox_status(k8s_cri::v1::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(st.state, k8s_cri::v1::PodSandboxState::SandboxReady as i32);
    let late = run(&env, &mut rt, &pod_id, &cfg, with_own_pids("late")).await;
    assert_eq!(
        out(exec(
            &mut rt,
            &late,
            &["/bin/busybox", "readlink", "/proc/self/ns/uts"]
        )
        .await),
        format!("uts:[{uts}]")
    );

    // Stopped: NOTREADY, the containers exited, the pinned namespaces gone
    // with the shim; removal leaves nothing (teardown checks).
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .unwrap();
    let st = rt
        .pod_sandbox_status(k8s_cri::v1::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(
        st.state,
        k8s_cri::v1::PodSandboxState::SandboxNotready as i32
    );
    for c in [&a, &b] {
        assert_eq!(
            status_of(&mut rt, c).await.state,
            k8s_cri::v1::ContainerState::ContainerExited as i32
        );
    }
    for key in ["netnsPath", "ipcPath", "utsPath"] {
        let p = info[key].as_str().unwrap();
        assert!(!Path::new(p).exists(), "{key} {p} left after stop");
    }
    teardown(&env, &mut rt, &pod_id, uid).await;
}

/// A container can make its writable layer deeper than PATH_MAX: disk usage
/// still measures it (the walk goes by directory descriptors), ImageFsInfo
/// keeps answering, and the stats show the layer.
#[tokio::test(flavor = "multi_thread")]
async fn writable_layers_deeper_than_path_max_are_measured() {
    if !is_root() {
        eprintln!("containers_more: skipped (needs root)");
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = Env::start("crius-deep");
    let image = env.pull_busybox().await;
    let mut rt = env.daemon.runtime().await;
    let uid = "uid-deep";
    let cfg = pod("deep", uid);
    let _logs = LogDir(PathBuf::from(&cfg.log_directory));
    let pod_id = run_pod(&env, &mut rt, &cfg).await;
    let id = run(
        &env,
        &mut rt,
        &pod_id,
        &cfg,
        container("deep", &image, &["/bin/busybox", "sleep", "100000"]),
    )
    .await;
    // 17 levels of 250-byte names (~4.3 KB of path): each round wraps the
    // tree in one more level, with short paths only, as any process can.
    let name = "n".repeat(250);
    let script = format!(
        "cd /tmp && mkdir {name} && echo deep > {name}/leaf && \
         for i in $(seq 16); do mkdir w && mv {name} w/ && mv w {name} || exit 1; done"
    );
    let (code, _, err) = exec(&mut rt, &id, &["/bin/sh", "-c", &script]).await;
    assert_eq!(code, 0, "{err}");
    let mut images = env.daemon.images().await;
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let fs = images
            .image_fs_info(k8s_cri::v1::ImageFsInfoRequest {})
            .await
            .expect("ImageFsInfo answers with a deep layer present")
            .into_inner();
        assert_eq!(fs.image_filesystems.len(), 1);
        let stats = rt
            .container_stats(k8s_cri::v1::ContainerStatsRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
        let inodes = stats
            .writable_layer
            .and_then(|l| l.inodes_used)
            .map_or(0, |v| v.value);
        // tmp (copied up), 17 directories and the leaf.
        if inodes >= 19 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writable layer inodes {inodes}, want at least 19"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    teardown(&env, &mut rt, &pod_id, uid).await;
}
