//! `RemoveContainer`: removes a container (any id).

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;
use std::sync::Arc;

/// Answers `RemoveContainer`.
pub async fn remove_container(
    daemon: &Arc<Daemon>,
    req: v1::RemoveContainerRequest,
) -> CriResult<v1::RemoveContainerResponse> {
    super::container_id(&req.container_id)?;
    let remove = crate::domain::container::lifecycle::remove(daemon, &req.container_id);
    crate::nri::events::removing_container(daemon, &req.container_id, remove).await?;
    Ok(v1::RemoveContainerResponse {})
}
