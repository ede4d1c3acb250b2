//! `ExecSync`: runs a command in a container and returns its output.

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;
use std::sync::Arc;

/// Answers `ExecSync`.
pub async fn exec_sync(
    daemon: &Arc<Daemon>,
    req: v1::ExecSyncRequest,
) -> CriResult<v1::ExecSyncResponse> {
    daemon.metrics.execs.with_label_values(&["sync"]).inc();
    crate::telemetry::record_ids("", &req.container_id);
    crate::domain::container::lifecycle::exec_sync(daemon, req).await
}
