//! The server side of a SPDY/3.1 connection: accepts the client's streams,
//! routes their data, and sends frames from many tasks through one writer.

use super::spdy::{
    Frame, FrameDecoder, FrameEncoder, Headers, FLAG_FIN, RST_PROTOCOL_ERROR, RST_REFUSED_STREAM,
    RST_STREAM_IN_USE,
};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Largest data frame this side sends.
pub const MAX_DATA_CHUNK: usize = 32 * 1024;
/// Time of the last frame read or written on a connection.
#[derive(Clone)]
pub struct Activity {
    base: std::time::Instant,
    last_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            base: std::time::Instant::now(),
            last_ms: Default::default(),
        }
    }
}

impl Activity {
    /// Records activity now.
    pub fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    fn idle_for(&self) -> std::time::Duration {
        let last = self.last_ms.load(std::sync::atomic::Ordering::Relaxed);
        self.base
            .elapsed()
            .saturating_sub(std::time::Duration::from_millis(last))
    }

    /// Resolves once nothing has happened for `timeout`.
    pub async fn idle(&self, timeout: std::time::Duration) {
        loop {
            let idle = self.idle_for();
            if idle >= timeout {
                return;
            }
            tokio::time::sleep(timeout - idle).await;
        }
    }
}

/// How long a closing connection waits for the client to close its side.
pub const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(5);
/// Chunks buffered per incoming stream before the connection reader waits.
const STREAM_QUEUE: usize = 16;

enum WriterMsg {
    Frame(Frame),
    Close,
}

/// Sends data on one stream.
#[derive(Clone)]
pub struct StreamSender {
    id: u32,
    tx: mpsc::Sender<WriterMsg>,
}

impl StreamSender {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends `data` in frames of at most [`MAX_DATA_CHUNK`].
    pub async fn send(&self, mut data: Bytes) -> std::io::Result<()> {
        while !data.is_empty() {
            let n = data.len().min(MAX_DATA_CHUNK);
            let chunk = data.split_to(n);
            self.frame(Frame::Data {
                stream_id: self.id,
                flags: 0,
                data: chunk,
            })
            .await?;
        }
        Ok(())
    }

    /// Half-closes the stream (an empty data frame with FIN).
    pub async fn close(&self) -> std::io::Result<()> {
        self.frame(Frame::Data {
            stream_id: self.id,
            flags: FLAG_FIN,
            data: Bytes::new(),
        })
        .await
    }

    /// Aborts the stream.
    pub async fn reset(&self, status: u32) -> std::io::Result<()> {
        self.frame(Frame::RstStream {
            stream_id: self.id,
            status,
        })
        .await
    }

    async fn frame(&self, frame: Frame) -> std::io::Result<()> {
        self.tx
            .send(WriterMsg::Frame(frame))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))
    }
}

/// A stream the client opened.
pub struct SpdyStream {
    /// The stream id.
    pub id: u32,
    /// The SYN_STREAM headers (lowercase names).
    pub headers: Headers,
    /// Data from the client; ends at its FIN or RST_STREAM or when the
    /// connection closes.
    pub rx: mpsc::Receiver<Bytes>,
    /// Sends data to the client on this stream.
    pub tx: StreamSender,
}

/// A served SPDY connection.
pub struct SpdyConn {
    /// Streams as the client opens them; ends when the connection closes.
    pub streams: mpsc::Receiver<SpdyStream>,
    tx: mpsc::Sender<WriterMsg>,
    closed: watch::Receiver<bool>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl SpdyConn {
    /// Starts serving `io` (after the HTTP upgrade) with at most
    /// `max_streams` client streams open at once; the connection ends when
    /// no frame is read or written for `idle_timeout`.
    pub fn serve<IO>(io: IO, max_streams: usize, idle_timeout: std::time::Duration) -> SpdyConn
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read_half, write_half) = tokio::io::split(io);
        let (tx, rx) = mpsc::channel::<WriterMsg>(64);
        let (streams_tx, streams) = mpsc::channel(max_streams.max(1));
        let (closed_tx, closed) = watch::channel(false);
        let activity = Activity::default();
        let writer = tokio::spawn(write_loop(write_half, rx, activity.clone()));
        let reader_tx = tx.clone();
        let reader = tokio::spawn(async move {
            let read = read_loop(
                read_half,
                reader_tx,
                streams_tx,
                max_streams,
                activity.clone(),
            );
            tokio::select! {
                r = read => if let Err(e) = r {
                    tracing::debug!(error = %e, "spdy connection read ended");
                },
                _ = activity.idle(idle_timeout) => {
                    tracing::info!(timeout = ?idle_timeout, "closing idle spdy connection");
                }
            }
            let _ = closed_tx.send(true);
        });
        SpdyConn {
            streams,
            tx,
            closed,
            reader,
            writer,
        }
    }

    /// A receiver that turns true when the client's side of the
    /// connection is gone.
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.closed.clone()
    }

    /// Sends GOAWAY, flushes what is queued and closes the connection.
    pub async fn close(self) {
        let SpdyConn {
            streams,
            tx,
            reader,
            writer,
            ..
        } = self;
        // New streams are refused from now on.
        drop(streams);
        let _ = tx
            .send(WriterMsg::Frame(Frame::GoAway {
                last_stream_id: 0,
                status: 0,
            }))
            .await;
        let _ = tx.send(WriterMsg::Close).await;
        let _ = writer.await;
        // Let the client read everything and close its side: closing with
        // unread input would reset the connection and could lose output.
        let mut reader = reader;
        if tokio::time::timeout(CLOSE_LINGER, &mut reader)
            .await
            .is_err()
        {
            reader.abort();
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<WriterMsg>,
    activity: Activity,
) {
    let mut enc = FrameEncoder::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    'outer: while let Some(msg) = rx.recv().await {
        let mut closing = false;
        let mut next = Some(msg);
        // Batch whatever is queued into one write.
        while let Some(msg) = next.take() {
            match msg {
                WriterMsg::Frame(frame) => {
                    if let Err(e) = enc.encode(&frame, &mut buf) {
                        tracing::warn!(error = %e, "cannot encode spdy frame");
                    }
                }
                WriterMsg::Close => {
                    closing = true;
                    break;
                }
            }
            if buf.len() < 256 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            activity.touch();
            if let Err(e) = w.write_all(&buf).await {
                tracing::debug!(error = %e, "spdy write failed");
                break 'outer;
            }
            buf.clear();
            if let Err(e) = w.flush().await {
                tracing::debug!(error = %e, "spdy flush failed");
                break 'outer;
            }
        }
        if closing {
            break;
        }
    }
    let _ = w.shutdown().await;
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut r: R,
    tx: mpsc::Sender<WriterMsg>,
    streams_tx: mpsc::Sender<SpdyStream>,
    max_streams: usize,
    activity: Activity,
) -> Result<(), super::spdy::SpdyError> {
    let mut dec = FrameDecoder::new();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut open: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut last_id = 0u32;
    let send = |frame: Frame| {
        let tx = tx.clone();
        async move { tx.send(WriterMsg::Frame(frame)).await.is_ok() }
    };
    while let Some(frame) = dec.read_frame(&mut r, &mut buf).await? {
        activity.touch();
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => {
                let refuse = if open.contains_key(&stream_id) {
                    Some(RST_STREAM_IN_USE)
                } else if stream_id == 0 || stream_id % 2 == 0 || stream_id <= last_id {
                    Some(RST_PROTOCOL_ERROR)
                } else if open.len() >= max_streams {
                    Some(RST_REFUSED_STREAM)
                } else {
                    None
                };
                if let Some(status) = refuse {
                    tracing::debug!(stream_id, status, "refusing spdy stream");
                    send(Frame::RstStream { stream_id, status }).await;
                    continue;
                }
                last_id = stream_id;
                send(Frame::SynReply {
                    stream_id,
                    flags: 0,
                    headers: Vec::new(),
                })
                .await;
                let (data_tx, data_rx) = mpsc::channel(STREAM_QUEUE);
                if flags & FLAG_FIN == 0 {
                    open.insert(stream_id, data_tx);
                }
                let stream = SpdyStream {
                    id: stream_id,
                    headers,
                    rx: data_rx,
                    tx: StreamSender {
                        id: stream_id,
                        tx: tx.clone(),
                    },
                };
                if streams_tx.send(stream).await.is_err() {
                    // Nobody takes new streams any more.
                    open.remove(&stream_id);
                    send(Frame::RstStream {
                        stream_id,
                        status: RST_REFUSED_STREAM,
                    })
                    .await;
                }
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if let Some(sender) = open.get(&stream_id) {
                    if !data.is_empty() && sender.send(data).await.is_err() {
                        open.remove(&stream_id);
                    }
                }
                if flags & FLAG_FIN != 0 {
                    open.remove(&stream_id);
                }
            }
            Frame::Headers {
                stream_id, flags, ..
            } => {
                if flags & FLAG_FIN != 0 {
                    open.remove(&stream_id);
                }
            }
            Frame::RstStream { stream_id, .. } => {
                open.remove(&stream_id);
            }
            Frame::Ping { id } => {
                send(Frame::Ping { id }).await;
            }
            Frame::GoAway { .. } => break,
            Frame::SynReply { .. }
            | Frame::Settings { .. }
            | Frame::WindowUpdate { .. }
            | Frame::Unknown { .. } => {}
        }
    }
    Ok(())
}
