//! The RPC layer: one file per CRI RPC. Each checks its request, calls the
//! domain (`crate::runtime`, `crate::image`) and builds its response; all
//! return [`CriResult`], which `crate::service` turns into a gRPC status.
//! Nothing below this layer knows of tonic.

pub mod checkpoint_container;
pub mod container_attach;
pub mod container_create;
pub mod container_events;
pub mod container_exec;
pub mod container_exec_sync;
pub mod container_list;
pub mod container_list_stats;
pub mod container_remove;
pub mod container_reopen_log;
pub mod container_start;
pub mod container_stats;
pub mod container_status;
pub mod container_stop;
pub mod container_update_resources;
pub mod image_fs_info;
pub mod image_list;
pub mod image_pull;
pub mod image_remove;
pub mod image_status;
pub mod list_metric_descriptors;
pub mod list_pod_sandbox_metrics;
pub mod port_forward;
pub mod runtime_config;
pub mod sandbox_list;
pub mod sandbox_list_stats;
pub mod sandbox_remove;
pub mod sandbox_run;
pub mod sandbox_stats;
pub mod sandbox_status;
pub mod sandbox_stop;
pub mod status;
pub mod update_runtime_config;
pub mod version;

use crate::daemon::Daemon;
use crate::errors::{invalid_field, CriResult};

/// Checks a request's `pod_sandbox_id` and puts it on the call's span.
fn pod_id(id: &str) -> CriResult<()> {
    if id.is_empty() {
        return Err(invalid_field("pod_sandbox_id", "must not be empty"));
    }
    crate::telemetry::record_ids(id, "");
    Ok(())
}

/// Checks a request's `container_id` and puts it on the call's span.
fn container_id(id: &str) -> CriResult<()> {
    if id.is_empty() {
        return Err(invalid_field("container_id", "must not be empty"));
    }
    crate::telemetry::record_ids("", id);
    Ok(())
}

/// The record of a container named by a request's `container_id`.
fn known_container(daemon: &Daemon, id: &str) -> CriResult<crius_store::ContainerRecord> {
    container_id(id)?;
    Ok(daemon.store.get_container(id)?)
}

/// Runs `f` on the blocking pool, in the caller's span: the stats calls
/// read hundreds of cgroup and proc files, which must not hold an async
/// worker.
pub async fn on_blocking_pool<T: Send + 'static>(
    daemon: &std::sync::Arc<crate::daemon::Daemon>,
    f: impl FnOnce(&crate::daemon::Daemon) -> crate::errors::CriResult<T> + Send + 'static,
) -> crate::errors::CriResult<T> {
    let daemon = daemon.clone();
    crate::telemetry::blocking(tracing::Span::current(), move || f(&daemon))
        .await
        .map_err(|e| crate::errors::internal("blocking task", e))?
}
