//! Accepting any HTTP/2 `:authority` on the CRI unix socket.
//!
//! gRPC clients other than Go's derive the `:authority` pseudo-header of a
//! `unix:` target from the socket path: grpcio (the C core behind Python's,
//! Ruby's and C++'s gRPC) connecting to `unix:///run/crius/crius.sock` sends
//! `:authority: run%2Fcrius%2Fcrius.sock`. The h2 server under tonic parses
//! the value as a `http::uri::Authority`, which rejects `%`, `/` and an empty
//! value, and resets every such stream with PROTOCOL_ERROR, so those clients
//! could make no call at all. Go's gRPC server accepts any authority, and on a
//! unix socket it means nothing, so criusd accepts any too.
//!
//! [`AuthorityRewrite`] wraps each accepted connection. Writes pass straight
//! through. Reads parse the client's byte stream: the connection preface,
//! then frames. Frames other than HEADERS and CONTINUATION are streamed
//! through unchanged, a DATA frame's payload as it arrives. A header block
//! (a HEADERS frame and its CONTINUATIONs) is collected, decoded and encoded
//! again; an `:authority` value that `Authority::try_from` rejects becomes
//! `localhost`, everything else (including a valid authority) stays as sent.
//!
//! Decoding needs the client's HPACK dynamic table, which only a full HPACK
//! decoder can keep, hence the `loona-hpack` crate (the maintained successor
//! of the `hpack` and `fluke-hpack` crates). The new block uses only "literal
//! header field without indexing, new name" representations without Huffman
//! coding, so h2's own decoder never needs or adds a dynamic table entry: the
//! client's table lives only in our decoder and both stay consistent. The
//! block is sent as one HEADERS frame (END_HEADERS plus the original
//! END_STREAM and PRIORITY; padding dropped) or, past 16384 bytes (the frame
//! size every HTTP/2 peer must accept), as HEADERS plus CONTINUATIONs.
//!
//! A header block over [`MAX_HEADER_BLOCK`] bytes (or one that decodes to a
//! header list over [`MAX_HEADER_LIST`]), an HPACK decoding error or a
//! malformed frame sequence stops the rewriting for good: the read side then
//! fails with `InvalidData`, which closes the connection. A byte stream that
//! does not start with the HTTP/2 preface is passed through untouched for h2
//! to reject.

use loona_hpack::Decoder;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codegen::http::uri::Authority;
use tonic::transport::server::Connected;

/// The client connection preface.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_PUSH_PROMISE: u8 = 0x5;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// Largest frame payload we emit: the initial SETTINGS_MAX_FRAME_SIZE, which
/// a server never lowers.
const MAX_FRAME_PAYLOAD: usize = 16384;
/// Largest header block (sum of the fragments of a HEADERS frame and its
/// CONTINUATIONs, padding included) accepted.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;
/// Largest decoded header list accepted, counted as HTTP/2 does
/// (name + value + 32 per field): bounds what indexed fields referring to
/// large dynamic table entries can expand a small block to.
pub const MAX_HEADER_LIST: usize = 1 << 20;
/// The SETTINGS_HEADER_TABLE_SIZE criusd's server advertises (h2's default,
/// which tonic keeps): the most a client's table size update may ask for.
const HEADER_TABLE_SIZE: usize = 4096;
/// What replaces an `:authority` that HTTP/2 servers would reject.
const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";
/// Bytes read from the connection at a time while parsing.
const READ_CHUNK: usize = 8192;

/// Why the client's stream cannot be rewritten.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HTTP/2 header rewriting: {0}")]
pub struct RewriteError(String);

fn fail<T>(msg: impl Into<String>) -> Result<T, RewriteError> {
    Err(RewriteError(msg.into()))
}

/// Where the parser is in the client's byte stream.
#[derive(Debug)]
enum State {
    /// This many bytes of the preface seen.
    Preface(usize),
    /// Collecting a frame header.
    FrameHeader {
        bytes: [u8; FRAME_HEADER_LEN],
        have: usize,
    },
    /// Streaming this many more payload bytes of a frame we leave alone.
    PassPayload(usize),
    /// Collecting this many more payload bytes of a HEADERS (`first`) or
    /// CONTINUATION frame with these flags into the open block.
    BlockPayload {
        first: bool,
        flags: u8,
        remaining: usize,
    },
    /// Not HTTP/2 as expected: everything passes through.
    Transparent,
    /// Rewriting failed; nothing more is parsed.
    Failed(RewriteError),
}

/// A header block being collected.
struct Block {
    stream: u32,
    /// The HEADERS frame's flags.
    flags: u8,
    priority: Option<[u8; 5]>,
    /// The block fragment; while the HEADERS payload is still arriving, that
    /// payload with its pad length, priority fields and padding.
    fragment: Vec<u8>,
}

/// The sans-IO part: turns the client's bytes into the bytes h2 gets.
pub(crate) struct Rewriter {
    state: State,
    decoder: Decoder<'static>,
    block: Option<Block>,
    /// Whether a replacement has been logged on this connection.
    logged: bool,
}

impl Default for Rewriter {
    fn default() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE);
        Rewriter {
            state: State::Preface(0),
            decoder,
            block: None,
            logged: false,
        }
    }
}

impl Rewriter {
    /// Consumes `input`, appending what h2 should read to `out`. After an
    /// error every later call fails with the same error.
    pub(crate) fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        if let State::Failed(e) = &self.state {
            return Err(e.clone());
        }
        let result = self.feed_inner(input, out);
        if let Err(e) = &result {
            self.state = State::Failed(e.clone());
            self.block = None;
        }
        result
    }

    /// The error that stopped the rewriting, if any.
    pub(crate) fn error(&self) -> Option<&RewriteError> {
        match &self.state {
            State::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// How many of the next bytes pass through unchanged and unparsed (the
    /// rest of a streamed frame payload); they may bypass `feed` when
    /// reported by `skip`.
    pub(crate) fn passthrough_len(&self) -> usize {
        match self.state {
            State::PassPayload(n) => n,
            State::Transparent => usize::MAX,
            _ => 0,
        }
    }

    /// Accounts for `n <= passthrough_len()` bytes passed on directly.
    pub(crate) fn skip(&mut self, n: usize) {
        match &mut self.state {
            State::PassPayload(rem) => {
                *rem -= n;
                if *rem == 0 {
                    self.state = State::FrameHeader {
                        bytes: [0; FRAME_HEADER_LEN],
                        have: 0,
                    };
                }
            }
            State::Transparent => {}
            _ => debug_assert!(n == 0, "skip outside a passthrough"),
        }
    }

    fn feed_inner(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let mut i = 0;
        while i < input.len() {
            let rest = &input[i..];
            match &mut self.state {
                State::Preface(seen) => {
                    let n = rest.len().min(PREFACE.len() - *seen);
                    if rest[..n] != PREFACE[*seen..*seen + n] {
                        // Not HTTP/2 prior knowledge: let h2 say so.
                        self.state = State::Transparent;
                        continue;
                    }
                    out.extend_from_slice(&rest[..n]);
                    i += n;
                    *seen += n;
                    if *seen == PREFACE.len() {
                        self.state = State::FrameHeader {
                            bytes: [0; FRAME_HEADER_LEN],
                            have: 0,
                        };
                    }
                }
                State::Transparent => {
                    out.extend_from_slice(rest);
                    i = input.len();
                }
                State::FrameHeader { bytes, have } => {
                    let n = rest.len().min(FRAME_HEADER_LEN - *have);
                    bytes[*have..*have + n].copy_from_slice(&rest[..n]);
                    *have += n;
                    i += n;
                    if *have == FRAME_HEADER_LEN {
                        let bytes = *bytes;
                        self.start_frame(bytes, out)?;
                    }
                }
                State::PassPayload(remaining) => {
                    let n = rest.len().min(*remaining);
                    out.extend_from_slice(&rest[..n]);
                    i += n;
                    self.skip(n);
                }
                State::BlockPayload {
                    first,
                    flags,
                    remaining,
                } => {
                    let n = rest.len().min(*remaining);
                    *remaining -= n;
                    let (first, flags, done) = (*first, *flags, *remaining == 0);
                    let Some(block) = self.block.as_mut() else {
                        return fail("header payload without a block");
                    };
                    block.fragment.extend_from_slice(&rest[..n]);
                    i += n;
                    if done {
                        self.end_block_frame(first, flags, out)?;
                    }
                }
                State::Failed(e) => return Err(e.clone()),
            }
        }
        Ok(())
    }

    /// Acts on a complete frame header.
    fn start_frame(
        &mut self,
        header: [u8; FRAME_HEADER_LEN],
        out: &mut Vec<u8>,
    ) -> Result<(), RewriteError> {
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let kind = header[3];
        let flags = header[4];
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        if let Some(block) = &self.block {
            if kind != TYPE_CONTINUATION || stream != block.stream {
                return fail(format!(
                    "frame of type {kind:#x} on stream {stream} inside the header block of stream {}",
                    block.stream
                ));
            }
            if block.fragment.len() + len > MAX_HEADER_BLOCK {
                return fail(format!(
                    "header block of stream {stream} over {MAX_HEADER_BLOCK} bytes"
                ));
            }
            self.state = State::BlockPayload {
                first: false,
                flags,
                remaining: len,
            };
        } else {
            match kind {
                TYPE_HEADERS => {
                    if stream == 0 {
                        return fail("HEADERS frame on stream 0");
                    }
                    if len > MAX_HEADER_BLOCK {
                        return fail(format!(
                            "header block of stream {stream} over {MAX_HEADER_BLOCK} bytes"
                        ));
                    }
                    self.block = Some(Block {
                        stream,
                        flags,
                        priority: None,
                        fragment: Vec::with_capacity(len.min(MAX_FRAME_PAYLOAD)),
                    });
                    self.state = State::BlockPayload {
                        first: true,
                        flags,
                        remaining: len,
                    };
                }
                TYPE_CONTINUATION => return fail("CONTINUATION frame without a HEADERS frame"),
                // A server never accepts one; its header block would leave
                // our decoder behind, so stop here rather than pass it on.
                TYPE_PUSH_PROMISE => return fail("PUSH_PROMISE frame from a client"),
                _ => {
                    out.extend_from_slice(&header);
                    self.state = if len == 0 {
                        State::FrameHeader {
                            bytes: [0; FRAME_HEADER_LEN],
                            have: 0,
                        }
                    } else {
                        State::PassPayload(len)
                    };
                    return Ok(());
                }
            }
        }
        if len == 0 {
            let first = kind == TYPE_HEADERS;
            self.end_block_frame(first, flags, out)?;
        }
        Ok(())
    }

    /// A HEADERS or CONTINUATION payload is complete.
    fn end_block_frame(
        &mut self,
        first: bool,
        flags: u8,
        out: &mut Vec<u8>,
    ) -> Result<(), RewriteError> {
        let Some(block) = self.block.as_mut() else {
            return fail("header payload without a block");
        };
        if first {
            let payload = &mut block.fragment;
            let mut start = 0;
            let mut pad = 0;
            if flags & FLAG_PADDED != 0 {
                let Some(&p) = payload.first() else {
                    return fail("padded HEADERS frame without a pad length");
                };
                pad = p as usize;
                start = 1;
            }
            if flags & FLAG_PRIORITY != 0 {
                let Some(fields) = payload.get(start..start + 5) else {
                    return fail("HEADERS frame too short for its priority fields");
                };
                let mut priority = [0; 5];
                priority.copy_from_slice(fields);
                block.priority = Some(priority);
                start += 5;
            }
            if start + pad > payload.len() {
                return fail("HEADERS frame padding longer than its payload");
            }
            payload.truncate(payload.len() - pad);
            payload.drain(..start);
        }
        self.state = State::FrameHeader {
            bytes: [0; FRAME_HEADER_LEN],
            have: 0,
        };
        if flags & FLAG_END_HEADERS != 0 {
            self.finish_block(out)?;
        }
        Ok(())
    }

    /// Decodes the complete block and emits it re-encoded.
    fn finish_block(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let Some(block) = self.block.take() else {
            return fail("END_HEADERS without a block");
        };
        let mut encoded = Vec::with_capacity(block.fragment.len() + 64);
        let mut list_size = 0usize;
        let mut too_large = false;
        let mut replaced: Option<Vec<u8>> = None;
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                if too_large {
                    return;
                }
                list_size += name.len() + value.len() + 32;
                if list_size > MAX_HEADER_LIST {
                    too_large = true;
                    return;
                }
                let mut value: &[u8] = &value;
                if &*name == b":authority" && Authority::try_from(value).is_err() {
                    if replaced.is_none() {
                        replaced = Some(value.to_vec());
                    }
                    value = REPLACEMENT_AUTHORITY;
                }
                encode_literal(&mut encoded, &name, value);
            })
            .map_err(|e| RewriteError(format!("HPACK decoding failed: {e}")))?;
        if too_large {
            return fail(format!(
                "header list of stream {} over {MAX_HEADER_LIST} bytes",
                block.stream
            ));
        }
        if let Some(original) = replaced {
            if !self.logged {
                self.logged = true;
                tracing::debug!(
                    authority = %String::from_utf8_lossy(&original),
                    "replacing an HTTP/2 :authority that h2 would reject with localhost"
                );
            }
        }
        emit_block(out, &block, &encoded);
        Ok(())
    }
}

/// Appends an HPACK integer (RFC 7541 5.1) with an `prefix`-bit prefix
/// whose other bits in the first byte are `first`.
pub fn encode_int(out: &mut Vec<u8>, first: u8, prefix: u8, mut value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// Appends a "literal header field without indexing, new name" without
/// Huffman coding.
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    encode_int(out, 0, 7, name.len());
    out.extend_from_slice(name);
    encode_int(out, 0, 7, value.len());
    out.extend_from_slice(value);
}

fn frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    let len = (len as u32).to_be_bytes();
    out.extend_from_slice(&len[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// Frames `encoded` as HEADERS (+ CONTINUATIONs) for `block`'s stream.
fn emit_block(out: &mut Vec<u8>, block: &Block, encoded: &[u8]) {
    let priority: &[u8] = block.priority.as_ref().map_or(&[], |p| &p[..]);
    let (first, rest) = encoded.split_at(encoded.len().min(MAX_FRAME_PAYLOAD - priority.len()));
    let mut flags = block.flags & (FLAG_END_STREAM | FLAG_PRIORITY);
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    out.reserve(
        encoded.len() + priority.len() + FRAME_HEADER_LEN * (2 + rest.len() / MAX_FRAME_PAYLOAD),
    );
    frame_header(
        out,
        priority.len() + first.len(),
        TYPE_HEADERS,
        flags,
        block.stream,
    );
    out.extend_from_slice(priority);
    out.extend_from_slice(first);
    let mut chunks = rest.chunks(MAX_FRAME_PAYLOAD).peekable();
    while let Some(chunk) = chunks.next() {
        let flags = if chunks.peek().is_none() {
            FLAG_END_HEADERS
        } else {
            0
        };
        frame_header(out, chunk.len(), TYPE_CONTINUATION, flags, block.stream);
        out.extend_from_slice(chunk);
    }
}

/// A server-side connection whose client header blocks are rewritten so that
/// h2 accepts any `:authority` (see the module doc).
pub struct AuthorityRewrite<T> {
    io: T,
    rewriter: Rewriter,
    /// Rewritten bytes not yet handed to the reader, from `out_pos` on.
    out: Vec<u8>,
    out_pos: usize,
    eof: bool,
}

impl<T> AuthorityRewrite<T> {
    pub fn new(io: T) -> Self {
        AuthorityRewrite {
            io,
            rewriter: Rewriter::default(),
            out: Vec::new(),
            out_pos: 0,
            eof: false,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: Connected> Connected for AuthorityRewrite<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityRewrite<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                    // Do not keep a large rewritten block's buffer around.
                    if this.out.capacity() > 4 * READ_CHUNK {
                        this.out = Vec::new();
                    }
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = this.rewriter.error() {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e.clone())));
            }
            let direct = this.rewriter.passthrough_len();
            if direct > 0 {
                // The rest of a frame we leave alone: read it straight into
                // the caller's buffer.
                let n = direct.min(buf.remaining());
                let got = {
                    let mut inner = ReadBuf::new(buf.initialize_unfilled_to(n));
                    ready!(Pin::new(&mut this.io).poll_read(cx, &mut inner))?;
                    inner.filled().len()
                };
                buf.advance(got);
                this.rewriter.skip(got);
                if got == 0 {
                    this.eof = true;
                }
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut inner = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut inner))?;
            if inner.filled().is_empty() {
                // A partly received header block is dropped: h2 sees the
                // connection end mid-frame, as it would have anyway.
                this.eof = true;
                continue;
            }
            if let Err(e) = this.rewriter.feed(inner.filled(), &mut this.out) {
                // What was rewritten before the error is handed over first.
                tracing::warn!(error = %e, "closing a CRI connection");
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AuthorityRewrite<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use tokio::io::AsyncReadExt;

    const SETTINGS: u8 = 0x4;
    const DATA: u8 = 0x0;

    /// An HPACK encoder that indexes every field it sends (literal with
    /// incremental indexing, name from the static table when it is there)
    /// and sends fields already in its dynamic table as indexes, as grpcio
    /// does with `:authority`.
    #[derive(Default)]
    struct IndexingEncoder {
        table: VecDeque<(Vec<u8>, Vec<u8>)>,
        size: usize,
    }

    const STATIC_NAMES: &[(&str, usize)] = &[
        (":authority", 1),
        (":method", 2),
        (":path", 4),
        (":scheme", 6),
        ("content-type", 31),
        ("user-agent", 58),
    ];

    impl IndexingEncoder {
        fn encode(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
            let mut out = Vec::new();
            for &(name, value) in headers {
                let (name, value) = (name.as_bytes(), value.as_bytes());
                if let Some(i) = self.table.iter().position(|(n, v)| n == name && v == value) {
                    encode_int(&mut out, 0x80, 7, 62 + i);
                    continue;
                }
                match STATIC_NAMES.iter().find(|(n, _)| n.as_bytes() == name) {
                    Some(&(_, index)) => encode_int(&mut out, 0x40, 6, index),
                    None => {
                        out.push(0x40);
                        encode_int(&mut out, 0, 7, name.len());
                        out.extend_from_slice(name);
                    }
                }
                encode_int(&mut out, 0, 7, value.len());
                out.extend_from_slice(value);
                self.size += name.len() + value.len() + 32;
                self.table.push_front((name.to_vec(), value.to_vec()));
                while self.size > HEADER_TABLE_SIZE {
                    let (n, v) = self.table.pop_back().unwrap();
                    self.size -= n.len() + v.len() + 32;
                }
            }
            out
        }
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame_header(&mut out, payload.len(), kind, flags, stream);
        out.extend_from_slice(payload);
        out
    }

    fn request(authority: &str) -> Vec<(&'static str, String)> {
        vec![
            (":method", "POST".into()),
            (":scheme", "http".into()),
            (":path", "/runtime.v1.RuntimeService/Version".into()),
            (":authority", authority.into()),
            ("te", "trailers".into()),
            ("content-type", "application/grpc".into()),
            (
                "user-agent",
                "grpc-python/1.85.0 grpc-c/52.0.0 (linux; chttp2)".into(),
            ),
        ]
    }

    fn encode(enc: &mut IndexingEncoder, headers: &[(&'static str, String)]) -> Vec<u8> {
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        enc.encode(&pairs)
    }

    /// Feeds `input` to a rewriter `chunk` bytes at a time.
    fn rewrite(input: &[u8], chunk: usize) -> Result<Vec<u8>, RewriteError> {
        let mut rewriter = Rewriter::default();
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            rewriter.feed(piece, &mut out)?;
        }
        Ok(out)
    }

    #[derive(Debug, PartialEq)]
    struct Frame {
        kind: u8,
        flags: u8,
        stream: u32,
        payload: Vec<u8>,
    }

    /// Splits rewritten output (preface first) into frames.
    fn frames(out: &[u8]) -> Vec<Frame> {
        assert_eq!(&out[..PREFACE.len()], PREFACE, "preface");
        let mut rest = &out[PREFACE.len()..];
        let mut frames = Vec::new();
        while !rest.is_empty() {
            assert!(rest.len() >= FRAME_HEADER_LEN, "truncated frame header");
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let stream = u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]);
            frames.push(Frame {
                kind: rest[3],
                flags: rest[4],
                stream,
                payload: rest[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len].to_vec(),
            });
            rest = &rest[FRAME_HEADER_LEN + len..];
        }
        frames
    }

    fn decode_int(buf: &[u8], pos: &mut usize, prefix: u8) -> usize {
        let max = (1usize << prefix) - 1;
        let mut value = (buf[*pos] as usize) & max;
        *pos += 1;
        if value < max {
            return value;
        }
        let mut shift = 0;
        loop {
            let b = buf[*pos];
            *pos += 1;
            value += ((b & 0x7f) as usize) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                return value;
            }
        }
    }

    /// Decodes a block, asserting it uses only literal-without-indexing,
    /// new-name, non-Huffman fields (so h2 needs no dynamic table for it).
    fn plain_fields(block: &[u8]) -> Vec<(String, String)> {
        let mut pos = 0;
        let mut fields = Vec::new();
        let string = |pos: &mut usize| {
            assert_eq!(block[*pos] & 0x80, 0, "Huffman-coded string");
            let len = decode_int(block, pos, 7);
            let s = String::from_utf8(block[*pos..*pos + len].to_vec()).unwrap();
            *pos += len;
            s
        };
        while pos < block.len() {
            assert_eq!(block[pos], 0x00, "field representation at {pos}");
            pos += 1;
            let name = string(&mut pos);
            let value = string(&mut pos);
            fields.push((name, value));
        }
        // A decoder with an empty table agrees.
        let fresh = Decoder::new().decode(block).unwrap();
        assert_eq!(fresh.len(), fields.len());
        fields
    }

    /// A request as h2 receives it.
    #[derive(Debug, PartialEq)]
    struct Headers {
        stream: u32,
        flags: u8,
        priority: Option<Vec<u8>>,
        fields: Vec<(String, String)>,
    }

    /// The header blocks in rewritten output, with the frames in between
    /// that are not part of one.
    fn header_blocks(frames: &[Frame]) -> (Vec<Headers>, Vec<&Frame>) {
        let mut blocks = Vec::new();
        let mut others = Vec::new();
        let mut i = 0;
        while i < frames.len() {
            let f = &frames[i];
            i += 1;
            if f.kind != TYPE_HEADERS {
                assert_ne!(f.kind, TYPE_CONTINUATION, "stray CONTINUATION");
                others.push(f);
                continue;
            }
            assert_eq!(f.flags & FLAG_PADDED, 0, "padding in rewritten HEADERS");
            assert!(f.payload.len() <= MAX_FRAME_PAYLOAD);
            let (priority, mut block) = if f.flags & FLAG_PRIORITY != 0 {
                (Some(f.payload[..5].to_vec()), f.payload[5..].to_vec())
            } else {
                (None, f.payload.clone())
            };
            let mut end = f.flags & FLAG_END_HEADERS != 0;
            while !end {
                let c = &frames[i];
                i += 1;
                assert_eq!((c.kind, c.stream), (TYPE_CONTINUATION, f.stream));
                assert!(c.payload.len() <= MAX_FRAME_PAYLOAD);
                block.extend_from_slice(&c.payload);
                end = c.flags & FLAG_END_HEADERS != 0;
            }
            blocks.push(Headers {
                stream: f.stream,
                flags: f.flags,
                priority,
                fields: plain_fields(&block),
            });
        }
        (blocks, others)
    }

    fn expected(headers: &[(&'static str, String)], authority: &str) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|(n, v)| {
                let v = if *n == ":authority" { authority } else { v };
                (n.to_string(), v.to_string())
            })
            .collect()
    }

    fn connection_start() -> Vec<u8> {
        let mut input = PREFACE.to_vec();
        // SETTINGS with ENABLE_PUSH = 0
        input.extend(frame(SETTINGS, 0, 0, &[0, 2, 0, 0, 0, 0]));
        input
    }

    /// Every chunking a test input is fed in.
    const CHUNKS: &[usize] = &[usize::MAX, 1, 2, 7, 10, 4096];

    #[test]
    fn authorities_are_kept_or_replaced() {
        let cases = [
            ("localhost:50051", "localhost:50051"),
            ("example.com", "example.com"),
            ("[::1]:10010", "[::1]:10010"),
            ("crius", "crius"),
            ("tmp%2Fcapsock", "localhost"),
            ("run%2Fcrius%2Fcrius.sock", "localhost"),
            ("/run/crius/crius.sock", "localhost"),
            ("unix:///run/crius/crius.sock", "localhost"),
            ("", "localhost"),
            ("a b", "localhost"),
        ];
        for (authority, want) in cases {
            let headers = request(authority);
            let mut input = connection_start();
            let block = encode(&mut IndexingEncoder::default(), &headers);
            input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block));
            let data = frame(DATA, FLAG_END_STREAM, 1, b"\0\0\0\0\x07\x0a\x050.1.0");
            input.extend(&data);
            for &chunk in CHUNKS {
                let out = rewrite(&input, chunk).unwrap();
                let frames = frames(&out);
                let (blocks, others) = header_blocks(&frames);
                assert_eq!(
                    blocks,
                    [Headers {
                        stream: 1,
                        flags: FLAG_END_HEADERS,
                        priority: None,
                        fields: expected(&headers, want),
                    }],
                    "authority {authority:?}, chunk {chunk}"
                );
                assert_eq!(others.len(), 2);
                assert_eq!(others[0].kind, SETTINGS);
                assert!(out.ends_with(&data), "DATA after the headers unchanged");
            }
        }
    }

    #[test]
    fn continuations_padding_and_priority_are_folded_into_one_headers_frame() {
        let headers = request("tmp%2Fcapsock");
        let block = encode(&mut IndexingEncoder::default(), &headers);
        let (a, rest) = block.split_at(10);
        let (b, c) = rest.split_at(20);
        let priority = [0x80, 0, 0, 3, 15];
        let padded = |fragment: &[u8], with_priority: bool| {
            let mut p = vec![9u8];
            if with_priority {
                p.extend(priority);
            }
            p.extend_from_slice(fragment);
            p.extend([0u8; 9]);
            p
        };
        struct Case {
            name: &'static str,
            frames: Vec<Vec<u8>>,
            flags: u8,
            priority: Option<Vec<u8>>,
        }
        let cases = [
            Case {
                name: "HEADERS + 2 CONTINUATIONs",
                frames: vec![
                    frame(TYPE_HEADERS, FLAG_END_STREAM, 3, a),
                    frame(TYPE_CONTINUATION, 0, 3, b),
                    frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, c),
                ],
                flags: FLAG_END_STREAM | FLAG_END_HEADERS,
                priority: None,
            },
            Case {
                name: "empty HEADERS + CONTINUATIONs incl. empty",
                frames: vec![
                    frame(TYPE_HEADERS, 0, 3, &[]),
                    frame(TYPE_CONTINUATION, 0, 3, &block),
                    frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &[]),
                ],
                flags: FLAG_END_HEADERS,
                priority: None,
            },
            Case {
                name: "padded",
                frames: vec![frame(
                    TYPE_HEADERS,
                    FLAG_PADDED | FLAG_END_HEADERS,
                    3,
                    &padded(&block, false),
                )],
                flags: FLAG_END_HEADERS,
                priority: None,
            },
            Case {
                name: "padded with priority",
                frames: vec![frame(
                    TYPE_HEADERS,
                    FLAG_PADDED | FLAG_PRIORITY | FLAG_END_HEADERS | FLAG_END_STREAM,
                    3,
                    &padded(&block, true),
                )],
                flags: FLAG_PRIORITY | FLAG_END_HEADERS | FLAG_END_STREAM,
                priority: Some(priority.to_vec()),
            },
            Case {
                name: "padded with priority + CONTINUATION",
                frames: vec![
                    frame(
                        TYPE_HEADERS,
                        FLAG_PADDED | FLAG_PRIORITY,
                        3,
                        &padded(&block[..5], true),
                    ),
                    frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &block[5..]),
                ],
                flags: FLAG_PRIORITY | FLAG_END_HEADERS,
                priority: Some(priority.to_vec()),
            },
        ];
        for case in cases {
            let mut input = connection_start();
            input.extend(case.frames.concat());
            for &chunk in CHUNKS {
                let out = rewrite(&input, chunk).unwrap();
                let (blocks, _) = header_blocks(&frames(&out));
                assert_eq!(
                    blocks,
                    [Headers {
                        stream: 3,
                        flags: case.flags,
                        priority: case.priority.clone(),
                        fields: expected(&headers, "localhost"),
                    }],
                    "{}, chunk {chunk}",
                    case.name
                );
                // Exactly one HEADERS frame: the block fits one.
                assert_eq!(frames(&out).len(), 2, "{}", case.name);
            }
        }
    }

    #[test]
    fn later_requests_can_use_the_dynamic_table_of_earlier_ones() {
        let mut enc = IndexingEncoder::default();
        let first = request("tmp%2Fcapsock");
        let mut second = request("tmp%2Fcapsock");
        second[2].1 = "/runtime.v1.RuntimeService/Status".into();
        let third = request("localhost");
        let blocks: Vec<Vec<u8>> = [&first, &second, &third]
            .iter()
            .map(|h| encode(&mut enc, h))
            .collect();
        // The second block refers to entries the first one added.
        assert!(blocks[1].len() < 60, "{} bytes", blocks[1].len());
        assert!(!blocks[1].windows(13).any(|w| w == b"tmp%2Fcapsock"));
        let mut input = connection_start();
        for (i, block) in blocks.iter().enumerate() {
            let stream = 1 + 2 * i as u32;
            input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, stream, block));
            input.extend(frame(DATA, FLAG_END_STREAM, stream, b"\0\0\0\0\0"));
        }
        for &chunk in CHUNKS {
            let out = rewrite(&input, chunk).unwrap();
            let frames = frames(&out);
            let (got, others) = header_blocks(&frames);
            let fields: Vec<_> = got.into_iter().map(|h| h.fields).collect();
            assert_eq!(
                fields,
                [
                    expected(&first, "localhost"),
                    expected(&second, "localhost"),
                    expected(&third, "localhost"),
                ],
                "chunk {chunk}"
            );
            assert_eq!(others.len(), 4);
        }
    }

    #[test]
    fn huffman_coded_blocks_with_indexing_decode() {
        // RFC 7541 C.4.1-C.4.3: three requests with Huffman-coded strings,
        // the later ones referring to the dynamic table.
        let blocks: [&[u8]; 3] = [
            &[
                0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
                0x90, 0xf4, 0xff,
            ],
            &[
                0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf,
            ],
            &[
                0x82, 0x87, 0x85, 0xbf, 0x40, 0x88, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f,
                0x89, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf,
            ],
        ];
        let mut input = connection_start();
        for (i, block) in blocks.iter().enumerate() {
            input.extend(frame(
                TYPE_HEADERS,
                FLAG_END_HEADERS | FLAG_END_STREAM,
                1 + 2 * i as u32,
                block,
            ));
        }
        let s = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        for &chunk in CHUNKS {
            let out = rewrite(&input, chunk).unwrap();
            let (got, _) = header_blocks(&frames(&out));
            let fields: Vec<_> = got.into_iter().map(|h| h.fields).collect();
            assert_eq!(
                fields,
                [
                    s(&[
                        (":method", "GET"),
                        (":scheme", "http"),
                        (":path", "/"),
                        (":authority", "www.example.com"),
                    ]),
                    s(&[
                        (":method", "GET"),
                        (":scheme", "http"),
                        (":path", "/"),
                        (":authority", "www.example.com"),
                        ("cache-control", "no-cache"),
                    ]),
                    s(&[
                        (":method", "GET"),
                        (":scheme", "https"),
                        (":path", "/index.html"),
                        (":authority", "www.example.com"),
                        ("custom-key", "custom-value"),
                    ]),
                ]
            );
        }
    }

    #[test]
    fn large_blocks_are_split_into_continuations() {
        let mut headers = request("tmp%2Fcapsock");
        headers.push(("x-big", "b".repeat(40_000)));
        let block = encode(&mut IndexingEncoder::default(), &headers);
        let mut input = connection_start();
        for piece_len in [16384, 10_000] {
            let mut pieces = block.chunks(piece_len).peekable();
            let mut first = true;
            while let Some(piece) = pieces.next() {
                let end = if pieces.peek().is_none() {
                    FLAG_END_HEADERS
                } else {
                    0
                };
                let kind = if first {
                    TYPE_HEADERS
                } else {
                    TYPE_CONTINUATION
                };
                input.extend(frame(
                    kind,
                    end | if first { FLAG_PRIORITY } else { 0 },
                    5,
                    &if first {
                        [&[0, 0, 0, 0, 200][..], piece].concat()
                    } else {
                        piece.to_vec()
                    },
                ));
                first = false;
            }
        }
        let out = rewrite(&input, usize::MAX).unwrap();
        let frames = frames(&out);
        // HEADERS, CONTINUATION, CONTINUATION (at most 16384 bytes each) twice.
        let kinds: Vec<u8> = frames[1..].iter().map(|f| f.kind).collect();
        assert_eq!(kinds, [1, 9, 9, 1, 9, 9]);
        assert_eq!(frames[1].payload.len(), MAX_FRAME_PAYLOAD);
        assert_eq!(frames[2].payload.len(), MAX_FRAME_PAYLOAD);
        let (got, _) = header_blocks(&frames);
        assert_eq!(got.len(), 2);
        for h in got {
            assert_eq!(h.priority.as_deref(), Some(&[0, 0, 0, 0, 200][..]));
            assert_eq!(h.fields, expected(&headers, "localhost"));
        }
    }

    #[test]
    fn other_frames_pass_through_byte_identical() {
        let mut input = connection_start();
        input.extend(frame(SETTINGS, 0x1, 0, &[]));
        input.extend(frame(0x8, 0, 0, &[0, 1, 0, 0])); // WINDOW_UPDATE
        input.extend(frame(0x6, 0, 0, b"pingpong")); // PING
        let big: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        input.extend(frame(DATA, 0, 1, &big)); // longer than any frame h2 allows: not our business
        input.extend(frame(
            DATA,
            FLAG_END_STREAM | FLAG_PADDED,
            1,
            &[3, 1, 2, 0, 0, 0],
        ));
        input.extend(frame(0xfa, 0xff, 7, b"unknown extension frame"));
        input.extend(frame(0x3, 0, 1, &[0, 0, 0, 8])); // RST_STREAM
        input.extend(frame(0x7, 0, 0, &[0; 8])); // GOAWAY
        for &chunk in CHUNKS {
            assert_eq!(rewrite(&input, chunk).unwrap(), input, "chunk {chunk}");
        }

        // A DATA payload is streamed, not held until the frame is complete.
        let mut rewriter = Rewriter::default();
        let mut out = Vec::new();
        let mut partial = connection_start();
        partial.extend(&frame(DATA, 0, 1, &big)[..FRAME_HEADER_LEN + 100]);
        rewriter.feed(&partial, &mut out).unwrap();
        assert_eq!(out, partial);
        assert_eq!(rewriter.passthrough_len(), big.len() - 100);

        // So is anything that is not HTTP/2 with prior knowledge.
        let http1 = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(rewrite(http1, 1).unwrap(), http1);
        assert_eq!(
            rewrite(b"PRI * HTTP/1.1\r\n", 3).unwrap(),
            b"PRI * HTTP/1.1\r\n"
        );
    }

    #[test]
    fn bad_input_stops_the_rewriting() {
        let block = encode(&mut IndexingEncoder::default(), &request("x"));
        // A 4000-byte entry in the dynamic table and a block of 300 indexes
        // to it: 1.2 MB of headers from a 300-byte block.
        let mut enc = IndexingEncoder::default();
        let big_entry = enc.encode(&[("x-big", &"b".repeat(4000))]);
        let bomb = vec![0x80 | 62; 300];
        let mut oversized = vec![frame(TYPE_HEADERS, 0, 1, &[0x40; 16384])];
        for _ in 0..64 {
            oversized.push(frame(TYPE_CONTINUATION, 0, 1, &[0x40; 16384]));
        }
        let mut size_update = Vec::new();
        encode_int(&mut size_update, 0x20, 5, HEADER_TABLE_SIZE + 1);
        size_update.extend(&block);
        let good = frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block);
        // (name, error, frames accepted first, the bad frames)
        type Frames = Vec<Vec<u8>>;
        let cases: Vec<(&str, &str, Frames, Frames)> = vec![
            (
                "block over 1 MiB",
                "header block of stream 1 over",
                vec![],
                oversized,
            ),
            (
                "single HEADERS frame over 1 MiB",
                "header block of stream 3 over",
                vec![good.clone()],
                vec![frame(
                    TYPE_HEADERS,
                    FLAG_END_HEADERS,
                    3,
                    &vec![0; MAX_HEADER_BLOCK + 1],
                )],
            ),
            (
                "header list over 1 MiB",
                "header list of stream 3 over",
                vec![frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &big_entry)],
                vec![frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &bomb)],
            ),
            (
                "index out of the table",
                "Header index out of bounds",
                vec![],
                vec![frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0x80 | 70])],
            ),
            (
                "truncated string",
                "Not enough octets",
                vec![],
                vec![frame(
                    TYPE_HEADERS,
                    FLAG_END_HEADERS,
                    1,
                    &block[..block.len() - 3],
                )],
            ),
            (
                "table size update over SETTINGS_HEADER_TABLE_SIZE",
                "Dynamic table size exceeds",
                vec![],
                vec![frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &size_update)],
            ),
            (
                "CONTINUATION without HEADERS",
                "CONTINUATION frame without a HEADERS frame",
                vec![good.clone()],
                vec![frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &block)],
            ),
            (
                "DATA inside a header block",
                "frame of type 0x0 on stream 1 inside",
                vec![],
                vec![
                    frame(TYPE_HEADERS, 0, 1, &block[..4]),
                    frame(DATA, 0, 1, b"x"),
                ],
            ),
            (
                "CONTINUATION of another stream",
                "frame of type 0x9 on stream 3 inside",
                vec![],
                vec![
                    frame(TYPE_HEADERS, 0, 1, &block[..4]),
                    frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &block[4..]),
                ],
            ),
            (
                "padding longer than the payload",
                "padding longer",
                vec![],
                vec![frame(
                    TYPE_HEADERS,
                    FLAG_PADDED | FLAG_END_HEADERS,
                    1,
                    &[200, 0x82],
                )],
            ),
            (
                "padded without a pad length",
                "without a pad length",
                vec![],
                vec![frame(TYPE_HEADERS, FLAG_PADDED | FLAG_END_HEADERS, 1, &[])],
            ),
            (
                "priority fields missing",
                "too short for its priority",
                vec![],
                vec![frame(
                    TYPE_HEADERS,
                    FLAG_PRIORITY | FLAG_END_HEADERS,
                    1,
                    &[0, 0],
                )],
            ),
            (
                "HEADERS on stream 0",
                "stream 0",
                vec![],
                vec![frame(TYPE_HEADERS, FLAG_END_HEADERS, 0, &block)],
            ),
            (
                "PUSH_PROMISE from the client",
                "PUSH_PROMISE",
                vec![],
                vec![frame(
                    TYPE_PUSH_PROMISE,
                    FLAG_END_HEADERS,
                    1,
                    &[0, 0, 0, 2, 0x82],
                )],
            ),
        ];
        for (name, reason, accepted, bad) in cases {
            let mut input = connection_start();
            input.extend(accepted.concat());
            let want = rewrite(&input, usize::MAX).unwrap();
            input.extend(bad.concat());
            for chunk in [usize::MAX, 1000, 1] {
                let mut rewriter = Rewriter::default();
                let mut out = Vec::new();
                let mut err = None;
                for piece in input.chunks(chunk) {
                    if let Err(e) = rewriter.feed(piece, &mut out) {
                        err = Some(e);
                        break;
                    }
                }
                let err = err.unwrap_or_else(|| panic!("{name}: no error"));
                assert_eq!(rewriter.error(), Some(&err), "{name}");
                assert_eq!(rewriter.feed(b"more", &mut out), Err(err.clone()), "{name}");
                // What came before got through, nothing of the bad frames.
                assert_eq!(out, want, "{name}, chunk {chunk}: {err}");
                assert!(err.to_string().contains(reason), "{name}: {err}");
            }
        }
    }

    /// Hands out one byte per read, and is not ready every other time.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        pending: bool,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.pending = !self.pending;
            if self.pending {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if self.pos < self.data.len() {
                let pos = self.pos;
                buf.put_slice(&self.data[pos..pos + 1]);
                self.pos += 1;
            }
            Poll::Ready(Ok(()))
        }
    }

    async fn read_through(data: Vec<u8>) -> (Vec<u8>, io::Result<usize>) {
        let mut conn = AuthorityRewrite::new(Trickle {
            data,
            pos: 0,
            pending: false,
        });
        let mut out = Vec::new();
        let result = conn.read_to_end(&mut out).await;
        (out, result)
    }

    #[tokio::test]
    async fn the_connection_wrapper_rewrites_bytes_arriving_one_at_a_time() {
        let mut enc = IndexingEncoder::default();
        let headers = request("tmp%2Fcapsock");
        let mut input = connection_start();
        let big: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
        for stream in [1, 3] {
            input.extend(frame(
                TYPE_HEADERS,
                FLAG_END_HEADERS,
                stream,
                &encode(&mut enc, &headers),
            ));
            input.extend(frame(DATA, FLAG_END_STREAM, stream, &big));
        }
        let (out, result) = read_through(input.clone()).await;
        assert_eq!(result.unwrap(), out.len());
        assert_eq!(out, rewrite(&input, usize::MAX).unwrap());
        let frames = frames(&out);
        let (blocks, others) = header_blocks(&frames);
        assert_eq!(blocks.len(), 2);
        for b in blocks {
            assert_eq!(b.fields, expected(&headers, "localhost"));
        }
        assert!(others.iter().skip(1).all(|f| f.payload == big));

        // Errors reach the reader after the bytes before them.
        let mut bad = connection_start();
        bad.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, b"x"));
        let mut conn = AuthorityRewrite::new(Trickle {
            data: bad,
            pos: 0,
            pending: false,
        });
        let mut out = Vec::new();
        let err = conn.read_to_end(&mut out).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("CONTINUATION"), "{err}");
        assert_eq!(out, connection_start());
        let mut again = [0u8; 4];
        assert!(conn.read(&mut again).await.is_err());
    }

    #[tokio::test]
    async fn unix_streams_keep_their_connect_info_and_write_side() {
        use tokio::io::AsyncWriteExt;
        let (server, mut client) = tokio::net::UnixStream::pair().unwrap();
        let mut server = AuthorityRewrite::new(server);
        let info = server.connect_info();
        let cred = info.peer_cred.expect("peer credentials");
        assert_eq!(cred.pid(), Some(std::process::id() as i32));
        server.write_all(b"server bytes").await.unwrap();
        let mut got = [0u8; 12];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"server bytes");
        let mut input = connection_start();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &encode(&mut IndexingEncoder::default(), &request("")),
        ));
        client.write_all(&input).await.unwrap();
        drop(client);
        let mut out = Vec::new();
        server.read_to_end(&mut out).await.unwrap();
        let (blocks, _) = header_blocks(&frames(&out));
        assert_eq!(blocks[0].fields, expected(&request(""), "localhost"));
    }
}
