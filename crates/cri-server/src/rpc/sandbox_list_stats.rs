//! `ListPodSandboxStats`: the stats of the pods, filtered.

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;

/// Answers `ListPodSandboxStats`.
pub fn list_pod_sandbox_stats(
    daemon: &Daemon,
    req: v1::ListPodSandboxStatsRequest,
) -> CriResult<v1::ListPodSandboxStatsResponse> {
    Ok(v1::ListPodSandboxStatsResponse {
        stats: crate::runtime::stats::list_pod_stats(daemon, req.filter.as_ref()),
    })
}
