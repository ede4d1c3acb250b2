//! Container mounts: the defaults, the pod's files, CRI mounts and image
//! volumes, merged and ordered.

use crate::error::{invalid, SpecError};
use k8s_cri::v1::{Mount as CriMount, MountPropagation};
use std::collections::HashMap;

/// One OCI mount, kept simple until it is serialised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Path inside the container.
    pub destination: String,
    /// Filesystem type (`bind` for binds).
    pub kind: String,
    /// Source path or filesystem name.
    pub source: String,
    /// Mount options.
    pub options: Vec<String>,
}

impl MountEntry {
    fn new(destination: &str, kind: &str, source: &str, options: &[&str]) -> Self {
        MountEntry {
            destination: destination.to_string(),
            kind: kind.to_string(),
            source: source.to_string(),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The OCI mount.
    pub fn to_oci(&self) -> oci_spec::runtime::Mount {
        let mut m = oci_spec::runtime::Mount::default();
        m.set_destination(self.destination.clone().into());
        m.set_typ(Some(self.kind.clone()));
        m.set_source(Some(self.source.clone().into()));
        m.set_options(Some(self.options.clone()));
        m
    }
}

/// How the host mount that holds a path propagates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostPropagation {
    /// Neither shared nor slave.
    #[default]
    Private,
    /// A slave of some peer group.
    Slave,
    /// Shared.
    Shared,
}

/// The kernel filesystems every container gets.
pub fn default_mounts(privileged: bool) -> Vec<MountEntry> {
    let ro_unless_privileged = |mut opts: Vec<&'static str>| {
        if !privileged {
            opts.push("ro");
        }
        opts
    };
    vec![
        MountEntry::new("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        MountEntry::new(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        MountEntry::new(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        MountEntry::new(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        MountEntry::new(
            "/sys",
            "sysfs",
            "sysfs",
            &ro_unless_privileged(vec!["nosuid", "noexec", "nodev"]),
        ),
        MountEntry::new(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &ro_unless_privileged(vec!["nosuid", "noexec", "nodev", "relatime"]),
        ),
    ]
}

/// The pod's /dev/shm: the sandbox's tmpfs, or the host's with host IPC.
pub fn shm_mount(shm_path: Option<&str>) -> MountEntry {
    match shm_path {
        Some(p) => MountEntry::new(
            "/dev/shm",
            "bind",
            p,
            &["rbind", "rprivate", "nosuid", "nodev", "noexec"],
        ),
        None => MountEntry::new(
            "/dev/shm",
            "bind",
            "/dev/shm",
            &["rbind", "rprivate", "nosuid", "nodev", "noexec"],
        ),
    }
}

/// The pod files shared by its containers: hosts, resolv.conf, hostname.
/// They are read-only when the container's root filesystem is.
pub fn pod_file_mounts(
    hosts: Option<&str>,
    resolv_conf: Option<&str>,
    hostname: Option<&str>,
    readonly_rootfs: bool,
) -> Vec<MountEntry> {
    let mode = if readonly_rootfs { "ro" } else { "rw" };
    [
        ("/etc/hosts", hosts),
        ("/etc/resolv.conf", resolv_conf),
        ("/etc/hostname", hostname),
    ]
    .into_iter()
    .filter_map(|(dst, src)| {
        src.map(|s| MountEntry::new(dst, "bind", s, &["rbind", "rprivate", mode]))
    })
    .collect()
}

fn check_path(p: &str, field: &str) -> Result<(), SpecError> {
    if !p.starts_with('/') {
        return Err(invalid(field, format!("{p:?} is not an absolute path")));
    }
    if p.contains('\0') || p.split('/').any(|c| c == "..") {
        return Err(invalid(field, format!("{p:?} must not contain \"..\"")));
    }
    Ok(())
}

/// Translates the CRI mounts of a container. `host_propagation` tells, for
/// each host path, how its host mount propagates (absent means private).
pub fn cri_mounts(
    mounts: &[CriMount],
    host_propagation: &HashMap<String, HostPropagation>,
    rro_supported: bool,
) -> Result<Vec<MountEntry>, SpecError> {
    let mut out = Vec::with_capacity(mounts.len());
    for (i, m) in mounts.iter().enumerate() {
        let field = format!("config.mounts[{i}]");
        check_path(&m.container_path, &format!("{field}.container_path"))?;
        check_path(&m.host_path, &format!("{field}.host_path"))?;
        let mut options = vec!["rbind".to_string()];
        let host = host_propagation
            .get(&m.host_path)
            .copied()
            .unwrap_or_default();
        let propagation = MountPropagation::try_from(m.propagation).map_err(|_| {
            invalid(
                format!("{field}.propagation"),
                format!("unknown propagation {}", m.propagation),
            )
        })?;
        match propagation {
            MountPropagation::PropagationPrivate => options.push("rprivate".into()),
            MountPropagation::PropagationHostToContainer => {
                if host == HostPropagation::Private {
                    return Err(invalid(
                        format!("{field}.propagation"),
                        format!("host path {:?} is not on a shared or slave mount, so host-to-container propagation is impossible", m.host_path),
                    ));
                }
                options.push("rslave".into());
            }
            MountPropagation::PropagationBidirectional => {
                if host != HostPropagation::Shared {
                    return Err(invalid(
                        format!("{field}.propagation"),
                        format!("host path {:?} is not on a shared mount, so bidirectional propagation is impossible", m.host_path),
                    ));
                }
                options.push("rshared".into());
            }
        }
        if m.recursive_read_only {
            if !m.readonly {
                return Err(invalid(
                    format!("{field}.recursive_read_only"),
                    "needs readonly to be set too",
                ));
            }
            if propagation != MountPropagation::PropagationPrivate {
                return Err(invalid(
                    format!("{field}.recursive_read_only"),
                    "needs private propagation",
                ));
            }
            if !rro_supported {
                return Err(invalid(
                    format!("{field}.recursive_read_only"),
                    "the runtime handler does not support recursive read-only mounts",
                ));
            }
            options.push("rro".into());
        } else if m.readonly {
            options.push("ro".into());
        } else {
            options.push("rw".into());
        }
        out.push(MountEntry {
            destination: m.container_path.clone(),
            kind: "bind".into(),
            source: m.host_path.clone(),
            options,
        });
    }
    Ok(out)
}

/// Host directory names for image-defined volumes: each volume becomes an
/// empty directory `<base>/<n>` bound at its path. Volumes a CRI mount
/// already covers are left out.
pub fn image_volume_mounts(volumes: &[String], base: &str, cri: &[MountEntry]) -> Vec<MountEntry> {
    let mut sorted: Vec<&String> = volumes.iter().collect();
    sorted.sort();
    sorted.dedup();
    sorted
        .into_iter()
        .filter(|v| v.starts_with('/') && !v.split('/').any(|c| c == ".."))
        .filter(|v| {
            !cri.iter()
                .any(|m| m.destination.trim_end_matches('/') == v.trim_end_matches('/'))
        })
        .enumerate()
        .map(|(i, v)| {
            MountEntry::new(
                v,
                "bind",
                &format!("{}/{i}", base.trim_end_matches('/')),
                &["rbind", "rprivate", "rw"],
            )
        })
        .collect()
}

fn depth(p: &str) -> usize {
    p.split('/').filter(|c| !c.is_empty()).count()
}

/// Merges mount lists: a later list's mount replaces an earlier one at the
/// same destination; the result is ordered so that parents come first
/// (stable for mounts of equal depth).
pub fn merge(lists: Vec<Vec<MountEntry>>) -> Vec<MountEntry> {
    let mut out: Vec<MountEntry> = Vec::new();
    for list in lists {
        for m in list {
            let dest = m.destination.trim_end_matches('/').to_string();
            out.retain(|o| o.destination.trim_end_matches('/') != dest);
            out.push(m);
        }
    }
    out.sort_by_key(|m| depth(&m.destination));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cri(c: &str, h: &str, ro: bool, p: MountPropagation) -> CriMount {
        CriMount {
            container_path: c.into(),
            host_path: h.into(),
            readonly: ro,
            propagation: p as i32,
            ..Default::default()
        }
    }

    #[test]
    fn cri_mount_table() {
        let mut host = HashMap::new();
        host.insert("/shared".to_string(), HostPropagation::Shared);
        host.insert("/slave".to_string(), HostPropagation::Slave);
        use MountPropagation::*;
        // (mount, Ok(options) or Err(substring))
        let cases: Vec<(CriMount, Result<&[&str], &str>)> = vec![
            (
                cri("/data", "/srv", false, PropagationPrivate),
                Ok(&["rbind", "rprivate", "rw"]),
            ),
            (
                cri("/data", "/srv", true, PropagationPrivate),
                Ok(&["rbind", "rprivate", "ro"]),
            ),
            (
                cri("/data", "/slave", false, PropagationHostToContainer),
                Ok(&["rbind", "rslave", "rw"]),
            ),
            (
                cri("/data", "/shared", false, PropagationHostToContainer),
                Ok(&["rbind", "rslave", "rw"]),
            ),
            (
                cri("/data", "/shared", false, PropagationBidirectional),
                Ok(&["rbind", "rshared", "rw"]),
            ),
            (
                cri("/data", "/slave", false, PropagationBidirectional),
                Err("not on a shared mount"),
            ),
            (
                cri("/data", "/srv", false, PropagationHostToContainer),
                Err("not on a shared or slave mount"),
            ),
            (
                cri("data", "/srv", false, PropagationPrivate),
                Err("container_path"),
            ),
            (
                cri("/data", "srv", false, PropagationPrivate),
                Err("host_path"),
            ),
            (
                cri("/data", "/srv/../etc", false, PropagationPrivate),
                Err("host_path"),
            ),
            (
                CriMount {
                    container_path: "/d".into(),
                    host_path: "/s".into(),
                    readonly: true,
                    recursive_read_only: true,
                    ..Default::default()
                },
                Ok(&["rbind", "rprivate", "rro"]),
            ),
            (
                CriMount {
                    container_path: "/d".into(),
                    host_path: "/s".into(),
                    recursive_read_only: true,
                    ..Default::default()
                },
                Err("needs readonly"),
            ),
            (
                CriMount {
                    container_path: "/d".into(),
                    host_path: "/s".into(),
                    propagation: 9,
                    ..Default::default()
                },
                Err("unknown propagation"),
            ),
        ];
        for (m, want) in cases {
            let got = cri_mounts(std::slice::from_ref(&m), &host, true);
            match want {
                Ok(opts) => assert_eq!(got.unwrap()[0].options, opts.to_vec(), "{m:?}"),
                Err(s) => {
                    let e = got.unwrap_err().to_string();
                    assert!(
                        e.contains(s) && e.contains("config.mounts[0]"),
                        "{m:?}: {e}"
                    );
                }
            }
        }
        let rro = CriMount {
            container_path: "/d".into(),
            host_path: "/s".into(),
            readonly: true,
            recursive_read_only: true,
            ..Default::default()
        };
        assert!(cri_mounts(&[rro], &host, false)
            .unwrap_err()
            .to_string()
            .contains("does not support"));
    }

    #[test]
    fn merge_overrides_and_orders() {
        let defaults = default_mounts(false);
        let files = pod_file_mounts(Some("/pod/hosts"), Some("/pod/resolv.conf"), None, true);
        assert!(files.iter().all(|m| m.options.contains(&"ro".to_string())));
        let user = vec![
            MountEntry::new("/data/sub", "bind", "/b", &["rbind"]),
            MountEntry::new("/data", "bind", "/a", &["rbind"]),
            MountEntry::new("/etc/hosts/", "bind", "/mine", &["rbind"]),
        ];
        let merged = merge(vec![
            defaults,
            vec![shm_mount(Some("/pod/shm"))],
            files,
            user,
        ]);
        let dests: Vec<&str> = merged.iter().map(|m| m.destination.as_str()).collect();
        assert_eq!(
            dests,
            vec![
                "/proc",
                "/dev",
                "/sys",
                "/data",
                "/dev/pts",
                "/dev/mqueue",
                "/dev/shm",
                "/etc/resolv.conf",
                "/data/sub",
                "/etc/hosts/",
                "/sys/fs/cgroup"
            ]
        );
        let hosts = merged
            .iter()
            .find(|m| m.destination == "/etc/hosts/")
            .unwrap();
        assert_eq!(hosts.source, "/mine");
        // privileged: sysfs and cgroup writable
        let p = default_mounts(true);
        assert!(p.iter().all(|m| !m.options.contains(&"ro".to_string())));
        assert!(default_mounts(false)
            .iter()
            .find(|m| m.destination == "/sys")
            .unwrap()
            .options
            .contains(&"ro".to_string()));
    }

    #[test]
    fn image_volumes() {
        let covered = vec![MountEntry::new("/covered", "bind", "/x", &[])];
        let vols = vec![
            "/var/lib/data".to_string(),
            "/covered/".to_string(),
            "relative".to_string(),
            "/a".to_string(),
            "/a".to_string(),
            "/x/../etc".to_string(),
        ];
        let got = image_volume_mounts(&vols, "/c/volumes/", &covered);
        let pairs: Vec<(&str, &str)> = got
            .iter()
            .map(|m| (m.destination.as_str(), m.source.as_str()))
            .collect();
        assert_eq!(
            pairs,
            vec![("/a", "/c/volumes/0"), ("/var/lib/data", "/c/volumes/1")]
        );
    }
}
