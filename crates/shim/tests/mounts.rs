//! A task's mounts as the shim makes them from CreateTaskRequest.rootfs:
//! the idmapped rootfs overlay, idmapped binds and read-only overlays at
//! targets below the bundle, undone in reverse on a failure and all gone
//! after `unmount_task`; and the start-up probe.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crius_shim::mount::{mount_task, probe_idmap, unmount_task, MountSpec};
use crius_shim_api::idmap::{IdMaps, IdRange, MOUNT_DIRS};

const BASE: u32 = 3_100_000_000;

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounts need root");
        return false;
    }
    true
}

fn mounts_below(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(String::from))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect()
}

fn maps() -> IdMaps {
    let r = IdRange {
        container: 0,
        host: BASE,
        size: 65536,
    };
    IdMaps {
        uids: vec![r],
        gids: vec![r],
    }
}

fn spec(kind: &str, source: &str, options: Vec<String>, target: &str) -> MountSpec {
    MountSpec {
        kind: kind.into(),
        source: source.into(),
        options,
        target: target.into(),
    }
}

#[test]
fn idmapped_and_image_mounts_below_the_bundle() {
    if !root() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let p = |s: &str| d.path().join(s);
    for dir in ["lower", "upper", "work", "vol", "empty", "bundle"] {
        std::fs::create_dir(p(dir)).unwrap();
    }
    std::fs::write(p("lower/file"), "image").unwrap();
    std::fs::write(p("vol/data"), "volume").unwrap();
    std::fs::write(p("hosts"), "127.0.0.1 localhost\n").unwrap();
    let bundle = p("bundle");
    let with_maps = |mut o: Vec<String>| {
        o.extend(maps().options());
        o
    };
    let rootfs = spec(
        "overlay",
        "overlay",
        with_maps(vec![
            format!("lowerdir={}", p("lower").display()),
            format!("upperdir={}", p("upper").display()),
            format!("workdir={}", p("work").display()),
        ]),
        "",
    );
    let vol = spec(
        "bind",
        p("vol").to_str().unwrap(),
        with_maps(vec!["rbind".into()]),
        "idmap/m1",
    );
    let hosts = spec(
        "bind",
        p("hosts").to_str().unwrap(),
        with_maps(vec![]),
        "idmap/m2",
    );
    let image = spec(
        "overlay",
        "overlay",
        vec![
            "ro".into(),
            "nosuid".into(),
            "nodev".into(),
            format!("lowerdir={}:{}", p("lower").display(), p("empty").display()),
        ],
        "image-mounts/0",
    );
    let all = [vol, hosts, rootfs, image];
    assert!(mount_task(&all, &bundle).unwrap());
    let owner = |q: &Path| {
        let m = std::fs::metadata(q).unwrap();
        (m.uid(), m.gid())
    };
    // The host root's files show as the mapped root's through the
    // idmapped mounts; the upper layer's root is the mapped root's.
    assert_eq!(owner(&bundle.join("rootfs/file")), (BASE, BASE));
    assert_eq!(owner(&bundle.join("idmap/m1/data")), (BASE, BASE));
    assert_eq!(owner(&bundle.join("idmap/m2")), (BASE, BASE));
    assert_eq!(owner(&p("upper")), (BASE, BASE));
    assert_eq!(
        std::fs::read_to_string(bundle.join("idmap/m2")).unwrap(),
        "127.0.0.1 localhost\n"
    );
    // The read-only image is the image's own ids, and read-only.
    assert_eq!(owner(&bundle.join("image-mounts/0/file")), (0, 0));
    let e = std::fs::write(bundle.join("image-mounts/0/new"), "x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    // runc, as the pod's root, traverses to the idmapped binds.
    let mode = std::fs::metadata(bundle.join("idmap"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o711);
    // 2 binds + 1 staged layer + the rootfs overlay + the image overlay.
    assert_eq!(
        mounts_below(&bundle).len(),
        5,
        "{:?}",
        mounts_below(&bundle)
    );

    unmount_task(&bundle).unwrap();
    assert!(mounts_below(&bundle).is_empty());
    for dir in MOUNT_DIRS {
        assert!(!bundle.join(dir).exists(), "{dir}");
    }
    // Nothing of the sources went with them.
    assert_eq!(std::fs::read_to_string(p("vol/data")).unwrap(), "volume");
    assert_eq!(std::fs::read_to_string(p("lower/file")).unwrap(), "image");
    // Idempotent.
    unmount_task(&bundle).unwrap();
}

#[test]
fn a_failure_undoes_what_was_made() {
    if !root() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let p = |s: &str| d.path().join(s);
    for dir in ["vol", "bundle"] {
        std::fs::create_dir(p(dir)).unwrap();
    }
    let bundle = p("bundle");
    let mut opts = vec!["rbind".to_string()];
    opts.extend(maps().options());
    let good = spec("bind", p("vol").to_str().unwrap(), opts.clone(), "idmap/m0");
    // (the failing last mount, what the error says)
    let cases = [
        (
            spec(
                "bind",
                p("vol").to_str().unwrap(),
                opts.clone(),
                "../escape",
            ),
            "only plain names",
        ),
        (
            spec("bind", p("vol").to_str().unwrap(), opts.clone(), "/abs"),
            "not relative",
        ),
        (
            spec(
                "bind",
                p("vol").to_str().unwrap(),
                opts.clone(),
                "layers/0/l0",
            ),
            "not in one of",
        ),
        (
            spec(
                "bind",
                p("missing").to_str().unwrap(),
                opts.clone(),
                "idmap/m1",
            ),
            "missing",
        ),
        (
            spec("tmpfs", "tmpfs", opts.clone(), "idmap/m1"),
            "bind or overlay only",
        ),
        (
            spec(
                "bind",
                p("vol").to_str().unwrap(),
                vec!["uidmap=0:1:1".into()],
                "idmap/m1",
            ),
            "go together",
        ),
    ];
    for (bad, want) in cases {
        let e = mount_task(&[good.clone(), bad], &bundle).unwrap_err();
        assert!(e.to_string().contains(want), "{e}");
        assert!(mounts_below(&bundle).is_empty(), "{want}");
    }
    assert!(!p("escape").exists());
}

#[test]
fn unmounting_a_task_touches_nothing_else() {
    if !root() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let other = d.path().join("bundle/other");
    std::fs::create_dir_all(&other).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &other,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=64k"),
    )
    .unwrap();
    unmount_task(&d.path().join("bundle")).unwrap();
    let left = mounts_below(d.path());
    nix::mount::umount2(&other, nix::mount::MntFlags::MNT_DETACH).unwrap();
    assert_eq!(left, vec![other.display().to_string()]);
}

#[test]
fn the_probe_passes_and_leaves_nothing() {
    if !root() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("probe");
    probe_idmap(&dir).unwrap();
    assert!(!dir.exists());
    assert!(mounts_below(d.path()).is_empty());
}
