//! Filters shared by the List* RPCs.

use std::collections::{BTreeMap, HashMap};

/// Whether every selector label is present with the same value.
pub fn labels_match(labels: &BTreeMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether `id` matches a filter id: empty matches all; otherwise an exact
/// id or a prefix of it (crictl passes truncated ids).
pub fn id_matches(id: &str, filter: &str) -> bool {
    filter.is_empty() || id.starts_with(filter)
}

/// Converts a map of the store into the CRI's map type.
pub fn to_hash_map(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let labels: BTreeMap<String, String> = [("app", "web"), ("tier", "front")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let sel = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(labels_match(&labels, &sel(&[])));
        assert!(labels_match(&labels, &sel(&[("app", "web")])));
        assert!(!labels_match(&labels, &sel(&[("app", "db")])));
        assert!(!labels_match(
            &labels,
            &sel(&[("app", "web"), ("zone", "a")])
        ));
        assert!(id_matches("abcdef", ""));
        assert!(id_matches("abcdef", "abc"));
        assert!(!id_matches("abcdef", "abd"));
    }
}
