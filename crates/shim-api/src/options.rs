//! The pod options criusd passes to the shim as annotations of
//! CreateSandboxRequest, with their one encoding ([`PodOptions::encode`])
//! and decoding ([`PodOptions::decode`]).
//!
//! - `io.crius.shim.network`: `host` for a host-network pod (no netns is
//!   created). When the request's `netns_path` is set, that namespace is
//!   used as is and not owned (not removed) by the shim, unless
//!   `io.crius.shim.netns-owned` is `true`: then it is the shim's from
//!   then on, removed at shutdown like one it made.
//! - `io.crius.shim.ipc`: `host` for host IPC (no /dev/shm tmpfs).
//! - `io.crius.shim.shm-size`: the tmpfs size in bytes (default 64 MiB).
//! - `io.crius.shim.infra`: `none` for a pod without an infra (pause)
//!   process. The shim then also creates the pod's IPC namespace (unless
//!   host IPC) and UTS namespace (unless host network), sets the hostname
//!   given by `io.crius.shim.hostname` and writes the sysctls given by
//!   `io.crius.shim.sysctls` (a JSON object) in the pod's namespaces.
//! - `io.crius.shim.uidmap` and `io.crius.shim.gidmap`: a pod with a user
//!   namespace of its own, with these mappings (ranges as in
//!   [`crate::idmap::ranges_text`]). The shim makes the user namespace and
//!   a network namespace it owns, pinned at the pod directory's `userns`
//!   and `netns` (no `netns_path` then).

use std::collections::{BTreeMap, HashMap};

use crate::idmap::{parse_ranges, ranges_text, IdMaps};

/// Annotation: `host` for a host-network pod.
pub const NETWORK_ANNOTATION: &str = "io.crius.shim.network";
/// Annotation: `host` for host IPC.
pub const IPC_ANNOTATION: &str = "io.crius.shim.ipc";
/// Annotation: /dev/shm size in bytes.
pub const SHM_SIZE_ANNOTATION: &str = "io.crius.shim.shm-size";
/// Annotation: `true` when the netns given in `netns_path` is the shim's to
/// remove at shutdown (criusd made it so that CNI could start early).
pub const NETNS_OWNED_ANNOTATION: &str = "io.crius.shim.netns-owned";
/// Annotation: `none` for a pod without an infra process.
pub const INFRA_ANNOTATION: &str = "io.crius.shim.infra";
/// Annotation: the pod's hostname (pods without an infra process).
pub const HOSTNAME_ANNOTATION: &str = "io.crius.shim.hostname";
/// Annotation: the pod's sysctls as a JSON object (pods without an infra
/// process).
pub const SYSCTLS_ANNOTATION: &str = "io.crius.shim.sysctls";
/// Annotation: the uid mapping of the pod's own user namespace.
pub const UIDMAP_ANNOTATION: &str = "io.crius.shim.uidmap";
/// Annotation: the gid mapping of the pod's own user namespace.
pub const GIDMAP_ANNOTATION: &str = "io.crius.shim.gidmap";
/// Default /dev/shm size.
pub const DEFAULT_SHM_SIZE: u64 = 64 * 1024 * 1024;

/// A pod option the shim cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OptionsError(pub String);

/// How a pod without an infra (pause) process is set up by its shim.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoInfra {
    /// The hostname in the pod's UTS namespace.
    pub hostname: String,
    /// The pod's sysctls.
    pub sysctls: BTreeMap<String, String>,
    /// The pod's containers share a PID namespace: the shim holds it with
    /// a process of its own (PID 1 of that namespace) instead of a pause
    /// container (`io.crius.shim.infra = pid-holder`).
    pub pid_holder: bool,
}

/// What criusd tells the shim about a pod besides the request's own
/// fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodOptions {
    /// The pod uses the host's network namespace.
    pub host_network: bool,
    /// The pod uses the host's IPC namespace (no /dev/shm tmpfs).
    pub host_ipc: bool,
    /// The size of the pod's /dev/shm tmpfs in bytes (more than 0).
    pub shm_size: u64,
    /// The pod has no infra process: how the shim sets up its namespaces.
    pub no_infra: Option<NoInfra>,
    /// The netns in the request's `netns_path` becomes the shim's.
    pub netns_owned: bool,
    /// The pod has a user namespace of its own with these mappings.
    pub userns: Option<IdMaps>,
}

impl Default for PodOptions {
    /// What no annotations at all mean.
    fn default() -> PodOptions {
        PodOptions {
            host_network: false,
            host_ipc: false,
            shm_size: DEFAULT_SHM_SIZE,
            no_infra: None,
            netns_owned: false,
            userns: None,
        }
    }
}

impl PodOptions {
    /// The annotations carrying these options.
    pub fn encode(&self) -> HashMap<String, String> {
        let mut a = HashMap::new();
        if self.netns_owned {
            a.insert(NETNS_OWNED_ANNOTATION.to_string(), "true".to_string());
        }
        if let Some(n) = &self.no_infra {
            let kind = if n.pid_holder { "pid-holder" } else { "none" };
            a.insert(INFRA_ANNOTATION.to_string(), kind.to_string());
            a.insert(HOSTNAME_ANNOTATION.to_string(), n.hostname.clone());
            if !n.sysctls.is_empty() {
                a.insert(
                    SYSCTLS_ANNOTATION.to_string(),
                    serde_json::to_string(&n.sysctls).unwrap_or_default(),
                );
            }
        }
        if self.host_network {
            a.insert(NETWORK_ANNOTATION.to_string(), "host".to_string());
        }
        if self.host_ipc {
            a.insert(IPC_ANNOTATION.to_string(), "host".to_string());
        }
        a.insert(SHM_SIZE_ANNOTATION.to_string(), self.shm_size.to_string());
        if let Some(m) = &self.userns {
            a.insert(UIDMAP_ANNOTATION.to_string(), ranges_text(&m.uids));
            a.insert(GIDMAP_ANNOTATION.to_string(), ranges_text(&m.gids));
        }
        a
    }

    /// The options the annotations carry; annotations of other keys are
    /// ignored. Checks the form only (a JSON object of sysctls, not which
    /// sysctls are namespaced).
    pub fn decode(annotations: &HashMap<String, String>) -> Result<PodOptions, OptionsError> {
        let get = |k: &str| annotations.get(k).map(String::as_str);
        let shm_size = match get(SHM_SIZE_ANNOTATION) {
            None => DEFAULT_SHM_SIZE,
            Some(s) => s
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| OptionsError(format!("{SHM_SIZE_ANNOTATION}={s:?}")))?,
        };
        let (infra, pid_holder) = match get(INFRA_ANNOTATION) {
            None => (true, false),
            Some("none") => (false, false),
            Some("pid-holder") => (false, true),
            Some(other) => {
                return Err(OptionsError(format!("{INFRA_ANNOTATION}={other:?}")));
            }
        };
        let sysctls: BTreeMap<String, String> = match get(SYSCTLS_ANNOTATION) {
            None => BTreeMap::new(),
            Some(s) => serde_json::from_str(s)
                .map_err(|e| OptionsError(format!("{SYSCTLS_ANNOTATION}: {e}")))?,
        };
        if infra && !sysctls.is_empty() {
            return Err(OptionsError(format!(
                "{SYSCTLS_ANNOTATION} is for pods without an infra process (the pause's spec has them)"
            )));
        }
        let netns_owned = match get(NETNS_OWNED_ANNOTATION) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(OptionsError(format!("{NETNS_OWNED_ANNOTATION}={other:?}")));
            }
        };
        let userns = match (get(UIDMAP_ANNOTATION), get(GIDMAP_ANNOTATION)) {
            (None, None) => None,
            (Some(u), Some(g)) => Some(IdMaps {
                uids: parse_ranges(u)
                    .map_err(|e| OptionsError(format!("{UIDMAP_ANNOTATION}: {e}")))?,
                gids: parse_ranges(g)
                    .map_err(|e| OptionsError(format!("{GIDMAP_ANNOTATION}: {e}")))?,
            }),
            _ => {
                return Err(OptionsError(format!(
                    "{UIDMAP_ANNOTATION} and {GIDMAP_ANNOTATION} go together"
                )))
            }
        };
        if userns.is_some() && get(NETWORK_ANNOTATION) == Some("host") {
            return Err(OptionsError(format!(
                "{UIDMAP_ANNOTATION} with a host network: the pod's network namespace belongs to its user namespace"
            )));
        }
        Ok(PodOptions {
            host_network: get(NETWORK_ANNOTATION) == Some("host"),
            host_ipc: get(IPC_ANNOTATION) == Some("host"),
            shm_size,
            no_infra: (!infra).then(|| NoInfra {
                hostname: get(HOSTNAME_ANNOTATION).unwrap_or_default().to_string(),
                sysctls,
                pid_holder,
            }),
            netns_owned,
            userns,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(v: &[(&str, &str)]) -> HashMap<String, String> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn no_infra(hostname: &str, sysctls: &[(&str, &str)]) -> Option<NoInfra> {
        Some(NoInfra {
            hostname: hostname.into(),
            sysctls: sysctls
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            pid_holder: false,
        })
    }

    fn pid_holder(hostname: &str) -> Option<NoInfra> {
        Some(NoInfra {
            pid_holder: true,
            ..no_infra(hostname, &[])?
        })
    }

    #[test]
    fn round_trip_table() {
        let d = PodOptions::default;
        let cases = [
            d(),
            PodOptions {
                host_network: true,
                shm_size: 1024,
                ..d()
            },
            PodOptions {
                host_ipc: true,
                ..d()
            },
            PodOptions {
                host_network: true,
                host_ipc: true,
                shm_size: u64::MAX,
                ..d()
            },
            PodOptions {
                netns_owned: true,
                ..d()
            },
            PodOptions {
                no_infra: pid_holder("web-0"),
                ..PodOptions::default()
            },
            PodOptions {
                no_infra: no_infra("", &[]),
                ..d()
            },
            PodOptions {
                no_infra: no_infra("web-0", &[("kernel.shmmni", "100")]),
                netns_owned: true,
                ..d()
            },
            PodOptions {
                no_infra: no_infra(
                    "h",
                    &[
                        ("net.ipv4.ip_unprivileged_port_start", "0"),
                        ("kernel.msgmax", "8192"),
                    ],
                ),
                host_ipc: true,
                ..d()
            },
            PodOptions {
                userns: Some(crate::idmap::IdMaps {
                    uids: vec![crate::idmap::IdRange {
                        container: 0,
                        host: 100000,
                        size: 65536,
                    }],
                    gids: vec![
                        crate::idmap::IdRange {
                            container: 0,
                            host: 200000,
                            size: 1,
                        },
                        crate::idmap::IdRange {
                            container: 1,
                            host: 300000,
                            size: 65535,
                        },
                    ],
                }),
                ..d()
            },
        ];
        for o in cases {
            assert_eq!(PodOptions::decode(&o.encode()), Ok(o.clone()), "{o:?}");
        }
    }

    #[test]
    fn encode_table() {
        // (options, the annotations they give)
        let cases = [
            (
                PodOptions {
                    host_network: true,
                    shm_size: 1024,
                    ..PodOptions::default()
                },
                annotations(&[(NETWORK_ANNOTATION, "host"), (SHM_SIZE_ANNOTATION, "1024")]),
            ),
            (
                PodOptions {
                    host_ipc: true,
                    netns_owned: true,
                    no_infra: no_infra("web-0", &[("kernel.shmmni", "100")]),
                    shm_size: 1024,
                    ..PodOptions::default()
                },
                annotations(&[
                    (IPC_ANNOTATION, "host"),
                    (NETNS_OWNED_ANNOTATION, "true"),
                    (INFRA_ANNOTATION, "none"),
                    (HOSTNAME_ANNOTATION, "web-0"),
                    (SYSCTLS_ANNOTATION, r#"{"kernel.shmmni":"100"}"#),
                    (SHM_SIZE_ANNOTATION, "1024"),
                ]),
            ),
            (
                PodOptions {
                    no_infra: pid_holder("web-0"),
                    ..PodOptions::default()
                },
                annotations(&[
                    (INFRA_ANNOTATION, "pid-holder"),
                    (HOSTNAME_ANNOTATION, "web-0"),
                    (SHM_SIZE_ANNOTATION, "67108864"),
                ]),
            ),
            // No sysctls: no sysctls annotation; the hostname always.
            (
                PodOptions {
                    no_infra: no_infra("", &[]),
                    ..PodOptions::default()
                },
                annotations(&[
                    (INFRA_ANNOTATION, "none"),
                    (HOSTNAME_ANNOTATION, ""),
                    (SHM_SIZE_ANNOTATION, "67108864"),
                ]),
            ),
        ];
        for (o, want) in cases {
            assert_eq!(o.encode(), want, "{o:?}");
        }
    }

    #[test]
    fn decode_table() {
        let d = PodOptions::default;
        let sysctls = r#"{"net.ipv4.ip_unprivileged_port_start":"0","kernel.shmmni":"100"}"#;
        // (annotations, the options or the error's start)
        let cases = vec![
            (annotations(&[]), Ok(d())),
            (annotations(&[("other.key", "x")]), Ok(d())),
            (
                annotations(&[(NETWORK_ANNOTATION, "host"), (IPC_ANNOTATION, "host")]),
                Ok(PodOptions {
                    host_network: true,
                    host_ipc: true,
                    ..d()
                }),
            ),
            // Anything but `host` is the pod's own.
            (annotations(&[(NETWORK_ANNOTATION, "pod")]), Ok(d())),
            (
                annotations(&[(SHM_SIZE_ANNOTATION, "1048576")]),
                Ok(PodOptions {
                    shm_size: 1048576,
                    ..d()
                }),
            ),
            (
                annotations(&[(SHM_SIZE_ANNOTATION, "0")]),
                Err(SHM_SIZE_ANNOTATION),
            ),
            (
                annotations(&[(SHM_SIZE_ANNOTATION, "big")]),
                Err(SHM_SIZE_ANNOTATION),
            ),
            (annotations(&[(NETNS_OWNED_ANNOTATION, "false")]), Ok(d())),
            (
                annotations(&[(NETNS_OWNED_ANNOTATION, "true")]),
                Ok(PodOptions {
                    netns_owned: true,
                    ..d()
                }),
            ),
            (
                annotations(&[(NETNS_OWNED_ANNOTATION, "yes")]),
                Err(NETNS_OWNED_ANNOTATION),
            ),
            (
                annotations(&[(INFRA_ANNOTATION, "none")]),
                Ok(PodOptions {
                    no_infra: no_infra("", &[]),
                    ..d()
                }),
            ),
            (
                annotations(&[
                    (INFRA_ANNOTATION, "none"),
                    (HOSTNAME_ANNOTATION, "web-0"),
                    (SYSCTLS_ANNOTATION, sysctls),
                ]),
                Ok(PodOptions {
                    no_infra: no_infra(
                        "web-0",
                        &[
                            ("net.ipv4.ip_unprivileged_port_start", "0"),
                            ("kernel.shmmni", "100"),
                        ],
                    ),
                    ..d()
                }),
            ),
            (
                annotations(&[(INFRA_ANNOTATION, "pid-holder"), (HOSTNAME_ANNOTATION, "h")]),
                Ok(PodOptions {
                    no_infra: pid_holder("h"),
                    ..d()
                }),
            ),
            // A hostname means nothing to a pod with an infra process.
            (annotations(&[(HOSTNAME_ANNOTATION, "web-0")]), Ok(d())),
            (
                annotations(&[(INFRA_ANNOTATION, "yes")]),
                Err(INFRA_ANNOTATION),
            ),
            // The pause's spec carries the sysctls of a pod with one.
            (
                annotations(&[(SYSCTLS_ANNOTATION, sysctls)]),
                Err(SYSCTLS_ANNOTATION),
            ),
            (
                annotations(&[(INFRA_ANNOTATION, "none"), (SYSCTLS_ANNOTATION, "[1]")]),
                Err(SYSCTLS_ANNOTATION),
            ),
            (
                annotations(&[
                    (INFRA_ANNOTATION, "none"),
                    (SYSCTLS_ANNOTATION, r#"{"a":1}"#),
                ]),
                Err(SYSCTLS_ANNOTATION),
            ),
            (
                annotations(&[(UIDMAP_ANNOTATION, "0:100000:65536")]),
                Err(UIDMAP_ANNOTATION),
            ),
            (
                annotations(&[(UIDMAP_ANNOTATION, "0:1"), (GIDMAP_ANNOTATION, "0:1:1")]),
                Err(UIDMAP_ANNOTATION),
            ),
            (
                annotations(&[(UIDMAP_ANNOTATION, "0:1:1"), (GIDMAP_ANNOTATION, "x")]),
                Err(GIDMAP_ANNOTATION),
            ),
            (
                annotations(&[
                    (UIDMAP_ANNOTATION, "0:1:1"),
                    (GIDMAP_ANNOTATION, "0:1:1"),
                    (NETWORK_ANNOTATION, "host"),
                ]),
                Err(UIDMAP_ANNOTATION),
            ),
        ];
        for (a, want) in cases {
            let got = PodOptions::decode(&a);
            match (&got, want) {
                (Ok(o), Ok(w)) => assert_eq!(o, &w, "{a:?}"),
                (Err(e), Err(key)) => assert!(e.0.starts_with(key), "{a:?}: {e}"),
                _ => panic!("{a:?}: got {got:?}"),
            }
        }
    }
}
