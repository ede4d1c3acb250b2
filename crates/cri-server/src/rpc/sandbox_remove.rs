//! `RemovePodSandbox`: removes a pod and its containers (any id).

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;
use std::sync::Arc;

use crate::errors::invalid_field;

/// Answers `RemovePodSandbox`.
pub async fn remove_pod_sandbox(
    daemon: &Arc<Daemon>,
    req: v1::RemovePodSandboxRequest,
) -> CriResult<v1::RemovePodSandboxResponse> {
    if req.pod_sandbox_id.is_empty() {
        return Err(invalid_field("pod_sandbox_id", "must not be empty"));
    }
    crate::telemetry::record_ids(&req.pod_sandbox_id, "");
    crate::runtime::sandbox::lifecycle::remove(daemon, &req.pod_sandbox_id).await?;
    Ok(v1::RemovePodSandboxResponse {})
}
