//! User namespaces and idmapped mounts of a pod with a user namespace of
//! its own.
//!
//! The OCI runtime here (runc 1.1) can put a container into a user
//! namespace but cannot make idmapped mounts, so the shim makes them
//! (`open_tree(OPEN_TREE_CLONE)` + `mount_setattr(MOUNT_ATTR_IDMAP)` +
//! `move_mount`) from the `uidmap=`/`gidmap=` options criusd puts on a
//! task's mounts (`crius_shim_api::idmap`). The user namespace whose
//! mappings the mounts take is a throwaway one with the same mappings,
//! made once per shim (a pod has one mapping). The pod's own user
//! namespace, and a network namespace it owns, are made and pinned by
//! [`pin_pod_namespaces`] at CreateSandbox.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use crius_shim_api::idmap::IdMaps;

use crate::reaper::Reaper;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))
}

fn check(r: libc::c_long, what: &str, path: &Path) -> io::Result<libc::c_long> {
    if r < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(
            e.kind(),
            format!("{what} {}: {e}", path.display()),
        ))
    } else {
        Ok(r)
    }
}

/// A detached recursive copy of the mount at `path`.
fn clone_tree(path: &Path) -> io::Result<OwnedFd> {
    let c = cpath(path)?;
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE;
    // SAFETY: open_tree(2) with a valid NUL-terminated path; the result is
    // a new file descriptor that we own.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    let fd = check(fd, "open_tree", path)?;
    // SAFETY: fd is a fresh descriptor returned by the kernel.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Makes the detached mount `tree` idmapped with the mappings of `userns`.
fn set_idmap(tree: BorrowedFd<'_>, userns: BorrowedFd<'_>, what: &Path) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.as_raw_fd() as u64,
    };
    let empty = c"";
    let flags = libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE;
    // SAFETY: mount_setattr(2) on a descriptor we hold, with a properly
    // sized, initialised struct mount_attr.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    check(r, "mount_setattr(MOUNT_ATTR_IDMAP)", what).map(|_| ())
}

/// Attaches the detached mount `tree` on `target`.
fn attach(tree: BorrowedFd<'_>, target: &Path) -> io::Result<()> {
    let c = cpath(target)?;
    let empty = c"";
    // SAFETY: move_mount(2) from a descriptor we hold to a valid path.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    check(r, "move_mount", target).map(|_| ())
}

/// The serving shim's reaper, which reaps every child (`waitpid(-1)`):
/// namespace holders are spawned through it then, so that their exits
/// never reach the task service as unclaimed ones.
static REAPER: OnceLock<Arc<Reaper>> = OnceLock::new();

/// Spawns namespace holders through `reaper` from now on (the serving
/// shim; the `probe-idmap` action has none).
pub fn use_reaper(reaper: Arc<Reaper>) {
    let _ = REAPER.set(reaper);
}

/// A namespace holder: its pid, and how to end it (kill and reap).
struct Holder {
    child: Option<std::process::Child>,
    spawned: Option<crate::reaper::Spawned>,
    pid: u32,
}

impl Holder {
    fn end(self) {
        if let Some(mut c) = self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(mut s) = self.spawned {
            let _ = s.child.kill();
            let _ = s.wait();
        }
    }
}

/// A child in new namespaces (`flags`: CLONE_NEWUSER, maybe more), its
/// uid/gid maps written. The caller ends it once it has what it needs.
fn ns_holder(maps: &IdMaps, flags: libc::c_int) -> io::Result<Holder> {
    let sleep = ["/bin/sleep", "/usr/bin/sleep"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("sleep");
    let mut cmd = std::process::Command::new(sleep);
    cmd.arg("60")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: the closure only calls unshare(2), which is async-signal-safe.
    // With CLONE_NEWUSER the user namespace is made first and owns the
    // other new namespaces.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(flags) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let holder = match REAPER.get() {
        Some(r) => {
            let spawned = r.spawn(&mut cmd).map_err(io::Error::other)?;
            Holder {
                pid: spawned.child.id(),
                child: None,
                spawned: Some(spawned),
            }
        }
        None => {
            let child = cmd.spawn()?;
            Holder {
                pid: child.id(),
                child: Some(child),
                spawned: None,
            }
        }
    };
    let proc = PathBuf::from(format!("/proc/{}", holder.pid));
    let written = std::fs::write(proc.join("uid_map"), IdMaps::map_file(&maps.uids))
        .and_then(|()| std::fs::write(proc.join("gid_map"), IdMaps::map_file(&maps.gids)));
    if let Err(e) = written {
        holder.end();
        return Err(io::Error::new(
            e.kind(),
            format!("writing the id maps: {e}"),
        ));
    }
    Ok(holder)
}

/// A user namespace with `maps`, held by the returned descriptor.
pub fn new_userns(maps: &IdMaps) -> io::Result<OwnedFd> {
    let holder = ns_holder(maps, libc::CLONE_NEWUSER)?;
    let f = std::fs::File::open(format!("/proc/{}/ns/user", holder.pid));
    holder.end();
    Ok(OwnedFd::from(f?))
}

/// A user namespace with `maps` for idmapped mounts: the last one made is
/// kept (a pod's containers all have the pod's mappings).
pub fn userns_for(maps: &IdMaps) -> io::Result<OwnedFd> {
    static LAST: Mutex<Option<(IdMaps, OwnedFd)>> = Mutex::new(None);
    let mut g = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((m, fd)) = g.as_ref() {
        if m == maps {
            return fd.try_clone();
        }
    }
    let fd = new_userns(maps)?;
    let out = fd.try_clone()?;
    *g = Some((maps.clone(), fd));
    Ok(out)
}

/// The pod's user namespace with `maps` (`userns`) and a network namespace
/// owned by it (`netns`), both kept by bind mounts at these paths, the
/// loopback up. A network namespace of the host's user namespace would not
/// do: runc 1.1 joins the user namespace first and may then no longer
/// enter it. On failure nothing stays.
pub fn pin_pod_namespaces(maps: &IdMaps, userns: &Path, netns: &Path) -> io::Result<()> {
    let holder = ns_holder(maps, libc::CLONE_NEWUSER | libc::CLONE_NEWNET)?;
    let proc = PathBuf::from(format!("/proc/{}", holder.pid));
    let result = (|| {
        for (kind, at) in [("user", userns), ("net", netns)] {
            crius_store::private::file_options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(at)?;
            nix::mount::mount(
                Some(&proc.join("ns").join(kind)),
                at,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| {
                io::Error::other(format!(
                    "bind the {kind} namespace on {}: {e}",
                    at.display()
                ))
            })?;
        }
        crius_netns::netns::loopback_up(netns).map_err(io::Error::other)
    })();
    holder.end();
    if result.is_err() {
        let _ = crius_netns::netns::remove(netns);
        let _ = crius_netns::podns::unpin(userns);
    }
    result
}

/// Mounts `source` (a directory or a file) idmapped with the mappings of
/// `userns` on `target` (made as a private empty directory or file of the
/// same kind, with its parents).
pub fn idmapped_bind(source: &Path, target: &Path, userns: BorrowedFd<'_>) -> io::Result<()> {
    let meta = std::fs::metadata(source)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", source.display())))?;
    make_mount_point(target, meta.is_dir())?;
    let tree = clone_tree(source)?;
    set_idmap(tree.as_fd(), userns, source)?;
    attach(tree.as_fd(), target)
}

/// Makes `target` a private mount point: a directory (`dir`) or an empty
/// file, its missing parents private directories.
pub fn make_mount_point(target: &Path, dir: bool) -> io::Result<()> {
    if let Some(parent) = target.parent() {
        if !parent.is_dir() {
            crius_store::private::dir(parent)?;
        }
    }
    if dir {
        crius_store::private::dir(target)
    } else {
        crius_store::private::file_options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(target)
            .map(drop)
    }
}

/// Unmounts every mount on or below `dir` (deepest first, lazily); true
/// when none is left.
pub fn unmount_below(dir: &Path) -> bool {
    for _ in 0..8 {
        let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return false;
        };
        let mut points = mount_points_below(&info, dir);
        if points.is_empty() {
            return true;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
        for p in points {
            if let Err(e) = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH) {
                tracing::warn!(path = %p.display(), error = %e, "cannot unmount");
            }
        }
    }
    false
}

/// The mount points in mountinfo text that are `dir` or lie below it.
pub fn mount_points_below(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_below_a_directory() {
        let info = "22 1 254:0 / / rw - ext4 /dev/vda rw\n\
                    40 22 0:40 / /run/crius/containers/abc/bundle/rootfs rw,idmapped - overlay overlay rw\n\
                    41 22 0:41 /vol /run/crius/containers/abc/bundle/idmap/m0 rw,idmapped - ext4 /dev/vda rw\n\
                    42 22 0:42 / /run/crius/containers/abcd/bundle/rootfs rw - overlay overlay rw\n\
                    43 22 0:43 / /run/crius/containers/abc/bundle/idmap/with\\040space rw - tmpfs t rw\n";
        let cases = [
            (
                "/run/crius/containers/abc",
                vec![
                    "/run/crius/containers/abc/bundle/rootfs",
                    "/run/crius/containers/abc/bundle/idmap/m0",
                    "/run/crius/containers/abc/bundle/idmap/with space",
                ],
            ),
            (
                "/run/crius/containers/abcd",
                vec!["/run/crius/containers/abcd/bundle/rootfs"],
            ),
            ("/run/crius/containers/ab", vec![]),
        ];
        for (dir, want) in cases {
            let got = mount_points_below(info, Path::new(dir));
            let want: Vec<PathBuf> = want.into_iter().map(PathBuf::from).collect();
            assert_eq!(got, want, "{dir}");
        }
    }
}
