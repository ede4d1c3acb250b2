//! The floor: the same pod work done with raw `runc run -d` (a pause
//! container in a pre-made netns, then a busybox container joining its
//! network, IPC and UTS namespaces); then `runc kill` of both, a wait for
//! their exit (pidfd) and `runc delete` of both.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Floor {
    dir: PathBuf,
    runc_root: PathBuf,
    rootfs: PathBuf,
    base: serde_json::Value,
    netns: Vec<String>,
    seq: AtomicUsize,
}

/// One running floor "pod".
pub struct FloorPod {
    /// (container id, init pid): the container first, then the pause.
    members: Vec<(String, i32)>,
}

fn netns_name(i: usize) -> String {
    format!("crius-bench-{}-{i}", std::process::id())
}

impl Floor {
    /// Unpacks the busybox layer once and pre-creates `slots` netns.
    pub fn new(dir: &Path, layer_tar: &[u8], slots: usize) -> Result<Floor> {
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(&rootfs)?;
        tar::Archive::new(layer_tar).unpack(&rootfs)?;
        let spec_dir = dir.join("spec");
        std::fs::create_dir_all(&spec_dir)?;
        let out = Command::new("runc")
            .args(["spec", "--bundle"])
            .arg(&spec_dir)
            .output()
            .context("runc spec (apt-get install runc)")?;
        if !out.status.success() {
            bail!("runc spec: {}", String::from_utf8_lossy(&out.stderr));
        }
        let base: serde_json::Value =
            serde_json::from_slice(&std::fs::read(spec_dir.join("config.json"))?)?;
        // The runtime's state and the bundles on tmpfs, as containerd's
        // and criusd's (see crate::tmpfs).
        for d in ["runc-root", "bundles"] {
            crate::tmpfs(&dir.join(d))?;
        }
        let mut floor = Floor {
            dir: dir.to_path_buf(),
            runc_root: dir.join("runc-root"),
            rootfs,
            base,
            netns: Vec::new(),
            seq: AtomicUsize::new(0),
        };
        for i in 0..slots {
            let name = netns_name(i);
            let ok = Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                bail!("ip netns add {name} failed");
            }
            floor.netns.push(name);
        }
        Ok(floor)
    }

    fn spec(&self, id: &str, args: &[&str], joins: &[(&str, String)]) -> serde_json::Value {
        let mut spec = self.base.clone();
        spec["process"]["terminal"] = false.into();
        spec["process"]["args"] = args.iter().map(|a| a.to_string()).collect();
        spec["root"] = serde_json::json!({"path": self.rootfs, "readonly": true});
        spec["hostname"] = "floor".into();
        spec["linux"]["cgroupsPath"] = format!("/crius-bench/floor/{id}").into();
        if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
            for n in ns.iter_mut() {
                let kind = n["type"].as_str().unwrap_or("").to_string();
                if let Some((_, path)) = joins.iter().find(|(k, _)| *k == kind) {
                    n["path"] = path.clone().into();
                }
            }
        }
        spec
    }

    fn runc(&self, args: &[&str]) -> Result<()> {
        let log = self.dir.join("runc.log");
        let status = Command::new("runc")
            .arg("--root")
            .arg(&self.runc_root)
            .arg("--log")
            .arg(&log)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("runc")?;
        if !status.success() {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(3).collect();
            bail!("runc {args:?}: {status}: {tail:?}");
        }
        Ok(())
    }

    fn run_detached(&self, id: &str, spec: &serde_json::Value) -> Result<()> {
        let bundle = self.dir.join("bundles").join(id);
        std::fs::create_dir_all(&bundle)?;
        std::fs::write(bundle.join("config.json"), serde_json::to_vec(spec)?)?;
        let bundle = bundle.display().to_string();
        let pid_file = format!("{bundle}/pid");
        self.runc(&[
            "run",
            "-d",
            "--pid-file",
            &pid_file,
            "--bundle",
            &bundle,
            id,
        ])
    }

    /// Pause container then busybox container; slot `i` picks the netns.
    pub fn start_pod(&self, i: usize) -> Result<FloorPod> {
        let n = self.seq.fetch_add(1, Ordering::SeqCst);
        let netns = format!(
            "/run/netns/{}",
            self.netns
                .get(i % self.netns.len().max(1))
                .context("no netns")?
        );
        let pause = format!("floor{n}-p");
        let spec = self.spec(
            &pause,
            &["/bin/busybox", "sleep", "2147483647"],
            &[("network", netns.clone())],
        );
        self.run_detached(&pause, &spec)?;
        let mut pod = FloorPod {
            members: vec![(pause.clone(), 0)],
        };
        let ctr = format!("floor{n}-c");
        let started = || -> Result<()> {
            let pid = self.pid_of(&pause)?;
            pod.members[0].1 = pid;
            let spec = self.spec(
                &ctr,
                &[
                    "/bin/sh",
                    "-c",
                    "trap 'exit 0' TERM; /bin/busybox sleep 3600 & wait",
                ],
                &[
                    ("network", netns),
                    ("ipc", format!("/proc/{pid}/ns/ipc")),
                    ("uts", format!("/proc/{pid}/ns/uts")),
                ],
            );
            self.run_detached(&ctr, &spec)?;
            let cpid = self.pid_of(&ctr)?;
            pod.members.insert(0, (ctr.clone(), cpid));
            Ok(())
        };
        if let Err(e) = started() {
            let _ = self.remove_pod(&pod);
            return Err(e);
        }
        Ok(pod)
    }

    fn pid_of(&self, id: &str) -> Result<i32> {
        let path = self.dir.join("bundles").join(id).join("pid");
        let text = std::fs::read_to_string(&path)?;
        text.trim()
            .parse()
            .with_context(|| format!("{}: {text:?}", path.display()))
    }

    /// `runc kill KILL` of both, a wait for both inits to exit, `runc
    /// delete` of both. (`runc delete -f` would sleep 100 ms per container
    /// before it first checks whether the process is gone.)
    pub fn remove_pod(&self, pod: &FloorPod) -> Result<()> {
        let mut first = Ok(());
        let mut keep = |r: Result<()>| {
            if first.is_ok() {
                first = r;
            }
        };
        for (id, pid) in &pod.members {
            if *pid > 0 {
                keep(self.runc(&["kill", id, "KILL"]));
                keep(wait_exit(*pid));
            }
        }
        for (id, _) in &pod.members {
            keep(self.runc(&["delete", "-f", id]));
            let _ = std::fs::remove_dir_all(self.dir.join("bundles").join(id));
        }
        first
    }
}

/// Waits (at most 10 s) until `pid` exits; it is not our child, so this
/// polls a pidfd, which turns readable when the process exits.
fn wait_exit(pid: i32) -> Result<()> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        // Already gone (ESRCH) is fine.
        return Ok(());
    }
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; fd is ours and closed right after.
    let r = unsafe { libc::poll(&mut pfd, 1, 10_000) };
    // SAFETY: closing the fd pidfd_open returned.
    unsafe { libc::close(fd) };
    if r == 1 {
        Ok(())
    } else {
        bail!("pid {pid} did not exit within 10 s after SIGKILL")
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        // Containers a failed step left behind.
        if let Ok(entries) = std::fs::read_dir(&self.runc_root) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().into_owned();
                let _ = self.runc(&["delete", "-f", &id]);
            }
        }
        for name in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}
