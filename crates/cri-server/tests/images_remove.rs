//! RemoveImage with the background deletion (issue 21): the image is gone
//! from the CRI at once, its layers and blobs are renamed into
//! `<root>/images/trash` and deleted in the background, ImageFsInfo (a
//! cached value) follows once they are, a pull of the same image meanwhile
//! works, and what a crash leaves in the trash is deleted at the next start.

mod common;

use common::images::{fs_used, list, pull, remove, status, wait_fs_used};
use common::registry::{image, is_root, layer, many_file_entries, Compression, Registry};
use common::Daemon;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Files in the test image's layer and their size.
const FILES: usize = 3000;
const FILE_SIZE: usize = 4096;

fn config_text(dir: &Path) -> String {
    format!(
        "[registry]\nconfig_path = \"{d}/certs.d\"\n[cni]\nconf_dir = \"{d}/net.d\"\nbin_dirs = [\"{d}/cni-bin\"]\n",
        d = dir.display()
    )
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

async fn wait_empty(dir: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !entries(dir).is_empty() {
        assert!(
            Instant::now() < deadline,
            "{what}: {:?} still in {}",
            entries(dir),
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A registry holding `test/many:v1`, one layer of [`FILES`] files.
fn registry_with_many(dir: &Path) -> (Registry, String, String) {
    let reg = Registry::start(&dir.join("registry"), None);
    let entries = many_file_entries(FILES, 500, |i| vec![(i % 251) as u8; FILE_SIZE]);
    let img = image(vec![layer(&entries, Compression::Gzip)], "amd64", "");
    let (_, config) = reg.push_image("test/many", "v1", &img);
    let reference = format!("{}/test/many:v1", reg.addr);
    (reg, reference, config)
}

/// A test's start (`None` when not root): a temporary directory holding
/// the registry of [`registry_with_many`] and criusd; (directory, registry,
/// reference, config digest, criusd).
fn start() -> Option<(tempfile::TempDir, Registry, String, String, Daemon)> {
    if !is_root() {
        eprintln!("skipping: needs root");
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (reg, reference, config) = registry_with_many(dir);
    let daemon = Daemon::start(dir, &config_text(dir));
    Some((tmp, reg, reference, config, daemon))
}

/// RemoveImage takes the image out of ListImages and ImageStatus at once
/// and leaves its layer in the trash only; ImageFsInfo drops back once the
/// background deletion is done. A pull of the same image right after the
/// removal, while the old layer is still being deleted, works and gets a
/// whole layer of its own.
#[tokio::test(flavor = "multi_thread")]
async fn remove_returns_at_once_and_usage_follows_the_background_delete() {
    let Some((tmp, _reg, reference, config, daemon)) = start() else {
        return;
    };
    let dir = tmp.path();
    let images = dir.join("root/images");
    let trash = images.join("trash");
    let mode = std::fs::metadata(&trash).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the trash is private");
    let mut c = daemon.images().await;
    // The empty image filesystem, measured.
    let (_, base) = wait_fs_used(
        &mut c,
        "the first measurement",
        Duration::from_secs(20),
        |b, _| b > 0,
    )
    .await;

    let layer_bytes = (FILES * FILE_SIZE) as u64;
    assert_eq!(pull(&mut c, &reference, None).await.unwrap(), config);
    // Counted soon after the pull (the layer's files and its blob).
    let (_, full) = wait_fs_used(
        &mut c,
        "the pulled image",
        Duration::from_secs(20),
        |b, i| b >= base.0 + layer_bytes && i >= base.1 + FILES as u64,
    )
    .await;
    let snapshots = entries(&images.join("snapshots"));
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");

    remove(&mut c, &reference).await;
    // Gone from the CRI at once, and from where its layer was.
    assert!(list(&mut c).await.iter().all(|i| i.id != config));
    assert!(status(&mut c, &reference).await.is_none());
    assert!(entries(&images.join("snapshots")).is_empty());
    // ImageFsInfo drops once the trash is emptied in the background.
    wait_fs_used(
        &mut c,
        "the removed image",
        Duration::from_secs(30),
        |b, i| b + layer_bytes <= full.0 && i + FILES as u64 <= full.1,
    )
    .await;
    wait_empty(&trash, "the background delete").await;

    // Pull, remove and pull again without waiting: the second pull works
    // while the first copy is deleted, with a whole layer of its own.
    assert_eq!(pull(&mut c, &reference, None).await.unwrap(), config);
    remove(&mut c, &reference).await;
    assert_eq!(pull(&mut c, &reference, None).await.unwrap(), config);
    assert!(status(&mut c, &reference).await.is_some());
    let snapshots = entries(&images.join("snapshots"));
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    let fs = images.join("snapshots").join(&snapshots[0]).join("fs");
    let files: usize = entries(&fs)
        .iter()
        .map(|d| entries(&fs.join(d)).len())
        .sum();
    assert_eq!(files, FILES, "the new layer is whole");
    wait_empty(&trash, "the second background delete").await;
    // And the usage is the image's once more.
    wait_fs_used(
        &mut c,
        "the pulled-again image",
        Duration::from_secs(20),
        |b, i| {
            b >= base.0 + layer_bytes && i >= base.1 + FILES as u64 && b <= full.0 + layer_bytes / 2
        },
    )
    .await;
}

/// What a crash leaves in the trash (made by hand here, and whatever a
/// SIGKILL right after RemoveImage left) is deleted at the next start,
/// without holding up start-up; the removed image stays removed.
#[tokio::test(flavor = "multi_thread")]
async fn the_trash_is_swept_at_start_up() {
    let Some((tmp, _reg, reference, config, mut daemon)) = start() else {
        return;
    };
    let dir = tmp.path();
    let images = dir.join("root/images");
    let trash = images.join("trash");
    let mut c = daemon.images().await;
    assert_eq!(pull(&mut c, &reference, None).await.unwrap(), config);
    remove(&mut c, &reference).await;
    // Killed at once: the delete may be anywhere.
    daemon.signal_and_wait(libc::SIGKILL);
    drop(c);
    // A crash's leftovers, by hand: a deep tree and a file.
    let mut deep = trash.join("snapshot-crashed-0/fs");
    for i in 0..20 {
        deep = deep.join(format!("level{i}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("file"), b"left over").unwrap();
    std::fs::write(trash.join("blob-crashed-1"), vec![1u8; 1 << 20]).unwrap();
    assert!(!entries(&trash).is_empty());

    daemon.restart();
    let mut c = daemon.images().await;
    wait_empty(&trash, "the start-up sweep").await;
    assert!(status(&mut c, &reference).await.is_none());
    assert!(list(&mut c).await.iter().all(|i| i.id != config));
    assert!(entries(&images.join("snapshots")).is_empty());
    // The usage no longer counts them (the file alone was 1 MiB).
    wait_fs_used(
        &mut c,
        "after the sweep",
        Duration::from_secs(20),
        |b, _| b < 1 << 20,
    )
    .await;
    assert!(fs_used(&mut c).await.0 > 0);
    // And the image can be pulled again.
    assert_eq!(pull(&mut c, &reference, None).await.unwrap(), config);
}
