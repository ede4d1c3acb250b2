//! Pod sandboxes for real: criusd, the per-pod shim, runc and CNI (bridge +
//! host-local + loopback) with a pause image from a local registry.

mod common;

use common::pod::*;
use common::registry::is_root;
use k8s_cri::v1::{
    LinuxSandboxSecurityContext, NamespaceOption, PodSandboxConfig, PodSandboxStatusRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest,
};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

#[tokio::test(flavor = "multi_thread")]
async fn pod_lifecycle_with_cni() {
    if !is_root() {
        eprintln!("pods: skipped (needs root)");
        return;
    }
    let mut env = Env::start("crius-pods");
    let (dir, net) = (env.dir.clone(), &env.net);
    let daemon = &mut env.daemon;
    let mut rt = daemon.runtime().await;

    // Two pods on the bridge.
    let host_port = common::free_port();
    let mut web = pod("web", "uid-a");
    web.port_mappings = vec![k8s_cri::v1::PortMapping {
        protocol: k8s_cri::v1::Protocol::Tcp as i32,
        container_port: 8080,
        host_port: host_port as i32,
        host_ip: String::new(),
    }];
    let a = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(web.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e:?}\n{}", daemon.log_text()))
        .into_inner()
        .pod_sandbox_id;
    let b = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod("db", "uid-b")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    let status = |id: &str| PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose: true,
    };
    let sa = rt
        .pod_sandbox_status(status(&a))
        .await
        .unwrap()
        .into_inner();
    let sb = rt
        .pod_sandbox_status(status(&b))
        .await
        .unwrap()
        .into_inner();
    let st = sa.status.clone().unwrap();
    assert_eq!(st.state, k8s_cri::v1::PodSandboxState::SandboxReady as i32);
    let ip_a = st.network.clone().unwrap().ip;
    let ip_b = sb.status.clone().unwrap().network.unwrap().ip;
    assert!(
        ip_a.starts_with(&net.prefix),
        "{ip_a} not in {}",
        net.subnet
    );
    assert!(ip_b.starts_with(&net.prefix) && ip_a != ip_b);
    let info: serde_json::Value = serde_json::from_str(&sa.info["info"]).unwrap();
    let pid = info["pid"].as_u64().unwrap();
    let netns = info["netnsPath"].as_str().unwrap().to_string();
    assert_eq!(
        std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .unwrap()
            .ino(),
        std::fs::metadata(&netns).unwrap().ino(),
        "the pod's pid runs in the pod netns"
    );
    // That pid is the shim's PID-namespace holder (criusd's default for a
    // pod sharing a PID namespace, as one with no namespace options does):
    // named as itself, PID 1 of a namespace of its own, as 65535, and in
    // its shim's cgroup (the pod's cgroup holds the containers only).
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        cmdline.starts_with(b"crius-pid-holder\0"),
        "{}",
        String::from_utf8_lossy(&cmdline)
    );
    let status_text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |key: &str| {
        status_text
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(field("Uid:"), ["65535"; 4], "{status_text}");
    assert_eq!(field("NSpid:").last(), Some(&"1"), "{status_text}");
    let shim = shim_pid_of(&dir, &a).expect("pod a's shim");
    let cgroup_of = |pid: &dyn std::fmt::Display| {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap()
    };
    assert_eq!(cgroup_of(&pid), cgroup_of(&shim));

    // Pod a reaches pod b over the bridge.
    let ping = Command::new("nsenter")
        .arg(format!("--net={netns}"))
        .args(["/bin/busybox", "ping", "-c", "1", "-W", "5", &ip_b])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "ping {ip_b}: {}",
        String::from_utf8_lossy(&ping.stdout)
    );

    // The hostPort answers on 127.0.0.1: a server inside the pod's netns
    // behind portmap's DNAT.
    let listener = crius_netns::netns::run_in(Path::new(&netns), || {
        std::net::TcpListener::bind("0.0.0.0:8080")
    })
    .unwrap()
    .unwrap();
    let server = std::thread::spawn(move || {
        use std::io::Write;
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(b"hello from the pod\n").unwrap();
    });
    let mut reply = String::new();
    {
        use std::io::Read;
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", host_port))
            .unwrap_or_else(|e| panic!("hostPort {host_port}: {e}"));
        conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        conn.read_to_string(&mut reply).unwrap();
    }
    server.join().unwrap();
    assert_eq!(reply, "hello from the pod\n");
    assert!(!net.nat_rules_for_subnet().is_empty());

    // Pod files.
    let sandbox_dir = dir.join("root/sandboxes").join(&a);
    let resolv = std::fs::read_to_string(sandbox_dir.join("resolv.conf")).unwrap();
    assert!(
        resolv.contains("nameserver 10.96.0.10")
            && resolv.contains("search default.svc.cluster.local")
            && resolv.contains("options ndots:5"),
        "{resolv}"
    );
    assert_eq!(
        std::fs::read_to_string(sandbox_dir.join("hostname")).unwrap(),
        "web\n"
    );
    let hosts = std::fs::read_to_string(sandbox_dir.join("hosts")).unwrap();
    assert!(hosts.contains(&format!("{ip_a}\tweb")), "{hosts}");
    // Containers of any user read them (bind-mounted at /etc/...).
    for f in ["resolv.conf", "hostname", "hosts"] {
        let mode = std::fs::metadata(sandbox_dir.join(f)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o644, "{f}");
    }

    // The same name again: AlreadyExists naming the holder.
    let err = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(web),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    assert!(err.message().contains(&a), "{err:?}");

    // Bad requests fail with InvalidArgument and leave nothing behind.
    let pods_before = list_pods(&mut rt).await.len();
    let mut bad_sysctl = pod("bad", "uid-c");
    bad_sysctl
        .linux
        .as_mut()
        .unwrap()
        .sysctls
        .insert("kernel.panic".into(), "1".into());
    let mut bad_parent = pod("bad", "uid-d");
    bad_parent.linux.as_mut().unwrap().cgroup_parent = "kubepods.slice".into();
    let mut bad_logdir = pod("bad", "uid-e");
    bad_logdir.log_directory = "relative".into();
    for (config, handler, field) in [
        (bad_sysctl, "", "config.linux.sysctls"),
        (bad_parent, "", "config.linux.cgroup_parent"),
        (bad_logdir, "", "config.log_directory"),
        (pod("bad", "uid-f"), "kata", "runtime_handler"),
        (PodSandboxConfig::default(), "", "config.metadata"),
    ] {
        let err = rt
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: handler.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(field), "{field}: {err:?}");
    }
    let pods_after = list_pods(&mut rt).await.len();
    assert_eq!(pods_before, pods_after);

    // A host-network pod sees the host's interfaces and gets no pod IP.
    let mut host = pod("hostnet", "uid-h");
    host.linux.as_mut().unwrap().security_context = Some(LinuxSandboxSecurityContext {
        namespace_options: Some(NamespaceOption {
            network: 2,
            ..Default::default()
        }),
        ..Default::default()
    });
    let h = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(host),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("host network pod: {e:?}\n{}", daemon.log_text()))
        .into_inner()
        .pod_sandbox_id;
    let sh = rt
        .pod_sandbox_status(status(&h))
        .await
        .unwrap()
        .into_inner();
    assert!(sh.status.unwrap().network.is_none());
    let hinfo: serde_json::Value = serde_json::from_str(&sh.info["info"]).unwrap();
    let hpid = hinfo["pid"].as_u64().unwrap();
    assert_eq!(
        std::fs::metadata(format!("/proc/{hpid}/ns/net"))
            .unwrap()
            .ino(),
        std::fs::metadata("/proc/self/ns/net").unwrap().ino()
    );

    // A failing CNI ADD undoes everything: no shim, netns, mount or record
    // is left, and the name is free again.
    let bin = dir.join("cni-bin");
    std::fs::create_dir_all(&bin).unwrap();
    common::script(
        &bin.join("crius-test-fail"),
        "#!/bin/sh\ncat >/dev/null\necho '{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"no addresses left\"}'\nexit 1\n",
    );
    let failing = net.conf_dir.join("00-fail.conflist");
    std::fs::write(
        &failing,
        "{\"cniVersion\":\"1.0.0\",\"name\":\"fail\",\"plugins\":[{\"type\":\"loopback\"},{\"type\":\"crius-test-fail\"}]}",
    )
    .unwrap();
    let shims_before = processes_mentioning("containerd-shim-crius-v2").len();
    let err = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod("retry", "uid-r")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    std::fs::remove_file(&failing).unwrap();
    assert!(err.message().contains("no addresses left"), "{err:?}");
    assert_eq!(
        processes_mentioning("containerd-shim-crius-v2").len(),
        shims_before,
        "shim left after a failed ADD"
    );
    let items = list_pods(&mut rt).await;
    assert_eq!(items.len(), 3, "a record was left: {items:?}");
    let retry = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod("retry", "uid-r")),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_or_else(|e| panic!("retry after rollback: {e:?}"))
        .into_inner()
        .pod_sandbox_id;

    // A pod whose shim died can still be stopped and removed cleanly.
    let shim_of_b: Vec<i32> = processes_mentioning(&b)
        .iter()
        .filter(|p| p.contains("containerd-shim-crius-v2"))
        .filter_map(|p| p.split(':').next()?.parse().ok())
        .collect();
    assert_eq!(shim_of_b.len(), 1, "{shim_of_b:?}");
    // SAFETY: kill(2) on the shim pid found above.
    unsafe { libc::kill(shim_of_b[0], libc::SIGKILL) };

    // Stop and remove, twice each; then nothing of the pods is left.
    for id in [&a, &b, &h, &retry] {
        for _ in 0..2 {
            rt.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .unwrap_or_else(|e| panic!("stop {id}: {e:?}\n{}", daemon.log_text()));
        }
        let s = rt
            .pod_sandbox_status(status(id))
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        assert_eq!(
            s.state,
            k8s_cri::v1::PodSandboxState::SandboxNotready as i32
        );
        // Stopped means the netns, /dev/shm and the shim are gone already.
        let shim_dir = dir.join("state/shim/k8s.io").join(id.as_str());
        assert!(!shim_dir.exists(), "{} left after stop", shim_dir.display());
        let left: Vec<String> = processes_mentioning(id)
            .into_iter()
            .filter(|p| !p.contains("criusd"))
            .collect();
        assert!(left.is_empty(), "processes of {id} after stop: {left:?}");
        for _ in 0..2 {
            rt.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.to_string(),
            })
            .await
            .unwrap();
        }
        let err = rt.pod_sandbox_status(status(id)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
    }
    assert!(!Path::new(&netns).exists(), "netns file left");
    let ports = net.bridge_ports_left();
    assert!(ports.is_empty(), "veths left: {ports:?}");
    assert!(
        net.nat_rules_for_subnet().is_empty(),
        "NAT rules left: {:?}",
        net.nat_rules_for_subnet()
    );
    let state = dir.join("state");
    assert!(
        mounts_below(&dir).is_empty(),
        "mounts left: {:?}",
        mounts_below(&dir)
    );
    let procs: Vec<String> = processes_mentioning(&state.display().to_string())
        .into_iter()
        .filter(|p| !p.contains("criusd"))
        .collect();
    assert!(procs.is_empty(), "processes left: {procs:?}");
    for uid in ["uid-a", "uid-b", "uid-h", "uid-r"] {
        assert!(
            cgroup_dirs(uid).is_empty(),
            "cgroups left: {:?}",
            cgroup_dirs(uid)
        );
        remove_cgroup_parents(uid);
    }
    assert!(!dir.join("root/sandboxes").join(&a).exists());
    drop(rt);
    assert_eq!(daemon.signal_and_wait(libc::SIGTERM).code(), Some(0));
}
