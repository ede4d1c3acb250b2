//! The container half of the RuntimeService.

pub mod devices;
pub mod events;
pub mod image_mounts;
pub mod lifecycle;
pub mod update;
pub mod view;

use crate::daemon::Daemon;
use crate::errors::{store_status, CriError};
use crate::shimclient::Shim;
use crius_store::{ContainerRecord, ContainerState};

/// The connection to the shim of pod `sandbox_id`, or FailedPrecondition.
pub(crate) async fn shim_for(daemon: &Daemon, sandbox_id: &str) -> Result<Shim, CriError> {
    daemon.shim(sandbox_id).await.ok_or_else(|| {
        CriError::failed_precondition(format!(
            "the shim of pod sandbox {sandbox_id} is not running"
        ))
    })
}

/// The record of a running container (by id or unique prefix): NotFound,
/// or FailedPrecondition when it is not running.
pub(crate) fn running(daemon: &Daemon, id: &str) -> Result<ContainerRecord, CriError> {
    let record = daemon.store.get_container(id).map_err(store_status)?;
    if record.status.state != ContainerState::Running {
        return Err(CriError::failed_precondition(format!(
            "container {} is not running",
            record.metadata.id
        )));
    }
    Ok(record)
}

/// Containers as hand-back creates them: an unclaimed container is
/// removed.
pub static HANDBACK: crate::domain::handback::Kind = crate::domain::handback::Kind {
    name: "container",
    exists: |daemon, id| daemon.store.get_container(id).is_ok(),
    clean_up: |daemon, id| Box::pin(async move { lifecycle::remove(&daemon, &id).await }),
};
