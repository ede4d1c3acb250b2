//! Real network namespaces (needs root; skipped otherwise).

use crius_netns::netns::{self, NetNs};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Removes the namespace even when the test fails half-way.
struct NsGuard(PathBuf);

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = netns::remove(&self.0);
    }
}

fn mountinfo_mentions(path: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let needle = path.to_str().unwrap();
    info.lines().any(|l| l.split(' ').nth(4) == Some(needle))
}

fn interfaces(dev: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_to_string(dev)
        .unwrap()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|n| n.trim().to_string()))
        .collect();
    names.sort();
    names
}

#[test]
fn create_run_in_remove() {
    if !is_root() {
        eprintln!("skipping create_run_in_remove: needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/pod-netns");
    let _guard = NsGuard(path.clone());
    let host_ifaces = interfaces("/proc/thread-self/net/dev");

    let ns = netns::create(&path).unwrap();
    assert_eq!(ns.path(), path);
    assert!(netns::is_netns(&path));
    assert!(mountinfo_mentions(&path), "netns mount missing");
    let host_ino = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
    let pod_ino = std::fs::metadata(&path).unwrap().ino();
    assert_ne!(host_ino, pod_ino, "namespace must be new");

    // The calling thread never moved.
    let thread_ino = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
    assert_eq!(thread_ino, host_ino);

    // Inside: the thread's namespace is the pod's, and only `lo` exists.
    // (/sys/class/net shows the namespace sysfs was mounted in, so the
    // per-thread /proc view is the one to read.)
    let (inside_ino, ifaces) = netns::run_in(&path, || {
        let ino = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
        (ino, interfaces("/proc/thread-self/net/dev"))
    })
    .unwrap();
    assert_eq!(inside_ino, pod_ino);
    assert_eq!(ifaces, vec!["lo".to_string()]);
    // `lo` is up from the start: localhost works with no CNI plugin run.
    let echoed = netns::run_in(&path, || {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        let (mut s, _) = listener.accept()?;
        c.write_all(b"ping")?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf)?;
        Ok::<_, std::io::Error>(buf)
    })
    .unwrap()
    .expect("connect to 127.0.0.1 in a new namespace");
    assert_eq!(&echoed, b"ping");
    assert_eq!(interfaces("/proc/thread-self/net/dev"), host_ifaces);

    // A process spawned inside inherits the namespace.
    let out = netns::run_in(&path, || {
        std::process::Command::new("readlink")
            .arg("/proc/self/ns/net")
            .output()
    })
    .unwrap()
    .unwrap();
    let link = String::from_utf8_lossy(&out.stdout);
    assert!(link.contains(&pod_ino.to_string()), "{link}");

    // Creating it again is refused and leaves the namespace alone.
    assert!(matches!(
        netns::create(&path),
        Err(netns::NetnsError::AlreadyExists { .. })
    ));
    assert!(netns::is_netns(&path));
    NetNs::open(&path).unwrap();

    netns::remove(&path).unwrap();
    assert!(!path.exists());
    assert!(!netns::is_netns(&path));
    assert!(!mountinfo_mentions(&path), "netns mount left behind");
    netns::remove(&path).unwrap();
    assert!(matches!(
        netns::run_in(&path, || ()),
        Err(netns::NetnsError::NotNetns { .. })
    ));
}

#[test]
fn create_reuses_a_leftover_plain_file_and_rolls_back_on_failure() {
    if !is_root() {
        eprintln!("skipping create_reuses_a_leftover_plain_file: needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leftover");
    let _guard = NsGuard(path.clone());
    std::fs::write(&path, b"").unwrap();
    let ns = netns::create(&path).unwrap();
    assert!(netns::is_netns(ns.path()));
    ns.remove().unwrap();
    assert!(!mountinfo_mentions(&path));

    // A directory cannot take a file bind mount: the call fails and the
    // directory is not touched (it was not created by the call).
    let as_dir = dir.path().join("dir");
    std::fs::create_dir(&as_dir).unwrap();
    assert!(netns::create(&as_dir).is_err());
    assert!(as_dir.is_dir());
    assert!(!mountinfo_mentions(&as_dir));
}
