//! `CheckpointContainer`: not implemented by crius yet (Unimplemented, as kubelet expects
//! of a runtime without it).

use crate::errors::CriResult;
use k8s_cri::v1;

use crate::errors::not_yet;

/// Answers `CheckpointContainer`.
pub fn checkpoint_container(
    _req: v1::CheckpointContainerRequest,
) -> CriResult<v1::CheckpointContainerResponse> {
    Err(not_yet("CheckpointContainer"))
}
