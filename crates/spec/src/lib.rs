//! OCI runtime spec generation for crius.
//!
//! Everything here is a pure function: inputs are the CRI request, the image
//! configuration and facts about the host and the sandbox, gathered by the
//! caller (which does all the I/O: reading /etc/passwd of the image,
//! /proc/self/status, mountinfo, device nodes); the output is an
//! `oci_spec::runtime::Spec`.
//!
//! Modules: `process` (args, env, cwd), `user` (uid/gid resolution), `caps`,
//! `seccomp` (the RuntimeDefault profile), `mounts`, `cgroups` (paths and
//! resources), `annotations`, `images` (image volumes, the image's name),
//! `oom`, `userns` (pod user namespaces), `devices` (device ownership and
//! CDI requests), `edit` (edits of an existing spec: resource updates, the
//! exec process, the pause's netns and /dev/shm), and the two builders
//! `sandbox` (the pause container) and `container`. The builders and edits
//! work on typed `oci_spec` values (`oci` makes empty ones: oci-spec's own
//! defaults describe a sample container); `tests/golden` holds the
//! `config.json` they produce for a table of pods and containers.

// Test tables are tuples of slices; naming each shape would not make them clearer.
#![cfg_attr(test, allow(clippy::type_complexity))]

pub mod annotations;
pub mod caps;
pub mod cgroups;
mod common;
pub mod container;
pub mod devices;
pub mod edit;
pub mod error;
pub mod images;
pub mod mounts;
pub mod nri;
mod oci;
pub mod oom;
pub mod process;
pub mod sandbox;
pub mod seccomp;
#[cfg(any(test, feature = "testutil"))]
pub mod testutil;
pub mod user;
pub mod userns;

pub use cgroups::{CgroupDriver, CgroupFeatures};
pub use error::SpecError;

/// The OCI runtime spec version written into every spec.
pub const OCI_VERSION: &str = "1.0.2";

/// Facts about the host and the runtime handler, gathered once by the caller.
/// The host's AppArmor, as far as container profiles are concerned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AppArmor {
    /// Not enabled in the kernel: no profile is applied, and a Localhost
    /// profile is refused.
    #[default]
    Disabled,
    /// Enabled in the kernel.
    Enabled {
        /// The name of the runtime's default profile when it is loaded;
        /// otherwise why it is not (RuntimeDefault then fails).
        default: Result<String, String>,
        /// The names of the profiles loaded in the kernel when the request
        /// was served (a Localhost profile must be one of them).
        loaded: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// The capabilities the runtime itself holds (see [`caps::from_cap_eff`]).
    pub capabilities: Vec<String>,
    /// The daemon's own `oom_score_adj`.
    pub oom_score_adj: i32,
    /// Whether the daemon may lower `oom_score_adj` (holds CAP_SYS_RESOURCE).
    pub can_lower_oom_score_adj: bool,
    /// The cgroup driver.
    pub cgroup_driver: CgroupDriver,
    /// What the host's cgroups support.
    pub cgroup_features: CgroupFeatures,
    /// What AppArmor can do on this host.
    pub apparmor: AppArmor,
    /// SELinux is enabled.
    pub selinux: bool,
    /// The runtime handler supports recursive read-only mounts.
    pub rro_mounts: bool,
    /// The daemon's hard RLIMIT_NOFILE (containers get min(this, 1048576)).
    pub nofile_hard: u64,
    /// Glob patterns of the pod annotations passed into the sandbox's and
    /// every container's spec (the pod's runtime handler's `pod_annotations`).
    pub pod_annotations: Vec<String>,
    /// Glob patterns of the container annotations passed into its spec (the
    /// handler's `container_annotations`).
    pub container_annotations: Vec<String>,
    /// The node's hostname (`HOSTNAME` of host-network containers whose pod
    /// names none).
    pub hostname: String,
    /// The handler's `privileged_without_host_devices`: a privileged
    /// container gets neither the host's devices (the caller leaves them
    /// out) nor access to every device in its device cgroup.
    pub privileged_without_host_devices: bool,
}

impl Default for HostFacts {
    fn default() -> Self {
        HostFacts {
            capabilities: caps::ALL_CAPABILITIES
                .iter()
                .map(|c| c.to_string())
                .collect(),
            oom_score_adj: 0,
            can_lower_oom_score_adj: true,
            cgroup_driver: CgroupDriver::Cgroupfs,
            cgroup_features: CgroupFeatures::default(),
            apparmor: AppArmor::Disabled,
            selinux: false,
            rro_mounts: false,
            nofile_hard: 1_048_576,
            pod_annotations: Vec::new(),
            container_annotations: Vec::new(),
            hostname: String::new(),
            privileged_without_host_devices: false,
        }
    }
}

/// The parts of an OCI image config that shape a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `User`.
    pub user: String,
    /// `Env`.
    pub env: Vec<String>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `WorkingDir`.
    pub working_dir: String,
    /// `Volumes` (paths).
    pub volumes: Vec<String>,
}

/// Facts about the pod's sandbox, known once it has been created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxFacts {
    /// The sandbox id.
    pub id: String,
    /// The pod network namespace (None with host network).
    pub netns_path: Option<String>,
    /// The pod's /dev/shm tmpfs (None with host IPC: the host's is bound).
    pub shm_path: Option<String>,
    /// The pause process (containers join its namespaces); None for a pod
    /// without one.
    pub pid: Option<u32>,
    /// The pod's pinned IPC namespace (a pod without a pause process).
    pub ipc_path: Option<String>,
    /// The pod's pinned UTS namespace (a pod without a pause process).
    pub uts_path: Option<String>,
    /// The pod's /etc/hosts file.
    pub hosts_path: Option<String>,
    /// The pod's /etc/resolv.conf file.
    pub resolv_conf_path: Option<String>,
    /// The pod's /etc/hostname file.
    pub hostname_path: Option<String>,
}
