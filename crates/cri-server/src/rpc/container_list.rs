//! `ListContainers`: the containers, filtered.

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;

/// Answers `ListContainers`.
pub fn list_containers(
    daemon: &Daemon,
    req: v1::ListContainersRequest,
) -> CriResult<v1::ListContainersResponse> {
    // Converted in place (see ListPodSandbox).
    Ok(v1::ListContainersResponse {
        containers: crate::domain::container::view::list_store(&daemon.store, req.filter.as_ref()),
    })
}
