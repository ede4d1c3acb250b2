//! The NRI lifecycle events of criusd's operations, at containerd's points:
//! RunPodSandbox once the pod is up (a plugin's error fails and removes
//! the pod), StopPodSandbox once its containers are stopped,
//! RemovePodSandbox once it is removed; PostCreateContainer,
//! StartContainer (before the process starts, outside the container's
//! lock; an error fails the start), PostStartContainer, UpdateContainer
//! (before UpdateContainerResources applies; the answers may change the
//! resources and update or evict other containers), PostUpdateContainer,
//! StopContainer (after the stop; the answers may update others) and
//! RemoveContainer.
//!
//! Plugins' updates (in answers, in Synchronize, unsolicited
//! UpdateContainers) go through UpdateContainerResources' own path
//! ([`apply`](crate::domain::container::update::apply)), which sends no
//! event and takes only the container's lock: a plugin may update any
//! container from within any event handler without waiting on the
//! operation that sent the event. Evictions stop the container.
//!
//! With no plugin connected each event is one atomic load.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crius_nri::api;
use crius_nri::runtime::{Nri, PluginUpdates, Refusal, SyncBlock};
use crius_store::{ContainerRecord, ContainerState, SandboxRecord, SandboxState};
use k8s_cri::v1::{ContainerConfig, HugepageLimit, LinuxContainerResources};

use crate::daemon::Daemon;
use crate::errors::CriError;

/// NRI, when a plugin is connected (one atomic load when none is).
fn active(daemon: &Daemon) -> Option<&Arc<Nri>> {
    daemon.nri.get().filter(|n| n.has_plugins())
}

/// NRI's "block plugin sync" for an operation that creates or removes a
/// pod or a container: held from before its first event (and any lock of
/// its object) until its last, so that a plugin registering meanwhile sees
/// the object once, in its Synchronize or through the events. One atomic
/// load when no plugin is connected.
pub async fn block_sync(daemon: &Daemon) -> Option<SyncBlock> {
    match active(daemon) {
        Some(nri) => nri.block_sync().await,
        None => None,
    }
}

fn refused(r: Refusal) -> CriError {
    CriError::failed_precondition(r.to_string())
}

/// A pod as plugins see it, with its cgroups path.
pub fn describe_pod(daemon: &Daemon, s: &SandboxRecord) -> api::PodSandbox {
    let mut pod = super::pod(s);
    let parent = pod.linux.cgroup_parent.clone();
    pod.linux.mut_or_insert_default().cgroups_path =
        crius_spec::cgroups::cgroups_path(&parent, &s.metadata.id, daemon.host.cgroup_driver);
    pod
}

/// A container as plugins see it: its record, its stored CRI resources and
/// what its bundle's spec says (args, env, mounts, namespaces, cgroups
/// path, OOM score), read from disk (call on the blocking pool).
pub fn describe_container(daemon: &Daemon, c: &ContainerRecord) -> api::Container {
    let path = daemon.paths.container_spec(&c.metadata.id);
    let spec = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    container(c, spec.as_ref())
}

/// A container as plugins see it, from its record and its OCI spec (JSON).
pub fn container(c: &ContainerRecord, spec: Option<&serde_json::Value>) -> api::Container {
    let config: ContainerConfig =
        serde_json::from_value(c.metadata.config.clone()).unwrap_or_default();
    let null = serde_json::Value::Null;
    let spec = spec.unwrap_or(&null);
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let annotations = match spec["annotations"].as_object() {
        Some(a) => a
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect(),
        None => c.metadata.annotations.clone().into_iter().collect(),
    };
    let mounts = spec["mounts"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .map(|m| api::Mount {
                    destination: text(&m["destination"]),
                    type_: text(&m["type"]),
                    source: text(&m["source"]),
                    options: strings(&m["options"]),
                    ..Default::default()
                })
                .collect()
        })
        .unwrap_or_default();
    let linux = &spec["linux"];
    let namespaces = linux["namespaces"]
        .as_array()
        .map(|ns| {
            ns.iter()
                .map(|n| api::LinuxNamespace {
                    type_: text(&n["type"]),
                    path: text(&n["path"]),
                    ..Default::default()
                })
                .collect()
        })
        .unwrap_or_default();
    let resources = crate::domain::container::view::current_resources(c, &config)
        .as_ref()
        .map(cri_to_nri);
    let oom_score_adj = spec["process"]["oomScoreAdj"]
        .as_i64()
        .map(|v| api::OptionalInt {
            value: v,
            ..Default::default()
        });
    let user = c.status.user.as_ref().map(|u| api::User {
        uid: u.uid,
        gid: u.gid,
        additional_gids: u.supplemental_groups.clone(),
        ..Default::default()
    });
    api::Container {
        id: c.metadata.id.clone(),
        pod_sandbox_id: c.metadata.sandbox_id.clone(),
        // The CRI name (the record's `name` is the reserved unique one).
        name: if c.metadata.container_name.is_empty() {
            c.metadata.name.clone()
        } else {
            c.metadata.container_name.clone()
        },
        state: match c.status.state {
            ContainerState::Created => api::ContainerState::CONTAINER_CREATED,
            ContainerState::Running => api::ContainerState::CONTAINER_RUNNING,
            ContainerState::Exited => api::ContainerState::CONTAINER_STOPPED,
            _ => api::ContainerState::CONTAINER_UNKNOWN,
        }
        .into(),
        labels: c.metadata.labels.clone().into_iter().collect(),
        annotations,
        args: strings(&spec["process"]["args"]),
        env: strings(&spec["process"]["env"]),
        mounts,
        linux: Some(api::LinuxContainer {
            namespaces,
            resources: resources.into(),
            oom_score_adj: oom_score_adj.into(),
            cgroups_path: text(&linux["cgroupsPath"]),
            ..Default::default()
        })
        .into(),
        pid: c.status.pid.unwrap_or(0),
        created_at: c.metadata.created_at,
        started_at: c.status.started_at.unwrap_or(0),
        finished_at: c.status.finished_at.unwrap_or(0),
        exit_code: c.status.exit_code.unwrap_or(0),
        status_reason: c.status.reason.clone().unwrap_or_default(),
        status_message: c.status.message.clone().unwrap_or_default(),
        user: user.into(),
        image: Some(api::Image {
            name: c.metadata.image_ref.clone(),
            digest: c.metadata.image_repo_digest.clone(),
            config_digest: c.metadata.image_id.clone(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

/// The pod of `id` as plugins see it (off the async workers).
async fn pod_of(daemon: &Arc<Daemon>, id: &str) -> Option<api::PodSandbox> {
    let d = daemon.clone();
    let id = id.to_string();
    tokio::task::spawn_blocking(move || {
        let s = d.store.get_sandbox(&id).ok()?;
        Some(describe_pod(&d, &s))
    })
    .await
    .ok()
    .flatten()
}

/// Container `id` and its pod as plugins see them (off the async workers).
async fn container_of(daemon: &Arc<Daemon>, id: &str) -> Option<(api::PodSandbox, api::Container)> {
    let d = daemon.clone();
    let id = id.to_string();
    tokio::task::spawn_blocking(move || {
        let c = d.store.get_container(&id).ok()?;
        let s = d.store.get_sandbox(&c.metadata.sandbox_id).ok()?;
        Some((describe_pod(&d, &s), describe_container(&d, &c)))
    })
    .await
    .ok()
    .flatten()
}

/// RunPodSandbox, once pod `id` is up. A plugin's error stops and removes
/// the pod (the plugins are told it is removed) and fails the call.
pub async fn run_pod_sandbox(daemon: &Arc<Daemon>, id: &str) -> Result<(), CriError> {
    let Some(nri) = active(daemon) else {
        return Ok(());
    };
    let Some(pod) = pod_of(daemon, id).await else {
        return Ok(());
    };
    let Err(refusal) = nri.run_pod_sandbox(&pod).await else {
        return Ok(());
    };
    tracing::warn!(sandbox = id, error = %refusal, "NRI refused the pod; removing it");
    if let Err(e) = crate::domain::sandbox::lifecycle::remove(daemon, id).await {
        tracing::warn!(sandbox = id, error = %e.message(), "rollback: removing the pod failed");
    }
    nri.remove_pod_sandbox(&pod).await;
    Err(refused(refusal))
}

/// StopPodSandbox, once the containers of a pod that was ready are
/// stopped (and the plugins told so, each once).
pub async fn stop_pod_sandbox(daemon: &Arc<Daemon>, record: &SandboxRecord) {
    if record.status.state != SandboxState::Ready {
        return;
    }
    let Some(nri) = active(daemon) else { return };
    for c in daemon.store.list_sandbox_containers(&record.metadata.id) {
        if c.status.state == ContainerState::Exited {
            notify_stopped(daemon, &c.metadata.id).await;
        }
    }
    if let Some(pod) = pod_of(daemon, &record.metadata.id).await {
        nri.stop_pod_sandbox(&pod).await;
    }
}

/// The pod `id` and its containers as plugins see them (off the async
/// workers).
async fn pod_and_containers(
    daemon: &Arc<Daemon>,
    id: &str,
) -> Option<(api::PodSandbox, Vec<api::Container>)> {
    let d = daemon.clone();
    let id = id.to_string();
    tokio::task::spawn_blocking(move || {
        let s = d.store.get_sandbox(&id).ok()?;
        let containers = d
            .store
            .list_sandbox_containers(&id)
            .iter()
            .map(|c| describe_container(&d, c))
            .collect();
        Some((describe_pod(&d, &s), containers))
    })
    .await
    .ok()
    .flatten()
}

/// Runs `remove` (RemovePodSandbox of `id`), then tells the plugins: its
/// containers stopped (those not told yet) and removed, then the pod.
pub async fn removing_pod(
    daemon: &Arc<Daemon>,
    id: &str,
    remove: impl Future<Output = Result<(), CriError>>,
) -> Result<(), CriError> {
    let Some(nri) = active(daemon) else {
        return remove.await;
    };
    let _block = nri.block_sync().await;
    let described = pod_and_containers(daemon, id).await;
    remove.await?;
    if let Some((pod, containers)) = described {
        for ctr in &containers {
            tell_stopped(nri, &pod, ctr).await;
            nri.remove_container(&pod, ctr).await;
        }
        nri.remove_pod_sandbox(&pod).await;
    }
    Ok(())
}

/// Once container `id` is created (its lock released): the updates and
/// evictions of other containers the CreateContainer answers carried
/// (`updates`), through the path of every plugin update, then
/// PostCreateContainer.
pub async fn post_create_container(daemon: &Arc<Daemon>, id: &str, updates: Vec<PluginUpdates>) {
    let Some(nri) = daemon.nri.get() else { return };
    if !updates.is_empty() {
        nri.apply_updates(updates).await;
    }
    if nri.has_plugins() {
        if let Some((pod, ctr)) = container_of(daemon, id).await {
            nri.post_create_container(&pod, &ctr).await;
        }
    }
}

/// StartContainer, before a created container's process starts (its lock
/// not held); a plugin's error fails the start.
pub async fn start_container(
    daemon: &Arc<Daemon>,
    record: &ContainerRecord,
) -> Result<(), CriError> {
    let Some(nri) = active(daemon) else {
        return Ok(());
    };
    if record.status.state != ContainerState::Created {
        return Ok(());
    }
    match container_of(daemon, &record.metadata.id).await {
        Some((pod, ctr)) => nri.start_container(&pod, &ctr).await.map_err(refused),
        None => Ok(()),
    }
}

/// PostStartContainer, once container `id` runs.
pub async fn post_start_container(daemon: &Arc<Daemon>, id: &str) {
    if let Some(nri) = active(daemon) {
        if let Some((pod, ctr)) = container_of(daemon, id).await {
            nri.post_start_container(&pod, &ctr).await;
        }
    }
}

/// What UpdateContainer left for after the update: the updates and
/// evictions of other containers the plugins asked for.
pub struct AfterUpdate {
    nri: Arc<Nri>,
    others: Vec<PluginUpdates>,
}

/// UpdateContainer, before `linux` is applied to `record`'s container: the
/// resources to apply (the plugins' updates of this container merged over
/// the request) and what to do afterwards. A plugin's error, or its update
/// of this container that criusd cannot apply (unless `ignore_failure`),
/// fails the update.
pub async fn update_container(
    daemon: &Arc<Daemon>,
    record: &ContainerRecord,
    linux: LinuxContainerResources,
) -> Result<(LinuxContainerResources, Option<AfterUpdate>), CriError> {
    let Some(nri) = active(daemon) else {
        return Ok((linux, None));
    };
    let id = &record.metadata.id;
    let Some((pod, ctr)) = container_of(daemon, id).await else {
        return Ok((linux, None));
    };
    let answers = nri
        .update_container(&pod, &ctr, &cri_to_nri(&linux))
        .await
        .map_err(refused)?;
    let mut linux = linux;
    let mut others = Vec::new();
    for a in answers {
        let mut rest = PluginUpdates {
            plugin: a.plugin.clone(),
            update: Vec::new(),
            evict: a.evict,
        };
        for u in a.update {
            if &u.container_id != id {
                rest.update.push(u);
                continue;
            }
            match nri_to_cri(&u.linux.resources) {
                Ok(r) => {
                    linux = crate::domain::container::update::merge_cri_resources(Some(&linux), &r)
                }
                Err(e) if u.ignore_failure => {
                    tracing::info!(plugin = %a.plugin, container = %id, error = %e, "NRI: ignored update");
                }
                Err(e) => {
                    return Err(CriError::failed_precondition(format!(
                        "NRI plugin {}: update of container {id}: {e}",
                        a.plugin
                    )))
                }
            }
        }
        others.push(rest);
    }
    Ok((
        linux,
        Some(AfterUpdate {
            nri: nri.clone(),
            others,
        }),
    ))
}

/// PostUpdateContainer, once container `id` is updated, then the updates
/// and evictions of other containers UpdateContainer's answers carried.
pub async fn post_update_container(daemon: &Arc<Daemon>, id: &str, after: Option<AfterUpdate>) {
    let Some(after) = after else { return };
    if let Some((pod, ctr)) = container_of(daemon, id).await {
        after.nri.post_update_container(&pod, &ctr).await;
    }
    after.nri.apply_updates(after.others).await;
}

/// StopContainer to the plugins for `ctr`, unless they were told already
/// (once per container), then the updates their answers carry.
async fn tell_stopped(nri: &Nri, pod: &api::PodSandbox, ctr: &api::Container) {
    let updates = nri.stop_container_once(pod, ctr).await;
    nri.apply_updates(updates).await;
}

/// StopContainer to the plugins for container `id`, unless they were told
/// already (waits while another caller tells them); applies the updates
/// their answers carry.
async fn notify_stopped(daemon: &Arc<Daemon>, id: &str) {
    let Some(nri) = active(daemon) else { return };
    if let Some((pod, ctr)) = container_of(daemon, id).await {
        tell_stopped(nri, &pod, &ctr).await;
    }
}

/// Runs `stop` (StopContainer of `id`); once the container has exited, the
/// plugins have been told (StopContainer, once per container, whether the
/// exit watcher or this call tells them).
pub async fn stopping_container(
    daemon: &Arc<Daemon>,
    id: &str,
    stop: impl Future<Output = Result<(), CriError>>,
) -> Result<(), CriError> {
    stop.await?;
    if active(daemon).is_some()
        && daemon
            .store
            .get_container(id)
            .is_ok_and(|c| c.status.state == ContainerState::Exited)
    {
        notify_stopped(daemon, id).await;
    }
    Ok(())
}

/// A container's process exited (the store's transition to EXITED, on
/// any path): StopContainer to the plugins, on a task of its own (the
/// caller may hold the container's lock, which the plugins' updates take).
pub fn container_exited(daemon: &Daemon, record: &ContainerRecord) {
    let Some(nri) = active(daemon) else { return };
    let Ok(sandbox) = daemon.store.get_sandbox(&record.metadata.sandbox_id) else {
        return;
    };
    let pod = describe_pod(daemon, &sandbox);
    let spec_path = daemon.paths.container_spec(&record.metadata.id);
    let (nri, record) = (nri.clone(), record.clone());
    tokio::spawn(async move {
        let ctr = tokio::task::spawn_blocking(move || {
            let spec = std::fs::read(spec_path)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
            container(&record, spec.as_ref())
        })
        .await;
        if let Ok(ctr) = ctr {
            tell_stopped(&nri, &pod, &ctr).await;
        }
    });
}

/// Runs `remove` (RemoveContainer of `id`), then tells the plugins (its
/// stop first, if they were not told).
pub async fn removing_container(
    daemon: &Arc<Daemon>,
    id: &str,
    remove: impl Future<Output = Result<(), CriError>>,
) -> Result<(), CriError> {
    let Some(nri) = active(daemon) else {
        return remove.await;
    };
    let _block = nri.block_sync().await;
    let described = container_of(daemon, id).await;
    remove.await?;
    if let Some((pod, ctr)) = described {
        tell_stopped(nri, &pod, &ctr).await;
        nri.remove_container(&pod, &ctr).await;
    }
    Ok(())
}

/// How long an evicted container gets to stop before SIGKILL.
const EVICTION_GRACE: Duration = Duration::from_secs(0);

/// Plugins' updates and evictions, through UpdateContainerResources' path
/// (no NRI event) and StopContainer's; returns the updates that failed and
/// are not `ignore_failure`.
pub async fn apply_updates(
    daemon: Arc<Daemon>,
    plugin: String,
    updates: Vec<api::ContainerUpdate>,
    evictions: Vec<api::ContainerEviction>,
) -> Vec<api::ContainerUpdate> {
    let mut failed = Vec::new();
    for u in updates {
        let result = match nri_to_cri(&u.linux.resources) {
            Ok(r) => {
                if daemon.store.get_container(&u.container_id).is_err() {
                    Err(format!("no container {:?}", u.container_id))
                } else {
                    crate::domain::container::update::apply(&daemon, &u.container_id, r)
                        .await
                        .map_err(|e| e.message().to_string())
                }
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                tracing::info!(plugin = %plugin, container = %u.container_id, "NRI: container updated")
            }
            Err(e) if u.ignore_failure => {
                tracing::info!(plugin = %plugin, container = %u.container_id, error = %e, "NRI: update failed (ignored)")
            }
            Err(e) => {
                tracing::warn!(plugin = %plugin, container = %u.container_id, error = %e, "NRI: update failed");
                failed.push(u);
            }
        }
    }
    for e in evictions {
        tracing::info!(plugin = %plugin, container = %e.container_id, reason = %e.reason, "NRI: evicting container");
        if let Err(err) =
            crate::domain::container::lifecycle::stop(&daemon, &e.container_id, EVICTION_GRACE)
                .await
        {
            tracing::warn!(plugin = %plugin, container = %e.container_id, error = %err.message(), "NRI: eviction failed");
        }
    }
    failed
}

/// CRI resources as NRI describes them (a zero number or an empty string
/// is not set, as in CRI).
pub fn cri_to_nri(r: &LinuxContainerResources) -> api::LinuxResources {
    let i64_ = |v: i64| {
        (v != 0).then_some(api::OptionalInt64 {
            value: v,
            ..Default::default()
        })
    };
    let u64_ = |v: i64| {
        (v > 0).then_some(api::OptionalUInt64 {
            value: v as u64,
            ..Default::default()
        })
    };
    let mut out = api::LinuxResources::new();
    let cpu = api::LinuxCPU {
        shares: u64_(r.cpu_shares).into(),
        quota: i64_(r.cpu_quota).into(),
        period: u64_(r.cpu_period).into(),
        cpus: r.cpuset_cpus.clone(),
        mems: r.cpuset_mems.clone(),
        ..Default::default()
    };
    if cpu != api::LinuxCPU::default() {
        out.cpu = Some(cpu).into();
    }
    let memory = api::LinuxMemory {
        limit: i64_(r.memory_limit_in_bytes).into(),
        swap: i64_(r.memory_swap_limit_in_bytes).into(),
        ..Default::default()
    };
    if memory != api::LinuxMemory::default() {
        out.memory = Some(memory).into();
    }
    out.hugepage_limits = r
        .hugepage_limits
        .iter()
        .map(|h| api::HugepageLimit {
            page_size: h.page_size.clone(),
            limit: h.limit,
            ..Default::default()
        })
        .collect();
    out.unified = r.unified.clone().into_iter().collect();
    out
}

/// NRI resources as a CRI update (UpdateContainerResources' input), or
/// which of the fields set CRI cannot carry.
pub fn nri_to_cri(r: &api::LinuxResources) -> Result<LinuxContainerResources, String> {
    let mut unsupported = Vec::new();
    let signed = |v: u64, what: &str, bad: &mut Vec<String>| {
        i64::try_from(v).unwrap_or_else(|_| {
            bad.push(format!("{what} {v} out of range"));
            0
        })
    };
    let mut out = LinuxContainerResources::default();
    if let Some(cpu) = r.cpu.as_ref() {
        if let Some(v) = cpu.shares.as_ref() {
            out.cpu_shares = signed(v.value, "cpu.shares", &mut unsupported);
        }
        if let Some(v) = cpu.quota.as_ref() {
            out.cpu_quota = v.value;
        }
        if let Some(v) = cpu.period.as_ref() {
            out.cpu_period = signed(v.value, "cpu.period", &mut unsupported);
        }
        out.cpuset_cpus = cpu.cpus.clone();
        out.cpuset_mems = cpu.mems.clone();
        if cpu.realtime_runtime.is_some() || cpu.realtime_period.is_some() {
            unsupported.push("cpu.realtime_*".into());
        }
    }
    if let Some(m) = r.memory.as_ref() {
        if let Some(v) = m.limit.as_ref() {
            out.memory_limit_in_bytes = v.value;
        }
        if let Some(v) = m.swap.as_ref() {
            out.memory_swap_limit_in_bytes = v.value;
        }
        for (set, name) in [
            (m.reservation.is_some(), "memory.reservation"),
            (m.kernel.is_some(), "memory.kernel"),
            (m.kernel_tcp.is_some(), "memory.kernel_tcp"),
            (m.swappiness.is_some(), "memory.swappiness"),
            (m.disable_oom_killer.is_some(), "memory.disable_oom_killer"),
            (m.use_hierarchy.is_some(), "memory.use_hierarchy"),
        ] {
            if set {
                unsupported.push(name.into());
            }
        }
    }
    out.hugepage_limits = r
        .hugepage_limits
        .iter()
        .map(|h| HugepageLimit {
            page_size: h.page_size.clone(),
            limit: h.limit,
        })
        .collect();
    out.unified = r.unified.clone().into_iter().collect();
    for (set, name) in [
        (r.blockio_class.is_some(), "blockio_class"),
        (r.rdt_class.is_some(), "rdt_class"),
        (!r.devices.is_empty(), "devices"),
        (r.pids.is_some(), "pids"),
    ] {
        if set {
            unsupported.push(name.into());
        }
    }
    if unsupported.is_empty() {
        Ok(out)
    } else {
        Err(format!(
            "cannot update {} of a container",
            unsupported.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u64v(v: u64) -> protobuf::MessageField<api::OptionalUInt64> {
        Some(api::OptionalUInt64 {
            value: v,
            ..Default::default()
        })
        .into()
    }

    fn i64v(v: i64) -> protobuf::MessageField<api::OptionalInt64> {
        Some(api::OptionalInt64 {
            value: v,
            ..Default::default()
        })
        .into()
    }

    #[test]
    fn nri_resources_to_cri_and_back() {
        let hp = |s: &str, l: u64| (s.to_string(), l);
        // (NRI resources, want CRI or Err(part of the message))
        let full_cri = LinuxContainerResources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            cpuset_cpus: "0-1".into(),
            cpuset_mems: "0".into(),
            memory_limit_in_bytes: 64 << 20,
            memory_swap_limit_in_bytes: 128 << 20,
            hugepage_limits: vec![HugepageLimit {
                page_size: hp("2MB", 4 << 20).0,
                limit: 4 << 20,
            }],
            unified: [("memory.high".to_string(), "1000000".to_string())].into(),
            ..Default::default()
        };
        let mut full = api::LinuxResources::new();
        full.cpu = Some(api::LinuxCPU {
            shares: u64v(512),
            quota: i64v(50_000),
            period: u64v(100_000),
            cpus: "0-1".into(),
            mems: "0".into(),
            ..Default::default()
        })
        .into();
        full.memory = Some(api::LinuxMemory {
            limit: i64v(64 << 20),
            swap: i64v(128 << 20),
            ..Default::default()
        })
        .into();
        full.hugepage_limits = vec![api::HugepageLimit {
            page_size: "2MB".into(),
            limit: 4 << 20,
            ..Default::default()
        }];
        full.unified = [("memory.high".to_string(), "1000000".to_string())].into();

        let shares_only = {
            let mut r = api::LinuxResources::new();
            r.cpu = Some(api::LinuxCPU {
                shares: u64v(2),
                ..Default::default()
            })
            .into();
            r
        };
        let with = |f: &dyn Fn(&mut api::LinuxResources)| {
            let mut r = shares_only.clone();
            f(&mut r);
            r
        };
        let cases: Vec<(api::LinuxResources, Result<LinuxContainerResources, &str>)> = vec![
            (
                api::LinuxResources::new(),
                Ok(LinuxContainerResources::default()),
            ),
            (full.clone(), Ok(full_cri.clone())),
            (
                shares_only.clone(),
                Ok(LinuxContainerResources {
                    cpu_shares: 2,
                    ..Default::default()
                }),
            ),
            (
                with(&|r| r.memory.mut_or_insert_default().reservation = i64v(1)),
                Err("memory.reservation"),
            ),
            (
                with(&|r| r.cpu.mut_or_insert_default().realtime_runtime = i64v(1)),
                Err("cpu.realtime_*"),
            ),
            (
                with(&|r| {
                    r.pids = Some(api::LinuxPids::default()).into();
                    r.rdt_class = Some(api::OptionalString::default()).into();
                }),
                Err("rdt_class, pids"),
            ),
            (
                with(&|r| r.cpu.mut_or_insert_default().shares = u64v(u64::MAX)),
                Err("cpu.shares 18446744073709551615 out of range"),
            ),
        ];
        for (i, (nri, want)) in cases.into_iter().enumerate() {
            match (nri_to_cri(&nri), want) {
                (Ok(got), Ok(want)) => {
                    assert_eq!(got, want, "case {i}");
                    // And back: what CRI carries comes back the same.
                    assert_eq!(cri_to_nri(&got), nri, "case {i} back");
                }
                (Err(e), Err(part)) => assert!(e.contains(part), "case {i}: {e}"),
                (got, want) => panic!("case {i}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn containers_as_plugins_see_them() {
        use crius_store::{ContainerMetadata, ContainerStatus, ContainerUser};
        let config = ContainerConfig {
            linux: Some(k8s_cri::v1::LinuxContainerConfig {
                resources: Some(LinuxContainerResources {
                    cpu_shares: 256,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let record = ContainerRecord::new(
            ContainerMetadata {
                id: "c1".into(),
                sandbox_id: "p1".into(),
                name: "k8s_app_web_default_u1_0".into(),
                container_name: "app".into(),
                image_ref: "busybox:latest".into(),
                labels: [("l".to_string(), "1".to_string())].into(),
                annotations: [("from".to_string(), "cri".to_string())].into(),
                config: serde_json::to_value(&config).unwrap(),
                ..Default::default()
            },
            ContainerStatus {
                state: ContainerState::Running,
                pid: Some(42),
                started_at: Some(7),
                user: Some(ContainerUser {
                    uid: 1000,
                    gid: 100,
                    supplemental_groups: vec![5],
                }),
                ..Default::default()
            },
        );
        let spec = serde_json::json!({
            "annotations": {"from": "spec"},
            "process": {"args": ["sh", "-c", "x"], "env": ["A=1"], "oomScoreAdj": 100},
            "mounts": [{"destination": "/data", "type": "bind", "source": "/srv", "options": ["rbind", "ro"]}],
            "linux": {
                "cgroupsPath": "/kubepods/pod1/c1",
                "namespaces": [{"type": "network", "path": "/run/netns/x"}, {"type": "mount"}]
            }
        });
        let c = container(&record, Some(&spec));
        assert_eq!(
            (c.id.as_str(), c.pod_sandbox_id.as_str(), c.name.as_str()),
            ("c1", "p1", "app")
        );
        assert_eq!(
            c.state.enum_value_or_default(),
            api::ContainerState::CONTAINER_RUNNING
        );
        assert_eq!((c.pid, c.started_at), (42, 7));
        assert_eq!(c.args, ["sh", "-c", "x"]);
        assert_eq!(c.env, ["A=1"]);
        assert_eq!(c.annotations["from"], "spec");
        assert_eq!(c.labels["l"], "1");
        assert_eq!(c.mounts[0].destination, "/data");
        assert_eq!(c.mounts[0].options, ["rbind", "ro"]);
        assert_eq!(c.linux.cgroups_path, "/kubepods/pod1/c1");
        assert_eq!(c.linux.namespaces.len(), 2);
        assert_eq!(c.linux.namespaces[0].path, "/run/netns/x");
        assert_eq!(c.linux.oom_score_adj.value, 100);
        assert_eq!(c.linux.resources.cpu.shares.value, 256);
        assert_eq!(c.user.additional_gids, [5]);
        assert_eq!(c.image.name, "busybox:latest");
        // Without a spec (a removed bundle): the record's annotations.
        let c = container(&record, None);
        assert_eq!(c.annotations["from"], "cri");
        assert!(c.args.is_empty());
    }
}
