//! Driving the OCI runtime binary (runc, crun) with its command line.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::reaper::{exit_code, Reaper, ReaperError};

/// Errors of runtime invocations.
#[derive(Debug, thiserror::Error)]
pub enum RuncError {
    /// The runtime could not be run.
    #[error(transparent)]
    Reaper(#[from] ReaperError),
    /// The runtime failed; `msg` is its own error message when it logged one.
    #[error("{bin} {op} failed (exit {code}): {msg}")]
    Failed {
        /// Runtime binary.
        bin: String,
        /// Sub-command.
        op: &'static str,
        /// Exit status.
        code: u32,
        /// runtime's error message.
        msg: String,
    },
    /// Local I/O around the invocation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was done.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The runtime printed something unexpected.
    #[error("parse {what}: {msg}")]
    Parse {
        /// What was parsed.
        what: &'static str,
        /// Why it failed.
        msg: String,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> RuncError {
    let what = what.into();
    move |source| RuncError::Io { what, source }
}

/// The stdio a runtime child gets (it is inherited by the container).
#[derive(Default)]
pub struct ProcStdio {
    /// stdin (None: /dev/null).
    pub stdin: Option<File>,
    /// stdout (None: /dev/null).
    pub stdout: Option<File>,
    /// stderr (None: /dev/null).
    pub stderr: Option<File>,
}

fn stdio(f: Option<File>) -> Stdio {
    f.map(Stdio::from).unwrap_or_else(Stdio::null)
}

/// A configured runtime binary with its state root.
#[derive(Clone)]
pub struct Runc {
    /// The binary (path or name in PATH).
    pub binary: String,
    /// The `--root` state directory.
    pub root: PathBuf,
    reaper: Arc<Reaper>,
}

impl Runc {
    /// A runtime using `binary` and state root `root`.
    pub fn new(binary: String, root: PathBuf, reaper: Arc<Reaper>) -> Runc {
        Runc {
            binary,
            root,
            reaper,
        }
    }

    /// The runtime's command line up to and including `op`: the global
    /// options (`--systemd-cgroup` when the container's cgroup is a systemd
    /// unit), then the sub-command.
    fn command(&self, log: &Path, systemd_cgroup: bool, op: &str) -> Command {
        let mut c = Command::new(&self.binary);
        c.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(log)
            .arg("--log-format")
            .arg("json");
        if systemd_cgroup {
            c.arg("--systemd-cgroup");
        }
        c.arg(op);
        c
    }

    fn run(
        &self,
        op: &'static str,
        log: &Path,
        args: &[&str],
        io: ProcStdio,
        input: Option<&[u8]>,
        want_output: bool,
    ) -> Result<Vec<u8>, RuncError> {
        self.run_with(false, op, log, args, io, input, want_output)
    }

    #[allow(clippy::too_many_arguments)]
    fn run_with(
        &self,
        systemd_cgroup: bool,
        op: &'static str,
        log: &Path,
        args: &[&str],
        io: ProcStdio,
        input: Option<&[u8]>,
        want_output: bool,
    ) -> Result<Vec<u8>, RuncError> {
        // Truncate so that the error we report is this call's.
        let _ = crius_store::private::create_file(log);
        let mut c = self.command(log, systemd_cgroup, op);
        c.args(args);
        c.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            stdio(io.stdin)
        });
        c.stdout(if want_output {
            Stdio::piped()
        } else {
            stdio(io.stdout)
        });
        c.stderr(if want_output {
            Stdio::null()
        } else {
            stdio(io.stderr)
        });
        let mut sp = self.reaper.spawn(&mut c)?;
        // Our copies of the container's stdio are closed with `c`.
        drop(c);
        if let (Some(data), Some(mut si)) = (input, sp.child.stdin.take()) {
            si.write_all(data).map_err(io_err(format!("{op} stdin")))?;
        }
        let (status, out) = sp.wait_with_output()?;
        if status != 0 {
            return Err(RuncError::Failed {
                bin: self.binary.clone(),
                op,
                code: exit_code(status),
                msg: last_error(log),
            });
        }
        Ok(out)
    }

    /// `create --bundle B --pid-file P [--console-socket S] ID`, or with
    /// `start_now`, `run --detach ...` (create and start in one runtime
    /// invocation). `systemd_cgroup`: the spec's cgroupsPath names a systemd
    /// unit (see [`is_systemd_cgroups_path`]); the runtime then creates the
    /// cgroup through systemd. Later calls need no flag: the runtime keeps
    /// the choice in its state.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        id: &str,
        bundle: &Path,
        pid_file: &Path,
        console_socket: Option<&Path>,
        io: ProcStdio,
        start_now: bool,
        systemd_cgroup: bool,
    ) -> Result<i32, RuncError> {
        let log = bundle.join("runc-log.json");
        let b = bundle.to_string_lossy();
        let p = pid_file.to_string_lossy();
        let mut args: Vec<&str> = vec!["--bundle", &b, "--pid-file", &p];
        let cs;
        if let Some(s) = console_socket {
            cs = s.to_string_lossy();
            args.push("--console-socket");
            args.push(&cs);
        }
        if start_now {
            args.push("--detach");
        }
        args.push(id);
        let _ = std::fs::remove_file(pid_file);
        let op = if start_now { "run" } else { "create" };
        self.run_with(systemd_cgroup, op, &log, &args, io, None, false)?;
        read_pid(pid_file)
    }

    /// Starts a created container the way `runc start` does, without the
    /// runtime invocation (~5 ms of a Go binary's start-up): runc's init
    /// waits to open `<root>/<id>/exec.fifo` for writing; opening it for
    /// reading lets it write one byte and exec the process; the fifo is then
    /// removed, which is what tells runc the container runs.
    ///
    /// Returns `Ok(false)` when this is not applicable (a runtime other than
    /// runc, or no fifo): the caller then runs `start`. `init_pid` is watched
    /// so that an init that died before opening the fifo is reported.
    pub fn start_via_fifo(&self, id: &str, init_pid: i32) -> Result<bool, RuncError> {
        let is_runc = Path::new(&self.binary)
            .file_name()
            .is_some_and(|n| n == "runc");
        let fifo = self.root.join(id).join("exec.fifo");
        if !is_runc || !fifo.exists() {
            return Ok(false);
        }
        kick_exec_fifo(&fifo, init_pid).map_err(|msg| RuncError::Failed {
            bin: self.binary.clone(),
            op: "start",
            code: 0,
            msg,
        })?;
        Ok(true)
    }

    /// `start ID`.
    pub fn start(&self, id: &str, log: &Path) -> Result<(), RuncError> {
        self.run("start", log, &[id], ProcStdio::default(), None, false)
            .map(|_| ())
    }

    /// `exec --detach --process P --pid-file F [--console-socket S] ID`.
    pub fn exec(
        &self,
        id: &str,
        log: &Path,
        process_json: &Path,
        pid_file: &Path,
        console_socket: Option<&Path>,
        io: ProcStdio,
    ) -> Result<i32, RuncError> {
        let pj = process_json.to_string_lossy();
        let p = pid_file.to_string_lossy();
        let mut args: Vec<&str> = vec!["--detach", "--process", &pj, "--pid-file", &p];
        let cs;
        if let Some(s) = console_socket {
            cs = s.to_string_lossy();
            args.push("--console-socket");
            args.push(&cs);
        }
        args.push(id);
        let _ = std::fs::remove_file(pid_file);
        self.run("exec", log, &args, io, None, false)?;
        read_pid(pid_file)
    }

    /// `kill [--all] ID SIGNAL`.
    pub fn kill(&self, id: &str, log: &Path, signal: u32, all: bool) -> Result<(), RuncError> {
        let sig = signal.to_string();
        let mut args = Vec::with_capacity(3);
        if all {
            args.push("--all");
        }
        args.push(id);
        args.push(&sig);
        self.run("kill", log, &args, ProcStdio::default(), None, false)
            .map(|_| ())
    }

    /// `delete --force ID`.
    pub fn delete(&self, id: &str, log: &Path) -> Result<(), RuncError> {
        self.run(
            "delete",
            log,
            &["--force", id],
            ProcStdio::default(),
            None,
            false,
        )
        .map(|_| ())
    }

    /// `pause ID` / `resume ID`.
    pub fn pause(&self, id: &str, log: &Path, pause: bool) -> Result<(), RuncError> {
        let op = if pause { "pause" } else { "resume" };
        self.run(op, log, &[id], ProcStdio::default(), None, false)
            .map(|_| ())
    }

    /// `update --resources - ID` with the LinuxResources JSON on stdin.
    pub fn update(&self, id: &str, log: &Path, resources_json: &[u8]) -> Result<(), RuncError> {
        self.run(
            "update",
            log,
            &["--resources", "-", id],
            ProcStdio::default(),
            Some(resources_json),
            false,
        )
        .map(|_| ())
    }

    /// `ps --format json ID`: the pids of the container.
    pub fn ps(&self, id: &str, log: &Path) -> Result<Vec<u32>, RuncError> {
        let out = self.run(
            "ps",
            log,
            &["--format", "json", id],
            ProcStdio::default(),
            None,
            true,
        )?;
        serde_json::from_slice::<Option<Vec<u32>>>(&out)
            .map(Option::unwrap_or_default)
            .map_err(|e| RuncError::Parse {
                what: "ps output",
                msg: e.to_string(),
            })
    }

    /// `state ID`: the runtime's JSON state (for the cgroup path etc.).
    pub fn state(&self, id: &str, log: &Path) -> Result<serde_json::Value, RuncError> {
        let out = self.run("state", log, &[id], ProcStdio::default(), None, true)?;
        serde_json::from_slice(&out).map_err(|e| RuncError::Parse {
            what: "state output",
            msg: e.to_string(),
        })
    }
}

/// Opens runc's exec fifo for reading (never blocking), waits for the init's
/// byte while the init (`init_pid`) lives, and removes the fifo.
fn kick_exec_fifo(fifo: &Path, init_pid: i32) -> Result<(), String> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let c =
        std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: open(2) of a path we own, non-blocking: never waits for
    // the writer.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(format!(
            "open {}: {}",
            fifo.display(),
            io::Error::last_os_error()
        ));
    }
    // SAFETY: fd was just opened and is owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut got = Vec::new();
    loop {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 100) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll exec fifo: {e}"));
        }
        if n == 0 {
            // Nothing yet: give up only when the init is gone (a
            // zombie or reaped).
            let stat =
                std::fs::read_to_string(format!("/proc/{init_pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            if stat.is_empty() || state == Some("Z") {
                return Err("container process is already dead".into());
            }
            continue;
        }
        let mut buf = [0u8; 16];
        // SAFETY: read(2) into a local buffer of its length.
        let r = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if r > 0 {
            got.extend_from_slice(&buf[..r as usize]);
            break;
        }
        if r == 0 {
            // The writer closed without writing.
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::WouldBlock && e.kind() != io::ErrorKind::Interrupted {
            return Err(format!("read exec fifo: {e}"));
        }
    }
    if got.is_empty() {
        return Err("cannot start an already running container".into());
    }
    std::fs::remove_file(fifo).map_err(|e| format!("remove exec fifo: {e}"))?;
    Ok(())
}

fn read_pid(pid_file: &Path) -> Result<i32, RuncError> {
    // runc writes it 0644 (its umask); the bundle's files are private.
    let _ = std::fs::set_permissions(
        pid_file,
        std::os::unix::fs::PermissionsExt::from_mode(crius_store::private::FILE),
    );
    let s = std::fs::read_to_string(pid_file)
        .map_err(io_err(format!("read pid file {}", pid_file.display())))?;
    s.trim()
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| RuncError::Parse {
            what: "pid file",
            msg: format!("{:?}", s.trim()),
        })
}

/// Whether a spec's `linux.cgroupsPath` is in the systemd driver's
/// `slice:prefix:name` form (what `cgroup_driver = "systemd"` makes, and
/// what containerd makes with `SystemdCgroup`), rather than a cgroupfs path.
/// The runtime must then be run with `--systemd-cgroup`: without it, it
/// would take the string for a directory name below its own cgroup.
pub fn is_systemd_cgroups_path(path: &str) -> bool {
    if path.starts_with('/') {
        return false;
    }
    let parts: Vec<&str> = path.split(':').collect();
    parts.len() == 3 && !parts[2].is_empty()
}

/// The last error message in a runtime's JSON log (or the last line).
pub fn last_error(log: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(log) else {
        return "no runtime log".into();
    };
    parse_last_error(&text)
}

/// Extracts the last `"level":"error"` message from JSON log lines.
pub fn parse_last_error(text: &str) -> String {
    let mut last = String::new();
    let mut last_line = "";
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        last_line = line;
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            if v.get("level").and_then(|l| l.as_str()) == Some("error") {
                if let Some(m) = v.get("msg").and_then(|m| m.as_str()) {
                    last = m.to_string();
                }
            }
        }
    }
    if last.is_empty() {
        last = last_line.trim().to_string();
    }
    if last.is_empty() {
        "no error message in runtime log".into()
    } else {
        last
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn systemd_cgroups_paths_are_told_from_cgroupfs_ones() {
        // (cgroupsPath, systemd form)
        let cases = [
            ("system.slice:crius:0123abcd", true),
            ("kubepods-besteffort-pod1.slice:crius:0123abcd", true),
            (":crius:0123abcd", true),
            ("/crius/0123abcd", false),
            ("/kubepods/besteffort/pod1/0123abcd", false),
            ("crius/0123abcd", false),
            ("", false),
            ("system.slice:crius:", false),
            ("a:b", false),
            ("a:b:c:d", false),
            ("/system.slice:crius:id", false),
        ];
        for (path, want) in cases {
            assert_eq!(is_systemd_cgroups_path(path), want, "{path:?}");
        }
    }

    #[test]
    fn systemd_cgroup_is_a_global_option_before_the_sub_command() {
        // (systemd_cgroup, the arguments after the log options)
        let cases: [(bool, &[&str]); 2] = [
            (false, &["create"]),
            (true, &["--systemd-cgroup", "create"]),
        ];
        let runc = Runc {
            binary: "runc".into(),
            root: "/run/crius-runc".into(),
            reaper: Arc::new(Reaper::for_tests()),
        };
        for (systemd, tail) in cases {
            let c = runc.command(Path::new("/b/log.json"), systemd, "create");
            let args: Vec<String> = c
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let mut want = vec![
                "--root",
                "/run/crius-runc",
                "--log",
                "/b/log.json",
                "--log-format",
                "json",
            ];
            want.extend_from_slice(tail);
            assert_eq!(args, want, "systemd_cgroup {systemd}");
        }
    }

    fn mkfifo(dir: &Path) -> PathBuf {
        let p = dir.join("exec.fifo");
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o622)).unwrap();
        p
    }

    #[test]
    fn exec_fifo_kick() {
        // (what the init does, expected outcome)
        enum Init {
            WritesByte,
            ClosesEmpty,
            Dead,
        }
        for (init, ok) in [
            (Init::WritesByte, true),
            (Init::ClosesEmpty, false),
            (Init::Dead, false),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let fifo = mkfifo(dir.path());
            let me = std::process::id() as i32;
            let (pid, writer) = match init {
                Init::Dead => {
                    // A pid that no longer exists: a reaped child.
                    let mut child = std::process::Command::new("true").spawn().unwrap();
                    let pid = child.id() as i32;
                    child.wait().unwrap();
                    (pid, None)
                }
                Init::WritesByte | Init::ClosesEmpty => {
                    let f = fifo.clone();
                    let write = matches!(init, Init::WritesByte);
                    // Opening for writing blocks until the reader comes, as
                    // runc's init does.
                    let t = std::thread::spawn(move || {
                        let mut w = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
                        if write {
                            w.write_all(b"0").unwrap();
                        }
                    });
                    (me, Some(t))
                }
            };
            let r = kick_exec_fifo(&fifo, pid);
            if let Some(t) = writer {
                t.join().unwrap();
            }
            assert_eq!(r.is_ok(), ok, "{r:?}");
            assert_eq!(fifo.exists(), !ok, "the fifo goes only on success");
        }
    }

    use super::*;

    #[test]
    fn last_error_table() {
        let cases = [
            ("", "no error message in runtime log"),
            (
                "{\"level\":\"info\",\"msg\":\"a\"}\n{\"level\":\"error\",\"msg\":\"boom\"}\n",
                "boom",
            ),
            (
                "{\"level\":\"error\",\"msg\":\"first\"}\n{\"level\":\"error\",\"msg\":\"second\"}",
                "second",
            ),
            ("plain text failure\n", "plain text failure"),
        ];
        for (input, want) in cases {
            assert_eq!(parse_last_error(input), want, "{input:?}");
        }
    }
}
