//! `ListContainerStats`: the stats of the containers, filtered.

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;
use std::sync::Arc;

/// Answers `ListContainerStats`.
pub async fn list_container_stats(
    daemon: &Arc<Daemon>,
    req: v1::ListContainerStatsRequest,
) -> CriResult<v1::ListContainerStatsResponse> {
    super::on_blocking_pool(daemon, move |daemon: &Daemon| {
        Ok(v1::ListContainerStatsResponse {
            stats: crate::domain::stats::list_container_stats(daemon, req.filter.as_ref()),
        })
    })
    .await
}
