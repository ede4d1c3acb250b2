//! `ListContainerStats`: the stats of the containers, filtered.

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;

/// Answers `ListContainerStats`.
pub fn list_container_stats(
    daemon: &Daemon,
    req: v1::ListContainerStatsRequest,
) -> CriResult<v1::ListContainerStatsResponse> {
    Ok(v1::ListContainerStatsResponse {
        stats: crate::runtime::stats::list_container_stats(daemon, req.filter.as_ref()),
    })
}
