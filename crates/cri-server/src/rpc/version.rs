//! `Version`: the runtime's name and versions.

use crate::errors::CriResult;
use k8s_cri::v1;

/// Answers `Version`.
pub fn version(req: v1::VersionRequest) -> CriResult<v1::VersionResponse> {
    Ok(crate::domain::version::version(req))
}
