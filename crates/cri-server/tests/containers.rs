//! Containers for real: pulled busybox image, a pod, CRI logs written by the
//! shim, ExecSync, stop with timeout, exit reasons, security settings.

mod common;

use common::pod::*;
use common::stream_client::{ch as channel, ws_connect, ws_stdin_then_collect};
use futures_util::{SinkExt, StreamExt};
use k8s_cri::v1::{
    Capability, ContainerConfig, ContainerStatusRequest, CreateContainerRequest, ExecSyncRequest,
    Int64Value, KeyValue, LinuxContainerResources, LinuxContainerSecurityContext,
    RemoveContainerRequest, RemovePodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest,
};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// The kit's container, with GREETING=hello in its environment.
fn container(name: &str, image: &str, cmd: &[&str]) -> ContainerConfig {
    ContainerConfig {
        envs: vec![KeyValue {
            key: "GREETING".into(),
            value: "hello".into(),
        }],
        ..common::pod::container(name, image, cmd)
    }
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn container_lifecycle_logs_exec_and_security() {
    let Some(case) = Case::start(&SERIAL, "crius-ctr", "ctr").await else {
        return;
    };
    let (_guards, env, image, mut rt, pod, uid, pod_id) = case.split_running().await;
    let create = |c: ContainerConfig| CreateContainerRequest {
        pod_sandbox_id: pod_id.clone(),
        config: Some(c),
        sandbox_config: Some(pod.clone()),
    };
    let status = |id: &str| ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    };

    // A long-running container writing to stdout and stderr.
    // In a PID namespace of its own (as kubelet asks by default): sleep
    // is its pid 1, which ignores SIGTERM (see the stop below).
    let mut main = container(
        "main",
        &image,
        &[
            "/bin/sh",
            "-c",
            "echo $GREETING $FROM_IMAGE; echo oops >&2; exec sleep 1000",
        ],
    );
    main.linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .namespace_options = Some(k8s_cri::v1::NamespaceOption {
        pid: k8s_cri::v1::NamespaceMode::Container as i32,
        ..Default::default()
    });
    let main = rt
        .create_container(create(main))
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e:?}\n{}", env.daemon.log_text()))
        .into_inner()
        .container_id;
    let s = status_of(&mut rt, &main).await;
    assert_eq!(
        s.state,
        k8s_cri::v1::ContainerState::ContainerCreated as i32
    );
    rt.start_container(StartContainerRequest {
        container_id: main.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StartContainer: {e:?}\n{}", env.daemon.log_text()));
    let s = status_of(&mut rt, &main).await;
    assert_eq!(
        s.state,
        k8s_cri::v1::ContainerState::ContainerRunning as i32
    );
    let log = std::path::PathBuf::from(&s.log_path);
    assert!(log.starts_with(&pod.log_directory), "{}", log.display());
    wait_for("log lines", || {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        t.contains(" stdout F hello 1\n") && t.contains(" stderr F oops\n")
    })
    .await;
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        let mut parts = line.splitn(4, ' ');
        let ts = parts.next().unwrap();
        assert!(
            ts.len() == 30 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "timestamp {ts:?}"
        );
        assert!(matches!(parts.next(), Some("stdout" | "stderr")));
        assert!(matches!(parts.next(), Some("F" | "P")));
    }

    // ExecSync: output, exit code, environment, and the timeout.
    let exec = |cmd: &[&str], timeout: i64| ExecSyncRequest {
        container_id: main.clone(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout,
    };
    let r = rt
        .exec_sync(exec(
            &["sh", "-c", "echo out $GREETING; echo err >&2; exit 3"],
            10,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.exit_code),
        (&b"out hello\n"[..], &b"err\n"[..], 3)
    );
    let started = Instant::now();
    let err = rt
        .exec_sync(exec(&["/bin/busybox", "sleep", "30"], 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the timed-out exec was not killed"
    );
    let err = rt.exec_sync(exec(&[], 1)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    // Exec through the streaming server, as kubectl does over WebSocket
    // (v5): stdin with a close, stdout, stderr and the exit status.
    let url = rt
        .exec(k8s_cri::v1::ExecRequest {
            container_id: main.clone(),
            cmd: vec![
                "/bin/sh".into(),
                "-c".into(),
                "read x; echo got $x; echo warn >&2; exit 5".into(),
            ],
            tty: false,
            stdin: true,
            stdout: true,
            stderr: true,
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (mut ws, _) = ws_connect(&url, "v5.channel.k8s.io").await;
    let got = ws_stdin_then_collect(&mut ws, b"abc\n").await;
    assert_eq!(channel(&got, 1), "got abc\n");
    assert_eq!(channel(&got, 2), "warn\n");
    let exit: serde_json::Value = serde_json::from_str(&channel(&got, 3)).unwrap();
    assert_eq!(exit["reason"], "NonZeroExitCode", "{exit}");
    assert_eq!(exit["details"]["causes"][0]["message"], "5", "{exit}");
    let err = rt
        .exec(k8s_cri::v1::ExecRequest {
            container_id: "nosuch".into(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // Port-forward into the pod's network namespace over WebSocket.
    let (_, info) = pod_status_info(&mut rt, &pod_id).await;
    let netns = info["netnsPath"].as_str().unwrap().to_string();
    let listener = crius_netns::netns::run_in(std::path::Path::new(&netns), || {
        std::net::TcpListener::bind("127.0.0.1:7070")
    })
    .unwrap()
    .unwrap();
    let echo = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).unwrap();
        c.write_all(&buf).unwrap();
    });
    let url = rt
        .port_forward(k8s_cri::v1::PortForwardRequest {
            pod_sandbox_id: pod_id.clone(),
            port: vec![7070],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let (mut ws, _) = ws_connect(&format!("{url}?port=7070"), "v4.channel.k8s.io").await;
    ws.send(Message::Binary([&[0u8][..], b"hello"].concat().into()))
        .await
        .unwrap();
    let mut echoed = Vec::new();
    while echoed.len() < 5 {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Binary(d)))) if !d.is_empty() && d[0] == 0 => {
                // The first frame of a channel is its port (2 bytes).
                let body = &d[1..];
                if body.len() == 2
                    && echoed.is_empty()
                    && u16::from_le_bytes([body[0], body[1]]) == 7070
                {
                    continue;
                }
                echoed.extend_from_slice(body);
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("port-forward: {other:?}"),
        }
    }
    assert_eq!(echoed, b"hello");
    echo.join().unwrap();
    drop(ws);

    // Stats from the cgroups, the writable layer and the pod's netns.
    let _ = rt
        .exec_sync(ExecSyncRequest {
            container_id: main.clone(),
            cmd: vec!["/bin/sh".into(), "-c".into(), "echo data > /written".into()],
            timeout: 10,
        })
        .await
        .unwrap();
    // The writable layer is measured in the background: its first
    // measurement comes right after the first ask, then every 10 s.
    let deadline = Instant::now() + Duration::from_secs(15);
    let cs = loop {
        let cs = rt
            .container_stats(k8s_cri::v1::ContainerStatsRequest {
                container_id: main.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .stats
            .unwrap();
        let layer_inodes = cs
            .writable_layer
            .as_ref()
            .and_then(|l| l.inodes_used.as_ref())
            .map_or(0, |v| v.value);
        if layer_inodes >= 1 || Instant::now() > deadline {
            break cs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(cs.attributes.as_ref().unwrap().id, main);
    // Each figure as (name, value): CPU and memory used, writable layer
    // inodes.
    let figures = [
        (
            "cpu",
            cs.cpu
                .as_ref()
                .and_then(|c| c.usage_core_nano_seconds.as_ref()),
        ),
        (
            "memory",
            cs.memory
                .as_ref()
                .and_then(|m| m.working_set_bytes.as_ref()),
        ),
        (
            "inodes",
            cs.writable_layer
                .as_ref()
                .and_then(|l| l.inodes_used.as_ref()),
        ),
    ];
    for (name, value) in figures {
        assert!(value.is_some_and(|v| v.value > 0), "{name}: {cs:?}");
    }
    let linux = pod_stats(&mut rt, &pod_id).await.linux.unwrap();
    assert!(linux.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);
    assert!(linux.memory.unwrap().working_set_bytes.unwrap().value > 0);
    assert_eq!(
        linux.network.unwrap().default_interface.unwrap().name,
        "eth0"
    );
    // The pod's cgroup holds main's sleep alone: the pod has the shim's
    // PID-namespace holder (criusd's default), which runs in its shim's
    // cgroup, not a pause container.
    assert_eq!(
        linux.process.unwrap().process_count.unwrap().value,
        1,
        "main only"
    );
    assert_eq!(linux.containers.len(), 1);
    let listed = rt
        .list_container_stats(k8s_cri::v1::ListContainerStatsRequest {
            filter: Some(k8s_cri::v1::ContainerStatsFilter {
                pod_sandbox_id: pod_id.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(listed.len(), 1);
    let pods = rt
        .list_pod_sandbox_stats(k8s_cri::v1::ListPodSandboxStatsRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(pods.len(), 1);

    // A restricted container: non-root user, read-only root, no capabilities.
    let mut restricted = container("restricted", &image, &["/bin/busybox", "sleep", "1000"]);
    restricted.linux.as_mut().unwrap().security_context = Some(LinuxContainerSecurityContext {
        run_as_user: Some(Int64Value { value: 1000 }),
        readonly_rootfs: true,
        capabilities: Some(Capability {
            drop_capabilities: vec!["ALL".into()],
            ..Default::default()
        }),
        ..Default::default()
    });
    let r_id = run(&env, &mut rt, &pod_id, &pod, restricted).await;
    let ex = |cmd: &[&str]| ExecSyncRequest {
        container_id: r_id.clone(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout: 10,
    };
    let id_u = rt
        .exec_sync(ex(&["/bin/busybox", "id", "-u"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(String::from_utf8_lossy(&id_u.stdout).trim(), "1000");
    let touch = rt
        .exec_sync(ex(&["/bin/busybox", "touch", "/newfile"]))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(touch.exit_code, 0, "read-only root fs accepted a write");
    let caps = rt
        .exec_sync(ex(&["/bin/busybox", "grep", "CapBnd", "/proc/self/status"]))
        .await
        .unwrap()
        .into_inner();
    assert!(
        String::from_utf8_lossy(&caps.stdout).contains("0000000000000000"),
        "{:?}",
        String::from_utf8_lossy(&caps.stdout)
    );

    // A container that finishes on its own is Completed; one killed by an
    // OOM is OOMKilled.
    let done = run(
        &env,
        &mut rt,
        &pod_id,
        &pod,
        container("done", &image, &["/bin/busybox", "true"]),
    )
    .await;
    let mut oom = container(
        "oom",
        &image,
        &["sh", "-c", "x=a; while :; do x=$x$x; done"],
    );
    oom.linux.as_mut().unwrap().resources = Some(LinuxContainerResources {
        memory_limit_in_bytes: 32 << 20,
        ..Default::default()
    });
    let oom_id = run(&env, &mut rt, &pod_id, &pod, oom).await;
    for (id, reason, code) in [(&done, "Completed", 0), (&oom_id, "OOMKilled", 137)] {
        let mut last = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let s = rt
                .container_status(status(id))
                .await
                .unwrap()
                .into_inner()
                .status
                .unwrap();
            if s.state == k8s_cri::v1::ContainerState::ContainerExited as i32 {
                last = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let s = last.unwrap_or_else(|| panic!("{reason}: container did not exit"));
        assert_eq!((s.reason.as_str(), s.exit_code), (reason, code), "{s:?}");
        assert!(s.finished_at >= s.started_at && s.started_at > 0);
    }

    // Stop with a timeout: sh as pid 1 ignores SIGTERM, so SIGKILL follows.
    let before = Instant::now();
    rt.stop_container(StopContainerRequest {
        container_id: main.clone(),
        timeout: 1,
    })
    .await
    .unwrap();
    assert!(before.elapsed() >= Duration::from_secs(1));
    let s = status_of(&mut rt, &main).await;
    assert_eq!(s.state, k8s_cri::v1::ContainerState::ContainerExited as i32);
    assert_eq!(s.exit_code, 137);
    rt.stop_container(StopContainerRequest {
        container_id: main.clone(),
        timeout: 1,
    })
    .await
    .unwrap();

    // Bad requests.
    let mut escape = container("escape", &image, &["/bin/busybox", "true"]);
    escape.log_path = "../../etc/evil.log".into();
    let err = rt.create_container(create(escape)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("log_path"), "{err:?}");
    // A group without a user is refused, as containerd and CRI-O do.
    let mut group_only = container("group-only", &image, &["/bin/busybox", "true"]);
    group_only
        .linux
        .get_or_insert_with(Default::default)
        .security_context
        .get_or_insert_with(Default::default)
        .run_as_group = Some(k8s_cri::v1::Int64Value { value: 1234 });
    let err = rt.create_container(create(group_only)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("run_as_group"), "{err:?}");
    let err = rt
        .create_container(create(container(
            "ghost",
            "127.0.0.1:1/none:1",
            &["/bin/busybox", "true"],
        )))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let mut dup = container("main", &image, &["/bin/busybox", "true"]);
    dup.metadata.as_mut().unwrap().attempt = 0;
    let err = rt.create_container(create(dup)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err:?}");

    // Remove (twice), then the pod.
    for id in [&main, &done, &oom_id] {
        for _ in 0..2 {
            rt.remove_container(RemoveContainerRequest {
                container_id: id.to_string(),
            })
            .await
            .unwrap();
        }
        assert_eq!(
            rt.container_status(status(id)).await.unwrap_err().code(),
            tonic::Code::NotFound
        );
    }
    rt.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .unwrap();
    // The still-running restricted container went with the pod.
    let s = status_of(&mut rt, &r_id).await;
    assert_eq!(s.state, k8s_cri::v1::ContainerState::ContainerExited as i32);
    rt.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .unwrap();
    assert_eq!(
        rt.container_status(status(&r_id)).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    let list = rt
        .list_containers(k8s_cri::v1::ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner();
    assert!(list.containers.is_empty());
    assert!(
        mounts_below(&env.dir).is_empty(),
        "mounts left: {:?}",
        mounts_below(&env.dir)
    );
    assert!(
        cgroup_dirs(&uid).is_empty(),
        "cgroups left: {:?}",
        cgroup_dirs(&uid)
    );
    remove_cgroup_parents(&uid);
}
