//! `PortForward`: a streaming URL for a pod's ports.

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;

use crate::streaming::StreamingServer;

/// Answers `PortForward`.
pub fn port_forward(
    daemon: &Daemon,
    streaming: &StreamingServer,
    req: v1::PortForwardRequest,
) -> CriResult<v1::PortForwardResponse> {
    super::pod_id(&req.pod_sandbox_id)?;
    daemon.store.get_sandbox(&req.pod_sandbox_id)?;
    let url = streaming.get_port_forward(&req)?;
    Ok(v1::PortForwardResponse { url })
}
