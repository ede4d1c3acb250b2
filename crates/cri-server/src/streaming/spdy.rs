//! SPDY/3.1 framing: frame encoding and decoding, and the zlib header-block
//! compression with the protocol's preset dictionary.
//!
//! Only what the Kubernetes streaming protocols use is interpreted; other
//! control frames decode to [`Frame::Unknown`] and are ignored by callers.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::sync::OnceLock;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The protocol version this module speaks.
pub const VERSION: u16 = 3;
/// Flag of a data or control frame that ends the sender's half of a stream.
pub const FLAG_FIN: u8 = 0x01;
/// Largest frame payload accepted (the wire allows 16 MiB; clients write
/// 32 KiB chunks).
pub const MAX_FRAME_LEN: usize = 1024 * 1024;
/// Largest decompressed header block accepted.
pub const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// Largest number of name/value pairs in a header block.
pub const MAX_HEADER_PAIRS: usize = 1024;
/// Size of the common frame header.
pub const FRAME_HEADER_LEN: usize = 8;

/// RST_STREAM status: protocol error.
pub const RST_PROTOCOL_ERROR: u32 = 1;
/// RST_STREAM status: the stream was refused (too many streams).
pub const RST_REFUSED_STREAM: u32 = 3;
/// RST_STREAM status: stream id already in use.
pub const RST_STREAM_IN_USE: u32 = 8;
/// RST_STREAM status: the stream was cancelled.
pub const RST_CANCEL: u32 = 5;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

/// Errors of SPDY framing.
#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    /// Reading or writing the connection failed.
    #[error("spdy i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A frame is larger than [`MAX_FRAME_LEN`].
    #[error("spdy frame of {0} bytes exceeds the limit")]
    FrameTooLarge(usize),
    /// A control frame has a version other than 3.
    #[error("unsupported spdy version {0}")]
    Version(u16),
    /// A frame is shorter than its type requires or otherwise malformed.
    #[error("malformed spdy frame: {0}")]
    Malformed(&'static str),
    /// The header block could not be (de)compressed.
    #[error("spdy header compression: {0}")]
    Compression(String),
    /// The header block is too large or has too many pairs.
    #[error("spdy header block exceeds the limits")]
    HeaderTooLarge,
}

/// A header block: lowercase names, one entry per value.
pub type Headers = Vec<(String, String)>;

/// The first value of a header (names compare case-insensitively).
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A SPDY frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream.
    SynStream {
        /// Stream id (odd when client-initiated).
        stream_id: u32,
        /// Associated stream id (server push), usually 0.
        associated_id: u32,
        /// Priority, 0 (highest) to 7.
        priority: u8,
        /// FIN and UNIDIRECTIONAL flags.
        flags: u8,
        /// Headers.
        headers: Headers,
    },
    /// Accepts a stream.
    SynReply {
        /// Stream id.
        stream_id: u32,
        /// FIN flag.
        flags: u8,
        /// Headers.
        headers: Headers,
    },
    /// Aborts a stream.
    RstStream {
        /// Stream id.
        stream_id: u32,
        /// Status code.
        status: u32,
    },
    /// Connection settings (ignored).
    Settings {
        /// Flags.
        flags: u8,
        /// (flags, id, value) entries.
        entries: Vec<(u8, u32, u32)>,
    },
    /// A ping, echoed by the receiver.
    Ping {
        /// Ping id.
        id: u32,
    },
    /// Ends the connection.
    GoAway {
        /// Last stream id the sender processed.
        last_stream_id: u32,
        /// Status code.
        status: u32,
    },
    /// Additional headers for a stream.
    Headers {
        /// Stream id.
        stream_id: u32,
        /// FIN flag.
        flags: u8,
        /// Headers.
        headers: Headers,
    },
    /// Flow-control window update.
    WindowUpdate {
        /// Stream id (0: connection).
        stream_id: u32,
        /// Window increase.
        delta: u32,
    },
    /// Stream payload.
    Data {
        /// Stream id.
        stream_id: u32,
        /// FIN flag.
        flags: u8,
        /// Payload.
        data: Bytes,
    },
    /// A control frame type this module does not interpret.
    Unknown {
        /// Frame type.
        frame_type: u16,
    },
}

/// The SPDY/3 header compression dictionary (draft 3, section 2.6.10.1):
/// length-prefixed common header names and values followed by a run of
/// common value text; 1423 bytes.
pub fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        const WORDS: &[&str] = &[
            "options",
            "head",
            "post",
            "put",
            "delete",
            "trace",
            "accept",
            "accept-charset",
            "accept-encoding",
            "accept-language",
            "accept-ranges",
            "age",
            "allow",
            "authorization",
            "cache-control",
            "connection",
            "content-base",
            "content-encoding",
            "content-language",
            "content-length",
            "content-location",
            "content-md5",
            "content-range",
            "content-type",
            "date",
            "etag",
            "expect",
            "expires",
            "from",
            "host",
            "if-match",
            "if-modified-since",
            "if-none-match",
            "if-range",
            "if-unmodified-since",
            "last-modified",
            "location",
            "max-forwards",
            "pragma",
            "proxy-authenticate",
            "proxy-authorization",
            "range",
            "referer",
            "retry-after",
            "server",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "user-agent",
            "vary",
            "via",
            "warning",
            "www-authenticate",
            "method",
            "get",
            "status",
            "200 OK",
            "version",
            "HTTP/1.1",
            "url",
            "public",
            "set-cookie",
            "keep-alive",
            "origin",
        ];
        const TAIL: &[&str] = &[
            "100101201202205206300302303304305306307402405406407408409410",
            "411412413414415416417502504505",
            "203 Non-Authoritative Information",
            "204 No Content",
            "301 Moved Permanently",
            "400 Bad Request",
            "401 Unauthorized",
            "403 Forbidden",
            "404 Not Found",
            "500 Internal Server Error",
            "501 Not Implemented",
            "503 Service Unavailable",
            "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 ",
            "Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
            "chunked,text/html,image/png,image/jpg,image/gif,",
            "application/xml,application/xhtml+xml,text/plain,",
            "text/javascript,publicprivatemax-age=gzip,deflate,sdch",
            "charset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
        ];
        let mut d = Vec::with_capacity(1423);
        for w in WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        for t in TAIL {
            d.extend_from_slice(t.as_bytes());
        }
        d
    })
}

/// Encodes frames; owns the sending direction's header compressor.
pub struct FrameEncoder {
    compress: Compress,
}

impl Default for FrameEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameEncoder {
    /// A fresh encoder (one per connection direction).
    pub fn new() -> Self {
        let mut compress = Compress::new(Compression::default(), true);
        // Only fails when the backend lacks dictionary support, which the
        // zlib-rs feature provides; the block then stays decodable anyway.
        if let Err(e) = compress.set_dictionary(dictionary()) {
            tracing::warn!(error = %e, "cannot set the spdy compression dictionary");
        }
        FrameEncoder { compress }
    }

    fn header_block(&mut self, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        // Merge repeated names into one NUL-separated value, as the wire wants.
        let mut merged: Vec<(String, String)> = Vec::new();
        for (name, value) in headers {
            let name = name.to_ascii_lowercase();
            match merged.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => {
                    v.push('\0');
                    v.push_str(value);
                }
                None => merged.push((name, value.clone())),
            }
        }
        let mut raw = Vec::new();
        raw.put_u32(merged.len() as u32);
        for (n, v) in &merged {
            raw.put_u32(n.len() as u32);
            raw.extend_from_slice(n.as_bytes());
            raw.put_u32(v.len() as u32);
            raw.extend_from_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut consumed = 0usize;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(raw.len() + 256);
            }
            let before_in = self.compress.total_in();
            self.compress
                .compress_vec(&raw[consumed..], &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Compression(e.to_string()))?;
            consumed += (self.compress.total_in() - before_in) as usize;
            // A sync flush is complete when all input is consumed and there
            // was spare output room left.
            if consumed >= raw.len() && out.len() < out.capacity() {
                break;
            }
        }
        Ok(out)
    }

    /// Appends the wire form of `frame` to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), SpdyError> {
        let control = |out: &mut BytesMut, ty: u16, flags: u8, payload: &[u8]| {
            out.put_u16(0x8000 | VERSION);
            out.put_u16(ty);
            out.put_u32(((flags as u32) << 24) | payload.len() as u32);
            out.extend_from_slice(payload);
        };
        match frame {
            Frame::SynStream {
                stream_id,
                associated_id,
                priority,
                flags,
                headers,
            } => {
                let block = self.header_block(headers)?;
                let mut p = Vec::with_capacity(10 + block.len());
                p.put_u32(stream_id & 0x7fff_ffff);
                p.put_u32(associated_id & 0x7fff_ffff);
                p.put_u8((priority & 0x7) << 5);
                p.put_u8(0);
                p.extend_from_slice(&block);
                control(out, TYPE_SYN_STREAM, *flags, &p);
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            }
            | Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                let ty = if matches!(frame, Frame::SynReply { .. }) {
                    TYPE_SYN_REPLY
                } else {
                    TYPE_HEADERS
                };
                let block = self.header_block(headers)?;
                let mut p = Vec::with_capacity(4 + block.len());
                p.put_u32(stream_id & 0x7fff_ffff);
                p.extend_from_slice(&block);
                control(out, ty, *flags, &p);
            }
            Frame::RstStream { stream_id, status } => {
                let mut p = Vec::with_capacity(8);
                p.put_u32(stream_id & 0x7fff_ffff);
                p.put_u32(*status);
                control(out, TYPE_RST_STREAM, 0, &p);
            }
            Frame::Settings { flags, entries } => {
                let mut p = Vec::with_capacity(4 + 8 * entries.len());
                p.put_u32(entries.len() as u32);
                for (f, id, value) in entries {
                    p.put_u32(((*f as u32) << 24) | (id & 0x00ff_ffff));
                    p.put_u32(*value);
                }
                control(out, TYPE_SETTINGS, *flags, &p);
            }
            Frame::Ping { id } => control(out, TYPE_PING, 0, &id.to_be_bytes()),
            Frame::GoAway {
                last_stream_id,
                status,
            } => {
                let mut p = Vec::with_capacity(8);
                p.put_u32(last_stream_id & 0x7fff_ffff);
                p.put_u32(*status);
                control(out, TYPE_GOAWAY, 0, &p);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut p = Vec::with_capacity(8);
                p.put_u32(stream_id & 0x7fff_ffff);
                p.put_u32(delta & 0x7fff_ffff);
                control(out, TYPE_WINDOW_UPDATE, 0, &p);
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if data.len() > 0x00ff_ffff {
                    return Err(SpdyError::FrameTooLarge(data.len()));
                }
                out.put_u32(stream_id & 0x7fff_ffff);
                out.put_u32(((*flags as u32) << 24) | data.len() as u32);
                out.extend_from_slice(data);
            }
            Frame::Unknown { .. } => return Err(SpdyError::Malformed("cannot encode unknown")),
        }
        Ok(())
    }
}

/// Decodes frames; owns the receiving direction's header decompressor.
pub struct FrameDecoder {
    decompress: Decompress,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A fresh decoder (one per connection direction).
    pub fn new() -> Self {
        FrameDecoder {
            decompress: Decompress::new(true),
        }
    }

    fn inflate(&mut self, input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let mut out: Vec<u8> = Vec::with_capacity(input.len() * 4 + 256);
        let mut consumed = 0usize;
        loop {
            if out.len() > MAX_HEADER_BLOCK {
                return Err(SpdyError::HeaderTooLarge);
            }
            if out.capacity() - out.len() < 256 {
                out.reserve(out.len().max(1024));
            }
            let before_in = self.decompress.total_in();
            let before_out = out.len();
            let result =
                self.decompress
                    .decompress_vec(&input[consumed..], &mut out, FlushDecompress::Sync);
            consumed += (self.decompress.total_in() - before_in) as usize;
            match result {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {}
                Err(e) => match e.needs_dictionary() {
                    Some(_) => {
                        self.decompress
                            .set_dictionary(dictionary())
                            .map_err(|e| SpdyError::Compression(e.to_string()))?;
                        continue;
                    }
                    None => return Err(SpdyError::Compression(e.to_string())),
                },
            }
            let progressed = out.len() > before_out || self.decompress.total_in() > before_in;
            if consumed >= input.len() && out.len() < out.capacity() {
                break;
            }
            if !progressed {
                if consumed >= input.len() {
                    break;
                }
                return Err(SpdyError::Compression(
                    "header block inflation stalled".into(),
                ));
            }
        }
        if out.len() > MAX_HEADER_BLOCK {
            return Err(SpdyError::HeaderTooLarge);
        }
        Ok(out)
    }

    fn parse_headers(&mut self, block: &[u8]) -> Result<Headers, SpdyError> {
        let raw = self.inflate(block)?;
        let mut b = &raw[..];
        let take_u32 = |b: &mut &[u8]| -> Result<u32, SpdyError> {
            if b.remaining() < 4 {
                return Err(SpdyError::Malformed("truncated header block"));
            }
            Ok(b.get_u32())
        };
        let count = take_u32(&mut b)? as usize;
        if count > MAX_HEADER_PAIRS {
            return Err(SpdyError::HeaderTooLarge);
        }
        let mut headers = Vec::with_capacity(count);
        for _ in 0..count {
            let mut strings = [String::new(), String::new()];
            for s in &mut strings {
                let len = take_u32(&mut b)? as usize;
                if b.remaining() < len {
                    return Err(SpdyError::Malformed("truncated header block"));
                }
                *s = String::from_utf8_lossy(&b[..len]).into_owned();
                b.advance(len);
            }
            let [name, value] = strings;
            if name.is_empty() {
                return Err(SpdyError::Malformed("empty header name"));
            }
            let name = name.to_ascii_lowercase();
            for v in value.split('\0') {
                if headers.len() >= MAX_HEADER_PAIRS {
                    return Err(SpdyError::HeaderTooLarge);
                }
                headers.push((name.clone(), v.to_string()));
            }
        }
        Ok(headers)
    }

    /// Decodes one frame from the front of `buf` if it holds a whole one.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        if buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let len = (u32::from_be_bytes([0, buf[5], buf[6], buf[7]])) as usize;
        if len > MAX_FRAME_LEN {
            return Err(SpdyError::FrameTooLarge(len));
        }
        if buf.len() < FRAME_HEADER_LEN + len {
            buf.reserve(FRAME_HEADER_LEN + len - buf.len());
            return Ok(None);
        }
        let head = buf.split_to(FRAME_HEADER_LEN);
        let mut payload = buf.split_to(len).freeze();
        let flags = head[4];
        if head[0] & 0x80 == 0 {
            let stream_id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
            return Ok(Some(Frame::Data {
                stream_id,
                flags,
                data: payload,
            }));
        }
        let version = u16::from_be_bytes([head[0], head[1]]) & 0x7fff;
        if version != VERSION {
            return Err(SpdyError::Version(version));
        }
        let ty = u16::from_be_bytes([head[2], head[3]]);
        let need = |p: &Bytes, n: usize| {
            if p.len() < n {
                Err(SpdyError::Malformed("short control frame"))
            } else {
                Ok(())
            }
        };
        let frame = match ty {
            TYPE_SYN_STREAM => {
                need(&payload, 10)?;
                let stream_id = payload.get_u32() & 0x7fff_ffff;
                let associated_id = payload.get_u32() & 0x7fff_ffff;
                let priority = payload.get_u8() >> 5;
                payload.advance(1);
                let headers = self.parse_headers(&payload)?;
                Frame::SynStream {
                    stream_id,
                    associated_id,
                    priority,
                    flags,
                    headers,
                }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                need(&payload, 4)?;
                let stream_id = payload.get_u32() & 0x7fff_ffff;
                let headers = self.parse_headers(&payload)?;
                if ty == TYPE_SYN_REPLY {
                    Frame::SynReply {
                        stream_id,
                        flags,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream_id,
                        flags,
                        headers,
                    }
                }
            }
            TYPE_RST_STREAM => {
                need(&payload, 8)?;
                Frame::RstStream {
                    stream_id: payload.get_u32() & 0x7fff_ffff,
                    status: payload.get_u32(),
                }
            }
            TYPE_SETTINGS => {
                need(&payload, 4)?;
                let n = payload.get_u32() as usize;
                if payload.len() / 8 < n {
                    return Err(SpdyError::Malformed("short settings frame"));
                }
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let a = payload.get_u32();
                    let value = payload.get_u32();
                    entries.push(((a >> 24) as u8, a & 0x00ff_ffff, value));
                }
                Frame::Settings { flags, entries }
            }
            TYPE_PING => {
                need(&payload, 4)?;
                Frame::Ping {
                    id: payload.get_u32(),
                }
            }
            TYPE_GOAWAY => {
                need(&payload, 4)?;
                let last_stream_id = payload.get_u32() & 0x7fff_ffff;
                // SPDY/3 adds a status code; tolerate its absence.
                let status = if payload.len() >= 4 {
                    payload.get_u32()
                } else {
                    0
                };
                Frame::GoAway {
                    last_stream_id,
                    status,
                }
            }
            TYPE_WINDOW_UPDATE => {
                need(&payload, 8)?;
                Frame::WindowUpdate {
                    stream_id: payload.get_u32() & 0x7fff_ffff,
                    delta: payload.get_u32() & 0x7fff_ffff,
                }
            }
            other => Frame::Unknown { frame_type: other },
        };
        Ok(Some(frame))
    }

    /// Reads until one whole frame is decoded; `Ok(None)` on a clean EOF
    /// between frames.
    pub async fn read_frame<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        buf: &mut BytesMut,
    ) -> Result<Option<Frame>, SpdyError> {
        loop {
            if let Some(frame) = self.decode(buf)? {
                return Ok(Some(frame));
            }
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(16 * 1024);
            }
            let n = reader.read_buf(buf).await?;
            if n == 0 {
                if buf.is_empty() {
                    return Ok(None);
                }
                return Err(SpdyError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn dictionary_is_the_spec_one() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        assert_eq!(&d[..11], b"\0\0\0\x07options");
        assert!(d.ends_with(b"enq=0."));
        // The dictionary id a zlib stream carries (Adler-32 of the bytes),
        // checked against an independent zlib implementation.
        let mut a: u32 = 1;
        let mut b: u32 = 0;
        for &x in d {
            a = (a + x as u32) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn decodes_header_blocks_compressed_by_c_zlib() {
        // Two consecutive SYN_STREAM header blocks compressed by C zlib with
        // the dictionary and sync flushes, as Go's spdy framer sends them.
        let blocks = [
            (
                "78f9e3c6a7c202e50e703a2b294a4dcc851625aca9a0800632242b742112bac05c58929f9c9fa38b48b88265267a40e38105628e5eb645b15e663e000000ffff",
                h(&[
                    ("streamtype", "error"),
                    ("x-stream-protocol-version", "v4.channel.k8s.io"),
                ]),
            ),
            (
                "020a326218064cfe29f9a52500000000ffff",
                h(&[("streamtype", "stdout")]),
            ),
        ];
        let mut dec = FrameDecoder::new();
        for (i, (hexblock, want)) in blocks.iter().enumerate() {
            let block = unhex(hexblock);
            let mut wire = BytesMut::new();
            wire.put_u16(0x8000 | VERSION);
            wire.put_u16(TYPE_SYN_STREAM);
            wire.put_u32(10 + block.len() as u32);
            wire.put_u32(2 * i as u32 + 1);
            wire.put_u32(0);
            wire.put_u16(0);
            wire.extend_from_slice(&block);
            match dec.decode(&mut wire).unwrap() {
                Some(Frame::SynStream { headers, .. }) => assert_eq!(&headers, want),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn frames_round_trip() {
        let cases = vec![
            Frame::SynStream {
                stream_id: 1,
                associated_id: 0,
                priority: 0,
                flags: 0,
                headers: h(&[("streamtype", "error"), ("port", "80")]),
            },
            Frame::SynStream {
                stream_id: 3,
                associated_id: 0,
                priority: 7,
                flags: FLAG_FIN,
                headers: h(&[("streamtype", "stdin"), ("x", "a"), ("x", "b")]),
            },
            Frame::SynReply {
                stream_id: 3,
                flags: 0,
                headers: vec![],
            },
            Frame::Headers {
                stream_id: 5,
                flags: FLAG_FIN,
                headers: h(&[("a", "")]),
            },
            Frame::RstStream {
                stream_id: 7,
                status: RST_CANCEL,
            },
            Frame::Settings {
                flags: 1,
                entries: vec![(0, 4, 100), (1, 7, 65536)],
            },
            Frame::Ping { id: 0xdead_beef },
            Frame::GoAway {
                last_stream_id: 9,
                status: 0,
            },
            Frame::WindowUpdate {
                stream_id: 1,
                delta: 4096,
            },
            Frame::Data {
                stream_id: 1,
                flags: 0,
                data: Bytes::from_static(b"hello"),
            },
            Frame::Data {
                stream_id: 0x7fff_ffff,
                flags: FLAG_FIN,
                data: Bytes::new(),
            },
            Frame::Data {
                stream_id: 11,
                flags: 0,
                data: Bytes::from(vec![7u8; 100_000]),
            },
        ];
        let mut enc = FrameEncoder::new();
        let mut dec = FrameDecoder::new();
        // All frames in one buffer: the compression context carries over.
        let mut wire = BytesMut::new();
        for f in &cases {
            enc.encode(f, &mut wire).unwrap();
        }
        for want in &cases {
            let got = dec.decode(&mut wire).unwrap().expect("a whole frame");
            assert_eq!(&got, want);
        }
        assert!(wire.is_empty());
        assert!(dec.decode(&mut wire).unwrap().is_none());
    }

    #[test]
    fn header_blocks_name_the_dictionary() {
        let mut enc = FrameEncoder::new();
        let block = enc.header_block(&h(&[("streamtype", "stdout")])).unwrap();
        // zlib header with FDICT set, then the dictionary's Adler-32.
        assert_eq!(block[0] & 0x0f, 8, "deflate");
        assert_ne!(block[1] & 0x20, 0, "FDICT");
        assert_eq!(((block[0] as u16) << 8 | block[1] as u16) % 31, 0);
        assert_eq!(&block[2..6], &0xe3c6_a7c2_u32.to_be_bytes());
        // Sync flush: the block ends with an empty stored block.
        assert!(block.ends_with(&[0, 0, 0xff, 0xff]));
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let mut enc = FrameEncoder::new();
        let mut wire = BytesMut::new();
        let f = Frame::Data {
            stream_id: 1,
            flags: 0,
            data: Bytes::from_static(b"abcdef"),
        };
        enc.encode(&f, &mut wire).unwrap();
        let mut dec = FrameDecoder::new();
        for cut in 0..wire.len() {
            let mut part = BytesMut::from(&wire[..cut]);
            assert!(dec.decode(&mut part).unwrap().is_none(), "cut {cut}");
        }
        assert_eq!(dec.decode(&mut wire).unwrap(), Some(f));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("too large", vec![0, 0, 0, 1, 0, 0xff, 0xff, 0xff]),
            ("bad version", vec![0x80, 2, 0, 1, 0, 0, 0, 0]),
            ("short rst", vec![0x80, 3, 0, 3, 0, 0, 0, 2, 0, 0]),
            (
                "garbage header block",
                vec![
                    0x80, 3, 0, 1, 0, 0, 0, 14, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4,
                ],
            ),
            ("short syn", vec![0x80, 3, 0, 1, 0, 0, 0, 2, 0, 0]),
            (
                "settings count lies",
                vec![0x80, 3, 0, 4, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff],
            ),
        ];
        for (name, bytes) in cases {
            let mut dec = FrameDecoder::new();
            let mut buf = BytesMut::from(&bytes[..]);
            assert!(dec.decode(&mut buf).is_err(), "{name}");
        }
    }

    #[test]
    fn random_input_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..2000 {
            let len = rng.gen_range(0..64);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            // Make many of them control frames of version 3 with a small
            // length, so the payload parsers run too.
            if bytes.len() >= 8 && rng.gen_bool(0.7) {
                bytes[0] = 0x80;
                bytes[1] = 3;
                bytes[2] = 0;
                bytes[3] = rng.gen_range(1..10);
                bytes[5] = 0;
                bytes[6] = 0;
                bytes[7] = (len - 8) as u8;
            }
            let mut dec = FrameDecoder::new();
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = dec.decode(&mut buf) {}
        }
    }

    #[test]
    fn unknown_control_frames_are_skipped() {
        let mut dec = FrameDecoder::new();
        let mut buf = BytesMut::from(&[0x80, 3, 0, 0x42, 0, 0, 0, 2, 9, 9][..]);
        assert_eq!(
            dec.decode(&mut buf).unwrap(),
            Some(Frame::Unknown { frame_type: 0x42 })
        );
    }

    #[test]
    fn header_lookup_is_case_insensitive() {
        let hs = h(&[("streamtype", "stdout")]);
        assert_eq!(header(&hs, "streamType"), Some("stdout"));
        assert_eq!(header(&hs, "port"), None);
    }
}
