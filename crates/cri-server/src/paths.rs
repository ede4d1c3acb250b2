//! Where criusd keeps what: every path below its `root` (persistent:
//! records, images, the pods' resolv.conf/hosts/hostname, containers'
//! writable layers) and `state` (volatile, gone after a reboot: bundles,
//! the shims' sockets and private directories) is derived here and only
//! here. `root` and `state` change only with a restart, so the layout is
//! fixed for the daemon's life.

use std::path::{Path, PathBuf};

/// The bundle directory's name in a sandbox's or container's state
/// directory.
const BUNDLE: &str = "bundle";
/// The OCI spec's name in a bundle.
pub const SPEC: &str = "config.json";

/// criusd's directory layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    root: PathBuf,
    state: PathBuf,
}

impl Paths {
    /// The layout below `root` and `state`.
    pub fn new(root: &Path, state: &Path) -> Paths {
        Paths {
            root: root.to_path_buf(),
            state: state.to_path_buf(),
        }
    }

    /// The parent of every sandbox's persistent directory.
    pub fn sandboxes_root(&self) -> PathBuf {
        self.root.join("sandboxes")
    }

    /// The parent of every sandbox's state directory.
    pub fn sandboxes_state(&self) -> PathBuf {
        self.state.join("sandboxes")
    }

    /// A sandbox's persistent files (resolv.conf, hosts, hostname).
    pub fn sandbox_root(&self, id: &str) -> PathBuf {
        self.sandboxes_root().join(id)
    }

    /// A sandbox's runtime files (the pause bundle).
    pub fn sandbox_state(&self, id: &str) -> PathBuf {
        self.sandboxes_state().join(id)
    }

    /// The pause container's bundle.
    pub fn sandbox_bundle(&self, id: &str) -> PathBuf {
        self.sandbox_state(id).join(BUNDLE)
    }

    /// The parent of every container's persistent directory.
    pub fn containers_root(&self) -> PathBuf {
        self.root.join("containers")
    }

    /// The parent of every container's state directory.
    pub fn containers_state(&self) -> PathBuf {
        self.state.join("containers")
    }

    /// A container's persistent files.
    pub fn container_root(&self, id: &str) -> PathBuf {
        self.containers_root().join(id)
    }

    /// A container's runtime files (bundle, with the mounts the shim makes
    /// in it, exec and stream FIFOs).
    pub fn container_state(&self, id: &str) -> PathBuf {
        self.containers_state().join(id)
    }

    /// A container's bundle.
    pub fn container_bundle(&self, id: &str) -> PathBuf {
        self.container_state(id).join(BUNDLE)
    }

    /// A container's OCI spec.
    pub fn container_spec(&self, id: &str) -> PathBuf {
        self.container_bundle(id).join(SPEC)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_table() {
        let p = Paths::new(Path::new("/r"), Path::new("/s"));
        let cases: [(PathBuf, &str); 11] = [
            (p.sandboxes_root(), "/r/sandboxes"),
            (p.sandboxes_state(), "/s/sandboxes"),
            (p.sandbox_root("a"), "/r/sandboxes/a"),
            (p.sandbox_state("a"), "/s/sandboxes/a"),
            (p.sandbox_bundle("a"), "/s/sandboxes/a/bundle"),
            (p.containers_root(), "/r/containers"),
            (p.containers_state(), "/s/containers"),
            (p.container_root("c"), "/r/containers/c"),
            (p.container_state("c"), "/s/containers/c"),
            (p.container_bundle("c"), "/s/containers/c/bundle"),
            (p.container_spec("c"), "/s/containers/c/bundle/config.json"),
        ];
        for (got, want) in cases {
            assert_eq!(got, Path::new(want));
        }
    }
}
