//! OCI distribution API v2 client: manifest resolution and blob fetches over
//! the configured hosts (mirrors first, then upstream), with anonymous,
//! basic and bearer-token authentication.

use crate::auth_file::AuthFile;
use crate::content::digest_of;
use crate::hosts::{self, ClientPair, HostsError, RegistryHost};
use crate::manifest;
use crate::reference::Reference;
use base64::Engine;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest manifest accepted ([`manifest::MAX_MANIFEST_SIZE`]).
pub const MAX_MANIFEST_SIZE: usize = manifest::MAX_MANIFEST_SIZE as usize;
const MAX_TOKEN_SIZE: usize = 1 << 20;
const USER_AGENT: &str = concat!("crius/", env!("CARGO_PKG_VERSION"));

/// Errors of talking to registries.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The hosts configuration is wrong.
    #[error(transparent)]
    Hosts(#[from] HostsError),
    /// A CA file of hosts.toml cannot be used.
    #[error("cannot use CA certificate {path}: {message}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A client certificate of hosts.toml or certs.d cannot be used.
    #[error("cannot use client certificate {path}: {message}")]
    ClientCertificate {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The node's credentials file (`registry.auth_file`) cannot be used.
    #[error("cannot use the credentials file {path} (registry.auth_file): {message}")]
    AuthFile {
        /// The file.
        path: PathBuf,
        /// What is wrong (never the file's content).
        message: String,
    },
    /// The HTTP client cannot be built.
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
    /// The credentials given are malformed.
    #[error("invalid credentials: {0}")]
    InvalidAuth(String),
    /// The registry has no such manifest or blob.
    #[error("{what} not found at {url}")]
    NotFound {
        /// What was asked for.
        what: String,
        /// The URL that answered 404.
        url: String,
    },
    /// The registry refused the credentials (or their absence).
    #[error("access to {url} denied: {message}")]
    Unauthorized {
        /// The URL.
        url: String,
        /// The registry's reason.
        message: String,
    },
    /// A request failed on the network.
    #[error("request to {url} failed: {}", error_chain(source))]
    Http {
        /// The URL.
        url: String,
        /// The error.
        source: reqwest::Error,
    },
    /// The registry answered with an unexpected status.
    #[error("{url} answered {status}: {body}")]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// Start of the body.
        body: String,
    },
    /// A manifest or token is larger than allowed.
    #[error("response from {url} is larger than {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The limit.
        limit: usize,
    },
    /// The manifest's digest is not what was asked for.
    #[error("manifest digest mismatch at {url}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The URL.
        url: String,
        /// The digest asked for.
        expected: String,
        /// What the body hashed to.
        actual: String,
    },
    /// No host is configured for this operation.
    #[error("no registry host of {domain} may be used to {operation}")]
    NoHost {
        /// The registry.
        domain: String,
        /// `resolve` or `pull`.
        operation: &'static str,
    },
    /// A bearer token response is unusable.
    #[error("invalid token response from {url}: {message}")]
    Token {
        /// The token URL.
        url: String,
        /// What is wrong.
        message: String,
    },
}

/// An error with its causes (reqwest's own message hides them, such as
/// why a TLS handshake failed).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = c.source();
    }
    out
}

/// Credentials for a pull, as the CRI `AuthConfig` carries them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Auth {
    /// User name for basic auth or the token endpoint.
    pub username: String,
    /// Password.
    pub password: String,
    /// An OAuth2 refresh token for the token endpoint.
    pub identity_token: String,
    /// A bearer token sent to the registry as is.
    pub registry_token: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Builds credentials from the CRI fields; `auth` is base64 `user:pass`
    /// and fills in username and password when those are empty. `None` when
    /// everything is empty.
    pub fn from_cri(
        username: &str,
        password: &str,
        auth: &str,
        identity_token: &str,
        registry_token: &str,
    ) -> Result<Option<Auth>, RegistryError> {
        let mut a = Auth {
            username: username.to_string(),
            password: password.to_string(),
            identity_token: identity_token.to_string(),
            registry_token: registry_token.to_string(),
        };
        if !auth.is_empty() && a.username.is_empty() {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| RegistryError::InvalidAuth(format!("auth is not base64: {e}")))?;
            let text = String::from_utf8(raw)
                .map_err(|_| RegistryError::InvalidAuth("auth is not UTF-8".into()))?;
            let (u, p) = text
                .split_once(':')
                .ok_or_else(|| RegistryError::InvalidAuth("auth is not user:password".into()))?;
            a.username = u.to_string();
            a.password = p.to_string();
        }
        if a == Auth::default() {
            Ok(None)
        } else {
            Ok(Some(a))
        }
    }

    fn basic(&self) -> Option<String> {
        if self.username.is_empty() {
            return None;
        }
        let raw = format!("{}:{}", self.username, self.password);
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        ))
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// `basic` or `bearer`, lowercased.
    pub scheme: String,
    /// Parameters (keys lowercased).
    pub params: HashMap<String, String>,
}

/// Parses the first challenge of a `WWW-Authenticate` header.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = match header.split_once(char::is_whitespace) {
        Some((s, r)) => (s, r),
        None => (header, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek() != Some(&'=') {
            // A new scheme begins (several challenges): stop here.
            break;
        }
        chars.next();
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        params.insert(key.to_ascii_lowercase(), value);
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

/// A fetched manifest.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// Its digest (computed from the body).
    pub digest: String,
    /// The response Content-Type.
    pub content_type: String,
    /// The body.
    pub body: Vec<u8>,
}

/// A resolver for one repository: the hosts to try and the pull's
/// credentials and tokens.
pub struct Resolver {
    domain: String,
    repository: String,
    /// Each host with its client and credentials.
    hosts: Vec<(RegistryHost, reqwest::Client, Option<Auth>)>,
    /// Authorization header value per host authority, learnt from challenges.
    authz: tokio::sync::Mutex<HashMap<String, String>>,
}

fn build_client(host: &RegistryHost) -> Result<reqwest::Client, RegistryError> {
    let mut b = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(120))
        .danger_accept_invalid_certs(host.skip_verify);
    for path in &host.ca {
        let pem = std::fs::read(path).map_err(|e| RegistryError::Ca {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| RegistryError::Ca {
            path: path.clone(),
            message: e.to_string(),
        })?;
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    if let Some(identity) = client_identity(&host.client)? {
        b = b.identity(identity);
    }
    b.build().map_err(|e| RegistryError::Client(e.to_string()))
}

fn has_pem(text: &str, label: &str) -> bool {
    text.lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.contains(label))
}

/// The TLS client identity of a host's client certificates. As Go's TLS
/// client without a selection callback, only the first one is offered. A
/// flat list of a certificate-only file and a key-only file is taken as one
/// pair (`client = ["cert.pem", "key.pem"]`), where containerd would need
/// the key in each file.
fn client_identity(pairs: &[ClientPair]) -> Result<Option<reqwest::Identity>, RegistryError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| RegistryError::ClientCertificate {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    };
    let Some(first) = pairs.first() else {
        return Ok(None);
    };
    let cert = read(&first.cert)?;
    // (key text, its file, how many entries the identity used)
    let (key, key_path, used) = match (&first.key, pairs) {
        (Some(k), _) => (read(k)?, k.clone(), 1),
        (None, [_, next]) if next.key.is_none() && !has_pem(&cert, "PRIVATE KEY") => {
            let key = read(&next.cert)?;
            if has_pem(&key, "CERTIFICATE") {
                (cert.clone(), first.cert.clone(), 1)
            } else {
                (key, next.cert.clone(), 2)
            }
        }
        (None, _) => (cert.clone(), first.cert.clone(), 1),
    };
    if pairs.len() > used {
        tracing::warn!(
            cert = %first.cert.display(),
            "several client certificates configured; only the first is used"
        );
    }
    if !has_pem(&cert, "CERTIFICATE") {
        return Err(RegistryError::ClientCertificate {
            path: first.cert.clone(),
            message: "no PEM certificate in it".into(),
        });
    }
    if !has_pem(&key, "PRIVATE KEY") {
        return Err(RegistryError::ClientCertificate {
            path: key_path,
            message: "no PEM private key in it".into(),
        });
    }
    reqwest::Identity::from_pem(format!("{key}\n{cert}").as_bytes())
        .map(Some)
        .map_err(|e| RegistryError::ClientCertificate {
            path: first.cert.clone(),
            message: e.to_string(),
        })
}

async fn read_limited(
    url: &str,
    resp: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, RegistryError> {
    use futures_util::StreamExt;
    if resp.content_length().is_some_and(|l| l > limit as u64) {
        return Err(RegistryError::TooLarge {
            url: url.to_string(),
            limit,
        });
    }
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|source| RegistryError::Http {
            url: url.to_string(),
            source,
        })?;
        if out.len() + chunk.len() > limit {
            return Err(RegistryError::TooLarge {
                url: url.to_string(),
                limit,
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

impl Resolver {
    /// A resolver for `reference`'s repository, with hosts read from
    /// `config_path` (containerd's `certs.d` layout). The request's `auth`
    /// is used for every host; without it, each host's entry of the node's
    /// `auth_file`, read now (blocking).
    pub fn new(
        config_path: &Path,
        reference: &Reference,
        auth: Option<Auth>,
        auth_file: Option<&Path>,
    ) -> Result<Resolver, RegistryError> {
        let configured = hosts::hosts_for(config_path, &reference.domain)?;
        let file = match (&auth, auth_file) {
            (None, Some(path)) => {
                AuthFile::read(path).map_err(|message| RegistryError::AuthFile {
                    path: path.to_path_buf(),
                    message,
                })?
            }
            _ => None,
        };
        let mut hosts = Vec::with_capacity(configured.len());
        for h in configured {
            let c = build_client(&h)?;
            let host_auth = match (&auth, &file) {
                (Some(a), _) => Some(a.clone()),
                (None, Some(f)) => f.lookup(&h.authority, &reference.path).or_else(|| {
                    (!h.is_proxy_for(&reference.domain))
                        .then(|| f.lookup(&reference.domain, &reference.path))
                        .flatten()
                }),
                (None, None) => None,
            };
            hosts.push((h, c, host_auth));
        }
        Ok(Resolver {
            domain: reference.domain.clone(),
            repository: reference.path.clone(),
            hosts,
            authz: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    async fn authorize(
        &self,
        host: &RegistryHost,
        client: &reqwest::Client,
        auth: Option<&Auth>,
        url: &str,
        challenge: &Challenge,
    ) -> Result<String, RegistryError> {
        let denied = |message: String| RegistryError::Unauthorized {
            url: url.to_string(),
            message,
        };
        match challenge.scheme.as_str() {
            "basic" => auth.and_then(Auth::basic).ok_or_else(|| {
                denied("the registry requires credentials and none were given".into())
            }),
            "bearer" => {
                let realm = challenge
                    .params
                    .get("realm")
                    .ok_or_else(|| denied("bearer challenge without realm".into()))?;
                if !(realm.starts_with("https://") || realm.starts_with("http://")) {
                    return Err(denied(format!(
                        "bearer realm {realm:?} is not an http(s) URL"
                    )));
                }
                let service = challenge.params.get("service").cloned().unwrap_or_default();
                let scope = challenge
                    .params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
                let auth = auth.cloned().unwrap_or_default();
                let req = if !auth.identity_token.is_empty() {
                    client.post(realm.as_str()).form(&[
                        ("grant_type", "refresh_token"),
                        ("refresh_token", auth.identity_token.as_str()),
                        ("service", service.as_str()),
                        ("scope", scope.as_str()),
                        ("client_id", "crius"),
                    ])
                } else {
                    let mut r = client.get(realm.as_str());
                    let mut q = vec![("scope", scope.as_str())];
                    if !service.is_empty() {
                        q.push(("service", service.as_str()));
                    }
                    r = r.query(&q);
                    if let Some(b) = auth.basic() {
                        r = r.header(reqwest::header::AUTHORIZATION, b);
                    }
                    r
                };
                let mut req = req;
                for (k, v) in &host.headers {
                    req = req.header(k.as_str(), v.as_str());
                }
                let resp = req.send().await.map_err(|source| RegistryError::Http {
                    url: realm.clone(),
                    source,
                })?;
                let status = resp.status();
                if status == reqwest::StatusCode::UNAUTHORIZED
                    || status == reqwest::StatusCode::FORBIDDEN
                {
                    return Err(denied(format!(
                        "the token service {realm} refused the credentials ({status})"
                    )));
                }
                if !status.is_success() {
                    let body = read_limited(realm, resp, 4096).await.unwrap_or_default();
                    return Err(RegistryError::Status {
                        url: realm.clone(),
                        status: status.as_u16(),
                        body: String::from_utf8_lossy(&body).into_owned(),
                    });
                }
                let body = read_limited(realm, resp, MAX_TOKEN_SIZE).await?;
                #[derive(serde::Deserialize)]
                struct TokenResponse {
                    #[serde(default)]
                    token: String,
                    #[serde(default)]
                    access_token: String,
                }
                let t: TokenResponse =
                    serde_json::from_slice(&body).map_err(|e| RegistryError::Token {
                        url: realm.clone(),
                        message: e.to_string(),
                    })?;
                let token = if t.access_token.is_empty() {
                    t.token
                } else {
                    t.access_token
                };
                if token.is_empty() {
                    return Err(RegistryError::Token {
                        url: realm.clone(),
                        message: "no token in the response".into(),
                    });
                }
                Ok(format!("Bearer {token}"))
            }
            other => Err(denied(format!(
                "unsupported authentication scheme {other:?}"
            ))),
        }
    }

    /// One GET to one host, answering a 401 challenge once.
    async fn get(
        &self,
        (host, client, auth): &(RegistryHost, reqwest::Client, Option<Auth>),
        suffix: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let url = host.request_url(&self.domain, &self.repository, suffix);
        let mut authz = self.authz.lock().await.get(&host.authority).cloned();
        if authz.is_none() {
            if let Some(a) = auth.as_ref().filter(|a| !a.registry_token.is_empty()) {
                authz = Some(format!("Bearer {}", a.registry_token));
            }
        }
        for attempt in 0..2 {
            let mut req = client.get(&url);
            for (k, v) in &host.headers {
                req = req.header(k.as_str(), v.as_str());
            }
            if let Some(a) = accept {
                req = req.header(reqwest::header::ACCEPT, a);
            }
            if let Some(a) = &authz {
                req = req.header(reqwest::header::AUTHORIZATION, a.as_str());
            }
            let resp = req.send().await.map_err(|source| RegistryError::Http {
                url: url.clone(),
                source,
            })?;
            let status = resp.status();
            if status == reqwest::StatusCode::UNAUTHORIZED && attempt == 0 {
                let challenge = resp
                    .headers()
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_challenge);
                let Some(challenge) = challenge else {
                    return Err(RegistryError::Unauthorized {
                        url,
                        message: "401 without an authentication challenge".into(),
                    });
                };
                let value = self
                    .authorize(host, client, auth.as_ref(), &url, &challenge)
                    .await?;
                self.authz
                    .lock()
                    .await
                    .insert(host.authority.clone(), value.clone());
                authz = Some(value);
                continue;
            }
            if status == reqwest::StatusCode::UNAUTHORIZED
                || status == reqwest::StatusCode::FORBIDDEN
            {
                let body = read_limited(&url, resp, 4096).await.unwrap_or_default();
                return Err(RegistryError::Unauthorized {
                    url,
                    message: format!("{status}: {}", String::from_utf8_lossy(&body).trim()),
                });
            }
            if status == reqwest::StatusCode::NOT_FOUND {
                return Err(RegistryError::NotFound {
                    what: what.to_string(),
                    url,
                });
            }
            if !status.is_success() {
                let body = read_limited(&url, resp, 4096).await.unwrap_or_default();
                return Err(RegistryError::Status {
                    url,
                    status: status.as_u16(),
                    body: String::from_utf8_lossy(&body).trim().to_string(),
                });
            }
            return Ok(resp);
        }
        Err(RegistryError::Unauthorized {
            url,
            message: "the registry kept asking for authentication".into(),
        })
    }

    /// Tries every host allowed to do `operation`, in order; returns the
    /// first success or the last error.
    async fn get_any(
        &self,
        operation: &'static str,
        suffix: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<(reqwest::Response, String), RegistryError> {
        let mut last = None;
        for entry in &self.hosts {
            let host = &entry.0;
            let allowed = match operation {
                "resolve" => host.capabilities.resolve,
                _ => host.capabilities.pull,
            };
            if !allowed {
                continue;
            }
            match self.get(entry, suffix, accept, what).await {
                Ok(r) => return Ok((r, host.url(&self.repository, suffix))),
                Err(e) => {
                    tracing::debug!(host = %host.authority, error = %e, "registry host failed; trying the next");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(RegistryError::NoHost {
            domain: self.domain.clone(),
            operation,
        }))
    }

    async fn manifest(
        &self,
        operation: &'static str,
        object: &str,
        expect: Option<&str>,
    ) -> Result<FetchedManifest, RegistryError> {
        let accept = manifest::ACCEPTED.join(", ");
        let what = format!("manifest {}/{}:{}", self.domain, self.repository, object);
        let (resp, url) = self
            .get_any(
                operation,
                &format!("manifests/{object}"),
                Some(&accept),
                &what,
            )
            .await?;
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = read_limited(&url, resp, MAX_MANIFEST_SIZE).await?;
        let digest = digest_of(&body);
        if let Some(e) = expect {
            if e != digest {
                return Err(RegistryError::DigestMismatch {
                    url,
                    expected: e.to_string(),
                    actual: digest,
                });
            }
        }
        Ok(FetchedManifest {
            digest,
            content_type,
            body,
        })
    }

    /// Resolves the reference's tag or digest to its manifest (or index).
    pub async fn resolve(&self, reference: &Reference) -> Result<FetchedManifest, RegistryError> {
        match &reference.digest {
            Some(d) => self.manifest("pull", d, Some(d)).await,
            None => self.manifest("resolve", reference.object(), None).await,
        }
    }

    /// Fetches a manifest by digest and verifies it.
    pub async fn fetch_manifest(&self, digest: &str) -> Result<FetchedManifest, RegistryError> {
        self.manifest("pull", digest, Some(digest)).await
    }

    /// Starts the download of a blob; the caller verifies the stream.
    pub async fn fetch_blob(&self, digest: &str) -> Result<reqwest::Response, RegistryError> {
        let what = format!("blob {digest} of {}/{}", self.domain, self.repository);
        let (resp, _) = self
            .get_any("pull", &format!("blobs/{digest}"), None, &what)
            .await?;
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.docker.io/token");
        assert_eq!(c.params["service"], "registry.docker.io");
        assert_eq!(c.params["scope"], "repository:library/busybox:pull,push");
        let c = parse_challenge(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "Registry Realm");
        let c =
            parse_challenge(r#"bearer realm=http://x/t, service = svc , error="a \"q\"""#).unwrap();
        assert_eq!(c.params["realm"], "http://x/t");
        assert_eq!(c.params["service"], "svc");
        assert_eq!(c.params["error"], "a \"q\"");
        assert!(parse_challenge("").is_none());
    }

    #[test]
    fn cri_credentials() {
        assert_eq!(Auth::from_cri("", "", "", "", "").unwrap(), None);
        let a = Auth::from_cri("", "", "dXNlcjpwYTpzcw==", "", "")
            .unwrap()
            .unwrap();
        assert_eq!(
            (a.username.as_str(), a.password.as_str()),
            ("user", "pa:ss")
        );
        assert_eq!(a.basic().unwrap(), "Basic dXNlcjpwYTpzcw==");
        let a = Auth::from_cri("u", "p", "ignored", "", "")
            .unwrap()
            .unwrap();
        assert_eq!(a.username, "u");
        assert!(Auth::from_cri("", "", "%%%", "", "").is_err());
        assert!(Auth::from_cri("", "", "bm9jb2xvbg==", "", "").is_err());
        let a = Auth::from_cri("", "", "", "", "tok").unwrap().unwrap();
        assert!(a.basic().is_none());
        assert!(!format!("{a:?}").contains("tok") || a.registry_token == "tok");
        let a = Auth::from_cri("u", "secret", "", "", "").unwrap().unwrap();
        assert!(!format!("{a:?}").contains("secret"));
    }

    #[test]
    fn client_certificate_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let cert = file(
            "c.pem",
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        );
        let cert2 = file(
            "c2.pem",
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
        );
        let junk = file("j.pem", "nothing\n");
        let one = |c: &Path, k: Option<&Path>| ClientPair {
            cert: c.to_path_buf(),
            key: k.map(Path::to_path_buf),
        };
        assert!(client_identity(&[]).unwrap().is_none());
        // (pairs, the file the error names, what it says)
        let cases = [
            (vec![one(&cert, None)], &cert, "no PEM private key"),
            (vec![one(&cert, Some(&junk))], &junk, "no PEM private key"),
            (vec![one(&junk, Some(&cert))], &junk, "no PEM certificate"),
            // Two certificates are not a [cert, key] pair.
            (
                vec![one(&cert, None), one(&cert2, None)],
                &cert,
                "no PEM private key",
            ),
            (
                vec![one(&junk, None), one(&cert, None)],
                &junk,
                "no PEM certificate",
            ),
            (
                vec![one(&dir.path().join("missing.pem"), None)],
                &dir.path().join("missing.pem"),
                "No such file",
            ),
        ];
        for (pairs, path, want) in cases {
            match client_identity(&pairs) {
                Err(RegistryError::ClientCertificate { path: p, message }) => {
                    assert_eq!(&p, path, "{pairs:?}");
                    assert!(message.contains(want), "{pairs:?}: {message}");
                }
                Err(other) => panic!("{pairs:?}: {other}"),
                Ok(_) => panic!("{pairs:?}: accepted"),
            }
        }
    }

    /// Which credentials each host gets: the request's everywhere, else
    /// the file's entry of that host (Docker Hub's under its aliases).
    #[test]
    fn credentials_per_host() {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs.d");
        for (domain, text) in [
            (
                "docker.io",
                "[host.\"https://mirror.local:5000\"]\n[host.\"https://other.local\"]\n",
            ),
            ("quay.io", "[host.\"https://mirror.local:5000\"]\n"),
        ] {
            std::fs::create_dir_all(certs.join(domain)).unwrap();
            std::fs::write(certs.join(domain).join("hosts.toml"), text).unwrap();
        }
        let file = dir.path().join("auth.json");
        std::fs::write(
            &file,
            r#"{"auths": {
                "mirror.local:5000": {"username": "m", "password": "x"},
                "https://index.docker.io/v1/": {"username": "hub", "password": "x"},
                "quay.io/team": {"username": "team", "password": "x"}
            }}"#,
        )
        .unwrap();
        let users = |reference: &str, auth: Option<Auth>, auth_file: Option<&Path>| {
            let r = Reference::parse(reference).unwrap();
            Resolver::new(&certs, &r, auth, auth_file)
                .unwrap()
                .hosts
                .iter()
                .map(|(h, _, a)| {
                    (
                        h.authority.clone(),
                        a.as_ref().map(|a| a.username.clone()).unwrap_or_default(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let pairs = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect::<Vec<_>>()
        };
        // (reference, request credentials, file, host -> user)
        let request = Auth::from_cri("req", "pw", "", "", "").unwrap();
        let missing = dir.path().join("missing.json");
        let cases = [
            (
                "busybox",
                None,
                Some(file.as_path()),
                pairs(&[
                    ("mirror.local:5000", "m"),
                    ("other.local", ""),
                    ("registry-1.docker.io", "hub"),
                ]),
            ),
            (
                "busybox",
                request.clone(),
                Some(file.as_path()),
                pairs(&[
                    ("mirror.local:5000", "req"),
                    ("other.local", "req"),
                    ("registry-1.docker.io", "req"),
                ]),
            ),
            (
                "quay.io/team/app:1",
                None,
                Some(file.as_path()),
                pairs(&[("mirror.local:5000", "m"), ("quay.io", "team")]),
            ),
            (
                "quay.io/solo/app:1",
                None,
                Some(file.as_path()),
                pairs(&[("mirror.local:5000", "m"), ("quay.io", "")]),
            ),
            (
                "quay.io/team/app:1",
                None,
                Some(missing.as_path()),
                pairs(&[("mirror.local:5000", ""), ("quay.io", "")]),
            ),
            (
                "quay.io/team/app:1",
                None,
                None,
                pairs(&[("mirror.local:5000", ""), ("quay.io", "")]),
            ),
        ];
        for (reference, auth, auth_file, want) in cases {
            assert_eq!(users(reference, auth, auth_file), want, "{reference}");
        }
        std::fs::write(&file, "{\"auths\": 5}").unwrap();
        let r = Reference::parse("busybox").unwrap();
        let err = Resolver::new(&certs, &r, None, Some(&file)).err().unwrap();
        assert!(err.to_string().contains("registry.auth_file"), "{err}");
    }
}
