//! ImageService calls of the image tests.

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::{
    AuthConfig, Image, ImageSpec, ImageStatusRequest, ListImagesRequest, PullImageRequest,
    RemoveImageRequest,
};
use tonic::transport::Channel;

/// An image spec naming `image`.
pub fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.to_string(),
        ..Default::default()
    })
}

/// PullImage; returns the image ref (the config digest).
pub async fn pull(
    c: &mut ImageServiceClient<Channel>,
    image: &str,
    auth: Option<AuthConfig>,
) -> Result<String, tonic::Status> {
    c.pull_image(PullImageRequest {
        image: spec(image),
        auth,
        sandbox_config: None,
    })
    .await
    .map(|r| r.into_inner().image_ref)
}

/// ImageStatus (not verbose); `None` when there is no such image.
pub async fn status(c: &mut ImageServiceClient<Channel>, image: &str) -> Option<Image> {
    c.image_status(ImageStatusRequest {
        image: spec(image),
        verbose: false,
    })
    .await
    .expect("ImageStatus")
    .into_inner()
    .image
}

/// ListImages without a filter.
pub async fn list(c: &mut ImageServiceClient<Channel>) -> Vec<Image> {
    c.list_images(ListImagesRequest { filter: None })
        .await
        .expect("ListImages")
        .into_inner()
        .images
}

/// RemoveImage, which must succeed.
pub async fn remove(c: &mut ImageServiceClient<Channel>, image: &str) {
    c.remove_image(RemoveImageRequest { image: spec(image) })
        .await
        .unwrap_or_else(|e| panic!("RemoveImage {image}: {e}"));
}
