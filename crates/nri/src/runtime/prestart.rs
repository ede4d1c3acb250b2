//! Pre-started ("pre-installed") plugins: at start-up the runtime runs
//! every executable `NN-name` of the plugin directory, hands it one end of
//! a socketpair, and registers it over that connection like a plugin that
//! connected to the socket. Its configuration, `NN-name.conf` or
//! `name.conf` in the configuration directory, goes into its Configure.
//!
//! The process lives as long as the plugin is registered: when the plugin
//! is dropped (a failed or late call), on [`Nri::shutdown`], or when it
//! fails to register, it is killed and reaped. A process that exits by
//! itself drops its plugin.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use super::Nri;

/// The variable naming the descriptor of a launched plugin's connection.
pub const PLUGIN_SOCKET_ENV: &str = "NRI_PLUGIN_SOCKET";
/// The variable giving a launched plugin its name.
pub const PLUGIN_NAME_ENV: &str = "NRI_PLUGIN_NAME";
/// The variable giving a launched plugin its index.
pub const PLUGIN_IDX_ENV: &str = "NRI_PLUGIN_IDX";
/// The descriptor a launched plugin finds its connection on.
pub const PLUGIN_SOCKET_FD: i32 = 3;
/// The largest plugin configuration file read (it travels in one ttrpc
/// message, whose limit is 4 MiB).
pub const MAX_PLUGIN_CONFIG: u64 = 1 << 20;
/// The longest line of a plugin's output logged as one record.
const MAX_OUTPUT_LINE: u64 = 4096;
/// How long shutdown waits for a killed plugin to be reaped.
const REAP_WAIT: Duration = Duration::from_secs(2);

/// A plugin found in the plugin directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    /// The executable.
    pub path: PathBuf,
    /// Its two-digit index.
    pub index: String,
    /// Its name (the file name after `NN-`).
    pub name: String,
}

/// Splits a plugin file name `NN-name` into index and name, as NRI does:
/// two digits, a dash, then a name of `[A-Za-z0-9_.+-]`.
pub fn parse_plugin_file_name(file: &str) -> Result<(String, String), String> {
    let (index, name) = file
        .split_once('-')
        .ok_or_else(|| format!("{file:?}: not NN-name"))?;
    if super::valid_index(index).is_none() {
        return Err(format!("{file:?}: index {index:?} is not two digits"));
    }
    check_plugin_name(name).map_err(|e| format!("{file:?}: {e}"))?;
    Ok((index.to_string(), name.to_string()))
}

/// A plugin name as NRI accepts it: not empty, `[A-Za-z0-9_.+-]` only.
pub fn check_plugin_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty plugin name".into());
    }
    if name.len() > 256 {
        return Err("plugin name longer than 256 bytes".into());
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+')))
    {
        Some(c) => Err(format!("plugin name {name:?} contains {c:?}")),
        None => Ok(()),
    }
}

/// The executables of `dir` named `NN-name`, in name order; and, with their
/// reason, the entries skipped because of their name. Directories and
/// files no one may execute are passed over silently, as NRI does. A
/// missing directory has no plugins.
pub fn discover(dir: &Path) -> std::io::Result<(Vec<Discovered>, Vec<String>)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    for entry in entries {
        let entry = entry?;
        // Symbolic links are followed, as an exec would.
        let Ok(meta) = std::fs::metadata(entry.path()) else {
            continue;
        };
        if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
            continue;
        }
        let file = entry.file_name().to_string_lossy().into_owned();
        match parse_plugin_file_name(&file) {
            Ok((index, name)) => found.push(Discovered {
                path: entry.path(),
                index,
                name,
            }),
            Err(e) => skipped.push(e),
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    skipped.sort();
    Ok((found, skipped))
}

/// Where NRI looks for a pre-started plugin's configuration, first match
/// wins: `<dir>/NN-name.conf`, then `<dir>/name.conf`.
pub fn config_candidates(dir: &Path, index: &str, name: &str) -> [PathBuf; 2] {
    [
        dir.join(format!("{index}-{name}.conf")),
        dir.join(format!("{name}.conf")),
    ]
}

/// The configuration of plugin `index-name` from `dir` (see
/// [`config_candidates`]); empty when there is none. A file that cannot be
/// read, is not a regular file, is larger than [`MAX_PLUGIN_CONFIG`] or is
/// not UTF-8 is an error: the plugin is not started.
pub fn read_plugin_config(dir: &Path, index: &str, name: &str) -> Result<String, String> {
    for path in config_candidates(dir, index, name) {
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        if !meta.is_file() {
            return Err(format!("{}: not a regular file", path.display()));
        }
        let mut text = String::new();
        std::fs::File::open(&path)
            .and_then(|f| f.take(MAX_PLUGIN_CONFIG + 1).read_to_string(&mut text))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if text.len() as u64 > MAX_PLUGIN_CONFIG {
            return Err(format!(
                "{}: larger than {MAX_PLUGIN_CONFIG} bytes",
                path.display()
            ));
        }
        return Ok(text);
    }
    Ok(String::new())
}

/// The whole environment of a launched plugin, as NRI gives it: its name,
/// its index and the descriptor of its connection; nothing else.
pub fn launch_env(index: &str, name: &str) -> Vec<(&'static str, String)> {
    vec![
        (PLUGIN_NAME_ENV, name.to_string()),
        (PLUGIN_IDX_ENV, index.to_string()),
        (PLUGIN_SOCKET_ENV, PLUGIN_SOCKET_FD.to_string()),
    ]
}

/// Who a launched plugin is (from its file name, not from its
/// registration) and what it is configured with.
pub(super) struct Identity {
    pub index: String,
    pub name: String,
    pub config: String,
    pub process: Process,
}

/// The process of a launched plugin. Dropping it (or [`Process::stop`])
/// kills the process; it is reaped on a spawned task either way.
pub(super) struct Process {
    pub pid: u32,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    reaped: Mutex<Option<oneshot::Receiver<()>>>,
}

impl Process {
    /// Kills the process (if it still runs); returns what resolves once it
    /// is reaped, the first time.
    pub fn stop(&self) -> Option<oneshot::Receiver<()>> {
        drop(self.stop.lock().unwrap_or_else(|e| e.into_inner()).take());
        self.reaped.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Starts `plugin` with its end of a new socketpair on descriptor 3 and
/// [`launch_env`] as its environment; its output goes to the log. Returns
/// the runtime's end and the process, whose watcher drops the plugin from
/// `nri` if it exits by itself.
fn spawn(
    plugin: &Discovered,
    nri: Weak<Nri>,
) -> std::io::Result<(tokio::net::UnixStream, Process)> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let label = format!("{}-{}", plugin.index, plugin.name);
    let mut cmd = Command::new(&plugin.path);
    cmd.env_clear()
        .envs(launch_env(&plugin.index, &plugin.name))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let fd = theirs.as_raw_fd();
    // SAFETY: between fork and exec only async-signal-safe calls (dup2,
    // fcntl) on descriptors that exist in the child.
    unsafe {
        cmd.pre_exec(move || {
            if fd == PLUGIN_SOCKET_FD {
                // Already there: only the close-on-exec flag must go.
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, PLUGIN_SOCKET_FD) < 0 {
                // (dup2 leaves the new descriptor without close-on-exec.)
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    drop(theirs);
    let pid = child.id().unwrap_or(0);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(log_output(label.clone(), pid, out));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(log_output(label.clone(), pid, err));
    }
    let (stop_tx, stop_rx) = oneshot::channel();
    let (reaped_tx, reaped_rx) = oneshot::channel();
    tokio::spawn(watch(child, label, nri, stop_rx, reaped_tx));
    ours.set_nonblocking(true)?;
    let ours = tokio::net::UnixStream::from_std(ours)?;
    Ok((
        ours,
        Process {
            pid,
            stop: Mutex::new(Some(stop_tx)),
            reaped: Mutex::new(Some(reaped_rx)),
        },
    ))
}

/// Waits for the plugin's process to exit (then drops the plugin) or to be
/// told to stop (then kills it); reaps it either way.
async fn watch(
    mut child: Child,
    label: String,
    nri: Weak<Nri>,
    stop: oneshot::Receiver<()>,
    reaped: oneshot::Sender<()>,
) {
    let pid = child.id().unwrap_or(0);
    tokio::select! {
        status = child.wait() => {
            match &status {
                Ok(s) => tracing::warn!(plugin = %label, pid, status = %s, "NRI plugin process exited"),
                Err(e) => tracing::warn!(plugin = %label, pid, error = %e, "NRI plugin process lost"),
            }
            if let Some(nri) = nri.upgrade() {
                nri.drop_process(pid, "its process exited");
            }
        }
        _ = stop => {
            // (Told to stop, or the plugin's record is gone: either way.)
            if let Err(e) = child.start_kill() {
                tracing::debug!(plugin = %label, pid, error = %e, "NRI plugin kill");
            }
            match child.wait().await {
                Ok(s) => tracing::info!(plugin = %label, pid, status = %s, "NRI plugin process stopped"),
                Err(e) => tracing::warn!(plugin = %label, pid, error = %e, "NRI plugin process not reaped"),
            }
        }
    }
    let _ = reaped.send(());
}

/// Logs each line the plugin writes (longer ones in pieces).
async fn log_output(label: String, pid: u32, out: impl AsyncRead + Unpin) {
    let mut reader = BufReader::new(out);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_OUTPUT_LINE)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&line);
                tracing::info!(plugin = %label, pid, "NRI plugin: {}", text.trim_end());
            }
        }
    }
}

impl Nri {
    /// Starts the plugins of `plugin_dir` (see [`discover`]) with their
    /// configurations from `config_dir`, all at once, and returns when each
    /// has registered, been configured and synchronized, or failed (logged;
    /// its process killed). Returns the `NN-name` of those now registered.
    pub async fn start_preinstalled(
        self: &Arc<Self>,
        plugin_dir: &Path,
        config_dir: &Path,
    ) -> Vec<String> {
        let (dir, conf) = (plugin_dir.to_path_buf(), config_dir.to_path_buf());
        // Directory and file reads: off the async workers.
        let found = tokio::task::spawn_blocking(move || {
            let (found, skipped) = discover(&dir)?;
            for why in skipped {
                tracing::warn!(dir = %dir.display(), reason = %why, "NRI plugin skipped");
            }
            Ok::<_, std::io::Error>(
                found
                    .into_iter()
                    .map(|p| {
                        let config = read_plugin_config(&conf, &p.index, &p.name);
                        (p, config)
                    })
                    .collect::<Vec<_>>(),
            )
        })
        .await;
        let found = match found {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                tracing::error!(dir = %plugin_dir.display(), error = %e, "NRI plugins not started");
                return Vec::new();
            }
            Err(e) => {
                tracing::error!(error = %e, "NRI plugin discovery failed");
                return Vec::new();
            }
        };
        let mut tasks = tokio::task::JoinSet::new();
        for (plugin, config) in found {
            let label = format!("{}-{}", plugin.index, plugin.name);
            let config = match config {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(plugin = %label, error = %e, "NRI plugin not started: its configuration");
                    continue;
                }
            };
            let nri = self.clone();
            tasks.spawn(async move {
                let (stream, process) = match spawn(&plugin, Arc::downgrade(&nri)) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(plugin = %label, path = %plugin.path.display(), error = %e, "NRI plugin not started");
                        return None;
                    }
                };
                tracing::info!(plugin = %label, pid = process.pid, "NRI plugin started");
                let identity = Identity {
                    index: plugin.index,
                    name: plugin.name,
                    config,
                    process,
                };
                // On failure the identity, and so the process, is dropped:
                // killed and reaped.
                match nri.connect_plugin(stream, Some(identity)).await {
                    Ok(()) => Some(label),
                    Err(e) => {
                        tracing::warn!(plugin = %label, error = %e, "NRI plugin not admitted");
                        None
                    }
                }
            });
        }
        let mut started = Vec::new();
        while let Some(r) = tasks.join_next().await {
            if let Ok(Some(label)) = r {
                started.push(label);
            }
        }
        started.sort();
        started
    }

    /// Drops every plugin; kills the pre-started ones and waits (a little)
    /// for them to be reaped.
    pub async fn shutdown(&self) {
        let plugins: Vec<_> = {
            let mut list = self.plugins.lock().unwrap_or_else(|e| e.into_inner());
            self.active
                .fetch_sub(list.len(), std::sync::atomic::Ordering::AcqRel);
            list.drain(..).collect()
        };
        let mut reaped = Vec::new();
        for plugin in plugins {
            if let Some(r) = plugin.process.as_ref().and_then(|p| p.stop()) {
                reaped.push(r);
            }
            if let Some(mut server) = plugin.take_server() {
                server.disconnect().await;
            }
        }
        for r in reaped {
            let _ = tokio::time::timeout(REAP_WAIT, r).await;
        }
    }

    /// Drops the plugin whose process `pid` is.
    fn drop_process(&self, pid: u32, why: &str) {
        let plugin = self
            .list()
            .into_iter()
            .find(|p| p.process.as_ref().is_some_and(|proc| proc.pid == pid));
        if let Some(p) = plugin {
            self.drop_plugin(&p, why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_file_names() {
        for (file, want) in [
            ("10-logger", Ok(("10", "logger"))),
            ("00-a", Ok(("00", "a"))),
            ("99-device-injector", Ok(("99", "device-injector"))),
            ("05-x_y.z+1", Ok(("05", "x_y.z+1"))),
            ("logger", Err("not NN-name")),
            ("1-logger", Err("two digits")),
            ("100-logger", Err("two digits")),
            ("ab-logger", Err("two digits")),
            ("10-", Err("empty")),
            ("10-log ger", Err("contains ' '")),
            ("10-log/ger", Err("contains '/'")),
            ("10-lögger", Err("contains 'ö'")),
        ] {
            let got = parse_plugin_file_name(file);
            match (got, want) {
                (Ok((i, n)), Ok((wi, wn))) => {
                    assert_eq!((i.as_str(), n.as_str()), (wi, wn), "{file}")
                }
                (Err(e), Err(w)) => assert!(e.contains(w), "{file}: {e}"),
                (got, want) => panic!("{file}: {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn launch_environment_is_name_index_and_descriptor_only() {
        assert_eq!(
            launch_env("10", "logger"),
            [
                ("NRI_PLUGIN_NAME", "logger".to_string()),
                ("NRI_PLUGIN_IDX", "10".to_string()),
                ("NRI_PLUGIN_SOCKET", "3".to_string()),
            ]
        );
    }

    #[test]
    fn discovery_takes_executables_named_nn_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, mode: u32| {
            let p = dir.path().join(name);
            std::fs::write(&p, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        file("20-second", 0o755);
        file("10-first", 0o700);
        file("30-not-executable", 0o644);
        file("README", 0o644);
        file("helper", 0o755);
        std::fs::create_dir(dir.path().join("40-a-directory")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("10-first"), dir.path().join("50-link"))
            .unwrap();
        let (found, skipped) = discover(dir.path()).unwrap();
        let names: Vec<_> = found
            .iter()
            .map(|p| (p.index.as_str(), p.name.as_str()))
            .collect();
        assert_eq!(names, [("10", "first"), ("20", "second"), ("50", "link")]);
        assert_eq!(found[0].path, dir.path().join("10-first"));
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(skipped[0].contains("helper"), "{skipped:?}");
        // No directory: no plugins.
        let (found, skipped) = discover(&dir.path().join("missing")).unwrap();
        assert!(found.is_empty() && skipped.is_empty());
    }

    #[test]
    fn configuration_lookup() {
        // (files in the directory, expected configuration of 10-logger)
        let big = "x".repeat(MAX_PLUGIN_CONFIG as usize + 1);
        let fits = "y".repeat(MAX_PLUGIN_CONFIG as usize);
        type Files<'a> = Vec<(&'a str, &'a str)>;
        let cases: Vec<(Files, Result<&str, &str>)> = vec![
            (vec![], Ok("")),
            (vec![("logger.conf", "by name")], Ok("by name")),
            (
                vec![("10-logger.conf", "by index and name")],
                Ok("by index and name"),
            ),
            (
                vec![("10-logger.conf", "indexed"), ("logger.conf", "plain")],
                Ok("indexed"),
            ),
            // Another index's file is not ours.
            (vec![("20-logger.conf", "other")], Ok("")),
            (vec![("logger.yaml", "other")], Ok("")),
            (vec![("logger.conf", big.as_str())], Err("larger than")),
            (vec![("logger.conf", fits.as_str())], Ok(fits.as_str())),
        ];
        for (files, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            for (name, text) in &files {
                std::fs::write(dir.path().join(name), text).unwrap();
            }
            let got = read_plugin_config(dir.path(), "10", "logger");
            let names: Vec<_> = files.iter().map(|f| f.0).collect();
            match (got, want) {
                (Ok(g), Ok(w)) => assert!(g == w, "{names:?}: {} bytes", g.len()),
                (Err(e), Err(w)) => assert!(e.contains(w), "{names:?}: {e}"),
                (Ok(g), Err(w)) => panic!("{names:?}: {} bytes, want {w}", g.len()),
                (Err(e), Ok(_)) => panic!("{names:?}: {e}"),
            }
        }
        // Not a regular file; not UTF-8.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("10-logger.conf")).unwrap();
        let e = read_plugin_config(dir.path(), "10", "logger").unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("logger.conf"), [0xff, 0xfe]).unwrap();
        assert!(read_plugin_config(dir.path(), "10", "logger").is_err());
        // No directory: no configuration.
        assert_eq!(
            read_plugin_config(&dir.path().join("missing"), "10", "logger").unwrap(),
            ""
        );
    }
}
