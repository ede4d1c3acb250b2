//! The bench's local registry: Debian's `docker-registry` on 127.0.0.1 with
//! a pause and a busybox image built from busybox-static, pushed with the
//! distribution API over a tiny HTTP/1.1 client.
//!
//! The registry process and the HTTP client are crius-testkit's.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;
use std::process::Child;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A docker-registry process; killed on drop.
pub struct Registry {
    child: Option<Child>,
    pub addr: String,
}

impl Registry {
    pub fn start(dir: &Path) -> Result<Registry> {
        let (child, addr) =
            crius_testkit::registry::start_registry(dir).map_err(anyhow::Error::msg)?;
        Ok(Registry {
            child: Some(child),
            addr,
        })
    }

    fn push_blob(&self, repo: &str, bytes: &[u8]) -> Result<String> {
        let digest = sha256(bytes);
        crius_testkit::registry::upload_blob(&self.addr, repo, &digest, bytes)
            .map_err(anyhow::Error::msg)?;
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
        let resp = crius_testkit::registry::http(
            &self.addr,
            "PUT",
            &format!("/v2/{repo}/manifests/{tag}"),
            &[("Content-Type", OCI_MANIFEST)],
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
