//! Images in a container besides its root filesystem: image volumes (CRI
//! `Mount.image`, KEP-4639), the content of the image's own `VOLUME`s, and
//! the image name the user asked for.

mod common;

use common::pod::*;
use common::registry::{busybox_entries, image_with_config, is_root, layer, Compression, Entry};
use k8s_cri::v1::{ImageSpec, Mount, RemoveContainerRequest, RemoveImageRequest};
use std::path::Path;

/// The tests of this file run one at a time: an environment's leftovers
/// guard kills every process in the test cgroup tree, which the other
/// test's containers share.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn image_mount(container_path: &str, image: &str) -> Mount {
    Mount {
        container_path: container_path.into(),
        readonly: true,
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A shell command line (busybox-static runs its applets in-process).
fn sh(cmd: &str) -> [&str; 3] {
    ["/bin/sh", "-c", cmd]
}

/// The snapshot directories of the image store.
fn snapshots(env: &Env) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(env.dir.join("root/images/snapshots"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn image_volumes_mount_read_only_and_outlive_remove_image_and_restart() {
    if !is_root() {
        eprintln!("containers_image_volumes: skipped (needs root)");
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut env = Env::start("crius-imgvol");
    let busybox = env.pull_busybox().await;
    // A data image of two layers (the second one replaces a file) and one
    // of a single layer.
    let data = image_with_config(
        vec![
            layer(
                &[
                    Entry::Dir("share"),
                    Entry::File("share/hello.txt", b"old\n".to_vec(), 0o644),
                    Entry::File("share/tool", b"#!/bin/sh\necho ran\n".to_vec(), 0o755),
                ],
                Compression::Gzip,
            ),
            layer(
                &[
                    Entry::Dir("share"),
                    Entry::File("share/hello.txt", b"from the data image\n".to_vec(), 0o644),
                ],
                Compression::Gzip,
            ),
        ],
        serde_json::json!({}),
    );
    env.registry.push_image("voldata", "1", &data);
    let single = image_with_config(
        vec![layer(
            &[Entry::File("one.txt", b"single layer\n".to_vec(), 0o644)],
            Compression::Zstd,
        )],
        serde_json::json!({}),
    );
    env.registry.push_image("volone", "1", &single);
    let data_ref = format!("{}/voldata:1", env.registry.addr);
    let single_ref = format!("{}/volone:1", env.registry.addr);
    pull(&env, &data_ref).await;
    pull(&env, &single_ref).await;
    let data_id = image_id(&env, &data_ref).await.expect("data image");
    let single_id = image_id(&env, &single_ref).await.expect("single image");
    let busybox_id = image_id(&env, &busybox).await.expect("busybox");

    let mut rt = env.daemon.runtime().await;
    let uid = "uid-imgvol";
    let pod = pod("imgvol", uid);
    let _logs = LogDir(Path::new(&pod.log_directory).to_path_buf());
    let pod_id = run_pod(&env, &mut rt, &pod).await;

    // As kubelet sends it: the image id, and the name from the pod spec.
    let mut c = container("app", &busybox_id, &["/bin/busybox", "sleep", "1000"]);
    c.image.as_mut().unwrap().user_specified_image = "my/busybox:1.0".into();
    c.mounts = vec![
        image_mount("/vol", &data_id),
        image_mount("/one", &single_id),
    ];
    let id = run(&env, &mut rt, &pod_id, &pod, c.clone()).await;
    let (code, out, err) = exec(&mut rt, &id, &sh("cat /vol/share/hello.txt")).await;
    assert_eq!((code, out.as_str()), (0, "from the data image\n"), "{err}");
    let (code, out, _) = exec(&mut rt, &id, &sh("cat /one/one.txt")).await;
    assert_eq!((code, out.as_str()), (0, "single layer\n"));
    // Read-only, files and directories alike; executable (no `noexec`:
    // the CRI mount carries no such request, and containerd sets none).
    for target in ["/vol/share/hello.txt", "/vol/new", "/one/new"] {
        let touch = ["/bin/busybox", "touch", target];
        let (code, _, err) = exec(&mut rt, &id, &touch).await;
        assert_ne!(code, 0, "{target} is writable");
        assert!(err.contains("Read-only file system"), "{target}: {err}");
    }
    // Private on the host: the mount points' directory, and what covers
    // a single layer's missing second one.
    let base = env
        .dir
        .join("state/containers")
        .join(&id)
        .join("bundle/image-mounts");
    for d in [base.clone(), base.join("empty")] {
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&d).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o700, "{}", d.display());
    }
    // The container's view has the host mount's flags.
    let (code, out, _) = exec(&mut rt, &id, &sh("grep ' /vol ' /proc/self/mountinfo")).await;
    assert_eq!(code, 0);
    let flags: Vec<&str> = out.split(' ').nth(5).unwrap_or("").split(',').collect();
    for flag in ["ro", "nosuid", "nodev"] {
        assert!(flags.contains(&flag), "{flag} missing: {out}");
    }
    let (code, out, err) = exec(&mut rt, &id, &sh("/vol/share/tool")).await;
    assert_eq!((code, out.as_str()), (0, "ran\n"), "{err}");

    // The name the user asked for, in the status and the annotation.
    let status = status_of(&mut rt, &id).await;
    let image = status.image.clone().unwrap();
    assert_eq!(image.image, "my/busybox:1.0");
    assert_eq!(image.user_specified_image, "my/busybox:1.0");
    assert_eq!(status.image_id, busybox_id);
    assert!(
        status
            .image_ref
            .starts_with(&format!("{}/busybox@sha256:", env.registry.addr)),
        "{}",
        status.image_ref
    );
    let bundle = env
        .dir
        .join("state/containers")
        .join(&id)
        .join("bundle/config.json");
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    assert_eq!(
        spec["annotations"]["io.kubernetes.cri.image-name"],
        "my/busybox:1.0"
    );

    // Refused requests leave nothing mounted.
    let mounted = mounts_below(&env.dir.join("state/containers"));
    let mut absent = container("absent", &busybox_id, &["/bin/busybox", "true"]);
    absent.mounts = vec![image_mount("/vol", &format!("sha256:{}", "0".repeat(64)))];
    let e = create(&mut rt, &pod_id, &pod, absent).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(
        e.message().contains("config.mounts[0].image.image"),
        "{e:?}"
    );
    let mut writable = container("writable", &busybox_id, &["/bin/busybox", "true"]);
    writable.mounts = vec![Mount {
        readonly: false,
        ..image_mount("/vol", &data_id)
    }];
    let e = create(&mut rt, &pod_id, &pod, writable).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("config.mounts[0].readonly"), "{e:?}");
    // A create that fails after mounting (runc cannot start the command)
    // rolls the mounts back.
    let mut failing = container("failing", &busybox_id, &["/no/such/command"]);
    failing.mounts = vec![image_mount("/vol", &data_id)];
    let e = create(&mut rt, &pod_id, &pod, failing).await.unwrap_err();
    assert!(e.message().contains("/no/such/command"), "{e:?}");
    assert_eq!(mounts_below(&env.dir.join("state/containers")), mounted);

    // RemoveImage succeeds while the image is mounted (as in containerd:
    // the image goes, its layers stay for the container).
    let before = snapshots(&env);
    env.daemon
        .images()
        .await
        .remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: data_id.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("RemoveImage of an image in use");
    assert_eq!(image_id(&env, &data_ref).await, None);
    assert_eq!(snapshots(&env), before, "layers of a mounted image kept");
    let (code, out, _) = exec(&mut rt, &id, &sh("cat /vol/share/hello.txt")).await;
    assert_eq!((code, out.as_str()), (0, "from the data image\n"));

    // A restart of criusd changes nothing; the status keeps the name.
    env.daemon.signal_and_wait(libc::SIGKILL);
    drop(rt);
    env.daemon.restart();
    let mut rt = env.daemon.runtime().await;
    let (code, out, _) = exec(&mut rt, &id, &sh("cat /vol/share/hello.txt")).await;
    assert_eq!((code, out.as_str()), (0, "from the data image\n"));
    assert_eq!(
        status_of(&mut rt, &id).await.image.unwrap().image,
        "my/busybox:1.0"
    );

    // RemoveContainer unmounts both volumes and lets the removed image's
    // two layers go.
    rt.remove_container(RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    let left = mounts_below(&env.dir.join("state/containers").join(&id));
    assert!(left.is_empty(), "mounts left: {left:?}");
    assert_eq!(
        snapshots(&env).len() + 2,
        before.len(),
        "the removed image's layers are collected"
    );
    // The single-layer image is still present and mounts again, for a
    // container the pod's removal takes away.
    let mut again = container("again", &busybox_id, &["/bin/busybox", "sleep", "1000"]);
    again.mounts = vec![image_mount("/one", &single_id)];
    let id = run(&env, &mut rt, &pod_id, &pod, again).await;
    let (code, out, _) = exec(&mut rt, &id, &sh("cat /one/one.txt")).await;
    assert_eq!((code, out.as_str()), (0, "single layer\n"));
    teardown(&env, &mut rt, &pod_id, uid).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn image_volume_directories_start_with_the_image_content() {
    if !is_root() {
        eprintln!("containers_image_volumes: skipped (needs root)");
        return;
    }
    let _serial = SERIAL.lock().await;
    let env = Env::start("crius-imgvolcopy");
    let image = image_with_config(
        vec![
            layer(&busybox_entries(), Compression::Gzip),
            layer(
                &[
                    Entry::Dir("var"),
                    Entry::Dir("var/lib"),
                    Entry::DirOwned("var/lib/app", 0o770, 999, 998),
                    Entry::FileOwned("var/lib/app/seed", b"seeded\n".to_vec(), 0o640, 1234, 5678),
                    Entry::Dir("var/lib/app/sub"),
                    Entry::File("var/lib/app/sub/deep", b"deep\n".to_vec(), 0o600),
                    Entry::Symlink("var/lib/app/hostetc", "/etc"),
                    Entry::Hardlink("var/lib/app/seed2", "var/lib/app/seed"),
                ],
                Compression::Gzip,
            ),
        ],
        serde_json::json!({
            "Env": ["PATH=/bin"],
            "Cmd": ["/bin/sh"],
            "Volumes": {"/var/lib/app": {}, "/empty": {}},
        }),
    );
    env.registry.push_image("withvolume", "1", &image);
    let image_ref = format!("{}/withvolume:1", env.registry.addr);
    pull(&env, &image_ref).await;
    let mut rt = env.daemon.runtime().await;
    let uid = "uid-imgvolcopy";
    let pod = pod("imgvolcopy", uid);
    let _logs = LogDir(Path::new(&pod.log_directory).to_path_buf());
    let pod_id = run_pod(&env, &mut rt, &pod).await;
    let id = run(
        &env,
        &mut rt,
        &pod_id,
        &pod,
        container("app", &image_ref, &["/bin/busybox", "sleep", "1000"]),
    )
    .await;
    // The volume is a mount of its own (the container's volume directory)
    // with the image's content, owners and modes.
    let (code, out, err) = exec(
        &mut rt,
        &id,
        &sh("grep -c ' /var/lib/app ' /proc/self/mountinfo"),
    )
    .await;
    assert_eq!((code, out.trim()), (0, "1"), "{err}");
    let (code, out, err) = exec(
        &mut rt,
        &id,
        &sh("stat -c '%n %u:%g %a' /var/lib/app /var/lib/app/seed /var/lib/app/sub/deep && cat /var/lib/app/seed /var/lib/app/sub/deep && readlink /var/lib/app/hostetc"),
    )
    .await;
    assert_eq!(
        (code, out.as_str()),
        (
            0,
            "/var/lib/app 999:998 770\n/var/lib/app/seed 1234:5678 640\n/var/lib/app/sub/deep 0:0 600\nseeded\ndeep\n/etc\n"
        ),
        "{err}"
    );
    // Writable, and a volume the image has no content for starts empty.
    let (code, out, err) = exec(
        &mut rt,
        &id,
        &sh("echo new > /var/lib/app/new && cat /var/lib/app/new && ls -A /empty | wc -l && [ /var/lib/app/seed -ef /var/lib/app/seed2 ] && echo linked"),
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "new\n0\nlinked\n"), "{err}");
    // The volume lives on the host, in the container's directory, not in
    // the image's layers.
    let vols = env.dir.join("root/containers").join(&id).join("volumes");
    let found: Vec<_> = std::fs::read_dir(&vols)
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("new").exists())
        .collect();
    assert_eq!(
        found.len(),
        1,
        "the written file is in one volume directory"
    );
    rt.remove_container(RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    assert!(!vols.exists());
    teardown(&env, &mut rt, &pod_id, uid).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn image_volumes_in_a_user_namespace_pod() {
    if !is_root() {
        eprintln!("containers_image_volumes: skipped (needs root)");
        return;
    }
    let _serial = SERIAL.lock().await;
    let mut env = Env::start("crius-imgvolns");
    let busybox = env.pull_busybox().await;
    let data = image_with_config(
        vec![layer(
            &[
                Entry::DirOwned("share", 0o750, 1000, 1000),
                Entry::FileOwned("share/hello.txt", b"mapped\n".to_vec(), 0o640, 1000, 1000),
            ],
            Compression::Gzip,
        )],
        serde_json::json!({}),
    );
    env.registry.push_image("volns", "1", &data);
    let data_ref = format!("{}/volns:1", env.registry.addr);
    pull(&env, &data_ref).await;
    let data_id = image_id(&env, &data_ref).await.expect("data image");
    let mut rt = env.daemon.runtime().await;
    let uid = "uid-imgvolns";
    let pod = userns_pod("imgvolns", uid, (0, 65536 * 43, 65536));
    let _logs = LogDir(Path::new(&pod.log_directory).to_path_buf());
    let pod_id = run_pod(&env, &mut rt, &pod).await;
    let mut c = container("app", &busybox, &["/bin/busybox", "sleep", "1000"]);
    c.mounts = vec![image_mount("/vol", &data_id)];
    let id = run(&env, &mut rt, &pod_id, &pod, c).await;
    // The image's owners as the image has them, inside the pod's user
    // namespace (host ids 65536 * 43 and up on disk: idmapped layers).
    let (code, out, err) = exec(
        &mut rt,
        &id,
        &sh("stat -c '%u:%g %a' /vol/share /vol/share/hello.txt && cat /vol/share/hello.txt && cat /proc/self/uid_map"),
    )
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        &lines[..3],
        ["1000:1000 750", "1000:1000 640", "mapped"],
        "{out}"
    );
    assert!(
        lines[3].split_whitespace().eq(["0", "2818048", "65536"]),
        "{out}"
    );
    let touch = ["/bin/busybox", "touch", "/vol/share/new"];
    let (code, _, err) = exec(&mut rt, &id, &touch).await;
    assert_ne!(code, 0);
    assert!(err.contains("Read-only file system"), "{err}");
    // criusd and the pod's shim die: after the restart the lost
    // container's mounts (the idmapped layers and the overlay) go with
    // the pod.
    assert!(!mounts_below(&env.dir.join("state/containers").join(&id)).is_empty());
    env.daemon.signal_and_wait(libc::SIGKILL);
    drop(rt);
    for pid in shim_pids(&env.dir) {
        // SAFETY: kill(2) on a shim of this test, read from /proc.
        unsafe { libc::kill(pid.parse().unwrap(), libc::SIGKILL) };
    }
    wait_for("the shim to go", || shim_pids(&env.dir).is_empty()).await;
    env.daemon.restart();
    let mut rt = env.daemon.runtime().await;
    let status = status_of(&mut rt, &id).await;
    assert_eq!(
        status.state,
        k8s_cri::v1::ContainerState::ContainerExited as i32,
        "{status:?}"
    );
    teardown(&env, &mut rt, &pod_id, uid).await;
}
