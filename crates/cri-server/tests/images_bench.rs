//! `cargo xtask bench pull`: a cold pull of a ~100 MB multi-layer image
//! (random content) from a local docker-registry, by criusd and, in the same
//! run and from the same registry, by Debian's containerd 1.6 (`ctr images
//! pull --plain-http`), each on a fresh root. Reports wall time and peak RSS.
//!
//! Ignored by default (it is a benchmark); run it in release mode:
//! `cargo test --release -p crius-cri-server --test images_bench -- --ignored --nocapture`.

mod common;

use common::registry::{ensure_binary, image, is_root, layer, Compression, Entry, Registry};
use common::Daemon;
use k8s_cri::v1::{ImageSpec, PullImageRequest};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const LAYERS: usize = 4;
const FILES_PER_LAYER: usize = 5;
const FILE_SIZE: usize = 5 << 20;
const FILE_NAMES: [&str; FILES_PER_LAYER] = ["blob0", "blob1", "blob2", "blob3", "blob4"];

/// Incompressible bytes from a xorshift generator (no dependency needed).
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
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

/// Runs a command to completion; returns (success, wall time, peak RSS of
/// the command, its stderr). Its output goes to files so it never blocks.
fn run_measured(cmd: &mut Command, log: &Path) -> (bool, Duration, u64, String) {
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
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    let output = std::fs::read_to_string(log).unwrap_or_default();
    (ok, elapsed, usage.ru_maxrss as u64 * 1024, output)
}

/// A containerd daemon on temporary directories; stopped on drop.
struct Containerd {
    child: Option<Child>,
    socket: std::path::PathBuf,
}

impl Containerd {
    fn start(dir: &Path) -> Containerd {
        ensure_binary("containerd", "containerd");
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd-ttrpc.sock"
[debug]
  address = ""
"#,
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
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
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
    assert_eq!(id, config);
    let crius_rss = vm_hwm(daemon.child.as_ref().map(|c| c.id()).unwrap_or(0));
    drop(c);
    drop(daemon);

    // containerd 1.6, fresh root, same registry.
    ensure_binary("ctr", "containerd");
    let ctrd = Containerd::start(&dir.join("containerd"));
    let (ok, ctr_time, ctr_rss, log) = run_measured(
        Command::new("ctr")
            .arg("--address")
            .arg(&ctrd.socket)
            .args(["-n", "bench", "images", "pull", "--plain-http"])
            .arg(&reference),
        &dir.join("ctr.log"),
    );
    assert!(ok, "ctr pull failed: {log}");
    let containerd_rss = vm_hwm(ctrd.pid());
    let listed = Command::new("ctr")
        .arg("--address")
        .arg(&ctrd.socket)
        .args(["-n", "bench", "images", "ls", "-q"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&reference));
    drop(ctrd);

    println!();
    println!(
        "cold pull of {reference}: {LAYERS} gzip layers, {} compressed",
        mib(total as u64)
    );
    println!(
        "{:<16} {:>10} {:>18} {:>18}",
        "runtime", "wall time", "peak RSS daemon", "peak RSS client"
    );
    println!(
        "{:<16} {:>9.2}s {:>18} {:>18}",
        "crius",
        crius_time.as_secs_f64(),
        mib(crius_rss),
        "-"
    );
    println!(
        "{:<16} {:>9.2}s {:>18} {:>18}",
        "containerd 1.6",
        ctr_time.as_secs_f64(),
        mib(containerd_rss),
        mib(ctr_rss)
    );
    drop(reg);
}
