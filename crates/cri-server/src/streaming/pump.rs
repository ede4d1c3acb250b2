//! Outgoing channels shared by the SPDY and WebSocket transports, and the
//! tasks that move a backend's writes onto them.

use super::backend::{BoxWrite, TermSize};
use super::spdy_conn::{StreamSender, MAX_DATA_CHUNK};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A message for a WebSocket connection's writer.
#[derive(Debug)]
pub enum WsOut {
    /// A binary message: the channel byte, then the data.
    Data(u8, Bytes),
    /// Send a close frame and stop.
    Close,
}

/// Where one outgoing stream of a session goes.
#[derive(Clone)]
pub enum Out {
    /// A SPDY stream.
    Spdy(StreamSender),
    /// A channel of a WebSocket connection.
    Ws {
        /// The channel byte.
        channel: u8,
        /// The connection's writer.
        tx: mpsc::Sender<WsOut>,
    },
}

impl Out {
    /// Sends data.
    pub async fn send(&self, data: Bytes) -> std::io::Result<()> {
        match self {
            Out::Spdy(s) => s.send(data).await,
            Out::Ws { channel, tx } => {
                let mut data = data;
                // An empty message is meaningful (the readiness signal).
                loop {
                    let n = data.len().min(MAX_DATA_CHUNK);
                    let chunk = data.split_to(n);
                    tx.send(WsOut::Data(*channel, chunk))
                        .await
                        .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
                    if data.is_empty() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Ends the stream (SPDY: FIN; WebSocket: nothing, the connection's
    /// close ends every channel).
    pub async fn close(&self) {
        if let Out::Spdy(s) = self {
            let _ = s.close().await;
        }
    }
}

/// Copies `r` to `out` until EOF, then closes `out`.
pub async fn copy_out<R: AsyncRead + Unpin>(mut r: R, out: Out) {
    let mut buf = vec![0u8; MAX_DATA_CHUNK];
    loop {
        match r.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if out.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "stream output read failed");
                break;
            }
        }
    }
    out.close().await;
}

/// A writer for a backend whose bytes go to `out`, and the task moving them.
pub fn spawn_writer(out: Out) -> (BoxWrite, JoinHandle<()>) {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let task = tokio::spawn(copy_out(ours, out));
    (Box::new(theirs), task)
}

/// Largest resize message buffered while waiting for its end.
const MAX_RESIZE_BUFFER: usize = 4096;

/// Parses the resize stream (concatenated JSON objects) into sizes.
#[derive(Default)]
pub struct ResizeParser {
    buf: Vec<u8>,
}

impl ResizeParser {
    /// Feeds bytes; returns the sizes completed by them. Malformed input is
    /// dropped (the buffer is reset) rather than failing the session.
    pub fn feed(&mut self, data: &[u8]) -> Vec<TermSize> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        let mut consumed = 0;
        {
            let mut it = serde_json::Deserializer::from_slice(&self.buf).into_iter::<TermSize>();
            loop {
                match it.next() {
                    Some(Ok(size)) => {
                        out.push(size);
                        consumed = it.byte_offset();
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "malformed resize event");
                        consumed = self.buf.len();
                        break;
                    }
                    None => {
                        consumed = self.buf.len();
                        break;
                    }
                }
            }
        }
        self.buf.drain(..consumed);
        if self.buf.len() > MAX_RESIZE_BUFFER {
            self.buf.clear();
        }
        out
    }
}

/// Turns a resize byte stream into size events for the backend.
pub fn spawn_resize(mut rx: mpsc::Receiver<Bytes>) -> (mpsc::Receiver<TermSize>, JoinHandle<()>) {
    let (tx, sizes) = mpsc::channel(16);
    let task = tokio::spawn(async move {
        let mut parser = ResizeParser::default();
        while let Some(chunk) = rx.recv().await {
            for size in parser.feed(&chunk) {
                if tx.send(size).await.is_err() {
                    return;
                }
            }
        }
    });
    (sizes, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(w: u16, h: u16) -> TermSize {
        TermSize {
            width: w,
            height: h,
        }
    }

    #[test]
    fn resize_parsing() {
        // (chunks fed in order, sizes expected after all of them)
        let cases: Vec<(Vec<&str>, Vec<TermSize>)> = vec![
            (vec![r#"{"Width":80,"Height":24}"#], vec![ts(80, 24)]),
            (
                vec!["{\"Width\":80,\"Height\":24}\n{\"Width\":100,\"Height\":40}\n"],
                vec![ts(80, 24), ts(100, 40)],
            ),
            (
                vec![r#"{"Width":8"#, r#"0,"Height":2"#, "4}"],
                vec![ts(80, 24)],
            ),
            (vec!["garbage", r#"{"Width":1,"Height":2}"#], vec![ts(1, 2)]),
            (vec![r#"{"Width":-1,"Height":2}"#], vec![]),
        ];
        for (i, (chunks, want)) in cases.into_iter().enumerate() {
            let mut p = ResizeParser::default();
            let mut got = Vec::new();
            for c in chunks {
                got.extend(p.feed(c.as_bytes()));
            }
            assert_eq!(got, want, "case {i}");
        }
    }

    #[tokio::test]
    async fn ws_out_keeps_empty_messages_and_chunks_big_ones() {
        let (tx, mut rx) = mpsc::channel(8);
        let out = Out::Ws { channel: 1, tx };
        out.send(Bytes::new()).await.unwrap();
        out.send(Bytes::from(vec![1u8; MAX_DATA_CHUNK + 1]))
            .await
            .unwrap();
        let mut lens = Vec::new();
        for _ in 0..3 {
            match rx.recv().await.unwrap() {
                WsOut::Data(1, d) => lens.push(d.len()),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(lens, vec![0, MAX_DATA_CHUNK, 1]);
    }
}
