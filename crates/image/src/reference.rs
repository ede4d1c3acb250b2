//! Image references, normalised as Docker and kubelet do:
//! `busybox` is `docker.io/library/busybox:latest`.

use std::fmt;

/// The registry of references that name no registry.
pub const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DOMAIN: &str = "index.docker.io";
const OFFICIAL_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;

/// Errors of parsing a reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The reference is empty.
    #[error("the image reference is empty")]
    Empty,
    /// The reference does not follow the grammar.
    #[error("invalid image reference {reference:?}: {reason}")]
    Invalid {
        /// The reference as given.
        reference: String,
        /// What is wrong.
        reason: String,
    },
}

/// A normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host, with port if any (`docker.io`, `localhost:5000`).
    pub domain: String,
    /// Repository path inside the registry (`library/busybox`).
    pub path: String,
    /// Tag, if any. A reference with neither tag nor digest gets `latest`.
    pub tag: Option<String>,
    /// Digest (`sha256:<hex>`), if any.
    pub digest: Option<String>,
}

fn invalid(reference: &str, reason: impl Into<String>) -> ReferenceError {
    ReferenceError::Invalid {
        reference: reference.to_string(),
        reason: reason.into(),
    }
}

/// Whether `s` is `sha256:` followed by 64 lowercase hex digits.
pub fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(is_hex64)
}

/// Whether `s` is 64 lowercase hex digits.
pub fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// One path component: lowercase alphanumerics joined by `.`, `_`, `__` or
/// runs of `-`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: ".", "_", "__" or one or more "-".
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !is_alnum(b[i]) {
            return false;
        }
    }
    true
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || d.starts_with('[') => (h, Some(p)),
        _ => (d, None),
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|c| c.is_ascii_digit()) {
            return false;
        }
    }
    if host.starts_with('[') {
        return host.ends_with(']')
            && host.len() > 2
            && host[1..host.len() - 1]
                .bytes()
                .all(|c| c.is_ascii_hexdigit() || c == b':');
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        })
}

impl Reference {
    /// Parses and normalises a reference.
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if s.len() > MAX_NAME_LEN + 200 || s.trim() != s {
            return Err(invalid(s, "too long or has surrounding whitespace"));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => {
                if !is_digest(d) {
                    return Err(invalid(s, "the digest is not sha256:<64 hex digits>"));
                }
                (n, Some(d.to_string()))
            }
            None => (s, None),
        };
        // The tag follows the last ':' after the last '/'.
        let last_slash = name_tag.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => {
                let i = last_slash + i;
                (&name_tag[..i], Some(name_tag[i + 1..].to_string()))
            }
            None => (name_tag, None),
        };
        if let Some(t) = &tag {
            if !valid_tag(t) {
                return Err(invalid(s, format!("invalid tag {t:?}")));
            }
        }
        if name.is_empty() {
            return Err(invalid(s, "the repository name is empty"));
        }
        let (mut domain, mut path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
        };
        if domain == LEGACY_DOMAIN {
            domain = DEFAULT_DOMAIN.to_string();
        }
        if !valid_domain(&domain) {
            return Err(invalid(s, format!("invalid registry host {domain:?}")));
        }
        if domain == DEFAULT_DOMAIN && !path.contains('/') {
            path = format!("{OFFICIAL_PREFIX}{path}");
        }
        if path.len() > MAX_NAME_LEN {
            return Err(invalid(s, "the repository name is too long"));
        }
        if let Some(bad) = path.split('/').find(|c| !valid_component(c)) {
            let reason = if bad.bytes().any(|c| c.is_ascii_uppercase()) {
                "repository names must be lowercase".to_string()
            } else {
                format!("invalid repository path component {bad:?}")
            };
            return Err(invalid(s, reason));
        }
        let tag = match (&tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            _ => tag,
        };
        Ok(Reference {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// `domain/path`, e.g. `docker.io/library/busybox`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// `domain/path:tag`, when the reference has a tag.
    pub fn repo_tag(&self) -> Option<String> {
        self.tag
            .as_ref()
            .map(|t| format!("{}:{}", self.repository(), t))
    }

    /// `domain/path@digest` for the given manifest digest.
    pub fn repo_digest(&self, digest: &str) -> String {
        format!("{}@{}", self.repository(), digest)
    }

    /// What to ask the registry for: the digest when given, else the tag.
    pub fn object(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or(DEFAULT_TAG)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repository())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalisation() {
        let d = D;
        let cases: Vec<(String, &str)> = vec![
            ("busybox".into(), "docker.io/library/busybox:latest"),
            ("busybox:1.36".into(), "docker.io/library/busybox:1.36"),
            ("library/busybox".into(), "docker.io/library/busybox:latest"),
            ("user/app:v1".into(), "docker.io/user/app:v1"),
            (
                "index.docker.io/library/busybox".into(),
                "docker.io/library/busybox:latest",
            ),
            ("docker.io/busybox:1".into(), "docker.io/library/busybox:1"),
            ("gcr.io/a/b:t".into(), "gcr.io/a/b:t"),
            ("localhost/app".into(), "localhost/app:latest"),
            ("localhost:5000/app:x".into(), "localhost:5000/app:x"),
            ("127.0.0.1:5000/a/b/c".into(), "127.0.0.1:5000/a/b/c:latest"),
            (
                "registry.k8s.io/pause:3.10".into(),
                "registry.k8s.io/pause:3.10",
            ),
            ("a-b.c-d.io/x__y".into(), "a-b.c-d.io/x__y:latest"),
            ("my_org/my-app".into(), "docker.io/my_org/my-app:latest"),
        ];
        for (input, want) in cases {
            let r = Reference::parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.to_string(), want, "{input}");
        }
        // Digest forms keep no default tag; name:tag@digest keeps both.
        let r = Reference::parse(&format!("busybox@{d}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{d}"));
        assert_eq!(r.object(), D);
        let r = Reference::parse(&format!("localhost:5000/a:t@{d}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("t"));
        assert_eq!(r.object(), D);
        assert_eq!(r.repo_tag().unwrap(), "localhost:5000/a:t");
        assert_eq!(r.repo_digest(D), format!("localhost:5000/a@{d}"));
    }

    #[test]
    fn rejected() {
        let cases = [
            ("", "empty"),
            ("Busybox", "lowercase"),
            ("busybox:", "invalid tag"),
            ("busybox:-x", "invalid tag"),
            ("busybox@sha256:abc", "digest"),
            ("busybox@md5:0123", "digest"),
            ("a//b", "component"),
            ("a/b/", "component"),
            ("-a", "component"),
            ("a..b", "component"),
            ("a/.b", "component"),
            (" busybox", "whitespace"),
            ("bad_host.io:x/a", "registry host"),
            ("host.io:99999999/a", "registry host"),
            ("a/b c", "component"),
            (":tag", "empty"),
        ];
        for (input, want) in cases {
            let err = Reference::parse(input).expect_err(input).to_string();
            assert!(err.contains(want), "{input:?}: {err}");
        }
    }
}
