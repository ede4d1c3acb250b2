//! A pod's IPC and UTS namespaces without an infra (pause) process.
//!
//! A pod whose containers do not share a PID namespace needs no process to
//! hold its namespaces: like the network namespace, the IPC and UTS ones are
//! created by a short-lived helper thread (`unshare`) and kept alive by a
//! bind mount of the thread's namespace file onto a file of the pod's
//! directory. The same thread sets the pod's hostname and writes the pod's
//! IPC and UTS sysctls inside them; network sysctls are written inside the
//! network namespace by [`write_net_sysctls`]. Containers join the files by
//! path. [`unpin`] removes them.

use crate::netns::{mount_point, run_in, unmount_and_remove, NetnsError};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use std::io;
use std::path::{Path, PathBuf};

/// Which namespace a sysctl belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysctlNs {
    /// `net.*`.
    Net,
    /// `kernel.sem`, `kernel.shm*`, `kernel.msg*`, `fs.mqueue.*`.
    Ipc,
    /// `kernel.hostname`, `kernel.domainname`.
    Uts,
}

/// The namespace of a sysctl (dotted or slashed name); None for one that is
/// not namespaced.
pub fn sysctl_ns(key: &str) -> Option<SysctlNs> {
    let k = key.replace('/', ".");
    if k.starts_with("net.") {
        Some(SysctlNs::Net)
    } else if k == "kernel.sem"
        || k.starts_with("kernel.shm")
        || k.starts_with("kernel.msg")
        || k.starts_with("fs.mqueue.")
    {
        Some(SysctlNs::Ipc)
    } else if k == "kernel.hostname" || k == "kernel.domainname" {
        Some(SysctlNs::Uts)
    } else {
        None
    }
}

/// The file under `/proc/sys` of a sysctl: a name with a `/` is a path
/// already, a dotted one has its dots turned into `/` (as runc does). Empty,
/// `.` and `..` components are refused, so the result stays under
/// `/proc/sys`.
pub fn sysctl_path(key: &str) -> Option<PathBuf> {
    let rel = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    let parts: Vec<&str> = rel.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return None;
    }
    let mut p = PathBuf::from("/proc/sys");
    for part in parts {
        p.push(part);
    }
    Some(p)
}

fn write_sysctl(key: &str, value: &str) -> Result<(), NetnsError> {
    let path = sysctl_path(key).ok_or_else(|| NetnsError::Io {
        op: "resolve sysctl",
        path: PathBuf::from(key),
        source: io::Error::new(io::ErrorKind::InvalidInput, "bad sysctl name"),
    })?;
    std::fs::write(&path, value).map_err(|source| NetnsError::Io {
        op: "write sysctl",
        path,
        source,
    })
}

/// What to create for a pod.
#[derive(Debug, Default)]
pub struct PodNamespaces<'a> {
    /// Pin a new IPC namespace here.
    pub ipc: Option<&'a Path>,
    /// Pin a new UTS namespace here.
    pub uts: Option<&'a Path>,
    /// The hostname inside the UTS namespace (ignored without one).
    pub hostname: &'a str,
    /// IPC and UTS sysctls to write inside the new namespaces.
    pub sysctls: &'a [(String, String)],
}

/// Creates and pins the pod's IPC and/or UTS namespaces, sets the hostname
/// and writes the IPC/UTS sysctls in them. A sysctl of another namespace,
/// or of one not created here, is refused. On failure nothing is left.
pub fn create(req: &PodNamespaces<'_>) -> Result<(), NetnsError> {
    let mut flags = CloneFlags::empty();
    if req.ipc.is_some() {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if req.uts.is_some() {
        flags |= CloneFlags::CLONE_NEWUTS;
    }
    for (k, _) in req.sysctls {
        let ok = match sysctl_ns(k) {
            Some(SysctlNs::Ipc) => req.ipc.is_some(),
            Some(SysctlNs::Uts) => req.uts.is_some(),
            _ => false,
        };
        if !ok {
            return Err(NetnsError::Io {
                op: "set sysctl",
                path: PathBuf::from(k),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the pod has no namespace of its own for this sysctl",
                ),
            });
        }
    }
    if flags.is_empty() {
        return Ok(());
    }
    let targets: Vec<(&Path, &str)> = [(req.ipc, "ipc"), (req.uts, "uts")]
        .into_iter()
        .filter_map(|(p, kind)| p.map(|p| (p, kind)))
        .collect();
    let mut created = Vec::new();
    let mut mounted = Vec::new();
    let result = (|| {
        for (p, _) in &targets {
            if mount_point(p)? {
                created.push(p.to_path_buf());
            }
        }
        std::thread::scope(|s| {
            let handle = std::thread::Builder::new()
                .name("podns-create".into())
                .spawn_scoped(s, || -> Result<Vec<PathBuf>, NetnsError> {
                    let path = targets[0].0.to_path_buf();
                    unshare(flags).map_err(|source| NetnsError::Sys {
                        op: "unshare(CLONE_NEWIPC|CLONE_NEWUTS)",
                        path: path.clone(),
                        source,
                    })?;
                    // This thread now lives in the new namespaces and exits
                    // right after the mounts.
                    if req.uts.is_some() && !req.hostname.is_empty() {
                        nix::unistd::sethostname(req.hostname).map_err(|source| {
                            NetnsError::Sys {
                                op: "sethostname",
                                path: path.clone(),
                                source,
                            }
                        })?;
                    }
                    for (k, v) in req.sysctls {
                        write_sysctl(k, v)?;
                    }
                    let mut done = Vec::new();
                    for (p, kind) in &targets {
                        let src = format!("/proc/thread-self/ns/{kind}");
                        let r = mount(
                            Some(src.as_str()),
                            *p,
                            None::<&str>,
                            MsFlags::MS_BIND,
                            None::<&str>,
                        );
                        if let Err(source) = r {
                            for d in &done {
                                let _ = umount2(d, MntFlags::MNT_DETACH);
                            }
                            return Err(NetnsError::Sys {
                                op: "bind mount of the namespace",
                                path: p.to_path_buf(),
                                source,
                            });
                        }
                        done.push(p.to_path_buf());
                    }
                    Ok(done)
                })
                .map_err(NetnsError::Thread)?;
            handle.join().unwrap_or_else(|_| {
                Err(NetnsError::Thread(io::Error::other(
                    "namespace thread panicked",
                )))
            })
        })
        .map(|done| mounted = done)
    })();
    if result.is_err() {
        for p in &mounted {
            let _ = umount2(p, MntFlags::MNT_DETACH);
        }
        for p in &created {
            let _ = std::fs::remove_file(p);
        }
    } else {
        tracing::debug!(ipc = ?req.ipc, uts = ?req.uts, "created pod namespaces");
    }
    result
}

/// Writes network sysctls inside the network namespace at `netns`.
pub fn write_net_sysctls(netns: &Path, sysctls: &[(String, String)]) -> Result<(), NetnsError> {
    if sysctls.is_empty() {
        return Ok(());
    }
    for (k, _) in sysctls {
        if sysctl_ns(k) != Some(SysctlNs::Net) {
            return Err(NetnsError::Io {
                op: "set sysctl",
                path: PathBuf::from(k),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a network sysctl"),
            });
        }
    }
    run_in(netns, || {
        sysctls.iter().try_for_each(|(k, v)| write_sysctl(k, v))
    })?
}

/// Whether `path` is a mounted namespace file (of any kind).
fn is_nsfs(path: &Path) -> bool {
    matches!(nix::sys::statfs::statfs(path),
        Ok(st) if st.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
}

/// Unmounts (lazily) and deletes a pinned namespace file. Succeeds when the
/// path is gone or not mounted.
pub fn unpin(path: &Path) -> Result<(), NetnsError> {
    unmount_and_remove(path, is_nsfs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_table() {
        let cases: &[(&str, Option<SysctlNs>, Option<&str>)] = &[
            (
                "net.ipv4.ip_forward",
                Some(SysctlNs::Net),
                Some("/proc/sys/net/ipv4/ip_forward"),
            ),
            (
                "net/ipv4/conf/eth0.100/forwarding",
                Some(SysctlNs::Net),
                Some("/proc/sys/net/ipv4/conf/eth0.100/forwarding"),
            ),
            (
                "kernel.shmmax",
                Some(SysctlNs::Ipc),
                Some("/proc/sys/kernel/shmmax"),
            ),
            (
                "kernel.msgmnb",
                Some(SysctlNs::Ipc),
                Some("/proc/sys/kernel/msgmnb"),
            ),
            (
                "kernel.sem",
                Some(SysctlNs::Ipc),
                Some("/proc/sys/kernel/sem"),
            ),
            (
                "fs.mqueue.msg_max",
                Some(SysctlNs::Ipc),
                Some("/proc/sys/fs/mqueue/msg_max"),
            ),
            (
                "kernel.domainname",
                Some(SysctlNs::Uts),
                Some("/proc/sys/kernel/domainname"),
            ),
            ("kernel.pid_max", None, Some("/proc/sys/kernel/pid_max")),
            ("vm.swappiness", None, Some("/proc/sys/vm/swappiness")),
            ("net..x", Some(SysctlNs::Net), None),
            ("net/../../etc", Some(SysctlNs::Net), None),
            ("net/./x", Some(SysctlNs::Net), None),
            ("", None, None),
            ("net.", Some(SysctlNs::Net), None),
        ];
        for (key, ns, path) in cases {
            assert_eq!(sysctl_ns(key), *ns, "{key}");
            assert_eq!(sysctl_path(key), path.map(PathBuf::from), "{key}");
        }
    }

    #[test]
    fn sysctls_of_missing_namespaces_are_refused_before_anything_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let ipc = dir.path().join("ipc");
        let sysctls = vec![("kernel.domainname".to_string(), "x".to_string())];
        let req = PodNamespaces {
            ipc: Some(&ipc),
            uts: None,
            hostname: "",
            sysctls: &sysctls,
        };
        assert!(create(&req).is_err());
        assert!(!ipc.exists());
        let net = vec![("net.ipv4.ip_forward".to_string(), "1".to_string())];
        let req = PodNamespaces {
            ipc: Some(&ipc),
            sysctls: &net,
            ..Default::default()
        };
        assert!(create(&req).is_err());
        assert!(write_net_sysctls(dir.path(), &sysctls).is_err());
        assert!(create(&PodNamespaces::default()).is_ok());
    }

    #[test]
    fn unpin_is_idempotent_on_plain_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("uts");
        std::fs::write(&f, b"").unwrap();
        unpin(&f).unwrap();
        assert!(!f.exists());
        unpin(&f).unwrap();
    }
}
