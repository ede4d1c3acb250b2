//! `PodSandboxStatus`: one pod's state, network and (verbose) details.

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;

use crate::errors::invalid_field;

/// Answers `PodSandboxStatus`.
pub fn pod_sandbox_status(
    daemon: &Daemon,
    req: v1::PodSandboxStatusRequest,
) -> CriResult<v1::PodSandboxStatusResponse> {
    if req.pod_sandbox_id.is_empty() {
        return Err(invalid_field("pod_sandbox_id", "must not be empty"));
    }
    crate::telemetry::record_ids(&req.pod_sandbox_id, "");
    let record = daemon.store.get_sandbox(&req.pod_sandbox_id)?;
    let (status, info) = crate::runtime::sandbox::status::status(&record, req.verbose);
    Ok(v1::PodSandboxStatusResponse {
        status: Some(status),
        info,
        ..Default::default()
    })
}
