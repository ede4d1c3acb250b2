//! ImageService calls of the image tests.

use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::{
    AuthConfig, Image, ImageFsInfoRequest, ImageSpec, ImageStatusRequest, ListImagesRequest,
    PullImageRequest, RemoveImageRequest,
};
use std::time::{Duration, Instant};
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

/// ImageFsInfo: used bytes and inodes, summed over the image filesystems.
pub async fn fs_used(c: &mut ImageServiceClient<Channel>) -> (u64, u64) {
    let fs = c
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .expect("ImageFsInfo")
        .into_inner();
    fs.image_filesystems.iter().fold((0, 0), |(b, i), f| {
        (
            b + f.used_bytes.as_ref().map_or(0, |v| v.value),
            i + f.inodes_used.as_ref().map_or(0, |v| v.value),
        )
    })
}

/// Polls ImageFsInfo every 20 ms until `cond` holds on (used bytes,
/// inodes); panics after `limit`. Returns the time it took and the last
/// answer.
pub async fn wait_fs_used(
    c: &mut ImageServiceClient<Channel>,
    what: &str,
    limit: Duration,
    cond: impl Fn(u64, u64) -> bool,
) -> (Duration, (u64, u64)) {
    let start = Instant::now();
    loop {
        let used = fs_used(c).await;
        if cond(used.0, used.1) {
            return (start.elapsed(), used);
        }
        assert!(
            start.elapsed() < limit,
            "{what}: ImageFsInfo still says {used:?} (bytes, inodes) after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
