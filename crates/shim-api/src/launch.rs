//! How a serving shim is launched: the command line and environment of
//! the shim binary serving a pod on an inherited listening socket (what
//! the shim's own `start` spawns, and what criusd spawns itself), and, with
//! the `client` feature, criusd's launcher.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::args::Args;
use crate::paths::{Layout, PodDir, SOCKET_DIR_ENV, STATE_DIR_ENV};

/// The shim binary's file name.
pub const SHIM_BINARY: &str = "containerd-shim-crius-v2";
/// Environment variable naming the runtime binary.
pub const RUNTIME_ENV: &str = "CRIUS_SHIM_RUNTIME";
/// Environment variable naming the runtime's `--root`.
pub const RUNTIME_ROOT_ENV: &str = "CRIUS_SHIM_RUNTIME_ROOT";
/// Environment variable telling the serving process its listener fd.
pub const LISTEN_FD_ENV: &str = "CRIUS_SHIM_LISTEN_FD";
/// The fd number of the inherited listener.
pub const LISTEN_FD: i32 = 3;
/// Environment variable naming the events service to publish to.
pub const TTRPC_ADDRESS_ENV: &str = "TTRPC_ADDRESS";

/// What the serving shim is told besides its flags (from `start`'s stdin,
/// or from criusd).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StartInput {
    /// containerd 2.3+'s bootstrap protocol is in use: answer with a
    /// BootstrapResult instead of a plain address.
    pub bootstrap: bool,
    /// Events service address (bootstrap's containerd_ttrpc_address).
    pub ttrpc_address: Option<String>,
    /// Socket directory chosen by containerd.
    pub socket_dir: Option<PathBuf>,
    /// Runtime binary from `containerd.runc.v1.Options.binary_name`.
    pub runtime: Option<String>,
    /// Runtime root from `containerd.runc.v1.Options.root`.
    pub runtime_root: Option<String>,
}

/// The command that runs the shim binary `exe` serving group `group` on
/// the listening socket `listener_fd` (moved to fd 3 in the child) in a
/// session of its own: what `start` spawns, and what criusd spawns itself
/// to save the `start` round trip. The fd must stay open until the command
/// is spawned.
pub fn server_command(
    exe: &Path,
    args: &Args,
    group: &str,
    listener_fd: i32,
    dir: &Path,
    input: &StartInput,
) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(server_args(args, group));
    cmd.env(SOCKET_DIR_ENV, dir);
    if let Some(a) = &input.ttrpc_address {
        cmd.env(TTRPC_ADDRESS_ENV, a);
    }
    if let Some(r) = &input.runtime {
        cmd.env(RUNTIME_ENV, r);
    }
    if let Some(r) = &input.runtime_root {
        cmd.env(RUNTIME_ROOT_ENV, r);
    }
    cmd.env(LISTEN_FD_ENV, LISTEN_FD.to_string())
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let fd = listener_fd;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if fd == LISTEN_FD {
                let fl = libc::fcntl(fd, libc::F_GETFD);
                libc::fcntl(fd, libc::F_SETFD, fl & !libc::FD_CLOEXEC);
            } else if libc::dup2(fd, LISTEN_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// The flags of a serving shim of `group` (no action: it serves).
pub fn server_args(args: &Args, group: &str) -> Vec<String> {
    let mut v = vec![
        "-namespace".to_string(),
        args.namespace.clone(),
        "-id".to_string(),
        group.to_string(),
        "-address".to_string(),
        args.address.clone(),
    ];
    if !args.publish_binary.is_empty() {
        v.push("-publish-binary".to_string());
        v.push(args.publish_binary.clone());
    }
    if args.debug {
        v.push("-debug".to_string());
    }
    v
}

/// What the shim's `delete` action is told: the task (or pod) and the
/// runtime it was created with, for a bundle without the shim's runtime
/// record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteTarget<'a> {
    /// containerd namespace.
    pub namespace: &'a str,
    /// The caller's address (`-address`).
    pub address: &'a str,
    /// The task id; a pod's id cleans the pod up.
    pub id: &'a str,
    /// The task's bundle directory.
    pub bundle: &'a Path,
    /// The runtime binary ("" for the shim's default).
    pub runtime: &'a str,
    /// The runtime's `--root` without the namespace (the shim appends it).
    pub runtime_root: &'a Path,
}

/// The command running the shim binary `exe`'s `delete` action, as
/// containerd runs it after a dead shim (`-namespace NS -address ADDR -id
/// ID -bundle BUNDLE delete`), with the runtime in the environment and the
/// shims' directories of `layout` (the pod's private directory is found
/// there). It prints a DeleteResponse; stdin is empty, stderr holds errors.
pub fn delete_command(exe: &Path, target: &DeleteTarget<'_>, layout: &Layout) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(delete_args(target));
    cmd.env(SOCKET_DIR_ENV, &layout.socket_dir)
        .env(STATE_DIR_ENV, &layout.state_root)
        .env(RUNTIME_ROOT_ENV, target.runtime_root);
    if !target.runtime.is_empty() {
        cmd.env(RUNTIME_ENV, target.runtime);
    }
    cmd.current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// The flags of the shim's `delete` action.
pub fn delete_args(target: &DeleteTarget<'_>) -> Vec<String> {
    vec![
        "-namespace".to_string(),
        target.namespace.to_string(),
        "-address".to_string(),
        target.address.to_string(),
        "-id".to_string(),
        target.id.to_string(),
        "-bundle".to_string(),
        target.bundle.display().to_string(),
        "delete".to_string(),
    ]
}

/// The flags of the shim's `probe-idmap` action in the scratch directory
/// `dir` (made and removed by the shim): it exits 0 when idmapped
/// overlay mounts work, else non-zero with the reason on stderr.
pub fn probe_idmap_args(dir: &Path) -> Vec<String> {
    vec![
        "-namespace".to_string(),
        crate::NAMESPACE.to_string(),
        "-id".to_string(),
        "probe-idmap".to_string(),
        "-bundle".to_string(),
        dir.display().to_string(),
        "probe-idmap".to_string(),
    ]
}

/// Whether `path` is the root of a mount (statx's mount-root attribute;
/// false when it is not there or the kernel cannot tell).
pub fn is_mount_point(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a zeroed statx is a valid out-buffer; `c` is NUL-terminated.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    let r = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT,
            0,
            &mut st,
        )
    };
    let bit = libc::STATX_ATTR_MOUNT_ROOT as u64;
    r == 0 && st.stx_attributes_mask & bit != 0 && st.stx_attributes & bit != 0
}

/// Whether a dead shim left anything for its `delete` action: runtime
/// state of the task under `<runtime_root>/<namespace>/<id>` (runc and crun
/// keep a directory per container), a mounted `rootfs` in the bundle, one
/// of the bundle's directories of other mounts ([`crate::idmap::MOUNT_DIRS`],
/// removed once unmounted), or,
/// for a pod, more than the shim's log in its private directory. When
/// nothing is left, no process needs to run. A few stats.
pub fn delete_needed(target: &DeleteTarget<'_>, pod: Option<&PodDir>) -> bool {
    let id_ok = !target.id.is_empty() && !target.id.contains('/') && target.id != "..";
    (id_ok
        && target
            .runtime_root
            .join(target.namespace)
            .join(target.id)
            .exists())
        || is_mount_point(&target.bundle.join("rootfs"))
        || crate::idmap::MOUNT_DIRS
            .iter()
            .any(|d| target.bundle.join(d).exists())
        || pod.is_some_and(|p| match std::fs::read_dir(p.path()) {
            Ok(entries) => entries
                .flatten()
                .any(|e| e.file_name() != std::ffi::OsStr::new(PodDir::LOG)),
            Err(_) => false,
        })
}

#[cfg(feature = "client")]
pub use launcher::{find_binary, Launched, Launcher};

#[cfg(feature = "client")]
mod launcher {
    use std::path::{Path, PathBuf};

    use super::{
        delete_command, delete_needed, server_command, DeleteTarget, StartInput, SHIM_BINARY,
    };
    use crate::args::{Action, Args};
    use crate::client::ShimError;
    use crate::paths::{Layout, STATE_DIR_ENV};
    use crate::NAMESPACE;

    /// How criusd launches shims.
    #[derive(Debug, Clone)]
    pub struct Launcher {
        /// The shim binary.
        pub binary: PathBuf,
        /// The address passed as `-address` (criusd's socket).
        pub address: String,
        /// Where the shims' sockets and private directories are
        /// (`CRIUS_SHIM_SOCKET_DIR`, `CRIUS_SHIM_STATE_DIR`).
        pub layout: Layout,
        /// `TTRPC_ADDRESS`: where shims publish events (empty: nowhere).
        pub events_address: String,
    }

    /// Finds the shim binary: an explicit path, else next to the running
    /// criusd, else in PATH.
    pub fn find_binary(configured: &str) -> Result<PathBuf, ShimError> {
        if !configured.is_empty() {
            return Ok(PathBuf::from(configured));
        }
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            let candidate = dir.join(SHIM_BINARY);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
        let path = std::env::var("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|d| d.join(SHIM_BINARY))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                ShimError::Launch(format!(
                    "{SHIM_BINARY} not found next to criusd or in PATH (set `shim_path`)"
                ))
            })
    }

    /// A shim criusd launched.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Launched {
        /// Its ttrpc address (`unix:///...`).
        pub address: String,
        /// The pid of the serving shim (the long-running process itself: it
        /// is criusd's child, not forked again).
        pub pid: Option<u32>,
    }

    impl Launcher {
        /// Launches the shim serving sandbox `id` with the runtime handler's
        /// binary and root; returns its ttrpc address and pid.
        ///
        /// criusd does itself what the shim's `start` would (containerd's
        /// way, which the shim still offers): it binds the socket at the
        /// address `start` would derive and runs the shim binary in serving
        /// mode on it, in a session of its own. That saves a process and a
        /// round trip per pod, and the address answers at once: connections
        /// queue on the socket until the shim serves them. A shim that dies
        /// at start-up shows as a failed first call. `bundle` is where the
        /// pod's files are; the serving shim runs in `/`.
        #[tracing::instrument(level = "debug", name = "shim_spawn", skip_all, fields(sandbox = id))]
        pub async fn start(
            &self,
            id: &str,
            bundle: &Path,
            runtime: &str,
            runtime_root: &Path,
        ) -> Result<Launched, ShimError> {
            let launch = |what: &str, e: std::io::Error| ShimError::Launch(format!("{what}: {e}"));
            if !bundle.is_dir() {
                return Err(ShimError::Launch(format!(
                    "bundle {} is not a directory",
                    bundle.display()
                )));
            }
            let socket_dir = &self.layout.socket_dir;
            // Private: only criusd and the shims (root) use the sockets.
            crius_store::private::dir(socket_dir)
                .map_err(|e| launch(&format!("create {}", socket_dir.display()), e))?;
            let path = self.layout.socket(&self.address, NAMESPACE, id);
            // Left by a shim of this id that died (ids are never reused
            // otherwise).
            let _ = std::fs::remove_file(&path);
            let listener = std::os::unix::net::UnixListener::bind(&path)
                .map_err(|e| launch(&format!("bind {}", path.display()), e))?;
            // Only criusd and containerd (root) connect.
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .map_err(|e| launch(&format!("chmod {}", path.display()), e))?;
            let args = Args {
                namespace: NAMESPACE.to_string(),
                id: id.to_string(),
                address: self.address.clone(),
                publish_binary: String::new(),
                bundle: None,
                debug: false,
                action: Action::Serve,
            };
            let input = StartInput {
                bootstrap: false,
                ttrpc_address: Some(self.events_address.clone()).filter(|a| !a.is_empty()),
                socket_dir: Some(socket_dir.clone()),
                runtime: Some(runtime.to_string()).filter(|r| !r.is_empty()),
                runtime_root: Some(runtime_root.display().to_string()),
            };
            let mut cmd = server_command(
                &self.binary,
                &args,
                id,
                std::os::fd::AsRawFd::as_raw_fd(&listener),
                socket_dir,
                &input,
            );
            cmd.env(STATE_DIR_ENV, &self.layout.state_root);
            // Not waited for: tokio reaps it when it exits (criusd is its
            // parent until criusd itself goes).
            let spawned = tokio::process::Command::from(cmd).spawn();
            drop(listener);
            let pid = match spawned {
                Ok(child) => child.id(),
                Err(e) => {
                    let _ = std::fs::remove_file(&path);
                    return Err(launch(&self.binary.display().to_string(), e));
                }
            };
            Ok(Launched {
                address: format!("unix://{}", path.display()),
                pid,
            })
        }

        /// Cleans up after the dead shim of task (or pod) `id` through the
        /// shim binary's `delete` action, as containerd does: the shim
        /// force-deletes the task with the runtime, unmounts the bundle's
        /// rootfs and, for a pod, deletes the pod's other runtime
        /// containers and removes its private directory (netns, IPC/UTS
        /// pins, shm). An unknown id is not an error. Spawns nothing when
        /// nothing is left ([`super::delete_needed`]); runs the shim as a
        /// child process off the async workers.
        #[tracing::instrument(level = "debug", name = "shim_delete", skip_all, fields(id = id))]
        pub async fn delete(
            &self,
            id: &str,
            bundle: &Path,
            runtime: &str,
            runtime_root: &Path,
            pod: bool,
        ) -> Result<(), ShimError> {
            let target = DeleteTarget {
                namespace: NAMESPACE,
                address: &self.address,
                id,
                bundle,
                runtime,
                runtime_root,
            };
            let pod_dir = pod.then(|| self.layout.pod_dir(NAMESPACE, id));
            if !delete_needed(&target, pod_dir.as_ref()) {
                return Ok(());
            }
            let cmd = delete_command(&self.binary, &target, &self.layout);
            let out = tokio::process::Command::from(cmd)
                .kill_on_drop(true)
                .output()
                .await
                .map_err(|e| ShimError::Launch(format!("{}: {e}", self.binary.display())))?;
            if !out.status.success() {
                // Bounded: the shim's own error, not a flood.
                let stderr = String::from_utf8_lossy(&out.stderr);
                let stderr: String = stderr.trim().chars().take(4096).collect();
                return Err(ShimError::Launch(format!(
                    "{} delete {id}: {stderr}",
                    self.binary.display()
                )));
            }
            Ok(())
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use std::time::Duration;

        /// A launcher (address /run/x.sock, layout under `dir`) of a fake
        /// shim `dir/fake-shim`: a shell script with this body.
        fn fake_launcher(dir: &Path, script: &str) -> Launcher {
            use std::os::unix::fs::PermissionsExt;
            let fake = dir.join("fake-shim");
            std::fs::write(&fake, format!("#!/bin/sh\n{script}")).unwrap();
            std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
            Launcher {
                binary: fake,
                address: "/run/x.sock".into(),
                layout: Layout::under(dir),
                events_address: String::new(),
            }
        }

        #[tokio::test]
        async fn launches_the_serving_shim_on_a_bound_socket() {
            let dir = tempfile::tempdir().unwrap();
            let seen = dir.path().join("seen");
            let l = fake_launcher(
                dir.path(),
                &format!(
                    "echo \"$CRIUS_SHIM_LISTEN_FD $CRIUS_SHIM_RUNTIME $CRIUS_SHIM_RUNTIME_ROOT $CRIUS_SHIM_STATE_DIR $*\" > {p}.tmp\nreadlink /proc/self/fd/3 >> {p}.tmp\npwd >> {p}.tmp\necho $$ >> {p}.tmp\nmv {p}.tmp {p}\n",
                    p = seen.display()
                ),
            );
            let launched = l
                .start("abc", dir.path(), "runc", Path::new("/run/r"))
                .await
                .unwrap();
            let socket = l.layout.socket("/run/x.sock", NAMESPACE, "abc");
            assert_eq!(launched.address, format!("unix://{}", socket.display()));
            let pid = launched.pid.expect("a pid");
            // Bound before the shim runs: a connection is accepted at once.
            assert!(std::os::unix::net::UnixStream::connect(&socket).is_ok());
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !seen.exists() {
                assert!(std::time::Instant::now() < deadline, "the shim never ran");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let text = std::fs::read_to_string(&seen).unwrap();
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(
                lines[0],
                format!(
                    "3 runc /run/r {} -namespace k8s.io -id abc -address /run/x.sock",
                    l.layout.state_root.display()
                )
            );
            assert!(lines[1].starts_with("socket:"), "{text}");
            assert_eq!(lines[2], "/");
            // The pid is the serving process's own ($$ of the fake's shell).
            assert_eq!(lines[3], pid.to_string());

            // A binary that cannot run: an error, and no socket left behind.
            let l = Launcher {
                binary: dir.path().join("missing"),
                ..l
            };
            let e = l
                .start("def", dir.path(), "runc", Path::new("/run/r"))
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains("missing"), "{e}");
            let gone = l.layout.socket("/run/x.sock", NAMESPACE, "def");
            assert!(!gone.exists());
            assert!(find_binary("/explicit/path").unwrap().ends_with("path"));
        }

        #[tokio::test]
        async fn delete_runs_the_shim_only_when_something_is_left() {
            let dir = tempfile::tempdir().unwrap();
            let seen = dir.path().join("seen");
            // Records its flags; fails for the id "bad".
            let l = fake_launcher(
                dir.path(),
                &format!(
                    "echo \"$CRIUS_SHIM_RUNTIME $CRIUS_SHIM_RUNTIME_ROOT $*\" >> {}\ncase \"$*\" in *'-id bad '*) echo boom >&2; exit 1;; esac\n",
                    seen.display()
                ),
            );
            let root = dir.path().join("runc");
            for id in ["c1", "bad"] {
                std::fs::create_dir_all(root.join(NAMESPACE).join(id)).unwrap();
            }
            let bundle = dir.path().join("bundle");
            // Nothing left of "gone": no process.
            l.delete("gone", &bundle, "crun", &root, false)
                .await
                .unwrap();
            assert!(!seen.exists());
            l.delete("c1", &bundle, "crun", &root, false).await.unwrap();
            let text = std::fs::read_to_string(&seen).unwrap();
            assert_eq!(
                text.trim(),
                format!(
                    "crun {} -namespace k8s.io -address /run/x.sock -id c1 -bundle {} delete",
                    root.display(),
                    bundle.display()
                )
            );
            let e = l
                .delete("bad", &bundle, "crun", &root, false)
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains("boom"), "{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Action;

    #[test]
    fn server_args_table() {
        let base = Args {
            namespace: "k8s.io".into(),
            id: "ignored".into(),
            address: "/run/crius/crius.sock".into(),
            publish_binary: String::new(),
            bundle: Some("/b".into()),
            debug: false,
            action: Action::Start,
        };
        // (args, group, flags of the serving shim)
        let cases = [
            (
                base.clone(),
                "pod1",
                "-namespace k8s.io -id pod1 -address /run/crius/crius.sock",
            ),
            (
                Args {
                    publish_binary: "/usr/bin/containerd".into(),
                    debug: true,
                    ..base.clone()
                },
                "g",
                "-namespace k8s.io -id g -address /run/crius/crius.sock -publish-binary /usr/bin/containerd -debug",
            ),
        ];
        for (args, group, want) in cases {
            let got = server_args(&args, group);
            assert_eq!(got.join(" "), want);
            // What the shim serves with parses back to the same flags.
            let back = Args::parse(got).unwrap();
            assert_eq!(
                (back.namespace, back.id, back.address, back.action),
                (
                    args.namespace,
                    group.to_string(),
                    args.address,
                    Action::Serve
                )
            );
        }
    }

    #[test]
    fn delete_command_table() {
        let layout = Layout::under(Path::new("/run/crius"));
        let base = DeleteTarget {
            namespace: "k8s.io",
            address: "/run/crius/crius.sock",
            id: "c1",
            bundle: Path::new("/run/crius/containers/c1/bundle"),
            runtime: "",
            runtime_root: Path::new("/run/crius/runc"),
        };
        // (target, flags, runtime env)
        let cases = [
            (
                base.clone(),
                "-namespace k8s.io -address /run/crius/crius.sock -id c1 -bundle /run/crius/containers/c1/bundle delete",
                None,
            ),
            (
                DeleteTarget {
                    id: "pod1",
                    bundle: Path::new("/run/crius/sandboxes/pod1/bundle"),
                    runtime: "/usr/bin/crun",
                    ..base.clone()
                },
                "-namespace k8s.io -address /run/crius/crius.sock -id pod1 -bundle /run/crius/sandboxes/pod1/bundle delete",
                Some("/usr/bin/crun"),
            ),
        ];
        for (target, flags, runtime) in cases {
            let cmd = delete_command(Path::new("/bin/shim"), &target, &layout);
            let args: Vec<&str> = cmd.get_args().map(|a| a.to_str().unwrap()).collect();
            assert_eq!(args.join(" "), flags);
            // The shim parses it as its delete action on the same task.
            let back = Args::parse(args.iter().copied()).unwrap();
            assert_eq!(
                (back.action, back.id.as_str(), back.bundle.as_deref()),
                (
                    Action::Delete,
                    target.id,
                    Some(target.bundle.to_str().unwrap())
                )
            );
            let env: std::collections::HashMap<_, _> = cmd
                .get_envs()
                .map(|(k, v)| (k.to_str().unwrap(), v.and_then(|v| v.to_str())))
                .collect();
            assert_eq!(env.get(RUNTIME_ENV).copied().flatten(), runtime);
            for (k, v) in [
                (SOCKET_DIR_ENV, "/run/crius/s"),
                (STATE_DIR_ENV, "/run/crius/shim"),
                (RUNTIME_ROOT_ENV, "/run/crius/runc"),
            ] {
                assert_eq!(env.get(k).copied().flatten(), Some(v), "{k}");
            }
            assert_eq!(cmd.get_current_dir(), Some(Path::new("/")));
        }
    }

    #[test]
    fn delete_needed_table() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("runc");
        std::fs::create_dir_all(root.join("k8s.io").join("has-state")).unwrap();
        let bundle = d.path().join("bundle");
        std::fs::create_dir_all(bundle.join("rootfs")).unwrap();
        let layout = Layout::under(d.path());
        let empty_pod = layout.pod_dir("k8s.io", "empty-pod");
        std::fs::create_dir_all(empty_pod.path()).unwrap();
        std::fs::write(empty_pod.log(), "log").unwrap();
        let left_pod = layout.pod_dir("k8s.io", "left-pod");
        std::fs::create_dir_all(left_pod.path()).unwrap();
        std::fs::write(left_pod.netns(), "").unwrap();
        let missing_pod = layout.pod_dir("k8s.io", "missing-pod");
        let target = |id| DeleteTarget {
            namespace: "k8s.io",
            address: "/a",
            id,
            bundle: &bundle,
            runtime: "",
            runtime_root: &root,
        };
        // (id, pod dir, needed)
        let cases = [
            ("has-state", None, true),
            ("unknown", None, false),
            ("", None, false),
            ("../k8s.io/has-state", None, false),
            ("unknown", Some(&empty_pod), false),
            ("unknown", Some(&missing_pod), false),
            ("unknown", Some(&left_pod), true),
        ];
        for (id, pod, want) in cases {
            assert_eq!(delete_needed(&target(id), pod), want, "{id} {pod:?}");
        }
        // A mounted rootfs: "/" is a mount's root, a plain directory not.
        assert!(is_mount_point(Path::new("/")));
        assert!(!is_mount_point(&bundle.join("rootfs")));
        assert!(!is_mount_point(&d.path().join("missing")));
        // A directory of idmapped or image mounts left in the bundle.
        for dir in crate::idmap::MOUNT_DIRS {
            std::fs::create_dir(bundle.join(dir)).unwrap();
            assert!(delete_needed(&target("unknown"), None), "{dir}");
            std::fs::remove_dir(bundle.join(dir)).unwrap();
        }
        assert!(!delete_needed(&target("unknown"), None));
    }

    #[test]
    fn server_command_environment() {
        let args = Args::parse(["-namespace", "ns", "-id", "x", "-address", "/a"]).unwrap();
        let input = StartInput {
            ttrpc_address: Some("/run/containerd/containerd.sock.ttrpc".into()),
            runtime: Some("crun".into()),
            runtime_root: Some("/run/r".into()),
            ..StartInput::default()
        };
        let cmd = server_command(
            Path::new("/bin/shim"),
            &args,
            "x",
            7,
            Path::new("/s"),
            &input,
        );
        let env: std::collections::HashMap<_, _> = cmd
            .get_envs()
            .map(|(k, v)| (k.to_str().unwrap(), v.and_then(|v| v.to_str())))
            .collect();
        for (k, v) in [
            (SOCKET_DIR_ENV, "/s"),
            (TTRPC_ADDRESS_ENV, "/run/containerd/containerd.sock.ttrpc"),
            (RUNTIME_ENV, "crun"),
            (RUNTIME_ROOT_ENV, "/run/r"),
            (LISTEN_FD_ENV, "3"),
        ] {
            assert_eq!(env.get(k).copied().flatten(), Some(v), "{k}");
        }
        assert_eq!(cmd.get_current_dir(), Some(Path::new("/")));
        let none = server_command(
            Path::new("/bin/shim"),
            &args,
            "x",
            3,
            Path::new("/s"),
            &StartInput::default(),
        );
        let keys: Vec<_> = none.get_envs().map(|(k, _)| k.to_owned()).collect();
        assert!(!keys
            .iter()
            .any(|k| k == RUNTIME_ENV || k == TTRPC_ADDRESS_ENV));
    }
}
