//! The bench's local registry: Debian's `docker-registry` on 127.0.0.1 with
//! a pause and a busybox image built from busybox-static, pushed with the
//! distribution API over a tiny HTTP/1.1 client.
//!
//! A minimal copy of the integration tests' `tests/common/registry.rs`
//! (only what the bench needs, with errors instead of panics).

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

struct Response {
    status: u16,
    location: Option<String>,
}

/// One HTTP/1.1 request with `Connection: close`.
fn http(addr: &str, method: &str, path: &str, ctype: &str, body: &[u8]) -> Result<Response> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\nContent-Type: {ctype}\r\n\r\n",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("http response without header end")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .context("bad status line")?;
    let location = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("location"))
        .map(|(_, v)| v.trim().to_string());
    Ok(Response { status, location })
}

/// A docker-registry process; killed on drop.
pub struct Registry {
    child: Option<Child>,
    pub addr: String,
}

impl Registry {
    pub fn start(dir: &Path) -> Result<Registry> {
        std::fs::create_dir_all(dir.join("storage"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("storage").display()
            ),
        )?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log"))?)
            .spawn()
            .context("spawn docker-registry (apt-get install docker-registry)")?;
        let mut r = Registry {
            child: Some(child),
            addr,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(resp) = http(&r.addr, "GET", "/v2/", "text/plain", b"") {
                if resp.status == 200 {
                    return Ok(r);
                }
            }
            if let Some(c) = r.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    bail!("docker-registry exited with {status}");
                }
            }
            if Instant::now() > deadline {
                bail!("docker-registry did not start on {}", r.addr);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn push_blob(&self, repo: &str, bytes: &[u8]) -> Result<String> {
        let digest = sha256(bytes);
        let resp = http(
            &self.addr,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            "application/octet-stream",
            b"",
        )?;
        if resp.status != 202 {
            bail!("start upload: HTTP {}", resp.status);
        }
        let loc = resp.location.context("upload without Location")?;
        let path = match loc.find("/v2/") {
            Some(i) => loc[i..].to_string(),
            None => loc,
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        let resp = http(
            &self.addr,
            "PUT",
            &format!("{path}{sep}digest={digest}"),
            "application/octet-stream",
            bytes,
        )?;
        if resp.status != 201 {
            bail!("finish upload: HTTP {}", resp.status);
        }
        Ok(digest)
    }

    /// Pushes a one-layer OCI image with the given runtime config.
    pub fn push_image(
        &self,
        repo: &str,
        tag: &str,
        layer_tar: &[u8],
        runtime_config: serde_json::Value,
    ) -> Result<()> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(layer_tar)?;
        let blob = gz.finish()?;
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": runtime_config,
            "rootfs": {"type": "layers", "diff_ids": [sha256(layer_tar)]},
        }))?;
        let layer_digest = self.push_blob(repo, &blob)?;
        let config_digest = self.push_blob(repo, &config)?;
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": LAYER_GZIP, "digest": layer_digest, "size": blob.len()}],
        }))?;
        let resp = http(
            &self.addr,
            "PUT",
            &format!("/v2/{repo}/manifests/{tag}"),
            OCI_MANIFEST,
            &manifest,
        )?;
        if resp.status != 201 {
            bail!("push manifest {repo}:{tag}: HTTP {}", resp.status);
        }
        Ok(())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The busybox-static layer (uncompressed tar) both images are made of.
pub fn busybox_layer() -> Result<Vec<u8>> {
    let busybox =
        std::fs::read("/bin/busybox").context("/bin/busybox (apt-get install busybox-static)")?;
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        match link {
            Some(target) => b.append_link(&mut h, path, target),
            None => b.append_data(&mut h, path, data),
        }
    };
    add("bin", tar::EntryType::Directory, 0o755, &[], None)?;
    add(
        "bin/busybox",
        tar::EntryType::Regular,
        0o755,
        &busybox,
        None,
    )?;
    add(
        "bin/sh",
        tar::EntryType::Symlink,
        0o777,
        &[],
        Some("busybox"),
    )?;
    add("etc", tar::EntryType::Directory, 0o755, &[], None)?;
    add(
        "etc/passwd",
        tar::EntryType::Regular,
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\n",
        None,
    )?;
    for d in ["tmp", "proc", "sys", "dev"] {
        add(d, tar::EntryType::Directory, 0o755, &[], None)?;
    }
    Ok(b.into_inner()?)
}
