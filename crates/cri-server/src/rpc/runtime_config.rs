//! `RuntimeConfig`: the cgroup driver kubelet must use.

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;

/// Answers `RuntimeConfig`.
pub fn runtime_config(
    daemon: &Daemon,
    _req: v1::RuntimeConfigRequest,
) -> CriResult<v1::RuntimeConfigResponse> {
    Ok(crate::domain::node::runtime_config(daemon))
}
