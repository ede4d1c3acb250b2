//! `PortForward`: a streaming URL for a pod's ports.

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;

use crate::errors::invalid_field;
use crate::streaming::StreamingServer;

/// Answers `PortForward`.
pub fn port_forward(
    daemon: &Daemon,
    streaming: &StreamingServer,
    req: v1::PortForwardRequest,
) -> CriResult<v1::PortForwardResponse> {
    if req.pod_sandbox_id.is_empty() {
        return Err(invalid_field("pod_sandbox_id", "must not be empty"));
    }
    crate::telemetry::record_ids(&req.pod_sandbox_id, "");
    daemon.store.get_sandbox(&req.pod_sandbox_id)?;
    let url = streaming.get_port_forward(&req)?;
    Ok(v1::PortForwardResponse { url })
}
