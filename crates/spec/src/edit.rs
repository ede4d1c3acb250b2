//! Edits of a container's existing spec (its bundle's `config.json`), as
//! pure functions over its bytes: the resources UpdateContainerResources
//! applies, and the process ExecSync runs. The caller reads and writes the
//! file; nothing here does I/O.

use crate::error::SpecError;
use serde_json::Value;

fn parse(config: &[u8]) -> Result<Value, SpecError> {
    serde_json::from_slice(config).map_err(|e| SpecError::Internal(format!("config.json: {e}")))
}

fn serialize(v: &Value) -> Result<Vec<u8>, SpecError> {
    serde_json::to_vec_pretty(v).map_err(|e| SpecError::Internal(format!("config.json: {e}")))
}

/// Replaces the keys of `update` (an OCI `linux.resources` object, as
/// [`crate::cgroups::resources`] builds it) in the `linux.resources` of
/// `spec`, field by field inside each controller, keeping what the update
/// does not mention (devices, pids, ...).
pub fn merge_resources(spec: &mut Value, update: &Value) {
    let Some(update) = update.as_object() else {
        return;
    };
    if !spec["linux"].is_object() {
        spec["linux"] = serde_json::json!({});
    }
    if !spec["linux"]["resources"].is_object() {
        spec["linux"]["resources"] = serde_json::json!({});
    }
    if let Some(res) = spec["linux"]["resources"].as_object_mut() {
        for (k, v) in update {
            match (res.get_mut(k), v) {
                (Some(Value::Object(old)), Value::Object(new)) => {
                    for (kk, vv) in new {
                        old.insert(kk.clone(), vv.clone());
                    }
                }
                _ => {
                    res.insert(k.clone(), v.clone());
                }
            }
        }
    }
}

/// `config` (a `config.json`) with `update` merged into its resources (see
/// [`merge_resources`]).
pub fn update_resources(config: &[u8], update: &Value) -> Result<Vec<u8>, SpecError> {
    let mut spec = parse(config)?;
    merge_resources(&mut spec, update);
    serialize(&spec)
}

/// The OCI process of an exec (ExecSync, or Exec's stream) in the
/// container whose spec is `config`: the container's process (user, env,
/// cwd, capabilities, rlimits, no new privileges, AppArmor and SELinux
/// labels) with `cmd` as its arguments, with a terminal when `terminal`.
pub fn exec_process(config: &[u8], cmd: &[String], terminal: bool) -> Result<Vec<u8>, SpecError> {
    if cmd.is_empty() {
        return Err(crate::error::invalid("cmd", "must not be empty"));
    }
    let spec = parse(config)?;
    let mut process = spec["process"].clone();
    if !process.is_object() {
        return Err(SpecError::Internal(
            "config.json: the container has no process".into(),
        ));
    }
    process["args"] = serde_json::json!(cmd);
    process["terminal"] = serde_json::json!(terminal);
    serde_json::to_vec(&process).map_err(|e| SpecError::Internal(format!("process: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn resources_merge_into_the_spec() {
        let cases = [
            (
                json!({"linux": {"resources": {"devices": [{"allow": false}], "memory": {"limit": 1, "swap": 1}}}}),
                json!({"memory": {"limit": 2}}),
                json!({"linux": {"resources": {"devices": [{"allow": false}], "memory": {"limit": 2, "swap": 1}}}}),
            ),
            (
                json!({"linux": {}}),
                json!({"cpu": {"shares": 512}}),
                json!({"linux": {"resources": {"cpu": {"shares": 512}}}}),
            ),
            (
                json!({}),
                json!({"unified": {"memory.high": "10"}}),
                json!({"linux": {"resources": {"unified": {"memory.high": "10"}}}}),
            ),
            (
                json!({"linux": {"resources": {"cpu": {"shares": 2}}}}),
                json!({"cpu": {"quota": 5000, "period": 100000}}),
                json!({"linux": {"resources": {"cpu": {"shares": 2, "quota": 5000, "period": 100000}}}}),
            ),
        ];
        for (i, (spec, update, want)) in cases.into_iter().enumerate() {
            let mut merged = spec.clone();
            merge_resources(&mut merged, &update);
            assert_eq!(merged, want, "case {i}");
            let bytes = update_resources(&serde_json::to_vec(&spec).unwrap(), &update).unwrap();
            let parsed: Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(parsed, want, "case {i} (bytes)");
        }
        assert!(matches!(
            update_resources(b"{not json", &json!({})),
            Err(SpecError::Internal(_))
        ));
    }

    #[test]
    fn exec_process_keeps_the_container_process() {
        let config = json!({
            "process": {
                "args": ["/pause"],
                "terminal": true,
                "user": {"uid": 1000, "gid": 1000, "additionalGids": [5]},
                "env": ["PATH=/bin", "A=b"],
                "cwd": "/work",
                "capabilities": {"bounding": ["CAP_CHOWN"]},
                "noNewPrivileges": true,
                "apparmorProfile": "crius-default"
            },
            "root": {"path": "rootfs"}
        });
        let bytes = serde_json::to_vec(&config).unwrap();
        let cmd = vec!["sh".to_string(), "-c".to_string(), "echo hi".to_string()];
        for terminal in [false, true] {
            let got: Value =
                serde_json::from_slice(&exec_process(&bytes, &cmd, terminal).unwrap()).unwrap();
            let mut want = config["process"].clone();
            want["args"] = json!(["sh", "-c", "echo hi"]);
            want["terminal"] = json!(terminal);
            assert_eq!(got, want, "terminal {terminal}");
        }

        let cases: [(&[u8], &[String], &str); 3] = [
            (&bytes, &[], "cmd"),
            (b"{}", &cmd, "no process"),
            (b"[", &cmd, "config.json"),
        ];
        for (config, cmd, want) in cases {
            let e = exec_process(config, cmd, false).unwrap_err().to_string();
            assert!(e.contains(want), "{e} vs {want}");
        }
    }
}

/// The bind mounts of `spec` that a container of a user-namespace pod gets
/// through idmapped staging mounts: every mount of type `bind` but `/sys`,
/// as (index in the mount list, source, destination).
pub fn idmapped_binds(
    spec: &oci_spec::runtime::Spec,
) -> Vec<(usize, std::path::PathBuf, std::path::PathBuf)> {
    let Some(mounts) = spec.mounts() else {
        return Vec::new();
    };
    mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| m.typ().as_deref() == Some("bind"))
        .filter_map(|(i, m)| {
            let source = m.source().clone()?;
            (source != std::path::Path::new("/sys")).then(|| (i, source, m.destination().clone()))
        })
        .collect()
}

/// `spec` with the sources of the mounts at the given indexes replaced.
pub fn with_mount_sources(
    mut spec: oci_spec::runtime::Spec,
    sources: &[(usize, std::path::PathBuf)],
) -> oci_spec::runtime::Spec {
    if let Some(mut mounts) = spec.mounts().clone() {
        for (i, source) in sources {
            if let Some(m) = mounts.get_mut(*i) {
                m.set_source(Some(source.clone()));
            }
        }
        spec.set_mounts(Some(mounts));
    }
    spec
}

#[cfg(test)]
mod mount_tests {
    use super::*;
    use oci_spec::runtime::{MountBuilder, Spec};
    use std::path::PathBuf;

    fn mount(typ: &str, source: &str, dest: &str) -> oci_spec::runtime::Mount {
        MountBuilder::default()
            .typ(typ)
            .source(source)
            .destination(dest)
            .build()
            .unwrap()
    }

    #[test]
    fn binds_are_staged_and_replaced_in_place() {
        let mut spec = Spec::default();
        spec.set_mounts(Some(vec![
            mount("proc", "proc", "/proc"),
            mount("bind", "/var/lib/data", "/data"),
            mount("bind", "/sys", "/sys"),
            mount("tmpfs", "tmpfs", "/dev"),
            mount("bind", "/etc/hosts-of-pod", "/etc/hosts"),
        ]));
        let binds = idmapped_binds(&spec);
        let want: Vec<(usize, PathBuf, PathBuf)> = vec![
            (1, "/var/lib/data".into(), "/data".into()),
            (4, "/etc/hosts-of-pod".into(), "/etc/hosts".into()),
        ];
        assert_eq!(binds, want);
        let staged: Vec<(usize, PathBuf)> = binds
            .iter()
            .map(|(i, _, _)| (*i, PathBuf::from(format!("/run/idmap/m{i}"))))
            .collect();
        let spec = with_mount_sources(spec, &staged);
        let sources: Vec<Option<PathBuf>> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.source().clone())
            .collect();
        assert_eq!(
            sources,
            vec![
                Some("proc".into()),
                Some("/run/idmap/m1".into()),
                Some("/sys".into()),
                Some("tmpfs".into()),
                Some("/run/idmap/m4".into()),
            ]
        );
        let mut none = Spec::default();
        none.set_mounts(None);
        assert!(idmapped_binds(&none).is_empty());
    }
}
