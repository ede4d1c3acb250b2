//! End-to-end tests of the streaming server over real sockets on 127.0.0.1:
//! a SPDY/3.1 client built on the crate's framing module, and a WebSocket
//! client from tokio-tungstenite, against a fake backend that runs real
//! processes and forwards to a local TCP echo server.

mod common;

use common::stream_client::*;
use crius_cri_server::errors::CriError;
use crius_cri_server::streaming::{
    Backend, BackendError, StreamIo, StreamingConfig, StreamingServer, TermSize,
};
use futures_util::{SinkExt, StreamExt};
use k8s_cri::v1::{AttachRequest, ExecRequest, PortForwardRequest};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------- backend

/// Runs commands as local processes with pipes; in TTY mode it first waits
/// for one resize event and reports it on stdout. Port-forwards connect to
/// 127.0.0.1:port.
#[derive(Default)]
struct FakeBackend {
    resizes: Mutex<Vec<TermSize>>,
}

async fn copy_then_close<R, W>(mut r: R, mut w: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let _ = tokio::io::copy(&mut r, &mut w).await;
    let _ = w.shutdown().await;
}

#[tonic::async_trait]
impl Backend for FakeBackend {
    async fn exec(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        mut io: StreamIo,
    ) -> Result<i32, BackendError> {
        if container_id == "missing" {
            return Err(BackendError::NotFound(format!("container {container_id}")));
        }
        if io.tty && container_id == "pty" {
            return pty_exec(&cmd, io, &self.resizes).await;
        }
        if io.tty {
            let mut resize = io.resize.take().expect("resize stream in tty mode");
            let size = resize.recv().await.expect("a resize event");
            self.resizes.lock().unwrap().push(size);
            if let Some(out) = io.stdout.as_mut() {
                out.write_all(format!("size {}x{}\n", size.width, size.height).as_bytes())
                    .await?;
            }
        }
        let mut child = tokio::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(if io.stdin.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let mut tasks = Vec::new();
        if let (Some(stdin), Some(child_in)) = (io.stdin.take(), child.stdin.take()) {
            tasks.push(tokio::spawn(copy_then_close(stdin, child_in)));
        }
        let child_out = child.stdout.take().expect("piped");
        let child_err = child.stderr.take().expect("piped");
        let out_task = match io.stdout.take() {
            Some(w) => tokio::spawn(copy_then_close(child_out, w)),
            None => tokio::spawn(copy_then_close(child_out, tokio::io::sink())),
        };
        let err_task = match io.stderr.take() {
            Some(w) => tokio::spawn(copy_then_close(child_err, w)),
            None => tokio::spawn(copy_then_close(child_err, tokio::io::sink())),
        };
        let status = child.wait().await?;
        let _ = out_task.await;
        let _ = err_task.await;
        for t in tasks {
            t.abort();
        }
        Ok(status.code().unwrap_or(128))
    }

    async fn attach(&self, _container_id: &str, mut io: StreamIo) -> Result<(), BackendError> {
        // An "attached container" that echoes its stdin.
        if let (Some(stdin), Some(stdout)) = (io.stdin.take(), io.stdout.take()) {
            copy_then_close(stdin, stdout).await;
        }
        Ok(())
    }

    async fn port_forward(
        &self,
        _sandbox_id: &str,
        port: u16,
        stream: tokio::io::DuplexStream,
    ) -> Result<(), BackendError> {
        let target = TcpStream::connect(("127.0.0.1", port)).await?;
        crius_cri_server::streaming::splice(stream, target).await?;
        Ok(())
    }
}

fn winsize(size: TermSize) -> libc::winsize {
    libc::winsize {
        ws_row: size.height,
        ws_col: size.width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// Runs `cmd` on a new pseudo-terminal sized by the first resize event;
/// later events resize the terminal.
async fn pty_exec(
    cmd: &[String],
    mut io: StreamIo,
    resizes: &Mutex<Vec<TermSize>>,
) -> Result<i32, BackendError> {
    use std::os::fd::AsRawFd;
    let mut resize = io.resize.take().expect("resize stream in tty mode");
    let first = resize.recv().await.expect("a resize event");
    resizes.lock().unwrap().push(first);
    let (master, slave) = common::kube::openpty(&winsize(first));
    let mut child = tokio::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(std::process::Stdio::from(slave.try_clone()?))
        .stdout(std::process::Stdio::from(slave.try_clone()?))
        .stderr(std::process::Stdio::from(slave))
        .spawn()?;
    let master = std::fs::File::from(master);
    let master_fd = master.as_raw_fd();
    let mut reader = tokio::fs::File::from_std(master.try_clone()?);
    let mut writer = tokio::fs::File::from_std(master.try_clone()?);
    let mut stdout = io.stdout.take().expect("stdout");
    let out_task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        // EIO once the terminal's last user is gone: that is the end.
        while let Ok(n) = reader.read(&mut buf).await {
            if n == 0 || stdout.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = stdout.shutdown().await;
    });
    let in_task = io.stdin.take().map(|mut stdin| {
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut stdin, &mut writer).await;
        })
    });
    let resize_task = tokio::spawn(async move {
        while let Some(size) = resize.recv().await {
            let ws = winsize(size);
            // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer.
            unsafe { libc::ioctl(master_fd, libc::TIOCSWINSZ, &ws) };
        }
    });
    let status = child.wait().await?;
    let _ = out_task.await;
    resize_task.abort();
    if let Some(t) = in_task {
        t.abort();
    }
    drop(master);
    Ok(status.code().unwrap_or(128))
}

/// A TCP echo server; returns its port.
async fn echo_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (r, w) = s.into_split();
                copy_then_close(r, w).await;
            });
        }
    });
    port
}

struct Harness {
    server: StreamingServer,
    backend: Arc<FakeBackend>,
    _shutdown: tokio::sync::watch::Sender<bool>,
}

async fn start(ttl: Duration) -> Harness {
    start_with(StreamingConfig {
        request_ttl: ttl,
        stream_creation_timeout: Duration::from_secs(30),
        ..StreamingConfig::default()
    })
    .await
}

async fn start_with(config: StreamingConfig) -> Harness {
    let backend = Arc::new(FakeBackend::default());
    let (tx, rx) = tokio::sync::watch::channel(false);
    let (server, _task) = StreamingServer::start(config, backend.clone(), rx)
        .await
        .unwrap();
    Harness {
        server,
        backend,
        _shutdown: tx,
    }
}

impl Harness {
    /// The exec URL of `req`.
    fn exec_url(&self, req: &ExecRequest) -> String {
        self.server.get_exec(req).unwrap()
    }

    /// The port-forward URL of pod "p1" for `ports`.
    fn forward_url(&self, ports: &[u16]) -> String {
        self.server
            .get_port_forward(&PortForwardRequest {
                pod_sandbox_id: "p1".into(),
                port: ports.iter().map(|p| i32::from(*p)).collect(),
            })
            .unwrap()
    }
}

fn exec_req(cmd: &[&str], stdin: bool, stdout: bool, stderr: bool, tty: bool) -> ExecRequest {
    ExecRequest {
        container_id: "c1".into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        stdin,
        stdout,
        stderr,
        tty,
    }
}

/// The address and path of a streaming URL.
// ----------------------------------------------------------- SPDY client

// ------------------------------------------------------------ SPDY tests

#[tokio::test]
async fn spdy_exec_streams_and_exit_codes() {
    let h = start(Duration::from_secs(60)).await;
    // (command, stdout, stderr, expected status JSON checks)
    let cases: Vec<(&str, &str, &str, Option<&str>)> = vec![
        (
            "echo out; echo err >&2; exit 3",
            "out\n",
            "err\n",
            Some("3"),
        ),
        ("echo fine", "fine\n", "", None),
    ];
    for (script, want_out, want_err, want_code) in cases {
        let url = h.exec_url(&exec_req(&["sh", "-c", script], false, true, true, false));
        let (status, head, client) = SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await;
        assert_eq!(status, 101, "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("x-stream-protocol-version: v4.channel.k8s.io"),
            "{head}"
        );
        let mut c = client.unwrap();
        let [error, stdout, stderr] = c.open_types(["error", "stdout", "stderr"]).await;
        let got = c.collect(&[error, stdout, stderr]).await;
        assert_eq!(text(&got, stdout), want_out, "{script}");
        assert_eq!(text(&got, stderr), want_err, "{script}");
        let status = status_json(&got, error);
        match want_code {
            Some(code) => {
                assert_eq!(status["status"], "Failure", "{status}");
                assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
                assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
                assert_eq!(status["details"]["causes"][0]["message"], code);
            }
            None => assert_eq!(
                status,
                serde_json::json!({"metadata": {}, "status": "Success"})
            ),
        }

        // The token was single-use.
        let (status, _, _) = SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await;
        assert_eq!(status, 404);
    }
}

#[tokio::test]
async fn spdy_stdin_half_close_ends_the_command() {
    let h = start(Duration::from_secs(60)).await;
    let url = h.exec_url(&exec_req(&["wc", "-c"], true, true, false, false));
    let (mut c, _) = SpdyClient::upgrade(&url, &["v4.channel.k8s.io"]).await;
    let [error, stdin, stdout] = c.open_types(["error", "stdin", "stdout"]).await;
    c.data(stdin, b"hello ", false).await;
    c.data(stdin, &[b'x'; 100_000], false).await;
    c.data(stdin, b"", true).await;
    let got = c.collect(&[error, stdout]).await;
    assert_eq!(text(&got, stdout).trim(), "100006");
    let status = status_json(&got, error);
    assert_eq!(status["status"], "Success");
}

#[tokio::test]
async fn spdy_tty_resize_reaches_the_backend() {
    let h = start(Duration::from_secs(60)).await;
    let url = h.exec_url(&exec_req(&["cat"], true, true, false, true));
    let (mut c, _) = SpdyClient::upgrade(&url, &["v4.channel.k8s.io"]).await;
    let [error, stdin, stdout, resize] = c.open_types(["error", "stdin", "stdout", "resize"]).await;
    c.data(resize, br#"{"Width":100,"Height":40}"#, false).await;
    c.data(stdin, b"typed\n", true).await;
    let got = c.collect(&[error, stdout]).await;
    assert_eq!(text(&got, stdout), "size 100x40\ntyped\n");
    assert_eq!(
        h.backend.resizes.lock().unwrap().as_slice(),
        &[TermSize {
            width: 100,
            height: 40
        }]
    );
}

#[tokio::test]
async fn spdy_attach_echoes_stdin() {
    let h = start(Duration::from_secs(60)).await;
    let url = h
        .server
        .get_attach(&AttachRequest {
            container_id: "c1".into(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: false,
        })
        .unwrap();
    let (mut c, _) = SpdyClient::upgrade(&url, &["v4.channel.k8s.io"]).await;
    let [error, stdin, stdout] = c.open_types(["error", "stdin", "stdout"]).await;
    c.data(stdin, b"ping\n", true).await;
    let got = c.collect(&[error, stdout]).await;
    assert_eq!(text(&got, stdout), "ping\n");
    let status = status_json(&got, error);
    assert_eq!(status["status"], "Success");
}

#[tokio::test]
async fn spdy_older_protocols_and_backend_errors() {
    let h = start(Duration::from_secs(60)).await;
    // v2: the error stream carries plain text, and nothing on success.
    let url = h.exec_url(&exec_req(
        &["sh", "-c", "exit 5"],
        false,
        true,
        false,
        false,
    ));
    let (status, head, client) =
        SpdyClient::connect(&url, &["v2.channel.k8s.io", "channel.k8s.io"]).await;
    assert_eq!(status, 101);
    assert!(head.contains("v2.channel.k8s.io"), "{head}");
    let mut c = client.unwrap();
    let [error, stdout] = c.open_types(["error", "stdout"]).await;
    let got = c.collect(&[error, stdout]).await;
    assert!(text(&got, error).contains("non-zero exit code"), "{got:?}");

    // An unknown container: a NotFound status.
    let mut req = exec_req(&["true"], false, true, false, false);
    req.container_id = "missing".into();
    let url = h.exec_url(&req);
    let (mut c, _) = SpdyClient::upgrade(&url, &["v4.channel.k8s.io"]).await;
    let [error, stdout] = c.open_types(["error", "stdout"]).await;
    let got = c.collect(&[error, stdout]).await;
    let status = status_json(&got, error);
    assert_eq!(status["reason"], "NotFound", "{status}");

    // No common protocol: 403.
    let url = h.exec_url(&exec_req(&["true"], false, true, false, false));
    let (status, _, _) = SpdyClient::connect(&url, &["v9.channel.k8s.io"]).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn unknown_reused_and_expired_tokens_get_404() {
    // A zero lifetime: every URL has expired by the time it is used.
    let h = start(Duration::ZERO).await;
    let url = h.exec_url(&exec_req(&["true"], false, true, false, false));
    let (status, _, _) = SpdyClient::connect(&url, &["v4.channel.k8s.io"]).await;
    assert_eq!(status, 404);
    let base = h.server.base_url().to_string();
    for path in ["/exec/nosuchtoken", "/attach/x", "/portforward/", "/other"] {
        let (status, _, _, _) = http_request(&format!("{base}{path}"), &[]).await;
        assert_eq!(status, 404, "{path}");
    }

    // A live token used with the wrong kind of URL is consumed and 404s.
    let h = start(Duration::from_secs(60)).await;
    let url = h.exec_url(&exec_req(&["true"], false, true, false, false));
    let wrong = url.replace("/exec/", "/attach/");
    let (status, _, _) = SpdyClient::connect(&wrong, &["v4.channel.k8s.io"]).await;
    assert_eq!(status, 404);
    // A request without upgrade headers is refused.
    let url = h.exec_url(&exec_req(&["true"], false, true, false, false));
    let (status, _, _, _) = http_request(&url, &[]).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn invalid_requests_are_invalid_argument() {
    let h = start(Duration::from_secs(60)).await;
    let cases = [
        exec_req(&["sh"], false, false, false, false),
        exec_req(&["sh"], false, true, true, true),
        exec_req(&[], false, true, false, false),
    ];
    for req in cases {
        let err = h.server.get_exec(&req).unwrap_err();
        assert_eq!(
            CriError::from(err).code(),
            tonic::Code::InvalidArgument,
            "{req:?}"
        );
    }
    let err = h
        .server
        .get_port_forward(&PortForwardRequest {
            pod_sandbox_id: String::new(),
            port: vec![80],
        })
        .unwrap_err();
    assert_eq!(CriError::from(err).code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn spdy_port_forward_echo() {
    let h = start(Duration::from_secs(60)).await;
    let port = echo_server().await;
    let url = h.forward_url(&[port]);
    let (mut c, _) = SpdyClient::upgrade(&url, &["portforward.k8s.io"]).await;
    let p = port.to_string();
    // Two concurrent forwarded connections on one SPDY connection.
    let mut pairs = Vec::new();
    for request_id in ["0", "1"] {
        let error = c
            .open(&[
                ("streamType", "error"),
                ("port", &p),
                ("requestID", request_id),
            ])
            .await;
        let data = c
            .open(&[
                ("streamType", "data"),
                ("port", &p),
                ("requestID", request_id),
            ])
            .await;
        pairs.push((error, data, request_id));
    }
    for (_, data, request_id) in &pairs {
        c.data(*data, format!("hello {request_id}").as_bytes(), true)
            .await;
    }
    let ids: Vec<u32> = pairs.iter().flat_map(|(e, d, _)| [*e, *d]).collect();
    let got = c.collect(&ids).await;
    for (error, data, request_id) in &pairs {
        assert_eq!(text(&got, *data), format!("hello {request_id}"));
        assert_eq!(text(&got, *error), "");
    }

    // A port with nothing listening: the error stream says why.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cp = closed.to_string();
    let error = c
        .open(&[("streamType", "error"), ("port", &cp), ("requestID", "2")])
        .await;
    let data = c
        .open(&[("streamType", "data"), ("port", &cp), ("requestID", "2")])
        .await;
    let got = c.collect(&[error, data]).await;
    assert!(
        text(&got, error).contains(&format!("error forwarding port {closed}")),
        "{got:?}"
    );
}

// ------------------------------------------------------- WebSocket tests

#[tokio::test]
async fn websocket_exec_with_a_general_purpose_client() {
    let h = start(Duration::from_secs(60)).await;
    for protocol in ["v5.channel.k8s.io", "v4.channel.k8s.io"] {
        let url = h.exec_url(&exec_req(
            &["sh", "-c", "echo out; echo err >&2; exit 3"],
            false,
            true,
            true,
            false,
        ));
        let (mut ws, chosen) = ws_connect(&url, protocol).await;
        assert_eq!(chosen.as_deref(), Some(protocol));
        let (got, first) = ws_collect(&mut ws).await;
        // The readiness signal: an empty message on stdout first.
        assert_eq!(first, Some((1, 0)));
        assert_eq!(ch(&got, 1), "out\n");
        assert_eq!(ch(&got, 2), "err\n");
        let status: serde_json::Value = serde_json::from_slice(&got[&3]).unwrap();
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(status["details"]["causes"][0]["message"], "3");
    }
}

#[tokio::test]
async fn websocket_v5_stdin_close() {
    let h = start(Duration::from_secs(60)).await;
    let url = h.exec_url(&exec_req(&["cat"], true, true, false, false));
    let (mut ws, _) = ws_connect(&url, "v5.channel.k8s.io").await;
    let mut msg = vec![0u8];
    msg.extend_from_slice(b"through stdin\n");
    ws.send(Message::Binary(msg.into())).await.unwrap();
    // v5: close the stdin channel; cat sees EOF and exits.
    ws.send(Message::Binary(vec![255u8, 0].into()))
        .await
        .unwrap();
    let (got, _) = ws_collect(&mut ws).await;
    assert_eq!(ch(&got, 1), "through stdin\n");
    let status: serde_json::Value = serde_json::from_slice(&got[&3]).unwrap();
    assert_eq!(status["status"], "Success");
}

#[tokio::test]
async fn websocket_tty_resize() {
    let h = start(Duration::from_secs(60)).await;
    let url = h.exec_url(&exec_req(&["cat"], true, true, false, true));
    let (mut ws, _) = ws_connect(&url, "v5.channel.k8s.io").await;
    let mut resize = vec![4u8];
    resize.extend_from_slice(br#"{"Width":132,"Height":50}"#);
    ws.send(Message::Binary(resize.into())).await.unwrap();
    ws.send(Message::Binary(vec![255u8, 0].into()))
        .await
        .unwrap();
    let (got, _) = ws_collect(&mut ws).await;
    assert_eq!(ch(&got, 1), "size 132x50\n");
}

#[tokio::test]
async fn websocket_port_forward_echo() {
    let h = start(Duration::from_secs(60)).await;
    let port = echo_server().await;
    let url = h.forward_url(&[]);
    let (mut ws, chosen) = ws_connect(&format!("{url}?port={port}"), "v4.channel.k8s.io").await;
    assert_eq!(chosen.as_deref(), Some("v4.channel.k8s.io"));
    // The first message of the data (0) and error (1) channels is the port.
    let mut seen = HashMap::new();
    while seen.len() < 2 {
        match ws.next().await.unwrap().unwrap() {
            Message::Binary(d) => {
                seen.insert(d[0], d[1..].to_vec());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen[&0], port.to_le_bytes().to_vec());
    assert_eq!(seen[&1], port.to_le_bytes().to_vec());
    let mut msg = vec![0u8];
    msg.extend_from_slice(b"echo me");
    ws.send(Message::Binary(msg.into())).await.unwrap();
    let mut echoed = Vec::new();
    while echoed.len() < 7 {
        match ws.next().await.unwrap().unwrap() {
            Message::Binary(d) if d[0] == 0 => echoed.extend_from_slice(&d[1..]),
            Message::Binary(d) => panic!("unexpected channel {}", d[0]),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(echoed, b"echo me");
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn server_stops_on_shutdown() {
    let backend = Arc::new(FakeBackend::default());
    let (tx, rx) = tokio::sync::watch::channel(false);
    let (server, task) = StreamingServer::start(StreamingConfig::default(), backend, rx)
        .await
        .unwrap();
    assert!(server.base_url().starts_with("http://127.0.0.1:"));
    assert_ne!(server.local_addr().port(), 0);
    tx.send(true).unwrap();
    task.await.unwrap();
}

#[tokio::test]
async fn spdy_client_that_opens_no_streams_is_dropped() {
    // A zero creation timeout: the server gives up at once.
    let h = start_with(StreamingConfig {
        stream_creation_timeout: Duration::ZERO,
        ..StreamingConfig::default()
    })
    .await;
    let url = h.exec_url(&exec_req(&["true"], false, true, false, false));
    let (mut c, _) = SpdyClient::upgrade(&url, &["v4.channel.k8s.io"]).await;
    // Ends with GOAWAY or EOF rather than hanging.
    let got = c.collect(&[1]).await;
    assert!(got.is_empty());
}

#[tokio::test]
async fn spdy_unexpected_streams_are_reset() {
    let h = start(Duration::from_secs(60)).await;
    let url = h.exec_url(&exec_req(&["echo", "hi"], false, true, false, false));
    let (mut c, _) = SpdyClient::upgrade(&url, &["v4.channel.k8s.io"]).await;
    // stderr was not requested; "bogus" is no stream type.
    let [stderr, bogus, error, stdout] = c.open_types(["stderr", "bogus", "error", "stdout"]).await;
    let got = c.collect(&[stderr, bogus, error, stdout]).await;
    assert_eq!(text(&got, stdout), "hi\n");
    assert!(!got.contains_key(&stderr));
}

/// Writes a self-signed certificate for 127.0.0.1 with the openssl tool;
/// `None` when the tool is missing.
fn self_signed(dir: &std::path::Path) -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "1", "-subj", "/CN=crius-test"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    status.success().then_some((cert, key))
}

#[tokio::test]
async fn tls_websocket_exec() {
    use crius_cri_server::streaming::TlsFiles;
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

    let dir = tempfile::tempdir().unwrap();
    let Some((cert, key)) = self_signed(dir.path()) else {
        eprintln!("openssl not available; skipping the TLS test");
        return;
    };
    // Missing files are a start-up error.
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let bad = StreamingConfig {
        tls: Some(TlsFiles {
            cert: dir.path().join("none.pem"),
            key: key.clone(),
        }),
        ..StreamingConfig::default()
    };
    assert!(
        StreamingServer::start(bad, Arc::new(FakeBackend::default()), rx)
            .await
            .is_err()
    );

    let h = start_with(StreamingConfig {
        tls: Some(TlsFiles {
            cert: cert.clone(),
            key,
        }),
        ..StreamingConfig::default()
    })
    .await;
    let url = h.exec_url(&exec_req(&["echo", "secure"], false, true, false, false));
    let rest = url.strip_prefix("https://").expect("an https url");
    let (addr, path) = split_url(&format!("http://{rest}"));

    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&cert).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .unwrap();
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v5.channel.k8s.io".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    let mut out = Vec::new();
    let mut status = Vec::new();
    while let Some(Ok(msg)) = ws.next().await {
        match msg {
            Message::Binary(d) if d.first() == Some(&1) => out.extend_from_slice(&d[1..]),
            Message::Binary(d) if d.first() == Some(&3) => status.extend_from_slice(&d[1..]),
            Message::Close(_) => break,
            _ => {}
        }
    }
    assert_eq!(out, b"secure\n");
    let status: serde_json::Value = serde_json::from_slice(&status).unwrap();
    assert_eq!(status["status"], "Success");
}

#[tokio::test]
async fn spdy_tty_exec_on_a_real_terminal() {
    let h = start(Duration::from_secs(60)).await;
    let mut req = exec_req(
        &["sh", "-c", "stty size; test -t 0 && echo on-a-tty"],
        true,
        true,
        false,
        true,
    );
    req.container_id = "pty".into();
    let url = h.exec_url(&req);
    let (mut c, _) = SpdyClient::upgrade(&url, &["v4.channel.k8s.io"]).await;
    let [error, stdin, stdout, resize] = c.open_types(["error", "stdin", "stdout", "resize"]).await;
    c.data(resize, br#"{"Width":123,"Height":45}"#, false).await;
    let got = c.collect(&[error, stdout]).await;
    let out = text(&got, stdout);
    // The terminal turns newlines into CR LF.
    assert!(out.contains("45 123\r\n"), "{out:?}");
    assert!(out.contains("on-a-tty"), "{out:?}");
    let status = status_json(&got, error);
    assert_eq!(status["status"], "Success");
    let _ = stdin;
}

/// A TCP server that sends `greeting` and closes; returns its port.
async fn greeting_server(greeting: &'static [u8]) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.write_all(greeting).await;
            let _ = s.shutdown().await;
        }
    });
    port
}

#[tokio::test]
async fn spdy_port_forward_ends_when_the_target_closes() {
    // Like kubectl: the client half-closes the error stream at once and
    // keeps its data stream open until the error stream ends.
    let h = start(Duration::from_secs(60)).await;
    let port = greeting_server(b"HTTP/1.0 200 OK\r\n\r\nhello").await;
    let url = h.forward_url(&[port]);
    let (mut c, _) = SpdyClient::upgrade(&url, &["portforward.k8s.io"]).await;
    let p = port.to_string();
    let error = c
        .open(&[("streamType", "error"), ("port", &p), ("requestID", "0")])
        .await;
    c.data(error, b"", true).await;
    let data = c
        .open(&[("streamType", "data"), ("port", &p), ("requestID", "0")])
        .await;
    c.data(data, b"GET / HTTP/1.0\r\n\r\n", false).await;
    let got = c.collect(&[error, data]).await;
    assert_eq!(text(&got, data), "HTTP/1.0 200 OK\r\n\r\nhello");
    assert_eq!(text(&got, error), "");
}

#[tokio::test]
async fn idle_sessions_are_closed() {
    // A zero idle timeout: sessions end at once instead of waiting on a
    // `cat` whose stdin never closes.
    let h = start_with(StreamingConfig {
        stream_idle_timeout: Duration::ZERO,
        ..StreamingConfig::default()
    })
    .await;
    let url = h.exec_url(&exec_req(&["cat"], true, true, false, false));
    let (mut c, _) = SpdyClient::upgrade(&url, &["v4.channel.k8s.io"]).await;
    let [error, _stdin, stdout] = c.open_types(["error", "stdin", "stdout"]).await;
    let got = c.collect(&[error, stdout]).await;
    assert_eq!(text(&got, error), "");

    let url = h.exec_url(&exec_req(&["cat"], true, true, false, false));
    let (mut ws, _) = ws_connect(&url, "v5.channel.k8s.io").await;
    let (got, _) = ws_collect(&mut ws).await;
    assert!(!got.contains_key(&3), "{got:?}");
}

/// A Go client built on moby/spdystream (the SPDY library of kubelet and
/// client-go), for the interop test below.
const GO_SPDY_CLIENT: &str = r#"// Interop check: exec and port-forward through the crius streaming server
// with moby/spdystream, the SPDY implementation kubelet and client-go use.
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"

	"github.com/moby/spdystream"
)

type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (b *bufConn) Read(p []byte) (int, error) { return b.r.Read(p) }

func dial(raw, proto string) *spdystream.Connection {
	u, err := url.Parse(raw)
	must(err)
	c, err := net.Dial("tcp", u.Host)
	must(err)
	req, err := http.NewRequest("POST", raw, nil)
	must(err)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "SPDY/3.1")
	req.Header.Add("X-Stream-Protocol-Version", proto)
	must(req.Write(c))
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, req)
	must(err)
	if resp.StatusCode != 101 {
		fail("status %d", resp.StatusCode)
	}
	if got := resp.Header.Get("X-Stream-Protocol-Version"); got != proto {
		fail("negotiated %q", got)
	}
	conn, err := spdystream.NewConnection(&bufConn{c, br}, false)
	must(err)
	go conn.Serve(spdystream.NoOpStreamHandler)
	return conn
}

func open(conn *spdystream.Connection, h http.Header) *spdystream.Stream {
	s, err := conn.CreateStream(h, nil, false)
	must(err)
	must(s.Wait())
	return s
}

func exec(raw string) {
	conn := dial(raw, "v4.channel.k8s.io")
	hdr := func(t string) http.Header { h := http.Header{}; h.Set("streamType", t); return h }
	errS := open(conn, hdr("error"))
	stdin := open(conn, hdr("stdin"))
	stdout := open(conn, hdr("stdout"))
	stderr := open(conn, hdr("stderr"))
	outc := make(chan []byte)
	errc := make(chan []byte)
	go func() { b, _ := io.ReadAll(stdout); outc <- b }()
	go func() { b, _ := io.ReadAll(stderr); errc <- b }()
	_, err := stdin.Write([]byte("from go\n"))
	must(err)
	must(stdin.Close())
	status, _ := io.ReadAll(errS)
	fmt.Printf("stdout=%q\nstderr=%q\nstatus=%s\n", <-outc, <-errc, status)
	conn.Close()
}

func portForward(raw, port string) {
	conn := dial(raw, "portforward.k8s.io")
	h := http.Header{}
	h.Set("streamType", "error")
	h.Set("port", port)
	h.Set("requestID", "0")
	errS := open(conn, h)
	must(errS.Close())
	h = http.Header{}
	h.Set("streamType", "data")
	h.Set("port", port)
	h.Set("requestID", "0")
	data := open(conn, h)
	_, err := data.Write([]byte("ping over spdystream"))
	must(err)
	must(data.Close())
	got, _ := io.ReadAll(data)
	msg, _ := io.ReadAll(errS)
	fmt.Printf("forwarded=%q\nforward-error=%q\n", got, msg)
	conn.Close()
}

func must(err error) {
	if err != nil {
		fail("%v", err)
	}
}

func fail(f string, a ...interface{}) {
	fmt.Fprintf(os.Stderr, f+"\n", a...)
	os.Exit(1)
}

func main() {
	exec(os.Args[1])
	portForward(os.Args[2], os.Args[3])
}
"#;

/// Interop with the Go SPDY stack: runs only when `CRIUS_SPDYSTREAM_SRC`
/// names a checkout of github.com/moby/spdystream and `go` is installed
/// (it builds offline against that checkout).
#[tokio::test]
async fn go_spdystream_client_interop() {
    let Ok(src) = std::env::var("CRIUS_SPDYSTREAM_SRC") else {
        eprintln!("CRIUS_SPDYSTREAM_SRC not set; skipping the Go interop test");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("main.go"), GO_SPDY_CLIENT).unwrap();
    std::fs::write(
        dir.path().join("go.mod"),
        format!(
            "module crius.test/spdyinterop\n\ngo 1.19\n\nrequire github.com/moby/spdystream v0.0.0\n\nreplace github.com/moby/spdystream => {src}\n"
        ),
    )
    .unwrap();
    let bin = dir.path().join("client");
    let built = tokio::process::Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(dir.path())
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .env("GOCACHE", dir.path().join("cache"))
        .status()
        .await
        .expect("go is installed");
    assert!(built.success());

    let h = start(Duration::from_secs(60)).await;
    let port = echo_server().await;
    let exec = h.exec_url(&exec_req(
        &["sh", "-c", "cat; echo err >&2; exit 4"],
        true,
        true,
        true,
        false,
    ));
    let pf = h.forward_url(&[port]);
    let out = tokio::process::Command::new(&bin)
        .arg(&exec)
        .arg(&pf)
        .arg(port.to_string())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("stdout=\"from go\\n\""), "{stdout}");
    assert!(stdout.contains("stderr=\"err\\n\""), "{stdout}");
    assert!(stdout.contains(r#""reason":"NonZeroExitCode""#), "{stdout}");
    assert!(
        stdout.contains(r#"{"message":"4","reason":"ExitCode"}"#),
        "{stdout}"
    );
    assert!(
        stdout.contains("forwarded=\"ping over spdystream\""),
        "{stdout}"
    );
    assert!(stdout.contains("forward-error=\"\""), "{stdout}");
}

#[tokio::test]
async fn in_flight_requests_are_bounded() {
    let h = start_with(StreamingConfig {
        max_in_flight: 2,
        ..StreamingConfig::default()
    })
    .await;
    let req = exec_req(&["true"], false, true, false, false);
    let first = h.exec_url(&req);
    h.exec_url(&req);
    let err = h.server.get_exec(&req).unwrap_err();
    assert_eq!(CriError::from(err).code(), tonic::Code::ResourceExhausted);
    // Using a URL frees its slot.
    let (status, _, _, _) = http_request(&first, &[]).await;
    assert_eq!(status, 400);
    h.exec_url(&req);
}
