//! `ListPodSandboxStats`: the stats of the pods, filtered.

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;
use std::sync::Arc;

/// Answers `ListPodSandboxStats`.
pub async fn list_pod_sandbox_stats(
    daemon: &Arc<Daemon>,
    req: v1::ListPodSandboxStatsRequest,
) -> CriResult<v1::ListPodSandboxStatsResponse> {
    super::on_blocking_pool(daemon, move |daemon: &Daemon| {
        Ok(v1::ListPodSandboxStatsResponse {
            stats: crate::domain::stats::list_pod_stats(daemon, req.filter.as_ref()),
        })
    })
    .await
}
