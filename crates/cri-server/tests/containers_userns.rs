//! Pods with a user namespace of their own: mappings, idmapped rootfs and
//! bind mounts, and what is refused.

mod common;

use common::pod::*;
use common::registry::is_root;
use k8s_cri::v1::{
    Mount, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopPodSandboxRequest,
};
use std::path::{Path, PathBuf};

/// The tests of this file run one at a time: an environment's leftovers
/// guard kills every process in the test cgroup tree, which the other
/// test's containers share.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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
        eprintln!("containers_userns: skipped (needs root)");
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut env = Env::start("crius-userns");
    let image = env.pull_busybox().await;
    let mut rt = env.daemon.runtime().await;
    let features = default_handler_features(&mut rt)
        .await
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
    let pods = list_pods(&mut rt).await;
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

/// A user-namespace pod whose shim died: StopPodSandbox and
/// RemovePodSandbox still leave no mount (the idmapped rootfs, staged
/// layers and binds of its containers, the pause's, the pinned user
/// namespace and netns), through the shim binary's `delete` action, and
/// the volume's content is intact.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_shims_user_namespace_pod_leaves_no_mount() {
    if !is_root() {
        eprintln!("containers_userns: skipped (needs root)");
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = Env::start("crius-userns-dead");
    let image = env.pull_busybox().await;
    let mut rt = env.daemon.runtime().await;
    let userns = default_handler_features(&mut rt)
        .await
        .is_some_and(|f| f.user_namespaces);
    if !userns {
        eprintln!("user namespaces unavailable: skipped");
        return;
    }
    let uid = "uid-userns-dead";
    let pod_config = userns_pod("dead", uid, (0, USERNS_BASE, 65536));
    let _logs = LogDir(PathBuf::from(&pod_config.log_directory));
    let pod_id = run_pod(&env, &mut rt, &pod_config).await;
    let vol = env.dir.join("userns-dead-volume");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("from-host"), "hello").unwrap();
    let mut a = container("a", &image, &["/bin/busybox", "sleep", "4646"]);
    a.mounts = a_mounts(&vol);
    let a = run(&env, &mut rt, &pod_id, &pod_config, a).await;
    let (_, out, _) = exec(&mut rt, &a, &["/bin/busybox", "cat", "/data/from-host"]).await;
    assert_eq!(out, "hello");
    let shim_dir = env.dir.join("state/shim/k8s.io").join(&pod_id);
    assert!(shim_dir.join("userns").exists());
    // The pod's mounts: the pinned user namespace and netns, shm, the
    // pause's and the container's rootfs with their staged layers, and
    // the container's staged binds.
    assert!(mounts_below(&env.dir.join("state")).len() >= 6);

    let shim = shim_pid_of(&env.dir, &pod_id).expect("the pod's shim");
    // SAFETY: kill(2) on the test's own shim process.
    unsafe { libc::kill(shim, libc::SIGKILL) };
    for _ in 0..100 {
        if shim_pid_of(&env.dir, &pod_id).is_none() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    teardown(&env, &mut rt, &pod_id, uid).await;
    assert!(!shim_dir.exists(), "{}", shim_dir.display());
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
