//! The shim under Debian's real containerd (1.6, task API v2): `ctr run`,
//! `ctr task exec` and `ctr task kill` with runtime `io.containerd.crius.v2`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};

const IMAGE: &str = "crius.test/busybox:latest";

struct Containerd {
    tmp: tempfile::TempDir,
    child: Option<Child>,
    sock: PathBuf,
    ns: String,
}

impl Containerd {
    fn start() -> Containerd {
        ensure("containerd", "containerd");
        ensure("ctr", "containerd");
        let tmp = tempfile::Builder::new()
            .prefix("ctd")
            .tempdir_in("/tmp")
            .unwrap();
        let t = tmp.path();
        let bin = t.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(SHIM, bin.join("containerd-shim-crius-v2")).unwrap();
        let sock = t.join("c.sock");
        let cfg = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = "{t}/debug.sock"
[metrics]
  address = ""
"#,
            root = t.join("root").display(),
            state = t.join("state").display(),
            sock = sock.display(),
            t = t.display(),
        );
        std::fs::write(t.join("config.toml"), cfg).unwrap();
        let log = std::fs::File::create(t.join("containerd.log")).unwrap();
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = Command::new("containerd")
            .arg("--config")
            .arg(t.join("config.toml"))
            .env("PATH", &path)
            .env("CRIUS_SHIM_SOCKET_DIR", t.join("s"))
            .env("CRIUS_SHIM_STATE_DIR", t.join("shimstate"))
            .env("CRIUS_SHIM_RUNTIME_ROOT", t.join("runc"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let c = Containerd {
            tmp,
            child: Some(child),
            sock,
            ns: format!("crius{}", std::process::id()),
        };
        assert!(
            eventually(Duration::from_secs(30), || c
                .ctr(&["version"])
                .status
                .success()),
            "containerd did not come up: {}",
            read(&c.tmp.path().join("containerd.log"))
        );
        c
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.sock)
            .arg("--namespace")
            .arg(&self.ns)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        assert!(
            o.status.success(),
            "ctr {args:?}: {}\n{}\ncontainerd log:\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            read(&self.tmp.path().join("containerd.log"))
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let t = self.tmp.path().to_path_buf();
        // Shims and containers started for this containerd.
        let runc_root = t.join("runc").join(&self.ns);
        for e in std::fs::read_dir(&runc_root)
            .into_iter()
            .flatten()
            .flatten()
        {
            let id = e.file_name().to_string_lossy().into_owned();
            for args in [
                vec!["kill", "--all", &id, "9"],
                vec!["delete", "--force", &id],
            ] {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&runc_root)
                    .args(&args)
                    .output();
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for p in shim_pids(&t) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        unmount_below(&t);
        // ctr's FIFO directory, when nothing else uses it.
        let _ = std::fs::remove_dir("/run/containerd/fifo");
        let _ = std::fs::remove_dir("/run/containerd");
        for e in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let d = e.path().join(&self.ns);
            for c in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let _ = std::fs::remove_dir(c.path());
            }
            let _ = std::fs::remove_dir(&d);
        }
    }
}

/// Processes whose environment names `dir` (the shims of this test).
fn shim_pids(dir: &Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            let exe = std::fs::read_link(format!("/proc/{p}/exe")).unwrap_or_default();
            let env = std::fs::read(format!("/proc/{p}/environ")).unwrap_or_default();
            exe.to_string_lossy().contains("containerd-shim-crius-v2")
                && String::from_utf8_lossy(&env).contains(&needle)
        })
        .collect()
}

/// A docker-archive image with busybox.
fn image_archive(dir: &Path) -> PathBuf {
    let layer_dir = dir.join("layer");
    write_rootfs(&layer_dir);
    let img = dir.join("img");
    std::fs::create_dir_all(&img).unwrap();
    let st = Command::new("tar")
        .arg("-C")
        .arg(layer_dir.join("rootfs"))
        .arg("-cf")
        .arg(img.join("layer.tar"))
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let diff = hex::encode(Sha256::digest(
        std::fs::read(img.join("layer.tar")).unwrap(),
    ));
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{diff}")]}
    });
    let config = serde_json::to_vec(&config).unwrap();
    let cfg_name = format!("{}.json", hex::encode(Sha256::digest(&config)));
    std::fs::write(img.join(&cfg_name), &config).unwrap();
    let manifest =
        serde_json::json!([{"Config": cfg_name, "RepoTags": [IMAGE], "Layers": ["layer.tar"]}]);
    std::fs::write(
        img.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    let out = dir.join("image.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&img)
        .arg("-cf")
        .arg(&out)
        .args(["manifest.json", &cfg_name, "layer.tar"])
        .status()
        .unwrap();
    assert!(st.success());
    out
}

#[test]
fn ctr_run_exec_kill() {
    if !root_or_skip("containerd") {
        return;
    }
    prerequisites();
    let c = Containerd::start();
    let archive = image_archive(c.tmp.path());
    c.ctr_ok(&["images", "import", &archive.to_string_lossy()]);

    // ctr run --rm: output and exit code come back through the shim.
    let out = c.ctr_ok(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.crius.v2",
        IMAGE,
        "hello1",
        "echo",
        "hello",
    ]);
    assert_eq!(out.trim(), "hello");
    let o = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.crius.v2",
        IMAGE,
        "exit7",
        "sh",
        "-c",
        "exit 7",
    ]);
    assert_eq!(
        o.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // A long-running task: exec into it, then kill it.
    c.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        "io.containerd.crius.v2",
        IMAGE,
        "long",
        "sleep",
        "100000",
    ]);
    let out = c.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "long",
        "sh",
        "-c",
        "echo exec-hello",
    ]);
    assert_eq!(out.trim(), "exec-hello");
    let o = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e2",
        "long",
        "sh",
        "-c",
        "exit 5",
    ]);
    assert_eq!(o.status.code(), Some(5));
    assert!(c.ctr_ok(&["task", "ls"]).contains("RUNNING"));
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "long"]);
    assert!(
        eventually(Duration::from_secs(20), || c
            .ctr_ok(&["task", "ls"])
            .contains("STOPPED")),
        "task did not stop: {}",
        c.ctr_ok(&["task", "ls"])
    );
    c.ctr_ok(&["task", "delete", "long"]);
    c.ctr_ok(&["container", "delete", "long"]);
    // containerd logged no error about the shim (events, task API).
    let log = read(&c.tmp.path().join("containerd.log"));
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("level=error")).collect();
    assert!(
        errors.is_empty(),
        "containerd errors:\n{}",
        errors.join("\n")
    );
    // Every shim went away with its last task.
    assert!(
        eventually(Duration::from_secs(20), || shim_pids(c.tmp.path())
            .is_empty()),
        "shims left: {:?}",
        shim_pids(c.tmp.path())
    );
}
