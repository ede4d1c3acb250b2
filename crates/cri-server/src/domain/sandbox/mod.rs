//! The pod half of the RuntimeService: request validation and naming.

pub mod files;
pub mod lifecycle;
pub mod network;
pub mod view;

use crate::daemon::Daemon;
use crate::errors::CriError;
use k8s_cri::v1::PodSandboxConfig;

use crate::config::Config;
use crate::errors::invalid_field;

/// The name a sandbox is reserved under, as kubelet's dockershim and
/// containerd build it: `k8s_POD_<name>_<namespace>_<uid>_<attempt>`.
pub fn sandbox_name(config: &PodSandboxConfig) -> String {
    let m = config.metadata.clone().unwrap_or_default();
    format!("k8s_POD_{}_{}_{}_{}", m.name, m.namespace, m.uid, m.attempt)
}

/// The name a container is reserved under:
/// `k8s_<container>_<pod>_<namespace>_<uid>_<attempt>`.
pub fn container_name(container: &str, attempt: u32, pod: &PodSandboxConfig) -> String {
    let m = pod.metadata.clone().unwrap_or_default();
    format!(
        "k8s_{}_{}_{}_{}_{}",
        container, m.name, m.namespace, m.uid, attempt
    )
}

fn check_name_part(value: &str, field: &str) -> Result<(), CriError> {
    if value.is_empty() {
        return Err(invalid_field(field, "must not be empty"));
    }
    if value.len() > 253 || value.chars().any(|c| c.is_control() || c == '/') {
        return Err(invalid_field(
            field,
            format!("{value:?} is not a valid name"),
        ));
    }
    Ok(())
}

/// Validates what RunPodSandbox needs before anything is created; returns
/// the runtime handler name to use.
pub fn validate_run(
    config: Option<&PodSandboxConfig>,
    handler: &str,
    daemon: &Config,
) -> Result<String, CriError> {
    let config = config.ok_or_else(|| invalid_field("config", "is required"))?;
    let meta = config
        .metadata
        .as_ref()
        .ok_or_else(|| invalid_field("config.metadata", "is required"))?;
    check_name_part(&meta.name, "config.metadata.name")?;
    check_name_part(&meta.namespace, "config.metadata.namespace")?;
    check_name_part(&meta.uid, "config.metadata.uid")?;
    if !config.log_directory.is_empty() && !config.log_directory.starts_with('/') {
        return Err(invalid_field(
            "config.log_directory",
            format!("{:?} is not an absolute path", config.log_directory),
        ));
    }
    if config.hostname.len() > 64
        || config
            .hostname
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        return Err(invalid_field(
            "config.hostname",
            format!("{:?} is not a valid hostname", config.hostname),
        ));
    }
    network::bandwidth(config).map_err(|(field, message)| invalid_field(&field, message))?;
    let handler = if handler.is_empty() {
        daemon.default_runtime.clone()
    } else {
        handler.to_string()
    };
    if !daemon.runtimes.contains_key(&handler) {
        let known: Vec<&str> = daemon.runtimes.keys().map(String::as_str).collect();
        return Err(invalid_field(
            "runtime_handler",
            format!(
                "unknown runtime handler {handler:?} (configured: {})",
                known.join(", ")
            ),
        ));
    }
    Ok(handler)
}

/// The address the shim of `sandbox_id` listens on, as `start` derives it.
pub fn shim_address(daemon: &Daemon, sandbox_id: &str) -> String {
    let path = daemon.shim_layout().socket(
        &daemon.config().socket.display().to_string(),
        crate::shimclient::NAMESPACE,
        sandbox_id,
    );
    format!("unix://{}", path.display())
}

/// Pods as hand-back creates them: an unclaimed pod is stopped and
/// removed.
pub static HANDBACK: crate::domain::handback::Kind = crate::domain::handback::Kind {
    name: "sandbox",
    exists: |daemon, id| daemon.store.get_sandbox(id).is_ok(),
    clean_up: |daemon, id| {
        Box::pin(async move {
            match lifecycle::stop(&daemon, &id).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => {
                    tracing::warn!(sandbox = %id, error = %e.message(), "hand-back expiry: stop failed")
                }
            }
            lifecycle::remove(&daemon, &id).await
        })
    },
};

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::PodSandboxMetadata;

    fn pod() -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "web".into(),
                namespace: "prod".into(),
                uid: "u-1".into(),
                attempt: 2,
            }),
            hostname: "web".into(),
            log_directory: "/var/log/pods/prod_web_u-1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn names() {
        assert_eq!(sandbox_name(&pod()), "k8s_POD_web_prod_u-1_2");
        assert_eq!(container_name("app", 1, &pod()), "k8s_app_web_prod_u-1_1");
    }

    #[test]
    fn validation_table() {
        let cfg = Config::default();
        let with = |f: &dyn Fn(&mut PodSandboxConfig)| {
            let mut p = pod();
            f(&mut p);
            Some(p)
        };
        let cases: Vec<(Option<PodSandboxConfig>, &str, Result<&str, &str>)> = vec![
            (Some(pod()), "", Ok("runc")),
            (Some(pod()), "runc", Ok("runc")),
            (Some(pod()), "kata", Err("runtime_handler")),
            (None, "", Err("config: is required")),
            (with(&|p| p.metadata = None), "", Err("config.metadata")),
            (
                with(&|p| p.metadata.as_mut().unwrap().name.clear()),
                "",
                Err("config.metadata.name"),
            ),
            (
                with(&|p| p.metadata.as_mut().unwrap().namespace.clear()),
                "",
                Err("config.metadata.namespace"),
            ),
            (
                with(&|p| p.metadata.as_mut().unwrap().uid.clear()),
                "",
                Err("config.metadata.uid"),
            ),
            (
                with(&|p| p.metadata.as_mut().unwrap().name = "a/b".into()),
                "",
                Err("config.metadata.name"),
            ),
            (
                with(&|p| p.log_directory = "relative/dir".into()),
                "",
                Err("config.log_directory"),
            ),
            (
                with(&|p| p.hostname = "bad host".into()),
                "",
                Err("config.hostname"),
            ),
        ];
        for (p, h, want) in cases {
            let got = validate_run(p.as_ref(), h, &cfg);
            match want {
                Ok(w) => assert_eq!(got.unwrap(), w),
                Err(s) => {
                    let e = got.unwrap_err();
                    assert_eq!(e.code(), tonic::Code::InvalidArgument);
                    assert!(e.message().contains(s), "{}", e.message());
                }
            }
        }
    }
}
