//! gRPC clients other than Go's on criusd's socket. They derive the HTTP/2
//! `:authority` from the socket path (grpcio sends `tmp%2Fcapsock` for
//! `unix:///tmp/capsock`), which h2 alone would reject with RST_STREAM
//! PROTOCOL_ERROR. Two clients call RuntimeService/Version:
//!
//! - a hand-written HTTP/2 client on a raw unix stream (always runs), whose
//!   requests carry such authorities and use HPACK's dynamic table;
//! - Python's grpcio 1.85 with default channel options, when a virtualenv
//!   with it can be made (pip and PyPI reachable); otherwise that test says
//!   why and passes, unless `CRIUS_TEST_REQUIRE_GRPCIO=1` makes it fail.

mod common;

use common::Daemon;
use crius_cri_server::grpc_authority::encode_int;
use k8s_cri::v1::{VersionRequest, VersionResponse};
use prost::Message;
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn start_daemon(dir: &Path) -> Daemon {
    for d in ["bin", "net.d", "cni-bin"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    Daemon::start(dir, &common::fake_runtime_config(dir))
}

fn check_version(v: &VersionResponse, client: &str) {
    assert_eq!(v.runtime_name, "crius", "{client}: {v:?}");
    assert_eq!(v.runtime_api_version, "v1", "{client}: {v:?}");
    assert_eq!(v.version, "0.1.0", "{client}: {v:?}");
    assert_eq!(
        v.runtime_version,
        env!("CARGO_PKG_VERSION"),
        "{client}: {v:?}"
    );
}

fn version_request() -> Vec<u8> {
    VersionRequest {
        version: "0.1.0".into(),
    }
    .encode_to_vec()
}

// ---------------------------------------------------------------------------
// A minimal HTTP/2 client.

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// An HPACK encoder that, like grpcio's, adds the fields it sends to the
/// dynamic table (literal with incremental indexing) and sends fields
/// already there as indexes.
#[derive(Default)]
struct IndexingEncoder {
    table: VecDeque<(String, String)>,
    size: usize,
}

impl IndexingEncoder {
    fn encode(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        const STATIC_NAMES: &[(&str, usize)] = &[
            (":authority", 1),
            (":method", 2),
            (":path", 4),
            (":scheme", 6),
            ("content-type", 31),
            ("user-agent", 58),
        ];
        let mut out = Vec::new();
        for &(name, value) in headers {
            if let Some(i) = self.table.iter().position(|(n, v)| n == name && v == value) {
                encode_int(&mut out, 0x80, 7, 62 + i);
                continue;
            }
            match STATIC_NAMES.iter().find(|(n, _)| *n == name) {
                Some(&(_, index)) => encode_int(&mut out, 0x40, 6, index),
                None => {
                    out.push(0x40);
                    encode_int(&mut out, 0, 7, name.len());
                    out.extend_from_slice(name.as_bytes());
                }
            }
            encode_int(&mut out, 0, 7, value.len());
            out.extend_from_slice(value.as_bytes());
            self.size += name.len() + value.len() + 32;
            self.table.push_front((name.into(), value.into()));
            while self.size > 4096 {
                let (n, v) = self.table.pop_back().unwrap();
                self.size -= n.len() + v.len() + 32;
            }
        }
        out
    }
}

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// One HTTP/2 connection to criusd, spoken by hand.
struct RawH2 {
    sock: UnixStream,
    encoder: IndexingEncoder,
    /// For the server's response header blocks (h2 indexes them too).
    decoder: loona_hpack::Decoder<'static>,
}

/// A finished call: response headers, message bytes, trailers.
struct Call {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

impl RawH2 {
    fn connect(socket: &Path) -> RawH2 {
        let sock = UnixStream::connect(socket).expect("connect to criusd");
        sock.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut conn = RawH2 {
            sock,
            encoder: IndexingEncoder::default(),
            decoder: loona_hpack::Decoder::new(),
        };
        conn.sock.write_all(PREFACE).unwrap();
        conn.send(SETTINGS, 0, 0, &[]);
        conn
    }

    fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let mut frame = Vec::with_capacity(9 + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        frame.push(kind);
        frame.push(flags);
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        self.sock.write_all(&frame).expect("write to criusd");
    }

    fn read_frame(&mut self) -> Frame {
        let mut head = [0u8; 9];
        self.sock
            .read_exact(&mut head)
            .expect("read a frame header from criusd");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0; len];
        self.sock
            .read_exact(&mut payload)
            .expect("read a frame payload from criusd");
        Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        }
    }

    /// Calls RuntimeService/Version on `stream` with this `:authority`.
    fn call_version(&mut self, stream: u32, authority: &str) -> Call {
        let block = self.encoder.encode(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/runtime.v1.RuntimeService/Version"),
            (":authority", authority),
            ("te", "trailers"),
            ("content-type", "application/grpc"),
            ("user-agent", "crius-raw-h2-test/1.0"),
        ]);
        self.send(HEADERS, END_HEADERS, stream, &block);
        let message = version_request();
        let mut data = vec![0];
        data.extend_from_slice(&(message.len() as u32).to_be_bytes());
        data.extend_from_slice(&message);
        self.send(DATA, END_STREAM, stream, &data);

        let mut header_blocks: Vec<Vec<(String, String)>> = Vec::new();
        let mut body = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "no response in time");
            let f = self.read_frame();
            match f.kind {
                SETTINGS if f.flags & ACK == 0 => self.send(SETTINGS, ACK, 0, &[]),
                PING if f.flags & ACK == 0 => self.send(PING, ACK, 0, &f.payload),
                GOAWAY => panic!(
                    "criusd sent GOAWAY: error {:#x}, {}",
                    u32::from_be_bytes(f.payload[4..8].try_into().unwrap()),
                    String::from_utf8_lossy(&f.payload[8..])
                ),
                RST_STREAM if f.stream == stream => panic!(
                    "criusd reset stream {stream} (authority {authority:?}): error {:#x}",
                    u32::from_be_bytes(f.payload[..4].try_into().unwrap())
                ),
                HEADERS if f.stream == stream => {
                    assert_eq!(f.flags & 0x28, 0, "padding or priority from h2");
                    let mut block = f.payload;
                    let mut end_headers = f.flags & END_HEADERS != 0;
                    while !end_headers {
                        let c = self.read_frame();
                        assert_eq!((c.kind, c.stream), (CONTINUATION, stream));
                        block.extend_from_slice(&c.payload);
                        end_headers = c.flags & END_HEADERS != 0;
                    }
                    let fields = self
                        .decoder
                        .decode(&block)
                        .expect("decode response headers")
                        .into_iter()
                        .map(|(n, v)| {
                            (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap())
                        })
                        .collect();
                    header_blocks.push(fields);
                    if f.flags & END_STREAM != 0 {
                        break;
                    }
                }
                DATA if f.stream == stream => {
                    body.extend_from_slice(&f.payload);
                    if f.flags & END_STREAM != 0 {
                        break;
                    }
                }
                _ => {}
            }
        }
        let mut blocks = header_blocks.into_iter();
        let headers = blocks.next().expect("response headers");
        let trailers = blocks.next().unwrap_or_default();
        Call {
            headers,
            body,
            trailers,
        }
    }
}

fn check_call(call: &Call, client: &str) {
    assert_eq!(
        field(&call.headers, ":status"),
        Some("200"),
        "{client}: {:?}",
        call.headers
    );
    assert_eq!(
        field(&call.trailers, "grpc-status"),
        Some("0"),
        "{client}: headers {:?}, trailers {:?}",
        call.headers,
        call.trailers
    );
    assert!(call.body.len() >= 5, "{client}: body {:?}", call.body);
    assert_eq!(call.body[0], 0, "{client}: compressed message");
    let len = u32::from_be_bytes(call.body[1..5].try_into().unwrap()) as usize;
    assert_eq!(call.body.len(), 5 + len, "{client}: one message");
    let v = VersionResponse::decode(&call.body[5..]).expect("decode VersionResponse");
    check_version(&v, client);
}

#[test]
fn raw_http2_client_with_socket_path_authorities_calls_version() {
    let tmp = tempfile::tempdir().unwrap();
    let daemon = start_daemon(tmp.path());
    let mut conn = RawH2::connect(&daemon.socket);

    // As grpcio sends it for unix:///tmp/capsock: a literal added to the
    // dynamic table...
    let first = conn.call_version(1, "tmp%2Fcapsock");
    check_call(&first, "first call, :authority tmp%2Fcapsock");
    // ...then the same again, now sent as indexes into that table.
    let second = conn.call_version(3, "tmp%2Fcapsock");
    check_call(&second, "second call, indexed :authority tmp%2Fcapsock");
    // Other authorities h2 rejects, and a valid one, on the same connection.
    for (stream, authority) in [
        (5, "localhost"),
        (7, "/run/crius/crius.sock"),
        (9, ""),
        (11, "localhost"),
    ] {
        let call = conn.call_version(stream, authority);
        check_call(&call, &format!(":authority {authority:?}"));
    }
    // And a fresh connection whose first request has a valid authority.
    let mut conn = RawH2::connect(&daemon.socket);
    check_call(
        &conn.call_version(1, "localhost"),
        "new connection, localhost",
    );
}

// ---------------------------------------------------------------------------
// Python's grpcio.

const GRPCIO_VERSION: &str = "1.85.0";

/// Runs `cmd` with its output in files under `dir`, killing it after
/// `timeout`. Returns (success, stdout, stderr).
fn run(mut cmd: Command, dir: &Path, timeout: Duration) -> (bool, String, String) {
    let out = dir.join("cmd.stdout");
    let err = dir.join("cmd.stderr");
    let mut child = match cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return (false, String::new(), format!("cannot run {cmd:?}: {e}")),
    };
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
    let mut stderr = std::fs::read_to_string(&err).unwrap_or_default();
    if status.is_none() {
        stderr.push_str(&format!("\n(killed after {timeout:?})"));
    }
    (status.is_some_and(|s| s.success()), stdout, stderr)
}

fn has_grpcio(python: &Path, scratch: &Path) -> bool {
    let mut cmd = Command::new(python);
    cmd.args([
        "-c",
        &format!("import grpc, sys; sys.exit(grpc.__version__ != '{GRPCIO_VERSION}')"),
    ]);
    python.exists() && run(cmd, scratch, Duration::from_secs(60)).0
}

/// A virtualenv with grpcio, kept under the cargo target dir between runs.
fn grpcio_python(scratch: &Path) -> Result<PathBuf, String> {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("grpcio-{GRPCIO_VERSION}-venv"));
    let python = venv.join("bin/python");
    if has_grpcio(&python, scratch) {
        return Ok(python);
    }
    // Built aside and renamed into place, so concurrent runs never see a
    // half-installed one (a venv works moved when run as bin/python).
    let building = venv.with_extension(format!("building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    let mut cmd = Command::new("python3");
    cmd.arg("-m").arg("venv").arg(&building);
    let (ok, _, err) = run(cmd, scratch, Duration::from_secs(120));
    if !ok {
        return Err(format!("python3 -m venv failed: {err}"));
    }
    let mut cmd = Command::new(building.join("bin/python"));
    cmd.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-input",
        &format!("grpcio=={GRPCIO_VERSION}"),
    ]);
    let (ok, _, err) = run(cmd, scratch, Duration::from_secs(300));
    if !ok {
        let _ = std::fs::remove_dir_all(&building);
        return Err(format!(
            "pip install grpcio=={GRPCIO_VERSION} failed: {err}"
        ));
    }
    if std::fs::rename(&building, &venv).is_err() {
        // Another run got there first, or a broken one is in the way.
        if !has_grpcio(&python, scratch) {
            let _ = std::fs::remove_dir_all(&venv);
            std::fs::rename(&building, &venv).map_err(|e| format!("cannot place the venv: {e}"))?;
        } else {
            let _ = std::fs::remove_dir_all(&building);
        }
    }
    if has_grpcio(&python, scratch) {
        Ok(python)
    } else {
        Err(format!(
            "grpcio {GRPCIO_VERSION} not importable from {}",
            python.display()
        ))
    }
}

const GRPCIO_CLIENT: &str = r#"
import sys
import grpc

socket, request = sys.argv[1], bytes.fromhex(sys.argv[2])
# Default options: grpcio derives :authority from the socket path.
with grpc.insecure_channel("unix://" + socket) as channel:
    version = channel.unary_unary("/runtime.v1.RuntimeService/Version")
    for _ in range(2):
        print(version(request, timeout=20).hex())
"#;

#[test]
fn grpcio_python_client_with_default_options_calls_version() {
    let tmp = tempfile::tempdir().unwrap();
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let python = match grpcio_python(&scratch) {
        Ok(p) => p,
        Err(why) if std::env::var_os("CRIUS_TEST_REQUIRE_GRPCIO").is_none() => {
            eprintln!(
                "SKIPPED grpcio_python_client_with_default_options_calls_version: no grpcio \
                 {GRPCIO_VERSION} ({why}); set CRIUS_TEST_REQUIRE_GRPCIO=1 to make this an error"
            );
            return;
        }
        Err(why) => panic!("no grpcio {GRPCIO_VERSION}: {why}"),
    };
    let daemon = start_daemon(&tmp.path().join("d"));
    let script = scratch.join("client.py");
    std::fs::write(&script, GRPCIO_CLIENT).unwrap();
    let request: String = version_request()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut cmd = Command::new(&python);
    cmd.arg(&script).arg(&daemon.socket).arg(&request);
    let (ok, stdout, stderr) = run(cmd, &scratch, Duration::from_secs(60));
    assert!(
        ok,
        "grpcio client failed:\n{stderr}\ncriusd log:\n{}",
        daemon.log_text()
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "stdout: {stdout}");
    for line in lines {
        let bytes: Vec<u8> = (0..line.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&line[i..i + 2], 16).unwrap())
            .collect();
        let v = VersionResponse::decode(&bytes[..]).expect("decode VersionResponse");
        check_version(&v, "grpcio");
    }
}
