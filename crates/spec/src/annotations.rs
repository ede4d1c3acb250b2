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

/// Whether `key` matches a passthrough pattern, a glob as containerd's
/// `pod_annotations` / `container_annotations` read it (Go's `path.Match`):
/// `*` is any run of characters but `/`, `?` one such character, `[...]` a
/// class. A pattern that is not a valid glob matches nothing (the
/// configuration refuses such patterns, see [`valid_pattern`]).
pub fn matches_pattern(key: &str, pattern: &str) -> bool {
    const OPTIONS: glob::MatchOptions = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    glob::Pattern::new(pattern).is_ok_and(|p| p.matches_with(key, OPTIONS))
}

/// Why `pattern` is not a usable passthrough pattern, if it is not.
pub fn valid_pattern(pattern: &str) -> Result<(), String> {
    glob::Pattern::new(pattern)
        .map(|_| ())
        .map_err(|e| format!("{pattern:?} is not a glob pattern: {}", e.msg))
}

/// The annotations of `source` whose keys match any of `patterns`, sorted.
pub fn passthrough<'a>(
    source: impl IntoIterator<Item = (&'a String, &'a String)>,
    patterns: &[String],
) -> Vec<(String, String)> {
    if patterns.is_empty() {
        return Vec::new();
    }
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
            ("a.b", "*", true),
            // `*` does not cross a `/`, as Go's path.Match.
            ("a.b/c", "*", false),
            ("a.b/c", "*/*", true),
            ("a.b/c", "a.b/d", false),
            ("x", "a*", false),
            ("io.kata.x", "io.kata.?", true),
            ("io.kata.xy", "io.kata.?", false),
            ("gpu.vendor/v1", "gpu.[uv]endor/v[0-9]", true),
            ("gpu.xendor/v1", "gpu.[uv]endor/v[0-9]", false),
            ("x", "[", false),
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
        assert!(passthrough(&src, &[]).is_empty());
        let got = passthrough(&src, &["io.katacontainers.*".to_string()]);
        assert_eq!(
            got,
            vec![
                ("io.katacontainers.a".to_string(), "3".to_string()),
                ("io.katacontainers.x".to_string(), "1".to_string())
            ]
        );
    }

    #[test]
    fn pattern_validation() {
        for (pattern, ok) in [
            ("a.b/*", true),
            ("*", true),
            ("[a-", false),
            ("a/**b", false),
        ] {
            assert_eq!(valid_pattern(pattern).is_ok(), ok, "{pattern}");
        }
    }
}
