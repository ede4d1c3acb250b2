//! Bearer-token authentication against a real docker-registry configured
//! for token auth: a token service written here issues RS256 JWTs (signed by
//! openssl with a key whose certificate the registry trusts), and criusd
//! pulls with username/password, an identity (refresh) token, a registry
//! token, and without credentials.

mod common;

use common::images::pull;
use common::registry::{
    busybox_entries, ensure_binary, image, is_root, layer, Compression, Registry, RegistryAuth,
};
use common::Daemon;
use k8s_cri::v1::{AuthConfig, ImageSpec, RemoveImageRequest};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tonic::Code;

const SERVICE: &str = "crius-test-registry";
const ISSUER: &str = "crius-test-issuer";
const USER: &str = "alice";
const PASSWORD: &str = "s3cret";
const REFRESH_TOKEN: &str = "refresh-0123";

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Signing material: an RSA key and its self-signed certificate.
struct Signer {
    key: PathBuf,
    cert_pem: PathBuf,
    cert_der_b64: String,
}

impl Signer {
    fn new(dir: &Path) -> Signer {
        ensure_binary("openssl", "openssl");
        let key = dir.join("token.key");
        let cert_pem = dir.join("token.crt");
        let ok = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=crius-test-token"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert_pem)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "openssl req failed");
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert_pem)
            .output()
            .unwrap();
        assert!(der.status.success());
        use base64::Engine;
        Signer {
            key,
            cert_pem,
            cert_der_b64: base64::engine::general_purpose::STANDARD.encode(der.stdout),
        }
    }

    /// A JWT granting `actions` on repository `repo`.
    fn token(&self, repo: &str, actions: &[&str]) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [self.cert_der_b64]});
        let claims = serde_json::json!({
            "iss": ISSUER,
            "sub": USER,
            "aud": SERVICE,
            "exp": now + 600,
            "nbf": now - 60,
            "iat": now,
            "jti": format!("{now}-{repo}"),
            "access": [{"type": "repository", "name": repo, "actions": actions}],
        });
        let input = format!(
            "{}.{}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        );
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "openssl dgst failed");
        format!("{input}.{}", b64url(&out.stdout))
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(h, 16) {
                    Ok(v) => out.push(v),
                    Err(_) => out.extend_from_slice(&b[i..i + 3]),
                }
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn params(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// What the token service saw.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// GET with the right basic credentials.
    GetWithPassword,
    /// GET refused (no or wrong credentials).
    GetRefused,
    /// POST with the right refresh token.
    PostRefresh,
    /// POST refused.
    PostRefused,
}

/// The token service: a thread serving `/token` on 127.0.0.1.
struct TokenService {
    addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenService {
    fn start(signer: Arc<Signer>) -> TokenService {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, st2) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st2.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    serve_token(conn, &signer, &s2);
                }
            }
        });
        TokenService {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for TokenService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_token(mut conn: TcpStream, signer: &Signer, seen: &Mutex<Vec<Seen>>) {
    let _ = conn.set_read_timeout(Some(std::time::Duration::from_secs(30)));
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = raw[head_end + 4..].to_vec();
    while body.len() < len {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let form = if method == "POST" {
        params(&String::from_utf8_lossy(&body))
    } else {
        params(query)
    };
    let get = |k: &str| {
        form.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let scope = get("scope");
    let repo = scope
        .strip_prefix("repository:")
        .and_then(|s| s.rsplit_once(':'))
        .map(|(r, _)| r.to_string())
        .unwrap_or_default();
    let authorized = match method.as_str() {
        "GET" => {
            use base64::Engine;
            let want = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
            );
            let ok = path == "/token"
                && header("authorization").as_deref() == Some(want.as_str())
                && get("service") == SERVICE;
            seen.lock().unwrap().push(if ok {
                Seen::GetWithPassword
            } else {
                Seen::GetRefused
            });
            ok
        }
        "POST" => {
            let ok = path == "/token"
                && get("grant_type") == "refresh_token"
                && get("refresh_token") == REFRESH_TOKEN
                && get("service") == SERVICE;
            seen.lock().unwrap().push(if ok {
                Seen::PostRefresh
            } else {
                Seen::PostRefused
            });
            ok
        }
        _ => false,
    };
    let (status, body) = if authorized && !repo.is_empty() {
        let token = signer.token(&repo, &["pull"]);
        let key = if method == "POST" {
            "access_token"
        } else {
            "token"
        };
        (
            "200 OK",
            serde_json::json!({ key: token, "expires_in": 600 }).to_string(),
        )
    } else {
        ("401 Unauthorized", "{\"errors\":[]}".to_string())
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(resp.as_bytes());
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_token_authentication() {
    if !is_root() {
        eprintln!("skipping bearer_token_authentication: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let signer = Arc::new(Signer::new(dir));
    let tokens = TokenService::start(signer.clone());
    let mut reg = Registry::start_with(
        &dir.join("registry"),
        RegistryAuth::Token {
            realm: format!("http://{}/token", tokens.addr),
            service: SERVICE.into(),
            issuer: ISSUER.into(),
            root_cert: signer.cert_pem.clone(),
        },
    );
    let repo = "private/busybox";
    reg.push_authorization = Some(format!("Bearer {}", signer.token(repo, &["pull", "push"])));
    let img = image(
        vec![layer(&busybox_entries(), Compression::Gzip)],
        "amd64",
        "",
    );
    let (_, config) = reg.push_image(repo, "v1", &img);
    let reference = format!("{}/{repo}:v1", reg.addr);

    let daemon = Daemon::start(
        dir,
        &format!(
            "[registry]\nconfig_path = \"{d}/certs.d\"\n[cni]\nconf_dir = \"{d}/net.d\"\nbin_dirs = [\"{d}/cni-bin\"]\n",
            d = dir.display()
        ),
    );
    let mut c = daemon.images().await;
    let remove = |c: &mut k8s_cri::v1::image_service_client::ImageServiceClient<_>| {
        let r = RemoveImageRequest {
            image: Some(ImageSpec {
                image: config.clone(),
                ..Default::default()
            }),
        };
        let mut c = c.clone();
        async move { c.remove_image(r).await.expect("RemoveImage") }
    };

    // No credentials: the token service refuses, so does criusd.
    let err = pull(&mut c, &reference, None).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::Unauthenticated | Code::PermissionDenied),
        "{err:?}"
    );
    assert_eq!(tokens.seen(), vec![Seen::GetRefused]);

    // Username and password: a token from GET with basic auth.
    let auth = AuthConfig {
        username: USER.into(),
        password: PASSWORD.into(),
        ..Default::default()
    };
    assert_eq!(pull(&mut c, &reference, Some(auth)).await.unwrap(), config);
    assert_eq!(tokens.seen().last(), Some(&Seen::GetWithPassword));
    remove(&mut c).await;

    // Identity token: a token from POST with the refresh-token grant.
    let auth = AuthConfig {
        identity_token: REFRESH_TOKEN.into(),
        ..Default::default()
    };
    assert_eq!(pull(&mut c, &reference, Some(auth)).await.unwrap(), config);
    assert_eq!(tokens.seen().last(), Some(&Seen::PostRefresh));
    remove(&mut c).await;

    // Registry token: used as is, the token service is not asked.
    let before = tokens.seen().len();
    let auth = AuthConfig {
        registry_token: signer.token(repo, &["pull"]),
        ..Default::default()
    };
    assert_eq!(pull(&mut c, &reference, Some(auth)).await.unwrap(), config);
    assert_eq!(tokens.seen().len(), before, "{:?}", tokens.seen());
    remove(&mut c).await;

    // A wrong password is refused.
    let auth = AuthConfig {
        username: USER.into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let err = pull(&mut c, &reference, Some(auth)).await.unwrap_err();
    assert!(
        matches!(err.code(), Code::Unauthenticated | Code::PermissionDenied),
        "{err:?}"
    );
    drop(reg);
    drop(tokens);
}
