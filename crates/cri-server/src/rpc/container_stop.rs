//! `StopContainer`: the stop signal, then SIGKILL at the timeout (any id).

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;
use std::sync::Arc;

/// Answers `StopContainer`.
pub async fn stop_container(
    daemon: &Arc<Daemon>,
    req: v1::StopContainerRequest,
) -> CriResult<v1::StopContainerResponse> {
    super::container_id(&req.container_id)?;
    let timeout = std::time::Duration::from_secs(req.timeout.max(0) as u64);
    let stop = crate::domain::container::lifecycle::stop(daemon, &req.container_id, timeout);
    crate::nri::events::stopping_container(daemon, &req.container_id, stop).await?;
    Ok(v1::StopContainerResponse {})
}
