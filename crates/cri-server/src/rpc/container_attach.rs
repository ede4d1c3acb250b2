//! `Attach`: a streaming URL for a container's stdio.

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;

use crate::errors::invalid_field;
use crate::streaming::StreamingServer;

/// Answers `Attach`.
pub fn attach(
    daemon: &Daemon,
    streaming: &StreamingServer,
    req: v1::AttachRequest,
) -> CriResult<v1::AttachResponse> {
    let record = super::known_container(daemon, &req.container_id)?;
    if req.stdin && !crate::domain::container::view::stored_config(&record).stdin {
        return Err(invalid_field(
            "stdin",
            "the container was not created with stdin",
        ));
    }
    let url = streaming.get_attach(&req)?;
    Ok(v1::AttachResponse { url })
}
