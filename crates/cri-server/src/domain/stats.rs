//! ContainerStats, ListContainerStats, PodSandboxStats and
//! ListPodSandboxStats: read from the cgroups of containers and pods, the
//! writable layer on disk and the pod's network namespace.

use crate::daemon::Daemon;
use crate::domain::filter::{id_matches, labels_match, to_hash_map};
use crate::domain::now_nanos;
use crius_store::{ContainerRecord, ContainerState, SandboxRecord, SandboxState};
use k8s_cri::v1::{
    ContainerAttributes, ContainerStats, CpuUsage, FilesystemIdentifier, FilesystemUsage,
    LinuxPodSandboxStats, MemoryUsage, NetworkInterfaceUsage, NetworkUsage, PodSandboxAttributes,
    PodSandboxStats, ProcessUsage, UInt64Value,
};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

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

/// Processes in the cgroup at `dir` and below; `None` when it does not
/// exist. Sub-cgroups are told by the directory entry's type (no stat per
/// entry: the stats of a node walk hundreds of cgroups).
fn count_procs(dir: &Path) -> Option<u64> {
    let entries = std::fs::read_dir(dir).ok()?;
    let own = read(dir.join("cgroup.procs"))
        .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count() as u64)
        .unwrap_or(0);
    let children: u64 = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| count_procs(&e.path()))
        .sum();
    Some(own + children)
}

/// Reads a cgroup's usage, cgroup v1 (per-controller mounts) or v2.
pub fn cgroup_usage(root: &Path, path: &str) -> CgroupUsage {
    read_cgroup(root, root.join("cgroup.controllers").exists(), path, true)
}

/// Reads a cgroup's usage under `root` (a v2 hierarchy when `v2`); the
/// processes are counted only when asked (it reads every sub-cgroup).
fn read_cgroup(root: &Path, v2: bool, path: &str, processes: bool) -> CgroupUsage {
    // A systemd driver path names a unit; its files are in the expanded
    // slice's directory.
    let Some(dir) = crius_spec::cgroups::cgroup_dir(path) else {
        return CgroupUsage::default();
    };
    let rel = dir.trim_start_matches('/');
    if v2 {
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
            processes: processes.then(|| count_procs(&dir)).flatten(),
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
        processes: processes.then(|| count_procs(&pids)).flatten(),
    }
}

fn cpu(u: &CgroupUsage, ts: i64, nano_cores: Option<u64>) -> Option<CpuUsage> {
    Some(CpuUsage {
        timestamp: ts,
        usage_core_nano_seconds: v(u.cpu_ns?),
        usage_nano_cores: nano_cores.and_then(v),
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

// ---------------------------------------------------------------- sampling

/// Two CPU readings of one cgroup closer than this give no new rate (the
/// previous one is answered): ListPodSandboxStats and ListContainerStats
/// come together, and a short interval makes a noisy rate.
pub const MIN_SAMPLE_INTERVAL_NS: u64 = 1_000_000_000;

/// A cgroup not read for this long is forgotten (its container or pod is
/// gone, or nobody asks for stats any more).
pub const SAMPLE_EXPIRY_NS: u64 = 120_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sample {
    /// When the base reading was taken (monotonic, ns).
    at: u64,
    /// Cumulative CPU time then.
    cpu_ns: u64,
    /// Rate from the reading before it, if any.
    rate: Option<u64>,
    /// Last time anyone read the cgroup (for expiry).
    seen: u64,
}

/// `usage_nano_cores` of each cgroup from the difference of two readings
/// of its cumulative CPU time, kept between stats calls (the CRI leaves
/// the rate to the runtime). No timer: readings happen when stats are
/// asked for, and old entries are dropped then.
#[derive(Debug, Default)]
pub struct CpuSampler {
    samples: Mutex<HashMap<String, Sample>>,
}

impl CpuSampler {
    /// Records a reading of `key`'s cumulative CPU time `cpu_ns` at `now`
    /// (monotonic ns) and answers its rate in nanocores: `None` at the
    /// first reading or after the counter went back (a new cgroup of the
    /// same name); the previous rate when the last base reading is less
    /// than [`MIN_SAMPLE_INTERVAL_NS`] old.
    pub fn observe(&self, key: &str, now: u64, cpu_ns: u64) -> Option<u64> {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = Sample {
            at: now,
            cpu_ns,
            rate: None,
            seen: now,
        };
        let Some(prev) = samples.get_mut(key) else {
            samples.insert(key.to_string(), fresh);
            return None;
        };
        if cpu_ns < prev.cpu_ns || now < prev.at {
            *prev = fresh;
            return None;
        }
        prev.seen = now;
        let elapsed = now - prev.at;
        if elapsed < MIN_SAMPLE_INTERVAL_NS {
            return prev.rate;
        }
        let rate = ((cpu_ns - prev.cpu_ns) as u128 * 1_000_000_000 / elapsed as u128) as u64;
        *prev = Sample {
            rate: Some(rate),
            ..fresh
        };
        Some(rate)
    }

    /// Drops the cgroups not read for [`SAMPLE_EXPIRY_NS`] before `now`.
    pub fn expire(&self, now: u64) {
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.retain(|_, s| now.saturating_sub(s.seen) < SAMPLE_EXPIRY_NS);
    }

    /// How many cgroups are remembered.
    pub fn len(&self) -> usize {
        self.samples.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Monotonic nanoseconds since the first call (for [`CpuSampler`]).
fn monotonic_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Whether the host's cgroup root is a unified (v2) hierarchy, probed once.
fn host_v2() -> bool {
    static V2: OnceLock<bool> = OnceLock::new();
    *V2.get_or_init(|| Path::new(CGROUP_ROOT).join("cgroup.controllers").exists())
}

/// Runs `f` over `items` on a few scoped threads (the stats of a node read
/// hundreds of cgroup files, which cost kernel time each), in order.
/// Called on the blocking pool.
fn par_map<T: Sync, U: Send>(items: &[T], f: impl Fn(&T) -> U + Sync) -> Vec<U> {
    const PER_THREAD: usize = 16;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4)
        .min(items.len().div_ceil(PER_THREAD));
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|c| s.spawn(move || c.iter().map(f).collect::<Vec<U>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    })
}

// ---------------------------------------------------------------- views

/// The `linux.cgroup_parent` of a stored pod config, read in place (the
/// config is not deserialised).
fn config_cgroup_parent(config: &serde_json::Value) -> &str {
    config
        .get("linux")
        .and_then(|l| l.get("cgroup_parent"))
        .and_then(serde_json::Value::as_str)
        .unwrap_or("")
}

/// What the stats need of a container, copied out of the store.
struct CtrView {
    id: String,
    sandbox_id: String,
    name: String,
    attempt: u32,
    labels: HashMap<String, String>,
    annotations: HashMap<String, String>,
    running: bool,
    pid: Option<u32>,
}

impl CtrView {
    fn of(c: &ContainerRecord) -> CtrView {
        CtrView {
            id: c.metadata.id.clone(),
            sandbox_id: c.metadata.sandbox_id.clone(),
            name: c.metadata.container_name.clone(),
            attempt: c.metadata.attempt,
            labels: to_hash_map(&c.metadata.labels),
            annotations: to_hash_map(&c.metadata.annotations),
            running: c.status.state == ContainerState::Running,
            pid: c.status.pid,
        }
    }
}

/// What the stats need of a pod, copied out of the store.
struct PodView {
    id: String,
    meta: k8s_cri::v1::PodSandboxMetadata,
    labels: HashMap<String, String>,
    annotations: HashMap<String, String>,
    ready: bool,
    pid: Option<u32>,
    netns_path: Option<String>,
    /// `linux.cgroup_parent` as kubelet sent it (may be empty).
    cgroup_parent: String,
}

impl PodView {
    fn of(s: &SandboxRecord) -> PodView {
        PodView {
            id: s.metadata.id.clone(),
            meta: k8s_cri::v1::PodSandboxMetadata {
                name: s.metadata.pod_name.clone(),
                uid: s.metadata.uid.clone(),
                namespace: s.metadata.namespace.clone(),
                attempt: s.metadata.attempt,
            },
            labels: to_hash_map(&s.metadata.labels),
            annotations: to_hash_map(&s.metadata.annotations),
            ready: s.status.state == SandboxState::Ready,
            pid: s.status.pid,
            netns_path: s.status.netns_path.clone(),
            cgroup_parent: config_cgroup_parent(&s.metadata.config).to_string(),
        }
    }
}

/// What is the same for every entry of one stats call.
struct Ctx<'a> {
    daemon: &'a Daemon,
    ts: i64,
    layer_mountpoint: String,
    v2: bool,
}

impl<'a> Ctx<'a> {
    fn new(daemon: &'a Daemon) -> Ctx<'a> {
        daemon.stats_sampler.expire(monotonic_ns());
        Ctx {
            daemon,
            ts: now_nanos(),
            layer_mountpoint: daemon.images.image_dir().display().to_string(),
            v2: host_v2(),
        }
    }

    /// Reads a cgroup and its CPU rate.
    fn usage(&self, path: &str, processes: bool) -> (CgroupUsage, Option<u64>) {
        let u = read_cgroup(Path::new(CGROUP_ROOT), self.v2, path, processes);
        let rate = u
            .cpu_ns
            .and_then(|ns| self.daemon.stats_sampler.observe(path, monotonic_ns(), ns));
        (u, rate)
    }

    fn container(&self, c: &CtrView, cgroup_parent: &str) -> ContainerStats {
        let (usage, rate) = if c.running {
            let path = container_cgroups_path(self.daemon, cgroup_parent, &c.id);
            self.usage(&path, false)
        } else {
            (CgroupUsage::default(), None)
        };
        // Measured in the background by the image manager's refresher (a
        // writable layer can hold millions of files); a new one shows zero
        // until its first measurement.
        let layer = self.daemon.images.writable_usage(&c.id).unwrap_or_default();
        ContainerStats {
            attributes: Some(ContainerAttributes {
                id: c.id.clone(),
                metadata: Some(k8s_cri::v1::ContainerMetadata {
                    name: c.name.clone(),
                    attempt: c.attempt,
                }),
                labels: c.labels.clone(),
                annotations: c.annotations.clone(),
            }),
            cpu: cpu(&usage, self.ts, rate),
            memory: memory(&usage, self.ts),
            writable_layer: Some(FilesystemUsage {
                timestamp: self.ts,
                fs_id: Some(FilesystemIdentifier {
                    mountpoint: self.layer_mountpoint.clone(),
                }),
                used_bytes: v(layer.bytes),
                inodes_used: v(layer.inodes),
            }),
            swap: None,
        }
    }

    fn pod(&self, s: &PodView, containers: &[CtrView]) -> PodSandboxStats {
        let (usage, rate) = if s.ready {
            let path = if s.cgroup_parent.is_empty() {
                crius_spec::cgroups::cgroups_path("", &s.id, self.daemon.host.cgroup_driver)
            } else {
                s.cgroup_parent.clone()
            };
            self.usage(&path, true)
        } else {
            (CgroupUsage::default(), None)
        };
        let network = s
            .ready
            .then(|| pod_net_dev(s, containers))
            .flatten()
            .map(|text| network(&text, self.ts));
        PodSandboxStats {
            attributes: Some(PodSandboxAttributes {
                id: s.id.clone(),
                metadata: Some(s.meta.clone()),
                labels: s.labels.clone(),
                annotations: s.annotations.clone(),
            }),
            linux: Some(LinuxPodSandboxStats {
                cpu: cpu(&usage, self.ts, rate),
                memory: memory(&usage, self.ts),
                network,
                process: usage.processes.map(|n| ProcessUsage {
                    timestamp: self.ts,
                    process_count: v(n),
                }),
                containers: containers
                    .iter()
                    .map(|c| self.container(c, &s.cgroup_parent))
                    .collect(),
            }),
            windows: None,
        }
    }
}

fn network(text: &str, ts: i64) -> NetworkUsage {
    let iface = |d: &(String, u64, u64, u64, u64)| NetworkInterfaceUsage {
        name: d.0.clone(),
        rx_bytes: v(d.1),
        rx_errors: v(d.2),
        tx_bytes: v(d.3),
        tx_errors: v(d.4),
    };
    let interfaces: Vec<NetworkInterfaceUsage> = parse_net_dev(text)
        .iter()
        .filter(|d| d.0 != "lo")
        .map(iface)
        .collect();
    NetworkUsage {
        timestamp: ts,
        default_interface: interfaces.iter().find(|i| i.name == "eth0").cloned(),
        interfaces,
    }
}

/// Device and inode of a namespace file.
fn ns_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// `/proc/net/dev` as seen in the pod's network namespace: through the
/// pause, else through a container process checked to be in the pod's
/// namespace, else (no such process) by entering the namespace on a
/// thread of its own. A pod without a namespace of its own (host network)
/// has none.
fn pod_net_dev(s: &PodView, containers: &[CtrView]) -> Option<String> {
    if let Some(pid) = s.pid {
        return read(PathBuf::from(format!("/proc/{pid}/net/dev")));
    }
    let ns = s.netns_path.as_deref()?;
    let pod_ns = ns_id(Path::new(ns));
    if pod_ns.is_some() {
        for c in containers.iter().filter(|c| c.running) {
            let Some(pid) = c.pid else { continue };
            if ns_id(Path::new(&format!("/proc/{pid}/ns/net"))) == pod_ns {
                if let Some(text) = read(PathBuf::from(format!("/proc/{pid}/net/dev"))) {
                    return Some(text);
                }
            }
        }
    }
    crius_netns::netns::run_in(Path::new(ns), || {
        read(PathBuf::from("/proc/thread-self/net/dev"))
    })
    .ok()
    .flatten()
}
// ---------------------------------------------------------------- calls

/// The cgroup parent of a stored pod (empty when the pod is gone or has
/// none), read in place.
fn pod_cgroup_parent(daemon: &Daemon, sandbox_id: &str) -> String {
    daemon
        .store
        .visit_sandboxes(|s| {
            (s.metadata.id == sandbox_id)
                .then(|| config_cgroup_parent(&s.metadata.config).to_string())
        })
        .pop()
        .unwrap_or_default()
}

/// The cgroup path of a container (its pod's parent, the daemon's driver).
fn container_cgroups_path(daemon: &Daemon, cgroup_parent: &str, id: &str) -> String {
    crius_spec::cgroups::cgroups_path(cgroup_parent, id, daemon.host.cgroup_driver)
}

/// The directory of a container's cgroup below a hierarchy's root (a
/// systemd driver's scope expanded), or None when it has none.
pub fn container_cgroup_dir(daemon: &Daemon, c: &ContainerRecord) -> Option<String> {
    let parent = pod_cgroup_parent(daemon, &c.metadata.sandbox_id);
    crius_spec::cgroups::cgroup_dir(&container_cgroups_path(daemon, &parent, &c.metadata.id))
}

/// The stats of one container.
pub fn container_stats(daemon: &Daemon, c: &ContainerRecord) -> ContainerStats {
    let parent = pod_cgroup_parent(daemon, &c.metadata.sandbox_id);
    Ctx::new(daemon).container(&CtrView::of(c), &parent)
}

/// The stats of one pod: its cgroup, its network namespace and its
/// containers.
pub fn pod_stats(daemon: &Daemon, s: &SandboxRecord) -> PodSandboxStats {
    let containers = daemon
        .store
        .visit_containers(|c| (c.metadata.sandbox_id == s.metadata.id).then(|| CtrView::of(c)));
    Ctx::new(daemon).pod(&PodView::of(s), &containers)
}

/// ListContainerStats: one pass over the store, then the cgroups read on
/// a few threads.
pub fn list_container_stats(
    daemon: &Daemon,
    filter: Option<&k8s_cri::v1::ContainerStatsFilter>,
) -> Vec<ContainerStats> {
    let containers = daemon.store.visit_containers(|c| {
        filter
            .is_none_or(|f| {
                id_matches(&c.metadata.id, &f.id)
                    && id_matches(&c.metadata.sandbox_id, &f.pod_sandbox_id)
                    && labels_match(&c.metadata.labels, &f.label_selector)
            })
            .then(|| CtrView::of(c))
    });
    let wanted: HashSet<&str> = containers.iter().map(|c| c.sandbox_id.as_str()).collect();
    let parents: HashMap<String, String> = daemon
        .store
        .visit_sandboxes(|s| {
            wanted.contains(s.metadata.id.as_str()).then(|| {
                (
                    s.metadata.id.clone(),
                    config_cgroup_parent(&s.metadata.config).to_string(),
                )
            })
        })
        .into_iter()
        .collect();
    let ctx = Ctx::new(daemon);
    par_map(&containers, |c| {
        let parent = parents.get(&c.sandbox_id).map_or("", String::as_str);
        ctx.container(c, parent)
    })
}

/// ListPodSandboxStats: one pass over the store for the pods and one for
/// their containers (grouped by pod), then the cgroups and network
/// counters read on a few threads. Linear in pods and containers.
pub fn list_pod_stats(
    daemon: &Daemon,
    filter: Option<&k8s_cri::v1::PodSandboxStatsFilter>,
) -> Vec<PodSandboxStats> {
    let pods = daemon.store.visit_sandboxes(|s| {
        filter
            .is_none_or(|f| {
                id_matches(&s.metadata.id, &f.id)
                    && labels_match(&s.metadata.labels, &f.label_selector)
            })
            .then(|| PodView::of(s))
    });
    let wanted: HashSet<&str> = pods.iter().map(|p| p.id.as_str()).collect();
    let mut by_pod: HashMap<String, Vec<CtrView>> = HashMap::new();
    for c in daemon.store.visit_containers(|c| {
        wanted
            .contains(c.metadata.sandbox_id.as_str())
            .then(|| CtrView::of(c))
    }) {
        by_pod.entry(c.sandbox_id.clone()).or_default().push(c);
    }
    let ctx = Ctx::new(daemon);
    par_map(&pods, |p| {
        ctx.pod(p, by_pod.get(&p.id).map_or(&[][..], Vec::as_slice))
    })
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
        // The systemd driver's unit path and a pod's slice are read from
        // the directories systemd makes for them.
        let unit = v2.join("kubepods.slice/kubepods-pod1.slice/crius-c1.scope");
        std::fs::create_dir_all(&unit).unwrap();
        std::fs::write(unit.join("memory.current"), "3000\n").unwrap();
        std::fs::write(unit.join("../memory.current"), "4000\n").unwrap();
        for (path, want) in [
            ("kubepods-pod1.slice:crius:c1", Some(3000)),
            ("kubepods-pod1.slice", Some(4000)),
            ("kube--pod1.slice:crius:c1", None),
        ] {
            assert_eq!(cgroup_usage(&v2, path).memory, want, "{path}");
        }
    }

    #[test]
    fn cpu_rates_from_readings() {
        const S: u64 = 1_000_000_000;
        // (now, cumulative cpu, rate answered), one cgroup, in order.
        let table: &[(u64, u64, Option<u64>)] = &[
            // First reading: no rate yet.
            (10 * S, 5 * S, None),
            // Too soon after the base: still none.
            (10 * S + S / 2, 5 * S + S / 4, None),
            // 2 s later, 1 s of CPU: half a core.
            (12 * S, 6 * S, Some(S / 2)),
            // Too soon: the previous rate, the base kept.
            (12 * S + S / 10, 6 * S + S / 10, Some(S / 2)),
            // 1 s after the base, 2 s of CPU: two cores.
            (13 * S, 8 * S, Some(2 * S)),
            // Idle: zero.
            (15 * S, 8 * S, Some(0)),
            // The counter went back (a new cgroup of that name): start over.
            (16 * S, S, None),
            (18 * S, 2 * S, Some(S / 2)),
        ];
        let sampler = CpuSampler::default();
        for (i, &(now, cpu, want)) in table.iter().enumerate() {
            assert_eq!(sampler.observe("/pod/c", now, cpu), want, "reading {i}");
        }
        // Another cgroup is independent.
        assert_eq!(sampler.observe("/pod/d", 18 * S, 7 * S), None);
        assert_eq!(sampler.len(), 2);
    }

    #[test]
    fn cpu_samples_expire_when_not_read() {
        const S: u64 = 1_000_000_000;
        let sampler = CpuSampler::default();
        sampler.observe("old", 0, 1);
        sampler.observe("kept", 0, 1);
        // Reading "kept" again refreshes it, though too soon for a rate.
        sampler.observe("kept", SAMPLE_EXPIRY_NS - S, 2);
        for (now, want) in [
            (SAMPLE_EXPIRY_NS - 1, 2),
            (SAMPLE_EXPIRY_NS, 1),
            (2 * SAMPLE_EXPIRY_NS - S, 0),
        ] {
            sampler.expire(now);
            assert_eq!(sampler.len(), want, "at {now}");
        }
        assert!(sampler.is_empty());
        // A forgotten cgroup starts over.
        assert_eq!(sampler.observe("kept", 3 * SAMPLE_EXPIRY_NS, 5), None);
    }

    #[test]
    fn cgroup_parent_is_read_in_place() {
        for (config, want) in [
            (
                serde_json::json!({"linux": {"cgroup_parent": "/kubepods/pod1"}}),
                "/kubepods/pod1",
            ),
            (serde_json::json!({"linux": {"cgroup_parent": ""}}), ""),
            (serde_json::json!({"linux": null}), ""),
            (serde_json::json!({"hostname": "x"}), ""),
            (serde_json::json!({"linux": {"cgroup_parent": 7}}), ""),
        ] {
            assert_eq!(config_cgroup_parent(&config), want, "{config}");
        }
        // The stored form of a real config agrees with the deserialised one.
        let cfg = k8s_cri::v1::PodSandboxConfig {
            linux: Some(k8s_cri::v1::LinuxPodSandboxConfig {
                cgroup_parent: "kubepods-pod1.slice".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let stored = serde_json::to_value(&cfg).unwrap();
        assert_eq!(config_cgroup_parent(&stored), "kubepods-pod1.slice");
    }

    #[test]
    fn par_map_keeps_order() {
        for n in [0usize, 1, 15, 16, 17, 100, 1000] {
            let items: Vec<usize> = (0..n).collect();
            let out = par_map(&items, |i| i * 2);
            assert_eq!(
                out,
                items.iter().map(|i| i * 2).collect::<Vec<_>>(),
                "n {n}"
            );
        }
    }

    #[test]
    fn processes_counted_only_when_asked() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("pids/pod/c1");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(d.path().join("pids/pod/cgroup.procs"), "1\n").unwrap();
        std::fs::write(dir.join("cgroup.procs"), "2\n3\n").unwrap();
        assert_eq!(
            read_cgroup(d.path(), false, "/pod", true).processes,
            Some(3)
        );
        assert_eq!(read_cgroup(d.path(), false, "/pod", false).processes, None);
    }
}
