//! criusd's side of NRI: starts listening for plugins (`[nri]`), gives
//! them the daemon's pods and containers when they synchronize, and runs
//! their CreateContainer adjustments on a new container's spec.
//!
//! With no plugin connected, container creation pays one atomic load.

use std::sync::{Arc, Weak};

use crius_nri::api;
use crius_nri::runtime::{Nri, Options, StateSource};
use crius_store::{ContainerState, SandboxRecord};

use crate::daemon::Daemon;
use crate::errors::{internal, spec_status, CriError};

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
        Nri::new(opts)
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
    let _ = daemon.nri.set(nri.clone());
    let started = nri
        .start_preinstalled(
            &config.nri.plugin_path,
            &config.nri.plugin_config_path,
            state,
        )
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
        let pods = daemon.store.list_sandboxes().iter().map(pod).collect();
        let containers = daemon
            .store
            .list_containers()
            .into_iter()
            .map(|c| api::Container {
                id: c.metadata.id.clone(),
                pod_sandbox_id: c.metadata.sandbox_id.clone(),
                name: c.metadata.name.clone(),
                state: match c.status.state {
                    ContainerState::Created => api::ContainerState::CONTAINER_CREATED,
                    ContainerState::Running => api::ContainerState::CONTAINER_RUNNING,
                    ContainerState::Exited => api::ContainerState::CONTAINER_STOPPED,
                    _ => api::ContainerState::CONTAINER_UNKNOWN,
                }
                .into(),
                labels: c.metadata.labels.clone().into_iter().collect(),
                annotations: c.metadata.annotations.clone().into_iter().collect(),
                pid: c.status.pid.unwrap_or(0),
                ..Default::default()
            })
            .collect();
        (pods, containers)
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
        ..Default::default()
    }
}

/// Asks the subscribed plugins about the container being created and
/// applies their adjustments (env, annotations, mounts), in index order.
/// Returns the spec unchanged at once when no plugin is connected.
pub async fn adjust_created(
    daemon: &Daemon,
    sandbox: &SandboxRecord,
    id: &str,
    name: &str,
    spec: oci_spec::runtime::Spec,
) -> Result<oci_spec::runtime::Spec, CriError> {
    let Some(nri) = daemon.nri.get().filter(|n| n.has_plugins()) else {
        return Ok(spec);
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
        ..Default::default()
    };
    let mut spec = spec;
    for a in nri.create_container(&pod(sandbox), &container).await {
        let adj = crius_spec::nri::NriAdjustment {
            env: a
                .adjust
                .env
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.clone()))
                .collect(),
            annotations: a
                .adjust
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            mounts: a
                .adjust
                .mounts
                .iter()
                .map(|m| crius_spec::nri::NriMount {
                    destination: m.destination.clone(),
                    kind: m.type_.clone(),
                    source: m.source.clone(),
                    options: m.options.clone(),
                })
                .collect(),
        };
        spec = crius_spec::nri::apply_adjustment(&spec, &adj).map_err(|e| {
            tracing::warn!(plugin = %a.plugin, container = id, error = %e, "NRI adjustment refused");
            match e {
                crius_spec::SpecError::Internal(m) => {
                    internal(&format!("NRI plugin {}", a.plugin), m)
                }
                other => spec_status(other),
            }
        })?;
        tracing::debug!(plugin = %a.plugin, container = id, "NRI adjustment applied");
    }
    Ok(spec)
}
