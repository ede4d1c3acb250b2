//! ListContainers and ContainerStatus: translations of store records.

use crate::domain::filter::{id_matches, labels_match, to_hash_map};
use crius_store::{ContainerRecord, ContainerState as StoreState, ContainerUser as StoreUser};
use k8s_cri::v1::{
    Container, ContainerConfig, ContainerFilter, ContainerMetadata, ContainerResources,
    ContainerState, ContainerStatus, ContainerUser, ImageSpec, LinuxContainerUser,
};
use std::collections::HashMap;

/// The container's Linux resources now: the last update's (in the
/// status), else the creation config's.
pub fn current_resources(
    r: &ContainerRecord,
    config: &ContainerConfig,
) -> Option<k8s_cri::v1::LinuxContainerResources> {
    r.status
        .resources
        .as_ref()
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .or_else(|| config.linux.as_ref().and_then(|l| l.resources.clone()))
}

/// The CRI config stored with the record (empty when unreadable).
pub fn stored_config(r: &ContainerRecord) -> ContainerConfig {
    serde_json::from_value(r.metadata.config.clone()).unwrap_or_default()
}

/// The process user of an OCI spec (`process.user`: uid, gid and
/// additionalGids), as the store keeps it.
pub fn user_of_spec(spec: &serde_json::Value) -> Option<StoreUser> {
    let u = &spec["process"]["user"];
    let id = |v: &serde_json::Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    Some(StoreUser {
        uid: id(&u["uid"])?,
        gid: id(&u["gid"])?,
        supplemental_groups: u["additionalGids"]
            .as_array()
            .map(|a| a.iter().filter_map(id).collect())
            .unwrap_or_default(),
    })
}

/// [`user_of_spec`] of a bundle's config.json (None when unreadable).
pub fn user_of_spec_file(path: &std::path::Path) -> Option<StoreUser> {
    let bytes = std::fs::read(path).ok()?;
    user_of_spec(&serde_json::from_slice(&bytes).ok()?)
}

/// The CRI `ContainerUser` of a stored identity.
fn cri_user(user: &StoreUser) -> ContainerUser {
    ContainerUser {
        linux: Some(LinuxContainerUser {
            uid: i64::from(user.uid),
            gid: i64::from(user.gid),
            supplemental_groups: user
                .supplemental_groups
                .iter()
                .map(|&g| i64::from(g))
                .collect(),
        }),
    }
}

/// The CRI state of a record.
pub fn state(r: &ContainerRecord) -> ContainerState {
    match r.status.state {
        StoreState::Created => ContainerState::ContainerCreated,
        StoreState::Running => ContainerState::ContainerRunning,
        StoreState::Exited => ContainerState::ContainerExited,
        StoreState::Unknown => ContainerState::ContainerUnknown,
    }
}

fn metadata(r: &ContainerRecord) -> ContainerMetadata {
    ContainerMetadata {
        name: r.metadata.container_name.clone(),
        attempt: r.metadata.attempt,
    }
}

/// kubelet's `user_specified_image` of the stored config.
fn user_specified_image(r: &ContainerRecord) -> String {
    r.metadata
        .config
        .get("image")
        .and_then(|i| i.get("user_specified_image"))
        .and_then(|u| u.as_str())
        .unwrap_or("")
        .to_string()
}

/// ListContainers' image: the reference the request named (kubelet sends
/// the image id), with the name the user specified, as containerd.
fn image(r: &ContainerRecord) -> ImageSpec {
    ImageSpec {
        image: r.metadata.image_ref.clone(),
        user_specified_image: user_specified_image(r),
        ..Default::default()
    }
}

/// ContainerStatus' image: the image's name as the user asked for it
/// (`nginx:1.27`, not its id: what `kubectl get pod` shows), as containerd
/// 2.x; the reference the request named for a record that lacks it.
fn status_image(r: &ContainerRecord) -> ImageSpec {
    let name = match r.metadata.image_name.as_str() {
        "" => r.metadata.image_ref.clone(),
        n => n.to_string(),
    };
    ImageSpec {
        image: name,
        user_specified_image: user_specified_image(r),
        ..Default::default()
    }
}

/// ContainerStatus' image_ref: the repo digest, else the image id (as
/// containerd; image_id is always the id).
fn status_image_ref(r: &ContainerRecord) -> String {
    match r.metadata.image_repo_digest.as_str() {
        "" => r.metadata.image_id.clone(),
        d => d.to_string(),
    }
}

/// The ListContainers entry of a record.
pub fn to_container(r: &ContainerRecord) -> Container {
    Container {
        id: r.metadata.id.clone(),
        pod_sandbox_id: r.metadata.sandbox_id.clone(),
        metadata: Some(metadata(r)),
        image: Some(image(r)),
        image_ref: r.metadata.image_id.clone(),
        state: state(r) as i32,
        created_at: r.metadata.created_at,
        labels: to_hash_map(&r.metadata.labels),
        annotations: to_hash_map(&r.metadata.annotations),
        ..Default::default()
    }
}

/// Whether a record passes a ListContainers filter.
pub fn matches(r: &ContainerRecord, filter: Option<&ContainerFilter>) -> bool {
    let Some(f) = filter else { return true };
    id_matches(&r.metadata.id, &f.id)
        && id_matches(&r.metadata.sandbox_id, &f.pod_sandbox_id)
        && f.state.as_ref().is_none_or(|s| s.state == state(r) as i32)
        && labels_match(&r.metadata.labels, &f.label_selector)
}

/// ListContainers over the given records.
pub fn list(records: &[ContainerRecord], filter: Option<&ContainerFilter>) -> Vec<Container> {
    records
        .iter()
        .filter(|r| matches(r, filter))
        .map(to_container)
        .collect()
}

/// As [`list`], over the store's records without copying them.
pub fn list_store(store: &crius_store::Store, filter: Option<&ContainerFilter>) -> Vec<Container> {
    store.visit_containers(|r| matches(r, filter).then(|| to_container(r)))
}

/// The ContainerStatus of a record, and its verbose info.
pub fn status(r: &ContainerRecord, verbose: bool) -> (ContainerStatus, HashMap<String, String>) {
    let config = stored_config(r);
    let s = &r.status;
    let status = ContainerStatus {
        id: r.metadata.id.clone(),
        metadata: Some(metadata(r)),
        state: state(r) as i32,
        created_at: r.metadata.created_at,
        started_at: s.started_at.unwrap_or(0),
        finished_at: s.finished_at.unwrap_or(0),
        exit_code: s.exit_code.unwrap_or(0),
        image: Some(status_image(r)),
        image_ref: status_image_ref(r),
        image_id: r.metadata.image_id.clone(),
        reason: s.reason.clone().unwrap_or_default(),
        message: s.message.clone().unwrap_or_default(),
        labels: to_hash_map(&r.metadata.labels),
        annotations: to_hash_map(&r.metadata.annotations),
        mounts: config.mounts.clone(),
        log_path: r.metadata.log_path.clone().unwrap_or_default(),
        resources: current_resources(r, &config).map(|linux| ContainerResources {
            linux: Some(linux),
            ..Default::default()
        }),
        user: s.user.as_ref().map(cri_user),
    };
    let mut info = HashMap::new();
    if verbose {
        let json = serde_json::json!({
            "sandboxID": r.metadata.sandbox_id,
            "pid": s.pid,
            "timeline": r.status.timeline,
            "config": r.metadata.config,
        });
        info.insert("info".to_string(), json.to_string());
    }
    (status, info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crius_store::{ContainerMetadata as Meta, ContainerStatus as St, Record};
    use k8s_cri::v1::ContainerStateValue;

    fn rec(id: char, sandbox: char, state: StoreState, app: &str) -> ContainerRecord {
        Record::new(
            Meta {
                id: id.to_string().repeat(64),
                sandbox_id: sandbox.to_string().repeat(64),
                container_name: app.into(),
                image_ref: "busybox".into(),
                image_id: "sha256:abc".into(),
                labels: [("app".to_string(), app.to_string())].into_iter().collect(),
                log_path: Some("/var/log/pods/x/app/0.log".into()),
                config: serde_json::to_value(ContainerConfig::default()).unwrap(),
                ..Default::default()
            },
            St {
                state,
                exit_code: (state == StoreState::Exited).then_some(137),
                reason: (state == StoreState::Exited).then(|| "OOMKilled".to_string()),
                ..Default::default()
            },
        )
    }

    #[test]
    fn list_filters() {
        let recs = vec![
            rec('a', 'x', StoreState::Running, "web"),
            rec('b', 'x', StoreState::Exited, "db"),
            rec('c', 'y', StoreState::Created, "db"),
        ];
        let ids = |f: ContainerFilter| -> Vec<char> {
            list(&recs, Some(&f))
                .iter()
                .map(|c| c.id.chars().next().unwrap())
                .collect()
        };
        assert_eq!(list(&recs, None).len(), 3);
        assert_eq!(
            ids(ContainerFilter {
                pod_sandbox_id: "xx".into(),
                ..Default::default()
            }),
            vec!['a', 'b']
        );
        assert_eq!(
            ids(ContainerFilter {
                id: "c".into(),
                ..Default::default()
            }),
            vec!['c']
        );
        assert_eq!(
            ids(ContainerFilter {
                state: Some(ContainerStateValue {
                    state: ContainerState::ContainerExited as i32
                }),
                ..Default::default()
            }),
            vec!['b']
        );
        let db: HashMap<String, String> = [("app".to_string(), "db".to_string())]
            .into_iter()
            .collect();
        assert_eq!(
            ids(ContainerFilter {
                label_selector: db,
                pod_sandbox_id: "y".into(),
                ..Default::default()
            }),
            vec!['c']
        );
    }

    #[test]
    fn status_fields() {
        let (s, info) = status(&rec('b', 'x', StoreState::Exited, "db"), true);
        assert_eq!(s.state, ContainerState::ContainerExited as i32);
        assert_eq!((s.exit_code, s.reason.as_str()), (137, "OOMKilled"));
        assert_eq!(s.image.unwrap().image, "busybox");
        assert_eq!(s.image_ref, "sha256:abc");
        assert_eq!(s.image_id, "sha256:abc");

        // The name the user asked for and the repo digest, when recorded.
        let mut r = rec('d', 'x', StoreState::Running, "web");
        r.metadata.image_ref = "sha256:abc".into();
        r.metadata.image_name = "nginx:1.27".into();
        r.metadata.image_repo_digest = "docker.io/library/nginx@sha256:d1".into();
        r.metadata.config = serde_json::to_value(ContainerConfig {
            image: Some(ImageSpec {
                image: "sha256:abc".into(),
                user_specified_image: "nginx:1.27".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap();
        let (s, _) = status(&r, false);
        let image = s.image.unwrap();
        assert_eq!(
            (image.image.as_str(), image.user_specified_image.as_str()),
            ("nginx:1.27", "nginx:1.27")
        );
        assert_eq!(s.image_ref, "docker.io/library/nginx@sha256:d1");
        assert_eq!(s.image_id, "sha256:abc");
        let listed = to_container(&r);
        let image = listed.image.unwrap();
        assert_eq!(
            (image.image.as_str(), image.user_specified_image.as_str()),
            ("sha256:abc", "nginx:1.27")
        );
        assert_eq!(listed.image_ref, "sha256:abc");
        assert_eq!(s.log_path, "/var/log/pods/x/app/0.log");
        assert!(info["info"].contains("sandboxID"));
        assert_eq!(s.user, None);
        assert_eq!(s.resources, None);

        // The stored user and resources are reported.
        let mut r = rec('c', 'x', StoreState::Running, "web");
        let spec = serde_json::json!({"process": {"user": {"uid": 1000, "gid": 1000, "additionalGids": [1000, 2000, 3000]}}});
        r.status.user = user_of_spec(&spec);
        let resources = k8s_cri::v1::LinuxContainerResources {
            cpu_shares: 512,
            ..Default::default()
        };
        r.metadata.config = serde_json::to_value(ContainerConfig {
            linux: Some(k8s_cri::v1::LinuxContainerConfig {
                resources: Some(resources.clone()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap();
        let (s, _) = status(&r, false);
        let user = s.user.and_then(|u| u.linux).unwrap();
        assert_eq!(
            (user.uid, user.gid, user.supplemental_groups),
            (1000, 1000, vec![1000, 2000, 3000])
        );
        assert_eq!(s.resources.and_then(|r| r.linux), Some(resources));
        // An update's resources (in the status) win over the config's.
        let updated = k8s_cri::v1::LinuxContainerResources {
            cpu_shares: 256,
            memory_limit_in_bytes: 1 << 26,
            ..Default::default()
        };
        r.status.resources = Some(serde_json::to_value(&updated).unwrap());
        let (s, _) = status(&r, false);
        assert_eq!(s.resources.and_then(|r| r.linux), Some(updated));

        // What a spec says, or nothing when it says too little.
        let cases = [
            (
                serde_json::json!({"process": {"user": {"uid": 0, "gid": 0}}}),
                Some((0, 0, vec![])),
            ),
            (
                serde_json::json!({"process": {"user": {"uid": 5, "gid": 6, "additionalGids": [6, 7]}}}),
                Some((5, 6, vec![6, 7])),
            ),
            (serde_json::json!({"process": {"user": {"uid": 5}}}), None),
            (
                serde_json::json!({"process": {"user": {"uid": -1, "gid": 0}}}),
                None,
            ),
            (serde_json::json!({}), None),
        ];
        for (spec, want) in cases {
            let got = user_of_spec(&spec).map(|u| (u.uid, u.gid, u.supplemental_groups));
            assert_eq!(got, want, "{spec}");
        }
    }
}
