//! `ListPodSandboxMetrics`: not implemented by crius yet (Unimplemented, as kubelet expects
//! of a runtime without it).

use crate::errors::CriResult;
use k8s_cri::v1;

use crate::errors::not_yet;

/// Answers `ListPodSandboxMetrics`.
pub fn list_pod_sandbox_metrics(
    _req: v1::ListPodSandboxMetricsRequest,
) -> CriResult<v1::ListPodSandboxMetricsResponse> {
    Err(not_yet("ListPodSandboxMetrics"))
}
