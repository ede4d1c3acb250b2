//! The NRI connection multiplexer: several logical byte streams over one
//! unix socket (the "trunk").
//!
//! Hand-written because no Rust crate speaks it: NRI defines its own small
//! framing. Every frame on the trunk is an 8-byte header, the logical
//! connection id (u32, big-endian) then the payload length (u32,
//! big-endian), followed by the payload. Id 0 is reserved; NRI uses id 1
//! ([`PLUGIN_SERVICE_CONN`]) for the runtime's calls to the plugin and id 2
//! ([`RUNTIME_SERVICE_CONN`]) for the plugin's calls to the runtime. A
//! logical connection is "opened" by both ends agreeing on its id: there is
//! no signalling.
//!
//! Each logical connection is handed to its user as one end of a unix
//! socket pair, so the ttrpc client and server run over it unchanged. What
//! the user writes is cut at ttrpc message boundaries (10-byte ttrpc header
//! carrying the length, then the body) and sent one message per frame, which
//! is how the reference implementation's peers write and read it. Frames
//! from the peer are bounded ([`MAX_PAYLOAD`]); a larger one closes the
//! trunk. Frames for an id nobody opened are dropped. When the trunk closes,
//! every logical connection sees end-of-file.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

/// The logical connection on which the runtime calls the plugin's service.
pub const PLUGIN_SERVICE_CONN: u32 = 1;
/// The logical connection on which the plugin calls the runtime's service.
pub const RUNTIME_SERVICE_CONN: u32 = 2;
/// Length of a frame header: connection id and payload length.
pub const FRAME_HEADER_LEN: usize = 8;
/// Length of a ttrpc message header (length, stream id, type, flags).
pub const TTRPC_HEADER_LEN: usize = 10;
/// Largest ttrpc message body.
pub const TTRPC_MAX_BODY: usize = 4 << 20;
/// Largest frame payload accepted: one whole ttrpc message.
pub const MAX_PAYLOAD: usize = TTRPC_HEADER_LEN + TTRPC_MAX_BODY;

/// Multiplexer errors.
#[derive(Debug, thiserror::Error)]
pub enum MuxError {
    /// Connection id 0 is reserved, or an id was given twice.
    #[error("invalid logical connection id {0}")]
    InvalidId(u32),
    /// A socket pair for a logical connection could not be made.
    #[error("socket pair for logical connection: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes a frame header.
pub fn encode_header(id: u32, len: u32) -> [u8; FRAME_HEADER_LEN] {
    let mut h = [0u8; FRAME_HEADER_LEN];
    h[..4].copy_from_slice(&id.to_be_bytes());
    h[4..].copy_from_slice(&len.to_be_bytes());
    h
}

/// Decodes a frame header into (connection id, payload length).
pub fn decode_header(h: &[u8; FRAME_HEADER_LEN]) -> (u32, u32) {
    (
        u32::from_be_bytes([h[0], h[1], h[2], h[3]]),
        u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
    )
}

/// Splits `trunk` into the logical connections `ids` and returns their
/// user ends, in the order of `ids`. The pumping runs on spawned tasks until
/// the trunk closes; must be called inside a tokio runtime.
pub fn multiplex<T>(trunk: T, ids: &[u32]) -> Result<Vec<UnixStream>, MuxError>
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    multiplex_watched(trunk, ids).map(|(users, _)| users)
}

/// Resolves once the trunk of a [`multiplex_watched`] has closed (the peer
/// went away or every logical connection was closed).
pub struct TrunkClosed(tokio::sync::oneshot::Receiver<()>);

impl TrunkClosed {
    /// Waits for the trunk to close.
    pub async fn wait(self) {
        let _ = self.0.await;
    }
}

/// [`multiplex`], also returning what tells when the trunk has closed.
pub fn multiplex_watched<T>(
    trunk: T,
    ids: &[u32],
) -> Result<(Vec<UnixStream>, TrunkClosed), MuxError>
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    // Dropped (never sent) when the demultiplexer ends.
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
    let mut seen = Vec::new();
    for &id in ids {
        if id == 0 || seen.contains(&id) {
            return Err(MuxError::InvalidId(id));
        }
        seen.push(id);
    }
    let (trunk_r, trunk_w) = tokio::io::split(trunk);
    let trunk_w = Arc::new(Mutex::new(trunk_w));
    let mut users = Vec::with_capacity(ids.len());
    let mut inbound = HashMap::new();
    let mut writers = Vec::with_capacity(ids.len());
    // When the users have closed every connection, the trunk is closed
    // too, so the peer sees the end.
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(ids.len()));
    for &id in ids {
        let (user, ours) = UnixStream::pair()?;
        let (our_r, our_w) = ours.into_split();
        inbound.insert(id, our_w);
        let (trunk_w, open) = (trunk_w.clone(), open.clone());
        writers.push(tokio::spawn(async move {
            let _ = outbound(id, our_r, &trunk_w).await;
            if open.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
                let _ = trunk_w.lock().await.shutdown().await;
            }
        }));
        users.push(user);
    }
    tokio::spawn(async move {
        if let Err(e) = demux(trunk_r, inbound).await {
            tracing::debug!(error = %e, "nri mux: trunk closed");
        }
        // The trunk is gone: stop sending, so the users' writes fail and
        // their reads see end-of-file (the inbound halves were dropped).
        for w in writers {
            w.abort();
        }
        let _ = trunk_w.lock().await.shutdown().await;
        drop(closed_tx);
    });
    Ok((users, TrunkClosed(closed_rx)))
}

/// Copies one logical connection's outgoing ttrpc messages onto the trunk,
/// one message per frame, until the user closes it or the trunk fails.
async fn outbound<W: AsyncWrite + Unpin>(
    id: u32,
    mut from: tokio::net::unix::OwnedReadHalf,
    trunk: &Mutex<W>,
) -> std::io::Result<()> {
    let mut msg = Vec::new();
    loop {
        let mut hdr = [0u8; TTRPC_HEADER_LEN];
        from.read_exact(&mut hdr).await?;
        let body = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
        if body > TTRPC_MAX_BODY {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("ttrpc message of {body} bytes"),
            ));
        }
        msg.clear();
        msg.extend_from_slice(&hdr);
        msg.resize(TTRPC_HEADER_LEN + body, 0);
        from.read_exact(&mut msg[TTRPC_HEADER_LEN..]).await?;
        let mut t = trunk.lock().await;
        t.write_all(&encode_header(id, msg.len() as u32)).await?;
        t.write_all(&msg).await?;
        t.flush().await?;
    }
}

/// Reads frames off the trunk and hands each payload to its logical
/// connection, until end-of-file or a malformed frame.
async fn demux<R: AsyncRead + Unpin>(
    mut trunk: R,
    mut conns: HashMap<u32, tokio::net::unix::OwnedWriteHalf>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let mut hdr = [0u8; FRAME_HEADER_LEN];
        trunk.read_exact(&mut hdr).await?;
        let (id, len) = decode_header(&hdr);
        let len = len as usize;
        if len > MAX_PAYLOAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("frame of {len} bytes for connection {id}"),
            ));
        }
        buf.resize(len, 0);
        trunk.read_exact(&mut buf).await?;
        if let Some(w) = conns.get_mut(&id) {
            if w.write_all(&buf).await.is_err() {
                // The user closed this connection: drop what comes for it.
                conns.remove(&id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ttrpc-shaped message: 10-byte header with the body length, then body.
    fn ttrpc_msg(stream: u32, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&(body.len() as u32).to_be_bytes());
        m.extend_from_slice(&stream.to_be_bytes());
        m.extend_from_slice(&[1, 0]);
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn header_round_trip() {
        for (id, len) in [(1u32, 0u32), (2, 10), (0xdead_beef, u32::MAX), (7, 4 << 20)] {
            let h = encode_header(id, len);
            assert_eq!(decode_header(&h), (id, len), "{id} {len}");
        }
        assert_eq!(encode_header(1, 258), [0, 0, 0, 1, 0, 0, 1, 2]);
    }

    #[tokio::test]
    async fn the_watcher_sees_the_peer_close_the_trunk() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let (_users, closed) = multiplex_watched(a, &[1, 2]).unwrap();
        let mut closed = Box::pin(closed.wait());
        // Open while the peer is there ...
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(100), closed.as_mut())
                .await
                .is_err()
        );
        // ... resolved once it has gone.
        drop(b);
        tokio::time::timeout(std::time::Duration::from_secs(5), closed)
            .await
            .expect("trunk close seen");
    }

    #[tokio::test]
    async fn invalid_ids_are_refused() {
        for ids in [&[0u32][..], &[1, 1]] {
            let (a, _b) = tokio::io::duplex(64);
            assert!(
                matches!(multiplex(a, ids), Err(MuxError::InvalidId(_))),
                "{ids:?}"
            );
        }
    }

    #[tokio::test]
    async fn frames_round_trip_one_message_per_frame() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut conns = multiplex(a, &[PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN]).unwrap();
        let m1 = ttrpc_msg(1, b"hello");
        let m2 = ttrpc_msg(3, &[0xab; 5000]);
        // Written in odd pieces; framed at message boundaries.
        let mut both = m1.clone();
        both.extend_from_slice(&m2);
        for piece in both.chunks(7) {
            conns[1].write_all(piece).await.unwrap();
        }
        for want in [&m1, &m2] {
            let mut hdr = [0u8; FRAME_HEADER_LEN];
            b.read_exact(&mut hdr).await.unwrap();
            assert_eq!(
                decode_header(&hdr),
                (RUNTIME_SERVICE_CONN, want.len() as u32)
            );
            let mut got = vec![0u8; want.len()];
            b.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, want);
        }
        // And inbound: a frame's payload reaches the connection of its id.
        let m3 = ttrpc_msg(2, b"reply");
        b.write_all(&encode_header(PLUGIN_SERVICE_CONN, m3.len() as u32))
            .await
            .unwrap();
        b.write_all(&m3).await.unwrap();
        let mut got = vec![0u8; m3.len()];
        conns[0].read_exact(&mut got).await.unwrap();
        assert_eq!(got, m3);
    }

    #[tokio::test]
    async fn two_streams_interleaved_end_to_end() {
        let (a, b) = tokio::io::duplex(1 << 12);
        let ids = [PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN];
        let left = multiplex(a, &ids).unwrap();
        let right = multiplex(b, &ids).unwrap();
        let mut tasks = Vec::new();
        for (mut l, mut r) in left.into_iter().zip(right) {
            tasks.push(tokio::spawn(async move {
                let (mut rr, mut rw) = r.split();
                let mut sent = Vec::new();
                let mut got = Vec::new();
                for i in 0..50u32 {
                    let m = ttrpc_msg(i, &vec![i as u8; (i as usize * 97) % 3000]);
                    sent.extend_from_slice(&m);
                    rw.write_all(&m).await.unwrap();
                    let mut buf = vec![0u8; m.len()];
                    l.read_exact(&mut buf).await.unwrap();
                    got.extend_from_slice(&buf);
                    // and back the other way
                    l.write_all(&m).await.unwrap();
                    let mut buf = vec![0u8; m.len()];
                    rr.read_exact(&mut buf).await.unwrap();
                    assert_eq!(buf, m);
                }
                assert_eq!(sent, got);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }

    #[tokio::test]
    async fn closed_peer_gives_eof_on_every_connection() {
        let (a, b) = tokio::io::duplex(1 << 12);
        let mut conns = multiplex(a, &[1, 2]).unwrap();
        drop(b);
        for c in &mut conns {
            let mut buf = [0u8; 1];
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), c.read(&mut buf))
                .await
                .expect("eof in time")
                .unwrap();
            assert_eq!(n, 0);
        }
    }

    #[tokio::test]
    async fn users_closing_every_connection_closes_the_trunk() {
        let (a, mut b) = tokio::io::duplex(1 << 12);
        let conns = multiplex(a, &[1, 2]).unwrap();
        drop(conns);
        let mut rest = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), b.read_to_end(&mut rest))
            .await
            .expect("eof in time")
            .unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn oversized_frame_closes_the_trunk() {
        let (a, mut b) = tokio::io::duplex(1 << 12);
        let mut conns = multiplex(a, &[1]).unwrap();
        b.write_all(&encode_header(1, (MAX_PAYLOAD + 1) as u32))
            .await
            .unwrap();
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), conns[0].read(&mut buf))
            .await
            .expect("eof in time")
            .unwrap();
        assert_eq!(n, 0);
        // The mux shut its side of the trunk down.
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn frames_for_unknown_ids_are_dropped() {
        let (a, mut b) = tokio::io::duplex(1 << 12);
        let mut conns = multiplex(a, &[1]).unwrap();
        b.write_all(&encode_header(9, 3)).await.unwrap();
        b.write_all(b"xyz").await.unwrap();
        b.write_all(&encode_header(1, 2)).await.unwrap();
        b.write_all(b"ok").await.unwrap();
        let mut buf = [0u8; 2];
        conns[0].read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ok");
    }
}
