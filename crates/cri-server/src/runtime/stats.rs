//! ContainerStats, ListContainerStats, PodSandboxStats and
//! ListPodSandboxStats: read from the cgroups of containers and pods, the
//! writable layer on disk and the pod's network namespace.

use crate::daemon::Daemon;
use crate::runtime::filter::{id_matches, labels_match, to_hash_map};
use crate::runtime::now_nanos;
use crius_store::{ContainerRecord, ContainerState, SandboxRecord, SandboxState};
use k8s_cri::v1::{
    ContainerAttributes, ContainerStats, CpuUsage, FilesystemIdentifier, FilesystemUsage,
    LinuxPodSandboxStats, MemoryUsage, NetworkInterfaceUsage, NetworkUsage, PodSandboxAttributes,
    PodSandboxStats, ProcessUsage, UInt64Value,
};
use std::path::{Path, PathBuf};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

fn v(value: u64) -> Option<UInt64Value> {
    Some(UInt64Value { value })
}

/// Parses a flat-keyed cgroup file (`memory.stat`, `cpu.stat`).
pub fn parse_flat(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key))
            .then(|| it.next()?.parse().ok())
            .flatten()
    })
}

/// One interface of /proc/<pid>/net/dev: (name, rx bytes, rx errors, tx bytes, tx errors).
pub fn parse_net_dev(text: &str) -> Vec<(String, u64, u64, u64, u64)> {
    text.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (f.len() >= 11).then(|| (name.trim().to_string(), f[0], f[2], f[8], f[10]))
        })
        .collect()
}

/// CPU and memory of one cgroup (`path` as in the OCI cgroupsPath).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    /// Cumulative CPU time, nanoseconds.
    pub cpu_ns: Option<u64>,
    /// Memory usage, bytes.
    pub memory: Option<u64>,
    /// Usage minus inactive file pages.
    pub working_set: Option<u64>,
    /// Anonymous and swap-cache memory.
    pub rss: Option<u64>,
    /// Page faults.
    pub pgfault: Option<u64>,
    /// Major page faults.
    pub pgmajfault: Option<u64>,
    /// Processes in the cgroup (and below).
    pub processes: Option<u64>,
}

fn read(p: PathBuf) -> Option<String> {
    std::fs::read_to_string(p).ok()
}

fn count_procs(dir: &Path) -> u64 {
    let own = read(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count() as u64)
        .unwrap_or(0);
    let children: u64 = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| count_procs(&e.path()))
                .sum()
        })
        .unwrap_or(0);
    own + children
}

/// Reads a cgroup's usage, cgroup v1 (per-controller mounts) or v2.
pub fn cgroup_usage(root: &Path, path: &str) -> CgroupUsage {
    let rel = path.trim_start_matches('/');
    if root.join("cgroup.controllers").exists() {
        let dir = root.join(rel);
        let stat = read(dir.join("memory.stat")).unwrap_or_default();
        let memory = read(dir.join("memory.current")).and_then(|t| t.trim().parse().ok());
        return CgroupUsage {
            cpu_ns: read(dir.join("cpu.stat"))
                .and_then(|t| parse_flat(&t, "usage_usec"))
                .map(|us| us * 1000),
            memory,
            working_set: memory
                .map(|m| m.saturating_sub(parse_flat(&stat, "inactive_file").unwrap_or(0))),
            rss: parse_flat(&stat, "anon"),
            pgfault: parse_flat(&stat, "pgfault"),
            pgmajfault: parse_flat(&stat, "pgmajfault"),
            processes: dir.exists().then(|| count_procs(&dir)),
        };
    }
    let mem = root.join("memory").join(rel);
    let stat = read(mem.join("memory.stat")).unwrap_or_default();
    let memory = read(mem.join("memory.usage_in_bytes")).and_then(|t| t.trim().parse().ok());
    let pids = root.join("pids").join(rel);
    CgroupUsage {
        cpu_ns: read(root.join("cpuacct").join(rel).join("cpuacct.usage"))
            .and_then(|t| t.trim().parse().ok()),
        memory,
        working_set: memory
            .map(|m| m.saturating_sub(parse_flat(&stat, "total_inactive_file").unwrap_or(0))),
        rss: parse_flat(&stat, "total_rss"),
        pgfault: parse_flat(&stat, "total_pgfault"),
        pgmajfault: parse_flat(&stat, "total_pgmajfault"),
        processes: pids.exists().then(|| count_procs(&pids)),
    }
}

fn cpu(u: &CgroupUsage, ts: i64) -> Option<CpuUsage> {
    Some(CpuUsage {
        timestamp: ts,
        usage_core_nano_seconds: v(u.cpu_ns?),
        usage_nano_cores: None,
    })
}

fn memory(u: &CgroupUsage, ts: i64) -> Option<MemoryUsage> {
    Some(MemoryUsage {
        timestamp: ts,
        working_set_bytes: v(u.working_set?),
        available_bytes: None,
        usage_bytes: u.memory.and_then(v),
        rss_bytes: u.rss.and_then(v),
        page_faults: u.pgfault.and_then(v),
        major_page_faults: u.pgmajfault.and_then(v),
    })
}

fn pod_cgroup(sandbox: &SandboxRecord, daemon: &Daemon) -> String {
    let parent = crate::runtime::sandbox::status::stored_config(sandbox)
        .linux
        .map(|l| l.cgroup_parent)
        .unwrap_or_default();
    if parent.is_empty() {
        crius_spec::cgroups::cgroups_path("", &sandbox.metadata.id, daemon.host.cgroup_driver)
    } else {
        parent
    }
}

/// The stats of one container.
pub fn container_stats(daemon: &Daemon, c: &ContainerRecord) -> ContainerStats {
    let ts = now_nanos();
    let parent = daemon
        .store
        .get_sandbox(&c.metadata.sandbox_id)
        .ok()
        .and_then(|s| crate::runtime::sandbox::status::stored_config(&s).linux)
        .map(|l| l.cgroup_parent)
        .unwrap_or_default();
    let path =
        crius_spec::cgroups::cgroups_path(&parent, &c.metadata.id, daemon.host.cgroup_driver);
    let usage = if c.status.state == ContainerState::Running {
        cgroup_usage(Path::new(CGROUP_ROOT), &path)
    } else {
        CgroupUsage::default()
    };
    // Measured in the background (a writable layer can hold millions of
    // files); a new one shows zero until its first measurement.
    let layer = daemon
        .images
        .writable_usage(&c.metadata.id)
        .unwrap_or_default();
    let (bytes, inodes) = (layer.bytes, layer.inodes);
    ContainerStats {
        attributes: Some(ContainerAttributes {
            id: c.metadata.id.clone(),
            metadata: Some(k8s_cri::v1::ContainerMetadata {
                name: c.metadata.container_name.clone(),
                attempt: c.metadata.attempt,
            }),
            labels: to_hash_map(&c.metadata.labels),
            annotations: to_hash_map(&c.metadata.annotations),
        }),
        cpu: cpu(&usage, ts),
        memory: memory(&usage, ts),
        writable_layer: Some(FilesystemUsage {
            timestamp: ts,
            fs_id: Some(FilesystemIdentifier {
                mountpoint: daemon.images.image_dir().display().to_string(),
            }),
            used_bytes: v(bytes),
            inodes_used: v(inodes),
        }),
        swap: None,
    }
}

/// The stats of one pod: its cgroup, its network namespace (through the
/// pause process, or entered for a pod without one) and its containers.
pub fn pod_stats(daemon: &Daemon, s: &SandboxRecord) -> PodSandboxStats {
    let ts = now_nanos();
    let ready = s.status.state == SandboxState::Ready;
    let usage = if ready {
        cgroup_usage(Path::new(CGROUP_ROOT), &pod_cgroup(s, daemon))
    } else {
        CgroupUsage::default()
    };
    // Through the pause, or inside the netns of a pod without one.
    let net_dev = || match (s.status.pid, &s.status.netns_path) {
        (Some(pid), _) => read(PathBuf::from(format!("/proc/{pid}/net/dev"))),
        (None, Some(ns)) => crius_netns::netns::run_in(Path::new(ns), || {
            read(PathBuf::from("/proc/thread-self/net/dev"))
        })
        .ok()
        .flatten(),
        (None, None) => None,
    };
    let network = ready.then(net_dev).flatten().map(|text| {
        let devs = parse_net_dev(&text);
        let iface = |d: &(String, u64, u64, u64, u64)| NetworkInterfaceUsage {
            name: d.0.clone(),
            rx_bytes: v(d.1),
            rx_errors: v(d.2),
            tx_bytes: v(d.3),
            tx_errors: v(d.4),
        };
        let interfaces: Vec<NetworkInterfaceUsage> =
            devs.iter().filter(|d| d.0 != "lo").map(iface).collect();
        NetworkUsage {
            timestamp: ts,
            default_interface: interfaces.iter().find(|i| i.name == "eth0").cloned(),
            interfaces,
        }
    });
    let meta = k8s_cri::v1::PodSandboxMetadata {
        name: s.metadata.pod_name.clone(),
        uid: s.metadata.uid.clone(),
        namespace: s.metadata.namespace.clone(),
        attempt: s.metadata.attempt,
    };
    PodSandboxStats {
        attributes: Some(PodSandboxAttributes {
            id: s.metadata.id.clone(),
            metadata: Some(meta),
            labels: to_hash_map(&s.metadata.labels),
            annotations: to_hash_map(&s.metadata.annotations),
        }),
        linux: Some(LinuxPodSandboxStats {
            cpu: cpu(&usage, ts),
            memory: memory(&usage, ts),
            network,
            process: usage.processes.map(|n| ProcessUsage {
                timestamp: ts,
                process_count: v(n),
            }),
            containers: daemon
                .store
                .list_sandbox_containers(&s.metadata.id)
                .iter()
                .map(|c| container_stats(daemon, c))
                .collect(),
        }),
        windows: None,
    }
}

/// ListContainerStats.
pub fn list_container_stats(
    daemon: &Daemon,
    filter: Option<&k8s_cri::v1::ContainerStatsFilter>,
) -> Vec<ContainerStats> {
    daemon
        .store
        .list_containers()
        .iter()
        .filter(|c| {
            filter.is_none_or(|f| {
                id_matches(&c.metadata.id, &f.id)
                    && id_matches(&c.metadata.sandbox_id, &f.pod_sandbox_id)
                    && labels_match(&c.metadata.labels, &f.label_selector)
            })
        })
        .map(|c| container_stats(daemon, c))
        .collect()
}

/// ListPodSandboxStats.
pub fn list_pod_stats(
    daemon: &Daemon,
    filter: Option<&k8s_cri::v1::PodSandboxStatsFilter>,
) -> Vec<PodSandboxStats> {
    daemon
        .store
        .list_sandboxes()
        .iter()
        .filter(|s| {
            filter.is_none_or(|f| {
                id_matches(&s.metadata.id, &f.id)
                    && labels_match(&s.metadata.labels, &f.label_selector)
            })
        })
        .map(|s| pod_stats(daemon, s))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_and_net_dev() {
        let stat = "cache 10\nrss 20\ntotal_rss 30\ntotal_inactive_file 5\n";
        assert_eq!(parse_flat(stat, "total_rss"), Some(30));
        assert_eq!(parse_flat(stat, "rss"), Some(20));
        assert_eq!(parse_flat(stat, "nope"), None);
        let dev = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  eth0:    5000      10    2    0    0     0          0         0     3000       8    1    0    0     0       0          0\n";
        assert_eq!(
            parse_net_dev(dev),
            vec![
                ("lo".to_string(), 100, 0, 100, 0),
                ("eth0".to_string(), 5000, 2, 3000, 1)
            ]
        );
    }

    #[test]
    fn v1_and_v2_layouts() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("v1");
        for (ctl, file, text) in [
            ("cpuacct", "cpuacct.usage", "123456\n"),
            ("memory", "memory.usage_in_bytes", "1000\n"),
            (
                "memory",
                "memory.stat",
                "total_inactive_file 100\ntotal_rss 600\ntotal_pgfault 7\ntotal_pgmajfault 1\n",
            ),
            ("pids", "cgroup.procs", "1\n2\n"),
        ] {
            let dir = root.join(ctl).join("pod/c1");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(file), text).unwrap();
        }
        let u = cgroup_usage(&root, "/pod/c1");
        assert_eq!(
            u,
            CgroupUsage {
                cpu_ns: Some(123456),
                memory: Some(1000),
                working_set: Some(900),
                rss: Some(600),
                pgfault: Some(7),
                pgmajfault: Some(1),
                processes: Some(2),
            }
        );
        let v2 = d.path().join("v2");
        let dir = v2.join("pod/c1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(v2.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        std::fs::write(dir.join("cpu.stat"), "usage_usec 50\nuser_usec 30\n").unwrap();
        std::fs::write(dir.join("memory.current"), "2000\n").unwrap();
        std::fs::write(
            dir.join("memory.stat"),
            "anon 700\ninactive_file 500\npgfault 3\npgmajfault 0\n",
        )
        .unwrap();
        std::fs::write(dir.join("cgroup.procs"), "9\n").unwrap();
        let u = cgroup_usage(&v2, "pod/c1");
        assert_eq!(
            (u.cpu_ns, u.memory, u.working_set, u.rss, u.processes),
            (Some(50_000), Some(2000), Some(1500), Some(700), Some(1))
        );
        assert_eq!(cgroup_usage(&v2, "missing").memory, None);
    }
}
