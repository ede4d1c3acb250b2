//! The streaming server: the HTTP endpoint that the URLs returned by the CRI
//! `Exec`, `Attach` and `PortForward` calls point to.
//!
//! A CRI call validates its request and stores it in the request cache
//! under a single-use token ([`StreamingServer::get_exec`] and friends);
//! the client then connects to `/exec/TOKEN` (or `/attach/`,
//! `/portforward/`) and upgrades the connection to SPDY/3.1 or WebSocket,
//! and the session runs against the [`Backend`].
//!
//! Wiring it into the daemon:
//!
//! ```text
//! let config = StreamingConfig { address: cfg.stream.address.parse()?, ..Default::default() };
//! let (streaming, task) = StreamingServer::start(config, backend, shutdown_rx).await?;
//! // RuntimeService::exec (after checking that the container exists: NotFound):
//! let url = streaming.get_exec(request.get_ref())?; // StreamingError -> CriError
//! Ok(Response::new(ExecResponse { url }))
//! ```
//!
//! Protocols, as kubelet's streaming server speaks them:
//! - exec/attach over SPDY/3.1 with `v4.channel.k8s.io` (JSON status on the
//!   error stream), `v3` (adds the resize stream), `v2` and `channel.k8s.io`;
//!   streams are told apart by their `streamType` header;
//! - exec/attach over WebSocket with `v5.channel.k8s.io` (adds closing a
//!   channel: `[255, channel]`), `v4.channel.k8s.io` and `channel.k8s.io`;
//!   every binary message starts with its channel byte (0 stdin, 1 stdout,
//!   2 stderr, 3 error, 4 resize);
//! - port-forward over SPDY `portforward.k8s.io` (a data and an error stream
//!   per `requestID`, the port in the `port` header) and over WebSocket
//!   (channels 2i and 2i+1 for the i-th `port` query parameter, each
//!   starting with the port as two little-endian bytes).

pub mod backend;
pub mod cache;
pub mod portforward;
pub mod pump;
pub mod remotecommand;
pub mod spdy;
pub mod spdy_conn;
pub mod ws;

pub use backend::{splice, Backend, BackendError, BoxRead, BoxWrite, StreamIo, TermSize};

use cache::{CacheFull, RequestCache};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use k8s_cri::v1::{AttachRequest, ExecRequest, PortForwardRequest};
use remotecommand::{Options, Target};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Default lifetime of a streaming URL.
pub const DEFAULT_REQUEST_TTL: Duration = Duration::from_secs(60);
/// Default bound on requests waiting for their client (kubelet's).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 1000;
/// Default time a client has to open its streams after the upgrade.
pub const DEFAULT_STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Default idle time after which a session is closed (kubelet's).
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(4 * 60 * 60);

/// Errors of the streaming server and of preparing a streaming request.
#[derive(Debug, thiserror::Error)]
pub enum StreamingError {
    /// The CRI request is not valid.
    #[error("{0}")]
    InvalidRequest(String),
    /// Too many requests are waiting for their clients.
    #[error(transparent)]
    TooMany(#[from] CacheFull),
    /// The TLS certificate or key could not be loaded.
    #[error("streaming TLS: {0}")]
    Tls(String),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

fn invalid(msg: &str) -> StreamingError {
    StreamingError::InvalidRequest(msg.to_string())
}

/// Checks an Exec request as kubelet's streaming server does.
pub fn validate_exec(req: &ExecRequest) -> Result<(), StreamingError> {
    if req.container_id.is_empty() {
        return Err(invalid("missing required container_id"));
    }
    if req.cmd.is_empty() || req.cmd[0].is_empty() {
        return Err(invalid("cmd must not be empty"));
    }
    validate_streams(req.stdin, req.stdout, req.stderr, req.tty)
}

/// Checks an Attach request as kubelet's streaming server does.
pub fn validate_attach(req: &AttachRequest) -> Result<(), StreamingError> {
    if req.container_id.is_empty() {
        return Err(invalid("missing required container_id"));
    }
    validate_streams(req.stdin, req.stdout, req.stderr, req.tty)
}

/// Checks a PortForward request.
pub fn validate_port_forward(req: &PortForwardRequest) -> Result<(), StreamingError> {
    if req.pod_sandbox_id.is_empty() {
        return Err(invalid("missing required pod_sandbox_id"));
    }
    if req.port.iter().any(|p| *p <= 0 || *p > 65535) {
        return Err(invalid("port must be between 1 and 65535"));
    }
    Ok(())
}

fn validate_streams(
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
) -> Result<(), StreamingError> {
    if tty && stderr {
        return Err(invalid("tty and stderr cannot both be true"));
    }
    if !stdin && !stdout && !stderr {
        return Err(invalid("one of stdin, stdout, or stderr must be set"));
    }
    Ok(())
}

/// PEM files of the server's TLS certificate chain and private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: std::path::PathBuf,
}

/// How long a client has to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn tls_acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, StreamingError> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let err = |what: &str, path: &std::path::Path, e: &dyn std::fmt::Display| {
        StreamingError::Tls(format!("{what} {}: {e}", path.display()))
    };
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| err("cannot read certificates from", &files.cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err("invalid certificate in", &files.cert, &e))?;
    if certs.is_empty() {
        return Err(err("no certificate in", &files.cert, &"empty"));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| err("cannot read the private key from", &files.key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StreamingError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| StreamingError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Settings of the streaming server.
#[derive(Debug, Clone)]
pub struct StreamingConfig {
    /// Where to listen; port 0 picks a free port.
    pub address: SocketAddr,
    /// The URL prefix handed out (default `http://<bound address>`), e.g.
    /// when listening on 0.0.0.0 behind a name.
    pub base_url: Option<String>,
    /// Lifetime of a URL.
    pub request_ttl: Duration,
    /// Most URLs waiting for their clients.
    pub max_in_flight: usize,
    /// Time a client has to open its streams after the upgrade.
    pub stream_creation_timeout: Duration,
    /// A session with no traffic for this long is closed.
    pub stream_idle_timeout: Duration,
    /// Serve HTTPS with these files instead of plain HTTP.
    pub tls: Option<TlsFiles>,
    /// Connection limits (shared with the metrics server).
    pub limits: crate::listener::Limits,
}

impl Default for StreamingConfig {
    fn default() -> Self {
        StreamingConfig {
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            base_url: None,
            request_ttl: DEFAULT_REQUEST_TTL,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            stream_creation_timeout: DEFAULT_STREAM_CREATION_TIMEOUT,
            stream_idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
            tls: None,
            limits: crate::listener::Limits::default(),
        }
    }
}

#[derive(Debug, Clone)]
enum Cached {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

struct Shared {
    cache: RequestCache<Cached>,
    backend: Arc<dyn Backend>,
    base_url: String,
    timeouts: remotecommand::Timeouts,
}

/// A running streaming server; cheap to clone.
#[derive(Clone)]
pub struct StreamingServer {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
}

impl StreamingServer {
    /// Binds `config.address` and serves until `shutdown` turns true (or its
    /// sender is dropped). Returns the server and its accept task.
    pub async fn start(
        config: StreamingConfig,
        backend: Arc<dyn Backend>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(StreamingServer, tokio::task::JoinHandle<()>), StreamingError> {
        let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
        let bind_err = |source| StreamingError::Bind {
            addr: config.address,
            source,
        };
        let listener = tokio::net::TcpListener::bind(config.address)
            .await
            .map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        let base_url = config
            .base_url
            .clone()
            .map(|u| u.trim_end_matches('/').to_string())
            .unwrap_or_else(|| {
                let scheme = if tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{local_addr}")
            });
        let shared = Arc::new(Shared {
            cache: RequestCache::new(config.request_ttl, config.max_in_flight),
            backend,
            base_url,
            timeouts: remotecommand::Timeouts {
                stream_creation: config.stream_creation_timeout,
                idle: config.stream_idle_timeout,
            },
        });
        let task = tokio::spawn(accept_loop(
            listener,
            tls,
            shared.clone(),
            config.limits,
            shutdown,
        ));
        tracing::info!(address = %local_addr, "streaming server listening");
        Ok((StreamingServer { shared, local_addr }, task))
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The URL prefix of handed-out URLs.
    pub fn base_url(&self) -> &str {
        &self.shared.base_url
    }

    fn url(&self, kind: &str, value: Cached) -> Result<String, StreamingError> {
        let token = self.shared.cache.insert(value)?;
        Ok(format!("{}/{kind}/{token}", self.shared.base_url))
    }

    /// Validates an Exec request and returns its URL.
    pub fn get_exec(&self, req: &ExecRequest) -> Result<String, StreamingError> {
        validate_exec(req)?;
        self.url("exec", Cached::Exec(req.clone()))
    }

    /// Validates an Attach request and returns its URL.
    pub fn get_attach(&self, req: &AttachRequest) -> Result<String, StreamingError> {
        validate_attach(req)?;
        self.url("attach", Cached::Attach(req.clone()))
    }

    /// Validates a PortForward request and returns its URL.
    pub fn get_port_forward(&self, req: &PortForwardRequest) -> Result<String, StreamingError> {
        validate_port_forward(req)?;
        self.url("portforward", Cached::PortForward(req.clone()))
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shared: Arc<Shared>,
    limits: crate::listener::Limits,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    crate::listener::accept_loop("streaming", listener, limits, shutdown, |stream, peer| {
        let shared = shared.clone();
        let tls = tls.clone();
        async move {
            match tls {
                None => serve_connection(stream, peer, shared, limits).await,
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls_stream)) => {
                            serve_connection(tls_stream, peer, shared, limits).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        }
    })
    .await
}

async fn serve_connection<IO>(
    stream: IO,
    peer: SocketAddr,
    shared: Arc<Shared>,
    limits: crate::listener::Limits,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(req, shared)) }
    });
    let io = hyper_util::rt::TokioIo::new(stream);
    if let Err(e) = limits
        .http1()
        .serve_connection(io, service)
        .with_upgrades()
        .await
    {
        tracing::debug!(%peer, error = %e, "streaming connection ended");
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn header_value(v: &str) -> Option<hyper::header::HeaderValue> {
    hyper::header::HeaderValue::from_str(v).ok()
}

/// The SPDY subprotocols a client offers in `X-Stream-Protocol-Version`.
fn spdy_offered(req: &Request<Incoming>) -> Vec<String> {
    ws::header_list(req.headers(), "x-stream-protocol-version")
}

/// A 101 Switching Protocols answer upgrading to `upgrade`, naming the
/// chosen subprotocol (if any) in the `protocol_header`.
fn switching_protocols(
    upgrade: &'static str,
    protocol_header: &'static str,
    chosen: Option<&'static str>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(
        "connection",
        hyper::header::HeaderValue::from_static("Upgrade"),
    );
    h.insert("upgrade", hyper::header::HeaderValue::from_static(upgrade));
    if let Some(p) = chosen {
        h.insert(protocol_header, hyper::header::HeaderValue::from_static(p));
    }
    resp
}

fn is_spdy(req: &Request<Incoming>) -> bool {
    let h = req.headers();
    let conn_upgrade = h.get_all("connection").iter().any(|v| {
        v.to_str()
            .map(|s| {
                s.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
            .unwrap_or(false)
    });
    let spdy = h
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().eq_ignore_ascii_case("SPDY/3.1"))
        .unwrap_or(false);
    conn_upgrade && spdy
}

enum Session {
    Exec(Options, Target),
    PortForward(String, Vec<u16>),
}

fn handle(mut req: Request<Incoming>, shared: Arc<Shared>) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET && req.method() != hyper::Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let kind = parts.next().unwrap_or("");
    let token = parts.next().unwrap_or("");
    if !matches!(kind, "exec" | "attach" | "portforward") || token.is_empty() || token.contains('/')
    {
        return plain(StatusCode::NOT_FOUND, "not found");
    }
    let cached = match shared.cache.consume(token) {
        Some(c) => c,
        None => return plain(StatusCode::NOT_FOUND, "not found"),
    };
    let session = match (kind, cached) {
        ("exec", Cached::Exec(r)) => Session::Exec(
            Options {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                tty: r.tty,
            },
            Target::Exec {
                container_id: r.container_id,
                cmd: r.cmd,
            },
        ),
        ("attach", Cached::Attach(r)) => Session::Exec(
            Options {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                tty: r.tty,
            },
            Target::Attach {
                container_id: r.container_id,
            },
        ),
        ("portforward", Cached::PortForward(r)) => {
            let ports = r
                .port
                .iter()
                .filter_map(|p| u16::try_from(*p).ok())
                .collect();
            Session::PortForward(r.pod_sandbox_id, ports)
        }
        _ => return plain(StatusCode::NOT_FOUND, "not found"),
    };
    let backend = shared.backend.clone();
    let timeouts = shared.timeouts;
    let on_upgrade = hyper::upgrade::on(&mut req);

    if ws::is_websocket(req.headers()) {
        let accept = match ws::accept_key(req.headers()) {
            Some(a) => a,
            None => return plain(StatusCode::BAD_REQUEST, "invalid websocket handshake"),
        };
        let offered = ws::offered_protocols(req.headers());
        let supported = match session {
            Session::Exec(..) => remotecommand::WS_PROTOCOLS,
            Session::PortForward(..) => portforward::WS_PROTOCOLS,
        };
        let chosen = match ws::choose_protocol(&offered, supported) {
            Ok(c) => c,
            Err(_) => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    &format!(
                    "requested protocols {offered:?} are not supported; supported: {supported:?}"
                ),
                )
            }
        };
        // Port-forward ports: the `port` query parameters, else the request's.
        let session = match session {
            Session::PortForward(sandbox, ports) => {
                let query: Vec<String> = req
                    .uri()
                    .query()
                    .unwrap_or("")
                    .split('&')
                    .filter_map(|kv| kv.strip_prefix("port="))
                    .map(str::to_string)
                    .collect();
                let ports = if query.is_empty() {
                    ports
                } else {
                    let parsed: Option<Vec<u16>> =
                        query.iter().map(|p| portforward::parse_port(p)).collect();
                    match parsed {
                        Some(p) => p,
                        None => return plain(StatusCode::BAD_REQUEST, "invalid port"),
                    }
                };
                if ports.is_empty() || ports.len() > portforward::MAX_WS_PORTS {
                    return plain(
                        StatusCode::BAD_REQUEST,
                        "query parameter \"port\" is required",
                    );
                }
                Session::PortForward(sandbox, ports)
            }
            s => s,
        };
        let mut resp = switching_protocols("websocket", "sec-websocket-protocol", chosen);
        if let Some(v) = header_value(&accept) {
            resp.headers_mut().insert("sec-websocket-accept", v);
        }
        let protocol = chosen.unwrap_or(ws::V1);
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => hyper_util::rt::TokioIo::new(u),
                Err(e) => {
                    tracing::debug!(error = %e, "websocket upgrade failed");
                    return;
                }
            };
            match session {
                Session::Exec(opts, target) => {
                    remotecommand::serve_ws(upgraded, protocol, opts, target, backend, timeouts)
                        .await
                }
                Session::PortForward(sandbox, ports) => {
                    portforward::serve_ws(upgraded, sandbox, ports, backend, timeouts).await
                }
            }
        });
        return resp;
    }

    if !is_spdy(&req) {
        return plain(StatusCode::BAD_REQUEST, "Upgrade request required");
    }
    let offered = spdy_offered(&req);
    let supported: &[&'static str] = match session {
        Session::Exec(..) => remotecommand::SPDY_PROTOCOLS,
        Session::PortForward(..) => &[portforward::SPDY_PROTOCOL],
    };
    let chosen = match ws::choose_protocol(&offered, supported) {
        Ok(c) => c,
        Err(_) => {
            let mut resp = plain(
                StatusCode::FORBIDDEN,
                &format!("unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {supported:?}"),
            );
            if let Some(v) = header_value(&supported.join(", ")) {
                resp.headers_mut()
                    .insert("x-accepted-stream-protocol-versions", v);
            }
            return resp;
        }
    };
    let resp = switching_protocols("SPDY/3.1", "x-stream-protocol-version", chosen);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => hyper_util::rt::TokioIo::new(u),
            Err(e) => {
                tracing::debug!(error = %e, "spdy upgrade failed");
                return;
            }
        };
        match session {
            Session::Exec(opts, target) => {
                let version = remotecommand::protocol_version(chosen.unwrap_or(""));
                remotecommand::serve_spdy(upgraded, version, opts, target, backend, timeouts).await
            }
            Session::PortForward(sandbox, _) => {
                portforward::serve_spdy(upgraded, sandbox, backend, timeouts).await
            }
        }
    });
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_validation() {
        let exec = |cmd: &[&str], stdin, stdout, stderr, tty| ExecRequest {
            container_id: "c1".into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            stdin,
            stdout,
            stderr,
            tty,
        };
        // (request, expected error substring or None)
        let cases = [
            (exec(&["sh"], false, true, true, false), None),
            (exec(&["sh"], true, true, false, true), None),
            (exec(&["sh"], true, false, false, false), None),
            (
                exec(&["sh"], false, false, false, false),
                Some("one of stdin, stdout, or stderr"),
            ),
            (
                exec(&["sh"], false, true, true, true),
                Some("tty and stderr cannot both be true"),
            ),
            (exec(&[], false, true, false, false), Some("cmd")),
            (
                ExecRequest {
                    container_id: String::new(),
                    ..exec(&["sh"], false, true, false, false)
                },
                Some("container_id"),
            ),
        ];
        for (req, want) in cases {
            match (validate_exec(&req), want) {
                (Ok(()), None) => {}
                (Err(e), Some(w)) => {
                    assert!(e.to_string().contains(w), "{e} vs {w}");
                    assert!(matches!(e, StreamingError::InvalidRequest(_)), "{e:?}");
                }
                (got, want) => panic!("{req:?}: got {got:?}, want {want:?}"),
            }
        }
        let attach = AttachRequest {
            container_id: "c".into(),
            stdin: false,
            tty: true,
            stdout: true,
            stderr: true,
        };
        assert!(validate_attach(&attach).is_err());
        let pf = |id: &str, ports: Vec<i32>| PortForwardRequest {
            pod_sandbox_id: id.into(),
            port: ports,
        };
        assert!(validate_port_forward(&pf("p", vec![80])).is_ok());
        assert!(validate_port_forward(&pf("p", vec![])).is_ok());
        assert!(validate_port_forward(&pf("", vec![80])).is_err());
        assert!(validate_port_forward(&pf("p", vec![0])).is_err());
        assert!(validate_port_forward(&pf("p", vec![70000])).is_err());
        let err = crate::errors::CriError::from(StreamingError::TooMany(CacheFull(3)));
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    }
}
