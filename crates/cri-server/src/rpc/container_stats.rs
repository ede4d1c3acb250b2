//! `ContainerStats`: one container's CPU, memory and writable-layer stats.

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;
use std::sync::Arc;

/// Answers `ContainerStats`.
pub async fn container_stats(
    daemon: &Arc<Daemon>,
    req: v1::ContainerStatsRequest,
) -> CriResult<v1::ContainerStatsResponse> {
    super::on_blocking_pool(daemon, move |daemon: &Daemon| {
        let record = super::known_container(daemon, &req.container_id)?;
        Ok(v1::ContainerStatsResponse {
            stats: Some(crate::domain::stats::container_stats(daemon, &record)),
        })
    })
    .await
}
