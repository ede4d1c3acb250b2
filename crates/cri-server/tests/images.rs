//! The CRI ImageService against real registries: Debian's docker-registry on
//! 127.0.0.1 serving images built here from busybox-static, pulled by the
//! real criusd over its socket.

mod common;

use common::images::{list, pull, remove, spec, status};
use common::registry::{
    busybox_entries, chain_ids, docker_image, docker_list, image, index, is_root, layer,
    Compression, Entry, OverlayMount, Registry, TestImage, DOCKER_LIST, OCI_INDEX,
};
use common::Daemon;
use k8s_cri::v1::{
    AuthConfig, ImageFilter, ImageFsInfoRequest, ImageStatusRequest, ListImagesRequest,
};
use std::path::{Path, PathBuf};
use tonic::Code;

fn config_text(dir: &Path, pause: &str) -> String {
    format!(
        r#"
pause_image = "{pause}"
[registry]
config_path = "{dir}/certs.d"
[cni]
conf_dir = "{dir}/net.d"
bin_dirs = ["{dir}/cni-bin"]
"#,
        dir = dir.display()
    )
}

fn files_in(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            let mut v: Vec<String> = rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        }
        Err(_) => Vec::new(),
    }
}

struct Images {
    single: TestImage,
    multi: TestImage,
    zstd: TestImage,
    user: TestImage,
    arm64: TestImage,
}

fn build_images() -> Images {
    let base = || layer(&busybox_entries(), Compression::Gzip);
    let top = layer(
        &[
            Entry::Dir("etc"),
            Entry::File("etc/.wh.removed.txt", Vec::new(), 0o644),
            Entry::File("etc/added", b"added\n".to_vec(), 0o644),
            Entry::Dir("data"),
            Entry::File("data/.wh..wh..opq", Vec::new(), 0o644),
            Entry::File("data/new", b"new".to_vec(), 0o600),
        ],
        Compression::Gzip,
    );
    let mut zentries = busybox_entries();
    zentries.push(Entry::File("zstd-marker", b"zstd".to_vec(), 0o644));
    let mut aentries = busybox_entries();
    aentries.push(Entry::File("arch", b"arm64".to_vec(), 0o644));
    Images {
        single: image(vec![base()], "amd64", ""),
        multi: image(vec![base(), top], "amd64", "daemon"),
        zstd: image(vec![layer(&zentries, Compression::Zstd)], "amd64", ""),
        user: image(vec![base()], "amd64", "1234:1234"),
        arm64: image(vec![layer(&aentries, Compression::Gzip)], "arm64", ""),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_status_list_remove_and_restart() {
    if !is_root() {
        eprintln!("skipping pull_status_list_remove_and_restart: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let reg = Registry::start(&dir.join("registry"), None);
    let host = reg.addr.clone();
    let imgs = build_images();
    let (single_m, single_c) = reg.push_image("test/busybox", "single", &imgs.single);
    // Two tags of one image.
    reg.push_image("test/busybox", "other-tag", &imgs.single);
    let (_, multi_c) = reg.push_image("test/multi", "v1", &imgs.multi);
    let (_, zstd_c) = reg.push_image("test/zstd", "v1", &imgs.zstd);
    let (_, user_c) = reg.push_image("test/user", "v1", &imgs.user);
    // A multi-arch index: the arm64 image first, so order does not decide.
    reg.push_image("test/multiarch", "arm64-only", &imgs.arm64);
    reg.push_image("test/multiarch", "amd64-only", &imgs.zstd);
    let idx = index(&[(&imgs.arm64, "arm64"), (&imgs.zstd, "amd64")]);
    let index_digest = reg.push_manifest("test/multiarch", "v1", OCI_INDEX, &idx);

    let pause = format!("{host}/test/user:v1");
    let mut daemon = Daemon::start(dir, &config_text(dir, &pause));
    let mut c = daemon.images().await;

    // Pull by tag.
    let single_ref = format!("{host}/test/busybox:single");
    let id = pull(&mut c, &single_ref, None).await.unwrap();
    assert_eq!(id, single_c, "PullImage returns the config digest");
    let img = status(&mut c, &single_ref)
        .await
        .expect("pulled image has a status");
    assert_eq!(img.id, single_c);
    assert_eq!(img.repo_tags, vec![single_ref.clone()]);
    assert_eq!(
        img.repo_digests,
        vec![format!("{host}/test/busybox@{single_m}")]
    );
    let want_size =
        imgs.single.manifest.len() + imgs.single.config.len() + imgs.single.layers[0].blob.len();
    assert_eq!(img.size, want_size as u64);
    assert!(!img.pinned);
    assert_eq!(img.uid, None);
    assert_eq!(img.username, "");
    // Verbose status carries the image config.
    let verbose = c
        .image_status(ImageStatusRequest {
            image: spec(&single_c),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    assert_eq!(info["imageSpec"]["config"]["Cmd"][0], "/bin/sh");
    // The same image by its other tag and by digest.
    let other_ref = format!("{host}/test/busybox:other-tag");
    assert_eq!(pull(&mut c, &other_ref, None).await.unwrap(), single_c);
    let by_digest = format!("{host}/test/busybox@{single_m}");
    assert_eq!(pull(&mut c, &by_digest, None).await.unwrap(), single_c);
    let img = status(&mut c, &by_digest).await.unwrap();
    assert_eq!(img.repo_tags, vec![single_ref.clone(), other_ref.clone()]);
    assert_eq!(img.repo_digests.len(), 1, "{img:?}");

    // Unpacked layer: content, modes, symlinks and hardlinks preserved.
    let images_dir = dir.join("root/images");
    let base_chain = chain_ids(&[&imgs.single.layers[0].diff_id]);
    let base_fs = images_dir
        .join("snapshots")
        .join(base_chain[0].trim_start_matches("sha256:"))
        .join("fs");
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let bb = std::fs::metadata(base_fs.join("bin/busybox")).unwrap();
        assert_eq!(bb.permissions().mode() & 0o7777, 0o755);
        assert_eq!(bb.mtime(), 1_700_000_000);
        assert_eq!(
            std::fs::read(base_fs.join("bin/busybox")).unwrap(),
            std::fs::read("/bin/busybox").unwrap()
        );
        assert_eq!(
            std::fs::metadata(base_fs.join("bin/ls")).unwrap().ino(),
            bb.ino(),
            "hardlink kept"
        );
        assert_eq!(
            std::fs::read_link(base_fs.join("bin/sh")).unwrap(),
            PathBuf::from("busybox")
        );
    }

    // Multi-layer image with whiteouts and an opaque dir, seen through overlay.
    let multi_ref = format!("{host}/test/multi:v1");
    assert_eq!(pull(&mut c, &multi_ref, None).await.unwrap(), multi_c);
    let img = status(&mut c, &multi_ref).await.unwrap();
    assert_eq!(img.username, "daemon");
    assert_eq!(img.uid, None);
    let chain = chain_ids(&[&imgs.multi.layers[0].diff_id, &imgs.multi.layers[1].diff_id]);
    assert_eq!(
        chain[0], base_chain[0],
        "the shared base layer is one snapshot"
    );
    let lower: Vec<PathBuf> = chain
        .iter()
        .rev()
        .map(|c| {
            images_dir
                .join("snapshots")
                .join(c.trim_start_matches("sha256:"))
                .join("fs")
        })
        .collect();
    {
        let m = OverlayMount::new(&lower, &dir.join("mnt-multi"));
        let root = &m.target;
        assert!(root.join("bin/busybox").is_file());
        assert!(
            !root.join("etc/removed.txt").exists(),
            "whiteout hides the file"
        );
        assert_eq!(std::fs::read(root.join("etc/added")).unwrap(), b"added\n");
        assert_eq!(std::fs::read(root.join("etc/passwd")).unwrap().len(), 30);
        assert_eq!(
            files_in(&root.join("data")),
            vec!["new"],
            "opaque dir hides old entries"
        );
        // Run the image's busybox from the assembled tree.
        let out = std::process::Command::new(root.join("bin/busybox"))
            .args(["cat", root.join("data/new").to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.stdout, b"new");
    }

    // zstd layer.
    let zstd_ref = format!("{host}/test/zstd:v1");
    assert_eq!(pull(&mut c, &zstd_ref, None).await.unwrap(), zstd_c);
    let zchain = chain_ids(&[&imgs.zstd.layers[0].diff_id]);
    assert_eq!(
        std::fs::read(
            images_dir
                .join("snapshots")
                .join(zchain[0].trim_start_matches("sha256:"))
                .join("fs/zstd-marker")
        )
        .unwrap(),
        b"zstd"
    );

    // Multi-arch index resolves to this machine's platform (amd64 here).
    let ma_ref = format!("{host}/test/multiarch:v1");
    let ma_id = pull(&mut c, &ma_ref, None).await.unwrap();
    let want = if cfg!(target_arch = "aarch64") {
        imgs.arm64.config_digest.clone()
    } else {
        imgs.zstd.config_digest.clone()
    };
    assert_eq!(ma_id, want);
    let img = status(&mut c, &ma_ref).await.unwrap();
    assert!(
        img.repo_digests
            .contains(&format!("{host}/test/multiarch@{index_digest}")),
        "repo digest is the index digest: {img:?}"
    );

    // User set; this one is also the configured pause image, so pinned.
    let user_ref = format!("{host}/test/user:v1");
    assert_eq!(pull(&mut c, &user_ref, None).await.unwrap(), user_c);
    let img = status(&mut c, &user_ref).await.unwrap();
    assert_eq!(img.uid.map(|u| u.value), Some(1234));
    assert!(img.pinned);

    // Two concurrent pulls of one image share the download and both succeed.
    let mut c2 = daemon.images().await;
    let (a, b) = tokio::join!(
        pull(&mut c, &multi_ref, None),
        pull(&mut c2, &multi_ref, None)
    );
    assert_eq!(a.unwrap(), multi_c);
    assert_eq!(b.unwrap(), multi_c);

    // Listing, with and without a filter.
    let all = list(&mut c).await;
    let mut ids: Vec<String> = all.iter().map(|i| i.id.clone()).collect();
    ids.sort();
    let mut want_ids = vec![
        single_c.clone(),
        multi_c.clone(),
        zstd_c.clone(),
        user_c.clone(),
    ];
    want_ids.sort();
    want_ids.dedup();
    assert_eq!(ids, want_ids);
    let filtered = c
        .list_images(ListImagesRequest {
            filter: Some(ImageFilter {
                image: spec(&multi_ref),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0].id, multi_c);

    // Image filesystem usage: measured in the background, again right
    // after a pull.
    let busybox_len = std::fs::metadata("/bin/busybox").unwrap().len();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let fs = loop {
        let fs = c
            .image_fs_info(ImageFsInfoRequest {})
            .await
            .unwrap()
            .into_inner();
        let used = fs.image_filesystems[0]
            .used_bytes
            .as_ref()
            .map_or(0, |v| v.value);
        if used > busybox_len || std::time::Instant::now() > deadline {
            break fs;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let usage = &fs.image_filesystems[0];
    assert_eq!(
        usage.fs_id.as_ref().unwrap().mountpoint,
        images_dir.display().to_string()
    );
    assert!(usage.used_bytes.as_ref().unwrap().value > busybox_len);
    assert!(usage.inodes_used.as_ref().unwrap().value > 10);

    // Absent image: empty status, not an error; invalid reference: error.
    assert!(status(&mut c, &format!("{host}/test/none:x"))
        .await
        .is_none());
    let err = c
        .image_status(ImageStatusRequest {
            image: spec("Not/A/Valid:Ref"),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("image.image"), "{err:?}");

    // Restart: images are still there.
    daemon.signal_and_wait(libc::SIGTERM);
    let daemon = Daemon::start(dir, &config_text(dir, &pause));
    let mut c = daemon.images().await;
    let mut after: Vec<String> = list(&mut c).await.iter().map(|i| i.id.clone()).collect();
    after.sort();
    assert_eq!(after, want_ids);
    let img = status(&mut c, &single_ref).await.unwrap();
    assert_eq!(img.repo_tags, vec![single_ref.clone(), other_ref.clone()]);

    // Removal: one tag of two keeps the image; the last tag removes it.
    remove(&mut c, &other_ref).await;
    let img = status(&mut c, &single_c).await.expect("still there");
    assert_eq!(img.repo_tags, vec![single_ref.clone()]);
    remove(&mut c, &single_ref).await;
    assert!(status(&mut c, &single_c).await.is_none());
    // Removing an absent image succeeds.
    remove(&mut c, &single_ref).await;
    // The base layer is still used by the multi-layer image.
    assert!(base_fs.is_dir());
    let blob_dir = images_dir.join("content/sha256");
    let single_manifest_hex = single_m.trim_start_matches("sha256:").to_string();
    assert!(!files_in(&blob_dir).contains(&single_manifest_hex));
    // By digest and by id.
    let user_digest = status(&mut c, &user_ref).await.unwrap().repo_digests[0].clone();
    remove(&mut c, &user_digest).await;
    assert!(status(&mut c, &user_c).await.is_none());
    assert!(
        base_fs.is_dir(),
        "base layer still used by the multi-layer image"
    );
    remove(&mut c, &multi_c).await;
    assert!(!base_fs.exists(), "base layer no longer used");
    // The zstd image carries two tags (its own and the multi-arch one):
    // removal by id drops both.
    remove(&mut c, &zstd_c).await;
    assert!(list(&mut c).await.is_empty());
    assert!(files_in(&blob_dir).is_empty(), "{:?}", files_in(&blob_dir));
    assert!(files_in(&images_dir.join("snapshots")).is_empty());
    drop(reg);
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_mirror_and_failures() {
    if !is_root() {
        eprintln!("skipping auth_mirror_and_failures: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let reg = Registry::start(&dir.join("registry"), None);
    let secure = Registry::start(&dir.join("secure"), Some(("alice", "s3cret")));
    let host = reg.addr.clone();
    let imgs = build_images();
    let (_, single_c) = reg.push_image("test/busybox", "single", &imgs.single);
    let (_, zstd_c) = secure.push_image("private/zstd", "v1", &imgs.zstd);
    let (_, multi_c) = reg.push_image("test/corrupt", "v1", &imgs.multi);
    // Docker schema 2 manifests in a Docker manifest list.
    let mut arm_entries = busybox_entries();
    arm_entries.push(Entry::File("arch", b"arm64".to_vec(), 0o644));
    let docker_amd64 = docker_image(vec![layer(&busybox_entries(), Compression::Gzip)], "amd64");
    let docker_arm64 = docker_image(vec![layer(&arm_entries, Compression::Gzip)], "arm64");
    reg.push_image("test/docker", "arm64", &docker_arm64);
    reg.push_image("test/docker", "amd64", &docker_amd64);
    let manifest_list = docker_list(&[(&docker_arm64, "arm64"), (&docker_amd64, "amd64")]);
    let list_digest = reg.push_manifest("test/docker", "list", DOCKER_LIST, &manifest_list);
    reg.corrupt_blob(&common::registry::sha256(&imgs.multi.layers[1].blob));

    // A mirror for a registry that does not exist: the mirror serves it, the
    // upstream (a closed port) is never needed.
    let certs = dir.join("certs.d/mirror.invalid");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(
        certs.join("hosts.toml"),
        format!(
            "server = \"http://127.0.0.1:1\"\n\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        ),
    )
    .unwrap();

    let daemon = Daemon::start(dir, &config_text(dir, "registry.k8s.io/pause:3.10"));
    let mut c = daemon.images().await;

    let mirrored = "mirror.invalid/test/busybox:single";
    assert_eq!(pull(&mut c, mirrored, None).await.unwrap(), single_c);
    let img = status(&mut c, mirrored).await.unwrap();
    assert_eq!(img.repo_tags, vec![mirrored.to_string()]);

    // Docker manifest list and schema 2 manifest.
    let docker_ref = format!("{host}/test/docker:list");
    let want = if cfg!(target_arch = "aarch64") {
        &docker_arm64.config_digest
    } else {
        &docker_amd64.config_digest
    };
    assert_eq!(&pull(&mut c, &docker_ref, None).await.unwrap(), want);
    let img = status(&mut c, &docker_ref).await.unwrap();
    assert_eq!(
        img.repo_digests,
        vec![format!("{host}/test/docker@{list_digest}")]
    );
    let docker_single = format!("{host}/test/docker:amd64");
    assert_eq!(
        pull(&mut c, &docker_single, None).await.unwrap(),
        docker_amd64.config_digest
    );
    remove(&mut c, &docker_amd64.config_digest).await;
    remove(&mut c, &docker_arm64.config_digest).await;

    // Basic auth: refused without credentials, accepted with them, in both
    // the username/password and the `auth` form.
    let private = format!("{}/private/zstd:v1", secure.addr);
    let err = pull(&mut c, &private, None).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::Unauthenticated | Code::PermissionDenied),
        "{err:?}"
    );
    let wrong = AuthConfig {
        username: "alice".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = pull(&mut c, &private, Some(wrong)).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::Unauthenticated | Code::PermissionDenied),
        "{err:?}"
    );
    let good = AuthConfig {
        username: "alice".into(),
        password: "s3cret".into(),
        ..Default::default()
    };
    assert_eq!(pull(&mut c, &private, Some(good)).await.unwrap(), zstd_c);
    remove(&mut c, &private).await;
    use base64::Engine;
    let encoded = AuthConfig {
        auth: base64::engine::general_purpose::STANDARD.encode("alice:s3cret"),
        ..Default::default()
    };
    assert_eq!(pull(&mut c, &private, Some(encoded)).await.unwrap(), zstd_c);

    // Missing image: NotFound, saying what is missing.
    let err = pull(&mut c, &format!("{host}/test/nothing:here"), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("not found"), "{err:?}");

    // Invalid reference.
    let err = pull(&mut c, "UPPER/case", None).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("image.image"), "{err:?}");

    // Corrupted blob: the pull fails and stores nothing.
    let images_dir = dir.join("root/images");
    let blobs_before = files_in(&images_dir.join("content/sha256"));
    let snaps_before = files_in(&images_dir.join("snapshots"));
    let err = pull(&mut c, &format!("{host}/test/corrupt:v1"), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(err.message().contains("digest mismatch"), "{err:?}");
    assert!(status(&mut c, &multi_c).await.is_none());
    assert_eq!(files_in(&images_dir.join("content/sha256")), blobs_before);
    assert_eq!(files_in(&images_dir.join("snapshots")), snaps_before);
    assert!(files_in(&images_dir.join("content/ingest")).is_empty());
    let mut ids: Vec<String> = list(&mut c).await.into_iter().map(|i| i.id).collect();
    ids.sort();
    let mut want = vec![single_c, zstd_c];
    want.sort();
    assert_eq!(ids, want);
    drop((reg, secure));
}
