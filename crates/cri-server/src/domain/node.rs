//! `Status`, `RuntimeConfig` and `UpdateRuntimeConfig`.

use crate::config::CgroupDriver;
use crate::daemon::{Daemon, RuntimeConfigState, RUNTIME_CONFIG_KEY};
use crate::errors::CriError;
use crate::errors::{invalid_field, store_status};
use crate::health;
use k8s_cri::v1::{
    CgroupDriver as CriCgroupDriver, LinuxRuntimeConfiguration, RuntimeCondition,
    RuntimeConfigResponse, RuntimeFeatures, RuntimeHandler, RuntimeHandlerFeatures, RuntimeStatus,
    StatusRequest, StatusResponse, UpdateRuntimeConfigRequest, UpdateRuntimeConfigResponse,
};
use std::collections::HashMap;
use std::net::IpAddr;

/// CRI condition type: the runtime can run containers.
pub const RUNTIME_READY: &str = "RuntimeReady";
/// CRI condition type: the pod network is ready.
pub const NETWORK_READY: &str = "NetworkReady";

fn condition(kind: &str, result: Result<(), (String, String)>) -> RuntimeCondition {
    match result {
        Ok(()) => RuntimeCondition {
            r#type: kind.to_string(),
            status: true,
            reason: String::new(),
            message: String::new(),
        },
        Err((reason, message)) => RuntimeCondition {
            r#type: kind.to_string(),
            status: false,
            reason,
            message,
        },
    }
}

/// Answers `Status`.
pub async fn status(daemon: &Daemon, req: StatusRequest) -> Result<StatusResponse, CriError> {
    let config = daemon.config();
    let handler = config
        .runtimes
        .get(&config.default_runtime)
        .cloned()
        .unwrap_or_default();
    let runtime = health::check_runtime(&handler).await;
    let cni = config.cni.clone();
    let network = tokio::task::spawn_blocking(move || health::check_network(&cni))
        .await
        .unwrap_or_else(|e| Err(format!("network check failed: {e}")));

    let mut info = HashMap::new();
    if req.verbose {
        let value = serde_json::to_value(config.as_ref())
            .map_err(|e| CriError::internal(format!("cannot render config: {e}")))?;
        info.insert(
            "config".to_string(),
            super::info::containerd_shape(value).to_string(),
        );
        let describe = |r: Result<String, String>| match r {
            Ok(v) => serde_json::json!({ "ready": true, "detail": v }),
            Err(e) => serde_json::json!({ "ready": false, "detail": e }),
        };
        info.insert(
            "runtime".to_string(),
            describe(runtime.clone().map_err(|e| e.to_string())).to_string(),
        );
        info.insert("network".to_string(), describe(network.clone()).to_string());
        info.insert(
            "cdi".to_string(),
            serde_json::json!({
                "enable": config.cdi.enable,
                "specDirs": config.cdi.spec_dirs,
            })
            .to_string(),
        );
        let nri = daemon.nri.get();
        info.insert(
            "nri".to_string(),
            serde_json::json!({
                "enable": config.nri.enable,
                "socketPath": config.nri.socket_path,
                "listening": nri.is_some() && !config.nri.disable_connections,
                "pluginPath": config.nri.plugin_path,
                "pluginConfigPath": config.nri.plugin_config_path,
                "plugins": nri.map(|n| n.plugin_names()).unwrap_or_default(),
            })
            .to_string(),
        );
        info.insert(
            "runtimeConfig".to_string(),
            serde_json::json!({ "podCIDR": daemon.pod_cidr() }).to_string(),
        );
    }

    let runtime_condition = condition(
        RUNTIME_READY,
        runtime
            .map(|_| ())
            .map_err(|e| (e.reason().to_string(), e.to_string())),
    );
    let network_condition = condition(
        NETWORK_READY,
        network
            .map(|_| ())
            .map_err(|e| ("NetworkPluginNotReady".to_string(), e)),
    );

    // The default handler is listed under the empty name, as the CRI asks.
    let features_of = |name: &str| {
        let path = config
            .runtimes
            .get(name)
            .map(|h| h.path.clone())
            .unwrap_or_default();
        let state = config.state.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let f = crate::host::runtime_features(&path);
                handler_features(f, crate::domain::userns::handler_supports(&state, &path))
            })
            .await
            .unwrap_or_default()
        }
    };
    let mut runtime_handlers = vec![RuntimeHandler {
        name: String::new(),
        features: Some(features_of(&config.default_runtime).await),
    }];
    for name in config.runtimes.keys() {
        runtime_handlers.push(RuntimeHandler {
            name: name.clone(),
            features: Some(features_of(name).await),
        });
    }

    Ok(StatusResponse {
        status: Some(RuntimeStatus {
            conditions: vec![runtime_condition, network_condition],
        }),
        info,
        runtime_handlers,
        // Merge and Strict are both implemented (crius_spec::user).
        features: Some(RuntimeFeatures {
            supplemental_groups_policy: true,
        }),
    })
}

/// What crius can offer with a runtime of these features. User namespaces
/// (`userns`: see `runtime::userns::handler_supports`) need the runtime to
/// support them and the kernel to make idmapped mounts, which crius makes
/// itself when the runtime cannot.
pub fn handler_features(f: crate::host::RuntimeFeatures, userns: bool) -> RuntimeHandlerFeatures {
    RuntimeHandlerFeatures {
        recursive_read_only_mounts: f.rro,
        user_namespaces: userns,
    }
}

/// Answers `RuntimeConfig`.
pub fn runtime_config(daemon: &Daemon) -> RuntimeConfigResponse {
    let driver = match daemon.config().cgroup_driver {
        CgroupDriver::Cgroupfs => CriCgroupDriver::Cgroupfs,
        CgroupDriver::Systemd => CriCgroupDriver::Systemd,
    };
    RuntimeConfigResponse {
        linux: Some(LinuxRuntimeConfiguration {
            cgroup_driver: driver as i32,
        }),
    }
}

/// Validates a pod CIDR list such as `10.244.1.0/24,fd00:1::/64`.
pub fn validate_pod_cidr(cidr: &str) -> Result<(), String> {
    for part in cidr.split(',') {
        let part = part.trim();
        let (addr, prefix) = part
            .split_once('/')
            .ok_or_else(|| format!("{part:?} is not a CIDR (address/prefix)"))?;
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("{part:?} has an invalid address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        match prefix.parse::<u8>() {
            Ok(p) if p <= max => {}
            _ => return Err(format!("{part:?} has an invalid prefix length")),
        }
    }
    Ok(())
}

/// Answers `UpdateRuntimeConfig`: records the pod CIDR durably.
pub fn update_runtime_config(
    daemon: &Daemon,
    req: UpdateRuntimeConfigRequest,
) -> Result<UpdateRuntimeConfigResponse, CriError> {
    let Some(cidr) = req
        .runtime_config
        .and_then(|c| c.network_config)
        .map(|n| n.pod_cidr)
    else {
        return Ok(UpdateRuntimeConfigResponse {});
    };
    if !cidr.is_empty() {
        validate_pod_cidr(&cidr)
            .map_err(|m| invalid_field("runtime_config.network_config.pod_cidr", m))?;
    }
    let mut current = daemon
        .runtime_config
        .lock()
        .map_err(|_| CriError::internal("runtime config lock poisoned"))?;
    if current.pod_cidr == cidr {
        return Ok(UpdateRuntimeConfigResponse {});
    }
    let next = RuntimeConfigState { pod_cidr: cidr };
    daemon
        .store
        .put_state(RUNTIME_CONFIG_KEY, &next)
        .map_err(store_status)?;
    tracing::info!(pod_cidr = %next.pod_cidr, "pod CIDR updated");
    *current = next;
    Ok(UpdateRuntimeConfigResponse {})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_cidrs() {
        let cases = [
            ("10.244.1.0/24", true),
            ("10.244.1.0/24,fd00:1::/64", true),
            ("10.244.1.0/33", false),
            ("10.244.1.0", false),
            ("ten/8", false),
            ("fd00::/129", false),
            ("10.0.0.0/8,", false),
        ];
        for (cidr, ok) in cases {
            assert_eq!(validate_pod_cidr(cidr).is_ok(), ok, "{cidr}");
        }
    }
}
