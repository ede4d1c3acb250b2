//! CreateContainer's devices, from the host: the CRI devices (a directory
//! stands for every device node below it), the host's devices for a
//! privileged container, the owner they get, and the CDI devices resolved
//! from the CDI spec files and applied to the finished spec.
//!
//! The pure parts (which CDI devices a container asks for, the owner from
//! the security context, the device cgroup rules) are in
//! [`crius_spec::devices`] and [`crius_spec::container`].

use crate::config::{CdiConfig, Config, RuntimeHandler};
use crate::errors::{internal, invalid_field, spec_status, CriError};
use crius_spec::container::DeviceNode;
use k8s_cri::v1::ContainerConfig;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Directories below a device directory that are never walked (pseudo
/// terminals, shared memory, file descriptors, message queues, and the
/// private trees of lxc and udev), as runc and containerd skip them.
const SKIPPED_DIRS: [&str; 7] = ["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"];

/// The most directory entries one device directory's walk looks at: the
/// path comes from the request, and `/` must not make CreateContainer walk
/// the whole file system.
const MAX_WALK_ENTRIES: usize = 65_536;

/// A device node from its metadata (not following symlinks: `None` for
/// anything that is not a character or block device).
fn node(meta: &std::fs::Metadata, path: String, permissions: &str) -> Option<DeviceNode> {
    let ft = meta.file_type();
    let kind = if ft.is_char_device() {
        'c'
    } else if ft.is_block_device() {
        'b'
    } else {
        return None;
    };
    let rdev = meta.rdev();
    Some(DeviceNode {
        path,
        kind,
        major: nix::sys::stat::major(rdev) as i64,
        minor: nix::sys::stat::minor(rdev) as i64,
        file_mode: meta.mode() & 0o777,
        uid: meta.uid(),
        gid: meta.gid(),
        permissions: permissions.to_string(),
    })
}

/// Every device node below the directory `dir`, sorted by path: in the
/// container at the same place below `container_dir`, or at its host path
/// without one. Symlinks, other files, the console and the [`SKIPPED_DIRS`]
/// are left out; a subdirectory that cannot be read is skipped; walking
/// more than [`MAX_WALK_ENTRIES`] entries is an error.
pub fn nodes_below(
    dir: &Path,
    container_dir: Option<&Path>,
    permissions: &str,
) -> Result<Vec<DeviceNode>, String> {
    let mut out = Vec::new();
    let mut seen = 0usize;
    let mut dirs = vec![PathBuf::new()];
    while let Some(rel) = dirs.pop() {
        let entries = match std::fs::read_dir(dir.join(&rel)) {
            Ok(e) => e,
            Err(e) if rel.as_os_str().is_empty() => return Err(format!("{dir:?}: {e}")),
            Err(_) => continue,
        };
        for e in entries.flatten() {
            seen += 1;
            if seen > MAX_WALK_ENTRIES {
                return Err(format!(
                    "{dir:?} holds more than {MAX_WALK_ENTRIES} entries"
                ));
            }
            let name = e.file_name();
            let rel = rel.join(&name);
            let Ok(meta) = std::fs::symlink_metadata(dir.join(&rel)) else {
                continue;
            };
            if meta.is_dir() {
                if !SKIPPED_DIRS.iter().any(|s| name == *s) {
                    dirs.push(rel);
                }
                continue;
            }
            if name == "console" {
                continue;
            }
            let path = container_dir.unwrap_or(dir).join(&rel);
            out.extend(node(&meta, path.display().to_string(), permissions));
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// The device nodes of the CRI `devices`: a device node itself, or every
/// device node below a directory (in the container below its container
/// path, or at the host paths without one).
fn requested(config: &ContainerConfig) -> Result<Vec<DeviceNode>, CriError> {
    let mut out = Vec::new();
    for (i, d) in config.devices.iter().enumerate() {
        let field = format!("config.devices[{i}].host_path");
        let permissions = if d.permissions.is_empty() {
            "rwm"
        } else {
            d.permissions.as_str()
        };
        // The host path may be a symlink (e.g. /dev/disk/by-id/...).
        let meta = std::fs::metadata(&d.host_path)
            .map_err(|e| invalid_field(&field, format!("{:?}: {e}", d.host_path)))?;
        let container_path = (!d.container_path.is_empty()).then(|| Path::new(&d.container_path));
        if meta.is_dir() {
            let nodes = nodes_below(Path::new(&d.host_path), container_path, permissions)
                .map_err(|e| invalid_field(&field, e))?;
            out.extend(nodes);
            continue;
        }
        let path = container_path.map_or(d.host_path.clone(), |p| p.display().to_string());
        let node = node(&meta, path, permissions).ok_or_else(|| {
            invalid_field(
                &field,
                format!("{:?} is not a device node or a directory", d.host_path),
            )
        })?;
        out.push(node);
    }
    Ok(out)
}

/// The device nodes a container gets: its CRI devices, then, when it is
/// privileged and its handler does not say `privileged_without_host_devices`,
/// the host's other devices; owned by the security context's user and
/// group with `device_ownership_from_security_context`. Reads the host on
/// the blocking pool, and not at all for a container without devices.
pub async fn device_nodes(
    daemon_config: &Config,
    handler: Option<&RuntimeHandler>,
    config: &ContainerConfig,
) -> Result<Vec<DeviceNode>, CriError> {
    let privileged = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .is_some_and(|s| s.privileged);
    let host = privileged && !handler.is_some_and(|h| h.privileged_without_host_devices);
    if config.devices.is_empty() && !host {
        return Ok(Vec::new());
    }
    let owner = if daemon_config.device_ownership_from_security_context {
        Some(crius_spec::devices::owner_from_security_context(config).map_err(spec_status)?)
    } else {
        None
    };
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        let mut devices = requested(&config)?;
        if host {
            for d in crate::host::host_devices() {
                if !devices.iter().any(|x| x.path == d.path) {
                    devices.push(d);
                }
            }
        }
        if let Some(owner) = owner {
            crius_spec::devices::set_owner(&mut devices, owner);
        }
        Ok(devices)
    })
    .await
    .map_err(|e| internal("devices", e))?
}

/// Adds the CDI devices the container asks for (`CDI_devices` and the
/// `cdi.k8s.io/*` annotations) to its finished spec: their device nodes,
/// device cgroup rules, mounts, environment and hooks, as the CDI spec
/// files in `[cdi] spec_dirs` define them. A device no spec file defines
/// is refused with InvalidArgument naming it and the field that asked for
/// it. With `[cdi] enable = false`, `CDI_devices` is refused and the
/// annotations are ignored. The spec files are read on the blocking pool,
/// and not at all for a container that asks for no CDI device.
pub async fn inject_cdi(
    cdi: &CdiConfig,
    config: &ContainerConfig,
    spec: oci_spec::runtime::Spec,
) -> Result<oci_spec::runtime::Spec, CriError> {
    if !cdi.enable {
        if let Some(d) = config.cdi_devices.first() {
            return Err(CriError::failed_precondition(format!(
                "config.cdi_devices: CDI device {:?} requested, but CDI is turned off \
                 ([cdi] enable = false)",
                d.name
            )));
        }
        return Ok(spec);
    }
    let requests = crius_spec::devices::cdi_requests(config).map_err(spec_status)?;
    inject_cdi_requests(cdi, "config.cdi_devices", requests, spec).await
}

/// Adds the CDI devices of `requests` to the spec (see [`inject_cdi`]);
/// NRI plugins' CDI devices come this way. With `[cdi] enable = false`,
/// any request is refused (FailedPrecondition, naming its field). `what`
/// names the requests in the error of a failed injection.
pub async fn inject_cdi_requests(
    cdi: &CdiConfig,
    what: &str,
    requests: Vec<crius_spec::devices::CdiRequest>,
    spec: oci_spec::runtime::Spec,
) -> Result<oci_spec::runtime::Spec, CriError> {
    if requests.is_empty() {
        return Ok(spec);
    }
    if !cdi.enable {
        return Err(CriError::failed_precondition(format!(
            "{}: CDI device {:?} requested, but CDI is turned off ([cdi] enable = false)",
            requests[0].field, requests[0].name
        )));
    }
    let dirs: Vec<String> = cdi
        .spec_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    let what = what.to_string();
    tokio::task::spawn_blocking(move || {
        let mut spec = spec;
        let mut cache = cdi_cache(&dirs);
        if let Some(r) = requests
            .iter()
            .find(|r| !cache.devices.contains_key(&r.name))
        {
            return Err(invalid_field(
                &r.field,
                format!(
                    "unresolvable CDI device {:?}: no CDI spec in {} defines it",
                    r.name,
                    dirs.join(", ")
                ),
            ));
        }
        let names = requests.into_iter().map(|r| r.name).collect();
        cache
            .inject_devices(Some(&mut spec), names)
            .map_err(|e| CriError::failed_precondition(format!("{what}: {e}")))?;
        Ok(spec)
    })
    .await
    .map_err(|e| internal("CDI", e))?
}

/// The most CDI spec files read from one spec directory.
const MAX_CDI_SPEC_FILES: usize = 1024;

/// The CDI devices the spec files (`*.json`, `*.yaml`) directly in `dirs`
/// define. A device of a later directory replaces one of the same name
/// from an earlier one; two of the same name in one directory are both
/// dropped. A file that cannot be read or is not a valid CDI spec is
/// logged and skipped, so that one vendor's broken file does not take the
/// others' devices away (the crate's own `Cache::refresh` gives up on all
/// of them at the first bad file).
fn cdi_cache(dirs: &[String]) -> container_device_interface::cache::Cache {
    use container_device_interface::{device::Device, spec::read_spec, utils::is_cdi_spec};
    use std::collections::{HashMap, HashSet};
    let mut devices: HashMap<String, Device> = HashMap::new();
    let mut conflicts: HashSet<String> = HashSet::new();
    for (priority, dir) in dirs.iter().enumerate() {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| is_cdi_spec(p) && p.is_file())
                .take(MAX_CDI_SPEC_FILES)
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::warn!(dir = %dir, error = %e, "CDI spec directory");
                continue;
            }
        };
        files.sort();
        for file in files {
            let spec = match read_spec(&file, priority as i32) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(file = %file.display(), error = format!("{e:#}"), "CDI spec skipped");
                    continue;
                }
            };
            for dev in spec.get_devices().into_values() {
                let name = dev.get_qualified_name();
                match devices.get(&name) {
                    Some(old) if old.get_spec().get_priority() == priority as i32 => {
                        tracing::warn!(device = %name, file = %file.display(), "CDI device defined twice in one directory");
                        conflicts.insert(name);
                    }
                    _ => {
                        conflicts.remove(&name);
                        devices.insert(name, dev);
                    }
                }
            }
        }
    }
    for name in conflicts {
        devices.remove(&name);
    }
    container_device_interface::cache::Cache::new(dirs.to_vec(), HashMap::new(), devices)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::Device;
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};

    /// A tree of device nodes: c 1:3 and c 1:5 at the top, b 7:0 in a
    /// subdirectory, plus things that are not devices or are skipped.
    fn tree(dir: &Path) {
        let mk = |p: &str, kind: SFlag, major, minor| {
            mknod(
                &dir.join(p),
                kind,
                Mode::from_bits_truncate(0o640),
                makedev(major, minor),
            )
            .unwrap();
        };
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::create_dir_all(dir.join("pts")).unwrap();
        mk("null", SFlag::S_IFCHR, 1, 3);
        mk("zero", SFlag::S_IFCHR, 1, 5);
        mk("sub/loop", SFlag::S_IFBLK, 7, 0);
        mk("pts/0", SFlag::S_IFCHR, 136, 0);
        mk("console", SFlag::S_IFCHR, 5, 1);
        std::fs::write(dir.join("file"), "x").unwrap();
        std::os::unix::fs::symlink("null", dir.join("link")).unwrap();
    }

    /// A temporary [`tree`]; None (the test is skipped) without root.
    fn device_tree() -> Option<tempfile::TempDir> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mknod needs root");
            return None;
        }
        let tmp = tempfile::tempdir().unwrap();
        tree(tmp.path());
        Some(tmp)
    }

    #[test]
    fn a_directory_stands_for_the_device_nodes_below_it() {
        let Some(tmp) = device_tree() else { return };
        let host = tmp.path().display().to_string();
        // (container path, the paths the nodes get)
        let cases: Vec<(&str, Vec<String>)> = vec![
            (
                "/dev/snd",
                vec![
                    "/dev/snd/null".into(),
                    "/dev/snd/sub/loop".into(),
                    "/dev/snd/zero".into(),
                ],
            ),
            (
                "",
                vec![
                    format!("{host}/null"),
                    format!("{host}/sub/loop"),
                    format!("{host}/zero"),
                ],
            ),
        ];
        for (container_path, want) in cases {
            let config = ContainerConfig {
                devices: vec![Device {
                    container_path: container_path.into(),
                    host_path: host.clone(),
                    permissions: "rw".into(),
                }],
                ..Default::default()
            };
            let nodes = requested(&config).unwrap();
            let paths: Vec<&str> = nodes.iter().map(|n| n.path.as_str()).collect();
            assert_eq!(paths, want, "{container_path:?}");
            let kinds: Vec<(char, i64, i64)> =
                nodes.iter().map(|n| (n.kind, n.major, n.minor)).collect();
            assert_eq!(kinds, vec![('c', 1, 3), ('b', 7, 0), ('c', 1, 5)]);
            assert!(nodes
                .iter()
                .all(|n| n.permissions == "rw" && n.file_mode == 0o640));
        }
    }

    fn cdi_file(dir: &Path, file: &str, kind: &str, devices: serde_json::Value) {
        let spec = serde_json::json!({"cdiVersion": "0.6.0", "kind": kind, "devices": devices});
        std::fs::write(dir.join(file), spec.to_string()).unwrap();
    }

    fn cdi_config(dirs: &[&Path], enable: bool) -> CdiConfig {
        CdiConfig {
            enable,
            spec_dirs: dirs.iter().map(|d| d.to_path_buf()).collect(),
        }
    }

    /// A container asking for `devices` in CDI_devices and, with
    /// `annotation`, for more in `cdi.k8s.io/test`.
    fn asking(devices: &[&str], annotation: Option<&str>) -> ContainerConfig {
        let mut c = ContainerConfig::default();
        for name in devices {
            c.cdi_devices.push(k8s_cri::v1::CdiDevice {
                name: name.to_string(),
            });
        }
        if let Some(a) = annotation {
            c.annotations.insert("cdi.k8s.io/test".into(), a.into());
        }
        c
    }

    fn env_of(spec: &oci_spec::runtime::Spec) -> Vec<String> {
        spec.process()
            .as_ref()
            .and_then(|p| p.env().clone())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn cdi_devices_are_injected_from_the_spec_dirs() {
        let low = tempfile::tempdir().unwrap();
        let high = tempfile::tempdir().unwrap();
        let null = serde_json::json!([
            {"name": "a", "containerEdits": {
                "env": ["FROM=low"],
                "deviceNodes": [{"path": "/dev/x", "type": "c", "major": 1, "minor": 3}],
                "mounts": [{"hostPath": "/srv/a", "containerPath": "/a", "options": ["ro", "bind"]}]}},
            {"name": "b", "containerEdits": {"env": ["B=1"]}}
        ]);
        cdi_file(low.path(), "v.json", "vendor.com/dev", null);
        // The later directory's `a` wins; a broken file there is skipped.
        cdi_file(
            high.path(),
            "v.json",
            "vendor.com/dev",
            serde_json::json!([{"name": "a", "containerEdits": {"env": ["FROM=high"]}}]),
        );
        std::fs::write(high.path().join("broken.yaml"), "cdiVersion: [").unwrap();
        let cdi = cdi_config(&[low.path(), high.path()], true);
        let base = oci_spec::runtime::Spec::default();

        let spec = inject_cdi(&cdi, &asking(&["vendor.com/dev=b"], None), base.clone())
            .await
            .unwrap();
        assert!(env_of(&spec).contains(&"B=1".to_string()));

        let spec = inject_cdi(&cdi, &asking(&[], Some("vendor.com/dev=a")), base.clone())
            .await
            .unwrap();
        assert!(env_of(&spec).contains(&"FROM=high".to_string()));
        assert!(!env_of(&spec).contains(&"FROM=low".to_string()));

        let only_low = cdi_config(&[low.path()], true);
        let spec = inject_cdi(
            &only_low,
            &asking(&["vendor.com/dev=a"], None),
            base.clone(),
        )
        .await
        .unwrap();
        let linux = spec.linux().clone().unwrap();
        let dev = &linux.devices().clone().unwrap()[0];
        assert_eq!(
            (dev.path().display().to_string(), dev.major(), dev.minor()),
            ("/dev/x".to_string(), 1, 3)
        );
        let rules = linux
            .resources()
            .clone()
            .unwrap()
            .devices()
            .clone()
            .unwrap();
        assert!(rules
            .iter()
            .any(|r| r.allow() && r.major() == Some(1) && r.minor() == Some(3)));
        assert!(spec
            .mounts()
            .clone()
            .unwrap()
            .iter()
            .any(|m| m.destination() == Path::new("/a")));

        // Unchanged without CDI devices.
        let spec = inject_cdi(&cdi, &ContainerConfig::default(), base.clone())
            .await
            .unwrap();
        assert_eq!(spec, base);
    }

    /// One refusal case: CDI enabled, cdi_devices, the annotation, the code,
    /// and text the message must hold.
    type Refusal<'a> = (bool, &'a [&'a str], Option<&'a str>, tonic::Code, &'a str);

    #[tokio::test]
    async fn cdi_refusals() {
        let dir = tempfile::tempdir().unwrap();
        cdi_file(
            dir.path(),
            "v.yaml",
            "vendor.com/dev",
            serde_json::json!([{"name": "a", "containerEdits": {"env": ["A=1"]}}]),
        );
        let base = oci_spec::runtime::Spec::default();
        let cases: Vec<Refusal> = vec![
            (
                true,
                &["vendor.com/dev=a", "vendor.com/dev=zz"],
                None,
                tonic::Code::InvalidArgument,
                "config.cdi_devices[1].name: unresolvable CDI device \"vendor.com/dev=zz\"",
            ),
            (
                true,
                &[],
                Some("vendor.com/dev=nope"),
                tonic::Code::InvalidArgument,
                "config.annotations[\"cdi.k8s.io/test\"]: unresolvable CDI device \"vendor.com/dev=nope\"",
            ),
            (
                true,
                &["a"],
                None,
                tonic::Code::InvalidArgument,
                "config.cdi_devices[0].name",
            ),
            (
                false,
                &["vendor.com/dev=a"],
                None,
                tonic::Code::FailedPrecondition,
                "[cdi] enable = false",
            ),
        ];
        for (enable, devices, annotation, code, text) in cases {
            let cdi = cdi_config(&[dir.path()], enable);
            let e = inject_cdi(&cdi, &asking(devices, annotation), base.clone())
                .await
                .unwrap_err();
            assert_eq!(e.code(), code, "{devices:?}: {e}");
            assert!(e.message().contains(text), "{devices:?}: {e}");
        }
        // Turned off, the annotations are ignored.
        let cdi = cdi_config(&[dir.path()], false);
        let spec = inject_cdi(&cdi, &asking(&[], Some("vendor.com/dev=a")), base.clone())
            .await
            .unwrap();
        assert_eq!(spec, base);
    }

    #[test]
    fn single_nodes_and_refusals() {
        let Some(tmp) = device_tree() else { return };
        let dev = |host: &Path, container: &str| ContainerConfig {
            devices: vec![Device {
                container_path: container.into(),
                host_path: host.display().to_string(),
                permissions: String::new(),
            }],
            ..Default::default()
        };
        // A symlink to a device is followed; no permissions means rwm.
        let n = requested(&dev(&tmp.path().join("link"), "/dev/mine")).unwrap();
        assert_eq!(
            (
                n[0].path.as_str(),
                n[0].kind,
                n[0].minor,
                n[0].permissions.as_str()
            ),
            ("/dev/mine", 'c', 3, "rwm")
        );
        for (host, why) in [
            (tmp.path().join("file"), "not a device node"),
            (tmp.path().join("missing"), "No such file"),
        ] {
            let e = requested(&dev(&host, "/dev/x")).unwrap_err();
            let msg = e.message();
            assert!(
                msg.contains("config.devices[0].host_path") && msg.contains(why),
                "{msg}"
            );
        }
        // An empty directory gives no devices.
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(requested(&dev(&empty, "/dev/e")).unwrap().is_empty());
    }
}
