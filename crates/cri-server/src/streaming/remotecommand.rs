//! Remote command sessions (exec and attach) over SPDY or WebSocket.

use super::backend::ChannelReader;
use super::backend::{Backend, BackendError, StreamIo};
use super::pump::{spawn_resize, spawn_writer, Out};
use super::spdy::header;
use super::spdy_conn::{SpdyConn, SpdyStream};
use super::ws::WsConn;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// SPDY subprotocols for remote commands, most preferred first.
pub const SPDY_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// WebSocket subprotocols for remote commands.
pub const WS_PROTOCOLS: &[&str] = &[super::ws::V5, super::ws::V4, super::ws::V1];

/// Most streams a remote command client may open.
const MAX_STREAMS: usize = 8;
/// How long output may take to drain after the command ends.
const OUTPUT_DRAIN: Duration = Duration::from_secs(10);

/// Time limits of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Time the client has to open its streams (SPDY).
    pub stream_creation: Duration,
    /// A connection with no traffic for this long is closed.
    pub idle: Duration,
}

/// Which streams the CRI request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    /// Client sends input.
    pub stdin: bool,
    /// Client receives output.
    pub stdout: bool,
    /// Client receives error output.
    pub stderr: bool,
    /// Run on a terminal.
    pub tty: bool,
}

/// What to run.
#[derive(Debug, Clone)]
pub enum Target {
    /// A new process in the container.
    Exec {
        /// Container id.
        container_id: String,
        /// Command and arguments.
        cmd: Vec<String>,
    },
    /// The container's main process.
    Attach {
        /// Container id.
        container_id: String,
    },
}

/// The protocol version number of a negotiated remote command protocol
/// (1 for the unversioned `channel.k8s.io`).
pub fn protocol_version(name: &str) -> u8 {
    match name {
        "v5.channel.k8s.io" => 5,
        "v4.channel.k8s.io" => 4,
        "v3.channel.k8s.io" => 3,
        "v2.channel.k8s.io" => 2,
        _ => 1,
    }
}

/// The outcome of a session, as reported on the error stream.
#[derive(Debug)]
pub enum Outcome {
    /// The command exited with this code.
    Exited(i32),
    /// Attach ended normally.
    Detached,
    /// The backend failed.
    Failed(BackendError),
}

/// The bytes written on the error stream for `outcome` under protocol
/// `version`; `None` when nothing is written (success before v4).
pub fn status_message(version: u8, outcome: &Outcome) -> Option<Vec<u8>> {
    let text = match outcome {
        Outcome::Exited(0) | Outcome::Detached => None,
        Outcome::Exited(code) => Some(format!(
            "command terminated with non-zero exit code: exit status {code}"
        )),
        Outcome::Failed(e) => Some(e.to_string()),
    };
    if version < 4 {
        return text.map(String::into_bytes);
    }
    let status = match outcome {
        Outcome::Exited(0) | Outcome::Detached => serde_json::json!({
            "metadata": {},
            "status": "Success",
        }),
        Outcome::Exited(code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": text.unwrap_or_default(),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Outcome::Failed(e) => {
            let (reason, code, message) = match e {
                BackendError::NotFound(_) => ("NotFound", 404, e.to_string()),
                BackendError::FailedPrecondition(_) => ("BadRequest", 400, e.to_string()),
                BackendError::Internal(_) => (
                    "InternalError",
                    500,
                    format!("Internal error occurred: {e}"),
                ),
            };
            serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": reason,
                "details": {"causes": [{"message": e.to_string()}]},
                "code": code,
            })
        }
    };
    Some(status.to_string().into_bytes())
}

/// Number of streams a SPDY client must open for `opts`.
pub fn expected_streams(version: u8, opts: &Options) -> usize {
    1 + opts.stdin as usize
        + opts.stdout as usize
        + opts.stderr as usize
        + (opts.tty && version >= 3) as usize
}

async fn run_backend(
    backend: &Arc<dyn Backend>,
    target: &Target,
    io: StreamIo,
    mut closed: watch::Receiver<bool>,
) -> Option<Outcome> {
    let run = async {
        match target {
            Target::Exec { container_id, cmd } => {
                match backend.exec(container_id, cmd.clone(), io).await {
                    Ok(code) => Outcome::Exited(code),
                    Err(e) => Outcome::Failed(e),
                }
            }
            Target::Attach { container_id } => match backend.attach(container_id, io).await {
                Ok(()) => Outcome::Detached,
                Err(e) => Outcome::Failed(e),
            },
        }
    };
    let gone = async {
        while !*closed.borrow() {
            if closed.changed().await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        outcome = run => Some(outcome),
        _ = gone => None,
    }
}

async fn drain(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        if tokio::time::timeout(OUTPUT_DRAIN, t).await.is_err() {
            tracing::warn!("session output did not drain in time");
        }
    }
}

/// Serves a remote command over an upgraded SPDY connection.
pub async fn serve_spdy<IO>(
    io: IO,
    version: u8,
    opts: Options,
    target: Target,
    backend: Arc<dyn Backend>,
    timeouts: Timeouts,
) where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let creation_timeout = timeouts.stream_creation;
    let mut conn = SpdyConn::serve(io, MAX_STREAMS, timeouts.idle);
    let expected = expected_streams(version, &opts);
    let mut got: HashMap<String, SpdyStream> = HashMap::new();
    let deadline = tokio::time::sleep(creation_timeout);
    tokio::pin!(deadline);
    while got.len() < expected {
        tokio::select! {
            s = conn.streams.recv() => match s {
                None => {
                    tracing::debug!("client left before opening its streams");
                    conn.close().await;
                    return;
                }
                Some(s) => {
                    let kind = header(&s.headers, "streamtype").unwrap_or("").to_string();
                    let wanted = match kind.as_str() {
                        "error" => true,
                        "stdin" => opts.stdin,
                        "stdout" => opts.stdout,
                        "stderr" => opts.stderr,
                        "resize" => opts.tty && version >= 3,
                        _ => false,
                    };
                    if !wanted || got.contains_key(&kind) {
                        tracing::debug!(stream_type = %kind, "unexpected stream");
                        let _ = s.tx.reset(super::spdy::RST_CANCEL).await;
                        continue;
                    }
                    got.insert(kind, s);
                }
            },
            _ = &mut deadline => {
                tracing::info!(timeout = ?creation_timeout, "timed out waiting for client streams");
                conn.close().await;
                return;
            }
        }
    }
    // No more streams are accepted.
    conn.streams.close();

    let mut tasks = Vec::new();
    let stdin = got
        .remove("stdin")
        .map(|s| Box::new(ChannelReader::new(s.rx)) as super::backend::BoxRead);
    let mut writer = |name: &str| {
        got.remove(name).map(|s| {
            let (w, t) = spawn_writer(Out::Spdy(s.tx));
            tasks.push(t);
            w
        })
    };
    let stdout = writer("stdout");
    let stderr = writer("stderr");
    let resize = got.remove("resize").map(|s| {
        let (sizes, t) = spawn_resize(s.rx);
        // The resize parser ends with its stream; it is not output.
        drop(t);
        sizes
    });
    let error = match got.remove("error") {
        Some(s) => s,
        None => {
            conn.close().await;
            return;
        }
    };
    let io = StreamIo {
        stdin,
        stdout,
        stderr,
        tty: opts.tty,
        resize,
    };
    let outcome = run_backend(&backend, &target, io, conn.closed()).await;
    drain(tasks).await;
    if let Some(outcome) = outcome {
        log_outcome(&target, &outcome);
        if let Some(msg) = status_message(version, &outcome) {
            let _ = error.tx.send(Bytes::from(msg)).await;
        }
        let _ = error.tx.close().await;
    }
    conn.close().await;
}

/// Serves a remote command over an upgraded WebSocket connection with the
/// negotiated `protocol` (see [`WS_PROTOCOLS`]).
pub async fn serve_ws<IO>(
    io: IO,
    protocol: &str,
    opts: Options,
    target: Target,
    backend: Arc<dyn Backend>,
    timeouts: Timeouts,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    const STDIN: u8 = 0;
    const STDOUT: u8 = 1;
    const STDERR: u8 = 2;
    const ERROR: u8 = 3;
    const RESIZE: u8 = 4;
    let version = protocol_version(protocol);
    let mut inbound = HashMap::new();
    let mut stdin_rx = None;
    let mut resize_rx = None;
    if opts.stdin {
        let (tx, rx) = mpsc::channel(16);
        inbound.insert(STDIN, tx);
        stdin_rx = Some(rx);
    }
    if opts.tty {
        let (tx, rx) = mpsc::channel(16);
        inbound.insert(RESIZE, tx);
        resize_rx = Some(rx);
    }
    let conn = WsConn::serve(io, inbound, version >= 5, timeouts.idle).await;
    let out = |channel| Out::Ws {
        channel,
        tx: conn.out.clone(),
    };
    // An empty message on the lowest writable channel tells the client the
    // session is established.
    let ready = if opts.stdout {
        STDOUT
    } else if opts.stderr {
        STDERR
    } else {
        ERROR
    };
    if out(ready).send(Bytes::new()).await.is_err() {
        conn.close().await;
        return;
    }
    let mut tasks = Vec::new();
    let mut writer = |wanted: bool, channel| {
        wanted.then(|| {
            let (w, t) = spawn_writer(out(channel));
            tasks.push(t);
            w
        })
    };
    let stdout = writer(opts.stdout, STDOUT);
    let stderr = writer(opts.stderr, STDERR);
    let io = StreamIo {
        stdin: stdin_rx.map(|rx| Box::new(ChannelReader::new(rx)) as super::backend::BoxRead),
        stdout,
        stderr,
        tty: opts.tty,
        resize: resize_rx.map(|rx| spawn_resize(rx).0),
    };
    let outcome = run_backend(&backend, &target, io, conn.closed()).await;
    drain(tasks).await;
    if let Some(outcome) = outcome {
        log_outcome(&target, &outcome);
        if let Some(msg) = status_message(version, &outcome) {
            let _ = out(ERROR).send(Bytes::from(msg)).await;
        }
    }
    conn.close().await;
}

fn log_outcome(target: &Target, outcome: &Outcome) {
    match (target, outcome) {
        (_, Outcome::Failed(e)) => tracing::info!(?target, error = %e, "streaming session failed"),
        (_, o) => tracing::debug!(?target, outcome = ?o, "streaming session ended"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_messages() {
        let json = |v: &Option<Vec<u8>>| -> serde_json::Value {
            serde_json::from_slice(v.as_ref().unwrap()).unwrap()
        };
        assert_eq!(
            json(&status_message(4, &Outcome::Exited(0))),
            serde_json::json!({"metadata": {}, "status": "Success"})
        );
        let v = json(&status_message(4, &Outcome::Exited(3)));
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        let v = json(&status_message(
            5,
            &Outcome::Failed(BackendError::NotFound("container x".into())),
        ));
        assert_eq!(v["reason"], "NotFound");
        assert_eq!(v["code"], 404);
        // Before v4: plain text, nothing on success.
        assert_eq!(status_message(3, &Outcome::Exited(0)), None);
        assert_eq!(status_message(2, &Outcome::Detached), None);
        let text = String::from_utf8(status_message(2, &Outcome::Exited(7)).unwrap()).unwrap();
        assert!(text.contains("non-zero exit code"), "{text}");
    }

    #[test]
    fn expected_stream_counts() {
        let o = |stdin, stdout, stderr, tty| Options {
            stdin,
            stdout,
            stderr,
            tty,
        };
        // (version, options, expected)
        let cases = [
            (4, o(false, true, true, false), 3),
            (4, o(true, true, true, false), 4),
            (4, o(true, true, false, true), 4),
            (2, o(true, true, false, true), 3),
            (1, o(false, true, false, false), 2),
        ];
        for (v, opts, want) in cases {
            assert_eq!(expected_streams(v, &opts), want, "{v} {opts:?}");
        }
        assert_eq!(protocol_version("v4.channel.k8s.io"), 4);
        assert_eq!(protocol_version("channel.k8s.io"), 1);
    }
}
