//! criusd's side of NRI: starts listening for plugins (`[nri]`), gives
//! them the daemon's pods and containers when they synchronize, and runs
//! their CreateContainer adjustments on a new container's spec; the other
//! events and plugins' updates are in [`events`].
//!
//! With no plugin connected, container creation pays one atomic load.

pub mod events;

use std::sync::{Arc, Weak};

use crius_nri::api;
use crius_nri::runtime::{Nri, Options, PluginUpdates, StateSource, UpdateFuture};
use crius_store::SandboxRecord;

use crate::daemon::Daemon;
use crate::errors::CriError;

mod adjust;

/// Listens on `[nri] socket_path` when NRI is enabled (unless
/// `disable_connections`), then starts the pre-started plugins of
/// `plugin_path` and waits until each has registered or failed. A socket
/// that cannot be set up (another runtime's NRI listening there, say) is
/// logged and criusd runs without NRI: it is on by default and must not
/// stop the daemon.
pub async fn start(daemon: &Arc<Daemon>) {
    let config = daemon.config();
    if !config.nri.enable {
        return;
    }
    let (registration_timeout, request_timeout) = match config.nri_timeouts() {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "NRI disabled");
            return;
        }
    };
    let opts = Options {
        socket_path: config.nri.socket_path.clone(),
        registration_timeout,
        request_timeout,
        runtime_name: "crius".into(),
        runtime_version: env!("CARGO_PKG_VERSION").into(),
    };
    let state: Arc<dyn StateSource> = Arc::new(DaemonState(Arc::downgrade(daemon)));
    let nri = if config.nri.disable_connections {
        tracing::info!("NRI: connections from plugins disabled");
        Nri::new(opts, state.clone())
    } else {
        match Nri::listen(opts, state.clone()).await {
            Ok(nri) => {
                tracing::info!(socket = %config.nri.socket_path.display(), "NRI listening");
                nri
            }
            Err(e) => {
                tracing::error!(error = %e, "NRI disabled");
                return;
            }
        }
    };
    // Before any plugin registers: its Configure and Synchronize count.
    nri.set_observer(daemon.metrics.clone());
    let _ = daemon.nri.set(nri.clone());
    let started = nri
        .start_preinstalled(&config.nri.plugin_path, &config.nri.plugin_config_path)
        .await;
    if !started.is_empty() {
        tracing::info!(plugins = ?started, "NRI pre-started plugins registered");
    }
}

/// Stops NRI at shutdown: the pre-started plugins are killed and reaped.
pub async fn stop(daemon: &Daemon) {
    if let Some(nri) = daemon.nri.get() {
        nri.shutdown().await;
    }
}

struct DaemonState(Weak<Daemon>);

impl StateSource for DaemonState {
    fn snapshot(&self) -> (Vec<api::PodSandbox>, Vec<api::Container>) {
        let Some(daemon) = self.0.upgrade() else {
            return (Vec::new(), Vec::new());
        };
        let pods = daemon
            .store
            .list_sandboxes()
            .iter()
            .map(|s| events::describe_pod(&daemon, s))
            .collect();
        let containers = daemon
            .store
            .list_containers()
            .iter()
            .map(|c| events::describe_container(&daemon, c))
            .collect();
        (pods, containers)
    }

    fn update_containers(
        &self,
        plugin: String,
        update: Vec<api::ContainerUpdate>,
        evict: Vec<api::ContainerEviction>,
    ) -> UpdateFuture {
        let Some(daemon) = self.0.upgrade() else {
            return Box::pin(async move { update });
        };
        Box::pin(events::apply_updates(daemon, plugin, update, evict))
    }
}

/// A pod as NRI describes it.
pub fn pod(s: &SandboxRecord) -> api::PodSandbox {
    api::PodSandbox {
        id: s.metadata.id.clone(),
        name: s.metadata.pod_name.clone(),
        uid: s.metadata.uid.clone(),
        namespace: s.metadata.namespace.clone(),
        labels: s.metadata.labels.clone().into_iter().collect(),
        annotations: s.metadata.annotations.clone().into_iter().collect(),
        runtime_handler: s.metadata.runtime_handler.clone(),
        pid: s.status.pid.unwrap_or(0),
        ips: s
            .status
            .ip
            .iter()
            .chain(&s.status.additional_ips)
            .cloned()
            .collect(),
        linux: Some(pod_linux(s)).into(),
        ..Default::default()
    }
}

/// The Linux part of a pod's description: its cgroup parent, resources
/// and overhead (as kubelet gave them) and the namespaces it holds.
fn pod_linux(s: &SandboxRecord) -> api::LinuxPodSandbox {
    let linux = crate::domain::sandbox::view::stored_config(s)
        .linux
        .unwrap_or_default();
    let namespaces = [
        ("network", &s.status.netns_path),
        ("ipc", &s.status.ipc_path),
        ("uts", &s.status.uts_path),
    ]
    .into_iter()
    .filter_map(|(kind, path)| {
        Some(api::LinuxNamespace {
            type_: kind.into(),
            path: path.clone()?,
            ..Default::default()
        })
    })
    .collect();
    api::LinuxPodSandbox {
        cgroup_parent: linux.cgroup_parent.clone(),
        pod_resources: linux.resources.as_ref().map(events::cri_to_nri).into(),
        pod_overhead: linux.overhead.as_ref().map(events::cri_to_nri).into(),
        namespaces,
        ..Default::default()
    }
}

/// Asks the subscribed plugins about the container being created and
/// applies their adjustments to its spec, in index order, as the spec
/// crate's [`crius_spec::nri`] does (every `ContainerAdjustment` field;
/// two plugins setting the same thing fail the creation, naming both);
/// then lets the validating plugins refuse the result
/// (ValidateContainerAdjustment: FailedPrecondition naming the validator);
/// then resolves the CDI devices they asked for. Returns the adjusted spec
/// and the updates and evictions of other containers the answers carried,
/// to apply once the container is created
/// ([`events::post_create_container`]). Returns the spec unchanged at once
/// when no plugin is connected.
pub async fn adjust_created(
    daemon: &Daemon,
    sandbox: &SandboxRecord,
    id: &str,
    name: &str,
    spec: oci_spec::runtime::Spec,
) -> Result<(oci_spec::runtime::Spec, Vec<PluginUpdates>), CriError> {
    let Some(nri) = daemon.nri.get().filter(|n| n.has_plugins()) else {
        return Ok((spec, Vec::new()));
    };
    let process = spec.process().clone().unwrap_or_default();
    let container = api::Container {
        id: id.to_string(),
        pod_sandbox_id: sandbox.metadata.id.clone(),
        name: name.to_string(),
        state: api::ContainerState::CONTAINER_UNKNOWN.into(),
        annotations: spec.annotations().clone().unwrap_or_default(),
        args: process.args().clone().unwrap_or_default(),
        env: process.env().clone().unwrap_or_default(),
        mounts: spec
            .mounts()
            .iter()
            .flatten()
            .map(|m| api::Mount {
                destination: m.destination().display().to_string(),
                type_: m.typ().clone().unwrap_or_default(),
                source: m
                    .source()
                    .as_ref()
                    .map(|s| s.display().to_string())
                    .unwrap_or_default(),
                options: m.options().clone().unwrap_or_default(),
                ..Default::default()
            })
            .collect(),
        linux: Some(adjust::linux_container(&spec)).into(),
        rlimits: adjust::rlimits(&spec),
        ..Default::default()
    };
    let mut spec = spec;
    let mut owners = crius_spec::nri::Owners::default();
    let mut cdi = Vec::new();
    let mut updates = Vec::new();
    let pod = pod(sandbox);
    // The plugins asked (as a validator is told).
    let consulted = nri.plugin_instances();
    let answers = nri.create_container(&pod, &container).await;
    for a in &answers {
        if !a.update.is_empty() || !a.evict.is_empty() {
            updates.push(a.updates());
        }
        let adj = adjust::from_proto(&a.adjust);
        spec = crius_spec::nri::apply_adjustment(&spec, &a.plugin, &adj, &mut owners).map_err(
            |e| {
                tracing::warn!(plugin = %a.plugin, container = id, error = %e, "NRI adjustment refused");
                CriError::from(e)
            },
        )?;
        cdi.extend(
            adj.cdi_devices
                .into_iter()
                .map(|name| crius_spec::devices::CdiRequest {
                    name,
                    field: format!("NRI plugin {:?} CDI_devices", a.plugin),
                }),
        );
        tracing::debug!(plugin = %a.plugin, container = id, "NRI adjustment applied");
    }
    if nri.has_validators() {
        let req = api::ValidateContainerAdjustmentRequest {
            pod: Some(pod).into(),
            container: Some(container).into(),
            adjust: Some(crius_nri::runtime::merge_adjustments(
                answers.iter().map(|a| &a.adjust),
            ))
            .into(),
            update: answers.iter().flat_map(|a| a.update.clone()).collect(),
            owners: Some(adjust::owning_plugins(id, &owners)).into(),
            plugins: consulted,
            ..Default::default()
        };
        nri.validate_container_adjustment(&req).await.map_err(|r| {
            tracing::warn!(plugin = %r.plugin, container = id, error = %r.message, "NRI validation failed");
            CriError::failed_precondition(r.to_string())
        })?;
    }
    let spec = crate::domain::container::devices::inject_cdi_requests(
        &daemon.config().cdi,
        "NRI CDI_devices",
        cdi,
        spec,
    )
    .await?;
    Ok((spec, updates))
}
