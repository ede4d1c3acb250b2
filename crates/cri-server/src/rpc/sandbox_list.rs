//! `ListPodSandbox`: the pods, filtered.

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;

/// Answers `ListPodSandbox`.
pub fn list_pod_sandbox(
    daemon: &Daemon,
    req: v1::ListPodSandboxRequest,
) -> CriResult<v1::ListPodSandboxResponse> {
    let records = daemon.store.list_sandboxes();
    Ok(v1::ListPodSandboxResponse {
        items: crate::runtime::sandbox::status::list(&records, req.filter.as_ref()),
    })
}
