//! Helpers for reading generated specs in tests.

use serde_json::Value;

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
