//! Pod user namespaces on the host: the start-up probe, user namespace
//! file descriptors, idmapped mounts and their clean-up.
//!
//! The OCI runtime here (runc 1.1) can put a container into a user
//! namespace but cannot make idmapped mounts, so criusd makes them itself
//! (`open_tree(OPEN_TREE_CLONE)` + `mount_setattr(MOUNT_ATTR_IDMAP)` +
//! `move_mount`). overlayfs cannot be idmapped itself but can be made of
//! idmapped layers: each image layer of the container's rootfs is bound
//! idmapped under the container's state directory (`idmap/...`) and the
//! overlay, made here on the bundle's `rootfs` (the shim then gets no
//! rootfs mounts to make), stacks those; its upper layer belongs to the
//! pod's root. The sources of the container's bind mounts (volumes, the
//! pod's hosts/resolv.conf/hostname, /dev/shm) are staged idmapped under
//! `idmap/m<n>`, where the spec then points. Every one of these mounts lies
//! below the container's (or pod's) state directory, and [`unmount_below`]
//! removes them all on remove and on every rollback, before any directory
//! is deleted.

use crate::errors::CriError;
use crius_spec::userns::Mappings;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))
}

fn check(r: libc::c_long, what: &str, path: &Path) -> io::Result<libc::c_long> {
    if r < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(
            e.kind(),
            format!("{what} {}: {e}", path.display()),
        ))
    } else {
        Ok(r)
    }
}

/// A detached copy of the mount at `path` (recursive: with its submounts).
fn clone_tree(path: &Path, recursive: bool) -> io::Result<OwnedFd> {
    let c = cpath(path)?;
    let flags = OPEN_TREE_CLONE
        | libc::O_CLOEXEC as libc::c_uint
        | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: open_tree(2) with a valid NUL-terminated path; the result is
    // a new file descriptor that we own.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    let fd = check(fd, "open_tree", path)?;
    // SAFETY: fd is a fresh descriptor returned by the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Makes the detached mount `tree` idmapped with the mappings of `userns`.
fn set_idmap(
    tree: BorrowedFd<'_>,
    userns: BorrowedFd<'_>,
    recursive: bool,
    what: &Path,
) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let empty = c"";
    let flags = libc::AT_EMPTY_PATH as libc::c_uint | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: mount_setattr(2) on a descriptor we hold, with a properly
    // sized, initialised struct mount_attr.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(r, "mount_setattr(MOUNT_ATTR_IDMAP)", what).map(|_| ())
}

/// Attaches the detached mount `tree` on `target`.
fn attach(tree: BorrowedFd<'_>, target: &Path) -> io::Result<()> {
    let c = cpath(target)?;
    let empty = c"";
    // SAFETY: move_mount(2) from a descriptor we hold to a valid path.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check(r, "move_mount", target).map(|_| ())
}

/// A child in new namespaces (`flags`: CLONE_NEWUSER, maybe more), its
/// uid/gid maps written. The caller kills it once it has what it needs.
fn ns_holder(maps: &Mappings, flags: libc::c_int) -> io::Result<std::process::Child> {
    let sleep = ["/bin/sleep", "/usr/bin/sleep"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("sleep");
    let mut cmd = std::process::Command::new(sleep);
    cmd.arg("60")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: the closure only calls unshare(2), which is async-signal-safe.
    // With CLONE_NEWUSER the user namespace is made first and owns the
    // other new namespaces.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(flags) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let proc = PathBuf::from(format!("/proc/{}", child.id()));
    let written = std::fs::write(proc.join("uid_map"), Mappings::map_text(&maps.uids))
        .and_then(|()| std::fs::write(proc.join("gid_map"), Mappings::map_text(&maps.gids)));
    if let Err(e) = written {
        let _ = child.kill();
        let _ = child.wait();
        return Err(io::Error::new(
            e.kind(),
            format!("writing the id maps: {e}"),
        ));
    }
    Ok(child)
}

/// A user namespace with `maps`, held by the returned descriptor.
pub fn new_userns(maps: &Mappings) -> io::Result<OwnedFd> {
    let mut child = ns_holder(maps, libc::CLONE_NEWUSER)?;
    let f = std::fs::File::open(format!("/proc/{}/ns/user", child.id()));
    let _ = child.kill();
    let _ = child.wait();
    Ok(OwnedFd::from(f?))
}

/// The pod's user namespace (`userns`) and a network namespace owned by it
/// (`netns`), both kept by bind mounts at these paths. A network namespace
/// of the host's user namespace would not do: runc 1.1 joins the user
/// namespace first and may then no longer enter it. Returns a descriptor
/// of the user namespace.
pub fn pin_pod_namespaces(maps: &Mappings, userns: &Path, netns: &Path) -> io::Result<OwnedFd> {
    let mut child = ns_holder(maps, libc::CLONE_NEWUSER | libc::CLONE_NEWNET)?;
    let proc = PathBuf::from(format!("/proc/{}", child.id()));
    let result = (|| {
        for (kind, at) in [("user", userns), ("net", netns)] {
            if let Some(parent) = at.parent() {
                crius_store::private::dir(parent)?;
            }
            crius_store::private::file_options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(at)?;
            nix::mount::mount(
                Some(&proc.join("ns").join(kind)),
                at,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| {
                io::Error::other(format!(
                    "bind the {kind} namespace on {}: {e}",
                    at.display()
                ))
            })?;
        }
        crius_netns::netns::loopback_up(netns).map_err(io::Error::other)?;
        Ok(OwnedFd::from(std::fs::File::open(userns)?))
    })();
    let _ = child.kill();
    let _ = child.wait();
    if result.is_err() {
        for at in [netns, userns] {
            let _ = nix::mount::umount2(at, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    result
}

/// Mode of `<state>/sandboxes` and `<state>/containers`: runc, as the root
/// of a user namespace pod (a host uid and gid of the pod's mapping, with
/// no capability over host-owned inodes), bind-mounts the bundle's
/// `rootfs` by path, so it must traverse them. Nothing in them can be
/// listed, and every entry is 0700 or (a user namespace pod's) 0711.
pub const SHARED_PARENT_MODE: u32 = 0o711;

/// Lets runc, in the pod's user namespace, traverse a user namespace
/// pod's or container's state directory and bundle on its way to the
/// bundle's `rootfs`: 0711 (not listable; what is in them is 0600 or
/// 0700). It has no capability over host-owned inodes there, and group
/// access (0710 to the pod's root group) does not do: runc's process is not
/// in that group while it prepares the rootfs. The rootfs overlay of such a
/// pod is mounted nosuid,nodev on the host.
pub fn let_pod_root_traverse(dirs: &[&Path]) -> io::Result<()> {
    for d in dirs {
        crius_store::private::dir_with_mode(d, 0o711)?;
    }
    Ok(())
}

/// Where a pod's pinned user and network namespaces are.
pub fn pod_ns_paths(sandbox_state: &Path) -> (PathBuf, PathBuf) {
    (sandbox_state.join("userns"), sandbox_state.join("netns"))
}

/// Opens a pod's pinned user namespace, checked to be another one than
/// criusd's own.
pub fn open_userns(path: &Path) -> io::Result<OwnedFd> {
    use std::os::unix::fs::MetadataExt;
    let f = std::fs::File::open(path)?;
    let own = std::fs::metadata("/proc/self/ns/user")?;
    let theirs = f.metadata()?;
    if (own.dev(), own.ino()) == (theirs.dev(), theirs.ino()) || theirs.dev() != own.dev() {
        return Err(io::Error::other(format!(
            "{} is not a pod user namespace",
            path.display()
        )));
    }
    Ok(OwnedFd::from(f))
}

/// Mounts `source` (a directory or a file) idmapped on `target` (made as
/// an empty directory or file of the same kind).
pub fn idmapped_bind(source: &Path, target: &Path, userns: BorrowedFd<'_>) -> io::Result<()> {
    let meta = std::fs::metadata(source)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", source.display())))?;
    // Private mount points (the mount covers their modes).
    if let Some(parent) = target.parent() {
        crius_store::private::dir(parent)?;
    }
    if meta.is_dir() {
        crius_store::private::dir(target)?;
    } else {
        crius_store::private::file_options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(target)?;
    }
    let tree = clone_tree(source, true)?;
    set_idmap(tree.as_fd(), userns, true, source)?;
    attach(tree.as_fd(), target)
}

/// Mounts the image rootfs (`mounts`: one overlay) on `target` for a user
/// namespace: overlayfs itself cannot be idmapped, but it can sit on
/// idmapped layers, so each lower layer is bound idmapped below `staging`
/// (`l<n>`) and the overlay is made of those; the upper layer (the
/// container's own) stays as it is, with its root directory given to the
/// pod's root (`root`: host uid and gid), so what the container writes is
/// stored with the pod's host ids. On failure nothing stays mounted.
pub fn idmapped_rootfs(
    mounts: &[crius_image::Mount],
    staging: &Path,
    target: &Path,
    userns: BorrowedFd<'_>,
    root: (u32, u32),
) -> io::Result<()> {
    let [m] = mounts else {
        return Err(io::Error::other(format!(
            "{} rootfs mounts; user namespaces need exactly one overlay",
            mounts.len()
        )));
    };
    if m.kind != "overlay" {
        return Err(io::Error::other(format!(
            "a {:?} rootfs; user namespaces need an overlay",
            m.kind
        )));
    }
    let result = (|| {
        let mut options = Vec::with_capacity(m.options.len());
        let mut upper = None;
        // Reachable by host users (its state directories are 0711, see
        // let_pod_root_traverse): never setuid files or device nodes on the
        // host. Inside the pod's user namespace these flags are locked on
        // runc's bind of the rootfs anyway.
        let flags = nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV;
        for o in &m.options {
            if o == "nosuid" || o == "nodev" {
                continue;
            }
            if let Some(lower) = o.strip_prefix("lowerdir=") {
                let mut staged = Vec::new();
                for (i, dir) in lower.split(':').enumerate() {
                    let at = staging.join(format!("l{i}"));
                    idmapped_bind(Path::new(dir), &at, userns)?;
                    staged.push(at.display().to_string());
                }
                options.push(format!("lowerdir={}", staged.join(":")));
            } else {
                if let Some(u) = o.strip_prefix("upperdir=") {
                    upper = Some(PathBuf::from(u));
                }
                options.push(o.clone());
            }
        }
        if let Some(u) = &upper {
            std::os::unix::fs::chown(u, Some(root.0), Some(root.1))
                .map_err(|e| io::Error::new(e.kind(), format!("chown {}: {e}", u.display())))?;
        }
        crius_store::private::dir(target)?;
        let data = options.join(",");
        // The staged layers `l<n>` share their parent: many layers mount
        // with relative lower dirs (see crius_store::overlay).
        crius_store::overlay::mount_overlay(&m.source, target, flags.bits(), &data).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("mount overlay on {}: {e}", target.display()),
            )
        })
    })();
    if result.is_err() {
        unmount_below(target);
        unmount_below(staging);
    }
    result
}

/// Unmounts every mount on or below `dir` (deepest first, lazily), so that
/// removing the directory can never reach into a mounted source.
pub fn unmount_below(dir: &Path) {
    for _ in 0..8 {
        let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        let mut points = mount_points_below(&info, dir);
        if points.is_empty() {
            return;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for p in points {
            if let Err(e) = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(path = %p.display(), error = %e, "cannot unmount");
            }
        }
    }
}

/// The mount points in mountinfo text that are `dir` or lie below it.
pub fn mount_points_below(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the kernel can make idmapped overlay mounts here: tried once,
/// at start-up, on a scratch overlay under `state`. The error says what
/// failed.
pub fn kernel_probe(state: &Path) -> &'static Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE.get_or_init(|| {
        let dir = state.join("userns-probe");
        // Leftovers of a probe that was cut short go first.
        unmount_below(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let r = probe_in(&dir);
        unmount_below(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        match &r {
            Ok(()) => tracing::info!("idmapped overlay mounts work: user namespaces available"),
            Err(e) => tracing::warn!(error = %e, "idmapped mounts do not work: no user namespaces"),
        }
        r
    })
}

fn probe_in(dir: &Path) -> Result<(), String> {
    const BASE: u32 = 3_000_000_000;
    let map = crius_spec::userns::IdMap {
        container_id: 0,
        host_id: BASE,
        size: 65536,
    };
    let maps = Mappings {
        uids: vec![map],
        gids: vec![map],
    };
    let err = |e: io::Error| e.to_string();
    for d in ["lower", "upper", "work", "staging", "merged"] {
        crius_store::private::dir(&dir.join(d)).map_err(err)?;
    }
    std::fs::write(dir.join("lower/file"), b"").map_err(err)?;
    let ns = new_userns(&maps).map_err(|e| format!("user namespace: {e}"))?;
    let overlay = crius_image::Mount {
        kind: "overlay".into(),
        source: "overlay".into(),
        options: vec![
            format!("lowerdir={}", dir.join("lower").display()),
            format!("upperdir={}", dir.join("upper").display()),
            format!("workdir={}", dir.join("work").display()),
        ],
    };
    idmapped_rootfs(
        &[overlay],
        &dir.join("staging"),
        &dir.join("merged"),
        ns.as_fd(),
        (BASE, BASE),
    )
    .map_err(err)?;
    // The host root's file of the lower layer shows as the pod's root's.
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(dir.join("merged/file"))
        .map(|m| m.uid())
        .map_err(err)?;
    if owner != BASE {
        return Err(format!(
            "a file of an idmapped layer shows as owned by {owner}, not by the mapped root"
        ));
    }
    Ok(())
}

/// Whether the OCI runtime at `path` can run containers in user
/// namespaces: its `features` document lists the `user` namespace, or,
/// without that subcommand (runc 1.1), it is runc or crun, which always
/// could.
pub fn runtime_supports_userns(path: &str) -> bool {
    // The features document is asked for once per path (host's cache).
    if let Some(userns) = crate::host::runtime_features(path).userns {
        return userns;
    }
    crate::host::run_briefly(path, "--version").is_some_and(|v| {
        let first = v.lines().next().unwrap_or_default();
        first.starts_with("runc version") || first.starts_with("crun version")
    })
}

/// Whether pods of the handler whose OCI runtime is at `path` can have
/// user namespaces: the kernel probe passed and the runtime can (asked
/// once per path).
pub fn handler_supports(state: &Path, path: &str) -> bool {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static CACHE: OnceLock<Mutex<HashMap<String, bool>>> = OnceLock::new();
    if kernel_probe(state).is_err() {
        return false;
    }
    let cache = CACHE.get_or_init(Default::default);
    if let Some(v) = cache.lock().ok().and_then(|c| c.get(path).copied()) {
        return v;
    }
    let v = runtime_supports_userns(path);
    if let Ok(mut c) = cache.lock() {
        c.insert(path.to_string(), v);
    }
    v
}

/// The error of a mode-POD pod on a handler that cannot do it.
pub fn unsupported(handler: &str, state: &Path) -> CriError {
    let why = match kernel_probe(state) {
        Err(e) => format!("the kernel cannot make idmapped mounts ({e})"),
        Ok(()) => format!("the OCI runtime of handler {handler:?} has no user namespace support"),
    };
    CriError::failed_precondition(format!(
        "{}: mode POD (a user namespace) is not available: {why}",
        crius_spec::userns::POD_FIELD
    ))
}

fn spec_error(e: crius_spec::SpecError) -> CriError {
    crate::errors::spec_status(e)
}

fn mount_failed(what: &str, e: io::Error) -> CriError {
    CriError::failed_precondition(format!("cannot make the idmapped mount of {what}: {e}"))
}

/// The host uid and gid of the pod's root.
fn pod_root(maps: &Mappings) -> Result<(u32, u32), CriError> {
    match (maps.host_uid(0), maps.host_gid(0)) {
        (Some(u), Some(g)) => Ok((u, g)),
        _ => Err(CriError::invalid_argument(format!(
            "{}: the pod's root (id 0) is not mapped",
            crius_spec::userns::POD_FIELD
        ))),
    }
}

/// Validates a pod's user namespace options and, with mode POD, checks
/// that the handler can do it: InvalidArgument or FailedPrecondition naming
/// the field otherwise. Returns the mappings.
pub async fn check_pod(
    daemon: &crate::daemon::Daemon,
    config: &k8s_cri::v1::PodSandboxConfig,
    handler: &str,
) -> Result<Option<Mappings>, CriError> {
    let maps = crius_spec::userns::pod_mappings(config).map_err(spec_error)?;
    if maps.is_none() {
        return Ok(None);
    }
    let path = daemon
        .config()
        .runtimes
        .get(handler)
        .map(|h| h.path.clone())
        .unwrap_or_default();
    let state = daemon.config().state.clone();
    let ok = tokio::task::spawn_blocking(move || handler_supports(&state, &path))
        .await
        .unwrap_or(false);
    if !ok {
        return Err(unsupported(handler, &daemon.config().state));
    }
    Ok(maps)
}

/// What a pod with mode POD hands the shim: its own network namespace.
pub struct PauseSetup {
    /// The pause spec.
    pub spec: oci_spec::runtime::Spec,
    /// The rootfs mounts the shim makes (none when made here).
    pub mounts: Vec<crius_image::Mount>,
    /// The network namespace the shim uses instead of making one.
    pub netns: Option<PathBuf>,
}

/// The pause container of a pod with mode POD: the pod's user namespace
/// and a network namespace it owns are made and pinned in `state_dir`, the
/// spec joins that user namespace with the pod's mappings, and the pause
/// rootfs is mounted idmapped on `bundle/rootfs` here (so the shim gets no
/// rootfs mounts). Anything else is handed back unchanged.
pub async fn pause(
    config: &k8s_cri::v1::PodSandboxConfig,
    spec: oci_spec::runtime::Spec,
    mounts: Vec<crius_image::Mount>,
    state_dir: &Path,
    bundle: &Path,
) -> Result<PauseSetup, CriError> {
    let Some(maps) = crius_spec::userns::pod_mappings(config).map_err(spec_error)? else {
        return Ok(PauseSetup {
            spec,
            mounts,
            netns: None,
        });
    };
    let (userns, netns) = pod_ns_paths(state_dir);
    let join = userns.display().to_string();
    let spec = crius_spec::userns::apply(spec, &maps, Some(&join)).map_err(spec_error)?;
    let staging = state_dir.join(crate::paths::IDMAP);
    let target = bundle.join("rootfs");
    let root = pod_root(&maps)?;
    let ns_path = netns.clone();
    let traverse = [state_dir.to_path_buf(), bundle.to_path_buf()];
    tokio::task::spawn_blocking(move || {
        let ns = pin_pod_namespaces(&maps, &userns, &ns_path).map_err(|e| {
            CriError::internal(format!("cannot make the pod's user namespace: {e}"))
        })?;
        idmapped_rootfs(&mounts, &staging, &target, ns.as_fd(), root)
            .map_err(|e| mount_failed("the pause rootfs", e))?;
        // Last: making the pins and mount points above narrows their
        // parents to 0700 again.
        let dirs: Vec<&Path> = traverse.iter().map(PathBuf::as_path).collect();
        let_pod_root_traverse(&dirs)
            .map_err(|e| CriError::internal(format!("state directories: {e}")))
    })
    .await
    .map_err(|e| CriError::internal(format!("idmapped mounts: {e}")))??;
    Ok(PauseSetup {
        spec,
        mounts: Vec::new(),
        netns: Some(netns),
    })
}

/// A container of a pod with mode POD: its spec joins the pod's user
/// namespace (the pause's, pinned in the pod's state directory) with the
/// pod's mappings, the sources of its bind mounts are
/// staged idmapped under `state_dir/idmap`, and its rootfs is mounted
/// idmapped on `bundle/rootfs` (so the shim gets no rootfs mounts).
/// Containers of other pods are handed back unchanged, after checking that
/// they ask for no user namespace of their own.
pub async fn container(
    sandbox_state: &Path,
    sandbox: &crius_store::SandboxRecord,
    config: &k8s_cri::v1::ContainerConfig,
    spec: oci_spec::runtime::Spec,
    mounts: Vec<crius_image::Mount>,
    state_dir: &Path,
    bundle: &Path,
) -> Result<(oci_spec::runtime::Spec, Vec<crius_image::Mount>), CriError> {
    let pod_config = crate::domain::sandbox::view::stored_config(sandbox);
    let maps = crius_spec::userns::pod_mappings(&pod_config).map_err(spec_error)?;
    crius_spec::userns::check_container(config, maps.as_ref()).map_err(spec_error)?;
    let Some(maps) = maps else {
        return Ok((spec, mounts));
    };
    let (userns, _) = pod_ns_paths(sandbox_state);
    let join = userns.display().to_string();
    let spec = crius_spec::userns::apply(spec, &maps, Some(&join)).map_err(spec_error)?;
    // Image volumes are overlays of idmapped layers already (see
    // container::image_mounts): an overlay cannot be idmapped again.
    let image_mounts = state_dir.join(crate::domain::container::image_mounts::IMAGE_MOUNTS_DIR);
    let binds: Vec<_> = crius_spec::edit::idmapped_binds(&spec)
        .into_iter()
        .filter(|(_, source, _)| !source.starts_with(&image_mounts))
        .collect();
    let idmap = state_dir.join(crate::paths::IDMAP);
    let target = bundle.join("rootfs");
    let root = pod_root(&maps)?;
    // runc, as the pod's root, reaches the rootfs and the staged bind
    // mount sources by path.
    let traverse = [state_dir.to_path_buf(), bundle.to_path_buf(), idmap.clone()];
    let staged = tokio::task::spawn_blocking(move || {
        let ns = open_userns(&userns).map_err(|e| {
            CriError::failed_precondition(format!("the pod's user namespace is not there: {e}"))
        })?;
        let mut staged = Vec::with_capacity(binds.len());
        for (i, source, dest) in binds {
            let at = idmap.join(format!("m{i}"));
            idmapped_bind(&source, &at, ns.as_fd()).map_err(|e| {
                mount_failed(&format!("{} (for {})", source.display(), dest.display()), e)
            })?;
            staged.push((i, at));
        }
        idmapped_rootfs(&mounts, &idmap.join("rootfs"), &target, ns.as_fd(), root)
            .map_err(|e| mount_failed("the container rootfs", e))?;
        // Last: making the mount points above narrows their parents to
        // 0700 again.
        crius_store::private::dir(&idmap)
            .map_err(|e| CriError::internal(format!("state directories: {e}")))?;
        let dirs: Vec<&Path> = traverse.iter().map(PathBuf::as_path).collect();
        let_pod_root_traverse(&dirs)
            .map_err(|e| CriError::internal(format!("state directories: {e}")))?;
        Ok::<_, CriError>(staged)
    })
    .await
    .map_err(|e| CriError::internal(format!("idmapped mounts: {e}")))??;
    Ok((
        crius_spec::edit::with_mount_sources(spec, &staged),
        Vec::new(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_below_a_directory() {
        let info = "22 1 254:0 / / rw - ext4 /dev/vda rw\n\
                    40 22 0:40 / /run/crius/containers/abc/bundle/rootfs rw,idmapped - overlay overlay rw\n\
                    41 22 0:41 /vol /run/crius/containers/abc/idmap/0 rw,idmapped - ext4 /dev/vda rw\n\
                    42 22 0:42 / /run/crius/containers/abcd/bundle/rootfs rw - overlay overlay rw\n\
                    43 22 0:43 / /run/crius/containers/abc/idmap/with\\040space rw - tmpfs t rw\n";
        let cases = [
            (
                "/run/crius/containers/abc",
                vec![
                    "/run/crius/containers/abc/bundle/rootfs",
                    "/run/crius/containers/abc/idmap/0",
                    "/run/crius/containers/abc/idmap/with space",
                ],
            ),
            (
                "/run/crius/containers/abcd",
                vec!["/run/crius/containers/abcd/bundle/rootfs"],
            ),
            ("/run/crius/containers/ab", vec![]),
        ];
        for (dir, want) in cases {
            let got = mount_points_below(info, Path::new(dir));
            let want: Vec<PathBuf> = want.into_iter().map(PathBuf::from).collect();
            assert_eq!(got, want, "{dir}");
        }
    }
}
