//! `ContainerStatus`: one container's state (with, verbose, the phases of
//! a CreateContainer whose container has not started yet).

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;

/// Answers `ContainerStatus`.
pub fn container_status(
    daemon: &Daemon,
    req: v1::ContainerStatusRequest,
) -> CriResult<v1::ContainerStatusResponse> {
    let mut record = super::known_container(daemon, &req.container_id)?;
    if req.verbose && record.status.timeline.is_empty() {
        // Created, not started: CreateContainer's phases are not stored yet.
        let pending = daemon.create_phases.lock();
        if let Some(phases) = pending
            .unwrap_or_else(|e| e.into_inner())
            .get(&record.metadata.id)
        {
            record.status.timeline = phases.clone();
        }
    }
    let (status, info) = crate::domain::container::view::status(&record, req.verbose);
    Ok(v1::ContainerStatusResponse {
        status: Some(status),
        info,
    })
}
