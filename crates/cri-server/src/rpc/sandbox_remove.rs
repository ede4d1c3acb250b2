//! `RemovePodSandbox`: removes a pod and its containers (any id).

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;
use std::sync::Arc;

/// Answers `RemovePodSandbox`.
pub async fn remove_pod_sandbox(
    daemon: &Arc<Daemon>,
    req: v1::RemovePodSandboxRequest,
) -> CriResult<v1::RemovePodSandboxResponse> {
    super::pod_id(&req.pod_sandbox_id)?;
    let id = &req.pod_sandbox_id;
    let remove = crate::domain::sandbox::lifecycle::remove(daemon, id);
    crate::nri::events::removing_pod(daemon, id, remove).await?;
    Ok(v1::RemovePodSandboxResponse {})
}
