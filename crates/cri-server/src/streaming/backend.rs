//! What the streaming server needs from the runtime: running a command in a
//! container, joining a container's stdio, and reaching a port in a pod.

use bytes::Bytes;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;

/// A boxed byte source (a client's stdin).
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// A boxed byte sink (a client's stdout or stderr).
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// A terminal size, as the client sends it on the resize stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct TermSize {
    /// Columns.
    #[serde(rename = "Width")]
    pub width: u16,
    /// Rows.
    #[serde(rename = "Height")]
    pub height: u16,
}

/// The client's streams of one exec or attach session.
///
/// `stdin` reaches EOF when the client closes it. In TTY mode there is no
/// `stderr`: the terminal carries both outputs on `stdout`. A backend must
/// drop (or shut down) `stdout`/`stderr` before it returns, after writing
/// everything: the exit status is sent to the client after both are closed.
pub struct StreamIo {
    /// The client's input, when it asked for stdin.
    pub stdin: Option<BoxRead>,
    /// The client's output.
    pub stdout: Option<BoxWrite>,
    /// The client's error output (never in TTY mode).
    pub stderr: Option<BoxWrite>,
    /// Whether the session runs on a terminal.
    pub tty: bool,
    /// Terminal size changes (TTY mode only).
    pub resize: Option<mpsc::Receiver<TermSize>>,
}

impl std::fmt::Debug for StreamIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamIo")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("tty", &self.tty)
            .field("resize", &self.resize.is_some())
            .finish()
    }
}

/// Errors a backend reports; the message reaches the client.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The container or sandbox does not exist (any more).
    #[error("not found: {0}")]
    NotFound(String),
    /// The operation is not possible in the current state (e.g. a stopped
    /// container, or stdin that the container config does not allow).
    #[error("{0}")]
    FailedPrecondition(String),
    /// Anything else.
    #[error("{0}")]
    Internal(String),
}

impl From<std::io::Error> for BackendError {
    fn from(e: std::io::Error) -> Self {
        BackendError::Internal(e.to_string())
    }
}

/// The runtime side of the streaming server. criusd implements it with the
/// per-pod shim; tests implement it with local processes.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Runs `cmd` in the container with the client's streams; returns the
    /// command's exit code.
    async fn exec(
        &self,
        container_id: &str,
        cmd: Vec<String>,
        io: StreamIo,
    ) -> Result<i32, BackendError>;

    /// Joins the running container's stdio until the client or the
    /// container goes away.
    async fn attach(&self, container_id: &str, io: StreamIo) -> Result<(), BackendError>;

    /// Connects `stream` to `port` inside the sandbox's network namespace,
    /// copying both ways (see [`splice`]). Reading EOF from `stream` means
    /// the client has finished sending (half-close). An error (e.g. nothing
    /// listens on the port) is reported to the client on the error stream.
    async fn port_forward(
        &self,
        sandbox_id: &str,
        port: u16,
        stream: tokio::io::DuplexStream,
    ) -> Result<(), BackendError>;
}

/// Copies between a port-forward `stream` and a connection to the target
/// in both directions, passing each side's EOF on as a half-close; returns
/// when both directions have ended. (The server ends a forward shortly
/// after the target's side has closed even if the client's has not.)
pub async fn splice<T>(stream: tokio::io::DuplexStream, target: T) -> std::io::Result<()>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let (mut sr, mut sw) = tokio::io::split(stream);
    let (mut tr, mut tw) = tokio::io::split(target);
    let up = async {
        let r = tokio::io::copy(&mut sr, &mut tw).await;
        let _ = tw.shutdown().await;
        r
    };
    let down = async {
        let r = tokio::io::copy(&mut tr, &mut sw).await;
        let _ = sw.shutdown().await;
        r
    };
    let (a, b) = tokio::join!(up, down);
    a?;
    b?;
    Ok(())
}

/// An [`AsyncRead`] over a channel of chunks: EOF when the sender is dropped.
pub struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    pending: Bytes,
}

impl ChannelReader {
    /// Reads what arrives on `rx`.
    pub fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        ChannelReader {
            rx,
            pending: Bytes::new(),
        }
    }
}

impl AsyncRead for ChannelReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(chunk)) => self.pending = chunk,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn channel_reader_reads_chunks_then_eof() {
        let (tx, rx) = mpsc::channel(4);
        let mut r = ChannelReader::new(rx);
        tx.send(Bytes::from_static(b"ab")).await.unwrap();
        tx.send(Bytes::new()).await.unwrap();
        tx.send(Bytes::from_static(b"cde")).await.unwrap();
        drop(tx);
        let mut s = String::new();
        r.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "abcde");
    }

    #[tokio::test]
    async fn splice_passes_half_closes() {
        use tokio::io::AsyncWriteExt;
        let (client, stream) = tokio::io::duplex(64);
        let (target, mut far) = tokio::io::duplex(64);
        let task = tokio::spawn(splice(stream, target));
        let (mut cr, mut cw) = tokio::io::split(client);
        cw.write_all(b"up").await.unwrap();
        cw.shutdown().await.unwrap();
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"up");
        far.write_all(b"down").await.unwrap();
        far.shutdown().await.unwrap();
        let mut got = Vec::new();
        cr.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"down");
        task.await.unwrap().unwrap();
    }

    #[test]
    fn term_size_json() {
        let t: TermSize = serde_json::from_str(r#"{"Width":80,"Height":24}"#).unwrap();
        assert_eq!(
            t,
            TermSize {
                width: 80,
                height: 24
            }
        );
    }
}
