//! Overlay mounts of many lower layers.
//!
//! mount(2) takes its options in one page: at most 4095 bytes on x86-64.
//! With absolute lower directories of about 100 bytes each
//! (`/var/lib/crius/images/snapshots/<64 hex digits>/fs`), an image of 39
//! layers no longer fits. Two things keep the options short:
//!
//! - the lower directories are named through short links: criusd gives each
//!   container `l/<n>` symbolic links to its layers (overlayfs follows
//!   them), and a user namespace pod's idmapped layers are staged as
//!   `l<n>`;
//! - when the options with absolute paths do not fit, [`mount_overlay`]
//!   makes the lower directories relative to their longest common parent
//!   ([`compact_lowerdirs`], as containerd's `compactLowerdirOption`) and
//!   mounts with that directory as the working directory. 128 layers then
//!   take about 500 bytes; the limit is overlayfs' own stack depth (500).
//!
//! The working directory is shared by every thread of a process, and the
//! shim and criusd are multi-threaded, so the relative mount runs on a
//! thread of its own that first unshares its filesystem attributes
//! (`unshare(CLONE_FS)`: its working directory, root and umask become its
//! own, which Linux allows in a multi-threaded process), then `fchdir`s
//! to the parent and mounts; no other thread sees the change and the
//! thread ends with the mount. This works on every kernel with overlayfs,
//! unlike the new mount API's `lowerdir+` (`fsconfig`, one layer per call,
//! Linux 6.8 and later), and needs no fork of a multi-threaded process.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The longest option string mount(2) passes on whole: one page less the
/// terminating NUL.
pub fn max_options_len() -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page).unwrap_or(4096).max(4096) - 1
}

/// The option string with the lower directories made relative to their
/// longest common parent, and that parent; `None` when there is no
/// `lowerdir=`, when any lower directory is relative or when they share
/// no parent but `/`.
pub fn compact_lowerdirs(data: &str) -> Option<(PathBuf, String)> {
    let opts: Vec<&str> = data.split(',').collect();
    let at = opts.iter().position(|o| o.starts_with("lowerdir="))?;
    let lowers: Vec<&str> = opts[at]["lowerdir=".len()..].split(':').collect();
    if lowers.iter().any(|l| !l.starts_with('/')) {
        return None;
    }
    // Common components of every lower directory's parent.
    let parent_comps = |l: &str| -> Vec<String> {
        let comps: Vec<String> = l
            .split('/')
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect();
        let n = comps.len().saturating_sub(1);
        comps[..n].to_vec()
    };
    let mut common = parent_comps(lowers[0]);
    for l in &lowers[1..] {
        let p = parent_comps(l);
        let same = common.iter().zip(&p).take_while(|(a, b)| a == b).count();
        common.truncate(same);
    }
    if common.is_empty() {
        return None;
    }
    let dir = PathBuf::from(format!("/{}", common.join("/")));
    let skip = common.len();
    let relative: Vec<String> = lowers
        .iter()
        .map(|l| {
            l.split('/')
                .filter(|c| !c.is_empty())
                .skip(skip)
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect();
    let mut out: Vec<String> = opts.iter().map(|o| o.to_string()).collect();
    out[at] = format!("lowerdir={}", relative.join(":"));
    Some((dir, out.join(",")))
}

fn cstring(s: &[u8]) -> io::Result<CString> {
    CString::new(s)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a mount argument"))
}

fn mount_here(
    source: &CString,
    target: &CString,
    flags: libc::c_ulong,
    data: &CString,
) -> io::Result<()> {
    let fstype = c"overlay";
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let r = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Mounts an overlay with option string `data` (`lowerdir=...,upperdir=...`)
/// on `target`: directly when the options fit in a page, else with the
/// lower directories relative to their common parent from a thread whose
/// working directory is that parent (see the module documentation).
pub fn mount_overlay(
    source: &str,
    target: &Path,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let limit = max_options_len();
    let src = cstring(source.as_bytes())?;
    if data.len() <= limit {
        let tgt = cstring(target.as_os_str().as_encoded_bytes())?;
        return mount_here(&src, &tgt, flags, &cstring(data.as_bytes())?);
    }
    let too_long = |len: usize, how: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("overlay mount options too long: {len} bytes {how}(at most {limit})"),
        )
    };
    let Some((dir, short)) = compact_lowerdirs(data) else {
        return Err(too_long(data.len(), ""));
    };
    if short.len() > limit {
        return Err(too_long(
            short.len(),
            &format!(
                "even with the lower directories relative to {} ",
                dir.display()
            ),
        ));
    }
    // The target is resolved here: the helper thread's working directory
    // is another.
    let target = std::path::absolute(target)?;
    let tgt = cstring(target.as_os_str().as_encoded_bytes())?;
    let data = cstring(short.as_bytes())?;
    let cdir = cstring(dir.as_os_str().as_encoded_bytes())?;
    std::thread::Builder::new()
        .name("overlay-mount".into())
        .spawn(move || -> io::Result<()> {
            // SAFETY: unshare(CLONE_FS) only affects this thread.
            if unsafe { libc::unshare(libc::CLONE_FS) } < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: valid path; the fd is owned on success.
            let fd = unsafe {
                libc::open(
                    cdir.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: fd was just returned by open.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: fd is an open directory.
            if unsafe { libc::fchdir(fd.as_raw_fd()) } < 0 {
                return Err(io::Error::last_os_error());
            }
            mount_here(&src, &tgt, flags, &data)
        })?
        .join()
        .map_err(|_| io::Error::other("the overlay mount thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lowers(dir: &str, n: usize) -> String {
        (0..n)
            .map(|i| format!("{dir}/l/{i}"))
            .collect::<Vec<_>>()
            .join(":")
    }

    #[test]
    fn compaction_table() {
        let cases: Vec<(&str, Option<(&str, &str)>)> = vec![
            (
                "lowerdir=/a/b/l/0:/a/b/l/1,upperdir=/u,workdir=/w",
                Some(("/a/b/l", "lowerdir=0:1,upperdir=/u,workdir=/w")),
            ),
            (
                "index=off,lowerdir=/s/x/fs:/s/y/fs",
                Some(("/s", "index=off,lowerdir=x/fs:y/fs")),
            ),
            ("lowerdir=/a/b/c", Some(("/a/b", "lowerdir=c"))),
            ("lowerdir=/x/1:/y/2", None),
            ("lowerdir=/top", None),
            ("lowerdir=rel/1:rel/2", None),
            ("upperdir=/u,workdir=/w", None),
        ];
        for (data, want) in cases {
            let got = compact_lowerdirs(data);
            let want = want.map(|(d, s)| (PathBuf::from(d), s.to_string()));
            assert_eq!(got, want, "{data}");
        }
    }

    /// 128 layers under criusd's default root: far over a page with
    /// absolute paths, well under with relative ones.
    #[test]
    fn options_of_128_layers_fit_once_relative() {
        let dir = format!("/var/lib/crius/images/containers/{}", "f".repeat(64));
        let data = format!(
            "lowerdir={},upperdir={dir}/upper,workdir={dir}/work",
            lowers(&dir, 128)
        );
        let limit = max_options_len();
        assert!(limit >= 4095);
        assert!(data.len() > limit, "{}", data.len());
        let (parent, short) = compact_lowerdirs(&data).unwrap();
        assert_eq!(parent, PathBuf::from(format!("{dir}/l")));
        assert!(short.len() < 1024, "{}", short.len());
        assert!(short.starts_with("lowerdir=0:1:2:"), "{short}");
        // Even 500 layers (overlayfs' maximum) fit.
        let (_, short) = compact_lowerdirs(&format!("lowerdir={}", lowers(&dir, 500))).unwrap();
        assert!(short.len() <= limit, "{}", short.len());
    }

    #[test]
    fn options_that_cannot_fit_are_refused_clearly() {
        let data = format!(
            "lowerdir={}",
            (0..300)
                .map(|i| format!("/d{i}/{}", "x".repeat(20)))
                .collect::<Vec<_>>()
                .join(":")
        );
        let err = mount_overlay("overlay", Path::new("/nonexistent"), 0, &data).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("too long"), "{err}");
    }

    /// A real mount of 128 layers through short links (root only).
    #[test]
    fn mounts_128_layers() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping mounts_128_layers: needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        // Long absolute paths, as under criusd's root.
        let base = tmp.path().join("x".repeat(60)).join("y".repeat(60));
        let (layers, links) = (base.join("layers"), base.join("l"));
        std::fs::create_dir_all(&links).unwrap();
        let mut lower = Vec::new();
        for i in 0..128 {
            let l = layers.join(format!("{i:064}"));
            std::fs::create_dir_all(&l).unwrap();
            std::fs::write(l.join(format!("f{i}")), i.to_string()).unwrap();
            std::fs::write(l.join("shadowed"), i.to_string()).unwrap();
            // Topmost first: link n is layer 127 - n.
            std::os::unix::fs::symlink(&l, links.join((127 - i).to_string())).unwrap();
        }
        for n in 0..128 {
            lower.push(links.join(n.to_string()).display().to_string());
        }
        for d in ["upper", "work", "merged"] {
            std::fs::create_dir(base.join(d)).unwrap();
        }
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            base.join("upper").display(),
            base.join("work").display()
        );
        assert!(data.len() > max_options_len());
        let merged = base.join("merged");
        let cwd = std::env::current_dir().unwrap();
        mount_overlay("overlay", &merged, 0, &data).unwrap();
        assert_eq!(
            std::env::current_dir().unwrap(),
            cwd,
            "the process's cwd is untouched"
        );
        let read = |n: &str| std::fs::read_to_string(merged.join(n));
        let (bottom, top, shadowed) = (read("f0"), read("f127"), read("shadowed"));
        let c = CString::new(merged.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        assert_eq!(bottom.unwrap(), "0");
        assert_eq!(top.unwrap(), "127");
        assert_eq!(shadowed.unwrap(), "127", "the topmost layer wins");
    }
}
