//! OCI annotations, with the keys containerd's CRI plugin sets so that NRI
//! plugins, hooks and runtimes that read them keep working.

/// `sandbox` or `container`.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// Value of [`CONTAINER_TYPE`] for the pause container.
pub const CONTAINER_TYPE_SANDBOX: &str = "sandbox";
/// Value of [`CONTAINER_TYPE`] for an application container.
pub const CONTAINER_TYPE_CONTAINER: &str = "container";
/// The pod sandbox id.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// The pod name.
pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
/// The pod namespace.
pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
/// The pod uid.
pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
/// The pod log directory.
pub const SANDBOX_LOG_DIR: &str = "io.kubernetes.cri.sandbox-log-directory";
/// The container name (application containers only).
pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
/// The image name the container was created from.
pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";

/// Whether `key` matches a passthrough pattern: an exact key, or a prefix
/// ending in `*` (as containerd's `pod_annotations` / `container_annotations`).
pub fn matches_pattern(key: &str, pattern: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => key.starts_with(prefix),
        None => key == pattern,
    }
}

/// The annotations of `source` whose keys match any of `patterns`.
pub fn passthrough<'a>(
    source: impl IntoIterator<Item = (&'a String, &'a String)>,
    patterns: &[String],
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = source
        .into_iter()
        .filter(|(k, _)| patterns.iter().any(|p| matches_pattern(k, p)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn patterns() {
        let cases = [
            ("a.b/c", "a.b/c", true),
            ("a.b/c", "a.b/*", true),
            ("a.b/c", "*", true),
            ("a.b/c", "a.b/d", false),
            ("x", "a*", false),
        ];
        for (key, pat, want) in cases {
            assert_eq!(matches_pattern(key, pat), want, "{key} {pat}");
        }
        let src: HashMap<String, String> = [
            ("io.katacontainers.x", "1"),
            ("other", "2"),
            ("io.katacontainers.a", "3"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let got = passthrough(&src, &["io.katacontainers.*".to_string()]);
        assert_eq!(
            got,
            vec![
                ("io.katacontainers.a".to_string(), "3".to_string()),
                ("io.katacontainers.x".to_string(), "1".to_string())
            ]
        );
    }
}
