//! `StartContainer`: starts a created container.

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;
use std::sync::Arc;

use crate::errors::invalid_field;

/// Answers `StartContainer`.
pub async fn start_container(
    daemon: &Arc<Daemon>,
    req: v1::StartContainerRequest,
) -> CriResult<v1::StartContainerResponse> {
    if req.container_id.is_empty() {
        return Err(invalid_field("container_id", "must not be empty"));
    }
    crate::telemetry::record_ids("", &req.container_id);
    crate::runtime::container::lifecycle::start(daemon, &req.container_id).await?;
    Ok(v1::StartContainerResponse {})
}
