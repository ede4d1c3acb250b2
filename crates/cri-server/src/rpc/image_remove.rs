//! `RemoveImage`: removes an image (its layers go when nothing uses them).

use crate::daemon::Daemon;
use crate::errors::{image_error, CriResult};
use k8s_cri::v1;

/// Answers `RemoveImage`.
pub async fn remove_image(
    daemon: &Daemon,
    req: v1::RemoveImageRequest,
) -> CriResult<v1::RemoveImageResponse> {
    let reference = crate::image::spec_image(req.image.as_ref(), "image.image")?;
    daemon
        .images
        .remove(&reference)
        .await
        .map_err(|e| image_error(e, "image.image"))?;
    Ok(v1::RemoveImageResponse {})
}
