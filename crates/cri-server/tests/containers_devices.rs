//! Devices against the real daemon: CDI devices (from `CDI_devices` and the
//! `cdi.k8s.io/*` annotations, resolved from spec files in a directory the
//! test owns), device directories, device ownership from the security
//! context, and a handler with `privileged_without_host_devices`.

mod common;

use common::pod::*;
use common::registry::is_root;
use k8s_cri::v1::{CdiDevice, Device, Int64Value, RunPodSandboxRequest};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use std::path::{Path, PathBuf};

/// The tests of this file run one at a time: an environment's leftovers
/// guard kills every process in the test cgroup tree, which the other
/// test's containers share.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SH: &str = "/bin/busybox";

/// A CDI spec of kind `crius.test/dev`: device `null0` is the host's
/// /dev/null at /dev/crius-null with a read-only bind of `share` at
/// /cdi-share and `CRIUS_CDI=null0`; `zero0` is /dev/zero at
/// /dev/crius-zero; every container that gets one of them gets
/// `CRIUS_CDI_SPEC=1` and a createRuntime hook that appends to `hook_log`.
fn cdi_spec(share: &Path, hook_log: &Path) -> String {
    serde_json::json!({
        "cdiVersion": "0.6.0",
        "kind": "crius.test/dev",
        "containerEdits": {
            "env": ["CRIUS_CDI_SPEC=1"],
            "hooks": [{
                "hookName": "createRuntime",
                "path": "/bin/sh",
                "args": ["sh", "-c", format!("echo ran >> {}", hook_log.display())],
            }],
        },
        "devices": [
            {
                "name": "null0",
                "containerEdits": {
                    "deviceNodes": [{"path": "/dev/crius-null", "hostPath": "/dev/null"}],
                    "mounts": [{
                        "hostPath": share.display().to_string(),
                        "containerPath": "/cdi-share",
                        "options": ["ro", "bind"],
                    }],
                    "env": ["CRIUS_CDI=null0"],
                },
            },
            {
                "name": "zero0",
                "containerEdits": {
                    "deviceNodes": [{"path": "/dev/crius-zero", "hostPath": "/dev/zero"}],
                },
            },
        ],
    })
    .to_string()
}

fn sleeper(name: &str, image: &str) -> k8s_cri::v1::ContainerConfig {
    container(name, image, &[SH, "sleep", "4242"])
}

/// Runs `script` with busybox's shell in the container; its exit code and
/// output (stderr appended).
async fn sh(rt: &mut Rt, id: &str, script: &str) -> (i32, String) {
    let (code, out, err) = exec(rt, id, &[SH, "sh", "-c", script]).await;
    (code, format!("{out}{err}"))
}

/// A privileged pod sandbox on `handler`.
async fn privileged_pod_on(
    env: &Env,
    rt: &mut Rt,
    name: &str,
    uid: &str,
    handler: &str,
) -> (String, k8s_cri::v1::PodSandboxConfig) {
    let config = privileged_pod(name, uid);
    let id = rt
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", env.daemon.log_text()))
        .into_inner()
        .pod_sandbox_id;
    (id, config)
}

async fn container_count(rt: &mut Rt) -> usize {
    list_containers(rt).await.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn cdi_devices_mounts_env_and_hooks() {
    if !is_root() {
        eprintln!("containers_devices: skipped (needs root)");
        return;
    }
    let _serial = SERIAL.lock().await;
    let cdi = tempfile::Builder::new()
        .prefix("crius-cdi")
        .tempdir_in("/tmp")
        .unwrap();
    let specs = cdi.path().join("specs");
    let share = cdi.path().join("share");
    let hook_log = cdi.path().join("hook.log");
    std::fs::create_dir_all(&specs).unwrap();
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("hello"), "from the host\n").unwrap();
    std::fs::write(specs.join("crius-test.json"), cdi_spec(&share, &hook_log)).unwrap();
    let env = Env::start_with(
        "crius-ctr-cdi",
        &format!(
            "[cdi]\nspec_dirs = [\"{}\", \"{}\"]\n",
            cdi.path().join("missing").display(),
            specs.display()
        ),
    );
    let image = env.pull_busybox().await;
    let mut rt = env.daemon.runtime().await;
    let uid = "uid-ctr-cdi";
    let pod_config = pod("cdi", uid);
    let _logs = LogDir(PathBuf::from(&pod_config.log_directory));
    let pod_id = run_pod(&env, &mut rt, &pod_config).await;

    // null0 through CDI_devices, zero0 through an annotation.
    let mut c = sleeper("cdi", &image);
    c.cdi_devices = vec![CdiDevice {
        name: "crius.test/dev=null0".into(),
    }];
    c.annotations
        .insert("cdi.k8s.io/test".into(), "crius.test/dev=zero0".into());
    let id = run(&env, &mut rt, &pod_id, &pod_config, c).await;
    let (code, out) = sh(
        &mut rt,
        &id,
        "stat -c '%n %F %t:%T' /dev/crius-null /dev/crius-zero && echo hi > /dev/crius-null \
         && head -c 5 /dev/crius-zero | wc -c && cat /cdi-share/hello \
         && echo \"env $CRIUS_CDI $CRIUS_CDI_SPEC\" && if touch /cdi-share/x; then echo writable; fi",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("/dev/crius-null character special file 1:3")
            && out.contains("/dev/crius-zero character special file 1:5"),
        "{out}"
    );
    assert!(out.contains("\n5\n"), "reads /dev/crius-zero: {out}");
    assert!(out.contains("from the host"), "{out}");
    assert!(out.contains("env null0 1"), "{out}");
    assert!(
        !out.contains("writable"),
        "the CDI mount is read-only: {out}"
    );
    assert!(!share.join("x").exists());
    let hook = std::fs::read_to_string(&hook_log).unwrap_or_default();
    assert_eq!(hook.lines().count(), 1, "the hook ran once: {hook:?}");

    // Unresolvable or malformed devices are refused, naming device and
    // field, and leave no container behind.
    let cases: Vec<(Vec<&str>, Option<&str>, &str)> = vec![
        (
            vec!["crius.test/dev=missing"],
            None,
            "config.cdi_devices[0].name",
        ),
        (
            vec!["crius.test/dev=null0", "other.vendor/gpu=0"],
            None,
            "config.cdi_devices[1].name",
        ),
        (vec!["gpu0"], None, "config.cdi_devices[0].name"),
        (
            vec![],
            Some("crius.test/dev=zero0,crius.test/dev=nope"),
            "cdi.k8s.io/bad",
        ),
    ];
    for (devices, annotation, field) in cases {
        let mut c = sleeper("refused", &image);
        c.cdi_devices = devices
            .iter()
            .map(|n| CdiDevice {
                name: n.to_string(),
            })
            .collect();
        if let Some(a) = annotation {
            c.annotations.insert("cdi.k8s.io/bad".into(), a.into());
        }
        let e = create(&mut rt, &pod_id, &pod_config, c)
            .await
            .expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(field), "{field}: {}", e.message());
        let named = devices.last().copied().or(Some("crius.test/dev=nope"));
        assert!(
            e.message().contains(named.unwrap()),
            "names the device: {}",
            e.message()
        );
        assert_eq!(container_count(&mut rt).await, 1, "{devices:?}");
    }
    let hook = std::fs::read_to_string(&hook_log).unwrap_or_default();
    assert_eq!(hook.lines().count(), 1, "no hook for refused containers");

    // verbose Status reports the CDI settings.
    let cdi_info = &verbose_info(&mut rt).await["cdi"];
    assert_eq!(cdi_info["enable"], true);
    assert_eq!(cdi_info["specDirs"][1], specs.display().to_string());

    teardown(&env, &mut rt, &pod_id, uid).await;
}

/// A directory with two device nodes the test makes: copies of /dev/null
/// (c 1:3) and /dev/zero (c 1:5), root's and mode 0600, plus a regular file
/// and a subdirectory with a third node (c 1:7, /dev/full).
fn device_dir(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    for (name, minor) in [("null-copy", 3), ("zero-copy", 5), ("sub/full-copy", 7)] {
        mknod(
            &dir.join(name),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o600),
            makedev(1, minor),
        )
        .unwrap();
    }
    std::fs::write(dir.join("README"), "not a device").unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn device_directories_ownership_and_privileged_without_host_devices() {
    if !is_root() {
        eprintln!("containers_devices: skipped (needs root)");
        return;
    }
    let _serial = SERIAL.lock().await;
    let devs = tempfile::Builder::new()
        .prefix("crius-devdir")
        .tempdir_in("/tmp")
        .unwrap();
    device_dir(devs.path());
    let env = Env::start_with(
        "crius-ctr-dev",
        "device_ownership_from_security_context = true\n\
         [runtimes.nohost]\npath = \"runc\"\nprivileged_without_host_devices = true\n",
    );
    let image = env.pull_busybox().await;
    let mut rt = env.daemon.runtime().await;

    // A directory of devices: every node below it, at the same place below
    // the container path; owned by runAsUser/runAsGroup, so the non-root
    // process can open the 0600 nodes.
    let uid = "uid-ctr-dev";
    let pod_config = pod("dev", uid);
    let _logs = LogDir(PathBuf::from(&pod_config.log_directory));
    let pod_id = run_pod(&env, &mut rt, &pod_config).await;
    let mut c = sleeper("snd", &image);
    c.devices = vec![Device {
        container_path: "/dev/snd".into(),
        host_path: devs.path().display().to_string(),
        permissions: "rw".into(),
    }];
    security(&mut c).run_as_user = Some(Int64Value { value: 1000 });
    security(&mut c).run_as_group = Some(Int64Value { value: 2000 });
    let id = run(&env, &mut rt, &pod_id, &pod_config, c).await;
    let (code, out) = sh(
        &mut rt,
        &id,
        "id -u; stat -c '%n %u:%g %a %t:%T' /dev/snd/null-copy /dev/snd/zero-copy \
         /dev/snd/sub/full-copy && echo x > /dev/snd/null-copy \
         && head -c 3 /dev/snd/zero-copy | wc -c; ls /dev/snd",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    for want in [
        "/dev/snd/null-copy 1000:2000 600 1:3",
        "/dev/snd/zero-copy 1000:2000 600 1:5",
        "/dev/snd/sub/full-copy 1000:2000 600 1:7",
        "\n3\n",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    assert!(!out.contains("README"), "only device nodes: {out}");
    // The host's nodes keep their owner.
    let host_owner = std::fs::metadata(devs.path().join("null-copy")).unwrap();
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::uid(&host_owner),
            std::os::unix::fs::MetadataExt::gid(&host_owner)
        ),
        (0, 0)
    );
    teardown(&env, &mut rt, &pod_id, uid).await;

    // Privileged: on the default handler every host device and an
    // allow-all device cgroup; on `nohost` neither, only what it asked for.
    let script = "ls /dev; echo; cat /sys/fs/cgroup/devices/devices.list";
    let mut seen = Vec::new();
    for (handler, uid) in [("", "uid-ctr-dev-host"), ("nohost", "uid-ctr-dev-nohost")] {
        let (pod_id, pod_config) = privileged_pod_on(&env, &mut rt, "priv", uid, handler).await;
        let _logs = LogDir(PathBuf::from(&pod_config.log_directory));
        let mut c = sleeper("priv", &image);
        security(&mut c).privileged = true;
        c.devices = vec![Device {
            container_path: "/dev/mine".into(),
            host_path: devs.path().join("zero-copy").display().to_string(),
            permissions: "r".into(),
        }];
        let id = run(&env, &mut rt, &pod_id, &pod_config, c).await;
        let (code, out) = sh(&mut rt, &id, script).await;
        assert_eq!(code, 0, "{handler}: {out}");
        let (code, read) = sh(&mut rt, &id, "head -c 2 /dev/mine | wc -c").await;
        assert_eq!((code, read.trim()), (0, "2"), "{handler}");
        seen.push(out);
        teardown(&env, &mut rt, &pod_id, uid).await;
    }
    let (host, nohost) = (&seen[0], &seen[1]);
    assert!(
        host.contains("loop0") && host.contains("a *:* rwm"),
        "default handler: {host}"
    );
    assert!(
        !nohost.contains("loop0") && !nohost.contains("kmsg"),
        "no host devices: {nohost}"
    );
    assert!(!nohost.contains("a *:* rwm"), "{nohost}");
    assert!(nohost.contains("mine"), "{nohost}");
    assert!(
        nohost.contains("c 1:5 r"),
        "the requested device is allowed: {nohost}"
    );
}
