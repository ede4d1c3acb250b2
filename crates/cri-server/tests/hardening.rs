//! Hardening against callers and images that would exhaust or confuse the
//! daemon: idle connections to the metrics server, ExecSync output far
//! over kubelet's 16 MiB, a TARGET PID namespace in another pod, image
//! stop signals the shim cannot send.

mod common;

use common::pod::*;
use common::registry::{busybox_entries, image_with_config, is_root, layer, Compression, Entry};
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ExecSyncRequest, ListPodSandboxRequest, NamespaceMode, NamespaceOption, VersionRequest,
};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The tests of this file run one at a time (they share the test cgroup
/// tree, whose leftovers guard kills every process in it).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MIB: usize = 1 << 20;

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// 1200 idle TCP connections to the metrics port (fewer if this process
/// has fewer fds) against a criusd limited to 1024 fds: CRI calls keep
/// working and /metrics answers again once the idle ones time out.
#[tokio::test(flavor = "multi_thread")]
async fn idle_metrics_connections_do_not_starve_the_daemon() {
    if !is_root() {
        eprintln!("hardening: skipped (needs root)");
        return;
    }
    let _serial = SERIAL.lock().await;
    let tmp = tempfile::Builder::new()
        .prefix("crius-hard-metrics")
        .tempdir_in("/tmp")
        .unwrap();
    let addr = common::free_metrics_addr();
    let daemon = common::Daemon::start(tmp.path(), &format!("[metrics]\naddress = \"{addr}\"\n"));
    let pid = daemon.child.as_ref().unwrap().id();
    // criusd as a plain service gets it: 1024 fds (systemd's default soft
    // limit).
    let limit = libc::rlimit {
        rlim_cur: 1024,
        rlim_max: 1024,
    };
    // SAFETY: prlimit(2) on our child's pid with a valid new limit and no
    // old-limit output.
    let r = unsafe {
        libc::prlimit(
            pid as i32,
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(r, 0, "prlimit: {}", std::io::Error::last_os_error());
    assert!(common::scrape_metrics(&addr, Duration::from_secs(2))
        .unwrap()
        .starts_with("HTTP/1.1 200"));

    let mut own = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) into a valid struct.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut own) };
    let n = 1200.min(own.rlim_cur.saturating_sub(200) as usize);
    assert!(n > 1024 - 100, "this process can open only {n} connections");
    let mut idle = Vec::with_capacity(n);
    let sockaddr: std::net::SocketAddr = addr.parse().unwrap();
    for i in 0..n {
        // A server that stopped accepting (out of fds) lets the backlog
        // fill up: then connecting hangs. The CRI checks below tell.
        match std::net::TcpStream::connect_timeout(&sockaddr, Duration::from_secs(3)) {
            Ok(s) => idle.push(s),
            Err(e) => {
                eprintln!("connection {i} to /metrics failed: {e}");
                break;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds = fd_count(pid);
    assert!(
        fds < 512,
        "criusd holds {fds} fds with {n} idle connections"
    );

    // The CRI socket still accepts and answers.
    let mut rt = tokio::time::timeout(Duration::from_secs(10), daemon.runtime())
        .await
        .expect("connect to the CRI socket");
    for _ in 0..3 {
        tokio::time::timeout(
            Duration::from_secs(10),
            rt.version(VersionRequest::default()),
        )
        .await
        .expect("Version in time")
        .expect("Version");
        tokio::time::timeout(
            Duration::from_secs(10),
            rt.list_pod_sandbox(ListPodSandboxRequest { filter: None }),
        )
        .await
        .expect("ListPodSandbox in time")
        .expect("ListPodSandbox");
    }

    // /metrics answers again once the idle connections have timed out (30
    // s) or right away if a slot is free.
    let started = Instant::now();
    let body = loop {
        match common::scrape_metrics(&addr, Duration::from_secs(2)) {
            Ok(b) if b.starts_with("HTTP/1.1 200") => break b,
            _ => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "/metrics did not answer again; log:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(body.contains("crius_cri_requests_total"), "{body}");
    eprintln!(
        "metrics answered again after {:?}; criusd held {fds} fds",
        started.elapsed()
    );
    // No busy loop on accept errors.
    let log = daemon.log_text();
    let accept_errors = log.matches("accept failed").count();
    assert!(accept_errors < 50, "{accept_errors} accept errors");
    drop(idle);
}

/// The largest size seen of the exec output files below `dir`, polled
/// until `stop`.
fn watch_exec_files(dir: std::path::PathBuf, stop: Arc<AtomicBool>, max: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if !e.file_name().to_string_lossy().starts_with("exec-") {
                    continue;
                }
                for f in ["stdout", "stderr"] {
                    if let Ok(m) = std::fs::metadata(e.path().join(f)) {
                        max.fetch_max(m.len(), Ordering::Relaxed);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

async fn exec_big(
    rt: &mut RuntimeServiceClient<tonic::transport::Channel>,
    id: &str,
    dir: &Path,
    script: &str,
) -> (k8s_cri::v1::ExecSyncResponse, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let max = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (dir, stop, max) = (dir.to_path_buf(), stop.clone(), max.clone());
        std::thread::spawn(move || watch_exec_files(dir, stop, max))
    };
    let resp = rt
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: vec![
                "/bin/busybox".into(),
                "sh".into(),
                "-c".into(),
                script.into(),
            ],
            timeout: 60,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync {script}: {e:?}"))
        .into_inner();
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    (resp, max.load(Ordering::Relaxed))
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_output_pid_namespace_targets_and_stop_signals() {
    if !is_root() {
        eprintln!("hardening: skipped (needs root)");
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = Env::start("crius-hard");
    let image = env.pull_busybox().await;
    let mut rt = env.daemon.runtime().await;
    let config_a = pod("hard-a", "uid-hard-a");
    let config_b = pod("hard-b", "uid-hard-b");
    let _logs = (
        LogDir(config_a.log_directory.clone().into()),
        LogDir(config_b.log_directory.clone().into()),
    );
    let pod_a = run_pod(&env, &mut rt, &config_a).await;
    let pod_b = run_pod(&env, &mut rt, &config_b).await;
    let sleep = ["/bin/busybox", "sleep", "1000"];
    let a = run(
        &env,
        &mut rt,
        &pod_a,
        &config_a,
        container("a", &image, &sleep),
    )
    .await;

    // ExecSync: 40 MiB on a stream; the shim writes no more than 16 MiB of
    // it to disk, the process is not blocked, the response fits in one
    // gRPC message.
    let mut big = RuntimeServiceClient::new(common::connect(&env.daemon.socket).await)
        .max_decoding_message_size(64 * MIB);
    let dir = env.dir.join("state/containers").join(&a);
    let (resp, max) = exec_big(
        &mut big,
        &a,
        &dir,
        "head -c 41943040 /dev/zero; echo done >&2; sleep 1",
    )
    .await;
    assert_eq!(resp.exit_code, 0);
    assert_eq!(max, 16 * MIB as u64, "largest output file on disk");
    assert_eq!(resp.stdout.len(), 16 * MIB - 1024 - resp.stderr.len());
    assert!(resp.stdout.iter().all(|b| *b == 0));
    assert_eq!(resp.stderr, b"done\n");
    let (resp, max) = exec_big(
        &mut big,
        &a,
        &dir,
        "head -c 41943040 /dev/zero; head -c 41943040 /dev/zero >&2; sleep 1",
    )
    .await;
    assert_eq!(resp.exit_code, 0);
    assert_eq!(max, 16 * MIB as u64, "largest output file on disk");
    assert!(resp.stdout.len() <= 16 * MIB && resp.stderr.len() <= 16 * MIB);
    assert_eq!(resp.stdout.len() + resp.stderr.len(), 16 * MIB - 1024);
    assert!(resp.stdout.len() >= 8 * MIB - 1024, "{}", resp.stdout.len());
    // Nothing of the execs is left on disk.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("exec-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    // TARGET PID namespace: a container of the same pod, not of another.
    let target = |name: &str, target_id: &str| {
        let mut c = container(name, &image, &sleep);
        security(&mut c).namespace_options = Some(NamespaceOption {
            pid: NamespaceMode::Target as i32,
            target_id: target_id.into(),
            ..Default::default()
        });
        c
    };
    let err = create(&mut rt, &pod_b, &config_b, target("intruder", &a))
        .await
        .expect_err("TARGET in another pod");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("namespace_options.target_id")
            && err.message().contains("not in pod sandbox"),
        "{err:?}"
    );
    let buddy = run(&env, &mut rt, &pod_a, &config_a, target("buddy", &a)).await;
    let (_, ps, _) = exec(&mut rt, &buddy, &["/bin/busybox", "ps"]).await;
    assert!(ps.contains("sleep 1000"), "{ps}");

    // Image stop signals the shim cannot send are refused at create.
    for (tag, signal) in [("rt", "SIGRTMIN+3"), ("num", "34"), ("zero", "0")] {
        let img = image_with_config(
            vec![layer(&busybox_entries(), Compression::Gzip)],
            serde_json::json!({"Cmd": ["/bin/sh"], "StopSignal": signal}),
        );
        env.registry.push_image("stopsig", tag, &img);
        let name = format!("{}/stopsig:{tag}", env.registry.addr);
        pull(&env, &name).await;
        let err = create(
            &mut rt,
            &pod_a,
            &config_a,
            container(&format!("sig-{tag}"), &name, &sleep),
        )
        .await
        .expect_err(signal);
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{signal}: {err:?}"
        );
        assert!(
            err.message().contains("config.image.image") && err.message().contains("StopSignal"),
            "{signal}: {err:?}"
        );
    }
    // ... and one it can is used by StopContainer, even after the image is
    // gone.
    let img = image_with_config(
        vec![layer(&busybox_entries(), Compression::Gzip)],
        serde_json::json!({"Cmd": ["/bin/sh"], "StopSignal": "SIGUSR1"}),
    );
    env.registry.push_image("stopsig", "usr1", &img);
    let name = format!("{}/stopsig:usr1", env.registry.addr);
    pull(&env, &name).await;
    // (sleep shares the pod's PID namespace, whose pid 1 is the shim's
    // holder, so it is not a pid 1 that ignores signals it has no handler
    // for: SIGUSR1 ends it.)
    let c = run(
        &env,
        &mut rt,
        &pod_b,
        &config_b,
        container("usr1", &name, &sleep),
    )
    .await;
    // The signal was recorded at creation: the stop does not need the image.
    env.daemon
        .images()
        .await
        .remove_image(k8s_cri::v1::RemoveImageRequest {
            image: Some(k8s_cri::v1::ImageSpec {
                image: name.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("RemoveImage of an image a container uses");
    let started = Instant::now();
    rt.stop_container(k8s_cri::v1::StopContainerRequest {
        container_id: c.clone(),
        timeout: 30,
    })
    .await
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(20));
    let st = status_of(&mut rt, &c).await;
    assert_eq!(st.exit_code, 128 + 10, "{st:?}");

    // Pod b goes first, without teardown's check that no container at all
    // is left (pod a's still are).
    rt.stop_pod_sandbox(k8s_cri::v1::StopPodSandboxRequest {
        pod_sandbox_id: pod_b.clone(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(k8s_cri::v1::RemovePodSandboxRequest {
        pod_sandbox_id: pod_b,
    })
    .await
    .unwrap();
    assert!(cgroup_dirs("uid-hard-b").is_empty());
    remove_cgroup_parents("uid-hard-b");
    teardown(&env, &mut rt, &pod_a, "uid-hard-a").await;
}

/// An image of 128 layers runs: absolute overlay lower dirs of that many
/// layers take far more than the page mount(2) accepts ("mount options too
/// long" from 39 layers on). Files of the lowest and the highest layer are
/// visible, and a directory the top layer only implies (`tmp/top` without
/// a `tmp/` entry) keeps the base layer's 1777.
#[tokio::test(flavor = "multi_thread")]
async fn image_of_128_layers_runs() {
    if !is_root() {
        eprintln!("hardening: skipped (needs root)");
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = Env::start("crius-layers");
    let mut base = busybox_entries();
    base.push(Entry::DirMode("tmp", 0o1777));
    base.push(Entry::File("layer0", b"0".to_vec(), 0o644));
    let mut layers = vec![layer(&base, Compression::Gzip)];
    for i in 1..128 {
        let name: &'static str = Box::leak(format!("layer{i}").into_boxed_str());
        let mut entries = vec![Entry::File(name, i.to_string().into_bytes(), 0o644)];
        if i == 127 {
            entries.push(Entry::File("tmp/top", b"top".to_vec(), 0o644));
        }
        layers.push(layer(&entries, Compression::Gzip));
    }
    let many = image_with_config(
        layers,
        serde_json::json!({"Cmd": ["/bin/sh"], "WorkingDir": "/"}),
    );
    env.registry.push_image("many", "test", &many);
    let image = format!("{}/many:test", env.registry.addr);
    pull(&env, &image).await;
    let mut rt = env.daemon.runtime().await;
    let config = pod("layers", "uid-layers");
    let _logs = LogDir(config.log_directory.clone().into());
    let (pod_id, _) = run_many_layers(&env, &mut rt, &config, &image).await;
    teardown(&env, &mut rt, &pod_id, "uid-layers").await;

    // In a pod with its own user namespace every layer is bound idmapped
    // (`l<n>` in the staging directory) and the overlay stacked on them.
    let userns = rt
        .status(k8s_cri::v1::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner()
        .runtime_handlers
        .iter()
        .any(|h| h.name.is_empty() && h.features.is_some_and(|f| f.user_namespaces));
    if !userns {
        eprintln!("hardening: 128 layers in a user namespace skipped (not supported here)");
        return;
    }
    let config = userns_pod("layers-userns", "uid-layers-userns", (0, 65536 * 41, 65536));
    let _logs = LogDir(config.log_directory.clone().into());
    let (pod_id, c) = run_many_layers(&env, &mut rt, &config, &image).await;
    let (code, out, err) = exec(
        &mut rt,
        &c,
        &["/bin/busybox", "stat", "-c", "%a %u", "/layer0"],
    )
    .await;
    assert_eq!(
        (code, out.trim()),
        (0, "644 0"),
        "root in the pod owns the image's files: {err}"
    );
    teardown(&env, &mut rt, &pod_id, "uid-layers-userns").await;
}

/// Runs a container of the 128-layer image in a new pod of `config` and
/// checks that files of the lowest and highest layers are there and that
/// `/tmp` kept the lower layers' 1777 (the top layer only has `tmp/top`).
/// Returns the pod and container ids.
async fn run_many_layers(
    env: &Env,
    rt: &mut Rt,
    config: &k8s_cri::v1::PodSandboxConfig,
    image: &str,
) -> (String, String) {
    let pod_id = run_pod(env, rt, config).await;
    let c = run(
        env,
        rt,
        &pod_id,
        config,
        container("many", image, &["/bin/busybox", "sleep", "1000"]),
    )
    .await;
    let (code, out, err) = exec(
        rt,
        &c,
        &[
            "/bin/busybox",
            "cat",
            "/layer0",
            "/layer1",
            "/layer127",
            "/tmp/top",
        ],
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "01127top"), "{err}");
    let (code, out, err) = exec(rt, &c, &["/bin/busybox", "stat", "-c", "%a", "/tmp"]).await;
    assert_eq!((code, out.trim()), (0, "1777"), "{err}");
    (pod_id, c)
}
