//! `cargo xtask bench pull`: a cold pull of a ~100 MB multi-layer image
//! (random content) from a local docker-registry, by criusd and, in the same
//! run and from the same registry, by Debian's containerd 1.6 (`ctr images
//! pull --plain-http`), each on a fresh root. Reports wall time, peak RSS
//! and CPU time (user and system: the daemon's own and its reaped
//! children's, e.g. containerd's `unpigz`, plus the `ctr` client's).
//!
//! Then, on each runtime through its CRI ImageService (containerd's CRI
//! plugin), with the ~100 MB image still present: a pull of a ~370 MB image
//! whose one layer holds 20,000 files, ImageFsInfo latency (p50/p99/max of
//! 200 calls spread over 10 s, so a periodic usage refresh falls among
//! them), the time RemoveImage of that image takes, the time until
//! ImageFsInfo shows it gone, and a pull of it again.
//!
//! Ignored by default (it is a benchmark); run it in release mode:
//! `cargo test --release -p crius-cri-server --test images_bench -- --ignored --nocapture`.

mod common;

use common::images::{fs_used, wait_fs_used};
use common::registry::{
    ensure_binary, image, is_root, layer, many_file_entries, random_bytes, Compression, Entry,
    Registry,
};
use common::Daemon;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::{ImageFsInfoRequest, ImageSpec, PullImageRequest, RemoveImageRequest};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LAYERS: usize = 4;
const FILES_PER_LAYER: usize = 5;
const FILE_SIZE: usize = 5 << 20;
const FILE_NAMES: [&str; FILES_PER_LAYER] = ["blob0", "blob1", "blob2", "blob3", "blob4"];
/// The many-file image: one layer of MANY_FILES files of MANY_FILE_SIZE
/// random bytes (~370 MB), 1,000 files a directory.
const MANY_FILES: usize = 20_000;
const MANY_FILE_SIZE: usize = 18 << 10;
/// ImageFsInfo calls timed, and the pause between two.
const FS_INFO_CALLS: usize = 200;
const FS_INFO_GAP: Duration = Duration::from_millis(50);

/// Peak resident set size of a live process, from /proc (bytes).
fn vm_hwm(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// CPU time a live process used so far, its reaped children's included:
/// (user, system), from /proc/<pid>/stat.
fn cpu_of(pid: u32) -> (Duration, Duration) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces): state is
    // field 3, utime 14, stime 15, cutime 16, cstime 17.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    if f.len() < 4 {
        return (Duration::ZERO, Duration::ZERO);
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let t = |ticks: u64| Duration::from_secs_f64(ticks as f64 / hz);
    (t(f[0] + f[2]), t(f[1] + f[3]))
}

/// CPU used between two readings of [`cpu_of`].
fn cpu_since(pid: u32, before: (Duration, Duration)) -> (Duration, Duration) {
    let now = cpu_of(pid);
    (
        now.0.saturating_sub(before.0),
        now.1.saturating_sub(before.1),
    )
}

fn tv(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// What [`run_measured`] measured of a command.
struct Measured {
    ok: bool,
    wall: Duration,
    peak_rss: u64,
    /// (user, system) CPU of the command.
    cpu: (Duration, Duration),
    stderr: String,
}

/// Runs a command to completion and measures it. Its output goes to files
/// so it never blocks.
fn run_measured(cmd: &mut Command, log: &Path) -> Measured {
    let start = Instant::now();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("spawn");
    let pid = child.id() as libc::pid_t;
    // Reap with wait4 to read the child's own peak RSS.
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out buffer.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our un-reaped child.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let elapsed = start.elapsed();
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    drop(child);
    Measured {
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        wall: elapsed,
        peak_rss: usage.ru_maxrss as u64 * 1024,
        cpu: (tv(usage.ru_utime), tv(usage.ru_stime)),
        stderr: std::fs::read_to_string(log).unwrap_or_default(),
    }
}

/// A containerd daemon on temporary directories; stopped on drop.
struct Containerd {
    child: Option<Child>,
    socket: std::path::PathBuf,
}

impl Containerd {
    /// containerd with its CRI plugin (images only: no CNI configured),
    /// `registry` a plain-HTTP mirror of itself.
    fn start(dir: &Path, registry: &str) -> Containerd {
        ensure_binary("containerd", "containerd");
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"{head}[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{d}/cni-bin"
    conf_dir = "{d}/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{registry}"]
    endpoint = ["http://{registry}"]
"#,
                head = crius_testkit::containerd_config_head(dir),
                d = dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("containerd.log")).unwrap())
            .spawn()
            .expect("spawn containerd");
        let c = Containerd {
            child: Some(child),
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&c.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "containerd did not start: {}",
                std::fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM first, SIGKILL after 20 s.
            crius_testkit::terminate(&mut c, Duration::from_secs(20));
        }
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run with `cargo xtask bench pull`"]
async fn bench_pull() {
    if !is_root() {
        eprintln!("skipping bench_pull: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    // The image: LAYERS gzip layers of random files, ~100 MB in all.
    let layers: Vec<_> = (0..LAYERS)
        .map(|l| {
            let entries: Vec<Entry> = FILE_NAMES
                .iter()
                .enumerate()
                .map(|(f, name)| {
                    Entry::File(
                        name,
                        random_bytes((l * FILES_PER_LAYER + f) as u64 + 1, FILE_SIZE),
                        0o644,
                    )
                })
                .collect();
            layer(&entries, Compression::Gzip)
        })
        .collect();
    let total: usize = layers.iter().map(|l| l.blob.len()).sum();
    let img = image(layers, "amd64", "");
    let reg = Registry::start(&dir.join("registry"), None);
    let (_, config) = reg.push_image("bench/big", "v1", &img);
    let reference = format!("{}/bench/big:v1", reg.addr);
    let many = many_file_image();
    reg.push_image("bench/many", "v1", &many);
    let many_reference = format!("{}/bench/many:v1", reg.addr);

    // crius, fresh root.
    let crius_dir = dir.join("crius");
    std::fs::create_dir_all(&crius_dir).unwrap();
    let daemon = Daemon::start(
        &crius_dir,
        &format!(
            "[registry]\nconfig_path = \"{d}/certs.d\"\n[cni]\nconf_dir = \"{d}/net.d\"\nbin_dirs = [\"{d}/cni-bin\"]\n",
            d = crius_dir.display()
        ),
    );
    let mut c = daemon.images().await;
    let crius_pid = daemon.child.as_ref().map(|c| c.id()).unwrap_or(0);
    let cpu_before = cpu_of(crius_pid);
    let start = Instant::now();
    let id = c
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: reference.clone(),
                ..Default::default()
            }),
            auth: None,
            sandbox_config: None,
        })
        .await
        .expect("crius pull")
        .into_inner()
        .image_ref;
    let crius_time = start.elapsed();
    let crius_cpu = cpu_since(crius_pid, cpu_before);
    assert_eq!(id, config);
    let crius_rss = vm_hwm(crius_pid);
    let crius_part = image_part(&mut c, &many_reference).await;
    drop(c);
    drop(daemon);

    // containerd 1.6, fresh root, same registry.
    ensure_binary("ctr", "containerd");
    let ctrd = Containerd::start(&dir.join("containerd"), &reg.addr);
    let ctrd_cpu_before = cpu_of(ctrd.pid());
    let ctr = run_measured(
        Command::new("ctr")
            .arg("--address")
            .arg(&ctrd.socket)
            .args(["-n", "bench", "images", "pull", "--plain-http"])
            .arg(&reference),
        &dir.join("ctr.log"),
    );
    assert!(ctr.ok, "ctr pull failed: {}", ctr.stderr);
    let ctrd_cpu = cpu_since(ctrd.pid(), ctrd_cpu_before);
    let containerd_cpu = (ctrd_cpu.0 + ctr.cpu.0, ctrd_cpu.1 + ctr.cpu.1);
    let containerd_rss = vm_hwm(ctrd.pid());
    let listed = Command::new("ctr")
        .arg("--address")
        .arg(&ctrd.socket)
        .args(["-n", "bench", "images", "ls", "-q"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&reference));
    let mut cc = ImageServiceClient::new(common::connect(&ctrd.socket).await);
    let containerd_part = image_part(&mut cc, &many_reference).await;
    drop(cc);
    drop(ctrd);

    println!();
    println!(
        "cold pull of {reference}: {LAYERS} gzip layers, {} compressed",
        mib(total as u64)
    );
    println!(
        "{:<16} {:>10} {:>10} {:>18} {:>18} {:>10} {:>10}",
        "runtime", "wall time", "MB/s", "peak RSS daemon", "peak RSS client", "user CPU", "sys CPU"
    );
    let mbs = |t: Duration| total as f64 / 1e6 / t.as_secs_f64().max(1e-9);
    println!(
        "{:<16} {:>9.2}s {:>10.1} {:>18} {:>18} {:>9.2}s {:>9.2}s",
        "crius",
        crius_time.as_secs_f64(),
        mbs(crius_time),
        mib(crius_rss),
        "-",
        crius_cpu.0.as_secs_f64(),
        crius_cpu.1.as_secs_f64(),
    );
    println!(
        "{:<16} {:>9.2}s {:>10.1} {:>18} {:>18} {:>9.2}s {:>9.2}s",
        "containerd 1.6",
        ctr.wall.as_secs_f64(),
        mbs(ctr.wall),
        mib(containerd_rss),
        mib(ctr.peak_rss),
        containerd_cpu.0.as_secs_f64(),
        containerd_cpu.1.as_secs_f64(),
    );
    println!("(CPU: the daemon's and its reaped children's; containerd's with the ctr client's)");
    println!();
    println!(
        "{reference} present, then {many_reference}: one layer of {MANY_FILES} files, {} (CRI ImageService)",
        mib((MANY_FILES * MANY_FILE_SIZE) as u64)
    );
    println!(
        "{:<16} {:>8} {:>10} {:>24} {:>9} {:>10} {:>8}",
        "runtime", "pull", "in fsinfo", "ImageFsInfo p50/p99/max", "Remove", "gone from", "re-pull"
    );
    for (name, p) in [("crius", &crius_part), ("containerd 1.6", &containerd_part)] {
        println!(
            "{:<16} {:>7.2}s {:>9.2}s {:>24} {:>8.3}s {:>9.2}s {:>7.2}s",
            name,
            p.pull.as_secs_f64(),
            p.visible.as_secs_f64(),
            format!(
                "{:.2}/{:.2}/{:.2} ms",
                ms(p.fs_info[p.fs_info.len() / 2]),
                ms(p.fs_info[p.fs_info.len() * 99 / 100]),
                ms(*p.fs_info.last().unwrap())
            ),
            p.remove.as_secs_f64(),
            p.gone.as_secs_f64(),
            p.repull.as_secs_f64(),
        );
    }
    println!(
        "(in fsinfo: from the end of the pull until ImageFsInfo counts the layer; gone from: from the start of RemoveImage until it no longer does)"
    );
    drop(reg);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One image of MANY_FILES random files in directories of 1,000.
fn many_file_image() -> common::registry::TestImage {
    let entries = many_file_entries(MANY_FILES, 1000, |f| {
        random_bytes(1_000_000 + f as u64, MANY_FILE_SIZE)
    });
    image(vec![layer(&entries, Compression::Gzip)], "amd64", "")
}

/// What the CRI image part measured on one runtime.
struct ImagePart {
    pull: Duration,
    visible: Duration,
    /// Sorted.
    fs_info: Vec<Duration>,
    remove: Duration,
    gone: Duration,
    repull: Duration,
}

/// Polls ImageFsInfo (at most 60 s) until `cond` holds on the used
/// bytes; the time it took.
async fn until_used(
    c: &mut ImageServiceClient<tonic::transport::Channel>,
    what: &str,
    cond: impl Fn(u64) -> bool,
) -> Duration {
    wait_fs_used(c, what, Duration::from_secs(60), |b, _| cond(b))
        .await
        .0
}

async fn cri_pull(c: &mut ImageServiceClient<tonic::transport::Channel>, reference: &str) {
    c.pull_image(PullImageRequest {
        image: Some(ImageSpec {
            image: reference.to_string(),
            ..Default::default()
        }),
        auth: None,
        sandbox_config: None,
    })
    .await
    .unwrap_or_else(|e| panic!("pull {reference}: {e}"));
}

/// Pull, ImageFsInfo latency, RemoveImage and a pull again of the
/// many-file image, through the CRI ImageService of one runtime.
async fn image_part(
    c: &mut ImageServiceClient<tonic::transport::Channel>,
    reference: &str,
) -> ImagePart {
    let size = (MANY_FILES * MANY_FILE_SIZE) as u64;
    // Settled: what is there before (the other image) is counted.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (base, _) = fs_used(c).await;
    let start = Instant::now();
    cri_pull(c, reference).await;
    let pull = start.elapsed();
    let visible = until_used(c, "the pulled image", |u| u >= base + size).await;
    let mut fs_info = Vec::with_capacity(FS_INFO_CALLS);
    for _ in 0..FS_INFO_CALLS {
        let t = Instant::now();
        c.image_fs_info(ImageFsInfoRequest {})
            .await
            .expect("ImageFsInfo");
        fs_info.push(t.elapsed());
        tokio::time::sleep(FS_INFO_GAP).await;
    }
    fs_info.sort();
    let (full, _) = fs_used(c).await;
    let start = Instant::now();
    c.remove_image(RemoveImageRequest {
        image: Some(ImageSpec {
            image: reference.to_string(),
            ..Default::default()
        }),
    })
    .await
    .expect("RemoveImage");
    let remove = start.elapsed();
    let gone = remove + until_used(c, "the removed image", |u| u + size <= full).await;
    let start = Instant::now();
    cri_pull(c, reference).await;
    let repull = start.elapsed();
    ImagePart {
        pull,
        visible,
        fs_info,
        remove,
        gone,
        repull,
    }
}
