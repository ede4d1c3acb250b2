//! `ImageStatus`: one image (none, without an error, when it is absent).

use crate::daemon::Daemon;
use crate::errors::{image_error, CriResult};
use k8s_cri::v1;

use std::collections::HashMap;

/// Answers `ImageStatus`.
pub fn image_status(
    daemon: &Daemon,
    req: v1::ImageStatusRequest,
) -> CriResult<v1::ImageStatusResponse> {
    let images = &daemon.images;
    let reference = crate::image::spec_image(req.image.as_ref(), "image.image")?;
    let Some(rec) = images
        .resolve(&reference)
        .map_err(|e| image_error(e, "image.image"))?
    else {
        return Ok(v1::ImageStatusResponse::default());
    };
    let mut info = HashMap::new();
    if req.verbose {
        let verbose = serde_json::json!({
            "imageSpec": rec.metadata.config,
            "chainID": rec.metadata.snapshots.last(),
            "snapshots": rec.metadata.snapshots,
            "content": rec.metadata.content,
        });
        info.insert("info".to_string(), verbose.to_string());
    }
    Ok(v1::ImageStatusResponse {
        image: Some(crate::image::to_cri(&rec, images.is_pinned(&rec))),
        info,
    })
}
