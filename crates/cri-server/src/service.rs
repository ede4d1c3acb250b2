//! The tonic services: one line per CRI method, each handing its request to
//! the RPC's file in [`crate::rpc`] and its result to [`reply`], the only
//! place a [`crate::errors::CriError`] becomes a gRPC status.

use crate::daemon::Daemon;
use crate::errors::CriResult;
use crate::rpc;
use crate::streaming::StreamingServer;
use k8s_cri::v1;
use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

/// A domain result as a tonic reply.
fn reply<T>(result: CriResult<T>) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(Status::from)
}

/// The stream type of `GetContainerEvents`.
pub type ContainerEventStream =
    Pin<Box<dyn Stream<Item = Result<v1::ContainerEventResponse, Status>> + Send + 'static>>;

/// The CRI `RuntimeService`.
#[derive(Clone)]
pub struct RuntimeSvc {
    daemon: Arc<Daemon>,
    streaming: StreamingServer,
}

impl RuntimeSvc {
    /// A service over the shared daemon state and the streaming server.
    pub fn new(daemon: Arc<Daemon>, streaming: StreamingServer) -> Self {
        RuntimeSvc { daemon, streaming }
    }
}

#[tonic::async_trait]
impl RuntimeService for RuntimeSvc {
    async fn version(
        &self,
        r: Request<v1::VersionRequest>,
    ) -> Result<Response<v1::VersionResponse>, Status> {
        reply(rpc::version::version(r.into_inner()))
    }
    async fn status(
        &self,
        r: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        reply(rpc::status::status(&self.daemon, r.into_inner()).await)
    }
    async fn runtime_config(
        &self,
        r: Request<v1::RuntimeConfigRequest>,
    ) -> Result<Response<v1::RuntimeConfigResponse>, Status> {
        reply(rpc::runtime_config::runtime_config(
            &self.daemon,
            r.into_inner(),
        ))
    }
    async fn update_runtime_config(
        &self,
        r: Request<v1::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<v1::UpdateRuntimeConfigResponse>, Status> {
        reply(rpc::update_runtime_config::update_runtime_config(
            &self.daemon,
            r.into_inner(),
        ))
    }
    async fn run_pod_sandbox(
        &self,
        r: Request<v1::RunPodSandboxRequest>,
    ) -> Result<Response<v1::RunPodSandboxResponse>, Status> {
        reply(rpc::sandbox_run::run_pod_sandbox(&self.daemon, r.into_inner()).await)
    }
    async fn stop_pod_sandbox(
        &self,
        r: Request<v1::StopPodSandboxRequest>,
    ) -> Result<Response<v1::StopPodSandboxResponse>, Status> {
        reply(rpc::sandbox_stop::stop_pod_sandbox(&self.daemon, r.into_inner()).await)
    }
    async fn remove_pod_sandbox(
        &self,
        r: Request<v1::RemovePodSandboxRequest>,
    ) -> Result<Response<v1::RemovePodSandboxResponse>, Status> {
        reply(rpc::sandbox_remove::remove_pod_sandbox(&self.daemon, r.into_inner()).await)
    }
    async fn pod_sandbox_status(
        &self,
        r: Request<v1::PodSandboxStatusRequest>,
    ) -> Result<Response<v1::PodSandboxStatusResponse>, Status> {
        reply(rpc::sandbox_status::pod_sandbox_status(
            &self.daemon,
            r.into_inner(),
        ))
    }
    async fn list_pod_sandbox(
        &self,
        r: Request<v1::ListPodSandboxRequest>,
    ) -> Result<Response<v1::ListPodSandboxResponse>, Status> {
        reply(rpc::sandbox_list::list_pod_sandbox(
            &self.daemon,
            r.into_inner(),
        ))
    }
    async fn create_container(
        &self,
        r: Request<v1::CreateContainerRequest>,
    ) -> Result<Response<v1::CreateContainerResponse>, Status> {
        reply(rpc::container_create::create_container(&self.daemon, r.into_inner()).await)
    }
    async fn start_container(
        &self,
        r: Request<v1::StartContainerRequest>,
    ) -> Result<Response<v1::StartContainerResponse>, Status> {
        reply(rpc::container_start::start_container(&self.daemon, r.into_inner()).await)
    }
    async fn stop_container(
        &self,
        r: Request<v1::StopContainerRequest>,
    ) -> Result<Response<v1::StopContainerResponse>, Status> {
        reply(rpc::container_stop::stop_container(&self.daemon, r.into_inner()).await)
    }
    async fn remove_container(
        &self,
        r: Request<v1::RemoveContainerRequest>,
    ) -> Result<Response<v1::RemoveContainerResponse>, Status> {
        reply(rpc::container_remove::remove_container(&self.daemon, r.into_inner()).await)
    }
    async fn list_containers(
        &self,
        r: Request<v1::ListContainersRequest>,
    ) -> Result<Response<v1::ListContainersResponse>, Status> {
        reply(rpc::container_list::list_containers(
            &self.daemon,
            r.into_inner(),
        ))
    }
    async fn container_status(
        &self,
        r: Request<v1::ContainerStatusRequest>,
    ) -> Result<Response<v1::ContainerStatusResponse>, Status> {
        reply(rpc::container_status::container_status(
            &self.daemon,
            r.into_inner(),
        ))
    }
    async fn update_container_resources(
        &self,
        r: Request<v1::UpdateContainerResourcesRequest>,
    ) -> Result<Response<v1::UpdateContainerResourcesResponse>, Status> {
        reply(
            rpc::container_update_resources::update_container_resources(
                &self.daemon,
                r.into_inner(),
            )
            .await,
        )
    }
    async fn reopen_container_log(
        &self,
        r: Request<v1::ReopenContainerLogRequest>,
    ) -> Result<Response<v1::ReopenContainerLogResponse>, Status> {
        reply(rpc::container_reopen_log::reopen_container_log(&self.daemon, r.into_inner()).await)
    }
    async fn exec_sync(
        &self,
        r: Request<v1::ExecSyncRequest>,
    ) -> Result<Response<v1::ExecSyncResponse>, Status> {
        reply(rpc::container_exec_sync::exec_sync(&self.daemon, r.into_inner()).await)
    }
    async fn exec(
        &self,
        r: Request<v1::ExecRequest>,
    ) -> Result<Response<v1::ExecResponse>, Status> {
        reply(rpc::container_exec::exec(
            &self.daemon,
            &self.streaming,
            r.into_inner(),
        ))
    }
    async fn attach(
        &self,
        r: Request<v1::AttachRequest>,
    ) -> Result<Response<v1::AttachResponse>, Status> {
        reply(rpc::container_attach::attach(
            &self.daemon,
            &self.streaming,
            r.into_inner(),
        ))
    }
    async fn port_forward(
        &self,
        r: Request<v1::PortForwardRequest>,
    ) -> Result<Response<v1::PortForwardResponse>, Status> {
        reply(rpc::port_forward::port_forward(
            &self.daemon,
            &self.streaming,
            r.into_inner(),
        ))
    }
    async fn container_stats(
        &self,
        r: Request<v1::ContainerStatsRequest>,
    ) -> Result<Response<v1::ContainerStatsResponse>, Status> {
        reply(rpc::container_stats::container_stats(&self.daemon, r.into_inner()).await)
    }
    async fn list_container_stats(
        &self,
        r: Request<v1::ListContainerStatsRequest>,
    ) -> Result<Response<v1::ListContainerStatsResponse>, Status> {
        reply(rpc::container_list_stats::list_container_stats(&self.daemon, r.into_inner()).await)
    }
    async fn pod_sandbox_stats(
        &self,
        r: Request<v1::PodSandboxStatsRequest>,
    ) -> Result<Response<v1::PodSandboxStatsResponse>, Status> {
        reply(rpc::sandbox_stats::pod_sandbox_stats(&self.daemon, r.into_inner()).await)
    }
    async fn list_pod_sandbox_stats(
        &self,
        r: Request<v1::ListPodSandboxStatsRequest>,
    ) -> Result<Response<v1::ListPodSandboxStatsResponse>, Status> {
        reply(rpc::sandbox_list_stats::list_pod_sandbox_stats(&self.daemon, r.into_inner()).await)
    }
    async fn checkpoint_container(
        &self,
        r: Request<v1::CheckpointContainerRequest>,
    ) -> Result<Response<v1::CheckpointContainerResponse>, Status> {
        reply(rpc::checkpoint_container::checkpoint_container(
            r.into_inner(),
        ))
    }
    async fn list_metric_descriptors(
        &self,
        r: Request<v1::ListMetricDescriptorsRequest>,
    ) -> Result<Response<v1::ListMetricDescriptorsResponse>, Status> {
        reply(rpc::list_metric_descriptors::list_metric_descriptors(
            r.into_inner(),
        ))
    }
    async fn list_pod_sandbox_metrics(
        &self,
        r: Request<v1::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<v1::ListPodSandboxMetricsResponse>, Status> {
        reply(rpc::list_pod_sandbox_metrics::list_pod_sandbox_metrics(
            r.into_inner(),
        ))
    }
    type GetContainerEventsStream = ContainerEventStream;

    async fn get_container_events(
        &self,
        r: Request<v1::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        reply(
            rpc::container_events::get_container_events(&self.daemon, r.into_inner())
                .map(|s| Box::pin(s.map(Ok)) as ContainerEventStream),
        )
    }
}

/// The CRI `ImageService`.
#[derive(Clone)]
pub struct ImageSvc {
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
        r: Request<v1::ListImagesRequest>,
    ) -> Result<Response<v1::ListImagesResponse>, Status> {
        reply(rpc::image_list::list_images(&self.daemon, r.into_inner()))
    }
    async fn image_status(
        &self,
        r: Request<v1::ImageStatusRequest>,
    ) -> Result<Response<v1::ImageStatusResponse>, Status> {
        reply(rpc::image_status::image_status(
            &self.daemon,
            r.into_inner(),
        ))
    }
    async fn pull_image(
        &self,
        r: Request<v1::PullImageRequest>,
    ) -> Result<Response<v1::PullImageResponse>, Status> {
        reply(rpc::image_pull::pull_image(&self.daemon, r.into_inner()).await)
    }
    async fn remove_image(
        &self,
        r: Request<v1::RemoveImageRequest>,
    ) -> Result<Response<v1::RemoveImageResponse>, Status> {
        reply(rpc::image_remove::remove_image(&self.daemon, r.into_inner()).await)
    }
    async fn image_fs_info(
        &self,
        r: Request<v1::ImageFsInfoRequest>,
    ) -> Result<Response<v1::ImageFsInfoResponse>, Status> {
        reply(rpc::image_fs_info::image_fs_info(&self.daemon, r.into_inner()).await)
    }
}
