//! Mounting a task's rootfs and its other mounts from the mounts in
//! CreateTaskRequest: an empty `target` is the bundle's `rootfs`, any other
//! one a path below the bundle (`crius_shim_api::idmap::check_target`);
//! `uidmap=`/`gidmap=` options make a mount idmapped (see
//! [`crate::idmap`]). Everything is made in order, undone in reverse on a
//! failure, and unmounted on task delete ([`unmount_task`]).

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crius_shim_api::idmap::{check_target, staged_layer, IdMaps, MOUNT_DIRS};

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    /// Type (`overlay`, `bind`, ...).
    pub kind: String,
    /// Source.
    pub source: String,
    /// Options.
    pub options: Vec<String>,
    /// Where, relative to the bundle (empty: the bundle's `rootfs`).
    pub target: String,
}

/// One of a task's mounts, checked: where it goes and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// The mount as asked for, without the id mapping options.
    pub mount: MountSpec,
    /// Its mappings, for an idmapped mount.
    pub maps: Option<IdMaps>,
    /// Where, relative to the bundle; `None` for the rootfs.
    pub target: Option<PathBuf>,
}

/// Checks a task's mounts before any is made: targets
/// ([`check_target`]), id mapping options (both or neither, well
/// formed), idmapped mounts only of kind `bind` or `overlay`, no target
/// twice.
pub fn plan(mounts: &[MountSpec]) -> Result<Vec<Planned>, MountError> {
    let invalid = |e: crius_shim_api::idmap::IdmapError| MountError::Invalid(e.to_string());
    let mut out: Vec<Planned> = Vec::with_capacity(mounts.len());
    for m in mounts {
        let (maps, options) = IdMaps::from_options(&m.options).map_err(invalid)?;
        let target = if m.target.is_empty() {
            None
        } else {
            Some(check_target(&m.target).map_err(invalid)?)
        };
        if maps.is_some() && !matches!(m.kind.as_str(), "bind" | "rbind" | "overlay") {
            return Err(MountError::Invalid(format!(
                "an idmapped {:?} mount (bind or overlay only)",
                m.kind
            )));
        }
        if target.is_some() && out.iter().any(|p| p.target == target) {
            return Err(MountError::Invalid(format!(
                "mount target {:?} given twice",
                m.target
            )));
        }
        out.push(Planned {
            mount: MountSpec {
                options,
                ..m.clone()
            },
            maps,
            target,
        });
    }
    Ok(out)
}

/// Mounts a task's `mounts` in order below `bundle` (see the module
/// documentation), after checking them all ([`plan`]). Plain rootfs
/// mounts are stacked on `rootfs` last. Returns whether anything was
/// mounted. On failure what was made is undone, in reverse.
pub fn mount_task(mounts: &[MountSpec], bundle: &Path) -> Result<bool, MountError> {
    let planned = plan(mounts)?;
    let mut made: Vec<PathBuf> = Vec::new();
    let mut traverse: Vec<PathBuf> = Vec::new();
    let r = (|| {
        let mut rootfs = Vec::new();
        for (k, p) in planned.iter().enumerate() {
            let at = match &p.target {
                Some(t) => bundle.join(t),
                None => bundle.join("rootfs"),
            };
            match (&p.maps, &p.target) {
                (Some(maps), _) => {
                    idmapped(k, &p.mount, maps, bundle, &at, &mut made)?;
                    if let Some(parent) = at.parent().filter(|d| *d != bundle) {
                        traverse.push(parent.to_path_buf());
                    }
                }
                // Plain rootfs mounts, stacked in one go below.
                (None, None) => rootfs.push(p.mount.clone()),
                (None, Some(_)) => {
                    let dir = p.mount.kind != "bind" || Path::new(&p.mount.source).is_dir();
                    crate::idmap::make_mount_point(&at, dir).map_err(|err| MountError::Io {
                        target: at.display().to_string(),
                        err,
                    })?;
                    mount_one(&p.mount, &at)?;
                    made.push(at);
                }
            }
        }
        if !rootfs.is_empty() {
            mount_rootfs(&rootfs, &bundle.join("rootfs"))?;
            made.push(bundle.join("rootfs"));
        }
        // runc, as the pod's root, reaches the idmapped mounts by path:
        // their parents below the bundle become 0711 (not listable), last,
        // since making the mount points narrowed them to 0700.
        for d in &traverse {
            crius_store::private::dir_with_mode(d, 0o711).map_err(|err| MountError::Io {
                target: d.display().to_string(),
                err,
            })?;
        }
        Ok(())
    })();
    if let Err(e) = r {
        for p in made.iter().rev() {
            let _ = unmount_all(p);
        }
        remove_mount_dirs(bundle);
        return Err(e);
    }
    Ok(!made.is_empty())
}

/// An idmapped mount (mount number `k` of the task): a `bind` bound
/// idmapped, or an `overlay` stacked on idmapped binds of its lower
/// directories (staged below the bundle), `nosuid,nodev`, its upper
/// directory's root given to the namespace's root. The mount points made
/// go to `made`.
fn idmapped(
    k: usize,
    m: &MountSpec,
    maps: &IdMaps,
    bundle: &Path,
    target: &Path,
    made: &mut Vec<PathBuf>,
) -> Result<(), MountError> {
    let io = |t: &Path| {
        let t = t.display().to_string();
        move |err| MountError::Io { target: t, err }
    };
    let userns = crate::idmap::userns_for(maps).map_err(io(target))?;
    match m.kind.as_str() {
        "bind" | "rbind" => {
            crate::idmap::idmapped_bind(Path::new(&m.source), target, userns.as_fd())
                .map_err(io(target))?;
            made.push(target.to_path_buf());
            Ok(())
        }
        "overlay" => {
            let mut data = Vec::with_capacity(m.options.len());
            let mut upper = None;
            // Reachable by host users (its directories are 0711): never
            // setuid files or device nodes on the host.
            let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
            let (f, rest) = parse_options(&m.options);
            flags |= f & MsFlags::MS_RDONLY;
            for o in rest.split(',').filter(|o| !o.is_empty()) {
                if let Some(lower) = o.strip_prefix("lowerdir=") {
                    let mut staged = Vec::new();
                    for (i, dir) in lower.split(':').enumerate() {
                        let at = staged_layer(bundle, k, i);
                        crate::idmap::idmapped_bind(Path::new(dir), &at, userns.as_fd())
                            .map_err(io(&at))?;
                        made.push(at.clone());
                        staged.push(at.display().to_string());
                    }
                    data.push(format!("lowerdir={}", staged.join(":")));
                } else {
                    if let Some(u) = o.strip_prefix("upperdir=") {
                        upper = Some(PathBuf::from(u));
                    }
                    data.push(o.to_string());
                }
            }
            if let Some(u) = &upper {
                let (uid, gid) = maps.root().ok_or_else(|| {
                    MountError::Invalid("the user namespace's root is not mapped".into())
                })?;
                std::os::unix::fs::chown(u, Some(uid), Some(gid)).map_err(io(u))?;
            }
            crate::idmap::make_mount_point(target, true).map_err(io(target))?;
            // The staged layers share their parent: many layers mount with
            // relative lower dirs (see crius_store::overlay).
            crius_store::overlay::mount_overlay("overlay", target, flags.bits(), &data.join(","))
                .map_err(io(target))?;
            made.push(target.to_path_buf());
            Ok(())
        }
        other => Err(MountError::Invalid(format!(
            "an idmapped {other:?} mount (bind or overlay only)"
        ))),
    }
}

/// Whether idmapped overlay mounts work here: an overlay of one idmapped
/// layer is made in the scratch directory `dir` (removed before and after)
/// and a file of the host's root in it must show as the mapped root's.
pub fn probe_idmap(dir: &Path) -> Result<(), MountError> {
    const BASE: u32 = 3_000_000_000;
    let clean = || {
        let _ = unmount_task(dir);
        let _ = std::fs::remove_dir_all(dir);
    };
    clean();
    let io = |err| MountError::Io {
        target: dir.display().to_string(),
        err,
    };
    let r = (|| {
        for d in ["lower", "upper", "work", "rootfs"] {
            crius_store::private::dir(&dir.join(d)).map_err(io)?;
        }
        std::fs::write(dir.join("lower/file"), b"").map_err(io)?;
        let range = crius_shim_api::idmap::IdRange {
            container: 0,
            host: BASE,
            size: 65536,
        };
        let maps = IdMaps {
            uids: vec![range],
            gids: vec![range],
        };
        let mut options = vec![
            format!("lowerdir={}", dir.join("lower").display()),
            format!("upperdir={}", dir.join("upper").display()),
            format!("workdir={}", dir.join("work").display()),
        ];
        options.extend(maps.options());
        let overlay = MountSpec {
            kind: "overlay".into(),
            source: "overlay".into(),
            options,
            target: String::new(),
        };
        mount_task(&[overlay], dir)?;
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(dir.join("rootfs/file"))
            .map_err(io)?
            .uid();
        if owner != BASE {
            return Err(MountError::Invalid(format!(
                "a file of an idmapped layer shows as owned by {owner}, not by the mapped root"
            )));
        }
        Ok(())
    })();
    clean();
    r
}

/// Unmounts what a task's mounts made below `bundle`: everything on its
/// `rootfs` and below its [`MOUNT_DIRS`] (deepest first; nothing else, so
/// a wrong bundle can never reach the host's other mounts), and removes
/// those directories once nothing is mounted there any more.
pub fn unmount_task(bundle: &Path) -> Result<(), MountError> {
    unmount_all(&bundle.join("rootfs"))?;
    for d in MOUNT_DIRS {
        let dir = bundle.join(d);
        if !crate::idmap::unmount_below(&dir) {
            return Err(MountError::Invalid(format!(
                "mounts left below {}",
                dir.display()
            )));
        }
    }
    remove_mount_dirs(bundle);
    Ok(())
}

/// Removes the directories of mount points below `bundle`
/// ([`MOUNT_DIRS`]) in which nothing is mounted any more (never reaching
/// into a mounted source).
fn remove_mount_dirs(bundle: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    for d in MOUNT_DIRS {
        if !crate::idmap::mount_points_below(&info, &bundle.join(d)).is_empty() {
            continue;
        }
        match std::fs::remove_dir_all(bundle.join(d)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(dir = %bundle.join(d).display(), error = %e, "cannot remove"),
        }
    }
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
    fn plan_table() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let m = |kind: &str, options: Vec<String>, target: &str| MountSpec {
            kind: kind.into(),
            source: "/src".into(),
            options,
            target: target.into(),
        };
        let mapped = |o: &[&str]| {
            let mut v = s(o);
            v.extend(s(&["uidmap=0:100000:65536", "gidmap=0:100000:65536"]));
            v
        };
        // (mounts, Ok(targets, idmapped)) or Err(part of the message)
        type Want = Result<Vec<(Option<&'static str>, bool)>, &'static str>;
        let cases: Vec<(Vec<MountSpec>, Want)> = vec![
            (vec![], Ok(vec![])),
            (
                vec![
                    m("overlay", s(&["lowerdir=/a"]), ""),
                    m("bind", mapped(&["rbind"]), "idmap/m1"),
                    m("overlay", s(&["ro", "lowerdir=/a:/b"]), "image-mounts/0"),
                ],
                Ok(vec![
                    (None, false),
                    (Some("idmap/m1"), true),
                    (Some("image-mounts/0"), false),
                ]),
            ),
            (
                vec![m("overlay", mapped(&["lowerdir=/a"]), "")],
                Ok(vec![(None, true)]),
            ),
            (vec![m("bind", s(&[]), "../x")], Err("only plain names")),
            (vec![m("bind", s(&[]), "rootfs")], Err("not in one of")),
            (
                vec![m("tmpfs", mapped(&[]), "idmap/t")],
                Err("bind or overlay only"),
            ),
            (
                vec![m("bind", s(&["gidmap=0:1:1"]), "t")],
                Err("go together"),
            ),
            (
                vec![m("bind", s(&[]), "idmap/b"), m("bind", s(&[]), "idmap/b")],
                Err("given twice"),
            ),
        ];
        for (mounts, want) in cases {
            let got = plan(&mounts);
            match (got, want) {
                (Ok(p), Ok(w)) => {
                    let got: Vec<(Option<PathBuf>, bool)> = p
                        .iter()
                        .map(|p| (p.target.clone(), p.maps.is_some()))
                        .collect();
                    let w: Vec<(Option<PathBuf>, bool)> = w
                        .into_iter()
                        .map(|(t, i)| (t.map(PathBuf::from), i))
                        .collect();
                    assert_eq!(got, w, "{mounts:?}");
                    // The mappings never reach mount(2).
                    for p in &p {
                        let idmap =
                            |o: &String| o.starts_with("uidmap=") || o.starts_with("gidmap=");
                        assert!(!p.mount.options.iter().any(idmap), "{mounts:?}");
                    }
                }
                (Err(e), Err(w)) => assert!(e.to_string().contains(w), "{e} vs {w}"),
                (got, want) => panic!("{mounts:?}: got {got:?}, want {want:?}"),
            }
        }
    }

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
