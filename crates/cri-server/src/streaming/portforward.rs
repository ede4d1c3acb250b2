//! Port forwarding over SPDY (`portforward.k8s.io`: a data and an error
//! stream per request id) or WebSocket (two channels per port).

use super::backend::{Backend, ChannelReader};
use super::pump::{copy_out, Out};
use super::spdy::header;
use super::spdy_conn::{SpdyConn, SpdyStream};
use super::ws::WsConn;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// The SPDY subprotocol of port forwarding.
pub const SPDY_PROTOCOL: &str = "portforward.k8s.io";
/// WebSocket subprotocols of port forwarding.
pub const WS_PROTOCOLS: &[&str] = &[super::ws::V4, super::ws::V1];
/// Most streams open at once on one port-forward connection.
const MAX_STREAMS: usize = 256;
/// How long the backend may go on after the target has closed its side,
/// before the forward is ended (clients wait for the error stream to end
/// before they close their side).
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Most ports one WebSocket port-forward request may name.
pub const MAX_WS_PORTS: usize = 32;

/// Parses a port number as kubelet does: 1..=65535.
pub fn parse_port(s: &str) -> Option<u16> {
    match s.trim().parse::<u16>() {
        Ok(0) | Err(_) => None,
        Ok(p) => Some(p),
    }
}

/// The pair key of a stream: its `requestID` header, or for old clients one
/// derived from the stream id (the error stream is opened right before
/// the data stream).
pub fn request_id(stream_type: &str, id: u32, request_id: Option<&str>) -> String {
    match request_id {
        Some(r) if !r.is_empty() => r.to_string(),
        _ => match stream_type {
            "data" => id.saturating_sub(2).to_string(),
            _ => id.to_string(),
        },
    }
}

/// Forwards one connection: `input` carries the client's bytes, `output`
/// takes the target's bytes (then closes); errors go to `error`.
async fn forward(
    backend: Arc<dyn Backend>,
    sandbox_id: String,
    port: u16,
    input: mpsc::Receiver<Bytes>,
    output: Out,
    error: Out,
) {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (read_half, mut write_half) = tokio::io::split(ours);
    let inbound = tokio::spawn(async move {
        let mut r = ChannelReader::new(input);
        let _ = tokio::io::copy(&mut r, &mut write_half).await;
        let _ = write_half.shutdown().await;
    });
    let mut outbound = tokio::spawn(copy_out(read_half, output));
    let mut run = Box::pin(backend.port_forward(&sandbox_id, port, theirs));
    let result = tokio::select! {
        r = &mut run => Some(r),
        _ = &mut outbound => {
            // The target is done sending; give the backend a moment to
            // finish on its own, then end the forward.
            tokio::time::timeout(CLOSE_GRACE, &mut run).await.ok()
        }
    };
    if let Some(Err(e)) = result {
        tracing::info!(sandbox = %sandbox_id, port, error = %e, "port forward failed");
        let msg = format!("error forwarding port {port} to pod {sandbox_id}: {e}");
        let _ = error.send(Bytes::from(msg)).await;
    }
    // Dropping the backend's future drops its end: the outbound copy ends.
    drop(run);
    if !outbound.is_finished() {
        let _ = outbound.await;
    }
    inbound.abort();
    error.close().await;
}

/// Serves port forwarding over an upgraded SPDY connection.
pub async fn serve_spdy<IO>(
    io: IO,
    sandbox_id: String,
    backend: Arc<dyn Backend>,
    timeouts: super::remotecommand::Timeouts,
) where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let pair_timeout = timeouts.stream_creation;
    let mut conn = SpdyConn::serve(io, MAX_STREAMS, timeouts.idle);
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            s = conn.streams.recv() => match s {
                Some(s) => s,
                None => break,
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            _ = tokio::time::sleep(pair_timeout), if !pending.is_empty() => {
                expire_pending(&mut pending, pair_timeout).await;
                continue;
            }
        };
        expire_pending(&mut pending, pair_timeout).await;
        let kind = header(&stream.headers, "streamtype")
            .unwrap_or("")
            .to_string();
        if kind != "data" && kind != "error" {
            tracing::debug!(stream_type = %kind, "unexpected port-forward stream");
            let _ = stream.tx.reset(super::spdy::RST_PROTOCOL_ERROR).await;
            continue;
        }
        let key = request_id(&kind, stream.id, header(&stream.headers, "requestid"));
        if !pending.contains_key(&key) && pending.len() >= MAX_STREAMS / 2 {
            let _ = stream.tx.reset(super::spdy::RST_REFUSED_STREAM).await;
            continue;
        }
        let entry = pending.entry(key.clone()).or_insert_with(|| Pending {
            data: None,
            error: None,
            since: Instant::now(),
        });
        let slot = if kind == "data" {
            &mut entry.data
        } else {
            &mut entry.error
        };
        if slot.is_some() {
            let _ = stream.tx.reset(super::spdy::RST_PROTOCOL_ERROR).await;
            continue;
        }
        *slot = Some(stream);
        if entry.data.is_some() && entry.error.is_some() {
            if let Some(Pending {
                data: Some(data),
                error: Some(error),
                ..
            }) = pending.remove(&key)
            {
                let port = header(&data.headers, "port").and_then(parse_port);
                let backend = backend.clone();
                let sandbox = sandbox_id.clone();
                tasks.spawn(async move {
                    let error_out = Out::Spdy(error.tx.clone());
                    match port {
                        Some(port) => {
                            forward(
                                backend,
                                sandbox,
                                port,
                                data.rx,
                                Out::Spdy(data.tx),
                                error_out,
                            )
                            .await
                        }
                        None => {
                            let msg = "invalid or missing port header";
                            let _ = error_out.send(Bytes::from_static(msg.as_bytes())).await;
                            error_out.close().await;
                            let _ = data.tx.close().await;
                        }
                    }
                });
            }
        }
    }
    tasks.abort_all();
    conn.close().await;
}

/// Half of a stream pair waiting for the other half.
struct Pending {
    data: Option<SpdyStream>,
    error: Option<SpdyStream>,
    since: Instant,
}

/// Ends pairs whose other half did not come in time.
async fn expire_pending(pending: &mut HashMap<String, Pending>, timeout: Duration) {
    let expired: Vec<String> = pending
        .iter()
        .filter(|(_, p)| p.since.elapsed() >= timeout)
        .map(|(k, _)| k.clone())
        .collect();
    for key in expired {
        if let Some(p) = pending.remove(&key) {
            tracing::debug!(request_id = %key, "port-forward stream pair incomplete in time");
            if let Some(e) = p.error {
                let msg = format!("timed out waiting for the data stream of request {key}");
                let _ = e.tx.send(Bytes::from(msg)).await;
                let _ = e.tx.close().await;
            }
            if let Some(d) = p.data {
                let _ = d.tx.reset(super::spdy::RST_CANCEL).await;
            }
        }
    }
}

/// Serves port forwarding of `ports` over an upgraded WebSocket connection.
pub async fn serve_ws<IO>(
    io: IO,
    sandbox_id: String,
    ports: Vec<u16>,
    backend: Arc<dyn Backend>,
    timeouts: super::remotecommand::Timeouts,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut inbound = HashMap::new();
    let mut inputs = Vec::new();
    for i in 0..ports.len() {
        let (tx, rx) = mpsc::channel(16);
        inbound.insert((2 * i) as u8, tx);
        inputs.push(rx);
    }
    let conn = WsConn::serve(io, inbound, false, timeouts.idle).await;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (port, input)) in ports.iter().zip(inputs).enumerate() {
        let data = Out::Ws {
            channel: (2 * i) as u8,
            tx: conn.out.clone(),
        };
        let error = Out::Ws {
            channel: (2 * i + 1) as u8,
            tx: conn.out.clone(),
        };
        // Each channel's first message is its port, little-endian.
        let prefix = Bytes::copy_from_slice(&port.to_le_bytes());
        if data.send(prefix.clone()).await.is_err() || error.send(prefix).await.is_err() {
            break;
        }
        tasks.spawn(forward(
            backend.clone(),
            sandbox_id.clone(),
            *port,
            input,
            data,
            error,
        ));
    }
    let mut closed = conn.closed();
    loop {
        tokio::select! {
            next = tasks.join_next() => if next.is_none() { break },
            r = closed.changed() => if r.is_err() || *closed.borrow() {
                tasks.abort_all();
                break;
            },
        }
    }
    conn.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_request_ids() {
        let cases = [
            ("80", Some(80)),
            ("65535", Some(65535)),
            ("0", None),
            ("65536", None),
            ("-1", None),
            ("http", None),
            ("", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_port(s), want, "{s:?}");
        }
        assert_eq!(request_id("data", 3, Some("7")), "7");
        assert_eq!(request_id("error", 1, None), "1");
        assert_eq!(request_id("data", 3, None), "1");
        assert_eq!(request_id("data", 3, Some("")), "1");
    }
}
