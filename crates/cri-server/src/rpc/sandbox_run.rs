//! `RunPodSandbox`: runs a pod through hand-back (a retried call after a
//! client timeout gets the pod the first call made), then watches its shim.

use crate::daemon::Daemon;
use crate::errors::CriResult;
use k8s_cri::v1;

use crate::domain::{handback, sandbox};
use std::sync::Arc;

/// Answers `RunPodSandbox`.
pub async fn run_pod_sandbox(
    daemon: &Arc<Daemon>,
    req: v1::RunPodSandboxRequest,
) -> CriResult<v1::RunPodSandboxResponse> {
    let name = req.config.as_ref().and_then(|c| {
        c.metadata.as_ref()?;
        Some(sandbox::sandbox_name(c))
    });
    let fingerprint = serde_json::to_string(&(&req.config, &req.runtime_handler));
    let id = match (name, fingerprint) {
        (Some(name), Ok(fingerprint)) => {
            let d = daemon.clone();
            handback::create(daemon, &sandbox::HANDBACK, &name, fingerprint, move || {
                let (daemon, req) = (d.clone(), req.clone());
                async move {
                    // Until the pod's RunPodSandbox is sent.
                    let _block = crate::nri::events::block_sync(&daemon).await;
                    let id = sandbox::lifecycle::run(&daemon, req).await?;
                    crate::nri::events::run_pod_sandbox(&daemon, &id).await?;
                    if let Ok(Some(address)) =
                        daemon.store.get_sandbox(&id).map(|r| r.status.shim_address)
                    {
                        crate::domain::exits::watch_sandbox(daemon.clone(), id.clone(), address);
                    }
                    Ok(id)
                }
            })
            .await?
        }
        // Invalid requests are refused by validation at once.
        _ => sandbox::lifecycle::run(daemon, req).await?,
    };
    crate::telemetry::record_ids(&id, "");
    Ok(v1::RunPodSandboxResponse { pod_sandbox_id: id })
}
