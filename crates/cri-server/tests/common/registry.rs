//! Test registries: Debian's `docker-registry` on 127.0.0.1 (optionally with
//! htpasswd basic auth), and OCI images built here from busybox-static and
//! pushed with the distribution API over a tiny HTTP/1.1 client.

pub use crius_testkit::registry::HttpResponse;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Whether the tests run as root (CI does); root-only tests skip otherwise.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Installs Debian `package` when `binary` is not on PATH.
pub fn ensure_binary(binary: &str, package: &str) {
    let found = |b: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {b}"))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if found(binary) {
        return;
    }
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let _ = Command::new("apt-get").arg("update").status();
        assert!(install(), "cannot install {package}");
    }
    assert!(
        found(binary),
        "{binary} still missing after installing {package}"
    );
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// One HTTP/1.1 request with `Connection: close`.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> HttpResponse {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    crius_testkit::registry::http(addr, method, path, &headers, body)
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// A docker-registry process; killed on drop.
pub struct Registry {
    child: Option<Child>,
    pub addr: String,
    pub storage: PathBuf,
    pub log: PathBuf,
    /// `Authorization` header value used to push.
    pub push_authorization: Option<String>,
}

/// How a test registry authenticates clients.
pub enum RegistryAuth {
    None,
    /// htpasswd basic auth with one user.
    Basic(String, String),
    /// Bearer tokens from a token service, signed by the key of `root_cert`.
    Token {
        realm: String,
        service: String,
        issuer: String,
        root_cert: PathBuf,
    },
}

impl Registry {
    /// Starts a registry under `dir`, with basic auth when `creds` is given.
    pub fn start(dir: &Path, creds: Option<(&str, &str)>) -> Registry {
        match creds {
            Some((u, p)) => Registry::start_with(dir, RegistryAuth::Basic(u.into(), p.into())),
            None => Registry::start_with(dir, RegistryAuth::None),
        }
    }

    /// Starts a registry under `dir` with the given authentication.
    pub fn start_with(dir: &Path, auth_mode: RegistryAuth) -> Registry {
        ensure_binary("docker-registry", "docker-registry");
        std::fs::create_dir_all(dir).unwrap();
        let storage = dir.join("storage");
        std::fs::create_dir_all(&storage).unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut auth = String::new();
        let mut push_authorization = None;
        match &auth_mode {
            RegistryAuth::None => {}
            RegistryAuth::Basic(user, pass) => {
                use base64::Engine;
                ensure_binary("htpasswd", "apache2-utils");
                let file = dir.join("htpasswd");
                let status = Command::new("htpasswd")
                    .args(["-Bbc"])
                    .arg(&file)
                    .args([user, pass])
                    .stderr(Stdio::null())
                    .status()
                    .unwrap();
                assert!(status.success(), "htpasswd failed");
                auth = format!(
                    "auth:\n  htpasswd:\n    realm: crius-test\n    path: {}\n",
                    file.display()
                );
                push_authorization = Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
                ));
            }
            RegistryAuth::Token {
                realm,
                service,
                issuer,
                root_cert,
            } => {
                auth = format!(
                    "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                    root_cert.display()
                );
            }
        }
        Registry::launch(dir, storage, addr, &auth, push_authorization, false)
    }

    /// Writes the config, spawns docker-registry and waits until it serves.
    fn launch(
        dir: &Path,
        storage: PathBuf,
        addr: String,
        extra_yaml: &str,
        push_authorization: Option<String>,
        tls: bool,
    ) -> Registry {
        let log = dir.join("registry.log");
        let child = crius_testkit::registry::spawn_registry(dir, &storage, &addr, extra_yaml)
            .unwrap_or_else(|e| panic!("spawn docker-registry: {e}"));
        let mut r = Registry {
            child: Some(child),
            addr,
            storage,
            log,
            push_authorization,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if crius_testkit::registry::connect(&r.addr).is_ok() {
                // A TLS listener cannot be probed with plain HTTP.
                if tls {
                    break;
                }
                let resp = http(&r.addr, "GET", "/v2/", &[], b"");
                if resp.status == 200 || resp.status == 401 {
                    break;
                }
            }
            if let Some(status) = r.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("docker-registry exited with {status}: {}", r.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "registry did not start: {}",
                r.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    /// A second registry process under `dir` serving this one's storage
    /// over HTTPS with `pki`'s server certificate, requiring a client
    /// certificate signed by `pki`'s CA (push through `self`).
    pub fn serve_tls(&self, dir: &Path, pki: &Pki) -> Registry {
        std::fs::create_dir_all(dir).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let tls = format!(
            "  tls:\n    certificate: {}\n    key: {}\n    clientcas:\n      - {}\n",
            pki.server_cert.display(),
            pki.server_key.display(),
            pki.ca.display()
        );
        Registry::launch(dir, self.storage.clone(), addr, &tls, None, true)
    }

    /// The access log (one line per request, with its query string).
    pub fn access_log(&self) -> String {
        let out = self.log.with_file_name("registry.out");
        std::fs::read_to_string(out).unwrap_or_default()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn auth_headers(&self) -> Vec<(&'static str, String)> {
        match &self.push_authorization {
            Some(a) => vec![("Authorization", a.clone())],
            None => Vec::new(),
        }
    }

    /// Uploads a blob (monolithic upload); returns its digest.
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        let auth = self.auth_headers();
        let resp = http(
            &self.addr,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/"),
            &auth,
            b"",
        );
        assert_eq!(resp.status, 202, "start upload: {resp:?}");
        let loc = resp
            .header("Location")
            .expect("upload location")
            .to_string();
        let path = match loc.find("/v2/") {
            Some(i) => loc[i..].to_string(),
            None => loc,
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut headers = auth.clone();
        headers.push(("Content-Type", "application/octet-stream".into()));
        let resp = http(
            &self.addr,
            "PUT",
            &format!("{path}{sep}digest={digest}"),
            &headers,
            bytes,
        );
        assert_eq!(resp.status, 201, "finish upload: {resp:?}");
        digest
    }

    /// Uploads a manifest under `reference` (tag or digest); returns its digest.
    pub fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let mut headers = self.auth_headers();
        headers.push(("Content-Type", media_type.to_string()));
        let resp = http(
            &self.addr,
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &headers,
            bytes,
        );
        assert_eq!(
            resp.status,
            201,
            "push manifest: {resp:?} body {}",
            String::from_utf8_lossy(&resp.body)
        );
        sha256(bytes)
    }

    /// Overwrites a stored blob with different bytes of the same length.
    pub fn corrupt_blob(&self, digest: &str) {
        let hex = digest.trim_start_matches("sha256:");
        let path = self
            .storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data");
        let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
    }

    /// Pushes an image; returns (manifest digest, config digest).
    pub fn push_image(&self, repo: &str, tag: &str, image: &TestImage) -> (String, String) {
        for l in &image.layers {
            self.push_blob(repo, &l.blob);
        }
        let config = self.push_blob(repo, &image.config);
        let media_type = if image.layers.iter().any(|l| l.media_type == DOCKER_LAYER) {
            DOCKER_MANIFEST
        } else {
            OCI_MANIFEST
        };
        let manifest = self.push_manifest(repo, tag, media_type, &image.manifest);
        (manifest, config)
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

/// A test CA with a server certificate for 127.0.0.1 and a client
/// certificate, made with the openssl CLI (PEM files).
pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// Makes a [`Pki`] under `dir` (P-256 keys, valid for two days).
pub fn make_pki(dir: &Path) -> Pki {
    ensure_binary("openssl", "openssl");
    std::fs::create_dir_all(dir).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &key,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=crius test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    ]
    .concat());
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let (k, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let subj = format!("/CN=crius test {name}");
        run(&[
            &["req"][..],
            &key,
            &["-keyout", &k, "-out", &csr, "-subj", &subj],
        ]
        .concat());
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }
    Pki {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
    }
}

/// One entry of a test layer.
pub enum Entry {
    Dir(&'static str),
    DirMode(&'static str, u32),
    File(&'static str, Vec<u8>, u32),
    Symlink(&'static str, &'static str),
    Hardlink(&'static str, &'static str),
    /// A directory with a mode and an owner (uid, gid).
    DirOwned(&'static str, u32, u64, u64),
    /// A regular file with a mode and an owner (uid, gid).
    FileOwned(&'static str, Vec<u8>, u32, u64, u64),
}

/// A built layer.
pub struct Layer {
    pub blob: Vec<u8>,
    pub media_type: &'static str,
    pub diff_id: String,
}

#[derive(Clone, Copy)]
pub enum Compression {
    Gzip,
    Zstd,
}

pub fn layer(entries: &[Entry], compression: Compression) -> Layer {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            Entry::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            Entry::DirMode(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            Entry::File(p, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, &data[..]).unwrap();
            }
            Entry::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            Entry::DirOwned(p, mode, uid, gid) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_uid(*uid);
                h.set_gid(*gid);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            Entry::FileOwned(p, data, mode, uid, gid) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_uid(*uid);
                h.set_gid(*gid);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, &data[..]).unwrap();
            }
            Entry::Hardlink(p, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
        }
    }
    let tar = b.into_inner().unwrap();
    let diff_id = sha256(&tar);
    let (blob, media_type) = match compression {
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&tar).unwrap();
            (e.finish().unwrap(), LAYER_GZIP)
        }
        Compression::Zstd => (zstd::encode_all(&tar[..], 3).unwrap(), LAYER_ZSTD),
    };
    Layer {
        blob,
        media_type,
        diff_id,
    }
}

/// `count` files in directories of `per_dir` (`d00/f00000`, ...), the
/// directories first; file `i` holds `data(i)`. The names are leaked: for
/// tests and benchmarks that build one such image.
pub fn many_file_entries(
    count: usize,
    per_dir: usize,
    data: impl Fn(usize) -> Vec<u8>,
) -> Vec<Entry> {
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let mut entries = Vec::with_capacity(count + count / per_dir.max(1) + 1);
    for d in 0..count.div_ceil(per_dir.max(1)) {
        entries.push(Entry::Dir(leak(format!("d{d:02}"))));
    }
    for f in 0..count {
        entries.push(Entry::File(
            leak(format!("d{:02}/f{f:05}", f / per_dir.max(1))),
            data(f),
            0o644,
        ));
    }
    entries
}

/// Incompressible bytes from a xorshift generator seeded with `seed`.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The busybox-static layer every test image starts from.
pub fn busybox_entries() -> Vec<Entry> {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static is installed");
    vec![
        Entry::Dir("bin"),
        Entry::File("bin/busybox", busybox, 0o755),
        Entry::Symlink("bin/sh", "busybox"),
        Entry::Hardlink("bin/ls", "bin/busybox"),
        Entry::Dir("etc"),
        Entry::File(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
            0o644,
        ),
        Entry::File("etc/removed.txt", b"gone soon\n".to_vec(), 0o644),
        Entry::Dir("data"),
        Entry::File("data/old1", b"1".to_vec(), 0o644),
        Entry::File("data/old2", b"2".to_vec(), 0o644),
        Entry::Dir("tmp"),
    ]
}

/// A built single-platform image.
pub struct TestImage {
    pub layers: Vec<Layer>,
    pub config: Vec<u8>,
    pub manifest: Vec<u8>,
    pub config_digest: String,
}

pub fn image(layers: Vec<Layer>, arch: &str, user: &str) -> TestImage {
    build_image(layers, arch, user, false)
}

/// The same image with Docker schema 2 media types.
pub fn docker_image(layers: Vec<Layer>, arch: &str) -> TestImage {
    build_image(layers, arch, "", true)
}

/// An OCI image with the given runtime `config` object (User, Env,
/// Entrypoint, Cmd, ...).
pub fn image_with_config(layers: Vec<Layer>, config: serde_json::Value) -> TestImage {
    assemble_image(layers, "amd64", config, false)
}

fn build_image(layers: Vec<Layer>, arch: &str, user: &str, docker: bool) -> TestImage {
    let config = serde_json::json!({
        "User": user,
        "Env": ["PATH=/bin"],
        "Cmd": ["/bin/sh"],
        "WorkingDir": "/",
        "Labels": {"format": if docker { "docker" } else { "oci" }},
    });
    assemble_image(layers, arch, config, docker)
}

fn assemble_image(
    mut layers: Vec<Layer>,
    arch: &str,
    runtime_config: serde_json::Value,
    docker: bool,
) -> TestImage {
    if docker {
        for l in &mut layers {
            assert_eq!(l.media_type, LAYER_GZIP, "Docker layers are gzip");
            l.media_type = DOCKER_LAYER;
        }
    }
    let (manifest_type, config_type) = if docker {
        (DOCKER_MANIFEST, DOCKER_CONFIG)
    } else {
        (OCI_MANIFEST, OCI_CONFIG)
    };
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": runtime_config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let config_digest = sha256(&config);
    let layer_descs: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| {
            serde_json::json!({
                "mediaType": l.media_type,
                "digest": sha256(&l.blob),
                "size": l.blob.len(),
            })
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": config_digest, "size": config.len()},
        "layers": layer_descs,
    }))
    .unwrap();
    TestImage {
        layers,
        config,
        manifest,
        config_digest,
    }
}

/// An index over (image, architecture) pairs.
pub fn index(images: &[(&TestImage, &str)]) -> Vec<u8> {
    build_index(images, OCI_INDEX, OCI_MANIFEST)
}

/// A Docker manifest list over (Docker image, architecture) pairs.
pub fn docker_list(images: &[(&TestImage, &str)]) -> Vec<u8> {
    build_index(images, DOCKER_LIST, DOCKER_MANIFEST)
}

fn build_index(images: &[(&TestImage, &str)], index_type: &str, entry_type: &str) -> Vec<u8> {
    let manifests: Vec<serde_json::Value> = images
        .iter()
        .map(|(img, arch)| {
            serde_json::json!({
                "mediaType": entry_type,
                "digest": sha256(&img.manifest),
                "size": img.manifest.len(),
                "platform": {"architecture": arch, "os": "linux"},
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": index_type,
        "manifests": manifests,
    }))
    .unwrap()
}

/// Chain ids of diff ids, as the snapshot directories are named.
pub fn chain_ids(diff_ids: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in diff_ids {
        let next = match out.last() {
            None => d.to_string(),
            Some(prev) => sha256(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

/// A read-only overlay mount; unmounted on drop.
pub struct OverlayMount {
    pub target: PathBuf,
}

impl OverlayMount {
    pub fn new(lower: &[PathBuf], target: &Path) -> OverlayMount {
        std::fs::create_dir_all(target).unwrap();
        let opts = format!(
            "lowerdir={}",
            lower
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":")
        );
        let c = |s: &str| std::ffi::CString::new(s).unwrap();
        let (src, tgt, fs, data) = (
            c("overlay"),
            c(target.to_str().unwrap()),
            c("overlay"),
            c(&opts),
        );
        // SAFETY: valid NUL-terminated strings.
        let r = unsafe {
            libc::mount(
                src.as_ptr(),
                tgt.as_ptr(),
                fs.as_ptr(),
                libc::MS_RDONLY,
                data.as_ptr().cast(),
            )
        };
        assert_eq!(
            r,
            0,
            "mount overlay {opts}: {}",
            std::io::Error::last_os_error()
        );
        OverlayMount {
            target: target.to_path_buf(),
        }
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        if let Ok(c) = std::ffi::CString::new(self.target.to_str().unwrap_or("")) {
            // SAFETY: valid path string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}
