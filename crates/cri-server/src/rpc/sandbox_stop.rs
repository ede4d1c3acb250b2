//! `StopPodSandbox`: stops a pod's containers and its sandbox (any id).

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;
use std::sync::Arc;

/// Answers `StopPodSandbox`.
pub async fn stop_pod_sandbox(
    daemon: &Arc<Daemon>,
    req: v1::StopPodSandboxRequest,
) -> CriResult<v1::StopPodSandboxResponse> {
    super::pod_id(&req.pod_sandbox_id)?;
    crate::domain::sandbox::lifecycle::stop(daemon, &req.pod_sandbox_id).await?;
    Ok(v1::StopPodSandboxResponse {})
}
