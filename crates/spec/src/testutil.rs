//! Helpers for reading generated specs in tests, and their inputs.

use k8s_cri::v1::{
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata,
};
use serde_json::Value;
use std::collections::HashMap;

/// The metadata of the tests' pod: `web` in `prod`, uid `u1`.
pub fn pod_metadata() -> Option<PodSandboxMetadata> {
    Some(PodSandboxMetadata {
        name: "web".into(),
        namespace: "prod".into(),
        uid: "u1".into(),
        attempt: 0,
    })
}

/// A pod config with these namespace options and nothing else.
pub fn pod_with_namespaces(ns: Option<NamespaceOption>) -> PodSandboxConfig {
    PodSandboxConfig {
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: ns,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A map (annotations, sysctls, ...) of these pairs.
pub fn strings(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The spec's namespaces as (type, path) pairs.
pub fn namespaces(spec: &Value) -> Vec<(String, Option<String>)> {
    spec["linux"]["namespaces"]
        .as_array()
        .expect("namespaces")
        .iter()
        .map(|n| {
            (
                n["type"].as_str().unwrap_or_default().to_string(),
                n["path"].as_str().map(String::from),
            )
        })
        .collect()
}

/// The spec's mount at `dest`, if any.
pub fn mount<'a>(spec: &'a Value, dest: &str) -> Option<&'a Value> {
    spec["mounts"]
        .as_array()?
        .iter()
        .find(|m| m["destination"] == dest)
}

/// The spec's bounding capabilities.
pub fn bounding(spec: &Value) -> &Vec<Value> {
    spec["process"]["capabilities"]["bounding"]
        .as_array()
        .expect("bounding capabilities")
}
