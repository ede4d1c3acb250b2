//! The CRI `ImageService`: a thin translation onto the image store.

use crate::daemon::Daemon;
use crate::errors::not_yet;
use k8s_cri::v1;
use k8s_cri::v1::image_service_server::ImageService;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// The `ImageService` implementation.
#[derive(Clone)]
pub struct ImageSvc {
    #[allow(dead_code)]
    daemon: Arc<Daemon>,
}

impl ImageSvc {
    /// A service over the shared daemon state.
    pub fn new(daemon: Arc<Daemon>) -> Self {
        ImageSvc { daemon }
    }
}

#[tonic::async_trait]
impl ImageService for ImageSvc {
    async fn list_images(
        &self,
        _request: Request<v1::ListImagesRequest>,
    ) -> Result<Response<v1::ListImagesResponse>, Status> {
        Err(not_yet("ListImages"))
    }

    async fn image_status(
        &self,
        _request: Request<v1::ImageStatusRequest>,
    ) -> Result<Response<v1::ImageStatusResponse>, Status> {
        Err(not_yet("ImageStatus"))
    }

    async fn pull_image(
        &self,
        _request: Request<v1::PullImageRequest>,
    ) -> Result<Response<v1::PullImageResponse>, Status> {
        Err(not_yet("PullImage"))
    }

    async fn remove_image(
        &self,
        _request: Request<v1::RemoveImageRequest>,
    ) -> Result<Response<v1::RemoveImageResponse>, Status> {
        Err(not_yet("RemoveImage"))
    }

    async fn image_fs_info(
        &self,
        _request: Request<v1::ImageFsInfoRequest>,
    ) -> Result<Response<v1::ImageFsInfoResponse>, Status> {
        Err(not_yet("ImageFsInfo"))
    }
}
