//! `GetContainerEvents`: a stream of container and pod events from now on.

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;

use crate::domain::container::events::EventStream;

/// Answers `GetContainerEvents`.
pub fn get_container_events(daemon: &Daemon, _req: v1::GetEventsRequest) -> CriResult<EventStream> {
    Ok(crate::domain::container::events::subscribe(daemon))
}
