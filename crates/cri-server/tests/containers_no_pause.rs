//! Pods without a pause process (also those whose containers share a PID
//! namespace: the shim's holder keeps it), and the disk usage of writable
//! layers deeper than PATH_MAX.

mod common;

use common::pod::*;
use k8s_cri::v1::{NamespaceMode, NamespaceOption, StopPodSandboxRequest};
use std::path::Path;
use std::time::{Duration, Instant};

/// The tests of this file run one at a time: an environment's leftovers
/// guard kills every process in the test cgroup tree, which the other
/// test's containers share.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Namespace options with this PID mode (the others default).
fn pids(mode: NamespaceMode) -> NamespaceOption {
    NamespaceOption {
        pid: mode as i32,
        ..Default::default()
    }
}

/// A pod whose containers share a PID namespace (no user namespace) runs
/// no pause container either: its shim's PID-namespace holder is PID 1
/// there, in the pod's pinned network, IPC and UTS namespaces, confined;
/// the containers join it; stopping the pod ends the holder and every
/// process of the namespace.
#[tokio::test(flavor = "multi_thread")]
async fn pods_sharing_a_pid_namespace_get_the_shims_holder() {
    // criusd's defaults: `pid_holder` is on.
    let Some(case) = Case::start(&SERIAL, "crius-holder", "holder").await else {
        return;
    };
    let (_guards, env, image, mut rt, mut cfg, uid) = case.split();
    let uid = uid.as_str();
    pod_security(&mut cfg).namespace_options = Some(pids(NamespaceMode::Pod));
    let pod_id = run_pod(&env, &mut rt, &cfg).await;
    let (status, info) = pod_status_info(&mut rt, &pod_id).await;
    assert_eq!(
        status.state,
        k8s_cri::v1::PodSandboxState::SandboxReady as i32
    );
    let holder = info["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("pid: {info}")) as u32;
    // No runc container for the pod itself, no pause rootfs.
    assert!(!env.dir.join("state/runc/k8s.io").join(&pod_id).exists());
    assert!(mounts_below(&env.dir.join("state/sandboxes")).is_empty());
    let status_line = |key: &str| {
        std::fs::read_to_string(format!("/proc/{holder}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    assert_eq!(status_line("Uid:"), "65535\t65535\t65535\t65535");
    assert_eq!(status_line("CapEff:"), "0000000000000000");
    assert_eq!(status_line("Seccomp:"), "2");

    let shares = |name: &str| {
        let mut c = container(name, &image, &["/bin/busybox", "sleep", "3600"]);
        security(&mut c).namespace_options = Some(pids(NamespaceMode::Pod));
        c
    };
    let a = run(&env, &mut rt, &pod_id, &cfg, shares("a")).await;
    // A container whose init leaves a child (`busybox sleep <n>`) behind in
    // the pod's PID namespace when it is killed alone, and whether that
    // child runs (by its exact command line: the shell's own names it too
    // until it execs).
    let leaves_child = |name: &str, n: u32| {
        let mut c = shares(name);
        c.command = [
            "/bin/sh".to_string(),
            "-c".to_string(),
            format!("/bin/busybox sleep {n} & exec /bin/busybox sleep 3600"),
        ]
        .to_vec();
        c
    };
    let child_runs = |n: u32| {
        let cmdline = format!(": /bin/busybox sleep {n} ");
        processes_mentioning("busybox sleep")
            .iter()
            .any(|p| p.ends_with(&cmdline))
    };
    // StopPodSandbox must end b's child too.
    let b = run(&env, &mut rt, &pod_id, &cfg, leaves_child("b", 3601)).await;
    wait_for("b's child", || child_runs(3601)).await;
    // StopContainer of such a container: its init goes on SIGTERM, the
    // child it left (holding its output) is killed with the rest of the
    // container, as when a container's own PID namespace ends.
    let c = run(&env, &mut rt, &pod_id, &cfg, leaves_child("c", 3602)).await;
    wait_for("c's child", || child_runs(3602)).await;
    rt.stop_container(k8s_cri::v1::StopContainerRequest {
        container_id: c.clone(),
        timeout: 10,
    })
    .await
    .unwrap();
    assert_eq!(
        status_of(&mut rt, &c).await.state,
        k8s_cri::v1::ContainerState::ContainerExited as i32
    );
    assert!(!child_runs(3602), "c's child outlived StopContainer");
    let out = |r: (i32, String, String)| {
        assert_eq!(r.0, 0, "{r:?}");
        r.1.trim().to_string()
    };
    let ns = |kind: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/{holder}/ns/{kind}"))
            .unwrap()
            .ino()
    };
    for kind in ["pid", "net", "ipc", "uts"] {
        let link = format!("/proc/self/ns/{kind}");
        for c in [&a, &b] {
            assert_eq!(
                out(exec(&mut rt, c, &["/bin/busybox", "readlink", &link]).await),
                format!("{kind}:[{}]", ns(kind)),
                "{kind} of {c}"
            );
        }
    }
    // PID 1 of the pod is the holder, under its own name (not the shim's);
    // each container sees the other's processes.
    assert_eq!(
        out(exec(&mut rt, &a, &["/bin/busybox", "cat", "/proc/1/comm"]).await),
        "crius-pid-holde"
    );
    let cmdline = out(exec(&mut rt, &a, &["/bin/busybox", "cat", "/proc/1/cmdline"]).await);
    assert_eq!(
        cmdline.split('\0').next(),
        Some("crius-pid-holder"),
        "{cmdline:?}"
    );
    let ps = out(exec(&mut rt, &b, &["/bin/busybox", "ps", "-o", "pid,args"]).await);
    assert!(
        ps.lines().filter(|l| l.contains("sleep 3600")).count() >= 2,
        "{ps}"
    );

    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .unwrap();
    assert_eq!(
        pod_status(&mut rt, &pod_id).await.state,
        k8s_cri::v1::PodSandboxState::SandboxNotready as i32
    );
    assert!(
        !Path::new(&format!("/proc/{holder}")).exists(),
        "the holder outlived StopPodSandbox"
    );
    assert!(!child_runs(3601), "b's child outlived StopPodSandbox");
    for c in [&a, &b] {
        assert_eq!(
            status_of(&mut rt, c).await.state,
            k8s_cri::v1::ContainerState::ContainerExited as i32
        );
    }
    teardown(&env, &mut rt, &pod_id, uid).await;

    // A pod whose shim died: the shim's `delete` action (run by
    // StopPodSandbox) kills the holder it recorded, and with it the pod's
    // containers.
    let pod_id = run_pod(&env, &mut rt, &cfg).await;
    let holder = pod_status_info(&mut rt, &pod_id).await.1["pid"]
        .as_u64()
        .unwrap() as u32;
    let c = run(&env, &mut rt, &pod_id, &cfg, shares("c")).await;
    let shim = shim_pid_of(&env.dir, &pod_id).expect("the pod's shim");
    // SAFETY: kill(2) on the test's own shim process.
    unsafe { libc::kill(shim, libc::SIGKILL) };
    for _ in 0..100 {
        if shim_pid_of(&env.dir, &pod_id).is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        Path::new(&format!("/proc/{holder}")).exists(),
        "the holder went with its shim"
    );
    teardown(&env, &mut rt, &pod_id, uid).await;
    // Killed by then; gone once its new parent reaped it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{holder}")).exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !Path::new(&format!("/proc/{holder}")).exists(),
        "the holder outlived its dead shim's clean-up: {:?}",
        std::fs::read_to_string(format!("/proc/{holder}/status"))
    );
    let _ = c;
}

/// A pod whose containers share no PID namespace runs no pause: its shim
/// pins the pod's network, IPC and UTS namespaces, sets the hostname and
/// the sysctls, and every container joins them; a container asking for
/// the pod's PID namespace is refused.
#[tokio::test(flavor = "multi_thread")]
async fn pods_without_a_pause() {
    let Some(case) = Case::start(&SERIAL, "crius-noinfra", "noinfra").await else {
        return;
    };
    let (_guards, mut env, image, mut rt, mut cfg, uid) = case.split();
    let uid = uid.as_str();
    let linux = cfg.linux.as_mut().unwrap();
    linux.sysctls = [
        ("net.ipv4.ip_unprivileged_port_start", "81"),
        ("kernel.shmmni", "1234"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    // What kubelet sends for a pod without shareProcessNamespace.
    let own_pids = || pids(NamespaceMode::Container);
    linux.security_context = Some(k8s_cri::v1::LinuxSandboxSecurityContext {
        namespace_options: Some(own_pids()),
        ..Default::default()
    });
    let pod_id = run_pod(&env, &mut rt, &cfg).await;

    let (status, info) = pod_status_info(&mut rt, &pod_id).await;
    assert_eq!(
        status.state,
        k8s_cri::v1::PodSandboxState::SandboxReady as i32
    );
    assert!(status.network.unwrap().ip.starts_with(&env.net.prefix));
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
    security(&mut shared).namespace_options = Some(pids(NamespaceMode::Pod));
    let err = create(&mut rt, &pod_id, &cfg, shared).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("namespace_options.pid"), "{err:?}");

    // The pod's network counters come from its netns.
    let iface = pod_stats(&mut rt, &pod_id)
        .await
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
    let st = pod_status(&mut rt, &pod_id).await;
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
    let st = pod_status(&mut rt, &pod_id).await;
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
    let Some(case) = Case::start(&SERIAL, "crius-deep", "deep").await else {
        return;
    };
    let (_guards, env, image, mut rt, cfg, uid) = case.split();
    let uid = uid.as_str();
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

/// The stats stay true to what the containers do: a container burning CPU
/// shows a rate (`usage_nano_cores`) in ListContainerStats and in its pod's
/// ListPodSandboxStats once two readings a second apart exist, the pod's
/// network counters come from its namespace (through a container's
/// process: the pod has no pause), and a file written into the writable
/// layer shows in its bytes within the background refresh (10 s).
#[tokio::test(flavor = "multi_thread")]
async fn stats_follow_cpu_network_and_writable_layer() {
    let Some(case) = Case::start(&SERIAL, "crius-statsrate", "statsrate").await else {
        return;
    };
    let (_guards, env, image, mut rt, mut cfg, uid) = case.split();
    let uid = uid.as_str();
    let own_pids = || pids(NamespaceMode::Container);
    cfg.linux.as_mut().unwrap().security_context = Some(k8s_cri::v1::LinuxSandboxSecurityContext {
        namespace_options: Some(own_pids()),
        ..Default::default()
    });
    let pod_id = run_pod(&env, &mut rt, &cfg).await;
    let mut burner = container("burner", &image, &["/bin/sh", "-c", "while :; do :; done"]);
    security(&mut burner).namespace_options = Some(own_pids());
    let burner = run(&env, &mut rt, &pod_id, &cfg, burner).await;
    let mut idle = container("idle", &image, &["/bin/busybox", "sleep", "100000"]);
    security(&mut idle).namespace_options = Some(own_pids());
    let idle = run(&env, &mut rt, &pod_id, &cfg, idle).await;

    let list_containers = |rt: &mut Rt| {
        let mut rt = rt.clone();
        let pod_id = pod_id.clone();
        async move {
            rt.list_container_stats(k8s_cri::v1::ListContainerStatsRequest {
                filter: Some(k8s_cri::v1::ContainerStatsFilter {
                    pod_sandbox_id: pod_id,
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .stats
        }
    };
    let rate = |s: &k8s_cri::v1::ContainerStats| {
        s.cpu
            .as_ref()
            .and_then(|c| c.usage_nano_cores.as_ref())
            .map(|v| v.value)
    };
    let by_id = |all: &[k8s_cri::v1::ContainerStats], id: &str| {
        all.iter()
            .find(|s| s.attributes.as_ref().is_some_and(|a| a.id == id))
            .cloned()
            .unwrap_or_else(|| panic!("{id} not in {all:?}"))
    };
    // A first reading, then one more than a second later gives a rate.
    let first = list_containers(&mut rt).await;
    assert_eq!(first.len(), 2, "{first:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = list_containers(&mut rt).await;
    let burning = rate(&by_id(&second, &burner)).expect("a rate after two readings");
    // A busy loop on a loaded two-core machine still gets well over 5% of
    // a core; the sleeping container next to it almost nothing.
    assert!(burning > 50_000_000, "burner at {burning} nanocores");
    let resting = rate(&by_id(&second, &idle)).expect("a rate for the idle one");
    assert!(resting < burning / 4, "idle {resting}, burner {burning}");

    // The pod: its own rate (first reading now, then a second later), the
    // containers' rates, and eth0 of its namespace.
    let list_pods = |rt: &mut Rt| {
        let mut rt = rt.clone();
        let pod_id = pod_id.clone();
        async move {
            rt.list_pod_sandbox_stats(k8s_cri::v1::ListPodSandboxStatsRequest {
                filter: Some(k8s_cri::v1::PodSandboxStatsFilter {
                    id: pod_id,
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .stats
        }
    };
    list_pods(&mut rt).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let pods = list_pods(&mut rt).await;
    assert_eq!(pods.len(), 1, "{pods:?}");
    let linux = pods[0].linux.clone().unwrap();
    let pod_rate = linux
        .cpu
        .as_ref()
        .and_then(|c| c.usage_nano_cores.as_ref())
        .map(|v| v.value)
        .expect("a pod rate");
    assert!(pod_rate > 50_000_000, "pod at {pod_rate} nanocores");
    assert_eq!(linux.containers.len(), 2);
    assert!(rate(&by_id(&linux.containers, &burner)).unwrap() > 50_000_000);
    let eth0 = linux
        .network
        .as_ref()
        .and_then(|n| n.default_interface.clone())
        .expect("eth0 counters");
    assert_eq!(eth0.name, "eth0");
    assert!(linux.memory.unwrap().working_set_bytes.unwrap().value > 0);
    assert!(linux.process.unwrap().process_count.unwrap().value >= 2);

    // Writable layer: 4 MiB written show within the refresh period.
    let layer_bytes = |s: &k8s_cri::v1::ContainerStats| {
        s.writable_layer
            .as_ref()
            .and_then(|l| l.used_bytes.as_ref())
            .map_or(0, |v| v.value)
    };
    let before = layer_bytes(&by_id(&list_containers(&mut rt).await, &idle));
    let (code, _, err) = exec(
        &mut rt,
        &idle,
        &[
            "/bin/busybox",
            "dd",
            "if=/dev/zero",
            "of=/grown",
            "bs=1048576",
            "count=4",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let written = Instant::now();
    loop {
        let now = layer_bytes(&by_id(&list_containers(&mut rt).await, &idle));
        if now >= before + 4 * 1024 * 1024 {
            break;
        }
        assert!(
            written.elapsed() < Duration::from_secs(15),
            "writable layer at {now} bytes, was {before}, 4 MiB written {:?} ago",
            written.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    teardown(&env, &mut rt, &pod_id, uid).await;
}
