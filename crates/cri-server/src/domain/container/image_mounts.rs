//! Images mounted into a container besides its root filesystem, and the
//! content of the image's own `VOLUME`s. criusd mounts none of them: it
//! hands the shim the mounts to make at task Create (`TaskMount`s with a
//! target below the bundle), which it unmounts on task delete.
//!
//! - Image volumes (KEP-4639, CRI `Mount.image`): each image is mounted
//!   read-only on the host (an overlay of its layers, no upper layer:
//!   read-only by construction; `nosuid,nodev`) at
//!   `<state>/containers/<id>/bundle/image-mounts/<n>`, which becomes the
//!   host path of an ordinary read-only bind mount. crius-image records the
//!   layers with the container's writable layer, so that RemoveImage
//!   (which, as in containerd, removes the image's record and succeeds)
//!   leaves them until the container is removed. The shim makes the mounts
//!   with the task and unmounts them with it (after a dead shim, its
//!   `delete` action, which RemoveContainer and every CreateContainer
//!   rollback run); the container record is written before, so after a
//!   crash the container is there to be removed, mounts included. Unlike
//!   containerd, which mounts an image once per pod, each container gets
//!   its own mount: the mount lives and dies with the container. In a pod
//!   with its own user namespace the overlay is made of idmapped binds of
//!   the layers, as the rootfs is.
//! - Image `VOLUME`s: as containerd does, the content the image has at a
//!   volume's path is copied into the container's fresh volume directory
//!   (ownership, modes and times kept, hard links kept as links; symbolic
//!   links copied as links, never followed; no extended attributes; the
//!   volume's path resolved inside the image as if the image were `/`),
//!   from a read-only overlay of the image's layers the shim makes at task
//!   Create (`bundle/volume-src`, kept until the task is deleted); the copy
//!   runs after the runtime's create, before the container's process can
//!   start.

use crate::daemon::Daemon;
use crate::errors::{internal, invalid_field, spec_status, CriError};
use crate::shimclient::TaskMount;
use k8s_cri::v1::ContainerConfig;
use std::ffi::OsString;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// The directory below a container's state directory holding its image
/// volume mounts.
pub const IMAGE_MOUNTS_DIR: &str = "image-mounts";
/// The most entries (files, directories, links) the copy of one image
/// `VOLUME` makes; an image with more is refused.
pub const VOLUME_COPY_MAX_ENTRIES: usize = 100_000;
/// The deepest directory nesting the copy of one image `VOLUME` follows.
pub const VOLUME_COPY_MAX_DEPTH: usize = 256;
/// The most symbolic links resolving one volume path goes through (as
/// the kernel's limit).
const MAX_SYMLINKS: usize = 40;

/// The image volumes of container `id` (the CRI mounts with an `image`):
/// returns the config the spec is to be built from, in which they are
/// read-only binds of mounts below `bundle` (`image-mounts/<n>`), and
/// those mounts, read-only overlays of the images' layers that the shim
/// makes at task Create (idmapped layers in a pod with its own user
/// namespace); `None` when the container has none. The image must be
/// present (kubelet pulls it): an absent one is NotFound, as in
/// containerd.
pub async fn image_volume_mounts(
    daemon: &Daemon,
    id: &str,
    config: &ContainerConfig,
    sandbox: &crius_store::SandboxRecord,
    bundle: &Path,
) -> Result<Option<(ContainerConfig, Vec<TaskMount>)>, CriError> {
    let requests = crius_spec::images::image_mount_requests(&config.mounts).map_err(spec_status)?;
    if requests.is_empty() {
        return Ok(None);
    }
    // A pod with its own user namespace: overlayfs cannot be idmapped as
    // a whole, so the shim binds the layers idmapped and makes the overlay
    // of those, as for the rootfs; `userns::container` then leaves these
    // sources alone.
    let pod_config = crate::domain::sandbox::view::stored_config(sandbox);
    let maps = crius_spec::userns::pod_mappings(&pod_config)
        .map_err(spec_status)?
        .map(|m| crate::domain::userns::id_maps(&m));
    for r in &requests {
        let present = daemon.images.resolve(&r.image).map_err(|e| {
            crate::errors::image_error(e, &format!("config.mounts[{}].image.image", r.index))
        })?;
        if present.is_none() {
            return Err(CriError::not_found(format!(
                "ImageVolumeMountFailed: config.mounts[{}].image.image: image {:?} is not present: pull it first",
                r.index, r.image
            )));
        }
    }
    let images: Vec<String> = requests.iter().map(|r| r.image.clone()).collect();
    let layers = daemon
        .images
        .prepare_image_mounts(id, &images)
        .await
        .map_err(|e| crate::errors::image_error(e, "config.mounts"))?;
    let mut mounts = Vec::with_capacity(requests.len());
    let mut sources = Vec::with_capacity(requests.len());
    for (r, (_, lower)) in requests.iter().zip(layers) {
        let target = format!("{IMAGE_MOUNTS_DIR}/{}", r.index);
        let mut m = read_only_layers(&lower, bundle)
            .await
            .map_err(|e| internal("image volume mount", e))?;
        if let Some(maps) = &maps {
            m.options.extend(maps.options());
        }
        sources.push((r.index, bundle.join(&target).display().to_string()));
        mounts.push(TaskMount { mount: m, target });
    }
    Ok(Some((
        ContainerConfig {
            mounts: crius_spec::images::with_image_sources(&config.mounts, &sources),
            ..config.clone()
        },
        mounts,
    )))
}

/// The name of the image container `config` was created from, as the user
/// asked for it (see [`crius_spec::images::display_image_name`]):
/// `requested` is `config.image.image`, `image` the image it resolved to.
pub fn display_name(
    config: &ContainerConfig,
    requested: &str,
    image: &crius_store::ImageRecord,
) -> String {
    let user_specified = config
        .image
        .as_ref()
        .map(|i| i.user_specified_image.as_str())
        .unwrap_or("");
    let requested_tag = crius_image::Reference::parse(requested)
        .ok()
        .filter(|r| r.digest.is_none())
        .map(|r| r.to_string())
        .filter(|t| image.metadata.repo_tags.contains(t));
    crius_spec::images::display_image_name(
        user_specified,
        requested_tag.as_deref(),
        &image.metadata.repo_tags,
        &image.metadata.repo_digests,
        &image.metadata.id,
    )
}

/// The host mount points of the image volumes in a config that
/// [`image_volume_mounts`] returned, for
/// [`crius_spec::images::keep_image_mount_flags`].
pub fn sources(config: &ContainerConfig, bundle: &Path) -> Vec<String> {
    let base = bundle.join(IMAGE_MOUNTS_DIR);
    config
        .mounts
        .iter()
        .filter(|m| Path::new(&m.host_path).starts_with(&base))
        .map(|m| m.host_path.clone())
        .collect()
}

/// A read-only mount of the image layers `lower` (topmost first): an
/// overlay without an upper layer, `nosuid,nodev`. Overlayfs wants two
/// lower layers at least without an upper one: a single layer gets the
/// empty directory `image-mounts/empty` of `bundle` below it (made here,
/// private).
pub async fn read_only_layers(lower: &[String], bundle: &Path) -> io::Result<crius_image::Mount> {
    if lower.is_empty() {
        return Err(io::Error::other("the image has no layers"));
    }
    let mut dirs = lower.to_vec();
    if dirs.len() == 1 {
        let empty = bundle.join(IMAGE_MOUNTS_DIR).join("empty");
        dirs.push(empty.display().to_string());
        tokio::task::spawn_blocking(move || crius_store::private::dir(&empty))
            .await
            .map_err(io::Error::other)??;
    }
    Ok(crius_image::Mount {
        kind: "overlay".into(),
        source: "overlay".into(),
        options: vec![
            "ro".into(),
            "nosuid".into(),
            "nodev".into(),
            format!("lowerdir={}", dirs.join(":")),
        ],
    })
}

/// Where, relative to a container's bundle, the shim mounts the image
/// read-only for the copy of its `VOLUME` content.
pub const VOLUME_SOURCE: &str = "volume-src";

/// The mount the image's `VOLUME` content is copied from: a read-only
/// overlay of the layers of `rootfs` (the container's rootfs overlay) at
/// [`VOLUME_SOURCE`], which the shim makes at task Create (never idmapped:
/// the copy keeps the image's own ids) and unmounts with the task's other
/// mounts. `None` when there is nothing to copy.
pub async fn volume_source_mount(
    rootfs: &[crius_image::Mount],
    volumes: &[(String, PathBuf)],
    bundle: &Path,
) -> Result<Option<TaskMount>, CriError> {
    if volumes.is_empty() {
        return Ok(None);
    }
    let lower: Vec<String> = rootfs
        .iter()
        .flat_map(|m| m.options.iter())
        .find_map(|o| o.strip_prefix("lowerdir="))
        .map(|l| l.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    let mount = read_only_layers(&lower, bundle)
        .await
        .map_err(|e| internal("image volume content", e))?;
    Ok(Some(TaskMount {
        mount,
        target: VOLUME_SOURCE.to_string(),
    }))
}

/// Copies what the image has at each of its `VOLUME`s (`volumes`: path in
/// the container and the volume's fresh host directory) into the volume,
/// from the image mounted read-only at `image` (the shim's mount of
/// [`volume_source_mount`], made at task Create, before the container's
/// process runs). On the blocking pool.
pub async fn fill_image_volumes(
    image: PathBuf,
    volumes: Vec<(String, PathBuf)>,
) -> Result<(), CriError> {
    if volumes.is_empty() {
        return Ok(());
    }
    tokio::task::spawn_blocking(move || {
        for (path, dest) in &volumes {
            copy_volume(&image, path, dest).map_err(|e| match e.kind() {
                io::ErrorKind::FileTooLarge => invalid_field(
                    "config.image.image",
                    format!("the image's VOLUME {path:?}: {e}"),
                ),
                _ => internal(&format!("copy of the image's VOLUME {path:?}"), e),
            })?;
        }
        Ok(())
    })
    .await
    .map_err(|e| internal("image volume content", e))?
}

/// Resolves `path` inside `root` as if `root` were `/`: `..` stops at
/// `root`, a symbolic link's target is resolved from `root` (absolute) or
/// from the link's directory (relative), so nothing outside `root` is ever
/// reached. `None` when a component is missing or not a directory.
pub fn resolve_in_root(root: &Path, path: &str) -> io::Result<Option<PathBuf>> {
    let mut todo: Vec<OsString> = Vec::new();
    push_components(&mut todo, Path::new(path));
    let mut done: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            done.pop();
            continue;
        }
        let candidate = done
            .iter()
            .fold(root.to_path_buf(), |p, c| p.join(c))
            .join(&c);
        let meta = match std::fs::symlink_metadata(&candidate) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return Err(io::Error::other(format!(
                    "{path:?}: more than {MAX_SYMLINKS} symbolic links"
                )));
            }
            let target = std::fs::read_link(&candidate)?;
            if target.is_absolute() {
                done.clear();
            }
            push_components(&mut todo, &target);
            continue;
        }
        if !meta.is_dir() && !todo.is_empty() {
            return Ok(None);
        }
        done.push(c);
    }
    Ok(Some(done.iter().fold(root.to_path_buf(), |p, c| p.join(c))))
}

/// Pushes the components of `p` onto the stack `todo` (last first out is
/// the first component), dropping `/` and `.`.
fn push_components(todo: &mut Vec<OsString>, p: &Path) {
    let parts: Vec<OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    todo.extend(parts.into_iter().rev());
}

/// Copies the image's content at volume `path` (inside the mounted image
/// `root`) into the volume directory `dest`, which takes the owner, mode
/// and times of the image's directory. Nothing is copied when the image
/// has no directory there (the volume keeps the mode CreateContainer gave
/// it). The image's mode may open the volume up (`1777`): its parent,
/// `<root>/containers/<id>/volumes`, stays private. More than
/// [`VOLUME_COPY_MAX_ENTRIES`] entries or [`VOLUME_COPY_MAX_DEPTH`] levels
/// is an error of kind `FileTooLarge`.
pub fn copy_volume(root: &Path, path: &str, dest: &Path) -> io::Result<()> {
    let Some(src) = resolve_in_root(root, path)? else {
        return Ok(());
    };
    let meta = std::fs::symlink_metadata(&src)?;
    if !meta.is_dir() {
        return Ok(());
    }
    let mut copy = TreeCopy {
        budget: VOLUME_COPY_MAX_ENTRIES,
        links: std::collections::HashMap::new(),
    };
    copy.dir_contents(&src, dest, 0)?;
    copy_attributes(&meta, dest)
}

/// One copy of a tree: what it may still make, and the files of several
/// links already copied (by device and inode), which stay hard links.
struct TreeCopy {
    budget: usize,
    links: std::collections::HashMap<(u64, u64), PathBuf>,
}

fn too_large(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::FileTooLarge, what)
}

impl TreeCopy {
    fn dir_contents(&mut self, src: &Path, dst: &Path, depth: usize) -> io::Result<()> {
        if depth >= VOLUME_COPY_MAX_DEPTH {
            return Err(too_large(format!(
                "deeper than {VOLUME_COPY_MAX_DEPTH} directories"
            )));
        }
        for entry in std::fs::read_dir(src)? {
            let entry = entry?;
            if self.budget == 0 {
                return Err(too_large(format!(
                    "more than {VOLUME_COPY_MAX_ENTRIES} entries"
                )));
            }
            self.budget -= 1;
            let (from, to) = (entry.path(), dst.join(entry.file_name()));
            let meta = std::fs::symlink_metadata(&from)?;
            let ft = meta.file_type();
            if !ft.is_dir() && meta.nlink() > 1 {
                if let Some(first) = self.links.get(&(meta.dev(), meta.ino())) {
                    std::fs::hard_link(first, &to)?;
                    continue;
                }
                self.links.insert((meta.dev(), meta.ino()), to.clone());
            }
            if ft.is_dir() {
                match std::fs::create_dir(&to) {
                    Ok(()) => {}
                    // A mount point the runtime made in the volume for a
                    // mount inside it (the copy runs after its create).
                    Err(e)
                        if e.kind() == io::ErrorKind::AlreadyExists
                            && std::fs::symlink_metadata(&to).is_ok_and(|m| m.is_dir()) => {}
                    Err(e) => return Err(e),
                }
                self.dir_contents(&from, &to, depth + 1)?;
            } else if ft.is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
            } else if ft.is_file() {
                copy_file(&from, &to)?;
            } else {
                // Device nodes, FIFOs and sockets: recreated as they are.
                let kind = nix::sys::stat::SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT);
                let perm = nix::sys::stat::Mode::from_bits_truncate(meta.mode() & 0o7777);
                nix::sys::stat::mknod(&to, kind, perm, meta.rdev()).map_err(io::Error::from)?;
            }
            copy_attributes(&meta, &to)?;
        }
        Ok(())
    }
}

/// Copies a regular file's bytes (never through a symbolic link: `from`
/// was checked to be a regular file on a read-only mount).
fn copy_file(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut src = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(from)?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(to)?;
    io::copy(&mut src, &mut dst)?;
    Ok(())
}

/// Gives `path` the owner, mode (setuid and setgid bits included: set
/// after the owner, which clears them) and times of `meta`, without
/// following a symbolic link.
fn copy_attributes(meta: &std::fs::Metadata, path: &Path) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid()))?;
    if !meta.file_type().is_symlink() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    let ts = |s: i64, ns: i64| nix::sys::time::TimeSpec::new(s, ns);
    nix::sys::stat::utimensat(
        None,
        path,
        &ts(meta.atime(), meta.atime_nsec()),
        &ts(meta.mtime(), meta.mtime_nsec()),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn paths_resolve_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        for dir in ["var/lib/data", "etc", "real"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::write(root.join("etc/file"), "x").unwrap();
        symlink("/real", root.join("abs")).unwrap();
        symlink("../real", root.join("var/rel")).unwrap();
        symlink("../../../../..", root.join("var/up")).unwrap();
        symlink("/etc/../../../..", root.join("escape")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        // (path, Ok(Some(path below root)) / Ok(None) / Err)
        let cases: &[(&str, Result<Option<&str>, ()>)] = &[
            ("/var/lib/data", Ok(Some("var/lib/data"))),
            ("var/lib/data/", Ok(Some("var/lib/data"))),
            ("/abs", Ok(Some("real"))),
            ("/var/rel", Ok(Some("real"))),
            ("/var/up", Ok(Some(""))),
            ("/var/up/etc", Ok(Some("etc"))),
            ("/escape", Ok(Some(""))),
            ("/../../etc", Ok(Some("etc"))),
            ("/missing/x", Ok(None)),
            ("/etc/file/x", Ok(None)),
            ("/etc/file", Ok(Some("etc/file"))),
            ("/loop", Err(())),
        ];
        for (path, want) in cases {
            let got = resolve_in_root(&root, path);
            match (got, want) {
                (Ok(got), Ok(want)) => {
                    assert_eq!(got, want.map(|w| root.join(w)), "{path}");
                    if let Some(g) = &got {
                        assert!(g.starts_with(&root), "{path}: {g:?}");
                    }
                }
                (Err(_), Err(())) => {}
                (got, want) => panic!("{path}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn volume_content_is_copied_with_its_attributes_and_contained() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let (root, outside) = (d.path().join("root"), d.path().join("outside"));
        let data = root.join("var/lib/data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("secret"), "host").unwrap();
        std::fs::write(data.join("sub/file"), "content").unwrap();
        std::fs::set_permissions(data.join("sub/file"), PermissionsExt::from_mode(0o640)).unwrap();
        std::fs::set_permissions(data.join("sub"), PermissionsExt::from_mode(0o750)).unwrap();
        std::fs::set_permissions(&data, PermissionsExt::from_mode(0o1770)).unwrap();
        // Links are copied as links, never followed out of the image.
        symlink(&outside, data.join("out")).unwrap();
        symlink("/etc/passwd", data.join("abs")).unwrap();
        std::fs::hard_link(data.join("sub/file"), data.join("linked")).unwrap();
        let root_user = unsafe { libc::geteuid() } == 0;
        if root_user {
            std::os::unix::fs::lchown(data.join("sub/file"), Some(1234), Some(5678)).unwrap();
            std::os::unix::fs::lchown(&data, Some(999), Some(998)).unwrap();
        }
        // The volume path through a link that points out of the image
        // resolves inside it.
        symlink("/../../outside", root.join("var/link")).unwrap();
        let dest = d.path().join("vol");
        std::fs::create_dir(&dest).unwrap();
        copy_volume(&root, "/var/link", &dest).unwrap();
        assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);

        copy_volume(&root, "/var/lib/data", &dest).unwrap();
        assert_eq!(
            std::fs::read_to_string(dest.join("sub/file")).unwrap(),
            "content"
        );
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&dest.join("sub/file")), 0o640);
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        assert_eq!(ino(&dest.join("linked")), ino(&dest.join("sub/file")));
        assert_ne!(ino(&dest.join("linked")), ino(&data.join("sub/file")));
        assert_eq!(mode(&dest.join("sub")), 0o750);
        assert_eq!(mode(&dest), 0o1770);
        assert_eq!(std::fs::read_link(dest.join("out")).unwrap(), outside);
        assert_eq!(
            std::fs::read_link(dest.join("abs")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(
            std::fs::symlink_metadata(dest.join("sub/file"))
                .unwrap()
                .mtime(),
            std::fs::symlink_metadata(data.join("sub/file"))
                .unwrap()
                .mtime()
        );
        if root_user {
            let m = std::fs::metadata(dest.join("sub/file")).unwrap();
            assert_eq!((m.uid(), m.gid()), (1234, 5678));
            let m = std::fs::metadata(&dest).unwrap();
            assert_eq!((m.uid(), m.gid()), (999, 998));
        }
        assert_eq!(
            std::fs::read_to_string(outside.join("secret")).unwrap(),
            "host"
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);

        // A path the image does not have leaves the volume empty.
        let empty = d.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        copy_volume(&root, "/nothing/here", &empty).unwrap();
        assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    }

    #[test]
    fn volume_copy_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let mut deep = root.join("v");
        for _ in 0..=VOLUME_COPY_MAX_DEPTH {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep).unwrap();
        let dest = d.path().join("vol");
        std::fs::create_dir(&dest).unwrap();
        let err = copy_volume(&root, "/v", &dest).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::FileTooLarge, "{err}");
    }
}
