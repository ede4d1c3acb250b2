//! `CreateContainer`: creates a container in a pod through hand-back (a
//! retried call after a client timeout gets the container the first call made).

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;

use crate::domain::{container, handback};
use std::sync::Arc;

/// Answers `CreateContainer`.
pub async fn create_container(
    daemon: &Arc<Daemon>,
    req: v1::CreateContainerRequest,
) -> CriResult<v1::CreateContainerResponse> {
    let name = req
        .config
        .as_ref()
        .and_then(|c| c.metadata.as_ref())
        .filter(|_| !req.pod_sandbox_id.is_empty())
        .map(|m| format!("{}/{}_{}", req.pod_sandbox_id, m.name, m.attempt));
    let fingerprint = serde_json::to_string(&(&req.config, &req.sandbox_config));
    let id = match (name, fingerprint) {
        (Some(name), Ok(fingerprint)) => {
            let d = daemon.clone();
            handback::create(
                daemon,
                &container::HANDBACK,
                &name,
                fingerprint,
                move || {
                    let (daemon, req) = (d.clone(), req.clone());
                    async move {
                        // Before the container's lock and its first event.
                        let _block = crate::nri::events::block_sync(&daemon).await;
                        let (id, updates) = container::lifecycle::create(&daemon, req).await?;
                        crate::nri::events::post_create_container(&daemon, &id, updates).await;
                        Ok(id)
                    }
                },
            )
            .await?
        }
        // Invalid requests are refused by validation at once.
        _ => {
            let (id, updates) = container::lifecycle::create(daemon, req).await?;
            crate::nri::events::post_create_container(daemon, &id, updates).await;
            id
        }
    };
    Ok(v1::CreateContainerResponse { container_id: id })
}
