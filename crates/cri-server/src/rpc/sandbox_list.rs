//! `ListPodSandbox`: the pods, filtered.

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;

/// Answers `ListPodSandbox`.
pub fn list_pod_sandbox(
    daemon: &Daemon,
    req: v1::ListPodSandboxRequest,
) -> CriResult<v1::ListPodSandboxResponse> {
    // Converted in place: kubelet relists every second, and copying every
    // record (with its stored config) first would cost more than the answer.
    Ok(v1::ListPodSandboxResponse {
        items: crate::domain::sandbox::view::list_store(&daemon.store, req.filter.as_ref()),
    })
}
