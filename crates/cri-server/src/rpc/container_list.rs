//! `ListContainers`: the containers, filtered.

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;

/// Answers `ListContainers`.
pub fn list_containers(
    daemon: &Daemon,
    req: v1::ListContainersRequest,
) -> CriResult<v1::ListContainersResponse> {
    let records = daemon.store.list_containers();
    Ok(v1::ListContainersResponse {
        containers: crate::runtime::container::status::list(&records, req.filter.as_ref()),
    })
}
