//! Edits of existing specs, as pure functions: the resources
//! UpdateContainerResources applies to a container's `config.json`, the
//! process ExecSync and Exec run in it, the pod's network namespace and
//! `/dev/shm` put into the pause container's, and the idmapped staging of
//! bind mounts. The typed functions work on `oci_spec` values; the byte
//! forms read and write a `config.json` for callers that hold the file
//! (they do the I/O; nothing here does).

use crate::error::SpecError;
use oci_spec::runtime::{
    LinuxBlockIo, LinuxCpu, LinuxMemory, LinuxNetwork, LinuxResources, Process, Spec,
};

fn parse(config: &[u8]) -> Result<Spec, SpecError> {
    serde_json::from_slice(config).map_err(|e| SpecError::Internal(format!("config.json: {e}")))
}

fn serialize(spec: &Spec) -> Result<Vec<u8>, SpecError> {
    serde_json::to_vec_pretty(spec).map_err(|e| SpecError::Internal(format!("config.json: {e}")))
}

/// `new`'s value where it has one, else `old`'s.
fn or<T>(new: Option<T>, old: Option<T>) -> Option<T> {
    new.or(old)
}

fn merge_cpu(old: &LinuxCpu, new: &LinuxCpu) -> LinuxCpu {
    let mut c = old.clone();
    c.set_shares(or(new.shares(), old.shares()));
    c.set_quota(or(new.quota(), old.quota()));
    c.set_idle(or(new.idle(), old.idle()));
    c.set_burst(or(new.burst(), old.burst()));
    c.set_period(or(new.period(), old.period()));
    c.set_realtime_runtime(or(new.realtime_runtime(), old.realtime_runtime()));
    c.set_realtime_period(or(new.realtime_period(), old.realtime_period()));
    c.set_cpus(or(new.cpus().clone(), old.cpus().clone()));
    c.set_mems(or(new.mems().clone(), old.mems().clone()));
    c
}

fn merge_memory(old: &LinuxMemory, new: &LinuxMemory) -> LinuxMemory {
    let mut m = *old;
    m.set_limit(or(new.limit(), old.limit()));
    m.set_reservation(or(new.reservation(), old.reservation()));
    m.set_swap(or(new.swap(), old.swap()));
    #[allow(deprecated)]
    m.set_kernel(or(new.kernel(), old.kernel()));
    m.set_kernel_tcp(or(new.kernel_tcp(), old.kernel_tcp()));
    m.set_swappiness(or(new.swappiness(), old.swappiness()));
    m.set_disable_oom_killer(or(new.disable_oom_killer(), old.disable_oom_killer()));
    m.set_use_hierarchy(or(new.use_hierarchy(), old.use_hierarchy()));
    m.set_check_before_update(or(new.check_before_update(), old.check_before_update()));
    m
}

fn merge_block_io(old: &LinuxBlockIo, new: &LinuxBlockIo) -> LinuxBlockIo {
    let mut b = old.clone();
    b.set_weight(or(new.weight(), old.weight()));
    b.set_leaf_weight(or(new.leaf_weight(), old.leaf_weight()));
    b.set_weight_device(or(new.weight_device().clone(), old.weight_device().clone()));
    b.set_throttle_read_bps_device(or(
        new.throttle_read_bps_device().clone(),
        old.throttle_read_bps_device().clone(),
    ));
    b.set_throttle_write_bps_device(or(
        new.throttle_write_bps_device().clone(),
        old.throttle_write_bps_device().clone(),
    ));
    b.set_throttle_read_iops_device(or(
        new.throttle_read_iops_device().clone(),
        old.throttle_read_iops_device().clone(),
    ));
    b.set_throttle_write_iops_device(or(
        new.throttle_write_iops_device().clone(),
        old.throttle_write_iops_device().clone(),
    ));
    b
}

fn merge_network(old: &LinuxNetwork, new: &LinuxNetwork) -> LinuxNetwork {
    let mut n = old.clone();
    n.set_class_id(or(new.class_id(), old.class_id()));
    n.set_priorities(or(new.priorities().clone(), old.priorities().clone()));
    n
}

/// `old` with `new`'s entries added (a key in both takes `new`'s value).
fn merge_map<V: Clone>(
    old: &std::collections::HashMap<String, V>,
    new: &std::collections::HashMap<String, V>,
) -> std::collections::HashMap<String, V> {
    let mut m = old.clone();
    m.extend(new.iter().map(|(k, v)| (k.clone(), v.clone())));
    m
}

/// Merges two optional controllers: `merge` when both are set, else
/// whichever is.
fn merge_opt<T: Clone>(old: &Option<T>, new: &Option<T>, merge: fn(&T, &T) -> T) -> Option<T> {
    match (old, new) {
        (Some(o), Some(n)) => Some(merge(o, n)),
        (o, None) => o.clone(),
        (None, n) => n.clone(),
    }
}

/// `res` with what `update` sets replaced, field by field inside each
/// controller (and key by key in `unified` and `rdma`), keeping what the
/// update does not mention (devices, pids, ...); lists (device rules,
/// hugepage limits) are replaced whole.
pub fn merged_resources(res: &LinuxResources, update: &LinuxResources) -> LinuxResources {
    let mut out = res.clone();
    out.set_devices(or(update.devices().clone(), res.devices().clone()));
    out.set_memory(merge_opt(res.memory(), update.memory(), merge_memory));
    out.set_cpu(merge_opt(res.cpu(), update.cpu(), merge_cpu));
    out.set_pids(or(*update.pids(), *res.pids()));
    out.set_block_io(merge_opt(res.block_io(), update.block_io(), merge_block_io));
    out.set_hugepage_limits(or(
        update.hugepage_limits().clone(),
        res.hugepage_limits().clone(),
    ));
    out.set_network(merge_opt(res.network(), update.network(), merge_network));
    out.set_rdma(merge_opt(res.rdma(), update.rdma(), merge_map));
    out.set_unified(merge_opt(res.unified(), update.unified(), merge_map));
    out
}

/// Merges `update` (as [`crate::cgroups::resources`] builds it) into the
/// `linux.resources` of `spec` (see [`merged_resources`]), creating
/// `linux` and its resources when the spec has none.
pub fn merge_resources(spec: &mut Spec, update: &LinuxResources) {
    let mut linux = spec.linux().clone().unwrap_or_else(crate::oci::linux);
    let res = linux.resources().clone().unwrap_or_default();
    linux.set_resources(Some(merged_resources(&res, update)));
    spec.set_linux(Some(linux));
}

/// `config` (a `config.json`) with `update` merged into its resources (see
/// [`merge_resources`]).
pub fn update_resources(config: &[u8], update: &LinuxResources) -> Result<Vec<u8>, SpecError> {
    let mut spec = parse(config)?;
    merge_resources(&mut spec, update);
    serialize(&spec)
}

/// The OCI process of an exec (ExecSync, or Exec's stream) in the
/// container of `spec`: the container's process (user, env, cwd,
/// capabilities, rlimits, no new privileges, AppArmor and SELinux labels)
/// with `cmd` as its arguments, with a terminal when `terminal`.
pub fn exec(spec: &Spec, cmd: &[String], terminal: bool) -> Result<Process, SpecError> {
    if cmd.is_empty() {
        return Err(crate::error::invalid("cmd", "must not be empty"));
    }
    let mut process = spec
        .process()
        .clone()
        .ok_or_else(|| SpecError::Internal("config.json: the container has no process".into()))?;
    process.set_args(Some(cmd.to_vec()));
    process.set_terminal(Some(terminal));
    Ok(process)
}

/// [`exec`] over a `config.json`, as the process's JSON.
pub fn exec_process(config: &[u8], cmd: &[String], terminal: bool) -> Result<Vec<u8>, SpecError> {
    // An empty command is refused before the file is looked at.
    if cmd.is_empty() {
        return Err(crate::error::invalid("cmd", "must not be empty"));
    }
    let process = exec(&parse(config)?, cmd, terminal)?;
    serde_json::to_vec(&process).map_err(|e| SpecError::Internal(format!("process: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn spec_of(v: Value) -> Spec {
        serde_json::from_value(v).unwrap()
    }

    fn res_of(v: Value) -> LinuxResources {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn resources_merge_into_the_spec() {
        // (spec, update, the spec after the update)
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
            (
                json!({"linux": {"resources": {"unified": {"memory.high": "10", "pids.max": "5"}, "pids": {"limit": 3}}}}),
                json!({"unified": {"memory.high": "20"}, "hugepageLimits": [{"pageSize": "2MB", "limit": 4}]}),
                json!({"linux": {"resources": {
                    "unified": {"memory.high": "20", "pids.max": "5"},
                    "pids": {"limit": 3},
                    "hugepageLimits": [{"pageSize": "2MB", "limit": 4}]
                }}}),
            ),
            (
                json!({"linux": {"resources": {"hugepageLimits": [{"pageSize": "1GB", "limit": 1}], "blockIO": {"weight": 10}}}}),
                json!({"hugepageLimits": [{"pageSize": "2MB", "limit": 4}], "blockIO": {"leafWeight": 20}, "pids": {"limit": 9}}),
                json!({"linux": {"resources": {
                    "hugepageLimits": [{"pageSize": "2MB", "limit": 4}],
                    "blockIO": {"weight": 10, "leafWeight": 20},
                    "pids": {"limit": 9}
                }}}),
            ),
            (
                json!({"linux": {"resources": {"memory": {"limit": 1}}}}),
                json!({}),
                json!({"linux": {"resources": {"memory": {"limit": 1}}}}),
            ),
        ];
        for (i, (spec, update, want)) in cases.into_iter().enumerate() {
            let (update, want) = (res_of(update), spec_of(want));
            let mut merged = spec_of(spec.clone());
            merge_resources(&mut merged, &update);
            assert_eq!(merged, want, "case {i}");
            let bytes = update_resources(&serde_json::to_vec(&spec).unwrap(), &update).unwrap();
            assert_eq!(
                spec_of(serde_json::from_slice(&bytes).unwrap()),
                want,
                "case {i} (bytes)"
            );
        }
        assert!(matches!(
            update_resources(b"{not json", &LinuxResources::default()),
            Err(SpecError::Internal(_))
        ));
    }

    #[test]
    fn exec_process_keeps_the_container_process() {
        let config = json!({
            "ociVersion": "1.0.2",
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

        let cases: [(&[u8], &[String], &str); 4] = [
            (&bytes, &[], "cmd"),
            (b"{}", &cmd, "no process"),
            (b"[", &cmd, "config.json"),
            (b"{\"process\": 1}", &cmd, "config.json"),
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

/// The directory below a container's bundle where the idmapped binds of a
/// user-namespace pod's container are staged (`m<index>`).
pub const IDMAP_STAGING: &str = "idmap";

/// The bundle-relative place of the idmapped staging mount of the spec's
/// mount number `index`.
pub fn staged_bind_target(index: usize) -> String {
    format!("{IDMAP_STAGING}/m{index}")
}

/// Points the binds a user-namespace pod's container gets idmapped
/// ([`idmapped_binds`]; those with a source below `skip`, already idmapped
/// mounts, stay) at their staging mounts below `bundle`
/// ([`staged_bind_target`]). Returns the spec and, for each staged bind,
/// its original source and bundle-relative staging target: what the
/// shim is to bind idmapped, in the spec's order.
pub fn stage_idmapped_binds(
    spec: oci_spec::runtime::Spec,
    bundle: &std::path::Path,
    skip: &std::path::Path,
) -> (oci_spec::runtime::Spec, Vec<(std::path::PathBuf, String)>) {
    let mut staged = Vec::new();
    let mut sources = Vec::new();
    for (i, source, _) in idmapped_binds(&spec) {
        if source.starts_with(skip) {
            continue;
        }
        let target = staged_bind_target(i);
        sources.push((i, bundle.join(&target)));
        staged.push((source, target));
    }
    (with_mount_sources(spec, &sources), staged)
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

    #[test]
    fn staging_paths_table() {
        let bundle = std::path::Path::new("/run/c/1/bundle");
        let skip = bundle.join("image-mounts");
        let spec = || {
            let mut spec = Spec::default();
            spec.set_mounts(Some(vec![
                mount("proc", "proc", "/proc"),
                mount("bind", "/var/lib/data", "/data"),
                mount("bind", "/sys", "/sys"),
                mount("bind", "/run/c/1/bundle/image-mounts/0", "/img"),
                mount("bind", "/etc/hosts-of-pod", "/etc/hosts"),
            ]));
            spec
        };
        // (skip, the spec's sources after, the staged (source, target))
        let cases: Vec<(&std::path::Path, Vec<&str>, Vec<(&str, &str)>)> = vec![
            (
                &skip,
                vec![
                    "proc",
                    "/run/c/1/bundle/idmap/m1",
                    "/sys",
                    "/run/c/1/bundle/image-mounts/0",
                    "/run/c/1/bundle/idmap/m4",
                ],
                vec![
                    ("/var/lib/data", "idmap/m1"),
                    ("/etc/hosts-of-pod", "idmap/m4"),
                ],
            ),
            (
                std::path::Path::new("/nowhere"),
                vec![
                    "proc",
                    "/run/c/1/bundle/idmap/m1",
                    "/sys",
                    "/run/c/1/bundle/idmap/m3",
                    "/run/c/1/bundle/idmap/m4",
                ],
                vec![
                    ("/var/lib/data", "idmap/m1"),
                    ("/run/c/1/bundle/image-mounts/0", "idmap/m3"),
                    ("/etc/hosts-of-pod", "idmap/m4"),
                ],
            ),
        ];
        for (skip, sources, staged) in cases {
            let (out, got) = stage_idmapped_binds(spec(), bundle, skip);
            let got_sources: Vec<PathBuf> = out
                .mounts()
                .as_ref()
                .unwrap()
                .iter()
                .map(|m| m.source().clone().unwrap())
                .collect();
            let want: Vec<PathBuf> = sources.into_iter().map(PathBuf::from).collect();
            assert_eq!(got_sources, want, "{skip:?}");
            let want: Vec<(PathBuf, String)> = staged
                .into_iter()
                .map(|(s, t)| (PathBuf::from(s), t.to_string()))
                .collect();
            assert_eq!(got, want, "{skip:?}");
        }
    }
}
