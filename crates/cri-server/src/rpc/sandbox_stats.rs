//! `PodSandboxStats`: one pod's CPU, memory, network and process stats.

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;
use std::sync::Arc;

/// Answers `PodSandboxStats`.
pub async fn pod_sandbox_stats(
    daemon: &Arc<Daemon>,
    req: v1::PodSandboxStatsRequest,
) -> CriResult<v1::PodSandboxStatsResponse> {
    super::on_blocking_pool(daemon, move |daemon: &Daemon| {
        super::pod_id(&req.pod_sandbox_id)?;
        let record = daemon.store.get_sandbox(&req.pod_sandbox_id)?;
        Ok(v1::PodSandboxStatsResponse {
            stats: Some(crate::domain::stats::pod_stats(daemon, &record)),
        })
    })
    .await
}
