//! `StartContainer`: starts a created container.

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;
use std::sync::Arc;

/// Answers `StartContainer`.
pub async fn start_container(
    daemon: &Arc<Daemon>,
    req: v1::StartContainerRequest,
) -> CriResult<v1::StartContainerResponse> {
    super::container_id(&req.container_id)?;
    crate::domain::container::lifecycle::start(daemon, &req.container_id).await?;
    crate::nri::events::post_start_container(daemon, &req.container_id).await;
    Ok(v1::StartContainerResponse {})
}
