//! A local image registry for tests and tools: Debian's `docker-registry`
//! on 127.0.0.1, and the tiny HTTP/1.1 client that talks to it.

use std::io::{Error, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// An HTTP response: status code, headers in order, body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header of this name (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Connects to `addr`, treating a TCP self-connection as "refused". While
/// nothing listens on a loopback port in the ephemeral range, a connect to
/// it can be given that very port as its source and connect to itself
/// (simultaneous open); a probe that did so would then hold the port the
/// server is about to bind and read its own request back as the answer.
pub fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr)
        .map_err(|e| Error::new(e.kind(), format!("connect {addr}: {e}")))?;
    refuse_self(s, addr)
}

fn refuse_self(s: TcpStream, addr: &str) -> std::io::Result<TcpStream> {
    if s.local_addr()? == s.peer_addr()? {
        return Err(Error::new(
            ErrorKind::ConnectionRefused,
            format!("connect {addr}: connected to itself (nothing listens there yet)"),
        ));
    }
    Ok(s)
}

/// One HTTP/1.1 request with `Connection: close` (60 s read timeout).
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut s = connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> std::io::Result<HttpResponse> {
    let bad = |what: &str| Error::new(ErrorKind::InvalidData, format!("http response: {what}"));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    })
}

/// Spawns `docker-registry` serving `storage` on `addr` (deletes enabled),
/// `extra_yaml` (auth, TLS) appended to its configuration `dir/config.yml`;
/// its stdout goes to `dir/registry.out`, its stderr to `dir/registry.log`.
/// Does not wait for it to serve.
pub fn spawn_registry(
    dir: &Path,
    storage: &Path,
    addr: &str,
    extra_yaml: &str,
) -> std::io::Result<Child> {
    let config = dir.join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{extra_yaml}",
            storage.display()
        ),
    )?;
    Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("registry.out"))?)
        .stderr(std::fs::File::create(dir.join("registry.log"))?)
        .spawn()
        .map_err(|e| {
            Error::new(
                e.kind(),
                format!("cannot start docker-registry (apt-get install docker-registry): {e}"),
            )
        })
}

/// Starts a registry without authentication storing under `dir/storage`
/// on a free 127.0.0.1 port (see [`spawn_registry`]) and waits (30 s at
/// most) until it answers `GET /v2/`; returns the process and its address.
/// The process is killed when it fails to come up.
pub fn start_registry(dir: &Path) -> Result<(Child, String), String> {
    let storage = dir.join("storage");
    std::fs::create_dir_all(&storage).map_err(|e| format!("{}: {e}", storage.display()))?;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .to_string();
    let mut child = spawn_registry(dir, &storage, &addr, "").map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let failed = loop {
        if http(&addr, "GET", "/v2/", &[], b"").is_ok_and(|r| r.status == 200) {
            return Ok((child, addr));
        }
        if let Ok(Some(status)) = child.try_wait() {
            break format!("docker-registry exited with {status}");
        }
        if Instant::now() > deadline {
            break format!("docker-registry did not start on {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default();
    Err(format!("{failed}: {log}"))
}

/// Uploads a blob of `repo` whose digest is `digest` (monolithic: POST an
/// upload, then PUT the bytes at the Location it gives).
pub fn upload_blob(addr: &str, repo: &str, digest: &str, bytes: &[u8]) -> Result<(), String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what} to {repo}: {e}");
    let resp = http(
        addr,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        b"",
    )
    .map_err(|e| fail("start upload", &e))?;
    if resp.status != 202 {
        return Err(fail("start upload", &format!("HTTP {}", resp.status)));
    }
    let loc = resp
        .header("location")
        .ok_or_else(|| fail("upload", &"no Location"))?;
    let path = loc.find("/v2/").map_or(loc, |i| &loc[i..]);
    let sep = if path.contains('?') { '&' } else { '?' };
    let resp = http(
        addr,
        "PUT",
        &format!("{path}{sep}digest={digest}"),
        &[("Content-Type", "application/octet-stream")],
        bytes,
    )
    .map_err(|e| fail("finish upload", &e))?;
    if resp.status != 201 {
        return Err(fail("finish upload", &format!("HTTP {}", resp.status)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_parsed() {
        let r =
            parse_response(b"HTTP/1.1 201 Created\r\nLocation: /v2/x\r\nA:b\r\n\r\nbody").unwrap();
        assert_eq!(r.status, 201);
        assert_eq!(r.header("location"), Some("/v2/x"));
        assert_eq!(r.header("a"), Some("b"));
        assert_eq!(r.body, b"body");
        let cases: [&[u8]; 3] = [b"HTTP/1.1 200 OK\r\n", b"nonsense\r\n\r\n", b""];
        for raw in cases {
            assert!(parse_response(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn a_self_connection_counts_as_refused() {
        use std::os::fd::FromRawFd;
        // A socket bound to a loopback port and connected to that same port
        // (with nothing listening): the simultaneous open of a self-connect.
        // SAFETY: plain socket calls on a fd this test owns; sockaddr_in is
        // fully initialised before bind, getsockname and connect use it.
        let s = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0);
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            assert_eq!(
                libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), len),
                0
            );
            let mut got_len = len;
            assert_eq!(
                libc::getsockname(fd, (&mut sa as *mut libc::sockaddr_in).cast(), &mut got_len),
                0
            );
            assert_eq!(
                libc::connect(fd, (&sa as *const libc::sockaddr_in).cast(), len),
                0
            );
            TcpStream::from_raw_fd(fd)
        };
        let addr = s.local_addr().unwrap().to_string();
        let err = refuse_self(s, &addr).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
        // A real server is not refused.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        assert!(connect(&addr).is_ok());
    }

    #[test]
    fn a_registry_starts_answers_and_goes() {
        if !Path::new("/usr/bin/docker-registry").exists() {
            eprintln!("skipped: no docker-registry");
            return;
        }
        let dir = std::env::temp_dir().join(format!("crius-testkit-reg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (mut child, addr) = start_registry(&dir).unwrap();
        let r = http(&addr, "GET", "/v2/_catalog", &[("Accept", "*/*")], b"").unwrap();
        assert_eq!(r.status, 200);
        assert!(String::from_utf8_lossy(&r.body).contains("repositories"));
        // The digest of "hello\n".
        let digest = "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
        upload_blob(&addr, "test/blob", digest, b"hello\n").unwrap();
        let r = http(
            &addr,
            "GET",
            &format!("/v2/test/blob/blobs/{digest}"),
            &[],
            b"",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello\n"[..]));
        let wrong = upload_blob(&addr, "test/blob", digest, b"other\n").unwrap_err();
        assert!(wrong.contains("finish upload to test/blob"), "{wrong}");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(http(&addr, "GET", "/v2/", &[], b"").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
