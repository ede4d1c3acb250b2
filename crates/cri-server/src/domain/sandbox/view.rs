//! ListPodSandbox and PodSandboxStatus: translations of store records.

use crate::domain::filter::{id_matches, labels_match, to_hash_map};
use crius_store::{SandboxRecord, SandboxState};
use k8s_cri::v1::{
    LinuxPodSandboxStatus, Namespace, NamespaceOption, PodIp, PodSandbox, PodSandboxConfig,
    PodSandboxFilter, PodSandboxMetadata, PodSandboxNetworkStatus, PodSandboxState,
    PodSandboxStatus,
};
use std::collections::HashMap;

/// The CRI config stored with the record (empty when unreadable).
pub fn stored_config(r: &SandboxRecord) -> PodSandboxConfig {
    serde_json::from_value(r.metadata.config.clone()).unwrap_or_default()
}

fn metadata(r: &SandboxRecord) -> PodSandboxMetadata {
    PodSandboxMetadata {
        name: r.metadata.pod_name.clone(),
        uid: r.metadata.uid.clone(),
        namespace: r.metadata.namespace.clone(),
        attempt: r.metadata.attempt,
    }
}

fn state(r: &SandboxRecord) -> PodSandboxState {
    match r.status.state {
        SandboxState::Ready => PodSandboxState::SandboxReady,
        SandboxState::NotReady => PodSandboxState::SandboxNotready,
    }
}

/// The ListPodSandbox entry of a record.
pub fn to_pod_sandbox(r: &SandboxRecord) -> PodSandbox {
    PodSandbox {
        id: r.metadata.id.clone(),
        metadata: Some(metadata(r)),
        state: state(r) as i32,
        created_at: r.metadata.created_at,
        labels: to_hash_map(&r.metadata.labels),
        annotations: to_hash_map(&r.metadata.annotations),
        runtime_handler: r.metadata.runtime_handler.clone(),
    }
}

/// Whether a record passes a ListPodSandbox filter.
pub fn matches(r: &SandboxRecord, filter: Option<&PodSandboxFilter>) -> bool {
    let Some(f) = filter else { return true };
    id_matches(&r.metadata.id, &f.id)
        && f.state.as_ref().is_none_or(|s| s.state == state(r) as i32)
        && labels_match(&r.metadata.labels, &f.label_selector)
}

/// ListPodSandbox over the given records.
pub fn list(records: &[SandboxRecord], filter: Option<&PodSandboxFilter>) -> Vec<PodSandbox> {
    records
        .iter()
        .filter(|r| matches(r, filter))
        .map(to_pod_sandbox)
        .collect()
}

/// As [`list`], over the store's records without copying them.
pub fn list_store(
    store: &crius_store::Store,
    filter: Option<&PodSandboxFilter>,
) -> Vec<PodSandbox> {
    store.visit_sandboxes(|r| matches(r, filter).then(|| to_pod_sandbox(r)))
}

/// The PodSandboxStatus of a record, and its verbose info.
pub fn status(r: &SandboxRecord, verbose: bool) -> (PodSandboxStatus, HashMap<String, String>) {
    let config = stored_config(r);
    let options: NamespaceOption = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or_default();
    let network = r.status.ip.as_ref().map(|ip| PodSandboxNetworkStatus {
        ip: ip.clone(),
        additional_ips: r
            .status
            .additional_ips
            .iter()
            .map(|ip| PodIp { ip: ip.clone() })
            .collect(),
    });
    let status = PodSandboxStatus {
        id: r.metadata.id.clone(),
        metadata: Some(metadata(r)),
        state: state(r) as i32,
        created_at: r.metadata.created_at,
        network,
        linux: Some(LinuxPodSandboxStatus {
            namespaces: Some(Namespace {
                options: Some(options),
            }),
        }),
        labels: to_hash_map(&r.metadata.labels),
        annotations: to_hash_map(&r.metadata.annotations),
        runtime_handler: r.metadata.runtime_handler.clone(),
    };
    let mut info = HashMap::new();
    if verbose {
        let json = serde_json::json!({
            "pid": r.status.pid,
            "netnsPath": r.status.netns_path,
            "ipcPath": r.status.ipc_path,
            "utsPath": r.status.uts_path,
            "shimAddress": r.status.shim_address,
            "runtimeHandler": r.metadata.runtime_handler,
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
    use crius_store::{Record, SandboxMetadata, SandboxStatus};
    use k8s_cri::v1::PodSandboxStateValue;

    fn rec(id: char, ready: bool, app: &str) -> SandboxRecord {
        Record::new(
            SandboxMetadata {
                id: id.to_string().repeat(64),
                name: format!("k8s_POD_{app}"),
                namespace: "ns".into(),
                pod_name: app.into(),
                uid: "u".into(),
                labels: [("app".to_string(), app.to_string())].into_iter().collect(),
                created_at: 5,
                runtime_handler: "runc".into(),
                config: serde_json::to_value(PodSandboxConfig {
                    hostname: app.into(),
                    ..Default::default()
                })
                .unwrap(),
                ..Default::default()
            },
            SandboxStatus {
                state: if ready {
                    SandboxState::Ready
                } else {
                    SandboxState::NotReady
                },
                ip: ready.then(|| "10.99.0.2".to_string()),
                ..Default::default()
            },
        )
    }

    #[test]
    fn list_filters() {
        let recs = vec![
            rec('a', true, "web"),
            rec('b', false, "db"),
            rec('c', true, "db"),
        ];
        let ids = |f: Option<PodSandboxFilter>| -> Vec<char> {
            list(&recs, f.as_ref())
                .iter()
                .map(|p| p.id.chars().next().unwrap())
                .collect()
        };
        let ready = Some(PodSandboxStateValue {
            state: PodSandboxState::SandboxReady as i32,
        });
        let db: HashMap<String, String> = [("app".to_string(), "db".to_string())]
            .into_iter()
            .collect();
        assert_eq!(ids(None), vec!['a', 'b', 'c']);
        assert_eq!(
            ids(Some(PodSandboxFilter {
                id: "bbb".into(),
                ..Default::default()
            })),
            vec!['b']
        );
        assert_eq!(
            ids(Some(PodSandboxFilter {
                state: ready,
                ..Default::default()
            })),
            vec!['a', 'c']
        );
        assert_eq!(
            ids(Some(PodSandboxFilter {
                label_selector: db.clone(),
                ..Default::default()
            })),
            vec!['b', 'c']
        );
        assert_eq!(
            ids(Some(PodSandboxFilter {
                state: ready,
                label_selector: db,
                ..Default::default()
            })),
            vec!['c']
        );
    }

    #[test]
    fn status_fields() {
        let (s, info) = status(&rec('a', true, "web"), true);
        assert_eq!(s.state, PodSandboxState::SandboxReady as i32);
        assert_eq!(s.network.unwrap().ip, "10.99.0.2");
        assert_eq!(s.metadata.unwrap().name, "web");
        let v: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
        assert_eq!(v["config"]["hostname"], "web");
        let (s, info) = status(&rec('b', false, "db"), false);
        assert!(s.network.is_none());
        assert!(info.is_empty());
    }
}
