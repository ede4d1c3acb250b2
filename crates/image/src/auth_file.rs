//! Node-level registry credentials: a `~/.docker/config.json` or
//! containers-auth.json file (CRI-O's `global_auth_file`), used for pulls
//! whose request carries no credentials.
//!
//! ```json
//! {"auths": {
//!   "registry.example.com": {"auth": "dXNlcjpwYXNz"},
//!   "https://index.docker.io/v1/": {"username": "u", "password": "p"},
//!   "quay.io/team/app": {"auth": "..."}
//! }}
//! ```
//!
//! A key with a scheme is Docker's form: its path is ignored. A key without
//! one may name a repository namespace (`host/path`), which wins over the
//! bare host for repositories under it. Docker Hub's names (`docker.io`,
//! `index.docker.io`, `registry-1.docker.io`, `registry.hub.docker.com`)
//! are one registry. Nothing of the file's content ever appears in an error.

use crate::registry::Auth;
use std::io::Read;
use std::path::Path;

/// The largest credentials file read.
pub const MAX_AUTH_FILE_SIZE: u64 = 1 << 20;

/// Parsed credentials, by registry host and repository namespace.
#[derive(Default)]
pub struct AuthFile {
    /// (host, repository namespace or "", credentials)
    entries: Vec<(String, String, Auth)>,
}

impl std::fmt::Debug for AuthFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(h, p, _)| (h, p)))
            .finish()
    }
}

#[derive(serde::Deserialize)]
struct File {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, Entry>,
}

#[derive(Default, serde::Deserialize)]
#[serde(default)]
struct Entry {
    auth: String,
    username: String,
    password: String,
    identitytoken: String,
    registrytoken: String,
}

fn canonical_host(host: &str) -> String {
    let h = host.to_ascii_lowercase();
    match h.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => h,
    }
}

/// The host and repository namespace a key names.
fn split_key(key: &str) -> (String, String) {
    let k = key.trim();
    if let Some(rest) = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
    {
        let host = rest.split('/').next().unwrap_or("");
        return (canonical_host(host), String::new());
    }
    let (host, path) = k.split_once('/').unwrap_or((k, ""));
    (canonical_host(host), path.trim_matches('/').to_string())
}

impl AuthFile {
    /// Parses the file's text. Errors say where, never what.
    pub fn parse(text: &str) -> Result<AuthFile, String> {
        let file: File = serde_json::from_str(text).map_err(|e| {
            format!(
                "not a valid credentials file ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            )
        })?;
        let mut entries = Vec::new();
        for (key, e) in file.auths {
            let auth = Auth::from_cri(
                &e.username,
                &e.password,
                &e.auth,
                &e.identitytoken,
                &e.registrytoken,
            )
            .map_err(|err| format!("entry {key:?}: {err}"))?;
            let (host, path) = split_key(&key);
            if host.is_empty() {
                return Err(format!("entry {key:?} names no registry host"));
            }
            if let Some(auth) = auth {
                entries.push((host, path, auth));
            }
        }
        Ok(AuthFile { entries })
    }

    /// Reads and parses `path`; `None` when it does not exist. Larger than
    /// [`MAX_AUTH_FILE_SIZE`] is an error (blocking).
    pub fn read(path: &Path) -> Result<Option<AuthFile>, String> {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let mut text = String::new();
        file.take(MAX_AUTH_FILE_SIZE + 1)
            .read_to_string(&mut text)
            .map_err(|e| e.to_string())?;
        if text.len() as u64 > MAX_AUTH_FILE_SIZE {
            return Err(format!("larger than {MAX_AUTH_FILE_SIZE} bytes"));
        }
        AuthFile::parse(&text).map(Some)
    }

    /// The credentials for `repository` on registry `host` (`host[:port]`):
    /// the entry of the longest namespace containing the repository, the
    /// bare host's otherwise.
    pub fn lookup(&self, host: &str, repository: &str) -> Option<Auth> {
        let host = canonical_host(host);
        self.entries
            .iter()
            .filter(|(h, p, _)| {
                *h == host
                    && (p.is_empty()
                        || repository == p
                        || repository
                            .strip_prefix(p.as_str())
                            .is_some_and(|r| r.starts_with('/')))
            })
            .max_by_key(|(_, p, _)| p.len())
            .map(|(_, _, a)| a.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(a: Option<Auth>) -> Option<(String, String)> {
        a.map(|a| (a.username, a.password))
    }

    #[test]
    fn lookups() {
        let text = r#"{
            "auths": {
                "https://index.docker.io/v1/": {"auth": "aHViOmh1YnB3"},
                "registry.example.com": {"username": "plain", "password": "pw"},
                "registry.example.com/team": {"auth": "dGVhbTp0cHc="},
                "registry.example.com/team/app": {"username": "app", "password": "apw"},
                "http://127.0.0.1:5000/v2/": {"auth": "bG9jYWw6bHB3"},
                "quay.io": {"auth": ""},
                "tok.io": {"identitytoken": "refresh"}
            },
            "credsStore": "desktop",
            "HttpHeaders": {"User-Agent": "x"}
        }"#;
        let f = AuthFile::parse(text).unwrap();
        let s = |u: &str, p: &str| Some((u.to_string(), p.to_string()));
        // (host, repository, expected user and password)
        let cases = [
            ("docker.io", "library/busybox", s("hub", "hubpw")),
            ("registry-1.docker.io", "library/busybox", s("hub", "hubpw")),
            ("registry.example.com", "other/x", s("plain", "pw")),
            ("registry.example.com", "team", s("team", "tpw")),
            ("registry.example.com", "team/lib", s("team", "tpw")),
            ("registry.example.com", "team/app", s("app", "apw")),
            ("registry.example.com", "team/app/sub", s("app", "apw")),
            ("registry.example.com", "teamwork/x", s("plain", "pw")),
            ("REGISTRY.example.com", "x", s("plain", "pw")),
            ("127.0.0.1:5000", "a", s("local", "lpw")),
            ("127.0.0.1:5001", "a", None),
            ("quay.io", "a", None),
            ("example.com", "a", None),
        ];
        for (host, repo, want) in cases {
            assert_eq!(user(f.lookup(host, repo)), want, "{host} {repo}");
        }
        assert_eq!(f.lookup("tok.io", "a").unwrap().identity_token, "refresh");
        assert!(AuthFile::parse("{}")
            .unwrap()
            .lookup("docker.io", "a")
            .is_none());
    }

    #[test]
    fn errors_never_show_content() {
        for bad in [
            r#"{"auths": {"r.io": {"auth": "c2VjcmV0LW5vLWNvbG9u"}}}"#,
            r#"{"auths": {"r.io": {"auth": "%%secret%%"}}}"#,
            r#"{"auths": {"r.io": {"password": 5, "username": "secret"}}}"#,
            r#"{"auths": {"r.io": "secret"}}"#,
            r#"{"auths": {"": {"auth": "c2VjcmV0OnNlY3JldA=="}}}"#,
            "secret",
        ] {
            let err = AuthFile::parse(bad).unwrap_err();
            assert!(!err.contains("secret"), "{bad}: {err}");
            assert!(!err.contains("c2VjcmV0"), "{bad}: {err}");
        }
        let f = AuthFile::parse(r#"{"auths": {"r.io": {"auth": "dTpzZWNyZXQ="}}}"#).unwrap();
        assert!(!format!("{f:?}").contains("secret"));
    }

    #[test]
    fn read_is_bounded_and_missing_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(AuthFile::read(&dir.path().join("none.json"))
            .unwrap()
            .is_none());
        let big = dir.path().join("big.json");
        std::fs::write(&big, vec![b' '; MAX_AUTH_FILE_SIZE as usize + 1]).unwrap();
        assert!(AuthFile::read(&big).unwrap_err().contains("larger than"));
        let ok = dir.path().join("ok.json");
        std::fs::write(&ok, r#"{"auths": {"r.io": {"auth": "dTpw"}}}"#).unwrap();
        let f = AuthFile::read(&ok).unwrap().unwrap();
        assert_eq!(user(f.lookup("r.io", "x")), Some(("u".into(), "p".into())));
    }
}
