//! `ListImages`: the images, filtered by reference.

use crate::daemon::Daemon;
use crate::errors::{image_error, CriResult};
use k8s_cri::v1;

use crius_image::ErrorKind;

/// Answers `ListImages`.
pub fn list_images(
    daemon: &Daemon,
    req: v1::ListImagesRequest,
) -> CriResult<v1::ListImagesResponse> {
    let images = &daemon.images;
    let wanted = req
        .filter
        .as_ref()
        .and_then(|f| f.image.as_ref())
        .map(|s| s.image.trim().to_string())
        .filter(|s| !s.is_empty());
    let records = match wanted {
        Some(r) => match images.resolve(&r) {
            Ok(found) => found.into_iter().collect(),
            // A filter that is not a valid reference matches nothing.
            Err(e) if e.kind() == ErrorKind::InvalidArgument => Vec::new(),
            Err(e) => return Err(image_error(e, "filter.image.image")),
        },
        None => images.list(),
    };
    let images = records
        .iter()
        .map(|r| crate::image::to_cri(r, images.is_pinned(r)))
        .collect();
    Ok(v1::ListImagesResponse { images })
}
