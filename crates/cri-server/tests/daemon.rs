//! criusd as a process: start-up, Version, Status, runtime config, errors and
//! graceful shutdown, driven over its real socket.

mod common;

use common::pod::runtime_status;
use common::{script, Daemon, CRIUSD};
use k8s_cri::v1::{
    NetworkConfig, RuntimeConfig, RuntimeConfigRequest, UpdateRuntimeConfigRequest, VersionRequest,
};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

fn condition(resp: &k8s_cri::v1::StatusResponse, kind: &str) -> k8s_cri::v1::RuntimeCondition {
    resp.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.r#type == kind))
        .cloned()
        .unwrap_or_else(|| panic!("no {kind} condition in {resp:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn version_status_config_and_graceful_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut daemon = Daemon::start(dir, &common::fake_runtime_dirs(dir));

    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660, "socket mode");

    let mut rt = daemon.runtime().await;
    let v = rt
        .version(VersionRequest {
            version: "0.1.0".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "crius");
    assert_eq!(v.runtime_api_version, "v1");
    assert_eq!(v.version, "0.1.0");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));

    // Nothing installed yet: neither condition holds, and each says why.
    let s = runtime_status(&mut rt, false).await;
    let runtime = condition(&s, "RuntimeReady");
    assert!(!runtime.status);
    assert_eq!(runtime.reason, "RuntimeBinaryNotFound");
    assert!(runtime.message.contains("fake-runtime"), "{runtime:?}");
    let network = condition(&s, "NetworkReady");
    assert!(!network.status);
    assert_eq!(network.reason, "NetworkPluginNotReady");
    assert!(
        network.message.contains("no network config found"),
        "{network:?}"
    );
    assert!(s.info.is_empty(), "info only with verbose");

    // A runtime that exists but fails is not ready either.
    script(
        &dir.join("bin/fake-runtime"),
        "#!/bin/sh\necho kaputt >&2\nexit 1\n",
    );
    std::fs::write(
        dir.join("net.d/10-test.conflist"),
        r#"{"cniVersion":"1.0.0","name":"testnet","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
    )
    .unwrap();
    script(&dir.join("cni-bin/bridge"), "#!/bin/sh\n");
    let s = runtime_status(&mut rt, false).await;
    let runtime = condition(&s, "RuntimeReady");
    assert!(!runtime.status);
    assert!(runtime.message.contains("kaputt"), "{runtime:?}");
    let network = condition(&s, "NetworkReady");
    assert!(!network.status);
    assert!(
        network.message.contains("portmap") && !network.message.contains("bridge,"),
        "{network:?}"
    );

    // Everything in place: both ready; verbose info carries the config.
    script(
        &dir.join("bin/fake-runtime"),
        "#!/bin/sh\necho 'fake-runtime version 9.9'\n",
    );
    script(&dir.join("cni-bin/portmap"), "#!/bin/sh\n");
    let s = runtime_status(&mut rt, true).await;
    assert!(condition(&s, "RuntimeReady").status, "{s:?}");
    assert!(condition(&s, "NetworkReady").status, "{s:?}");
    let config: serde_json::Value = serde_json::from_str(&s.info["config"]).unwrap();
    // In containerd's shape (kubeadm reads sandboxImage); crius's own keys
    // under their own names.
    assert_eq!(config["containerd"]["defaultRuntimeName"], "fake");
    assert_eq!(config["socket"], daemon.socket.display().to_string());
    assert_eq!(
        config["containerd"]["runtimes"]["runc"]["runtimePath"],
        "runc"
    );
    assert_eq!(config["sandboxImage"], "registry.k8s.io/pause:3.10");
    assert_eq!(
        config["cni"]["confDir"],
        dir.join("net.d").display().to_string()
    );
    assert_eq!(config["rootDir"], dir.join("root").display().to_string());
    assert!(
        s.info["runtime"].contains("fake-runtime version 9.9"),
        "{:?}",
        s.info
    );
    let handlers: Vec<&str> = s.runtime_handlers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(handlers, vec!["", "fake", "runc"]);

    // Runtime config: cgroup driver, and the pod CIDR that kubelet pushes.
    let rc = rt
        .runtime_config(RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rc.linux.unwrap().cgroup_driver,
        k8s_cri::v1::CgroupDriver::Cgroupfs as i32
    );
    let update = |cidr: &str| UpdateRuntimeConfigRequest {
        runtime_config: Some(RuntimeConfig {
            network_config: Some(NetworkConfig {
                pod_cidr: cidr.into(),
            }),
        }),
    };
    let err = rt
        .update_runtime_config(update("10.1.0.0/99"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("pod_cidr"), "{err:?}");
    rt.update_runtime_config(update("10.244.3.0/24"))
        .await
        .unwrap();

    // A request without its config is InvalidArgument naming the field;
    // an RPC crius does not offer answers Unimplemented, not a crash.
    let err = rt
        .run_pod_sandbox(k8s_cri::v1::RunPodSandboxRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("config"), "{err:?}");
    let err = rt
        .checkpoint_container(k8s_cri::v1::CheckpointContainerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);

    // Listing and status read the store: empty, and unknown ids are NotFound.
    let pods = rt
        .list_pod_sandbox(k8s_cri::v1::ListPodSandboxRequest { filter: None })
        .await
        .unwrap()
        .into_inner();
    assert!(pods.items.is_empty());
    let containers = rt
        .list_containers(k8s_cri::v1::ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner();
    assert!(containers.containers.is_empty());
    let err = rt
        .pod_sandbox_status(k8s_cri::v1::PodSandboxStatusRequest {
            pod_sandbox_id: "abc".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    let err = rt
        .container_status(k8s_cri::v1::ContainerStatusRequest {
            container_id: String::new(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("container_id"), "{err:?}");

    // Stop and Remove of ids that do not exist succeed, whatever their
    // shape (kubelet retries them with ids it made up or lost track of).
    for id in [
        "7c6a0f3e-55d4-4c1b-9b8a-2f6d9e1c0a11",
        "abc",
        &"f".repeat(64),
        "../../etc",
    ] {
        rt.stop_pod_sandbox(k8s_cri::v1::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("StopPodSandbox {id}: {e:?}"));
        rt.remove_pod_sandbox(k8s_cri::v1::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("RemovePodSandbox {id}: {e:?}"));
        rt.stop_container(k8s_cri::v1::StopContainerRequest {
            container_id: id.into(),
            timeout: 1,
        })
        .await
        .unwrap_or_else(|e| panic!("StopContainer {id}: {e:?}"));
        rt.remove_container(k8s_cri::v1::RemoveContainerRequest {
            container_id: id.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("RemoveContainer {id}: {e:?}"));
    }

    // SIGTERM: exit 0, socket removed.
    drop(rt);
    let status = daemon.signal_and_wait(libc::SIGTERM);
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?} signal {:?}; log:\n{}",
        status.signal(),
        daemon.log_text()
    );
    assert!(!daemon.socket.exists(), "socket left behind");

    // The pod CIDR survives a restart.
    let mut daemon = Daemon::start(dir, &common::fake_runtime_config(dir));
    let mut rt = daemon.runtime().await;
    let s = runtime_status(&mut rt, true).await;
    assert!(
        s.info["runtimeConfig"].contains("10.244.3.0/24"),
        "{:?}",
        s.info
    );
    drop(rt);
    let status = daemon.signal_and_wait(libc::SIGINT);
    assert_eq!(status.code(), Some(0));
    assert!(!daemon.socket.exists());
}

#[test]
fn stale_socket_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir.join("state")).unwrap();
    // A socket file nobody listens on, as a killed daemon leaves it.
    let stale = std::os::unix::net::UnixListener::bind(dir.join("state/crius.sock")).unwrap();
    drop(stale);
    assert!(dir.join("state/crius.sock").exists());
    let mut daemon = Daemon::start(dir, &common::fake_runtime_config(dir));
    let status = daemon.signal_and_wait(libc::SIGTERM);
    assert_eq!(status.code(), Some(0));
}

#[test]
fn bad_config_is_a_clear_start_up_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("bogus_key = 1\n", "bogus_key"),
        ("cgroup_driver = \"cgroupv9\"\n", "cgroup_driver"),
        ("shm_size = \"lots\"\n", "shm_size"),
        ("[cni]\nconfdir = \"/etc\"\n", "confdir"),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = tmp.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = Command::new(CRIUSD)
            .arg("--config")
            .arg(&path)
            .arg("--socket")
            .arg(tmp.path().join("never.sock"))
            .arg("--root")
            .arg(tmp.path().join("root"))
            .arg("--state")
            .arg(tmp.path().join("state"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text}: criusd accepted it");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(key),
            "{text}: stderr does not name {key}: {stderr}"
        );
        assert!(!tmp.path().join("never.sock").exists());
    }
    // A config file that was named but does not exist.
    let out = Command::new(CRIUSD)
        .arg("--config")
        .arg(tmp.path().join("missing.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
}

#[test]
fn generated_man_pages_and_completions() {
    let run = |args: &[&str]| {
        let out = Command::new(CRIUSD).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    // (arguments, text the output must hold)
    let cases: &[(&[&str], &[&str])] = &[
        (&["generate", "man"], &[".TH criusd 8", "\\-\\-config"]),
        (
            &["generate", "config-man"],
            &[".TH CRIUS.TOML 5", ".B cni.conf_dir"],
        ),
        (
            &["generate", "completion", "bash"],
            &["_criusd()", "complete"],
        ),
        (&["generate", "completion", "zsh"], &["#compdef criusd"]),
        (&["generate", "completion", "fish"], &["complete -c criusd"]),
        // The default configuration documents its keys.
        (
            &["config", "default"],
            &["# Persistent state directory.", "# pod_annotations = []"],
        ),
    ];
    for (args, wants) in cases {
        let text = run(args);
        for want in *wants {
            assert!(text.contains(want), "{args:?}: no {want:?} in\n{text}");
        }
    }
}

#[test]
fn config_default_prints_a_loadable_full_config() {
    let out = Command::new(CRIUSD)
        .args(["config", "default"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for key in [
        "root = \"/var/lib/crius\"",
        "socket = \"/run/crius/crius.sock\"",
        "[runtimes.runc]",
        "[cni]",
        "[registry]",
        "[stream]",
        "shm_size = \"64Mi\"",
    ] {
        assert!(text.contains(key), "missing {key} in:\n{text}");
    }
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("default.toml");
    std::fs::write(&path, &text).unwrap();
    // `config show` on the printed file with overrides reflects the flags.
    let out = Command::new(CRIUSD)
        .arg("--config")
        .arg(&path)
        .args(["--socket", "/tmp/other.sock", "config", "show"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(shown.contains("socket = \"/tmp/other.sock\""), "{shown}");
}

/// criusd on [`common::fake_runtime_config`] with `extra` appended.
fn start_fake(dir: &std::path::Path, extra: &str) -> Daemon {
    Daemon::start(
        dir,
        &format!("{}\n{extra}", common::fake_runtime_config(dir)),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_calls_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let addr = common::free_metrics_addr();
    let mut daemon = start_fake(dir, &format!("[metrics]\naddress = \"{addr}\"\n"));
    let mut rt = daemon.runtime().await;
    for _ in 0..3 {
        rt.version(VersionRequest::default()).await.unwrap();
    }
    let err = rt
        .update_runtime_config(UpdateRuntimeConfigRequest {
            runtime_config: Some(RuntimeConfig {
                network_config: Some(NetworkConfig {
                    pod_cidr: "nope".into(),
                }),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let body =
        common::scrape_metrics(&addr, std::time::Duration::from_secs(30)).expect("GET /metrics");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.contains("crius_cri_requests_total{method=\"RuntimeService/Version\"} 3"),
        "{body}"
    );
    assert!(
        body.contains("crius_cri_errors_total{code=\"InvalidArgument\",method=\"RuntimeService/UpdateRuntimeConfig\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("crius_cri_request_duration_seconds_bucket"),
        "{body}"
    );
    drop(rt);
    assert_eq!(daemon.signal_and_wait(libc::SIGTERM).code(), Some(0));
    assert!(
        std::net::TcpStream::connect(&addr).is_err(),
        "metrics port still open after shutdown"
    );
}

#[test]
fn metrics_off_opens_no_port() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let stream_port = common::free_port();
    let mut daemon = start_fake(
        dir,
        &format!("[stream]\naddress = \"127.0.0.1:{stream_port}\"\n"),
    );
    let pid = daemon.child.as_ref().unwrap().id();
    // Serving: the CRI socket accepts connections from its bind on, but
    // answers only once the streaming server (and metrics, were they on)
    // listen.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(version_of(&daemon));
    // With metrics off, the daemon's only TCP listener is the streaming
    // server on its configured port.
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|l| l.display().to_string())
        .filter_map(|l| {
            l.strip_prefix("socket:[")
                .map(|s| s.trim_end_matches(']').to_string())
        })
        .collect();
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap()
        + &std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
    let ports: Vec<u16> = tcp
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(3) == Some("0A"))
        .filter(|l| {
            l.split_whitespace()
                .nth(9)
                .is_some_and(|i| inodes.iter().any(|x| x == i))
        })
        .filter_map(|l| {
            let local = l.split_whitespace().nth(1)?;
            u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
        })
        .collect();
    assert_eq!(ports, vec![stream_port], "criusd's TCP listeners");
    assert_eq!(daemon.signal_and_wait(libc::SIGTERM).code(), Some(0));
}

async fn version_of(daemon: &Daemon) -> k8s_cri::v1::VersionResponse {
    daemon
        .runtime()
        .await
        .version(VersionRequest {
            version: "0.1.0".into(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Waits (bounded) until the daemon's log contains `needle` after byte `from`.
fn wait_log(daemon: &Daemon, from: usize, needle: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let log = daemon.log_text();
        let tail = log.get(from..).unwrap_or("").to_string();
        if tail.contains(needle) {
            return tail;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} in the log:\n{log}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Writes `text` as the daemon's configuration, sends SIGHUP and waits for
/// the log line with `needle`: the log from before the signal on.
fn reload_with(daemon: &Daemon, text: &str, needle: &str) -> String {
    let mark = daemon.log_text().len();
    daemon.write_config(text);
    let pid = daemon.child.as_ref().unwrap().id() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    wait_log(daemon, mark, needle)
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_config() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let base = common::fake_runtime_dirs(dir);
    let mut daemon =
        Daemon::start_with(dir, &format!("log_level = \"info\"\n{base}"), vec![], false);
    assert_eq!(version_of(&daemon).await.runtime_name, "crius");
    assert!(
        !daemon.log_text().contains("DEBUG"),
        "{}",
        daemon.log_text()
    );

    // Debug logging, a new hand-back expiry, and a key that needs a restart.
    let mark = daemon.log_text().len();
    let tail = reload_with(
        &daemon,
        &format!("log_level = \"debug\"\nhandback_expiry = \"90s\"\nshm_size = \"128Mi\"\n{base}"),
        "configuration reloaded",
    );
    assert!(daemon.child.as_mut().unwrap().try_wait().unwrap().is_none());
    assert!(
        tail.contains("log_level") && tail.contains("handback_expiry"),
        "{tail}"
    );
    assert!(
        tail.contains("shm_size") && tail.contains("needs a restart"),
        "{tail}"
    );
    wait_log(&daemon, mark, "DEBUG");
    assert_eq!(version_of(&daemon).await.runtime_name, "crius");

    // An invalid file: the daemon keeps running on the old configuration.
    let tail = reload_with(
        &daemon,
        &format!("log_level = \"info\"\nhandback_expiry = \"soon\"\n{base}"),
        "reload failed",
    );
    assert!(tail.contains("handback_expiry"), "{tail}");
    assert!(daemon.child.as_mut().unwrap().try_wait().unwrap().is_none());
    assert_eq!(version_of(&daemon).await.runtime_name, "crius");
    // Still at debug: the old configuration was kept.
    let tail = reload_with(&daemon, "bogus_key = 1\n", "reload failed");
    assert!(tail.contains("bogus_key"), "{tail}");
    assert!(tail.contains("DEBUG"), "{tail}");

    // JSON logs from the next line on, without a restart.
    let tail = reload_with(
        &daemon,
        &format!("log_level = \"info\"\nlog_format = \"json\"\n{base}"),
        "configuration reloaded",
    );
    let reloaded = tail
        .lines()
        .find(|l| l.contains("configuration reloaded"))
        .unwrap();
    let line: serde_json::Value = serde_json::from_str(reloaded).expect(reloaded);
    assert_eq!(
        line["fields"]["message"], "configuration reloaded",
        "{line}"
    );
    assert!(
        line["fields"]["applied"]
            .as_str()
            .is_some_and(|a| a.contains("log_format")),
        "{line}"
    );
    assert!(!tail.contains("needs a restart"), "{tail}");

    // A clean stop leaves no NRI socket behind.
    assert!(daemon.nri_socket().exists());
    assert_eq!(daemon.signal_and_wait(libc::SIGTERM).code(), Some(0));
    assert!(!daemon.nri_socket().exists());
}

/// A GET of `/metrics` on `port`: the status line, or why it failed.
fn get_metrics(port: u16) -> Result<String, std::io::Error> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    conn.read_to_string(&mut out)?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_handlers_cni_and_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let base = common::fake_runtime_dirs(dir);
    std::fs::create_dir_all(dir.join("net2.d")).unwrap();
    let mut daemon = Daemon::start(dir, &base);
    let port = common::free_port();
    assert!(get_metrics(port).is_err(), "metrics are off");
    let reload = |text: String| reload_with(&daemon, &text, "configuration reloaded");

    // A new handler, another CNI directory, metrics on.
    let moved = base.replace(
        &format!("conf_dir = \"{}/net.d\"", dir.display()),
        &format!("conf_dir = \"{}/net2.d\"", dir.display()),
    );
    let tail = reload(format!(
        "{moved}[runtimes.extra]\npath = \"{}/bin/fake-runtime\"\n[metrics]\naddress = \"127.0.0.1:{port}\"\n",
        dir.display()
    ));
    assert!(!tail.contains("needs a restart"), "{tail}");
    let mut rt = daemon.runtime().await;
    let s = runtime_status(&mut rt, true).await;
    let handlers: Vec<&str> = s.runtime_handlers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(handlers, ["", "extra", "fake", "runc"]);
    let config: serde_json::Value = serde_json::from_str(&s.info["config"]).unwrap();
    assert_eq!(
        config["cni"]["confDir"],
        dir.join("net2.d").display().to_string()
    );
    let answer = get_metrics(port).expect("metrics after the reload");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("crius_"), "{answer}");

    // The handler dropped again, metrics off: new pods cannot use it.
    reload(moved.clone());
    assert!(get_metrics(port).is_err(), "metrics are off again");
    let config = k8s_cri::v1::PodSandboxConfig {
        metadata: Some(k8s_cri::v1::PodSandboxMetadata {
            name: "p".into(),
            namespace: "n".into(),
            uid: "u".into(),
            attempt: 0,
        }),
        ..Default::default()
    };
    let err = rt
        .run_pod_sandbox(k8s_cri::v1::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: "extra".into(),
        })
        .await
        .expect_err("a dropped handler");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("runtime_handler"), "{err:?}");

    assert_eq!(daemon.signal_and_wait(libc::SIGTERM).code(), Some(0));
}

/// The next datagram on the fake notify socket (bounded wait).
fn next_notification(sock: &std::os::unix::net::UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("no notification in time");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn sd_notify_ready_reloading_stopping() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = common::fake_runtime_dirs(dir);
    let notify_path = dir.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let env = vec![(
        "NOTIFY_SOCKET".to_string(),
        notify_path.display().to_string(),
    )];
    let mut daemon = Daemon::start_with(dir, &config, env, true);
    let ready = next_notification(&notify);
    assert_eq!(ready.trim(), "READY=1");
    // Ready means serving.
    assert_eq!(version_of(&daemon).await.runtime_name, "crius");

    let pid = daemon.child.as_ref().unwrap().id() as i32;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let reloading = next_notification(&notify);
    let lines: Vec<&str> = reloading.lines().collect();
    assert_eq!(lines[0], "RELOADING=1", "{reloading}");
    let usec: u64 = lines[1]
        .strip_prefix("MONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("{reloading}"))
        .parse()
        .unwrap();
    assert!(usec > 0);
    assert_eq!(next_notification(&notify).trim(), "READY=1");

    let status = daemon.signal_and_wait(libc::SIGTERM);
    assert_eq!(status.code(), Some(0));
    assert_eq!(next_notification(&notify).trim(), "STOPPING=1");
}

#[test]
fn no_notify_socket_sends_nothing() {
    // Without NOTIFY_SOCKET the daemon starts and stops as before (the
    // other tests); a socket given empty is ignored as well.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let env = vec![("NOTIFY_SOCKET".to_string(), String::new())];
    let mut daemon = Daemon::start_with(dir, &common::fake_runtime_dirs(dir), env, true);
    assert_eq!(daemon.signal_and_wait(libc::SIGTERM).code(), Some(0));
    assert!(
        !daemon.log_text().contains("notify"),
        "{}",
        daemon.log_text()
    );
}

#[test]
fn config_show_origin_names_the_drop_in() {
    let tmp = tempfile::tempdir().unwrap();
    let main = tmp.path().join("config.toml");
    std::fs::write(&main, "log_level = \"warn\"\nshm_size = \"128Mi\"\n").unwrap();
    std::fs::create_dir(tmp.path().join("config.d")).unwrap();
    let drop_in = tmp.path().join("config.d/50-debug.toml");
    std::fs::write(&drop_in, "log_level = \"debug\"\n").unwrap();
    let out = Command::new(CRIUSD)
        .arg("--config")
        .arg(&main)
        .args(["config", "show", "--origin"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |key: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key}: {stdout}"))
            .to_string()
    };
    assert_eq!(
        line("log_level"),
        format!("log_level = \"debug\"  # {}", drop_in.display())
    );
    assert_eq!(
        line("shm_size"),
        format!("shm_size = \"128Mi\"  # {}", main.display())
    );
    assert!(line("handback_expiry").ends_with("# (default)"));
    // The merged result without origins.
    let out = Command::new(CRIUSD)
        .arg("--config")
        .arg(&main)
        .args(["config", "show"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("log_level = \"debug\""));
    // An unknown key in a drop-in names the file and the key.
    std::fs::write(tmp.path().join("config.d/60-bad.toml"), "bogus = 1\n").unwrap();
    let out = Command::new(CRIUSD)
        .arg("--config")
        .arg(&main)
        .args(["config", "show"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("60-bad.toml") && stderr.contains("bogus"),
        "{stderr}"
    );
}
