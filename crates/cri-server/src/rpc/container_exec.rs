//! `Exec`: a streaming URL for a command in a running container.

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;

use crate::errors::CriError;
use crate::streaming::StreamingServer;

/// Answers `Exec`.
pub fn exec(
    daemon: &Daemon,
    streaming: &StreamingServer,
    req: v1::ExecRequest,
) -> CriResult<v1::ExecResponse> {
    let record = super::known_container(daemon, &req.container_id)?;
    if record.status.state != crius_store::ContainerState::Running {
        return Err(CriError::failed_precondition(format!(
            "container {} is not running",
            record.metadata.id
        )));
    }
    let url = streaming.get_exec(&req)?;
    daemon.metrics.execs.with_label_values(&["stream"]).inc();
    Ok(v1::ExecResponse { url })
}
