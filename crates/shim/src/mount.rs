//! Mounting a task's rootfs from the mounts in CreateTaskRequest.

use std::io;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};

/// Errors of rootfs mounting.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// A mount syscall failed.
    #[error("mount {kind} {source_path} on {target}: {err}")]
    Mount {
        /// Mount type.
        kind: String,
        /// Mount source.
        source_path: String,
        /// Target.
        target: String,
        /// The cause.
        err: nix::Error,
    },
    /// Unmounting failed.
    #[error("unmount {target}: {err}")]
    Unmount {
        /// Target.
        target: String,
        /// The cause.
        err: nix::Error,
    },
    /// Preparing the target failed.
    #[error("prepare {target}: {err}")]
    Io {
        /// Target.
        target: String,
        /// The cause.
        err: io::Error,
    },
    /// The request is not acceptable.
    #[error("invalid mount: {0}")]
    Invalid(String),
}

/// Splits mount options into flags and the data string for mount(2).
pub fn parse_options(opts: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data: Vec<&str> = Vec::new();
    for o in opts {
        let (set, f) = match o.as_str() {
            "ro" => (true, MsFlags::MS_RDONLY),
            "rw" => (false, MsFlags::MS_RDONLY),
            "bind" => (true, MsFlags::MS_BIND),
            "rbind" => (true, MsFlags::MS_BIND | MsFlags::MS_REC),
            "nosuid" => (true, MsFlags::MS_NOSUID),
            "suid" => (false, MsFlags::MS_NOSUID),
            "nodev" => (true, MsFlags::MS_NODEV),
            "dev" => (false, MsFlags::MS_NODEV),
            "noexec" => (true, MsFlags::MS_NOEXEC),
            "exec" => (false, MsFlags::MS_NOEXEC),
            "sync" => (true, MsFlags::MS_SYNCHRONOUS),
            "async" => (false, MsFlags::MS_SYNCHRONOUS),
            "noatime" => (true, MsFlags::MS_NOATIME),
            "atime" => (false, MsFlags::MS_NOATIME),
            "relatime" => (true, MsFlags::MS_RELATIME),
            "nodiratime" => (true, MsFlags::MS_NODIRATIME),
            "remount" => (true, MsFlags::MS_REMOUNT),
            "defaults" => (true, MsFlags::empty()),
            _ => {
                data.push(o);
                continue;
            }
        };
        if set {
            flags |= f;
        } else {
            flags &= !f;
        }
    }
    (flags, data.join(","))
}

/// One mount of the request.
#[derive(Debug, Clone)]
pub struct MountSpec {
    /// Type (`overlay`, `bind`, ...).
    pub kind: String,
    /// Source.
    pub source: String,
    /// Options.
    pub options: Vec<String>,
}

/// Mounts `mounts` in order on `target` (a directory). Only one mount of a
/// rootfs is usual (overlay or bind); several are stacked. On failure the
/// mounts already made are undone.
pub fn mount_rootfs(mounts: &[MountSpec], target: &Path) -> Result<(), MountError> {
    if mounts.is_empty() {
        return Ok(());
    }
    // A private mount point (the mount covers its mode).
    crius_store::private::dir(target).map_err(|err| MountError::Io {
        target: target.display().to_string(),
        err,
    })?;
    for (done, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, target) {
            for _ in 0..done {
                let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
            }
            return Err(e);
        }
    }
    Ok(())
}

fn mount_one(m: &MountSpec, target: &Path) -> Result<(), MountError> {
    let (mut flags, data) = parse_options(&m.options);
    let kind = if m.kind == "bind" || m.kind.is_empty() {
        flags |= MsFlags::MS_BIND;
        None
    } else {
        Some(m.kind.as_str())
    };
    let err = |err| MountError::Mount {
        kind: m.kind.clone(),
        source_path: m.source.clone(),
        target: target.display().to_string(),
        err,
    };
    if kind == Some("overlay") {
        // Many layers: lower dirs relative to their common parent when the
        // options do not fit in a page (see crius_store::overlay).
        return crius_store::overlay::mount_overlay(&m.source, target, flags.bits(), &data)
            .map_err(|e| match e.raw_os_error() {
                Some(errno) => err(nix::Error::from_raw(errno)),
                None => MountError::Invalid(e.to_string()),
            });
    }
    if data.len() > crius_store::overlay::max_options_len() {
        return Err(MountError::Invalid("mount options too long".into()));
    }
    let data_opt = if data.is_empty() {
        None
    } else {
        Some(data.as_str())
    };
    let ro_bind = flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY);
    nix::mount::mount(Some(m.source.as_str()), target, kind, flags, data_opt).map_err(err)?;
    if ro_bind {
        // A bind mount ignores MS_RDONLY until it is remounted.
        nix::mount::mount(
            None::<&str>,
            target,
            None::<&str>,
            flags | MsFlags::MS_REMOUNT,
            None::<&str>,
        )
        .map_err(err)?;
    }
    Ok(())
}

/// Unmounts everything mounted on `target` (idempotent).
pub fn unmount_all(target: &Path) -> Result<(), MountError> {
    for _ in 0..16 {
        match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => return Ok(()),
            Err(err) => {
                return Err(MountError::Unmount {
                    target: target.display().to_string(),
                    err,
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_table() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let cases: Vec<(Vec<String>, MsFlags, &str)> = vec![
            (s(&[]), MsFlags::empty(), ""),
            (
                s(&["ro", "rbind"]),
                MsFlags::MS_RDONLY | MsFlags::MS_BIND | MsFlags::MS_REC,
                "",
            ),
            (
                s(&["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l"]),
                MsFlags::empty(),
                "index=off,workdir=/w,upperdir=/u,lowerdir=/l",
            ),
            (s(&["ro", "rw", "nosuid"]), MsFlags::MS_NOSUID, ""),
            (
                s(&["nodev", "mode=1777", "size=65536k"]),
                MsFlags::MS_NODEV,
                "mode=1777,size=65536k",
            ),
        ];
        for (opts, flags, data) in cases {
            assert_eq!(parse_options(&opts), (flags, data.to_string()), "{opts:?}");
        }
    }
}
