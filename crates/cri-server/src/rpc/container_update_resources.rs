//! `UpdateContainerResources`: new cgroup limits for a container.

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;
use std::sync::Arc;

/// Answers `UpdateContainerResources`.
pub async fn update_container_resources(
    daemon: &Arc<Daemon>,
    req: v1::UpdateContainerResourcesRequest,
) -> CriResult<v1::UpdateContainerResourcesResponse> {
    crate::telemetry::record_ids("", &req.container_id);
    crate::domain::container::update::update_resources(daemon, req).await?;
    Ok(v1::UpdateContainerResourcesResponse {})
}
