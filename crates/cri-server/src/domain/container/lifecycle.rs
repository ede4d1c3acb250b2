//! CreateContainer, StartContainer, StopContainer, RemoveContainer and
//! ExecSync, through the pod's shim.

use crate::daemon::Daemon;
use crate::domain::exits::{self, Exit, WAIT_FOREVER};
use crate::domain::now_nanos;
use crate::domain::sandbox::lifecycle::Timeline;
use crate::errors::CriError;
use crate::errors::{internal, spec_status};
use crate::errors::{invalid_field, store_status};
use crate::shimclient::Shim;
use crius_nri::runtime::PluginUpdates;
use crius_spec::container::{container_spec, image_volumes, user_request, ContainerInput};
use crius_spec::mounts::HostPropagation;
use crius_store::{
    ContainerMetadata, ContainerRecord, ContainerState, ContainerStatus, Record, SandboxState,
};
use k8s_cri::v1::{
    ContainerConfig, ContainerEventType, CreateContainerRequest, ExecSyncRequest, ExecSyncResponse,
    PodSandboxConfig,
};
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// The most output ExecSync keeps per stream (kubelet's 16 MiB): the shim
/// writes no more than this to the output files and drops the rest.
pub const EXEC_OUTPUT_LIMIT: u64 = 16 * 1024 * 1024;
/// Room in an ExecSync response for what is not output.
const EXEC_RESPONSE_OVERHEAD: u64 = 1024;

/// Joins the pod log directory and the container's relative log path,
/// refusing anything that would leave the directory.
pub fn log_path(log_dir: &str, rel: &str) -> Result<Option<PathBuf>, CriError> {
    if log_dir.is_empty() || rel.is_empty() {
        return Ok(None);
    }
    let relp = Path::new(rel);
    if relp.is_absolute()
        || relp
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(invalid_field(
            "config.log_path",
            format!("{rel:?} must be a relative path inside the pod's log directory"),
        ));
    }
    Ok(Some(Path::new(log_dir).join(relp)))
}

/// The most of an image's `/etc/passwd` or `/etc/group` CreateContainer
/// reads. A bigger file is refused rather than cut short: containerd has no
/// cap (it streams the whole file), and a truncated file could silently
/// resolve a numeric user to the wrong primary group.
pub const IMAGE_USER_FILE_LIMIT: u64 = 4 * 1024 * 1024;

/// Reads an image's `/etc/passwd` or `/etc/group` (`rel`), at most
/// [`IMAGE_USER_FILE_LIMIT`] bytes; a missing or unreadable file is empty,
/// a bigger one an InvalidArgument naming the image.
fn read_image_user_file(
    mounts: &[crius_image::Mount],
    rel: &str,
    image_ref: &str,
) -> Result<String, CriError> {
    match read_image_file_limited(mounts, rel, IMAGE_USER_FILE_LIMIT) {
        Ok(text) => Ok(text.unwrap_or_default()),
        Err(size) => Err(invalid_field(
            "config.image.image",
            format!(
                "image {image_ref:?}: /{rel} is larger than {IMAGE_USER_FILE_LIMIT} bytes ({size} read)"
            ),
        )),
    }
}

/// [`read_image_file`], reading at most `limit` bytes: `Err(bytes read)`
/// when the file holds more.
pub fn read_image_file_limited(
    mounts: &[crius_image::Mount],
    rel: &str,
    limit: u64,
) -> Result<Option<String>, u64> {
    use std::io::{BufRead, Read};
    let Some(path) = image_file_path(mounts, rel) else {
        return Ok(None);
    };
    let Ok(f) = std::fs::File::open(&path) else {
        return Ok(None);
    };
    // Line by line through a bounded reader: never more than limit + 1
    // bytes in memory, whatever the file's size.
    let mut reader = std::io::BufReader::new(f.take(limit + 1));
    let mut text = String::new();
    loop {
        match reader.read_line(&mut text) {
            Ok(0) => break,
            Ok(_) if text.len() as u64 > limit => return Err(text.len() as u64),
            Ok(_) => {}
            Err(_) => return Ok(None),
        }
    }
    Ok(Some(text))
}

/// Reads a file of the image from its overlay lower dirs (topmost first),
/// without following symlinks anywhere on the way.
pub fn read_image_file(mounts: &[crius_image::Mount], rel: &str) -> Option<String> {
    std::fs::read_to_string(image_file_path(mounts, rel)?).ok()
}

/// The path of a regular file of the image in its overlay lower dirs
/// (topmost first), found without following symlinks anywhere on the way.
fn image_file_path(mounts: &[crius_image::Mount], rel: &str) -> Option<PathBuf> {
    let lower = mounts
        .iter()
        .flat_map(|m| m.options.iter())
        .find_map(|o| o.strip_prefix("lowerdir="))?;
    for dir in lower.split(':') {
        let mut p = PathBuf::from(dir);
        let mut ok = true;
        let parts: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
        for (i, part) in parts.iter().enumerate() {
            p.push(part);
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                ok = false;
                break;
            };
            let last = i + 1 == parts.len();
            let fits = if last {
                meta.file_type().is_file()
            } else {
                meta.file_type().is_dir()
            };
            if !fits {
                // A whiteout (char device), a symlink or a non-directory hides
                // the file in every lower layer.
                if meta.file_type().is_symlink() || !meta.file_type().is_dir() {
                    return None;
                }
                ok = false;
                break;
            }
        }
        if ok {
            return Some(p);
        }
    }
    None
}

/// Makes the missing host paths of the CRI mounts as directories (as
/// kubelet expects, and containerd does), recording what it made in
/// `created` (deepest first) for a rollback; then tells for each host path
/// how the host mount holding it propagates.
fn prepare_host_paths(
    config: &ContainerConfig,
    created: &mut Vec<PathBuf>,
) -> Result<HashMap<String, HostPropagation>, CriError> {
    let mut out = HashMap::new();
    if config.mounts.is_empty() {
        return Ok(out);
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| internal("/proc/self/mountinfo", e))?;
    for (i, m) in config.mounts.iter().enumerate() {
        let path = Path::new(&m.host_path);
        // Bad paths are refused with the field's name by the spec builder.
        if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
            continue;
        }
        if std::fs::metadata(path).is_err() {
            let mut missing: Vec<PathBuf> = path
                .ancestors()
                .take_while(|a| std::fs::symlink_metadata(a).is_err())
                .map(Path::to_path_buf)
                .collect();
            std::fs::create_dir_all(path).map_err(|e| {
                invalid_field(
                    &format!("config.mounts[{i}].host_path"),
                    format!(
                        "{:?} does not exist and cannot be created: {e}",
                        m.host_path
                    ),
                )
            })?;
            created.append(&mut missing);
        }
        let real = std::fs::canonicalize(path).map_err(|e| {
            invalid_field(
                &format!("config.mounts[{i}].host_path"),
                format!("{:?}: {e}", m.host_path),
            )
        })?;
        out.insert(
            m.host_path.clone(),
            crate::host::propagation_of(&mountinfo, &real),
        );
    }
    Ok(out)
}

const TARGET_ID: &str = "config.linux.security_context.namespace_options.target_id";

/// The pid whose PID namespace a container with `namespace_options.pid`
/// TARGET joins: the target must be a running container of the same pod
/// (`sandbox_id`); `lookup` finds a container by id. None for the other
/// modes.
fn target_pid(
    config: &ContainerConfig,
    sandbox_id: &str,
    lookup: impl Fn(&str) -> Option<ContainerRecord>,
) -> Result<Option<u32>, CriError> {
    let ns = match config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
    {
        Some(ns) if ns.pid == k8s_cri::v1::NamespaceMode::Target as i32 => ns,
        _ => return Ok(None),
    };
    if ns.target_id.is_empty() {
        return Err(invalid_field(
            TARGET_ID,
            "must name a container for pid mode TARGET",
        ));
    }
    let target = lookup(&ns.target_id)
        .ok_or_else(|| invalid_field(TARGET_ID, format!("no container {:?}", ns.target_id)))?;
    if target.metadata.sandbox_id != sandbox_id {
        return Err(invalid_field(
            TARGET_ID,
            format!(
                "container {:?} is not in pod sandbox {sandbox_id}: a PID namespace can only be shared within a pod",
                ns.target_id
            ),
        ));
    }
    match target.status.pid {
        Some(pid) if target.status.state == ContainerState::Running && pid > 0 => Ok(Some(pid)),
        _ => Err(invalid_field(
            TARGET_ID,
            format!("container {:?} is not running", ns.target_id),
        )),
    }
}

#[derive(Default)]
struct Done {
    name: Option<String>,
    record: bool,
    rootfs: bool,
    dirs: Vec<PathBuf>,
    /// Host directories made for CRI mounts, deepest first.
    host_dirs: Vec<PathBuf>,
    task: Option<Shim>,
    /// The pod's runtime handler (for the shim binary's `delete` action).
    handler: String,
}

impl Done {
    async fn undo(self, daemon: &Daemon, id: &str) {
        if let Some(shim) = self.task {
            let _ = shim.kill(id, "", 9, true).await;
            match shim.delete_task(id, "").await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    tracing::warn!(container = id, error = %e, "rollback: task delete failed");
                    // The shim's mounts (rootfs, idmapped, image) go
                    // before anything below them is removed: its
                    // binary's `delete` action does it when it could not.
                    let bundle = daemon.paths.container_bundle(id);
                    if let Err(e) = crate::domain::sandbox::lifecycle::shim_delete(
                        daemon,
                        &self.handler,
                        id,
                        &bundle,
                        false,
                    )
                    .await
                    {
                        tracing::warn!(container = id, error = %e.message(), "rollback: cleanup after the shim failed");
                    }
                }
            }
        }
        if self.rootfs {
            if let Err(e) = daemon.images.remove_rootfs(id).await {
                tracing::warn!(container = id, error = %e, "rollback: rootfs removal failed");
            }
        }
        for d in self.dirs.iter().rev() {
            let _ = crius_image::tree::remove_tree(d);
        }
        for d in &self.host_dirs {
            // Only if still empty: nothing of anybody else goes.
            let _ = std::fs::remove_dir(d);
        }
        if self.record {
            let _ = daemon.store.remove_container(id);
        } else if let Some(name) = self.name {
            daemon.store.release_name(&name);
        }
    }
}

/// CreateContainer; returns the new container id and the updates and
/// evictions of other containers NRI plugins asked for in their
/// CreateContainer answers (for the caller to apply once this container's
/// lock is released: [`crate::nri::events::post_create_container`]).
pub async fn create(
    daemon: &Arc<Daemon>,
    req: CreateContainerRequest,
) -> Result<(String, Vec<PluginUpdates>), CriError> {
    if req.pod_sandbox_id.is_empty() {
        return Err(invalid_field("pod_sandbox_id", "must not be empty"));
    }
    let config = req
        .config
        .ok_or_else(|| invalid_field("config", "is required"))?;
    let meta = config
        .metadata
        .clone()
        .ok_or_else(|| invalid_field("config.metadata", "is required"))?;
    if meta.name.is_empty() || meta.name.contains('/') {
        return Err(invalid_field(
            "config.metadata.name",
            format!("{:?} is not a valid name", meta.name),
        ));
    }
    let image_ref = config
        .image
        .as_ref()
        .map(|i| i.image.clone())
        .filter(|i| !i.is_empty())
        .ok_or_else(|| invalid_field("config.image.image", "must not be empty"))?;
    let sandbox = daemon
        .store
        .get_sandbox(&req.pod_sandbox_id)
        .map_err(store_status)?;
    if sandbox.status.state != SandboxState::Ready {
        return Err(CriError::failed_precondition(format!(
            "pod sandbox {} is not ready",
            sandbox.metadata.id
        )));
    }
    let sandbox_config: PodSandboxConfig = match req.sandbox_config {
        Some(c) if c.metadata.is_some() => c,
        _ => crate::domain::sandbox::view::stored_config(&sandbox),
    };
    let log = log_path(&sandbox_config.log_directory, &config.log_path)?;
    let id = crius_store::generate_id();
    crate::telemetry::record_ids(&sandbox.metadata.id, &id);
    let span = tracing::info_span!(
        "create_container",
        sandbox = %sandbox.metadata.id,
        container = %id,
        name = %meta.name
    );
    // Held until the container is created or rolled back: a
    // RemoveContainer that finds the record meanwhile waits for it.
    let _lock = daemon.locks.lock(&id).await;
    let mut done = Done {
        handler: sandbox.metadata.runtime_handler.clone(),
        ..Done::default()
    };
    match create_steps(
        daemon,
        &id,
        &config,
        &sandbox_config,
        &sandbox,
        &image_ref,
        log,
        &mut done,
    )
    .instrument(span)
    .await
    {
        Ok(nri_updates) => {
            super::events::emit_id(daemon, &id, ContainerEventType::ContainerCreatedEvent);
            Ok((id, nri_updates))
        }
        Err(e) => {
            tracing::warn!(container = %id, error = %e.message(), "CreateContainer failed; rolling back");
            done.undo(daemon, &id).await;
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn create_steps(
    daemon: &Arc<Daemon>,
    id: &str,
    config: &ContainerConfig,
    sandbox_config: &PodSandboxConfig,
    sandbox: &crius_store::SandboxRecord,
    image_ref: &str,
    log: Option<PathBuf>,
    done: &mut Done,
) -> Result<Vec<PluginUpdates>, CriError> {
    let mut timeline = Timeline::start();
    let meta = config.metadata.clone().unwrap_or_default();
    let name = crate::domain::sandbox::container_name(&meta.name, meta.attempt, sandbox_config);
    daemon.store.reserve_name(&name, id).map_err(store_status)?;
    done.name = Some(name.clone());
    // The runtime moves the container's init into its cgroups at the end
    // of this call: the kernel's wait for that starts now.
    daemon.cgroup_primer.prime();
    timeline.mark("name_reservation");

    let image = tracing::debug_span!("image", op = "resolve", image = image_ref)
        .in_scope(|| daemon.images.resolve(image_ref))
        .map_err(|e| crate::errors::image_error(e, "config.image.image"))?
        .ok_or_else(|| {
            CriError::not_found(format!("image {image_ref:?} is not present: pull it first"))
        })?;
    let image_config = daemon
        .images
        .image_config(&image.metadata.id)
        .map_err(|e| internal("image config", e))?;
    let target_pid = target_pid(config, &sandbox.metadata.id, |t| {
        daemon.store.get_container(t).ok()
    })?;
    // StopContainer must be able to send it (the shim sends signals 1-31);
    // it is recorded now, so that the stop does not depend on the image.
    let stop_signal = parse_stop_signal(&image_config.config.stop_signal)
        .map_err(|e| invalid_field("config.image.image", format!("image {image_ref:?}: {e}")))?;
    timeline.mark("image_check");
    let image_name = super::image_mounts::display_name(config, image_ref, &image);

    let record: ContainerRecord = Record::new(
        ContainerMetadata {
            id: id.to_string(),
            name,
            sandbox_id: sandbox.metadata.id.clone(),
            container_name: meta.name.clone(),
            attempt: meta.attempt,
            image_ref: image_ref.to_string(),
            image_id: image.metadata.id.clone(),
            image_name: image_name.clone(),
            image_repo_digest: image
                .metadata
                .repo_digests
                .first()
                .cloned()
                .unwrap_or_default(),
            labels: config.labels.clone().into_iter().collect(),
            annotations: config.annotations.clone().into_iter().collect(),
            log_path: log.as_ref().map(|p| p.display().to_string()),
            created_at: now_nanos(),
            config: serde_json::to_value(config).map_err(|e| internal("config", e))?,
            stop_signal,
        },
        ContainerStatus {
            state: ContainerState::Created,
            ..Default::default()
        },
    );
    crate::domain::store_blocking(daemon, move |s| s.add_container(record))
        .instrument(tracing::debug_span!(
            "store",
            op = "add_container",
            container = id
        ))
        .await?;
    done.record = true;
    timeline.mark("record");

    let root = daemon.paths.container_root(id);
    let state = daemon.paths.container_state(id);
    let bundle = daemon.paths.container_bundle(id);
    done.dirs.push(root.clone());
    done.dirs.push(state.clone());
    // Private: <root>/containers/<id>, <state>/containers/<id>, its
    // bundle and the rootfs mount point (the overlay's root covers it).
    // <state>/containers: see SHARED_PARENT_MODE; a user namespace pod's
    // container's own directories become 0711.
    crius_store::private::dir_with_mode(
        &daemon.paths.containers_state(),
        crate::domain::userns::SHARED_PARENT_MODE,
    )
    .map_err(|e| internal("bundle", e))?;
    for d in [
        daemon.paths.containers_root(),
        root.clone(),
        state.clone(),
        bundle.clone(),
        bundle.join("rootfs"),
    ] {
        crius_store::private::dir(&d).map_err(|e| internal("bundle", e))?;
    }
    let mounts = daemon
        .images
        .prepare_rootfs(&image.metadata.id, id)
        .instrument(tracing::debug_span!(
            "image",
            op = "prepare_rootfs",
            container = id
        ))
        .await
        .map_err(|e| internal("rootfs", e))?;
    done.rootfs = true;
    timeline.mark("rootfs_mount");
    // The host's view of the rootfs overlay: nodev unless privileged,
    // nosuid when the container cannot gain privileges through setuid
    // files anyway (runc's bind of the rootfs keeps these flags, so the
    // container's `/` gets them too).
    let rootfs_sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();
    let mounts =
        crate::domain::harden_rootfs(mounts, !rootfs_sc.privileged, rootfs_sc.no_new_privs);
    // Image volumes, which the shim mounts below the bundle with the task:
    // from here on the config has them as read-only binds of those mounts.
    let image_mounted =
        super::image_mounts::image_volume_mounts(daemon, id, config, sandbox, &bundle).await?;
    let (config, mut task_mounts) = match &image_mounted {
        Some((c, m)) => (c, m.clone()),
        None => (config, Vec::new()),
    };

    let spec_image = image_config.spec_config();
    let passwd =
        crius_spec::user::parse_passwd(&read_image_user_file(&mounts, "etc/passwd", image_ref)?);
    let group =
        crius_spec::user::parse_group(&read_image_user_file(&mounts, "etc/group", image_ref)?);
    let user = crius_spec::user::resolve(&user_request(config, &spec_image), &passwd, &group)
        .map_err(spec_status)?;

    let hn = crius_spec::sandbox::host_namespaces(sandbox_config);
    let pod_root = daemon.paths.sandbox_root(&sandbox.metadata.id);
    let facts = crius_spec::SandboxFacts {
        id: sandbox.metadata.id.clone(),
        netns_path: sandbox.status.netns_path.clone(),
        shm_path: (!hn.ipc).then(|| {
            daemon
                .shim_pod_dir(&sandbox.metadata.id)
                .shm()
                .display()
                .to_string()
        }),
        pid: sandbox.status.pid,
        ipc_path: sandbox.status.ipc_path.clone(),
        uts_path: sandbox.status.uts_path.clone(),
        hosts_path: Some(pod_root.join("hosts").display().to_string()),
        resolv_conf_path: Some(pod_root.join("resolv.conf").display().to_string()),
        hostname_path: Some(pod_root.join("hostname").display().to_string()),
    };
    // The pod's handler (still found if a reload retired it).
    let (handler, handler_config) = daemon.handler(&sandbox.metadata.runtime_handler);
    let daemon_config = daemon.config();
    let devices =
        super::devices::device_nodes(&daemon_config, handler_config.as_ref(), config).await?;
    let propagation = prepare_host_paths(config, &mut done.host_dirs)?;
    let mut host = daemon.host_for(&handler);
    // Recursive read-only mounts as far as the pod's own handler can.
    if let Some(h) = &handler_config {
        let path = h.path.clone();
        host.rro_mounts = tokio::task::spawn_blocking(move || crate::host::runtime_features(&path))
            .await
            .map(|f| f.rro)
            .unwrap_or(false);
    }
    let volume_dir = root.join("volumes").display().to_string();
    // Built in a block of its own: the input holds non-Send references
    // that must be gone before the next await.
    let mut fill = Vec::new();
    let spec = {
        let load = |p: &str| std::fs::read_to_string(p).map_err(|e| e.to_string());
        let input = ContainerInput {
            id,
            config,
            sandbox_config,
            image: &spec_image,
            image_name: &image_name,
            user: &user,
            sandbox: &facts,
            host: &host,
            host_propagation: &propagation,
            volume_dir: &volume_dir,
            devices: &devices,
            target_pid,
            load_profile: &load,
        };
        let _span = tracing::debug_span!("spec", container = id).entered();
        for v in image_volumes(&input).map_err(spec_status)? {
            // <root>/containers/<id>/volumes is private; the volume itself
            // is the container's directory, usable by its users.
            let source = Path::new(&v.source);
            if let Some(parent) = source.parent() {
                crius_store::private::dir(parent).map_err(|e| internal("image volume", e))?;
            }
            crius_store::private::dir_with_mode(
                source,
                crius_store::private::CONTAINER_VISIBLE_DIR,
            )
            .map_err(|e| internal("image volume", e))?;
            fill.push((v.destination, v.source.into()));
        }
        let spec = container_spec(&input).map_err(spec_status)?;
        let image_sources = super::image_mounts::sources(config, &bundle);
        crius_spec::images::keep_image_mount_flags(spec, &image_sources)
    };
    let spec = super::devices::inject_cdi(&daemon.config().cdi, config, spec).await?;
    // NRI plugins adjust the spec last, as they see it (one atomic load
    // when none is connected).
    let (spec, nri_updates) =
        crate::nri::adjust_created(daemon, sandbox, id, &meta.name, spec).await?;
    // The image's content at its VOLUMEs goes into them, as in containerd,
    // from a read-only mount of the image the shim makes with the task.
    let volume_source = super::image_mounts::volume_source_mount(&mounts, &fill, &bundle).await?;
    // A pod with its own user namespace: the shim makes the idmapped rootfs
    // and binds.
    let (spec, mounts) = crate::domain::userns::container(
        &daemon.shim_pod_dir(&sandbox.metadata.id).userns(),
        sandbox,
        config,
        spec,
        mounts,
        &state,
        &bundle,
    )
    .await?;
    let spec_json = serde_json::to_vec_pretty(&spec).map_err(|e| internal("spec", e))?;
    timeline.mark("container_spec");
    crius_store::persist::write_volatile(&bundle.join("config.json"), &spec_json, 0o600)
        .map_err(|e| internal("config.json", e))?;

    if let Some(log) = &log {
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent).map_err(|e| internal("log directory", e))?;
        }
    }
    let shim = super::shim_for(daemon, &sandbox.metadata.id).await?;
    timeline.mark("bundle_write");
    let mut create = containerd_shim_protos::api::CreateTaskRequest::new();
    create.id = id.to_string();
    create.bundle = bundle.display().to_string();
    create.terminal = config.tty;
    // stdin for CRI attach: the shim keeps it for attaching clients.
    if config.stdin {
        create.stdin = if config.stdin_once {
            "attach-once"
        } else {
            "attach"
        }
        .to_string();
    }
    // Without a log path the output still goes through the shim, to
    // attached clients (CRI allows an empty log path; attach must work).
    let out = log
        .as_ref()
        .map(|p| format!("crilog://{}", p.display()))
        .unwrap_or_else(|| "attach".into());
    create.stdout = out.clone();
    if !config.tty {
        create.stderr = out;
    }
    task_mounts.extend(mounts);
    task_mounts.extend(volume_source);
    create.rootfs = crate::shimclient::proto_task_mounts(&task_mounts);
    // Before the call: a Create that timed out or failed half-way may have
    // left a task (with its rootfs mounted) in the shim, and the rollback
    // must delete it before the writable layer goes (a shim that has no
    // such task answers NotFound, which the rollback ignores).
    done.task = Some(shim.clone());
    let pid = shim.create_task(create).await.map_err(CriError::from)?;
    // The pid is recorded by StartContainer (with the state, in one store
    // write); until then the shim has it.
    tracing::debug!(container = %id, pid, "task created");
    timeline.mark("runc_create");
    // Before the process can start (StartContainer).
    super::image_mounts::fill_image_volumes(bundle.join(super::image_mounts::VOLUME_SOURCE), fill)
        .await?;
    daemon.metrics.observe_phases(false, &timeline.phases);
    // Stored by StartContainer, in the same write (shown until then by
    // ContainerStatus from here).
    daemon
        .create_phases
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id.to_string(), timeline.phases);
    Ok(nri_updates)
}

/// CreateContainer's start-up phases of a container, handed over to
/// StartContainer (empty after a restart in between).
pub fn take_create_phases(daemon: &Daemon, id: &str) -> Vec<crius_store::Phase> {
    daemon
        .create_phases
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(id)
        .unwrap_or_default()
}

/// StartContainer. A failed start leaves the container EXITED with the
/// reason.
pub async fn start(daemon: &Arc<Daemon>, id: &str) -> Result<(), CriError> {
    start_inner(daemon, id)
        .instrument(tracing::info_span!("start_container", container = %id))
        .await
}

async fn start_inner(daemon: &Arc<Daemon>, id: &str) -> Result<(), CriError> {
    let mut timeline = Timeline::start();
    let record = daemon.store.get_container(id).map_err(store_status)?;
    // Before the lock: a plugin may update this container meanwhile.
    crate::nri::events::start_container(daemon, &record).await?;
    let id = record.metadata.id.clone();
    let _lock = daemon.locks.lock(&id).await;
    let record = daemon.store.get_container(&id).map_err(store_status)?;
    if record.status.state != ContainerState::Created {
        return Err(CriError::failed_precondition(format!(
            "container {id} is {:?}, not created",
            record.status.state
        )));
    }
    let shim = super::shim_for(daemon, &record.metadata.sandbox_id).await?;
    timeline.mark("start_lookup");
    match shim.start_task(&id, "").await {
        Ok(pid) => {
            timeline.mark("runc_start");
            daemon.metrics.observe_phases(false, &timeline.phases);
            let mut phases = take_create_phases(daemon, &id);
            phases.extend(timeline.phases);
            let store = daemon.store.clone();
            let cid = id.clone();
            let spec = daemon.paths.container_spec(&id);
            let span =
                tracing::debug_span!("store", op = "update_container_status", container = %id);
            crate::telemetry::blocking(span, move || {
                // The process's user, as CreateContainer put it into the spec.
                let user = super::view::user_of_spec_file(&spec);
                store.update_container_status(&cid, |s| {
                    s.state = ContainerState::Running;
                    s.pid = Some(pid);
                    s.started_at = Some(now_nanos());
                    s.user = user;
                    s.timeline = phases;
                })
            })
            .await
            .map_err(|e| internal("store", e))?
            .map_err(store_status)?;
            super::events::emit_id(daemon, &id, ContainerEventType::ContainerStartedEvent);
            exits::watch(daemon.clone(), shim, id);
            Ok(())
        }
        Err(e) => {
            exits::record(daemon, &id, Exit::because(128, "StartError", e.to_string())).await;
            Err(CriError::from(&e))
        }
    }
}

/// The signal number of an image's StopSignal (`SIGQUIT`, `quit`, `3`;
/// empty: SIGTERM), or why the shim cannot send it: only the standard
/// signals 1 to 31 (kill(2) through a pidfd or `runc kill`); not 0 (no
/// signal at all), not the real-time ones (`SIGRTMIN+3`, `34`), not an
/// unknown name.
pub fn parse_stop_signal(name: &str) -> Result<u32, String> {
    let raw = name.trim();
    if raw.is_empty() {
        return Ok(libc::SIGTERM as u32);
    }
    let upper = raw.to_ascii_uppercase();
    let n = upper.strip_prefix("SIG").unwrap_or(&upper);
    let unsupported = |why: &str| Err(format!("StopSignal {raw:?}: {why}"));
    if let Ok(v) = n.parse::<i64>() {
        return match v {
            1..=31 => Ok(v as u32),
            0 => unsupported("signal 0 stops nothing"),
            32..=64 => unsupported("real-time signals are not supported"),
            _ => unsupported("no such signal"),
        };
    }
    if n.starts_with("RTMIN") || n.starts_with("RTMAX") {
        return unsupported("real-time signals are not supported");
    }
    // Aliases the kernel headers define.
    let n = match n {
        "IOT" => "ABRT",
        "CLD" => "CHLD",
        "POLL" => "IO",
        other => other,
    };
    use std::str::FromStr;
    nix::sys::signal::Signal::from_str(&format!("SIG{n}"))
        .map(|s| s as i32 as u32)
        .or_else(|_| unsupported("no such signal"))
}

/// The signal StopContainer sends first: the image's StopSignal, SIGTERM
/// for one that CreateContainer would refuse now (a container created
/// before it checked).
pub fn stop_signal(name: &str) -> u32 {
    parse_stop_signal(name).unwrap_or(libc::SIGTERM as u32)
}

async fn wait_exited(daemon: &Daemon, id: &str, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // Registered before the store is read, so that an exit recorded in
        // between still wakes us.
        let notified = daemon.exited.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match daemon.store.get_container(id) {
            Ok(r) if r.status.state != ContainerState::Running => return true,
            Err(_) => return true,
            _ => {}
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        // The periodic re-check covers exits recorded by other paths
        // (recovery, a dead shim) that do not notify.
        let wake = (tokio::time::Instant::now() + Duration::from_millis(200)).min(deadline);
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// StopContainer: the image's stop signal (else SIGTERM), SIGKILL after the
/// timeout. Idempotent.
pub async fn stop(daemon: &Arc<Daemon>, id: &str, timeout: Duration) -> Result<(), CriError> {
    stop_reaching(daemon, id, timeout, true).await
}

/// StopContainer with the reach of its SIGKILL: `every_process` sends it
/// to every process of the container (the runtime's `kill --all`, which
/// walks its cgroup: a runtime invocation, ~8 ms of a Go binary's start),
/// otherwise to its init only. StopPodSandbox does the latter for a
/// container in the pod's shared PID namespace, whose PID 1 it kills right
/// after: the kernel then kills every process left in that namespace.
pub async fn stop_reaching(
    daemon: &Arc<Daemon>,
    id: &str,
    timeout: Duration,
    every_process: bool,
) -> Result<(), CriError> {
    // Stopping what does not exist succeeds (CRI: Stop is idempotent).
    let Some(record) = crate::domain::present(daemon.store.get_container(id))? else {
        return Ok(());
    };
    let id = record.metadata.id.clone();
    if record.status.state != ContainerState::Running {
        return Ok(());
    }
    let shim = match daemon.shim(&record.metadata.sandbox_id).await {
        Some(s) => s,
        None => {
            exits::record(daemon, &id, Exit::unknown("the pod's shim is gone")).await;
            return Ok(());
        }
    };
    let signal = match record.metadata.stop_signal {
        0 => daemon
            .images
            .image_config(&record.metadata.image_id)
            .map(|c| stop_signal(&c.config.stop_signal))
            .unwrap_or(libc::SIGTERM as u32),
        s => s,
    };
    stop_sequence(
        &id,
        signal,
        timeout,
        every_process,
        |sig, all| {
            let shim = shim.clone();
            let id = id.clone();
            async move {
                match shim.kill(&id, "", sig, all).await {
                    Ok(()) => Ok(()),
                    Err(e) if e.is_not_found() => Ok(()),
                    Err(e) => Err(CriError::from(&e)),
                }
            }
        },
        |t| wait_exited(daemon, &id, t),
    )
    .await
}

/// How long StopContainer waits for a container to go after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(30);

/// The signals of StopContainer: `signal`, and SIGKILL (to every process
/// with `every_process`, else to the init) once `timeout` has passed
/// without an exit, whether or not `signal` could be sent (a failed call
/// may still have delivered it: the grace period is kept).
/// `kill(signal, all)` sends, `exited(t)` waits at most `t` for the exit.
async fn stop_sequence<K, KF, W, WF>(
    id: &str,
    signal: u32,
    timeout: Duration,
    every_process: bool,
    kill: K,
    exited: W,
) -> Result<(), CriError>
where
    K: Fn(u32, bool) -> KF,
    KF: std::future::Future<Output = Result<(), CriError>>,
    W: Fn(Duration) -> WF,
    WF: std::future::Future<Output = bool>,
{
    if !timeout.is_zero() {
        if let Err(e) = kill(signal, false).await {
            tracing::warn!(container = id, signal, error = %e.message(),
                "StopContainer: the stop signal could not be sent; SIGKILL at the deadline");
        }
        if exited(timeout).await {
            return Ok(());
        }
    }
    kill(libc::SIGKILL as u32, every_process).await?;
    if !exited(KILL_WAIT).await {
        return Err(CriError::deadline_exceeded(format!(
            "container {id} did not exit after SIGKILL"
        )));
    }
    Ok(())
}

/// RemoveContainer: kills a running container and removes everything of it.
/// Removing an unknown container succeeds.
pub async fn remove(daemon: &Arc<Daemon>, id: &str) -> Result<(), CriError> {
    let Some(record) = crate::domain::present(daemon.store.get_container(id))? else {
        return Ok(());
    };
    let id = record.metadata.id.clone();
    // A CreateContainer still running holds the lock: wait for it.
    drop(daemon.locks.lock(&id).await);
    let Some(record) = crate::domain::present(daemon.store.get_container(&id))? else {
        return Ok(());
    };
    stop(daemon, &id, Duration::ZERO).await?;
    let _lock = daemon.locks.lock(&id).await;
    let deleted = match daemon.shim(&record.metadata.sandbox_id).await {
        Some(shim) => match shim.delete_task(&id, "").await {
            Ok(()) => true,
            Err(e) if e.is_not_found() => true,
            Err(e) if e.is_unreachable() => false,
            Err(e) => return Err(CriError::from(&e)),
        },
        None => false,
    };
    if !deleted {
        // The shim is gone, but the container's processes outlive it
        // (re-parented) in their cgroup, and its rootfs may still be
        // mounted: the shim binary's `delete` action removes both.
        let handler = daemon
            .store
            .get_sandbox(&record.metadata.sandbox_id)
            .map(|s| s.metadata.runtime_handler)
            .unwrap_or_default();
        let bundle = daemon.paths.container_bundle(&id);
        crate::domain::sandbox::lifecycle::shim_delete(daemon, &handler, &id, &bundle, false)
            .await?;
    }
    daemon
        .images
        .remove_rootfs(&id)
        .await
        .map_err(|e| internal("rootfs", e))?;
    for d in [
        daemon.paths.container_state(&id),
        daemon.paths.container_root(&id),
    ] {
        // Any depth, few descriptors, and never into a mount left inside.
        match crius_image::tree::remove_tree(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(internal(&format!("cannot remove {}", d.display()), e)),
        }
    }
    take_create_phases(daemon, &id);
    let last = daemon.store.get_container(&id).unwrap_or(record);
    let removed = crate::domain::store_blocking(daemon, move |s| s.remove_container(&id)).await?;
    if removed {
        super::events::emit(daemon, &last, ContainerEventType::ContainerDeletedEvent);
    }
    Ok(())
}

fn read_capped(path: &Path, limit: u64) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(limit).read_to_end(&mut out);
    }
    out
}

/// How much of stdout and stderr (`out`, `err` bytes) an ExecSync response
/// of at most `budget` bytes of output carries: each stream at least half
/// the budget if it has that much, the share one leaves unused to the other.
fn fit_output(out: u64, err: u64, budget: u64) -> (u64, u64) {
    let half = budget / 2;
    let o = out.min(budget - err.min(half));
    (o, err.min(budget - o))
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Registers and starts an exec process whose output goes to `stdout` and
/// `stderr` (shim stdio URIs).
async fn start_exec(
    shim: &Shim,
    id: &str,
    exec_id: &str,
    process: &[u8],
    stdout: String,
    stderr: String,
) -> Result<(), crate::shimclient::ShimError> {
    shim.exec(
        id,
        exec_id,
        process.to_vec(),
        crate::shimclient::Stdio {
            stdout,
            stderr,
            ..Default::default()
        },
    )
    .await?;
    shim.start_task(id, exec_id).await.map(|_| ())
}

/// ExecSync: runs a command in the container and returns its output and
/// exit code; a timeout kills it and reports DeadlineExceeded.
pub async fn exec_sync(
    daemon: &Arc<Daemon>,
    req: ExecSyncRequest,
) -> Result<ExecSyncResponse, CriError> {
    if req.container_id.is_empty() {
        return Err(invalid_field("container_id", "must not be empty"));
    }
    if req.cmd.is_empty() {
        return Err(invalid_field("cmd", "must not be empty"));
    }
    let record = super::running(daemon, &req.container_id)?;
    // The runtime moves the exec'd process into the container's cgroups.
    daemon.cgroup_primer.prime();
    let id = record.metadata.id.clone();
    let shim = super::shim_for(daemon, &record.metadata.sandbox_id).await?;
    let config = tokio::fs::read(daemon.paths.container_spec(&id))
        .await
        .map_err(|e| internal("config.json", e))?;
    let process = crius_spec::edit::exec_process(&config, &req.cmd, false)?;
    let exec_id = format!("exec-{}", &crius_store::generate_id()[..16]);
    let out_dir = daemon.paths.container_state(&id).join(&exec_id);
    // Private, as are the output files the shim makes in it (0600).
    crius_store::private::dir(&out_dir).map_err(|e| internal("exec output", e))?;
    let (out, err) = (out_dir.join("stdout"), out_dir.join("stderr"));
    let result = async {
        // The shim writes at most EXEC_OUTPUT_LIMIT bytes per stream.
        let capped = |p: &Path| format!("capped-file://{}?limit={EXEC_OUTPUT_LIMIT}", p.display());
        let started = start_exec(&shim, &id, &exec_id, &process, capped(&out), capped(&err)).await;
        match started {
            Err(e) if e.to_string().contains("unsupported stdio") => {
                // A shim from before capped files (it outlived an upgrade
                // of criusd): uncapped files, only the read-back is capped.
                tracing::warn!(container = %id, "the pod's shim cannot cap exec output; writing it uncapped");
                let _ = shim.delete_task(&id, &exec_id).await;
                let file = |p: &Path| format!("file://{}", p.display());
                start_exec(&shim, &id, &exec_id, &process, file(&out), file(&err))
                    .await
                    .map_err(CriError::from)?;
            }
            r => r.map_err(CriError::from)?,
        }
        let timeout = if req.timeout > 0 {
            Duration::from_secs(req.timeout as u64)
        } else {
            WAIT_FOREVER
        };
        match tokio::time::timeout(
            timeout,
            shim.wait(&id, &exec_id, timeout + Duration::from_secs(5)),
        )
        .await
        {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(e)) => Err(CriError::from(&e)),
            Err(_) => {
                let _ = shim.kill(&id, &exec_id, 9, false).await;
                let _ = shim.wait(&id, &exec_id, Duration::from_secs(10)).await;
                Err(CriError::deadline_exceeded(format!(
                    "command {:?} timed out after {}s and was killed",
                    req.cmd, req.timeout
                )))
            }
        }
    }
    .await;
    let _ = shim.delete_task(&id, &exec_id).await;
    let response = result.map(|status| {
        // Both streams together must fit in one gRPC message.
        let budget = crate::server::MAX_MESSAGE_SIZE as u64 - EXEC_RESPONSE_OVERHEAD;
        let (o, e) = fit_output(
            file_len(&out).min(EXEC_OUTPUT_LIMIT),
            file_len(&err).min(EXEC_OUTPUT_LIMIT),
            budget,
        );
        ExecSyncResponse {
            stdout: read_capped(&out, o),
            stderr: read_capped(&err, e),
            exit_code: status as i32,
        }
    });
    let _ = std::fs::remove_dir_all(&out_dir);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_paths() {
        let cases = [
            (
                "/var/log/pods/p",
                "app/0.log",
                Ok(Some("/var/log/pods/p/app/0.log")),
            ),
            ("", "app/0.log", Ok(None)),
            ("/var/log/pods/p", "", Ok(None)),
            ("/var/log/pods/p", "../x.log", Err(())),
            ("/var/log/pods/p", "/etc/x.log", Err(())),
            (
                "/var/log/pods/p",
                "a/./b.log",
                Ok(Some("/var/log/pods/p/a/b.log")),
            ),
        ];
        for (dir, rel, want) in cases {
            let got = log_path(dir, rel);
            match want {
                Ok(w) => assert_eq!(got.unwrap(), w.map(PathBuf::from), "{dir} {rel}"),
                Err(()) => assert_eq!(got.unwrap_err().code(), tonic::Code::InvalidArgument),
            }
        }
    }

    #[test]
    fn missing_host_paths_are_made_and_remembered() {
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("a/b/c");
        let existing = d.path().to_path_buf();
        let mount = |p: &str| k8s_cri::v1::Mount {
            container_path: "/mnt".into(),
            host_path: p.into(),
            ..Default::default()
        };
        let config = ContainerConfig {
            mounts: vec![
                mount(&deep.display().to_string()),
                mount(&existing.display().to_string()),
                mount("relative/path"),
                mount(&format!("{}/../escape", existing.display())),
            ],
            ..Default::default()
        };
        let mut created = Vec::new();
        let map = prepare_host_paths(&config, &mut created).unwrap();
        assert!(deep.is_dir());
        assert_eq!(
            created,
            vec![deep.clone(), d.path().join("a/b"), d.path().join("a")]
        );
        assert!(map.contains_key(&deep.display().to_string()));
        assert!(map.contains_key(&existing.display().to_string()));
        assert_eq!(map.len(), 2, "bad paths are left to the spec builder");
        assert!(!Path::new("relative").exists());
        assert!(!d.path().parent().unwrap().join("escape").exists());
        // The rollback removes exactly what was made.
        for dir in &created {
            std::fs::remove_dir(dir).unwrap();
        }
        assert!(!d.path().join("a").exists());
    }

    #[test]
    fn pid_namespace_targets() {
        use k8s_cri::v1::{LinuxContainerConfig, LinuxContainerSecurityContext, NamespaceMode};
        let cfg = |mode: NamespaceMode, target: &str| ContainerConfig {
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(k8s_cri::v1::NamespaceOption {
                        pid: mode as i32,
                        target_id: target.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let rec = |id: &str, pod: &str, state: ContainerState, pid: Option<u32>| {
            ContainerRecord::new(
                ContainerMetadata {
                    id: id.into(),
                    sandbox_id: pod.into(),
                    ..Default::default()
                },
                ContainerStatus {
                    state,
                    pid,
                    ..Default::default()
                },
            )
        };
        let containers = [
            rec("same", "pod-a", ContainerState::Running, Some(42)),
            rec("other", "pod-b", ContainerState::Running, Some(43)),
            rec("created", "pod-a", ContainerState::Created, None),
            rec("exited", "pod-a", ContainerState::Exited, Some(44)),
        ];
        let lookup = |id: &str| containers.iter().find(|c| c.metadata.id == id).cloned();
        // (mode, target, want pid or Err(part of the message))
        type Want = Result<Option<u32>, &'static str>;
        let cases: &[(NamespaceMode, &str, Want)] = &[
            (NamespaceMode::Pod, "other", Ok(None)),
            (NamespaceMode::Container, "", Ok(None)),
            (NamespaceMode::Target, "same", Ok(Some(42))),
            (
                NamespaceMode::Target,
                "other",
                Err("not in pod sandbox pod-a"),
            ),
            (NamespaceMode::Target, "created", Err("not running")),
            (NamespaceMode::Target, "exited", Err("not running")),
            (NamespaceMode::Target, "ghost", Err("no container")),
            (NamespaceMode::Target, "", Err("must name a container")),
        ];
        for (mode, target, want) in cases {
            let got = target_pid(&cfg(*mode, target), "pod-a", lookup);
            match (got, want) {
                (Ok(p), Ok(w)) => assert_eq!(p, *w, "{mode:?} {target}"),
                (Err(e), Err(part)) => {
                    assert_eq!(e.code(), tonic::Code::InvalidArgument);
                    assert!(e.message().contains(TARGET_ID), "{e:?}");
                    assert!(e.message().contains(part), "{target}: {e:?}");
                }
                (got, want) => panic!("{mode:?} {target}: got {got:?}, want {want:?}"),
            }
        }
        assert_eq!(
            target_pid(&ContainerConfig::default(), "pod-a", lookup).unwrap(),
            None
        );
    }

    #[test]
    fn exec_output_fits_one_message() {
        const M: u64 = 1 << 20;
        // (stdout bytes, stderr bytes, budget) -> (stdout kept, stderr kept)
        let cases = [
            (0, 0, 16 * M, (0, 0)),
            (10, 20, 16 * M, (10, 20)),
            (16 * M, 0, 16 * M - 1024, (16 * M - 1024, 0)),
            (0, 16 * M, 16 * M - 1024, (0, 16 * M - 1024)),
            (16 * M, 16 * M, 16 * M, (8 * M, 8 * M)),
            (16 * M, 3 * M, 16 * M, (13 * M, 3 * M)),
            (3 * M, 16 * M, 16 * M, (3 * M, 13 * M)),
            (9 * M, 9 * M, 16 * M, (8 * M, 8 * M)),
        ];
        for (out, err, budget, want) in cases {
            let got = fit_output(out, err, budget);
            assert_eq!(got, want, "{out} {err} {budget}");
            assert!(got.0 + got.1 <= budget);
        }
    }

    #[test]
    fn signals() {
        // (image StopSignal, parsed or Err(part of the reason))
        let cases: &[(&str, Result<u32, &str>)] = &[
            ("", Ok(15)),
            ("  ", Ok(15)),
            ("SIGQUIT", Ok(3)),
            ("QUIT", Ok(3)),
            ("sigquit", Ok(3)),
            ("Sigint", Ok(2)),
            ("9", Ok(9)),
            ("SIG9", Ok(9)),
            ("1", Ok(1)),
            ("31", Ok(31)),
            ("SIGWINCH", Ok(28)),
            ("SIGPWR", Ok(30)),
            ("SIGSYS", Ok(31)),
            ("SIGSTKFLT", Ok(16)),
            ("SIGIOT", Ok(6)),
            ("SIGCLD", Ok(17)),
            ("SIGPOLL", Ok(29)),
            ("SIGUSR2", Ok(12)),
            ("0", Err("signal 0")),
            ("SIG0", Err("signal 0")),
            ("32", Err("real-time")),
            ("34", Err("real-time")),
            ("64", Err("real-time")),
            ("SIGRTMIN", Err("real-time")),
            ("SIGRTMIN+3", Err("real-time")),
            ("RTMAX-1", Err("real-time")),
            ("sigrtmin+1", Err("real-time")),
            ("65", Err("no such signal")),
            ("-1", Err("no such signal")),
            ("99999999999999999999", Err("no such signal")),
            ("bogus", Err("no such signal")),
            ("SIG", Err("no such signal")),
        ];
        for (name, want) in cases {
            match (parse_stop_signal(name), want) {
                (Ok(got), Ok(n)) => assert_eq!(got, *n, "{name}"),
                (Err(e), Err(part)) => {
                    assert!(e.contains(part), "{name}: {e}");
                    assert!(e.contains("StopSignal"), "{name}: {e}");
                    // StopContainer of an older container falls back to SIGTERM.
                    assert_eq!(stop_signal(name), 15, "{name}");
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[tokio::test]
    async fn stop_escalates_to_sigkill_even_if_the_signal_failed() {
        use std::sync::Mutex;
        // (first kill fails, exits after the first signal, timeout, SIGKILL
        // to every process) -> the signals sent, and the waits.
        let cases = [
            (false, true, 5, true, vec![(3, false)], vec![5]),
            (
                false,
                false,
                5,
                true,
                vec![(3, false), (9, true)],
                vec![5, 30],
            ),
            (
                true,
                false,
                5,
                true,
                vec![(3, false), (9, true)],
                vec![5, 30],
            ),
            (true, true, 5, true, vec![(3, false)], vec![5]),
            (false, false, 0, true, vec![(9, true)], vec![30]),
            (false, false, 0, false, vec![(9, false)], vec![30]),
            (
                false,
                false,
                5,
                false,
                vec![(3, false), (9, false)],
                vec![5, 30],
            ),
        ];
        for (fail_first, exits, timeout, every, want_kills, want_waits) in cases {
            let kills = Mutex::new(Vec::new());
            let waits = Mutex::new(Vec::new());
            let r = stop_sequence(
                "c",
                3,
                Duration::from_secs(timeout),
                every,
                |sig, all| {
                    let first = kills.lock().unwrap().is_empty();
                    kills.lock().unwrap().push((sig, all));
                    async move {
                        if fail_first && first {
                            Err(CriError::unavailable("shim call timed out"))
                        } else {
                            Ok(())
                        }
                    }
                },
                |t| {
                    waits.lock().unwrap().push(t.as_secs());
                    // The first wait sees the exit only if the process
                    // honours its signal; the one after SIGKILL always.
                    let n = waits.lock().unwrap().len();
                    async move { exits || n > 1 || timeout == 0 }
                },
            )
            .await;
            assert!(r.is_ok(), "{r:?}");
            assert_eq!(
                *kills.lock().unwrap(),
                want_kills,
                "fail_first {fail_first}"
            );
            assert_eq!(
                *waits.lock().unwrap(),
                want_waits,
                "fail_first {fail_first}"
            );
        }
        // A SIGKILL that cannot be sent is an error.
        let r = stop_sequence(
            "c",
            15,
            Duration::ZERO,
            true,
            |_, _| async { Err(CriError::unavailable("gone")) },
            |_| async { false },
        )
        .await;
        assert_eq!(r.unwrap_err().code(), tonic::Code::Unavailable);
    }

    #[test]
    fn image_files_from_lower_dirs() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        let (top, bottom) = (d.path().join("top"), d.path().join("bottom"));
        std::fs::create_dir_all(top.join("etc")).unwrap();
        std::fs::create_dir_all(bottom.join("etc")).unwrap();
        std::fs::write(bottom.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
        std::fs::write(bottom.join("etc/group"), "root:x:0:\n").unwrap();
        std::fs::write(top.join("etc/group"), "root:x:0:\napp:x:5:\n").unwrap();
        // A symlink to a host file must not be followed.
        symlink("/etc/hostname", top.join("etc/hosts")).unwrap();
        std::fs::write(bottom.join("etc/hosts"), "x").unwrap();
        let mounts = vec![crius_image::Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![format!("lowerdir={}:{}", top.display(), bottom.display())],
        }];
        assert_eq!(
            read_image_file(&mounts, "etc/passwd").unwrap(),
            "root:x:0:0::/:/bin/sh\n"
        );
        assert!(read_image_file(&mounts, "etc/group")
            .unwrap()
            .contains("app:x:5"));
        assert_eq!(read_image_file(&mounts, "etc/hosts"), None);
        assert_eq!(read_image_file(&mounts, "etc/shadow"), None);

        // Bounded reads: (file size, limit, Ok(len read) or Err).
        let big = top.join("etc/passwd");
        let line = "u:x:1:1::/:/bin/sh\n"; // 19 bytes
        for (lines, limit, want) in [
            (0usize, 19u64, Ok(0usize)),
            (1, 19, Ok(19)),
            (2, 19, Err(())),
            (2, 100, Ok(38)),
        ] {
            std::fs::write(&big, line.repeat(lines)).unwrap();
            let got = read_image_file_limited(&mounts, "etc/passwd", limit);
            match want {
                Ok(n) => assert_eq!(got.unwrap().unwrap().len(), n, "{lines} lines"),
                Err(()) => assert!(got.is_err(), "{lines} lines, limit {limit}"),
            }
        }
        // A file far bigger than the cap (sparse, 1 GiB) is refused after
        // reading only a little more than the cap, fast.
        let huge = std::fs::File::create(&big).unwrap();
        huge.set_len(1 << 30).unwrap();
        drop(huge);
        let started = std::time::Instant::now();
        let err = read_image_user_file(&mounts, "etc/passwd", "img").unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("config.image.image"), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}

/// CreateContainer, StartContainer, StopContainer and RemoveContainer
/// against the fake shim (`crate::testing`).
#[cfg(test)]
mod orchestration_tests {
    use super::*;
    use crate::testing::{create_request, id_of, run_request, Scripted, TaskState, TestDaemon};
    use ttrpc::Code;

    async fn pod(t: &TestDaemon) -> String {
        crate::domain::sandbox::lifecycle::run(&t.daemon, run_request("web"))
            .await
            .unwrap()
    }

    fn rootfs_dir(d: &Daemon, id: &str) -> PathBuf {
        d.config().root.join("images/containers").join(id)
    }

    #[tokio::test]
    async fn create_container_failing_at_the_shim_rolls_back() {
        // (how the shim's Create fails, what the rollback asks of the
        // shim: a failed or timed-out Create may have left a task behind,
        // so it is killed and deleted whatever the answer was).
        let undo = vec!["Kill ID", "Delete ID"];
        let cases = [
            (Scripted::Fail(Code::INTERNAL), undo.clone()),
            (Scripted::Fail(Code::INVALID_ARGUMENT), undo.clone()),
            (Scripted::Fail(Code::DEADLINE_EXCEEDED), undo.clone()),
            (Scripted::Unreachable, undo),
        ];
        for (i, (how, undo)) in cases.into_iter().enumerate() {
            let t = TestDaemon::start();
            let d = &t.daemon;
            let sid = pod(&t).await;
            t.fakes.clear_journal();
            t.fakes.script("Create", how);
            let req = create_request(&sid, "web", "app");
            let name = crate::domain::sandbox::container_name(
                "app",
                0,
                &crate::testing::pod_config("web"),
            );
            let err = create(d, req.clone()).await.expect_err("create");
            let cid = id_of(&t.fakes, "Create");
            let journal = t.fakes.journal();
            let undo: Vec<String> = undo.iter().map(|e| e.replace("ID", &cid)).collect();
            assert_eq!(journal[1..].to_vec(), undo, "case {i}: {}", err.message());
            assert!(d.store.get_container(&cid).is_err(), "case {i}: record");
            assert!(d.store.list_containers().is_empty(), "case {i}");
            assert_eq!(d.store.name_holder(&name), None, "case {i}: name");
            for dir in [
                rootfs_dir(d, &cid),
                d.paths.container_root(&cid),
                d.paths.container_state(&cid),
            ] {
                assert!(!dir.exists(), "case {i}: {} is left", dir.display());
            }
            // The name can be used again.
            t.fakes.unscript("Create");
            let (cid2, _) = create(d, req).await.unwrap();
            assert_eq!(d.store.name_holder(&name), Some(cid2.clone()));
            assert_eq!(
                t.fakes.shim_of(&sid).unwrap().task(&cid2),
                Some(TaskState::Created)
            );
            assert!(rootfs_dir(d, &cid2).join("upper").is_dir());
        }
    }

    #[tokio::test]
    async fn create_container_refuses_a_pod_that_is_not_ready() {
        let t = TestDaemon::start();
        let d = &t.daemon;
        let unknown = create(d, create_request("nope", "web", "app")).await;
        assert_eq!(
            unknown.expect_err("unknown pod").code(),
            tonic::Code::NotFound
        );
        let sid = pod(&t).await;
        crate::domain::sandbox::lifecycle::stop(d, &sid)
            .await
            .unwrap();
        let err = create(d, create_request(&sid, "web", "app"))
            .await
            .expect_err("stopped pod");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
        assert!(d.store.list_containers().is_empty());
    }

    #[tokio::test]
    async fn start_container_failure_leaves_it_exited() {
        // (how the shim's Start fails, the CRI code).
        let cases = [
            (Scripted::Fail(Code::INTERNAL), tonic::Code::Internal),
            (Scripted::Fail(Code::NOT_FOUND), tonic::Code::NotFound),
            (Scripted::Unreachable, tonic::Code::Unavailable),
        ];
        for (how, code) in cases {
            let t = TestDaemon::start();
            let d = &t.daemon;
            let sid = pod(&t).await;
            let (cid, _) = create(d, create_request(&sid, "web", "app")).await.unwrap();
            t.fakes.script("Start", how);
            let err = start(d, &cid).await.expect_err("start");
            assert_eq!(err.code(), code, "{}", err.message());
            let record = d.store.get_container(&cid).unwrap();
            assert_eq!(record.status.state, ContainerState::Exited);
            assert_eq!(record.status.exit_code, Some(128));
            assert_eq!(record.status.reason.as_deref(), Some("StartError"));
            // Not startable again, and removable.
            t.fakes.unscript("Start");
            let again = start(d, &cid).await.expect_err("start again");
            assert_eq!(again.code(), tonic::Code::FailedPrecondition);
            remove(d, &cid).await.unwrap();
            assert!(d.store.get_container(&cid).is_err());
            assert!(!rootfs_dir(d, &cid).exists());
        }
    }

    #[tokio::test]
    async fn a_started_container_runs_until_its_exit_is_recorded() {
        let t = TestDaemon::start();
        let d = &t.daemon;
        let sid = pod(&t).await;
        let (cid, _) = create(d, create_request(&sid, "web", "app")).await.unwrap();
        start(d, &cid).await.unwrap();
        assert_eq!(
            d.store.get_container(&cid).unwrap().status.state,
            ContainerState::Running
        );
        t.fakes.shim_of(&sid).unwrap().exit(&cid, 3);
        crate::testing::until("the exit to be recorded", || {
            d.store
                .get_container(&cid)
                .is_ok_and(|r| r.status.state == ContainerState::Exited)
        })
        .await;
        let record = d.store.get_container(&cid).unwrap();
        assert_eq!(record.status.exit_code, Some(3));
        assert_eq!(record.status.reason.as_deref(), Some("Error"));
    }

    #[tokio::test]
    async fn stop_and_remove_container_are_idempotent() {
        let t = TestDaemon::start();
        let d = &t.daemon;
        for id in ["", "nope", "0123456789abcdef"] {
            stop(d, id, Duration::from_secs(1)).await.unwrap();
            remove(d, id).await.unwrap();
        }
        let sid = pod(&t).await;
        let (cid, _) = create(d, create_request(&sid, "web", "app")).await.unwrap();
        start(d, &cid).await.unwrap();
        // The stop signal first, then nothing more once it exited.
        stop(d, &cid, Duration::from_secs(5)).await.unwrap();
        stop(d, &cid, Duration::from_secs(5)).await.unwrap();
        assert_eq!(t.fakes.calls(&["Kill"]), [format!("Kill {cid}")]);
        let record = d.store.get_container(&cid).unwrap();
        assert_eq!(record.status.state, ContainerState::Exited);
        assert_eq!(record.status.exit_code, Some(128 + libc::SIGTERM));
        remove(d, &cid).await.unwrap();
        remove(d, &cid).await.unwrap();
        stop(d, &cid, Duration::from_secs(1)).await.unwrap();
        assert_eq!(t.fakes.calls(&["Delete"]), [format!("Delete {cid}")]);
        assert!(d.store.get_container(&cid).is_err());
        assert_eq!(t.fakes.shim_of(&sid).unwrap().task(&cid), None);
        for dir in [
            rootfs_dir(d, &cid),
            d.paths.container_root(&cid),
            d.paths.container_state(&cid),
        ] {
            assert!(!dir.exists(), "{} is left", dir.display());
        }
    }

    #[tokio::test]
    async fn remove_container_of_a_dead_shim_has_delete_clean_up() {
        let t = TestDaemon::start();
        let d = &t.daemon;
        let sid = pod(&t).await;
        let (cid, _) = create(d, create_request(&sid, "web", "app")).await.unwrap();
        t.fakes.shim_of(&sid).unwrap().die();
        d.shims.lock().await.clear();
        remove(d, &cid).await.unwrap();
        assert_eq!(
            t.fakes.calls(&["ShimDelete"]),
            [format!("ShimDelete {cid}")]
        );
        assert!(d.store.get_container(&cid).is_err());
    }
}
