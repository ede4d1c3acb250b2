//! Facts about the host that shape container specs, read once at start-up.

use crate::config::{CgroupDriver, Config};
use crius_spec::mounts::HostPropagation;
use crius_spec::{caps, CgroupFeatures, HostFacts};
use std::path::Path;

/// Bit of CAP_SYS_RESOURCE in the capability masks.
const CAP_SYS_RESOURCE_BIT: u32 = 24;

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The `CapEff` mask of /proc/self/status.
pub fn cap_eff(status: &str) -> Option<&str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim)
}

/// Gathers the host facts for the configured cgroup driver.
pub fn gather(config: &Config) -> HostFacts {
    let status = read("/proc/self/status").unwrap_or_default();
    let mask = cap_eff(&status).unwrap_or("0").to_string();
    let capabilities = caps::from_cap_eff(&mask);
    let can_lower = u64::from_str_radix(&mask, 16)
        .map(|m| m & (1 << CAP_SYS_RESOURCE_BIT) != 0)
        .unwrap_or(false);
    let oom_score_adj = read("/proc/self/oom_score_adj")
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let unified_only = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let cgroup_features = if unified_only {
        CgroupFeatures {
            swap: Path::new("/sys/fs/cgroup/memory.swap.max").exists()
                || read("/sys/fs/cgroup/cgroup.subtree_control")
                    .is_some_and(|s| s.contains("memory")),
            hugetlb: read("/sys/fs/cgroup/cgroup.controllers")
                .is_some_and(|s| s.contains("hugetlb")),
            unified: true,
        }
    } else {
        CgroupFeatures {
            swap: Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists(),
            hugetlb: Path::new("/sys/fs/cgroup/hugetlb").exists(),
            // A hybrid host's cgroup2 part (/sys/fs/cgroup/unified) is not
            // what runc uses there: it creates v1 cgroups.
            unified: false,
        }
    };
    let apparmor = crate::apparmor::detect(
        Path::new("/sys"),
        &config.state,
        crate::apparmor::find_parser().as_deref(),
    );
    let selinux = read("/sys/fs/selinux/enforce").is_some();
    let nofile_hard = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(_, hard)| hard)
        .unwrap_or(1_048_576);
    HostFacts {
        capabilities,
        oom_score_adj,
        can_lower_oom_score_adj: can_lower,
        cgroup_driver: match config.cgroup_driver {
            CgroupDriver::Cgroupfs => crius_spec::CgroupDriver::Cgroupfs,
            CgroupDriver::Systemd => crius_spec::CgroupDriver::Systemd,
        },
        cgroup_features,
        apparmor,
        selinux,
        rro_mounts: config
            .runtimes
            .get(&config.default_runtime)
            .is_some_and(|h| runtime_features(&h.path).rro),
        nofile_hard,
        pod_annotations: Vec::new(),
        container_annotations: Vec::new(),
        hostname: node_hostname(),
        privileged_without_host_devices: config
            .runtimes
            .get(&config.default_runtime)
            .is_some_and(|h| h.privileged_without_host_devices),
    }
}

/// The node's hostname (empty if it cannot be read: a host-network
/// container then gets an empty `HOSTNAME`, as from an empty pod hostname).
pub fn node_hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Undoes the octal escapes (`\040` for a space...) of /proc/self/mountinfo.
pub(crate) fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How the mount that holds `path` (already free of symlinks) propagates,
/// from the text of /proc/self/mountinfo: the mount with the longest mount
/// point above the path wins (the last one listed when mounts are stacked).
pub fn propagation_of(mountinfo: &str, path: &Path) -> HostPropagation {
    let mut best: Option<(usize, HostPropagation)> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 7 {
            continue;
        }
        let point = unescape_mountinfo(fields[4]);
        if !path.starts_with(&point) {
            continue;
        }
        let optional = fields[6..].iter().take_while(|f| **f != "-");
        let mut kind = HostPropagation::Private;
        for f in optional {
            if f.starts_with("shared:") {
                kind = HostPropagation::Shared;
            } else if f.starts_with("master:") && kind == HostPropagation::Private {
                kind = HostPropagation::Slave;
            }
        }
        let depth = Path::new(&point).components().count();
        if best.is_none_or(|(d, _)| depth >= d) {
            best = Some((depth, kind));
        }
    }
    best.map(|(_, k)| k).unwrap_or_default()
}

/// Whether moving a process into a cgroup waits for an RCU grace period on
/// this host, from the text of /proc/self/mountinfo: cgroup hierarchies are
/// mounted and none carries `favordynmods`. Every `runc create` moves its
/// init into the container's cgroups and pays that wait (7-30 ms on the
/// development VM, the largest single part of `runc create` there); with
/// `favordynmods` on any hierarchy (a mount option, or the kernel's
/// `cgroup_favordynmods=true` boot option) the kernel skips it.
pub fn cgroup_moves_wait_for_rcu(mountinfo: &str) -> bool {
    crate::cgroup_primer::moves_wait_for_rcu(&crate::cgroup_primer::cgroup_mounts(mountinfo))
}

/// Logs, once at start-up, host settings that slow every container start
/// (`cgroups`: the host's cgroup mounts).
pub fn log_start_costs(cgroups: &[crate::cgroup_primer::CgroupMount]) {
    if crate::cgroup_primer::moves_wait_for_rcu(cgroups) {
        tracing::info!(
            "no cgroup hierarchy is mounted with favordynmods: each container start waits for an \
             RCU grace period while the runtime moves it into its cgroups (criusd starts that \
             wait ahead of the runtime, which hides part of it); remounting one hierarchy with \
             `-o remount,favordynmods` (or booting with cgroup_favordynmods=true) removes that \
             wait, at a small cost to fork and exit"
        );
    }
}

/// The device nodes of the host's /dev that a privileged container gets,
/// as runc's and containerd's host-device lists have them: everything
/// below /dev except the pty, shm, mqueue and fd trees and the console.
pub fn host_devices() -> Vec<crius_spec::container::DeviceNode> {
    crate::domain::container::devices::nodes_below(Path::new("/dev"), None, "rwm")
        .unwrap_or_default()
}

/// What a runtime handler's OCI runtime can do, as its `features`
/// subcommand reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RuntimeFeatures {
    /// It knows the `rro` mount option (recursive read-only, which also
    /// needs `mount_setattr(2)`: Linux 5.12).
    pub rro: bool,
    /// It can put containers in user namespaces with idmapped mounts.
    pub idmap: bool,
    /// Whether its `features` document lists the `user` namespace; None
    /// without such a document (runc 1.1 has no `features`).
    pub userns: Option<bool>,
}

/// Whether a kernel release string (`6.18.44-fc`) is at least `major.minor`.
pub fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (ma, mi) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (ma, mi) >= (major, minor)
}

/// Reads the output of `<runtime> features` (the OCI runtime features
/// document); a runtime without the subcommand supports neither.
pub fn parse_runtime_features(json: &str, kernel: &str) -> RuntimeFeatures {
    let Ok(doc) = serde_json::from_str::<serde_json::Value>(json) else {
        return RuntimeFeatures::default();
    };
    let rro = doc["mountOptions"]
        .as_array()
        .is_some_and(|o| o.iter().any(|v| v == "rro"))
        && kernel_at_least(kernel, 5, 12);
    let userns = doc["linux"]["namespaces"]
        .as_array()
        .is_some_and(|n| n.iter().any(|v| v == "user"));
    let idmap = userns
        && doc["linux"]["mountExtensions"]["idmap"]["enabled"] == serde_json::Value::Bool(true);
    RuntimeFeatures {
        rro,
        idmap,
        userns: Some(userns),
    }
}

/// How long a runtime may take to answer `features` or `--version`.
const RUNTIME_QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The stdout (at most 1 MiB) of `<path> <arg>` when it succeeds within
/// a few seconds: a runtime that hangs must not hang start-up or Status.
pub fn run_briefly(path: &str, arg: &str) -> Option<String> {
    let mut child = std::process::Command::new(path)
        .arg(arg)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let mut stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut s = String::new();
        let _ = (&mut stdout).take(1 << 20).read_to_string(&mut s);
        s
    });
    let deadline = std::time::Instant::now() + RUNTIME_QUERY_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let out = reader.join().ok()?;
    status.filter(|s| s.success()).map(|_| out)
}

/// The features of the OCI runtime at `path` (a path or a name in PATH),
/// asked once per path and remembered.
pub fn runtime_features(path: &str) -> RuntimeFeatures {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, RuntimeFeatures>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(f) = cache.lock().ok().and_then(|c| c.get(path).copied()) {
        return f;
    }
    let kernel = read("/proc/sys/kernel/osrelease").unwrap_or_default();
    let features = run_briefly(path, "features")
        .map(|out| parse_runtime_features(&out, &kernel))
        .unwrap_or_default();
    if let Ok(mut c) = cache.lock() {
        c.insert(path.to_string(), features);
    }
    features
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (root without
/// CAP_SYS_RESOURCE cannot go past it): criusd holds a connection per shim,
/// files of concurrent pulls and unpacks, and streaming sessions, and the
/// usual soft limit of 1024 is soon reached on a busy node. Returns the
/// soft limit before and after.
pub fn raise_nofile_limit() -> nix::Result<(u64, u64)> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok((soft, hard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_propagation_from_mountinfo() {
        let info = r"22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
30 22 0:25 / /sys rw shared:7 - sysfs sysfs rw
40 22 0:40 / /mnt/shared rw shared:12 - tmpfs t rw
41 40 0:41 / /mnt/shared/sub rw master:12 - tmpfs t rw
42 22 0:42 / /mnt/with\040space rw shared:3 master:1 - tmpfs t rw
43 40 0:43 / /mnt/shared rw - tmpfs t rw
";
        let cases = [
            ("/etc/passwd", HostPropagation::Private),
            ("/sys/fs", HostPropagation::Shared),
            ("/mnt/shared/sub/x", HostPropagation::Slave),
            ("/mnt/sharedx", HostPropagation::Private),
            ("/mnt/with space/a", HostPropagation::Shared),
        ];
        for (path, want) in cases {
            assert_eq!(propagation_of(info, Path::new(path)), want, "{path}");
        }
        // A mount stacked on the same point hides the one below it.
        let stacked = info.replace(
            "41 40 0:41 / /mnt/shared/sub rw master:12 - tmpfs t rw\n",
            "",
        );
        assert_eq!(
            propagation_of(&stacked, Path::new("/mnt/shared/a")),
            HostPropagation::Private
        );
        assert_eq!(
            propagation_of("", Path::new("/x")),
            HostPropagation::Private
        );
    }

    #[test]
    fn runtime_features_documents() {
        let runc =
            r#"{"mountOptions": ["ro", "rro", "rbind"], "linux": {"namespaces": ["user", "pid"]}}"#;
        let idmap = r#"{"mountOptions": [], "linux": {"namespaces": ["user"], "mountExtensions": {"idmap": {"enabled": true}}}}"#;
        let cases = [
            (
                runc,
                "6.18.44-fc",
                RuntimeFeatures {
                    rro: true,
                    idmap: false,
                    userns: Some(true),
                },
            ),
            (
                runc,
                "5.11.0",
                RuntimeFeatures {
                    rro: false,
                    idmap: false,
                    userns: Some(true),
                },
            ),
            (
                idmap,
                "6.1.0",
                RuntimeFeatures {
                    rro: false,
                    idmap: true,
                    userns: Some(true),
                },
            ),
            (
                "unknown command features",
                "6.1.0",
                RuntimeFeatures::default(),
            ),
            (
                r#"{"linux": {"namespaces": ["pid", "network"]}}"#,
                "6.1.0",
                RuntimeFeatures {
                    userns: Some(false),
                    ..Default::default()
                },
            ),
        ];
        for (doc, kernel, want) in cases {
            assert_eq!(parse_runtime_features(doc, kernel), want, "{doc} {kernel}");
        }
        assert!(kernel_at_least("5.12.0", 5, 12));
        assert!(kernel_at_least("10.0", 5, 12));
        assert!(!kernel_at_least("4.19.2", 5, 12));
        assert!(!kernel_at_least("", 5, 12));
        // A runtime that is not there has no features.
        assert_eq!(
            runtime_features("/nonexistent/crius-test-runtime"),
            RuntimeFeatures::default()
        );
    }

    #[test]
    fn host_devices_are_device_nodes() {
        let devs = host_devices();
        if let Some(null) = devs.iter().find(|d| d.path == "/dev/null") {
            assert_eq!((null.kind, null.major, null.minor), ('c', 1, 3));
        }
        assert!(devs.iter().all(|d| !d.path.starts_with("/dev/pts/")
            && d.path != "/dev/console"
            && (d.kind == 'c' || d.kind == 'b')));
    }

    #[test]
    fn cgroup_moves_and_favordynmods() {
        let v1 = "35 26 0:30 / /sys/fs/cgroup/cpu rw,relatime shared:10 - cgroup cgroup rw,cpu";
        let v1_fav =
            "35 26 0:30 / /sys/fs/cgroup/cpu rw,relatime shared:10 - cgroup cgroup rw,cpu,favordynmods";
        let v2 = "44 26 0:39 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";
        let v2_fav = "44 26 0:39 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate,favordynmods";
        let other = "22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw,favordynmods";
        let table: [(&[&str], bool); 7] = [
            (&[], false),
            (&[other], false),
            (&[v1], true),
            (&[v2], true),
            (&[v1, v2, other], true),
            (&[v1, v2_fav], false),
            (&[v1_fav, v2], false),
        ];
        for (lines, waits) in table {
            assert_eq!(
                cgroup_moves_wait_for_rcu(&lines.join("\n")),
                waits,
                "{lines:?}"
            );
        }
    }

    #[test]
    fn cap_eff_line() {
        let status = "Name:\tcriusd\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\nCapBnd:\t000001ffffffffff\n";
        assert_eq!(cap_eff(status), Some("000001fffeffffff"));
        assert_eq!(cap_eff("Name: x\n"), None);
    }

    #[test]
    fn gathered_facts_match_this_process() {
        let facts = gather(&Config::default());
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let mask = u64::from_str_radix(cap_eff(&status).unwrap(), 16).unwrap();
        assert_eq!(facts.capabilities.len() as u32, mask.count_ones().min(41));
        assert_eq!(facts.can_lower_oom_score_adj, mask & (1 << 24) != 0);
        let own: i32 = std::fs::read_to_string("/proc/self/oom_score_adj")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(facts.oom_score_adj, own);
        assert!(facts.nofile_hard > 0);
        assert_eq!(facts.cgroup_driver, crius_spec::CgroupDriver::Cgroupfs);
    }

    #[test]
    fn nofile_soft_limit_raised_to_hard() {
        let (_, hard) = raise_nofile_limit().unwrap();
        let (soft, now_hard) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!((soft, now_hard), (hard, hard));
    }
}
