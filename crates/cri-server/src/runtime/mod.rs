//! The CRI `RuntimeService`: one module per RPC group, this file only dispatches.

pub mod container;
pub mod filter;
pub mod handback;
pub mod sandbox;
pub mod stats;
pub mod status;
pub mod stream;
pub mod userns;
pub mod version;

use crate::daemon::Daemon;
use crate::errors::{invalid_field, not_yet, store_status};
use k8s_cri::v1;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Now, in nanoseconds since the Unix epoch (the CRI's timestamps).
/// Adds `nodev` and `nosuid` (as asked) to the overlay mounts of a root
/// filesystem as the host mounts it (`<bundle>/rootfs`). runc bind-mounts
/// that mount as the container's `/`, and a bind keeps these flags, so they
/// hold inside the container as well: `nosuid` only where setuid files
/// could not raise privileges anyway (no_new_privs, the pause), `nodev`
/// where the container has no business with device nodes in its rootfs
/// (`/dev` is a tmpfs of its own). A user namespace pod's overlay is always
/// mounted with both (see `userns::idmapped_rootfs`).
pub fn harden_rootfs(
    mut mounts: Vec<crius_image::Mount>,
    nodev: bool,
    nosuid: bool,
) -> Vec<crius_image::Mount> {
    for m in mounts.iter_mut().filter(|m| m.kind == "overlay") {
        for (want, opt) in [(nosuid, "nosuid"), (nodev, "nodev")] {
            if want && !m.options.iter().any(|o| o == opt) {
                m.options.push(opt.to_string());
            }
        }
    }
    mounts
}

pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The stream type of `GetContainerEvents`.
pub type ContainerEventStream =
    Pin<Box<dyn Stream<Item = Result<v1::ContainerEventResponse, Status>> + Send + 'static>>;

/// The `RuntimeService` implementation.
#[derive(Clone)]
pub struct RuntimeSvc {
    daemon: Arc<Daemon>,
    streaming: crate::streaming::StreamingServer,
}

impl RuntimeSvc {
    /// A service over the shared daemon state and the streaming server.
    pub fn new(daemon: Arc<Daemon>, streaming: crate::streaming::StreamingServer) -> Self {
        RuntimeSvc { daemon, streaming }
    }

    fn known_container(&self, id: &str) -> Result<crius_store::ContainerRecord, Status> {
        if id.is_empty() {
            return Err(invalid_field("container_id", "must not be empty"));
        }
        crate::telemetry::record_ids("", id);
        self.daemon.store.get_container(id).map_err(store_status)
    }
}

#[tonic::async_trait]
impl RuntimeService for RuntimeSvc {
    async fn version(
        &self,
        request: Request<v1::VersionRequest>,
    ) -> Result<Response<v1::VersionResponse>, Status> {
        Ok(Response::new(version::version(request.into_inner())))
    }

    async fn status(
        &self,
        request: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusResponse>, Status> {
        status::status(&self.daemon, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn runtime_config(
        &self,
        _request: Request<v1::RuntimeConfigRequest>,
    ) -> Result<Response<v1::RuntimeConfigResponse>, Status> {
        Ok(Response::new(status::runtime_config(&self.daemon)))
    }

    async fn update_runtime_config(
        &self,
        request: Request<v1::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<v1::UpdateRuntimeConfigResponse>, Status> {
        status::update_runtime_config(&self.daemon, request.into_inner()).map(Response::new)
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<v1::RunPodSandboxRequest>,
    ) -> Result<Response<v1::RunPodSandboxResponse>, Status> {
        let req = request.into_inner();
        let name = req.config.as_ref().and_then(|c| {
            c.metadata.as_ref()?;
            Some(sandbox::sandbox_name(c))
        });
        let fingerprint = serde_json::to_string(&(&req.config, &req.runtime_handler));
        let id = match (name, fingerprint) {
            (Some(name), Ok(fingerprint)) => {
                let daemon = self.daemon.clone();
                handback::create(
                    &self.daemon,
                    handback::Kind::Sandbox,
                    &name,
                    fingerprint,
                    move || {
                        let (daemon, req) = (daemon.clone(), req.clone());
                        async move {
                            let id = sandbox::lifecycle::run(&daemon, req).await?;
                            if let Ok(Some(address)) =
                                daemon.store.get_sandbox(&id).map(|r| r.status.shim_address)
                            {
                                crate::recover::watch_sandbox(daemon.clone(), id.clone(), address);
                            }
                            Ok(id)
                        }
                    },
                )
                .await?
            }
            // Invalid requests are refused by validation at once.
            _ => sandbox::lifecycle::run(&self.daemon, req).await?,
        };
        crate::telemetry::record_ids(&id, "");
        Ok(Response::new(v1::RunPodSandboxResponse {
            pod_sandbox_id: id,
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<v1::StopPodSandboxRequest>,
    ) -> Result<Response<v1::StopPodSandboxResponse>, Status> {
        let req = request.into_inner();
        if req.pod_sandbox_id.is_empty() {
            return Err(invalid_field("pod_sandbox_id", "must not be empty"));
        }
        crate::telemetry::record_ids(&req.pod_sandbox_id, "");
        sandbox::lifecycle::stop(&self.daemon, &req.pod_sandbox_id).await?;
        Ok(Response::new(v1::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<v1::RemovePodSandboxRequest>,
    ) -> Result<Response<v1::RemovePodSandboxResponse>, Status> {
        let req = request.into_inner();
        if req.pod_sandbox_id.is_empty() {
            return Err(invalid_field("pod_sandbox_id", "must not be empty"));
        }
        crate::telemetry::record_ids(&req.pod_sandbox_id, "");
        sandbox::lifecycle::remove(&self.daemon, &req.pod_sandbox_id).await?;
        Ok(Response::new(v1::RemovePodSandboxResponse {}))
    }

    async fn create_container(
        &self,
        request: Request<v1::CreateContainerRequest>,
    ) -> Result<Response<v1::CreateContainerResponse>, Status> {
        let req = request.into_inner();
        let name = req
            .config
            .as_ref()
            .and_then(|c| c.metadata.as_ref())
            .filter(|_| !req.pod_sandbox_id.is_empty())
            .map(|m| format!("{}/{}_{}", req.pod_sandbox_id, m.name, m.attempt));
        let fingerprint = serde_json::to_string(&(&req.config, &req.sandbox_config));
        let id = match (name, fingerprint) {
            (Some(name), Ok(fingerprint)) => {
                let daemon = self.daemon.clone();
                handback::create(
                    &self.daemon,
                    handback::Kind::Container,
                    &name,
                    fingerprint,
                    move || {
                        let (daemon, req) = (daemon.clone(), req.clone());
                        async move { container::lifecycle::create(&daemon, req).await }
                    },
                )
                .await?
            }
            // Invalid requests are refused by validation at once.
            _ => container::lifecycle::create(&self.daemon, req).await?,
        };
        Ok(Response::new(v1::CreateContainerResponse {
            container_id: id,
        }))
    }

    async fn start_container(
        &self,
        request: Request<v1::StartContainerRequest>,
    ) -> Result<Response<v1::StartContainerResponse>, Status> {
        let req = request.into_inner();
        if req.container_id.is_empty() {
            return Err(invalid_field("container_id", "must not be empty"));
        }
        crate::telemetry::record_ids("", &req.container_id);
        container::lifecycle::start(&self.daemon, &req.container_id).await?;
        Ok(Response::new(v1::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<v1::StopContainerRequest>,
    ) -> Result<Response<v1::StopContainerResponse>, Status> {
        let req = request.into_inner();
        if req.container_id.is_empty() {
            return Err(invalid_field("container_id", "must not be empty"));
        }
        crate::telemetry::record_ids("", &req.container_id);
        let timeout = std::time::Duration::from_secs(req.timeout.max(0) as u64);
        container::lifecycle::stop(&self.daemon, &req.container_id, timeout).await?;
        Ok(Response::new(v1::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<v1::RemoveContainerRequest>,
    ) -> Result<Response<v1::RemoveContainerResponse>, Status> {
        let req = request.into_inner();
        if req.container_id.is_empty() {
            return Err(invalid_field("container_id", "must not be empty"));
        }
        crate::telemetry::record_ids("", &req.container_id);
        container::lifecycle::remove(&self.daemon, &req.container_id).await?;
        Ok(Response::new(v1::RemoveContainerResponse {}))
    }

    async fn exec_sync(
        &self,
        request: Request<v1::ExecSyncRequest>,
    ) -> Result<Response<v1::ExecSyncResponse>, Status> {
        self.daemon.metrics.execs.with_label_values(&["sync"]).inc();
        crate::telemetry::record_ids("", &request.get_ref().container_id);
        container::lifecycle::exec_sync(&self.daemon, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn exec(
        &self,
        request: Request<v1::ExecRequest>,
    ) -> Result<Response<v1::ExecResponse>, Status> {
        let req = request.into_inner();
        let record = self.known_container(&req.container_id)?;
        if record.status.state != crius_store::ContainerState::Running {
            return Err(Status::failed_precondition(format!(
                "container {} is not running",
                record.metadata.id
            )));
        }
        let url = self.streaming.get_exec(&req)?;
        self.daemon
            .metrics
            .execs
            .with_label_values(&["stream"])
            .inc();
        Ok(Response::new(v1::ExecResponse { url }))
    }

    async fn attach(
        &self,
        request: Request<v1::AttachRequest>,
    ) -> Result<Response<v1::AttachResponse>, Status> {
        let req = request.into_inner();
        let record = self.known_container(&req.container_id)?;
        if req.stdin && !container::status::stored_config(&record).stdin {
            return Err(invalid_field(
                "stdin",
                "the container was not created with stdin",
            ));
        }
        let url = self.streaming.get_attach(&req)?;
        Ok(Response::new(v1::AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        request: Request<v1::PortForwardRequest>,
    ) -> Result<Response<v1::PortForwardResponse>, Status> {
        let req = request.into_inner();
        if req.pod_sandbox_id.is_empty() {
            return Err(invalid_field("pod_sandbox_id", "must not be empty"));
        }
        crate::telemetry::record_ids(&req.pod_sandbox_id, "");
        self.daemon
            .store
            .get_sandbox(&req.pod_sandbox_id)
            .map_err(store_status)?;
        let url = self.streaming.get_port_forward(&req)?;
        Ok(Response::new(v1::PortForwardResponse { url }))
    }

    async fn container_stats(
        &self,
        request: Request<v1::ContainerStatsRequest>,
    ) -> Result<Response<v1::ContainerStatsResponse>, Status> {
        let req = request.into_inner();
        let record = self.known_container(&req.container_id)?;
        Ok(Response::new(v1::ContainerStatsResponse {
            stats: Some(stats::container_stats(&self.daemon, &record)),
        }))
    }

    async fn list_container_stats(
        &self,
        request: Request<v1::ListContainerStatsRequest>,
    ) -> Result<Response<v1::ListContainerStatsResponse>, Status> {
        let req = request.into_inner();
        Ok(Response::new(v1::ListContainerStatsResponse {
            stats: stats::list_container_stats(&self.daemon, req.filter.as_ref()),
        }))
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<v1::PodSandboxStatsRequest>,
    ) -> Result<Response<v1::PodSandboxStatsResponse>, Status> {
        let req = request.into_inner();
        if req.pod_sandbox_id.is_empty() {
            return Err(invalid_field("pod_sandbox_id", "must not be empty"));
        }
        crate::telemetry::record_ids(&req.pod_sandbox_id, "");
        let record = self
            .daemon
            .store
            .get_sandbox(&req.pod_sandbox_id)
            .map_err(store_status)?;
        Ok(Response::new(v1::PodSandboxStatsResponse {
            stats: Some(stats::pod_stats(&self.daemon, &record)),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<v1::ListPodSandboxStatsRequest>,
    ) -> Result<Response<v1::ListPodSandboxStatsResponse>, Status> {
        let req = request.into_inner();
        Ok(Response::new(v1::ListPodSandboxStatsResponse {
            stats: stats::list_pod_stats(&self.daemon, req.filter.as_ref()),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<v1::ListPodSandboxRequest>,
    ) -> Result<Response<v1::ListPodSandboxResponse>, Status> {
        let req = request.into_inner();
        let records = self.daemon.store.list_sandboxes();
        Ok(Response::new(v1::ListPodSandboxResponse {
            items: sandbox::status::list(&records, req.filter.as_ref()),
        }))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<v1::PodSandboxStatusRequest>,
    ) -> Result<Response<v1::PodSandboxStatusResponse>, Status> {
        let req = request.into_inner();
        if req.pod_sandbox_id.is_empty() {
            return Err(invalid_field("pod_sandbox_id", "must not be empty"));
        }
        crate::telemetry::record_ids(&req.pod_sandbox_id, "");
        let record = self
            .daemon
            .store
            .get_sandbox(&req.pod_sandbox_id)
            .map_err(store_status)?;
        let (status, info) = sandbox::status::status(&record, req.verbose);
        Ok(Response::new(v1::PodSandboxStatusResponse {
            status: Some(status),
            info,
            ..Default::default()
        }))
    }

    async fn list_containers(
        &self,
        request: Request<v1::ListContainersRequest>,
    ) -> Result<Response<v1::ListContainersResponse>, Status> {
        let req = request.into_inner();
        let records = self.daemon.store.list_containers();
        Ok(Response::new(v1::ListContainersResponse {
            containers: container::status::list(&records, req.filter.as_ref()),
        }))
    }

    async fn container_status(
        &self,
        request: Request<v1::ContainerStatusRequest>,
    ) -> Result<Response<v1::ContainerStatusResponse>, Status> {
        let req = request.into_inner();
        let mut record = self.known_container(&req.container_id)?;
        if req.verbose && record.status.timeline.is_empty() {
            // Created, not started: CreateContainer's phases are not stored yet.
            let pending = self.daemon.create_phases.lock();
            if let Some(phases) = pending
                .unwrap_or_else(|e| e.into_inner())
                .get(&record.metadata.id)
            {
                record.status.timeline = phases.clone();
            }
        }
        let (status, info) = container::status::status(&record, req.verbose);
        Ok(Response::new(v1::ContainerStatusResponse {
            status: Some(status),
            info,
        }))
    }

    type GetContainerEventsStream = ContainerEventStream;

    async fn get_container_events(
        &self,
        _request: Request<v1::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        Ok(Response::new(container::events::subscribe(&self.daemon)))
    }

    async fn update_container_resources(
        &self,
        request: Request<v1::UpdateContainerResourcesRequest>,
    ) -> Result<Response<v1::UpdateContainerResourcesResponse>, Status> {
        crate::telemetry::record_ids("", &request.get_ref().container_id);
        container::update::update_resources(&self.daemon, request.into_inner()).await?;
        Ok(Response::new(v1::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        request: Request<v1::ReopenContainerLogRequest>,
    ) -> Result<Response<v1::ReopenContainerLogResponse>, Status> {
        crate::telemetry::record_ids("", &request.get_ref().container_id);
        container::update::reopen_log(&self.daemon, request.into_inner()).await?;
        Ok(Response::new(v1::ReopenContainerLogResponse {}))
    }

    async fn checkpoint_container(
        &self,
        _request: Request<v1::CheckpointContainerRequest>,
    ) -> Result<Response<v1::CheckpointContainerResponse>, Status> {
        Err(not_yet("CheckpointContainer"))
    }

    async fn list_metric_descriptors(
        &self,
        _request: Request<v1::ListMetricDescriptorsRequest>,
    ) -> Result<Response<v1::ListMetricDescriptorsResponse>, Status> {
        Err(not_yet("ListMetricDescriptors"))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<v1::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<v1::ListPodSandboxMetricsResponse>, Status> {
        Err(not_yet("ListPodSandboxMetrics"))
    }
}
