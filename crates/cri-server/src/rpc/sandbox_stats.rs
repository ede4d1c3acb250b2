//! `PodSandboxStats`: one pod's CPU, memory, network and process stats.

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;

use crate::errors::invalid_field;

/// Answers `PodSandboxStats`.
pub fn pod_sandbox_stats(
    daemon: &Daemon,
    req: v1::PodSandboxStatsRequest,
) -> CriResult<v1::PodSandboxStatsResponse> {
    if req.pod_sandbox_id.is_empty() {
        return Err(invalid_field("pod_sandbox_id", "must not be empty"));
    }
    crate::telemetry::record_ids(&req.pod_sandbox_id, "");
    let record = daemon.store.get_sandbox(&req.pod_sandbox_id)?;
    Ok(v1::PodSandboxStatsResponse {
        stats: Some(crate::runtime::stats::pod_stats(daemon, &record)),
    })
}
