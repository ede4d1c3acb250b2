//! `cargo xtask conformance`: the CRI validation suite (critest v1.32) run
//! offline against criusd (root).
//!
//! critest is not built here: it must be on PATH (see [`CRITEST_HELP`]).
//! Everything else is set up for the run and undone afterwards:
//!
//! * the images critest pulls, built from Debian's `busybox` package
//!   (`apt-get download`; `busybox-static` as a fallback) plus a few tiny
//!   static C programs (`gcc -static`): pgrep/ipcs stand-ins, a web
//!   server standing in for nginx and httpd, the setuid `nnp` of the
//!   nonewprivs image and a pause binary. They are written as an OCI image
//!   layout under `target/conformance/oci` and pushed, under the exact names
//!   critest uses, to Debian's `docker-registry` on 127.0.0.1;
//! * `hosts.toml` files that make `registry.k8s.io` and `gcr.io` resolve to
//!   that registry over plain HTTP;
//! * a CNI network with a bridge of its own, no masquerading and an iptables
//!   FORWARD rule that drops pod traffic leaving the bridge;
//! * criusd (the debug build) with its own root, state and socket.
//!
//! The junit report, critest's output and criusd's log go to
//! `target/conformance/`.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crius_testkit::registry::HttpResponse;
use crius_testkit::{free_subnet, nat_chains, remove_new_cni_chains, BridgeHost};

const CRITEST_HELP: &str = "critest (and ginkgo, for --parallel > 1) must be on PATH. They are not part of
this repository; build them from the cri-tools v1.32.0 source tree, offline, with
its vendored modules and Go 1.23 (Debian bookworm: enable bookworm-backports and
`apt-get install -t bookworm-backports golang-1.23-go`). In that tree:
    export PATH=/usr/lib/go-1.23/bin:$PATH GOFLAGS=-mod=vendor GOPROXY=off GOTOOLCHAIN=local CGO_ENABLED=0
    go test -c -o critest ./cmd/critest
    go build -o crictl ./cmd/crictl
    go build -o ginkgo ./vendor/github.com/onsi/ginkgo/v2/ginkgo
    install -m 755 critest crictl ginkgo /usr/local/bin/";

/// The spec whose image is pinned to an upstream digest: a local build can
/// never match it.
const SKIP_OFFLINE: &str = "public image with digest";

/// Registries critest pulls from; all are mirrored to the local registry.
const MIRRORED: &[&str] = &["registry.k8s.io", "gcr.io"];

pub fn conformance(args: &[String]) -> Result<()> {
    let mut parallel = 1u32;
    let mut extra: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--parallel" => {
                let v = it.next().context("--parallel needs a number")?;
                parallel = v
                    .parse()
                    .with_context(|| format!("--parallel {v:?} is not a number"))?;
            }
            "--" => {
                extra.extend(it.by_ref().cloned());
            }
            other => bail!("unknown conformance option {other:?} (known: --parallel N, -- ARGS)"),
        }
    }
    let critest =
        which("critest").with_context(|| format!("critest not found.\n{CRITEST_HELP}"))?;
    if parallel > 1 && which("ginkgo").is_none() {
        bail!("ginkgo not found (critest --parallel runs it).\n{CRITEST_HELP}");
    }
    if !crate::setup::is_root() {
        bail!("cargo xtask conformance must run as root");
    }
    for (bin, pkg) in [
        ("docker-registry", "docker-registry"),
        ("iptables", "iptables"),
        ("ip", "iproute2"),
        ("gcc", "gcc"),
        ("runc", "runc"),
        ("crictl", "cri-tools' crictl"),
    ] {
        if which(bin).is_none() {
            bail!("{bin} not found on PATH (install {pkg}; `cargo xtask setup` installs most)");
        }
    }
    if !Path::new("/bin/busybox").is_file() {
        bail!("/bin/busybox missing: apt-get install busybox-static");
    }

    crate::run_cmd(crate::cargo().args(["build", "-p", "crius-cri-server", "-p", "crius-shim"]))?;

    let root = crate::workspace_root();
    let out = root.join("target/conformance");
    std::fs::create_dir_all(&out)?;
    let work = PathBuf::from(format!("/tmp/crius-conformance-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;

    let mut env = Env::new(work.clone());
    let result = run_suite(&mut env, &root, &out, &critest, parallel, &extra);
    env.teardown();
    result
}

fn run_suite(
    env: &mut Env,
    root: &Path,
    out: &Path,
    critest: &Path,
    parallel: u32,
    extra: &[String],
) -> Result<()> {
    let work = env.work.clone();
    // A private copy of the binaries: others may rebuild target/ meanwhile.
    let bin = work.join("bin");
    std::fs::create_dir_all(&bin)?;
    for name in ["criusd", "containerd-shim-crius-v2"] {
        let src = root.join("target/debug").join(name);
        std::fs::copy(&src, bin.join(name))
            .with_context(|| format!("cannot copy {}", src.display()))?;
    }

    eprintln!("xtask: building the test images");
    let images = build_images(&work.join("cbuild"), &out.join("debs"))?;
    let layout = out.join("oci");
    write_layout(&layout, &images)?;

    let registry = Registry::start(&work.join("registry"))?;
    for img in &images {
        registry.push(img)?;
    }
    eprintln!("xtask: pushed {} images to {}", images.len(), registry.addr);
    let certs = work.join("certs.d");
    for host in MIRRORED {
        let dir = certs.join(host);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("hosts.toml"),
            format!(
                "server = \"https://{host}\"\n\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
                registry.addr
            ),
        )?;
    }
    env.registry = Some(registry);

    let net = Network::new(&work)?;
    let conf_dir = net.conf_dir.clone();
    env.network = Some(net);

    let socket = work.join("crius.sock");
    let config = work.join("criusd.toml");
    std::fs::write(
        &config,
        format!(
            "root = \"{root}\"\nstate = \"{state}\"\nsocket = \"{sock}\"\nlog_level = \"info,crius_cri_server=debug,crius_image=debug,crius_netns=debug\"\n\
             cgroup_driver = \"cgroupfs\"\n\n[cni]\nconf_dir = \"{conf}\"\nbin_dirs = [\"/opt/cni/bin\", \"/usr/lib/cni\"]\n\n\
             [registry]\nconfig_path = \"{certs}\"\n\n[stream]\naddress = \"127.0.0.1:0\"\n",
            root = work.join("root").display(),
            state = work.join("state").display(),
            sock = socket.display(),
            conf = conf_dir.display(),
            certs = certs.display(),
        ),
    )?;
    let log = out.join("criusd.log");
    let _ = std::fs::remove_file(out.join("criusd.stderr"));
    let log_file = std::fs::File::create(&log)?;
    let child = no_proxy(Command::new(bin.join("criusd")))
        .arg("--config")
        .arg(&config)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .context("cannot start criusd")?;
    env.criusd = Some(child);
    env.socket = Some(socket.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if let Some(status) = env
            .criusd
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            bail!("criusd exited with {status}; see {}", log.display());
        }
        if Instant::now() > deadline {
            bail!("criusd did not listen on {} within 60 s", socket.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("xtask: criusd is up (log: {})", log.display());

    let endpoint = format!("unix://{}", socket.display());
    let junit = out.join("junit.xml");
    let _ = std::fs::remove_file(&junit);
    let mut cmd = no_proxy(Command::new(critest));
    cmd.current_dir(&work)
        .arg("--runtime-endpoint")
        .arg(&endpoint)
        .arg("--image-endpoint")
        .arg(&endpoint)
        .arg("--ginkgo.skip")
        .arg(SKIP_OFFLINE)
        .arg(format!("--ginkgo.junit-report={}", junit.display()))
        .arg("--ginkgo.no-color")
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // Only when > 1: critest's `--parallel=1` is taken by Ginkgo for go
    // test's own -parallel, which it refuses.
    if parallel > 1 {
        cmd.arg(format!("--parallel={parallel}"));
    }
    eprintln!("xtask: running {cmd:?}");
    let mut child = cmd.spawn().context("cannot start critest")?;
    let mut stdout = child.stdout.take().context("critest stdout")?;
    let mut log = std::fs::File::create(out.join("critest.log"))?;
    let mut buf = [0u8; 8192];
    loop {
        let n = stdout.read(&mut buf)?;
        if n == 0 {
            break;
        }
        std::io::stdout().write_all(&buf[..n])?;
        log.write_all(&buf[..n])?;
    }
    let status = child.wait()?;
    eprintln!(
        "xtask: junit report {}, critest output {}, criusd log {}",
        junit.display(),
        out.join("critest.log").display(),
        out.join("criusd.log").display()
    );
    if !status.success() {
        bail!("critest failed: {status}");
    }
    Ok(())
}

fn no_proxy(mut cmd: Command) -> Command {
    for v in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(v);
    }
    cmd.env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    cmd
}

fn which(bin: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

// ---------------------------------------------------------------------------
// Everything the run sets up, undone by `teardown` (also on failure).

struct Env {
    work: PathBuf,
    registry: Option<Registry>,
    network: Option<Network>,
    criusd: Option<Child>,
    socket: Option<PathBuf>,
    /// The runtime's default cgroup parent in the hierarchies where it did
    /// not exist before the run (see [`default_parents_absent`]).
    new_parents: Vec<PathBuf>,
}

impl Env {
    fn new(work: PathBuf) -> Env {
        Env {
            work,
            registry: None,
            network: None,
            criusd: None,
            socket: None,
            new_parents: default_parents_absent(),
        }
    }

    fn teardown(&mut self) {
        eprintln!("xtask: tearing down");
        if let (Some(sock), Some(_)) = (&self.socket, &self.criusd) {
            let ep = format!("unix://{}", sock.display());
            // stdout and stderr apart: crictl warns on stderr.
            let crictl = |args: &[&str]| {
                Command::new("crictl")
                    .args([
                        "--runtime-endpoint",
                        &ep,
                        "--image-endpoint",
                        &ep,
                        "--timeout",
                        "60s",
                    ])
                    .args(args)
                    .output()
            };
            let pods = match crictl(&["pods", "-q"]) {
                Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
                _ => String::new(),
            };
            for id in pods.split_whitespace() {
                let _ = crictl(&["stopp", id]);
                match crictl(&["rmp", "-f", id]) {
                    Ok(o) if o.status.success() => {}
                    Ok(o) => eprintln!(
                        "cleanup: crictl rmp {id}: {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    ),
                    Err(e) => eprintln!("cleanup: crictl rmp {id}: {e}"),
                }
            }
        }
        if let Some(mut c) = self.criusd.take() {
            // SIGTERM first, SIGKILL after 20 s.
            crius_testkit::terminate(&mut c, Duration::from_secs(20));
        }
        // Shims of this run (started by our criusd from our copy of the binary).
        kill_processes_under(&self.work.join("bin"));
        unmount_under(&self.work);
        self.registry.take();
        if let Some(net) = self.network.take() {
            net.remove();
        }
        if let Err(e) = std::fs::remove_dir_all(&self.work) {
            eprintln!("cleanup: cannot remove {}: {e}", self.work.display());
        }
        // Empty once every pod is gone (runc removed the containers' own).
        for p in self.new_parents.drain(..) {
            match std::fs::remove_dir(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => eprintln!("cleanup: cannot remove {}: {e}", p.display()),
            }
        }
    }
}

/// The cgroup parent criusd gives pods that name none, as critest's do
/// (`/crius`, crius_spec::cgroups), in every mounted hierarchy (each cgroup
/// v1 controller and the unified one) where it does not exist yet: the run
/// makes it there, and its teardown removes it.
fn default_parents_absent() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(root) {
        // Not through symlinks (`cpu` -> `cpu,cpuacct`): each hierarchy once.
        dirs.extend(
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    dirs.into_iter()
        .map(|d| d.join("crius"))
        .filter(|p| !p.exists())
        .collect()
}

/// SIGKILLs the processes whose executable lies under `dir`.
fn kill_processes_under(dir: &Path) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) {
            if exe.starts_with(dir) {
                eprintln!("cleanup: killing leftover {} ({pid})", exe.display());
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            }
        }
    }
}

/// Lazily unmounts every mount point under `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = format!("{}/", dir.display());
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points.dedup();
    for p in points {
        let _ = Command::new("umount").args(["-l", &p]).status();
    }
}

// ---------------------------------------------------------------------------
// The pod network.

struct Network {
    conf_dir: PathBuf,
    host: BridgeHost,
    nat_chains_before: Vec<String>,
}

impl Network {
    fn new(work: &Path) -> Result<Network> {
        let subnet = free_subnet("10.215").context("no free 10.215.x.0/24")?;
        let bridge = format!("crcf{}", std::process::id() % 100_000);
        let name = format!("crius-conformance-{}", std::process::id());
        let conf_dir = work.join("net.d");
        std::fs::create_dir_all(&conf_dir)?;
        std::fs::write(
            conf_dir.join("10-conformance.conflist"),
            format!(
                r#"{{
  "cniVersion": "1.0.0",
  "name": "{name}",
  "plugins": [
    {{
      "type": "bridge", "bridge": "{bridge}", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {{ "type": "host-local", "ranges": [[{{ "subnet": "{subnet}" }}]], "routes": [{{ "dst": "0.0.0.0/0" }}] }}
    }},
    {{ "type": "portmap", "capabilities": {{ "portMappings": true }} }},
    {{ "type": "loopback" }}
  ]
}}
"#
            ),
        )?;
        let nat_chains_before = nat_chains();
        eprintln!("xtask: pod network {name}: bridge {bridge}, {subnet}");
        let host = BridgeHost::setup(name, bridge, &subnet).map_err(anyhow::Error::msg)?;
        Ok(Network {
            conf_dir,
            host,
            nat_chains_before,
        })
    }

    fn remove(self) {
        if let Err(e) = self.host.undo() {
            eprintln!("cleanup: removing the FORWARD rule failed: {e}");
        }
        // portmap's shared chains, when they are new and unused.
        remove_new_cni_chains(&self.nat_chains_before);
    }
}

// ---------------------------------------------------------------------------
// The local registry and a tiny HTTP/1.1 client.

struct Registry {
    child: Child,
    addr: String,
}

fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse> {
    Ok(crius_testkit::registry::http(
        addr, method, path, headers, body,
    )?)
}

impl Registry {
    fn start(dir: &Path) -> Result<Registry> {
        let (child, addr) =
            crius_testkit::registry::start_registry(dir).map_err(anyhow::Error::msg)?;
        Ok(Registry { child, addr })
    }

    fn push_blob(&self, repo: &str, bytes: &[u8]) -> Result<()> {
        let digest = sha256(bytes)?;
        let head = http(
            &self.addr,
            "HEAD",
            &format!("/v2/{repo}/blobs/{digest}"),
            &[],
            b"",
        );
        if head.is_ok_and(|r| r.status == 200) {
            return Ok(());
        }
        crius_testkit::registry::upload_blob(&self.addr, repo, &digest, bytes)
            .map_err(anyhow::Error::msg)
    }

    fn push(&self, img: &Image) -> Result<()> {
        for l in &img.layers {
            self.push_blob(&img.repo, &l.blob)?;
        }
        self.push_blob(&img.repo, &img.config)?;
        for tag in &img.tags {
            let resp = http(
                &self.addr,
                "PUT",
                &format!("/v2/{}/manifests/{tag}", img.repo),
                &[("Content-Type", OCI_MANIFEST)],
                &img.manifest,
            )?;
            if resp.status != 201 {
                bail!(
                    "push {}:{tag}: HTTP {} {}",
                    img.repo,
                    resp.status,
                    String::from_utf8_lossy(&resp.body)
                );
            }
        }
        Ok(())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Images.

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

fn sha256(bytes: &[u8]) -> Result<String> {
    let out = pipe("sha256sum", &[], bytes)?;
    let hex = String::from_utf8_lossy(&out)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    Ok(format!("sha256:{hex}"))
}

/// Runs `cmd` with `input` on stdin; returns its stdout.
fn pipe(cmd: &str, args: &[&str], input: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {cmd}"))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    if !out.status.success() {
        bail!("{cmd} failed: {}", out.status);
    }
    Ok(out.stdout)
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_list(items: &[&str]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|s| json_str(s))
            .collect::<Vec<_>>()
            .join(",")
    )
}

/// One entry of a layer.
enum Entry {
    Dir(String, u32),
    File(String, Vec<u8>, u32),
    Hardlink(String, String),
}

fn dir(p: &str) -> Entry {
    Entry::Dir(p.to_string(), 0o755)
}

fn file(p: &str, data: &[u8], mode: u32) -> Entry {
    Entry::File(p.to_string(), data.to_vec(), mode)
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0w$o}\0", v, w = field.len() - 1);
    field.copy_from_slice(s.as_bytes());
}

/// An uncompressed ustar archive of `entries`.
fn tar(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for e in entries {
        let (path, mode, kind, link, data): (&str, u32, u8, &str, &[u8]) = match e {
            Entry::Dir(p, m) => (p, *m, b'5', "", &[]),
            Entry::File(p, d, m) => (p, *m, b'0', "", d),
            Entry::Hardlink(p, t) => (p, 0o755, b'1', t, &[]),
        };
        if path.len() > 99 || link.len() > 99 {
            bail!("tar path too long: {path}");
        }
        let mut h = [0u8; 512];
        h[..path.len()].copy_from_slice(path.as_bytes());
        octal(&mut h[100..108], mode as u64);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], data.len() as u64);
        octal(&mut h[136..148], 1_700_000_000);
        h[148..156].copy_from_slice(b"        ");
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[265..269].copy_from_slice(b"root");
        h[297..301].copy_from_slice(b"root");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    Ok(out)
}

#[derive(Clone)]
struct Layer {
    blob: Vec<u8>,
    diff_id: String,
}

fn layer(entries: &[Entry]) -> Result<Layer> {
    let t = tar(entries)?;
    Ok(Layer {
        diff_id: sha256(&t)?,
        blob: pipe("gzip", &["-n", "-6", "-c"], &t)?,
    })
}

/// A built image and the names it is pushed under.
struct Image {
    /// Repository inside the registry, e.g. `e2e-test-images/busybox`.
    repo: String,
    /// Registry host critest names it with (for the layout's ref names).
    host: String,
    tags: Vec<String>,
    layers: Vec<Layer>,
    config: Vec<u8>,
    manifest: Vec<u8>,
}

/// The runtime part of an image config.
#[derive(Default)]
struct RunConfig<'a> {
    user: &'a str,
    env: Vec<String>,
    entrypoint: Vec<&'a str>,
    cmd: Vec<&'a str>,
}

fn image(reference: &str, extra_tags: &[&str], layers: Vec<Layer>, rc: RunConfig) -> Result<Image> {
    let (name, tag) = reference
        .rsplit_once(':')
        .context("reference without tag")?;
    let (host, repo) = name.split_once('/').context("reference without host")?;
    let mut env =
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()];
    env.extend(rc.env);
    let env: Vec<&str> = env.iter().map(String::as_str).collect();
    let mut cfg = format!(
        "\"User\":{},\"Env\":{},",
        json_str(rc.user),
        json_list(&env)
    );
    if !rc.entrypoint.is_empty() {
        cfg.push_str(&format!("\"Entrypoint\":{},", json_list(&rc.entrypoint)));
    }
    cfg.push_str(&format!(
        "\"Cmd\":{},\"WorkingDir\":\"/\"",
        json_list(&rc.cmd)
    ));
    let diff_ids: Vec<&str> = layers.iter().map(|l| l.diff_id.as_str()).collect();
    let config = format!(
        "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"created\":\"2023-11-14T22:13:20Z\",\"config\":{{{cfg}}},\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":{}}}}}",
        json_list(&diff_ids)
    )
    .into_bytes();
    let mut descs = Vec::new();
    for l in &layers {
        descs.push(format!(
            "{{\"mediaType\":\"{LAYER_GZIP}\",\"digest\":\"{}\",\"size\":{}}}",
            sha256(&l.blob)?,
            l.blob.len()
        ));
    }
    let manifest = format!(
        "{{\"schemaVersion\":2,\"mediaType\":\"{OCI_MANIFEST}\",\"config\":{{\"mediaType\":\"{OCI_CONFIG}\",\"digest\":\"{}\",\"size\":{}}},\"layers\":[{}]}}",
        sha256(&config)?,
        config.len(),
        descs.join(",")
    )
    .into_bytes();
    let mut tags = vec![tag.to_string()];
    tags.extend(extra_tags.iter().map(|t| t.to_string()));
    Ok(Image {
        repo: repo.to_string(),
        host: host.to_string(),
        tags,
        layers,
        config,
        manifest,
    })
}

/// Writes all images as one OCI image layout (`oci-layout`, `index.json`,
/// `blobs/sha256/`), each manifest annotated with its full reference.
fn write_layout(dir: &Path, images: &[Image]) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8]| -> Result<String> {
        let d = sha256(bytes)?;
        let p = blobs.join(d.trim_start_matches("sha256:"));
        if !p.exists() {
            std::fs::write(p, bytes)?;
        }
        Ok(d)
    };
    let mut entries = Vec::new();
    for img in images {
        for l in &img.layers {
            put(&l.blob)?;
        }
        put(&img.config)?;
        let digest = put(&img.manifest)?;
        for tag in &img.tags {
            entries.push(format!(
                "{{\"mediaType\":\"{OCI_MANIFEST}\",\"digest\":\"{digest}\",\"size\":{},\"annotations\":{{\"org.opencontainers.image.ref.name\":{}}}}}",
                img.manifest.len(),
                json_str(&format!("{}/{}:{tag}", img.host, img.repo))
            ));
        }
    }
    std::fs::write(dir.join("oci-layout"), "{\"imageLayoutVersion\":\"1.0.0\"}")?;
    std::fs::write(
        dir.join("index.json"),
        format!(
            "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[{}]}}",
            entries.join(",")
        ),
    )?;
    Ok(())
}

/// `pgrep PATTERN`: pids (other than its own) whose name contains PATTERN.
const PGREP_C: &str = r#"
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: pgrep NAME\n"); return 2; }
    DIR *d = opendir("/proc");
    if (!d) { perror("pgrep: /proc"); return 3; }
    struct dirent *e; int found = 0; long self = getpid();
    while ((e = readdir(d))) {
        char *end; long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 0 || pid == self) continue;
        char p[64], comm[64] = {0};
        snprintf(p, sizeof p, "/proc/%ld/comm", pid);
        FILE *f = fopen(p, "r");
        if (!f) continue;
        if (fgets(comm, sizeof comm, f)) {
            comm[strcspn(comm, "\n")] = 0;
            if (strstr(comm, argv[1])) { printf("%ld\n", pid); found = 1; }
        }
        fclose(f);
    }
    closedir(d);
    return found ? 0 : 1;
}
"#;

/// `ipcs -m`: the shared memory segments of the IPC namespace, in
/// util-linux's layout.
const IPCS_C: &str = r#"
#include <pwd.h>
#include <stdio.h>
#include <string.h>
int main(int argc, char **argv) {
    (void)argc; (void)argv;
    FILE *f = fopen("/proc/sysvipc/shm", "r");
    printf("\n------ Shared Memory Segments --------\n");
    printf("key        shmid      owner      perms      bytes      nattch     status      \n");
    if (!f) return 0;
    char line[512];
    if (!fgets(line, sizeof line, f)) { fclose(f); return 0; }
    while (fgets(line, sizeof line, f)) {
        int key, shmid, perms, cpid, lpid; unsigned long size, nattch; unsigned uid;
        if (sscanf(line, "%d %d %o %lu %d %d %lu %u", &key, &shmid, &perms, &size,
                   &cpid, &lpid, &nattch, &uid) != 8) continue;
        printf("0x%08x %-10d %-10u %-10o %-10lu %-10lu\n", key, shmid, uid, perms, size, nattch);
    }
    fclose(f);
    printf("\n");
    return 0;
}
"#;

/// A one-file web server standing in for nginx and httpd. Settings come
/// from the environment: WEB_PORT (80), WEB_PIDFILE, WEB_TITLE (the
/// process re-executes itself with that argv[0], as nginx rewrites its
/// title to "nginx: master process ..."), WEB_BANNER (printed to stderr).
const WEBSRV_C: &str = r#"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
static void bye(int s) { (void)s; _exit(0); }
int main(int argc, char **argv) {
    const char *title = getenv("WEB_TITLE");
    if (title && *title && strcmp(argv[0], title) != 0) {
        char self[4096];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n > 0) {
            self[n] = 0;
            argv[0] = (char *)title;
            execv(self, argv);
        }
    }
    (void)argc;
    signal(SIGTERM, bye);
    signal(SIGINT, bye);
    signal(SIGQUIT, bye);
    signal(SIGPIPE, SIG_IGN);
    const char *p = getenv("WEB_PORT");
    int port = p ? atoi(p) : 80;
    const char *banner = getenv("WEB_BANNER");
    if (banner && *banner) { fprintf(stderr, "%s\n", banner); fflush(stderr); }
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 64)) { perror("bind/listen"); return 1; }
    const char *pidfile = getenv("WEB_PIDFILE");
    if (pidfile && *pidfile) {
        FILE *f = fopen(pidfile, "w");
        if (f) { fprintf(f, "%d\n", getpid()); fclose(f); }
    }
    printf("listening on port %d\n", port);
    fflush(stdout);
    const char *body = "<!DOCTYPE html>\n<html><head><title>Welcome to nginx!</title></head>"
                       "<body><h1>It works!</h1></body></html>\n";
    for (;;) {
        int c = accept(s, 0, 0);
        if (c < 0) continue;
        struct timeval tv = {5, 0};
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        char req[8192]; size_t got = 0;
        while (got < sizeof req - 1) {
            ssize_t n = read(c, req + got, sizeof req - 1 - got);
            if (n <= 0) break;
            got += n; req[got] = 0;
            if (strstr(req, "\r\n\r\n")) break;
        }
        req[got] = 0;
        char *eol = strstr(req, "\r\n");
        if (eol) *eol = 0;
        printf("\"%s\" 200\n", req);
        fflush(stdout);
        char resp[1024];
        int n = snprintf(resp, sizeof resp,
            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s",
            strlen(body), body);
        if (write(c, resp, n) < 0) {}
        close(c);
    }
}
"#;

/// The nonewprivs test binary: installed setuid root.
const NNP_C: &str = r#"
#include <stdio.h>
#include <unistd.h>
int main(void) { printf("Effective uid: %d\n", geteuid()); return 0; }
"#;

/// The pause container's process.
const PAUSE_C: &str = r#"
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void bye(int s) { (void)s; _exit(0); }
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
    signal(SIGTERM, bye);
    signal(SIGINT, bye);
    signal(SIGCHLD, reap);
    for (;;) pause();
}
"#;

fn compile(dir: &Path, name: &str, src: &str) -> Result<Vec<u8>> {
    std::fs::create_dir_all(dir)?;
    let c = dir.join(format!("{name}.c"));
    let bin = dir.join(name);
    std::fs::write(&c, src)?;
    let out = Command::new("gcc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(&bin)
        .arg(&c)
        .output()
        .context("cannot run gcc")?;
    if !out.status.success() {
        bail!(
            "gcc {name}.c failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(std::fs::read(&bin)?)
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
daemon:x:1:1:daemon:/usr/sbin:/bin/false\n\
bin:x:2:2:bin:/bin:/bin/false\n\
sys:x:3:3:sys:/dev:/bin/false\n\
www-data:x:33:33:www-data:/var/www:/bin/false\n\
nobody:x:65534:65534:nobody:/home:/bin/false\n";

const GROUP: &str = "root:x:0:\n\
daemon:x:1:\n\
bin:x:2:\n\
sys:x:3:\n\
www-data:x:33:\n\
nogroup:x:65534:\n";

/// A busybox to build the images from: Debian's dynamic `busybox` package
/// (downloaded with `apt-get download` into `debs`, unpacked, shipped with
/// the libraries `ldd` names) when available, else `busybox-static`.
///
/// The dynamic build matters: busybox-static is built with
/// FEATURE_SH_STANDALONE, so its `sh` runs applets such as `ls` in-process
/// instead of executing /bin/ls, and masking /bin/ls (the MaskedPaths spec)
/// has no effect. Upstream's busybox image behaves as the dynamic build.
struct Busybox {
    binary: Vec<u8>,
    applets: Vec<String>,
    /// (path inside the image, contents) of the shared libraries.
    libs: Vec<(String, Vec<u8>)>,
}

fn find_deb(dir: &Path, package: &str) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with("_amd64.deb"))
        })
}

fn busybox(debs: &Path) -> Result<Busybox> {
    let dynamic = || -> Result<Busybox> {
        std::fs::create_dir_all(debs)?;
        let deb = match find_deb(debs, "busybox")
            .or_else(|| find_deb(Path::new("/var/cache/apt/archives"), "busybox"))
        {
            Some(d) => d,
            None => {
                let (ok, out) = {
                    let o = Command::new("apt-get")
                        .args(["download", "busybox"])
                        .current_dir(debs)
                        .output()
                        .context("cannot run apt-get")?;
                    (
                        o.status.success(),
                        String::from_utf8_lossy(&o.stderr).into_owned(),
                    )
                };
                if !ok {
                    bail!("apt-get download busybox failed: {}", out.trim());
                }
                find_deb(debs, "busybox").context("apt-get download busybox gave no .deb")?
            }
        };
        let x = debs.join("busybox-unpacked");
        let _ = std::fs::remove_dir_all(&x);
        crate::run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x))?;
        let bin = x.join("bin/busybox");
        let ldd = Command::new("ldd")
            .arg(&bin)
            .output()
            .context("cannot run ldd")?;
        if !ldd.status.success() {
            bail!("ldd {} failed", bin.display());
        }
        let mut libs = Vec::new();
        for line in String::from_utf8_lossy(&ldd.stdout).lines() {
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next(),
                None => line.split_whitespace().next(),
            };
            let Some(path) = path.filter(|p| p.starts_with('/')) else {
                continue;
            };
            let bytes = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
            libs.push((path.trim_start_matches('/').to_string(), bytes));
        }
        let list = Command::new(&bin).arg("--list-full").output()?;
        Ok(Busybox {
            binary: std::fs::read(&bin)?,
            applets: String::from_utf8_lossy(&list.stdout)
                .lines()
                .map(String::from)
                .collect(),
            libs,
        })
    };
    match dynamic() {
        Ok(b) => Ok(b),
        Err(e) => {
            eprintln!(
                "xtask: warning: no dynamic busybox ({e:#}); using busybox-static, whose sh \
                 runs applets in-process (the MaskedPaths spec will fail)"
            );
            let list = Command::new("/bin/busybox").arg("--list-full").output()?;
            Ok(Busybox {
                binary: std::fs::read("/bin/busybox").context("busybox-static is installed")?,
                applets: String::from_utf8_lossy(&list.stdout)
                    .lines()
                    .map(String::from)
                    .collect(),
                libs: Vec::new(),
            })
        }
    }
}

/// The busybox userland every image starts from: busybox with every applet
/// as a hard link (runc masks paths such as /bin/ls with a bind mount, which
/// must not hit busybox itself), pgrep and ipcs, and the usual directories
/// and account files.
fn base_entries(bb: &Busybox, tools: &BTreeMap<&str, Vec<u8>>) -> Result<Vec<Entry>> {
    let mut e = vec![
        dir("bin"),
        dir("sbin"),
        dir("lib"),
        dir("lib/x86_64-linux-gnu"),
        dir("lib64"),
        dir("usr"),
        dir("usr/bin"),
        dir("usr/sbin"),
        dir("usr/local"),
        dir("usr/local/bin"),
        dir("etc"),
        dir("dev"),
        dir("proc"),
        dir("sys"),
        dir("root"),
        dir("home"),
        dir("var"),
        dir("var/run"),
        dir("var/log"),
        Entry::Dir("tmp".into(), 0o1777),
        file("bin/busybox", &bb.binary, 0o755),
        file("etc/passwd", PASSWD.as_bytes(), 0o644),
        file("etc/group", GROUP.as_bytes(), 0o644),
    ];
    for (path, bytes) in &bb.libs {
        let mut parents = Vec::new();
        let mut p = Path::new(path).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            parents.push(d.to_string_lossy().into_owned());
            p = d.parent();
        }
        for d in parents.into_iter().rev() {
            if !e.iter().any(|x| matches!(x, Entry::Dir(n, _) if *n == d)) {
                e.push(dir(&d));
            }
        }
        e.push(file(path, bytes, 0o755));
    }
    for path in &bb.applets {
        let path = path.trim().trim_start_matches('/');
        if path.is_empty() || path == "bin/busybox" {
            continue;
        }
        e.push(Entry::Hardlink(path.to_string(), "bin/busybox".into()));
    }
    for name in ["pgrep", "ipcs"] {
        e.push(file(&format!("usr/bin/{name}"), &tools[name], 0o755));
    }
    Ok(e)
}

fn build_images(cdir: &Path, debs: &Path) -> Result<Vec<Image>> {
    let bb = busybox(debs)?;
    let mut tools = BTreeMap::new();
    for (name, src) in [
        ("pgrep", PGREP_C),
        ("ipcs", IPCS_C),
        ("websrv", WEBSRV_C),
        ("nnp", NNP_C),
        ("pause", PAUSE_C),
    ] {
        tools.insert(name, compile(cdir, name, src)?);
    }
    let base = layer(&base_entries(&bb, &tools)?)?;
    let with = |extra: Vec<Entry>| -> Result<Vec<Layer>> { Ok(vec![base.clone(), layer(&extra)?]) };
    let marker = |name: &str| -> Result<Vec<Layer>> { with(vec![file(name, b"", 0o644)]) };
    // The web server answering on `port` as nginx (its pid file and its
    // process title are what the tests look for).
    let nginx = |port: u16| RunConfig {
        env: vec![
            format!("WEB_PORT={port}"),
            "WEB_PIDFILE=/var/run/nginx.pid".into(),
            "WEB_TITLE=nginx: master process nginx -g daemon off;".into(),
        ],
        cmd: vec!["/usr/sbin/nginx", "-g", "daemon off;"],
        ..Default::default()
    };
    let sh = || RunConfig {
        cmd: vec!["sh"],
        ..Default::default()
    };
    const E2E: &str = "registry.k8s.io/e2e-test-images";
    const CRI: &str = "gcr.io/k8s-staging-cri-tools";
    let html = b"<html><body><h1>It works!</h1></body></html>\n";
    let mut images = vec![
        image(&format!("{E2E}/busybox:1.29-2"), &[], vec![base.clone()], sh())?,
        image(
            &format!("{E2E}/nginx:1.14-2"),
            &[],
            with(vec![
                file("usr/sbin/nginx", &tools["websrv"], 0o755),
                dir("usr/share/nginx"),
                dir("usr/share/nginx/html"),
                file("usr/share/nginx/html/index.html", html, 0o644),
            ])?,
            nginx(80),
        )?,
        image(
            &format!("{CRI}/hostnet-nginx-amd64:latest"),
            &[],
            with(vec![file("usr/sbin/nginx", &tools["websrv"], 0o755)])?,
            nginx(12003),
        )?,
        image(
            &format!("{E2E}/httpd:2.4.39-4"),
            &[],
            with(vec![
                dir("usr/local/apache2"),
                dir("usr/local/apache2/bin"),
                file("usr/local/apache2/bin/httpd", &tools["websrv"], 0o755),
            ])?,
            RunConfig {
                env: vec![
                    "WEB_PORT=80".into(),
                    "WEB_BANNER=AH00558: httpd: Could not reliably determine the server's fully qualified domain name".into(),
                ],
                cmd: vec!["/usr/local/apache2/bin/httpd", "-DFOREGROUND"],
                ..Default::default()
            },
        )?,
        image(
            &format!("{E2E}/nonewprivs:1.3"),
            &[],
            with(vec![file("usr/local/bin/nnp", &tools["nnp"], 0o4755)])?,
            RunConfig {
                cmd: vec!["/usr/local/bin/nnp"],
                ..Default::default()
            },
        )?,
        image(
            "registry.k8s.io/pause:3.10",
            &[],
            vec![layer(&[file("pause", &tools["pause"], 0o755)])?],
            RunConfig {
                user: "65535:65535",
                entrypoint: vec!["/pause"],
                ..Default::default()
            },
        )?,
        image(&format!("{CRI}/test-image-tag:test"), &[], marker("test")?, sh())?,
        image(&format!("{CRI}/test-image-tag:all"), &[], marker("all")?, sh())?,
        image(&format!("{CRI}/test-image-latest:latest"), &[], marker("test-image-latest")?, sh())?,
        image(&format!("{CRI}/test-image-tags:1"), &["2", "3"], marker("same-image")?, sh())?,
    ];
    for n in 1..=3 {
        images.push(image(
            &format!("{CRI}/test-image-{n}:latest"),
            &[],
            marker(&format!("test-image-{n}"))?,
            sh(),
        )?);
    }
    for (name, user) in [
        ("test-image-user-uid", "1002"),
        ("test-image-user-username", "www-data"),
        ("test-image-user-uid-group", "1003:1004"),
        ("test-image-user-username-group", "www-data:1004"),
    ] {
        images.push(image(
            &format!("{CRI}/{name}:latest"),
            &[],
            vec![base.clone()],
            RunConfig {
                user,
                cmd: vec!["sh"],
                ..Default::default()
            },
        )?);
    }
    images.push(image(
        &format!("{CRI}/test-image-predefined-group:latest"),
        &[],
        with(vec![
            file(
                "etc/passwd",
                format!(
                    "{PASSWD}default-user:x:1000:1000:default-user:/home/default-user:/bin/sh\n"
                )
                .as_bytes(),
                0o644,
            ),
            file(
                "etc/group",
                format!(
                    "{GROUP}default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n"
                )
                .as_bytes(),
                0o644,
            ),
        ])?,
        RunConfig {
            user: "1000",
            cmd: vec!["sh"],
            ..Default::default()
        },
    )?);
    Ok(images)
}
