//! Registry hosts, configured exactly as containerd's `hosts.toml` files:
//! `<config_path>/<registry host>/hosts.toml`, falling back to
//! `<config_path>/_default/hosts.toml`, then to the built-in default.
//!
//! ```toml
//! server = "https://registry-1.docker.io"
//! [host."http://127.0.0.1:5000"]
//!   capabilities = ["pull", "resolve"]
//!   skip_verify = true
//!   ca = "/etc/certs/mirror.pem"
//!   override_path = false
//!   [host."http://127.0.0.1:5000".header]
//!     x-custom = "1"
//! ```

use reqwest::Url;
use std::path::{Path, PathBuf};

/// Errors of reading the hosts configuration.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// The file exists but cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("invalid registry hosts file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// What a host may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Fetch content by digest.
    pub pull: bool,
    /// Resolve a tag to a digest.
    pub resolve: bool,
    /// Push (never used by crius, kept for completeness).
    pub push: bool,
}

impl Capabilities {
    const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };
}

/// One host to try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryHost {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`.
    pub authority: String,
    /// Path prefix of API calls, normally `/v2`.
    pub path: String,
    /// What it may be used for.
    pub capabilities: Capabilities,
    /// Accept any TLS certificate.
    pub skip_verify: bool,
    /// Extra CA certificate files (PEM).
    pub ca: Vec<PathBuf>,
    /// Extra headers sent with every request.
    pub headers: Vec<(String, String)>,
}

impl RegistryHost {
    /// The URL of an API call: `<scheme>://<authority><path>/<repo>/<suffix>`.
    pub fn url(&self, repository: &str, suffix: &str) -> String {
        format!(
            "{}://{}{}/{}/{}",
            self.scheme, self.authority, self.path, repository, suffix
        )
    }
}

/// Whether a host is on loopback, where plain HTTP is the default.
pub fn is_loopback(domain: &str) -> bool {
    let host = match domain.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|c| c.is_ascii_digit()) && !h.is_empty() => h,
        _ => domain,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback())
}

/// The built-in server of a registry host.
pub fn default_server(domain: &str) -> String {
    if domain == "docker.io" {
        "https://registry-1.docker.io".to_string()
    } else if is_loopback(domain) {
        format!("http://{domain}")
    } else {
        format!("https://{domain}")
    }
}

#[derive(Debug, Default, serde::Deserialize)]
struct HostFields {
    #[serde(default)]
    capabilities: Option<Vec<String>>,
    #[serde(default)]
    skip_verify: Option<bool>,
    #[serde(default)]
    ca: Option<StringOrList>,
    #[serde(default)]
    client: Option<toml::Value>,
    #[serde(default)]
    override_path: Option<bool>,
    #[serde(default)]
    header: Option<toml::Table>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    fn into_vec(self) -> Vec<String> {
        match self {
            StringOrList::One(s) => vec![s],
            StringOrList::Many(v) => v,
        }
    }
}

#[derive(Debug, serde::Deserialize)]
struct HostsFile {
    #[serde(default)]
    server: Option<String>,
    #[serde(default)]
    host: Option<toml::Table>,
    #[serde(flatten)]
    top: HostFields,
}

fn build_host(
    url: &str,
    fields: HostFields,
    base_dir: &Path,
    file: &Path,
) -> Result<RegistryHost, HostsError> {
    let perr = |message: String| HostsError::Parse {
        path: file.to_path_buf(),
        message,
    };
    let parsed = Url::parse(url).map_err(|e| perr(format!("host {url:?}: {e}")))?;
    let scheme = parsed.scheme().to_string();
    if scheme != "http" && scheme != "https" {
        return Err(perr(format!("host {url:?}: scheme must be http or https")));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| perr(format!("host {url:?} has no host name")))?;
    let authority = match parsed.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let raw_path = parsed.path().trim_end_matches('/').to_string();
    let path = if fields.override_path.unwrap_or(false) {
        raw_path
    } else if raw_path.is_empty() {
        "/v2".to_string()
    } else if raw_path.ends_with("/v2") {
        raw_path
    } else {
        format!("{raw_path}/v2")
    };
    let capabilities = match fields.capabilities {
        None => Capabilities::ALL,
        Some(list) => {
            let mut c = Capabilities::default();
            for item in list {
                match item.as_str() {
                    "pull" => c.pull = true,
                    "resolve" => c.resolve = true,
                    "push" => c.push = true,
                    other => {
                        return Err(perr(format!("host {url:?}: unknown capability {other:?}")))
                    }
                }
            }
            c
        }
    };
    let ca = fields
        .ca
        .map(StringOrList::into_vec)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let p = PathBuf::from(p);
            if p.is_absolute() {
                p
            } else {
                base_dir.join(p)
            }
        })
        .collect();
    if fields.client.is_some() {
        tracing::warn!(
            host = url,
            "client certificates in hosts.toml are not supported; ignored"
        );
    }
    let mut headers = Vec::new();
    for (k, v) in fields.header.unwrap_or_default() {
        match v {
            toml::Value::String(s) => headers.push((k, s)),
            toml::Value::Array(items) => {
                for i in items {
                    match i {
                        toml::Value::String(s) => headers.push((k.clone(), s)),
                        _ => return Err(perr(format!("header {k:?} must be strings"))),
                    }
                }
            }
            _ => {
                return Err(perr(format!(
                    "header {k:?} must be a string or list of strings"
                )))
            }
        }
    }
    Ok(RegistryHost {
        scheme,
        authority,
        path,
        capabilities,
        skip_verify: fields.skip_verify.unwrap_or(false),
        ca,
        headers,
    })
}

/// Parses one `hosts.toml` for registry `domain`; `file` names it in errors
/// and anchors relative `ca` paths.
pub fn parse_hosts(domain: &str, text: &str, file: &Path) -> Result<Vec<RegistryHost>, HostsError> {
    let perr = |message: String| HostsError::Parse {
        path: file.to_path_buf(),
        message,
    };
    let parsed: HostsFile = toml::from_str(text).map_err(|e| perr(e.to_string()))?;
    let base_dir = file.parent().unwrap_or(Path::new("/"));
    let mut hosts = Vec::new();
    for (url, value) in parsed.host.unwrap_or_default() {
        let fields: HostFields = value
            .try_into()
            .map_err(|e: toml::de::Error| perr(format!("host {url:?}: {e}")))?;
        hosts.push(build_host(&url, fields, base_dir, file)?);
    }
    let server = parsed.server.unwrap_or_else(|| default_server(domain));
    let mut upstream = build_host(&server, parsed.top, base_dir, file)?;
    // As containerd does: Docker Hub's API is not served on docker.io itself.
    if upstream.authority == "docker.io" {
        upstream.authority = "registry-1.docker.io".to_string();
    }
    hosts.push(upstream);
    Ok(hosts)
}

/// The hosts to try for registry `domain`, in order: configured mirrors,
/// then the upstream server.
pub fn hosts_for(config_path: &Path, domain: &str) -> Result<Vec<RegistryHost>, HostsError> {
    // Only plain directory names are looked up (a domain never has '/').
    if !domain.contains('/') && !domain.starts_with('.') {
        for dir in [domain, "_default"] {
            let file = config_path.join(dir).join("hosts.toml");
            match std::fs::read_to_string(&file) {
                Ok(text) => return parse_hosts(domain, &text, &file),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {}
                Err(source) => return Err(HostsError::Read { path: file, source }),
            }
        }
    }
    let server = default_server(domain);
    build_host(
        &server,
        HostFields::default(),
        config_path,
        &config_path.join(domain),
    )
    .map(|h| vec![h])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(domain: &str, text: &str) -> Vec<RegistryHost> {
        parse_hosts(domain, text, Path::new("/etc/certs.d/x/hosts.toml")).unwrap()
    }

    #[test]
    fn path_mapping() {
        // (host URL line, override_path, repo, expected manifest URL)
        let cases = [
            (
                "http://127.0.0.1:5000",
                false,
                "a/b",
                "http://127.0.0.1:5000/v2/a/b/manifests/t",
            ),
            (
                "https://m.io/",
                false,
                "a/b",
                "https://m.io/v2/a/b/manifests/t",
            ),
            (
                "https://m.io/v2",
                false,
                "a/b",
                "https://m.io/v2/a/b/manifests/t",
            ),
            (
                "https://m.io/proxy",
                false,
                "x",
                "https://m.io/proxy/v2/x/manifests/t",
            ),
            (
                "https://m.io/v2/proj",
                true,
                "x",
                "https://m.io/v2/proj/x/manifests/t",
            ),
            ("https://m.io", true, "x", "https://m.io/x/manifests/t"),
        ];
        for (url, over, repo, want) in cases {
            let text = format!("[host.\"{url}\"]\noverride_path = {over}\n");
            let hosts = parse("gcr.io", &text);
            assert_eq!(hosts[0].url(repo, "manifests/t"), want, "{url}");
            assert_eq!(
                hosts[1].url(repo, "manifests/t"),
                format!("https://gcr.io/v2/{repo}/manifests/t")
            );
        }
    }

    #[test]
    fn full_file() {
        let text = r#"
server = "https://registry-1.docker.io"
ca = "upstream.pem"

[host."https://mirror-b.example"]
  capabilities = ["pull"]
  skip_verify = true
  ca = ["/abs/a.pem", "rel/b.pem"]
  [host."https://mirror-b.example".header]
    x-one = "1"
    x-many = ["a", "b"]

[host."http://mirror-a.example:8080"]
  capabilities = ["pull", "resolve"]
"#;
        let hosts = parse("docker.io", text);
        assert_eq!(hosts.len(), 3);
        // File order, not alphabetical order.
        assert_eq!(hosts[0].authority, "mirror-b.example");
        assert!(hosts[0].capabilities.pull && !hosts[0].capabilities.resolve);
        assert!(hosts[0].skip_verify);
        assert_eq!(
            hosts[0].ca,
            vec![
                PathBuf::from("/abs/a.pem"),
                PathBuf::from("/etc/certs.d/x/rel/b.pem")
            ]
        );
        assert_eq!(
            hosts[0].headers,
            vec![
                ("x-one".to_string(), "1".to_string()),
                ("x-many".to_string(), "a".to_string()),
                ("x-many".to_string(), "b".to_string())
            ]
        );
        assert_eq!(hosts[1].scheme, "http");
        assert_eq!(hosts[1].authority, "mirror-a.example:8080");
        assert!(hosts[1].capabilities.resolve);
        assert_eq!(hosts[2].authority, "registry-1.docker.io");
        assert_eq!(hosts[2].capabilities, Capabilities::ALL);
        assert_eq!(
            hosts[2].ca,
            vec![PathBuf::from("/etc/certs.d/x/upstream.pem")]
        );
        assert!(!hosts[2].skip_verify);
    }

    #[test]
    fn defaults_and_errors() {
        let h = parse("docker.io", "server = \"https://docker.io\"\n");
        assert_eq!(
            h[0].url("library/busybox", "manifests/1"),
            "https://registry-1.docker.io/v2/library/busybox/manifests/1"
        );
        let h = parse("quay.io", "");
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].url("a/b", "blobs/x"), "https://quay.io/v2/a/b/blobs/x");
        for (domain, want) in [
            ("docker.io", "https://registry-1.docker.io"),
            ("localhost:5000", "http://localhost:5000"),
            ("127.0.0.1:5000", "http://127.0.0.1:5000"),
            ("[::1]:5000", "http://[::1]:5000"),
            ("example.com:5000", "https://example.com:5000"),
        ] {
            assert_eq!(default_server(domain), want, "{domain}");
        }
        for bad in [
            "[host.\"ftp://x\"]\n",
            "[host.\"https://x\"]\ncapabilities = [\"fly\"]\n",
            "server = 5\n",
            "[host.\"https://x\"]\nheader = { a = 1 }\n",
        ] {
            assert!(
                parse_hosts("x.io", bad, Path::new("/h.toml")).is_err(),
                "{bad:?} should fail"
            );
        }
    }

    #[test]
    fn directory_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        // No directory at all: the built-in default.
        let h = hosts_for(&root.join("missing"), "localhost:5000").unwrap();
        assert_eq!(
            h[0].url("a", "manifests/t"),
            "http://localhost:5000/v2/a/manifests/t"
        );
        std::fs::create_dir_all(root.join("_default")).unwrap();
        std::fs::write(
            root.join("_default/hosts.toml"),
            "[host.\"http://127.0.0.1:1\"]\ncapabilities = [\"pull\", \"resolve\"]\n",
        )
        .unwrap();
        std::fs::create_dir_all(root.join("gcr.io")).unwrap();
        std::fs::write(
            root.join("gcr.io/hosts.toml"),
            "server = \"https://gcr.example\"\n",
        )
        .unwrap();
        let h = hosts_for(root, "gcr.io").unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].authority, "gcr.example");
        let h = hosts_for(root, "quay.io").unwrap();
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[0].authority, "127.0.0.1:1");
        assert_eq!(h[1].authority, "quay.io");
    }
}
