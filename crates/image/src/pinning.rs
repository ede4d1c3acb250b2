//! Pinned images (`[images] pinned`): patterns matched against an image's
//! normalized repo tags and digests (`docker.io/library/busybox:1.36`,
//! `registry.k8s.io/pause@sha256:...`). Kubelet's image garbage collection
//! never removes an image reported as pinned.
//!
//! A pattern without wildcards is a reference, normalized as pulls are
//! (`busybox:1.36` pins `docker.io/library/busybox:1.36`). In a pattern
//! with wildcards `*` matches any run of characters, `/` included, and `?`
//! any one character (CRI-O's prefix and keyword forms, `quay.io/team/*`
//! and `*coredns*`, are special cases of this).

use crate::reference::Reference;

/// The longest pattern accepted.
pub const MAX_PATTERN_LEN: usize = 512;

/// A compiled list of pinning patterns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pinned {
    patterns: Vec<String>,
}

fn has_wildcard(p: &str) -> bool {
    p.contains(['*', '?'])
}

/// Checks one pattern; the message says what is wrong.
pub fn valid_pattern(pattern: &str) -> Result<(), String> {
    if pattern.trim().is_empty() {
        return Err("a pattern must not be empty".into());
    }
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(format!("longer than {MAX_PATTERN_LEN} bytes"));
    }
    if pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{pattern:?} contains white space"));
    }
    if !has_wildcard(pattern) {
        Reference::parse(pattern).map_err(|e| format!("{pattern:?}: {e}"))?;
    }
    Ok(())
}

/// Whether `text` matches `pattern` (`*` any run, `?` any one character).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // The last `*` seen and the text position it is retried from.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

impl Pinned {
    /// Compiles the patterns (each checked with [`valid_pattern`]); the
    /// index of a bad one is in the error.
    pub fn new(patterns: &[String]) -> Result<Pinned, (usize, String)> {
        let mut out = Vec::with_capacity(patterns.len());
        for (i, p) in patterns.iter().enumerate() {
            valid_pattern(p).map_err(|m| (i, m))?;
            out.push(if has_wildcard(p) {
                p.clone()
            } else {
                Reference::parse(p)
                    .map_err(|e| (i, e.to_string()))?
                    .to_string()
            });
        }
        Ok(Pinned { patterns: out })
    }

    /// Whether any of `names` (repo tags and digests) matches a pattern.
    pub fn matches<'a>(&self, names: impl IntoIterator<Item = &'a String>) -> bool {
        names
            .into_iter()
            .any(|n| self.patterns.iter().any(|p| glob_match(p, n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        // (pattern, text, matches)
        let cases = [
            ("*", "", true),
            ("*", "docker.io/library/busybox:1", true),
            ("docker.io/library/*", "docker.io/library/busybox:1", true),
            ("docker.io/*", "docker.io/library/busybox:1", true),
            ("*coredns*", "registry.k8s.io/coredns/coredns:v1.11.1", true),
            ("*coredns*", "registry.k8s.io/pause:3.10", false),
            ("quay.io/team/*", "quay.io/teamwork/x:1", false),
            ("*:v1.?", "r.io/a:v1.2", true),
            ("*:v1.?", "r.io/a:v1.23", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("*@sha256:*", "r.io/a@sha256:abc", true),
            ("*@sha256:*", "r.io/a:1", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
        ];
        for (p, t, want) in cases {
            assert_eq!(glob_match(p, t), want, "{p} ~ {t}");
        }
    }

    #[test]
    fn pinned_images() {
        let tags = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let pinned = Pinned::new(&[
            "busybox:1.36".to_string(),
            "registry.k8s.io/*".to_string(),
            "*@sha256:00ff*".to_string(),
        ])
        .unwrap();
        // (repo tags and digests, pinned)
        let cases = [
            (tags(&["docker.io/library/busybox:1.36"]), true),
            (tags(&["docker.io/library/busybox:1.37"]), false),
            (
                tags(&["x.io/a:1", "registry.k8s.io/coredns/coredns:v1"]),
                true,
            ),
            (tags(&["x.io/a@sha256:00ffee"]), true),
            (tags(&["x.io/a@sha256:11ffee"]), false),
            (tags(&[]), false),
        ];
        for (names, want) in cases {
            assert_eq!(pinned.matches(&names), want, "{names:?}");
        }
        assert!(!Pinned::default().matches(&tags(&["a"])));
    }

    #[test]
    fn bad_patterns() {
        for (patterns, index) in [
            (vec!["ok:1", ""], 1),
            (vec!["Upper/Case:1"], 0),
            (vec!["a b*"], 0),
            (vec!["*", &"x".repeat(MAX_PATTERN_LEN + 1)], 1),
        ] {
            let p: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
            assert_eq!(Pinned::new(&p).unwrap_err().0, index, "{patterns:?}");
        }
    }
}
