//! Private state: after a pod with containers ran (and an ExecSync wrote
//! its output), nothing under `root` and `state` is open to other users
//! beyond the policy (README, "Layout"), an unprivileged user can neither
//! list those directories nor open a file below them, and the rootfs
//! overlays on the host are nosuid,nodev where the policy says.

mod common;

use common::pod::*;
use common::registry::is_root;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The directories that may be more than 0700, with the reason.
fn allowed_dir_mode(rel: &Path) -> Option<u32> {
    let s = rel.to_string_lossy();
    let parts: Vec<&str> = s.split('/').collect();
    match parts.as_slice() {
        // The CRI socket (0660) is in `state`; its group must reach it.
        ["state"] => Some(0o711),
        // runc, in a user namespace pod, traverses to the bundle's rootfs.
        ["state", "sandboxes" | "containers"] => Some(0o711),
        // The container's `/` (a writable layer's root), a layer's root and
        // an image volume: the container's users need them; their parents
        // are private.
        ["root", "images", "containers", _, "upper"] => Some(0o755),
        ["root", "images", "snapshots", _, "fs"] => Some(0o755),
        // A removed layer waiting in the (private) trash to be deleted.
        ["root", "images", "trash", _, "fs"] => Some(0o755),
        ["root", "containers", _, "volumes", _] => Some(0o755),
        // The rootfs overlay's root (the upper dir's mode) on its mount
        // point, inside the private bundle.
        ["state", "sandboxes" | "containers", _, "bundle", "rootfs"] => Some(0o755),
        // The pod's /dev/shm tmpfs (mode=1777), below its private directory.
        ["state", "shim", _, _, "shm"] => Some(0o1777),
        _ => None,
    }
}

/// Subtrees not walked: container and image content (inside private
/// directories), and runc's own state (inside the private `state/runc`).
fn skip_below(rel: &Path) -> bool {
    let s = rel.to_string_lossy();
    let parts: Vec<&str> = s.split('/').collect();
    matches!(
        parts.as_slice(),
        ["root", "images", "containers", _, "upper" | "work"]
            | ["root", "images", "snapshots", _, "fs"]
            | ["root", "images", "trash", _, "fs"]
            | ["root", "containers", _, "volumes", _]
            | ["state", "runc", _, ..]
    )
}

/// Files that may be more than 0600, with the reason.
fn allowed_file_mode(rel: &Path, meta: &std::fs::Metadata) -> Option<u32> {
    let s = rel.to_string_lossy();
    let parts: Vec<&str> = s.split('/').collect();
    if meta.file_type().is_socket() && parts.as_slice() == ["state", "crius.sock"] {
        // The CRI socket: for its group.
        return Some(0o660);
    }
    match parts.as_slice() {
        // Bind-mounted into containers whose users must read them.
        ["root", "sandboxes", _, "hosts" | "resolv.conf" | "hostname"] => Some(0o644),
        // Namespace pins: files made 0444 by the netns code, an nsfs
        // mounted on them (its mode shows), inside a private directory.
        ["state", "shim", _, _, "netns" | "ipc" | "uts"] => Some(0o444),
        _ => None,
    }
}

fn walk(base: &Path, rel: PathBuf, dev: u64, offenders: &mut Vec<String>, seen: &mut usize) {
    let path = base.join(&rel);
    let Ok(meta) = std::fs::symlink_metadata(&path) else {
        return;
    };
    *seen += 1;
    let mode = meta.permissions().mode() & 0o7777;
    if meta.is_dir() {
        let allowed = allowed_dir_mode(&rel).unwrap_or(0o700);
        if mode & !allowed & 0o077 != 0 {
            offenders.push(format!(
                "dir {} {mode:o} (allowed {allowed:o})",
                rel.display()
            ));
        }
        // Mount points (the rootfs overlay, /dev/shm's tmpfs) are not ours.
        if meta.dev() != dev || skip_below(&rel) {
            return;
        }
        let Ok(entries) = std::fs::read_dir(&path) else {
            return;
        };
        for e in entries.flatten() {
            walk(base, rel.join(e.file_name()), dev, offenders, seen);
        }
    } else if !meta.file_type().is_symlink() {
        let allowed = allowed_file_mode(&rel, &meta).unwrap_or(0o600);
        if mode & !allowed & 0o077 != 0 {
            offenders.push(format!(
                "file {} {mode:o} (allowed {allowed:o})",
                rel.display()
            ));
        }
    }
}

/// Runs `sh -c script` as nobody (65534:65534, no groups); its exit status.
fn as_nobody(script: &str) -> (bool, String) {
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            "/bin/sh",
            "-c",
            script,
        ])
        .output()
        .expect("run setpriv");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The per-mount options of the mount at `target` (field 6 of mountinfo).
fn mount_options(target: &Path) -> Option<String> {
    let t = target.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(t.as_str()))
        .and_then(|l| l.split(' ').nth(5).map(String::from))
}

#[tokio::test(flavor = "multi_thread")]
async fn state_and_root_are_private() {
    if !is_root() {
        eprintln!("private_state: skipped (needs root)");
        return;
    }
    // With a pause container, whose overlay is checked too.
    let env = Env::start_with("crius-private", common::WITH_PAUSE);
    // The test's own directory must not be what keeps nobody out.
    std::fs::set_permissions(&env.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let image = env.pull_busybox().await;
    let mut rt = env.daemon.runtime().await;
    let uid = "uid-private";
    let mut pod_config = pod("private", uid);
    // A pod with a pause (its overlay is checked too).
    pod_security(&mut pod_config).namespace_options = Some(k8s_cri::v1::NamespaceOption {
        pid: k8s_cri::v1::NamespaceMode::Pod as i32,
        ..Default::default()
    });
    let _logs = LogDir(PathBuf::from(&pod_config.log_directory));
    let pod_id = run_pod(&env, &mut rt, &pod_config).await;
    // The pause runs as its image's user, in the pod's cgroup.
    let (_, info) = pod_status_info(&mut rt, &pod_id).await;
    let pause = info["pid"].as_u64().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pause}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65535")),
        "{status}"
    );
    let cgroup = std::fs::read_to_string(format!("/proc/{pause}/cgroup")).unwrap();
    assert!(
        cgroup.contains(&format!("/{}/pod{uid}/{pod_id}", cg_root())),
        "{cgroup}"
    );
    let plain = run(
        &env,
        &mut rt,
        &pod_id,
        &pod_config,
        container("plain", &image, &["/bin/busybox", "sleep", "4242"]),
    )
    .await;
    let mut nnp = container("nnp", &image, &["/bin/busybox", "sleep", "4343"]);
    security(&mut nnp).no_new_privs = true;
    let nnp = run(&env, &mut rt, &pod_id, &pod_config, nnp).await;
    let (code, out, _) = exec(&mut rt, &plain, &["/bin/busybox", "echo", "secret"]).await;
    assert_eq!((code, out.as_str()), (0, "secret\n"));
    // Something in /dev/shm, which nobody must not reach.
    let (code, _, _) = exec(&mut rt, &plain, &["/bin/sh", "-c", "echo x > /dev/shm/f"]).await;
    assert_eq!(code, 0);

    // 1. Modes.
    let mut offenders = Vec::new();
    let mut seen = 0;
    for top in ["root", "state"] {
        let dev = std::fs::metadata(env.dir.join(top)).unwrap().dev();
        walk(&env.dir, PathBuf::from(top), dev, &mut offenders, &mut seen);
    }
    assert!(seen > 40, "walked only {seen} entries");
    assert!(
        offenders.is_empty(),
        "open to group or others beyond the policy:\n{}",
        offenders.join("\n")
    );

    // 2. An unprivileged user can neither list nor open.
    let root = env.dir.join("root");
    let state = env.dir.join("state");
    let blob = std::fs::read_dir(root.join("images/content/sha256"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .next()
        .expect("a blob");
    let config_json = state
        .join("containers")
        .join(&plain)
        .join("bundle/config.json");
    assert!(config_json.is_file());
    let shm = state.join("shim/k8s.io").join(&pod_id).join("shm");
    assert!(shm.join("f").is_file());
    let rootfs_file = state
        .join("containers")
        .join(&plain)
        .join("bundle/rootfs/bin/busybox");
    assert!(rootfs_file.is_file());
    for d in [
        &root,
        &state,
        &state.join("containers"),
        &state.join("sandboxes"),
        &root.join("images"),
        &root.join("containers"),
    ] {
        let (ok, out) = as_nobody(&format!("ls '{}'", d.display()));
        assert!(!ok, "nobody can list {}: {out}", d.display());
    }
    for f in [&blob, &config_json, &rootfs_file, &shm.join("f")] {
        let (ok, out) = as_nobody(&format!("cat '{}' > /dev/null", f.display()));
        assert!(!ok, "nobody can read {}: {out}", f.display());
    }
    let (ok, out) = as_nobody(&format!("echo x > '{}'", shm.join("g").display()));
    assert!(!ok, "nobody can write the pod's /dev/shm: {out}");
    // The check itself works: nobody can read what is open to it.
    let (ok, out) = as_nobody("cat /etc/hostname > /dev/null || cat /etc/passwd > /dev/null");
    assert!(ok, "{out}");

    // 3. The rootfs overlays on the host.
    let pause_rootfs = state.join("sandboxes").join(&pod_id).join("bundle/rootfs");
    let rootfs = |id: &str| state.join("containers").join(id).join("bundle/rootfs");
    let flags = |p: &Path| {
        let o = mount_options(p).unwrap_or_else(|| panic!("{} is not mounted", p.display()));
        (
            o.split(',').any(|f| f == "nosuid"),
            o.split(',').any(|f| f == "nodev"),
        )
    };
    assert_eq!(flags(&pause_rootfs), (true, true), "pause");
    assert_eq!(flags(&rootfs(&nnp)), (true, true), "no_new_privs");
    // Setuid files keep working where privilege escalation is allowed.
    assert_eq!(flags(&rootfs(&plain)), (false, true), "plain");

    teardown(&env, &mut rt, &pod_id, uid).await;
}
