//! `PullImage`: pulls an image with the caller's credentials, if any.

use crate::daemon::Daemon;
use crate::errors::{image_error, CriResult};
use k8s_cri::v1;

use crate::errors::invalid_field;
use crius_image::Auth;

/// Answers `PullImage`.
pub async fn pull_image(
    daemon: &Daemon,
    req: v1::PullImageRequest,
) -> CriResult<v1::PullImageResponse> {
    let reference = crate::image::spec_image(req.image.as_ref(), "image.image")?;
    let auth = match &req.auth {
        Some(a) => Auth::from_cri(
            &a.username,
            &a.password,
            &a.auth,
            &a.identity_token,
            &a.registry_token,
        )
        .map_err(|e| invalid_field("auth", e))?,
        None => None,
    };
    let rec = crate::image::pull(daemon, &reference, auth)
        .await
        .map_err(|e| image_error(e, "image.image"))?;
    Ok(v1::PullImageResponse {
        image_ref: rec.metadata.id,
    })
}
