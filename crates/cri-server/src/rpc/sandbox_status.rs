//! `PodSandboxStatus`: one pod's state, network and (verbose) details.

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;

/// Answers `PodSandboxStatus`.
pub fn pod_sandbox_status(
    daemon: &Daemon,
    req: v1::PodSandboxStatusRequest,
) -> CriResult<v1::PodSandboxStatusResponse> {
    super::pod_id(&req.pod_sandbox_id)?;
    let record = daemon.store.get_sandbox(&req.pod_sandbox_id)?;
    let (status, info) = crate::domain::sandbox::view::status(&record, req.verbose);
    Ok(v1::PodSandboxStatusResponse {
        status: Some(status),
        info,
        ..Default::default()
    })
}
