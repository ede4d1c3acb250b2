//! Running one CNI plugin as the CNI specification describes: the verb and
//! the pod's coordinates in `CNI_*` environment variables, the network
//! configuration on stdin, the result (or a CNI error object) on stdout.
//!
//! Every call has a timeout; a plugin that overstays it is killed together
//! with its process group.

use serde_json::Value;
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// At most this much of a plugin's stdout or stderr is kept.
const MAX_OUTPUT: usize = 1 << 20;

/// How long to wait for the output pipes to close after the plugin exited
/// (a daemonised grandchild may keep them open).
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// A CNI verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    /// Attach the container to the network.
    Add,
    /// Detach it.
    Del,
    /// Verify the attachment.
    Check,
    /// Report the supported spec versions.
    Version,
    /// Whether the plugin is ready to attach containers (spec 1.1.0).
    Status,
    /// Release what belongs to no valid attachment (spec 1.1.0).
    Gc,
}

impl CniCommand {
    /// The value of `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Check => "CHECK",
            CniCommand::Version => "VERSION",
            CniCommand::Status => "STATUS",
            CniCommand::Gc => "GC",
        }
    }
}

impl fmt::Display for CniCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors of a single plugin invocation.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The executable could not be started.
    #[error("cannot run CNI plugin {plugin}: {source}")]
    Spawn {
        /// The executable.
        plugin: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Waiting for the plugin failed.
    #[error("CNI plugin {plugin} {command}: {source}")]
    Io {
        /// The plugin type.
        plugin: String,
        /// The verb.
        command: CniCommand,
        /// The underlying error.
        source: io::Error,
    },
    /// The plugin did not finish in time and was killed.
    #[error("CNI plugin {plugin} {command} timed out after {timeout:?} and was killed")]
    Timeout {
        /// The plugin type.
        plugin: String,
        /// The verb.
        command: CniCommand,
        /// The limit.
        timeout: Duration,
    },
    /// The plugin failed.
    #[error("{}", plugin_failure(.plugin, *.command, .code, .msg, .details, .output))]
    Plugin {
        /// The plugin type.
        plugin: String,
        /// The verb.
        command: CniCommand,
        /// The CNI error code, when the plugin printed an error object.
        code: Option<u64>,
        /// The error message (`msg`), or a description of the exit status.
        msg: String,
        /// The error details (`details`).
        details: String,
        /// Output that was not a CNI error object (stdout, stderr).
        output: String,
    },
}

fn plugin_failure(
    plugin: &str,
    command: CniCommand,
    code: &Option<u64>,
    msg: &str,
    details: &str,
    output: &str,
) -> String {
    let mut s = format!("CNI plugin {plugin} {command} failed");
    if let Some(code) = code {
        s.push_str(&format!(" (code {code})"));
    }
    s.push_str(": ");
    s.push_str(msg);
    if !details.is_empty() {
        s.push_str("; ");
        s.push_str(details);
    }
    if !output.is_empty() {
        s.push_str("; output: ");
        s.push_str(output);
    }
    s
}

/// The environment and input of one plugin call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invocation {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS` (may be empty for DEL when the namespace is gone).
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS` as key/value pairs.
    pub args: Vec<(String, String)>,
    /// The plugin directories, joined with ':' into `CNI_PATH`.
    pub bin_dirs: Vec<PathBuf>,
}

impl Invocation {
    /// The `CNI_*` environment for `command`.
    pub fn env(&self, command: CniCommand) -> Vec<(&'static str, String)> {
        let path: Vec<String> = self
            .bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        // STATUS and GC concern the network, not one attachment: the spec
        // gives them only the command and the plugin path.
        if matches!(command, CniCommand::Status | CniCommand::Gc) {
            return vec![
                ("CNI_COMMAND", command.as_str().to_string()),
                ("CNI_PATH", path.join(":")),
            ];
        }
        vec![
            ("CNI_COMMAND", command.as_str().to_string()),
            ("CNI_CONTAINERID", self.container_id.clone()),
            ("CNI_NETNS", self.netns.clone()),
            ("CNI_IFNAME", self.ifname.clone()),
            ("CNI_ARGS", cni_args_string(&self.args)),
            ("CNI_PATH", path.join(":")),
        ]
    }
}

/// Joins `CNI_ARGS` pairs: `K1=V1;K2=V2`.
pub fn cni_args_string(args: &[(String, String)]) -> String {
    let parts: Vec<String> = args.iter().map(|(k, v)| format!("{k}={v}")).collect();
    parts.join(";")
}

/// Runs the plugin executable `path` (of type `plugin`) with `command`,
/// feeding `stdin` and returning its stdout on success.
#[tracing::instrument(
    level = "debug",
    name = "cni_plugin",
    skip_all,
    fields(plugin = plugin, command = %command, sandbox = %inv.container_id)
)]
pub fn exec_plugin(
    plugin: &str,
    path: &Path,
    command: CniCommand,
    inv: &Invocation,
    stdin: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, ExecError> {
    let mut cmd = Command::new(path);
    cmd.envs(inv.env(command))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group: a timeout kills helpers the plugin started.
        .process_group(0);
    let mut child = spawn_retrying(&mut cmd).map_err(|source| ExecError::Spawn {
        plugin: path.to_path_buf(),
        source,
    })?;
    tracing::debug!(plugin, %command, pid = child.id(), container = %inv.container_id, "running CNI plugin");

    let (tx, rx) = mpsc::channel::<(usize, Vec<u8>)>();
    if let Some(mut input) = child.stdin.take() {
        let data = stdin.to_vec();
        // A plugin that does not read its stdin must not block us: write
        // from a thread; a broken pipe is not our error.
        let _ = std::thread::Builder::new()
            .name("cni-stdin".into())
            .spawn(move || {
                let _ = input.write_all(&data);
            });
    }
    let mut readers = 0;
    if let Some(out) = child.stdout.take() {
        readers += spawn_reader(0, out, tx.clone());
    }
    if let Some(err) = child.stderr.take() {
        readers += spawn_reader(1, err, tx.clone());
    }
    drop(tx);

    let status = match wait_timeout(&mut child, timeout) {
        Ok(Some(status)) => status,
        Ok(None) => {
            kill_group(&mut child);
            return Err(ExecError::Timeout {
                plugin: plugin.to_string(),
                command,
                timeout,
            });
        }
        Err(source) => {
            kill_group(&mut child);
            return Err(ExecError::Io {
                plugin: plugin.to_string(),
                command,
                source,
            });
        }
    };

    let mut outputs = [Vec::new(), Vec::new()];
    let deadline = Instant::now() + PIPE_GRACE;
    for _ in 0..readers {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, data)) => outputs[i] = data,
            Err(_) => {
                tracing::warn!(plugin, %command, "CNI plugin output still open after exit");
                break;
            }
        }
    }
    let [stdout, stderr] = outputs;
    if status.success() {
        return Ok(stdout);
    }
    Err(failure(plugin, command, status, &stdout, &stderr))
}

/// Spawns, retrying a few times on ETXTBSY: the executable may just have
/// been written (an upgrade of the plugins, or a test writing a fake one
/// while another thread forks) and still be open for writing somewhere.
fn spawn_retrying(cmd: &mut Command) -> io::Result<Child> {
    let mut attempt = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < 5 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(20 * attempt));
            }
            other => return other,
        }
    }
}

fn spawn_reader(
    index: usize,
    mut pipe: impl Read + Send + 'static,
    tx: mpsc::Sender<(usize, Vec<u8>)>,
) -> usize {
    let spawned = std::thread::Builder::new()
        .name("cni-output".into())
        .spawn(move || {
            let mut kept = Vec::new();
            let mut buf = [0u8; 8192];
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let room = MAX_OUTPUT.saturating_sub(kept.len());
                        kept.extend_from_slice(&buf[..n.min(room)]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send((index, kept));
        });
    usize::from(spawned.is_ok())
}

/// Waits until the child exits or `timeout` passes. The exit is seen when it
/// happens: a pidfd of the child turns readable then (the plugin's own run
/// is typically 5-10 ms, so polling with sleeps would add a good part of
/// that to every pod's RunPodSandbox and StopPodSandbox). Without pidfds
/// (kernels before 5.3) it checks every few milliseconds instead.
fn wait_timeout(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let deadline = Instant::now() + timeout;
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or
    // -1. The child is not reaped before try_wait below, so the pid is
    // still the child's.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    // SAFETY: a non-negative return is a new fd that nothing else owns.
    let pidfd = (raw >= 0).then(|| unsafe { OwnedFd::from_raw_fd(raw as i32) });
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        let left = deadline - now;
        match &pidfd {
            Some(fd) => {
                let mut pfd = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
                // SAFETY: one valid pollfd for the length of the call. EINTR
                // and a timeout both lead back to try_wait and the deadline.
                unsafe { libc::poll(&mut pfd, 1, ms) };
            }
            None => std::thread::sleep(left.min(Duration::from_millis(2))),
        }
    }
}

fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // The child leads its own process group (process_group(0)).
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Builds the error of a failed plugin: the CNI error object on stdout when
/// there is one, otherwise whatever the plugin printed.
fn failure(
    plugin: &str,
    command: CniCommand,
    status: ExitStatus,
    stdout: &[u8],
    stderr: &[u8],
) -> ExecError {
    let stdout_text = String::from_utf8_lossy(stdout).trim().to_string();
    let stderr_text = String::from_utf8_lossy(stderr).trim().to_string();
    let error_object = serde_json::from_slice::<Value>(stdout)
        .ok()
        .filter(|v| v.get("code").is_some() || v.get("msg").is_some());
    if let Some(v) = error_object {
        let text = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        return ExecError::Plugin {
            plugin: plugin.to_string(),
            command,
            code: v.get("code").and_then(Value::as_u64),
            msg: text("msg"),
            details: text("details"),
            output: stderr_text,
        };
    }
    let mut output = Vec::new();
    if !stdout_text.is_empty() {
        output.push(stdout_text);
    }
    if !stderr_text.is_empty() {
        output.push(stderr_text);
    }
    ExecError::Plugin {
        plugin: plugin.to_string(),
        command,
        code: None,
        msg: describe_status(status),
        details: String::new(),
        output: output.join("; "),
    }
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "failed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    pub(crate) fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn inv(dir: &Path) -> Invocation {
        Invocation {
            container_id: "abc".into(),
            netns: "/run/netns/x".into(),
            ifname: "eth0".into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAME".into(), "p".into()),
            ],
            bin_dirs: vec![dir.to_path_buf(), PathBuf::from("/opt/cni/bin")],
        }
    }

    #[test]
    fn env_and_stdin_reach_the_plugin() {
        let dir = tempfile::tempdir().unwrap();
        let rec = dir.path().join("rec");
        let p = script(
            dir.path(),
            "rec",
            &format!(
                "env | grep ^CNI_ | sort > {0}.env\ncat > {0}.in\necho '{{\"ok\":1}}'",
                rec.display()
            ),
        );
        let out = exec_plugin(
            "rec",
            &p,
            CniCommand::Add,
            &inv(dir.path()),
            b"{\"x\":1}",
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(String::from_utf8(out).unwrap().trim(), "{\"ok\":1}");
        let env = std::fs::read_to_string(dir.path().join("rec.env")).unwrap();
        let want = format!(
            "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAME=p\nCNI_COMMAND=ADD\nCNI_CONTAINERID=abc\nCNI_IFNAME=eth0\nCNI_NETNS=/run/netns/x\nCNI_PATH={}:/opt/cni/bin\n",
            dir.path().display()
        );
        assert_eq!(env, want);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("rec.in")).unwrap(),
            "{\"x\":1}"
        );
    }

    #[test]
    fn failures_table() {
        let dir = tempfile::tempdir().unwrap();
        let cases: &[(&str, &str)] = &[
            (
                r#"echo '{"cniVersion":"1.0.0","code":7,"msg":"invalid network config","details":"bridge name too long"}'; exit 1"#,
                "CNI plugin fake ADD failed (code 7): invalid network config; bridge name too long",
            ),
            (
                r#"echo '{"code":11,"msg":"try again"}'; echo 'extra' >&2; exit 1"#,
                "CNI plugin fake ADD failed (code 11): try again; output: extra",
            ),
            (
                "echo 'panic: runtime error' >&2; exit 2",
                "CNI plugin fake ADD failed: exit status 2; output: panic: runtime error",
            ),
            (
                "echo 'not json'; exit 3",
                "CNI plugin fake ADD failed: exit status 3; output: not json",
            ),
            (
                "kill -9 $$",
                "CNI plugin fake ADD failed: killed by signal 9",
            ),
        ];
        for (body, want) in cases {
            let p = script(dir.path(), "fake", body);
            let err = exec_plugin(
                "fake",
                &p,
                CniCommand::Add,
                &inv(dir.path()),
                b"{}",
                Duration::from_secs(30),
            )
            .unwrap_err();
            assert_eq!(err.to_string(), *want, "{body}");
        }
        let err = exec_plugin(
            "missing",
            &dir.path().join("missing"),
            CniCommand::Del,
            &inv(dir.path()),
            b"{}",
            Duration::from_secs(30),
        )
        .unwrap_err();
        assert!(matches!(err, ExecError::Spawn { .. }), "{err}");
    }

    #[test]
    fn timeout_kills_the_plugin_and_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        // The plugin starts a helper that would outlive it and then hangs.
        let p = script(
            dir.path(),
            "slow",
            &format!("sleep 1000 &\necho $! > {}\nwait", pidfile.display()),
        );
        let err = exec_plugin(
            "slow",
            &p,
            CniCommand::Add,
            &inv(dir.path()),
            b"{}",
            Duration::from_millis(500),
        )
        .unwrap_err();
        assert!(matches!(err, ExecError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("slow ADD timed out"), "{err}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The helper was killed with the group; it is a zombie at most until
        // init reaps it, so look at its state rather than its existence.
        let gone_or_dead = || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z')),
        };
        let mut tries = 0;
        while !gone_or_dead() && tries < 200 {
            std::thread::sleep(Duration::from_millis(10));
            tries += 1;
        }
        assert!(gone_or_dead(), "helper {pid} survived the timeout");
    }

    #[test]
    fn wait_timeout_sees_the_exit_and_the_deadline() {
        // (command, timeout, expected exit code or None for "still running")
        let cases: &[(&str, u64, Option<i32>)] = &[
            ("exit 0", 30_000, Some(0)),
            ("exit 3", 30_000, Some(3)),
            ("sleep 0.05; exit 4", 30_000, Some(4)),
            ("sleep 5", 100, None),
        ];
        for (body, ms, want) in cases {
            let mut child = Command::new("/bin/sh")
                .arg("-c")
                .arg(body)
                .process_group(0)
                .spawn()
                .unwrap();
            let got = wait_timeout(&mut child, Duration::from_millis(*ms)).unwrap();
            assert_eq!(got.and_then(|s| s.code()), *want, "{body}");
            if got.is_none() {
                kill_group(&mut child);
            }
        }
    }

    #[test]
    fn stdin_not_read_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(dir.path(), "noread", "echo '{}'");
        let big = vec![b' '; 1 << 20];
        let out = exec_plugin(
            "noread",
            &p,
            CniCommand::Version,
            &inv(dir.path()),
            &big,
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(out, b"{}\n");
    }
}
