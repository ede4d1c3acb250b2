//! WebSocket (RFC 6455) transport with the Kubernetes channel framing: every
//! binary message starts with a channel byte; in `v5.channel.k8s.io` a
//! message `[255, channel]` closes that channel.

use super::pump::WsOut;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use hyper::header::HeaderMap;
use std::collections::HashMap;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

/// The close message that ends a session: code 1000 (normal closure).
pub fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}
use tokio_tungstenite::WebSocketStream;

/// The v5 channel protocol (adds channel close).
pub const V5: &str = "v5.channel.k8s.io";
/// The v4 channel protocol.
pub const V4: &str = "v4.channel.k8s.io";
/// The original channel protocol.
pub const V1: &str = "channel.k8s.io";
/// The channel byte of a v5 close message.
pub const CLOSE_CHANNEL: u8 = 255;
/// Largest message accepted from a client.
pub const MAX_MESSAGE: usize = 1024 * 1024;

fn header_has_token(headers: &HeaderMap, name: &str, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Whether the request asks for a WebSocket upgrade.
pub fn is_websocket(headers: &HeaderMap) -> bool {
    header_has_token(headers, "connection", "upgrade")
        && header_has_token(headers, "upgrade", "websocket")
}

/// The `Sec-WebSocket-Accept` value for a valid version-13 handshake.
pub fn accept_key(headers: &HeaderMap) -> Option<String> {
    let version = headers.get("sec-websocket-version")?.to_str().ok()?;
    if version.trim() != "13" {
        return None;
    }
    let key = headers.get("sec-websocket-key")?.to_str().ok()?.trim();
    if key.is_empty() {
        return None;
    }
    Some(tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()))
}

/// The subprotocols the client offers, in its order of preference.
pub fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
    header_list(headers, "sec-websocket-protocol")
}

/// The comma-separated items of every `name` header, trimmed, empty ones
/// left out.
pub fn header_list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|s| s.split(','))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The client and the server have no subprotocol in common.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no common subprotocol")]
pub struct NoCommonProtocol;

/// The first offered protocol the server supports. `Ok(None)`: the client
/// offered none (the server's default applies); `Err`: no overlap.
pub fn choose_protocol(
    offered: &[String],
    supported: &[&'static str],
) -> Result<Option<&'static str>, NoCommonProtocol> {
    if offered.is_empty() {
        return Ok(None);
    }
    for o in offered {
        if let Some(s) = supported.iter().find(|s| **s == o.as_str()) {
            return Ok(Some(s));
        }
    }
    Err(NoCommonProtocol)
}

/// A served WebSocket connection.
pub struct WsConn {
    /// The writer's queue.
    pub out: mpsc::Sender<WsOut>,
    closed: watch::Receiver<bool>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

impl WsConn {
    /// Serves `io` (after the 101 response). Data on channel `c` goes to
    /// `inbound[c]`; a v5 close message (when `stream_close`) or the end of
    /// the connection ends it.
    pub async fn serve<IO>(
        io: IO,
        inbound: HashMap<u8, mpsc::Sender<Bytes>>,
        stream_close: bool,
        idle_timeout: std::time::Duration,
    ) -> WsConn
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        let (mut sink, mut stream) = ws.split();
        let (out, mut rx) = mpsc::channel::<WsOut>(64);
        let (closed_tx, closed) = watch::channel(false);
        let activity = super::spdy_conn::Activity::default();
        let write_activity = activity.clone();
        let writer = tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                match msg {
                    WsOut::Data(channel, data) => {
                        let mut m = BytesMut::with_capacity(1 + data.len());
                        m.put_u8(channel);
                        m.extend_from_slice(&data);
                        write_activity.touch();
                        if let Err(e) = sink.send(Message::Binary(m.freeze())).await {
                            tracing::debug!(error = %e, "websocket write failed");
                            return;
                        }
                    }
                    WsOut::Close => break,
                }
            }
            // A normal closure with its code: client-go's websocket.go
            // treats any other close (also one without a code, 1005) as a
            // failed stream, and kubectl exits 1 after a command that ran.
            let _ = sink.send(normal_close()).await;
            let _ = sink.close().await;
        });
        let reader = tokio::spawn(async move {
            let mut inbound = inbound;
            loop {
                let msg = tokio::select! {
                    m = stream.next() => match m {
                        Some(m) => m,
                        None => break,
                    },
                    _ = activity.idle(idle_timeout) => {
                        tracing::info!(timeout = ?idle_timeout, "closing idle websocket connection");
                        break;
                    }
                };
                activity.touch();
                let data = match msg {
                    Ok(Message::Binary(d)) => d,
                    Ok(Message::Close(_)) => break,
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "websocket read failed");
                        break;
                    }
                };
                if data.is_empty() {
                    continue;
                }
                if stream_close && data[0] == CLOSE_CHANNEL {
                    if data.len() != 2 {
                        tracing::debug!("malformed websocket channel close");
                        break;
                    }
                    inbound.remove(&data[1]);
                    continue;
                }
                let channel = data[0];
                let payload = data.slice(1..);
                if let Some(tx) = inbound.get(&channel) {
                    if !payload.is_empty() && tx.send(payload).await.is_err() {
                        inbound.remove(&channel);
                    }
                }
            }
            let _ = closed_tx.send(true);
        });
        WsConn {
            out,
            closed,
            reader,
            writer,
        }
    }

    /// A receiver that turns true when the client's side is gone.
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.closed.clone()
    }

    /// Sends a close frame after what is queued and ends the connection.
    pub async fn close(self) {
        let _ = self.out.send(WsOut::Close).await;
        drop(self.out);
        let _ = self.writer.await;
        // Wait for the client's close frame (or its going away).
        let mut reader = self.reader;
        if tokio::time::timeout(super::spdy_conn::CLOSE_LINGER, &mut reader)
            .await
            .is_err()
        {
            reader.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_checks() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        assert!(is_websocket(&h));
        assert_eq!(accept_key(&h), None);
        h.insert("sec-websocket-version", "13".parse().unwrap());
        h.insert(
            "sec-websocket-key",
            "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap(),
        );
        // RFC 6455's example.
        assert_eq!(
            accept_key(&h).as_deref(),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        h.insert("upgrade", "SPDY/3.1".parse().unwrap());
        assert!(!is_websocket(&h));
    }

    #[test]
    fn protocol_choice_follows_the_client() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let supported = [V5, V4, V1];
        type Case = (Vec<String>, Result<Option<&'static str>, NoCommonProtocol>);
        let cases: Vec<Case> = vec![
            (s(&[]), Ok(None)),
            (s(&[V5, V4]), Ok(Some(V5))),
            (s(&[V4, V5]), Ok(Some(V4))),
            (s(&["base64.channel.k8s.io", V4]), Ok(Some(V4))),
            (s(&["nope"]), Err(NoCommonProtocol)),
        ];
        for (offered, want) in cases {
            assert_eq!(choose_protocol(&offered, &supported), want, "{offered:?}");
        }
        let mut h = HeaderMap::new();
        h.append("sec-websocket-protocol", "a, b".parse().unwrap());
        h.append("sec-websocket-protocol", "c".parse().unwrap());
        assert_eq!(offered_protocols(&h), s(&["a", "b", "c"]));
    }
}
