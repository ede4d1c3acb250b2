//! The kubelet CRI container log format.
//!
//! Every record is one line `<timestamp> <stdout|stderr> <P|F> <content>\n`,
//! the timestamp in UTC with nanoseconds in fixed width
//! (`2024-01-02T03:04:05.123456789Z`). The rules match containerd's CRI
//! logger (`redirectLogs`):
//!
//! * a line ending in `\n` or `\r\n` is written without the terminator as an
//!   `F` (full) record; a lone `\r` is content;
//! * a line longer than [`MAX_RECORD`] bytes is cut into `P` (partial)
//!   records of exactly [`MAX_RECORD`] bytes, the rest ending in `F`; a line
//!   of exactly [`MAX_RECORD`] bytes is a single `F`;
//! * a fragment without newline is kept per stream until its line ends, the
//!   limit is exceeded, or the stream closes: at close it is written as a `P`
//!   record (containerd treats a last line without newline as partial).
//!
//! This module is std only and keeps at most [`MAX_RECORD`] bytes buffered
//! per stream, so it fits inside the small per-pod shim.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest content of one record (containerd's default
/// `max_container_log_line_size`).
pub const MAX_RECORD: usize = 16 * 1024;

/// Length of a formatted timestamp (`2024-01-02T03:04:05.123456789Z`).
pub const TIMESTAMP_LEN: usize = 30;

/// Flush the assembled records to the file once this many bytes are pending.
const FLUSH_THRESHOLD: usize = 32 * 1024;

/// A container output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Stream {
    /// The name used in log records.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// Whether a record ends its line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// `P`: the line continues in the next record of the same stream.
    Partial,
    /// `F`: the record ends the line.
    Full,
}

impl Tag {
    /// The tag letter used in log records.
    pub fn as_str(self) -> &'static str {
        match self {
            Tag::Partial => "P",
            Tag::Full => "F",
        }
    }
}

/// Line state of one stream.
#[derive(Debug, Default)]
struct StreamState {
    /// Content of the unfinished line, at most [`MAX_RECORD`] bytes.
    buf: Vec<u8>,
    /// A `\r` was the last byte seen; it is content unless `\n` follows.
    cr_pending: bool,
}

impl StreamState {
    /// Appends line content, emitting a `P` record each time the buffer is
    /// full and more content arrives.
    fn push(&mut self, mut data: &[u8], emit: &mut dyn FnMut(Tag, &[u8])) {
        while !data.is_empty() {
            if self.buf.len() >= MAX_RECORD {
                emit(Tag::Partial, &self.buf);
                self.buf.clear();
            }
            let n = (MAX_RECORD - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
    }

    fn commit_cr(&mut self, emit: &mut dyn FnMut(Tag, &[u8])) {
        if self.cr_pending {
            self.cr_pending = false;
            self.push(b"\r", emit);
        }
    }

    fn feed(&mut self, mut input: &[u8], emit: &mut dyn FnMut(Tag, &[u8])) {
        while !input.is_empty() {
            match input.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let mut seg = &input[..i];
                    if seg.is_empty() {
                        // "\r" + "\n" across writes: the CR is a terminator.
                        self.cr_pending = false;
                    } else {
                        self.commit_cr(emit);
                        if let Some(stripped) = seg.strip_suffix(b"\r") {
                            seg = stripped;
                        }
                        self.push(seg, emit);
                    }
                    emit(Tag::Full, &self.buf);
                    self.buf.clear();
                    input = &input[i + 1..];
                }
                None => {
                    self.commit_cr(emit);
                    match input.strip_suffix(b"\r") {
                        Some(stripped) => {
                            self.push(stripped, emit);
                            self.cr_pending = true;
                        }
                        None => self.push(input, emit),
                    }
                    input = &[];
                }
            }
        }
    }

    fn finish(&mut self, emit: &mut dyn FnMut(Tag, &[u8])) {
        self.commit_cr(emit);
        if !self.buf.is_empty() {
            emit(Tag::Partial, &self.buf);
            self.buf.clear();
        }
        // Give the memory of a long line back to the allocator.
        self.buf = Vec::new();
    }

    fn pending(&self) -> usize {
        self.buf.len() + usize::from(self.cr_pending)
    }
}

/// The pure core of the log writer: cuts the byte streams of stdout and
/// stderr into CRI records, buffering unfinished lines per stream.
#[derive(Debug, Default)]
pub struct LineSplitter {
    streams: [StreamState; 2],
}

impl LineSplitter {
    /// A splitter with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds output of `stream`; `emit` receives every finished record in
    /// order.
    pub fn feed(&mut self, stream: Stream, bytes: &[u8], emit: &mut dyn FnMut(Tag, &[u8])) {
        self.streams[stream.index()].feed(bytes, emit);
    }

    /// Ends `stream`: a buffered fragment is emitted as a `P` record.
    pub fn finish(&mut self, stream: Stream, emit: &mut dyn FnMut(Tag, &[u8])) {
        self.streams[stream.index()].finish(emit);
    }

    /// Bytes of `stream` buffered in an unfinished line.
    pub fn pending(&self, stream: Stream) -> usize {
        self.streams[stream.index()].pending()
    }
}

/// Writes container output to a CRI log file.
#[derive(Debug)]
pub struct CriLogWriter {
    path: PathBuf,
    file: Option<File>,
    splitter: LineSplitter,
    out: Vec<u8>,
}

fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
}

impl CriLogWriter {
    /// Opens (creating, mode 0640, or appending to) the log file at `path`.
    /// The parent directory must exist.
    pub fn open(path: &Path) -> io::Result<CriLogWriter> {
        let file = open_log(path)?;
        Ok(CriLogWriter {
            path: path.to_path_buf(),
            file: Some(file),
            splitter: LineSplitter::new(),
            out: Vec::new(),
        })
    }

    /// The log file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes output of `stream`. Complete lines become records at once; an
    /// unfinished line stays buffered (see the module documentation).
    pub fn write(&mut self, stream: Stream, bytes: &[u8]) -> io::Result<()> {
        let Self {
            file,
            splitter,
            out,
            ..
        } = self;
        let file = file.as_mut().ok_or_else(closed)?;
        let mut result = Ok(());
        splitter.feed(stream, bytes, &mut |tag, content| {
            append_record(out, SystemTime::now(), stream, tag, content);
            if out.len() >= FLUSH_THRESHOLD && result.is_ok() {
                result = file.write_all(out);
                out.clear();
            }
        });
        let tail = if out.is_empty() {
            Ok(())
        } else {
            file.write_all(out)
        };
        out.clear();
        if out.capacity() > FLUSH_THRESHOLD * 2 {
            *out = Vec::new();
        }
        result.and(tail)
    }

    /// Closes the file and opens the same path again (after kubelet rotated
    /// the log). Buffered fragments are kept and go to the new file.
    pub fn reopen(&mut self) -> io::Result<()> {
        self.file = None;
        self.file = Some(open_log(&self.path)?);
        Ok(())
    }

    /// Writes buffered fragments of both streams as `P` records and closes
    /// the file. Later writes fail until [`CriLogWriter::reopen`].
    pub fn close(&mut self) -> io::Result<()> {
        let Some(mut file) = self.file.take() else {
            return Ok(());
        };
        let out = &mut self.out;
        for stream in [Stream::Stdout, Stream::Stderr] {
            self.splitter.finish(stream, &mut |tag, content| {
                append_record(out, SystemTime::now(), stream, tag, content);
            });
        }
        let result = file.write_all(out);
        self.out = Vec::new();
        result
    }
}

impl Drop for CriLogWriter {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "CRI log writer is closed")
}

/// Appends one record (with its newline) to `out`.
pub fn append_record(
    out: &mut Vec<u8>,
    time: SystemTime,
    stream: Stream,
    tag: Tag,
    content: &[u8],
) {
    append_timestamp(out, time);
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(tag.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// Appends `time` as `YYYY-MM-DDTHH:MM:SS.NNNNNNNNNZ` (UTC).
pub fn append_timestamp(out: &mut Vec<u8>, time: SystemTime) {
    let (secs, nanos) = match time.duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(e) => {
            // Before the epoch: floor to whole seconds.
            let d = e.duration();
            let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
            if d.subsec_nanos() == 0 {
                (-secs, 0)
            } else {
                (-secs - 1, 1_000_000_000 - d.subsec_nanos())
            }
        }
    };
    append_unix_timestamp(out, secs, nanos);
}

/// Appends the UTC timestamp of `secs` seconds plus `nanos` nanoseconds since
/// the Unix epoch.
pub fn append_unix_timestamp(out: &mut Vec<u8>, secs: i64, nanos: u32) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let year = year.clamp(0, 9999) as u64;
    push_digits(out, year, 4);
    out.push(b'-');
    push_digits(out, u64::from(month), 2);
    out.push(b'-');
    push_digits(out, u64::from(day), 2);
    out.push(b'T');
    push_digits(out, (rem / 3600) as u64, 2);
    out.push(b':');
    push_digits(out, (rem / 60 % 60) as u64, 2);
    out.push(b':');
    push_digits(out, (rem % 60) as u64, 2);
    out.push(b'.');
    push_digits(out, u64::from(nanos.min(999_999_999)), 9);
    out.push(b'Z');
}

/// Formats a timestamp as a string (see [`append_timestamp`]).
pub fn format_timestamp(time: SystemTime) -> String {
    let mut out = Vec::with_capacity(TIMESTAMP_LEN);
    append_timestamp(&mut out, time);
    String::from_utf8_lossy(&out).into_owned()
}

fn push_digits(out: &mut Vec<u8>, mut value: u64, width: usize) {
    let start = out.len();
    for _ in 0..width {
        out.push(b'0' + (value % 10) as u8);
        value /= 10;
    }
    out[start..].reverse();
}

/// The proleptic Gregorian date (year, month 1-12, day 1-31) of a day count
/// relative to 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift the epoch to 0000-03-01 so that leap days end each 400-year era.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // day of era, 0..=146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // 0..=399
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from March 1st
    let mp = (5 * doy + 2) / 153; // month from March, 0..=11
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The day count relative to 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let m = i64::from(month);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// One parsed record of a CRI log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The timestamp as written.
    pub timestamp: String,
    /// The timestamp as nanoseconds since the Unix epoch.
    pub unix_nanos: i128,
    /// The stream.
    pub stream: Stream,
    /// `P` records are partial.
    pub partial: bool,
    /// The content, without the record's newline.
    pub content: String,
}

/// Why a log record could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A field separator is missing.
    #[error("log line has no {0} field")]
    MissingField(&'static str),
    /// The timestamp is not RFC 3339 with optional fraction.
    #[error("invalid timestamp {0:?}")]
    Timestamp(String),
    /// The stream is neither stdout nor stderr.
    #[error("invalid stream {0:?}")]
    Stream(String),
    /// The tag is neither P nor F.
    #[error("invalid tag {0:?}")]
    Tag(String),
}

/// Parses one record (a trailing newline is allowed).
pub fn parse_line(line: &str) -> Result<LogLine, ParseError> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let mut parts = line.splitn(4, ' ');
    let timestamp = parts.next().unwrap_or_default();
    let stream = parts.next().ok_or(ParseError::MissingField("stream"))?;
    let tag = parts.next().ok_or(ParseError::MissingField("tag"))?;
    let content = parts.next().ok_or(ParseError::MissingField("content"))?;
    let unix_nanos =
        parse_rfc3339(timestamp).ok_or_else(|| ParseError::Timestamp(timestamp.to_string()))?;
    let stream = match stream {
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        other => return Err(ParseError::Stream(other.to_string())),
    };
    let partial = match tag {
        "P" => true,
        "F" => false,
        other => return Err(ParseError::Tag(other.to_string())),
    };
    Ok(LogLine {
        timestamp: timestamp.to_string(),
        unix_nanos,
        stream,
        partial,
        content: content.to_string(),
    })
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)` into
/// nanoseconds since the Unix epoch.
fn parse_rfc3339(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = b.get(range)?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(
            digits
                .iter()
                .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')),
        )
    };
    let sep = |i: usize, c: u8| b.get(i) == Some(&c);
    if !(sep(4, b'-') && sep(7, b'-') && (sep(10, b'T') || sep(10, b't')) && sep(13, b':'))
        || !sep(16, b':')
    {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let month = u32::try_from(month).ok().filter(|m| (1..=12).contains(m))?;
    let day = u32::try_from(day).ok()?;
    if day < 1 || day > days_in_month(year, month) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: i64 = 0;
    if sep(i, b'.') {
        let start = i + 1;
        let mut end = start;
        while b.get(end).is_some_and(u8::is_ascii_digit) {
            end += 1;
        }
        if end == start || end - start > 9 {
            return None;
        }
        nanos = num(start..end)? * 10i64.pow((9 - (end - start)) as u32);
        i = end;
    }
    let offset = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && sep(i + 3, b':') => {
            let (h, m) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if h > 23 || m > 59 {
                return None;
            }
            let off = h * 3600 + m * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Some(i128::from(secs) * 1_000_000_000 + i128::from(nanos))
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Runs the splitter over a sequence of writes (and a final close when
    /// `close` is set) and returns the records as (stream, tag, content).
    fn split(writes: &[(Stream, &[u8])], close: bool) -> Vec<(Stream, Tag, Vec<u8>)> {
        let mut s = LineSplitter::new();
        let mut got = Vec::new();
        for (stream, bytes) in writes {
            s.feed(*stream, bytes, &mut |t, c| {
                got.push((*stream, t, c.to_vec()))
            });
        }
        if close {
            for stream in [Stream::Stdout, Stream::Stderr] {
                s.finish(stream, &mut |t, c| got.push((stream, t, c.to_vec())));
            }
        }
        got
    }

    fn rec(stream: Stream, tag: Tag, content: &[u8]) -> (Stream, Tag, Vec<u8>) {
        (stream, tag, content.to_vec())
    }

    #[test]
    fn splitter_table() {
        use Stream::{Stderr as E, Stdout as O};
        use Tag::{Full as F, Partial as P};
        let max = vec![b'a'; MAX_RECORD];
        let max_plus = vec![b'b'; MAX_RECORD + 1];
        let double = vec![b'c'; 2 * MAX_RECORD];
        let with_nl = |v: &[u8]| [v, b"\n"].concat();
        let with_crlf = |v: &[u8]| [v, b"\r\n"].concat();

        struct Case<'a> {
            name: &'a str,
            writes: Vec<(Stream, Vec<u8>)>,
            close: bool,
            want: Vec<(Stream, Tag, Vec<u8>)>,
        }
        let cases = vec![
            Case {
                name: "short line",
                writes: vec![(O, b"hello\n".to_vec())],
                close: false,
                want: vec![rec(O, F, b"hello")],
            },
            Case {
                name: "crlf is stripped",
                writes: vec![(O, b"hello\r\n".to_vec())],
                close: false,
                want: vec![rec(O, F, b"hello")],
            },
            Case {
                name: "crlf split across writes",
                writes: vec![(O, b"hello\r".to_vec()), (O, b"\nworld\n".to_vec())],
                close: false,
                want: vec![rec(O, F, b"hello"), rec(O, F, b"world")],
            },
            Case {
                name: "lone cr is content",
                writes: vec![
                    (O, b"a\rb\n".to_vec()),
                    (O, b"c\r".to_vec()),
                    (O, b"d\n".to_vec()),
                ],
                close: false,
                want: vec![rec(O, F, b"a\rb"), rec(O, F, b"c\rd")],
            },
            Case {
                name: "only one cr is dropped",
                writes: vec![(O, b"x\r\r\n".to_vec())],
                close: false,
                want: vec![rec(O, F, b"x\r")],
            },
            Case {
                name: "empty lines",
                writes: vec![(O, b"\n\n".to_vec()), (O, b"\r\n".to_vec())],
                close: false,
                want: vec![rec(O, F, b""), rec(O, F, b""), rec(O, F, b"")],
            },
            Case {
                name: "several lines in one buffer",
                writes: vec![(O, b"one\ntwo\nthree\n".to_vec())],
                close: false,
                want: vec![rec(O, F, b"one"), rec(O, F, b"two"), rec(O, F, b"three")],
            },
            Case {
                name: "line split across writes",
                writes: vec![
                    (O, b"hel".to_vec()),
                    (O, b"lo wo".to_vec()),
                    (O, b"rld\nnext".to_vec()),
                ],
                close: false,
                want: vec![rec(O, F, b"hello world")],
            },
            Case {
                name: "fragment at close is partial",
                writes: vec![(O, b"done\nno newline".to_vec())],
                close: true,
                want: vec![rec(O, F, b"done"), rec(O, P, b"no newline")],
            },
            Case {
                name: "trailing cr at close is content",
                writes: vec![(O, b"abc\r".to_vec())],
                close: true,
                want: vec![rec(O, P, b"abc\r")],
            },
            Case {
                name: "nothing pending at close",
                writes: vec![(O, b"x\n".to_vec())],
                close: true,
                want: vec![rec(O, F, b"x")],
            },
            Case {
                name: "exactly 16 KiB is one full record",
                writes: vec![(O, with_nl(&max))],
                close: false,
                want: vec![rec(O, F, &max)],
            },
            Case {
                name: "exactly 16 KiB with crlf",
                writes: vec![(O, with_crlf(&max))],
                close: false,
                want: vec![rec(O, F, &max)],
            },
            Case {
                name: "16 KiB + 1 is split",
                writes: vec![(O, with_nl(&max_plus))],
                close: false,
                want: vec![rec(O, P, &max_plus[..MAX_RECORD]), rec(O, F, b"b")],
            },
            Case {
                name: "32 KiB is partial plus full",
                writes: vec![(O, with_nl(&double))],
                close: false,
                want: vec![
                    rec(O, P, &double[..MAX_RECORD]),
                    rec(O, F, &double[MAX_RECORD..]),
                ],
            },
            Case {
                name: "16 KiB fragment waits for more",
                writes: vec![(O, max.clone())],
                close: false,
                want: vec![],
            },
            Case {
                name: "16 KiB fragment then newline",
                writes: vec![(O, max.clone()), (O, b"\n".to_vec())],
                close: false,
                want: vec![rec(O, F, &max)],
            },
            Case {
                name: "16 KiB fragment then more content",
                writes: vec![(O, max.clone()), (O, b"z".to_vec())],
                close: false,
                want: vec![rec(O, P, &max)],
            },
            Case {
                name: "long fragment at close",
                writes: vec![(O, max_plus.clone())],
                close: true,
                want: vec![rec(O, P, &max_plus[..MAX_RECORD]), rec(O, P, b"b")],
            },
            Case {
                name: "long line byte by byte",
                writes: with_nl(&max_plus).iter().map(|b| (O, vec![*b])).collect(),
                close: false,
                want: vec![rec(O, P, &max_plus[..MAX_RECORD]), rec(O, F, b"b")],
            },
            Case {
                name: "streams are buffered separately",
                writes: vec![
                    (O, b"out-".to_vec()),
                    (E, b"err-".to_vec()),
                    (E, b"line\n".to_vec()),
                    (O, b"line\n".to_vec()),
                    (E, b"tail".to_vec()),
                ],
                close: true,
                want: vec![
                    rec(E, F, b"err-line"),
                    rec(O, F, b"out-line"),
                    rec(E, P, b"tail"),
                ],
            },
            Case {
                name: "interleaved cr per stream",
                writes: vec![
                    (O, b"a\r".to_vec()),
                    (E, b"\n".to_vec()),
                    (O, b"\n".to_vec()),
                ],
                close: false,
                want: vec![rec(E, F, b""), rec(O, F, b"a")],
            },
        ];
        for c in cases {
            let writes: Vec<(Stream, &[u8])> =
                c.writes.iter().map(|(s, b)| (*s, b.as_slice())).collect();
            let got = split(&writes, c.close);
            let summary = |v: &[(Stream, Tag, Vec<u8>)]| -> Vec<(Stream, Tag, usize)> {
                v.iter().map(|(s, t, c)| (*s, *t, c.len())).collect()
            };
            assert_eq!(summary(&got), summary(&c.want), "{}", c.name);
            assert_eq!(got, c.want, "{}", c.name);
        }
    }

    #[test]
    fn pending_counts_buffered_bytes() {
        let mut s = LineSplitter::new();
        s.feed(Stream::Stdout, b"abc\r", &mut |_, _| {});
        assert_eq!(s.pending(Stream::Stdout), 4);
        assert_eq!(s.pending(Stream::Stderr), 0);
        s.feed(Stream::Stdout, b"\n", &mut |_, _| {});
        assert_eq!(s.pending(Stream::Stdout), 0);
    }

    #[test]
    fn timestamp_table() {
        let cases: &[(i64, u32, &str)] = &[
            (0, 0, "1970-01-01T00:00:00.000000000Z"),
            (0, 1, "1970-01-01T00:00:00.000000001Z"),
            (-1, 999_999_999, "1969-12-31T23:59:59.999999999Z"),
            (951_782_400, 0, "2000-02-29T00:00:00.000000000Z"),
            (951_868_799, 5, "2000-02-29T23:59:59.000000005Z"),
            (951_868_800, 0, "2000-03-01T00:00:00.000000000Z"),
            (1_078_012_800, 0, "2004-02-29T00:00:00.000000000Z"),
            (4_107_456_000, 0, "2100-02-28T00:00:00.000000000Z"),
            (4_107_542_400, 0, "2100-03-01T00:00:00.000000000Z"),
            (1_704_067_199, 999_999_999, "2023-12-31T23:59:59.999999999Z"),
            (1_704_067_200, 0, "2024-01-01T00:00:00.000000000Z"),
            (1_704_164_645, 123_456_789, "2024-01-02T03:04:05.123456789Z"),
            (1_709_164_800, 0, "2024-02-29T00:00:00.000000000Z"),
            (1_735_689_599, 0, "2024-12-31T23:59:59.000000000Z"),
            (253_402_300_799, 0, "9999-12-31T23:59:59.000000000Z"),
        ];
        for &(secs, nanos, want) in cases {
            let mut out = Vec::new();
            append_unix_timestamp(&mut out, secs, nanos);
            assert_eq!(String::from_utf8(out).unwrap(), want, "{secs}.{nanos}");
            assert_eq!(want.len(), TIMESTAMP_LEN);
            let parsed = parse_rfc3339(want).unwrap();
            assert_eq!(
                parsed,
                i128::from(secs) * 1_000_000_000 + i128::from(nanos),
                "{want}"
            );
        }
        let t = UNIX_EPOCH + Duration::new(1_704_164_645, 123_456_789);
        assert_eq!(format_timestamp(t), "2024-01-02T03:04:05.123456789Z");
        let before = UNIX_EPOCH - Duration::new(0, 1);
        assert_eq!(format_timestamp(before), "1969-12-31T23:59:59.999999999Z");
    }

    #[test]
    fn civil_round_trip() {
        for days in (-800_000..800_000).step_by(37) {
            let (y, m, d) = civil_from_days(days);
            assert!((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m));
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn parse_line_table() {
        let ok: &[(&str, Stream, bool, &str)] = &[
            (
                "2024-01-02T03:04:05.123456789Z stdout F hello world\n",
                Stream::Stdout,
                false,
                "hello world",
            ),
            (
                "2024-01-02T03:04:05.1Z stderr P  x ",
                Stream::Stderr,
                true,
                " x ",
            ),
            ("2024-01-02T03:04:05Z stdout F ", Stream::Stdout, false, ""),
            (
                "2024-01-02T04:04:05+01:00 stdout F a",
                Stream::Stdout,
                false,
                "a",
            ),
        ];
        for &(line, stream, partial, content) in ok {
            let got = parse_line(line).unwrap();
            assert_eq!(got.stream, stream, "{line}");
            assert_eq!(got.partial, partial, "{line}");
            assert_eq!(got.content, content, "{line}");
        }
        let a = parse_line("2024-01-02T03:04:05Z stdout F a").unwrap();
        let b = parse_line("2024-01-02T04:04:05+01:00 stdout F a").unwrap();
        let c = parse_line("2024-01-02T02:04:05-01:00 stdout F a").unwrap();
        assert_eq!(a.unix_nanos, 1_704_164_645_000_000_000);
        assert_eq!(a.unix_nanos, b.unix_nanos);
        assert_eq!(a.unix_nanos, c.unix_nanos);

        let bad: &[(&str, ParseError)] = &[
            ("", ParseError::MissingField("stream")),
            ("2024-01-02T03:04:05Z", ParseError::MissingField("stream")),
            (
                "2024-01-02T03:04:05Z stdout",
                ParseError::MissingField("tag"),
            ),
            (
                "2024-01-02T03:04:05Z stdout F",
                ParseError::MissingField("content"),
            ),
            (
                "2024-01-02T03:04:05Z stdin F x",
                ParseError::Stream("stdin".into()),
            ),
            (
                "2024-01-02T03:04:05Z stdout X x",
                ParseError::Tag("X".into()),
            ),
            (
                "yesterday stdout F x",
                ParseError::Timestamp("yesterday".into()),
            ),
            (
                "2023-02-29T03:04:05Z stdout F x",
                ParseError::Timestamp("2023-02-29T03:04:05Z".into()),
            ),
            (
                "2024-13-02T03:04:05Z stdout F x",
                ParseError::Timestamp("2024-13-02T03:04:05Z".into()),
            ),
            (
                "2024-01-02T03:04:05.Z stdout F x",
                ParseError::Timestamp("2024-01-02T03:04:05.Z".into()),
            ),
            (
                "2024-01-02T03:04:05.1234567890Z stdout F x",
                ParseError::Timestamp("2024-01-02T03:04:05.1234567890Z".into()),
            ),
            (
                "2024-01-02T03:04:05 stdout F x",
                ParseError::Timestamp("2024-01-02T03:04:05".into()),
            ),
        ];
        for (line, want) in bad {
            assert_eq!(parse_line(line).unwrap_err(), *want, "{line:?}");
        }
    }

    fn read_records(path: &Path) -> Vec<LogLine> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| parse_line(l).unwrap())
            .collect()
    }

    fn contents(lines: &[LogLine]) -> Vec<(Stream, bool, &str)> {
        lines
            .iter()
            .map(|l| (l.stream, l.partial, l.content.as_str()))
            .collect()
    }

    #[test]
    fn writer_writes_records_and_flushes_at_close() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        let mut w = CriLogWriter::open(&path).unwrap();
        assert_eq!(w.path(), path);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o640, 0, "mode {mode:o}");
        w.write(Stream::Stdout, b"hello\nwor").unwrap();
        w.write(Stream::Stderr, b"oops\r\n").unwrap();
        w.write(Stream::Stdout, b"ld\nbye").unwrap();
        // Only complete lines are on disk so far.
        assert_eq!(read_records(&path).len(), 3);
        w.close().unwrap();
        w.close().unwrap();
        assert_eq!(
            w.write(Stream::Stdout, b"x\n").unwrap_err().kind(),
            io::ErrorKind::NotConnected
        );
        let end = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i128;
        let got = read_records(&path);
        assert_eq!(
            contents(&got),
            vec![
                (Stream::Stdout, false, "hello"),
                (Stream::Stderr, false, "oops"),
                (Stream::Stdout, false, "world"),
                (Stream::Stdout, true, "bye"),
            ]
        );
        for l in &got {
            assert_eq!(l.timestamp.len(), TIMESTAMP_LEN);
            assert!(l.unix_nanos >= start && l.unix_nanos <= end, "{l:?}");
        }
        // Reopening appends.
        let mut w = CriLogWriter::open(&path).unwrap();
        w.write(Stream::Stdout, b"again\n").unwrap();
        drop(w);
        assert_eq!(read_records(&path).len(), 5);
    }

    #[test]
    fn writer_splits_long_lines_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long.log");
        let mut w = CriLogWriter::open(&path).unwrap();
        let mut big = vec![b'x'; 3 * MAX_RECORD + 10];
        big.push(b'\n');
        // Many lines in one write exceed the flush threshold.
        let many: Vec<u8> = (0..5000)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        w.write(Stream::Stdout, &big).unwrap();
        w.write(Stream::Stderr, &many).unwrap();
        w.close().unwrap();
        let got = read_records(&path);
        assert_eq!(got.len(), 4 + 5000);
        let sizes: Vec<(bool, usize)> = got[..4]
            .iter()
            .map(|l| (l.partial, l.content.len()))
            .collect();
        assert_eq!(
            sizes,
            vec![
                (true, MAX_RECORD),
                (true, MAX_RECORD),
                (true, MAX_RECORD),
                (false, 10)
            ]
        );
        for (i, l) in got[4..].iter().enumerate() {
            assert_eq!(l.content, format!("line {i}"));
            assert_eq!(l.stream, Stream::Stderr);
        }
    }

    #[test]
    fn reopen_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let rotated = dir.path().join("0.log.20240102-030405");
        let mut w = CriLogWriter::open(&path).unwrap();
        w.write(Stream::Stdout, b"before\nhalf ").unwrap();
        std::fs::rename(&path, &rotated).unwrap();
        // Until reopened the writer still writes to the renamed file.
        w.write(Stream::Stderr, b"still old\n").unwrap();
        w.reopen().unwrap();
        assert!(path.exists());
        w.write(Stream::Stdout, b"line\n").unwrap();
        w.write(Stream::Stdout, b"after\n").unwrap();
        w.close().unwrap();
        assert_eq!(
            contents(&read_records(&rotated)),
            vec![
                (Stream::Stdout, false, "before"),
                (Stream::Stderr, false, "still old")
            ]
        );
        assert_eq!(
            contents(&read_records(&path)),
            vec![
                (Stream::Stdout, false, "half line"),
                (Stream::Stdout, false, "after")
            ]
        );
        // A closed writer can be reopened.
        w.reopen().unwrap();
        w.write(Stream::Stdout, b"reborn\n").unwrap();
        assert_eq!(read_records(&path).len(), 3);
    }

    #[test]
    fn real_process_output_through_pipes() {
        use std::io::Read;
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proc.log");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(
                "printf 'a\\r\\nb\\n'; head -c 40000 /dev/zero | tr '\\0' x; echo; printf tail >&2",
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut w = CriLogWriter::open(&path).unwrap();
        let mut buf = [0u8; 4096];
        let mut out = child.stdout.take().unwrap();
        loop {
            let n = out.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            w.write(Stream::Stdout, &buf[..n]).unwrap();
        }
        let mut err = Vec::new();
        child.stderr.take().unwrap().read_to_end(&mut err).unwrap();
        w.write(Stream::Stderr, &err).unwrap();
        assert!(child.wait().unwrap().success());
        w.close().unwrap();
        let got = read_records(&path);
        let shape: Vec<(Stream, bool, usize)> = got
            .iter()
            .map(|l| (l.stream, l.partial, l.content.len()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (Stream::Stdout, false, 1),
                (Stream::Stdout, false, 1),
                (Stream::Stdout, true, MAX_RECORD),
                (Stream::Stdout, true, MAX_RECORD),
                (Stream::Stdout, false, 40000 - 2 * MAX_RECORD),
                (Stream::Stderr, true, 4),
            ]
        );
        assert_eq!(got[0].content, "a");
        assert_eq!(got[5].content, "tail");
        assert!(got[2..5]
            .iter()
            .all(|l| l.content.bytes().all(|b| b == b'x')));
    }

    #[test]
    fn open_needs_the_parent_directory() {
        let dir = tempfile::tempdir().unwrap();
        let err = CriLogWriter::open(&dir.path().join("missing/0.log")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
