//! The id mappings and mount targets criusd hands the shim: a user
//! namespace pod's mappings (pod option, [`crate::options`]) and the extra
//! mounts of a task in CreateTaskRequest.rootfs.
//!
//! - A mount option `uidmap=<container>:<host>:<size>[ ...]` with its
//!   `gidmap=...` (containerd 2.x's form; several ranges separated by
//!   spaces) asks for an idmapped mount: a `bind` is bound idmapped; an
//!   `overlay` is stacked on idmapped binds of its lower directories (the
//!   upper one, if any, stays as it is, its root given to the pod's root).
//!   Neither option reaches mount(2).
//! - A mount's `target`, when not empty, is where it goes relative to the
//!   bundle, in one of [`TARGET_DIRS`] (see [`check_target`]); an empty
//!   target is the bundle's `rootfs`. The shim makes them in order, undoes
//!   them in reverse on a failure and unmounts them on task delete.

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// Mount option prefix of the uid mapping.
pub const UIDMAP_OPTION: &str = "uidmap=";
/// Mount option prefix of the gid mapping.
pub const GIDMAP_OPTION: &str = "gidmap=";
/// The most ranges a mapping may have (the kernel's limit).
pub const MAX_RANGES: usize = 340;
/// The directory below a bundle where the shim stages the idmapped layers
/// of overlays (`layers/<n>/l<i>`): no target may lie in it.
pub const STAGING_DIR: &str = "layers";
/// Where below a bundle a mount's `target` may lie: the first part of
/// every target is one of these.
pub const TARGET_DIRS: &[&str] = &["idmap", "image-mounts", "volume-src"];
/// The directories below a bundle that only hold mounts the shim made
/// (besides `rootfs`): the only places it unmounts, and a dead shim's
/// `delete` action has something to do when one is there.
pub const MOUNT_DIRS: &[&str] = &[STAGING_DIR, "idmap", "image-mounts", "volume-src"];

/// An id mapping or a target criusd cannot hand over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct IdmapError(pub String);

/// One range of a mapping: `size` ids from `container` in the namespace
/// are `host` and up outside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// First id inside.
    pub container: u32,
    /// First id outside.
    pub host: u32,
    /// How many.
    pub size: u32,
}

/// A user namespace's uid and gid mappings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdMaps {
    /// The uid ranges.
    pub uids: Vec<IdRange>,
    /// The gid ranges.
    pub gids: Vec<IdRange>,
}

/// The text of ranges in an option or annotation: `c:h:s` separated by
/// spaces.
pub fn ranges_text(ranges: &[IdRange]) -> String {
    ranges
        .iter()
        .map(|r| format!("{}:{}:{}", r.container, r.host, r.size))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Parses [`ranges_text`]: at least one and at most [`MAX_RANGES`]
/// ranges, none empty, none wrapping around.
pub fn parse_ranges(text: &str) -> Result<Vec<IdRange>, IdmapError> {
    let bad = |why: &str| IdmapError(format!("id mapping {text:?}: {why}"));
    let mut out = Vec::new();
    for part in text.split(' ').filter(|p| !p.is_empty()) {
        if out.len() == MAX_RANGES {
            return Err(bad("too many ranges"));
        }
        let nums: Vec<&str> = part.split(':').collect();
        let [c, h, s] = nums.as_slice() else {
            return Err(bad("a range is container:host:size"));
        };
        let num = |v: &str| v.parse::<u32>().map_err(|_| bad("not a number"));
        let r = IdRange {
            container: num(c)?,
            host: num(h)?,
            size: num(s)?,
        };
        if r.size == 0 {
            return Err(bad("an empty range"));
        }
        if r.container.checked_add(r.size - 1).is_none() || r.host.checked_add(r.size - 1).is_none()
        {
            return Err(bad("a range past the largest id"));
        }
        out.push(r);
    }
    if out.is_empty() {
        return Err(bad("no range"));
    }
    Ok(out)
}

impl IdMaps {
    /// The two mount options carrying these mappings.
    pub fn options(&self) -> [String; 2] {
        [
            format!("{UIDMAP_OPTION}{}", ranges_text(&self.uids)),
            format!("{GIDMAP_OPTION}{}", ranges_text(&self.gids)),
        ]
    }

    /// Takes the mappings out of mount options: `None` without either;
    /// an error with only one of them or a malformed one. The other
    /// options are returned as they were.
    pub fn from_options(options: &[String]) -> Result<(Option<IdMaps>, Vec<String>), IdmapError> {
        let (mut uids, mut gids, mut rest) = (None, None, Vec::with_capacity(options.len()));
        for o in options {
            if let Some(t) = o.strip_prefix(UIDMAP_OPTION) {
                if uids.replace(parse_ranges(t)?).is_some() {
                    return Err(IdmapError("uidmap given twice".into()));
                }
            } else if let Some(t) = o.strip_prefix(GIDMAP_OPTION) {
                if gids.replace(parse_ranges(t)?).is_some() {
                    return Err(IdmapError("gidmap given twice".into()));
                }
            } else {
                rest.push(o.clone());
            }
        }
        match (uids, gids) {
            (None, None) => Ok((None, rest)),
            (Some(uids), Some(gids)) => Ok((Some(IdMaps { uids, gids }), rest)),
            _ => Err(IdmapError("uidmap and gidmap go together".into())),
        }
    }

    /// The host id of id `id` inside, in `ranges`.
    fn host_of(ranges: &[IdRange], id: u32) -> Option<u32> {
        ranges.iter().find_map(|r| {
            id.checked_sub(r.container)
                .filter(|off| *off < r.size)
                .map(|off| r.host + off)
        })
    }

    /// The host uid and gid of the namespace's root, if it is mapped.
    pub fn root(&self) -> Option<(u32, u32)> {
        Some((Self::host_of(&self.uids, 0)?, Self::host_of(&self.gids, 0)?))
    }

    /// The text of `/proc/<pid>/uid_map` (`uids`) or `gid_map`.
    pub fn map_file(ranges: &[IdRange]) -> String {
        ranges
            .iter()
            .map(|r| format!("{} {} {}\n", r.container, r.host, r.size))
            .collect()
    }
}

impl fmt::Display for IdMaps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "uids {} gids {}",
            ranges_text(&self.uids),
            ranges_text(&self.gids)
        )
    }
}

/// Checks a mount's `target` (relative to the bundle): relative, only
/// plain names (no `.`, `..` or empty parts), at most 16 parts, in one of
/// [`TARGET_DIRS`] (so never the bundle itself, `rootfs`, `config.json` or
/// the shim's staging directory [`STAGING_DIR`]). Returns it as a path.
pub fn check_target(target: &str) -> Result<PathBuf, IdmapError> {
    let bad = |why: &str| IdmapError(format!("mount target {target:?}: {why}"));
    if target.is_empty() || target.len() > 256 {
        return Err(bad("empty or too long"));
    }
    if target.starts_with('/') {
        return Err(bad("not relative to the bundle"));
    }
    let mut parts = Vec::new();
    for part in target.split('/') {
        if part.is_empty() || part == "." || part == ".." || part.contains('\0') {
            return Err(bad("only plain names between slashes"));
        }
        parts.push(part);
    }
    if parts.len() > 16 {
        return Err(bad("too deep"));
    }
    if !TARGET_DIRS.contains(&parts[0]) {
        return Err(bad(&format!("not in one of {TARGET_DIRS:?}")));
    }
    let p = PathBuf::from(target);
    debug_assert!(p.components().all(|c| matches!(c, Component::Normal(_))));
    Ok(p)
}

/// Where the shim stages the idmapped lower layer `layer` of the overlay
/// that is mount `mount` of a task, below `bundle`.
pub fn staged_layer(bundle: &Path, mount: usize, layer: usize) -> PathBuf {
    bundle
        .join(STAGING_DIR)
        .join(mount.to_string())
        .join(format!("l{layer}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(container: u32, host: u32, size: u32) -> IdRange {
        IdRange {
            container,
            host,
            size,
        }
    }

    #[test]
    fn ranges_table() {
        // (text, parsed or an error)
        let cases: Vec<(&str, Option<Vec<IdRange>>)> = vec![
            ("0:100000:65536", Some(vec![r(0, 100000, 65536)])),
            (
                "0:1000:1 1:100000:65535",
                Some(vec![r(0, 1000, 1), r(1, 100000, 65535)]),
            ),
            ("  0:1:1  ", Some(vec![r(0, 1, 1)])),
            ("", None),
            ("0:1", None),
            ("0:1:1:1", None),
            ("0:1:0", None),
            ("a:1:1", None),
            ("-1:1:1", None),
            ("0:4294967295:2", None),
            ("4294967295:0:1", Some(vec![r(u32::MAX, 0, 1)])),
        ];
        for (text, want) in cases {
            assert_eq!(parse_ranges(text).ok(), want, "{text:?}");
            if let Ok(w) = parse_ranges(text) {
                assert_eq!(parse_ranges(&ranges_text(&w)), Ok(w), "{text:?}");
            }
        }
        let many = vec!["0:1:1"; MAX_RANGES + 1].join(" ");
        assert!(parse_ranges(&many).is_err());
        let most = vec!["0:1:1"; MAX_RANGES].join(" ");
        assert_eq!(parse_ranges(&most).unwrap().len(), MAX_RANGES);
    }

    #[test]
    fn options_table() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let maps = IdMaps {
            uids: vec![r(0, 100000, 65536)],
            gids: vec![r(0, 200000, 10), r(10, 300000, 5)],
        };
        // (options, mappings, the other options) or an error
        type Parsed = Result<(Option<IdMaps>, Vec<String>), ()>;
        let cases: Vec<(Vec<String>, Parsed)> = vec![
            (
                s(&["ro", "lowerdir=/a"]),
                Ok((None, s(&["ro", "lowerdir=/a"]))),
            ),
            (
                s(&[
                    "lowerdir=/a",
                    "uidmap=0:100000:65536",
                    "gidmap=0:200000:10 10:300000:5",
                    "nosuid",
                ]),
                Ok((Some(maps.clone()), s(&["lowerdir=/a", "nosuid"]))),
            ),
            (s(&["uidmap=0:1:1"]), Err(())),
            (s(&["gidmap=0:1:1"]), Err(())),
            (
                s(&["uidmap=0:1:1", "gidmap=0:1:1", "uidmap=0:1:1"]),
                Err(()),
            ),
            (s(&["uidmap=", "gidmap=0:1:1"]), Err(())),
        ];
        for (opts, want) in cases {
            assert_eq!(
                IdMaps::from_options(&opts).map_err(|_| ()),
                want,
                "{opts:?}"
            );
        }
        // What options() gives reads back.
        let opts: Vec<String> = maps.options().to_vec();
        assert_eq!(IdMaps::from_options(&opts), Ok((Some(maps), vec![])));
    }

    #[test]
    fn root_and_map_file() {
        let maps = IdMaps {
            uids: vec![r(1, 5000, 10), r(0, 100000, 1)],
            gids: vec![r(0, 200000, 65536)],
        };
        assert_eq!(maps.root(), Some((100000, 200000)));
        let unmapped = IdMaps {
            uids: vec![r(1, 5000, 10)],
            gids: vec![r(0, 1, 1)],
        };
        assert_eq!(unmapped.root(), None);
        assert_eq!(IdMaps::map_file(&maps.uids), "1 5000 10\n0 100000 1\n");
    }

    #[test]
    fn targets_table() {
        // (target, accepted)
        let cases = [
            ("idmap/m0", true),
            ("image-mounts/3", true),
            ("volume-src", true),
            ("idmap/a/b", true),
            ("a/b/c", false),
            ("idmapx/m0", false),
            ("", false),
            ("/abs", false),
            ("../up", false),
            ("a/../../b", false),
            ("a/./b", false),
            ("a//b", false),
            ("a/", false),
            ("rootfs", false),
            ("rootfs/x", false),
            ("config.json", false),
            ("layers/0/l0", false),
            ("idmap/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p", true),
            ("idmap/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q", false),
        ];
        for (t, ok) in cases {
            let got = check_target(t);
            assert_eq!(got.is_ok(), ok, "{t:?}: {got:?}");
            if let Ok(p) = got {
                let bundle = Path::new("/run/b");
                assert!(bundle.join(&p).starts_with(bundle), "{t}");
            }
        }
        assert_eq!(
            staged_layer(Path::new("/b"), 2, 0),
            PathBuf::from("/b/layers/2/l0")
        );
    }
}
