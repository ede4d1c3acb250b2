//! `UpdateContainerResources` and `ReopenContainerLog`.

use crate::daemon::Daemon;
use crate::errors::internal;
use crate::errors::CriError;
use crate::errors::{invalid_field, store_status};
use crius_store::ContainerState;
use k8s_cri::v1::{
    LinuxContainerResources, ReopenContainerLogRequest, UpdateContainerResourcesRequest,
};
use std::sync::Arc;

/// The CRI resources after an update, as ContainerStatus reports them: what
/// the update sets (a non-zero number, a non-empty string, a hugepage size,
/// a unified key) replaces the old value, the rest stays, exactly as the
/// update is applied to the OCI spec. `oom_score_adj` is a property of the
/// process, not of its cgroup, so an update does not change it.
pub fn merge_cri_resources(
    old: Option<&LinuxContainerResources>,
    update: &LinuxContainerResources,
) -> LinuxContainerResources {
    let mut out = old.cloned().unwrap_or_default();
    let num = |o: &mut i64, n: i64| {
        if n != 0 {
            *o = n;
        }
    };
    num(&mut out.cpu_period, update.cpu_period);
    num(&mut out.cpu_quota, update.cpu_quota);
    num(&mut out.cpu_shares, update.cpu_shares);
    num(&mut out.memory_limit_in_bytes, update.memory_limit_in_bytes);
    num(
        &mut out.memory_swap_limit_in_bytes,
        update.memory_swap_limit_in_bytes,
    );
    if !update.cpuset_cpus.is_empty() {
        out.cpuset_cpus = update.cpuset_cpus.clone();
    }
    if !update.cpuset_mems.is_empty() {
        out.cpuset_mems = update.cpuset_mems.clone();
    }
    for h in &update.hugepage_limits {
        match out
            .hugepage_limits
            .iter_mut()
            .find(|o| o.page_size == h.page_size)
        {
            Some(o) => o.limit = h.limit,
            None => out.hugepage_limits.push(h.clone()),
        }
    }
    for (k, v) in &update.unified {
        out.unified.insert(k.clone(), v.clone());
    }
    out
}

/// Records the updated resources in the container's status (the source
/// of ContainerStatus.resources; the creation config in the metadata stays
/// as it was), durably.
fn record_resources(
    daemon: &Daemon,
    id: &str,
    update: &LinuxContainerResources,
) -> Result<(), CriError> {
    let record = daemon.store.get_container(id).map_err(store_status)?;
    let config = super::view::stored_config(&record);
    let old = super::view::current_resources(&record, &config);
    let merged = serde_json::to_value(merge_cri_resources(old.as_ref(), update))
        .map_err(|e| internal("container resources", e))?;
    daemon
        .store
        .update_container_status(id, |s| s.resources = Some(merged))
        .map_err(store_status)?;
    Ok(())
}

/// UpdateContainerResources: the subscribed NRI plugins are asked first
/// (UpdateContainer; their answer may change the resources and update or
/// evict other containers), then the resources are applied ([`apply`]),
/// then the plugins are told (PostUpdateContainer).
pub async fn update_resources(
    daemon: &Arc<Daemon>,
    req: UpdateContainerResourcesRequest,
) -> Result<(), CriError> {
    if req.container_id.is_empty() {
        return Err(invalid_field("container_id", "must not be empty"));
    }
    let linux = req
        .linux
        .ok_or_else(|| invalid_field("linux", "is required on Linux"))?;
    let record = daemon
        .store
        .get_container(&req.container_id)
        .map_err(store_status)?;
    let id = record.metadata.id.clone();
    // No container lock is held here: a plugin may update this very
    // container from within its UpdateContainer handler.
    let (linux, nri) = crate::nri::events::update_container(daemon, &record, linux).await?;
    apply(daemon, &id, linux).await?;
    crate::nri::events::post_update_container(daemon, &id, nri).await;
    Ok(())
}

/// Applies new Linux resources to the container's cgroups through the shim
/// (`runtime update`), then records them in the bundle's spec and in the
/// container's record (so that ContainerStatus shows them, also after a
/// restart). A container that has exited only gets the spec and the record
/// updated. The path of UpdateContainerResources and of NRI plugins'
/// updates; it sends no NRI event.
pub async fn apply(
    daemon: &Arc<Daemon>,
    id: &str,
    linux: LinuxContainerResources,
) -> Result<(), CriError> {
    let resources = crius_spec::cgroups::resources(&linux, daemon.host.cgroup_features, "linux")
        .map_err(CriError::from)?;
    let json = serde_json::to_vec(&resources).map_err(|e| internal("resources", e))?;

    let _lock = daemon.locks.lock(id).await;
    let record = daemon.store.get_container(id).map_err(store_status)?;
    if matches!(
        record.status.state,
        ContainerState::Created | ContainerState::Running
    ) {
        let shim = super::shim_for(daemon, &record.metadata.sandbox_id).await?;
        shim.update(id, json).await.map_err(CriError::from)?;
    }
    let config = daemon.paths.container_spec(id);
    match std::fs::read(&config) {
        Ok(bytes) => {
            let out = crius_spec::edit::update_resources(&bytes, &resources)?;
            crius_store::persist::write_volatile(&config, &out, 0o600)
                .map_err(|e| internal("config.json", e))?;
        }
        // The bundle of an exited container may be gone already.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(internal("config.json", e)),
    }
    let d = daemon.clone();
    let cid = id.to_string();
    tokio::task::spawn_blocking(move || record_resources(&d, &cid, &linux))
        .await
        .map_err(|e| internal("store", e))?
}

/// ReopenContainerLog: the shim reopens the container's CRI log file
/// (after kubelet rotated it). Only a running container has a log writer.
pub async fn reopen_log(
    daemon: &Arc<Daemon>,
    req: ReopenContainerLogRequest,
) -> Result<(), CriError> {
    if req.container_id.is_empty() {
        return Err(invalid_field("container_id", "must not be empty"));
    }
    let record = super::running(daemon, &req.container_id)?;
    let id = record.metadata.id.clone();
    if record.metadata.log_path.is_none() {
        return Err(CriError::failed_precondition(format!(
            "container {id} has no log file"
        )));
    }
    let shim = super::shim_for(daemon, &record.metadata.sandbox_id).await?;
    shim.reopen_log(&id, "").await.map_err(CriError::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_resources_after_an_update() {
        use k8s_cri::v1::HugepageLimit;
        let hp = |size: &str, limit: u64| HugepageLimit {
            page_size: size.into(),
            limit,
        };
        let old = LinuxContainerResources {
            cpu_shares: 256,
            cpu_quota: 50_000,
            memory_limit_in_bytes: 64 << 20,
            oom_score_adj: 500,
            cpuset_cpus: "0".into(),
            hugepage_limits: vec![hp("2MB", 1), hp("1GB", 2)],
            unified: [("memory.high".to_string(), "1".to_string())].into(),
            ..Default::default()
        };
        let cases: Vec<(
            Option<&LinuxContainerResources>,
            LinuxContainerResources,
            LinuxContainerResources,
        )> = vec![
            // Nothing set: nothing changes.
            (Some(&old), LinuxContainerResources::default(), old.clone()),
            // Numbers and strings that are set replace; oom_score_adj stays.
            (
                Some(&old),
                LinuxContainerResources {
                    cpu_shares: 512,
                    memory_limit_in_bytes: 96 << 20,
                    memory_swap_limit_in_bytes: 128 << 20,
                    cpu_period: 100_000,
                    oom_score_adj: -10,
                    cpuset_mems: "0".into(),
                    cpuset_cpus: "0-1".into(),
                    ..Default::default()
                },
                LinuxContainerResources {
                    cpu_shares: 512,
                    memory_limit_in_bytes: 96 << 20,
                    memory_swap_limit_in_bytes: 128 << 20,
                    cpu_period: 100_000,
                    cpuset_mems: "0".into(),
                    cpuset_cpus: "0-1".into(),
                    ..old.clone()
                },
            ),
            // Hugepages by size, unified by key.
            (
                Some(&old),
                LinuxContainerResources {
                    hugepage_limits: vec![hp("1GB", 5), hp("64KB", 7)],
                    unified: [
                        ("memory.high".to_string(), "2".to_string()),
                        ("pids.max".to_string(), "10".to_string()),
                    ]
                    .into(),
                    ..Default::default()
                },
                LinuxContainerResources {
                    hugepage_limits: vec![hp("2MB", 1), hp("1GB", 5), hp("64KB", 7)],
                    unified: [
                        ("memory.high".to_string(), "2".to_string()),
                        ("pids.max".to_string(), "10".to_string()),
                    ]
                    .into(),
                    ..old.clone()
                },
            ),
            // A container created without resources gets the update's.
            (
                None,
                LinuxContainerResources {
                    cpu_shares: 2,
                    ..Default::default()
                },
                LinuxContainerResources {
                    cpu_shares: 2,
                    ..Default::default()
                },
            ),
        ];
        for (i, (old, update, want)) in cases.into_iter().enumerate() {
            assert_eq!(merge_cri_resources(old, &update), want, "case {i}");
        }
    }
}
