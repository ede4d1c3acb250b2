//! User namespaces of pods (`userns_options` with mode POD).
//!
//! A pod with mode POD gets its own user namespace, created with the pause
//! container and the pod's uid/gid mappings; the pod's other containers join
//! it (by path, with the same mappings in their specs, as runc requires).
//! Mode NODE (or no options) is the host's user namespace.
//!
//! Inside a user namespace that does not own the pod's network namespace
//! (which is made by the shim, in the host's user namespace) the kernel
//! refuses a new sysfs mount, so `/sys` becomes a recursive bind of the
//! host's `/sys`. File ownership is handled by the caller with idmapped
//! mounts; this module only validates and writes the spec.

use crate::error::{invalid, SpecError};
use crate::sandbox::host_namespaces;
use k8s_cri::v1::{ContainerConfig, IdMapping, NamespaceMode, PodSandboxConfig, UserNamespace};
use oci_spec::runtime::{
    LinuxIdMapping, LinuxIdMappingBuilder, LinuxNamespace, LinuxNamespaceType, Mount,
};
use std::path::{Path, PathBuf};

/// The pod config field holding the user namespace options.
pub const POD_FIELD: &str = "config.linux.security_context.namespace_options.userns_options";
/// The container config field holding the user namespace options.
pub const CONTAINER_FIELD: &str = "config.linux.security_context.namespace_options.userns_options";
/// The most mappings the kernel accepts in one uid_map or gid_map.
pub const MAX_MAPPINGS: usize = 340;

/// One range of a uid or gid mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    /// First id inside the container.
    pub container_id: u32,
    /// The host id `container_id` maps to.
    pub host_id: u32,
    /// How many ids the range covers.
    pub size: u32,
}

/// A pod's uid and gid mappings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mappings {
    /// Uid ranges.
    pub uids: Vec<IdMap>,
    /// Gid ranges.
    pub gids: Vec<IdMap>,
}

fn to_host(maps: &[IdMap], id: u32) -> Option<u32> {
    maps.iter().find_map(|m| {
        let off = id.checked_sub(m.container_id)?;
        (off < m.size).then(|| m.host_id + off)
    })
}

impl Mappings {
    /// The host uid of container uid `id`, if it is mapped.
    pub fn host_uid(&self, id: u32) -> Option<u32> {
        to_host(&self.uids, id)
    }

    /// The host gid of container gid `id`, if it is mapped.
    pub fn host_gid(&self, id: u32) -> Option<u32> {
        to_host(&self.gids, id)
    }

    /// The mappings as `/proc/<pid>/uid_map` (or gid_map) text.
    pub fn map_text(maps: &[IdMap]) -> String {
        maps.iter()
            .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.size))
            .collect()
    }
}

fn ranges_overlap(a: (u32, u32), b: (u32, u32)) -> bool {
    let end = |(start, size): (u32, u32)| u64::from(start) + u64::from(size);
    u64::from(a.0) < end(b) && u64::from(b.0) < end(a)
}

fn check_maps(list: &[IdMapping], field: &str) -> Result<Vec<IdMap>, SpecError> {
    if list.is_empty() {
        return Err(invalid(field, "mode POD needs at least one mapping"));
    }
    if list.len() > MAX_MAPPINGS {
        return Err(invalid(
            field,
            format!("{} mappings, the kernel accepts {MAX_MAPPINGS}", list.len()),
        ));
    }
    let mut out: Vec<IdMap> = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let f = format!("{field}[{i}]");
        if m.length == 0 {
            return Err(invalid(f, "length must not be 0"));
        }
        for (what, start) in [("container_id", m.container_id), ("host_id", m.host_id)] {
            if u64::from(start) + u64::from(m.length) > 1 << 32 {
                return Err(invalid(
                    &f,
                    format!(
                        "{what} {start} + length {} overflows the id space",
                        m.length
                    ),
                ));
            }
        }
        if ranges_overlap((m.host_id, m.length), (0, 1)) {
            return Err(invalid(
                &f,
                "maps the host's root (id 0) into the pod, which defeats the user namespace",
            ));
        }
        let map = IdMap {
            container_id: m.container_id,
            host_id: m.host_id,
            size: m.length,
        };
        for (j, o) in out.iter().enumerate() {
            if ranges_overlap((o.container_id, o.size), (map.container_id, map.size)) {
                return Err(invalid(
                    &f,
                    format!("its container ids overlap those of mapping {j}"),
                ));
            }
            if ranges_overlap((o.host_id, o.size), (map.host_id, map.size)) {
                return Err(invalid(
                    &f,
                    format!("its host ids overlap those of mapping {j}"),
                ));
            }
        }
        out.push(map);
    }
    if to_host(&out, 0).is_none() {
        return Err(invalid(
            field,
            "container id 0 (the pod's root) is not mapped",
        ));
    }
    Ok(out)
}

fn mappings_of(opts: &UserNamespace, field: &str) -> Result<Option<Mappings>, SpecError> {
    match NamespaceMode::try_from(opts.mode) {
        Ok(NamespaceMode::Node) => {
            if !opts.uids.is_empty() || !opts.gids.is_empty() {
                return Err(invalid(
                    field,
                    "mappings are only allowed with mode POD (NODE is the host's user namespace)",
                ));
            }
            Ok(None)
        }
        Ok(NamespaceMode::Pod) => Ok(Some(Mappings {
            uids: check_maps(&opts.uids, &format!("{field}.uids"))?,
            gids: check_maps(&opts.gids, &format!("{field}.gids"))?,
        })),
        Ok(other) => Err(invalid(
            format!("{field}.mode"),
            format!(
                "{} is not supported for user namespaces (POD or NODE)",
                other.as_str_name()
            ),
        )),
        Err(_) => Err(invalid(
            format!("{field}.mode"),
            format!("unknown namespace mode {}", opts.mode),
        )),
    }
}

fn pod_options(config: &PodSandboxConfig) -> Option<&UserNamespace> {
    config
        .linux
        .as_ref()?
        .security_context
        .as_ref()?
        .namespace_options
        .as_ref()?
        .userns_options
        .as_ref()
}

/// The pod's mappings when it asks for its own user namespace (mode POD),
/// validated; `None` for the host's user namespace.
pub fn pod_mappings(config: &PodSandboxConfig) -> Result<Option<Mappings>, SpecError> {
    let Some(opts) = pod_options(config) else {
        return Ok(None);
    };
    let Some(maps) = mappings_of(opts, POD_FIELD)? else {
        return Ok(None);
    };
    let hn = host_namespaces(config);
    for (host, what) in [(hn.network, "network"), (hn.pid, "pid"), (hn.ipc, "ipc")] {
        if host {
            return Err(invalid(
                POD_FIELD,
                format!("a pod in its own user namespace cannot use the host's {what} namespace"),
            ));
        }
    }
    let privileged = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .is_some_and(|s| s.privileged);
    if privileged {
        return Err(invalid(
            POD_FIELD,
            "a privileged pod cannot have its own user namespace",
        ));
    }
    Ok(Some(maps))
}

/// Checks a container's `userns_options` against its pod's: a container may
/// repeat the pod's options (kubelet does) or leave them out, nothing else.
pub fn check_container(config: &ContainerConfig, pod: Option<&Mappings>) -> Result<(), SpecError> {
    let sc = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref());
    let privileged = sc.is_some_and(|s| s.privileged);
    if pod.is_some() && privileged {
        return Err(invalid(
            "config.linux.security_context.privileged",
            "a container in a pod's user namespace cannot be privileged",
        ));
    }
    let Some(opts) = sc
        .and_then(|s| s.namespace_options.as_ref())
        .and_then(|n| n.userns_options.as_ref())
    else {
        return Ok(());
    };
    let own = mappings_of(opts, CONTAINER_FIELD)?;
    if own.as_ref() != pod {
        return Err(invalid(
            CONTAINER_FIELD,
            "must match the pod's user namespace options",
        ));
    }
    Ok(())
}

fn oci_maps(maps: &[IdMap]) -> Vec<LinuxIdMapping> {
    maps.iter()
        .map(|m| {
            LinuxIdMappingBuilder::default()
                .container_id(m.container_id)
                .host_id(m.host_id)
                .size(m.size)
                .build()
                .expect("every field of an id mapping is set")
        })
        .collect()
}

/// Puts a spec into the pod's user namespace: a new one (the pause
/// container, `join` None) or the pause's (`join` = `/proc/<pid>/ns/user`),
/// with the mappings; `/sys` becomes a recursive bind of the host's.
pub fn apply(
    mut spec: oci_spec::runtime::Spec,
    maps: &Mappings,
    join: Option<&str>,
) -> Result<oci_spec::runtime::Spec, SpecError> {
    let mut linux = spec.linux().clone().unwrap_or_else(crate::oci::linux);
    let mut namespaces: Vec<LinuxNamespace> = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.typ() != LinuxNamespaceType::User)
        .collect();
    namespaces.push(crate::oci::namespace(
        LinuxNamespaceType::User,
        join.map(String::from),
    ));
    linux.set_namespaces(Some(namespaces));
    linux.set_uid_mappings(Some(oci_maps(&maps.uids)));
    linux.set_gid_mappings(Some(oci_maps(&maps.gids)));
    spec.set_linux(Some(linux));
    if let Some(mounts) = spec.mounts_mut() {
        for m in mounts.iter_mut() {
            let sysfs = m.destination() == Path::new("/sys") && m.typ().as_deref() == Some("sysfs");
            if sysfs {
                let ro = m
                    .options()
                    .as_ref()
                    .is_some_and(|o| o.iter().any(|x| x == "ro"));
                let mut bind = Mount::default();
                bind.set_destination(PathBuf::from("/sys"));
                bind.set_typ(Some("bind".into()));
                bind.set_source(Some(PathBuf::from("/sys")));
                bind.set_options(Some(
                    [
                        "rbind",
                        "nosuid",
                        "noexec",
                        "nodev",
                        if ro { "ro" } else { "rw" },
                    ]
                    .map(String::from)
                    .to_vec(),
                ));
                *m = bind;
            }
        }
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::{
        LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
        LinuxSandboxSecurityContext, NamespaceOption,
    };
    use serde_json::json;

    fn idm(container_id: u32, host_id: u32, length: u32) -> IdMapping {
        IdMapping {
            host_id,
            container_id,
            length,
        }
    }

    fn userns(mode: NamespaceMode, uids: Vec<IdMapping>, gids: Vec<IdMapping>) -> UserNamespace {
        UserNamespace {
            mode: mode as i32,
            uids,
            gids,
        }
    }

    fn pod_with(
        opts: Option<UserNamespace>,
        ns: NamespaceOption,
        privileged: bool,
    ) -> PodSandboxConfig {
        PodSandboxConfig {
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        userns_options: opts,
                        ..ns
                    }),
                    privileged,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn kubelet() -> UserNamespace {
        userns(
            NamespaceMode::Pod,
            vec![idm(0, 65536 * 3, 65536)],
            vec![idm(0, 65536 * 3, 65536)],
        )
    }

    #[test]
    fn pod_mappings_validation() {
        let pod = |opts| pod_with(opts, NamespaceOption::default(), false);
        let one = |c, h, l| vec![idm(c, h, l)];
        // (config, Ok(mapped host uid of 0) or Err(part of the message))
        let cases: Vec<(PodSandboxConfig, Result<Option<u32>, &str>)> = vec![
            (PodSandboxConfig::default(), Ok(None)),
            (pod(None), Ok(None)),
            (
                pod(Some(userns(NamespaceMode::Node, vec![], vec![]))),
                Ok(None),
            ),
            (pod(Some(kubelet())), Ok(Some(196_608))),
            (
                pod(Some(userns(
                    NamespaceMode::Pod,
                    vec![idm(0, 100_000, 1000), idm(1000, 300_000, 64536)],
                    one(0, 100_000, 65536),
                ))),
                Ok(Some(100_000)),
            ),
            (
                pod(Some(userns(
                    NamespaceMode::Node,
                    one(0, 100_000, 65536),
                    vec![],
                ))),
                Err("only allowed with mode POD"),
            ),
            (
                pod(Some(userns(NamespaceMode::Container, vec![], vec![]))),
                Err("userns_options.mode: CONTAINER is not supported"),
            ),
            (
                pod(Some(userns(NamespaceMode::Target, vec![], vec![]))),
                Err("TARGET is not supported"),
            ),
            (
                pod(Some(UserNamespace {
                    mode: 42,
                    ..Default::default()
                })),
                Err("unknown namespace mode 42"),
            ),
            (
                pod(Some(userns(
                    NamespaceMode::Pod,
                    vec![],
                    one(0, 100_000, 65536),
                ))),
                Err("uids: mode POD needs at least one mapping"),
            ),
            (
                pod(Some(userns(
                    NamespaceMode::Pod,
                    one(0, 100_000, 65536),
                    vec![],
                ))),
                Err("gids: mode POD needs at least one mapping"),
            ),
            (
                pod(Some(userns(
                    NamespaceMode::Pod,
                    one(0, 100_000, 0),
                    one(0, 100_000, 1),
                ))),
                Err("uids[0]: length must not be 0"),
            ),
            (
                pod(Some(userns(
                    NamespaceMode::Pod,
                    one(0, u32::MAX - 10, 65536),
                    one(0, 100_000, 65536),
                ))),
                Err("host_id 4294967285 + length 65536 overflows"),
            ),
            (
                pod(Some(userns(
                    NamespaceMode::Pod,
                    one(u32::MAX, 100_000, 2),
                    one(0, 100_000, 65536),
                ))),
                Err("container_id 4294967295 + length 2 overflows"),
            ),
            (
                pod(Some(userns(
                    NamespaceMode::Pod,
                    one(0, 0, 65536),
                    one(0, 100_000, 65536),
                ))),
                Err("maps the host's root"),
            ),
            (
                pod(Some(userns(
                    NamespaceMode::Pod,
                    one(0, 100_000, 65536),
                    vec![idm(0, 100_000, 1000), idm(1000, 100_500, 1000)],
                ))),
                Err("gids[1]: its host ids overlap those of mapping 0"),
            ),
            (
                pod(Some(userns(
                    NamespaceMode::Pod,
                    vec![idm(0, 100_000, 1000), idm(999, 200_000, 1000)],
                    one(0, 100_000, 65536),
                ))),
                Err("uids[1]: its container ids overlap those of mapping 0"),
            ),
            (
                pod(Some(userns(
                    NamespaceMode::Pod,
                    one(1, 100_000, 65536),
                    one(0, 100_000, 65536),
                ))),
                Err("container id 0 (the pod's root) is not mapped"),
            ),
            (
                pod(Some(userns(
                    NamespaceMode::Pod,
                    (0..=MAX_MAPPINGS as u32)
                        .map(|i| idm(i, 100_000 + i, 1))
                        .collect(),
                    one(0, 100_000, 65536),
                ))),
                Err("341 mappings, the kernel accepts 340"),
            ),
            (
                pod_with(
                    Some(kubelet()),
                    NamespaceOption {
                        network: NamespaceMode::Node as i32,
                        ..Default::default()
                    },
                    false,
                ),
                Err("cannot use the host's network namespace"),
            ),
            (
                pod_with(
                    Some(kubelet()),
                    NamespaceOption {
                        pid: NamespaceMode::Node as i32,
                        ..Default::default()
                    },
                    false,
                ),
                Err("host's pid namespace"),
            ),
            (
                pod_with(
                    Some(kubelet()),
                    NamespaceOption {
                        ipc: NamespaceMode::Node as i32,
                        ..Default::default()
                    },
                    false,
                ),
                Err("host's ipc namespace"),
            ),
            (
                pod_with(Some(kubelet()), NamespaceOption::default(), true),
                Err("a privileged pod cannot"),
            ),
        ];
        for (i, (config, want)) in cases.into_iter().enumerate() {
            let got = pod_mappings(&config);
            match (got, want) {
                (Ok(m), Ok(host_root)) => {
                    assert_eq!(
                        m.as_ref().and_then(|m| m.host_uid(0)),
                        host_root,
                        "case {i}"
                    )
                }
                (Err(e), Err(part)) => {
                    let text = e.to_string();
                    assert!(text.contains(part), "case {i}: {text}");
                    assert!(text.starts_with(POD_FIELD), "case {i}: {text}");
                }
                (got, want) => panic!("case {i}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn host_ids_of_container_ids() {
        let m = Mappings {
            uids: vec![
                IdMap {
                    container_id: 0,
                    host_id: 100_000,
                    size: 10,
                },
                IdMap {
                    container_id: 10,
                    host_id: 500_000,
                    size: 5,
                },
            ],
            gids: vec![IdMap {
                container_id: 0,
                host_id: 7,
                size: 1,
            }],
        };
        let cases = [
            (0, Some(100_000)),
            (9, Some(100_009)),
            (10, Some(500_000)),
            (14, Some(500_004)),
            (15, None),
        ];
        for (id, want) in cases {
            assert_eq!(m.host_uid(id), want, "uid {id}");
        }
        assert_eq!((m.host_gid(0), m.host_gid(1)), (Some(7), None));
        assert_eq!(Mappings::map_text(&m.uids), "0 100000 10\n10 500000 5\n");
    }

    #[test]
    fn container_options_must_match_the_pod() {
        let maps = pod_mappings(&pod_with(
            Some(kubelet()),
            NamespaceOption::default(),
            false,
        ))
        .unwrap()
        .unwrap();
        let container = |opts: Option<UserNamespace>, privileged: bool| ContainerConfig {
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        userns_options: opts,
                        ..Default::default()
                    }),
                    privileged,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let other = userns(
            NamespaceMode::Pod,
            vec![idm(0, 65536 * 4, 65536)],
            vec![idm(0, 65536 * 4, 65536)],
        );
        let node = userns(NamespaceMode::Node, vec![], vec![]);
        let cases: Vec<(ContainerConfig, Option<&Mappings>, Result<(), &str>)> = vec![
            (ContainerConfig::default(), Some(&maps), Ok(())),
            (container(None, false), Some(&maps), Ok(())),
            (container(Some(kubelet()), false), Some(&maps), Ok(())),
            (container(Some(node.clone()), false), None, Ok(())),
            (container(None, true), None, Ok(())),
            (
                container(Some(other), false),
                Some(&maps),
                Err("must match the pod's"),
            ),
            (
                container(Some(node), false),
                Some(&maps),
                Err("must match the pod's"),
            ),
            (
                container(Some(kubelet()), false),
                None,
                Err("must match the pod's"),
            ),
            (
                container(None, true),
                Some(&maps),
                Err("cannot be privileged"),
            ),
        ];
        for (i, (c, pod, want)) in cases.into_iter().enumerate() {
            match (check_container(&c, pod), want) {
                (Ok(()), Ok(())) => {}
                (Err(e), Err(part)) => assert!(e.to_string().contains(part), "case {i}: {e}"),
                (got, want) => panic!("case {i}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn spec_gets_the_namespace_mappings_and_a_sys_bind() {
        let maps = Mappings {
            uids: vec![IdMap {
                container_id: 0,
                host_id: 100_000,
                size: 65536,
            }],
            gids: vec![IdMap {
                container_id: 0,
                host_id: 200_000,
                size: 65536,
            }],
        };
        let base = json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro"]},
            ],
            "linux": {"namespaces": [{"type": "mount"}, {"type": "network", "path": "/run/netns/x"}]},
        });
        let rw_sys = {
            let mut v = base.clone();
            v["mounts"][1]["options"] = json!(["nosuid", "noexec", "nodev", "rw"]);
            v
        };
        // (spec, join, want namespaces, want /sys options)
        let cases = [
            (
                base.clone(),
                None,
                vec![
                    ("mount", None),
                    ("network", Some("/run/netns/x")),
                    ("user", None),
                ],
                "ro",
            ),
            (
                base.clone(),
                Some("/proc/42/ns/user"),
                vec![
                    ("mount", None),
                    ("network", Some("/run/netns/x")),
                    ("user", Some("/proc/42/ns/user")),
                ],
                "ro",
            ),
            (
                rw_sys,
                None,
                vec![
                    ("mount", None),
                    ("network", Some("/run/netns/x")),
                    ("user", None),
                ],
                "rw",
            ),
        ];
        for (i, (spec, join, want_ns, sys_mode)) in cases.into_iter().enumerate() {
            let spec: oci_spec::runtime::Spec = serde_json::from_value(spec).unwrap();
            // Applying twice gives the same result (one user namespace).
            let once = apply(spec, &maps, join).unwrap();
            let out = serde_json::to_value(apply(once, &maps, join).unwrap()).unwrap();
            let ns: Vec<(String, Option<String>)> = crate::testutil::namespaces(&out);
            let want: Vec<(String, Option<String>)> = want_ns
                .iter()
                .map(|(t, p)| (t.to_string(), p.map(String::from)))
                .collect();
            assert_eq!(ns, want, "case {i}");
            assert_eq!(
                out["linux"]["uidMappings"],
                json!([{"containerID": 0, "hostID": 100_000, "size": 65536}]),
                "case {i}"
            );
            assert_eq!(
                out["linux"]["gidMappings"],
                json!([{"containerID": 0, "hostID": 200_000, "size": 65536}]),
                "case {i}"
            );
            let sys = crate::testutil::mount(&out, "/sys").unwrap();
            assert_eq!(sys["type"], "bind", "case {i}");
            assert_eq!(sys["source"], "/sys", "case {i}");
            assert_eq!(
                sys["options"],
                json!(["rbind", "nosuid", "noexec", "nodev", sys_mode]),
                "case {i}"
            );
            // Other mounts are untouched.
            assert_eq!(
                crate::testutil::mount(&out, "/proc").unwrap()["type"],
                "proc"
            );
            assert_eq!(
                crate::testutil::mount(&out, "/sys/fs/cgroup").unwrap()["type"],
                "cgroup"
            );
        }
    }
}
