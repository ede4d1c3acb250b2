//! `ReopenContainerLog`: the shim reopens a container's log file.

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;
use std::sync::Arc;

/// Answers `ReopenContainerLog`.
pub async fn reopen_container_log(
    daemon: &Arc<Daemon>,
    req: v1::ReopenContainerLogRequest,
) -> CriResult<v1::ReopenContainerLogResponse> {
    crate::telemetry::record_ids("", &req.container_id);
    crate::domain::container::update::reopen_log(daemon, req).await?;
    Ok(v1::ReopenContainerLogResponse {})
}
