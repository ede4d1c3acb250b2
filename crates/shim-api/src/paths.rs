//! Where the shims' sockets and private directories are.
//!
//! Two roots, both private (0700): the socket directory (the shims' ttrpc
//! sockets, named by a hash so that their paths stay short, and the
//! console and attach sockets) and the state root, with one directory per
//! pod, `<state root>/<namespace>/<pod id>`, that only the pod's shim
//! writes:
//!
//! | path | what |
//! | --- | --- |
//! | `netns` | the pod's network namespace (bind mount) |
//! | `userns` | the pinned user namespace of a pod with one of its own (bind mount) |
//! | `ipc`, `uts` | the pinned IPC and UTS namespaces of a pod without an infra process |
//! | `shm` | the pod's `/dev/shm` tmpfs |
//! | `shim.log` | the shim's log |
//!
//! criusd keeps both below its `state` ([`Layout::under`]); a shim finds
//! them in its environment ([`Layout::from_env`]), which criusd sets when
//! it launches one.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Environment variable overriding the socket directory.
pub const SOCKET_DIR_ENV: &str = "CRIUS_SHIM_SOCKET_DIR";
/// Default socket directory.
pub const DEFAULT_SOCKET_DIR: &str = "/run/crius/s";
/// Environment variable overriding the state directory root.
pub const STATE_DIR_ENV: &str = "CRIUS_SHIM_STATE_DIR";
/// Default state directory root.
pub const DEFAULT_STATE_DIR: &str = "/run/crius/shim";
/// The socket directory below criusd's `state`.
const SOCKETS: &str = "s";
/// The state root below criusd's `state`.
const STATE: &str = "shim";
/// Length of a shim socket's name (a hex SHA-256).
pub const SOCKET_NAME_LEN: usize = 64;

/// The socket directory ($CRIUS_SHIM_SOCKET_DIR or /run/crius/s).
pub fn socket_dir() -> PathBuf {
    std::env::var_os(SOCKET_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET_DIR))
}

/// The state directory root ($CRIUS_SHIM_STATE_DIR or /run/crius/shim).
pub fn state_root() -> PathBuf {
    std::env::var_os(STATE_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

/// The socket path of the shim serving group `grouping`: a hash of the
/// caller's address, the namespace and the group keeps it short and unique.
pub fn socket_path(dir: &Path, address: &str, namespace: &str, grouping: &str) -> PathBuf {
    let mut h = Sha256::new();
    h.update(address.as_bytes());
    h.update(b"/");
    h.update(namespace.as_bytes());
    h.update(b"/");
    h.update(grouping.as_bytes());
    dir.join(hex::encode(h.finalize()))
}

/// The two roots of the shims' files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The shims' sockets (`CRIUS_SHIM_SOCKET_DIR`).
    pub socket_dir: PathBuf,
    /// The pods' private directories (`CRIUS_SHIM_STATE_DIR`).
    pub state_root: PathBuf,
}

impl Default for Layout {
    /// `/run/crius/s` and `/run/crius/shim`: [`Layout::under`] criusd's
    /// default `state`, `/run/crius`.
    fn default() -> Layout {
        Layout {
            socket_dir: PathBuf::from(DEFAULT_SOCKET_DIR),
            state_root: PathBuf::from(DEFAULT_STATE_DIR),
        }
    }
}

impl Layout {
    /// criusd's layout: `<state>/s` and `<state>/shim`.
    pub fn under(state: &Path) -> Layout {
        Layout {
            socket_dir: state.join(SOCKETS),
            state_root: state.join(STATE),
        }
    }

    /// The shim's layout: from its environment, else the defaults.
    pub fn from_env() -> Layout {
        Layout {
            socket_dir: socket_dir(),
            state_root: state_root(),
        }
    }

    /// The ttrpc socket of the shim serving `grouping` for the caller at
    /// `address` (see [`socket_path`]).
    pub fn socket(&self, address: &str, namespace: &str, grouping: &str) -> PathBuf {
        socket_path(&self.socket_dir, address, namespace, grouping)
    }

    /// A one-off socket criusd listens on for a shim's attach connection
    /// (`attach-<token>`).
    pub fn attach_socket(&self, token: &str) -> PathBuf {
        self.socket_dir.join(format!("attach-{token}"))
    }

    /// The private directory of the pod `id` in `namespace`.
    pub fn pod_dir(&self, namespace: &str, id: &str) -> PodDir {
        PodDir(self.state_root.join(namespace).join(id))
    }

    /// The longest `state` criusd can have for its shims' socket paths to
    /// fit in `max` bytes (a unix socket path's limit, 107).
    pub fn max_state_len(max: usize) -> usize {
        max.saturating_sub(SOCKETS.len() + 2 + SOCKET_NAME_LEN)
    }
}

/// A pod's private directory in the shim's state root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDir(PathBuf);

impl PodDir {
    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The pod's network namespace (bind mount).
    pub fn netns(&self) -> PathBuf {
        self.0.join("netns")
    }

    /// The pinned user namespace of a pod with one of its own (bind
    /// mount); its network namespace, at [`PodDir::netns`], belongs to it.
    pub fn userns(&self) -> PathBuf {
        self.0.join("userns")
    }

    /// The pod's `/dev/shm` tmpfs.
    pub fn shm(&self) -> PathBuf {
        self.0.join("shm")
    }

    /// The pinned IPC namespace of a pod without an infra process.
    pub fn ipc(&self) -> PathBuf {
        self.0.join("ipc")
    }

    /// The pinned UTS namespace of a pod without an infra process.
    pub fn uts(&self) -> PathBuf {
        self.0.join("uts")
    }

    /// The shim's log file name.
    pub const LOG: &'static str = "shim.log";

    /// The shim's log.
    pub fn log(&self) -> PathBuf {
        self.0.join(Self::LOG)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_table() {
        let crius = Layout::under(Path::new("/run/crius"));
        assert_eq!(crius, Layout::default());
        let l = Layout::under(Path::new("/tmp/t/state"));
        let pod = l.pod_dir("k8s.io", "p1");
        // (path, want)
        let cases: [(PathBuf, &str); 9] = [
            (l.socket_dir.clone(), "/tmp/t/state/s"),
            (l.state_root.clone(), "/tmp/t/state/shim"),
            (pod.path().to_path_buf(), "/tmp/t/state/shim/k8s.io/p1"),
            (pod.netns(), "/tmp/t/state/shim/k8s.io/p1/netns"),
            (pod.shm(), "/tmp/t/state/shim/k8s.io/p1/shm"),
            (pod.ipc(), "/tmp/t/state/shim/k8s.io/p1/ipc"),
            (pod.uts(), "/tmp/t/state/shim/k8s.io/p1/uts"),
            (pod.log(), "/tmp/t/state/shim/k8s.io/p1/shim.log"),
            (
                l.attach_socket("0123abcd"),
                "/tmp/t/state/s/attach-0123abcd",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, Path::new(want));
        }
    }

    #[test]
    fn socket_paths_are_short_and_distinct() {
        let d = Path::new("/run/crius/s");
        let a = socket_path(d, "/run/containerd/containerd.sock", "k8s.io", "pod1");
        let b = socket_path(d, "/run/containerd/containerd.sock", "default", "pod1");
        let c = socket_path(d, "/run/crius/crius.sock", "k8s.io", "pod1");
        let e = socket_path(d, "/run/containerd/containerd.sock", "k8s.io", "pod2");
        for other in [&b, &c, &e] {
            assert_ne!(&a, other);
        }
        assert!(a.as_os_str().len() < 100);
        assert_eq!(
            a,
            socket_path(d, "/run/containerd/containerd.sock", "k8s.io", "pod1")
        );
        assert_eq!(a.file_name().unwrap().len(), SOCKET_NAME_LEN);
        let l = Layout::default();
        assert_eq!(
            l.socket("/run/containerd/containerd.sock", "k8s.io", "pod1"),
            a
        );
    }

    #[test]
    fn the_longest_state_fits() {
        // (max socket path, longest state)
        for (max, want) in [(107, 40), (67, 0), (10, 0)] {
            assert_eq!(Layout::max_state_len(max), want, "{max}");
        }
        let state = "a".repeat(Layout::max_state_len(107));
        let l = Layout::under(Path::new(&state));
        assert_eq!(l.socket("a", "b", "c").as_os_str().len(), 107);
    }
}
