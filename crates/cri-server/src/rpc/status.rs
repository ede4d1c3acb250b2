//! `Status`: the runtime and network conditions (and, verbose, the config).

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;

/// Answers `Status`.
pub async fn status(daemon: &Daemon, req: v1::StatusRequest) -> CriResult<v1::StatusResponse> {
    crate::domain::node::status(daemon, req).await
}
