//! `UpdateContainerResources` and `ReopenContainerLog`.

use crate::daemon::Daemon;
use crate::errors::internal;
use crate::errors::{invalid_field, store_status};
use crius_store::ContainerState;
use k8s_cri::v1::{ReopenContainerLogRequest, UpdateContainerResourcesRequest};
use std::sync::Arc;
use tonic::Status;

/// Replaces the keys of `update` in the `linux.resources` of an OCI spec,
/// keeping what the update does not mention (devices, pids...).
pub fn merge_resources(spec: &mut serde_json::Value, update: &serde_json::Value) {
    let Some(update) = update.as_object() else {
        return;
    };
    if !spec["linux"].is_object() {
        spec["linux"] = serde_json::json!({});
    }
    if !spec["linux"]["resources"].is_object() {
        spec["linux"]["resources"] = serde_json::json!({});
    }
    if let Some(res) = spec["linux"]["resources"].as_object_mut() {
        for (k, v) in update {
            match (res.get_mut(k), v) {
                (Some(serde_json::Value::Object(old)), serde_json::Value::Object(new)) => {
                    for (kk, vv) in new {
                        old.insert(kk.clone(), vv.clone());
                    }
                }
                _ => {
                    res.insert(k.clone(), v.clone());
                }
            }
        }
    }
}

/// UpdateContainerResources: applies the new Linux resources to the
/// container's cgroups through the shim (`runtime update`), then records
/// them in the bundle's spec. A container that has exited only gets the
/// spec updated.
pub async fn update_resources(
    daemon: &Arc<Daemon>,
    req: UpdateContainerResourcesRequest,
) -> Result<(), Status> {
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
    let resources = crius_spec::cgroups::resources(&linux, daemon.host.cgroup_features, "linux")
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let json = serde_json::to_vec(&resources).map_err(|e| internal("resources", e))?;

    let _lock = daemon.locks.lock(&id).await;
    let record = daemon.store.get_container(&id).map_err(store_status)?;
    if matches!(
        record.status.state,
        ContainerState::Created | ContainerState::Running
    ) {
        let shim = daemon
            .shim(&record.metadata.sandbox_id)
            .await
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "the shim of pod sandbox {} is not running",
                    record.metadata.sandbox_id
                ))
            })?;
        shim.update(&id, json).await.map_err(|e| e.to_status())?;
    }
    let config = super::lifecycle::bundle_dir(daemon, &id).join("config.json");
    match std::fs::read(&config) {
        Ok(bytes) => {
            let mut spec: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| internal("config.json", e))?;
            merge_resources(&mut spec, &resources);
            let out = serde_json::to_vec_pretty(&spec).map_err(|e| internal("config.json", e))?;
            crius_store::persist::write_volatile(&config, &out, 0o600)
                .map_err(|e| internal("config.json", e))?;
        }
        // The bundle of an exited container may be gone already.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(internal("config.json", e)),
    }
    Ok(())
}

/// ReopenContainerLog: the shim reopens the container's CRI log file
/// (after kubelet rotated it). Only a running container has a log writer.
pub async fn reopen_log(
    daemon: &Arc<Daemon>,
    req: ReopenContainerLogRequest,
) -> Result<(), Status> {
    if req.container_id.is_empty() {
        return Err(invalid_field("container_id", "must not be empty"));
    }
    let record = daemon
        .store
        .get_container(&req.container_id)
        .map_err(store_status)?;
    let id = record.metadata.id.clone();
    if record.status.state != ContainerState::Running {
        return Err(Status::failed_precondition(format!(
            "container {id} is not running"
        )));
    }
    if record.metadata.log_path.is_none() {
        return Err(Status::failed_precondition(format!(
            "container {id} has no log file"
        )));
    }
    let shim = daemon
        .shim(&record.metadata.sandbox_id)
        .await
        .ok_or_else(|| {
            Status::failed_precondition(format!(
                "the shim of pod sandbox {} is not running",
                record.metadata.sandbox_id
            ))
        })?;
    shim.reopen_log(&id, "").await.map_err(|e| e.to_status())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resources_merge_into_the_spec() {
        let cases = [
            (
                json!({"linux": {"resources": {"devices": [{"allow": false}], "memory": {"limit": 1, "swap": 1}}}}),
                json!({"memory": {"limit": 2}}),
                json!({"linux": {"resources": {"devices": [{"allow": false}], "memory": {"limit": 2, "swap": 1}}}}),
            ),
            (
                json!({"linux": {}}),
                json!({"cpu": {"shares": 512}}),
                json!({"linux": {"resources": {"cpu": {"shares": 512}}}}),
            ),
            (
                json!({}),
                json!({"unified": {"memory.high": "10"}}),
                json!({"linux": {"resources": {"unified": {"memory.high": "10"}}}}),
            ),
        ];
        for (mut spec, update, want) in cases {
            merge_resources(&mut spec, &update);
            assert_eq!(spec, want);
        }
    }
}
