//! Pod user namespaces: the start-up probe, the handlers that can have
//! them, and what criusd hands the shim for a pod or container with one.
//!
//! The OCI runtime here (runc 1.1) can put a container into a user
//! namespace but cannot make idmapped mounts; the shim makes them
//! (`crius_shim_api::idmap`), criusd makes none. For a pod with mode POD
//! the shim makes and pins the pod's user namespace and a network
//! namespace it owns (pod options), and every task mount that must be
//! idmapped carries the pod's mappings as `uidmap=`/`gidmap=` options: the
//! rootfs overlay (stacked on idmapped binds of its layers, its upper layer
//! the pod root's), the sources of the container's bind mounts (volumes,
//! the pod's hosts/resolv.conf/hostname, /dev/shm), bound idmapped at
//! `<bundle>/idmap/m<n>`, where the spec then points
//! ([`crius_spec::edit::stage_idmapped_binds`]), and image volumes. All of
//! them lie below the bundle; the shim unmounts them on task delete (its
//! `delete` action after a dead shim).

use crate::errors::CriError;
use crate::shimclient::TaskMount;
use crius_shim_api::idmap::{IdMaps, IdRange};
use crius_spec::userns::Mappings;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The pod's mappings in the shim's terms.
pub fn id_maps(maps: &Mappings) -> IdMaps {
    let ranges = |v: &[crius_spec::userns::IdMap]| {
        v.iter()
            .map(|m| IdRange {
                container: m.container_id,
                host: m.host_id,
                size: m.size,
            })
            .collect()
    };
    IdMaps {
        uids: ranges(&maps.uids),
        gids: ranges(&maps.gids),
    }
}

/// `mounts` (the image rootfs) as idmapped task mounts: the pod's mappings
/// added to each one's options.
fn idmapped_rootfs(mounts: Vec<crius_image::Mount>, maps: &IdMaps) -> Vec<TaskMount> {
    mounts
        .into_iter()
        .map(|mut m| {
            m.options.extend(maps.options());
            TaskMount::rootfs(m)
        })
        .collect()
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

/// The result of the start-up probe: whether the kernel can make
/// idmapped overlay mounts here (the error says what failed). The shim
/// binary (`shim_path`, as configured) tries, once, in a scratch directory
/// below `state`; later calls give the first answer.
pub fn kernel_probe_with(state: &Path, shim_path: &str) -> &'static Result<(), String> {
    PROBE.get_or_init(|| {
        let r = run_probe(state, shim_path);
        match &r {
            Ok(()) => tracing::info!("idmapped overlay mounts work: user namespaces available"),
            Err(e) => tracing::warn!(error = %e, "idmapped mounts do not work: no user namespaces"),
        }
        r
    })
}

static PROBE: OnceLock<Result<(), String>> = OnceLock::new();

/// [`kernel_probe_with`] with the shim binary found as by default, unless
/// the probe ran already (criusd runs it at start-up).
pub fn kernel_probe(state: &Path) -> &'static Result<(), String> {
    kernel_probe_with(state, "")
}

fn run_probe(state: &Path, shim_path: &str) -> Result<(), String> {
    let binary = crius_shim_api::launch::find_binary(shim_path).map_err(|e| e.to_string())?;
    let dir = state.join("userns-probe");
    let out = std::process::Command::new(&binary)
        .args(crius_shim_api::launch::probe_idmap_args(&dir))
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(err.trim().chars().take(1024).collect())
    }
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

/// What a pod with mode POD hands the shim.
pub struct PauseSetup {
    /// The pause spec.
    pub spec: oci_spec::runtime::Spec,
    /// The rootfs mounts the shim makes (idmapped for mode POD).
    pub mounts: Vec<TaskMount>,
    /// The mappings of the pod's user namespace, which the shim makes with
    /// a network namespace it owns (pod options).
    pub userns: Option<IdMaps>,
}

/// The pause container of a pod with mode POD: the spec joins the pod's
/// user namespace, which the shim makes and pins at `userns` (with a
/// network namespace it owns) at CreateSandbox, with the pod's mappings,
/// and the pause rootfs is mounted idmapped by the shim. Anything else is
/// handed back unchanged.
pub async fn pause(
    config: &k8s_cri::v1::PodSandboxConfig,
    spec: oci_spec::runtime::Spec,
    mounts: Vec<crius_image::Mount>,
    state_dir: &Path,
    bundle: &Path,
    userns: &Path,
) -> Result<PauseSetup, CriError> {
    let Some(maps) = crius_spec::userns::pod_mappings(config).map_err(spec_error)? else {
        return Ok(PauseSetup {
            spec,
            mounts: mounts.into_iter().map(TaskMount::rootfs).collect(),
            userns: None,
        });
    };
    pod_root(&maps)?;
    let join = userns.display().to_string();
    let spec = crius_spec::userns::apply(spec, &maps, Some(&join)).map_err(spec_error)?;
    let ids = id_maps(&maps);
    // runc, as the pod's root, reaches the rootfs by path.
    let traverse = [state_dir.to_path_buf(), bundle.to_path_buf()];
    traverse_dirs(traverse.to_vec()).await?;
    Ok(PauseSetup {
        spec,
        mounts: idmapped_rootfs(mounts, &ids),
        userns: Some(ids),
    })
}

async fn traverse_dirs(dirs: Vec<PathBuf>) -> Result<(), CriError> {
    tokio::task::spawn_blocking(move || {
        let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
        let_pod_root_traverse(&dirs)
    })
    .await
    .map_err(|e| CriError::internal(format!("state directories: {e}")))?
    .map_err(|e| CriError::internal(format!("state directories: {e}")))
}

/// A container of a pod with mode POD: its spec joins the pod's user
/// namespace (pinned by the shim at `userns`) with the pod's mappings, the
/// sources of its bind mounts point at their idmapped staging mounts
/// below `bundle` (image volumes, idmapped overlays already, excepted),
/// and the returned task mounts have the shim make those and the idmapped
/// rootfs. Containers of other pods are handed back unchanged (their
/// rootfs as the task's mounts), after checking that they ask for no user
/// namespace of their own.
pub async fn container(
    userns: &Path,
    sandbox: &crius_store::SandboxRecord,
    config: &k8s_cri::v1::ContainerConfig,
    spec: oci_spec::runtime::Spec,
    mounts: Vec<crius_image::Mount>,
    state_dir: &Path,
    bundle: &Path,
) -> Result<(oci_spec::runtime::Spec, Vec<TaskMount>), CriError> {
    let pod_config = crate::domain::sandbox::view::stored_config(sandbox);
    let maps = crius_spec::userns::pod_mappings(&pod_config).map_err(spec_error)?;
    crius_spec::userns::check_container(config, maps.as_ref()).map_err(spec_error)?;
    let Some(maps) = maps else {
        return Ok((spec, mounts.into_iter().map(TaskMount::rootfs).collect()));
    };
    pod_root(&maps)?;
    let join = userns.display().to_string();
    let spec = crius_spec::userns::apply(spec, &maps, Some(&join)).map_err(spec_error)?;
    let ids = id_maps(&maps);
    // Image volumes are overlays of idmapped layers already (see
    // container::image_mounts): an overlay cannot be idmapped again.
    let image_mounts = bundle.join(crate::domain::container::image_mounts::IMAGE_MOUNTS_DIR);
    let (spec, staged) = crius_spec::edit::stage_idmapped_binds(spec, bundle, &image_mounts);
    let mut out: Vec<TaskMount> = staged
        .into_iter()
        .map(|(source, target)| {
            let mut options = vec!["rbind".to_string()];
            options.extend(ids.options());
            TaskMount {
                mount: crius_image::Mount {
                    kind: "bind".into(),
                    source: source.display().to_string(),
                    options,
                },
                target,
            }
        })
        .collect();
    out.extend(idmapped_rootfs(mounts, &ids));
    // runc, as the pod's root, reaches the rootfs and the staged bind
    // mount sources by path.
    traverse_dirs(vec![state_dir.to_path_buf(), bundle.to_path_buf()]).await?;
    Ok((spec, out))
}
