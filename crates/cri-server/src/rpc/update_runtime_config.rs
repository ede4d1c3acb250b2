//! `UpdateRuntimeConfig`: the pod CIDR from kubelet.

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;

/// Answers `UpdateRuntimeConfig`.
pub fn update_runtime_config(
    daemon: &Daemon,
    req: v1::UpdateRuntimeConfigRequest,
) -> CriResult<v1::UpdateRuntimeConfigResponse> {
    crate::domain::node::update_runtime_config(daemon, req)
}
