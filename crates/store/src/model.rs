//! Record types persisted by the store.
//!
//! Every record is an immutable metadata part plus a mutable status part
//! ([`Record`]). CRI configurations are carried as opaque
//! [`serde_json::Value`]s: the store knows nothing about gRPC or protobuf.
//!
//! All structs use `#[serde(default)]` so that files written by older
//! versions (with fewer fields) still load.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The kinds of things the store persists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A pod sandbox.
    Sandbox,
    /// A container.
    Container,
    /// An image.
    Image,
    /// A small key/value state entry.
    State,
}

impl RecordKind {
    /// The name stored in the `kind` field of the on-disk envelope.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Sandbox => "sandbox",
            RecordKind::Container => "container",
            RecordKind::Image => "image",
            RecordKind::State => "state",
        }
    }

    /// The directory (below the store root) holding records of this kind.
    pub fn dir_name(self) -> &'static str {
        match self {
            RecordKind::Sandbox => "sandboxes",
            RecordKind::Container => "containers",
            RecordKind::Image => "images",
            RecordKind::State => "state",
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A persisted record: immutable metadata plus mutable status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record<M, S> {
    /// Immutable part, fixed at creation.
    pub metadata: M,
    /// Mutable part, changed through the store's `update_*_status` methods.
    #[serde(default)]
    pub status: S,
}

impl<M, S> Record<M, S> {
    /// Builds a record from its two parts.
    pub fn new(metadata: M, status: S) -> Self {
        Record { metadata, status }
    }
}

/// A pod sandbox record.
pub type SandboxRecord = Record<SandboxMetadata, SandboxStatus>;
/// A container record.
pub type ContainerRecord = Record<ContainerMetadata, ContainerStatus>;
/// An image record.
pub type ImageRecord = Record<ImageMetadata, ImageStatus>;

/// Immutable metadata of a pod sandbox.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SandboxMetadata {
    /// Full sandbox id (64 lowercase hex characters).
    pub id: String,
    /// Reserved unique name (e.g. `k8s_POD_<pod>_<ns>_<uid>_<attempt>`).
    pub name: String,
    /// Kubernetes namespace of the pod.
    pub namespace: String,
    /// Kubernetes pod name.
    pub pod_name: String,
    /// Kubernetes pod UID.
    pub uid: String,
    /// Sandbox attempt number.
    pub attempt: u32,
    /// Runtime handler (runtime class) used to run the sandbox.
    pub runtime_handler: String,
    /// Sandbox labels.
    pub labels: BTreeMap<String, String>,
    /// Sandbox annotations.
    pub annotations: BTreeMap<String, String>,
    /// Creation time, in nanoseconds since the Unix epoch.
    pub created_at: i64,
    /// Opaque copy of the CRI sandbox config.
    pub config: serde_json::Value,
}

/// State of a pod sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    /// The sandbox is running and ready.
    Ready,
    /// The sandbox is stopped or not yet ready (also used for unknown values).
    #[default]
    #[serde(other)]
    NotReady,
}

/// One phase of a start-up timeline: what was done and how long it took.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Phase {
    /// The phase (e.g. `shim_spawn`, `cni_add`, `runc_create`).
    pub name: String,
    /// Its duration in nanoseconds.
    pub nanos: u64,
}

/// Mutable status of a pod sandbox.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SandboxStatus {
    /// Current state.
    pub state: SandboxState,
    /// Pid of the sandbox (pause) process, if running.
    pub pid: Option<u32>,
    /// Path of the network namespace, if any.
    pub netns_path: Option<String>,
    /// The pinned IPC namespace of a pod without an infra (pause) process.
    pub ipc_path: Option<String>,
    /// The pinned UTS namespace of a pod without an infra (pause) process.
    pub uts_path: Option<String>,
    /// Primary pod IP.
    pub ip: Option<String>,
    /// Additional pod IPs (e.g. IPv6 in dual-stack).
    pub additional_ips: Vec<String>,
    /// Address of the shim serving this sandbox.
    pub shim_address: Option<String>,
    /// Time the sandbox stopped, in nanoseconds since the Unix epoch.
    pub exited_at: Option<i64>,
    /// How long each phase of RunPodSandbox took.
    pub timeline: Vec<Phase>,
}

/// Immutable metadata of a container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerMetadata {
    /// Full container id (64 lowercase hex characters).
    pub id: String,
    /// Reserved unique name (e.g. `k8s_<container>_<pod>_<ns>_<uid>_<attempt>`).
    pub name: String,
    /// Id of the sandbox the container belongs to.
    pub sandbox_id: String,
    /// Container name from the CRI container metadata.
    pub container_name: String,
    /// Container attempt number.
    pub attempt: u32,
    /// Image reference the container was created from, as given by the user.
    pub image_ref: String,
    /// Resolved image id (`sha256:...`).
    pub image_id: String,
    /// The image's name as the user asked for it (kubelet's
    /// `user_specified_image`, else the tag the request named or the
    /// image's first repo tag): ContainerStatus.image and the
    /// `io.kubernetes.cri.image-name` annotation. Empty in records written
    /// before it was kept.
    pub image_name: String,
    /// The image's first repo digest when the container was created
    /// (ContainerStatus.image_ref, as containerd reports it); empty when it
    /// had none.
    pub image_repo_digest: String,
    /// Container labels.
    pub labels: BTreeMap<String, String>,
    /// Container annotations.
    pub annotations: BTreeMap<String, String>,
    /// Path of the container log file, if any.
    pub log_path: Option<String>,
    /// Creation time, in nanoseconds since the Unix epoch.
    pub created_at: i64,
    /// Opaque copy of the CRI container config.
    pub config: serde_json::Value,
    /// The signal StopContainer sends first, decided at creation (the
    /// image's `StopSignal`, SIGTERM without one). 0 in records written
    /// before it was kept: the stop then looks at the image, if still there.
    pub stop_signal: u32,
}

/// State of a container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    /// Created but not started.
    Created,
    /// Running.
    Running,
    /// Exited.
    Exited,
    /// State unknown (also used for missing or unrecognised values).
    #[default]
    #[serde(other)]
    Unknown,
}

/// Mutable status of a container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerStatus {
    /// Current state.
    pub state: ContainerState,
    /// Pid of the container's init process, if started.
    pub pid: Option<u32>,
    /// Start time, in nanoseconds since the Unix epoch.
    pub started_at: Option<i64>,
    /// Exit time, in nanoseconds since the Unix epoch.
    pub finished_at: Option<i64>,
    /// Exit code, once exited.
    pub exit_code: Option<i32>,
    /// Short machine-readable reason for the current state (e.g. `OOMKilled`).
    pub reason: Option<String>,
    /// Human-readable message for the current state.
    pub message: Option<String>,
    /// How long each phase of CreateContainer and StartContainer took.
    pub timeline: Vec<Phase>,
    /// The identity the container's process was created with (inside the
    /// container), once known.
    pub user: Option<ContainerUser>,
    /// The container's Linux resources (CRI `LinuxContainerResources` as
    /// JSON) once UpdateContainerResources changed them; until then they
    /// are the ones of the creation config in the metadata.
    pub resources: Option<serde_json::Value>,
}

/// The identity of a container's process, as put into its OCI spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ContainerUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids, in the order they were given to the process.
    pub supplemental_groups: Vec<u32>,
}

/// Immutable metadata of an image.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageMetadata {
    /// Image id (`sha256:<hex>` digest of the image config).
    pub id: String,
    /// Tags referring to this image (e.g. `docker.io/library/nginx:latest`).
    pub repo_tags: Vec<String>,
    /// Digests referring to this image (e.g. `docker.io/library/nginx@sha256:...`).
    pub repo_digests: Vec<String>,
    /// Size in bytes.
    pub size: u64,
    /// Opaque copy of the image config.
    pub config: serde_json::Value,
    /// Time the image was stored, in nanoseconds since the Unix epoch.
    pub created_at: i64,
    /// Digests of every blob the image uses (index, manifest, config,
    /// layers), so unused content can be collected.
    #[serde(default)]
    pub content: Vec<String>,
    /// Snapshot (chain) ids of the image's layers, bottom first.
    #[serde(default)]
    pub snapshots: Vec<String>,
}

/// Mutable status of an image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageStatus {
    /// Pinned images are never garbage collected.
    pub pinned: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_files_with_missing_fields_still_load() {
        let rec: SandboxRecord =
            serde_json::from_str(r#"{"metadata":{"id":"x","name":"n"}}"#).unwrap();
        assert_eq!(rec.metadata.id, "x");
        assert_eq!(rec.status, SandboxStatus::default());
        assert_eq!(rec.status.state, SandboxState::NotReady);

        let rec: ContainerRecord =
            serde_json::from_str(r#"{"metadata":{"id":"y"},"status":{"state":"running"}}"#)
                .unwrap();
        assert_eq!(rec.status.state, ContainerState::Running);
        assert_eq!(rec.status.user, None);
        assert_eq!(rec.metadata.config, serde_json::Value::Null);
    }

    #[test]
    fn unknown_state_values_do_not_fail() {
        let st: ContainerStatus = serde_json::from_str(r#"{"state":"paused"}"#).unwrap();
        assert_eq!(st.state, ContainerState::Unknown);
        let st: SandboxStatus = serde_json::from_str(r#"{"state":"weird"}"#).unwrap();
        assert_eq!(st.state, SandboxState::NotReady);
    }

    #[test]
    fn state_serialization_names() {
        assert_eq!(
            serde_json::to_string(&SandboxState::NotReady).unwrap(),
            r#""not_ready""#
        );
        assert_eq!(
            serde_json::to_string(&ContainerState::Exited).unwrap(),
            r#""exited""#
        );
    }

    #[test]
    fn round_trip() {
        let rec = ImageRecord::new(
            ImageMetadata {
                id: "sha256:abc".into(),
                repo_tags: vec!["a:b".into()],
                size: 42,
                config: serde_json::json!({"Env": ["A=1"]}),
                ..Default::default()
            },
            ImageStatus { pinned: true },
        );
        let text = serde_json::to_string(&rec).unwrap();
        let back: ImageRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, rec);

        let rec = ContainerRecord::new(
            ContainerMetadata::default(),
            ContainerStatus {
                user: Some(ContainerUser {
                    uid: 1000,
                    gid: 1000,
                    supplemental_groups: vec![1000, 2000, 3000],
                }),
                ..Default::default()
            },
        );
        let text = serde_json::to_string(&rec).unwrap();
        let back: ContainerRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back, rec);
    }
}
