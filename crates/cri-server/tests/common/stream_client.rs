//! Clients of the streaming protocols for tests: a SPDY/3.1 client built on
//! criusd's framing module and a WebSocket client from tokio-tungstenite.

use bytes::{Bytes, BytesMut};
use crius_cri_server::streaming::spdy::{Frame, FrameDecoder, FrameEncoder, FLAG_FIN};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub fn split_url(url: &str) -> (SocketAddr, String) {
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    (host.parse().unwrap(), path.to_string())
}

pub struct SpdyClient {
    pub stream: TcpStream,
    pub enc: FrameEncoder,
    pub dec: FrameDecoder,
    pub buf: BytesMut,
    pub next_id: u32,
}

/// Sends an upgrade request; returns the status code, the response head,
/// and the connection with any bytes read past the head.
pub async fn http_request(
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, String, TcpStream, BytesMut) {
    let (addr, path) = split_url(url);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = BytesMut::new();
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read_buf(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before the response head");
    };
    let head = String::from_utf8_lossy(&buf.split_to(end)).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    (status, head, stream, buf)
}

impl SpdyClient {
    pub async fn connect(url: &str, protocols: &[&str]) -> (u16, String, Option<SpdyClient>) {
        let mut headers = vec![("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")];
        for p in protocols {
            headers.push(("X-Stream-Protocol-Version", p));
        }
        let (status, head, stream, buf) = http_request(url, &headers).await;
        let client = (status == 101).then(|| SpdyClient {
            stream,
            enc: FrameEncoder::new(),
            dec: FrameDecoder::new(),
            buf,
            next_id: 1,
        });
        (status, head, client)
    }

    /// Like `connect`, asserting the upgrade (101); returns the client and
    /// the response head.
    pub async fn upgrade(url: &str, protocols: &[&str]) -> (SpdyClient, String) {
        let (status, head, client) = SpdyClient::connect(url, protocols).await;
        assert_eq!(status, 101, "{head}");
        (client.expect("an upgraded connection"), head)
    }

    /// Opens one stream per `streamType`, in order, without waiting for
    /// replies; returns their ids.
    pub async fn open_types<const N: usize>(&mut self, types: [&str; N]) -> [u32; N] {
        let mut ids = [0; N];
        for (id, t) in ids.iter_mut().zip(types) {
            *id = self.open(&[("streamType", t)]).await;
        }
        ids
    }

    pub async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        self.enc.encode(&frame, &mut out).unwrap();
        // The server may already have closed (tests of its limits).
        let _ = self.stream.write_all(&out).await;
    }

    pub async fn open(&mut self, headers: &[(&str, &str)]) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        let headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.send(Frame::SynStream {
            stream_id: id,
            associated_id: 0,
            priority: 0,
            flags: 0,
            headers,
        })
        .await;
        id
    }

    pub async fn data(&mut self, id: u32, data: &[u8], fin: bool) {
        self.send(Frame::Data {
            stream_id: id,
            flags: if fin { FLAG_FIN } else { 0 },
            data: Bytes::copy_from_slice(data),
        })
        .await;
    }

    pub async fn next(&mut self) -> Option<Frame> {
        let (r, _) = self.stream.split();
        let mut r = r;
        self.dec
            .read_frame(&mut r, &mut self.buf)
            .await
            .ok()
            .flatten()
    }

    /// Reads until every stream in `ids` has ended (FIN or RST) or the
    /// connection closes; returns the data per stream.
    pub async fn collect(&mut self, ids: &[u32]) -> HashMap<u32, Vec<u8>> {
        let mut data: HashMap<u32, Vec<u8>> = HashMap::new();
        let mut open: Vec<u32> = ids.to_vec();
        while !open.is_empty() {
            let frame = match tokio::time::timeout(Duration::from_secs(60), self.next()).await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => panic!("no frame within a minute; still open: {open:?}"),
            };
            match frame {
                Frame::Data {
                    stream_id,
                    flags,
                    data: d,
                } => {
                    data.entry(stream_id).or_default().extend_from_slice(&d);
                    if flags & FLAG_FIN != 0 {
                        open.retain(|i| *i != stream_id);
                    }
                }
                Frame::RstStream { stream_id, .. } => open.retain(|i| *i != stream_id),
                Frame::GoAway { .. } => break,
                _ => {}
            }
        }
        data
    }
}

pub fn text(map: &HashMap<u32, Vec<u8>>, id: u32) -> String {
    String::from_utf8_lossy(map.get(&id).map(|v| &v[..]).unwrap_or(b"")).into_owned()
}

/// The JSON status a stream (the error stream) carried.
pub fn status_json(map: &HashMap<u32, Vec<u8>>, id: u32) -> serde_json::Value {
    serde_json::from_slice(map.get(&id).map(|v| &v[..]).unwrap_or(b""))
        .unwrap_or_else(|e| panic!("stream {id} is no JSON status ({e}): {map:?}"))
}

pub type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

pub async fn ws_connect(url: &str, protocol: &str) -> (Ws, Option<String>) {
    let (addr, path) = split_url(url);
    let mut req = format!("ws://{addr}{path}").into_client_request().unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp).await.unwrap();
    let chosen = resp
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (ws, chosen)
}

/// Reads binary messages until the server closes; returns data per channel
/// and the first message's channel.
pub async fn ws_collect(ws: &mut Ws) -> (HashMap<u8, Vec<u8>>, Option<(u8, usize)>) {
    let mut out: HashMap<u8, Vec<u8>> = HashMap::new();
    let mut first = None;
    loop {
        let msg = match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(_) => break,
            Err(_) => panic!("no websocket message within a minute"),
        };
        match msg {
            Message::Binary(d) if !d.is_empty() => {
                if first.is_none() {
                    first = Some((d[0], d.len() - 1));
                }
                out.entry(d[0]).or_default().extend_from_slice(&d[1..]);
            }
            Message::Close(frame) => {
                // client-go's websocket.go (readDemuxLoop) fails the
                // session on any close but a normal one.
                let code = frame.map(|f| u16::from(f.code));
                assert_eq!(code, Some(1000), "the server's close frame");
                break;
            }
            _ => {}
        }
    }
    (out, first)
}

pub fn ch(map: &HashMap<u8, Vec<u8>>, c: u8) -> String {
    String::from_utf8_lossy(map.get(&c).map(|v| &v[..]).unwrap_or(b"")).into_owned()
}

// Clients that follow client-go's wire behaviour step by step (the file
// each step comes from is named beside it), for the regressions that only
// client-go's order of frames showed.

impl SpdyClient {
    /// Opens a stream and waits for the server's SYN_REPLY, as
    /// k8s.io/apimachinery/pkg/util/httpstream/spdy/connection.go
    /// `CreateStream` does (`stream.WaitTimeout(createStreamResponseTimeout)`).
    pub async fn create_stream(&mut self, headers: &[(&str, &str)]) -> u32 {
        let id = self.open(headers).await;
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(30), self.next())
                .await
                .unwrap_or_else(|_| panic!("no SYN_REPLY for stream {id} in 30 s"));
            match frame {
                Some(Frame::SynReply { stream_id, .. }) if stream_id == id => return id,
                Some(Frame::RstStream { stream_id, status }) if stream_id == id => {
                    panic!("stream {id} reset ({status}) instead of a reply")
                }
                Some(Frame::Ping { .. }) | Some(Frame::Settings { .. }) => {}
                other => panic!("unexpected frame while opening stream {id}: {other:?}"),
            }
        }
    }
}

/// One forwarded connection as client-go's
/// k8s.io/client-go/tools/portforward/portforward.go `handleConnection`
/// makes it: the error stream first (headers streamType, port, requestID),
/// closed at once from our side (`errorStream.Close()`), then the data
/// stream with the same headers; `request` is written and the data stream
/// stays open until the server ends it. Returns what came on the data and
/// the error stream.
pub async fn spdy_port_forward(url: &str, port: u16, request: &[u8]) -> (String, String) {
    let (mut c, _) = SpdyClient::upgrade(url, &["portforward.k8s.io"]).await;
    let port = port.to_string();
    let mut headers = vec![
        ("streamtype", "error"),
        ("port", port.as_str()),
        ("requestid", "0"),
    ];
    let error = c.create_stream(&headers).await;
    c.data(error, b"", true).await;
    headers[0].1 = "data";
    let data = c.create_stream(&headers).await;
    c.data(data, request, false).await;
    let got = c.collect(&[data, error]).await;
    // portforward.go closes the whole connection when it stops.
    c.send(Frame::GoAway {
        last_stream_id: 0,
        status: 0,
    })
    .await;
    (text(&got, data), text(&got, error))
}

/// A remote command over SPDY v4 as
/// k8s.io/client-go/tools/remotecommand/v2.go..v4.go do it: the error stream
/// first, then stdin, stdout, stderr (without a TTY) and resize (with one),
/// each waited for; then stdin is copied and its stream closed
/// (`remoteStdin.Close()`) as soon as the input ends. Returns stdout and the
/// error stream's status.
pub async fn spdy_exec_stdin(url: &str, input: &[u8], tty: bool) -> (String, String) {
    let (mut c, _) = SpdyClient::upgrade(url, &["v4.channel.k8s.io"]).await;
    let error = c.create_stream(&[("streamtype", "error")]).await;
    let stdin = c.create_stream(&[("streamtype", "stdin")]).await;
    let stdout = c.create_stream(&[("streamtype", "stdout")]).await;
    let mut ids = vec![error, stdout];
    if tty {
        c.create_stream(&[("streamtype", "resize")]).await;
    } else {
        ids.push(c.create_stream(&[("streamtype", "stderr")]).await);
    }
    c.data(stdin, input, true).await;
    let got = c.collect(&ids).await;
    (text(&got, stdout), text(&got, error))
}

/// A remote command over WebSocket v5 as
/// k8s.io/client-go/tools/remotecommand/websocket.go does it: stdin on
/// channel 0, then the v5 close message `[255, 0]` when the input ends.
/// Returns stdout and the error channel.
pub async fn ws_exec_stdin(url: &str, input: &[u8]) -> (String, String) {
    let (mut ws, proto) = ws_connect(url, "v5.channel.k8s.io").await;
    assert_eq!(proto.as_deref(), Some("v5.channel.k8s.io"));
    let got = ws_stdin_then_collect(&mut ws, input).await;
    (ch(&got, 1), ch(&got, 3))
}

/// Writes `input` on a v5 session's stdin (channel 0), closes stdin with
/// the v5 close message `[255, 0]` and reads until the server closes;
/// returns the data per channel.
pub async fn ws_stdin_then_collect(ws: &mut Ws, input: &[u8]) -> HashMap<u8, Vec<u8>> {
    use futures_util::SinkExt;
    ws.send(Message::Binary([&[0u8][..], input].concat().into()))
        .await
        .unwrap();
    ws.send(Message::Binary(vec![255u8, 0].into()))
        .await
        .unwrap();
    ws_collect(ws).await.0
}
