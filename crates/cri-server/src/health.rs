//! Readiness checks behind the CRI `Status` call.

use crate::config::{CniConfig, RuntimeHandler};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long an OCI runtime may take to answer `--version`.
pub const RUNTIME_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the OCI runtime is not ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeCheckError {
    /// The binary does not exist or is not executable.
    #[error("OCI runtime binary {0:?} not found{1}")]
    NotFound(String, String),
    /// The binary exists but did not answer `--version` successfully.
    #[error("OCI runtime {0} does not answer --version: {1}")]
    Failed(String, String),
}

impl RuntimeCheckError {
    /// The CRI condition reason for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            RuntimeCheckError::NotFound(..) => "RuntimeBinaryNotFound",
            RuntimeCheckError::Failed(..) => "RuntimeBinaryNotWorking",
        }
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Resolves a runtime binary: a path is taken as it is, a bare name is looked
/// up in `search_path` (the PATH variable's value).
pub fn resolve_binary(name: &str, search_path: &str) -> Result<PathBuf, RuntimeCheckError> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(RuntimeCheckError::NotFound(name.to_string(), String::new()))
        };
    }
    std::env::split_paths(search_path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
        .ok_or_else(|| {
            RuntimeCheckError::NotFound(name.to_string(), format!(" in PATH ({search_path})"))
        })
}

/// Checks that a runtime handler's binary exists and answers `--version`;
/// returns the first line of its answer.
pub async fn check_runtime(handler: &RuntimeHandler) -> Result<String, RuntimeCheckError> {
    let search_path =
        std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    let binary = resolve_binary(&handler.path, &search_path)?;
    let shown = binary.display().to_string();
    let mut cmd = tokio::process::Command::new(&binary);
    cmd.arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(RUNTIME_CHECK_TIMEOUT, cmd.output()).await {
        Err(_) => {
            return Err(RuntimeCheckError::Failed(
                shown,
                format!("no answer within {RUNTIME_CHECK_TIMEOUT:?}"),
            ))
        }
        Ok(Err(e)) => return Err(RuntimeCheckError::Failed(shown, e.to_string())),
        Ok(Ok(out)) => out,
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(RuntimeCheckError::Failed(
            shown,
            format!("{} {}", out.status, stderr.trim()),
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(stdout.lines().next().unwrap_or("").trim().to_string())
}

/// Checks that a pod network is configured and all its plugins are installed;
/// returns a description of the network.
pub fn check_network(cni: &CniConfig) -> Result<String, String> {
    let list = crius_netns::cni::load_default_network(&cni.conf_dir).map_err(|e| e.to_string())?;
    crius_netns::cni::check_plugins(&list, &cni.bin_dirs, cni.builtin_loopback)
        .map_err(|e| e.to_string())?;
    Ok(list.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[tokio::test]
    async fn runtime_checks() {
        let dir = tempfile::tempdir().unwrap();
        let good = script(
            dir.path(),
            "goodrt",
            "#!/bin/sh\necho 'goodrt version 1.2.3'\necho commit: x\n",
        );
        let bad = script(dir.path(), "badrt", "#!/bin/sh\necho broken >&2\nexit 3\n");
        let handler = |p: &str| RuntimeHandler {
            path: p.to_string(),
            ..Default::default()
        };

        let v = check_runtime(&handler(good.to_str().unwrap()))
            .await
            .unwrap();
        assert_eq!(v, "goodrt version 1.2.3");

        let e = check_runtime(&handler(bad.to_str().unwrap()))
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "RuntimeBinaryNotWorking");
        assert!(e.to_string().contains("broken"), "{e}");

        let e = check_runtime(&handler("/nonexistent/runc"))
            .await
            .unwrap_err();
        assert_eq!(e.reason(), "RuntimeBinaryNotFound");

        let search = dir.path().to_str().unwrap();
        assert_eq!(resolve_binary("goodrt", search).unwrap(), good);
        let e = resolve_binary("nosuchrt", search).unwrap_err().to_string();
        assert!(e.contains("nosuchrt") && e.contains("PATH"), "{e}");
    }

    #[test]
    fn network_check_names_what_is_missing() {
        let conf = tempfile::tempdir().unwrap();
        let bin = tempfile::tempdir().unwrap();
        let mut cni = CniConfig {
            conf_dir: conf.path().to_path_buf(),
            bin_dirs: vec![bin.path().to_path_buf()],
            builtin_loopback: false,
            ..CniConfig::default()
        };
        let e = check_network(&cni).unwrap_err();
        assert!(e.contains("no network config found"), "{e}");

        std::fs::write(
            conf.path().join("10-test.conflist"),
            r#"{"cniVersion":"1.0.0","name":"t","plugins":[{"type":"bridge"},{"type":"loopback"}]}"#,
        )
        .unwrap();
        let e = check_network(&cni).unwrap_err();
        assert!(e.contains("bridge, loopback"), "{e}");

        script(bin.path(), "bridge", "#!/bin/sh\n");
        let e = check_network(&cni).unwrap_err();
        assert!(e.contains("loopback") && !e.contains("bridge"), "{e}");
        // Done in-process, loopback needs no binary.
        cni.builtin_loopback = true;
        let ok = check_network(&cni).unwrap();
        assert!(ok.starts_with("t ("), "{ok}");
        cni.builtin_loopback = false;
        script(bin.path(), "loopback", "#!/bin/sh\n");
        let ok = check_network(&cni).unwrap();
        assert!(ok.starts_with("t ("), "{ok}");
    }
}
