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
//!   client = [["/etc/certs/client.pem", "/etc/certs/client.key"]]
//!   override_path = false
//!   [host."http://127.0.0.1:5000".header]
//!     x-custom = "1"
//! ```
//!
//! `client` takes containerd's three forms: one file holding certificate and
//! key (`client = "both.pem"`), a list of such files, or a list of
//! `[cert, key]` pairs. A directory without `hosts.toml` is read the Docker
//! way (`certs.d/<host>/*.crt` are CAs, `*.cert` with the `*.key` of the same
//! name are client pairs) for the upstream server.
//!
//! Requests to a host other than the reference's own registry (a mirror)
//! carry containerd's `ns=<registry>` query parameter ([`RegistryHost::request_url`]).

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
    /// Client certificates (mTLS): certificate file and key file, `None`
    /// when the key is in the certificate file.
    pub client: Vec<ClientPair>,
    /// Extra headers sent with every request.
    pub headers: Vec<(String, String)>,
}

/// A client certificate for TLS client authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPair {
    /// The certificate (chain) file, PEM.
    pub cert: PathBuf,
    /// The private key file, PEM; `None`: the key is in `cert`.
    pub key: Option<PathBuf>,
}

impl RegistryHost {
    /// The URL of an API call: `<scheme>://<authority><path>/<repo>/<suffix>`.
    pub fn url(&self, repository: &str, suffix: &str) -> String {
        format!(
            "{}://{}{}/{}/{}",
            self.scheme, self.authority, self.path, repository, suffix
        )
    }

    /// Whether this host serves `domain`'s content on its behalf (a mirror
    /// or another server), as containerd decides: any other host than the
    /// registry itself, Docker Hub's API host counting as `docker.io`.
    pub fn is_proxy_for(&self, domain: &str) -> bool {
        self.authority != domain
            && !(domain == "docker.io" && self.authority == "registry-1.docker.io")
    }

    /// The URL of a manifest or blob request for `domain`'s `repository`:
    /// [`RegistryHost::url`], with containerd's `ns=<domain>` query
    /// parameter when the host is a proxy, so that one pull-through cache
    /// can serve several registries.
    pub fn request_url(&self, domain: &str, repository: &str, suffix: &str) -> String {
        let url = self.url(repository, suffix);
        if !self.is_proxy_for(domain) {
            return url;
        }
        match Url::parse(&url) {
            Ok(mut u) => {
                u.query_pairs_mut().append_pair("ns", domain);
                u.to_string()
            }
            Err(_) => url,
        }
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
        .iter()
        .map(|p| absolute(p, base_dir))
        .collect();
    let client = match fields.client {
        None => Vec::new(),
        Some(v) => parse_client(&v, base_dir).map_err(|m| perr(format!("host {url:?}: {m}")))?,
    };
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
        client,
        headers,
    })
}

fn absolute(p: &str, base_dir: &Path) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_absolute() {
        p
    } else {
        base_dir.join(p)
    }
}

/// containerd's `client` forms: `"both.pem"`, `["a.pem", "b.pem"]` (each
/// file holds certificate and key), `[["cert.pem", "key.pem"], ...]`.
fn parse_client(value: &toml::Value, base_dir: &Path) -> Result<Vec<ClientPair>, String> {
    let single = |s: &str| ClientPair {
        cert: absolute(s, base_dir),
        key: None,
    };
    match value {
        toml::Value::String(s) => Ok(vec![single(s)]),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| match item {
                toml::Value::String(s) => Ok(single(s)),
                toml::Value::Array(pair) => match pair.as_slice() {
                    [toml::Value::String(c), toml::Value::String(k)] => Ok(ClientPair {
                        cert: absolute(c, base_dir),
                        key: Some(absolute(k, base_dir)),
                    }),
                    _ => Err(format!(
                        "client pair {item} must be two file names [cert, key]"
                    )),
                },
                other => Err(format!(
                    "client entry {other} must be a file name or a [cert, key] pair"
                )),
            })
            .collect(),
        other => Err(format!(
            "client must be a file name, a list of them or of [cert, key] pairs, not {other}"
        )),
    }
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
/// then the upstream server. As containerd: the first existing directory of
/// `<config_path>/<domain>` and `<config_path>/_default` is used; its
/// `hosts.toml`, or without one its Docker-style certificate files.
pub fn hosts_for(config_path: &Path, domain: &str) -> Result<Vec<RegistryHost>, HostsError> {
    // Only plain directory names are looked up (a domain never has '/').
    if !domain.contains('/') && !domain.starts_with('.') {
        for dir in [domain, "_default"] {
            let dir = config_path.join(dir);
            match std::fs::metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(HostsError::Read { path: dir, source }),
            }
            let file = dir.join("hosts.toml");
            return match std::fs::read_to_string(&file) {
                Ok(text) => parse_hosts(domain, &text, &file),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let (ca, client) = docker_cert_files(&dir)?;
                    default_host(domain, ca, client, &dir)
                }
                Err(source) => Err(HostsError::Read { path: file, source }),
            };
        }
    }
    default_host(domain, Vec::new(), Vec::new(), config_path)
}

/// The built-in upstream host of `domain` with TLS material. A loopback
/// registry is plain HTTP by default, but HTTPS once certificates are
/// configured for it (containerd tries HTTPS first then).
fn default_host(
    domain: &str,
    ca: Vec<PathBuf>,
    client: Vec<ClientPair>,
    dir: &Path,
) -> Result<Vec<RegistryHost>, HostsError> {
    let mut server = default_server(domain);
    let tls = !ca.is_empty() || !client.is_empty();
    if tls && !domain.ends_with(":80") {
        if let Some(rest) = server.strip_prefix("http://") {
            server = format!("https://{rest}");
        }
    }
    let mut host = build_host(&server, HostFields::default(), dir, &dir.join(domain))?;
    host.ca = ca;
    host.client = client;
    Ok(vec![host])
}

/// Docker's `certs.d/<host>/` layout: `*.crt` are CA certificates, `*.cert`
/// client certificates with their key in the `*.key` of the same name (or
/// in the `.cert` file itself when there is none). Sorted by name.
pub fn docker_cert_files(dir: &Path) -> Result<(Vec<PathBuf>, Vec<ClientPair>), HostsError> {
    let read_err = |source| HostsError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_err)? {
        let entry = entry.map_err(read_err)?;
        if entry.file_type().map_err(read_err)?.is_dir() {
            continue;
        }
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    let mut ca = Vec::new();
    let mut client = Vec::new();
    for name in &names {
        if name.ends_with(".crt") {
            ca.push(dir.join(name));
        } else if let Some(stem) = name.strip_suffix(".cert") {
            let key = format!("{stem}.key");
            client.push(ClientPair {
                cert: dir.join(name),
                key: names.contains(&key).then(|| dir.join(&key)),
            });
        }
    }
    Ok((ca, client))
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

    #[test]
    fn client_certificate_forms() {
        let pair = |c: &str, k: Option<&str>| ClientPair {
            cert: PathBuf::from(c),
            key: k.map(PathBuf::from),
        };
        // (the `client` value, the pairs)
        let cases = [
            (r#""both.pem""#, vec![pair("/etc/certs.d/x/both.pem", None)]),
            (
                r#"["/a.pem", "b.pem"]"#,
                vec![pair("/a.pem", None), pair("/etc/certs.d/x/b.pem", None)],
            ),
            (
                r#"[["c.pem", "/k.pem"]]"#,
                vec![pair("/etc/certs.d/x/c.pem", Some("/k.pem"))],
            ),
            (
                r#"[["c1", "k1"], "both", ["c2", "k2"]]"#,
                vec![
                    pair("/etc/certs.d/x/c1", Some("/etc/certs.d/x/k1")),
                    pair("/etc/certs.d/x/both", None),
                    pair("/etc/certs.d/x/c2", Some("/etc/certs.d/x/k2")),
                ],
            ),
        ];
        for (value, want) in cases {
            let hosts = parse("r.io", &format!("client = {value}\n"));
            assert_eq!(hosts[0].client, want, "upstream {value}");
            let hosts = parse(
                "r.io",
                &format!("[host.\"https://m.io\"]\nclient = {value}\n"),
            );
            assert_eq!(hosts[0].client, want, "mirror {value}");
            assert!(hosts[1].client.is_empty());
        }
        for bad in [
            "client = 5\n",
            "client = [[\"only-one\"]]\n",
            "client = [[\"a\", \"b\", \"c\"]]\n",
            "client = [[\"a\", 1]]\n",
            "client = [1]\n",
        ] {
            let err = parse_hosts("x.io", bad, Path::new("/h.toml")).unwrap_err();
            assert!(err.to_string().contains("client"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn ns_parameter_on_proxies_only() {
        let host = |url: &str| parse("x.io", &format!("[host.\"{url}\"]\n")).remove(0);
        // (host URL, reference domain, suffix, expected URL)
        let cases = [
            (
                "http://127.0.0.1:5000",
                "docker.io",
                "manifests/1",
                "http://127.0.0.1:5000/v2/library/b/manifests/1?ns=docker.io",
            ),
            (
                "https://cache.local/v2/proj",
                "quay.io:8443",
                "blobs/sha256:ab",
                "https://cache.local/v2/proj/v2/library/b/blobs/sha256:ab?ns=quay.io%3A8443",
            ),
            // The registry itself, and Docker Hub's API host for docker.io.
            (
                "https://quay.io",
                "quay.io",
                "manifests/1",
                "https://quay.io/v2/library/b/manifests/1",
            ),
            (
                "https://registry-1.docker.io",
                "docker.io",
                "blobs/sha256:ab",
                "https://registry-1.docker.io/v2/library/b/blobs/sha256:ab",
            ),
            (
                "http://localhost:5000",
                "localhost:5000",
                "manifests/1",
                "http://localhost:5000/v2/library/b/manifests/1",
            ),
        ];
        for (url, domain, suffix, want) in cases {
            assert_eq!(
                host(url).request_url(domain, "library/b", suffix),
                want,
                "{url} for {domain}"
            );
        }
        // A hosts.toml `server` other than the registry is a proxy too.
        let h = parse("gcr.io", "server = \"https://gcr.example\"\n");
        assert_eq!(
            h[0].request_url("gcr.io", "a", "manifests/t"),
            "https://gcr.example/v2/a/manifests/t?ns=gcr.io"
        );
    }

    #[test]
    fn docker_style_certificate_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let host = root.join("127.0.0.1:5443");
        std::fs::create_dir_all(host.join("sub.crt")).unwrap();
        for f in [
            "ca.crt",
            "b.crt",
            "client.cert",
            "client.key",
            "lone.cert",
            "x.pem",
        ] {
            std::fs::write(host.join(f), "").unwrap();
        }
        let h = hosts_for(root, "127.0.0.1:5443").unwrap();
        assert_eq!(h.len(), 1);
        // Certificates configured: HTTPS even on loopback.
        assert_eq!(
            h[0].url("a", "manifests/t"),
            "https://127.0.0.1:5443/v2/a/manifests/t"
        );
        assert_eq!(h[0].ca, vec![host.join("b.crt"), host.join("ca.crt")]);
        assert_eq!(
            h[0].client,
            vec![
                ClientPair {
                    cert: host.join("client.cert"),
                    key: Some(host.join("client.key")),
                },
                ClientPair {
                    cert: host.join("lone.cert"),
                    key: None,
                },
            ]
        );
        // hosts.toml wins over the certificate files.
        std::fs::write(host.join("hosts.toml"), "ca = \"x.pem\"\n").unwrap();
        let h = hosts_for(root, "127.0.0.1:5443").unwrap();
        assert_eq!(h[0].ca, vec![host.join("x.pem")]);
        assert!(h[0].client.is_empty());
        assert_eq!(h[0].scheme, "http", "hosts.toml keeps the default scheme");
        // A host directory without files: the plain default, and _default
        // is not consulted (containerd uses the first directory found).
        std::fs::create_dir_all(root.join("_default")).unwrap();
        std::fs::write(
            root.join("_default/hosts.toml"),
            "[host.\"http://127.0.0.1:1\"]\n",
        )
        .unwrap();
        std::fs::create_dir_all(root.join("empty.io")).unwrap();
        let h = hosts_for(root, "empty.io").unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].url("a", "blobs/x"), "https://empty.io/v2/a/blobs/x");
        assert!(h[0].ca.is_empty() && h[0].client.is_empty());
        assert_eq!(hosts_for(root, "other.io").unwrap().len(), 2);
    }
}
